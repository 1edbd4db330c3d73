"""Read a TensorFlow 1 "tensor bundle" checkpoint (``model.index`` + ``model.data-*``) without TensorFlow.

Layout
------
``PREFIX.index`` is a LevelDB-style sorted string table (SSTable):

* a sequence of blocks, each followed by a 5-byte trailer (1 compression-type byte: 0 = none,
  1 = snappy; then a 4-byte masked CRC32C that this reader does not check);
* inside a block, entries ``varint shared | varint unshared | varint value_len | key suffix | value``
  where the key shares its first ``shared`` bytes with the previous key; the block ends with an
  array of uint32 restart offsets and their uint32 count;
* a 48-byte footer: the metaindex and the index block handles (two varints each, zero padded to
  40 bytes) followed by the little-endian magic 0xdb4775248b80fb57;
* the index block maps a separator key to the handle (varint offset, varint size) of each data block.

The entry with the empty key holds a ``BundleHeaderProto`` (num_shards = 1, endianness = 2,
version = 3); every other key is a tensor name whose value is a serialized ``BundleEntryProto``:
dtype = 1, shape = 2 (``TensorShapeProto``: repeated dim = 2 {size = 1}), shard_id = 3, offset = 4,
size = 5, crc32c = 6 (fixed32), slices = 7. The tensor's bytes are ``size`` bytes at ``offset`` in
``PREFIX.data-{shard:05d}-of-{num_shards:05d}``, little endian, row major (TensorFlow's layout:
a conv kernel is H x W x Cin x Cout).

Only numeric dtypes are read; protobuf is decoded by a small reader here (no dependency).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = 0xDB4775248B80FB57
FOOTER_LEN = 48
BLOCK_TRAILER_LEN = 5

# TensorFlow DataType enum -> numpy dtype (little endian)
DTYPES = {
    1: np.dtype("<f4"),   # DT_FLOAT
    2: np.dtype("<f8"),   # DT_DOUBLE
    3: np.dtype("<i4"),   # DT_INT32
    4: np.dtype("u1"),    # DT_UINT8
    5: np.dtype("<i2"),   # DT_INT16
    6: np.dtype("i1"),    # DT_INT8
    9: np.dtype("<i8"),   # DT_INT64
    10: np.dtype("?"),    # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}


class CheckpointError(ValueError):
    """The files are not a readable tensor-bundle checkpoint."""


# --------------------------------------------------------------------------- low-level decoding

def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; returns (value, next position)."""
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint longer than 64 bits")


def proto_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Split a serialized protobuf message into (field number, wire type, value) triples.

    Varints and fixed-width values come back as ints, length-delimited ones as bytes.
    """
    out = []
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = read_varint(buf, pos)
            value = bytes(buf[pos:pos + n])
            if len(value) != n:
                raise CheckpointError("truncated length-delimited protobuf field")
            pos += n
        elif wire == 5:
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


def snappy_decompress(buf: bytes) -> bytes:
    """Raw snappy block format (what LevelDB tables use for compression type 1)."""
    length, pos = read_varint(buf, 0)
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            n = tag >> 2
            if n >= 60:
                extra = n - 59
                n = int.from_bytes(buf[pos:pos + extra], "little")
                pos += extra
            n += 1
            out += buf[pos:pos + n]
            pos += n
            continue
        if kind == 1:
            n = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | buf[pos]
            pos += 1
        elif kind == 2:
            n = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos:pos + 2], "little")
            pos += 2
        else:
            n = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise CheckpointError("corrupt snappy block")
        start = len(out) - offset
        for i in range(n):  # byte by byte: the copy may overlap what it writes
            out.append(out[start + i])
    if len(out) != length:
        raise CheckpointError("snappy block has the wrong length")
    return bytes(out)


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE: list[int] | None = None


def crc32c(data: bytes) -> int:
    global _CRC_TABLE
    if _CRC_TABLE is None:
        _CRC_TABLE = _crc32c_table()
    table = _CRC_TABLE
    c = 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC as TensorFlow stores it (rotated right by 15 and offset)."""
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- SSTable

def _block(table: bytes, offset: int, size: int, name: str) -> bytes:
    end = offset + size
    if end + BLOCK_TRAILER_LEN > len(table):
        raise CheckpointError(f"{name}: block handle ({offset}, {size}) runs past the end of the file")
    data = table[offset:end]
    kind = table[end]
    if kind == 0:
        return data
    if kind == 1:
        return snappy_decompress(data)
    raise CheckpointError(f"{name}: unknown block compression type {kind}")


def _block_entries(block: bytes, name: str) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError(f"{name}: block too short")
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise CheckpointError(f"{name}: bad restart count {n_restarts}")
    entries = []
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        vlen, pos = read_varint(block, pos)
        if shared > len(key):
            raise CheckpointError(f"{name}: corrupt prefix-compressed key")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + vlen]))
        pos += vlen
    return entries


