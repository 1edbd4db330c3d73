"""Statistics of the look of rain streaks, for comparing synthetic rain to real rain.

A rainy image ``O`` is a clean background ``B`` with a rain layer ``S`` composed
over it.  Given an aligned (rainy, clean) pair, :func:`rain_layer` inverts the
composition and returns ``S`` (an HxW map in [0, 1]) with a mask of the pixels
where the inversion is defined.  :func:`layer_stats` then describes ``S`` by a
small set of numbers that a rain renderer controls (streak orientation, width,
length, brightness, density, blur and veil), so that the suite's renderer
(:mod:`datasets.rain`) can be compared to, and fitted to, real rain.  The same
statistics are computed for real and synthetic layers, so real and synthetic
rain should be rendered over the same backgrounds and measured with the same
settings.

Two blend models are supported, because rain is composed both ways in practice:

* ``"screen"``  ``O = 1 - (1 - B)(1 - S)``  (the suite's renderer), and
* ``"additive"``  ``O = min(B + S, 1)``  (e.g. the Rain100H authors' pipeline:
  in their released pairs ``O - B`` is the same on all three channels wherever
  ``O`` is not saturated, which only an additive grey layer produces).

Measure each source with the blend it was made with; a wrong model distorts
``S`` by a background-dependent factor ``1 / (1 - B)``.

Conventions.  Angles are in degrees from vertical, positive leaning right like
italic text ("/": the top of the streak is to the right of its bottom), the
same convention as :func:`datasets.rain.line_kernel`; they lie in (-90, 90].
Lengths are in pixels.  The streak statistics are computed on the veil-free
layer ``R = clip(S - V, 0, 1)``, where ``V`` is the veil map of
:func:`veil_map`; "streak pixels" are valid pixels with ``R > threshold``.

Only numpy and scipy are used; everything is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

__all__ = [
    "STAT_NAMES",
    "rain_layer",
    "veil_map",
    "layer_stats",
    "brightness_histogram",
]

# Observed values at or above this are saturated (the top uint8 level): they
# only bound the rain layer from below.
_SATURATED = 1.0 - 0.5 / 255.0

#: Keys of the dict returned by :func:`layer_stats`, in order.
STAT_NAMES: tuple[str, ...] = (
    "angle_deg",
    "angle_spread_deg",
    "coherence",
    "width_px",
    "length_px",
    "bright_p50",
    "bright_p90",
    "bright_p99",
    "coverage",
    "blur_px",
    "veil",
    "valid_fraction",
)


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------

def _as_unit(img: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must be float in [0, 1] or uint8, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return np.clip(a, 0.0, 1.0)


def _check_layer(layer: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    s = _as_unit(layer, "layer")
    if s.ndim != 2:
        raise ValueError(f"layer must be HxW, got shape {s.shape}")
    if valid is None:
        v = np.ones(s.shape, dtype=bool)
    else:
        v = np.asarray(valid, dtype=bool)
        if v.shape != s.shape:
            raise ValueError(f"valid mask shape {v.shape} != layer shape {s.shape}")
    return s, v


# --------------------------------------------------------------------------
# 1. layer extraction
# --------------------------------------------------------------------------

def rain_layer(
    rainy: np.ndarray,
    clean: np.ndarray,
    guard: float = 0.1,
    blend: str = "screen",
) -> tuple[np.ndarray, np.ndarray]:
    """Invert the rain composition of an aligned pair: return ``(S, valid)``.

    rainy, clean: HxWx3 (or HxW) float in [0, 1] (uint8 is accepted and
        divided by 255), the same shape.
    guard: screen blend only.  The inversion ``S = 1 - (1 - O) / (1 - B)``
        divides by ``1 - B``; where ``1 - B < guard`` the channel is treated as
        undefined, because the quantisation error of ``O`` and ``B`` (half a
        grey level each) is amplified by about ``1 / (1 - B)``.  With the
        default 0.1 and 8-bit images that error stays below 0.04, under the
        default streak threshold of :func:`layer_stats`.
    blend: ``"screen"`` (inverse ``1 - (1 - O)/(1 - B)``) or ``"additive"``
        (inverse ``O - B``).

    Each channel is inverted separately.  A channel is valid where its guard
    holds and ``O`` is not saturated (``O < 1 - 0.5/255``): a saturated
    observation only says ``S >= O - B`` under any blend that clips, and it is
    where additive rain over bright backgrounds loses its brightness.  Rain is
    white (the same ``S`` on every channel), so ``S`` is the mean of the
    per-channel estimates over the valid channels; this averages down
    quantisation noise and lets a pixel with one saturated channel still be
    measured.  ``valid`` is True where at least one channel is valid.  At
    invalid pixels ``S`` is filled with ``clip(mean(O - B), 0, 1)``, a lower
    bound of the true layer under both blends, so that ``S`` stays defined
    for filtering; statistics must ignore those pixels (pass ``valid`` on).

    Returns ``S`` float64 HxW clipped to [0, 1] and ``valid`` bool HxW.
    """
    o = _as_unit(rainy, "rainy")
    b = _as_unit(clean, "clean")
    if o.shape != b.shape:
        raise ValueError(f"rainy {o.shape} and clean {b.shape} differ in shape")
    if o.ndim == 2:
        o, b = o[:, :, None], b[:, :, None]
    elif o.ndim != 3:
        raise ValueError(f"expected HxWx3 or HxW images, got shape {o.shape}")
    if not guard > 0:
        raise ValueError(f"guard must be > 0, got {guard}")

    ok = o < _SATURATED
    if blend == "screen":
        den = 1.0 - b
        ok &= den >= guard
        s_c = 1.0 - (1.0 - o) / np.where(ok, den, 1.0)
    elif blend == "additive":
        s_c = o - b
    else:
        raise ValueError(f"blend must be 'screen' or 'additive', got {blend!r}")
    s_c = np.clip(s_c, 0.0, 1.0)

    n_ok = ok.sum(axis=2)
    valid = n_ok > 0
    est = np.where(ok, s_c, 0.0).sum(axis=2) / np.maximum(n_ok, 1)
    lower = np.clip((o - b).mean(axis=2), 0.0, 1.0)
    s = np.where(valid, est, lower)
    return np.clip(s, 0.0, 1.0), valid


# --------------------------------------------------------------------------
# 2. statistics
# --------------------------------------------------------------------------

def veil_map(
    layer: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    block: int = 32,
    percentile: float = 10.0,
) -> tuple[np.ndarray, float]:
    """Large-scale veil (haze) component of a rain layer: ``(V, level)``.

    The image is cut into a grid of about ``block`` x ``block`` px tiles; in
    each tile the veil is the ``percentile``-th percentile of the valid ``S``
    values, i.e. the floor that the streaks sit on (streaks are thin and cover
    a minority of a tile, so a low percentile sees between them).  ``V`` is
    the bilinear interpolation of the tile values between tile centres
    (constant beyond the outer centres).  ``level`` is the median of the tile
    values: the scalar veil.  A uniform veil ``v`` under streaks covering less
    than ``100 - percentile`` % of every tile gives ``V == v`` and
    ``level == v`` exactly.  Tiles with fewer than a quarter of their pixels
    valid get ``level``.  Where rain is so dense that streaks cover more than
    ``100 - percentile`` % of a tile, overlapping streaks are counted as veil:
    the two cannot be told apart from one layer.
    """
    s, v = _check_layer(layer, valid)
    h, w = s.shape
    nr = max(1, int(round(h / block)))
    nc = max(1, int(round(w / block)))
    re = np.linspace(0, h, nr + 1).round().astype(int)
    ce = np.linspace(0, w, nc + 1).round().astype(int)
    tiles = np.full((nr, nc), np.nan)
    for i in range(nr):
        for j in range(nc):
            vals = s[re[i]:re[i + 1], ce[j]:ce[j + 1]][v[re[i]:re[i + 1], ce[j]:ce[j + 1]]]
            area = (re[i + 1] - re[i]) * (ce[j + 1] - ce[j])
            if vals.size >= max(1, area // 4):
                tiles[i, j] = np.percentile(vals, percentile)
    finite = np.isfinite(tiles)
    if finite.any():
        level = float(np.median(tiles[finite]))
    elif v.any():
        level = float(np.percentile(s[v], percentile))
    else:
        level = float("nan")
    tiles = np.where(finite, tiles, 0.0 if math.isnan(level) else level)

    def interp_matrix(n: int, edges: np.ndarray) -> np.ndarray:
        centres = 0.5 * (edges[:-1] + edges[1:] - 1)
        eye = np.eye(len(centres))
        return np.stack([np.interp(np.arange(n), centres, eye[k]) for k in range(len(centres))], axis=1)

    vmap = interp_matrix(h, re) @ tiles @ interp_matrix(w, ce).T
    return np.clip(vmap, 0.0, 1.0), level


def _orientation(r: np.ndarray, weight: np.ndarray, sigma_d: float, sigma_i: float) -> tuple[float, float, float]:
    """Weighted axial statistics of the structure-tensor orientation."""
    gr = ndimage.gaussian_filter(r, sigma_d, order=(1, 0), mode="nearest")
    gc = ndimage.gaussian_filter(r, sigma_d, order=(0, 1), mode="nearest")
    jrr = ndimage.gaussian_filter(gr * gr, sigma_i, mode="nearest")
    jcc = ndimage.gaussian_filter(gc * gc, sigma_i, mode="nearest")
    jrc = ndimage.gaussian_filter(gr * gc, sigma_i, mode="nearest")
    # Doubled-angle vector of the streak direction d = (cos t, -sin t) (row, col):
    # its gradient is along (sin t, cos t), so Jcc - Jrr ~ cos 2t and 2 Jrc ~ sin 2t.
    a = jcc - jrr
    b = 2.0 * jrc
    tr = jcc + jrr
    mag = np.hypot(a, b)
    tiny = 1e-12 * max(float(tr.max()), 1e-300)
    use = (weight > 0) & (mag > tiny)
    wsum = float(weight[use].sum())
    if wsum <= 0:
        return float("nan"), float("nan"), float("nan")
    wu = weight[use]
    z = complex(np.sum(wu * a[use] / mag[use]), np.sum(wu * b[use] / mag[use])) / wsum
    coh = float(np.sum(wu * mag[use] / tr[use]) / wsum)
    angle = 0.5 * math.degrees(math.atan2(z.imag, z.real))
    if angle <= -90.0:
        angle += 180.0
    rbar = min(abs(z), 1.0)
    spread = 0.5 * math.degrees(math.sqrt(-2.0 * math.log(rbar))) if rbar > 0 else float("inf")
    return angle, spread, coh


def _autocorrelation(r: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Masked, mean-removed, normalised autocorrelation (lag 0 at index [0, 0], periodic indexing)."""
    h, w = r.shape
    m = valid.astype(np.float64)
    x = np.where(valid, r - r[valid].mean(), 0.0)
    shape = (sfft.next_fast_len(2 * h, real=True), sfft.next_fast_len(2 * w, real=True))
    fx = sfft.rfft2(x, s=shape)
    fm = sfft.rfft2(m, s=shape)
    num = sfft.irfft2(fx * np.conj(fx), s=shape)
    cnt = sfft.irfft2(fm * np.conj(fm), s=shape)
    # Each lag is the mean product over the pixel pairs it sees; lags seen by
    # fewer than an eighth of the pairs at lag 0 are too noisy to use.
    good = cnt > max(cnt[0, 0] / 8.0, 0.5)
    ac = np.where(good, num / np.where(good, cnt, 1.0), np.nan)
    if not ac[0, 0] > 0:
        return np.full(shape, np.nan)
    return ac / ac[0, 0]


