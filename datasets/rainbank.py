"""Real rain layers from the real heavy-rain training pairs, and the fits of the "-real" rain presets.

The data root's ``train/RainTrainH-sample18`` holds 18 real heavy-rain pairs from the Rain100H
authors' pipeline, ``rainy/norain-N.png`` over ``clean/norain-N.png``.  They are training and
calibration data; no test set (Rain100L/H, BSD68, CBSD68, BSDS500 test, KITTI) is read here.
Their rain is additive, ``O = min(B + S, 1)`` with the same grey ``S`` on R, G and B
(:mod:`datasets.rainstats`), so the layer is recovered exactly as ``S = O - B`` wherever ``O`` is
not saturated.

Split.  Pairs are ordered by their number (``norain-2``, ``norain-3``, ..., ``norain-20``; there is
no 1 or 10).  The first 12 (``norain-2`` .. ``norain-14``) are the *fit* pairs: the rain bank and
the fit of ``heavy-real`` use only them by default.  The last 6 (``norain-15`` .. ``norain-20``,
:data:`HOLDOUT` = 6) are held out, to check the fit and to serve as an unseen-real-rain yardstick
for the synthetic-to-real domain gap.

What is here:

* :func:`pair_folder`, :func:`pair_names`, :func:`split_names`, :func:`load_pairs`: finding and
  reading the pairs, with errors that name the folder;
* :func:`extract_layer`: the additive rain layer of a pair, with its saturated pixels filled;
* :class:`RainBank`, :func:`load_bank`, :func:`add_bank_rain`: a bank of real rain layers and
  the compositing of a randomly cropped, flipped, rescaled and dimmed one over a clean image;
* :func:`fit_heavy_real`, :func:`calibrate_light_real`: the reproducible fits whose rounded results
  are ``datasets.rain.HEAVY_REAL_FIT`` and ``LIGHT_REAL_FIT``;
* :func:`rainy_input_score`, :func:`measure_rain`, :func:`training_backgrounds`: helpers of the
  fits (the suite's Y-channel PSNR/SSIM; statistics of a rain source over backgrounds; the
  BSDS500 training backgrounds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from datasets.pairs import FolderPairs
from datasets.rain import add_rain, as_unit_float
from datasets.rainstats import rain_layer
from datasets.training import read_rgb

__all__ = [
    "PAIRS_SUBDIR",
    "HOLDOUT",
    "HEAVY_TARGET",
    "LIGHT_TARGET",
    "FIT_STATS",
    "pair_folder",
    "pair_names",
    "split_names",
    "load_pairs",
    "extract_layer",
    "RainBank",
    "load_bank",
    "add_bank_rain",
    "PAIR_SOURCES",
    "PAIR_MIX",
    "fit_pairs",
]

#: Where the real pairs live under the data root.
PAIRS_SUBDIR = Path("train") / "RainTrainH-sample18"
#: How many pairs, the last by number, are held out of the bank and of the fit by default.
HOLDOUT = 6
#: Published rainy-input scores (JORDER, Table 2; Y channel): Rain100H and Rain100L.
HEAVY_TARGET = (13.56, 0.379)
LIGHT_TARGET = (26.90, 0.838)
#: The statistics of :func:`datasets.rainstats.layer_stats` that :func:`fit_heavy_real` matches.
FIT_STATS = (
    "angle_spread_deg", "coherence", "width_px", "length_px", "bright_p50", "bright_p90",
    "bright_p99", "coverage", "blur_px", "veil",
)


# --------------------------------------------------------------------------
# the real pairs
# --------------------------------------------------------------------------

def _number_key(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)", name)
    return (int(m.group(1)) if m else -1, name)


def pair_folder(data_root: str | Path) -> Path:
    """The folder holding ``rainy/`` and ``clean/``: ``data_root/train/RainTrainH-sample18``, or
    ``data_root`` itself when it already holds them.  FileNotFoundError names the folder otherwise."""
    root = Path(data_root)
    for folder in (root / PAIRS_SUBDIR, root):
        if (folder / "rainy").is_dir() and (folder / "clean").is_dir():
            return folder
    raise FileNotFoundError(
        f"no real rain pairs in {root / PAIRS_SUBDIR}: expected {root / PAIRS_SUBDIR}/rainy/norain-N.png "
        f"and {root / PAIRS_SUBDIR}/clean/norain-N.png (or rainy/ and clean/ directly under {root})"
    )


def pair_names(data_root: str | Path) -> list[str]:
    """File names of the pairs (``norain-N.png``), ordered by their number.

    Every rainy image must have its clean counterpart; an error names the missing file."""
    folder = pair_folder(data_root)
    names = sorted((p.name for p in (folder / "rainy").iterdir() if p.suffix.lower() == ".png"), key=_number_key)
    if not names:
        raise FileNotFoundError(f"no rainy PNGs in {folder / 'rainy'}")
    missing = [n for n in names if not (folder / "clean" / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder / 'clean'} lacks the clean image of {', '.join(missing)}")
    return names


def split_names(names: Sequence[str], holdout: int = HOLDOUT) -> tuple[list[str], list[str]]:
    """``(fit, held_out)``: the held-out pairs are the last ``holdout`` by number."""
    ordered = sorted(names, key=_number_key)
    if not 0 <= holdout < len(ordered):
        raise ValueError(f"cannot hold out {holdout} of {len(ordered)} pairs")
    cut = len(ordered) - holdout
    return ordered[:cut], ordered[cut:]


def _select(data_root, names: Sequence[str] | None, holdout: int) -> tuple[Path, list[str]]:
    folder = pair_folder(data_root)
    available = pair_names(folder)
    if names is None:
        return folder, split_names(available, holdout)[0]
    names = [n if n.lower().endswith(".png") else f"{n}.png" for n in names]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise FileNotFoundError(f"{folder} has no pair {', '.join(unknown)}; it has {', '.join(available)}")
    if not names:
        raise ValueError("no pairs selected")
    return folder, sorted(names, key=_number_key)


def load_pairs(
    data_root: str | Path, names: Sequence[str] | None = None, holdout: int = HOLDOUT
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, rainy, clean)]`` (uint8 HxWx3) for ``names`` (default: all but the last ``holdout``)."""
    folder, chosen = _select(data_root, names, holdout)
    return [(n, read_rgb(folder / "rainy" / n), read_rgb(folder / "clean" / n)) for n in chosen]


