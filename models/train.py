"""A generic, resumable training loop for the deraining and denoising models of the suite.

* :class:`PatchSampler` cuts random patches from clean images and synthesises rain on
  them with :mod:`datasets.rain`; the batch of a step depends only on (seed, step).
* :class:`NoisyPatchSampler` does the same for denoising (Table 5): clean patches plus
  Gaussian noise of level sigma, added in float like the test sets of :mod:`datasets.noisy`.
* :func:`train` runs the configured optimiser on the configured loss: RMSprop on the
  ResGuideNet loss (:mod:`models.losses`) by default, or DnCNN's recipe (Adam on
  :func:`dncnn_loss`). It checkpoints atomically, resumes from its checkpoint bit for bit,
  and stops with :class:`TrainingDiverged` on a non-finite loss without touching the last
  good checkpoint.
* :func:`save_weights` / :func:`load_weights` handle the small shipping files.
* :func:`training_images` picks the clean training images: BSDS500 train+val minus the
  Rain100 backgrounds (plus Kodak24) from a data root, else the embedded train split.
  :func:`denoise_training_images` picks those of the denoising models: all 300 images of
  BSDS500 train+val, as the paper trains.
* Denoising weights are tagged ``denoise-s<SIGMA>`` (grey) and ``denoise-color-s<SIGMA>``
  (colour): :func:`denoise_tag`, :func:`parse_denoise_tag`.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from core.files import atomic_write, read_torch_file
from datasets.noisy import add_noise, to_grey
from datasets.rain import add_rain, validate
from models.losses import resguide_loss
from models.registry import first_mismatch

__all__ = [
    "TrainConfig",
    "PatchSampler",
    "NoisyPatchSampler",
    "TrainingDiverged",
    "train",
    "save_weights",
    "load_weights",
    "training_images",
    "denoise_training_images",
    "dncnn_loss",
    "HISTORY_EVERY",
]

#: loss_history gets an entry at iteration 1, every HISTORY_EVERY iterations and at the end.
HISTORY_EVERY = 10

# Config fields that may change between a run and its resumption; any other difference
# would silently mix two different trainings.
_RESUMABLE_CHANGES = {"iterations", "ckpt_every"}


#: Optimisers and losses a TrainConfig may name.
OPTIMIZERS = ("rmsprop", "adam", "sgd")
LOSSES = ("resguide", "dncnn", "mse", "l1_y")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Every field except ``iterations`` and ``ckpt_every`` must match a
    checkpoint to resume it (a run with another task, sigma or recipe is another run).

    ``task`` "derain" trains on rainy/clean pairs (``rain`` preset); "denoise" on noisy/clean
    pairs with Gaussian noise of level ``sigma`` (0-255 scale) and ``channels`` 1 (grey) or 3.
    ``optimizer``/``loss``: "rmsprop"/"resguide" is ResGuideNet's recipe (paper section 4.1,
    Eq. 2 with ``lam`` and ``use_ssim``); "adam"/"dncnn" is DnCNN's (:func:`dncnn_loss`);
    "sgd"/"mse" is DDN's (SGD with momentum 0.9 on the mean squared error of the output);
    "adam"/"l1_y" is JORDER's (mean absolute error of the output's luma Y, MATLAB ``rgb2ycbcr``).
    ``lr_drops``: fractions of ``iterations`` after which the learning rate is multiplied by 0.1
    (DDN: 1/3 and 2/3); the rate of a step is a function of the step alone, so a resumed run
    follows the same schedule.
    """

    iterations: int
    batch: int = 16
    patch: int = 128
    lr: float = 1e-3
    seed: int = 0
    rain: str = "light"  # a datasets.rain preset ("none" for denoising)
    lam: float = 1.0
    use_ssim: bool = True
    ckpt_every: int = 100
    task: str = "derain"
    sigma: int = 0
    channels: int = 3
    optimizer: str = "rmsprop"
    loss: str = "resguide"
    lr_drops: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch < 1 or self.patch < 1 or self.ckpt_every < 1:
            raise ValueError("batch, patch and ckpt_every must be positive")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.task not in ("derain", "denoise"):
            raise ValueError(f"task must be derain or denoise, got {self.task!r}")
        if self.task == "denoise" and not (isinstance(self.sigma, int) and 1 <= self.sigma <= 255):
            raise ValueError(f"a denoising run needs an integer sigma in 1..255 (0-255 scale), got {self.sigma!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not all(0.0 < float(f) < 1.0 for f in self.lr_drops) or list(self.lr_drops) != sorted(self.lr_drops):
            raise ValueError(f"lr_drops must be increasing fractions of the iterations in (0, 1), got {self.lr_drops!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of 1-based ``step``: ``lr`` times 0.1 per drop fraction it has passed."""
        passed = sum(step > f * self.iterations for f in self.lr_drops)
        return self.lr * 0.1 ** passed


# --------------------------------------------------------------------------
# patches


class PatchSampler:
    """Random rainy/clean patch pairs from clean uint8 images, rain synthesised by datasets.rain.

    The batch of a step is a pure function of (seed, step): images, crop positions,
    flips and the rain seed of every patch are drawn from generators seeded with
    (seed, step) and (seed, step, i), so a resumed run sees the same stream.
    Rain is synthesised on the crop itself (streaks that would enter from outside the
    crop are absent), which is far cheaper than raining the whole image.
    """

    def __init__(self, images: Sequence[np.ndarray], rain: str, patch: int, seed: int):
        if not images:
            raise ValueError("PatchSampler: no images")
        if patch < 1:
            raise ValueError(f"PatchSampler: patch must be positive, got {patch}")
        if seed < 0:
            raise ValueError(f"PatchSampler: seed must be >= 0, got {seed}")
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
            rain_seed = int(np.random.SeedSequence([self.seed, int(step), i]).generate_state(1)[0])
            wet = add_rain(crop, self.rain, rain_seed)
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
        from datasets.pairs import load_pair

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


#: Folder names of real paired training sets per rain type, searched under the data root.
REAL_TRAINING_SETS = {
    "light": ("RainTrainL", "Rain100L_train", "train_Rain100L"),
    "heavy": ("RainTrainH", "Rain100H_train", "train_Rain100H"),
    "ddn": ("Rain12600", "rain_data_train", "DDN_train"),
}


def real_training_pairs(data_root: Path | None, rain: str):
    """The user's real paired training set for ``rain`` under the data root, or None."""
    from datasets.pairs import FolderPairs

    if data_root is None:
        return None
    wanted = {n.lower() for n in REAL_TRAINING_SETS.get(rain, ())}
    for depth in (1, 2, 3):
        for path in sorted(Path(data_root).glob("/".join(["*"] * depth))):
            if path.is_dir() and path.name.lower() in wanted:
                return FolderPairs(path)
    return None


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


# --------------------------------------------------------------------------
# checkpoints


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the checkpoint with the last good state."""


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save through :func:`core.files.atomic_write` (never a half-written checkpoint)."""
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


def _load(path: Path) -> Any:
    return read_torch_file(path)


def _load_state_strict(net: torch.nn.Module, state: Any, path: Path) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state dict in the file")
    problem = first_mismatch(state, net.state_dict())
    if problem is not None:
        raise ValueError(f"{path}: checkpoint does not match the model: {problem}")
    net.load_state_dict(state, strict=True)


def save_weights(net: torch.nn.Module, path: Path, meta: dict) -> None:
    """Atomically write {"state_dict": ..., "meta": meta} (the small file that is shipped)."""
    _atomic_save({"state_dict": net.state_dict(), "meta": dict(meta)}, Path(path))


def load_weights(net: torch.nn.Module, path: Path) -> dict:
    """Load weights saved by :func:`save_weights` (or a training checkpoint) strictly; return meta.

    A mismatch raises ValueError naming the file and the first differing tensor,
    e.g. ``conv0.weight: checkpoint (16, 3, 3, 3) vs model (16, 6, 3, 3)``.
    """
    path = Path(path)
    obj = _load(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        state, meta = obj["state_dict"], obj.get("meta", {})
    elif isinstance(obj, dict) and "model" in obj and "optimizer" in obj:
        state = obj["model"]
        meta = {"config": obj.get("config"), "iteration": obj.get("iteration")}
    else:
        raise ValueError(f"{path}: not a weights file (expected a dict with 'state_dict')")
    _load_state_strict(net, state, path)
    return meta


# --------------------------------------------------------------------------
# training


def _logger(log: Any) -> Callable[[str], None]:
    if log is None:
        return lambda msg: None
    if hasattr(log, "info"):
        return log.info
    return log


def _summary(iteration: int, seconds: float, final_loss: float | None, history: list, batch: int,
             complete: bool = True) -> dict:
    return {
        "complete": complete,
        "iterations": iteration,
        "seconds": seconds,
        "final_loss": final_loss,
        "patches_per_s": iteration * batch / seconds if seconds > 0 else float("nan"),
        "loss_history": [tuple(h) for h in history],
    }


def _last(outputs: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The supervised output of a single-output model: the tensor itself, or the last of a list."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs[-1]


def dncnn_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """DnCNN's loss (Zhang et al. TIP 2017, Eq. 1): ``1/(2N) sum_i ||R(y_i) - (y_i - x_i)||_F^2``
    over the N patches of the batch, with R the predicted noise. The model outputs
    ``y - R(y)``, so ``R(y) - (y - x) = x - output``: half the squared error of the (last)
    output summed over each patch's pixels, averaged over the patches."""
    out = _last(outputs)
    if out.shape != target.shape:
        raise ValueError(f"dncnn_loss: prediction {tuple(out.shape)} vs target {tuple(target.shape)}")
    return 0.5 * (out - target.to(out.dtype)).pow(2).sum() / out.shape[0]


def _loss(cfg: TrainConfig, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    if cfg.loss == "dncnn":
        return dncnn_loss(outputs, target)
    if cfg.loss == "mse":  # DDN: mean squared error of the (last) output
        out = _last(outputs)
        return torch.nn.functional.mse_loss(out, target.to(out.dtype))
    if cfg.loss == "l1_y":  # JORDER: the network works on Y, so only Y is supervised
        from models.jorder import rgb2ycbcr

        out = _last(outputs)
        return torch.nn.functional.l1_loss(rgb2ycbcr(out)[:, :1], rgb2ycbcr(target.to(out.dtype))[:, :1])
    return resguide_loss(outputs, target, lam=cfg.lam, use_ssim=cfg.use_ssim)


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":  # DnCNN's and JORDER-E's released training code (betas 0.9, 0.999)
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":  # DDN's released training code: momentum 0.9
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)
    return torch.optim.RMSprop(params, lr=cfg.lr)  # ResGuideNet, section 4.1


def train(
    net: torch.nn.Module,
    outputs_fn: Callable[[torch.nn.Module, torch.Tensor], Sequence[torch.Tensor]],
    sampler: PatchSampler | NoisyPatchSampler,
    cfg: TrainConfig,
    ckpt_path: Path,
    progress: bool = True,
    log: Any = None,
    device: str | torch.device = "cpu",
    workers: int = 0,
    max_seconds: float | None = None,
) -> dict:
    """Train ``net`` for cfg.iterations steps, resuming from ``ckpt_path`` if it exists.

    The optimiser and loss come from ``cfg`` (RMSprop on the ResGuideNet loss by default).
    ``sampler.batch(n, step)`` gives (degraded, clean) batches: rainy or noisy inputs.
    outputs_fn(net, rainy) returns the outputs to supervise (e.g. ``net.forward_all``).
    ``log`` is None, a callable taking a string, or a logging.Logger.
    ``device`` runs the steps there (the net is back on the CPU on return); ``workers``
    forked processes make the batches ahead (same stream for any number);
    ``max_seconds`` stops this call early, with a checkpoint, after that much wall time.
    Returns {"iterations", "seconds", "final_loss", "patches_per_s", "loss_history",
    "complete"}; "seconds" is the training wall time accumulated over every resumption.
    """
    ckpt_path = Path(ckpt_path)
    say = _logger(log)
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    net.to(device)
    optimizer = _optimizer(cfg, net.parameters())

    iteration = 0
    seconds = 0.0
    history: list[tuple[int, float]] = []
    final_loss: float | None = None
    if ckpt_path.exists():
        # a schedule of learning-rate drops is laid over ``iterations``: another count is another run
        resumable = _RESUMABLE_CHANGES - ({"iterations"} if cfg.lr_drops else set())
        ckpt = restore_checkpoint(ckpt_path, asdict(cfg), net, optimizer, resumable)
        iteration = int(ckpt["iteration"])
        seconds = float(ckpt.get("seconds", 0.0))
        history = [(int(i), float(v)) for i, v in ckpt.get("loss_history", [])]
        final_loss = ckpt.get("final_loss")
        say(f"resuming from {ckpt_path} at iteration {iteration}/{cfg.iterations}")
        if iteration >= cfg.iterations:
            net.to("cpu")
            return _summary(iteration, seconds, final_loss, history, cfg.batch)

    saved_iteration = iteration if ckpt_path.exists() else None
    saved_seconds = seconds

    def checkpoint() -> None:
        nonlocal saved_iteration, saved_seconds
        saved_seconds = seconds + (time.perf_counter() - t0)
        write_checkpoint(ckpt_path, net, optimizer, saved_iteration, {
            "iteration": iteration, "seconds": saved_seconds, "config": asdict(cfg),
            "loss_history": list(history), "final_loss": final_loss})
        saved_iteration = iteration

    net.train()
    bar = tqdm(total=cfg.iterations, initial=iteration, disable=not progress, desc="train", unit="it")
    t0 = time.perf_counter()
    start = iteration
    batches = Batches(sampler, cfg.batch, iteration, workers)
    try:
        while iteration < cfg.iterations:
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds and iteration > start:
                checkpoint()
                break
            rainy, clean = batches.get()
            rainy = rainy.to(device, non_blocking=True)
            clean = clean.to(device, non_blocking=True)
            outputs = outputs_fn(net, rainy)
            loss = _loss(cfg, outputs, clean)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged at iteration {iteration + 1}: loss is {value}; "
                    f"{_last_good(ckpt_path, saved_iteration)}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.lr_drops:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr_at(iteration + 1)
            optimizer.step()
            iteration += 1
            final_loss = value
            if iteration == 1 or iteration % HISTORY_EVERY == 0 or iteration == cfg.iterations:
                history.append((iteration, value))
            elapsed = time.perf_counter() - t0
            rate = (iteration - start) * cfg.batch / elapsed if elapsed > 0 else float("nan")
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", patches_s=f"{rate:.1f}", refresh=False)
            if iteration % cfg.ckpt_every == 0 or iteration == cfg.iterations:
                checkpoint()
    finally:
        batches.close()
        bar.close()
        net.to("cpu")
    # The run always ends with a checkpoint; report the time it recorded so that the
    # returned and the saved totals agree (the final write itself is not counted).
    seconds = saved_seconds
    result = _summary(iteration, seconds, final_loss, history, cfg.batch, complete=iteration >= cfg.iterations)
    if not result["complete"]:
        say(f"stopped after {max_seconds} s at iteration {iteration}/{cfg.iterations}; rerun to resume")
    say(
        f"trained {iteration} iterations in {seconds:.1f} s "
        f"({result['patches_per_s']:.1f} patches/s), final loss {final_loss:.4f}"
    )
    return result


def restore_checkpoint(path: Path, config: dict, model: torch.nn.Module, optimizer, resumable=()) -> dict:
    """Load a training checkpoint into ``model`` and ``optimizer`` (and the torch RNG) and return it.

    Refuses a file that is not a checkpoint, or one trained with a ``config`` that differs in a
    key other than the ``resumable`` ones (lists and tuples compare equal)."""
    ckpt = _load(path)
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "iteration"} <= set(ckpt):
        raise ValueError(f"{path}: not a training checkpoint")
    saved = ckpt.get("config") or {}
    norm = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    changed = sorted(k for k, v in config.items() if k not in resumable and k in saved and norm(saved[k]) != norm(v))
    if changed:
        detail = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {config[k]!r}" for k in changed)
        raise ValueError(f"{path}: checkpoint was trained with a different configuration ({detail})")
    _load_state_strict(model, ckpt["model"], path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{path}: optimizer state does not match the model: {exc}") from exc
    if "rng_state" in ckpt:
        torch.set_rng_state(ckpt["rng_state"])
    return ckpt


def write_checkpoint(path: Path, model: torch.nn.Module, optimizer, last_good: int | None, state: dict) -> None:
    """Atomically save model (CPU copies), optimizer, torch RNG and ``state`` (which holds
    "iteration"); a NaN/Inf parameter raises TrainingDiverged instead, naming the last good
    checkpoint (iteration ``last_good``, None if none was written)."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingDiverged(
                f"training diverged before iteration {state['iteration']} was saved: parameter {name} "
                f"holds NaN/Inf; {_last_good(path, last_good)}"
            )
    _atomic_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                  "optimizer": optimizer.state_dict(), **state, "rng_state": torch.get_rng_state()}, path)


def _last_good(path: Path, iteration: int | None) -> str:
    if iteration is None:
        return f"no checkpoint had been written yet ({path} does not exist)"
    return f"the last good state (iteration {iteration}) is in {path}"


# --------------------------------------------------------------------------
# training images

_JPEG = {".jpg", ".jpeg"}
_BACKGROUNDS = "rain100-backgrounds.txt"


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _excluded_ids(listing: Path) -> set[str]:
    """Ids (file stems) named in the backgrounds list: "train/100075.jpg", "100075.jpg" or "100075"."""
    ids = set()
    for line in listing.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(Path(line.replace("\\", "/")).stem)
    return ids


def training_images(data_root: Path | None, size: int | None = None) -> tuple[list[np.ndarray], str]:
    """Clean training images (uint8 HxWx3) and a description of where they came from.

    With ``data_root/BSDS500/train`` and ``.../val``: those JPEGs minus every image named
    in ``BSDS500/rain100-backgrounds.txt`` (the Rain100 test backgrounds), plus
    ``data_root/train/Kodak24/*.png`` if present, at native resolution. Only those folders
    are read: never Rain100L, BSD68, CBSD68, BSDS500/test or KITTI.
    Otherwise the embedded train split at ``size`` x ``size`` (default 256).
    """
    if data_root is not None:
        root = Path(data_root)
        bsds = root / "BSDS500"
        if (bsds / "train").is_dir() and (bsds / "val").is_dir():
            listing = bsds / _BACKGROUNDS
            if not listing.is_file():
                raise FileNotFoundError(
                    f"{listing} is missing: without it the Rain100 test backgrounds cannot be "
                    "excluded from training"
                )
            excluded = _excluded_ids(listing)
            images: list[np.ndarray] = []
            dropped = 0
            for split in ("train", "val"):
                for f in sorted((bsds / split).iterdir()):
                    if f.suffix.lower() not in _JPEG or not f.is_file():
                        continue
                    if f.stem in excluded:
                        dropped += 1
                        continue
                    images.append(_read_rgb(f))
            n_bsds = len(images)
            desc = f"BSDS500 train+val minus {dropped} Rain100 backgrounds ({n_bsds} images)"
            kodak = root / "train" / "Kodak24"
            if kodak.is_dir():
                pngs = sorted(f for f in kodak.iterdir() if f.suffix.lower() == ".png" and f.is_file())
                images.extend(_read_rgb(f) for f in pngs)
                desc += f" + Kodak24 ({len(pngs)} images)"
            return images, f"{desc} from {root}, native resolution"
    return _embedded_training_images(data_root, size)


def _embedded_training_images(data_root: Path | None, size: int | None) -> tuple[list[np.ndarray], str]:
    from datasets.embedded import clean_images

    side = int(size or 256)
    pairs = clean_images("train", side)
    reason = "no data root" if data_root is None else f"no BSDS500/train and BSDS500/val under {data_root}"
    return [img for _, img in pairs], f"embedded train split ({len(pairs)} images, {side}x{side}; {reason})"


def denoise_training_images(data_root: Path | None, size: int | None = None) -> tuple[list[np.ndarray], str]:
    """Clean training images of the denoisers (uint8 HxWx3, RGB) and where they came from.

    With ``data_root/BSDS500/train`` and ``.../val``: every JPEG of the two (200 + 100 = 300,
    the paper's "train and val set of BSD500"), at native resolution. The Rain100 backgrounds
    are not excluded: Table 5 is not scored on Rain100. Only those two folders are read: never
    BSDS500/test (Table 5's test set), BSD68/CBSD68 (inside val, so never a test set for
    these models), Train400 or Kodak24. Otherwise the embedded train split at ``size`` x
    ``size`` (default 256), and the description says so.
    """
    if data_root is not None:
        root = Path(data_root)
        bsds = root / "BSDS500"
        if (bsds / "train").is_dir() and (bsds / "val").is_dir():
            images: list[np.ndarray] = []
            counts = []
            for split in ("train", "val"):
                files = sorted(f for f in (bsds / split).iterdir() if f.suffix.lower() in _JPEG and f.is_file())
                images.extend(_read_rgb(f) for f in files)
                counts.append(len(files))
            if not images:
                raise FileNotFoundError(f"{bsds}/train and {bsds}/val hold no JPEG images")
            return images, (f"BSDS500 train+val ({counts[0]} + {counts[1]} = {len(images)} images) from {root}, "
                            "native resolution")
    return _embedded_training_images(data_root, size)
