"""Seeded synthesis of rain streaks for clean/rainy image pairs.

The synthetic rain used by the deraining literature (JORDER's Rain100L/H, the
DDN set of Fu et al.) follows the well-known "Photoshop rain" recipe:

1. scatter sparse random drops over the image plane (noise + threshold),
2. smear them with a directional motion blur of a given length and angle,
3. optionally widen the smears slightly with a Gaussian,
4. blend the bright streak map into the image (screen or additive),
5. for heavy rain, stack several such layers with different directions,
   lengths and densities and mix in a bright veiling (atmospheric) layer,
   following the heavy-rain model ``O = (1 - v) * (B + S) + v * A``.

Steps 1-2 follow JORDER's recipe for Rain100L/Rain100H: drops are noise
passed through a threshold (``density`` = fraction of pixels that pass; the
per-drop brightness range ``brightness`` plays the role of Photoshop's
"levels" stretch), then motion blur.  "light" (Rain100L) uses ONE streak
direction per image and no veil; "heavy" (Rain100H) uses five directions
fanned around a shared per-image wind direction (``RainParams.angle_jitter``),
longer, wider, brighter and denser streaks, and a veiling layer.

Calibration.  "light" and "heavy" give, on the clean training images (never a test set), the
rainy-input scores JORDER's paper reports for Rain100L / Rain100H (26.90 dB / 0.838 and
13.56 dB / 0.379, Y channel).  "heavy-real" is fitted to the look of the real heavy-rain
training pairs (additive, three directions fanned around a per-image slant, long faint
streaks, a light haze; :func:`datasets.rainfit.fit_heavy_real`), and "light-real" is its streak
shape in one direction, calibrated to Rain100L's rainy-input score
(:func:`datasets.rainfit.calibrate_light_real`).  The fits and their numbers are in
``docs/data.md``.  Everything is vectorised numpy/scipy (FFT convolution) and fully
determined by a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

__all__ = [
    "RainLayer",
    "RainParams",
    "PRESETS",
    "DDN_PRESET_NAMES",
    "DENSITY_PRESETS",
    "density_choice",
    "HEAVY_REAL_FIT",
    "HEAVY_REAL_SPREAD",
    "LIGHT_REAL_FIT",
    "real_rain_params",
    "line_kernel",
    "streak_layer",
    "rain_mask",
    "add_rain",
    "resolve",
]

# Per-drop brightness is drawn uniformly from this range (times the layer
# intensity) so that streaks are not all equally bright.
_DROP_BRIGHTNESS = (0.6, 1.0)
# Airlight of the veiling layer is drawn uniformly from this range.
_AIRLIGHT = (0.8, 0.9)


@dataclass(frozen=True)
class RainLayer:
    """One family of parallel rain streaks.

    density:      fraction of pixels that seed a drop before the blur.
    length:       streak length in pixels (>= 1).
    angle:        degrees from vertical; 0 is straight down and a positive
                  angle leans right like italic text ("/"-shaped streak,
                  its top displaced to the right of its bottom).
    angle_jitter: half-width (degrees) of a uniform random per-image jitter.
    width:        sigma (px) of a Gaussian that widens the streaks, 0 = none.
    intensity:    peak brightness of an isolated streak, in [0, 1].
    brightness:   (lo, hi) range of the per-drop brightness, as a fraction
                  of ``intensity``.  Drops are drawn uniformly in it.  The
                  Photoshop recipe (noise, then a "levels" threshold that
                  maps [t, 1] onto [0, 1]) gives a range reaching down to 0:
                  many faint streaks next to a few bright ones.
    """

    density: float
    length: float
    angle: float = 0.0
    angle_jitter: float = 0.0
    width: float = 0.0
    intensity: float = 0.8
    brightness: tuple[float, float] = _DROP_BRIGHTNESS

    def __post_init__(self) -> None:
        if not 0.0 <= self.density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {self.density}")
        if not self.length >= 1.0:
            raise ValueError(f"length must be >= 1 pixel, got {self.length}")
        if self.angle_jitter < 0 or self.width < 0:
            raise ValueError("angle_jitter and width must be non-negative")
        if not 0.0 <= self.intensity <= 1.0:
            raise ValueError(f"intensity must be in [0, 1], got {self.intensity}")
        lo, hi = (float(b) for b in self.brightness)
        if not 0.0 <= lo <= hi <= 1.0 or hi <= 0.0:
            raise ValueError(f"brightness must satisfy 0 <= lo <= hi <= 1, hi > 0; got {self.brightness}")
        object.__setattr__(self, "brightness", (lo, hi))


@dataclass(frozen=True)
class RainParams:
    """A full rain model: streak layers, blend mode and veiling strength.

    blend:        how the streak map ``S`` (:func:`rain_mask`) is composed
                  over the background ``B``: ``"screen"``
                  ``O = 1 - (1 - B)(1 - S)`` or ``"additive"``
                  ``O = min(B + S, 1)`` (the same grey ``S`` on every
                  channel; how the real Rain100H-pipeline pairs are made).
    veil:         strength ``v`` of the veiling layer mixed in after the
                  blend, ``O = (1 - v) O + v A`` with a random airlight
                  ``A`` (this dims bright backgrounds, so it is not additive).
    angle_jitter: half-width (degrees) of a uniform random rotation shared
                  by all layers of one image (the wind direction), on top of
                  each layer's own angle and jitter.  0 = none.
    haze:         a uniform grey level added to the streak map itself
                  (``S = streaks + haze``, clipped to 1): a veil that is
                  part of the rain layer, e.g. additive haze.  0 = none (and
                  then nothing changes for the presets that predate it).
    amount_spread: sd ``s`` of the log of a per-image factor ``exp(s z -
                  s^2 / 2)`` (``z`` standard normal; mean 1) on every density
                  and the haze: how much the amount of rain varies between
                  images.  0 = none (nothing drawn: older presets unchanged).
    """

    layers: tuple[RainLayer, ...]
    blend: str = "screen"
    veil: float = 0.0
    angle_jitter: float = 0.0
    haze: float = 0.0
    amount_spread: float = 0.0

    def __post_init__(self) -> None:
        if self.blend not in ("screen", "additive"):
            raise ValueError(f"blend must be 'screen' or 'additive', got {self.blend!r}")
        if not 0.0 <= self.veil <= 1.0:
            raise ValueError(f"veil must be in [0, 1], got {self.veil}")
        if not 0.0 <= self.haze <= 1.0:
            raise ValueError(f"haze must be in [0, 1], got {self.haze}")
        if self.angle_jitter < 0 or self.amount_spread < 0:
            raise ValueError("angle_jitter and amount_spread must be non-negative")
        object.__setattr__(self, "layers", tuple(self.layers))

    def scaled(self, factor: float) -> "RainParams":
        """The same rain with every layer's density and the haze times ``factor`` (at most 1)."""
        layers = tuple(replace(layer, density=min(1.0, layer.density * factor)) for layer in self.layers)
        return replace(self, layers=layers, haze=min(1.0, self.haze * factor))


