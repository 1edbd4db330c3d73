"""Procedurally generated road scenes: the embedded default of the detection study.

No download and no external data.  Every scene is drawn with numpy/PIL on top of
a background cut from the embedded clean photos (:mod:`datasets.embedded`):
split ``"train"`` uses the embedded train photos and ``"test"`` the test photos,
so backgrounds never overlap between the splits.

A scene (default ``size=(H, W) = (192, 576)``, KITTI's 1:3 aspect):

* the background photo (random crop, scale, flip and brightness) fills the frame;
* everything below a random horizon becomes a grey road (vertical gradient, noise,
  a tint) with dashed lane marks converging to a vanishing point;
* 1 to 6 vehicles, drawn far to near (painter's order).  A vehicle's box height
  follows a rough perspective (``h ~ k * (bottom - horizon)``), spanning about
  20-90 px at the default size (scaled with ``H``).  Shapes: cars seen from the
  rear or the side (sedan / hatchback / SUV: body, cabin with windows, wheels,
  lights, dark underbody) labelled ``Car``, and about one in five a boxy van
  (taller, one-box body) labelled ``Van``.

Labels are :class:`datasets.kitti.Object`:

* ``bbox`` is tight around the vehicle's drawn pixels *inside the image*
  (occluded parts included: the amodal silhouette, clipped at the border), in
  continuous pixel coordinates: a vehicle covering columns ``a..b`` has
  ``x1 = a, x2 = b + 1`` (torchvision's convention; ``x2 - x1`` is the width in
  pixels).
* ``truncated`` = fraction of the silhouette's pixels outside the image
  (two decimals).
* ``occluded`` from the fraction ``f`` of the in-image silhouette hidden by
  nearer vehicles: 0 if ``f <= OCCLUSION_LEVELS[0]`` (1 %, a few pixels),
  1 if ``f <= OCCLUSION_LEVELS[1]`` (50 %), else 2.  A vehicle with less than
  ``MIN_VISIBLE`` (10 %) of its in-image silhouette visible is removed from the
  scene altogether (not drawn, not labelled), so no label is invisible.

Scenes are deterministic: scene ``i`` of ``(split, seed)`` is drawn from its own
``numpy.random.Generator`` seeded with ``(seed, split, i)``, so
``road_scenes(split, 10, seed=s)[:5] == road_scenes(split, 5, seed=s)``.
:func:`road_scene` returns one scene with its masks (and can leave vehicles out),
which is what the tests use to check boxes and occlusion labels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from datasets.embedded import clean_images
from datasets.kitti import Object

__all__ = [
    "DEFAULT_SIZE",
    "MAX_VEHICLES",
    "MIN_VISIBLE",
    "OCCLUSION_LEVELS",
    "RoadScene",
    "road_scene",
    "road_scenes",
]

DEFAULT_SIZE = (192, 576)
MAX_VEHICLES = 6
#: vehicles with less of their in-image silhouette visible are removed from the scene
MIN_VISIBLE = 0.10
#: occluded fraction limits of KITTI levels 0 and 1 (above the second: level 2)
OCCLUSION_LEVELS = (0.01, 0.50)
#: box heights at the default H = 192, scaled with H
_HEIGHT_RANGE = (20.0, 90.0)
_VAN_FRACTION = 0.2
_MAX_TRUNCATION = 0.7
_SPLIT_CODE = {"train": 1, "test": 2}

# vehicle paint colours (RGB), picked at random and jittered
_PALETTE = np.array(
    [
        (235, 235, 232),  # white
        (25, 25, 28),  # black
        (160, 163, 168),  # silver
        (95, 98, 102),  # grey
        (170, 30, 30),  # red
        (35, 60, 140),  # blue
        (30, 80, 50),  # dark green
        (200, 170, 60),  # yellow / beige
        (110, 60, 30),  # brown
        (90, 140, 190),  # light blue
    ],
    dtype=np.float64,
)


@dataclass
class RoadScene:
    """One scene with everything needed to check its labels.

    ``masks[k]`` is vehicle k's silhouette inside the image (bool HxW) and
    ``visible[k]`` the part of it not hidden by nearer vehicles; ``objects[k]``
    its label.  ``background`` is the scene without any vehicle.
    """

    name: str
    image: np.ndarray
    objects: list[Object]
    masks: list[np.ndarray] = field(repr=False)
    visible: list[np.ndarray] = field(repr=False)
    background: np.ndarray = field(repr=False)
    truncated_exact: list[float] = field(repr=False, default_factory=list)
    occluded_fraction: list[float] = field(repr=False, default_factory=list)


@dataclass(frozen=True)
class _Vehicle:
    kind: str  # "Car" or "Van"
    x0: int  # top-left of the sprite in image coordinates (may be outside)
    y0: int
    sprite: np.ndarray  # uint8 h x w x 3
    mask: np.ndarray  # bool h x w


# --------------------------------------------------------------------------
# argument checking


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_args(split, size, seed) -> tuple[str, int, int, int]:
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be a pair (H, W), got {size!r}") from None
    h = _check_int(h, "size[0] (height)", 64)
    w = _check_int(w, "size[1] (width)", 64)
    seed = _check_int(seed, "seed", 0)
    return split, h, w, seed


# --------------------------------------------------------------------------
# background and road


@functools.lru_cache(maxsize=4)
def _photos(split: str, side: int) -> tuple[np.ndarray, ...]:
    out = []
    for _, arr in clean_images(split, side):
        arr.setflags(write=False)
        out.append(arr)
    return tuple(out)


def _background(rng: np.random.Generator, split: str, h: int, w: int) -> np.ndarray:
    photos = _photos(split, max(h, w))
    photo = photos[int(rng.integers(len(photos)))]
    side = photo.shape[0]
    crop_w = int(round(side * rng.uniform(0.5, 1.0)))
    crop_h = max(1, int(round(crop_w * h / w)))
    left = int(rng.integers(0, side - crop_w + 1))
    top = int(rng.integers(0, side - crop_h + 1))
    im = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
    im = im.resize((w, h), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float64)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    arr = arr * rng.uniform(0.75, 1.15)
    return arr


def _draw_road(rng: np.random.Generator, img: np.ndarray, horizon: int) -> None:
    """Grey road below ``horizon`` with dashed lane marks (in place, float image)."""
    h, w, _ = img.shape
    rows = h - horizon
    grey = rng.uniform(60.0, 135.0)
    tint = rng.uniform(-6.0, 6.0, size=3)
    t = np.linspace(0.0, 1.0, rows)[:, None, None]
    # lighter and hazier towards the horizon
    road = (grey + tint) * (1.12 - 0.2 * t) + rng.normal(0.0, 4.0, size=(rows, w, 3))
    img[horizon:] = road
    # a soft horizon line between scenery and road
    img[horizon : horizon + 1] = 0.5 * img[horizon : horizon + 1] + 0.5 * (grey * 0.8)

    mark = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mark)
    vx = rng.uniform(0.3, 0.7) * w
    lane = rng.uniform(0.28, 0.45) * w  # lane width at the bottom row
    n_side = int(math.ceil(w / lane)) + 1
    phase = rng.uniform(0.0, 1.0)
    solid_edges = rng.random() < 0.5
    depth = float(rows)
    for k in range(-n_side, n_side + 1):
        bottom_x = vx + (k + 0.5) * lane
        if not -0.6 * w <= bottom_x <= 1.6 * w:
            continue
        solid = solid_edges and abs(k + 0.5) == 1.5
        # dashes in perspective: parameter s = (y - horizon) / rows, dash length ~ s
        s = 0.02
        on = True if solid else (phase < 0.5)
        while s < 1.0:
            step = max(0.02, 0.25 * s)
            s2 = min(1.0, s + step)
            if on:
                y1, y2 = horizon + s * depth, horizon + s2 * depth
                x1, x2 = vx + s * (bottom_x - vx), vx + s2 * (bottom_x - vx)
                half1, half2 = max(0.3, 0.012 * lane * s), max(0.3, 0.012 * lane * s2)
                draw.polygon([(x1 - half1, y1), (x1 + half1, y1), (x2 + half2, y2), (x2 - half2, y2)], fill=255)
            s = s2
            if not solid:
                on = not on
    alpha = np.asarray(mark, dtype=np.float64)[:, :, None] / 255.0 * rng.uniform(0.6, 0.9)
    alpha[:horizon] = 0.0
    img[:] = img * (1.0 - alpha) + 230.0 * alpha


# --------------------------------------------------------------------------
# vehicles


def _colour(rng: np.random.Generator) -> np.ndarray:
    base = _PALETTE[int(rng.integers(len(_PALETTE)))]
    return np.clip(base * rng.uniform(0.85, 1.1) + rng.normal(0.0, 8.0, size=3), 0, 255)


def _rgb(c) -> tuple[int, int, int]:
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _sprite(rng: np.random.Generator, kind: str, bw: int, bh: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one vehicle on a bw x bh canvas; the silhouette touches all four edges."""
    canvas = Image.new("RGB", (bw, bh), (0, 0, 0))
    alpha = Image.new("L", (bw, bh), 0)
    dc, da = ImageDraw.Draw(canvas), ImageDraw.Draw(alpha)
    paint = _colour(rng)
    glass = np.array([40.0, 50.0, 65.0]) * rng.uniform(0.6, 1.4)
    tyre = (20, 20, 22)
    side_view = bw / bh >= 1.6
    W, H = bw - 1, bh - 1  # inclusive pixel extents

    def shape(kind_, xy, fill, radius=0):
        if kind_ == "rect":
            if radius > 0:
                dc.rounded_rectangle(xy, radius=radius, fill=_rgb(fill))
                da.rounded_rectangle(xy, radius=radius, fill=255)
            else:
                dc.rectangle(xy, fill=_rgb(fill))
                da.rectangle(xy, fill=255)
        elif kind_ == "poly":
            dc.polygon(xy, fill=_rgb(fill))
            da.polygon(xy, fill=255)
        elif kind_ == "ellipse":
            dc.ellipse(xy, fill=_rgb(fill))
            da.ellipse(xy, fill=255)

    if kind == "Van":
        body_bottom = 0.86 * H
        r = max(1, int(0.06 * min(bw, bh)))
        # under-body and tyres first, then the box body over them
        shape("rect", (0.08 * W, 0.7 * H, 0.92 * W, H), (30, 30, 32))
        if side_view:
            wr = 0.15 * H
            for cx in (0.18 * W, 0.82 * W):
                shape("ellipse", (cx - wr, H - 2 * wr, cx + wr, H), tyre)
        else:
            shape("rect", (0.03 * W, 0.78 * H, 0.2 * W, H), tyre)
            shape("rect", (0.8 * W, 0.78 * H, 0.97 * W, H), tyre)
        shape("rect", (0, 0, W, body_bottom), paint, radius=r)
        if side_view:
            front_left = rng.random() < 0.5
            # windscreen at the front, a window band behind it
            if front_left:
                dc.polygon([(0.02 * W, 0.38 * H), (0.1 * W, 0.08 * H), (0.3 * W, 0.08 * H), (0.3 * W, 0.38 * H)], fill=_rgb(glass))
            else:
                dc.polygon([(0.98 * W, 0.38 * H), (0.9 * W, 0.08 * H), (0.7 * W, 0.08 * H), (0.7 * W, 0.38 * H)], fill=_rgb(glass))
            if rng.random() < 0.5:
                lo, hi = (0.34, 0.92) if front_left else (0.08, 0.66)
                dc.rectangle((lo * W, 0.1 * H, hi * W, 0.34 * H), fill=_rgb(glass * 1.1))
        else:
            dc.rectangle((0.08 * W, 0.08 * H, 0.47 * W, 0.42 * H), fill=_rgb(glass))
            dc.rectangle((0.53 * W, 0.08 * H, 0.92 * W, 0.42 * H), fill=_rgb(glass))
            dc.rectangle((0.04 * W, 0.55 * H, 0.1 * W, 0.72 * H), fill=(200, 20, 20))
            dc.rectangle((0.9 * W, 0.55 * H, 0.96 * W, 0.72 * H), fill=(200, 20, 20))
    else:
        style = ("sedan", "hatchback", "suv")[int(rng.integers(3))]
        cabin_h = {"sedan": 0.40, "hatchback": 0.44, "suv": 0.48}[style] + rng.uniform(-0.03, 0.03)
        body_top = cabin_h * H
        body_bottom = 0.84 * H
        # under-body and tyres
        shape("rect", (0.1 * W, 0.7 * H, 0.9 * W, H), (28, 28, 30))
        if side_view:
            wr = 0.17 * H
            for cx in (0.2 * W, 0.8 * W):
                shape("ellipse", (cx - wr, H - 2 * wr, cx + wr, H), tyre)
                dc.ellipse((cx - 0.45 * wr, H - 1.45 * wr, cx + 0.45 * wr, H - 0.55 * wr), fill=(150, 150, 155))
        else:
            shape("rect", (0.04 * W, 0.76 * H, 0.2 * W, H), tyre)
            shape("rect", (0.8 * W, 0.76 * H, 0.96 * W, H), tyre)
        r = max(1, int(0.12 * (body_bottom - body_top)))
        shape("rect", (0, body_top - r, W, body_bottom), paint, radius=r)
        # cabin: a trapezoid from the body up to the roof line (y = 0)
        if side_view:
            if style == "sedan":
                a, b, c, d = 0.18, 0.3, 0.62, 0.76
            elif style == "hatchback":
                a, b, c, d = 0.16, 0.26, 0.8, 0.86
            else:
                a, b, c, d = 0.12, 0.2, 0.84, 0.9
            if rng.random() < 0.5:  # facing the other way
                a, b, c, d = 1 - d, 1 - c, 1 - b, 1 - a
            shape("poly", [(a * W, body_top), (b * W, 0), (c * W, 0), (d * W, body_top)], paint)
            inset = 0.12 * body_top
            mid = 0.5 * (b + c)
            dc.polygon(
                [(a * W + 2 * inset, body_top - 1), (b * W + inset, inset), (mid * W - 1, inset), (mid * W - 1, body_top - 1)],
                fill=_rgb(glass),
            )
            dc.polygon(
                [(mid * W + 1, body_top - 1), (mid * W + 1, inset), (c * W - inset, inset), (d * W - 2 * inset, body_top - 1)],
                fill=_rgb(glass),
            )
        else:
            top = rng.uniform(0.62, 0.78) if style != "suv" else rng.uniform(0.78, 0.88)
            lo, hi = 0.06, 0.94
            tl, tr = 0.5 - top / 2, 0.5 + top / 2
            shape("poly", [(lo * W, body_top), (tl * W, 0), (tr * W, 0), (hi * W, body_top)], paint)
            inset = 0.15 * body_top
            dc.polygon(
                [(lo * W + 2 * inset, body_top - 1), (tl * W + inset, inset), (tr * W - inset, inset), (hi * W - 2 * inset, body_top - 1)],
                fill=_rgb(glass),
            )
            lamp = (200, 25, 25) if rng.random() < 0.8 else (230, 120, 30)
            ly = body_top + 0.15 * (body_bottom - body_top)
            dc.rectangle((0.02 * W, ly, 0.16 * W, ly + 0.18 * H), fill=lamp)
            dc.rectangle((0.84 * W, ly, 0.98 * W, ly + 0.18 * H), fill=lamp)
            dc.rectangle((0.38 * W, ly + 0.12 * H, 0.62 * W, ly + 0.22 * H), fill=(215, 215, 200))  # plate

    rgb = np.asarray(canvas, dtype=np.float64)
    shade = 1.08 - 0.3 * np.linspace(0.0, 1.0, bh)[:, None, None]
    rgb = rgb * shade + rng.normal(0.0, 3.0, size=rgb.shape)
    mask = np.asarray(alpha) > 0
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def _plan(rng: np.random.Generator, h: int, w: int, horizon: int) -> list[_Vehicle]:
    scale = h / DEFAULT_SIZE[0]
    lo, hi = _HEIGHT_RANGE[0] * scale, _HEIGHT_RANGE[1] * scale
    n = int(rng.integers(1, MAX_VEHICLES + 1))
    vehicles = []
    for _ in range(n):
        kind = "Van" if rng.random() < _VAN_FRACTION else "Car"
        bh = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        bh = max(4, bh)
        if kind == "Van":
            aspect = rng.uniform(0.95, 2.3)
            k = rng.uniform(1.15, 1.5)  # taller than a car at the same distance
        else:
            aspect = rng.choice([rng.uniform(1.15, 1.55), rng.uniform(1.7, 2.7)])
            k = rng.uniform(0.85, 1.15)
        bw = max(4, int(round(bh * aspect)))
        bottom = horizon + bh / k
        if bottom > h + 0.1 * bh:  # too close for the frame: put it at the bottom edge
            bottom = h - rng.uniform(0.0, 0.1) * bh
        y0 = int(round(bottom - bh))
        for _attempt in range(10):
            x0 = int(round(rng.uniform(-0.4 * bw, w - 0.6 * bw)))
            outside = max(0, -x0) + max(0, x0 + bw - w)
            if outside / bw <= _MAX_TRUNCATION:
                break
        sprite, mask = _sprite(rng, kind, bw, bh)
        vehicles.append(_Vehicle(kind, x0, y0, sprite, mask))
    # painter's order: far (higher bottom edge) first; stable for equal bottoms
    vehicles.sort(key=lambda v: v.y0 + v.mask.shape[0])
    return vehicles


