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
    LEFT_OUT,
    REAL_RAIN_DATASETS,
    STUDY_DATASETS,
    _ap40m,
    _coco50,
    _det_store,
    _vehicle50,
    _Row,
    ap_cells,
    cell_detections,
    has_vehicle,
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
             progress: bool = False, train_missing: bool = False, datasets=STUDY_DATASETS,
             rains=None, derainers=DEFAULT_DERAINERS, stats: dict | None = None,
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

    def interval(rainy_cell, cell, gts, rainy_dets, dets, metric=_ap40m, tag=""):
        key = f"{tag}{rainy_cell.get('fingerprint')}|{cell.get('fingerprint')}|{det_prof['n_boot']}|{prof.seed}"
        if key not in cache:
            cache[key] = list(paired_bootstrap_ci(metric, gts, rainy_dets, dets, n=det_prof["n_boot"], seed=prof.seed))
        return cache[key]

    def real_interval(*args, vehicle: bool = False):  # DAWN's gains: COCO AP50 (car or vehicle), own keys
        return interval(*args, metric=_vehicle50 if vehicle else _coco50, tag="vehicle50|" if vehicle else "coco50|")

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
                 "beyond_noise,recovered,recovered_lo,recovered_hi,n_images,n_objects,gain_metric,vehicle_ap50,"
                 "vehicle_ap50_lo,vehicle_ap50_hi,gain_vehicle_ap50,gain_vehicle_lo,gain_vehicle_hi"]
    for dataset, rain, rows, cells in sections:
        title = _title(dataset, rain, rows[0].detector)
        if dataset.lower() in REAL_RAIN_DATASETS:
            real_md, real_tex, real_csv = _real_rain_section(title, dataset, rows, cells, real_interval, det_prof)
            md, tex, csv_lines = md + real_md, tex + real_tex, csv_lines + real_csv
            continue
        base_clean, base_rainy = cells[0], cells[1]
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
                *("" if v is None else v for v in (rec, rlo, rhi)), cell["n_images"], cell["n_objects"],
                "ap40_moderate", *[""] * 6]))
        dw = base_rainy["detector_weights"]
        trained = _trained_on(base_rainy)
        note = (f"Note: detector {base_rainy['detector']} with weights {dw.get('path')} ({dw.get('source')}, "
                f"sha256 {str(dw.get('sha256'))[:12]}), {trained}; "
                f"data {dataset}: {base_rainy['n_images']} frames, {base_rainy['n_objects']} Car labels "
                f"({base_rainy['dataset_info'].get('source')}); rain: datasets.rain '{rain}' preset seeded per "
                f"frame; intervals: percentile bootstrap over frames, {det_prof['n_boot']} replicates; share recovered: "
                f"(AP derained - AP rainy) / (AP clean - AP rainy), shown where rain cost AP beyond the noise. "
                + ("; ".join(notes) + "." if notes else "No derained row to compare."))
        if left_out:
            note += " Not shown: " + "; ".join(left_out) + "."
        md += _md_block(title, header, body, note)
        tex += _tex_block(title, header, body, note)
    md += _study_time(sections)
    if gains_cache is not None and len(cache) != n_cached:
        atomic_write_text(Path(gains_cache), json.dumps(cache, indent=1, sort_keys=True) + "\n")
    paths = []
    for ext, text in (("md", "\n".join(md)), ("csv", "\n".join(csv_lines)), ("tex", "\n".join(tex))):
        p = Path(out_dir) / f"ap.{ext}"
        atomic_write_text(p, text.rstrip("\n") + "\n")
        paths.append(p)
    return paths



def _study_time(sections) -> list[str]:
    """Markdown: the deraining time of each derainer's frames as its cells recorded it (the cell that
    derained them; later detectors read them back from the cache), per megapixel, and the study's
    total of deraining and detection seconds over the cells shown."""
    lines, seen, total = [], set(), 0.0
    for dataset, _, rows, cells in sections:
        for row, cell in zip(rows, cells):
            if cell.get("status") != "ok":
                continue
            total += sum(cell["seconds"].values())
            inf = cell.get("inference") or {}
            key = (dataset, row.rain, row.derainer, cell["derainer_weights"].get("tag"))
            if row.derainer == "none" or key in seen or cell.get("derained_from_cache") or not inf.get("megapixels"):
                continue
            seen.add(key)
            s = cell["seconds"]["derain"]
            lines.append(f"| {dataset} | {row.rain} | {_row_name(row)} | {inf['path']} | {cell['n_images']} | "
                         f"{s:.0f} | {s / cell['n_images']:.2f} | {s / inf['megapixels']:.2f} |")
    if not lines:
        return []
    return ["**Deraining time of the study's frames** (cells that derained from an empty frame cache and recorded "
            "their inference path; the worker seconds of this CPU)", "",
            "| Dataset | Rain | Derainer | Path | Frames | Derain s | s / frame | s / megapixel |",
            "|---|---|---|---|---|---|---|---|", *lines, "",
            f"All cells shown: {total / 60:.0f} minutes of deraining and detection (worker seconds).", ""]


