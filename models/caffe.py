"""Read Caffe models without Caffe: binary ``.caffemodel`` weights and ``.prototxt`` text.

``.caffemodel``
---------------
A serialized ``caffe.NetParameter`` protocol buffer, decoded here by hand from the protobuf wire
format (no ``protobuf`` dependency). Every field is a key varint ``(number << 3) | wire_type``
followed by a varint (type 0), 8 bytes (type 1), a varint length and that many bytes (type 2) or
4 bytes (type 5). Only the fields that carry weights are read, everything else is skipped:

* ``NetParameter``: ``layer`` = 100 (``LayerParameter``, current format) and the legacy
  ``layers`` = 2 (``V1LayerParameter``);
* ``LayerParameter``: ``name`` = 1, ``type`` = 2, ``blobs`` = 7;
  ``V1LayerParameter``: ``name`` = 4, ``blobs`` = 6;
* ``BlobProto``: ``num``/``channels``/``height``/``width`` = 1..4 (legacy 4-D shape),
  ``data`` = 5 (float, packed or not), ``shape`` = 7 (``BlobShape``: ``dim`` = 1, int64,
  packed or not), ``double_data`` = 8.

A blob takes its ``shape`` when the file has one, else the legacy ``(num, channels, height,
width)``; the number of values must match that shape.

``.prototxt``
-------------
Protobuf text format as Caffe writes it: ``key: value`` pairs and nested ``key { ... }``
blocks (``key: { ... }`` too), ``#`` comments, quoted strings, numbers, and bare identifiers
(enums such as ``SUM``, booleans ``true``/``false``). A key that occurs once maps to its value;
a key that repeats (``layer``, ``bottom``, ``dim``, ``coeff``, ...) maps to the list of its
values in file order. ``as_list`` turns either form into a list.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["read_caffemodel", "decode_caffemodel", "read_prototxt", "parse_prototxt", "as_list"]


# --------------------------------------------------------------------------- wire format

class _WireError(Exception):
    """Malformed protobuf bytes; turned into a ValueError that names the file."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise _WireError(f"varint runs past the end of the data at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _WireError(f"varint longer than 10 bytes ending at byte {pos}")


def _fields(buf: memoryview, base: int = 0):
    """Yield ``(field_number, wire_type, value, offset)`` for each field of one message.

    ``value`` is an int for varints, a memoryview for length-delimited fields and the raw bytes
    for fixed-width fields; ``offset`` (the field's position, plus ``base``) is for messages.
    """
    pos = 0
    n = len(buf)
    while pos < n:
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError(f"field number 0 at byte {base + start}")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise _WireError(f"64-bit field {number} runs past the end at byte {base + start}")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise _WireError(f"field {number} at byte {base + start} declares {length} bytes but only "
                                 f"{n - pos} remain (truncated?)")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            if pos + 4 > n:
                raise _WireError(f"32-bit field {number} runs past the end at byte {base + start}")
            value, pos = buf[pos:pos + 4], pos + 4
        else:  # 3/4 are deprecated groups, 6/7 do not exist; Caffe writes neither
            raise _WireError(f"unsupported wire type {wire} for field {number} at byte {base + start}")
        yield number, wire, value, base + start


def _packed_varints(view: memoryview) -> list[int]:
    out = []
    pos = 0
    while pos < len(view):
        v, pos = _varint(view, pos)
        out.append(v)
    return out


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


#: BlobProto array fields: number -> (element name, field name, dtype, wire type when not packed)
_BLOB_ARRAYS = {5: ("float", "data", "<f4", 5), 8: ("double", "double_data", "<f8", 1)}


