"""The paper's picture figures, redrawn with our models: ``python -m benchmark.run figure fig3|fig5|fig7|fig10|fig11|fig12|fig12_dawn``.

The ablation figures (:mod:`benchmark.figures`) plot averages from result cells; these show
images, so a reader can see what the numbers mean:

* ``fig3`` (the paper's Figs. 1 and 3): the output of every ResGuideNet block and the merge, one
  light-rain and one heavy-rain test image.
* ``fig5``: Baseline against Baseline-RR (residual reuse), the output of every block, heavy rain.
* ``fig7``: the feature maps of block 2's second layer (the first convolution of its recursive
  unit, after LeakyReLU), Baseline-RR against Baseline, heavy rain.  The paper says residual
  reuse gives larger activations on rain streaks; the figure prints, per model, the ratio of the
  mean absolute activation on rain pixels (the rainy image's luma above the clean one's by more
  than :data:`RAIN_LUMA_STEP`) to that on the other pixels.
* ``fig10``: three test images derained by every method of Table 2 (same methods, same weights).
* ``fig12``: a detection example, clean, rainy and derained, with the ground-truth boxes: the
  COCO detector of the KITTI study on a real KITTI frame when both are under the data root,
  else the shipped road-scene Faster R-CNN on a road scene.

Images are the first ones of the dataset Table 2 uses for the rain (Rain100L / Rain100H when
under the data root, else the embedded sets), so nothing is picked by hand, and the weights are the
ones Table 2 runs on that dataset (the fitted-rain models on the real sets).  Each panel shows
the image's central :data:`CROP` × :data:`CROP` crop at its own resolution (rain streaks are
lost when a whole image is shrunk) and names the PSNR/SSIM (Y) of the *whole* image, which equal
the per-image values of the matching result cells.

Each figure writes ``ID.png``, ``ID.csv`` (one row per panel: method, weights, image, metrics,
status) and ``ID.json`` (title, caption, and a fingerprint of the data, weights, profile and code).
Drawing takes seconds (about a minute with GMM on Rain100L), so every run redraws them.  A
method without weights
gets an empty panel that says so (status ``skipped``); a method that fails gets one that names
the error (status ``failed``); the rest of the figure is drawn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.inference import Derainer, to_image, to_tensor
from benchmark.visual_draw import CROP, draw
from benchmark.figures import dataset_for
from benchmark.tables import get_table, weights_label
from core.errors import WeightsUnavailable
from core.files import atomic_write_text
from core.metrics import image_metrics, rgb2y, to_uint8
from core.store import code_version, fingerprint
from datasets.catalog import open_dataset
from datasets.detection import detection_dataset, rainy
from detectors.kitti_eval import box_overlap
from detectors.zoo import get_detector
from models import registry
from benchmark.detection import STUDY_DETECTORS
from core.errors import DatasetMissing

#: Bump when a figure's pixels or numbers would change for the same data and weights.
VISUAL_VERSION = 1
#: A pixel is "rain" in fig7 when the rainy luma exceeds the clean luma by this much (0-1 scale).
RAIN_LUMA_STEP = 0.1
#: Detections drawn in fig12 (display only; the AP table uses every score).
SCORE_SHOWN = 0.5
#: ... and in fig12_dawn, whose COCO YOLOv5n scores lower on real rain: YOLOv5's own default threshold.
SCORE_SHOWN_DAWN = 0.25
#: fig12 shows the first real frame with at least this many labelled cars (no frame is picked by hand).
MIN_CARS_SHOWN = 3


@dataclass(frozen=True)
class VisualSpec:
    id: str
    title: str


VISUALS: dict[str, VisualSpec] = {
    "fig3": VisualSpec("fig3", "Figs. 1 and 3: the output of every ResGuideNet block, light and heavy rain"),
    "fig5": VisualSpec("fig5", "Fig. 5: Baseline against Baseline-RR, the output of every block, heavy rain"),
    "fig7": VisualSpec("fig7", "Fig. 7: block 2's second-layer feature maps, Baseline-RR against Baseline, "
                               "heavy rain"),
    "fig10": VisualSpec("fig10", "Fig. 10: three test images derained by every method of Table 2, light rain"),
    "fig12": VisualSpec("fig12", "Fig. 12: cars found in a frame under heavy rain, clean, rainy and derained"),
    "fig11": VisualSpec("fig11", "Fig. 11: real rainy photographs (DAWN) derained; there is no ground truth"),
    "fig12_dawn": VisualSpec("fig12_dawn", "Fig. 12 on real rain: cars found in a DAWN photograph, rainy and "
                                           "derained"),
}
#: The derainers of the real-rain pictures: the suite's ResGuideNet for both fitted rains, the authors' DDN.
REAL_RAIN_SHOWN = (("resguidenet", "light-real"), ("resguidenet", "heavy-real"), ("ddn", "official"))
#: fig11 shows the first this many DAWN photographs (in the set's order: none is picked by hand).
FIG11_PHOTOS = 3


@dataclass
class Panel:
    """One image of a figure with its provenance and metrics (a CSV row)."""

    row: str
    label: str
    image: np.ndarray | None
    method: str = ""
    weights: str = ""
    name: str = ""
    metrics: dict = field(default_factory=dict)
    status: str = "ok"
    error: str = ""
    extra: dict = field(default_factory=dict)

    def record(self, fig_id: str) -> dict:
        return {"figure": fig_id, "row": self.row, "panel": self.label, "method": self.method,
                "weights": self.weights, "image": self.name, "status": self.status, "error": self.error,
                "psnr_y": _stable(self.metrics.get("psnr_y")), "ssim_y": _stable(self.metrics.get("ssim_y")),
                **self.extra}


def _stable(value: float | None) -> float | None:
    """``value`` to 12 decimals: the float64 metrics differ in their last bits with the thread
    count, and a redrawn figure should give the same CSV bytes on any machine."""
    return None if value is None else round(float(value), 12)


# ---------------------------------------------------------------- helpers

def _pairs(rain: str, n: int, profile, data_root):
    """The first ``n`` (name, rainy, clean) of Table 2's dataset for ``rain``, and its description."""
    name = dataset_for(rain, data_root)
    ds = open_dataset(name, data_root, size=profile.embedded_size, seed=profile.seed, limit=n)
    return name, list(ds), ds.describe()


