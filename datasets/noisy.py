"""Denoising test sets: clean images plus seeded additive Gaussian noise (Table 5 and DnCNN's BSD68).

A dataset name is ``<SET>-s<SIGMA>``, e.g. ``BSD68-s25`` (SIGMA on the 0-255 scale):

* ``BSD68`` (grayscale) and ``CBSD68`` (colour) are folders under the data root;
* ``BSDS500-test`` is ``BSDS500/test`` read as grayscale, ``CBSDS500-test`` the same in colour.

The noisy image is ``clean / 255 + sigma / 255 * n`` with ``n`` standard normal, kept in
float and neither rounded nor clipped, as DnCNN's MATLAB test script does
(``im2single(label) + sigma/255 * randn``). The noise of an image depends only on (seed,
sigma, image name), so every run and every method sees the same noisy images. Metrics are
MATLAB's on the grey levels (or on RGB for colour): PSNR and SSIM of the output rounded to
uint8 against the clean uint8 image, not on a luma channel.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import DatasetMissing
from core.metrics import psnr, ssim, to_uint8
from core.weights import parse_denoise_tag

#: set name -> (folder under the data root, colour?)
SETS = {"bsd68": ("BSD68", False), "cbsd68": ("CBSD68", True),
        "bsds500-test": ("BSDS500/test", False), "cbsds500-test": ("BSDS500/test", True)}
_CANONICAL = {"bsd68": "BSD68", "cbsd68": "CBSD68", "bsds500-test": "BSDS500-test", "cbsds500-test": "CBSDS500-test"}
_NAME = re.compile(r"^(?P<set>[a-z0-9-]+?)-s(?P<sigma>\d+)$")
_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def parse_name(name: str) -> tuple[str, int] | None:
    """``"BSD68-s25"`` -> ``("BSD68", 25)``; None if ``name`` is not a denoising set name."""
    m = _NAME.match(name.lower())
    if not m or m["set"] not in SETS:
        return None
    return _CANONICAL[m["set"]], int(m["sigma"])


def is_noisy(name: str) -> bool:
    return parse_name(name) is not None


def _noise_seed(seed: int, sigma: int, image: str) -> list[int]:
    digest = hashlib.sha256(image.encode()).digest()
    return [int(seed), int(sigma), int.from_bytes(digest[:8], "little")]


def denoise_metrics(output: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (MATLAB convention) on grey levels, or averaged over RGB channels."""
    out8, tgt8 = to_uint8(output), to_uint8(target)
    if out8.shape != tgt8.shape:
        raise ValueError(f"output shape {out8.shape} differs from target shape {tgt8.shape}")
    out, tgt = out8.astype(np.float64), tgt8.astype(np.float64)
    return {"psnr": psnr(out / 255.0, tgt / 255.0),
            "ssim": float(np.mean([ssim(out[..., c], tgt[..., c]) for c in range(out.shape[2])]))}


class NoisyImages:
    """Iterates ``(image name, noisy float32 HxWxC, clean uint8 HxWxC)``; C = 1 (grey) or 3."""

    task = "denoise"

    def __init__(self, name: str, data_root: Path | None, seed: int = 0, limit: int | None = None):
        parsed = parse_name(name)
        if parsed is None:
            raise ValueError(f"{name!r} is not a denoising set name (like BSD68-s25)")
        self.set, self.sigma = parsed
        if not 0 < self.sigma <= 255:
            raise ValueError(f"{name}: sigma must be in 1..255, got {self.sigma}")
        folder, self.colour = SETS[self.set.lower()]
        if data_root is None:
            raise DatasetMissing(f"dataset {name} needs the data root ({folder}); pass --data-root or set "
                                 "RESGUIDE_DATA")
        self.root = Path(data_root) / folder
        if not self.root.is_dir():
            raise DatasetMissing(f"dataset {name}: no folder {self.root}")
        self.files = sorted(f for f in self.root.iterdir() if f.suffix.lower() in _EXTS and f.is_file())
        if not self.files:
            raise ValueError(f"{self.root}: no images")
        if limit is not None:
            self.files = self.files[:limit]
        self.name = f"{self.set}-s{self.sigma}"
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.files)

    def _clean(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB" if self.colour else "L"), dtype=np.uint8)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read image ({exc})") from exc
        return img if img.ndim == 3 else img[..., None]

    def __iter__(self):
        for path in self.files:
            clean = self._clean(path)
            rng = np.random.default_rng(_noise_seed(self.seed, self.sigma, path.name))
            noise = rng.standard_normal(clean.shape, dtype=np.float32)
            noisy = clean.astype(np.float32) / 255.0 + np.float32(self.sigma / 255.0) * noise
            yield path.stem, noisy, clean

    def metrics(self, output: np.ndarray, target: np.ndarray) -> dict[str, float]:
        return denoise_metrics(output, target)

    def describe(self) -> dict:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return {"name": self.name, "release": self.set, "version": f"sigma{self.sigma}-seed{self.seed}",
                "known": False, "fingerprint": h.hexdigest(), "n_images": len(self), "sigma": self.sigma,
                "colour": self.colour, "noise": "float, unclipped: clean/255 + sigma/255 * N(0,1), seeded per image"}


# --------------------------------------------------------------------------
# the same grey conversion and noise for training (models.train.NoisyPatchSampler)


def to_grey(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> uint8 HxWx1 with PIL's ``convert("L")`` (ITU-R 601-2 luma, integer
    rounding), the conversion :class:`NoisyImages` applies to the grayscale test sets."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"to_grey: expected uint8 HxWx3 (or HxWx1), got {img.dtype} {img.shape}")
    if img.shape[2] == 1:
        return img
    return np.asarray(Image.fromarray(img, "RGB").convert("L"), dtype=np.uint8)[..., None]


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``clean / 255 + sigma / 255 * N(0, 1)`` in float32, neither rounded nor clipped: the formula
    of :class:`NoisyImages` (``clean`` uint8; ``sigma`` on the 0-255 scale; noise drawn from ``rng``)."""
    clean = np.asarray(clean)
    if clean.dtype != np.uint8:
        raise ValueError(f"add_noise: clean image must be uint8, got {clean.dtype}")
    noise = rng.standard_normal(clean.shape, dtype=np.float32)
    return clean.astype(np.float32) / 255.0 + np.float32(sigma / 255.0) * noise


#: BSD68 / CBSD68 are BSDS500 val images: never score a model trained on BSDS500 train + val on them
INSIDE_TRAIN_VAL = ("BSD68", "CBSD68")


def refuse_seen_test_set(dataset: str, weights, winfo: dict | None = None) -> None:
    """Raise ValueError when ``dataset`` is BSD68 / CBSD68 and the weights are one of the suite's
    denoisers (tag ``denoise-...`` or a weights file whose record says it trained on BSDS500):
    those train on BSDS500 train + val, and BSD68 lies inside val (Table 5 scores them on
    BSDS500 test).  The authors' DnCNN weights (``official-sN``, trained on Train400) are fine."""
    parsed = parse_name(str(dataset))
    if parsed is None or parsed[0] not in INSIDE_TRAIN_VAL:
        return

    data = (winfo or {}).get("training_data") or ""
    source = str(data.get("source", "")) if isinstance(data, dict) else str(data)
    if parse_denoise_tag(weights) is not None or "BSDS500" in source:
        raise ValueError(f"{dataset}: these weights ({weights}) were trained on BSDS500 train + val, and "
                         f"{parsed[0]} lies inside BSDS500 val; score them on BSDS500-test-s{parsed[1]} "
                         f"(or CBSDS500-test-s{parsed[1]}) instead")
