import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from core.store import CellKey, Context, Store
from benchmark.cells import run_cell
from core.profiles import get_profile
from models.registry import REGISTRY, register

CALLS = {"n": 0}


class _Counting(nn.Module):
    def forward(self, x):
        CALLS["n"] += 1
        return x


class _Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("planted failure")


if "test_counting" not in REGISTRY:
    register("test_counting")(lambda w, p, d: (_Counting(), {"tag": "none"}))
    register("test_broken")(lambda w, p, d: (_Broken(), {"tag": "none"}))


def _ctx(tmp_path, **kw):
    return Context(profile=get_profile("smoke"), data_root=kw.pop("data_root", None), store=Store(tmp_path),
                   progress=False, **kw)


def test_cell_is_computed_then_reused(tmp_path):
    ctx = _ctx(tmp_path)
    key = CellKey("test_counting", "embedded-light")
    CALLS["n"] = 0
    cell = run_cell(key, ctx)
    assert cell["status"] == "ok" and cell["n_images"] == 3 and CALLS["n"] == 3
    assert set(cell["metrics"]) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    assert len(cell["per_image"]) == 3 and cell["dataset_info"]["fingerprint"]
    stored = json.loads(Store(tmp_path).path(key).read_text())
    assert stored["fingerprint"] == cell["fingerprint"]
    again = run_cell(key, ctx)
    assert CALLS["n"] == 3 and ctx.stats["reused"] == 1 and again["metrics"] == cell["metrics"]
    run_cell(key, _ctx(tmp_path, force=True))
    assert CALLS["n"] == 6


def test_stale_cell_is_recomputed(tmp_path):
    key = CellKey("test_counting", "embedded-light")
    run_cell(key, _ctx(tmp_path))
    # another seed changes the synthetic rain, hence the dataset fingerprint
    from dataclasses import replace
    ctx = Context(profile=replace(get_profile("smoke"), seed=5), data_root=None, store=Store(tmp_path),
                  progress=False)
    CALLS["n"] = 0
    run_cell(key, ctx)
    assert CALLS["n"] == 3 and ctx.stats["computed"] == 1


def test_same_seed_same_numbers(tmp_path):
    a = run_cell(CellKey("identity", "embedded-heavy"), _ctx(tmp_path / "a"))
    b = run_cell(CellKey("identity", "embedded-heavy"), _ctx(tmp_path / "b"))
    assert a["metrics"] == b["metrics"] and a["fingerprint"] == b["fingerprint"]


def test_failed_cell_is_recorded_and_retried(tmp_path):
    ctx = _ctx(tmp_path)
    cell = run_cell(CellKey("test_broken", "embedded-light"), ctx)
    assert cell["status"] == "failed" and "planted failure" in cell["error"]
    assert Store(tmp_path).load(CellKey("test_broken", "embedded-light"))["status"] == "failed"
    ok = run_cell(CellKey("identity", "embedded-light"), ctx)  # the run goes on
    assert ok["status"] == "ok" and ctx.stats["failed"] == 1


def test_missing_dataset_is_skipped(tmp_path):
    ctx = _ctx(tmp_path)
    cell = run_cell(CellKey("identity", "Rain100L"), ctx)
    assert cell["status"] == "skipped" and "RESGUIDE_DATA" in cell["error"] and ctx.stats["skipped"] == 1
    # nothing is written: a machine without the data leaves the results as they were
    assert not list(Path(tmp_path).glob("*.json"))


def test_bad_dataset_fails_naming_the_file(tmp_path):
    root = tmp_path / "pairs"
    (root / "rainy").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "norain-1.png")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "rainy" / "rain-1.png")
    cell = run_cell(CellKey("identity", str(root)), _ctx(tmp_path / "cells"))
    assert cell["status"] == "failed" and "rain-1.png" in cell["error"]


def test_unknown_method_fails_cleanly(tmp_path):
    cell = run_cell(CellKey("no_such_method", "embedded-light"), _ctx(tmp_path))
    assert cell["status"] == "failed" and "registered" in cell["error"]


ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
RESUME_SCRIPT = textwrap.dedent("""
    import sys, time
    from torch import nn
    from models.registry import register
    from benchmark import artifacts, tables
    from benchmark.run import main

    class Slow(nn.Module):
        def forward(self, x):
            time.sleep(float(sys.argv[2]))
            return x

    register("test_slow")(lambda w, p, d: (Slow(), {"tag": "none"}))
    artifacts.ARTIFACTS["resume"] = artifacts.table_artifact(tables.TableSpec(
        id="resume", title="resume test", rows=("embedded-light", "embedded-heavy"),
        columns=(tables.Column("test_slow", "Slow"),)))
    sys.exit(main(["table", "resume", "--profile", "smoke", "--results", sys.argv[1], "--no-progress",
                   "--executor", "serial"]))
""")


def test_killed_run_resumes_without_redoing_finished_cells(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    results = tmp_path / "results"
    first = results / "cells" / "smoke" / "test_slow@default__embedded-light.json"
    second = results / "cells" / "smoke" / "test_slow@default__embedded-heavy.json"
    proc = subprocess.Popen([sys.executable, str(script), str(results), "1.0"], cwd=str(tmp_path.parent),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=ENV)
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not second.exists()
    assert json.loads(first.read_text())["status"] == "ok"
    before = first.stat().st_mtime_ns
    out = subprocess.run([sys.executable, str(script), str(results), "0"], capture_output=True, text=True,
                         env=ENV)
    assert out.returncode == 0, out.stderr
    assert "1 computed, 1 reused" in out.stdout
    assert first.stat().st_mtime_ns == before and second.exists()
    assert not list((results / "cells" / "smoke").glob("*.tmp"))


def test_misspelt_dataset_fails_instead_of_skipping(tmp_path):
    cell = run_cell(CellKey("identity", "Rain100X"), _ctx(tmp_path))
    assert cell["status"] == "failed" and "Rain100X" in cell["error"]


def test_real_data_cell_is_kept_when_the_data_is_absent(tmp_path):
    root = tmp_path / "data" / "Rain100L"
    (root / "rainy").mkdir(parents=True)
    for i in (1, 2):
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(root / f"norain-{i:03d}.png")
        Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(root / "rainy" / f"rain-{i:03d}.png")
    key = CellKey("identity", "Rain100L")
    first = run_cell(key, _ctx(tmp_path / "cells", data_root=tmp_path / "data"))
    assert first["status"] == "ok" and first["n_images"] == 2
    ctx = _ctx(tmp_path / "cells")  # no data root now
    again = run_cell(key, ctx)
    assert again == first and ctx.stats["kept"] == 1
    assert Store(tmp_path / "cells").load(key)["status"] == "ok"