def _load(method: str, weights: str | None, profile, data_root):
    """(net, weights info) or (None, (status, message)) when the method cannot be loaded."""
    try:
        net, info = registry.load(method, weights, profile.name, data_root)
    except (WeightsUnavailable, FileNotFoundError) as exc:
        return None, ("skipped", str(exc))
    except Exception as exc:  # a broken checkpoint: the panel says so, the figure goes on
        return None, ("failed", f"{type(exc).__name__}: {exc}")
    import torch

    return net.to(memory_format=torch.channels_last), info


def _to_input(img: np.ndarray):
    import torch

    return to_tensor(img).contiguous(memory_format=torch.channels_last)


def _block_outputs(full, rainy: np.ndarray) -> list[np.ndarray]:
    """[y(1), ..., y(M), merged] of a registered ResGuideNet-family model (``Full`` wrapper)."""
    import torch

    with torch.inference_mode():
        outs = full.net.forward_all(_to_input(rainy))
    return [to_image(o.float()) for o in outs]


def _metric_panel(row, label, out, clean, **kw) -> Panel:
    m = image_metrics(out, clean)
    return Panel(row, label, to_uint8(out), metrics={"psnr_y": m["psnr_y"], "ssim_y": m["ssim_y"]}, **kw)


def _missing(row, label, method, weights, why) -> Panel:
    status, message = why
    return Panel(row, label, None, method=method, weights=weights or "", status=status, error=message)


# ---------------------------------------------------------------- the figures

def _fig3(profile, data_root):
    panels, prov = [], {"data": {}, "weights": {}}
    for rain in ("light", "heavy"):
        ds_name, pairs, desc = _pairs(rain, 1, profile, data_root)
        prov["data"][ds_name] = desc.get("fingerprint")
        name, rainy, clean = pairs[0]
        row = f"{rain} rain ({ds_name}, {name})"
        panels.append(_metric_panel(row, "rainy", rainy, clean, name=name, method="identity"))
        weights = registry.rain_of(ds_name)
        net, info = _load("resguidenet", weights, profile, data_root)
        prov["weights"][f"ResGuideNet ({rain})"] = info
        labels = [f"block {k}" for k in range(1, 6)] + ["merged"]
        if net is None:
            panels += [_missing(row, lab, "resguidenet", weights, info) for lab in labels]
        else:
            for lab, out in zip(labels, _block_outputs(net, rainy)):
                panels.append(_metric_panel(row, lab, out, clean, name=name, method="resguidenet",
                                            weights=_weights_line(info)))
        panels.append(Panel(row, "clean", clean, name=name))
    return panels, prov


