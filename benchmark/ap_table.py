"""The detection study's table and figure: car AP on clean, rainy and derained frames.

``ap.{md,csv,tex}`` holds one section per (dataset, rain) with the clean and rainy rows and
one row per derainer, each with its bootstrap interval and its gain over the rainy row (a
paired bootstrap interval, so the note can say whether the gain is beyond the noise);
``ap_runtime.png`` plots AP against each derainer's seconds per frame.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from benchmark.detection import (
    DEFAULT_DERAINERS,
    _ap40m,
    _det_store,
    _Row,
    ap_cells,
    cell_detections,
)
from core.files import atomic_write_text
from core.layout import RESULTS, output_dir
from core.profiles import detection_profile
from detectors.bootstrap import paired_bootstrap_ci, recovered_fraction, recovered_fraction_ci
from detectors.zoo import COCO_DETECTORS
from models import registry


def _paper_name(method: str) -> str:
    try:
        return registry.get(method).paper_name
    except LookupError:
        return method



def _row_name(row: _Row) -> str:
    """The derainer's paper name, with "(authors')" for the authors' weights and the weights file's stem
    when the row names a file (no suffix: the suite-trained weights of the rain)."""
    name = _paper_name(row.derainer)
    if row.weights is None:
        return name
    return f"{name} (authors')" if row.weights == "official" else f"{name} ({Path(row.weights).stem})"



def _f(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"



def _ci(ci) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]"



def ap_table(profile: str = "quick", data_root: Path | None = None, detector: str | None = None,
             detector_weights: str | Path | None = None, results: Path | None = None, force: bool = False,
             progress: bool = False, train_missing: bool = False, datasets=("roads", "KITTI"),
             rains=("light", "heavy"), derainers=DEFAULT_DERAINERS, stats: dict | None = None,
             compute: bool = True) -> list[Path]:
    """Compute (or, with ``compute=False``, only read) the cells of the AP table and write
    ``ap.{md,csv,tex}`` and the figure ``ap_runtime.{png,csv}``; returns the written paths.

    Sections: one per (dataset, rain) whose clean and rainy cells exist (a dataset absent
    here is named in a note).  Rows: clean, rainy, then each derainer whose weights exist.
    The gain column is derained minus rainy AP40-moderate with its paired bootstrap 95 %
    interval; the note says whether each gain is beyond the bootstrap noise.
    """
    results = RESULTS if results is None else results
    prof, _ = detection_profile(profile)
    if compute:
        ap_cells(prof.name, data_root, detector, detector_weights, results, force, progress, train_missing,
                 datasets, rains, derainers, stats)
    # rendered from the stored cells only, so that the table does not depend on what this machine lacks
    sections = ap_cells(prof.name, data_root, detector, detector_weights, results, datasets=datasets, rains=rains,
                        derainers=derainers, compute=False)
    paths = write_ap_table(sections, prof.name, output_dir(Path(results), "tables", prof.name),
                           gains_cache=_det_store(results, prof.name).root / GAINS_FILE)
    paths.append(draw_ap_runtime(sections, prof.name, output_dir(Path(results), "figures", prof.name)))
    return paths



#: Paired bootstrap intervals of the gains, keyed by the two cells' fingerprints (beside the cells):
#: re-rendering the table from stored cells then recomputes none of them.
GAINS_FILE = "gains.json"



def write_ap_table(sections, profile: str, out_dir: Path, gains_cache: Path | None = None) -> list[Path]:
    """``ap.{md,csv,tex}`` in ``out_dir`` from :func:`ap_cells`' sections; the gains' paired
    intervals are read from / added to ``gains_cache`` (a JSON file) when given."""
    prof, det_prof = detection_profile(profile)
    cache: dict = {}
    if gains_cache is not None and Path(gains_cache).is_file():
        try:
            cache = dict(json.loads(Path(gains_cache).read_text()))
        except (ValueError, TypeError):
            cache = {}  # unreadable: recomputed and rewritten below
    n_cached = len(cache)

    def interval(rainy_cell, cell, gts, rainy_dets, dets):
        key = f"{rainy_cell.get('fingerprint')}|{cell.get('fingerprint')}|{det_prof['n_boot']}|{prof.seed}"
        if key not in cache:
            cache[key] = list(paired_bootstrap_ci(_ap40m, gts, rainy_dets, dets, n=det_prof["n_boot"], seed=prof.seed))
        return cache[key]

    def recovered_interval(clean_cell, rainy_cell, cell, gts, clean_dets, rainy_dets, dets):
        key = (f"recovered|{clean_cell.get('fingerprint')}|{rainy_cell.get('fingerprint')}|{cell.get('fingerprint')}|"
               f"{det_prof['n_boot']}|{prof.seed}")
        if key not in cache:
            cache[key] = list(recovered_fraction_ci(_ap40m, gts, clean_dets, rainy_dets, dets, n=det_prof["n_boot"],
                                                    seed=prof.seed))
        return cache[key]

    md, tex = [f"### Car AP on clean, rainy and derained frames (section 5.2), profile {prof.name}", ""], []
    csv_lines = ["dataset,rain,row,method,derainer_weights,ap40_moderate,ap40_moderate_lo,ap40_moderate_hi,"
                 "ap11_moderate,coco_ap,coco_ap50,coco_ap50_lo,coco_ap50_hi,gain_ap40_moderate,gain_lo,gain_hi,"
                 "beyond_noise,recovered,recovered_lo,recovered_hi,n_images,n_objects"]
    for dataset, rain, rows, cells in sections:
        base_clean, base_rainy = cells[0], cells[1]
        title = f"{dataset}, {rain} rain"
        if base_rainy.get("status") != "ok" or base_clean.get("status") != "ok":
            why = (base_rainy if base_rainy.get("status") != "ok" else base_clean).get("error", "")
            md += [f"**{title}**", "", f"Not computed: {why}", ""]
            continue
        gts, rainy_dets = cell_detections(base_rainy)
        _, clean_dets = cell_detections(base_clean)
        # the share recovered means something only where rain cost AP beyond the bootstrap noise
        rain_cost = len(clean_dets) == len(rainy_dets) and interval(base_clean, base_rainy, gts, clean_dets,
                                                                    rainy_dets)[1] < 0
        header = ["Frames", "Derainer weights", "AP40 mod. [95% CI]", "AP11 mod.", "COCO AP", "COCO AP50 [95% CI]",
                  "Gain AP40 mod. vs rainy [paired 95% CI]", "Share of the rain's loss recovered [paired 95% CI]"]
        body, notes, left_out = [], [], []
        for row, cell in zip(rows, cells):
            if cell.get("status") != "ok":
                left_out.append(f"{row.label} ({cell.get('status')}: {cell.get('error', '')})")
                continue
            m, ci = cell["metrics"], cell["ci"]
            gain, glo, ghi, beyond = None, None, None, ""
            rec, rlo, rhi = None, None, None
            name = row.label if row.derainer == "none" else f"rainy + {_row_name(row)}"
            if row.derainer != "none":
                _, dets = cell_detections(cell)
                if len(dets) == len(rainy_dets):
                    gain = m["ap40_moderate"] - base_rainy["metrics"]["ap40_moderate"]
                    glo, ghi = interval(base_rainy, cell, gts, rainy_dets, dets)
                    beyond = "yes" if (glo > 0 or ghi < 0) else "no"
                    if rain_cost and len(clean_dets) == len(dets):
                        rec = recovered_fraction(_ap40m, gts, clean_dets, rainy_dets, dets)
                        rlo, rhi = recovered_interval(base_clean, base_rainy, cell, gts, clean_dets, rainy_dets, dets)
                    notes.append(f"{_row_name(row)}: gain {gain:+.3f} AP40-moderate, paired interval "
                                 f"[{glo:+.3f}, {ghi:+.3f}] "
                                 + ("excludes 0: beyond the bootstrap noise" if beyond == "yes"
                                    else "contains 0: not beyond the bootstrap noise"))
            wtag = (cell.get("derainer_weights") or {}).get("tag", "none") if row.derainer != "none" else "-"
            values = [name, wtag, f"{_f(m['ap40_moderate'])} {_ci(ci['ap40_moderate'])}", _f(m["ap11_moderate"]),
                      _f(m["coco_ap"]), f"{_f(m['coco_ap50'])} {_ci(ci['coco_ap50'])}",
                      "-" if gain is None else f"{gain:+.3f} [{glo:+.3f}, {ghi:+.3f}]",
                      "-" if rec is None else f"{_f(rec, 2)} [{_f(rlo, 2)}, {_f(rhi, 2)}]"]
            body.append(values)
            csv_lines.append(",".join(str(x) for x in [
                dataset, rain, row.label, row.derainer, wtag, m["ap40_moderate"], *ci["ap40_moderate"],
                m["ap11_moderate"], m["coco_ap"], m["coco_ap50"], *ci["coco_ap50"],
                "" if gain is None else gain, "" if glo is None else glo, "" if ghi is None else ghi, beyond,
                *("" if v is None else v for v in (rec, rlo, rhi)), cell["n_images"], cell["n_objects"]]))
        dw = base_rainy["detector_weights"]
        trained = ("trained on COCO by its authors, never on KITTI" if base_rainy["detector"] in COCO_DETECTORS
                   else "trained on the embedded road scenes' train split only")
        note = (f"Note: detector {base_rainy['detector']} with weights {dw.get('path')} ({dw.get('source')}, "
                f"sha256 {str(dw.get('sha256'))[:12]}), {trained}; "
                f"data {dataset}: {base_rainy['n_images']} frames, {base_rainy['n_objects']} Car labels "
                f"({base_rainy['dataset_info'].get('source')}); rain: datasets.rain '{rain}' preset seeded per "
                f"frame; intervals: percentile bootstrap over frames, {det_prof['n_boot']} replicates; share recovered: "
                f"(AP derained - AP rainy) / (AP clean - AP rainy), shown where rain cost AP beyond the noise. "
                + ("; ".join(notes) + "." if notes else "No derained row to compare."))
        if left_out:
            note += " Not shown: " + "; ".join(left_out) + "."
        md += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(v) + " |" for v in body]
        md += ["", note, ""]
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
        tex += [f"% {title}", r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\hline",
                " & ".join(esc(h) for h in header) + r" \\", r"\hline"]
        tex += [" & ".join(esc(x) for x in v) + r" \\" for v in body]
        tex += [r"\hline", r"\end{tabular}", "% " + note.replace("\n", " "), ""]
    if gains_cache is not None and len(cache) != n_cached:
        atomic_write_text(Path(gains_cache), json.dumps(cache, indent=1, sort_keys=True) + "\n")
    paths = []
    for ext, text in (("md", "\n".join(md)), ("csv", "\n".join(csv_lines)), ("tex", "\n".join(tex))):
        p = Path(out_dir) / f"ap.{ext}"
        atomic_write_text(p, text.rstrip("\n") + "\n")
        paths.append(p)
    return paths



def ap_runtime_frame(sections):
    """One row per ok cell: dataset, rain, row label, AP40-moderate with its interval and the
    derainer's seconds per frame on this machine (0 for the clean and rainy rows)."""
    import pandas as pd

    rows = []
    for dataset, rain, table_rows, cells in sections:
        for row, cell in zip(table_rows, cells):
            if cell.get("status") != "ok":
                continue
            lo, hi = cell["ci"]["ap40_moderate"]
            rows.append({"dataset": dataset, "rain": rain, "row": row.label,
                         "method": row.derainer if row.derainer == "none" else _row_name(row),
                         "ap40_moderate": cell["metrics"]["ap40_moderate"], "lo": lo, "hi": hi,
                         "derain_s_per_frame": cell["seconds"]["derain"] / max(1, cell["n_images"])})
    return pd.DataFrame(rows, columns=["dataset", "rain", "row", "method", "ap40_moderate", "lo", "hi",
                                       "derain_s_per_frame"])



