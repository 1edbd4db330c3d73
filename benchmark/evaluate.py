"""Run a derainer over a paired dataset and measure it under the MATLAB protocol."""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from benchmark.inference import Derainer, cell_megapixels, run_model, to_image, to_tensor  # noqa: F401 (re-exported)
from core.metrics import image_metrics


def evaluate(net: torch.nn.Module | Derainer, dataset, progress: bool = True, desc: str | None = None,
             dtype: str = "float32", channels_last: bool = True, path: str = "auto", device: str = "cpu",
             method: str = "", megapixels: float | None = None) -> dict:
    """Mean and per-image metrics of ``net`` on ``dataset``; ``seconds`` is the wall time and
    ``inference`` the path that ran (:class:`benchmark.inference.Derainer`).

    The default path is float32 in the channels-last memory format under ``inference_mode``,
    compiled where the cell's ``megapixels`` (default: the dataset's) pay for it, ``path``
    ``"eager"`` / ``"compiled"`` forcing one. bfloat16 autocast moved the mean PSNR by 0.02-0.04 dB
    on Rain100L, so it is opt-in (``score --dtype bfloat16``), never used for cells, and it runs
    eager. ``channels_last=False`` (``score --contiguous``) runs the eager NCHW path.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if dtype != "float32":
        path = "eager"
    if isinstance(net, Derainer):  # already on its path (a worker's, built once for its shards)
        derainer = net
    else:
        if megapixels is None:
            megapixels = cell_megapixels(dataset) if path == "auto" else 0.0
        derainer = Derainer(net, method or type(net).__name__.lower(), megapixels, path, device, channels_last)
    per_image = []
    start = time.perf_counter()
    it = tqdm(dataset, total=len(dataset), desc=desc or getattr(dataset, "name", "images"),
              disable=not progress, unit="img", leave=False)
    measure = getattr(dataset, "metrics", image_metrics)  # denoising sets measure grey levels, not luma
    for name, rainy, clean in it:
        values = measure(derainer(rainy, dtype), clean)
        if derainer.last_exit is not None:  # blocks a detachable model ran for this image
            values["blocks"] = float(derainer.last_exit)
        per_image.append({"image": name, **values})
    out = summarize(per_image, time.perf_counter() - start, getattr(dataset, "name", dataset))
    out["inference"] = derainer.describe()
    return out


def summarize(per_image: list[dict], seconds: float, name="the dataset") -> dict:
    """Mean metrics over ``per_image`` in its order, as :func:`evaluate` returns them; the merge of
    a cell's shards (:mod:`benchmark.shards`) calls it on their concatenation, so a sharded cell
    has the serial cell's mean to the last bit."""
    if not per_image:
        raise ValueError(f"dataset {name!r} yielded no images")
    means = {m: float(np.mean([p[m] for p in per_image])) for m in per_image[0] if m != "image"}
    return {"metrics": means, "per_image": per_image, "n_images": len(per_image), "seconds": seconds}
