"""Percentile bootstrap over images for detection metrics.

Images are the resampling unit: each replicate draws ``len(gts)`` image
indices with replacement and recomputes the metric on those images (an image
drawn twice counts twice).  The interval is the ``alpha/2`` and
``1 - alpha/2`` percentiles of the replicates.  Deterministic for a seed.

``metric_fn(gts, dets) -> float``; for a metric returning a dict, wrap it,
e.g. ``lambda g, d: kitti_car_ap(g, d)["ap40_moderate"]``.  Replicates where
the metric is NaN (e.g. COCO AP of a resample without any Car) are left out
of the percentiles.

The paired version resamples the *same* images for both detection sets and
takes percentiles of ``metric(dets_b) - metric(dets_a)`` (derained minus raw),
so image-to-image difficulty cancels; a gain is beyond resampling noise at
level ``alpha`` when the interval excludes 0.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_bootstrap_ci", "bootstrap_indices"]

MetricFn = Callable[[Sequence, Sequence], float]


def bootstrap_indices(n_images: int, n: int, seed: int) -> np.ndarray:
    """The ``n`` x ``n_images`` resampled image indices a seed gives (shared by both functions)."""
    if n_images < 1:
        raise ValueError("need at least one image to bootstrap")
    if n < 1:
        raise ValueError("need at least one bootstrap replicate")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_images, size=(n, n_images))


def _interval(values: list[float], alpha: float) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(arr, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    metric_fn: MetricFn,
    gts: Sequence,
    dets: Sequence,
    n: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile ``1 - alpha`` interval of ``metric_fn`` under resampling of images."""
    if len(gts) != len(dets):
        raise ValueError(f"gts has {len(gts)} images but dets has {len(dets)}")
    values = []
    for idx in bootstrap_indices(len(gts), n, seed):
        values.append(float(metric_fn([gts[i] for i in idx], [dets[i] for i in idx])))
    return _interval(values, alpha)


def paired_bootstrap_ci(
    metric_fn: MetricFn,
    gts: Sequence,
    dets_a: Sequence,
    dets_b: Sequence,
    n: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile interval of ``metric(dets_b) - metric(dets_a)`` on the same resampled images.

    With ``dets_a`` the detections on raw rainy images and ``dets_b`` those on
    the derained images, the interval is that of the deraining gain.
    """
    if not len(gts) == len(dets_a) == len(dets_b):
        raise ValueError(
            f"gts, dets_a and dets_b must cover the same images: {len(gts)}, {len(dets_a)}, {len(dets_b)}"
        )
    values = []
    for idx in bootstrap_indices(len(gts), n, seed):
        g = [gts[i] for i in idx]
        a = float(metric_fn(g, [dets_a[i] for i in idx]))
        b = float(metric_fn(g, [dets_b[i] for i in idx]))
        values.append(b - a)
    return _interval(values, alpha)


def recovered_fraction(metric_fn: MetricFn, gts: Sequence, clean: Sequence, rainy: Sequence,
                       derained: Sequence) -> float:
    """``(m(derained) - m(rainy)) / (m(clean) - m(rainy))``: the share of the metric lost to rain
    that deraining gives back (1 = all of it, 0 = none, < 0 = worse than not deraining); NaN when
    rain cost nothing."""
    c, r, d = (float(metric_fn(gts, x)) for x in (clean, rainy, derained))
    return (d - r) / (c - r) if c != r else float("nan")


def recovered_fraction_ci(metric_fn: MetricFn, gts: Sequence, clean: Sequence, rainy: Sequence,
                          derained: Sequence, n: int = 200, seed: int = 0,
                          alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of :func:`recovered_fraction`, the three detection sets resampled on
    the same images (resamples where rain cost nothing are left out)."""
    if not len(gts) == len(clean) == len(rainy) == len(derained):
        raise ValueError("gts, clean, rainy and derained must cover the same images")
    values = []
    for idx in bootstrap_indices(len(gts), n, seed):
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        v = recovered_fraction(metric_fn, pick(gts), pick(clean), pick(rainy), pick(derained))
        if not math.isnan(v):
            values.append(v)
    return _interval(values, alpha) if values else (float("nan"), float("nan"))
