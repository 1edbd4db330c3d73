"""A cell's images split into shards that run on an executor (:mod:`benchmark.executor`) and are
merged back into one cell.

A shard is a range of a dataset's images (:func:`datasets.catalog.image_range`).  The worker
opens the dataset and loads the method itself, from the data root and weights it is given by
path, and checks that it sees the very images and weights the driver fingerprinted (on a
cluster the data root must be visible at the same path on every node).  The merge
concatenates the shards' per-image values in image order and takes the same mean as a serial
run (:func:`benchmark.evaluate.summarize`), so the merged cell is the serial cell: same
per-image values, same means, same fingerprint.

The detection study shards its slow part, deraining the frames: :func:`derain_shard` writes a
range of frames into the derained-frame cache (:class:`benchmark.derained.DerainedFrames`),
and the cell then detects on the cached frames in the driver.
"""
from __future__ import annotations

import importlib
import math
import os
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from benchmark.derained import save_frame
from benchmark.evaluate import evaluate, summarize
from benchmark.inference import Derainer
from core.metrics import to_uint8
from core.profiles import get_profile
from core.store import fingerprint
from datasets.catalog import image_range, is_embedded, open_dataset
from datasets.detection import detection_dataset, rainy
from models import registry
from models.provider import training_allowed

#: shards per worker and cell: small enough that a killed worker loses little, large enough
#: that a shard's overhead (a task, a result) is a small part of it
SHARDS_PER_WORKER = 4


def shard_ranges(n: int, workers: int, size: int | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``range(n)`` in order: ``size`` images each, or by
    default about :data:`SHARDS_PER_WORKER` shards per worker."""
    if n <= 0:
        return []
    size = size or max(1, math.ceil(n / (SHARDS_PER_WORKER * max(1, workers))))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


@dataclass(frozen=True)
class ShardTask:
    """The images ``[start, stop)`` of one deraining cell; everything reaches the worker by value
    or by path."""

    method: str
    weights: str | None
    dataset: str
    profile: str
    data_root: str | None
    limit: int | None
    start: int
    stop: int
    dataset_fingerprint: str
    weights_fingerprint: str
    device: str = "cpu"
    module: str = "models"
    megapixels: float = 0.0  # the whole cell's (benchmark.inference.cell_megapixels): its path


@lru_cache(maxsize=4)
def _dataset(name: str, data_root: str | None, profile: str, limit: int | None):
    prof = get_profile(profile)
    return open_dataset(name, Path(data_root) if data_root else None, size=prof.embedded_size, seed=prof.seed,
                        limit=limit)


def method_module(method: str) -> str | None:
    """The module that registers ``method``: a worker imports it, so that a method registered
    outside :mod:`models` (a user's module) is known there too.  None for a method registered
    in ``__main__`` (a user's script), which no worker can import: its cells run in the driver."""
    spec = registry.REGISTRY.get(method)
    module = spec.factory.__module__ if spec else "models"
    return None if module == "__main__" else module


@lru_cache(maxsize=4)
def _method(method: str, weights: str | None, profile: str, data_root: str | None, module: str = "models"):
    importlib.import_module(module)
    with training_allowed(False):  # the driver trained what was missing; a worker only loads
        return registry.load(method, weights, profile, Path(data_root) if data_root else None)


@lru_cache(maxsize=2)
def _derainer(method: str, weights: str | None, profile: str, data_root: str | None, module: str,
              megapixels: float, device: str = "cpu") -> tuple[Derainer, dict]:
    """The worker's derainer on the cell's path, built (and compiled) once for all its shards."""
    net, winfo = _method(method, weights, profile, data_root, module)
    return Derainer(net, method, megapixels, device=device), winfo


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _check(what: str, here: str, driver: str, where: str) -> None:
    if here != driver:
        raise ValueError(f"{what} differ on worker {socket.gethostname()} from the driver's ({where}): the data "
                         "root and weights must be the same files on every node")


def run_shard(task: ShardTask) -> dict:
    """Evaluate the shard's images; ``{"per_image", "seconds", "worker"}`` (runs in a worker)."""
    dataset = _dataset(task.dataset, task.data_root, task.profile, task.limit)
    _check("the images", dataset.describe().get("fingerprint"), task.dataset_fingerprint,
           f"{task.dataset} under {task.data_root}")
    derainer, winfo = _derainer(task.method, task.weights, task.profile, task.data_root, task.module,
                                task.megapixels, task.device)
    _check("the weights", fingerprint(winfo), task.weights_fingerprint, f"{task.method} {task.weights}")
    part = image_range(dataset, task.start, task.stop)
    result = evaluate(derainer, part, progress=False)
    return {"per_image": result["per_image"], "seconds": result["seconds"], "worker": _worker_id(),
            "inference": result["inference"]}


def shard_tasks(key, prof, data_root: Path | None, dataset, winfo: dict, workers: int, size: int | None = None,
                device: str = "cpu", megapixels: float = 0.0) -> list[ShardTask]:
    """The shards of the cell ``key`` whose dataset (opened by the driver) is ``dataset``."""
    limit = None if is_embedded(key.dataset) else prof.real_limit
    fp = dataset.describe().get("fingerprint")
    return [ShardTask(key.method, key.weights, key.dataset, prof.name, str(data_root) if data_root else None, limit,
                      a, b, fp, fingerprint(winfo), device, method_module(key.method), megapixels)
            for a, b in shard_ranges(len(dataset), workers, size)]


def merge(results: list[dict], name: str) -> dict:
    """One cell's evaluation from its shards' results (in image order)."""
    per_image = [p for r in results for p in r["per_image"]]
    out = summarize(per_image, sum(r["seconds"] for r in results), name)
    out["workers"] = sorted({r["worker"] for r in results})
    out["inference"] = results[0]["inference"]  # the cell's megapixels decide: every shard takes one path
    return out


# ----------------------------------------------------------------- detection: derained frames


@dataclass(frozen=True)
class DerainTask:
    """Derain the frames ``[start, stop)`` of a detection dataset into ``cache`` (a folder)."""

    derainer: str
    weights: str | None
    dataset: str
    rain: str
    profile: str
    data_root: str | None
    start: int
    stop: int
    cache: str
    dataset_fingerprint: str
    weights_fingerprint: str
    module: str = "models"
    megapixels: float = 0.0  # the whole dataset's: every shard takes the cell's inference path


@lru_cache(maxsize=2)
def _detection_set(name: str, data_root: str | None, profile: str):
    return detection_dataset(name, Path(data_root) if data_root else None, profile)


def derain_shard(task: DerainTask) -> dict:
    """Write the derained frames of the task into its cache folder (runs in a worker); a frame
    already there is left as it is."""
    ds = _detection_set(task.dataset, task.data_root, task.profile)
    _check("the frames", ds.info["fingerprint"], task.dataset_fingerprint, f"{task.dataset} under {task.data_root}")
    derainer, winfo = _derainer(task.derainer, task.weights, task.profile, task.data_root, task.module,
                                task.megapixels)
    _check("the weights", fingerprint(winfo), task.weights_fingerprint, f"{task.derainer} {task.weights}")
    seed = get_profile(task.profile).seed
    start, done = time.perf_counter(), 0
    for i in range(task.start, task.stop):
        path = Path(task.cache) / f"{ds.ids[i]}.png"
        if path.is_file():
            continue
        img = rainy([ds.image(i)], task.rain, seed, ids=[ds.ids[i]])[0]
        save_frame(path, to_uint8(derainer(img)))
        done += 1
    return {"frames": done, "seconds": time.perf_counter() - start, "worker": _worker_id(),
            "inference": derainer.describe()}