def _fig5(profile, data_root):
    ds_name, pairs, desc = _pairs("heavy", 1, profile, data_root)
    name, rainy, clean = pairs[0]
    weights = registry.rain_of(ds_name)
    panels, prov = [], {"data": {ds_name: desc.get("fingerprint")}, "weights": {}}
    for method, label in (("baseline", "Baseline"), ("baseline_rr", "Baseline-RR")):
        row = f"{label} ({ds_name}, {name})"
        panels.append(_metric_panel(row, "rainy", rainy, clean, name=name, method="identity"))
        net, info = _load(method, weights, profile, data_root)
        prov["weights"][label] = info
        labels = [f"block {k}" for k in range(1, 6)]
        if net is None:
            panels += [_missing(row, lab, method, weights, info) for lab in labels]
        else:
            for lab, out in zip(labels, _block_outputs(net, rainy)[:5]):
                panels.append(_metric_panel(row, lab, out, clean, name=name, method=method,
                                            weights=_weights_line(info)))
        panels.append(Panel(row, "clean", clean, name=name))
    return panels, prov


def second_layer_maps(full, rainy: np.ndarray) -> np.ndarray:
    """Block 2's second-layer activations (its recursive unit's first convolution, first use,
    after LeakyReLU) for one image: C x H x W float64."""
    import torch

    block = full.net.blocks[1]
    caught = []
    handle = block.unit.conv1.register_forward_hook(lambda mod, inp, out: caught.append(out) if not caught else None)
    try:
        with torch.inference_mode():
            full.net(_to_input(rainy), exit_block=2)
    finally:
        handle.remove()
    return block.unit.act(caught[0])[0].double().cpu().numpy()


def rain_mask(rainy: np.ndarray, clean: np.ndarray, step: float = RAIN_LUMA_STEP) -> np.ndarray:
    """Pixels whose luma the rain raised by more than ``step`` (MATLAB Y, 0-1 scale)."""
    return (rgb2y(rainy) - rgb2y(clean)) > step


def streak_ratio(maps: np.ndarray, mask: np.ndarray) -> float:
    """Mean |activation| on the masked pixels over that on the others, all maps together."""
    a = np.abs(maps)
    if not mask.any() or mask.all():
        return float("nan")
    return float(a[:, mask].mean() / max(a[:, ~mask].mean(), 1e-12))


def _fig7(profile, data_root):
    ds_name, pairs, desc = _pairs("heavy", 1, profile, data_root)
    name, rainy, clean = pairs[0]
    mask = rain_mask(rainy, clean)
    weights = registry.rain_of(ds_name)
    panels, prov = [], {"data": {ds_name: desc.get("fingerprint")}, "weights": {}}
    for method, label in (("baseline_rr", "Baseline-RR"), ("baseline", "Baseline")):
        net, info = _load(method, weights, profile, data_root)
        prov["weights"][label] = info
        if net is None:
            panels.append(_missing(f"{label} ({ds_name}, {name})", "maps", method, weights, info))
            continue
        maps = second_layer_maps(net, rainy)
        ratio = streak_ratio(maps, mask)
        panels.append(Panel(f"{label} ({ds_name}, {name})", "maps", maps, method=method,
                            weights=_weights_line(info), name=name,
                            extra={"maps": int(maps.shape[0]), "rain_pixels": int(mask.sum()), "streak_ratio": ratio}))
    return panels, prov


def _fig10(profile, data_root):
    spec = get_table("table2")
    ds_name, pairs, desc = _pairs("light", 3, profile, data_root)
    panels, prov = [], {"data": {ds_name: desc.get("fingerprint")}, "weights": {}}
    nets = {}
    for col in spec.columns:
        if col.method == "identity":
            continue
        key = spec.key(ds_name, col)
        nets[col.label] = (col.method, key.weights, *_load(col.method, key.weights, profile, data_root))
        prov["weights"][col.label] = nets[col.label][3]

    for name, wet, clean in pairs:
        row = f"{ds_name}, {name}"
        panels.append(_metric_panel(row, "Rainy images", wet, clean, name=name, method="identity"))
        for label, (method, weights, net, info) in nets.items():
            if net is None:
                panels.append(_missing(row, label, method, weights, info))
                continue
            try:
                out = Derainer(net, method)(wet)  # a figure's few images: the eager path
            except Exception as exc:  # noqa: BLE001 - one failing method leaves the others drawn
                panels.append(_missing(row, label, method, weights, ("failed", f"{type(exc).__name__}: {exc}")))
                continue
            panels.append(_metric_panel(row, label, out, clean, name=name, method=method,
                                        weights=_weights_line(info)))
        panels.append(Panel(row, "clean", clean, name=name))
    return panels, prov


