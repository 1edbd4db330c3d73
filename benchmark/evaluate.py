"""Run a derainer over a paired dataset and measure it under the MATLAB protocol."""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from tqdm import tqdm

from benchmark.runtime import compile_for_inference
from core.metrics import image_metrics


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC -> float32 1xCxHxW in [0, 1]; a float image (e.g. a noisy one) is taken as is."""
    if np.asarray(img).dtype != np.uint8:
        return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def to_image(t: torch.Tensor) -> np.ndarray:
    """1x3xHxW float -> HxWx3 float64 (rounded to uint8 by the metrics)."""
    return t.detach().squeeze(0).permute(1, 2, 0).double().cpu().numpy()


def run_model(net: torch.nn.Module, rainy: np.ndarray, dtype: str = "float32", channels_last: bool = True,
              device: str = "cpu") -> np.ndarray:
    """``net`` on one uint8 image; ``dtype="bfloat16"`` runs under CPU autocast (a fast path whose
    effect on the metrics is measured, not assumed), ``channels_last`` the NHWC memory format."""
    x = to_tensor(rainy).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        out = net(x).float()
    if out.shape[-2:] != rainy.shape[:2]:
        raise ValueError(f"model output {tuple(out.shape)} does not match input {rainy.shape}")
    return to_image(out)


def evaluate(net: torch.nn.Module, dataset, progress: bool = True, desc: str | None = None,
             dtype: str = "float32", channels_last: bool = True, compile: bool = False, device: str = "cpu") -> dict:
    """Mean and per-image metrics of ``net`` on ``dataset``; ``seconds`` is the wall time.

    The default path is float32 in the channels-last memory format under ``inference_mode``:
    on Rain100L it changed ResGuideNet's mean PSNR by 5e-7 dB against the contiguous format
    and ran 1.7-2.2x faster on the CPU. bfloat16 autocast is faster still but moved the mean
    PSNR by 0.02-0.04 dB, so it is opt-in (``score --dtype bfloat16``), never used for cells.
    ``compile`` runs the model through :func:`benchmark.runtime.compile_for_inference` (opt-in,
    ``score --compile``): it pays only on many images of few sizes, since every new image size
    compiles again (seconds to minutes per model), and the cells do not use it.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile:
        net = compile_for_inference(net)
    per_image = []
    start = time.perf_counter()
    it = tqdm(dataset, total=len(dataset), desc=desc or getattr(dataset, "name", "images"),
              disable=not progress, unit="img", leave=False)
    measure = getattr(dataset, "metrics", image_metrics)  # denoising sets measure grey levels, not luma
    for name, rainy, clean in it:
        values = measure(run_model(net, rainy, dtype, channels_last, device), clean)
        if getattr(net, "last_exit", None) is not None:  # blocks a detachable model ran for this image
            values["blocks"] = float(net.last_exit)
        per_image.append({"image": name, **values})
    return summarize(per_image, time.perf_counter() - start, getattr(dataset, "name", dataset))


def summarize(per_image: list[dict], seconds: float, name="the dataset") -> dict:
    """Mean metrics over ``per_image`` in its order, as :func:`evaluate` returns them; the merge of
    a cell's shards (:mod:`benchmark.shards`) calls it on their concatenation, so a sharded cell
    has the serial cell's mean to the last bit."""
    if not per_image:
        raise ValueError(f"dataset {name!r} yielded no images")
    means = {m: float(np.mean([p[m] for p in per_image])) for m in per_image[0] if m != "image"}
    return {"metrics": means, "per_image": per_image, "n_images": len(per_image), "seconds": seconds}
