"""Image-quality metrics under the deraining field's MATLAB conventions.

Every function is pure, computes in float64 and takes the protocol as arguments.

The convention the deraining papers report (JORDER, DDN, PReNet's statistic.m, and
ResGuideNet's Table 2) is:

* the output is saved as an 8-bit PNG first, so it is rounded to uint8 with MATLAB's
  ``im2uint8`` rounding (half away from zero) and clipped to [0, 255];
* images are read with ``im2double`` (uint8 / 255) and converted with MATLAB's
  ``rgb2ycbcr`` for double input, keeping the luma channel
  ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255`` (values in [16/255, 235/255]);
* PSNR uses peak 1 on that double Y: ``10 log10(1 / MSE)``;
* SSIM is Wang et al.'s ``ssim_index``: an 11x11 Gaussian window with sigma 1.5,
  K1 = 0.01, K2 = 0.03, dynamic range L = 255 applied to ``Y * 255``, statistics from
  'valid' filtering (no padding), mean of the SSIM map.

The RGB variants apply the same PSNR to all three channels at once and average the
per-channel SSIM.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "to_uint8",
    "rgb2y",
    "psnr",
    "ssim",
    "gaussian_window",
    "image_metrics",
    "PROTOCOL",
]

#: Stored in every result cell; bump ``version`` whenever a metric's numbers change.
PROTOCOL = {
    "name": "matlab-ycbcr",
    "version": 1,
    "rounding": "uint8 (MATLAB im2uint8: round half away from zero, clip)",
    "y": "MATLAB rgb2ycbcr on double input, luma channel, range [16/255, 235/255]",
    "psnr": "peak 1 on [0,1] values",
    "ssim": "Wang et al. ssim_index: 11x11 Gaussian sigma 1.5, K=(0.01,0.03), L=255, valid region",
}


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round a float image in [0, 1] to uint8 like MATLAB's ``im2uint8``; uint8 passes through."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    scaled = np.asarray(img, dtype=np.float64) * 255.0
    if not np.all(np.isfinite(scaled)):
        raise ValueError("image holds NaN or Inf values")
    # MATLAB rounds half away from zero; values are clipped to [0, 255] first.
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def _as_double(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    return img.astype(np.float64)


def rgb2y(img: np.ndarray) -> np.ndarray:
    """Luma of MATLAB's ``rgb2ycbcr`` for double input; uint8 input is read as ``im2double``."""
    rgb = _as_double(img)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    return (16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB between two arrays of the same shape; ``inf`` when they are equal."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)`` (the 2-D window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation with the symmetric window ``outer(g, g)``."""
    n = g.size
    h, w = img.shape
    if h < n or w < n:
        raise ValueError(f"image {h}x{w} is smaller than the {n}x{n} SSIM window")
    rows = np.lib.stride_tricks.sliding_window_view(img, n, axis=0) @ g  # (h-n+1, w)
    return np.lib.stride_tricks.sliding_window_view(rows, n, axis=1) @ g  # (h-n+1, w-n+1)


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 255.0,
    k1: float = 0.01,
    k2: float = 0.03,
    win_size: int = 11,
    sigma: float = 1.5,
) -> float:
    """Mean SSIM of two single-channel images on the valid region (Wang et al.'s ``ssim_index``).

    ``a`` and ``b`` must already be on the scale that ``data_range`` describes
    (e.g. ``Y * 255`` with ``data_range=255``).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two equal 2-D images, got {a.shape} and {b.shape}")
    g = gaussian_window(win_size, sigma)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_a = _filter_valid(a, g)
    mu_b = _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a * mu_a
    var_b = _filter_valid(b * b, g) - mu_b * mu_b
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def mean_offset_y(output: np.ndarray, target: np.ndarray) -> float:
    """Mean luma of ``output`` minus that of ``target``, in grey levels (0-255): how much brighter
    (positive) or darker the output is overall.  Rounded to uint8 and Y as :func:`image_metrics`."""
    out8, tgt8 = to_uint8(output), to_uint8(target)
    if out8.shape != tgt8.shape:
        raise ValueError(f"output shape {out8.shape} differs from target shape {tgt8.shape}")
    return 255.0 * float(np.mean(rgb2y(out8) - rgb2y(tgt8)))


def image_metrics(output: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """All four numbers the suite reports for one image pair.

    ``output`` may be float in [0, 1] (a model's output; it is rounded to uint8 as a
    saved PNG would be) or uint8; ``target`` is the clean uint8 image. Both HxWx3 RGB.
    """
    out8 = to_uint8(output)
    tgt8 = to_uint8(target)
    if out8.shape != tgt8.shape:
        raise ValueError(f"output shape {out8.shape} differs from target shape {tgt8.shape}")
    y_out, y_tgt = rgb2y(out8), rgb2y(tgt8)
    rgb_out, rgb_tgt = _as_double(out8), _as_double(tgt8)
    return {
        "psnr_y": psnr(y_out, y_tgt),
        "ssim_y": ssim(y_out * 255.0, y_tgt * 255.0),
        "psnr_rgb": psnr(rgb_out, rgb_tgt),
        "ssim_rgb": float(
            np.mean([ssim(rgb_out[..., c] * 255.0, rgb_tgt[..., c] * 255.0) for c in range(3)])
        ),
    }
