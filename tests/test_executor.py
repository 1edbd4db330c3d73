"""The executors (serial, local process pool, Ray): same cells as a serial run, a killed worker
costs only its shard, a killed run resumes, and two runs never share a results folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import slow_method
from benchmark.cells import run_cells
from benchmark.executor import LocalExecutor, ResultsLock, SerialExecutor, make_executor
from benchmark.run import main
from benchmark.shards import method_module, shard_ranges
from core.profiles import get_profile
from core.store import CellKey, Context, Store
from datasets.catalog import image_range, open_dataset
from models.registry import REGISTRY, MethodSpec

REPO = Path(__file__).resolve().parent.parent
COMPARED = ("status", "metrics", "per_image", "fingerprint")


def stored(folder: Path) -> dict[str, dict]:
    """id -> the compared fields of every cell under ``folder`` (each file must parse)."""
    out = {}
    for p in sorted(Path(folder).rglob("*.json")):
        cell = json.loads(p.read_text(encoding="utf-8"))
        out[cell["id"]] = {k: cell.get(k) for k in COMPARED}
    return out


def table(results: Path, executor: str, *extra: str) -> int:
    return main(["table", "table1", "--profile", "smoke", "--results", str(results), "--no-progress",
                 "--executor", executor, "--threads", "1", *extra])


@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)


@pytest.fixture(scope="module")
def serial_table(tmp_path_factory):
    results = tmp_path_factory.mktemp("serial")
    env = os.environ.pop("RESGUIDE_DATA", None)
    try:
        assert table(results, "serial") == 0
    finally:
        if env is not None:
            os.environ["RESGUIDE_DATA"] = env
    cells = stored(results / "cells")
    assert len(cells) == 4 and all(c["status"] == "ok" for c in cells.values())
    return cells


@pytest.fixture
def slow(monkeypatch, tmp_path):
    """The slow test method, registered here and in every worker (which imports its module)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("RESGUIDE_TEST_PIDS", str(pids))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    slow_method.ensure_registered()
    yield pids
    REGISTRY.pop(slow_method.NAME, None)


def test_shard_ranges_cover_the_images_in_order():
    assert shard_ranges(10, 2) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert shard_ranges(3, 2, size=2) == [(0, 2), (2, 3)]
    assert shard_ranges(0, 4) == []
    for n, w in ((1, 8), (7, 1), (100, 2)):
        ranges = shard_ranges(n, w)
        assert [i for a, b in ranges for i in range(a, b)] == list(range(n))


def test_image_ranges_join_to_the_whole_set():
    whole = open_dataset("embedded-heavy", None, size=48, seed=3)
    full = list(whole)
    assert len(whole) >= 3
    parts = [x for a, b in shard_ranges(len(whole), 2, size=2) for x in image_range(whole, a, b)]
    assert [p[0] for p in parts] == [f[0] for f in full]
    for (_, r1, c1), (_, r2, c2) in zip(parts, full):
        assert np.array_equal(r1, r2) and np.array_equal(c1, c2)
    fresh = open_dataset("embedded-heavy", None, size=48, seed=3)  # a range of a set never iterated
    assert np.array_equal(list(image_range(fresh, 1, 3))[0][1], full[1][1])
    with pytest.raises(ValueError, match="outside"):
        image_range(whole, 0, len(whole) + 1)


def test_local_table_equals_serial(tmp_path, no_data, serial_table):
    assert table(tmp_path, "local", "--workers", "2", "--shard-size", "1") == 0
    assert stored(tmp_path / "cells") == serial_table
    one = json.loads(next((tmp_path / "cells").rglob("resguidenet@*.json")).read_text())
    assert one["shards"]["executor"] == "local" and one["shards"]["n"] >= 2


def test_ray_table_equals_serial(tmp_path, no_data, serial_table):
    pytest.importorskip("ray")
    assert table(tmp_path, "ray", "--workers", "2", "--shard-size", "1") == 0
    assert stored(tmp_path / "cells") == serial_table


