"""The detection study (benchmark.detection, benchmark.ap_table): cells, the CLI hook, rain and the AP table.

A tiny *untrained* detector (64x192 resize limits) stands in for a trained one: the
numbers are meaningless (AP ~ 0), the plumbing is what is checked.  Nothing is
written into the repository's results/ (``--results`` / ``results=`` a temp folder,
the detector weight folders pointed at temp folders).
"""
import json

import numpy as np
import pytest

from benchmark.run import main
from benchmark.ap_table import ap_table
from benchmark.detection import _ap40m, ap_cells, cell_detections, detect_cell
from datasets.detection import rainy
from detectors.zoo import train_detector_cmd

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
    assert line["status"] == "ok" and line["n_images"] == 12 and line["n_objects"] > 0
    assert 0 <= line["ap40_moderate"] <= 1 and len(line["coco_ap50_ci"]) == 2
    path = tmp_path / "cells" / "smoke" / "detection" / f"{line['id']}.json"
    assert line["id"] == "det__fasterrcnn_tiny_fpn__none__roads__heavy" and path.is_file()
    cell = json.loads(path.read_text())
    assert cell["detector_size"] == [64, 192] and len(cell["per_image"]) == 12
    assert set(cell["seconds"]) == {"derain", "detect"}

    stats = {}
    again = detect_cell("none", "roads", "heavy", profile="smoke", detector_weights=tiny_ckpt,
                              results=tmp_path, stats=stats)
    assert stats["reused"] == 1 and stats["computed"] == 0
    assert again["created"] == cell["created"] and again["metrics"] == cell["metrics"]


def test_missing_detector_is_a_skipped_cell_naming_the_train_command(tmp_path, no_weights, capsys):
    cell = detect_cell("none", "roads", "light", profile="smoke", results=tmp_path)
    assert cell["status"] == "skipped" and cell["skip_reason"] == "detector"
    assert "python -m benchmark.run train-detector --detector fasterrcnn_tiny_fpn --profile quick" \
        in cell["error"]
    assert main(["detect", "none", "roads", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]) == 2
    assert "train-detector" in capsys.readouterr().err


def test_missing_kitti_is_skipped_for_data(tmp_path, tiny_ckpt):
    cell = detect_cell("none", "KITTI", "light", profile="smoke", detector_weights=tiny_ckpt,
                             data_root=tmp_path, results=tmp_path / "results")
    assert cell["status"] == "skipped" and cell["skip_reason"] == "data"
    assert str(tmp_path / "KITTI" / "training") in cell["error"]


def test_rainy_is_deterministic_and_none_is_identity():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 120, 3), dtype=np.uint8) for _ in range(3)]
    assert rainy(images, "none", 0) == images
    assert all(a is b for a, b in zip(rainy(images, "none", 0), images))
    a = rainy(images, "heavy", 5, ids=["x", "y", "z"])
    b = rainy(images, "heavy", 5, ids=["x", "y", "z"])
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], images[0]) and a[0].dtype == np.uint8
    # an image's rain follows its id, not its position
    c = rainy(images[1:2], "heavy", 5, ids=["y"])
    assert np.array_equal(c[0], a[1])
    assert not np.array_equal(rainy(images, "heavy", 6, ids=["x", "y", "z"])[0], a[0])
    with pytest.raises(ValueError):
        rainy(images, "drizzle", 0)


