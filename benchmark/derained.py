"""Derained frames cached as PNG per (derainer, weights, rain, seed, dataset): the detection
study's slowest step (a derainer takes up to seconds per KITTI frame on a CPU) is done once,
by a cell or by shards on an executor (:func:`benchmark.shards.derain_shard`), and a second
detector or a rerun reads the frames back."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from core.files import atomic_write
from core.layout import cache_root
from core.store import fingerprint


def save_frame(path: Path, img: np.ndarray) -> None:
    """Write a uint8 frame as PNG, atomically (a killed worker leaves no half frame)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    atomic_write(Path(path), lambda fh: fh.write(buf.getvalue()), binary=True)


class DerainedFrames:
    """Derained frames cached as PNG per (derainer, weights, rain, seed, dataset), so that a
    second detector, or a rerun, reuses them instead of deraining again (a derainer takes up to
    seconds per KITTI frame on a CPU).  ``hits`` counts the frames read back."""

    def __init__(self, derainer: str, weights: dict, rain: str, seed: int, dataset_fingerprint: str):
        key = fingerprint({"derainer": derainer, "weights": weights, "rain": rain, "seed": seed,
                           "dataset": dataset_fingerprint})[:20]
        self.root = cache_root() / "derained" / f"{derainer}-{rain}-{key}"
        self.hits = 0

    def missing(self, image_ids) -> list[int]:
        """Indices of ``image_ids`` whose frame is not cached yet."""
        return [i for i, image_id in enumerate(image_ids) if not self._path(image_id).is_file()]

    def _path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.png"

    def load(self, image_id: str) -> np.ndarray | None:
        path = self._path(image_id)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except OSError:
            return None  # a damaged cache file: derained again and rewritten
        self.hits += 1
        return img

    def save(self, image_id: str, img: np.ndarray) -> None:
        save_frame(self._path(image_id), img)