def _ddn_presets() -> dict[str, RainParams]:
    """14 single-layer types spanning orientation x magnitude (DDN-like).

    Seven orientations from -30 to +30 degrees, each in a "small" (short,
    sparse, thin) and a "large" (long, denser, wider) magnitude.
    """
    out: dict[str, RainParams] = {}
    angles = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0)
    mags = (
        dict(density=0.0015, length=14.0, width=0.5, intensity=0.6),
        dict(density=0.003, length=26.0, width=0.8, intensity=0.75),
    )
    k = 0
    for mag in mags:
        for ang in angles:
            k += 1
            out[f"ddn{k:02d}"] = RainParams(
                layers=(RainLayer(angle=ang, angle_jitter=3.0, **mag),), blend="screen"
            )
    return out


_DDN = _ddn_presets()
DDN_PRESET_NAMES: tuple[str, ...] = tuple(_DDN)


def real_rain_params(
    *,
    density: float,
    length: float,
    width: float,
    intensity: float,
    low: float,
    fan: float = 0.0,
    angle: float = 0.0,
    angle_jitter: float = 0.0,
    haze: float = 0.0,
    directions: int = 3,
    amount_spread: float = 0.0,
) -> RainParams:
    """Additive rain of the shape fitted to the real Rain100H-pipeline pairs.

    ``directions`` equal streak layers (same ``length``, Gaussian ``width``,
    ``intensity`` and per-drop brightness range ``(low, 1)``) at
    ``angle + linspace(-fan, fan, directions)`` degrees, sharing ``density``
    (the total fraction of drop pixels) equally; the whole fan is turned per
    image by a uniform angle in ``[-angle_jitter, angle_jitter]``; ``haze``
    is added to the streak map; the layer is composed additively;
    ``amount_spread`` varies the amount of rain per image (see
    :class:`RainParams`).  One direction (``directions=1``) ignores ``fan``.  The presets "heavy-real"
    and "light-real" are built with it from the numbers that
    :func:`datasets.rainfit.fit_heavy_real` and
    :func:`datasets.rainfit.calibrate_light_real` return.
    """
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    angles = [0.0] if directions == 1 else [float(a) for a in np.linspace(-fan, fan, directions)]
    layer = {"length": float(length), "width": float(width), "intensity": float(intensity),
             "brightness": (float(low), 1.0)}
    return RainParams(
        layers=tuple(RainLayer(density=density / directions, angle=angle + a, **layer) for a in angles),
        blend="additive",
        veil=0.0,
        angle_jitter=float(angle_jitter),
        haze=float(haze),
        amount_spread=float(amount_spread),
    )