def test_ap_table_rows(tmp_path, tiny_ckpt, monkeypatch, one_thread):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    paths = ap_table("smoke", None, detector_weights=tiny_ckpt, results=tmp_path, datasets=("roads",),
                           rains=("light",), derainers=(("identity", None), ("prenet", "official")))
    assert sorted(p.name for p in paths) == ["ap.csv", "ap.md", "ap.tex", "ap_runtime.png"]
    assert all(p.parent == tmp_path / "tables" / "smoke" for p in paths if p.suffix != ".png")
    assert (tmp_path / "figures" / "smoke" / "ap_runtime.png").is_file()
    fig = (tmp_path / "figures" / "smoke" / "ap_runtime.csv").read_text().splitlines()
    assert len(fig) == 4 and fig[0].startswith("dataset,rain,detector,row,method,ap40_moderate")
    md = (tmp_path / "tables" / "smoke" / "ap.md").read_text()
    assert "Deraining time" not in md  # "identity" derains nothing: no time to show
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Frames" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| clean (no rain)", "| rainy", "| rainy + Rainy images"]
    assert "Note: detector fasterrcnn_tiny_fpn" in md and "tiny.pt" in md
    assert "not beyond the bootstrap noise" in md  # identity "derains" to exactly the rainy input
    assert "Not shown: prenet (skipped" in md
    csv = (tmp_path / "tables" / "smoke" / "ap.csv").read_text().splitlines()
    assert len(csv) == 4 and csv[0].startswith("dataset,rain,row,method")
    assert r"\begin{tabular}" in (tmp_path / "tables" / "smoke" / "ap.tex").read_text()

    # re-rendering from the stored cells computes nothing and writes the same table; the gains'
    # paired intervals come from the cache beside the cells
    gains = json.loads((tmp_path / "cells" / "smoke" / "detection" / "gains.json").read_text())
    assert len(gains) == 2 and all(len(v) == 2 for v in gains.values())  # the gain's and the rain's loss
    before = md
    assert ap_cells("smoke", None, results=tmp_path, datasets=("roads",), rains=("light",),
                          derainers=(("identity", None),), compute=False)[0][3][0]["status"] == "ok"
    ap_table("smoke", None, results=tmp_path, datasets=("roads",), rains=("light",),
                   derainers=(("identity", None), ("prenet", "official")), compute=False)
    assert (tmp_path / "tables" / "smoke" / "ap.md").read_text() == before
    missing = ap_cells("smoke", None, results=tmp_path, datasets=("roads",), rains=("heavy",),
                             derainers=(), compute=False)[0][3]
    assert [c["status"] for c in missing] == ["ok", "missing"]  # the clean cell is shared by both rains
    assert "table ap" in missing[1]["error"] and missing[1]["status"] == "missing"


def test_table_ap_cli_without_detector(tmp_path, no_weights, capsys):
    assert main(["table", "ap", "--profile", "smoke", "--results", str(tmp_path), "--no-progress",
                 "--dry-run"]) == 0
    assert "det__fasterrcnn_tiny_fpn__none__roads__light: missing" in capsys.readouterr().out
    assert main(["table", "ap", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped det__fasterrcnn_tiny_fpn__none__roads__light: no trained" in out and "train-detector" in out
    assert "RESGUIDE_DATA" in out  # the KITTI cells: no data root
    md = (tmp_path / "tables" / "smoke" / "ap.md").read_text()
    assert "**roads, light rain, detector fasterrcnn_tiny_fpn**" in md and "Not computed" in md and "train-detector" in md
    assert "**KITTI, heavy-real rain, detector fasterrcnn_kitti**" in md and "Not computed: no stored cell" in md  # no data: nothing written
    assert not [p for p in (tmp_path / "cells" / "smoke" / "detection").glob("*KITTI*")]


def _coco_folder(tmp_path, boxes):
    from PIL import Image

    (tmp_path / "images").mkdir(parents=True)
    images, anns = [], []
    for k in range(2):
        Image.new("RGB", (120, 40), (90, 90, 90)).save(tmp_path / "images" / f"f{k}.png")
        images.append({"id": k + 1, "file_name": f"f{k}.png", "width": 120, "height": 40})
    for n, (image_id, cat, box, crowd) in enumerate(boxes):
        anns.append({"id": n + 1, "image_id": image_id, "category_id": cat, "bbox": box, "iscrowd": crowd,
                     "area": 1.0})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 3, "name": "car"}, {"id": 8, "name": "truck"}, {"id": 9, "name": "van"}]}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_json_labels_and_detect(tmp_path, tiny_ckpt, capsys, one_thread):
    from datasets.detection import read_coco_labels

    path = _coco_folder(tmp_path / "real", [(1, 3, [10, 5, 30, 28], 0), (1, 8, [50, 5, 20, 20], 0),
                                            (2, 9, [0, 0, 10, 10], 0), (2, 3, [60, 0, 40, 40], 1)])
    ids, paths, labels = read_coco_labels(path)
    assert ids == ["f0", "f1"] and paths[0] == tmp_path / "real" / "images" / "f0.png"
    assert [o.type for o in labels[0]] == ["Car", "Truck"] and labels[0][0].bbox == (10.0, 5.0, 40.0, 33.0)
    assert [o.type for o in labels[1]] == ["Van", "DontCare"]
    assert main(["detect", "none", str(path), "--rain", "none", "--profile", "smoke", "--detector-weights",
                 str(tiny_ckpt), "--results", str(tmp_path / "results"), "--no-progress"]) == 0
    line = _last_json(capsys)
    assert line["status"] == "ok" and line["n_images"] == 2 and line["n_objects"] == 1