def _detection_example(profile, data_root):
    """(dataset, detector, frame index, data label) of fig12: the first real KITTI frame with at
    least :data:`MIN_CARS_SHOWN` labelled cars and the COCO detector when both are under the data
    root, else the first road scene and the road-scene detector."""
    try:
        ds = detection_dataset("KITTI", data_root, profile.name)
        det = get_detector(STUDY_DETECTORS["KITTI"][0], None, profile.name, data_root)
    except (DatasetMissing, WeightsUnavailable):
        ds = detection_dataset("roads", None, profile.name)
        return ds, get_detector(None, None, profile.name), 0, "roads (test split)"
    index = next((i for i, g in enumerate(ds.gts) if sum(o.type == "Car" for o in g) >= MIN_CARS_SHOWN), 0)
    return ds, det, index, f"KITTI (training frame {ds.ids[index]})"


def _fig12(profile, data_root):
    ds, det, index, data_label = _detection_example(profile, data_root)
    clean = ds.image(index)
    wet = rainy([clean], "heavy", profile.seed, ids=[ds.ids[index]])[0]
    derainers = [(m, registry.weights_for_rain(m, "heavy"), f"rainy + {m.replace('resguidenet', 'ResGuideNet')}")
                 for m in ("resguidenet_3", "resguidenet")]
    return _detection_panels(ds, det, index, data_label, [("clean (no rain)", "none", "", clean),
                                                          ("rainy", "identity", "", wet)], derainers, profile, data_root)


def _dawn(profile, data_root):
    """DAWN's photographs, or :class:`core.errors.DatasetMissing` (the committed figure is kept)."""
    return detection_dataset("DAWN", data_root, profile.name)


def _real_label(method: str, weights: str) -> str:
    name = registry.get(method).paper_name
    return f"{name} (authors')" if weights == "official" else f"{name} ({weights})"


def _fig11(profile, data_root):
    ds = _dawn(profile, data_root)
    prov = {"data": {"DAWN (real rain)": ds.info.get("fingerprint")}, "weights": {}}
    nets = []
    for method, weights in REAL_RAIN_SHOWN:
        net, info = _load(method, weights, profile, data_root)
        prov["weights"][_real_label(method, weights)] = info
        nets.append((method, weights, net, info))
    panels = []
    for i in range(min(FIG11_PHOTOS, len(ds))):
        image_id, photo = ds.ids[i], ds.image(i)
        row = f"DAWN {image_id}"
        panels.append(Panel(row, "rainy photograph", photo, method="identity", name=image_id))
        for method, weights, net, info in nets:
            if net is None:
                panels.append(_missing(row, _real_label(method, weights), method, weights, info))
                continue
            panels.append(Panel(row, _real_label(method, weights), to_uint8(Derainer(net, method)(photo)),
                                method=method, weights=_weights_line(info), name=image_id))
    return panels, prov


def _fig12_dawn(profile, data_root):
    ds = _dawn(profile, data_root)
    det = get_detector(STUDY_DETECTORS["DAWN"][0], None, profile.name, data_root)
    index = next((i for i, g in enumerate(ds.gts) if sum(o.type == "Car" for o in g) >= MIN_CARS_SHOWN), 0)
    derainers = [(m, w, f"rainy + {_real_label(m, w)}") for m, w in REAL_RAIN_SHOWN]
    return _detection_panels(ds, det, index, f"DAWN (photograph {ds.ids[index]})",
                             [("rainy photograph", "identity", "", ds.image(index))], derainers, profile, data_root,
                             SCORE_SHOWN_DAWN)


