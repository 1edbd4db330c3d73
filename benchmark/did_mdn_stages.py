"""Where DID-MDN's PSNR goes: each stage of its pipeline and each choice of its test protocol,
scored on training data only (``table did_mdn_stages``).

DID-MDN trained here scores below the rainy input on Rain100L.  This table takes the pipeline
apart on images it may be judged on without touching a test set:

* **groups** -- clean training images (:func:`datasets.training.training_images`, a fixed spread of
  :data:`N_IMAGES`) rendered with each rain of DID-MDN's own labelled mixture
  (:data:`datasets.rain.DENSITY_PRESETS`: heavy, medium, light) and with the fitted rains
  (``light-real``, ``heavy-real``), and the real heavy pairs held out of the renderer's fit
  (:func:`benchmark.domain_gap.held_out`).  Each group has its true density label.
* **rows** (mean PSNR / SSIM on Y, the suite's protocol, outputs rounded to uint8):

  - ``rainy``: the input;
  - ``resize 512 and back``: the *clean* image resized to 512 x 512 and back, no network: what the
    authors' protocol alone costs, a ceiling for any output it produces;
  - ``residual net``: stage 1's clean estimate (the classifier's input is the rain it removes);
  - ``generator, true label`` / ``predicted label``, each under the authors' protocol (512 x 512,
    min-max stretch: Table 2's setting), without the stretch, and at native resolution;
  - and the classifier's accuracy on the group, with the labels it chose.

The rows read differently: the gap between ``resize 512 and back`` and ``rainy`` is the protocol's
price; between ``true`` and ``predicted`` label, the classifier's; between the stretched and the
plain output, the stretch's; between the generator and the rainy input, the generator's own.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.domain_gap import held_out
from core.files import atomic_write_text
from core.metrics import image_metrics, to_uint8
from datasets.rain import DENSITY_PRESETS, add_rain
from datasets.training import training_images
from models import registry
from models.did_mdn import CLASSIFIER_SIZE, _resize

#: Clean training images per rendered group (an even spread over the training list).
N_IMAGES = 6
#: The seed of the rendered rain (per image: SEED + index).
SEED = 20261208
#: Rendered groups: rain preset -> the true density label (0 heavy, 1 medium, 2 light).
RENDERED = {**{name: k for k, name in enumerate(DENSITY_PRESETS)}, "light-real": 2, "heavy-real": 0}
HELD_OUT = "held-out real heavy pairs"

#: (row name, protocol, stretch, use the true label)
GENERATOR_ROWS = (
    ("generator, predicted label, 512 + stretch (Table 2)", "authors", True, False),
    ("generator, true label, 512 + stretch", "authors", True, True),
    ("generator, predicted label, 512, no stretch", "authors", False, False),
    ("generator, true label, 512, no stretch", "authors", False, True),
    ("generator, predicted label, native, no stretch", "native", False, False),
    ("generator, true label, native, no stretch", "native", False, True),
)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.tensor(img).permute(2, 0, 1)[None].float() / 255.0


def _image(t: torch.Tensor) -> np.ndarray:
    return to_uint8(t[0].permute(1, 2, 0).clamp(0, 1).numpy())


def groups(data_root: Path, n_images: int = N_IMAGES) -> list[tuple[str, int, list[tuple[np.ndarray, np.ndarray]]]]:
    """``[(group, true label, [(rainy, clean)])]``: the rendered training images, then the held-out pairs."""
    images, _ = training_images(data_root)
    step = max(1, len(images) // n_images)
    chosen = images[::step][:n_images]
    out = [(rain, label, [(add_rain(img, rain, SEED + k), img) for k, img in enumerate(chosen)])
           for rain, label in RENDERED.items()]
    pairs = held_out(data_root)
    if pairs:
        out.append((HELD_OUT, 0, [(rainy, clean) for _, rainy, clean in pairs]))
    return out


def stages_frame(data_root: Path, profile: str = "quick", weights: str = "density",
                 n_images: int = N_IMAGES) -> pd.DataFrame:
    """One row per (group, stage): mean PSNR / SSIM (Y) over the group, and the classifier's accuracy."""
    net, info = registry.load("did_mdn", weights, profile, data_root)
    net.eval()
    saved = (net.protocol, net.stretch)
    rows = []
    try:
        with torch.inference_mode():
            for group, label, pairs in groups(data_root, n_images):
                scores: dict[str, list[dict]] = {}
                predicted = []

                def add(stage, out, clean):
                    scores.setdefault(stage, []).append(image_metrics(out, clean))

                for rainy, clean in pairs:
                    h, w = clean.shape[:2]
                    x = _tensor(rainy)
                    add("rainy", rainy, clean)
                    add("resize 512 and back (clean image, no network)",
                        _image(_resize(_resize(_tensor(clean), (CLASSIFIER_SIZE, CLASSIFIER_SIZE)), (h, w))), clean)
                    x512 = _resize(x, (CLASSIFIER_SIZE, CLASSIFIER_SIZE)) * 2 - 1
                    estimate = net.residual_net(x512, torch.zeros(1))
                    add("residual net (stage 1), 512", _image(_resize((estimate + 1) / 2, (h, w))), clean)
                    predicted.append(int(net.density(x512)[0]))
                    for stage, protocol, stretch, true in GENERATOR_ROWS:
                        net.protocol, net.stretch = protocol, stretch
                        out = net(x, torch.tensor([label]) if true else None)
                        add(stage, _image(out), clean)
                accuracy = float(np.mean([p == label for p in predicted]))
                chose = ", ".join(f"{DENSITY_PRESETS[k] if k < 3 else 'unused'} {predicted.count(k)}"
                                  for k in sorted(set(predicted)))
                for stage, values in scores.items():
                    rows.append({"group": group, "true_label": DENSITY_PRESETS[label], "stage": stage,
                                 "n_images": len(values),
                                 "psnr_y": float(np.mean([v["psnr_y"] for v in values])),
                                 "ssim_y": float(np.mean([v["ssim_y"] for v in values])),
                                 "classifier_accuracy": accuracy, "classifier_chose": chose,
                                 "weights": info.get("tag", weights), "weights_sha256": str(info.get("sha256", ""))[:12]})
    finally:
        net.protocol, net.stretch = saved
    return pd.DataFrame(rows)


