"""Tests of datasets.rainstats on synthetic rain layers whose statistics are known by construction."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from datasets.rain import RainLayer, add_rain, rain_mask, resolve, streak_layer
from datasets.rainstats import STAT_NAMES, brightness_histogram, layer_stats, rain_layer, veil_map
from datasets.rainfit import summarise


def _segments(shape, n, angle, length, width, seed=0, gap=2.0, ss=4):
    """Anti-aliased box segments (value 1) of known angle, length and width.

    The direction is (cos t, -sin t) in (row, col), the suite's convention
    (positive angle leans right).  Centres are uniform over the image grown by
    half a segment, so segments are cut at the borders like a stationary
    field; a segment closer than ``gap`` px to an earlier one is redrawn, so
    segments never touch.
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    t = math.radians(angle)
    dr, dc, nr, nc = math.cos(t), -math.sin(t), math.sin(t), math.cos(t)
    half = 0.5 * length + gap + 2
    out = np.zeros(shape)
    taken = np.zeros(shape, dtype=bool)
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    placed = 0
    for _ in range(200 * n):
        if placed == n:
            break
        r0, c0 = rng.uniform(-length / 2, h + length / 2), rng.uniform(-length / 2, w + length / 2)
        r_lo, r_hi = max(int(r0 - half), 0), min(int(r0 + half) + 2, h)
        c_lo, c_hi = max(int(c0 - half), 0), min(int(c0 + half) + 2, w)
        if r_lo >= r_hi or c_lo >= c_hi:
            continue
        y, x = np.mgrid[r_lo:r_hi, c_lo:c_hi].astype(float)
        y -= r0
        x -= c0
        along, perp = y * dr + x * dc, y * nr + x * nc
        near = (np.abs(along) <= length / 2 + gap) & (np.abs(perp) <= width / 2 + gap)
        if not near.any() or (near & taken[r_lo:r_hi, c_lo:c_hi]).any():
            continue
        acc = np.zeros(y.shape)
        for a in sub:
            for b in sub:
                al = along + a * dr + b * dc
                pe = perp + a * nr + b * nc
                acc += (np.abs(al) <= length / 2) & (np.abs(pe) <= width / 2)
        acc /= ss * ss
        if not acc.any():
            continue
        out[r_lo:r_hi, c_lo:c_hi] += acc
        taken[r_lo:r_hi, c_lo:c_hi] |= acc > 0
        placed += 1
    assert placed == n, "could not place the segments"
    return np.clip(out, 0.0, 1.0)


def _bars(shape, cols, top, length, width, values):
    """Pixel-exact vertical bars: bar k covers columns cols[k]..cols[k]+width-1, rows top..top+length-1."""
    out = np.zeros(shape)
    for c, v in zip(cols, values):
        out[top:top + length, c:c + width] = v
    return out


def _axial_diff(a, b):
    """Difference of two orientations in degrees, modulo 180, in [-90, 90)."""
    return (a - b + 90.0) % 180.0 - 90.0


# --------------------------------------------------------------------------
# rain_layer
# --------------------------------------------------------------------------

def test_screen_inversion_is_exact_and_guards_white_background():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.0, 0.8, (40, 50, 3))
    s_true = rng.uniform(0.0, 0.9, (40, 50))
    b[:5] = 0.97  # 1 - B = 0.03 < guard on every channel: undefined
    b[5:10, :, 0] = 1.0  # one channel undefined: the other two still give S
    o = 1.0 - (1.0 - b) * (1.0 - s_true[:, :, None])
    s, valid = rain_layer(o, b, guard=0.1, blend="screen")
    assert s.shape == (40, 50) and s.dtype == np.float64 and valid.dtype == bool
    assert not valid[:5].any() and valid[5:].all()
    np.testing.assert_allclose(s[valid], s_true[valid], atol=1e-12)
    # undefined pixels hold the lower bound mean(O - B), never more than the truth
    np.testing.assert_allclose(s[:5], np.clip((o - b).mean(axis=2), 0, 1)[:5], atol=1e-12)
    assert (s[:5] <= s_true[:5] + 1e-12).all()
    assert ((s >= 0) & (s <= 1)).all()


