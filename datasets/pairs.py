"""Paired rain / clean image folders, in the layouts deraining papers ship them.

Four layouts are recognised from file and folder names alone:

``prenet``
    PReNet's redistribution of Rain100L/Rain100H: clean images ``norain-001.png`` at
    the top of the folder, rainy images ``rainy/rain-001.png`` in a sub-folder.
    Paired by the number in the file name.
``flat``
    JORDER style: rainy and clean images side by side in one folder
    (``rain-001.png`` / ``norain-001.png``, ``rainy-1.png`` / ``norain-1.png``,
    ``1_rain.png`` / ``1_norain.png``, ``1_in.png`` / ``1_GT.png``).
    Paired by the number in the file name.
``subfolders``
    A rainy sub-folder (``rainy``, ``rain``, ``input``, ``data``, ``rain_image``,
    ``rainy_image``) next to a clean one (``clean``, ``norain``, ``target``, ``gt``,
    ``groundtruth``, ``ground_truth``, ``label``, ``no_rain``); folder names are
    case-insensitive.  Files are paired by identical stem, else by the number in the
    name (``rain-1.png`` <-> ``norain-001.png``).  A rainy folder holding no images
    but a single scale folder such as ``X2`` (JORDER's 200-image release:
    ``rain/X2/norain-1x2.png`` <-> ``norain/norain-1.png``) is entered, and a trailing
    ``x2`` scale tag is ignored when numbers are compared.
``rain1400``
    DDN's Rain1400 / Rain12600: ``rainy_image/901_1.jpg`` ... ``901_14.jpg`` all pair
    with ``ground_truth/901.jpg``.  Image names are the rainy stems (``901_1``).

Hidden files (leading dot) and files that are not images are ignored.  Every problem
raises :class:`DatasetError` whose message names the file or folder concerned.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from core.errors import DatasetError
from datasets.manifest import identify
from datasets.images import read_image
from datasets.images import _image_size

__all__ = [
    "DatasetError",
    "Pair",
    "FolderPairs",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "detect_layout",
    "find_pairs",
    "load_pair",
    "natural_key",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
LAYOUTS = ("prenet", "flat", "subfolders", "rain1400")

RAINY_DIR_NAMES = ("rainy", "rain", "input", "data", "rain_image", "rainy_image")
CLEAN_DIR_NAMES = (
    "clean", "norain", "target", "gt", "groundtruth", "ground_truth", "label", "no_rain",
)

# Role of a file in a flat folder, from the letters of its stem with digits and
# separators dropped ("no_rain-001" -> "norain", "1_GT" -> "gt").
_RAINY_WORDS = frozenset({"rain", "rainy", "in", "input", "rainimage", "rainyimage"})
_CLEAN_WORDS = frozenset({"norain", "clean", "gt", "groundtruth", "target", "label"})
# Side products some releases keep next to the pairs (JORDER's streak / region maps).
_AUX_WORDS = frozenset({"rainstreak", "rainregion", "streak", "region", "mask", "rainmask"})

_SCALE_TAG = re.compile(r"(?<=\d)x\d+$", re.IGNORECASE)   # "norain-1x2" -> "norain-1"
_DIGITS = re.compile(r"\d+")
_RAIN1400_RAINY = re.compile(r"^(\d+)_(\d+)$")
_RAIN1400_CLEAN = re.compile(r"^(\d+)$")

_MAX_LISTED = 10   # problems quoted in one error message


@dataclass(frozen=True)
class Pair:
    """One rainy image and its clean reference."""

    name: str      # stable image name used in per-image results, e.g. "001" or "901_1"
    rainy: Path
    clean: Path


# --------------------------------------------------------------------------- helpers

def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: "2" < "10", "901_2" < "901_10"."""
    parts = []
    for chunk in re.split(r"(\d+)", text):
        if not chunk:
            continue
        if chunk.isdigit():
            parts.append((0, int(chunk), chunk))
        else:
            parts.append((1, 0, chunk.lower()))
    return tuple(parts) + ((2, 0, text),)


def _raise(problems: list[str], header: str | None = None) -> None:
    lines = list(problems[:_MAX_LISTED])
    if len(problems) > _MAX_LISTED:
        lines.append(f"... and {len(problems) - _MAX_LISTED} more problem(s)")
    if header:
        lines.insert(0, header)
    raise DatasetError("\n  ".join(lines))


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except FileNotFoundError:
        raise DatasetError(f"dataset folder does not exist: {folder}") from None
    except NotADirectoryError:
        raise DatasetError(f"not a folder: {folder}") from None
    except OSError as exc:
        raise DatasetError(f"cannot list folder {folder}: {exc}") from exc


