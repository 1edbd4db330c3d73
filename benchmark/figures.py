"""The paper's ablation figures, drawn with seaborn from result cells (PNG under results/figures/).

Each figure is plain data: series of (label, methods per x position, rain type). A series'
points are ordinary result cells, computed and reused like the tables' cells. Light-rain
series use Rain100L when it is under the data root (else the embedded light set); heavy-rain
series use Rain100H (else the embedded heavy set). Each point runs the weights Table 2 runs on
that dataset (:func:`benchmark.tables.rain_of`: the fitted-rain models on the real sets). The
compute curve also times each exit of ResGuideNet on this machine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmark import runtime
from core.errors import DatasetError
from core.files import atomic_write_text
from core.store import CellKey
from datasets.names import canonical_name, resolve_dataset
from models import registry

BLOCKS = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class Series:
    label: str
    methods: tuple[str, ...]  # one method per x position
    rain: str                 # "light" or "heavy": the dataset (and through it the weights, weights_rain)


@dataclass(frozen=True)
class FigureSpec:
    id: str
    title: str
    x: tuple[str, ...]
    series: tuple[Series, ...]
    metric: str = "ssim_y"
    kind: str = "per_block"   # or "compute": quality against time and parameters
    note: str = ""


def _exits(family: str, merged: str | None = None) -> tuple[str, ...]:
    return tuple(f"{family}_{k}" for k in BLOCKS) + ((merged,) if merged else ())


FIGURES: dict[str, FigureSpec] = {
    "fig4": FigureSpec(
        "fig4", "Fig. 4: SSIM of each block's output, light and heavy rain", BLOCKS + ("merged",),
        (Series("light rain", _exits("resguidenet", "resguidenet"), "light"),
         Series("heavy rain", _exits("resguidenet", "resguidenet"), "heavy"))),
    "fig6": FigureSpec(
        "fig6", "Fig. 6: Baseline against Baseline-RR (residual reuse), per block, heavy rain", BLOCKS,
        (Series("Baseline", _exits("baseline"), "heavy"), Series("Baseline-RR", _exits("baseline_rr"), "heavy"))),
    "fig8": FigureSpec(
        "fig8", "Fig. 8: l2 loss against l2+SSIM loss, per block, heavy rain", BLOCKS + ("merged",),
        (Series("l2", _exits("resguidenet_l2", "resguidenet_l2"), "heavy"),
         Series("l2 + SSIM", _exits("resguidenet", "resguidenet"), "heavy")),
        note="ours compares the loss on the full ResGuideNet (the paper's figure uses Baseline-RR)"),
    "fig9": FigureSpec(
        "fig9", "Fig. 9: with and without recursion, per block, heavy rain", BLOCKS + ("merged",),
        (Series("ResGuideNet-NRecur", _exits("resguidenet_nrecur", "resguidenet_nrecur"), "heavy"),
         Series("ResGuideNet", _exits("resguidenet", "resguidenet"), "heavy"))),
    "compute": FigureSpec(
        "compute", "Quality against compute: ResGuideNet_k, k = 1..5, and the merged model", BLOCKS + ("merged",),
        (Series("light rain", _exits("resguidenet", "resguidenet"), "light"),
         Series("heavy rain", _exits("resguidenet", "resguidenet"), "heavy")),
        metric="psnr_y", kind="compute"),
}


def get_figure(fig_id: str) -> FigureSpec:
    if fig_id not in FIGURES:
        raise ValueError(f"unknown plotted figure {fig_id!r}; choose one of {', '.join(FIGURES)}")
    return FIGURES[fig_id]


def dataset_for(rain: str, data_root) -> str:
    """Rain100L / Rain100H when they are under the data root, else the embedded set."""
    real = {"light": "Rain100L", "heavy": "Rain100H"}[rain]
    if data_root is not None:
        try:
            resolve_dataset(real, data_root)
            return real
        except DatasetError:
            pass
    return f"embedded-{rain}"


def weights_rain(rain: str, data_root) -> str:
    """The weights tag a ``rain`` series runs: Table 2's for the dataset :func:`dataset_for` picks."""
    return registry.rain_of(dataset_for(rain, data_root))


