"""A machine without the data root, and the faults a new user runs into: every input that is
absent keeps what was stored, and every bad input gets one clear message."""
import json
import os
import stat
from fractions import Fraction

import pytest
from torch import nn

from core.store import CellKey, Context, Store
from benchmark.cells import run_cell
from core.profiles import get_profile
from benchmark.run import main
from core.files import atomic_write_text, read_torch_file
from models.registry import REGISTRY, register
from core.errors import WeightsUnavailable

if "test_no_weights" not in REGISTRY:
    def _absent(w, p, d):
        if w.kind == "init":
            return nn.Identity(), {"tag": "init"}
        raise WeightsUnavailable("test_no_weights: its weights live under a data root that is absent here")

    register("test_no_weights")(_absent)


def _ctx(root, data_root=None):
    return Context(profile=get_profile("smoke"), data_root=data_root, store=Store(root), progress=False)


def test_shipped_gmm_prior_is_used_whatever_the_data_root(tmp_path, monkeypatch):
    """The gate's GMM cells do not depend on the data root: the shipped prior is used without one."""
    from models import gmm, provider

    monkeypatch.setattr(provider, "CACHE_DIR", tmp_path / "cache")
    _, without = gmm.background_prior("smoke", None)
    _, with_root = gmm.background_prior("smoke", tmp_path / "some-data-root")
    shipped = provider.WEIGHTS_DIR / "gmm-background-smoke.npz"
    assert without["sha256"] == with_root["sha256"] == gmm.file_identity(shipped)["sha256"]
    assert not (tmp_path / "cache").exists()  # nothing was fitted


@pytest.mark.parametrize("stored_status", ["ok", "skipped", "failed"])
def test_cell_whose_weights_are_absent_is_kept_as_it_is(tmp_path, stored_status):
    key = CellKey("test_no_weights", "embedded-light")
    store = Store(tmp_path)
    stored = {"id": key.id, "status": stored_status, "metrics": {"psnr_y": 30.0}, "skip_reason": "data"}
    path = store.save(stored)
    before = path.read_bytes()
    ctx = _ctx(tmp_path)
    assert run_cell(key, ctx) == stored
    assert path.read_bytes() == before and ctx.stats["kept"] == 1


def test_cell_without_weights_and_without_a_stored_cell_is_skipped(tmp_path):
    cell = run_cell(CellKey("test_no_weights", "embedded-light"), _ctx(tmp_path))
    assert cell["status"] == "skipped" and cell["skip_reason"] == "weights"


def test_detection_cell_without_its_detector_keeps_the_stored_cell(tmp_path, no_weights):
    from benchmark.detection import detect_cell

    results = tmp_path / "results"
    first = detect_cell("none", "roads", "heavy", profile="smoke", results=results)
    assert first["status"] == "skipped"
    store = Store(results / "cells" / "smoke" / "detection")
    path = store.save({**first, "status": "ok", "metrics": {"ap40_moderate": 0.5}})
    before = path.read_bytes()
    again = detect_cell("none", "roads", "heavy", profile="smoke", results=results)
    assert again["status"] == "ok" and path.read_bytes() == before