def _images_in(folder: Path) -> list[Path]:
    files = []
    for e in _entries(folder):
        if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
            try:
                if e.is_file():
                    files.append(folder / e.name)
            except OSError:
                continue
    return sorted(files, key=lambda p: natural_key(p.name))


def _subdirs(folder: Path) -> list[Path]:
    dirs = []
    for e in _entries(folder):
        try:
            if e.is_dir():
                dirs.append(folder / e.name)
        except OSError:
            continue
    return sorted(dirs, key=lambda p: p.name.lower())


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a folder: {root}")
    return root


def _strip_scale(stem: str) -> str:
    return _SCALE_TAG.sub("", stem)


def _number_key(stem: str) -> tuple[int, ...] | None:
    """Integers in a file stem, compared as integers ("rain-001" and "norain-1" agree)."""
    runs = _DIGITS.findall(_strip_scale(stem))
    return tuple(int(r) for r in runs) if runs else None


def _number_text(stem: str) -> str:
    return "_".join(_DIGITS.findall(_strip_scale(stem)))


def _role(stem: str) -> str | None:
    """"rainy", "clean", "aux" or None for a file in a flat folder."""
    word = "".join(re.findall(r"[a-z]+", _strip_scale(stem).lower()))
    if word in _CLEAN_WORDS:
        return "clean"
    if word in _RAINY_WORDS:
        return "rainy"
    if word in _AUX_WORDS:
        return "aux"
    return None


def _image_folder(folder: Path) -> Path:
    """Enter a lone scale folder ("rain/X2") when ``folder`` itself holds no images."""
    if _images_in(folder):
        return folder
    subs = _subdirs(folder)
    if len(subs) == 1 and re.fullmatch(r"x\d+", subs[0].name, re.IGNORECASE):
        return subs[0]
    return folder


def _looks_rain1400(rainy: list[Path], clean: list[Path]) -> bool:
    r_hits = sum(bool(_RAIN1400_RAINY.match(p.stem)) for p in rainy)
    c_hits = sum(bool(_RAIN1400_CLEAN.match(p.stem)) for p in clean)
    return r_hits > 0 and c_hits > 0 and 2 * r_hits > len(rainy) and 2 * c_hits > len(clean)


# --------------------------------------------------------------------------- layout

@dataclass
class _Plan:
    layout: str
    rainy: list[Path]
    clean: list[Path]
    rainy_dir: Path
    clean_dir: Path
    unclassified: list[Path]


def _plan(root: Path) -> _Plan:
    root = _check_root(root)
    subs = _subdirs(root)
    rainy_dirs = [d for d in subs if d.name.lower() in RAINY_DIR_NAMES]
    clean_dirs = [d for d in subs if d.name.lower() in CLEAN_DIR_NAMES]
    top = _images_in(root)

    if len(rainy_dirs) > 1:
        names = ", ".join(str(d) for d in rainy_dirs)
        raise DatasetError(f"{root}: several rainy sub-folders ({names}); keep only one")
    if len(clean_dirs) > 1:
        names = ", ".join(str(d) for d in clean_dirs)
        raise DatasetError(f"{root}: several clean sub-folders ({names}); keep only one")

    if rainy_dirs and clean_dirs:
        rdir, cdir = _image_folder(rainy_dirs[0]), clean_dirs[0]
        rainy, clean = _images_in(rdir), _images_in(cdir)
        if not rainy:
            raise DatasetError(f"rainy folder {rdir} contains no images")
        if not clean:
            raise DatasetError(f"clean folder {cdir} contains no images")
        layout = "rain1400" if _looks_rain1400(rainy, clean) else "subfolders"
        return _Plan(layout, rainy, clean, rdir, cdir, [])

    roles = {p: _role(p.stem) for p in top}
    top_has_both = ("rainy" in roles.values()) and ("clean" in roles.values())

    if rainy_dirs and top and not top_has_both:
        rdir = _image_folder(rainy_dirs[0])
        rainy = _images_in(rdir)
        if not rainy:
            raise DatasetError(f"rainy folder {rdir} contains no images")
        return _Plan("prenet", rainy, top, rdir, root, [])

    if top:
        rainy = [p for p in top if roles[p] == "rainy"]
        clean = [p for p in top if roles[p] == "clean"]
        other = [p for p in top if roles[p] is None]
        if rainy and clean:
            return _Plan("flat", rainy, clean, root, root, other)
        if rainy:
            raise DatasetError(
                f"{root}: found rainy images (e.g. {rainy[0].name}) but no clean images "
                f"(norain-*, *_GT, ...) and no clean sub-folder ({'|'.join(CLEAN_DIR_NAMES)})")
        if clean:
            raise DatasetError(
                f"{root}: found clean images (e.g. {clean[0].name}) but no rainy images "
                f"(rain-*, *_in, ...) and no rainy sub-folder ({'|'.join(RAINY_DIR_NAMES)})")
        raise DatasetError(
            f"{root}: cannot tell rainy from clean images (e.g. {top[0].name}); expected "
            "rain-N/norain-N files, rainy/ + clean/ sub-folders, or PReNet's rainy/ sub-folder")

    if rainy_dirs:
        raise DatasetError(
            f"{root}: found rainy folder {rainy_dirs[0]} but no clean sub-folder "
            f"({'|'.join(CLEAN_DIR_NAMES)}) and no clean images at the top")
    if clean_dirs:
        raise DatasetError(
            f"{root}: found clean folder {clean_dirs[0]} but no rainy sub-folder "
            f"({'|'.join(RAINY_DIR_NAMES)})")
    raise DatasetError(f"dataset folder {root} contains no images "
                       f"({', '.join(sorted(IMAGE_EXTENSIONS))}) and no rainy/clean sub-folders")