def _paste(img: np.ndarray, v: _Vehicle) -> tuple[np.ndarray, int]:
    """Composite vehicle v into img (in place); return its in-image mask and its total pixel count."""
    h, w, _ = img.shape
    sh, sw = v.mask.shape
    ys, xs = max(0, v.y0), max(0, v.x0)
    ye, xe = min(h, v.y0 + sh), min(w, v.x0 + sw)
    full = np.zeros((h, w), dtype=bool)
    if ye > ys and xe > xs:
        sub = v.mask[ys - v.y0 : ye - v.y0, xs - v.x0 : xe - v.x0]
        full[ys:ye, xs:xe] = sub
        region = img[ys:ye, xs:xe]
        region[sub] = v.sprite[ys - v.y0 : ye - v.y0, xs - v.x0 : xe - v.x0][sub]
    return full, int(v.mask.sum())


def _occlusion_level(hidden: float) -> int:
    if hidden <= OCCLUSION_LEVELS[0]:
        return 0
    if hidden <= OCCLUSION_LEVELS[1]:
        return 1
    return 2


def _compose(base: np.ndarray, vehicles: list[_Vehicle]):
    img = base.copy()
    masks, totals = [], []
    for v in vehicles:
        m, total = _paste(img, v)
        masks.append(m)
        totals.append(total)
    visible = []
    covered = np.zeros(base.shape[:2], dtype=bool)
    for m in reversed(masks):  # nearest first
        visible.append(m & ~covered)
        covered |= m
    visible.reverse()
    return img, masks, totals, visible