def draw_ap_runtime(sections, profile: str, out_dir: Path) -> Path:
    """``ap_runtime.png`` (and ``.csv``): AP40-moderate against derainer seconds per frame, one
    panel per (dataset, rain); the clean and rainy frames are horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context():  # the theme below stays with this figure: later figures look the same in any order
        return _draw_ap_runtime(sections, profile, out_dir)


def _draw_ap_runtime(sections, profile: str, out_dir: Path) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = ap_runtime_frame(sections)
    panels = list(dict.fromkeys(zip(df["dataset"], df["rain"]))) or [("no cells", "")]
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (dataset, rain) in zip(axes[0], panels):
        sub = df[(df["dataset"] == dataset) & (df["rain"] == rain)]
        for _, r in sub.iterrows():
            if r["method"] == "none":
                style = "-" if r["row"].startswith("clean") else "--"
                ax.axhline(r["ap40_moderate"], color="grey", linestyle=style, linewidth=1)
                ax.annotate(r["row"], (0, r["ap40_moderate"]), xycoords=("axes fraction", "data"),
                            textcoords="offset points", xytext=(2, 2), fontsize=7, color="grey")
            else:
                x = max(r["derain_s_per_frame"], 1e-3)
                ax.errorbar([x], [r["ap40_moderate"]], yerr=[[r["ap40_moderate"] - r["lo"]], [r["hi"] - r["ap40_moderate"]]],
                            fmt="o", capsize=3)
                ax.annotate(r["method"], (x, r["ap40_moderate"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("derainer seconds per frame (this CPU)")
        ax.set_ylabel("car AP40, moderate [95% CI]")
        ax.set_title(f"{dataset}, {rain} rain", fontsize=8)
    fig.suptitle(f"Detection AP against derainer run time (profile {profile})", fontsize=8)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "ap_runtime.png"
    tmp = out_dir / ".ap_runtime.png.tmp"
    fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    tmp.replace(path)
    atomic_write_text(out_dir / "ap_runtime.csv", df.to_csv(index=False))
    return path
