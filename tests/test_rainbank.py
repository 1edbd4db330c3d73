"""Tests of datasets.rainbank (real rain layers, the bank) and benchmark.rain_look on synthetic pairs."""

import numpy as np
import pytest
from PIL import Image

from datasets.rain import RainLayer, RainParams, add_rain, rain_mask
from datasets.rainbank import (HOLDOUT, RainBank, add_bank_rain, bank_renderer, extract_layer, load_bank, load_pairs,
                               pair_folder, pair_names, split_names)
from datasets.rainfit import rainy_input_score

_ADDITIVE = RainParams(layers=(RainLayer(0.01, 20, 5, 0, 0.7, 0.5),), blend="additive")


def _background(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 80 + 40 * np.sin(xx / (9.0 + seed)) + 30 * np.cos(yy / 7.0)
    return np.clip(base[:, :, None] + rng.normal(0, 4, (h, w, 3)), 0, 200).astype(np.uint8)


def _write_pairs(folder, numbers, h=40, w=56, layer_value=None):
    """norain-N.png pairs under folder/rainy and folder/clean; the rain is additive (a constant
    grey ``layer_value[N]`` when given, else the renderer's additive streaks)."""
    (folder / "rainy").mkdir(parents=True, exist_ok=True)
    (folder / "clean").mkdir(parents=True, exist_ok=True)
    for n in numbers:
        clean = _background(h, w, n)
        if layer_value is None:
            rainy = add_rain(clean, _ADDITIVE, seed=n)
        else:
            rainy = np.rint(np.clip(clean / 255.0 + layer_value[n], 0, 1) * 255).astype(np.uint8)
        Image.fromarray(clean).save(folder / "clean" / f"norain-{n}.png")
        Image.fromarray(rainy).save(folder / "rainy" / f"norain-{n}.png")


@pytest.fixture
def root(tmp_path):
    """A data root with 8 pairs numbered like the real set (no 1 or 10)."""
    _write_pairs(tmp_path / "train" / "RainTrainH-sample18", [2, 3, 4, 9, 11, 12, 20, 15])
    return tmp_path


# --------------------------------------------------------------------------
# finding the pairs
# --------------------------------------------------------------------------

def test_pairs_are_ordered_by_number_and_the_last_are_held_out(root):
    names = pair_names(root)
    assert names == [f"norain-{n}.png" for n in (2, 3, 4, 9, 11, 12, 15, 20)]
    assert pair_folder(root) == root / "train" / "RainTrainH-sample18"
    assert pair_names(root / "train" / "RainTrainH-sample18") == names  # the folder itself works too
    fit, held = split_names(names, holdout=3)
    assert fit == names[:5] and held == ["norain-12.png", "norain-15.png", "norain-20.png"]
    assert split_names(names)[1] == names[-HOLDOUT:]
    with pytest.raises(ValueError):
        split_names(names, holdout=8)
    assert [n for n, _, _ in load_pairs(root, holdout=3)] == fit


def test_missing_folder_and_files_are_named(tmp_path, root):
    with pytest.raises(FileNotFoundError, match="RainTrainH-sample18"):
        pair_names(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="RainTrainH-sample18"):
        load_bank(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="norain-7.png"):
        load_bank(root, names=["norain-2.png", "norain-7"])
    (root / "train" / "RainTrainH-sample18" / "clean" / "norain-9.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"clean.*norain-9\.png"):
        pair_names(root)


# --------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------

def test_extract_layer_is_exact_where_measured_and_fills_the_rest_with_rain():
    h, w = 64, 96
    s_true = rain_mask((h, w), RainParams(layers=(RainLayer(0.02, 15, 0, 0, 0.6, 0.5),)), np.random.default_rng(0))
    clean = np.full((h, w, 3), 0.3)
    clean[10:40, 20:60] = 0.99  # a bright block: additive rain saturates there
    rainy = np.rint(np.clip(clean + s_true[:, :, None], 0, 1) * 255) / 255
    clean8 = np.rint(clean * 255).astype(np.uint8)
    s, valid = extract_layer(np.rint(rainy * 255).astype(np.uint8), clean8)
    assert s.dtype == np.float32 and s.shape == (h, w) and 0 <= s.min() and s.max() <= 1
    assert np.abs(s[valid] - s_true[valid]).max() <= 1.0 / 255 + 1e-6
    hole = ~valid
    assert hole.sum() > 200
    # the filled pixels are rain like elsewhere, not the lower bound 1 - B of the bright block
    assert abs(s[hole].mean() - s[valid].mean()) < 0.05
    assert np.isin(np.rint(s[hole] * 255), np.rint(s[valid] * 255)).all()


def _bank(values, shape=(60, 80), names=None):
    layers = tuple(np.full(shape, v, np.float32) for v in values)
    valid = tuple(np.ones(shape, bool) for _ in values)
    return RainBank(names=tuple(names or (f"p{i}" for i in range(len(values)))), layers=layers, valid=valid)


def test_bank_rain_is_deterministic_additive_and_in_range():
    rng = np.random.default_rng(1)
    layer = rng.uniform(0, 0.6, (70, 90)).astype(np.float32)
    bank = RainBank(names=("a",), layers=(layer,), valid=(np.ones(layer.shape, bool),))
    clean = _background(48, 64, 1)
    a = add_bank_rain(clean, 5, bank)
    assert a.dtype == np.uint8 and a.shape == clean.shape
    assert np.array_equal(a, add_bank_rain(clean, 5, bank))
    assert not np.array_equal(a, add_bank_rain(clean, 6, bank))
    assert np.array_equal(add_bank_rain(clean / 255.0, 5, bank), a)  # float input, same result
    grey = add_bank_rain(clean[:, :, 0], 5, bank)
    assert grey.shape == (48, 64)
    # additive and grey: O - B is the same on every unsaturated channel and never negative
    d = a.astype(int) - clean.astype(int)
    unsat = (a < 255).all(axis=2)
    assert (d >= 0).all() and (d[..., 0] == d[..., 1])[unsat].all() and (d[..., 1] == d[..., 2])[unsat].all()
    # without zoom, gain or crop the layer is added as it is (possibly mirrored)
    same = add_bank_rain(np.zeros((70, 90, 3)), 3, bank, scale=(1, 1), gain=(1, 1))[..., 0]
    expect = np.rint(layer.astype(np.float64) * 255)
    assert np.array_equal(same, expect) or np.array_equal(same, expect[:, ::-1])


def test_bank_rain_covers_images_larger_than_the_layer():
    bank = _bank([0.2], shape=(30, 50))
    out = add_bank_rain(np.zeros((45, 40, 3), np.uint8), 0, bank, scale=(0.75, 0.75), gain=(1, 1))
    assert (out == 51).all()  # zoom raised to 1.5 so the layer covers every pixel


def test_bank_uses_only_the_allowed_pairs(tmp_path):
    folder = tmp_path / "pairs"
    values = {2: 0.05, 3: 0.08, 4: 0.06, 5: 0.5, 6: 0.55}
    _write_pairs(folder, values, layer_value=values)
    default = load_bank(folder, holdout=2)
    assert default.names == ("norain-2.png", "norain-3.png", "norain-4.png")
    chosen = load_bank(folder, names=["norain-3", "norain-2.png"])
    assert chosen.names == ("norain-2.png", "norain-3.png")
    black = np.zeros((32, 32, 3), np.uint8)
    for bank, top in ((default, 0.08), (chosen, 0.08)):
        seen = max(int(add_bank_rain(black, s, bank).max()) for s in range(40))
        assert seen <= np.ceil(top * 1.2 * 255) + 1  # never a held-out layer (0.5 and more)
    held = load_bank(folder, names=["norain-5", "norain-6"])
    assert min(int(add_bank_rain(black, s, held).min()) for s in range(10)) >= np.floor(0.5 * 0.7 * 255) - 1
    assert load_bank(folder, holdout=2) is default  # cached


def test_rainy_input_score_is_the_suites_metric():
    from core.metrics import image_metrics

    clean = _background(40, 48, 3)
    rainy = add_rain(clean, "heavy-real", seed=2)
    p, s = rainy_input_score(rainy, clean)
    m = image_metrics(rainy, clean)
    assert p == pytest.approx(m["psnr_y"], abs=1e-12) and s == pytest.approx(m["ssim_y"], abs=1e-12)


# --------------------------------------------------------------------------
# benchmark.rain_look
# --------------------------------------------------------------------------

def test_rain_look_table_and_figure(root, tmp_path):
    import pandas as pd

    from benchmark.rain_look import (
        draw_rain_look,
        format_table,
        rain_stats_frame,
        rain_stats_long,
    )

    sources = ("real", "heavy-real", "bank-heavy")
    long = rain_stats_long(root, sources, seed=0)
    assert set(long["source"]) == set(sources) and long["background"].nunique() == 8
    df = rain_stats_frame(root, sources, seed=0)
    assert list(df.columns) == ["source", "statistic", "mean", "std", "min", "max", "n"]
    row = df[(df.source == "heavy-real") & (df.statistic == "coverage")].iloc[0]
    assert row["min"] <= row["mean"] <= row["max"] and row["n"] == 8
    pd.testing.assert_frame_equal(df, rain_stats_frame(root, sources, seed=0))  # deterministic
    table = format_table(df)
    assert table.splitlines()[0] == "| statistic | real | heavy-real | bank-heavy |"
    assert "| length_px |" in table and "±" in table
    with pytest.raises(KeyError, match="no-such"):
        rain_stats_frame(root, ("no-such",))

    out = tmp_path / "fig" / "rain_look.png"
    summary = draw_rain_look(root, out, sources=sources, long=long, crop=32,
                             shown=("clean", "real", "heavy-real", "bank-heavy"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.read_csv(out.with_suffix(".csv")).shape == summary.shape
    assert not list(out.parent.glob(".*.tmp"))


def test_bank_rain_trains_through_the_patch_sampler(root):
    """``bank-heavy`` is a training rain source: the sampler composes real layers, the same per step."""
    from models.samplers import PatchSampler

    images = [_background(48, 60, k) for k in range(3)]
    sampler = PatchSampler(images, rain=bank_renderer("bank-heavy", root), patch=32, seed=1)
    rainy, clean = sampler.arrays(4, 7)
    again, _ = sampler.arrays(4, 7)
    assert np.array_equal(rainy, again) and (rainy.astype(int) >= clean).all() and (rainy != clean).any()
    with pytest.raises(FileNotFoundError, match="data root"):
        bank_renderer("bank-heavy", None)


def test_pair_source_trains_on_the_fit_pairs_only(root):
    """``pairs-heavy`` crops the fit pairs themselves: every patch is cut from a fit pair, at the same
    place in its rainy and clean image, never from a held-out one."""
    from datasets.rainbank import fit_pairs
    from models.samplers import PairedPatchSampler

    pairs = fit_pairs(root, holdout=3)
    assert [p.name for p in pairs.pairs] == [f"norain-{n}" for n in (2, 3, 4, 9, 11)]
    rainy, clean = PairedPatchSampler(pairs, patch=16, seed=2).arrays(12, 5)
    fit = [(r, c) for _, r, c in load_pairs(root, holdout=3)]
    held = [c for _, _, c in load_pairs(root, names=split_names(pair_names(root), 3)[1])]

    def places(patch, image):
        """(y, x, flipped) of every window of ``image`` equal to ``patch`` or to its mirror image."""
        win = np.lib.stride_tricks.sliding_window_view(image, patch.shape, axis=(0, 1, 2))[..., 0, :, :, :]
        return [(y, x, f) for f, p in ((False, patch), (True, patch[:, ::-1]))
                for y, x in zip(*np.nonzero((win == p).all(axis=(-3, -2, -1))))]

    p = clean.shape[1]
    for r, c in zip(rainy, clean):
        assert not any(places(c, h) for h in held)
        assert any(np.array_equal(fr[y:y + p, x:x + p][:, ::-1] if f else fr[y:y + p, x:x + p], r)
                   for fr, fc in fit for y, x, f in places(c, fc))
    with pytest.raises(FileNotFoundError, match="data root"):
        fit_pairs(None)


def test_mixed_bank_source_alternates_bank_and_preset_by_seed(root):
    """``bank-mix-heavy``: an image takes the bank's real layers or the heavy-real preset, by its seed alone."""
    from datasets.rainbank import takes_bank

    clean = _background(48, 60, 5)
    bank, mixed = bank_renderer("bank-heavy", root), bank_renderer("bank-mix-heavy", root)
    picks = [takes_bank("bank-mix-heavy", seed) for seed in range(200)]
    assert 70 < sum(picks) < 130 and all(takes_bank("bank-heavy", seed) for seed in range(20))
    for seed in (picks.index(True), picks.index(False)):
        expected = bank(clean, seed) if picks[seed] else add_rain(clean, "heavy-real", seed)
        assert np.array_equal(mixed(clean, seed), expected)
        assert np.array_equal(mixed(clean, seed), mixed(clean, seed))


def test_domain_gap_scores_the_held_out_pairs_and_names_missing_models(root, tmp_path):
    from benchmark.domain_gap import domain_gap_frame, write_domain_gap
    from core.metrics import image_metrics, mean_offset_y
    from models.provider import training_allowed

    with training_allowed(False):
        df = domain_gap_frame(root, profile="smoke", models=(("identity", None), ("baseline", "bank-heavy"),
                                                                 ("ddn", "no-such.ckpt"), ("baseline", "heavy", "long")))
    held = load_pairs(root, names=split_names(pair_names(root))[1])
    assert [n for n, _, _ in held] == [f"norain-{n}.png" for n in (4, 9, 11, 12, 15, 20)]
    ident, untrained, absent = df.iloc[0], df.iloc[1], df.iloc[2]
    assert ident["status"] == "ok" and ident["n_images"] == HOLDOUT
    assert ident["psnr_y"] == pytest.approx(np.mean([image_metrics(r, c)["psnr_y"] for _, r, c in held]))
    # the rainy input's brightness error is the rain's mean added luma: positive
    assert ident["offset_y"] == pytest.approx(np.mean([mean_offset_y(r, c) for _, r, c in held]))
    assert ident["offset_y"] > 1.0
    assert untrained["status"] == "skipped" and "train baseline" in untrained["note"]
    assert absent["status"] == "skipped" and "no-such" in absent["note"]
    md, _ = write_domain_gap(df, tmp_path)
    assert "Not scored: baseline (bank-heavy, smoke)" in md.read_text()
    assert "| identity | - | smoke | - | " in md.read_text() and ident["rate_schedule"] == ""  # no training record
    # an entry may name its own profile (schedule): it loads that profile's weights
    own = df.iloc[3]
    assert own["profile"] == "long" and own["status"] == "skipped" and "long" in own["note"]
    assert "baseline (heavy, long)" in md.read_text()


def test_domain_gap_gives_the_spread_between_seeds_of_one_model(tmp_path):
    """Rows of one model trained with several seeds (``-seedN`` tags) are summarised by their mean
    PSNR and range; a model with one seed, or a repeat that was not scored, adds nothing."""
    import pandas as pd

    from benchmark.domain_gap import seed_spreads, write_domain_gap

    base = dict(method="resguidenet", profile="long", n_images=6, status="ok", ssim_y=0.8, offset_y=0.0,
                rate_schedule="", note="")
    df = pd.DataFrame([{**base, "trained_on": "pairs-heavy-warm", "psnr_y": 24.0},
                       {**base, "trained_on": "pairs-heavy-warm-seed1", "psnr_y": 23.5},
                       {**base, "trained_on": "heavy", "psnr_y": 19.0},
                       {**base, "trained_on": "pairs-heavy-warm-seed2", "psnr_y": 24.75},
                       {**base, "trained_on": "pairs-heavy-warm", "profile": "quick", "psnr_y": 22.0},
                       {**base, "trained_on": "heavy-seed1", "status": "skipped", "psnr_y": float("nan")}])
    expected = "resguidenet pairs-heavy-warm (long), seeds 0, 1, 2: mean 24.08 dB, 23.50-24.75 (1.25 dB)"
    assert seed_spreads(df) == [expected]
    md, _ = write_domain_gap(df, tmp_path)
    assert f"Spread between seeds (PSNR): {expected}." in md.read_text()


def test_warm_source_starts_from_the_rendered_rain_model(root, no_weights, monkeypatch, capsys):
    """``pairs-heavy-warm`` fine-tunes the ``heavy-real`` model of the same profile on the fit pairs:
    without it, the error names the command that makes it; with it, training starts from exactly those
    weights (the record names their file and hash) and warms its rate up."""
    import json

    import torch

    from benchmark.run import main
    from core.profiles import PROFILES, Profile
    from models import provider, registry
    from models.registry import file_identity

    monkeypatch.setitem(PROFILES, "smoke", Profile("smoke", embedded_size=64, real_limit=8, train_iterations=10,
                                                   train_batch=2, train_patch=16, runtime_size=64))
    argv = ["train", "resguidenet", "--rain", "pairs-heavy-warm", "--profile", "smoke", "--data-root", str(root),
            "--no-progress"]
    assert main(argv) != 0
    assert "python -m benchmark.run train resguidenet --rain heavy-real --profile smoke" in capsys.readouterr().err
    assert not list((no_weights / "cache").glob("resguidenet-pairs-heavy-warm-*"))

    torch.manual_seed(5)
    start = registry.load("resguidenet", "init", "smoke")[0].net
    start_file = provider.save_trained("resguidenet", "heavy-real", "smoke", start, {})
    assert main(argv) == 0
    record = json.loads((no_weights / "cache" / "resguidenet-pairs-heavy-warm-smoke.json").read_text())
    assert record["warm_start"] == {"tag": "heavy-real", "file": start_file.name,
                                    "sha256": file_identity(start_file)["sha256"]}
    assert record["config"]["warmup"] == 2 and record["config"]["rain"] == "pairs-heavy-warm"
    tuned = registry.load("resguidenet", "pairs-heavy-warm", "smoke")[0].net.state_dict()
    fresh = registry.load("resguidenet", "init", "smoke")[0].net.state_dict()
    gap = lambda a: max(float((a[k] - start.state_dict()[k]).abs().max()) for k in a)  # noqa: E731
    assert gap(tuned) < 0.1 < gap(fresh)  # ten small steps away from the start, not from a fresh init


def test_warmup_ramps_the_rate_up_before_the_drops():
    from models.train import TrainConfig, rate_schedule

    cfg = TrainConfig(iterations=10, lr=1.0, warmup=4, lr_drops=(0.8,))
    assert [round(cfg.lr_at(s), 6) for s in range(1, 11)] == [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 0.1, 0.1]
    assert rate_schedule([0.8], 200) == "warm-up 200, ×0.1 after 80%" and rate_schedule([0.8]) == "×0.1 after 80%"
    assert rate_schedule([0.8], 200, 0.999) == "warm-up 200, ×0.1 after 80%, weight average 0.999"
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(iterations=10, warmup=-1)


def test_mixed_pair_source_fine_tunes_on_pairs_and_bank_and_ships_the_average(root, no_weights, monkeypatch):
    """``pairs-mix-heavy-warm``: from the ``heavy-real`` model, on batches that are half fit-pair crops and
    half bank rain over the clean training images; it ships its weight average (its record says so)."""
    import json

    import torch

    from benchmark.run import main
    from core.profiles import PROFILES, Profile
    from models import provider, registry

    monkeypatch.setitem(PROFILES, "smoke", Profile("smoke", embedded_size=64, real_limit=8, train_iterations=10,
                                                   train_batch=2, train_patch=16, runtime_size=64))
    torch.manual_seed(5)
    provider.save_trained("resguidenet", "heavy-real", "smoke", registry.load("resguidenet", "init", "smoke")[0].net, {})
    assert main(["train", "resguidenet", "--rain", "pairs-mix-heavy-warm", "--profile", "smoke", "--data-root",
                 str(root), "--no-progress"]) == 0
    cache = no_weights / "cache"
    record = json.loads((cache / "resguidenet-pairs-mix-heavy-warm-smoke.json").read_text())
    assert record["config"]["ema"] == provider.WEIGHT_AVERAGE["pairs-mix-heavy-warm"] and record["warm_start"]
    assert record["training_data"].startswith("half of each batch: the 2 fit pairs")
    assert "real rain layers of the bank (bank-heavy)" in record["training_data"]
    shipped = registry.load("resguidenet", "pairs-mix-heavy-warm", "smoke")[0].net.state_dict()
    average = torch.load(cache / "resguidenet-pairs-mix-heavy-warm-smoke.ckpt", weights_only=True)["ema"]
    assert all(torch.equal(shipped[k], average[k]) for k in average)
