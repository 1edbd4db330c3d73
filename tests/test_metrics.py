"""Golden values for the MATLAB-convention metrics, derived independently."""
import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from core.metrics import gaussian_window, image_metrics, psnr, rgb2y, ssim, to_uint8


def _pair(seed=0, shape=(40, 52, 3)):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, shape, dtype=np.uint8)
    noisy = np.clip(clean.astype(int) + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)
    return noisy, clean


def test_rgb2y_matches_matlab_extremes():
    black = np.zeros((2, 2, 3), np.uint8)
    white = np.full((2, 2, 3), 255, np.uint8)
    assert np.allclose(rgb2y(black), 16 / 255)
    assert np.allclose(rgb2y(white), 235 / 255)  # 16 + 65.481 + 128.553 + 24.966 = 235
    # a pure red pixel: MATLAB rgb2ycbcr([1 0 0]) gives Y = (16 + 65.481) / 255
    red = np.zeros((1, 1, 3)); red[..., 0] = 1.0
    assert rgb2y(red)[0, 0] == pytest.approx((16 + 65.481) / 255, abs=1e-15)


def test_to_uint8_rounds_half_away_from_zero_and_clips():
    x = np.array([0.5, 1.5, 2.5, 254.5, -3.0, 300.0]) / 255.0
    assert to_uint8(x).tolist() == [1, 2, 3, 255, 0, 255]
    with pytest.raises(ValueError):
        to_uint8(np.array([np.nan]))


def test_gaussian_window_is_matlab_fspecial():
    g = gaussian_window(11, 1.5)
    w = np.outer(g, g)
    x = np.arange(-5, 6)
    ref = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5 ** 2))
    assert np.allclose(w, ref / ref.sum(), atol=1e-15)


def test_psnr_hand_value():
    a = np.zeros((4, 4))
    b = np.full((4, 4), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert math.isinf(psnr(a, a))


def test_ssim_of_constant_images_closed_form():
    # zero variance: SSIM = (2 p q + C1) / (p^2 + q^2 + C1)
    p, q = 100.0, 120.0
    c1 = (0.01 * 255) ** 2
    got = ssim(np.full((20, 20), p), np.full((20, 20), q))
    assert got == pytest.approx((2 * p * q + c1) / (p * p + q * q + c1), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_scikit_image_with_matlab_settings(seed):
    noisy, clean = _pair(seed)
    ya, yb = rgb2y(noisy) * 255, rgb2y(clean) * 255
    ref = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=255)
    assert ssim(ya, yb) == pytest.approx(ref, abs=1e-12)


def test_image_metrics_against_scikit_image():
    noisy, clean = _pair(3)
    m = image_metrics(noisy, clean)
    ya, yb = rgb2y(noisy), rgb2y(clean)
    assert m["psnr_y"] == pytest.approx(peak_signal_noise_ratio(yb, ya, data_range=1.0), abs=1e-12)
    assert m["psnr_rgb"] == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=255), abs=1e-9)
    per_channel = [structural_similarity(noisy[..., c].astype(float), clean[..., c].astype(float),
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=255) for c in range(3)]
    assert m["ssim_rgb"] == pytest.approx(np.mean(per_channel), abs=1e-12)


def test_float_output_is_rounded_like_a_saved_png():
    noisy, clean = _pair(4)
    jitter = noisy / 255.0 + 0.4 / 255.0  # rounds back to the same uint8 values
    assert image_metrics(jitter, clean) == image_metrics(noisy, clean)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="smaller"):
        ssim(np.zeros((8, 30)), np.zeros((8, 30)))


def test_mean_offset_y_is_the_luma_shift_in_grey_levels():
    from core.metrics import mean_offset_y

    clean = np.full((8, 8, 3), 100, np.uint8)
    brighter = clean + np.uint8(10)  # +10 on R, G and B: luma +10 * (65.481 + 128.553 + 24.966) / 255
    assert mean_offset_y(brighter, clean) == pytest.approx(10 * 219.0 / 255.0)
    assert mean_offset_y(clean, brighter) == pytest.approx(-10 * 219.0 / 255.0)
    assert mean_offset_y(clean / 255.0, clean) == 0.0  # a float output is rounded like a saved PNG
    with pytest.raises(ValueError, match="shape"):
        mean_offset_y(clean[:4], clean)