# Fitted to the 12 real heavy-rain pairs RainTrainH-sample18 norain-2 .. norain-14 (the first 12 by
# number; norain-15 .. norain-20 are held out) by datasets.rainfit.fit_heavy_real(data_root) (defaults:
# seed 1000, Nelder-Mead, 190 renders of the 12 backgrounds, loss 0.43), which matches 10 statistics of
# datasets.rainstats to the real means and holds the published Rain100H rainy-input score (13.56 dB /
# 0.379) as a soft constraint; angle and angle_jitter are the moments of the real per-image angles
# (mean, sqrt(3) x sd).  Unrounded: density 0.010780, length 64.90, width 0.6383, intensity 0.37036,
# low 0.01533, fan 4.413, haze 0.02220.  See benchmark/rain_look.py for the comparison.
HEAVY_REAL_FIT: dict[str, float] = {
    "density": 0.0108, "length": 65.0, "width": 0.64, "intensity": 0.37, "low": 0.015, "fan": 4.4,
    "angle": -1.25, "angle_jitter": 9.5, "haze": 0.022,
}
# light-real: the heavy-real streak shape (length, width, brightness range, slant) in one direction,
# without haze; density and intensity from datasets.rainfit.calibrate_light_real(data_root) (unrounded
# 0.0014804, 0.27268), which hits Rain100L's rainy-input 26.90 dB / 0.838 on the 59 BSDS500 train+val
# training backgrounds of "light"'s calibration (never on Rain100L).  Density alone at the heavy-real
# intensity (0.000866) gives 26.90 dB but SSIM 0.864: fainter, denser streaks were needed.
LIGHT_REAL_FIT: dict[str, float] = {"density": 0.00148, "intensity": 0.273}
# heavy-real-spread: heavy-real with the image-to-image spread of the amount of real rain (log sd of the mean
# luma the rain adds, 12 fit pairs: real 0.753, heavy-real renders 0.168), by datasets.rainfit.fit_amount_spread
# (data_root) (unrounded 0.7340, with density and haze x 1.2688 to keep the real mean amount); docs/data.md.
HEAVY_REAL_SPREAD: dict[str, float] = {"amount_spread": 0.73, "amount_scale": 1.27}
_SCALED = {k: HEAVY_REAL_FIT[k] * HEAVY_REAL_SPREAD["amount_scale"] for k in ("density", "haze")}


