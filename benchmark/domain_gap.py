"""The domain-gap yardstick: how well each heavy-rain model removes real heavy rain it never saw.

The last :data:`datasets.rainbank.HOLDOUT` of the 18 real training pairs are held out of the
renderer's fit and of the rain bank, so the PSNR a model trained on synthetic rain reaches on
them measures how close that rain is to the real one.  They are training data, not a test set:
choosing a renderer by them tunes nothing on a benchmark.  ``domain_gap.{md,csv}`` has one row
per (model, rain the model was trained on); a model without weights here is named, not scored.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmark.evaluate import evaluate
from core.errors import WeightsUnavailable
from core.files import atomic_write_text
from core.metrics import image_metrics, mean_offset_y
from core.profiles import get_profile
from core.weights import split_seed
from datasets.rainbank import HOLDOUT, load_pairs, pair_names, split_names
from models import provider, registry
from models.train import record_schedule

#: (method, weights[, profile]): the rainy input, then each derainer trained on each heavy rain source;
#: an entry without a profile is scored at the table's profile.
MODELS = (
    ("identity", None),
    ("resguidenet", "heavy"),
    ("resguidenet", "heavy-real"),
    ("resguidenet", "bank-heavy"),
    ("resguidenet", "bank-mix-heavy"),
    ("resguidenet", "heavy-real-spread"),
    ("resguidenet", "pairs-heavy"),
    ("resguidenet", "pairs-heavy-warm"),  # heavy-real of the same profile, fine-tuned on the real pairs
    ("resguidenet", "pairs-mix-heavy-warm"),  # the same, half the batch bank rain over other backgrounds
    ("resguidenet", "pairs-heavy-warm-seed1"),  # repeats with other seeds: the spread between runs
    ("resguidenet", "pairs-heavy-warm-seed2"),
    # a four times longer schedule, on the first and on the fitted renderer, and on the real pairs
    ("resguidenet", "heavy", "long"),
    ("resguidenet", "heavy-real", "long"),
    ("resguidenet", "pairs-heavy", "long"),
    ("resguidenet", "pairs-heavy-warm", "long"),
    ("resguidenet", "pairs-heavy-warm-seed1", "long"),
    ("resguidenet", "pairs-heavy-warm-seed2", "long"),
    ("ddn", "heavy"),
    ("ddn", "heavy-real"),
    ("jorder", "heavy"),
    ("jorder", "heavy-real"),
    # the ablations of Figs. 6, 8 and 9 (heavy rain), on real rain
    ("baseline", "heavy"),
    ("baseline", "heavy-real"),
    ("baseline_rr", "heavy"),
    ("baseline_rr", "heavy-real"),
    ("resguidenet_l2", "heavy"),
    ("resguidenet_l2", "heavy-real"),
    ("resguidenet_nrecur", "heavy"),
    ("resguidenet_nrecur", "heavy-real"),
)


class HeldOut(list):
    """The held-out real pairs ``[(name, rainy, clean)]``; :func:`benchmark.evaluate.evaluate`
    measures them with :meth:`metrics`: the suite's four numbers and the mean brightness error."""

    name = "held-out real pairs"

    @staticmethod
    def metrics(output, clean) -> dict[str, float]:
        return {**image_metrics(output, clean), "offset_y": mean_offset_y(output, clean)}


def held_out(data_root: Path) -> HeldOut:
    """The held-out real pairs."""
    _, names = split_names(pair_names(data_root), HOLDOUT)
    return HeldOut(load_pairs(data_root, names=names))


def domain_gap_frame(data_root: Path, profile: str = "quick", models=MODELS) -> pd.DataFrame:
    """One row per model: PSNR / SSIM (Y) on the held-out real pairs, or why it was not scored."""
    pairs = held_out(data_root)
    rows = []
    for method, weights, *own in models:
        prof = own[0] if own else profile
        row = {"method": method, "trained_on": weights or "-", "profile": prof, "n_images": len(pairs)}
        try:
            net, info = registry.load(method, weights, prof, data_root)
        except (WeightsUnavailable, FileNotFoundError) as exc:  # not trained here, or an absent file
            rows.append({**row, "status": "skipped", "note": str(exc).splitlines()[0]})
            continue
        res = evaluate(net, pairs, progress=False, desc=f"{method} on held-out real pairs")
        rows.append({**row, "status": "ok", **{k: res["metrics"][k] for k in ("psnr_y", "ssim_y", "offset_y")},
                     "weights_sha256": str(info.get("sha256", ""))[:12],
                     "rate_schedule": _schedule(method, weights, prof)})
    return pd.DataFrame(rows)


