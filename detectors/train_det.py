"""Training a torchvision detector (:mod:`detectors.torchvision_det`) on labelled images, resumably.

Conventions follow :mod:`models.train`: the batch of a step is a pure function of
(seed, step); checkpoints are written atomically every ``ckpt_every`` steps, at
the end and when ``max_seconds`` runs out; a run resumes from its checkpoint bit
for bit (model, optimizer, torch RNG -- Faster R-CNN's proposal / RoI samplers
draw from torch's global RNG); a non-finite loss raises
:class:`models.train.TrainingDiverged` naming the last good checkpoint, which is
left untouched; a tqdm bar shows the loss.

Choices:

* Optimizer: AdamW (lr 1e-3, weight decay 1e-4) by default, with a linear warm-up
  and gradient-norm clipping at 10.  From scratch (random backbone, BatchNorm),
  SGD needs a long warm-up and many more steps before the RPN produces useful
  proposals, while AdamW's per-parameter step sizes get the randomly initialised
  heads and backbone moving together; ``optimizer="sgd"`` (momentum 0.9, weight
  decay 1e-4, lr 0.02) is available.
* Augmentation: horizontal flip with probability 1/2.
* Targets: only ``Car`` boxes are positives by default (``positive_types``); ``Van`` (the KITTI devkit's
  neighbouring class, ignored by the evaluators), ``DontCare`` and every other
  type are dropped from the targets, as are boxes under 1 px.  An image without
  any Car is a pure-background example.
* Schedule: ``lr * min(1, (step + 1) / warmup) * 0.1 ** (steps in lr_steps passed)``:
  it does not depend on ``iterations``, so a run extended later (2 + 2) is the
  same as one asked for all of it at once (4).
* Batches: sample order is a fresh permutation of the samples every epoch
  (seeded with (seed, epoch)), the flips are seeded with (seed, step).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from datasets.kitti import Object
from models.checkpoints import (
    TrainingDiverged,
    _last_good,
    restore_checkpoint,
    write_checkpoint,
)
from models.train import _logger

__all__ = ["DetTrainConfig", "TrainingDiverged", "prepare_samples", "batch_plan", "train_detector", "DEFAULT_LR"]

DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.02}
#: loss_history gets an entry at iteration 1, every HISTORY_EVERY iterations and at the end
HISTORY_EVERY = 10
_RESUMABLE_CHANGES = {"iterations", "ckpt_every"}
POSITIVE_TYPES = ("Car",)


@dataclass(frozen=True)
class DetTrainConfig:
    iterations: int
    batch: int
    lr: float
    seed: int
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    warmup: int = 50
    lr_steps: tuple[int, ...] = ()
    clip_grad: float = 10.0
    flip: bool = True
    ckpt_every: int = 50
    n_samples: int = 0
    samples_sha256: str = ""

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch < 1 or self.ckpt_every < 1:
            raise ValueError(f"batch and ckpt_every must be positive, got {self.batch} and {self.ckpt_every}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.optimizer not in DEFAULT_LR:
            raise ValueError(f"optimizer must be one of {', '.join(DEFAULT_LR)}, got {self.optimizer!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based step ``step``."""
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        factor *= 0.1 ** sum(1 for s in self.lr_steps if step >= s)
        return self.lr * factor


# --------------------------------------------------------------------------
# samples


def _split_sample(sample, k: int):
    """(image, objects) from (image, objects), (name, image, objects) or (image, objects, id)."""
    if not isinstance(sample, (tuple, list)):
        raise ValueError(f"sample {k}: expected a tuple, got {type(sample).__name__}")
    image = [x for x in sample if isinstance(x, (np.ndarray, torch.Tensor))]
    objects = [x for x in sample if isinstance(x, (list, tuple)) and all(isinstance(o, Object) for o in x)]
    if len(image) != 1 or len(objects) != 1:
        raise ValueError(
            f"sample {k}: expected (image, objects), (name, image, objects) or (image, objects, id) "
            "with one image array/tensor and one list of Object"
        )
    return image[0], list(objects[0])