def _half_max_extent(
    ac: np.ndarray, u: tuple[float, float], v: tuple[float, float], max_lag: float, band: float, step: float = 0.25
) -> float:
    """Full width at half maximum of ``ac`` along unit direction ``u``, averaged over ``|s| <= band`` along ``v``.

    Averaging across a band (rather than reading one line of lags) keeps a
    thin, slanted ridge of the autocorrelation from being lost between
    lattice points by the interpolation, and tolerates a small error in the
    direction.  The search stops early where lags have too few valid pairs
    (NaN); without a crossing it returns twice the last lag searched.
    """
    t = np.arange(0.0, max_lag + step / 2, step)
    s = np.arange(-band, band + step / 2, step) if band > 0 else np.zeros(1)
    rr = t[:, None] * u[0] + s[None, :] * v[0]
    cc = t[:, None] * u[1] + s[None, :] * v[1]
    coords = np.stack([rr.ravel(), cc.ravel()])
    known = np.isfinite(ac)
    vals = ndimage.map_coordinates(np.where(known, ac, 0.0), coords, order=1, mode="grid-wrap")
    ok = ndimage.map_coordinates(known.astype(np.float64), coords, order=1, mode="grid-wrap")
    prof = vals.reshape(rr.shape).mean(axis=1)
    good = ok.reshape(rr.shape).min(axis=1) > 0.999
    n = int(np.argmin(good)) if not good.all() else len(t)
    if n < 2 or not prof[0] > 0:
        return float("nan")
    prof = prof[:n] / prof[0]
    below = np.nonzero(prof < 0.5)[0]
    if below.size == 0:
        return 2.0 * float(t[n - 1])
    i = int(below[0])
    p0, p1 = prof[i - 1], prof[i]
    return 2.0 * float(t[i - 1] + (p0 - 0.5) / (p0 - p1) * (t[i] - t[i - 1]))