def _decode_blob(buf: memoryview, base: int) -> np.ndarray:
    legacy = {}
    dims: list[int] | None = None
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for number, wire, value, at in _fields(buf, base):
        if number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = _int64(value)
        elif number in _BLOB_ARRAYS:  # data (repeated float) or double_data (repeated double)
            kind, field, dtype, fixed_wire = _BLOB_ARRAYS[number]
            size = np.dtype(dtype).itemsize
            if wire == 2 and len(value) % size:
                raise _WireError(f"packed {kind} data at byte {at} is {len(value)} bytes, not a multiple of {size}")
            if wire not in (2, fixed_wire):
                raise _WireError(f"blob {field} at byte {at} has wire type {wire}")
            (floats if number == 5 else doubles).append(np.frombuffer(value, dtype=dtype))
        elif number == 7:  # shape: BlobShape
            if wire != 2:
                raise _WireError(f"blob shape at byte {at} has wire type {wire}")
            dims = [] if dims is None else dims
            for dnum, dwire, dval, dat in _fields(value, at):
                if dnum != 1:
                    continue
                if dwire == 2:
                    dims.extend(_int64(v) for v in _packed_varints(dval))
                elif dwire == 0:
                    dims.append(_int64(dval))
                else:
                    raise _WireError(f"blob shape dim at byte {dat} has wire type {dwire}")
        # diff (6), double_diff (9) and unknown fields are skipped
    if floats and doubles:
        raise _WireError(f"blob at byte {base} holds both float and double data")
    data = np.concatenate(floats) if floats else (np.concatenate(doubles) if doubles else np.zeros(0, "<f4"))
    if dims is None:
        if legacy:
            dims = [legacy.get(k, 1) for k in (1, 2, 3, 4)]
        else:
            dims = [data.size]
    if any(d < 0 for d in dims):
        raise _WireError(f"blob at byte {base} has a negative dimension {dims}")
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if count != data.size:
        raise _WireError(f"blob at byte {base} has shape {tuple(dims)} ({count} values) but holds {data.size} values")
    return data.astype(np.float32 if data.dtype.itemsize == 4 else np.float64).reshape(dims)


def _decode_layer(buf: memoryview, base: int, name_field: int, blobs_field: int) -> tuple[str | None, list[np.ndarray]]:
    name = None
    blobs = []
    for number, wire, value, at in _fields(buf, base):
        if number == name_field and wire == 2:
            try:
                name = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise _WireError(f"layer name at byte {at} is not UTF-8") from None
        elif number == blobs_field:
            if wire != 2:
                raise _WireError(f"layer blob at byte {at} has wire type {wire}")
            blobs.append(_decode_blob(value, at))
    return name, blobs


def decode_caffemodel(data: bytes, source: str = "<bytes>") -> dict[str, list[np.ndarray]]:
    """``{layer name: [blob arrays]}`` from serialized NetParameter bytes, in file order.

    Layers that hold no blobs (ReLU, Eltwise, ...) are left out. ValueError, naming ``source``,
    when the bytes are not a well-formed NetParameter with at least one blob.
    """
    buf = memoryview(bytes(data))
    layers: dict[str, list[np.ndarray]] = {}
    seen = 0
    try:
        for number, wire, value, at in _fields(buf):
            if number == 100 and wire == 2:
                name, blobs = _decode_layer(value, at, name_field=1, blobs_field=7)
            elif number == 2 and wire == 2:
                name, blobs = _decode_layer(value, at, name_field=4, blobs_field=6)
            else:
                continue  # name, input, state, ...
            seen += 1
            if not blobs:
                continue
            if name is None:
                raise _WireError(f"layer at byte {at} has blobs but no name")
            if name in layers:
                raise _WireError(f"layer {name!r} appears twice with blobs")
            layers[name] = blobs
    except _WireError as exc:
        raise ValueError(f"{source}: not a valid caffemodel: {exc}") from None
    if not layers:
        what = "no layers" if not seen else f"{seen} layers but none with weights"
        raise ValueError(f"{source}: not a caffemodel with weights ({what} found)")
    return layers


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """``{layer name: [blob arrays shaped by their BlobShape]}`` of a ``.caffemodel`` file.

    For a convolution the list is ``[weight (out, in, kh, kw), bias (out,)]``. ValueError naming
    the file when it is truncated or not a caffemodel.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read caffemodel ({exc.strerror or exc})") from exc
    if not data:
        raise ValueError(f"{path}: empty file, not a caffemodel")
    return decode_caffemodel(data, str(path))


# --------------------------------------------------------------------------- prototxt

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[{}:;,\[\]<>])
  | (?P<word>[A-Za-z0-9_.+\-]+)
""", re.VERBOSE)

