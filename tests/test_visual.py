"""The picture figures (benchmark.visual): their numbers are the evaluation path's, and a bad method costs one panel."""
import json

import numpy as np
import pandas as pd
import pytest

from core.profiles import get_profile
from benchmark.visual import VISUALS, draw_visual, rain_mask, streak_ratio
from benchmark.visual_draw import crop
from core.errors import WeightsUnavailable

SMOKE = get_profile("smoke")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _evaluate(method, weights, dataset):
    from benchmark.evaluate import evaluate
    from datasets.catalog import open_dataset
    from models import registry

    net, _ = registry.load(method, weights, "smoke", None)
    ds = open_dataset(dataset, None, size=SMOKE.embedded_size, seed=SMOKE.seed)
    return {p["image"]: p for p in evaluate(net, ds, progress=False)["per_image"]}


def test_crop_is_central_and_keeps_short_sides():
    img = np.arange(10 * 20).reshape(10, 20)
    assert crop(img, 4).tolist() == img[3:7, 8:12].tolist()
    assert crop(img, 16).shape == (10, 16)


def test_rain_mask_and_streak_ratio_against_hand_values():
    clean = np.full((2, 3, 3), 100, np.uint8)
    rainy = clean.copy()
    rainy[0, 1] = 140  # luma up by 219/255 * 40/255 = 0.135 > 0.1: rain
    rainy[1, 2] = 120  # up by 0.067: not rain
    mask = rain_mask(rainy, clean)
    assert mask.tolist() == [[False, True, False], [False, False, False]]
    maps = np.zeros((2, 2, 3))
    maps[0, 0, 1], maps[1, 0, 1] = 3.0, -1.0   # on the rain pixel: mean |a| = 2
    maps[0, 1, 2] = 5.0                        # elsewhere: 5 over 2 maps x 5 pixels = 0.5
    assert streak_ratio(maps, mask) == pytest.approx(4.0)
    assert np.isnan(streak_ratio(maps, np.zeros((2, 3), bool)))