def _blur(r: np.ndarray, streak: np.ndarray, sigma: float, radius: int) -> float:
    """Gaussian edge-blur estimate from the peak / maximum-gradient ratio around streak pixels."""
    g = ndimage.gaussian_gradient_magnitude(r, sigma, mode="nearest")
    size = 2 * radius + 1
    peak = ndimage.maximum_filter(r, size=size, mode="nearest")
    gmax = ndimage.maximum_filter(g, size=size, mode="nearest")
    use = streak & (gmax > 1e-12)
    if not use.any():
        return float("nan")
    ratio = float(np.median(peak[use] / gmax[use]))
    return math.sqrt(max(ratio * ratio / (2.0 * math.pi) - sigma * sigma, 0.0))


def _prepare(layer, valid, threshold, veil_block, veil_percentile):
    s, v = _check_layer(layer, valid)
    vmap, level = veil_map(s, v, block=veil_block, percentile=veil_percentile)
    r = np.clip(s - vmap, 0.0, 1.0)
    streak = v & (r > threshold)
    return s, v, r, streak, level


def layer_stats(
    layer: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    threshold: float = 0.05,
    veil_block: int = 32,
    veil_percentile: float = 10.0,
    sigma_d: float = 1.0,
    sigma_i: float = 2.0,
    max_lag: float | None = None,
    length_band: float = 3.0,
    width_band: float = 1.0,
    blur_sigma: float = 1.0,
    blur_radius: int = 4,
) -> dict[str, float]:
    """Describe the look of one rain layer by a flat dict of floats.

    layer: HxW rain layer ``S`` in [0, 1] (e.g. from :func:`rain_layer`).
    valid: HxW bool, pixels where ``S`` is known (default: all).  Invalid
        pixels take part in filtering with whatever value ``layer`` holds
        there but never in a statistic.

    First the veil ``V`` (:func:`veil_map` with ``veil_block`` and
    ``veil_percentile``) is removed: ``R = clip(S - V, 0, 1)``.  Streak
    pixels are the valid pixels with ``R > threshold``.  Keys
    (:data:`STAT_NAMES`):

    angle_deg, angle_spread_deg, coherence
        Orientation from the structure tensor of ``R``: Gaussian-derivative
        gradients at scale ``sigma_d``, their outer products smoothed at
        ``sigma_i``.  At each pixel the tensor gives a streak direction
        ``t`` (perpendicular to the dominant gradient) and a coherence
        ``c = (l1 - l2) / (l1 + l2)`` of its eigenvalues (1 for a straight
        line, 0 for an isotropic blob or a crossing).  Orientations are axial
        (``t`` and ``t + 180`` are the same), so they are averaged as doubled
        angles, weighted by the streak strength ``w = R`` on streak pixels:
        ``z = sum(w exp(2it)) / sum(w)``.  ``angle_deg = arg(z) / 2`` is the
        dominant direction; ``angle_spread_deg = sqrt(-2 ln|z|) / 2`` is the
        axial circular standard deviation (near 0 for one direction: only
        the streak ends, where the tensor turns, add a few degrees; two
        equal families at +-a give about ``a`` for small ``a``);
        ``coherence`` is the ``w``-weighted mean of ``c``.
    width_px, length_px
        From the autocorrelation ``A`` of ``R`` (mean removed, computed over
        valid pixels only and normalised per lag by the number of valid
        pairs).  ``length_px`` is the full width at half maximum of ``A``
        along the dominant direction, ``A`` being first averaged over lags
        within ``length_band`` px across it; ``width_px`` is the full width
        at half maximum across the dominant direction, ``A`` averaged over
        lags within ``width_band`` px along it.  (The band average keeps a
        thin slanted ridge of ``A`` from being lost between lattice points.)
        For isolated streaks with a flat (box) cross-section of width ``w``
        and a flat profile of length ``L`` these are ``w`` and ``L``; for a
        Gaussian cross-section of standard deviation ``s`` the width is
        ``2.355 * sqrt(2) * s``; pixel sampling adds a fraction of a px.
        Removing the mean is unbiased when streaks are placed independently
        of each other (as in real rain and in the suite's renderer); evenly
        spaced streaks that never overlap and cover a share ``c`` of the
        image read shorter and narrower, by up to a factor ``1 - c``.
        Lags up to ``max_lag`` (default half the smaller image side) are
        searched; a profile still above half its maximum there gives
        ``2 * max_lag``, a lower bound.  With several streak directions the
        length along the dominant one is shortened by the others, and
        streaks crossing each other or running side by side count as one
        wider or longer structure.
    bright_p50, bright_p90, bright_p99
        50th, 90th and 99th percentiles of ``S`` (veil included) over the
        streak pixels: how bright the streaks look.
    coverage
        Fraction of valid pixels that are streak pixels (``R > threshold``).
    blur_px
        Gaussian blur of the streak edges, in px (a standard deviation).  At
        each streak pixel ``p`` is the maximum of ``R`` and ``g`` the maximum
        of its gradient magnitude (Gaussian derivative at scale
        ``blur_sigma``) in the surrounding ``(2 * blur_radius + 1)``-px
        square; ``k`` is the median of ``p / g`` over the streak pixels.  A
        step edge blurred by a Gaussian of standard deviation ``b`` has
        ``p / g = sqrt(2 pi) * sqrt(b^2 + blur_sigma^2)``, so
        ``blur_px = sqrt(max(k^2 / (2 pi) - blur_sigma^2, 0))`` recovers
        ``b`` for streaks with a flat core a few px wider than their edges
        (and narrower than the square); a sharp edge on the pixel grid gives
        about 0.3 (the pixel's own footprint).  For thinner streaks the two
        edges merge and width reads as blur: a line whose cross-section is a
        single Gaussian of standard deviation ``s`` gives
        ``k = 1.65 (s^2 + blur_sigma^2) / s``.  Being built from a gradient
        magnitude and a square window, it does not depend on the streak
        direction.
    veil
        Scalar veil level from :func:`veil_map`: the median over tiles of
        the ``veil_percentile``-th percentile of ``S``.
    valid_fraction
        Fraction of pixels that are valid.

    Statistics that have no streak pixels to work on are NaN.
    """
    s, v, r, streak, level = _prepare(layer, valid, threshold, veil_block, veil_percentile)
    nan = float("nan")
    out: dict[str, float] = dict.fromkeys(STAT_NAMES, nan)
    out["valid_fraction"] = float(v.mean())
    out["veil"] = level
    n_valid = int(v.sum())
    if n_valid == 0:
        return out
    out["coverage"] = float(streak.sum() / n_valid)
    if not streak.any():
        return out

    q = np.percentile(s[streak], [50.0, 90.0, 99.0])
    out["bright_p50"], out["bright_p90"], out["bright_p99"] = (float(x) for x in q)

    weight = np.where(streak, r, 0.0)
    angle, spread, coh = _orientation(r, weight, sigma_d, sigma_i)
    out["angle_deg"], out["angle_spread_deg"], out["coherence"] = angle, spread, coh

    if math.isfinite(angle):
        h, w = s.shape
        lag = float(max_lag) if max_lag is not None else 0.5 * min(h, w)
        ac = _autocorrelation(r, v)
        th = math.radians(angle)
        along = (math.cos(th), -math.sin(th))
        across = (math.sin(th), math.cos(th))
        out["length_px"] = _half_max_extent(ac, along, across, lag, length_band)
        out["width_px"] = _half_max_extent(ac, across, along, lag, width_band)

    out["blur_px"] = _blur(r, streak, blur_sigma, blur_radius)
    return out


def brightness_histogram(
    layer: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    bins: int = 50,
    threshold: float = 0.05,
    veil_block: int = 32,
    veil_percentile: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised histogram of ``S`` over the streak pixels, for plotting.

    Streak pixels are defined exactly as in :func:`layer_stats` (same
    ``threshold`` and veil settings).  Returns ``(hist, edges)``: ``bins``
    equal bins over [0, 1] (``edges`` has ``bins + 1`` entries) and the
    fraction of streak pixels in each, summing to 1 (all zeros when there
    are no streak pixels).
    """
    s, _, _, streak, _ = _prepare(layer, valid, threshold, veil_block, veil_percentile)
    counts, edges = np.histogram(s[streak], bins=bins, range=(0.0, 1.0))
    total = counts.sum()
    hist = counts / total if total > 0 else np.zeros(bins)
    return hist.astype(np.float64), edges


# --------------------------------------------------------------------------
# 3. summaries over a set
# --------------------------------------------------------------------------

