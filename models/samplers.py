"""Training batches: random patch pairs, rain or noise synthesised on the fly, made ahead in
worker processes.  A step's batch is a pure function of (seed, step), so a resumed run, and a
run with or without workers, sees the same stream."""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from datasets.noisy import add_noise, to_grey
from datasets.pairs import load_pair
from datasets.rain import add_rain, validate


def patch_rain_seed(seed: int, step: int, i: int) -> int:
    """The rain seed of patch ``i`` of step ``step``'s batch (a pure function of the three)."""
    return int(np.random.SeedSequence([int(seed), int(step), int(i)]).generate_state(1)[0])


class PatchSampler:
    """Random rainy/clean patch pairs from clean uint8 images, rain synthesised by datasets.rain.

    The batch of a step is a pure function of (seed, step): images, crop positions,
    flips and the rain seed of every patch are drawn from generators seeded with
    (seed, step) and (seed, step, i), so a resumed run sees the same stream.
    Rain is synthesised on the crop itself (streaks that would enter from outside the
    crop are absent), which is far cheaper than raining the whole image.
    """

    def __init__(self, images: Sequence[np.ndarray], rain, patch: int, seed: int):
        if not images:
            raise ValueError("PatchSampler: no images")
        if patch < 1:
            raise ValueError(f"PatchSampler: patch must be positive, got {patch}")
        if seed < 0:
            raise ValueError(f"PatchSampler: seed must be >= 0, got {seed}")
        if not callable(rain):  # a renderer ``rain(clean, seed)``, e.g. datasets.rainbank.bank_renderer
            validate(rain)  # unknown presets fail here, not in the middle of training
        checked = []
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(
                    f"PatchSampler: image {i} must be uint8 HxWx3, got {img.dtype} {img.shape}"
                )
            h, w = img.shape[:2]
            if h < patch or w < patch:
                raise ValueError(
                    f"PatchSampler: image {i} is {h}x{w} (HxW), smaller than the {patch}x{patch} patch"
                )
            checked.append(img)
        self.images = checked
        self.rain = rain
        self.patch = int(patch)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rainy, clean): float32 n x 3 x P x P tensors in [0, 1] for this step."""
        rainy, clean = self.arrays(n, step)
        return _to_tensor(rainy), _to_tensor(clean)

    def arrays(self, n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(rainy, clean): uint8 n x P x P x 3 arrays for this step (what ``batch`` converts)."""
        if n < 1 or step < 0:
            raise ValueError(f"PatchSampler.batch: need n >= 1 and step >= 0, got n={n}, step={step}")
        p = self.patch
        rng = np.random.default_rng([self.seed, int(step)])
        rainy = np.empty((n, p, p, 3), dtype=np.uint8)
        clean = np.empty((n, p, p, 3), dtype=np.uint8)
        for i in range(n):
            img = self.images[int(rng.integers(len(self.images)))]
            h, w = img.shape[:2]
            y = int(rng.integers(h - p + 1))
            x = int(rng.integers(w - p + 1))
            flip = bool(rng.random() < 0.5)
            crop = img[y : y + p, x : x + p]
            rain_seed = patch_rain_seed(self.seed, step, i)
            wet = self.rain(crop, rain_seed) if callable(self.rain) else add_rain(crop, self.rain, rain_seed)
            if flip:
                crop, wet = crop[:, ::-1], wet[:, ::-1]
            clean[i] = crop
            rainy[i] = wet
        return rainy, clean