def detect_layout(root: Path) -> str:
    """Name the layout of a paired folder: "prenet", "flat", "subfolders" or "rain1400".

    Looks at file and folder names only.  Raises DatasetError when the folder is
    missing, holds no images, or fits none of the layouts.
    """
    return _plan(Path(root)).layout


# --------------------------------------------------------------------------- pairing

def _key_text(key) -> str:
    return "_".join(map(str, key)) if isinstance(key, tuple) else str(key)


def _keyed(files: list[Path], key_fn, what: str, problems: list[str], by: str) -> dict:
    table: dict = {}
    for f in files:
        key = key_fn(f)
        if key is None:
            problems.append(f"{f}: no number in the file name, cannot pair this {what} image")
        elif key in table:
            problems.append(f"{table[key]} and {f}: two {what} files map to the same "
                            f"{by} {_key_text(key)}")
        else:
            table[key] = f
    return table


def _pair_by(plan: _Plan, key_fn, by: str, partner, name_fn) -> list[Pair]:
    """Pair rainy and clean files whose ``key_fn`` agree; every file must find its partner.

    ``by`` names the key in messages ("number" / "name"), ``partner(key)`` describes the
    missing partner, ``name_fn(rainy_path, key)`` gives the pair's image name.
    """
    problems: list[str] = []
    rmap = _keyed(plan.rainy, key_fn, "rainy", problems, by)
    cmap = _keyed(plan.clean, key_fn, "clean", problems, by)
    pairs = []
    for key, r in rmap.items():
        c = cmap.get(key)
        if c is None:
            problems.append(f"{r}: rainy image has no clean partner {partner(key)} in {plan.clean_dir}")
        else:
            pairs.append(Pair(name_fn(r, key), r, c))
    for key, c in cmap.items():
        if key not in rmap:
            problems.append(f"{c}: clean image has no rainy partner {partner(key)} in {plan.rainy_dir}")
    if problems:
        _raise(problems)
    return pairs


def _pair_by_number(plan: _Plan) -> list[Pair]:
    return _pair_by(plan, lambda p: _number_key(p.stem), "number",
                    lambda key: f"numbered {_key_text(key)}", lambda r, key: _number_text(r.stem))


def _pair_by_stem(plan: _Plan) -> list[Pair]:
    return _pair_by(plan, lambda p: p.stem, "name", lambda stem: f"named {stem}.*", lambda r, stem: stem)


def _pair_subfolders(plan: _Plan) -> list[Pair]:
    r_stems = {p.stem for p in plan.rainy}
    c_stems = {p.stem for p in plan.clean}
    by_stem = len(r_stems & c_stems)
    r_nums = {k for k in (_number_key(p.stem) for p in plan.rainy) if k is not None}
    c_nums = {k for k in (_number_key(p.stem) for p in plan.clean) if k is not None}
    by_number = len(r_nums & c_nums)
    if by_stem > 0 and by_stem >= by_number:
        return _pair_by_stem(plan)
    if by_number > 0:
        return _pair_by_number(plan)
    raise DatasetError(
        f"no rainy image in {plan.rainy_dir} (e.g. {plan.rainy[0].name}) has a clean partner "
        f"in {plan.clean_dir} (e.g. {plan.clean[0].name}), neither by identical name nor by "
        "the number in the name")