# --------------------------------------------------------------------------
# the bank
# --------------------------------------------------------------------------

# Shifts (rows, cols) tried in turn to fill a layer's saturated pixels with rain from elsewhere.
_FILL_SHIFTS = tuple(
    s for m in (17, 41, 83, 131, 199) for s in ((0, m), (0, -m), (m, 0), (-m, 0), (m, m), (-m, -m), (m, -m), (-m, m))
)


def extract_layer(rainy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The additive rain layer of a real pair: ``(S, valid)``, S float32 HxW in [0, 1].

    ``S = O - B`` averaged over the unsaturated channels (:func:`datasets.rainstats.rain_layer`
    with ``blend="additive"``).  Where all three channels are saturated (``~valid``) the pair
    only bounds ``S`` from below, by a value shaped like the background; such pixels are filled
    instead with the layer's own rain from a shifted position (the rain is stationary): the
    shifts in ``_FILL_SHIFTS`` (periodic) are tried in turn, each pixel taking the first whose
    source pixel was measured; what no shift reaches gets the median of the measured pixels.  So
    no trace of the pair's background is carried to another image.  Streaks are cut at the
    border of a filled region, so :func:`add_bank_rain` prefers crops with few filled pixels.
    """
    s, valid = rain_layer(rainy, clean, blend="additive")
    out = np.where(valid, s, 0.0)
    known = valid.copy()
    for dr, dc in _FILL_SHIFTS:
        if known.all():
            break
        take = ~known & np.roll(valid, (dr, dc), axis=(0, 1))
        if take.any():
            out[take] = np.roll(s, (dr, dc), axis=(0, 1))[take]
            known |= take
    if not known.all():
        out[~known] = float(np.median(s[valid])) if valid.any() else 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32), valid


@dataclass(frozen=True)
class RainBank:
    """Real rain layers: ``names[i]`` gave ``layers[i]`` (float32 HxW in [0, 1], filled) and
    ``valid[i]`` (bool HxW: where it was measured, not filled).  ``folder`` is where they came
    from."""

    names: tuple[str, ...]
    layers: tuple[np.ndarray, ...] = field(repr=False)
    valid: tuple[np.ndarray, ...] = field(repr=False)
    folder: str = ""
    _tables: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names, layers, valid = tuple(self.names), tuple(self.layers), tuple(self.valid)
        if not len(names) == len(layers) == len(valid):
            raise ValueError("names, layers and valid must have the same length")
        for s, v in zip(layers, valid):
            if s.ndim != 2 or s.shape != v.shape:
                raise ValueError(f"each layer must be HxW with a valid mask of its shape, got {s.shape} and {v.shape}")
        # summed-area tables of the valid masks: the valid share of any crop in O(1)
        tables = tuple(np.pad(np.asarray(v, dtype=np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0))) for v in valid)
        for name, value in (("names", names), ("layers", layers), ("valid", valid), ("_tables", tables)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.names)

    def valid_share(self, k: int, r0: int, c0: int, r1: int, c1: int) -> float:
        """Share of measured (not filled) pixels of layer ``k`` in rows r0:r1, cols c0:c1 (clipped)."""
        t = self._tables[k]
        h, w = self.valid[k].shape
        r0, r1 = max(r0, 0), min(r1, h)
        c0, c1 = max(c0, 0), min(c1, w)
        if r1 <= r0 or c1 <= c0:
            return 0.0
        n = t[r1, c1] - t[r0, c1] - t[r1, c0] + t[r0, c0]
        return float(n) / ((r1 - r0) * (c1 - c0))


@lru_cache(maxsize=4)
def _load_bank_cached(folder: str, names: tuple[str, ...]) -> RainBank:
    layers, valids = [], []
    for n in names:
        s, v = extract_layer(read_rgb(Path(folder) / "rainy" / n), read_rgb(Path(folder) / "clean" / n))
        s.setflags(write=False)
        v.setflags(write=False)
        layers.append(s)
        valids.append(v)
    return RainBank(names=names, layers=tuple(layers), valid=tuple(valids), folder=folder)


def load_bank(data_root: str | Path, names: Sequence[str] | None = None, holdout: int = HOLDOUT) -> RainBank:
    """The bank of real rain layers of ``names`` (default: every pair but the last ``holdout`` by
    number, i.e. ``norain-2`` .. ``norain-14``, keeping ``norain-15`` .. ``norain-20`` unseen).

    ``data_root`` is the suite's data root (or the pairs folder itself); a missing folder, a
    missing clean image or an unknown name raises FileNotFoundError naming the folder.  Layers
    are read-only and cached per (folder, names)."""
    folder, chosen = _select(data_root, names, holdout)
    return _load_bank_cached(str(folder), tuple(chosen))


def add_bank_rain(
    clean: np.ndarray,
    seed: int,
    bank: RainBank,
    *,
    scale: tuple[float, float] = (0.75, 1.5),
    gain: tuple[float, float] = (0.7, 1.2),
    min_valid: float = 0.95,
    tries: int = 8,
) -> np.ndarray:
    """Return a rainy uint8 copy of ``clean`` with a real rain layer from ``bank`` added.

    clean: uint8 HxWx3 (or float in [0, 1]; an HxW grey image gives HxW), as
        :func:`datasets.rain.add_rain`.
    seed:  everything random comes from ``np.random.default_rng(seed)``, drawn in this order: a
        zoom factor uniform in ``scale``, the layer (uniform over the layers that cover the image at
        that zoom, or else over those that need the least zoom to cover it), a horizontal flip
        (p = 1/2), an intensity gain uniform in ``gain``, then crop positions (uniform): up to
        ``tries`` of them, keeping the first whose share of measured (not filled, see
        :func:`extract_layer`) pixels is at least ``min_valid``, else the best one.  Bit-exact
        per (image, seed, bank).

    The crop of ``H / zoom`` x ``W / zoom`` layer pixels is resampled bilinearly to the image
    size (after a Gaussian prefilter when shrinking).  The zoom is raised where needed so that
    the zoomed layer covers the image (a whole 481 x 321 image needs at least 1; a 128 x 128
    patch never needs it).  The layer, times the gain, is added to every channel:
    ``O = min(B + g S, 1)``, rounded to uint8 like ``add_rain``.
    """
    if len(bank) == 0:
        raise ValueError("the rain bank is empty")
    img = as_unit_float(clean)
    if img.ndim == 3 and img.shape[2] != 3:
        raise ValueError(f"expected HxWx3, got shape {img.shape}")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected HxWx3 or HxW, got shape {img.shape}")
    h, w = img.shape[:2]
    rng = np.random.default_rng(seed)
    zoom = float(rng.uniform(*scale))
    # the zoom each layer needs to cover the image; layers that need more than the drawn zoom
    # (and more than the least any layer needs) are left out, e.g. landscape layers under a
    # portrait image: so a 128 x 128 patch may get any layer, a whole image one of its orientation
    need = np.array([max(h / s.shape[0], w / s.shape[1]) for s in bank.layers])
    eligible = np.flatnonzero(need <= max(zoom, float(need.min())))
    k = int(eligible[rng.integers(len(eligible))])
    flip = bool(rng.random() < 0.5)
    g = float(rng.uniform(*gain))
    layer = bank.layers[k]
    h0, w0 = layer.shape
    zoom = max(zoom, float(need[k]))  # the zoomed layer covers the image: no seams
    # the crop, in layer pixels: output pixel i samples layer row r0 + (i + 0.5) / zoom - 0.5
    span_r, span_c = min(h / zoom, h0), min(w / zoom, w0)
    best = (-1.0, 0.0, 0.0)
    for _ in range(max(1, tries)):
        r0 = float(rng.uniform(0.0, h0 - span_r))
        c0 = float(rng.uniform(0.0, w0 - span_c))
        share = bank.valid_share(k, int(r0), int(c0), math.ceil(r0 + span_r), math.ceil(c0 + span_c))
        if share > best[0]:
            best = (share, r0, c0)
        if share >= min_valid:
            break
    _, r0, c0 = best
    lo_r, lo_c = math.floor(r0), math.floor(c0)
    n_r, n_c = math.ceil(r0 + span_r) + 2 - lo_r, math.ceil(c0 + span_c) + 2 - lo_c
    rows_idx = np.minimum(np.arange(lo_r, lo_r + n_r), h0 - 1)
    cols_idx = np.minimum(np.arange(lo_c, lo_c + n_c), w0 - 1)
    crop = np.asarray(layer, dtype=np.float64)[np.ix_(rows_idx, cols_idx)]
    if flip:
        crop = crop[:, ::-1]
        c_start = n_c - (c0 - lo_c) - span_c  # the mirrored crop window's left edge
    else:
        c_start = c0 - lo_c
    if zoom < 1.0:
        crop = ndimage.gaussian_filter(crop, 0.5 * math.sqrt(1.0 / zoom**2 - 1.0), mode="nearest")
    rows = (r0 - lo_r) + (np.arange(h) + 0.5) / zoom - 0.5
    cols = c_start + (np.arange(w) + 0.5) / zoom - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    s = ndimage.map_coordinates(crop, (rr, cc), order=1, mode="nearest")
    s *= g
    if img.ndim == 3:
        s = s[:, :, None]
    out = np.clip(img + s, 0.0, 1.0)
    return np.rint(out * 255.0).astype(np.uint8)


#: Training rain sources made from the bank: tag -> the bank's pairs (None: the fit pairs, the
#: last :data:`HOLDOUT` held out).
BANK_SOURCES = {"bank-heavy": None, "bank-mix-heavy": None}
#: Mixed sources: tag -> the datasets.rain preset that renders every other image (by its seed); the
#: rest get the bank's real layers.
BANK_MIX = {"bank-mix-heavy": "heavy-real"}


def takes_bank(tag: str, seed: int) -> bool:
    """Whether the image of ``seed`` gets the bank's rain under source ``tag`` (always for a source
    without a mix; one in two, a function of the seed alone, for a mixed source)."""
    return tag not in BANK_MIX or bool(np.random.default_rng([int(seed), 0xBA4C]).random() < 0.5)


def bank_renderer(tag: str, data_root: str | Path | None):
    """``render(clean, seed) -> rainy`` for a bank source of :data:`BANK_SOURCES` (what a training
    sampler calls in place of :func:`datasets.rain.add_rain`); FileNotFoundError naming the folder
    when the real pairs are not under ``data_root``."""
    if data_root is None:
        raise FileNotFoundError(f"rain {tag!r} composes real rain layers: it needs the real training pairs "
                                f"under a data root (<root>/{PAIRS_SUBDIR})")
    bank = load_bank(data_root, BANK_SOURCES[tag])

    def render(clean: np.ndarray, seed: int) -> np.ndarray:
        if takes_bank(tag, seed):
            return add_bank_rain(clean, seed, bank)
        return add_rain(clean, BANK_MIX[tag], seed)

    return render


#: Training sources that are the real pairs themselves: a model trains on crops of the fit pairs'
#: rainy images against their clean ones (no layer is extracted or composited). ``pairs-heavy-warm``
#: trains on the same crops, starting from a model trained on rendered rain (``models.provider.WARM_STARTS``).
PAIR_SOURCES = ("pairs-heavy", "pairs-heavy-warm", "pairs-mix-heavy-warm")
#: Pair sources whose batches are half the fit pairs' crops, half clean training backgrounds under the
#: rain of this bank source (:data:`BANK_SOURCES`): the same real rain over more backgrounds.
PAIR_MIX = {"pairs-mix-heavy-warm": "bank-heavy"}


def fit_pairs(data_root: str | Path | None, holdout: int = HOLDOUT) -> FolderPairs:
    """The fit pairs (all but the last ``holdout`` by number) as a ``FolderPairs`` for
    ``models.samplers.PairedPatchSampler``; FileNotFoundError naming the folder when they are absent."""
    if data_root is None:
        raise FileNotFoundError(f"rain {PAIR_SOURCES[0]!r} trains on the real pairs: it needs them under a "
                                f"data root (<root>/{PAIRS_SUBDIR})")
    folder = pair_folder(data_root)
    fit = {Path(n).stem for n in split_names(pair_names(folder), holdout)[0]}
    pairs = FolderPairs(folder)
    pairs.pairs = [p for p in pairs.pairs if p.name in fit]
    if {p.name for p in pairs.pairs} != fit:
        raise FileNotFoundError(f"{folder}: the pairs found ({', '.join(p.name for p in pairs.pairs)}) are not the "
                                f"fit split ({', '.join(sorted(fit))})")
    return pairs