def _light_real_values() -> dict[str, float]:
    return {**HEAVY_REAL_FIT, **LIGHT_REAL_FIT, "haze": 0.0, "fan": 0.0}

PRESETS: dict[str, RainParams] = {
    # Rain100L (JORDER): ONE streak direction per image, many thin streaks of
    # moderate brightness (noise + threshold brightness down to 0.2), no veil.
    # Calibrated, see the module docstring.
    "light": RainParams(
        layers=(
            RainLayer(density=0.0026, length=24.0, angle=0.0, angle_jitter=20.0,
                      width=0.3, intensity=0.63, brightness=(0.2, 1.0)),
        ),
        blend="screen",
        veil=0.0,
    ),
    # In between: two directions, no veil.
    "medium": RainParams(
        layers=(
            RainLayer(density=0.0025, length=22.0, angle=0.0, angle_jitter=20.0,
                      width=0.7, intensity=0.75),
            RainLayer(density=0.0015, length=14.0, angle=10.0, angle_jitter=10.0,
                      width=0.5, intensity=0.6),
        ),
        blend="screen",
        veil=0.0,
    ),
    # Rain100H (JORDER): five streak directions fanned around a per-image wind
    # direction, denser, longer, wider and brighter streaks than "light", and
    # a veiling (haze) layer.  Calibrated, see the module docstring.
    "heavy": RainParams(
        layers=(
            RainLayer(density=0.00226, length=45.0, angle=0.0, angle_jitter=4.0,
                      width=0.72, intensity=0.95, brightness=(0.3, 1.0)),
            RainLayer(density=0.00186, length=35.0, angle=-12.0, angle_jitter=4.0,
                      width=0.6, intensity=0.9, brightness=(0.3, 1.0)),
            RainLayer(density=0.00186, length=35.0, angle=12.0, angle_jitter=4.0,
                      width=0.6, intensity=0.9, brightness=(0.3, 1.0)),
            RainLayer(density=0.00136, length=25.0, angle=-24.0, angle_jitter=4.0,
                      width=0.48, intensity=0.85, brightness=(0.3, 1.0)),
            RainLayer(density=0.00136, length=25.0, angle=24.0, angle_jitter=4.0,
                      width=0.48, intensity=0.85, brightness=(0.3, 1.0)),
        ),
        blend="screen",
        veil=0.15,
        angle_jitter=15.0,
    ),
    # Fitted to real heavy rain (additive, a narrow fan of 3 directions, long faint streaks); see
    # HEAVY_REAL_FIT.  Not the same rain as "heavy": results made with "heavy" stay as they were.
    "heavy-real": real_rain_params(**HEAVY_REAL_FIT, directions=3),
    # heavy-real with as much image-to-image variation in the amount of rain as the real pairs have.
    "heavy-real-spread": real_rain_params(**{**HEAVY_REAL_FIT, **_SCALED}, directions=3,
                                          amount_spread=HEAVY_REAL_SPREAD["amount_spread"]),
    # The heavy-real streak shape in one direction, sparser, calibrated to Rain100L's rainy-input score.
    "light-real": real_rain_params(**_light_real_values(), directions=1),
    **_DDN,
}


MIXTURES = ("ddn", "density")  # names add_rain accepts besides the presets: a per-image choice of presets

#: The "density" mixture (DID-MDN's three labelled densities): each image gets one of these presets,
#: in the order of DID-MDN's class indices (0 heavy, 1 medium, 2 light).
DENSITY_PRESETS: tuple[str, ...] = ("heavy", "medium", "light")


def density_choice(seed: int) -> int:
    """The index into DENSITY_PRESETS that ``add_rain(img, "density", seed)`` renders."""
    return int(np.random.default_rng([int(seed), 3]).integers(len(DENSITY_PRESETS)))


def validate(rain: str | RainParams) -> None:
    """Raise KeyError for a rain name that ``add_rain`` would not accept."""
    if rain not in MIXTURES:
        resolve(rain)


