"""The registered ResGuideNet methods, the weights provider, the automatic exit and the figures."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmark import figures
from core.store import CellKey
from benchmark.run import main
from models import provider, registry
from models.autoexit import AutoExit, calibrate
from models.resguidenet import build
from models.samplers import PatchSampler
from models.checkpoints import save_weights
from datasets.embedded import clean_images


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_every_exit_and_ablation_is_registered():
    names = registry.names()
    for n in ["resguidenet", "resguidenet_auto", "baseline", "baseline_rr", "resguidenet_nrecur", "resguidenet_l2"]:
        assert n in names
    assert all(f"resguidenet_{k}" in names and f"baseline_rr_{k}" in names for k in range(1, 6))


def test_params_report_ours_and_the_papers(capsys):
    assert main(["params", "resguidenet"]) == 0
    assert _last_json(capsys) == {"method": "resguidenet", "trainable": 31983, "all_variables": 31983,
                                  "paper": 37065}
    assert main(["params", "resguidenet_3"]) == 0
    assert _last_json(capsys)["trainable"] == 17865


def test_exit_k_uses_the_same_weights_as_the_full_model(tmp_path):
    net = build("resguidenet")
    path = tmp_path / "w.pt"
    save_weights(net, path, {"training_data": "test"})
    x = torch.rand(1, 3, 20, 24)
    full, info = registry.load("resguidenet", str(path))
    three, _ = registry.load("resguidenet_3", str(path))
    assert info["tag"] == "path" and info["sha256"]
    with torch.no_grad():
        outs = net.forward_all(x)
        assert torch.equal(three(x), outs[2]) and torch.equal(full(x), outs[-1])
    assert three.last_exit == 3


def test_weights_that_do_not_fit_name_the_first_tensor(tmp_path):
    path = tmp_path / "other.pt"
    save_weights(build("baseline"), path, {})
    with pytest.raises(ValueError, match=r"other\.pt.*blocks\.0"):
        registry.load("resguidenet", str(path))
    with pytest.raises(FileNotFoundError, match="neither a tag"):
        registry.load("resguidenet", str(tmp_path / "missing.pt"))


def test_provider_trains_when_no_weights_exist_and_reuses_them(tmp_path, monkeypatch):
    monkeypatch.setattr(provider, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(provider, "WEIGHTS_DIR", tmp_path / "shipped")
    from core import profiles
    tiny = replace(profiles.PROFILES["smoke"], name="tiny", train_iterations=2, train_batch=2, train_patch=24)
    monkeypatch.setitem(profiles.PROFILES, "tiny", tiny)
    net, info = registry.load("resguidenet_2", "heavy", "tiny")
    assert info["source"].startswith("trained here") and info["tag"] == "heavy"
    record = json.loads((tmp_path / "cache" / "resguidenet-heavy-tiny.json").read_text())
    assert record["iterations"] == 2 and record["config"]["rain"] == "heavy" and "embedded" in record["training_data"]
    assert record["config"]["lr_drops"] == [0.8] and record["config"]["optimizer"] == "rmsprop"
    _, again = registry.load("resguidenet", "heavy", "tiny")
    assert again["sha256"] == info["sha256"]  # one training serves every exit
    provider.ship("resguidenet", "heavy", "tiny")
    assert (tmp_path / "shipped" / "resguidenet-heavy-tiny.pt").exists()


def test_a_derived_record_is_remade_when_its_weights_change(no_weights):
    made = []

    def make():
        made.append(1)
        return {"tau": 0.1 * len(made)}

    first = provider.derived("resguidenet", "heavy", "tiny", "autoexit", make, weights_sha256="aa")
    assert first == {"tau": 0.1, "weights_sha256": "aa"}
    assert provider.derived("resguidenet", "heavy", "tiny", "autoexit", make, weights_sha256="aa") == first
    assert len(made) == 1  # the same weights reuse the record
    second = provider.derived("resguidenet", "heavy", "tiny", "autoexit", make, weights_sha256="bb")
    assert second["weights_sha256"] == "bb" and len(made) == 2  # retrained weights: made again
    shipped = no_weights / "shipped" / "resguidenet-heavy-tiny.autoexit.json"
    shipped.parent.mkdir()
    shipped.write_text(json.dumps({"tau": 9.0}))  # a record that names no weights is not trusted
    assert provider.derived("resguidenet", "heavy", "tiny", "autoexit", make, weights_sha256="bb")["tau"] != 9.0


def test_auto_exit_stops_when_the_output_settles():
    net = build("resguidenet")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        never = AutoExit(net, 0.0)
        assert torch.equal(never(x), net(x)) and never.last_exit == 5
        always = AutoExit(net, float("inf"))
        assert torch.equal(always(x), net(x, exit_block=2)) and always.last_exit == 2


def test_auto_exit_calibration_keeps_within_tolerance():
    net = build("resguidenet")
    sampler = PatchSampler([img for _, img in clean_images("train", 64)], rain="light", patch=32, seed=0)
    record = calibrate(net, sampler, n_patches=8, tolerance_db=0.1, batch=4)
    assert record["psnr_loss_db"] <= 0.1 and 2 <= record["mean_blocks"] <= 5 and record["n_patches"] == 8


def test_figure_frame_and_png(tmp_path):
    spec = figures.get_figure("fig6")
    cells = {}
    for s in spec.series:
        for i, m in enumerate(s.methods):
            key = CellKey(m, "embedded-heavy", "heavy")
            cells[key.id] = {"status": "ok", "metrics": {"ssim_y": 0.5 + 0.01 * i + (0.1 if "rr" in m else 0)}}
    df = figures.frame(spec, cells, None)
    assert len(df) == 10 and set(df["dataset"]) == {"embedded-heavy"}
    rr = df[df["series"] == "Baseline-RR"]["value"].to_numpy()
    assert np.allclose(rr, [0.6, 0.61, 0.62, 0.63, 0.64])
    import matplotlib

    matplotlib.use("Agg")
    style = ("axes.grid", "axes.facecolor", "font.size", "lines.linewidth", "axes.prop_cycle")
    before = {k: matplotlib.rcParams[k] for k in style}
    path = figures.draw(spec, cells, None, tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "fig6.csv").exists()
    assert {k: matplotlib.rcParams[k] for k in style} == before  # its seaborn theme does not leak into the figures drawn next


def test_figure_datasets_prefer_real_data(tmp_path):
    assert figures.dataset_for("light", None) == "embedded-light"
    (tmp_path / "Rain100H").mkdir()
    assert figures.dataset_for("heavy", tmp_path) == "Rain100H"
    assert figures.dataset_for("light", tmp_path) == "embedded-light"
    # the weights follow Table 2's choice for the dataset: fitted rain on the real set only
    assert figures.weights_rain("heavy", tmp_path) == "heavy-real"
    assert figures.weights_rain("light", tmp_path) == "light"
    fig9 = {k.weights for k in figures.keys(figures.get_figure("fig9"), tmp_path)}
    assert fig9 == {"heavy-real"}


def test_real_training_pairs_take_precedence(tmp_path, monkeypatch):
    from PIL import Image

    from models.samplers import PairedPatchSampler
    from datasets.training import real_training_pairs

    root = tmp_path / "data" / "train" / "RainTrainL"
    (root / "rainy").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in (1, 2, 3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / f"norain-{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "rainy" / f"rain-{i}.png")
    pairs = real_training_pairs(tmp_path / "data", "light")
    assert pairs is not None and len(pairs) == 3
    assert real_training_pairs(tmp_path / "data", "heavy") is None
    sampler = PairedPatchSampler(pairs, patch=16, seed=0)
    a, b = sampler.batch(4, step=7), sampler.batch(4, step=7)
    assert a[0].shape == (4, 3, 16, 16) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    monkeypatch.setattr(provider, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(provider, "WEIGHTS_DIR", tmp_path / "shipped")
    from core import profiles
    tiny = replace(profiles.PROFILES["smoke"], name="tiny", train_iterations=1, train_batch=2, train_patch=16)
    monkeypatch.setitem(profiles.PROFILES, "tiny", tiny)
    _, info = registry.load("resguidenet", "light", "tiny", tmp_path / "data")
    assert info["training_data"].startswith("real pairs RainTrainL (3 pairs")


def test_untrained_weights_are_skipped_unless_training_is_allowed(tmp_path, monkeypatch):
    from core.store import Context, Store
    from benchmark.cells import run_cell
    from core.profiles import get_profile

    monkeypatch.setattr(provider, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(provider, "WEIGHTS_DIR", tmp_path / "shipped")
    ctx = Context(profile=get_profile("smoke"), data_root=None, store=Store(tmp_path / "cells"), progress=False)
    with provider.training_allowed(False):
        cell = run_cell(CellKey("resguidenet_l2", "embedded-heavy", "heavy"), ctx)
    assert cell["status"] == "skipped" and cell["skip_reason"] == "weights"
    assert "benchmark.run train resguidenet_l2 --rain heavy --profile smoke" in cell["error"]
    assert not (tmp_path / "cache").exists()
