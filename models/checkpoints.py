"""Weights files and training checkpoints: written atomically, loaded strictly (every tensor
must fit, or the first that does not is named)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.files import atomic_write, read_torch_file
from models.registry import first_mismatch


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
