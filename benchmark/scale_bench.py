"""The executors against each other on one table: ``python -m benchmark.scale_bench``.

    python -m benchmark.scale_bench table2 --data-root DIR [--executors serial local ray]
                                    [--profile quick] [--out results/runtime/scale_out.json]

Each executor computes every cell of the table from scratch (``--force``) in a temporary
results folder of its own, one after another, so the committed cells are never touched.
It prints the wall time of each, the speed-up over the first, and whether any cell's
metrics or per-image values differ from the first executor's; the record (timings, the
machine's CPU count, the workers and threads of each executor) is written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmark.artifacts import ARTIFACTS, Job, get_artifact, run
from benchmark.executor import EXECUTORS, cpu_count, default_split
from benchmark.runtime import prepare_cpu
from core.files import atomic_write_text
from core.layout import RESULTS
from core.profiles import DEFAULT_PROFILE, get_profile
from core.store import Store
from datasets.catalog import data_root_from

COMPARED = ("status", "metrics", "per_image", "fingerprint")


def differences(reference: dict[str, dict], cells: dict[str, dict]) -> dict:
    """Cells whose compared fields differ, and the largest per-image metric difference."""
    differ, largest = [], 0.0
    for cid, ref in reference.items():
        cell = cells.get(cid)
        if cell is None or any(ref.get(k) != cell.get(k) for k in COMPARED if k != "per_image"):
            differ.append(cid)
        for a, b in zip(ref.get("per_image") or [], (cell or {}).get("per_image") or []):
            for m, v in a.items():
                if isinstance(v, float) and isinstance(b.get(m), float):
                    largest = max(largest, abs(v - b[m]))
    return {"cells_differing": differ, "max_per_image_difference": largest}


def bench(table: str, executors: list[str], data_root: Path | None, profile: str, workers: int | None,
          threads: int | None) -> dict:
    art = get_artifact(table, "table")
    record = {"table": art.id, "profile": profile, "data_root": str(data_root), "cpu_count": cpu_count(),
              "machine": platform.processor() or platform.machine(), "runs": []}
    reference = None
    for name in executors:
        with tempfile.TemporaryDirectory(prefix=f"resguide-bench-{name}-") as tmp:
            w, t = default_split(name, workers, threads)
            job = Job(get_profile(profile), data_root, Path(tmp), force=True, progress=False, executor=name,
                      workers=workers, threads=threads)
            start = time.perf_counter()
            code = run([art.id], job)
            seconds = time.perf_counter() - start
            cells = {cid: {k: c.get(k) for k in COMPARED} for cid, c in Store(job.store.root).all().items()}
        run_rec = {"executor": name, "workers": w, "threads": t, "seconds": round(seconds, 1), "exit": code,
                   "cells_ok": sum(c["status"] == "ok" for c in cells.values())}
        if reference is None:
            reference = cells
        else:
            run_rec.update(differences(reference, cells), speedup=round(record["runs"][0]["seconds"] / seconds, 2))
        record["runs"].append(run_rec)
        print(json.dumps(run_rec), flush=True)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.scale_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=[a for a in ARTIFACTS if ARTIFACTS[a].kind == "table"])
    ap.add_argument("--executors", nargs="+", default=["serial", "local"], choices=EXECUTORS)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="per task (default: each executor's own)")
    ap.add_argument("--out", type=Path, default=RESULTS / "runtime" / "scale_out.json")
    args = ap.parse_args(argv)
    prepare_cpu()  # as the CLI
    record = bench(args.table, args.executors, data_root_from(args.data_root), args.profile, args.workers,
                   args.threads)
    record["command"] = "python -m benchmark.scale_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    record["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