def test_additive_inversion_masks_saturated_pixels():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.0, 0.9, (30, 40, 3))
    s_true = rng.uniform(0.0, 0.6, (30, 40))
    o = np.clip(b + s_true[:, :, None], 0.0, 1.0)
    s, valid = rain_layer(o, b, blend="additive")
    unsat = o < 1.0
    np.testing.assert_array_equal(valid, unsat.any(axis=2))
    np.testing.assert_allclose(s[valid], s_true[valid], atol=1e-12)
    assert (s[~valid] <= s_true[~valid] + 1e-12).all()
    # the same additive pair read as screen is wrong by the factor 1 / (1 - B)
    s_scr, v_scr = rain_layer(o, b, blend="screen")
    both = v_scr & valid & (s_true > 0.1)
    assert np.abs(s_scr[both] - s_true[both]).max() > 0.1


def test_inverts_the_suites_light_renderer_within_quantisation():
    rng = np.random.default_rng(2)
    clean = rng.integers(0, 200, (90, 120, 3)).astype(np.uint8)
    rainy = add_rain(clean, "light", seed=11)
    truth = rain_mask(clean.shape[:2], resolve("light"), np.random.default_rng(11))
    s, valid = rain_layer(rainy, clean)  # uint8 is accepted
    assert valid.all()
    # half a grey level in O and in B, amplified by at most 1 / (1 - 200/255)
    assert np.abs(s - truth).max() < 0.01


def test_rain_layer_rejects_bad_input():
    a = np.zeros((4, 5, 3))
    with pytest.raises(ValueError):
        rain_layer(a, np.zeros((4, 6, 3)))
    with pytest.raises(ValueError):
        rain_layer(a, a, blend="overlay")
    with pytest.raises(ValueError):
        rain_layer(a, a, guard=0.0)
    s, v = rain_layer(a[..., 0], a[..., 0])  # grey HxW works too
    assert s.shape == (4, 5) and v.all()


# --------------------------------------------------------------------------
# orientation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("angle", [0.0, 30.0, -15.0, 60.0, 90.0])
def test_dominant_angle_of_rotated_lines(angle):
    st = layer_stats(_segments((200, 200), 25, angle, 20, 3, seed=3))
    assert abs(_axial_diff(st["angle_deg"], angle)) < 1.0
    assert -90.0 < st["angle_deg"] <= 90.0
    assert st["angle_spread_deg"] < 8.0  # only the streak ends disagree
    assert st["coherence"] > 0.75


def test_angle_sign_follows_the_suites_renderer():
    for angle in (25.0, -25.0):
        layer = streak_layer((200, 200), RainLayer(density=0.002, length=25, angle=angle, width=0.5),
                             np.random.default_rng(4))
        assert abs(layer_stats(layer)["angle_deg"] - angle) < 1.5


def test_two_families_give_mean_angle_and_their_spread():
    one = _segments((256, 256), 25, 20.0, 24, 3, seed=5)
    other = _segments((256, 256), 25, -20.0, 24, 3, seed=6)
    st = layer_stats(np.clip(one + other, 0, 1))
    assert abs(st["angle_deg"]) < 2.0
    # two equal families at +-a: |z| = cos 2a, spread = sqrt(-2 ln cos 2a) / 2 = 20.9 deg for a = 20
    expected = 0.5 * math.degrees(math.sqrt(-2 * math.log(math.cos(math.radians(40)))))
    assert abs(st["angle_spread_deg"] - expected) < 3.0
    assert st["angle_spread_deg"] > 2 * layer_stats(one)["angle_spread_deg"]


# --------------------------------------------------------------------------
# width and length
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "angle, length, width",
    [(0.0, 20, 3), (30.0, 20, 3), (0.0, 40, 5), (-45.0, 40, 5)],
)
def test_width_and_length_of_known_segments(angle, length, width):
    st = layer_stats(_segments((256, 256), 30, angle, length, width, seed=7))
    assert abs(st["width_px"] - width) < 0.45, st
    assert abs(st["length_px"] - length) < 0.12 * length, st


def test_pixel_exact_bars_have_exact_width():
    cols = np.arange(20, 190, 40)
    layer = _bars((200, 200), cols, 80, 40, 3, np.ones(len(cols)))
    st = layer_stats(layer)
    # the autocorrelation across a 3-px box is a triangle with half maximum at 1.5 px; removing the
    # mean of these never-overlapping bars (1.5 % cover) lowers it by about that share
    assert abs(st["width_px"] - 3.0) < 0.1


