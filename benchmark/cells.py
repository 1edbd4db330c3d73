"""Deraining result cells: (method, dataset, weights) scored under the suite's one protocol.

:func:`run_cell` opens the dataset, loads the method's weights, and reuses the stored cell
when its fingerprint (protocol, method, weights, dataset, limit, seed) still matches; else it
evaluates and stores a new one through :func:`core.store.settle`.
"""
from __future__ import annotations

from benchmark.evaluate import evaluate
from core.metrics import PROTOCOL
from core.store import CELL_FORMAT, CellKey, Context, fingerprint, settle
from datasets.catalog import is_embedded, open_dataset
from datasets.noisy import refuse_seen_test_set
from models import registry


def run_cell(key: CellKey, ctx: Context) -> dict:
    """Reuse the stored cell when it is fresh, else compute it; never raises for a bad input."""
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
        result = evaluate(net, dataset, progress=ctx.progress, desc=f"{key.method} on {key.dataset}")
        cell.update(status="ok", metrics=result["metrics"], per_image=result["per_image"],
                    n_images=result["n_images"], seconds=result["seconds"], dataset_info=desc,
                    weights=winfo, fingerprint=fp)
        return None

    return settle(key, cell, ctx.store, ctx.stats, compute)