def _schedule(method: str, weights: str | None, profile: str) -> str:
    """The learning-rate schedule in the training record of ``method``'s ``weights`` ("" if none)."""
    family = getattr(registry.get(method).factory, "family", None)
    path = provider.find(family, weights, profile) if family and weights else None
    record = path.with_suffix(".json") if path else None
    if record is None or not record.exists():
        return ""
    return record_schedule(json.loads(record.read_text()).get("config") or {}) or ""


def seed_spreads(df: pd.DataFrame) -> list[str]:
    """For each model scored with more than one seed (``pairs-heavy-warm``, ``pairs-heavy-warm-seed1``,
    ...): the seeds, the mean PSNR and its range, e.g. ``resguidenet pairs-heavy-warm (long), seeds
    0, 1, 2: mean 24.00 dB, 23.80-24.20 (0.40 dB)``."""
    ok = df[df["status"] == "ok"] if len(df) else df
    lines = []
    groups: dict[tuple, list] = {}
    for r in ok.itertuples():
        rain, seed = split_seed(r.trained_on)
        seed = get_profile(r.profile).seed if seed is None else seed
        groups.setdefault((r.method, rain, r.profile), []).append((seed, r.psnr_y))
    for (method, rain, profile), runs in groups.items():
        if len(runs) < 2:
            continue
        seeds, psnr = sorted(s for s, _ in runs), [p for _, p in runs]
        lines.append(f"{method} {rain} ({profile}), seeds {', '.join(map(str, seeds))}: mean "
                     f"{sum(psnr) / len(psnr):.2f} dB, {min(psnr):.2f}-{max(psnr):.2f} "
                     f"({max(psnr) - min(psnr):.2f} dB)")
    return lines


def write_domain_gap(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``domain_gap.md`` and ``domain_gap.csv`` in ``out_dir``."""
    lines = ["### Domain gap: heavy-rain models on real heavy rain held out of the renderer's fit", "",
             "| Model | Trained on | Profile | Rate schedule | PSNR (Y) | SSIM (Y) | Brightness error |",
             "|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        if r.status == "ok":
            lines.append(f"| {r.method} | {r.trained_on} | {r.profile} | {r.rate_schedule or '-'} | {r.psnr_y:.2f} | "
                         f"{r.ssim_y:.3f} | {r.offset_y:+.1f} |")
        else:
            lines.append(f"| {r.method} | {r.trained_on} | {r.profile} | – | – | – | – |")
    n = int(df["n_images"].iloc[0]) if len(df) else 0
    skipped = [f"{r.method} ({r.trained_on}, {r.profile}): {r.note}" for r in df.itertuples() if r.status != "ok"]
    spreads = seed_spreads(df)
    lines += ["", f"Note: the last {n} of the 18 real RainTrainH pairs, held out of the fit of `heavy-real` and "
                  "of the rain bank; training data, never a test set. `identity` is the rainy input. Profile: the "
                  "training schedule (`long`: four times `quick`'s iterations, docs/training.md). `pairs-heavy`: "
                  "the 12 fit pairs themselves; `pairs-heavy-warm`: the same, starting from the `heavy-real` "
                  "model of its profile (so twice the iterations in all); `pairs-mix-heavy-warm`: from the same "
                  "start, half of each batch the fit pairs, half `bank-heavy` rain over the clean training images, "
                  "shipping its weight average. Rate schedule: the learning rate in each model's training record "
                  "(docs/methods.md), and the weight average's decay where there is one. Brightness error: "
                  "the output's mean luma minus the clean image's, in grey levels (0-255), averaged over the pairs. "
                  "`-seedN`: the same training with seed N in place of the profile's 0 (for a fine-tuning, the "
                  "same start weights and another stream of training crops; docs/training.md)."
              + (" Spread between seeds (PSNR): " + "; ".join(spreads) + "." if spreads else "")
              + (" Not scored: " + "; ".join(skipped) + "." if skipped else "")]
    md, csv = Path(out_dir) / "domain_gap.md", Path(out_dir) / "domain_gap.csv"
    atomic_write_text(md, "\n".join(lines) + "\n")
    atomic_write_text(csv, df.to_csv(index=False))
    return [md, csv]