def test_length_search_is_capped():
    layer = _bars((100, 120), np.arange(3, 115, 10), 0, 100, 2, np.ones(12))  # lines through the whole image
    st = layer_stats(layer, max_lag=30)
    assert st["length_px"] == pytest.approx(60.0)


# --------------------------------------------------------------------------
# brightness, coverage, veil
# --------------------------------------------------------------------------

def _graded_bars(veil=0.1):
    # 11 bars of 3 x 60 px: 5 at 0.2, 3 at 0.4, 2 at 0.6, 1 at 0.8 above a uniform veil
    values = [0.2] * 5 + [0.4] * 3 + [0.6] * 2 + [0.8]
    cols = 8 + 16 * np.arange(11)
    return veil + _bars((128, 192), cols, 30, 60, 3, values), values


def test_brightness_quantiles_of_known_bars():
    layer, _ = _graded_bars(veil=0.1)
    st = layer_stats(layer)
    # cumulative shares of streak pixels 5/11, 8/11, 10/11, 1: p50 in the 2nd group, p90 in the 3rd, p99 in the 4th
    assert st["bright_p50"] == pytest.approx(0.5, abs=1e-12)
    assert st["bright_p90"] == pytest.approx(0.7, abs=1e-12)
    assert st["bright_p99"] == pytest.approx(0.9, abs=1e-12)


def test_brightness_histogram_is_normalised():
    layer, _ = _graded_bars(veil=0.1)
    hist, edges = brightness_histogram(layer, bins=5)
    assert edges.shape == (6,) and edges[0] == 0.0 and edges[-1] == 1.0
    np.testing.assert_allclose(hist, [0, 5 / 11, 3 / 11, 2 / 11, 1 / 11], atol=1e-12)
    empty, _ = brightness_histogram(np.zeros((40, 40)), bins=7)
    assert empty.shape == (7,) and not empty.any()


def test_coverage_counts_pixels_above_threshold_after_the_veil():
    layer, _ = _graded_bars(veil=0.25)
    layer[100:110, 20:60] = 0.25 + 0.04  # faint smudge below the 0.05 threshold: not rain
    st = layer_stats(layer)
    assert st["coverage"] == pytest.approx(11 * 3 * 60 / (128 * 192), abs=1e-12)
    assert st["veil"] == pytest.approx(0.25, abs=1e-12)
    assert layer_stats(layer, threshold=0.03)["coverage"] == pytest.approx((11 * 3 * 60 + 400) / (128 * 192))


def test_uniform_veil_is_recovered_exactly():
    for v in (0.0, 0.2, 0.45):
        layer = np.clip(v + 0.5 * _segments((160, 160), 20, 10.0, 20, 3, seed=8), 0, 1)
        vmap, level = veil_map(layer)
        assert level == pytest.approx(v, abs=1e-12)
        np.testing.assert_allclose(vmap, v, atol=1e-12)
        assert layer_stats(layer)["veil"] == pytest.approx(v, abs=1e-12)


def test_veil_map_follows_a_slow_ramp():
    ramp = np.linspace(0.1, 0.3, 256)[None, :] * np.ones((192, 1))
    layer = np.clip(ramp + 0.5 * _segments((192, 256), 25, 0.0, 20, 3, seed=9), 0, 1)
    vmap, level = veil_map(layer)
    assert level == pytest.approx(0.2, abs=0.01)
    inner = slice(32, -32)
    assert np.abs(vmap[:, inner] - ramp[:, inner]).max() < 0.01
    # the streaks are measured above the veil: the same coverage as without the ramp
    flat = np.clip(0.2 + 0.5 * _segments((192, 256), 25, 0.0, 20, 3, seed=9), 0, 1)
    assert abs(layer_stats(layer)["coverage"] - layer_stats(flat)["coverage"]) < 0.002


# --------------------------------------------------------------------------
# blur
# --------------------------------------------------------------------------

def test_blur_recovers_the_gaussian_blur_of_wide_streaks():
    sharp = _segments((256, 256), 14, 15.0, 60, 9, seed=10)
    assert layer_stats(sharp)["blur_px"] < 0.6
    found = []
    for b in (1.0, 2.0):
        st = layer_stats(ndimage.gaussian_filter(sharp, b))
        found.append(st["blur_px"])
        assert abs(st["blur_px"] - b) < 0.2 * b, (b, st["blur_px"])
    assert found[0] < found[1]