class PairedPatchSampler:
    """Random patch pairs cropped at the same place from real rainy/clean training pairs
    (a ``datasets.pairs.FolderPairs``, e.g. RainTrainL). Same ``batch(n, step)`` contract as
    ``PatchSampler``: the batch of a step is a pure function of (seed, step)."""

    def __init__(self, pairs, patch: int, seed: int):
        if len(pairs) == 0:
            raise ValueError(f"PairedPatchSampler: no pairs in {getattr(pairs, 'root', pairs)}")
        self.pairs = pairs
        self.patch = int(patch)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rainy, clean = self.arrays(n, step)
        return _to_tensor(rainy), _to_tensor(clean)

    def arrays(self, n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        rng = np.random.default_rng([self.seed, int(step)])
        rainy = np.empty((n, p, p, 3), dtype=np.uint8)
        clean = np.empty((n, p, p, 3), dtype=np.uint8)
        for i in range(n):
            pair = self.pairs.pairs[int(rng.integers(len(self.pairs)))]
            wet, dry = load_pair(pair)
            h, w = dry.shape[:2]
            if h < p or w < p:
                raise ValueError(f"{pair.clean}: {h}x{w} is smaller than the {p}x{p} training patch")
            y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
            flip = bool(rng.random() < 0.5)
            wet, dry = wet[y:y + p, x:x + p], dry[y:y + p, x:x + p]
            if flip:
                wet, dry = wet[:, ::-1], dry[:, ::-1]
            rainy[i], clean[i] = wet, dry
        return rainy, clean



class SplitSampler:
    """A batch whose first ``n // 2`` patches come from ``first`` and the rest from ``second`` (e.g.
    the real pairs and real rain layers composited over other backgrounds); each part is its
    sampler's batch of the same step, so the batch stays a pure function of (seed, step)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def batch(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rainy, clean = self.arrays(n, step)
        return _to_tensor(rainy), _to_tensor(clean)

    def arrays(self, n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        if n < 2:
            raise ValueError(f"SplitSampler: a batch of {n} cannot be split between two sources")
        a_rainy, a_clean = self.first.arrays(n // 2, step)
        b_rainy, b_clean = self.second.arrays(n - n // 2, step)
        return np.concatenate([a_rainy, b_rainy]), np.concatenate([a_clean, b_clean])



#: Third seed word of the per-patch noise generators; the batch generator's seed [seed, step] is
#: padded with zeros by numpy's SeedSequence, so [seed, step, 1, i] never repeats it.
_NOISE_STREAM = 1



class NoisyPatchSampler:
    """Random noisy/clean patch pairs for denoising (Table 5), from clean uint8 images.

    A clean patch is cut at a random place (with a random horizontal flip, as
    :class:`PatchSampler` does) and noise is added with :func:`datasets.noisy.add_noise`:
    ``clean / 255 + sigma / 255 * N(0, 1)`` in float32, neither rounded nor clipped, the
    convention of the test sets. ``channels=1`` converts every image to grey once with
    :func:`datasets.noisy.to_grey` (PIL's "L", the conversion of the grayscale test sets);
    ``channels=3`` keeps RGB. ``batch(n, step)`` returns float32 n x C x P x P tensors
    (noisy, clean), a pure function of (seed, step): the crops come from a generator seeded
    with (seed, step) and each patch's noise from one seeded with (seed, step, patch).
    """

    def __init__(self, images: Sequence[np.ndarray], sigma: int, patch: int, seed: int, channels: int = 1):
        if not images:
            raise ValueError("NoisyPatchSampler: no images")
        if not 0 < sigma <= 255:
            raise ValueError(f"NoisyPatchSampler: sigma must be in (0, 255] (0-255 scale), got {sigma}")
        if patch < 1 or seed < 0:
            raise ValueError(f"NoisyPatchSampler: need patch >= 1 and seed >= 0, got patch={patch}, seed={seed}")
        if channels not in (1, 3):
            raise ValueError(f"NoisyPatchSampler: channels must be 1 (grey) or 3 (colour), got {channels}")
        checked = []
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in ((1, 3) if channels == 1 else (3,)):
                raise ValueError(f"NoisyPatchSampler: image {i} must be uint8 HxWx3, got {img.dtype} {img.shape}")
            h, w = img.shape[:2]
            if h < patch or w < patch:
                raise ValueError(f"NoisyPatchSampler: image {i} is {h}x{w} (HxW), smaller than the "
                                 f"{patch}x{patch} patch")
            checked.append(to_grey(img) if channels == 1 else img)
        self.images = checked
        self.sigma = sigma
        self.patch = int(patch)
        self.seed = int(seed)
        self.channels = int(channels)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy, clean): float32 n x C x P x P tensors; clean in [0, 1], noisy unclipped."""
        noisy, clean = self.arrays(n, step)
        return _to_tensor(noisy), _to_tensor(clean)

    def arrays(self, n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(noisy float32, clean uint8): n x P x P x C arrays for this step (what ``batch`` converts)."""
        if n < 1 or step < 0:
            raise ValueError(f"NoisyPatchSampler.batch: need n >= 1 and step >= 0, got n={n}, step={step}")
        p, c = self.patch, self.channels
        rng = np.random.default_rng([self.seed, int(step)])
        noisy = np.empty((n, p, p, c), dtype=np.float32)
        clean = np.empty((n, p, p, c), dtype=np.uint8)
        for i in range(n):
            img = self.images[int(rng.integers(len(self.images)))]
            h, w = img.shape[:2]
            y = int(rng.integers(h - p + 1))
            x = int(rng.integers(w - p + 1))
            crop = img[y : y + p, x : x + p]
            if bool(rng.random() < 0.5):
                crop = crop[:, ::-1]
            clean[i] = crop
            noisy[i] = add_noise(clean[i], self.sigma,
                                 np.random.default_rng([self.seed, int(step), _NOISE_STREAM, i]))
        return noisy, clean



def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    """n x H x W x C -> float32 n x C x H x W: uint8 scaled to [0, 1], float (noisy images) as is."""
    if batch.dtype == np.uint8:
        return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return torch.from_numpy(np.asarray(batch, dtype=np.float32)).permute(0, 3, 1, 2).contiguous()



#: Seconds the trainer waits for one batch from its worker processes before it gives up with an
#: error (a worker that died or hung must not stall a run, or a CI job, forever).
WORKER_TIMEOUT_S = 600.0



class _StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is the (degraded, clean) array pair of step ``start + i``."""

    def __init__(self, sampler, n: int, start: int):
        self.sampler, self.n, self.start = sampler, n, start

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sampler.arrays(self.n, self.start + int(i))



def _as_is(item):
    return item



class Batches:
    """The batches of steps ``start, start+1, ...`` in order, made in ``workers`` forked processes.

    A step's batch is a pure function of (seed, step), so the stream is the same for any
    number of workers (0 makes them in this process). The workers are a torch DataLoader
    (forked, two batches ahead each, so memory stays bounded when the model is slower than
    them); a batch that does not arrive within ``timeout`` seconds, or a worker that dies,
    raises RuntimeError instead of waiting forever.
    """

    def __init__(self, sampler, n: int, start: int, workers: int = 0, timeout: float = WORKER_TIMEOUT_S):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.sampler, self.n, self.next_step = sampler, int(n), int(start)
        self.stream = None
        if workers > 0 and hasattr(sampler, "arrays"):
            loader = torch.utils.data.DataLoader(
                _StepBatches(sampler, self.n, self.next_step), batch_size=None, sampler=itertools.count(),
                num_workers=workers, prefetch_factor=2, collate_fn=_as_is, timeout=timeout,
                multiprocessing_context="fork")
            self.stream = iter(loader)

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.next_step
        self.next_step += 1
        if self.stream is None:
            return self.sampler.batch(self.n, step)
        rainy, clean = next(self.stream)
        return _to_tensor(rainy), _to_tensor(clean)

    def close(self) -> None:
        if self.stream is not None:  # stop the workers now, not whenever the iterator is collected
            self.stream._shutdown_workers()
            self.stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
