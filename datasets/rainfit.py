"""Measuring rain sources and fitting the renderer to the real rain.

:func:`measure_rain` and :func:`real_stats` put a rain source over backgrounds and measure its
layer (:mod:`datasets.rainstats`) and its rainy-input score; :func:`fit_heavy_real` fits the
``heavy-real`` preset to the statistics of the real training pairs (a split of them; the rest
check it), and :func:`calibrate_light_real` sets ``light-real``'s density and intensity so that
its rainy-input score on the clean training backgrounds matches Rain100L's published one.
Only training data is read.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import optimize

from core import metrics
from datasets.rain import HEAVY_REAL_FIT, RainParams, add_rain, real_rain_params, resolve
from datasets.rainstats import layer_stats, rain_layer
from datasets.training import deraining_backgrounds
from datasets.rainbank import FIT_STATS, HEAVY_TARGET, LIGHT_TARGET, load_pairs
from datasets.training import read_rgb


def rainy_input_score(rainy: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """``(psnr_y, ssim_y)`` of a rainy image against its clean one, as the suite reports them
    (``core.metrics``: uint8 rounding, MATLAB Y channel, PSNR peak 1, Wang et al.'s SSIM)."""
    y_o = metrics.rgb2y(metrics.to_uint8(rainy))
    y_b = metrics.rgb2y(metrics.to_uint8(clean))
    return metrics.psnr(y_o, y_b), metrics.ssim(y_o * 255.0, y_b * 255.0)



Render = Callable[[np.ndarray, int], np.ndarray]



def _renderer(rain: str | RainParams | Render) -> Render:
    if callable(rain) and not isinstance(rain, (str, RainParams)):
        return rain
    return lambda clean, seed: add_rain(clean, rain, seed)



def _blend_of(rain) -> str:
    if isinstance(rain, (str, RainParams)):
        return resolve(rain).blend
    return "additive"



def measure_rain(
    backgrounds: Sequence[np.ndarray],
    rain: str | RainParams | Render,
    seeds: Sequence[int],
    *,
    blend: str | None = None,
    stats: bool = True,
    score: bool = True,
) -> list[dict[str, float]]:
    """Render ``rain`` over each background (seed ``seeds[i]``) and measure it, one dict each.

    rain: a preset name, a RainParams or a callable ``(clean, seed) -> rainy uint8``.
    blend: how to invert the composition for the statistics (default: the preset's own blend;
        ``"additive"`` for a callable).  With ``stats`` the dict holds
        :func:`datasets.rainstats.layer_stats` of the recovered layer, measured exactly as the real
        pairs are; with ``score`` also ``psnr_y`` and ``ssim_y`` (:func:`rainy_input_score`).
    """
    if len(seeds) != len(backgrounds):
        raise ValueError(f"{len(backgrounds)} backgrounds but {len(seeds)} seeds")
    render = _renderer(rain)
    blend = blend or _blend_of(rain)
    rows = []
    for clean, seed in zip(backgrounds, seeds):
        rainy = render(clean, int(seed))
        row: dict[str, float] = {}
        if stats:
            row.update(layer_stats(*rain_layer(rainy, clean, blend=blend)))
        if score:
            row["psnr_y"], row["ssim_y"] = rainy_input_score(rainy, clean)
        rows.append(row)
    return rows



def real_stats(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], score: bool = True) -> list[dict[str, float]]:
    """:func:`layer_stats` of the additive layers of real ``(name, rainy, clean)`` pairs (and their scores)."""
    rows = []
    for _, rainy, clean in pairs:
        row = dict(layer_stats(*rain_layer(rainy, clean, blend="additive")))
        if score:
            row["psnr_y"], row["ssim_y"] = rainy_input_score(rainy, clean)
        rows.append(row)
    return rows



def training_backgrounds(data_root: str | Path, every: int = 1) -> list[tuple[str, np.ndarray]]:
    """The clean deraining training backgrounds (:func:`datasets.training.deraining_backgrounds`),
    every ``every``-th of them, as ``[(split/name, uint8 HxWx3)]``.  Nothing else is read."""
    files, _ = deraining_backgrounds(Path(data_root))
    return [(f"{f.parent.name}/{f.name}", read_rgb(f)) for f in files[::every]]



