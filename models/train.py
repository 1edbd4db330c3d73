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

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from models.checkpoints import (
    TrainingDiverged,
    _last_good,
    restore_checkpoint,
    write_checkpoint,
)
from models.averaging import WeightAverage
from models.colour import rgb2ycbcr
from models.losses import resguide_loss
from models.samplers import Batches, NoisyPatchSampler, PatchSampler

__all__ = ["TrainConfig", "train", "dncnn_loss", "HISTORY_EVERY"]

#: loss_history gets an entry at iteration 1, every HISTORY_EVERY iterations and at the end.
HISTORY_EVERY = 10

# Config fields that may change between a run and its resumption; any other difference
# would silently mix two different trainings.
_RESUMABLE_CHANGES = {"iterations", "ckpt_every"}


#: Optimisers and losses a TrainConfig may name.
OPTIMIZERS = ("rmsprop", "adam", "sgd", "adam_pix2pix")
LOSSES = ("resguide", "dncnn", "mse", "l1_y", "l1", "cross_entropy")


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
    "adam_pix2pix" (Adam, betas 0.5/0.999, weight decay 5e-5) with "l1" (mean absolute error of the
    output) or "cross_entropy" (the output is logits, the target class indices) is DID-MDN's.
    ``lr_drops``: fractions of ``iterations`` after which the learning rate is multiplied by 0.1
    (DDN: 1/3 and 2/3); the rate of a step is a function of the step alone, so a resumed run
    follows the same schedule. ``warmup``: the rate rises linearly from ``lr / warmup`` to ``lr`` over
    the first ``warmup`` steps (a run that starts from trained weights: RMSprop's first steps, with
    its averages still empty, are ten times the rate and would wreck them). ``ema``: when above 0, the
    run ships an exponential moving average of its weights with this decay
    (:class:`models.averaging.WeightAverage`) in place of its last step's weights.
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
    warmup: int = 0
    ema: float = 0.0

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch < 1 or self.patch < 1 or self.ckpt_every < 1:
            raise ValueError("batch, patch and ckpt_every must be positive")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {self.warmup}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1) (0: no weight average), got {self.ema}")
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
        """The learning rate of 1-based ``step``: ``lr`` times 0.1 per drop fraction it has passed
        (times ``step / warmup`` during the warm-up)."""
        passed = sum(step > f * self.iterations for f in self.lr_drops)
        ramp = min(1.0, step / self.warmup) if self.warmup else 1.0
        return self.lr * 0.1 ** passed * ramp


def rate_schedule(lr_drops, warmup: int = 0, ema: float = 0.0) -> str | None:
    """``TrainConfig.lr_drops`` (and ``warmup``, ``ema``) in words for tables: "constant", "×0.1 after
    80%", "warm-up 200, ×0.1 after 80%, weight average 0.999"; None if unknown."""
    if lr_drops is None:
        return None
    words = "×0.1 after " + ", ".join(f"{float(f):.0%}" for f in lr_drops) if lr_drops else "constant"
    words = f"warm-up {int(warmup)}, {words}" if warmup else words
    return f"{words}, weight average {float(ema):g}" if ema else words


def record_schedule(config: dict) -> str | None:
    """:func:`rate_schedule` of a training record's ``config`` (fields it lacks take their defaults)."""
    return rate_schedule(config.get("lr_drops"), config.get("warmup", 0), config.get("ema", 0.0))


# --------------------------------------------------------------------------
# patches


# --------------------------------------------------------------------------
# checkpoints


# --------------------------------------------------------------------------
# training


def _to(x, device):
    if isinstance(x, (tuple, list)):
        return type(x)(t.to(device, non_blocking=True) for t in x)
    return x.to(device, non_blocking=True)


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

        out = _last(outputs)
        return torch.nn.functional.l1_loss(rgb2ycbcr(out)[:, :1], rgb2ycbcr(target.to(out.dtype))[:, :1])
    if cfg.loss == "l1":  # DID-MDN's generator and residual net (their L1 "criterionCAE")
        out = _last(outputs)
        return torch.nn.functional.l1_loss(out, target.to(out.dtype))
    if cfg.loss == "cross_entropy":  # DID-MDN's density classifier: logits against class indices
        return torch.nn.functional.cross_entropy(_last(outputs), target)
    return resguide_loss(outputs, target, lam=cfg.lam, use_ssim=cfg.use_ssim)


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":  # DnCNN's and JORDER-E's released training code (betas 0.9, 0.999)
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "adam_pix2pix":  # DID-MDN's released training scripts
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.999), weight_decay=5e-5)
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
    ``sampler.batch(n, step)`` gives (degraded, clean) batches: rainy or noisy inputs (a tensor, or a
    tuple of tensors that ``outputs_fn`` unpacks) and the target (an image, or class indices).
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
    average = WeightAverage(net, cfg.ema) if cfg.ema else None

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
        if average is not None:
            if "ema" not in ckpt:
                raise ValueError(f"{ckpt_path}: checkpoint of a run with a weight average holds none")
            average.load(ckpt["ema"], str(ckpt_path))
        say(f"resuming from {ckpt_path} at iteration {iteration}/{cfg.iterations}")
        if iteration >= cfg.iterations:
            if average is not None:
                average.copy_to(net)
            net.to("cpu")
            return _summary(iteration, seconds, final_loss, history, cfg.batch)

    saved_iteration = iteration if ckpt_path.exists() else None
    saved_seconds = seconds

    def checkpoint() -> None:
        nonlocal saved_iteration, saved_seconds
        saved_seconds = seconds + (time.perf_counter() - t0)
        write_checkpoint(ckpt_path, net, optimizer, saved_iteration, {
            "iteration": iteration, "seconds": saved_seconds, "config": asdict(cfg),
            "loss_history": list(history), "final_loss": final_loss,
            **({"ema": average.state()} if average is not None else {})})
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
            rainy = _to(rainy, device)  # a tensor, or a tuple of them (DID-MDN: the image and its label)
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
            if cfg.lr_drops or cfg.warmup:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr_at(iteration + 1)
            optimizer.step()
            iteration += 1
            if average is not None:
                average.update(net, iteration)
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
    if average is not None and result["complete"]:
        average.copy_to(net)
    if not result["complete"]:
        say(f"stopped after {max_seconds} s at iteration {iteration}/{cfg.iterations}; rerun to resume")
    say(
        f"trained {iteration} iterations in {seconds:.1f} s "
        f"({result['patches_per_s']:.1f} patches/s), final loss {final_loss:.4f}"
    )
    return result


# --------------------------------------------------------------------------
# training images


