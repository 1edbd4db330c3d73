"""A folder of derained images from any derainer (benchmark.outputs): export-inputs, score-outputs,
detect-outputs, the file-name contract and its errors, and the outputs' own cells.

Everything runs on the embedded data (smoke profile); nothing is written into the repository's
results/ (``--results`` a temp folder)."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from benchmark.derained import save_frame
from benchmark.inference import Derainer
from benchmark.run import main
from core.metrics import to_uint8
from datasets.catalog import open_dataset
from datasets.training import read_rgb
from models import registry

SMOKE = ["--profile", "smoke", "--no-progress"]
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _export(dataset, folder, capsys, *extra):
    assert main(["export-inputs", dataset, str(folder), *SMOKE, *extra]) == 0
    return _last_json(capsys)


def _score(folder, dataset, results, capsys, *extra):
    assert main(["score-outputs", str(folder), dataset, "--results", str(results), *SMOKE, *extra]) == 0
    return _last_json(capsys)


@pytest.fixture
def exported(tmp_path, capsys):
    folder = tmp_path / "rainy"
    _export("embedded-light", folder, capsys)
    return folder


def test_exported_inputs_score_exactly_as_the_rainy_row(exported, tmp_path, capsys):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert [f["file"] for f in manifest["files"]] == ["astronaut.png", "china.png", "coffee.png"]
    for f in manifest["files"]:
        data = (exported / f["file"]).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["bytes"] == len(data)
        assert (f["width"], f["height"]) == (64, 64)
    assert manifest["rain"] == "light" and manifest["seed"] == 0 and manifest["profile"] == "smoke"
    assert manifest["suite_version"] and manifest["kind"] == "paired"

    line = _score(exported, "embedded-light", tmp_path / "results", capsys, "--name", "mine")
    assert main(["score", "identity", "embedded-light", *SMOKE]) == 0
    rainy = _last_json(capsys)
    assert {m: line[m] for m in METRICS} == {m: rainy[m] for m in METRICS}
    assert line["dataset_fingerprint"] == rainy["dataset_fingerprint"] == manifest["dataset_fingerprint"]
    assert line["method"] == line["name"] == "mine" and line["n_images"] == 3 and len(line["outputs_sha256"]) == 64
    assert list(line)[:8] == ["method", "name", "dataset", "n_images", *METRICS]


def test_a_registered_methods_outputs_score_as_score_does(tmp_path, capsys, one_thread):
    net, _ = registry.load("resguidenet_3", "heavy", "smoke")
    derainer = Derainer(net, "resguidenet_3")
    folder = tmp_path / "resguidenet_3"
    for name, rainy, _ in open_dataset("embedded-heavy", None, size=64, seed=0):
        save_frame(folder / f"{name}.png", to_uint8(derainer(rainy)))
    line = _score(folder, "embedded-heavy", tmp_path / "results", capsys)
    assert main(["score", "resguidenet_3", "embedded-heavy", "--weights", "heavy", *SMOKE]) == 0
    ref = _last_json(capsys)
    assert {m: line[m] for m in METRICS} == {m: ref[m] for m in METRICS}
    assert line["name"] == "resguidenet_3"  # the folder's name


def _drop(folder):
    (folder / "china.png").unlink()
    return "china.png"


def _extra(folder):
    (folder / "notes.txt").write_text("log")
    return "notes.txt"


def _wrong_case(folder):
    (folder / "china.png").rename(folder / "China.png")
    return "China.png"


def _wrong_size(folder):
    Image.new("RGB", (40, 64)).save(folder / "coffee.png")
    return "coffee.png: 40x64, but its input is 64x64"


def _unreadable(folder):
    data = (folder / "coffee.png").read_bytes()
    (folder / "coffee.png").write_bytes(data[:200])
    return "coffee.png"


def _doubled(folder):
    Image.open(folder / "china.png").save(folder / "china.jpg")
    return "china.jpg and china.png"


@pytest.mark.parametrize("spoil", [_drop, _extra, _wrong_case, _wrong_size, _unreadable, _doubled])
def test_a_bad_folder_exits_2_naming_the_file(exported, tmp_path, capsys, spoil):
    named = spoil(exported)
    assert main(["score-outputs", str(exported), "embedded-light", "--results", str(tmp_path / "r"), *SMOKE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "r").rglob("*.json"))  # no cell for a bad folder


def test_other_extensions_are_accepted_and_hashed(exported, tmp_path, capsys):
    before = _score(exported, "embedded-light", tmp_path / "r", capsys)
    img = Image.open(exported / "china.png")
    img.save(exported / "china.BMP")  # lossless: the same pixels under another name
    (exported / "china.png").unlink()
    after = _score(exported, "embedded-light", tmp_path / "r", capsys)
    assert {m: after[m] for m in METRICS} == {m: before[m] for m in METRICS}
    assert after["outputs_sha256"] != before["outputs_sha256"] and not after["reused"]


def test_limit_scores_the_first_images_of_a_whole_export(exported, tmp_path, capsys):
    line = _score(exported, "embedded-light", tmp_path / "r", capsys, "--limit", "2")
    assert main(["score", "identity", "embedded-light", "--limit", "2", *SMOKE]) == 0
    ref = _last_json(capsys)
    assert line["n_images"] == 2 and {m: line[m] for m in METRICS} == {m: ref[m] for m in METRICS}


def test_the_cell_is_reused_and_recomputed_when_a_file_changes(exported, tmp_path, capsys):
    results = tmp_path / "results"
    first = _score(exported, "embedded-light", results, capsys)
    cell_path = results / "cache" / "cells" / "smoke" / "outputs" / "outputs__score__rainy__embedded-light.json"
    assert first["cell"] == str(cell_path) and not first["reused"]
    assert sorted(p.name for p in results.rglob("*.json")) == [cell_path.name]  # nothing beside the suite's cells
    cell = json.loads(cell_path.read_text())
    assert cell["kind"] == "outputs" and cell["outputs_sha256"] == first["outputs_sha256"]
    again = _score(exported, "embedded-light", results, capsys)
    assert again["reused"] and json.loads(cell_path.read_text())["created"] == cell["created"]
    assert {m: again[m] for m in METRICS} == {m: first[m] for m in METRICS}

    img = np.asarray(Image.open(exported / "astronaut.png")).copy()
    img[:8] = 128
    save_frame(exported / "astronaut.png", img)
    changed = _score(exported, "embedded-light", results, capsys)
    assert not changed["reused"] and changed["outputs_sha256"] != first["outputs_sha256"]
    assert changed["psnr_y"] != first["psnr_y"]


def test_export_refuses_a_folder_holding_other_files(exported, capsys):
    _export("embedded-light", exported, capsys)  # the same export again: rewritten
    assert main(["export-inputs", "embedded-heavy", str(exported), *SMOKE]) == 2
    assert "holds no earlier export" in capsys.readouterr().err
    Image.new("RGB", (64, 64)).save(exported / "china.png")  # a derained output written in place
    assert main(["export-inputs", "embedded-light", str(exported), *SMOKE]) == 2
    assert "china.png" in capsys.readouterr().err


def test_rain_is_for_detection_sets_and_sets_are_not_mixed(tmp_path, capsys):
    assert main(["export-inputs", "embedded-light", str(tmp_path / "x"), "--rain", "light", *SMOKE]) == 2
    assert "--rain is for the detection sets" in capsys.readouterr().err
    assert main(["score-outputs", str(tmp_path), "roads", "--results", str(tmp_path), *SMOKE]) == 2
    assert "use detect-outputs" in capsys.readouterr().err
    assert main(["detect-outputs", str(tmp_path), "embedded-light", "--results", str(tmp_path), *SMOKE]) == 2
    assert "score-outputs" in capsys.readouterr().err


def test_detect_outputs_of_the_rainy_frames_give_the_rainy_cell_and_no_gain(tmp_path, capsys, one_thread):
    frames, results = tmp_path / "frames", tmp_path / "results"
    manifest = _export("roads", frames, capsys, "--rain", "light")
    assert manifest["kind"] == "detection" and manifest["n_images"] == 12 and manifest["rain"] == "light"
    args = ["detect-outputs", str(frames), "roads", "--rain", "light", "--results", str(results), *SMOKE]
    assert main(args) == 0
    line = _last_json(capsys)
    rainy = json.loads((results / "cells" / "smoke" / "detection" / f"{line['rainy_cell']}.json").read_text())
    assert line["rainy_cell"] == "det__fasterrcnn_tiny_fpn__none__roads__light"
    assert line["metrics"] == rainy["metrics"] and line["ci"] == rainy["ci"]
    assert line["gain"] == 0.0 and line["gain_ci"] == [0.0, 0.0] and line["gain_metric"] == "ap40_moderate"
    assert line["n_images"] == 12 and line["detector"] == "fasterrcnn_tiny_fpn" and not line["reused"]
    assert main(args) == 0
    assert _last_json(capsys)["reused"]

    (frames / "road-test-s0-00003.png").unlink()
    assert main(args) == 2
    assert "road-test-s0-00003.png" in capsys.readouterr().err


@pytest.mark.realdata
def test_rain100l_export_then_score_is_the_rainy_row(data_root, tmp_path, capsys):
    folder = tmp_path / "rain100l"
    manifest = _export("Rain100L", folder, capsys, "--data-root", str(data_root))
    assert manifest["n_images"] == 100 and (folder / "001.png").is_file()
    line = _score(folder, "Rain100L", tmp_path / "r", capsys, "--data-root", str(data_root), "--limit", "4")
    assert main(["score", "identity", "Rain100L", "--data-root", str(data_root), "--limit", "4", *SMOKE]) == 0
    ref = _last_json(capsys)
    assert {m: line[m] for m in METRICS} == {m: ref[m] for m in METRICS}


@pytest.mark.realdata
def test_dawn_exports_its_photographs_as_they_are(data_root, tmp_path, capsys):
    assert main(["export-inputs", "DAWN", str(tmp_path / "x"), "--rain", "light", "--data-root", str(data_root),
                 *SMOKE]) == 2
    assert "already rainy" in capsys.readouterr().err
    manifest = _export("DAWN", tmp_path / "dawn", capsys, "--data-root", str(data_root))
    assert manifest["rain"] == "none" and manifest["n_images"] == 8  # the smoke profile's first 8
    first = json.loads((tmp_path / "dawn" / "manifest.json").read_text())["files"][0]["image"]
    original = read_rgb(data_root / "DAWN" / "Rain" / f"{first}.jpg")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dawn" / f"{first}.png")), original)
    # the photographs handed back as they are: the rainy cell's car and vehicle AP, no gain
    args = ["detect-outputs", str(tmp_path / "dawn"), "DAWN", "--detector", "yolov5n", "--data-root", str(data_root),
            "--results", str(tmp_path / "r"), *SMOKE]
    assert main(args) == 0
    line = _last_json(capsys)
    assert line["gain"] == 0.0 and line["metrics"]["coco_ap50"] == line["rainy"]["coco_ap50"]
    assert line["vehicle"]["types"] == ["Car", "Truck", "Bus"] and 0 < line["vehicle"]["metrics"]["coco_ap50"] <= 1
    assert main(["detect", "identity", "DAWN", "--detector", "yolov5n", "--data-root", str(data_root),
                 "--results", str(tmp_path / "r"), *SMOKE]) == 0
    assert _last_json(capsys)["vehicle_ap50"] == line["vehicle"]["metrics"]["coco_ap50"]


def test_table_with_outputs_adds_a_column_beside_the_suites_and_leaves_the_table(exported, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    results = tmp_path / "results"
    line = _score(exported, "embedded-light", results, capsys, "--name", "mine")
    assert main(["table", "table1", "--with", "mine", "--results", str(results), *SMOKE]) == 0
    assert "table1-with-mine.md" in capsys.readouterr().out
    wider = (results / "cache" / "tables" / "smoke" / "table1-with-mine.md").read_text()
    assert "mine (outputs)" in wider and f"{line['psnr_y']:.2f}" in wider
    assert "mine" not in (results / "tables" / "smoke" / "table1.md").read_text()  # the suite's table
    assert main(["table", "table1", "--with", "nobody", "--results", str(results), *SMOKE]) == 2
    assert "no score-outputs result named 'nobody'" in capsys.readouterr().err
    assert main(["table", "ap", "--with", "mine", "--results", str(results), *SMOKE]) == 2
    assert "--with adds columns to the PSNR/SSIM tables" in capsys.readouterr().err
