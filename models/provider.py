"""Weights for the methods the suite trains itself: shipped, cached, or trained now.

``trained(...)`` looks for ``results/weights/<family>-<tag>-<profile>.pt`` (small weights
shipped in the repository, each with a ``.json`` record of how it was made), then for the
same file in the training cache ``results/cache/weights/``; when neither exists it trains
the model with the profile's schedule on the clean training images (the real ones under
the data root when present, else the embedded default's training split), with rain of the
tag's type synthesised by ``datasets.rain``, and caches the result. Training resumes from
its checkpoint when it was interrupted.

Denoisers (Table 5) use the tags ``denoise-s<SIGMA>`` (grey) and ``denoise-color-s<SIGMA>``
(colour), e.g. ``results/weights/dncnn-denoise-s30-quick.pt``: they are trained on BSDS500
train+val (``models.train.denoise_training_images``) with Gaussian noise of that level, and
a method may pass its own training ``recipe`` (DnCNN: Adam on its residual loss).
"""
from __future__ import annotations

import contextvars
import datetime as _dt
import json
import shutil
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.errors import WeightsUnavailable
from core.files import atomic_write_text
from core.layout import WEIGHTS_DIR, cache_root
from core.profiles import get_profile
from core.store import code_version
from core.weights import parse_denoise_tag, split_seed
from datasets.training import (
    denoise_training_images,
    real_training_pairs,
    training_images,
)
from models.checkpoints import load_weights, save_weights
from models.registry import file_identity
from models.samplers import NoisyPatchSampler, PairedPatchSampler, PatchSampler, SplitSampler
from models.train import TrainConfig, train
from datasets.rainbank import BANK_SOURCES, PAIR_MIX, PAIR_SOURCES, bank_renderer, fit_pairs

#: Training cache; ``RESGUIDE_CACHE`` moves it (the tests point it at a temporary folder).
CACHE_DIR = cache_root() / "weights"


_TRAINING_ALLOWED = contextvars.ContextVar("training_allowed", default=True)
_TRAIN_OPTIONS = contextvars.ContextVar("train_options", default={})


class TrainingIncomplete(RuntimeError):
    """Training stopped at its time limit; the checkpoint is kept and a rerun resumes it."""


@contextmanager
def train_options(device: str = "cpu", workers: int = 0, max_seconds: float | None = None, progress: bool = True):
    """Within this block, training runs on ``device`` with ``workers`` batch processes, stops
    (resumably) after ``max_seconds`` and shows a progress bar if ``progress``."""
    token = _TRAIN_OPTIONS.set({"device": device, "workers": int(workers), "max_seconds": max_seconds,
                                "progress": bool(progress)})
    try:
        yield
    finally:
        _TRAIN_OPTIONS.reset(token)


def device_name(device: str) -> str:
    """``cpu`` or the accelerator's name, e.g. ``cuda (NVIDIA H100 80GB HBM3)``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return dev.type


@contextmanager
def training_allowed(flag: bool):
    """Within this block, missing weights are trained now (True) or reported as unavailable (False)."""
    token = _TRAINING_ALLOWED.set(bool(flag))
    try:
        yield
    finally:
        _TRAINING_ALLOWED.reset(token)


#: Sources whose training starts from the weights of another source, of the same family and profile
#: (fine-tuning): real pairs after the fitted renderer's rain. Such a run warms its rate up over
#: WARMUP_STEPS (``TrainConfig.warmup``).
WARM_STARTS = {"pairs-heavy-warm": "heavy-real", "pairs-mix-heavy-warm": "heavy-real"}
WARMUP_STEPS = 200
#: Sources whose run ships the moving average of its weights with this decay (``TrainConfig.ema``).
WEIGHT_AVERAGE = {"pairs-mix-heavy-warm": 0.999}


def weights_name(family: str, tag: str, profile: str) -> str:
    return f"{family}-{tag}-{profile}"


def _what(tag: str) -> str:
    """``light rain`` or ``denoising, sigma 30, grey`` (for messages)."""
    denoise = parse_denoise_tag(tag)
    if denoise is None:
        rain, seed = split_seed(tag)
        return f"{rain} rain" + (f", seed {seed}" if seed is not None else "")
    return f"denoising, sigma {denoise[0]}, {'colour' if denoise[1] else 'grey'}"


def train_command(family: str, tag: str, profile: str, data_root=None, device: str = "cpu") -> str:
    """The ``benchmark.run train`` command that makes the weights ``family``-``tag``-``profile``."""
    denoise = parse_denoise_tag(tag)
    rain, seed = split_seed(tag)
    what = (f"--rain {rain}" + (f" --seed {seed}" if seed is not None else "") if denoise is None
            else f"--sigma {denoise[0]} {'--color' if denoise[1] else '--grey'}")
    root = f" --data-root {data_root}" if data_root else ""
    return (f"python -m benchmark.run train {family} {what} --profile {profile}{root}"
            + (f" --device {device}" if device != "cpu" else ""))


def single_output(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs to supervise of a model with one output (DDN, DnCNN): ``[net(x)]``."""
    return [net(x)]


