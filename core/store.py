"""The cell store: one result per JSON file, keyed, fingerprinted, written atomically.

A cell holds its status (``ok`` / ``failed`` / ``skipped`` with the error), full-precision
metrics, per-image values, the identity of its inputs (dataset, weights, profile, seed) and
a fingerprint over all of the inputs that decide its numbers.  A fresh ``ok`` cell is
reused; a stale, failed, skipped or missing one is computed again, so a run that was killed
resumes where it stopped.  :func:`settle` turns one computation into a stored cell and
never raises for a bad input.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from core.errors import DatasetMissing, WeightsUnavailable
from core.files import atomic_write_text
from core.layout import REPO
from core.profiles import Profile

CELL_FORMAT = 1



def file_safe(raw: str) -> str:
    """``raw`` with every character a file name should not hold replaced by ``-``: a cell's id."""
    return re.sub(r"[^A-Za-z0-9_.@=+-]", "-", raw)


@dataclass(frozen=True)
class StoredKey:
    """The key of a cell whose id is made elsewhere (detection and outputs cells)."""

    id: str


@dataclass(frozen=True)
class CellKey:
    method: str
    dataset: str
    weights: str | None = None  # None = the method's default weights

    @property
    def id(self) -> str:
        return file_safe(f"{self.method}@{self.weights or 'default'}__{self.dataset}")



class Store:
    """A folder of cell JSON files (``results/cells/<profile>/`` by default)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: CellKey) -> Path:
        return self.root / f"{key.id}.json"

    def load(self, key: CellKey) -> dict | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"warning: ignoring unreadable cell {p}: {exc}", file=sys.stderr)
            return None

    def save(self, cell: dict) -> Path:
        p = self.root / f"{cell['id']}.json"
        atomic_write_text(p, json.dumps(cell, indent=1, sort_keys=True, allow_nan=True) + "\n")
        return p

    def all(self) -> dict[str, dict]:
        cells = {}
        for p in sorted(self.root.glob("*.json")):
            try:
                cell = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            cells[cell.get("id", p.stem)] = cell
        return cells



def new_stats() -> dict[str, int]:
    """The counters of a run: cells computed, reused, kept (an input absent here), failed, skipped."""
    return {"computed": 0, "reused": 0, "kept": 0, "failed": 0, "skipped": 0}


@dataclass
class Context:
    profile: Profile
    data_root: Path | None
    store: Store
    force: bool = False
    progress: bool = True
    stats: dict = field(default_factory=lambda: new_stats())
    #: where a cell's images run (benchmark.executor; None = in this process), the run's one
    #: progress display for them, and the images per shard (None = the executor's default)
    executor: object | None = None
    progress_bar: object | None = None
    shard_size: int | None = None



def fingerprint(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()



@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the suite (with ``+dirty`` for local changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"



def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def stamp(cell: dict) -> dict:
    """``cell`` with the code version and time that made it, as every stored cell carries."""
    cell.update(code_version=code_version(), created=_now())
    return cell



_STATS_LOCK = threading.Lock()


def count(stats: dict, what: str) -> None:
    """``stats[what] += 1``, safe when cells settle in several driver threads."""
    with _STATS_LOCK:
        stats[what] = stats.get(what, 0) + 1


def settle(key, cell: dict, store: Store, stats: dict, compute, skip_reason=lambda stage: "weights") -> dict:
    """Run ``compute(stage)`` for one cell and store the outcome; never raises for a bad input.

    ``compute`` fills ``cell`` with ``status="ok"`` and returns None, or returns a stored cell
    to reuse; it names what it is doing in ``stage["now"]``.  When an input is absent on this
    machine (weights: reason ``skip_reason(stage)``; data: reason ``data``), a stored cell is
    kept exactly as it is, whatever its status: it was made on a machine that had the input,
    and a machine without it can neither confirm nor replace it.  With no stored cell, a
    skipped cell is stored when the data is here but the weights (or detector) are not, so the
    tables name the command that trains them; a cell whose data is absent is returned but never
    stored, so a machine without the data writes nothing.  Any other error is recorded as failed
    and the run goes on.
    """
    stage = {"now": "starting"}
    try:
        reused = compute(stage)
        if reused is not None:
            count(stats, "reused")
            return reused
        count(stats, "computed")
    except (WeightsUnavailable, DatasetMissing) as exc:
        old = store.load(key)
        if old is not None:
            count(stats, "kept")
            return old
        reason = "data" if isinstance(exc, DatasetMissing) else skip_reason(stage["now"])
        cell.update(status="skipped", skip_reason=reason, error=str(exc))
        count(stats, "skipped")
        print(f"skipped {key.id}: {exc}")
        if reason == "data":
            return cell  # not stored: a machine without the data writes nothing
    except Exception as exc:  # a failed cell is recorded and the run goes on
        cell.update(status="failed", error=f"{type(exc).__name__} while {stage['now']}: {exc}",
                    traceback=traceback.format_exc(limit=8))
        count(stats, "failed")
        print(f"error: cell {key.id} failed: {cell['error']}", file=sys.stderr)
    store.save(stamp(cell))
    return cell