def _kill_first_worker(pids: Path, killed: list, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        seen = [int(p.name) for p in pids.iterdir() if int(p.name) != os.getpid()]
        if seen:
            os.kill(seen[0], signal.SIGKILL)
            killed.append(seen[0])
            return
        time.sleep(0.05)


def _slow_cell(tmp_path: Path, executor) -> tuple[dict, Store]:
    store = Store(tmp_path / "cells")
    ctx = Context(profile=get_profile("smoke"), data_root=None, store=store, progress=False, executor=executor,
                  shard_size=1)
    return run_cells([CellKey(slow_method.NAME, "embedded-light")], ctx)[0], store


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_a_killed_worker_loses_only_its_shard(tmp_path, slow, kind):
    if kind == "ray":
        pytest.importorskip("ray")
    reference, _ = _slow_cell(tmp_path / "serial", SerialExecutor(1))
    for p in slow.iterdir():
        p.unlink()
    ex = make_executor(kind, workers=2, threads=1)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_worker, args=(slow, killed))
    killer.start()
    try:
        cell, store = _slow_cell(tmp_path / kind, ex)
    finally:
        killer.join()
        ex.close()
    assert killed, "no worker was seen running a shard"
    assert cell["status"] == "ok", cell.get("error")
    assert {k: cell[k] for k in COMPARED} == {k: reference[k] for k in COMPARED}
    assert store.load(CellKey(slow_method.NAME, "embedded-light"))["per_image"] == reference["per_image"]
    if kind == "local":
        assert ex.restarts >= 1


def _die_once(marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def test_local_pool_retries_a_task_whose_worker_died(tmp_path):
    ex = LocalExecutor(workers=1, threads=1)
    try:
        assert ex.submit(_die_once, str(tmp_path / "died")).result(timeout=120) > 0
        assert ex.restarts == 1
    finally:
        ex.close()


def test_a_killed_run_leaves_whole_cells_and_a_rerun_completes_it(tmp_path, serial_table):
    env = {k: v for k, v in os.environ.items() if k != "RESGUIDE_DATA"}
    cmd = [sys.executable, "-m", "benchmark.run", "table", "table1", "--profile", "smoke", "--results",
           str(tmp_path), "--no-progress", "--executor", "local", "--workers", "2", "--threads", "1",
           "--shard-size", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    end = time.time() + 300
    while time.time() < end and proc.poll() is None and not list((tmp_path / "cells").rglob("*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers
    proc.wait()
    partial = stored(tmp_path / "cells")  # every file that is there parses
    assert len(partial) < len(serial_table) or proc.returncode == 0
    assert not list(tmp_path.rglob("*.tmp"))
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert stored(tmp_path / "cells") == serial_table


def test_a_second_run_on_the_same_results_is_refused(tmp_path, no_data, capsys):
    with ResultsLock(tmp_path):
        assert table(tmp_path, "serial") == 2
    assert "another run is writing to" in capsys.readouterr().err
    assert not (tmp_path / "cells").exists()


def test_a_method_registered_in_main_runs_in_the_driver(tmp_path, monkeypatch):
    """A user's script registers its method in __main__, which no worker can import: its cell
    is computed in the driver, with the serial numbers."""
    def factory(weights, profile, data_root):
        return slow_method.build(weights, profile, data_root)
    factory.__module__ = "__main__"
    monkeypatch.setitem(REGISTRY, "main_only", MethodSpec("main_only", factory, "x", "1"))
    monkeypatch.setenv("RESGUIDE_TEST_DELAY", "0")
    assert method_module("main_only") is None
    ex = LocalExecutor(workers=1, threads=1)
    try:
        ctx = Context(profile=get_profile("smoke"), data_root=None, store=Store(tmp_path), progress=False,
                      executor=ex)
        cell = run_cells([CellKey("main_only", "embedded-light")], ctx)[0]
    finally:
        ex.close()
    assert cell["status"] == "ok" and "shards" not in cell and cell["metrics"]["psnr_y"] > 0