def test_fig10_panels_carry_the_evaluation_numbers(tmp_path, monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    rec = draw_visual("fig10", SMOKE, None, tmp_path)
    assert (tmp_path / "fig10.png").read_bytes()[:8] == PNG_MAGIC
    df = pd.read_csv(tmp_path / "fig10.csv")
    assert json.loads((tmp_path / "fig10.json").read_text())["fingerprint"] == rec["fingerprint"]
    assert "embedded-light" in rec["caption"]
    # three images, each: rainy, six methods, clean
    assert len(df) == 3 * 8 and df["image"].nunique() == 3
    dm = df[df["panel"] == "DID-MDN"]  # the DID-MDN trained here, one model for every density
    assert set(dm["status"]) == {"ok"} and set(dm["weights"].str.split(" ").str[0]) == {"density"}
    assert rec["skipped_panels"] == 0 and rec["failed_panels"] == 0
    ref = _evaluate("resguidenet", "light", "embedded-light")
    ours = df[df["panel"] == "ResGuideNet"].set_index("image")
    assert set(ours.index) == set(ref)
    for image, row in ours.iterrows():
        assert row["psnr_y"] == pytest.approx(ref[image]["psnr_y"], abs=1e-9)
        assert row["ssim_y"] == pytest.approx(ref[image]["ssim_y"], abs=1e-9)


def test_fig3_blocks_are_the_detached_models(tmp_path, monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    draw_visual("fig3", SMOKE, None, tmp_path)
    df = pd.read_csv(tmp_path / "fig3.csv")
    heavy = df[df["row"].str.startswith("heavy")]
    assert list(heavy["panel"]) == ["rainy", "block 1", "block 2", "block 3", "block 4", "block 5", "merged", "clean"]
    image = heavy["image"].iloc[0]
    for k in (1, 3):
        ref = _evaluate(f"resguidenet_{k}", "heavy", "embedded-heavy")[image]
        assert heavy.set_index("panel").loc[f"block {k}", "psnr_y"] == pytest.approx(ref["psnr_y"], abs=1e-9)
    merged = _evaluate("resguidenet", "heavy", "embedded-heavy")[image]
    assert heavy.set_index("panel").loc["merged", "psnr_y"] == pytest.approx(merged["psnr_y"], abs=1e-9)


def test_fig7_reads_block_two_of_each_model(tmp_path, monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    rec = draw_visual("fig7", SMOKE, None, tmp_path)
    df = pd.read_csv(tmp_path / "fig7.csv").set_index("method")
    assert df.loc["baseline_rr", "maps"] == 16       # ResGuideNet's width
    assert df.loc["baseline", "maps"] > 16           # Baseline is widened to the same parameter count
    assert (df["streak_ratio"] > 0).all() and (df["rain_pixels"] > 0).all()
    assert rec["failed_panels"] == 0


@pytest.mark.realdata
def test_fig12_shows_a_real_kitti_frame_with_the_coco_detector(tmp_path, data_root):
    if not (data_root / "weights" / "YOLOv5" / "yolov5n.pt").is_file():
        pytest.skip("no YOLOv5n weights under the data root")
    rec = draw_visual("fig12", SMOKE, data_root, tmp_path)
    df = pd.read_csv(tmp_path / "fig12.csv")
    assert "data: KITTI (training frame" in rec["caption"] and "detector: yolov5n (" in rec["caption"]
    clean = df[df["method"] == "none"].iloc[0]
    assert clean["cars"] >= 3 and clean["found_iou70"] >= 1  # the COCO detector finds real cars
    assert rec["failed_panels"] == 0


def test_fig12_boxes_are_consistent(tmp_path, monkeypatch):
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    draw_visual("fig12", SMOKE, None, tmp_path)
    df = pd.read_csv(tmp_path / "fig12.csv")
    assert list(df["method"]) == ["none", "identity", "resguidenet_3", "resguidenet"]
    for _, row in df.iterrows():
        boxes = json.loads(row["boxes"])
        assert len(boxes) == row["detections"] and all(b[4] >= 0.5 for b in boxes)
        assert len(json.loads(row["gt"])) == row["cars"] >= row["found_iou70"] >= 0


def test_a_failing_method_costs_one_panel_and_the_exit_code(tmp_path, monkeypatch, capsys):
    from benchmark.run import main
    from models import registry

    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    real = registry.load

    def load(name, *a, **k):
        if name == "ddn":
            raise RuntimeError("checkpoint truncated: results/weights/ddn-light-smoke.pt")
        if name == "did_mdn":
            raise WeightsUnavailable("did_mdn is not trained for density rain in the smoke profile")
        return real(name, *a, **k)

    monkeypatch.setattr(registry, "load", load)
    assert main(["figure", "fig10", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]) == 1
    df = pd.read_csv(tmp_path / "figures" / "smoke" / "fig10.csv")
    ddn = df[df["panel"] == "DDN"]
    assert set(ddn["status"]) == {"failed"} and ddn["error"].str.contains("checkpoint truncated").all()
    assert set(df[df["panel"] == "ResGuideNet"]["status"]) == {"ok"}
    assert (tmp_path / "figures" / "smoke" / "fig10.png").read_bytes()[:8] == PNG_MAGIC  # drawn all the same
    assert "3 panels skipped, 3 failed" in capsys.readouterr().out  # DID-MDN skipped (no weights), DDN failed


def test_unknown_picture_and_report_caption(tmp_path, capsys):
    from benchmark.report import write_report
    from benchmark.run import main

    assert main(["figure", "fig99", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]) == 2
    assert "fig12" in capsys.readouterr().err  # the error lists the picture figures too

    with pytest.raises(ValueError, match="fig3"):
        draw_visual("fig99", SMOKE, None, tmp_path)
    (tmp_path / "fig5.png").write_bytes(PNG_MAGIC)
    (tmp_path / "fig5.json").write_text(json.dumps({"title": VISUALS["fig5"].title, "caption": "data: X"}))
    report = write_report(tmp_path / "R.md", "smoke", tmp_path, tmp_path, [], ["fig5"])
    assert f"{VISUALS['fig5'].title}. data: X." in report.read_text()


def test_fig12_skips_what_has_no_weights(tmp_path, monkeypatch, capsys, no_weights):
    from benchmark.run import main
    from models import registry

    # no detector: the figure is skipped, as a cell without weights is, and the run does not fail
    assert main(["figure", "fig12", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]) == 0
    assert "skipped figure fig12: no trained fasterrcnn_tiny_fpn detector" in capsys.readouterr().out
    # no ResGuideNet_3 weights: its panel says so, in its place
    monkeypatch.undo()
    real = registry.load

    def load(name, *a, **k):
        if name == "resguidenet_3":
            raise WeightsUnavailable("no resguidenet_3 weights: run `python -m benchmark.run train ...`")
        return real(name, *a, **k)

    monkeypatch.setattr(registry, "load", load)
    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    rec = draw_visual("fig12", SMOKE, None, tmp_path)
    df = pd.read_csv(tmp_path / "fig12.csv")
    assert list(df["method"]) == ["none", "identity", "resguidenet_3", "resguidenet"]
    assert list(df["status"]) == ["ok", "ok", "skipped", "ok"] and rec["skipped_panels"] == 1
    assert "no resguidenet_3 weights" in df["error"].iloc[2]


def test_report_lists_how_each_shipped_model_was_trained(tmp_path):
    from benchmark.report import write_report

    (tmp_path / "a-light-quick.json").write_text(json.dumps({
        "iterations": 1000, "seconds": 12.5, "threads": 1, "final_loss": 0.0712345,
        "config": {"batch": 16, "patch": 64, "optimizer": "rmsprop", "lr": 0.001, "lr_drops": [0.8]}}))
    (tmp_path / "b-density-quick.json").write_text(json.dumps({
        "iterations": {"residual": 1000, "classifier": 400}, "config": {"lr_drops": []}}))
    (tmp_path / "c-warm-long.json").write_text(json.dumps({
        "iterations": 4000, "warm_start": {"tag": "heavy-real", "file": "c-heavy-real-long.pt"},
        "config": {"lr_drops": [0.8], "warmup": 200}}))
    text = write_report(tmp_path / "R.md", "quick", tmp_path, tmp_path, [], [],
                        weights_records=sorted(tmp_path.glob("*.json"))).read_text()
    assert "## Trained weights" in text
    assert "| `a-light-quick` | 1000 | 16 × 64² | rmsprop | 0.001 | ×0.1 after 80% | 12.5 | 1 | 0.07123 |" in text
    assert "| `b-density-quick` | residual 1000, classifier 400 | – | – | – | constant | – | – | – |" in text
    assert ("| `c-warm-long` (from `c-heavy-real-long`) | 4000 | – | – | – | warm-up 200, ×0.1 after 80% | – | – | – |"
            in text)
    # no records, no section
    assert "## Trained weights" not in write_report(tmp_path / "S.md", "quick", tmp_path, tmp_path, [], []).read_text()