_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|\d+)$")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)[fF]?$|[+-]?(inf|nan)$", re.I)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


def _tokens(text: str, source: str):
    pos = 0
    line = 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"{source}: line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        tok = m.group()
        if kind != "ws":
            yield kind, tok, line
        line += tok.count("\n")
        pos = m.end()


def _scalar(kind: str, tok: str):
    if kind == "str":
        body = tok[1:-1]
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)
    if _INT.match(tok):
        return int(tok, 16) if tok.lstrip("+-")[:2] in ("0x", "0X") else int(tok, 10)
    if _FLOAT.match(tok):
        return float(tok.rstrip("fF")) if tok.lower().lstrip("+-") not in ("inf", "nan") else float(tok)
    if tok == "true":
        return True
    if tok == "false":
        return False
    return tok  # an enum value such as SUM or MAX


def _add(msg: dict, key: str, value) -> None:
    if key not in msg:
        msg[key] = value
    elif isinstance(msg[key], _Repeated):
        msg[key].append(value)
    else:
        msg[key] = _Repeated([msg[key], value])


class _Repeated(list):
    """Marks a list built from a repeated key (so a repeated list-valued key is not confused)."""


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, _Repeated):
        return [_plain(v) for v in obj]
    return obj


def parse_prototxt(text: str, source: str = "<prototxt>") -> dict:
    """Parse protobuf text format into nested dicts; repeated keys become lists (file order)."""
    root: dict = {}
    stack = [root]
    toks = list(_tokens(text, source))
    i = 0
    n = len(toks)
    while i < n:
        kind, tok, line = toks[i]
        if kind == "punct" and tok in "}>":
            if len(stack) == 1:
                raise ValueError(f"{source}: line {line}: {tok!r} without an opening brace")
            stack.pop()
            i += 1
            continue
        if kind == "punct" and tok in ";,":
            i += 1
            continue
        if kind != "word":
            raise ValueError(f"{source}: line {line}: expected a field name, got {tok!r}")
        key = tok
        i += 1
        if i >= n:
            raise ValueError(f"{source}: line {line}: field {key!r} has no value")
        if toks[i][1] == ":" and toks[i][0] == "punct":
            i += 1
            if i >= n:
                raise ValueError(f"{source}: line {line}: field {key!r} has no value after ':'")
        kind2, tok2, line2 = toks[i]
        if kind2 == "punct" and tok2 in "{<":
            child: dict = {}
            _add(stack[-1], key, child)
            stack.append(child)
            i += 1
        elif kind2 == "punct" and tok2 == "[":  # key: [v1, v2] list syntax
            i += 1
            while i < n and toks[i][1] != "]":
                if toks[i][0] == "punct" and toks[i][1] == ",":
                    i += 1
                    continue
                if toks[i][0] not in ("word", "str"):
                    raise ValueError(f"{source}: line {toks[i][2]}: unexpected {toks[i][1]!r} in list of {key!r}")
                _add(stack[-1], key, _scalar(toks[i][0], toks[i][1]))
                i += 1
            if i >= n:
                raise ValueError(f"{source}: line {line2}: list of {key!r} is not closed")
            i += 1
        elif kind2 in ("word", "str"):
            value = _scalar(kind2, tok2)
            i += 1
            while kind2 == "str" and i < n and toks[i][0] == "str":  # adjacent strings concatenate
                value += _scalar("str", toks[i][1])
                i += 1
            _add(stack[-1], key, value)
        else:
            raise ValueError(f"{source}: line {line2}: unexpected {tok2!r} after {key!r}")
    if len(stack) != 1:
        raise ValueError(f"{source}: {len(stack) - 1} block(s) not closed at the end of the text")
    return _plain(root)


def read_prototxt(path: str | Path) -> dict:
    """Parse a ``.prototxt`` file (see ``parse_prototxt``); ValueError names the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read prototxt ({exc})") from exc
    return parse_prototxt(text, str(path))


def as_list(value) -> list:
    """A repeated field as a list whether it occurred once (a scalar or dict) or several times."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