def road_scene(
    split: str,
    index: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    omit: tuple[int, ...] = (),
) -> RoadScene:
    """Scene ``index`` of ``road_scenes(split, n, size, seed)`` with its masks.

    ``omit`` leaves out the vehicles at those positions of the label list
    (everything else, background included, is drawn identically).
    """
    split, h, w, seed = _check_args(split, size, seed)
    index = _check_int(index, "index", 0)
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    base = _background(rng, split, h, w)
    horizon = int(round(rng.uniform(0.38, 0.52) * h))
    _draw_road(rng, base, horizon)
    base = np.clip(np.rint(base), 0, 255).astype(np.uint8)
    vehicles = _plan(rng, h, w, horizon)

    # drop vehicles (almost) entirely hidden by nearer ones or by the border; removing
    # a vehicle only uncovers others, so one pass suffices
    _, masks, _, visible = _compose(base, vehicles)
    keep = [v for v, m, vis in zip(vehicles, masks, visible) if m.any() and vis.sum() >= MIN_VISIBLE * m.sum()]
    omit_set = {int(i) for i in omit}
    if any(i < 0 or i >= len(keep) for i in omit_set):
        raise ValueError(f"omit {sorted(omit_set)} out of range: the scene has {len(keep)} vehicles")

    _, masks, totals, visible = _compose(base, keep)
    objects, trunc_exact, hidden_exact = [], [], []
    for v, m, total, vis in zip(keep, masks, totals, visible):
        inside = int(m.sum())
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
        truncated = 1.0 - inside / total
        hidden = 1.0 - vis.sum() / inside
        trunc_exact.append(truncated)
        hidden_exact.append(hidden)
        objects.append(Object(type=v.kind, truncated=round(truncated, 2), occluded=_occlusion_level(hidden), bbox=box))

    shown = [v for i, v in enumerate(keep) if i not in omit_set]
    image, _, _, _ = _compose(base, shown)
    if omit_set:
        keep_idx = [i for i in range(len(keep)) if i not in omit_set]
        objects = [objects[i] for i in keep_idx]
        masks = [masks[i] for i in keep_idx]
        trunc_exact = [trunc_exact[i] for i in keep_idx]
        hidden_exact = [hidden_exact[i] for i in keep_idx]
        _, _, _, vis_all = _compose(base, shown)
        visible = vis_all
    name = f"road-{split}-s{seed}-{index:05d}"
    return RoadScene(name, image, objects, masks, visible, base, trunc_exact, hidden_exact)


def road_scenes(
    split: str,
    n: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
) -> list[tuple[str, np.ndarray, list[Object]]]:
    """``n`` road scenes of a split: ``[(name, uint8 HxWx3 RGB, [Object])]``.

    Deterministic for ``(split, size, seed)``; scene ``i`` does not depend on ``n``.
    See the module docstring for what is drawn and how the labels are defined.
    Bad arguments raise ValueError.
    """
    split, h, w, seed = _check_args(split, size, seed)
    n = _check_int(n, "n", 0)
    out = []
    for i in range(n):
        scene = road_scene(split, i, (h, w), seed)
        out.append((scene.name, scene.image, scene.objects))
    return out