def resolve(rain: str | RainParams) -> RainParams:
    """Turn a preset name (or a RainParams) into RainParams."""
    if isinstance(rain, RainParams):
        return rain
    try:
        return PRESETS[rain]
    except KeyError:
        raise KeyError(f"unknown rain preset {rain!r}; known: {sorted(PRESETS)}") from None


def line_kernel(length: float, angle: float, oversample: int = 8) -> np.ndarray:
    """Anti-aliased motion-blur kernel: a line segment of ``length`` pixels.

    The segment is centred in an odd-sized square array and sampled at
    ``oversample`` points per pixel of length; each sample is splatted onto
    its four neighbouring pixels with bilinear weights.  The kernel sums to 1.
    ``angle`` is in degrees from vertical, positive leaning right ("/").
    """
    length = float(length)
    if length < 1.0:
        raise ValueError("length must be >= 1")
    theta = math.radians(angle)
    # Unit vector pointing *down* along the streak, in (row, col) order.  A
    # right-leaning streak has its lower end to the left of its upper end.
    dr, dc = math.cos(theta), -math.sin(theta)
    half_extent = 0.5 * (length - 1.0)
    radius = int(math.ceil(half_extent * max(abs(dr), abs(dc)))) + 1
    size = 2 * radius + 1

    n = max(2, int(math.ceil(length * oversample)))
    t = np.linspace(-half_extent, half_extent, n)
    r = radius + t * dr
    c = radius + t * dc
    r0 = np.floor(r).astype(np.int64)
    c0 = np.floor(c).astype(np.int64)
    fr = r - r0
    fc = c - c0

    k = np.zeros((size, size), dtype=np.float64)
    for rr, cc, w in (
        (r0, c0, (1 - fr) * (1 - fc)),
        (r0 + 1, c0, fr * (1 - fc)),
        (r0, c0 + 1, (1 - fr) * fc),
        (r0 + 1, c0 + 1, fr * fc),
    ):
        np.add.at(k, (np.clip(rr, 0, size - 1), np.clip(cc, 0, size - 1)), w)
    k[k < 1e-6 * k.max()] = 0.0  # keep the footprint sparse (ndimage skips zeros)
    return k / k.sum()


def _peak_response(kernel: np.ndarray, width: float) -> float:
    """Peak value an isolated unit drop reaches after blur (+ widening)."""
    if width > 0:
        pad = int(math.ceil(4 * width)) + 1
        k = np.pad(kernel, pad)
        k = ndimage.gaussian_filter(k, width, mode="constant")
        return float(k.max())
    return float(kernel.max())