def _as_uint8_chw(image, k: int) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"sample {k}: a numpy image must be uint8 HxWx3, got {image.dtype} {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"sample {k}: a tensor image must be 3xHxW, got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.contiguous()
    return image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).contiguous()


def prepare_samples(samples: Sequence, positive_types: Sequence[str] = POSITIVE_TYPES
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(uint8 3xHxW image, float32 Nx4 boxes of ``positive_types``)]: the training view of ``samples``."""
    out = []
    for k, sample in enumerate(samples):
        image, objects = _split_sample(sample, k)
        img = _as_uint8_chw(image, k)
        boxes = [
            o.bbox
            for o in objects
            if o.type in positive_types and o.bbox[2] - o.bbox[0] >= 1 and o.bbox[3] - o.bbox[1] >= 1
        ]
        out.append((img, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)))
    return out


def _fingerprint(prepared: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for img, boxes in prepared:
        h.update(str(tuple(img.shape)).encode())
        h.update(img.numpy().tobytes())
        h.update(boxes.numpy().tobytes())
    return h.hexdigest()


def batch_plan(n: int, batch: int, seed: int, step: int) -> list[tuple[int, bool]]:
    """(sample index, flip) of every image in the batch of ``step``: a pure function of its arguments."""
    out = []
    perms: dict[int, np.ndarray] = {}
    flips = np.random.default_rng([seed, 1, step]).random(batch) < 0.5
    for j in range(batch):
        position = step * batch + j
        epoch = position // n
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, 0, epoch]).permutation(n)
        out.append((int(perms[epoch][position % n]), bool(flips[j])))
    return out


def _make_batch(prepared, plan, flip: bool, device):
    images, targets = [], []
    for index, flipped in plan:
        img, boxes = prepared[index]
        img = img.to(device).float().div_(255.0)
        boxes = boxes.clone()
        if flip and flipped:
            width = img.shape[-1]
            img = img.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        images.append(img)
        targets.append({"boxes": boxes.to(device), "labels": torch.ones(len(boxes), dtype=torch.int64, device=device)})
    return images, targets


# --------------------------------------------------------------------------
# training


def _optimizer(model: torch.nn.Module, cfg: DetTrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_detector(
    det: Any,
    samples: Sequence,
    iterations: int,
    batch: int = 4,
    lr: float | None = None,
    seed: int = 0,
    ckpt_path: str | Path = "detector-train.pt",
    progress: bool = True,
    max_seconds: float | None = None,
    *,
    optimizer: str = "adamw",
    weight_decay: float = 1e-4,
    warmup: int = 50,
    lr_steps: Sequence[int] = (),
    clip_grad: float = 10.0,
    flip: bool = True,
    ckpt_every: int = 50,
    device: str | torch.device = "cpu",
    log: Any = None,
    positive_types: Sequence[str] = POSITIVE_TYPES,
) -> dict:
    """Train ``det`` (a :class:`detectors.torchvision_det.Detector` or a torchvision
    detection model) for ``iterations`` steps of ``batch`` images, resuming from
    ``ckpt_path`` when it exists.

    ``samples``: ``(image, objects)``, ``(name, image, objects)`` (as
    :func:`datasets.roads.road_scenes` returns) or ``(image, objects, id)`` (as
    :class:`datasets.kitti.KittiDetection` yields); images uint8 HxWx3 arrays or
    3xHxW tensors (float in [0, 1] or uint8).  ``lr`` defaults to
    ``DEFAULT_LR[optimizer]``.  ``max_seconds`` stops this call early, with a
    checkpoint, once that much wall time has passed (rerun to resume).

    Returns ``{"complete", "iterations", "seconds", "final_loss", "final_losses",
    "iters_per_s", "images_per_s", "loss_history", "config"}``; ``seconds`` is the
    training time accumulated over every resumption, the rates are this call's.
    The model is left in eval mode on the CPU.
    """
    model = det.model if hasattr(det, "model") and isinstance(det.model, torch.nn.Module) else det
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"det must be a Detector or a torch module, got {type(det).__name__}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    prepared = prepare_samples(samples, positive_types)
    if not prepared:
        raise ValueError("train_detector: no samples")
    cfg = DetTrainConfig(
        iterations=int(iterations),
        batch=int(batch),
        lr=float(DEFAULT_LR.get(optimizer, 1.0) if lr is None else lr),
        seed=int(seed),
        optimizer=optimizer,
        weight_decay=float(weight_decay),
        warmup=int(warmup),
        lr_steps=tuple(int(s) for s in lr_steps),
        clip_grad=float(clip_grad),
        flip=bool(flip),
        ckpt_every=int(ckpt_every),
        n_samples=len(prepared),
        samples_sha256=_fingerprint(prepared),
    )
    ckpt_path = Path(ckpt_path)
    say = _logger(log)
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    opt = _optimizer(model, cfg)

    iteration, seconds = 0, 0.0
    history: list[tuple[int, float]] = []
    final_loss: float | None = None
    final_losses: dict[str, float] = {}
    if ckpt_path.exists():
        ckpt = restore_checkpoint(ckpt_path, asdict(cfg), model, opt, _RESUMABLE_CHANGES)
        iteration = int(ckpt["iteration"])
        seconds = float(ckpt.get("seconds", 0.0))
        history = [(int(i), float(v)) for i, v in ckpt.get("loss_history", [])]
        final_loss = ckpt.get("final_loss")
        final_losses = dict(ckpt.get("final_losses") or {})
        say(f"resuming from {ckpt_path} at iteration {iteration}/{cfg.iterations}")

    saved_iteration = iteration if ckpt_path.exists() else None
    saved_seconds = seconds
    start = iteration
    t0 = time.perf_counter()

    def checkpoint() -> None:
        nonlocal saved_iteration, saved_seconds
        saved_seconds = seconds + (time.perf_counter() - t0)
        write_checkpoint(ckpt_path, model, opt, saved_iteration, {
            "iteration": iteration, "seconds": saved_seconds, "config": asdict(cfg), "loss_history": list(history),
            "final_loss": final_loss, "final_losses": dict(final_losses)})
        saved_iteration = iteration

    model.train()
    bar = tqdm(total=cfg.iterations, initial=iteration, disable=not progress, desc="train detector", unit="it")
    try:
        while iteration < cfg.iterations:
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds and iteration > start:
                checkpoint()
                break
            images, targets = _make_batch(prepared, batch_plan(len(prepared), cfg.batch, cfg.seed, iteration), cfg.flip, device)
            losses = model(images, targets)
            loss = sum(losses.values())
            value = float(loss.detach())
            if not math.isfinite(value):
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                raise TrainingDiverged(
                    f"training diverged at iteration {iteration + 1}: loss is {value} ({parts}); "
                    f"{_last_good(ckpt_path, saved_iteration)}"
                )
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(iteration)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            iteration += 1
            final_loss = value
            final_losses = {k: float(v.detach()) for k, v in losses.items()}
            if iteration == 1 or iteration % HISTORY_EVERY == 0 or iteration == cfg.iterations:
                history.append((iteration, value))
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if iteration % cfg.ckpt_every == 0 or iteration == cfg.iterations:
                checkpoint()
        else:
            if saved_iteration != iteration:  # e.g. resumed at or past the end: still leave a checkpoint
                checkpoint()
    finally:
        bar.close()
        model.to("cpu")
        model.eval()
    this_call = saved_seconds - seconds if iteration > start else 0.0
    done = iteration - start
    result = {
        "complete": iteration >= cfg.iterations,
        "iterations": iteration,
        "seconds": saved_seconds,
        "final_loss": final_loss,
        "final_losses": final_losses,
        "iters_per_s": done / this_call if this_call > 0 else float("nan"),
        "images_per_s": done * cfg.batch / this_call if this_call > 0 else float("nan"),
        "loss_history": [tuple(h) for h in history],
        "config": asdict(cfg),
    }
    if not result["complete"]:
        say(f"stopped after {max_seconds} s at iteration {iteration}/{cfg.iterations}; rerun to resume")
    return result