def _md_block(title: str, header: list[str], body: list[list[str]], note: str) -> list[str]:
    return [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(v) + " |" for v in body), "", note, ""]


def _tex_block(title: str, header: list[str], body: list[list[str]], note: str) -> list[str]:
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    return [f"% {title}", r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\hline",
            " & ".join(esc(h) for h in header) + r" \\", r"\hline",
            *(" & ".join(esc(x) for x in v) + r" \\" for v in body),
            r"\hline", r"\end{tabular}", "% " + note.replace("\n", " "), ""]


def _trained_on(cell: dict) -> str:
    """What the cell's detector was trained on, for the notes."""
    training = cell.get("detector_training") or {}
    if cell["detector"] in COCO_DETECTORS:
        return "trained on COCO by its authors, never on KITTI"
    if training.get("source"):
        return f"trained here on {training.get('n')} frames of {training['source']} (never a scored frame)"
    return "trained on the embedded road scenes' train split only"


def _title(dataset: str, rain: str, detector: str) -> str:
    if dataset.lower() in REAL_RAIN_DATASETS:
        return f"{dataset}, real rain (photographs as taken), detector {detector}"
    if dataset == "KITTI" and rain in ("light", "heavy"):
        return f"{dataset}, {rain} rain (first preset, superseded by the fitted {rain}-real), detector {detector}"
    return f"{dataset}, {rain} rain, detector {detector}"


