"""Tests of the fits behind the "heavy-real" and "light-real" rain presets (datasets.rainbank)."""

import math

import numpy as np
import pytest
from PIL import Image

from datasets.rain import add_rain, real_rain_params
from datasets.rainbank import FIT_STATS, HEAVY_TARGET, load_pairs, pair_names, split_names
from datasets.rainfit import (_FREE, calibrate_light_real, fit_heavy_real, heavy_real_loss, measure_rain, real_stats,
                              training_backgrounds)
from datasets.rainfit import summarise

_TRUE = {"density": 0.01, "length": 30.0, "width": 0.6, "intensity": 0.4, "low": 0.2, "fan": 4.0, "angle": 3.0,
         "angle_jitter": 6.0, "haze": 0.0}


def _background(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 70 + 40 * np.sin(xx / (8.0 + seed)) + 30 * np.cos(yy / 9.0)
    return np.clip(base[:, :, None] + rng.normal(0, 4, (h, w, 3)), 0, 190).astype(np.uint8)


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "train" / "RainTrainH-sample18"
    (folder / "rainy").mkdir(parents=True)
    (folder / "clean").mkdir(parents=True)
    params = real_rain_params(**_TRUE)
    for n in range(2, 7):
        clean = _background(64, 80, n)
        Image.fromarray(clean).save(folder / "clean" / f"norain-{n}.png")
        Image.fromarray(add_rain(clean, params, seed=100 + n)).save(folder / "rainy" / f"norain-{n}.png")
    return tmp_path


def test_loss_is_zero_at_the_real_means_and_grows_away():
    real = {k: {"mean": 1.0 + i, "std": 0.5} for i, k in enumerate(FIT_STATS)}
    rows = [{**{k: 1.0 + i for i, k in enumerate(FIT_STATS)}, "psnr_y": HEAVY_TARGET[0], "ssim_y": HEAVY_TARGET[1]}]
    assert heavy_real_loss(rows, real) == pytest.approx(0.0)
    off = [{**rows[0], "length_px": rows[0]["length_px"] + 1.0}]
    assert heavy_real_loss(off, real) == pytest.approx(4.0)  # one std away, squared
    worse = [{**rows[0], "psnr_y": HEAVY_TARGET[0] + 0.5}]
    assert heavy_real_loss(worse, real) == pytest.approx(4.0)  # two tolerances of 0.25 dB
    assert heavy_real_loss(worse, real, target=None) == pytest.approx(0.0)


def test_fit_moves_towards_the_rain_that_made_the_pairs(root):
    pairs = load_pairs(root, holdout=1)
    real = summarise(real_stats(pairs, score=False))
    fit = fit_heavy_real(root, names=[n for n, _, _ in pairs], seed=0, target=None, max_evaluations=25)
    assert fit.names == ["norain-2.png", "norain-3.png", "norain-4.png", "norain-5.png"]
    assert fit.evaluations <= 27
    # slant by moments of the measured angles
    assert fit.values["angle"] == pytest.approx(real["angle_deg"]["mean"], abs=0.01)
    assert fit.values["angle_jitter"] == pytest.approx(math.sqrt(3) * real["angle_deg"]["std"], abs=0.01)
    for name, _, _, lo, hi in _FREE:
        assert lo <= fit.values[name] <= hi
    start = {name: s for name, s, *_ in _FREE}
    backgrounds = [c for _, _, c in pairs]
    start_rows = measure_rain(backgrounds, real_rain_params(**start, angle=fit.values["angle"],
                                                            angle_jitter=fit.values["angle_jitter"]),
                              list(range(len(pairs))))
    assert fit.loss < heavy_real_loss(start_rows, real, target=None)
    assert set(fit.synthetic) >= set(FIT_STATS) and fit.params().blend == "additive"


def _bsds(root, n=6, h=96, w=128):
    for split in ("train", "val"):
        (root / "BSDS500" / split).mkdir(parents=True)
    for i in range(n):
        split = "train" if i < n // 2 else "val"
        Image.fromarray(_background(h, w, 20 + i)).save(root / "BSDS500" / split / f"{1000 + i}.jpg", quality=95)
    (root / "BSDS500" / "rain100-backgrounds.txt").write_text("train/1001.jpg\n")
    (root / "BSDS500" / "test").mkdir()  # never read
    Image.fromarray(_background(48, 64, 99)).save(root / "BSDS500" / "test" / "1.jpg")


def test_training_backgrounds_leave_out_the_rain100_list(tmp_path):
    _bsds(tmp_path)
    names = [n for n, _ in training_backgrounds(tmp_path)]
    assert names == ["train/1000.jpg", "train/1002.jpg", "val/1003.jpg", "val/1004.jpg", "val/1005.jpg"]
    assert [n for n, _ in training_backgrounds(tmp_path, every=2)] == names[::2]
    (tmp_path / "BSDS500" / "rain100-backgrounds.txt").unlink()
    with pytest.raises(FileNotFoundError, match="rain100-backgrounds"):
        training_backgrounds(tmp_path)


def test_light_calibration_hits_the_target_psnr(tmp_path):
    _bsds(tmp_path)
    # short streaks on these small images, so the score moves in small steps with the density
    shape = {**_TRUE, "length": 8.0}
    got = calibrate_light_real(tmp_path, shape, target=(30.0, 0.9), every=1, fit_intensity=False)
    assert got["psnr_y"] == pytest.approx(30.0, abs=0.1)
    assert got["intensity"] == _TRUE["intensity"]
    assert 1e-5 < got["density"] < 0.05
    both = calibrate_light_real(tmp_path, shape, target=(got["psnr_y"], got["ssim_y"] - 0.01), every=1)
    assert both["psnr_y"] == pytest.approx(got["psnr_y"], abs=0.1)
    assert both["ssim_y"] == pytest.approx(got["ssim_y"] - 0.01, abs=0.005)


@pytest.mark.realdata
def test_heavy_real_statistics_lie_within_the_real_range(data_root):
    names = pair_names(data_root)
    pairs = load_pairs(data_root, names)
    real = summarise(real_stats(pairs, score=False))
    held = split_names(names)[1][:4]  # a few held-out backgrounds, for speed
    backgrounds = [c for n, _, c in pairs if n in held]
    synthetic = summarise(measure_rain(backgrounds, "heavy-real", [i for i in range(len(backgrounds))], score=False))
    for stat, r in real.items():
        s = synthetic[stat]["mean"]
        assert r["min"] <= s <= r["max"], (stat, s, r)


def test_amount_spread_fit_adds_the_missing_spread_and_keeps_the_mean(tmp_path):
    from datasets.rainfit import fit_amount_spread, rain_amount

    folder = tmp_path / "train" / "RainTrainH-sample18"
    (folder / "rainy").mkdir(parents=True)
    (folder / "clean").mkdir(parents=True)
    for i, n in enumerate(range(2, 9)):  # the real rain's amount varies eightfold from pair to pair
        clean = _background(64, 80, n)
        params = real_rain_params(**{**_TRUE, "density": 0.003 * 2.0 ** (i % 4)})
        Image.fromarray(clean).save(folder / "clean" / f"norain-{n}.png")
        Image.fromarray(add_rain(clean, params, seed=100 + n)).save(folder / "rainy" / f"norain-{n}.png")
    rain = real_rain_params(**{**_TRUE, "density": 0.008})
    fit = fit_amount_spread(tmp_path, [f"norain-{n}.png" for n in range(2, 9)], rain=rain, renders=3)
    assert fit["real_log_sd"] > 2 * fit["synthetic_log_sd"]
    assert fit["amount_spread"] == pytest.approx(math.sqrt(fit["real_log_sd"] ** 2 - fit["synthetic_log_sd"] ** 2))
    assert fit["spread_log_sd"] > fit["synthetic_log_sd"]
    assert fit["spread_mean"] == pytest.approx(fit["real_mean"], rel=0.1)
    clean = _background(64, 80, 1)
    assert rain_amount(clean, clean) == 0.5 and rain_amount(add_rain(clean, rain, 0), clean) > 1.0
