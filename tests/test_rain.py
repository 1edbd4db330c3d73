
import numpy as np
import pytest

from datasets.rain import (
    DDN_PRESET_NAMES,
    PRESETS,
    RainLayer,
    RainParams,
    add_rain,
    line_kernel,
    rain_mask,
    streak_layer,
)


def _clean(h=96, w=128, seed=123):
    """Smooth, mid-grey synthetic test image (no external data needed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 90 + 40 * np.sin(xx / 17.0) + 30 * np.cos(yy / 11.0)
    img = base[:, :, None] + rng.normal(0, 5, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_same_seed_bit_exact_and_different_seed_differs():
    img = _clean()
    for preset in ("light", "heavy"):
        a = add_rain(img, preset, seed=7)
        b = add_rain(img, preset, seed=7)
        c = add_rain(img, preset, seed=8)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_output_dtype_and_shape():
    img = _clean(50, 70)
    out = add_rain(img, "light", seed=0)
    assert out.dtype == np.uint8 and out.shape == (50, 70, 3)
    # float input in [0, 1] gives the same result as the uint8 image
    out_f = add_rain(img.astype(np.float64) / 255.0, "light", seed=0)
    assert out_f.dtype == np.uint8 and np.array_equal(out_f, out)
    # grey input keeps its layout
    grey = add_rain(img[:, :, 0], "heavy", seed=0)
    assert grey.dtype == np.uint8 and grey.shape == (50, 70)
    # input is not modified
    img2 = img.copy()
    add_rain(img2, "heavy", seed=1)
    assert np.array_equal(img, img2)


def test_streaks_are_white():
    img = _clean()
    params = RainParams(layers=(RainLayer(0.01, 15, 0, 0, 0.5, 0.8),))
    out = add_rain(np.full_like(img, 100), params, seed=3).astype(int)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert (out >= 100).all() and out.max() > 150


def test_light_weaker_than_heavy():
    img = _clean()
    diffs = {}
    for preset in ("light", "medium", "heavy"):
        out = add_rain(img, preset, seed=5)
        diffs[preset] = np.abs(out.astype(float) - img.astype(float)).mean()
    assert 0 < diffs["light"] < diffs["medium"] < diffs["heavy"]


def _autocorr(m, dr, dc):
    z = m - m.mean()
    return float((z * np.roll(z, (dr, dc), axis=(0, 1))).sum() / (z * z).sum())


@pytest.mark.parametrize("angle, vertical", [(0.0, True), (90.0, False)])
def test_streak_direction(angle, vertical):
    layer = RainLayer(density=0.005, length=15, angle=angle, angle_jitter=0, width=0, intensity=0.8)
    m = streak_layer((120, 120), layer, np.random.default_rng(0))
    v = _autocorr(m, 2, 0)
    h = _autocorr(m, 0, 2)
    if vertical:
        assert v > h + 0.3
    else:
        assert h > v + 0.3


def test_positive_angle_leans_right():
    k = line_kernel(21, 30)
    rows, cols = np.nonzero(k > 0.5 * k.max())
    # "/"-shaped: going down (row up) moves left (col down) -> negative correlation
    assert np.corrcoef(rows, cols)[0, 1] < -0.9


@pytest.mark.parametrize("length", [1, 2.5, 7, 16, 33])
@pytest.mark.parametrize("angle", [0, 13, -45, 90])
def test_kernel_sums_to_one(length, angle):
    k = line_kernel(length, angle)
    assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert (k >= 0).all()
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    # the line passes through the kernel centre
    c = k.shape[0] // 2
    assert k[c - 1 : c + 2, c - 1 : c + 2].sum() > 0


def test_kernel_extent_matches_length():
    k = line_kernel(20, 0)
    rows = np.nonzero(k.sum(axis=1) > 1e-9)[0]
    assert 19 <= rows.max() - rows.min() + 1 <= 22


def test_streak_peaks_reach_intensity():
    layer = RainLayer(density=2e-4, length=20, angle=0, angle_jitter=0, width=0.7, intensity=0.7)
    m = streak_layer((200, 200), layer, np.random.default_rng(1))
    assert m.dtype == np.float64 and m.shape == (200, 200)
    assert 0.0 <= m.min() and m.max() <= 1.0
    # isolated drops (brightness 0.6..1) peak at 0.6..1 times the intensity
    assert 0.6 * 0.7 - 1e-9 <= m.max() <= 0.7 + 1e-9


def test_rain_mask_range_and_layers():
    rng = np.random.default_rng(2)
    m = rain_mask((64, 80), PRESETS["heavy"], rng)
    assert m.shape == (64, 80) and m.dtype == np.float64
    assert 0.0 <= m.min() and m.max() <= 1.0 and m.max() > 0
    m_name = rain_mask((64, 80), "heavy", np.random.default_rng(2))
    assert np.array_equal(m, rain_mask((64, 80), PRESETS["heavy"], np.random.default_rng(2)))
    assert np.array_equal(m, m_name)


def test_veil_raises_mean_brightness():
    img = _clean()
    layers = (RainLayer(0.003, 12, 0, 5, 0.5, 0.6),)
    plain = add_rain(img, RainParams(layers=layers, veil=0.0), seed=11)
    veiled = add_rain(img, RainParams(layers=layers, veil=0.3), seed=11)
    assert veiled.mean() > plain.mean() + 10
    # veil lowers contrast
    assert veiled.astype(float).std() < plain.astype(float).std()


def test_additive_blend_at_least_as_bright_as_screen():
    img = _clean()
    layers = (RainLayer(0.005, 15, 0, 0, 0.5, 0.8),)
    screen = add_rain(img, RainParams(layers=layers, blend="screen"), seed=4).astype(int)
    additive = add_rain(img, RainParams(layers=layers, blend="additive"), seed=4).astype(int)
    assert (additive >= screen - 1).all() and additive.mean() > screen.mean()


def test_presets_and_validation():
    assert {"light", "heavy"} <= set(PRESETS)
    assert len(DDN_PRESET_NAMES) == 14 and all(n in PRESETS for n in DDN_PRESET_NAMES)
    assert PRESETS["heavy"].veil > 0 and len(PRESETS["heavy"].layers) > 1
    assert len(PRESETS["light"].layers) == 1 and PRESETS["light"].veil == 0
    with pytest.raises(KeyError):
        add_rain(_clean(), "no-such-rain", seed=0)
    with pytest.raises(ValueError):
        RainParams(layers=(), blend="multiply")
    with pytest.raises(ValueError):
        RainLayer(density=2.0, length=10)


def test_presets_follow_rain100_recipe():
    light, heavy = PRESETS["light"], PRESETS["heavy"]
    # Rain100H: several streak directions; stronger, longer, wider streaks than Rain100L
    assert len({layer.angle for layer in heavy.layers}) >= 3
    (lt,) = light.layers
    assert max(l.length for l in heavy.layers) > lt.length
    assert max(l.width for l in heavy.layers) > lt.width
    assert max(l.intensity for l in heavy.layers) > lt.intensity
    assert sum(l.density for l in heavy.layers) > lt.density


def test_wrap_convolution_matches_ndimage():
    from scipy import ndimage

    from datasets.rain import _wrap_convolve

    rng = np.random.default_rng(0)
    x = rng.random((40, 57)) * (rng.random((40, 57)) < 0.02)
    for length, angle in ((5, 0), (17, 23), (33, -60)):
        k = line_kernel(length, angle)
        assert np.allclose(_wrap_convolve(x, k), ndimage.convolve(x, k, mode="wrap"), atol=1e-12)


def test_brightness_range_and_shared_angle():
    layer = RainLayer(density=2e-4, length=20, angle=0, width=0.0, intensity=0.7, brightness=(0.2, 0.4))
    m = streak_layer((200, 200), layer, np.random.default_rng(1))
    assert m.max() <= 0.4 * 0.7 + 1e-9
    with pytest.raises(ValueError):
        RainLayer(density=0.01, length=10, brightness=(0.8, 0.5))
    with pytest.raises(ValueError):
        RainParams(layers=(), angle_jitter=-1.0)
    # the shared per-image rotation turns a vertical layer away from vertical
    vert = RainLayer(density=0.005, length=15, angle=0, width=0, intensity=0.8)
    rot = RainParams(layers=(vert,), angle_jitter=90.0)
    a = rain_mask((120, 120), RainParams(layers=(vert,)), np.random.default_rng(4))
    b = rain_mask((120, 120), rot, np.random.default_rng(4))
    assert not np.array_equal(a, b)


def test_ddn_mixture_picks_one_of_the_14_types_per_seed():
    from datasets.rain import DDN_PRESET_NAMES

    img = _clean()
    outs = {add_rain(img, "ddn", seed=s).tobytes() for s in range(12)}
    assert len(outs) == 12
    picked = [next(n for n in DDN_PRESET_NAMES if np.array_equal(add_rain(img, n, seed=s), add_rain(img, "ddn", seed=s)))
              for s in range(6)]
    assert len(set(picked)) > 1


# --------------------------------------------------------------------------
# the "-real" presets (fitted to real heavy rain) and the additive blend
# --------------------------------------------------------------------------

def test_real_presets_exist_render_deterministically_and_are_additive():
    from datasets.rain import HEAVY_REAL_FIT

    img = _clean()
    for preset in ("heavy-real", "light-real"):
        params = PRESETS[preset]
        assert params.blend == "additive" and params.veil == 0.0
        a = add_rain(img, preset, seed=3)
        assert np.array_equal(a, add_rain(img, preset, seed=3))
        assert not np.array_equal(a, add_rain(img, preset, seed=4))
        assert a.dtype == np.uint8 and a.shape == img.shape and (a >= img).all()
    heavy, light = PRESETS["heavy-real"], PRESETS["light-real"]
    assert len(heavy.layers) == 3 and len(light.layers) == 1
    # the same streak shape and slant; light-real is sparser and has no haze
    (lt,) = light.layers
    for layer in heavy.layers:
        assert (layer.length, layer.width, layer.brightness) == (lt.length, lt.width, lt.brightness)
    assert light.angle_jitter == heavy.angle_jitter and lt.angle == pytest.approx(HEAVY_REAL_FIT["angle"])
    assert lt.density < sum(layer.density for layer in heavy.layers)
    assert light.haze == 0.0 and heavy.haze == pytest.approx(HEAVY_REAL_FIT["haze"])
    assert np.mean([layer.angle for layer in heavy.layers]) == pytest.approx(HEAVY_REAL_FIT["angle"])


def test_old_presets_keep_their_numbers():
    # results made with these presets must stay reproducible: no haze, screen blend, the calibrated numbers
    for name in ("light", "medium", "heavy", *DDN_PRESET_NAMES):
        assert PRESETS[name].haze == 0.0 and PRESETS[name].blend == "screen"
    (lt,) = PRESETS["light"].layers
    assert (lt.density, lt.length, lt.width, lt.intensity) == (0.0026, 24.0, 0.3, 0.63)
    heavy = PRESETS["heavy"]
    assert heavy.veil == 0.15 and heavy.angle_jitter == 15.0
    assert [l.density for l in heavy.layers] == [0.00226, 0.00186, 0.00186, 0.00136, 0.00136]


def test_additive_blend_is_min_of_sum():
    img = _clean()
    params = RainParams(layers=(RainLayer(0.01, 15, 5, 0, 0.6, 0.9),), blend="additive", haze=0.05)
    out = add_rain(img, params, seed=9)
    s = rain_mask(img.shape[:2], params, np.random.default_rng(9))
    expected = np.rint(np.clip(img / 255.0 + s[:, :, None], 0.0, 1.0) * 255.0).astype(np.uint8)
    assert np.array_equal(out, expected)
    # the haze is part of the layer: a uniform floor on it
    no_haze = rain_mask(img.shape[:2], RainParams(layers=params.layers, blend="additive"), np.random.default_rng(9))
    np.testing.assert_allclose(s, np.clip(no_haze + 0.05, 0, 1))
    with pytest.raises(ValueError):
        RainParams(layers=(), haze=1.5)


def test_real_rain_params_fans_directions():
    from datasets.rain import real_rain_params

    p = real_rain_params(density=0.009, length=50, width=0.6, intensity=0.4, low=0.1, fan=5.0, angle=-2.0,
                         angle_jitter=8.0, haze=0.01, directions=3)
    assert [l.angle for l in p.layers] == pytest.approx([-7.0, -2.0, 3.0])
    assert sum(l.density for l in p.layers) == pytest.approx(0.009)
    assert all(l.brightness == (0.1, 1.0) and l.angle_jitter == 0.0 for l in p.layers)
    one = real_rain_params(density=0.003, length=50, width=0.6, intensity=0.4, low=0.1, fan=5.0, directions=1)
    assert len(one.layers) == 1 and one.layers[0].angle == 0.0
    with pytest.raises(ValueError):
        real_rain_params(density=0.003, length=50, width=0.6, intensity=0.4, low=0.1, directions=0)


def test_amount_spread_varies_the_rain_per_image_and_zero_draws_nothing():
    from datasets.rain import HEAVY_REAL_SPREAD, real_rain_params

    img = _clean()
    shape = dict(density=0.01, length=30, width=0.6, intensity=0.4, low=0.1, fan=4.0, haze=0.02)
    fixed, spread = real_rain_params(**shape), real_rain_params(**shape, amount_spread=0.8)
    # without a spread nothing extra is drawn: the layer is the one of the same seed's stream
    assert np.array_equal(rain_mask(img.shape[:2], fixed, np.random.default_rng(5)),
                          rain_mask(img.shape[:2], RainParams(layers=fixed.layers, blend="additive", haze=0.02),
                                    np.random.default_rng(5)))

    def log_amounts(params):
        return np.log([np.mean(add_rain(img, params, s).astype(float) - img) for s in range(24)])

    assert np.std(log_amounts(spread)) > 3 * np.std(log_amounts(fixed))
    assert np.array_equal(add_rain(img, spread, 7), add_rain(img, spread, 7))
    with pytest.raises(ValueError):
        real_rain_params(**shape, amount_spread=-0.1)
    # the preset: heavy-real's shape, scaled density and haze, and the spread
    heavy, wide = PRESETS["heavy-real"], PRESETS["heavy-real-spread"]
    assert heavy.amount_spread == 0.0 and wide.amount_spread == HEAVY_REAL_SPREAD["amount_spread"]
    for a, b in zip(heavy.layers, wide.layers):
        assert b.density == pytest.approx(a.density * HEAVY_REAL_SPREAD["amount_scale"]) and a.length == b.length