def test_coco_json_errors_name_the_file_and_entry(tmp_path):
    from datasets.detection import read_coco_labels

    bad = _coco_folder(tmp_path / "a", [(1, 3, [10, 5, -3, 28], 0)])
    with pytest.raises(ValueError, match=r"labels\.json: annotation 1 of image 1: bbox"):
        read_coco_labels(bad)
    gone = _coco_folder(tmp_path / "b", [])
    (tmp_path / "b" / "images" / "f1.png").unlink()
    with pytest.raises(ValueError, match=r"labels\.json: image 2 file f1\.png not found"):
        read_coco_labels(gone)
    with pytest.raises(ValueError, match="do not exist"):
        read_coco_labels(tmp_path / "nope.json")


def test_fine_tune_on_a_kitti_folder_from_a_foreign_checkpoint(tmp_path, one_thread):
    import torch
    from PIL import Image

    from datasets.roads import road_scenes
    from datasets.kitti import write_labels
    from detectors.torchvision_det import build_detector

    folder = tmp_path / "clean_train"
    (folder / "image_2").mkdir(parents=True)
    (folder / "label_2").mkdir()
    for k, (_, image, objects) in enumerate(road_scenes("train", 3, size=(64, 192), seed=1)):
        Image.fromarray(image).save(folder / "image_2" / f"{k:06d}.png")
        write_labels(folder / "label_2" / f"{k:06d}.txt", objects)
    torch.manual_seed(0)
    foreign = tmp_path / "coco_like.pth"  # 3 classes: its box predictor cannot fit ours
    torch.save(build_detector(num_classes=3, min_size=64, max_size=192).model.state_dict(), foreign)
    out = tmp_path / "ft.pt"
    res = train_detector_cmd(profile="smoke", train_data=folder, init=foreign, min_size=64, max_size=192,
                                   iterations=2, out_path=out, progress=False)
    assert res["complete"] and res["weights"] == str(out) and out.is_file()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["training_data"]["n"] == 3 and record["min_size"] == 64 and record["iterations"] == 2
    assert "roi_heads.box_predictor.cls_score.weight" in record["init"]["left_at_init"]
    assert record["init"]["loaded"] > 50
    det = build_detector(checkpoint=out, min_size=64, max_size=192)  # frozen batch norms load back
    trained = torch.load(out, weights_only=True)["state_dict"]
    assert torch.equal(det.model.state_dict()["backbone.c3.0.weight"], trained["backbone.c3.0.weight"])
    # the frozen batch norms kept the init's statistics
    init_state = torch.load(foreign, weights_only=True)
    assert torch.equal(trained["backbone.c3.1.running_mean"], init_state["backbone.c3.1.running_mean"])
    with pytest.raises(ValueError, match="image_2"):
        train_detector_cmd(profile="smoke", train_data=tmp_path, iterations=1, progress=False)


@pytest.mark.parametrize("derained", ["resguidenet@results-weights-resguidenet-heavy-paper.ckpt",
                                      "resguidenet_3@heavy", "resguidenet@heavy"])
def test_committed_study_shows_the_papers_ordering(derained):
    """The committed quick cells, embedded road scenes, heavy rain: AP(clean) > AP(derained by
    ResGuideNet) > AP(rainy), the gain over rainy beyond the paired bootstrap noise."""
    from pathlib import Path

    from detectors.bootstrap import paired_bootstrap_ci

    root = Path(__file__).resolve().parent.parent / "results" / "cells" / "quick" / "detection"

    def load(name):
        return json.loads((root / f"det__fasterrcnn_tiny_fpn__{name}.json").read_text())

    clean, rainy, cell = load("none__roads__none"), load("none__roads__heavy"), load(f"{derained}__roads__heavy")
    assert all(c["status"] == "ok" and c["n_objects"] > 100 for c in (clean, rainy, cell))
    ap = [c["metrics"]["ap40_moderate"] for c in (clean, cell, rainy)]
    assert ap[0] > ap[1] > ap[2], ap
    gts, rainy_dets = cell_detections(rainy)
    _, dets = cell_detections(cell)
    lo, hi = paired_bootstrap_ci(_ap40m, gts, rainy_dets, dets, n=100, seed=0)
    assert lo > 0, (lo, hi)
