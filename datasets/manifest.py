"""Identify dataset releases by the SHA-256 hashes of their files.

Several versions of the same test set circulate under one name (Rain100L and
Rain100H exist as JORDER's original 100-image release and as a later 200-image
release), and scores are only comparable within one version.  A release is
recognised by a fingerprint over the relative paths and contents of the files
its pairs use (see :func:`manifest`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

from core.errors import DatasetError
from datasets.names import canonical_name

__all__ = ["sha256_file", "manifest", "fingerprint_of", "identify", "KNOWN_RELEASES"]

_CHUNK = 1 << 20

# fingerprint (see manifest()) -> release record.
#
# Only releases someone has actually hashed are listed.  The 200-image "new"
# releases of Rain100L / Rain100H (JORDER's rain_data_test_Light / _Heavy) are
# recognised by folder name and pair count only ("new-200", unverified) until
# someone registers their hashes here; likewise Rain100H's old 100-image release.
KNOWN_RELEASES: dict[str, dict] = {
    # Rain100L, 100 pairs as PReNet ships it: manifest() over its 200 files
    # (norain-001.png ... and rainy/rain-001.png ..., paths relative to the folder).
    "8ff655e782a6a6524b575963e7d9b5e825a63af7d08451b6d712aa8bf6d0d74c": {
        "name": "Rain100L",
        "version": "old-100",
        "n_pairs": 100,
        "source": "JORDER (Yang et al. CVPR 2017) via PReNet datasets/test/Rain100L",
    },
}

# Releases that may be guessed from folder name and pair count when hashes differ.
_COUNT_VERSIONS = {100: "old-100", 200: "new-200"}
_COUNT_GUESSED = ("Rain100L", "Rain100H")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(block)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file for hashing ({exc})") from exc
    return digest.hexdigest()


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        pass
    if not path.is_absolute() and (root / path).is_file():   # already relative to root
        return path.as_posix()
    raise DatasetError(f"{path} is not inside dataset folder {root}")


def fingerprint_of(hashes: dict[str, str]) -> str:
    """SHA-256 over the sorted ``relpath<TAB>sha256<LF>`` lines of a manifest."""
    digest = hashlib.sha256()
    for rel in sorted(hashes):
        digest.update(f"{rel}\t{hashes[rel]}\n".encode("utf-8"))
    return digest.hexdigest()


def manifest(root: Path, files: Iterable[Path]) -> dict:
    """Hashes of ``files`` keyed by their POSIX path relative to ``root``.

    Returns ``{"files": {relpath: sha256}, "fingerprint": hex, "n_files": n}``.  A
    file listed twice (a clean image shared by several rainy ones) counts once.
    The fingerprint depends on the relative paths and the bytes, not on where the
    folder lives or the order the files are given in.
    """
    root = Path(root)
    hashes: dict[str, str] = {}
    for f in files:
        rel = _relative(root, Path(f))
        if rel not in hashes:
            hashes[rel] = sha256_file(root / rel)
    ordered = {rel: hashes[rel] for rel in sorted(hashes)}
    return {"files": ordered, "fingerprint": fingerprint_of(ordered), "n_files": len(ordered)}


def identify(root: Path, pairs: Sequence) -> dict:
    """Which release ``pairs`` (found in ``root``) are, from their file hashes.

    Returns ``{"fingerprint", "n_files", "known", "release", "version", "source",
    "note"}``.  A registered fingerprint gives ``known=True``.  Otherwise a folder
    named like Rain100L / Rain100H gets its version guessed from the pair count
    (100 -> "old-100", 200 -> "new-200") with ``known=False``; anything else is
    ``version="unknown"``.
    """
    root = Path(root)
    files = []
    for p in pairs:
        files.append(p.rainy)
        files.append(p.clean)
    m = manifest(root, files)
    fp = m["fingerprint"]
    result = {"fingerprint": fp, "n_files": m["n_files"]}

    release = KNOWN_RELEASES.get(fp)
    if release is not None:
        result.update(known=True, release=release["name"], version=release["version"],
                      source=release.get("source"),
                      note=f"hashes match the registered {release['name']} "
                           f"{release['version']} release")
        return result

    guessed = canonical_name(root.name) if root.name else None
    if guessed is None and root.name == "":
        guessed = canonical_name(root.resolve().name)
    if guessed in _COUNT_GUESSED:
        n = len(pairs)
        version = _COUNT_VERSIONS.get(n, "unknown")
        if version == "unknown":
            how = (f"{n} pairs matches neither the old 100-image nor the new 200-image "
                   "release")
        else:
            how = f"version guessed from the folder name and the pair count ({n})"
        result.update(known=False, release=guessed, version=version, source=None,
                      note=f"unverified: hashes do not match a known release; {how}")
        return result

    result.update(known=False, release=None, version="unknown", source=None,
                  note="hashes do not match a known release")
    return result
