"""``results/REPORT.md``: every table and figure of a profile on one page.

The report is made only from files the run wrote (the tables' Markdown, the figures' PNGs,
the stored timing records), never from the clock or the machine that renders it, so
re-rendering the same cells gives the same bytes (``python -m benchmark.run render --check``).
"""
from __future__ import annotations

import json
from pathlib import Path

from core.files import atomic_write_text
from models.train import record_schedule

#: Where and why the reproduction departs from the paper (kept in step with the README).
DIFFERENCES = (
    "Training data: the paper trains on Rain100L/Rain100H training pairs, which this suite does not have; "
    "our derainers train on our own rain synthesis (datasets/rain.py) over BSDS500 train+val minus the "
    "Rain100 backgrounds plus Kodak24 (or over the embedded images), so scores on real Rain100L measure "
    "transfer from our renderer, not the paper's setting. Real training pairs under the data root "
    "(RainTrainL/RainTrainH) are used instead when present.",
    "Schedules: the quick profile trains 1,000 iterations on 64×64 patches (the paper: 50,000 on 128×128). "
    "With so little training the merged output of ResGuideNet can trail its last block; a longer run "
    "closes the gap. Initialisation: the paper draws every weight with Xavier; the suite starts the 1×1 "
    "merge as the mean of the blocks, because a Xavier merge whose weights sum below zero starts as a "
    "negated image, where Eq. 1's log(1/SSIM) term holds it (SSIM is positive there). The quick deraining "
    "models, the quick ablations, the denoisers and the smoke weights were trained with it; only the "
    "unfinished paper-profile checkpoints started from Xavier.",
    "Table 5: DnCNN is trained here with its authors' recipe (Adam 1e-3, residual loss, their small random "
    "batch-norm gammas), without their final learning-rate drop and eight flips/rotations, on BSDS500 "
    "train+val. That initialisation matters: started with gammas at 1, the grey DnCNNs scored 1.5-2.7 dB "
    "lower and the colour one did not learn.",
    "Optimiser: PyTorch's RMSprop (square average from 0, decay 0.99, ε outside the root), not "
    "TensorFlow 1's RMSPropOptimizer the paper used (square average from 1, decay 0.9, ε 1e-10 inside). "
    "The paper gives only ResGuideNet's initial learning rate (0.001); the suite divides it by 10 for the "
    "last fifth of the iterations, because at a constant rate the last steps left the output's mean "
    "brightness several grey levels off. Weights trained before that change keep a constant rate; the "
    "Trained weights section below says which.",
    "Parameter counts: our reading of the architecture counts fewer parameters than the paper prints for "
    "ResGuideNet and ResGuideNet_3, and no reasonable reading matches both (Table 2's parameter rows show "
    "ours beside the paper's; the README explains).",
    "Baselines the suite has not implemented yet are shown as n/i; official-weight rows are scored with "
    "the authors' checkpoints under one protocol (MATLAB-style Y-channel PSNR/SSIM).",
    "JORDER: the authors released only the single-image network on Y (a 12-layer residual CNN, no rain mask "
    "or recurrence), so that is the JORDER we score and train; its CVPR'17 release has no training code, so "
    "ours trains with the recipe of their later JORDER-E release (Adam 1e-4, L1). DID-MDN is implemented "
    "from the authors' test code and trained here in their three stages (residual net, density classifier, "
    "generator) on the suite's labelled light/medium/heavy rain, without the generator's VGG16 perceptual "
    "loss (no VGG16 weights here); the authors' weights are not available here. In the quick schedule (400 classifier steps on 400 "
    "residues) the classifier still confuses light rain with medium, and the generator given a heavier label "
    "over-derains light rain: the column measures a DID-MDN far from converged.",
    "Picture figures (fig3, fig5, fig7, fig10, fig11, fig12, fig12_dawn) show our models on the first "
    "images of each set, not the paper's chosen examples; Fig. 11 (real rainy photographs without ground "
    "truth) is drawn from DAWN's first photographs.",
    "Running times are measured on this suite's machines (named in Table 4), not on the paper's; the "
    "paper's numbers are shown beside ours.",
    "Detection (section 5.2): the paper scores a Faster R-CNN trained on clean KITTI on 480 rainy KITTI "
    "frames. Here the KITTI rows use two detectors on the 101 KITTI frames: a COCO-trained YOLOv5n (its "
    "authors' weights under the data root, never trained on KITTI) and fasterrcnn_kitti, a torchvision "
    "Faster R-CNN trained here on 93 clean KITTI tracking frames (none of them scored), under the rain "
    "fitted to real pairs (light-real, heavy-real; the first presets' rows stay as a superseded section); "
    "the road-scene rows use a small Faster R-CNN trained on the embedded road scenes. DAWN adds 200 real "
    "rainy traffic photographs with hand-drawn boxes, scored as taken: no clean counterpart, car COCO AP50 "
    "with paired intervals of each derainer's gain over the rainy photographs.",
    "Rain: the real heavy-rain training pairs here are additive (O = min(B + S, 1)), and the first presets "
    "(light, heavy) match the published rainy-input scores but not the look of real rain. The "
    "light-real / heavy-real presets are fitted to 12 of the 18 real pairs (rain_stats, domain_gap). "
    "Tables 1 and 2 and the figures (the ablations included) run the models trained on them on the real "
    "test sets, and the first presets' models on the embedded sets those presets rendered; rain_sources "
    "shows both; the autoexit table keeps the first presets' models.",
)


