"""Deraining result cells: (method, dataset, weights) scored under the suite's one protocol.

:func:`run_cell` opens the dataset, loads the method's weights, and reuses the stored cell
when its fingerprint (protocol, method, weights, dataset, limit, seed) still matches; else it
evaluates and stores a new one through :func:`core.store.settle`.
"""
from __future__ import annotations

import threading

from tqdm import tqdm

from benchmark.evaluate import evaluate
from benchmark.inference import cell_megapixels
from benchmark.executor import concurrently, gather, parallel
from benchmark.shards import merge, method_module, run_shard, shard_tasks
from core.metrics import PROTOCOL
from core.store import CELL_FORMAT, CellKey, Context, fingerprint, settle
from datasets.catalog import is_embedded, open_dataset
from datasets.noisy import refuse_seen_test_set
from models import registry

#: cells whose method only the driver knows (registered in ``__main__``) evaluate here, one at a time
_IN_DRIVER = threading.Lock()


def run_cell(key: CellKey, ctx: Context) -> dict:
    """Reuse the stored cell when it is fresh, else compute it (its images in shards on
    ``ctx.executor`` when that is a parallel one); never raises for a bad input."""
    prof = ctx.profile
    cell = {
        "format": CELL_FORMAT,
        "id": key.id,
        "method": key.method,
        "dataset": key.dataset,
        "weights_request": key.weights,
        "profile": prof.name,
        "seed": prof.seed,
        "protocol": PROTOCOL,
    }

    def compute(stage: dict):
        stage["now"] = "opening the dataset"
        limit = None if is_embedded(key.dataset) else prof.real_limit
        dataset = open_dataset(key.dataset, ctx.data_root, size=prof.embedded_size, seed=prof.seed, limit=limit)
        stage["now"] = "identifying the dataset"
        desc = dataset.describe()
        stage["now"] = "loading the method"
        net, winfo = registry.load(key.method, key.weights, prof.name, ctx.data_root)
        refuse_seen_test_set(key.dataset, key.weights, winfo)
        fp = fingerprint({"protocol": PROTOCOL, "method": key.method, "weights": winfo,
                          "dataset": desc.get("fingerprint"), "n_images": len(dataset), "limit": limit,
                          "seed": prof.seed, "embedded_size": prof.embedded_size if is_embedded(key.dataset) else None})
        old = ctx.store.load(key)
        if old and old.get("status") == "ok" and old.get("fingerprint") == fp and not ctx.force:
            return old
        stage["now"] = "evaluating"
        ex = ctx.executor
        mp = cell_megapixels(dataset)  # the cell's, not a shard's: every shard takes the same path
        if not parallel(ex):
            result = evaluate(net, dataset, progress=ctx.progress, desc=f"{key.method} on {key.dataset}",
                              method=key.method, megapixels=mp)
        elif method_module(key.method) is None:  # registered in a user's script: no worker knows it
            with _IN_DRIVER:  # one such cell at a time, beside the workers
                result = evaluate(net, dataset, progress=False, method=key.method, megapixels=mp)
        else:
            tasks = shard_tasks(key, prof, ctx.data_root, dataset, winfo, ex.workers, ctx.shard_size, megapixels=mp)
            result = merge(gather(ex, run_shard, tasks, ctx.progress_bar, size=lambda t: t.stop - t.start),
                           key.dataset)
            cell["shards"] = {"n": len(tasks), "executor": ex.name, "workers": result.pop("workers")}
        cell.update(status="ok", metrics=result["metrics"], per_image=result["per_image"], inference=result["inference"],
                    n_images=result["n_images"], seconds=result["seconds"], dataset_info=desc,
                    weights=winfo, fingerprint=fp)
        return None

    return settle(key, cell, ctx.store, ctx.stats, compute)


def run_cells(keys: list[CellKey], ctx: Context) -> list[dict]:
    """Every cell of ``keys`` (:func:`run_cell`), in order.  With a parallel executor
    (``ctx.executor``) the cells prepare in driver threads and their image shards run in the
    executor's workers; each cell is still written once, by the driver."""
    if not parallel(ctx.executor):
        return [run_cell(k, ctx) for k in tqdm(keys, desc="cells", unit="cell", disable=not ctx.progress)]
    return concurrently(lambda k: run_cell(k, ctx), keys, ctx.executor)
