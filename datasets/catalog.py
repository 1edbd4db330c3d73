"""Open a dataset by name: the embedded default or a real paired folder under the data root."""
from __future__ import annotations

import copy
import os
from pathlib import Path

from core.errors import DatasetError, DatasetMissing
from datasets.embedded import EmbeddedPairs
from datasets.names import canonical_name, resolve_dataset
from datasets.noisy import NoisyImages, is_noisy
from datasets.pairs import FolderPairs

EMBEDDED = {"embedded-light": "light", "embedded-heavy": "heavy"}


def data_root_from(arg: str | os.PathLike | None) -> Path | None:
    """``--data-root`` if given, else ``$RESGUIDE_DATA``, else None (embedded default only)."""
    value = arg if arg else os.environ.get("RESGUIDE_DATA")
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"data root {root} is not a directory")
    return root


def open_dataset(name: str, data_root: Path | None, size: int, seed: int, limit: int | None = None):
    """A paired dataset object (iterates ``(image name, rainy uint8, clean uint8)``, has ``describe()``).

    ``size`` and ``seed`` shape the embedded default; ``limit`` keeps the first N pairs.
    Raises ``DatasetMissing`` when a registered real dataset is not under ``data_root``.
    """
    if is_noisy(name):  # a denoising set such as BSD68-s25
        return NoisyImages(name, data_root, seed=seed, limit=limit)
    rain = EMBEDDED.get(name.lower())
    if rain is not None:
        return EmbeddedPairs(rain=rain, split="test", size=size, seed=seed, limit=limit)
    if Path(name).is_dir() or canonical_name(name) is None:
        # a folder path, or an unknown name: a typo is an error, not missing data
        canonical, path = resolve_dataset(name, data_root)
    else:
        try:
            canonical, path = resolve_dataset(name, data_root)
        except DatasetError as exc:
            raise DatasetMissing(str(exc)) from None
    return FolderPairs(path, name=canonical, limit=limit)


def is_embedded(name: str) -> bool:
    return name.lower() in EMBEDDED


def image_range(dataset, start: int, stop: int):
    """The images ``[start, stop)`` of ``dataset`` as a dataset of the same kind, whose images
    (and per-image rain or noise, seeded by image name) are exactly those of the whole set; a
    cell's shards are such ranges (:mod:`benchmark.shards`)."""
    n = len(dataset)
    if not 0 <= start < stop <= n:
        raise ValueError(f"image range [{start}, {stop}) is outside the {n} images of {getattr(dataset, 'name', dataset)}")
    part = copy.copy(dataset)
    if isinstance(dataset, FolderPairs):
        part.pairs = dataset.pairs[start:stop]
    elif isinstance(dataset, NoisyImages):
        part.files = dataset.files[start:stop]
    elif isinstance(dataset, EmbeddedPairs):
        part.select(start, stop)
    else:
        raise TypeError(f"cannot take an image range of {type(dataset).__name__}")
    return part