def _table_section(path: Path) -> str:
    text = path.read_text(encoding="utf-8").rstrip()
    if text.startswith("### "):  # one level down under the report's "Tables" heading
        text = "####" + text[3:]
    return text


def scale_out_section(records: list[Path]) -> list[str]:
    """The executors' measured speed-ups (``python -m benchmark.scale_bench``), from their stored records."""
    recs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in sorted(records)]
    if not recs:
        return []
    lines = ["## Executors: measured speed-up", "",
             "Every cell of the table computed from scratch by each executor, one after another, on this "
             "suite's CPU machine; speed-up and differences are against the first row of each command "
             "(docs/scale-out.md).", "",
             "| command | CPU cores | executor | workers × threads | seconds | speed-up | cells differing | "
             "largest per-image difference |", "|---|---|---|---|---|---|---|---|"]
    for rec in recs:
        for r in rec["runs"]:
            diff = r.get("cells_differing")
            lines.append(f"| `{rec['command']}` | {rec['cpu_count']} | {r['executor']} | {r['workers']} × "
                         f"{r['threads']} | {r['seconds']:.1f} | {r.get('speedup', 1.0):.2f}× | "
                         f"{'–' if diff is None else len(diff)} | "
                         f"{'–' if diff is None else format(r['max_per_image_difference'], '.1e')} |")
    return lines + [""]


def _cell(value) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, dict):  # a staged schedule, e.g. DID-MDN's iterations per stage
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def weights_section(records: list[Path]) -> list[str]:
    """One row per shipped weights record (``results/weights/*.json``): how each model was trained,
    so that weights trained under an older recipe are visible beside the rest."""
    rows = []
    for p in sorted(records, key=lambda p: Path(p).name):
        rec = json.loads(Path(p).read_text(encoding="utf-8"))
        cfg = rec.get("config") or {}
        schedule = record_schedule(cfg)
        size = f"{cfg['batch']} × {cfg['patch']}²" if "batch" in cfg and "patch" in cfg else None
        start = (rec.get("warm_start") or {}).get("file")
        name = f"`{Path(p).stem}`" + (f" (from `{Path(start).stem}`)" if start else "")
        rows.append(f"| {name} | {_cell(rec.get('iterations'))} | {_cell(size)} | "
                    f"{_cell(cfg.get('optimizer'))} | {_cell(cfg.get('lr'))} | {_cell(schedule)} | "
                    f"{_cell(rec.get('seconds'))} | {_cell(rec.get('threads'))} | {_cell(rec.get('final_loss'))} |")
    if not rows:
        return []
    return ["## Trained weights", "",
            "How each shipped model was trained, from its record beside the weights in `results/weights/` "
            "(– where the record does not say). Seconds are wall time on the threads shown.", "",
            "| weights | iterations | batch × patch | optimiser | learning rate | rate schedule | seconds | "
            "threads | final loss |", "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def write_report(path: Path, profile: str, tables_dir: Path, figures_dir: Path, table_ids, figure_ids,
                 scale_records: list[Path] = (), weights_records: list[Path] = ()) -> Path:
    """Gather the written tables and figures into one Markdown page at ``path``."""
    path = Path(path)
    lines = [f"# ResGuideNet reproduction: report ({profile} profile)", "",
             "Generated by `python -m benchmark.run all`; re-rendered from stored cells by "
             "`python -m benchmark.run render`. Ours beside the paper's printed numbers.", "",
             f"- Profile: `{profile}`; each table names the data, weights and hardware it used.", "",
             "## Where and why we differ from the paper", ""]
    lines += [f"- {d}" for d in DIFFERENCES]
    lines += ["", "## Tables", ""]
    for tid in table_ids:
        md = Path(tables_dir) / f"{tid}.md"
        if md.exists():
            kinds = [(name, md.with_suffix(ext)) for name, ext in (("CSV", ".csv"), ("LaTeX", ".tex"))
                     if md.with_suffix(ext).exists()]  # domain_gap and did_mdn_stages have no LaTeX
            lines += [_table_section(md), ""]
            if kinds:
                lines += [" and ".join(n for n, _ in kinds) + ": " + ", ".join(f"`{_rel(f, path)}`" for _, f in kinds), ""]
        else:
            lines += [f"#### {tid}", "", "(not rendered in this run)", ""]
    lines += scale_out_section(list(scale_records))
    lines += weights_section(list(weights_records))
    lines += ["## Figures", ""]
    for fid in figure_ids:
        png = Path(figures_dir) / f"{fid}.png"
        if png.exists():
            lines += [f"### {fid}", "", f"![{fid}]({_rel(png, path)})", ""]
            meta = png.with_suffix(".json")  # a picture figure's title and caption (benchmark.visual)
            if meta.exists():
                rec = json.loads(meta.read_text(encoding="utf-8"))
                lines += [f"{rec['title']}. {rec['caption']}.", ""]
            lines += [f"Data: `{_rel(png.with_suffix('.csv'), path)}`", ""]
        else:
            lines += [f"### {fid}", "", "(not drawn in this run)", ""]
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _rel(target: Path, report: Path) -> str:
    try:
        return str(Path(target).resolve().relative_to(Path(report).resolve().parent))
    except ValueError:
        return str(target)