def _mean(rows: Sequence[dict[str, float]], key: str) -> float:
    vals = np.array([r[key] for r in rows], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else math.nan



# Free parameters of fit_heavy_real: (name, start, step of the first simplex, lower, upper).
_FREE = (
    ("density", 0.008, 0.002, 1e-4, 0.05),
    ("length", 56.0, 12.0, 5.0, 150.0),
    ("width", 0.65, 0.15, 0.2, 2.0),
    ("intensity", 0.35, 0.06, 0.05, 1.0),
    ("low", 0.2, 0.15, 0.0, 0.95),
    ("fan", 6.0, 2.0, 0.0, 20.0),
    ("haze", 0.01, 0.01, 0.0, 0.2),
)



@dataclass
class HeavyRealFit:
    """What :func:`fit_heavy_real` found.  ``values`` are the keyword arguments of
    :func:`datasets.rain.real_rain_params` (``directions`` apart); ``real`` and ``synthetic`` are
    :func:`datasets.rainstats.summarise` outputs on the fit pairs (synthetic with ``values``
    rendered over their clean backgrounds); ``score`` is the synthetic mean ``(psnr_y, ssim_y)``
    there; ``loss`` the objective; ``evaluations`` how many renders of the fit set it took."""

    values: dict[str, float]
    names: list[str]
    real: dict[str, dict[str, float]]
    synthetic: dict[str, dict[str, float]]
    score: tuple[float, float]
    loss: float
    evaluations: int

    def params(self, directions: int = 3) -> RainParams:
        return real_rain_params(**self.values, directions=directions)



def heavy_real_loss(
    synthetic_rows: Sequence[dict[str, float]],
    real_summary: dict[str, dict[str, float]],
    target: tuple[float, float] = HEAVY_TARGET,
    tolerance: tuple[float, float] = (0.25, 0.01),
) -> float:
    """The objective of :func:`fit_heavy_real`: for each statistic in :data:`FIT_STATS`, the squared
    distance of the synthetic mean from the real mean in units of the real standard deviation,
    plus the squared distances of the mean ``psnr_y`` and ``ssim_y`` from ``target`` in units of
    ``tolerance`` (a soft constraint)."""
    loss = 0.0
    for k in FIT_STATS:
        m = _mean(synthetic_rows, k)
        r = real_summary[k]
        sd = max(r["std"], 1e-3)
        loss += ((m - r["mean"]) / sd) ** 2 if math.isfinite(m) else 1e6
    if target is not None:
        loss += ((_mean(synthetic_rows, "psnr_y") - target[0]) / tolerance[0]) ** 2
        loss += ((_mean(synthetic_rows, "ssim_y") - target[1]) / tolerance[1]) ** 2
    return float(loss)



def fit_heavy_real(
    data_root: str | Path,
    names: Sequence[str] | None = None,
    *,
    seed: int = 1000,
    target: tuple[float, float] | None = HEAVY_TARGET,
    tolerance: tuple[float, float] = (0.25, 0.01),
    start: dict[str, float] | None = None,
    max_evaluations: int = 300,
    directions: int = 3,
    log: Callable[[str], None] | None = None,
) -> HeavyRealFit:
    """Fit the additive rain model of :func:`datasets.rain.real_rain_params` to real heavy rain.

    Procedure (deterministic):

    1. Read the fit pairs (``names``; default all but the last :data:`HOLDOUT` by number) and
       measure their additive layers with :func:`datasets.rainstats.layer_stats`.
    2. Slant, by moments: ``angle`` = the mean of the per-image dominant angles and
       ``angle_jitter`` = sqrt(3) x their sample standard deviation (a uniform per-image
       rotation with that spread).
    3. The rest (density, length, width, intensity, low, fan, haze) by Nelder-Mead (bounded,
       ``max_evaluations`` renders at most) on :func:`heavy_real_loss`: the synthetic rain is
       rendered over the *same* clean backgrounds as the real rain (background i with seed
       ``seed + i``, common random numbers so the objective is deterministic), measured the same
       way, and compared statistic by statistic to the real mean, with the published Rain100H
       rainy-input score ``target`` (mean Y PSNR and SSIM over those backgrounds) as a soft
       constraint of ``tolerance``.  ``target=None`` fits the statistics alone.

    The presets keep rounded values; check them with :func:`measure_rain`.
    """
    pairs = load_pairs(data_root, names)
    chosen = [n for n, _, _ in pairs]
    backgrounds = [clean for _, _, clean in pairs]
    seeds = [seed + i for i in range(len(pairs))]
    real_rows = real_stats(pairs, score=False)
    real = summarise(real_rows)
    angle = real["angle_deg"]["mean"]
    jitter = math.sqrt(3.0) * real["angle_deg"]["std"]
    fixed = {"angle": round(angle, 2), "angle_jitter": round(jitter, 2)}

    starts = {name: s for name, s, _, _, _ in _FREE}
    if start:
        starts.update({k: v for k, v in start.items() if k in starts})
    steps = np.array([st for _, _, st, _, _ in _FREE])
    bounds = [(lo / st, hi / st) for (_, _, st, lo, hi) in _FREE]
    x0 = np.array([starts[name] for name, *_ in _FREE]) / steps
    count = [0]
    best: dict[str, object] = {"loss": math.inf}

    def values_of(x: np.ndarray) -> dict[str, float]:
        v = {name: float(xi * st) for (name, *_), xi, st in zip(_FREE, x, steps)}
        return {**v, **fixed}

    def objective(x: np.ndarray) -> float:
        values = values_of(x)
        rows = measure_rain(backgrounds, real_rain_params(**values, directions=directions), seeds)
        loss = heavy_real_loss(rows, real, target, tolerance)
        count[0] += 1
        if loss < best["loss"]:
            best.update(loss=loss, values=values, rows=rows)
        if log is not None:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            log(f"[{count[0]}] loss {loss:.3f}  {shown}")
        return loss

    simplex = np.vstack([x0] + [x0 + np.eye(len(x0))[i] for i in range(len(x0))])
    optimize.minimize(
        objective, x0, method="Nelder-Mead", bounds=bounds,
        options={"initial_simplex": simplex, "maxfev": max_evaluations, "xatol": 0.02, "fatol": 0.01},
    )
    rows = best["rows"]
    return HeavyRealFit(
        values=dict(best["values"]),
        names=chosen,
        real=real,
        synthetic=summarise(rows),
        score=(_mean(rows, "psnr_y"), _mean(rows, "ssim_y")),
        loss=float(best["loss"]),
        evaluations=count[0],
    )



def rain_amount(rainy: np.ndarray, clean: np.ndarray) -> float:
    """The amount of rain in a pair: the mean luma the rain adds, Y on the 0-255 scale
    (``core.metrics``' MATLAB Y of the uint8 images); at least 0.5 (half a grey level)."""
    return max(metrics.mean_offset_y(rainy, clean), 0.5)


def fit_amount_spread(
    data_root: str | Path,
    names: Sequence[str] | None = None,
    *,
    rain: str | RainParams = "heavy-real",
    seed: int = 1000,
    renders: int = 4,
) -> dict[str, float]:
    """``amount_spread`` that gives ``rain`` the image-to-image spread of the amount of real rain.

    The fitted presets match the *mean* statistics of the real layers, but the amount of rain
    (:func:`rain_amount`) varies far more between the real pairs than between renders.  On the
    fit pairs (``names``; default all but the last :data:`HOLDOUT`), with ``renders`` renders of
    ``rain`` over each pair's clean background (seeds ``seed + renders * i + k``), the spread is
    the one that adds the missing variance of the log amount:
    ``sqrt(max(0, var_real - var_synthetic))`` (sample variances).  The amount is concave in the
    density, so a spread alone lowers the mean amount; ``amount_scale`` (on the density and the
    haze) then brings the mean amount of the spread renders back to the real one (two proportional
    corrections).  Returns both with the moments they came from, the last ones of the spread renders.
    """
    pairs = load_pairs(data_root, names)
    base = resolve(rain)

    def log_amounts(params: RainParams) -> np.ndarray:
        return np.log([rain_amount(add_rain(clean, params, seed + renders * i + k), clean)
                       for i, (_, _, clean) in enumerate(pairs) for k in range(renders)])

    real = np.log([rain_amount(rainy, clean) for _, rainy, clean in pairs])
    synthetic = log_amounts(base)
    spread = math.sqrt(max(0.0, float(real.var(ddof=1)) - float(synthetic.var(ddof=1))))
    scale = 1.0
    for _ in range(2):
        spread_rows = log_amounts(_scaled(base, scale, spread))
        scale *= float(np.exp(real).mean() / np.exp(spread_rows).mean())
    spread_rows = log_amounts(_scaled(base, scale, spread))
    return {"amount_spread": spread, "amount_scale": scale, "real_log_sd": float(real.std(ddof=1)),
            "synthetic_log_sd": float(synthetic.std(ddof=1)), "spread_log_sd": float(spread_rows.std(ddof=1)),
            "real_mean": float(np.exp(real).mean()), "synthetic_mean": float(np.exp(synthetic).mean()),
            "spread_mean": float(np.exp(spread_rows).mean()), "n_pairs": len(pairs)}


def _scaled(params: RainParams, scale: float, spread: float) -> RainParams:
    """``params`` scaled by ``scale`` (:meth:`RainParams.scaled`), with ``amount_spread``."""
    return replace(params.scaled(scale), amount_spread=spread)


def calibrate_light_real(
    data_root: str | Path,
    shape: dict[str, float] | None = None,
    *,
    target: tuple[float, float] = LIGHT_TARGET,
    every: int = 4,
    seed: int = 1000,
    fit_intensity: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Density (and intensity) of one-direction rain of the heavy-real shape that scores ``target``.

    ``shape`` (default ``datasets.rain.HEAVY_REAL_FIT``) gives length, width, low, angle and
    angle_jitter; the rain has one direction and no haze.  The backgrounds are every ``every``-th
    of :func:`training_backgrounds` (BSDS500 train + val minus the Rain100 backgrounds: 59 of the
    234 with ``every=4``, the protocol of the "light" preset), background i with seed
    ``seed + i``; the score is the mean Y PSNR / SSIM of the rainy inputs.  For a given
    intensity, the density that hits the PSNR target is found by bisection on log density (PSNR
    falls monotonically with density: drops are nested under common random numbers).  With
    ``fit_intensity`` the intensity is then solved the same way so that the SSIM also hits its
    target; otherwise the shape's intensity is kept and only PSNR is matched.  Returns
    ``{"density", "intensity", "psnr_y", "ssim_y"}``.
    """
    base = dict(HEAVY_REAL_FIT if shape is None else shape)
    base.update(fan=0.0, haze=0.0)
    images = [img for _, img in training_backgrounds(data_root, every=every)]
    seeds = [seed + i for i in range(len(images))]
    memo: dict[tuple[float, float], tuple[float, float]] = {}

    def score(density: float, intensity: float) -> tuple[float, float]:
        key = (density, intensity)
        if key not in memo:
            params = real_rain_params(**{**base, "density": density, "intensity": intensity}, directions=1)
            rows = measure_rain(images, params, seeds, stats=False)
            # an image without a single streak scores inf dB: count it as 100 dB so the mean stays finite
            psnr = [min(r["psnr_y"], 100.0) for r in rows]
            memo[key] = (float(np.mean(psnr)), _mean(rows, "ssim_y"))
            if log is not None:
                log(f"density={density:.5g} intensity={intensity:.4g}: {memo[key][0]:.3f} dB / {memo[key][1]:.4f}")
        return memo[key]

    def density_for(intensity: float) -> float:
        def psnr_gap(log_density: float) -> float:
            return score(math.exp(log_density), intensity)[0] - target[0]

        return math.exp(optimize.brentq(psnr_gap, math.log(1e-5), math.log(0.05), xtol=2e-3))

    def ssim_gap(intensity: float) -> float:
        return score(density_for(intensity), intensity)[1] - target[1]

    intensity = float(base["intensity"])
    if fit_intensity:
        intensity = optimize.brentq(ssim_gap, 0.1, 1.0, xtol=2e-3)
    density = density_for(intensity)
    p, s = score(density, intensity)
    return {"density": density, "intensity": intensity, "psnr_y": p, "ssim_y": s}


def summarise(items: Iterable, **stats_kwargs) -> dict[str, dict[str, float]]:
    """Per-statistic mean, std, min and max over a set of rain layers.

    items: each either a stats dict (from :func:`layer_stats`), an HxW layer,
        or a ``(layer, valid)`` pair; layers are measured with
        :func:`layer_stats` and ``stats_kwargs``.

    Returns ``{stat: {"mean", "std", "min", "max", "n"}}`` for every key
    present, in first-seen order.  Non-finite values are left out and ``n``
    counts the finite ones; ``std`` is the sample standard deviation
    (``ddof=1``; 0 for a single value); all four are NaN when ``n == 0``.
    """
    rows: list[Mapping[str, float]] = []
    for it in items:
        if isinstance(it, Mapping):
            rows.append(it)
        elif isinstance(it, tuple):
            rows.append(layer_stats(it[0], it[1], **stats_kwargs))
        else:
            rows.append(layer_stats(it, **stats_kwargs))
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        vals = np.array([float(row[k]) for row in rows if k in row], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        n = int(vals.size)
        if n == 0:
            out[k] = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
            continue
        out[k] = {
            "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if n > 1 else 0.0,
            "min": float(vals.min()),
            "max": float(vals.max()),
            "n": n,
        }
    return out