def _wrap_convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Periodic ("wrap") convolution of ``img`` with a centred odd kernel.

    Done with real FFTs, so the cost does not grow with the streak length.
    The kernel is folded onto the image grid modulo its size, which keeps
    the result exactly periodic even when the kernel is larger than the
    image.
    """
    h, w = img.shape
    kr, kc = kernel.shape
    rows, cols = np.nonzero(kernel)
    k = np.zeros((h, w), dtype=np.float64)
    np.add.at(k, ((rows - kr // 2) % h, (cols - kc // 2) % w), kernel[rows, cols])
    out = np.fft.irfft2(np.fft.rfft2(img) * np.fft.rfft2(k), s=(h, w))
    np.maximum(out, 0.0, out=out)  # remove -1e-17 FFT round-off
    return out


def streak_layer(
    shape: tuple[int, int],
    layer: RainLayer,
    rng: np.random.Generator,
    angle_offset: float = 0.0,
) -> np.ndarray:
    """Render one layer of rain streaks: float64 HxW map in [0, 1].

    Drops are seeded where uniform noise falls below ``density`` (noise +
    threshold), each with a brightness drawn uniformly from
    ``layer.brightness``; the drop map is motion-blurred with an
    anti-aliased line kernel (periodic boundary, so streaks wrap instead of
    piling up at the borders), optionally widened with a Gaussian, and
    scaled so that an isolated full-brightness streak peaks at
    ``layer.intensity``.  ``angle_offset`` (degrees) is added to the
    layer's angle (the per-image rotation shared by all layers).
    """
    h, w = int(shape[0]), int(shape[1])
    angle = layer.angle + angle_offset
    if layer.angle_jitter > 0:
        angle += rng.uniform(-layer.angle_jitter, layer.angle_jitter)
    noise = rng.random((h, w))
    bright = rng.uniform(layer.brightness[0], layer.brightness[1], size=(h, w))
    drops = np.where(noise < layer.density, bright, 0.0)

    kernel = line_kernel(layer.length, angle)
    streaks = _wrap_convolve(drops, kernel)
    if layer.width > 0:
        streaks = ndimage.gaussian_filter(streaks, layer.width, mode="wrap")
    scale = layer.intensity / _peak_response(kernel, layer.width)
    out = streaks * scale
    np.clip(out, 0.0, 1.0, out=out)
    return out


def rain_mask(shape: tuple[int, int], params: RainParams, rng: np.random.Generator) -> np.ndarray:
    """Combined streak map of all layers (screen-combined, plus ``params.haze``), float64 HxW in [0, 1]."""
    params = resolve(params)
    h, w = int(shape[0]), int(shape[1])
    offset = 0.0
    if params.angle_jitter > 0:
        offset = float(rng.uniform(-params.angle_jitter, params.angle_jitter))
    if params.amount_spread > 0:  # this image's amount of rain
        s = params.amount_spread
        params = params.scaled(math.exp(s * float(rng.standard_normal()) - s * s / 2.0))
    inv = np.ones((h, w), dtype=np.float64)
    for layer in params.layers:
        inv *= 1.0 - streak_layer((h, w), layer, rng, angle_offset=offset)
    out = 1.0 - inv
    if params.haze > 0:
        out += params.haze
    return np.clip(out, 0.0, 1.0)


def as_unit_float(img: np.ndarray) -> np.ndarray:
    """A uint8 or float image as float64 in [0, 1] (floats are clipped)."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if np.issubdtype(img.dtype, np.integer):
        raise TypeError(f"integer images must be uint8, got {img.dtype}")
    return np.clip(img.astype(np.float64), 0.0, 1.0)


def add_rain(clean: np.ndarray, rain: str | RainParams, seed: int) -> np.ndarray:
    """Return a rainy uint8 copy of ``clean``.

    clean: uint8 HxWx3 (or float in [0, 1]; an HxW grey image gives HxW).
    rain:  preset name from PRESETS or a RainParams.
    seed:  everything random is drawn from ``np.random.default_rng(seed)``,
           so the output is bit-exact for a given (image, rain, seed).
    """
    if rain == "ddn":  # DDN's mixture: each image gets one of the 14 orientation/magnitude types
        rain = DDN_PRESET_NAMES[np.random.default_rng([seed, 14]).integers(len(DDN_PRESET_NAMES))]
    elif rain == "density":  # DID-MDN's labelled mixture: heavy, medium or light, one per image
        rain = DENSITY_PRESETS[density_choice(seed)]
    params = resolve(rain)
    img = as_unit_float(clean)
    if img.ndim == 3:
        if img.shape[2] != 3:
            raise ValueError(f"expected HxWx3, got shape {img.shape}")
    elif img.ndim != 2:
        raise ValueError(f"expected HxWx3 or HxW, got shape {img.shape}")
    rng = np.random.default_rng(seed)
    mask = rain_mask(img.shape[:2], params, rng)
    if img.ndim == 3:
        mask = mask[:, :, None]  # white streaks: same on every channel

    if params.blend == "screen":
        out = 1.0 - (1.0 - img) * (1.0 - mask)
    else:
        out = img + mask
    if params.veil > 0:
        airlight = rng.uniform(*_AIRLIGHT)
        out = (1.0 - params.veil) * out + params.veil * airlight
    np.clip(out, 0.0, 1.0, out=out)
    return np.rint(out * 255.0).astype(np.uint8)