def write_stages(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``did_mdn_stages.{md,csv}``: one block per group, its stages as rows."""
    lines = ["### DID-MDN stage by stage, on training data (where its PSNR goes)", ""]
    for group, block in df.groupby("group", sort=False):
        first = block.iloc[0]
        lines += [f"**{group}** (true density {first.true_label}; {first.n_images} images; classifier "
                  f"accuracy {first.classifier_accuracy:.2f}, chose: {first.classifier_chose})", "",
                  "| Stage | PSNR (Y) | SSIM (Y) |", "|---|---|---|"]
        lines += [f"| {r.stage} | {r.psnr_y:.2f} | {r.ssim_y:.3f} |" for r in block.itertuples()]
        lines.append("")
    weights = f"{df.iloc[0].weights} ({df.iloc[0].weights_sha256})" if len(df) else "-"
    lines.append(f"Note: DID-MDN weights {weights}. Training data only: {N_IMAGES} clean training images (BSDS500 "
                 "train+val minus the Rain100 backgrounds, an even spread) rendered with each rain of DID-MDN's "
                 "labelled mixture and with the fitted rains, seeded per image, and the real heavy pairs held out "
                 "of the renderer's fit. '512': the authors' test protocol (resize to 512 x 512 and back); "
                 "'stretch': their min-max stretch of the output; 'native': the networks at the input's size. "
                 "'true label': the generator given the group's density in place of the classifier's.")
    md, csv = Path(out_dir) / "did_mdn_stages.md", Path(out_dir) / "did_mdn_stages.csv"
    atomic_write_text(md, "\n".join(lines) + "\n")
    atomic_write_text(csv, df.to_csv(index=False))
    return [md, csv]
