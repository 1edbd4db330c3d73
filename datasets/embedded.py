"""The embedded default dataset: natural photos that ship inside installed wheels.

No download and no external data: the clean images are read directly from
the data folders of scikit-image, scikit-learn and matplotlib (the files are
opened with PIL; none of the packages' loader functions are called, since
some of them may try to fetch).  Rainy versions are synthesised with
:mod:`datasets.rain` using a per-image seed derived from the dataset seed and
the image name, so every pair is reproducible bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import zlib
from typing import Iterator

import numpy as np
from PIL import Image

from datasets.rain import RainParams, add_rain

__all__ = [
    "SOURCES",
    "TEST_NAMES",
    "TRAIN_NAMES",
    "MIN_IMAGES",
    "available_sources",
    "clean_images",
    "image_seed",
    "EmbeddedPairs",
]

# (name, package, file path relative to the package folder).  Natural
# colour photographs only: no synthetic charts, textures, astronomy or
# microscopy images.
SOURCES: list[tuple[str, str, str]] = [
    ("astronaut", "skimage", "data/astronaut.png"),
    ("chelsea", "skimage", "data/chelsea.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("motorcycle_left", "skimage", "data/motorcycle_left.png"),
    ("motorcycle_right", "skimage", "data/motorcycle_right.png"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
    ("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
]

# Fixed split.  The two motorcycle images are a stereo pair (near
# duplicates), so they must sit in the same split: both are in train.
TEST_NAMES: tuple[str, ...] = ("astronaut", "china", "coffee")
TRAIN_NAMES: tuple[str, ...] = tuple(
    sorted(name for name, _, _ in SOURCES if name not in TEST_NAMES)
)

MIN_IMAGES = 8

assert not set(TEST_NAMES) & set(TRAIN_NAMES), "a test image is also a train image"
assert set(TEST_NAMES) | set(TRAIN_NAMES) == {n for n, _, _ in SOURCES}
_STEREO = {"motorcycle_left", "motorcycle_right"}
assert _STEREO <= set(TRAIN_NAMES) or _STEREO <= set(TEST_NAMES), "stereo pair split across train/test"
assert len({n for n, _, _ in SOURCES}) == len(SOURCES), "duplicate source names"


def _package_dir(package: str) -> str | None:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=None)
def available_sources() -> dict[str, str]:
    """Map image name -> absolute file path for the files actually present.

    Missing optional files are skipped; fewer than MIN_IMAGES in total (or an
    empty split) raises RuntimeError.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    for name, package, rel in SOURCES:
        root = _package_dir(package)
        path = os.path.join(root, *rel.split("/")) if root else None
        if path and os.path.isfile(path):
            found[name] = path
        else:
            missing.append(f"{name} ({package}/{rel})")
    if len(found) < MIN_IMAGES:
        raise RuntimeError(
            f"embedded dataset needs at least {MIN_IMAGES} images shipped in the "
            f"scikit-image/scikit-learn/matplotlib wheels, found {len(found)}; "
            f"missing: {', '.join(missing)}"
        )
    for split, names in (("test", TEST_NAMES), ("train", TRAIN_NAMES)):
        if not any(n in found for n in names):
            raise RuntimeError(f"embedded dataset: no image of the {split} split is installed")
    return found


def _split_names(split: str) -> tuple[str, ...]:
    if split == "test":
        names = TEST_NAMES
    elif split == "train":
        names = TRAIN_NAMES
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    found = available_sources()
    return tuple(sorted(n for n in names if n in found))


def _load_square(path: str, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left = (w - side) // 2
        top = (h - side) // 2
        crop = im.crop((left, top, left + side, top + side))
        if side != size:
            crop = crop.resize((size, size), Image.BICUBIC)
        arr = np.asarray(crop, dtype=np.uint8)
    return np.ascontiguousarray(arr)


@functools.lru_cache(maxsize=8)
def _clean_cached(split: str, size: int) -> tuple[tuple[str, np.ndarray], ...]:
    found = available_sources()
    out = []
    for name in _split_names(split):
        arr = _load_square(found[name], size)
        arr.setflags(write=False)
        out.append((name, arr))
    return tuple(out)


def clean_images(split: str, size: int) -> list[tuple[str, np.ndarray]]:
    """Clean images of a split, centre-cropped square and resized to size x size.

    Returns [(name, uint8 HxWx3 RGB)], sorted by name.  The arrays are fresh
    copies, safe to modify.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    return [(name, arr.copy()) for name, arr in _clean_cached(split, size)]


def image_seed(seed: int, name: str) -> int:
    """Per-image rain seed derived deterministically from (seed, image name)."""
    return zlib.crc32(f"{int(seed)}/{name}".encode("utf-8"))


class EmbeddedPairs:
    """Rainy/clean pairs built from the embedded natural images.

    Iterating yields ``(name, rainy uint8 HxWx3, clean uint8 HxWx3)``; pairs
    are generated once per object and cached in memory (copies are handed
    out, so callers may modify them).
    """

    def __init__(
        self,
        rain: str | RainParams = "light",
        split: str = "test",
        size: int = 128,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if limit is not None and int(limit) < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        self.rain = rain
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.limit = None if limit is None else int(limit)
        rain_label = rain if isinstance(rain, str) else "custom"
        self.name = f"embedded-{rain_label}" + ("-train" if split == "train" else "")
        self._pairs: list[tuple[str, np.ndarray, np.ndarray]] | None = None
        self._range: tuple[int, int] | None = None

    def select(self, start: int, stop: int) -> None:
        """Keep the pairs ``[start, stop)`` only (same images and rain as in the whole set)."""
        self._range = (int(start), int(stop))
        if self._pairs is not None:  # already generated (a copy of a used set): slice it
            self._pairs = self._pairs[start:stop]

    def _generate(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        if self._pairs is None:
            images = clean_images(self.split, self.size)
            if self.limit is not None:
                images = images[: self.limit]
            if self._range is not None:
                images = images[self._range[0]:self._range[1]]
            pairs = []
            for name, clean in images:
                rainy = add_rain(clean, self.rain, seed=image_seed(self.seed, name))
                pairs.append((name, rainy, clean))
            self._pairs = pairs
        return self._pairs

    def __len__(self) -> int:
        n = len(_split_names(self.split))
        n = n if self.limit is None else min(n, self.limit)
        return n if self._range is None else max(0, min(n, self._range[1]) - self._range[0])

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for name, rainy, clean in self._generate():
            yield name, rainy.copy(), clean.copy()

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for _, rainy, clean in self._generate():
            h.update(np.ascontiguousarray(rainy).tobytes())
            h.update(np.ascontiguousarray(clean).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "n_images": len(self),
            "known": True,
            "release": "embedded",
            "version": f"size{self.size}-seed{self.seed}",
            "split": self.split,
            "rain": self.rain if isinstance(self.rain, str) else repr(self.rain),
            "fingerprint": self.fingerprint(),
            "source": "images shipped in scikit-image/scikit-learn/matplotlib wheels, "
            "rain synthesised by datasets.rain",
        }

    def __repr__(self) -> str:
        return (
            f"EmbeddedPairs(rain={self.rain!r}, split={self.split!r}, size={self.size}, "
            f"seed={self.seed}, limit={self.limit})"
        )
