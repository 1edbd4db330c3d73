"""Files the suite writes and reads: atomic writes, a writability probe, torch checkpoints.

Every result file is written atomically (a reader sees the old file or the new one, never a
part), so a run killed at any moment leaves no corrupt cell, table or checkpoint behind.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_text", "check_writable", "read_torch_file"]


def _default_mode() -> int:
    """0666 less the process umask: the permissions a plain ``open`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any], binary: bool = False) -> None:
    """Write a file through ``write(fh)`` so that readers see the old file or the new one, never a
    part: a temporary file beside ``path``, flushed to disk, then renamed over it.  The new file
    gets the usual permissions, not the owner-only ones of a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a text (UTF-8)."""
    atomic_write(path, lambda fh: fh.write(text))


def check_writable(*folders: str | os.PathLike) -> None:
    """Raise OSError naming the first folder that cannot be created or written, before any work
    is done whose result would then be lost."""
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OSError(f"cannot write results to {folder}: {exc.strerror or exc}") from None


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with an error that says what is wrong.

    Only tensors and plain containers are read: a file holding other Python objects is refused,
    since unpickling them could run code.  PyTorch's own message for a bad file advises retrying
    with ``weights_only=False``, which is wrong for a corrupt file and unsafe for a foreign one, so
    the ValueError raised here names the file and the actual problem instead.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: not a PyTorch {what}: the file is empty")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(2)
        legacy_pickle = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # torch.save before 1.6
        if not legacy_pickle:
            raise ValueError(f"{path}: not a PyTorch {what}: neither a torch.save archive nor a pickle "
                             f"({size:,} bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1][:200]
        raise ValueError(f"{path}: not a {what} the suite reads: it holds Python objects other than tensors and "
                         f"plain containers, which are refused because unpickling them could run code "
                         f"({reason})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path}: not a readable PyTorch {what}: the file is truncated or corrupt "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})"
                         ) from None