def _detection_panels(ds, det, index, data_label, frames, derainers, profile, data_root, score_shown=SCORE_SHOWN):
    """Panels of a detection picture: ``frames`` (label, method, weights, image) as given, then the
    last of them derained by each of ``derainers`` (method, weights, label), with the frame's cars and
    the detector's boxes."""
    image_id, gts, wet = ds.ids[index], ds.gts[index], frames[-1][3]
    frames = list(frames)
    prov = {"data": {data_label: ds.info.get("fingerprint")},
            "weights": {"detector": det.meta["identity"]}}
    for method, weights, label in derainers:
        net, info = _load(method, weights, profile, data_root)
        prov["weights"][label] = info
        frames.append((label, method, weights, to_uint8(Derainer(net, method)(wet)) if net is not None else info))

    cars = [g for g in gts if g.type == "Car"]
    panels = []
    for label, method, weights, img in frames:
        if not isinstance(img, np.ndarray):  # the derainer could not be loaded: (status, message)
            panels.append(_missing(f"{label} ({image_id})", "frame", method, weights, img))
            continue
        found = det.detect_objects([to_tensor(img)[0]], score_min=score_shown)[0]
        hits = sum(any(box_overlap(d.bbox, g.bbox) >= 0.7 for d in found) for g in cars)
        panels.append(Panel(f"{label} ({image_id})", "frame", img, method=method,
                            weights=_weights_line(prov["weights"][label]) if label in prov["weights"] else "",
                            name=image_id,
                            extra={"boxes": [[round(v, 1) for v in d.bbox] + [round(d.score, 3)] for d in found],
                                   "gt": [[round(v, 1) for v in g.bbox] for g in cars],
                                   "cars": len(cars), "found_iou70": hits, "detections": len(found),
                                   "score_shown": score_shown}))
    return panels, prov


BUILDERS = {"fig3": _fig3, "fig5": _fig5, "fig7": _fig7, "fig10": _fig10, "fig12": _fig12, "fig11": _fig11,
            "fig12_dawn": _fig12_dawn}


# ---------------------------------------------------------------- entry point

def _weights_line(info) -> str:
    """The weights label of a loaded method, or the status of one that could not be loaded."""
    return weights_label(info) if isinstance(info, dict) else info[0]


def draw_visual(fig_id: str, profile, data_root, out_dir: Path, force: bool = False) -> dict:
    """Draw one picture figure (see the module doc); returns its ``ID.json`` record, whose
    ``failed_panels`` counts the panels that failed.  Raises for what stops the whole figure
    (an unreadable dataset, a missing detector).

    Like a cell, a stored figure whose record has the same fingerprint (data, weights, profile,
    figure version) and no failed panel is kept as it is unless ``force``: its pixels come from
    float convolutions whose last bits depend on the thread count and the CPU, so redrawing an
    unchanged figure would rewrite a committed file for nothing."""
    import pandas as pd

    if fig_id not in VISUALS:
        raise ValueError(f"unknown picture figure {fig_id!r}; choose one of {', '.join(VISUALS)}")
    spec = VISUALS[fig_id]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels, prov = BUILDERS[fig_id](profile, data_root)
    shown = {"fig12": "the whole frame", "fig12_dawn": "the whole photograph",
             "fig11": "whole photographs, no metric (no ground truth)", "fig7": f"central {CROP}×{CROP} crops of the maps"}.get(
        fig_id, f"central {CROP}×{CROP} crops, PSNR/SSIM (Y) of the whole image")
    weights = "; ".join(f"{k}: {_weights_line(v)}" for k, v in prov["weights"].items())
    caption = f"profile {profile.name}; data: {', '.join(prov['data'])}; {shown}; weights: {weights}"
    record = {"id": fig_id, "title": spec.title, "caption": caption, "profile": profile.name,
              "fingerprint": fingerprint({"version": VISUAL_VERSION, "crop": CROP, "provenance": prov}),
              "code_version": code_version(),
              "failed_panels": sum(p.status == "failed" for p in panels),
              "skipped_panels": sum(p.status == "skipped" for p in panels)}
    path = out_dir / f"{fig_id}.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    fresh = ({**old, "code_version": None} == {**json.loads(json.dumps(record, default=str)), "code_version": None}
             and (out_dir / f"{fig_id}.png").is_file() and (out_dir / f"{fig_id}.csv").is_file())
    if fresh and not force and not record["failed_panels"]:
        return old  # the same figure: kept, with the record of the code that first drew it
    draw(spec, panels, caption, out_dir / f"{fig_id}.png")
    atomic_write_text(out_dir / f"{fig_id}.csv", pd.DataFrame([p.record(fig_id) for p in panels]).to_csv(index=False))
    if not fresh:
        atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    return record if not fresh else old