def _real_rain_section(title: str, dataset: str, rows, cells, interval, det_prof) -> tuple[list, list, list]:
    """(md, tex, csv) lines of a real-rain section (DAWN): the rainy photographs, then each derainer
    with its car AP50 and the paired bootstrap interval of its gain over the rainy photographs, and
    the same for the merged vehicle class (car + truck + bus) where the detector has those classes.
    There are no clean counterparts: no clean row, no share of a loss recovered."""
    base = cells[0]
    if base.get("status") != "ok":
        return [f"**{title}**", "", f"Not computed: {base.get('error', '')}", ""], [], []
    gts, rainy_dets = cell_detections(base)
    vehicle = has_vehicle(base)
    if vehicle:
        _, rainy_vdets = cell_detections(base, vehicle=True)
    header = ["Photographs", "Derainer weights", "Car COCO AP", "Car AP50 [95% CI]",
              "Gain AP50 vs rainy [paired 95% CI]"]
    if vehicle:
        header += ["Vehicle AP50 [95% CI]", "Gain vehicle AP50 [paired 95% CI]"]
    header.append("Derain s / photograph")
    body, csv, left_out, missing, no_vehicle = [], [], [], [], []
    verdict = {"raised": [], "lowered": [], "within": []}
    vverdict = {"raised": [], "lowered": [], "within": []}

    def gain_of(cell, metrics, lo_hi, into):
        gain = metrics(cell) - metrics(base)
        lo, hi = lo_hi
        into["raised" if lo > 0 else "lowered" if hi < 0 else "within"].append(
            f"{_row_name(row)} {gain:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        return gain, lo, hi

    for row, cell in zip(rows, cells):
        if cell.get("status") == "missing":
            missing.append(_row_name(row))
            continue
        if cell.get("status") != "ok":
            left_out.append(f"{_row_name(row)} ({cell.get('status')}: {cell.get('error', '')})")
            continue
        m, ci = cell["metrics"], cell["ci"]
        gain = glo = ghi = None
        vgain = vlo = vhi = None
        if row.derainer != "none":
            gain, glo, ghi = gain_of(cell, lambda c: c["metrics"]["coco_ap50"],
                                     interval(base, cell, gts, rainy_dets, cell_detections(cell)[1]), verdict)
            if vehicle and has_vehicle(cell):
                vgain, vlo, vhi = gain_of(
                    cell, lambda c: c["vehicle"]["metrics"]["coco_ap50"],
                    interval(base, cell, gts, rainy_vdets, cell_detections(cell, vehicle=True)[1], vehicle=True),
                    vverdict)
        if vehicle and not has_vehicle(cell):
            no_vehicle.append(_row_name(row))
        wtag = (cell.get("derainer_weights") or {}).get("tag", "none") if row.derainer != "none" else "-"
        per = cell["seconds"]["derain"] / max(1, cell["n_images"])
        values = [row.label if row.derainer == "none" else f"rainy + {_row_name(row)}", wtag, _f(m["coco_ap"]),
                  f"{_f(m['coco_ap50'])} {_ci(ci['coco_ap50'])}",
                  "-" if gain is None else f"{gain:+.3f} [{glo:+.3f}, {ghi:+.3f}]"]
        vm, vci = ((cell["vehicle"]["metrics"]["coco_ap50"], cell["vehicle"]["ci"]["coco_ap50"]) if has_vehicle(cell)
                   else ("", ["", ""]))
        if vehicle:
            values += ["not recorded" if vm == "" else f"{_f(vm)} {_ci(vci)}",
                       "-" if vgain is None else f"{vgain:+.3f} [{vlo:+.3f}, {vhi:+.3f}]"]
        values.append("-" if row.derainer == "none" or cell.get("derained_from_cache") else f"{per:.2f}")
        body.append(values)
        csv.append(",".join(str(x) for x in [
            dataset, "none", row.label, row.derainer, wtag, "", "", "", "", m["coco_ap"], m["coco_ap50"],
            *ci["coco_ap50"], *("" if v is None else v for v in (gain, glo, ghi)),
            "" if gain is None else ("yes" if glo > 0 or ghi < 0 else "no"), "", "", "", cell["n_images"],
            cell["n_objects"], "coco_ap50", vm, *vci, *("" if v is None else v for v in (vgain, vlo, vhi))]))
    dw = base["detector_weights"]

    def say(sides, what):
        said = [f"{words}: " + "; ".join(sides[side]) for side, words in (
            ("raised", f"raised {what} beyond the bootstrap noise"),
            ("lowered", f"lowered {what} beyond the bootstrap noise"),
            ("within", "changed it within the noise")) if sides[side]]
        return "Deraining " + "; ".join(said) + "." if said else ""

    if vehicle:
        parts = [f"Vehicle: car, truck and bus merged into one class ({base['vehicle']['n_objects']} labels), the "
                 "detector's car, bus and truck boxes with one NMS across the three; a car box on a labelled truck "
                 "counts.", say(vverdict, "vehicle AP50")]
        if no_vehicle:
            parts.append("Vehicle AP not recorded (cells computed before the vehicle class; a rerun of `table ap` "
                         "recomputes them): " + ", ".join(no_vehicle) + ".")
        vnote = " " + " ".join(p for p in parts if p)
    elif base["detector"] in COCO_DETECTORS:
        vnote = " Vehicle AP not recorded: the rainy cell was computed before the vehicle class."
    else:
        why = (base.get("vehicle") or {}).get("why", f"{base['detector']} has no truck / bus classes: car AP only")
        vnote = f" Vehicle AP: none ({why})."
    note = (f"Note: detector {base['detector']} with weights {dw.get('path')} ({dw.get('source')}, sha256 "
            f"{str(dw.get('sha256'))[:12]}), {_trained_on(base)}; data {dataset}: {base['n_images']} real rainy photographs, "
            f"{base['n_objects']} Car labels ({base['dataset_info'].get('source')}), scored as taken (no rain added). "
            "Metric: car COCO AP and AP50 (pycocotools); the labels have no KITTI truncation / occlusion levels, "
            "so KITTI's Easy / Moderate / Hard do not apply; there are no clean counterparts, so no clean row and no "
            f"share recovered. Intervals: percentile bootstrap over photographs, {det_prof['n_boot']} replicates; "
            "gains: paired (the same resampled photographs for both rows). "
            + (say(verdict, "car AP50") or "No derained row yet.") + vnote
            + " Left out by design: " + "; ".join(LEFT_OUT.values()) + ".")
    if missing:
        note += (" Not computed yet (`python -m benchmark.run table ap --data-root DIR` computes them): "
                 + ", ".join(missing) + ".")
    if left_out:
        note += " Not shown: " + "; ".join(left_out) + "."
    return _md_block(title, header, body, note), _tex_block(title, header, body, note), csv


def ap_runtime_frame(sections):
    """One row per ok cell: dataset, rain, row label, AP40-moderate with its interval and the
    derainer's seconds per frame on this machine (0 for the clean and rainy rows)."""
    import pandas as pd

    rows = []
    for dataset, rain, table_rows, cells in sections:
        for row, cell in zip(table_rows, cells):
            if cell.get("status") != "ok" or cell["ci"].get("ap40_moderate") is None:  # real rain: no KITTI AP
                continue
            lo, hi = cell["ci"]["ap40_moderate"]
            rows.append({"dataset": dataset, "rain": rain, "detector": row.detector, "row": row.label,
                         "method": row.derainer if row.derainer == "none" else _row_name(row),
                         "ap40_moderate": cell["metrics"]["ap40_moderate"], "lo": lo, "hi": hi,
                         "derain_s_per_frame": cell["seconds"]["derain"] / max(1, cell["n_images"])})
    return pd.DataFrame(rows, columns=["dataset", "rain", "detector", "row", "method", "ap40_moderate", "lo", "hi",
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
    panels = list(dict.fromkeys(zip(df["dataset"], df["rain"], df["detector"]))) or [("no cells", "", "")]
    sns.set_theme(style="whitegrid", context="paper")
    cols = min(4, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.6 * rows_n), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (dataset, rain, detector) in zip(axes.flat, panels):
        sub = df[(df["dataset"] == dataset) & (df["rain"] == rain) & (df["detector"] == detector)]
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
        ax.set_title(f"{dataset}, {rain} rain, {detector}", fontsize=8)
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
