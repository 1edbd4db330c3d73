"""Registered test sets and how to find them under a data root.

A dataset argument is either a folder path or a registered name.  Registered names
are looked up, case-insensitively, as folder names under the data root (the
``--data-root`` option or the ``RESGUIDE_DATA`` environment variable) down to three
levels deep, so ``<root>/Rain100L`` and ``<root>/test/rain100l`` are both found.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import DatasetError

__all__ = [
    "REGISTERED", "ALIASES", "DATA_ROOT_ENV", "MAX_SEARCH_DEPTH",
    "canonical_name", "default_data_root", "resolve_dataset",
]

DATA_ROOT_ENV = "RESGUIDE_DATA"
MAX_SEARCH_DEPTH = 3

# lower-case key -> canonical name
REGISTERED = {
    "rain100l": "Rain100L",
    "rain100h": "Rain100H",
    "rain12": "Rain12",
    "rain1400": "Rain1400",
}

# Other folder names (lower case) under which a registered set is commonly unpacked
# -> canonical name.  JORDER's 200-image releases unpack as rain_data_test_Light/Heavy.
ALIASES = {
    "rain100l_test": "Rain100L",
    "test_rain100l": "Rain100L",
    "rain_data_test_light": "Rain100L",
    "rain100h_test": "Rain100H",
    "test_rain100h": "Rain100H",
    "rain_data_test_heavy": "Rain100H",
    "rain12_test": "Rain12",
    "test_rain12": "Rain12",
    "rain1400_test": "Rain1400",
    "test_rain1400": "Rain1400",
}


def canonical_name(name: str) -> str | None:
    """Canonical registered name for a registered name or alias (any case), else None."""
    key = name.strip().lower()
    return REGISTERED.get(key) or ALIASES.get(key)


def default_data_root() -> Path | None:
    """The data root named by $RESGUIDE_DATA, or None when it is unset or empty."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _folder_names(canonical: str) -> set[str]:
    names = {k for k, v in REGISTERED.items() if v == canonical}
    names |= {k for k, v in ALIASES.items() if v == canonical}
    return names


def _search(data_root: Path, wanted: set[str], canonical: str) -> list[tuple[int, int, Path]]:
    """(is_alias, depth, path) for every folder whose lower-cased name is in ``wanted``."""
    hits = []
    level = [data_root]
    for depth in range(1, MAX_SEARCH_DEPTH + 1):
        nxt = []
        for folder in level:
            try:
                with os.scandir(folder) as it:
                    entries = sorted((e for e in it if not e.name.startswith(".")),
                                     key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                try:
                    if not e.is_dir():
                        continue
                except OSError:
                    continue
                path = folder / e.name
                low = e.name.lower()
                if low in wanted:
                    hits.append((int(low != canonical.lower()), depth, path))
                nxt.append(path)
        level = nxt
    return sorted(hits, key=lambda h: (h[0], h[1], str(h[2])))


def resolve_dataset(name_or_path: str, data_root: Path | None) -> tuple[str, Path]:
    """(dataset name, folder) for a folder path or a registered dataset name.

    An existing folder wins and is named after itself.  A registered name (or alias,
    any case) is searched under ``data_root`` to depth 3; a folder literally named
    like the canonical name is preferred over an alias, then the shallowest.  This
    function does not read $RESGUIDE_DATA itself: callers pass
    ``args.data_root or default_data_root()``.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return (path.name or path.resolve().name), path
    if path.exists():
        raise DatasetError(f"dataset path {path} is a file, not a folder")

    canonical = canonical_name(text)
    if canonical is None:
        registered = ", ".join(REGISTERED.values())
        if os.sep in text or "/" in text:
            raise DatasetError(f"dataset folder does not exist: {path} "
                               f"(registered names: {registered})")
        raise DatasetError(f"{text!r} is neither an existing folder nor a registered dataset "
                           f"name; registered names: {registered}")

    if data_root is None:
        raise DatasetError(f"dataset {canonical} is looked up under a data root: pass "
                           f"--data-root or set {DATA_ROOT_ENV}, or give the folder path")
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise DatasetError(f"data root {data_root} does not exist or is not a folder "
                           f"(looking for {canonical})")

    wanted = _folder_names(canonical)
    hits = _search(data_root, wanted, canonical)
    if not hits:
        raise DatasetError(
            f"dataset {canonical} not found under {data_root}: looked for a folder named "
            f"{' / '.join(sorted(wanted))} (any case) down to {MAX_SEARCH_DEPTH} levels below it")
    best = [h for h in hits if h[:2] == hits[0][:2]]
    if len(best) > 1:
        listed = ", ".join(str(h[2]) for h in best)
        raise DatasetError(f"dataset {canonical} is ambiguous under {data_root}: {listed}; "
                           "pass the folder path instead")
    return canonical, best[0][2]