def _pair_rain1400(plan: _Plan) -> list[Pair]:
    problems: list[str] = []
    clean_by_id: dict[int, Path] = {}
    for c in plan.clean:
        m = _RAIN1400_CLEAN.match(c.stem)
        if not m:
            problems.append(f"{c}: clean file name does not follow <id> (e.g. 901.jpg)")
            continue
        cid = int(m.group(1))
        if cid in clean_by_id:
            problems.append(f"{clean_by_id[cid]} and {c}: two clean files map to the same "
                            f"number {cid}")
        else:
            clean_by_id[cid] = c
    seen: dict[tuple[int, int], Path] = {}
    pairs = []
    for r in plan.rainy:
        m = _RAIN1400_RAINY.match(r.stem)
        if not m:
            problems.append(f"{r}: rainy file name does not follow <id>_<k> (e.g. 901_1.jpg)")
            continue
        key = (int(m.group(1)), int(m.group(2)))
        if key in seen:
            problems.append(f"{seen[key]} and {r}: two rainy files map to the same "
                            f"number {key[0]}_{key[1]}")
            continue
        seen[key] = r
        c = clean_by_id.get(key[0])
        if c is None:
            problems.append(f"{r}: rainy image has no clean partner {key[0]}.* "
                            f"in {plan.clean_dir}")
        else:
            pairs.append(Pair(r.stem, r, c))
    # A clean image without rainy versions is tolerated here: Rain1400 subsets are common.
    if problems:
        _raise(problems)
    return pairs


def _scan(root: Path) -> tuple[str, list[Pair]]:
    plan = _plan(Path(root))
    if plan.unclassified:
        _raise([f"{p}: cannot tell whether this image is rainy or clean "
                "(expected names like rain-N / norain-N, N_rain / N_norain, N_in / N_GT)"
                for p in plan.unclassified])
    if plan.layout == "rain1400":
        pairs = _pair_rain1400(plan)
    elif plan.layout == "subfolders":
        pairs = _pair_subfolders(plan)
    else:
        pairs = _pair_by_number(plan)

    problems: list[str] = []
    sizes: dict[Path, tuple[int, int]] = {}

    def size(p: Path):
        if p not in sizes:
            try:
                sizes[p] = _image_size(p)
            except DatasetError as exc:
                problems.append(str(exc))
                sizes[p] = None
        return sizes[p]

    for pair in pairs:
        rs, cs = size(pair.rainy), size(pair.clean)
        if rs is not None and cs is not None and rs != cs:
            problems.append(f"size mismatch: rainy {pair.rainy} is {rs[0]}x{rs[1]} but clean "
                            f"{pair.clean} is {cs[0]}x{cs[1]} (width x height)")
    if problems:
        _raise(problems)
    pairs.sort(key=lambda p: natural_key(p.name))
    return plan.layout, pairs


def find_pairs(root: Path) -> list[Pair]:
    """All (rainy, clean) pairs in ``root``, sorted by natural order of their names.

    Checks that every rainy image has a clean partner (and, except for rain1400,
    every clean image a rainy one), that no two files claim the same number, and
    that partners have the same size (read from the image headers).
    """
    return _scan(Path(root))[1]


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(rainy, clean) as uint8 H x W x 3 arrays of the same shape."""
    rainy = read_image(pair.rainy)
    clean = read_image(pair.clean)
    if rainy.shape != clean.shape:
        raise DatasetError(
            f"size mismatch for {pair.name}: rainy {pair.rainy} is "
            f"{rainy.shape[1]}x{rainy.shape[0]} but clean {pair.clean} is "
            f"{clean.shape[1]}x{clean.shape[0]} (width x height)")
    return rainy, clean


# --------------------------------------------------------------------------- dataset

class FolderPairs:
    """A paired dataset in a folder.

    The folder is scanned and checked at construction; images are decoded lazily,
    one pair at a time, while iterating.  ``limit`` keeps the first N pairs in
    natural order (for smoke runs).
    """

    def __init__(self, root, name: str | None = None, limit: int | None = None):
        self.root = Path(root).expanduser()
        if limit is not None:
            if isinstance(limit, bool) or int(limit) != limit or limit < 1:
                raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
            limit = int(limit)
        self.limit = limit
        self.layout, found = _scan(self.root)
        self._found = found
        self.pairs: list[Pair] = found[:limit] if limit is not None else list(found)
        self.name = name or self.root.name or self.root.resolve().name
        self._identity: dict | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for pair in self.pairs:
            rainy, clean = load_pair(pair)
            yield pair.name, rainy, clean

    def __repr__(self) -> str:
        lim = f", limit={self.limit}" if self.limit is not None else ""
        return f"FolderPairs({str(self.root)!r}, name={self.name!r}, n={len(self)}{lim})"

    def describe(self) -> dict:
        """Provenance record: release identification plus name, size, layout and limit.

        The release is identified from *all* pairs found in the folder, so a run with
        ``limit`` still records which release its images were drawn from;
        ``n_images`` is the number actually used.
        """

        if self._identity is None:
            self._identity = identify(self.root, self._found)
        info = dict(self._identity)
        info.update({"name": self.name, "n_images": len(self), "layout": self.layout,
                     "limit": self.limit})
        return info