def test_blur_does_not_depend_on_direction():
    values = [layer_stats(ndimage.gaussian_filter(_segments((200, 200), 12, a, 50, 9, seed=11), 1.5))["blur_px"]
              for a in (0.0, 30.0, 45.0)]
    assert max(values) - min(values) < 0.15


# --------------------------------------------------------------------------
# masks, degenerate layers, summaries
# --------------------------------------------------------------------------

def test_invalid_pixels_do_not_count():
    layer = _segments((200, 200), 25, 20.0, 20, 3, seed=12)
    valid = np.ones(layer.shape, dtype=bool)
    valid[50:120, 60:140] = False
    garbage = layer.copy()
    garbage[~valid] = np.random.default_rng(0).uniform(0.5, 1.0, (~valid).sum())
    a = layer_stats(np.where(valid, layer, 0.0), valid)
    b = layer_stats(garbage, valid)
    for k in ("coverage", "bright_p50", "bright_p90", "bright_p99", "veil", "valid_fraction"):
        assert a[k] == pytest.approx(b[k], abs=1e-12), k
    assert abs(b["angle_deg"] - 20.0) < 1.5
    assert abs(b["width_px"] - 3.0) < 0.5 and abs(b["length_px"] - 20.0) < 3.0
    assert b["valid_fraction"] == pytest.approx(1 - 70 * 80 / 200 ** 2)


def test_layer_without_rain():
    st = layer_stats(np.full((64, 64), 0.1))
    assert list(st) == list(STAT_NAMES)
    assert st["coverage"] == 0.0 and st["veil"] == pytest.approx(0.1)
    assert math.isnan(st["angle_deg"]) and math.isnan(st["width_px"]) and math.isnan(st["blur_px"])
    st = layer_stats(np.zeros((16, 16)), np.zeros((16, 16), dtype=bool))
    assert st["valid_fraction"] == 0.0 and math.isnan(st["coverage"])


def test_summarise_dicts_and_layers():
    rows = [{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 2.0}, {"a": 2.0, "c": 5.0}]
    out = summarise(rows)
    assert list(out) == ["a", "b", "c"]
    assert out["a"] == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert out["b"]["n"] == 1 and out["b"]["std"] == 0.0 and out["b"]["mean"] == 2.0
    assert out["c"]["n"] == 1
    assert summarise([{"x": float("nan")}])["x"]["n"] == 0

    layers = [_segments((128, 128), 12, a, 20, 3, seed=13) for a in (-10.0, 10.0)]
    out = summarise([layers[0], (layers[1], np.ones((128, 128), dtype=bool))], threshold=0.1)
    direct = [layer_stats(x, threshold=0.1) for x in layers]
    assert set(out) == set(STAT_NAMES)
    assert out["angle_deg"]["mean"] == pytest.approx(np.mean([d["angle_deg"] for d in direct]))
    assert out["angle_deg"]["min"] < -9 and out["angle_deg"]["max"] > 9


# --------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_heavy_pair(data_root):
    from PIL import Image

    folder = Path(data_root) / "train" / "RainTrainH-sample18"
    rainy = np.asarray(Image.open(folder / "rainy" / "norain-2.png").convert("RGB"))
    clean = np.asarray(Image.open(folder / "clean" / "norain-2.png").convert("RGB"))
    o, b = rainy / 255.0, clean / 255.0
    # These pairs are additive: O - B is the same grey value on every unsaturated channel.
    s, valid = rain_layer(rainy, clean, blend="additive")
    assert valid.mean() > 0.95
    recomposed = np.clip(b + s[:, :, None], 0, 1)
    assert np.abs(recomposed - o)[valid].max() <= 0.5 / 255 + 1e-9
    st = layer_stats(s, valid)
    # measured on this pair: near-vertical, slightly left-leaning, sparse, thin and long rain
    assert abs(st["angle_deg"] - (-4.5)) < 3.0
    assert st["angle_spread_deg"] < 8.0
    assert 1.5 < st["width_px"] < 4.0 and st["length_px"] > 30.0
    assert 0.1 < st["coverage"] < 0.35 and st["veil"] < 0.02
    # the screen reading of the same pair is brighter where the background is bright
    s_scr, v_scr = rain_layer(rainy, clean, blend="screen")
    both = valid & v_scr
    assert (s_scr[both] >= s[both] - 1e-9).all()
