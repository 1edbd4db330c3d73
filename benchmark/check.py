"""Regression gate: recompute every ``smoke``-profile cell and compare with committed values.

The reference (``results/reference/smoke.json``) holds, per cell, the status and metrics
the suite produced when it was last accepted. ``check`` fails (exit 1) with a readable
diff when a metric moves by more than its tolerance, when a cell that was ok now fails,
or when a reference cell disappears. Cells whose data is absent on this machine (a real
dataset that is not under the data root) are reported as not checked.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from benchmark.cells import run_cell
from benchmark.detection import detect_cell
from benchmark.artifacts import ARTIFACTS, Job
from core.files import atomic_write_text
from core.profiles import get_profile
from core.store import Context, Store
from datasets.catalog import data_root_from
from models import registry
from models.provider import training_allowed

DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "smoke.json"
DEFAULT_TOLERANCE = {"psnr": 0.05, "ssim": 0.002, "ap": 0.01, "coco": 0.01}
#: detection cells of the gate: (derainer, rain) on the road scenes and the KITTI frames, with the
#: shipped detector (the smoke profile's detection settings, core.profiles)
DETECTION_ROWS = (("none", "none"), ("none", "heavy"), ("resguidenet", "heavy"))
DETECTION_DATASETS = ("roads", "KITTI")


def tolerance_for(metric: str, tol: dict) -> float:
    for prefix, value in tol.items():
        if metric.startswith(prefix):
            return float(value)
    return 0.0


def compute_smoke(data_root, progress: bool = True, methods=None, detection: bool = True) -> dict[str, dict]:
    """Compute every smoke cell from scratch in a temporary store; returns id -> cell.

    With ``detection``, also the detection cells of :data:`DETECTION_ROWS` (AP metrics; a
    missing detector or dataset makes them skipped, i.e. not checked)."""
    registered = set(methods or registry.names())
    with tempfile.TemporaryDirectory(prefix="resguide-check-") as tmp:
        job = Job(get_profile("smoke"), data_root_from(data_root), Path(tmp))
        keys = list(dict.fromkeys(k for art in ARTIFACTS.values() if art.kind == "table" for k in art.cells(job)
                                  if k.method in registered))
        ctx = Context(profile=get_profile("smoke"), data_root=data_root_from(data_root), store=Store(Path(tmp)),
                      force=True, progress=progress)
        with training_allowed(False):  # only shipped weights are checked: a model missing here is skipped
            cells = {k.id: run_cell(k, ctx) for k in keys}
        if detection:
            for dataset in DETECTION_DATASETS:
                for derainer, rain in DETECTION_ROWS:
                    if derainer in registered or derainer == "none":
                        cell = detect_cell(derainer, dataset, rain, profile="smoke", data_root=ctx.data_root,
                                           results=Path(tmp), force=True)
                        cell.pop("per_image", None)
                        cells[cell["id"]] = cell
        return cells


def compare(current: dict[str, dict], reference: dict) -> tuple[list[str], list[str]]:
    """(failures, notes) of ``current`` cells against a reference document."""
    tol = {**DEFAULT_TOLERANCE, **reference.get("tolerance", {})}
    failures, notes = [], []
    for cid, ref in sorted(reference.get("cells", {}).items()):
        cur = current.get(cid)
        if cur is None:
            failures.append(f"{cid}: in the reference but no longer computed")
            continue
        if cur["status"] == "skipped":
            notes.append(f"{cid}: not checked (data absent: {cur.get('error', '')[:80]})")
            continue
        if cur["status"] != ref["status"]:
            failures.append(f"{cid}: status {ref['status']} -> {cur['status']} {cur.get('error', '')}".rstrip())
            continue
        if ref["status"] != "ok":
            continue
        for metric, want in sorted(ref["metrics"].items()):
            got = cur["metrics"].get(metric)
            if got is None:
                failures.append(f"{cid}: metric {metric} missing")
                continue
            t = tolerance_for(metric, tol)
            same_inf = math.isinf(want) and math.isinf(got) and (want > 0) == (got > 0)
            if not same_inf and not abs(got - want) <= t:
                failures.append(f"{cid}: {metric} {want:.4f} -> {got:.4f} (change {got - want:+.4f}, tolerance {t})")
    for cid, cur in sorted(current.items()):
        if cid not in reference.get("cells", {}) and cur["status"] != "skipped":
            notes.append(f"{cid}: new cell, not in the reference (run `check --update` to accept it)")
    return failures, notes


def reference_document(current: dict[str, dict], old: dict | None = None) -> dict:
    """The reference JSON for ``current``; cells that were skipped here keep their old entry, and cells
    that are no longer computed at all (a table stopped asking for them) are dropped."""
    cells = {cid: entry for cid, entry in (old or {}).get("cells", {}).items() if cid in current}
    for cid, cur in current.items():
        if cur["status"] == "skipped":
            continue
        entry = {"status": cur["status"]}
        if cur["status"] == "ok":
            entry["metrics"] = cur["metrics"]
            entry["dataset_fingerprint"] = cur.get("dataset_info", {}).get("fingerprint")
            entry["n_images"] = cur.get("n_images")
        cells[cid] = entry
    return {"profile": "smoke", "tolerance": {**DEFAULT_TOLERANCE, **(old or {}).get("tolerance", {})}, "cells": cells}


def run_check(data_root=None, reference_path: Path | None = None, update: bool = False, progress: bool = True) -> int:
    path = Path(reference_path or DEFAULT_REFERENCE)
    old = json.loads(path.read_text()) if path.exists() else None
    current = compute_smoke(data_root, progress)
    if update:
        doc = reference_document(current, old)
        atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(doc['cells'])} reference cells to {path}")
        return 0
    if old is None:
        print(f"error: no reference at {path}; run `python -m benchmark.run check --update` first")
        return 2
    failures, notes = compare(current, old)
    for n in notes:
        print(f"  note: {n}")
    if failures:
        print(f"check FAILED: {len(failures)} difference(s) against {path}:")
        for f in failures:
            print(f"  - {f}")
        return 1
    checked = sum(1 for c in current.values() if c["status"] != "skipped")
    print(f"check passed: {checked} cells within tolerance of {path}")
    return 0