def read_table(path: str | Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an SSTable file, in file order."""
    path = Path(path)
    table = path.read_bytes()
    if len(table) < FOOTER_LEN:
        raise CheckpointError(f"{path}: too short to be a table")
    footer = table[-FOOTER_LEN:]
    if struct.unpack_from("<Q", footer, 40)[0] != MAGIC:
        raise CheckpointError(f"{path}: bad table magic (not a TensorFlow checkpoint index)")
    pos = 0
    _meta_off, pos = read_varint(footer, pos)
    _meta_size, pos = read_varint(footer, pos)
    index_off, pos = read_varint(footer, pos)
    index_size, pos = read_varint(footer, pos)
    entries = []
    for _sep, handle in _block_entries(_block(table, index_off, index_size, str(path)), str(path)):
        off, p = read_varint(handle, 0)
        size, _ = read_varint(handle, p)
        entries += _block_entries(_block(table, off, size, str(path)), str(path))
    return entries


# --------------------------------------------------------------------------- tensor bundle

def _prefix(path: str | Path) -> Path:
    p = Path(path)
    if p.name.endswith(".index"):
        return p.with_name(p.name[: -len(".index")])
    return p


def index_path(path: str | Path) -> Path:
    """``PREFIX.index`` for a checkpoint given as its prefix or as its index file."""
    p = _prefix(path)
    return p.with_name(p.name + ".index")


def read_entries(path: str | Path) -> tuple[dict, dict[str, dict]]:
    """(header, {name: entry}) of a checkpoint; each entry has dtype, shape, shard_id, offset, size, crc32c."""
    header = {"num_shards": 1, "endianness": 0, "version": 0}
    entries: dict[str, dict] = {}
    idx = index_path(path)
    for key, value in read_table(idx):
        fields = proto_fields(value)
        if key == b"":
            for f, _w, v in fields:
                if f == 1:
                    header["num_shards"] = v
                elif f == 2:
                    header["endianness"] = v
                elif f == 3 and isinstance(v, bytes):  # VersionDef {producer = 1}
                    header["version"] = dict((ff, vv) for ff, _ww, vv in proto_fields(v)).get(1, 0)
            continue
        entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "sliced": False}
        for f, _w, v in fields:
            if f == 1:
                entry["dtype"] = v
            elif f == 2:
                for ff, _ww, dim in proto_fields(v):
                    if ff == 2:  # TensorShapeProto.dim
                        size = dict((a, b) for a, _c, b in proto_fields(dim)).get(1, 0)
                        entry["shape"].append(size - (1 << 64) if size >= 1 << 63 else size)
                    elif ff == 3 and dim:
                        raise CheckpointError(f"{idx}: {key.decode()} has an unknown rank")
            elif f == 3:
                entry["shard_id"] = v
            elif f == 4:
                entry["offset"] = v
            elif f == 5:
                entry["size"] = v
            elif f == 6:
                entry["crc32c"] = v
            elif f == 7:
                entry["sliced"] = True
        entries[key.decode("utf-8")] = entry
    if header["endianness"] not in (0,):  # LITTLE = 0
        raise CheckpointError(f"{idx}: big-endian checkpoints are not supported")
    return header, entries


def read_checkpoint(path: str | Path, verify_crc: bool = False) -> dict[str, np.ndarray]:
    """All tensors of a TF1 checkpoint given as ``PREFIX`` or ``PREFIX.index``, by variable name."""
    prefix = _prefix(path)
    header, entries = read_entries(prefix)
    shards: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for name, e in entries.items():
        if e["sliced"]:
            raise CheckpointError(f"{prefix}: {name} is stored as slices (partitioned variables are not supported)")
        if e["dtype"] not in DTYPES:
            raise CheckpointError(f"{prefix}: {name} has unsupported dtype {e['dtype']}")
        sid = e["shard_id"]
        if sid not in shards:
            data = prefix.with_name(f"{prefix.name}.data-{sid:05d}-of-{header['num_shards']:05d}")
            if not data.is_file():
                raise CheckpointError(f"{prefix}: data file {data.name} is missing")
            shards[sid] = data.read_bytes()
        dtype = DTYPES[e["dtype"]]
        raw = shards[sid][e["offset"]:e["offset"] + e["size"]]
        count = int(np.prod(e["shape"], dtype=np.int64)) if e["shape"] else 1
        if len(raw) != e["size"] or e["size"] != count * dtype.itemsize:
            raise CheckpointError(f"{prefix}: {name} does not fit its data (shape {e['shape']}, "
                                  f"{e['size']} bytes at {e['offset']})")
        if verify_crc and e["crc32c"] is not None and masked_crc32c(raw) != e["crc32c"]:
            raise CheckpointError(f"{prefix}: {name} fails its CRC32C check")
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(e["shape"]).astype(dtype.newbyteorder("="))
    return out


__all__ = ["read_checkpoint", "read_entries", "read_table", "index_path", "masked_crc32c", "crc32c",
           "proto_fields", "read_varint", "snappy_decompress", "CheckpointError"]
