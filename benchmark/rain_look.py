"""How the suite's synthetic rain looks next to real heavy rain: a statistics table and a figure.

Every source of rain is put over the same backgrounds, the clean images of the 18 real
heavy-rain training pairs (``DATA_ROOT/train/RainTrainH-sample18``), and its rain layer is
measured with :mod:`datasets.rainstats`:

* ``real``: the real rain of each pair, measured additively (how it was made);
* a preset of :mod:`datasets.rain` (``light``, ``heavy``, ``light-real``, ``heavy-real``, ...):
  rendered over background i with seed ``seed + i`` and measured with the preset's own blend;
* ``bank-heavy``: a layer of the real-rain bank (:func:`datasets.rainbank.load_bank`, by default
  the 12 fit pairs, never the 6 held out) composed by :func:`datasets.rainbank.add_bank_rain`
  with seed ``seed + i``, measured additively.

Besides the :data:`datasets.rainstats.STAT_NAMES` statistics each background gives the
rainy-input score ``psnr_y`` / ``ssim_y`` (the suite's Y-channel metrics).  Only training data is
read: the real pairs (and nothing else) under the data root.

    python -m benchmark.rain_look DATA_ROOT [OUT_PNG]

prints the Markdown table and, with OUT_PNG, draws the figure (and its CSV beside it).
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.files import atomic_write, atomic_write_text
from datasets.rain import PRESETS, add_rain
from datasets.rainbank import add_bank_rain, load_bank, load_pairs, pair_names
from datasets.rainfit import measure_rain, real_stats
from datasets.rainstats import STAT_NAMES

__all__ = ["SOURCES", "STATISTICS", "rain_stats_long", "rain_stats_frame", "format_table", "draw_rain_look"]

SOURCES = ("real", "light", "heavy", "light-real", "heavy-real", "bank-heavy")
#: Statistics in the table, in order: the layer statistics, then the rainy-input score.
STATISTICS = tuple(STAT_NAMES) + ("psnr_y", "ssim_y")
# Statistics drawn in the figure (the ones a renderer controls), with their axis labels.
_PLOTTED = (
    ("angle_spread_deg", "angle spread (deg)"),
    ("width_px", "width (px)"),
    ("length_px", "length (px)"),
    ("blur_px", "blur (px)"),
    ("coverage", "coverage"),
    ("bright_p50", "brightness p50"),
    ("bright_p90", "brightness p90"),
    ("bright_p99", "brightness p99"),
    ("veil", "veil"),
    ("psnr_y", "rainy-input PSNR (dB)"),
)


def _renderer(source: str, data_root):
    if source == "bank-heavy":
        bank = load_bank(data_root)
        return lambda clean, seed: add_bank_rain(clean, seed, bank)
    if source in PRESETS:
        return source
    raise KeyError(f"unknown rain source {source!r}; known: real, bank-heavy and the presets {sorted(PRESETS)}")


def rain_stats_long(
    data_root: str | Path, sources: Sequence[str] = SOURCES, seed: int = 0
) -> pd.DataFrame:
    """Per-background values, long form: columns ``source``, ``background``, ``statistic``, ``value``."""
    pairs = load_pairs(data_root, pair_names(data_root))
    backgrounds = [clean for _, _, clean in pairs]
    seeds = [seed + i for i in range(len(pairs))]
    records = []
    for source in sources:
        if source == "real":
            rows = real_stats(pairs)
        else:
            rows = measure_rain(backgrounds, _renderer(source, data_root), seeds)
        for (name, _, _), row in zip(pairs, rows):
            records.extend({"source": source, "background": name, "statistic": k, "value": float(row[k])}
                           for k in STATISTICS if k in row)
    return pd.DataFrame.from_records(records, columns=["source", "background", "statistic", "value"])


def _summary(long: pd.DataFrame) -> pd.DataFrame:
    finite = long[np.isfinite(long["value"])]
    g = finite.groupby(["source", "statistic"], sort=False)["value"]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "min": g.min(), "max": g.max(), "n": g.count()})
    out = out.reset_index()
    out["std"] = out["std"].fillna(0.0)
    order_src = {s: i for i, s in enumerate(dict.fromkeys(long["source"]))}
    order_stat = {s: i for i, s in enumerate(STATISTICS)}
    out = out.sort_values(["source", "statistic"], key=lambda c: c.map(order_src if c.name == "source" else order_stat))
    return out.reset_index(drop=True)


def rain_stats_frame(
    data_root: str | Path, sources: Sequence[str] = SOURCES, seed: int = 0
) -> pd.DataFrame:
    """One row per source x statistic: ``source``, ``statistic``, ``mean``, ``std`` (sample),
    ``min``, ``max`` and ``n`` over the 18 backgrounds (non-finite values left out)."""
    return _summary(rain_stats_long(data_root, sources, seed))


def _digits(stat: str) -> int:
    if stat.endswith("_deg") or stat in ("length_px", "psnr_y"):
        return 1
    return 2 if stat in ("width_px", "blur_px") else 3 if stat == "ssim_y" else 2


def format_table(df: pd.DataFrame) -> str:
    """Markdown: one row per statistic, one column per source, cells ``mean ± std [min, max]``."""
    sources = list(dict.fromkeys(df["source"]))
    stats = [s for s in STATISTICS if s in set(df["statistic"])]
    stats += [s for s in dict.fromkeys(df["statistic"]) if s not in stats]
    cell = {(r.source, r.statistic): r for r in df.itertuples(index=False)}
    lines = ["| statistic | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for stat in stats:
        d = _digits(stat)
        cells = []
        for src in sources:
            r = cell.get((src, stat))
            if r is None or not math.isfinite(r.mean):
                cells.append("–")
            else:
                cells.append(f"{r.mean:.{d}f} ± {r.std:.{d}f} [{r.min:.{d}f}, {r.max:.{d}f}]")
        lines.append(f"| {stat} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _crops(data_root, pair: str | None, size: int, seed: int, shown: Sequence[str]):
    """The ``size`` x ``size`` centre crops of one background under each source in ``shown``."""
    names = pair_names(data_root)
    pairs = load_pairs(data_root, names)
    if pair is None:  # the pair of median real rainy-input PSNR: typical, not picked by eye
        scores = [row["psnr_y"] for row in real_stats(pairs)]
        pair = pairs[int(np.argsort(scores)[len(scores) // 2])][0]
    index = [n for n, _, _ in pairs].index(pair if pair.endswith(".png") else f"{pair}.png")
    name, rainy, clean = pairs[index]
    h, w = clean.shape[:2]
    r0, c0 = (h - size) // 2, (w - size) // 2
    out = []
    for source in shown:
        if source == "clean":
            img = clean
        elif source == "real":
            img = rainy
        else:
            render = _renderer(source, data_root)
            img = render(clean, seed + index) if callable(render) else add_rain(clean, render, seed + index)
        out.append((source, img[r0:r0 + size, c0:c0 + size]))
    return name, out


def draw_rain_look(
    data_root: str | Path,
    out_png: str | Path,
    *,
    sources: Sequence[str] = SOURCES,
    seed: int = 0,
    pair: str | None = None,
    crop: int = 128,
    shown: Sequence[str] = ("clean", "real", "heavy", "heavy-real", "bank-heavy"),
    long: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Draw real next to synthetic rain and save it atomically as ``out_png`` (+ ``.csv`` beside it).

    Top: ``crop`` x ``crop`` crops at 1:1 (one image pixel per figure pixel) of one background
    (``pair``; default the pair of median real rainy-input PSNR) under each source in ``shown``,
    from the same centre position.  Below: for each rain statistic a point per source (the mean
    over the backgrounds) with a bar from the minimum to the maximum, the real range shaded.
    ``long`` (from :func:`rain_stats_long`) saves measuring again.  Returns the summary frame
    (:func:`rain_stats_frame`), which is also the CSV.  Headless (Agg canvas, no pyplot).
    """
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if long is None:
        long = rain_stats_long(data_root, sources, seed)
    summary = _summary(long)
    name, crops = _crops(data_root, pair, crop, seed, shown)

    dpi = 100
    gap, pad_top, label_h = 12, 28, 20
    ncols_plot = 5
    plot_h_px = 230
    plots = [(k, lab) for k, lab in _PLOTTED if k in set(long["statistic"])]
    nrows_plot = math.ceil(len(plots) / ncols_plot)
    strip_w = len(crops) * crop + (len(crops) + 1) * gap
    width_px = max(strip_w, 1150)
    height_px = pad_top + crop + label_h + gap + nrows_plot * plot_h_px + 10
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.text(0.5, 1 - 8 / height_px, f"Rain over {name} ({crop}x{crop} centre crops at 1:1) and rain statistics "
             f"over the {long['background'].nunique()} real-pair backgrounds (mean, min-max bar)",
             ha="center", va="top", fontsize=10)
    x0 = (width_px - strip_w) // 2 + gap
    top = height_px - pad_top - crop
    for i, (source, img) in enumerate(crops):
        left = x0 + i * (crop + gap)
        ax = fig.add_axes((left / width_px, top / height_px, crop / width_px, crop / height_px))
        ax.imshow(img, interpolation="nearest", aspect="equal")
        ax.set_axis_off()
        fig.text((left + crop / 2) / width_px, (top - 4) / height_px, source, ha="center", va="top", fontsize=9)

    order = list(dict.fromkeys(long["source"]))
    palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
    grid_top = top - label_h - gap
    cell_w = width_px / ncols_plot
    for j, (stat, label) in enumerate(plots):
        r, c = divmod(j, ncols_plot)
        left = c * cell_w + 48
        bottom = grid_top - (r + 1) * plot_h_px + 62
        ax = fig.add_axes((left / width_px, bottom / height_px, (cell_w - 64) / width_px, (plot_h_px - 82) / height_px))
        data = long[(long["statistic"] == stat) & np.isfinite(long["value"])]
        real = data[data["source"] == "real"]["value"]
        if len(real):
            ax.axhspan(real.min(), real.max(), color="0.9", zorder=0)
        sns.pointplot(data=data, x="source", y="value", hue="source", order=order, hue_order=order,
                      palette=palette, errorbar=("pi", 100), linestyle="none", markers="o",
                      capsize=0.25, legend=False, ax=ax)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)

    out_png = Path(out_png)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    atomic_write(out_png, lambda fh: fh.write(buf.getvalue()), binary=True)
    atomic_write_text(out_png.with_suffix(".csv"), summary.to_csv(index=False, float_format="%.6g"))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print(__doc__.strip().splitlines()[-3].strip(), file=sys.stderr)
        return 2
    long = rain_stats_long(args[0])
    if len(args) == 2:
        summary = draw_rain_look(args[0], args[1], long=long)
    else:
        summary = _summary(long)
    print(format_table(summary), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