def absent_data(fig_id: str, data_root, out_dir: Path) -> list[str]:
    """The real datasets that the stored figure ``out_dir/ID`` was drawn on and that are not under
    ``data_root`` here.  Such a figure is kept as it is: redrawing it here would swap its data for
    the embedded set (or draw nothing) and overwrite a result made on a machine with the data."""
    out_dir = Path(out_dir)
    record, table = out_dir / f"{fig_id}.json", out_dir / f"{fig_id}.csv"
    if record.is_file():  # picture figures: "data: A, B;" in the caption
        caption = json.loads(record.read_text(encoding="utf-8")).get("caption", "")
        used = caption.partition("data: ")[2].partition(";")[0].split(", ")
    elif table.is_file():  # plotted figures: a dataset column
        import pandas as pd

        frame_ = pd.read_csv(table)
        used = list(frame_["dataset"].dropna().unique()) if "dataset" in frame_ else []
    else:
        return []
    missing = []
    for name in dict.fromkeys(u.strip() for u in used if u.strip()):
        if name.startswith("KITTI"):  # the detection frames: <data root>/KITTI/training
            if data_root is None or not (Path(data_root) / "KITTI" / "training" / "image_2").is_dir():
                missing.append("KITTI")
            continue
        if canonical_name(name) is None:  # embedded or generated data: present everywhere
            continue
        try:
            resolve_dataset(name, data_root)
        except (DatasetError, LookupError, OSError, TypeError):
            missing.append(name)
    return missing


def keys(spec: FigureSpec, data_root) -> list[CellKey]:
    datasets = [dataset_for(s.rain, data_root) for s in spec.series]  # one lookup per series
    return [CellKey(m, ds, registry.rain_of(ds)) for s, ds in zip(spec.series, datasets) for m in s.methods]


# ---------------------------------------------------------------- timing for the compute curve

def timings(spec: FigureSpec, store_root: Path, force: bool = False) -> dict[str, dict]:
    """Per-method CPU timing records (256×256, bare weights), stored beside the cells and reused unless ``force``."""
    out = {}
    for m in dict.fromkeys(m for s in spec.series for m in s.methods):
        path = Path(store_root) / f"runtime__{m}.json"
        if path.exists() and not force:
            out[m] = json.loads(path.read_text())
            continue
        out[m] = runtime.measure(m, size=256, repeats=5)
        atomic_write_text(path, json.dumps(out[m], indent=1) + "\n")
    return out


# ---------------------------------------------------------------- drawing

def frame(spec: FigureSpec, cells: dict[str, dict], data_root):
    """The figure's points as a pandas DataFrame (series, x, value, dataset, status)."""
    import pandas as pd

    rows = []
    for s in spec.series:
        ds = dataset_for(s.rain, data_root)
        for x, m in zip(spec.x, s.methods):
            cell = cells.get(CellKey(m, ds, registry.rain_of(ds)).id) or {}
            ok = cell.get("status") == "ok"
            rows.append({"series": s.label, "x": x, "method": m, "dataset": ds, "status": cell.get("status", "not run"),
                         "value": cell["metrics"][spec.metric] if ok else float("nan")})
    return pd.DataFrame(rows)


def draw(spec: FigureSpec, cells: dict[str, dict], data_root, out_dir: Path, runtimes: dict | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context():  # the theme below stays with this figure: later figures look the same in any order
        return _draw(spec, cells, data_root, out_dir, runtimes)


def _draw(spec: FigureSpec, cells: dict[str, dict], data_root, out_dir: Path, runtimes: dict | None) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = frame(spec, cells, data_root)
    sns.set_theme(style="whitegrid", context="paper")
    metric = spec.metric.replace("_y", " (Y)").upper()
    if spec.kind == "compute":
        df["ms"] = [runtimes[m]["median_s"] * 1000 for m in df["method"]]
        df["params"] = [runtimes[m]["params"] for m in df["method"]]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, col, label in ((axes[0], "ms", "ms per 256×256 image (CPU, median)"),
                               (axes[1], "params", "parameters")):
            sns.lineplot(data=df, x=col, y="value", hue="series", marker="o", ax=ax)
            for _, r in df[df["series"] == df["series"].iloc[0]].iterrows():
                ax.annotate(r["x"], (r[col], r["value"]), textcoords="offset points", xytext=(3, 3), fontsize=7)
            ax.set_xlabel(label)
            ax.set_ylabel(metric)
    else:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        sns.pointplot(data=df, x="x", y="value", hue="series", markers="o", ax=ax)
        ax.set_xlabel("block")
        ax.set_ylabel(metric)
    datasets = ", ".join(sorted(set(df["dataset"])))
    missing = int(df["value"].isna().sum())
    fig.suptitle(f"{spec.title}\n(data: {datasets}" + (f"; {missing} points missing" if missing else "") + ")",
                 fontsize=8)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.id}.png"
    tmp = out_dir / f".{spec.id}.png.tmp"
    fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    tmp.replace(path)
    atomic_write_text(out_dir / f"{spec.id}.csv", df.to_csv(index=False))
    return path
