"""The detection study (detectors.study): cells, the CLI hook, rain and the AP table.

A tiny *untrained* detector (64x192 resize limits) stands in for a trained one: the
numbers are meaningless (AP ~ 0), the plumbing is what is checked.  Nothing is
written into the repository's results/ (``--results`` / ``results=`` a temp folder,
the detector weight folders pointed at temp folders).
"""
import json

import numpy as np
import pytest

from benchmark.run import main
from detectors import study

CONTRACT = ("ap11_moderate", "ap40_moderate", "coco_ap", "coco_ap50", "n_images", "n_objects",
            "ap40_moderate_ci", "coco_ap50_ci")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, one_thread):
    import torch

    from detectors.torchvision_det import build_detector

    torch.manual_seed(0)
    det = build_detector(min_size=64, max_size=192)
    path = tmp_path_factory.mktemp("det") / "tiny.pt"
    det.save(path, {"min_size": 64, "max_size": 192})
    return path


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No shipped or cached detector: both folders point at empty temp folders."""
    from models import provider

    monkeypatch.setattr(provider, "WEIGHTS_DIR", tmp_path / "shipped")
    monkeypatch.setattr(provider, "CACHE_DIR", tmp_path / "cache" / "weights")
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_detect_cli_contract_then_reuse(tmp_path, tiny_ckpt, capsys, one_thread):
    args = ["detect", "none", "roads", "--rain", "heavy", "--profile", "smoke", "--detector-weights",
            str(tiny_ckpt), "--results", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    line = _last_json(capsys)
    for key in CONTRACT:
        assert key in line, key
    assert line["status"] == "ok" and line["n_images"] == 6 and line["n_objects"] > 0
    assert 0 <= line["ap40_moderate"] <= 1 and len(line["coco_ap50_ci"]) == 2
    path = tmp_path / "cells" / "smoke" / "detection" / f"{line['id']}.json"
    assert line["id"] == "det__fasterrcnn_mobilenet_v3_large_fpn__none__roads__heavy" and path.is_file()
    cell = json.loads(path.read_text())
    assert cell["detector_size"] == [64, 192] and len(cell["per_image"]) == 6
    assert set(cell["seconds"]) == {"derain", "detect"}

    stats = {}
    again = study.detect_cell("none", "roads", "heavy", profile="smoke", detector_weights=tiny_ckpt,
                              results=tmp_path, stats=stats)
    assert stats["reused"] == 1 and stats["computed"] == 0
    assert again["created"] == cell["created"] and again["metrics"] == cell["metrics"]


def test_missing_detector_is_a_skipped_cell_naming_the_train_command(tmp_path, no_weights, capsys):
    cell = study.detect_cell("none", "roads", "light", profile="smoke", results=tmp_path)
    assert cell["status"] == "skipped" and cell["skip_reason"] == "detector"
    assert "python -m benchmark.run train-detector --detector fasterrcnn_mobilenet_v3_large_fpn --profile smoke" \
        in cell["error"]
    assert main(["detect", "none", "roads", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]) == 2
    assert "train-detector" in capsys.readouterr().err


def test_missing_kitti_is_skipped_for_data(tmp_path, tiny_ckpt):
    cell = study.detect_cell("none", "KITTI", "light", profile="smoke", detector_weights=tiny_ckpt,
                             data_root=tmp_path, results=tmp_path / "results")
    assert cell["status"] == "skipped" and cell["skip_reason"] == "data"
    assert str(tmp_path / "KITTI" / "training") in cell["error"]


def test_rainy_is_deterministic_and_none_is_identity():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 120, 3), dtype=np.uint8) for _ in range(3)]
    assert study.rainy(images, "none", 0) == images
    assert all(a is b for a, b in zip(study.rainy(images, "none", 0), images))
    a = study.rainy(images, "heavy", 5, ids=["x", "y", "z"])
    b = study.rainy(images, "heavy", 5, ids=["x", "y", "z"])
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], images[0]) and a[0].dtype == np.uint8
    # an image's rain follows its id, not its position
    c = study.rainy(images[1:2], "heavy", 5, ids=["y"])
    assert np.array_equal(c[0], a[1])
    assert not np.array_equal(study.rainy(images, "heavy", 6, ids=["x", "y", "z"])[0], a[0])
    with pytest.raises(ValueError):
        study.rainy(images, "drizzle", 0)


def test_ap_table_rows(tmp_path, tiny_ckpt, monkeypatch, one_thread):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    paths = study.ap_table("smoke", None, detector_weights=tiny_ckpt, results=tmp_path, datasets=("roads",),
                           rains=("light",), derainers=(("identity", None), ("prenet", "official")))
    assert sorted(p.name for p in paths) == ["ap.csv", "ap.md", "ap.tex"]
    assert all(p.parent == tmp_path / "tables" / "smoke" for p in paths)
    md = (tmp_path / "tables" / "smoke" / "ap.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Frames" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| clean (no rain)", "| rainy", "| rainy + Rainy images"]
    assert "Note: detector fasterrcnn_mobilenet_v3_large_fpn" in md and "tiny.pt" in md
    assert "not beyond the bootstrap noise" in md  # identity "derains" to exactly the rainy input
    assert "Not shown: prenet (skipped" in md
    csv = (tmp_path / "tables" / "smoke" / "ap.csv").read_text().splitlines()
    assert len(csv) == 4 and csv[0].startswith("dataset,rain,row,method")
    assert r"\begin{tabular}" in (tmp_path / "tables" / "smoke" / "ap.tex").read_text()


def test_table_ap_cli_without_detector(tmp_path, no_weights, capsys):
    assert main(["table", "ap", "--profile", "smoke", "--results", str(tmp_path), "--no-progress",
                 "--dry-run"]) == 0
    assert "det__fasterrcnn_mobilenet_v3_large_fpn__none__roads__light: missing" in capsys.readouterr().out
    assert main(["table", "ap", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]) == 0
    md = (tmp_path / "tables" / "smoke" / "ap.md").read_text()
    assert "## roads, light rain" in md and "Not computed" in md and "train-detector" in md
    assert "## KITTI, heavy rain" in md and "RESGUIDE_DATA" in md
