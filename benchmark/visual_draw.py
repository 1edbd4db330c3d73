"""Drawing the picture figures of :mod:`benchmark.visual`: rows of image panels, feature maps,
detection frames; every PNG is written atomically."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


#: the side of the central crops a grid figure shows (the whole image along a shorter side)
CROP = 160
#: Grid figures that show whole images (photographs of about a megapixel), not central crops.
WHOLE_IMAGE = ("fig11",)


def crop(img: np.ndarray, side: int = CROP) -> np.ndarray:
    """The central ``side`` x ``side`` crop (the whole image along a shorter axis)."""
    h, w = img.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return img[top:top + side, left:left + side]


def _draw_grid(plt, spec, panels, caption: str, path: Path) -> None:
    """Rows of image panels (one row per ``Panel.row``), each titled with its metrics."""
    rows = list(dict.fromkeys(p.row for p in panels))
    columns = max(sum(p.row == row for p in panels) for row in rows)
    width = 3.2 if spec.id in WHOLE_IMAGE else 1.75  # a whole photograph is wider than it is tall
    fig, axes = plt.subplots(len(rows), columns, figsize=(width * columns, 2.2 * len(rows) + 0.6), squeeze=False)
    for r, row in enumerate(rows):
        mine = [p for p in panels if p.row == row]
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(mine):
                ax.axis("off")
                continue
            p = mine[c]
            if p.image is None:  # a blank of the row's size, saying why (the whole message is in the CSV)
                shape = next((crop(q.image).shape for q in mine if q.image is not None), (CROP, CROP, 3))
                ax.imshow(np.full(shape, 235, np.uint8), vmin=0, vmax=255)
                ax.text(0.5, 0.5, f"{p.status}:\n" + textwrap.fill(_short(p.error, 70), 24), ha="center",
                        va="center", fontsize=5, transform=ax.transAxes)
            else:
                ax.imshow(p.image if spec.id in WHOLE_IMAGE else crop(p.image), interpolation="nearest")
            title = p.label + (f"\n{p.metrics['psnr_y']:.2f} dB / {p.metrics['ssim_y']:.3f}" if p.metrics else "\n")
            ax.set_title(title, fontsize=7)
            if c == 0:
                ax.set_ylabel(row, fontsize=6)
    _finish(plt, fig, spec, caption, path)


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _draw_maps(plt, spec, panels, caption, path) -> None:
    fig = plt.figure(figsize=(11, 6.2), layout="constrained")
    for sub, p in zip(fig.subfigures(1, 2, wspace=0.04), panels[:2]):
        axes = sub.subplots(4, 4, squeeze=False)
        for k, ax in enumerate(axes.ravel()):
            ax.set_xticks([])
            ax.set_yticks([])
            if p.image is None or k >= p.image.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(crop(p.image[k]), cmap="gray", interpolation="nearest")
        if p.image is None:
            sub.suptitle(f"{p.row}: {p.status}: {_short(p.error, 60)}", fontsize=7)
        else:
            sub.suptitle(f"{p.row}\nfirst 16 of {p.image.shape[0]} maps; mean |activation| on rain pixels "
                         f"over the others: {p.extra['streak_ratio']:.2f}", fontsize=7)
    _finish(plt, fig, spec, caption, path)


def _draw_detections(plt, spec, panels, caption, path) -> None:
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 2.75 * len(panels) + 0.4), squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        ax.set_xticks([])
        ax.set_yticks([])
        if p.image is None:
            ax.text(0.5, 0.5, f"{p.row}: {p.status}: {_short(p.error)}", ha="center", va="center", fontsize=6,
                    transform=ax.transAxes)
            continue
        ax.imshow(p.image, interpolation="nearest")
        for x1, y1, x2, y2 in p.extra["gt"]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1.0, ls="--"))
        for x1, y1, x2, y2, s in p.extra["boxes"]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1.0))
            ax.text(x1, y1 - 2, f"{s:.2f}", color="red", fontsize=5)
        ax.set_title(f"{p.row}: {p.extra['found_iou70']} of {p.extra['cars']} cars found (IoU ≥ 0.7), "
                     f"{p.extra['detections']} detections with score ≥ {p.extra['score_shown']}", fontsize=7)
    _finish(plt, fig, spec, caption + "; green dashed: ground truth, red: detections", path)


#: How each figure is laid out; the others are rows of image panels (:func:`_draw_grid`).
DRAWERS = {"fig7": _draw_maps, "fig12": _draw_detections, "fig12_dawn": _draw_detections}


def draw(spec, panels, caption: str, path: Path) -> None:
    """Draw ``panels`` of the figure ``spec`` with its layout (:data:`DRAWERS`, else a grid) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DRAWERS.get(spec.id, _draw_grid)(plt, spec, panels, caption, path)


def _finish(plt, fig, spec, caption, path: Path) -> None:
    fig.suptitle(spec.title + "\n" + "\n".join(textwrap.wrap(caption, int(fig.get_figwidth() * 17))), fontsize=7)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