def test_figure_drawn_on_absent_data_is_kept(tmp_path, monkeypatch, capsys):
    from benchmark import artifacts
    from benchmark.figures import absent_data

    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "fig4.csv").write_text("series,x,method,dataset,status,value\nlight rain,1,resguidenet_1,Rain100L,ok,0.8\n")
    (figs / "fig10.json").write_text(json.dumps({"caption": "profile quick; data: Rain100L; weights: x"}))
    (figs / "fig5.json").write_text(json.dumps({"caption": "profile quick; data: embedded-heavy; weights: x"}))
    assert absent_data("fig4", None, figs) == ["Rain100L"]
    assert absent_data("fig10", None, figs) == ["Rain100L"]
    assert absent_data("fig5", None, figs) == [] and absent_data("fig6", None, figs) == []
    (figs / "fig12.json").write_text(json.dumps({"caption": "profile quick; data: KITTI (training frame 000006); x"}))
    assert absent_data("fig12", None, figs) == ["KITTI"]
    monkeypatch.setattr(artifacts, "run_cells", lambda keys, ctx: keys and pytest.fail("a kept figure's cells were computed"))
    before = (figs / "fig4.csv").read_bytes()
    assert main(["figure", "fig4", "--results", str(tmp_path), "--no-progress"]) == 0
    assert (figs / "fig4.csv").read_bytes() == before and not (figs / "fig4.png").exists()
    assert "kept figure fig4: drawn on Rain100L" in capsys.readouterr().out


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    from benchmark import artifacts

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "run", interrupted)
    assert main(["table", "table2", "--force", "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run the same command again to resume" in err


def test_unknown_rain_lists_the_rains(capsys):
    assert main(["train", "resguidenet", "--rain", "drizzle", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown rain 'drizzle'" in err and "light, heavy, ddn" in err


@pytest.mark.parametrize("tile", ["0", "-4", "8", "x"])
def test_tile_below_16_is_refused(tile, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["score", "identity", "embedded-light", "--tile", tile])
    assert exc.value.code == 2 and "--tile" in capsys.readouterr().err


def test_unknown_table_lists_every_table_id(capsys):
    assert main(["table", "table9", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown table 'table9'" in err and "table4" in err and ", ap" in err


def test_bad_user_detection_file_writes_no_result_cell_and_one_error(tmp_path, capsys, no_weights):
    bad = tmp_path / "labels.json"
    bad.write_text("{not json")
    results = tmp_path / "results"
    assert main(["detect", "none", str(bad), "--rain", "none", "--profile", "smoke", "--results", str(results),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("labels.json") >= 1 and err.count("error:") == 1
    assert not (results / "cells").exists()  # a one-off file goes to the cache, not the committed cells
    assert list((results / "cache").rglob("*.json"))


@pytest.mark.parametrize("content", [b"", b"garbage" * 20, "truncated"])
def test_corrupt_checkpoint_is_named_not_a_checkpoint(tmp_path, content, capsys):
    import torch

    path = tmp_path / "weights.pt"
    if content == "truncated":
        torch.save({"w": torch.zeros(100)}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="not a") as exc:
        read_torch_file(path)
    assert str(path) in str(exc.value) and "weights_only" not in str(exc.value)
    assert main(["score", "resguidenet", "embedded-light", "--weights", str(path), "--profile", "smoke",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "weights_only" not in err


def test_pickled_objects_are_refused_without_advice_to_run_them(tmp_path):
    import torch

    path = tmp_path / "foreign.pt"
    torch.save({"config": Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="could run code") as exc:
        read_torch_file(path)
    assert "weights_only=False" not in str(exc.value)


def test_unwritable_results_fail_before_any_work(tmp_path, monkeypatch, capsys):
    from benchmark import artifacts

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(artifacts, "run_cells", lambda *a: pytest.fail("computed before the write check"))
    assert main(["table", "table2", "--profile", "smoke", "--results", str(blocker / "results"),
                 "--no-progress"]) == 2
    assert "cannot write results to" in capsys.readouterr().err


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "cell.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "cell.json").stat().st_mode) == 0o644


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_main_job_without_data_changes_no_committed_result(tmp_path, monkeypatch):
    """`all` on the embedded default, on a machine without the data root, against a copy of the
    committed results: every file comes back byte-identical and none is added."""
    import shutil

    from core.layout import RESULTS

    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy, ignore=shutil.ignore_patterns("weights", "cache"))
    before = _tree(copy)
    assert main(["all", "--results", str(copy), "--no-progress"]) == 0
    after = _tree(copy)
    assert sorted(set(after) - set(before)) == []
    assert [name for name in before if after.get(name) != before[name]] == []