def find(family: str, tag: str, profile: str) -> Path | None:
    name = weights_name(family, tag, profile)
    for folder in (WEIGHTS_DIR, CACHE_DIR):
        path = folder / f"{name}.pt"
        if path.exists():
            return path
    return None


def checkpoint_path(name: str) -> Path:
    """The cache's training checkpoint ``<name>.ckpt``. A run in progress committed to the repository
    (``results/weights/<name>.ckpt``) is copied there first, so that it resumes."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    ckpt = CACHE_DIR / f"{name}.ckpt"
    shipped_run = WEIGHTS_DIR / f"{name}.ckpt"
    if not ckpt.exists() and shipped_run.exists():
        print(f"resuming the committed run {shipped_run}", file=sys.stderr)
        shutil.copyfile(shipped_run, ckpt)
    return ckpt


def train_now(family: str, tag: str, profile_name: str, net: nn.Module, outputs_fn: Callable, data_root,
              use_ssim: bool = True, progress: bool = True, recipe: dict | None = None) -> Path:
    """Train ``net`` (already initialised) for ``profile_name`` and cache its weights; returns the path.

    ``recipe`` overrides TrainConfig fields (optimizer, loss, lr, batch, patch) for methods that
    train their own way; a denoising ``tag`` sets task, sigma and channels; a seeded tag
    (``heavy-seed1``) trains on that rain with that seed in place of the profile's."""
    profile = get_profile(profile_name)
    name = weights_name(family, tag, profile_name)
    denoise = parse_denoise_tag(tag)
    rain, seed = split_seed(tag)
    fields = dict(iterations=profile.train_iterations, batch=profile.train_batch, patch=profile.train_patch,
                  seed=profile.seed if seed is None else seed, rain=rain, use_ssim=use_ssim)
    if denoise is not None:
        fields.update(task="denoise", sigma=denoise[0], channels=3 if denoise[1] else 1, rain="none")
    if rain in WARM_STARTS:
        fields["warmup"] = min(WARMUP_STEPS, profile.train_iterations // 5)
    if rain in WEIGHT_AVERAGE:
        fields["ema"] = WEIGHT_AVERAGE[rain]
    fields.update(recipe or {})
    cfg = TrainConfig(**fields)
    real = None if denoise is not None else real_training_pairs(data_root, rain)
    if denoise is not None:
        images, data_desc = denoise_training_images(data_root)
        data_desc += (f"; Gaussian noise sigma {cfg.sigma} (0-255 scale), float, unclipped, "
                      f"{'RGB' if cfg.channels == 3 else 'grey (PIL L)'}")
        sampler = NoisyPatchSampler(images, sigma=cfg.sigma, patch=cfg.patch, seed=cfg.seed, channels=cfg.channels)
    elif real is not None:  # the user's real training pairs (e.g. RainTrainL) take precedence
        sampler = PairedPatchSampler(real, patch=cfg.patch, seed=cfg.seed)
        release = real.describe().get("release") or "unregistered"
        data_desc = f"real pairs {real.name} ({len(real)} pairs, {release})"
    elif rain in PAIR_SOURCES:  # the fit split of the real heavy pairs, as they are
        pairs = fit_pairs(data_root)
        sampler = PairedPatchSampler(pairs, patch=cfg.patch, seed=cfg.seed)
        data_desc = f"the {len(pairs)} fit pairs of {pairs.name} ({', '.join(p.name for p in pairs.pairs)}), as they are"
        if rain in PAIR_MIX:  # half of each batch: the bank's real layers over the clean training images
            images, images_desc = training_images(data_root)
            bank = PatchSampler(images, rain=bank_renderer(PAIR_MIX[rain], data_root), patch=cfg.patch, seed=cfg.seed + 1)
            sampler = SplitSampler(sampler, bank)
            data_desc = (f"half of each batch: {data_desc}; the other half: {images_desc} under the real rain "
                         f"layers of the bank ({PAIR_MIX[rain]})")
    else:
        images, data_desc = training_images(data_root)
        if rain in BANK_SOURCES:
            renderer, data_desc = bank_renderer(rain, data_root), data_desc + f"; real rain layers of the bank ({rain})"
        else:
            renderer, data_desc = rain, data_desc + f"; rain synthesised by datasets.rain ({rain})"
        sampler = PatchSampler(images, rain=renderer, patch=cfg.patch, seed=cfg.seed)
    warm = warm_start(net, family, tag, profile_name, data_root)
    opts = _TRAIN_OPTIONS.get()
    device = opts.get("device", "cpu")
    ckpt = checkpoint_path(name)
    info = train(net, outputs_fn, sampler, cfg, ckpt, progress=progress and opts.get("progress", True),
                 device=device, log=lambda msg: print(msg, file=sys.stderr),
                 workers=opts.get("workers", 0), max_seconds=opts.get("max_seconds"))
    command = train_command(family, tag, profile_name, "DATA" if data_root else None, device)
    if not info["complete"]:
        progress_record = {
            "family": family, "tag": tag, "profile": profile_name, "config": asdict(cfg), "training_data": data_desc,
            **warm, "iterations_done": info["iterations"], "iterations": cfg.iterations,
            "seconds": round(info["seconds"], 1), "final_loss": info["final_loss"], "device": device_name(device),
            "command": command,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (CACHE_DIR / f"{name}.ckpt.json").write_text(json.dumps(progress_record, indent=1) + "\n")
        raise TrainingIncomplete(
            f"{family} ({_what(tag)}, {profile_name} profile) stopped at its time limit after iteration "
            f"{info['iterations']}/{cfg.iterations}; the checkpoint {ckpt} is kept and the same command resumes it")
    return save_trained(family, tag, profile_name, net, {
        "config": asdict(cfg), "training_data": data_desc, **warm, "iterations": info["iterations"],
        "seconds": round(info["seconds"], 1), "final_loss": info["final_loss"],
        "patches_per_s": info["patches_per_s"], "command": command})


def warm_start(net: nn.Module, family: str, tag: str, profile: str, data_root) -> dict:
    """Load the start weights of a :data:`WARM_STARTS` source into ``net``; returns the record's
    ``{"warm_start": {tag, file, sha256}}`` ({} for any other source). The start weights are not
    trained on the way: WeightsUnavailable names the command that makes them. A seeded run starts
    from the same weights as its unseeded one."""
    start = WARM_STARTS.get(split_seed(tag)[0])
    if start is None:
        return {}
    path = find(family, start, profile)
    if path is None:
        raise WeightsUnavailable(
            f"{family} ({_what(tag)}, {profile} profile) starts from the {start} weights of the same profile, "
            f"which are not here; make them first: {train_command(family, start, profile, data_root and 'DATA')}")
    load_weights(net, path)
    return {"warm_start": {"tag": start, "file": path.name, "sha256": file_identity(path)["sha256"]}}


def save_trained(family: str, tag: str, profile: str, net: nn.Module, fields: dict) -> Path:
    """Write freshly trained weights and their ``.json`` record (``fields`` plus the family, tag,
    profile, device, code version, torch version, threads and time) into the training cache."""
    meta = {"family": family, "tag": tag, "profile": profile, **fields,
            "device": device_name(_TRAIN_OPTIONS.get().get("device", "cpu")),
            "code_version": code_version(), "torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    name = weights_name(family, tag, profile)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"{name}.pt"
    save_weights(net, path, meta)
    atomic_write_text(CACHE_DIR / f"{name}.json", json.dumps(meta, indent=1) + "\n")
    return path


def run_options() -> dict:
    """The options of the enclosing :func:`train_options` block (device, workers, max_seconds, progress)."""
    return dict(_TRAIN_OPTIONS.get())


def ship(family: str, tag: str, profile: str) -> Path:
    """Copy cached weights and their record into ``results/weights/`` (to be committed)."""
    name = weights_name(family, tag, profile)
    src = CACHE_DIR / f"{name}.pt"
    if not src.exists():
        raise FileNotFoundError(f"no trained weights at {src}; train them first")
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    for suffix in (".pt", ".json", ".autoexit.json"):  # the weights, their record, derived calibrations
        if (CACHE_DIR / f"{name}{suffix}").exists():
            shutil.copyfile(CACHE_DIR / f"{name}{suffix}", WEIGHTS_DIR / f"{name}{suffix}")
    for f in [*WEIGHTS_DIR.glob(f"{name}.ckpt*"), *WEIGHTS_DIR.glob(f"{name}.*.ckpt*")]:
        f.unlink()  # the run is finished: drop its committed checkpoints
    return WEIGHTS_DIR / f"{name}.pt"


def ship_checkpoint(family: str, tag: str, profile: str) -> Path:
    """Copy an unfinished run's checkpoint (a staged run's: every ``<name>.<stage>.ckpt``) and progress
    record into ``results/weights/`` so that a later machine (e.g. one with a GPU) resumes it from the
    repository."""
    name = weights_name(family, tag, profile)
    files = sorted(CACHE_DIR.glob(f"{name}.ckpt*")) + sorted(CACHE_DIR.glob(f"{name}.*.ckpt*"))
    if not any(f.suffix == ".ckpt" for f in files):
        raise FileNotFoundError(f"no training checkpoint at {CACHE_DIR / (name + '.ckpt')}")
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, WEIGHTS_DIR / f.name)
    return WEIGHTS_DIR / files[0].name


def derived(family: str, tag: str, profile: str, kind: str, make: Callable[[], dict],
            weights_sha256: str | None = None) -> dict:
    """A JSON record derived from trained weights (e.g. the auto-exit threshold): shipped, cached, or
    made now by ``make()`` and cached. With ``weights_sha256`` the record carries the digest of the
    weights it was made from, and one made from other weights (or recording none) is made again:
    retrained weights never meet a stale record."""
    name = f"{weights_name(family, tag, profile)}.{kind}.json"
    for folder in (WEIGHTS_DIR, CACHE_DIR):
        if (folder / name).exists():
            record = json.loads((folder / name).read_text())
            if weights_sha256 is None or record.get("weights_sha256") == weights_sha256:
                return record
    record = make()
    if weights_sha256 is not None:
        record = {**record, "weights_sha256": weights_sha256}

    atomic_write_text(CACHE_DIR / name, json.dumps(record, indent=1) + "\n")
    return record


def trained(family: str, tag: str, profile: str, build: Callable[[], nn.Module], outputs_fn: Callable,
            data_root=None, use_ssim: bool = True, progress: bool = True,
            recipe: dict | None = None, train_fn: Callable[[nn.Module], Path] | None = None
            ) -> tuple[nn.Module, dict]:
    """A trained ``family`` model for ``tag`` (a rain type, or ``denoise[-color]-sSIGMA``) under
    ``profile``, with its weights identity; ``recipe``: see :func:`train_now`. ``train_fn(net)``
    replaces :func:`train_now` for a method that trains in its own way (DID-MDN's three stages); it
    returns the path :func:`save_trained` wrote."""
    path = find(family, tag, profile)
    if path is None and not _TRAINING_ALLOWED.get():
        # a denoiser's command names the data root: without one it would train on the embedded images
        root = data_root if parse_denoise_tag(tag) is not None else None
        raise WeightsUnavailable(
            f"{family} is not trained for {_what(tag)} in the {profile} profile: run "
            f"`{train_command(family, tag, profile, root)}` (or pass --train-missing)")

    seed = split_seed(tag)[1]
    with torch.random.fork_rng(devices=[]):  # the starting weights are a function of the seed alone
        torch.manual_seed(get_profile(profile).seed if seed is None else seed)
        net = build()
    if path is None and train_fn is not None:
        path = train_fn(net)
    elif path is None:
        path = train_now(family, tag, profile, net, outputs_fn, data_root, use_ssim, progress, recipe)
    meta = load_weights(net, path)
    source = "shipped" if path.parent == WEIGHTS_DIR else "trained here (cache)"
    return net, {"tag": tag, "source": source, **file_identity(path),
                 "training_data": (meta or {}).get("training_data"), "profile": profile}
