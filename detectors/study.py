"""The detection study of the paper's section 5.2: car AP of a detector on clean, rainy and derained frames.

A Faster R-CNN (:mod:`detectors.torchvision_det`) trained on *clean* frames loses
cars when the frames are rainy; deraining them first should win some of that
AP back.  One result cell per (detector, derainer, dataset, rain):

    rain (datasets.rain, seeded per image) -> derainer (models.registry) -> detector
    -> KITTI devkit AP (ap11 / ap40, easy / moderate / hard) + COCO AP / AP50
    + percentile bootstrap intervals over images

Data (:func:`detection_dataset`):

* ``"roads"``: the embedded road scenes (:mod:`datasets.roads`), *test* split;
  count and size from the profile (:data:`DET_PROFILES`).  No download.
* ``"KITTI"``: ``<data_root>/KITTI/training/{image_2,label_2}`` through
  :class:`detectors.kitti.KittiDetection` (the first ``profile.real_limit``
  frames when the profile sets one).  Absent -> ``DatasetMissing`` -> the cell
  is skipped, not failed.  A folder holding ``image_2/`` and ``label_2/`` works too.

Rain (:func:`rainy`): the suite's own synthesis, ``datasets.rain.add_rain`` with
the ``light`` / ``heavy`` presets, seeded per image from ``(seed, image id)``.
KITTI frames (1242x375) get the *same* presets at their native resolution: the
streak lengths / densities were calibrated on BSDS500 training images only and
are not retuned on KITTI (or on any test frame) -- tuning the rain on the frames
the detector is scored on would be tuning on test data.  So the rain looks
somewhat finer relative to a 1242-wide frame than to a 481-wide photo.

Detector (:func:`get_detector`): ``weights`` (a local checkpoint path), else the
shipped ``results/weights/detector-<name>-<profile>.pt``, else the cached
``results/cache/detectors/<name>-<profile>.pt`` (the same shipped-before-cache
order as :mod:`models.provider`), else ``WeightsUnavailable`` naming the command
that trains one (:func:`train_detector_cmd`).  The detector is trained on the
road scenes' *train* split only -- never on KITTI, never on the test split --
so a KITTI number is a transfer number.  Its resize limits (``min_size`` /
``max_size``) are part of the detector: they are saved in the checkpoint's meta
and applied to every dataset (KITTI frames are shrunk to the road scenes' scale).

Derained images are clamped to [0, 1] and rounded to uint8 (what a derainer
writing an image file would hand on) before the detector sees them.

Cells: JSON files ``<results>/cells/<profile>/detection/<id>.json`` (a
subfolder, so the PSNR/SSIM tables never see them), written atomically with
:func:`benchmark.cells.atomic_write_text`; a fresh ``ok`` cell is reused, a
missing detector / derainer weight or dataset gives a ``skipped`` cell, any
other error a ``failed`` cell, and the run goes on.  A cell stores its
detections and ground truth per image, so :func:`ap_table` can compute paired
bootstrap intervals of the deraining gain from the cells alone.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from detectors.kitti import Object, format_label, parse_label_line

__all__ = [
    "DET_PROFILES",
    "RAINS",
    "DEFAULT_DERAINERS",
    "DetectionSet",
    "detection_dataset",
    "rain_seed",
    "rainy",
    "detector_paths",
    "get_detector",
    "train_detector_cmd",
    "cell_id",
    "detect_cell",
    "contract",
    "ap_table",
    "ap_cell_plan",
]

DET_FORMAT = 1
RAINS = ("none", "light", "heavy")
NO_DERAINER = ("none", "identity")

#: Scale of the study per profile: road-scene test / train counts and size (H, W), the
#: detector's training schedule, bootstrap replicates.  ``quick`` / ``paper`` schedules are
#: first guesses (not yet timed against the AP they reach).
DET_PROFILES: dict[str, dict] = {
    "smoke": dict(n_test=6, size=(96, 288), n_train=24, iterations=30, batch=2, n_boot=20),
    "quick": dict(n_test=60, size=(192, 576), n_train=400, iterations=1500, batch=4, n_boot=200),
    "paper": dict(n_test=300, size=(192, 576), n_train=2000, iterations=6000, batch=8, n_boot=1000),
}

#: Rows of the AP table after "clean" and "rainy": (method, weights); ``None`` weights = the
#: suite-trained weights matching the rain (light / heavy), ``"official"`` = the authors'
#: checkpoint under the data root.  Rows whose weights are absent are left out (and named).
DEFAULT_DERAINERS: tuple[tuple[str, str | None], ...] = (
    ("resguidenet_3", None),
    ("resguidenet", None),
    ("prenet", "official"),
    ("jorder", "official"),
    ("ddn", "official"),
)


def _profile(name: str):
    from benchmark.profiles import get_profile

    prof = get_profile(name)
    if prof.name not in DET_PROFILES:
        raise ValueError(f"no detection settings for profile {prof.name!r}")
    return prof, DET_PROFILES[prof.name]


# --------------------------------------------------------------------------
# data


@dataclass
class DetectionSet:
    """Frames with ground truth: ``image(i)`` is uint8 HxWx3 RGB, ``gts[i]`` the label list."""

    name: str
    ids: list[str]
    gts: list[list[Object]]
    load: Callable[[int], np.ndarray]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> np.ndarray:
        return self.load(index)

    @property
    def n_objects(self) -> int:
        """Counted Car ground truths (every ``Car`` label, whatever its difficulty)."""
        return sum(1 for g in self.gts for o in g if o.type == "Car")


def _labels_digest(h, gts) -> None:
    for g in gts:
        h.update("\n".join(format_label(o) for o in g).encode())
        h.update(b"\x00")


def detection_dataset(name: str, data_root: Path | None, profile: str = "quick") -> DetectionSet:
    """``"roads"`` (embedded test split), ``"KITTI"`` (under the data root) or a KITTI-layout folder.

    A missing KITTI folder raises :class:`datasets.catalog.DatasetMissing` naming the path.
    """
    from datasets.catalog import DatasetMissing

    prof, det = _profile(profile)
    if name.lower() == "roads":
        from datasets.roads import road_scenes

        scenes = road_scenes("test", det["n_test"], size=det["size"], seed=prof.seed)
        images = [s[1] for s in scenes]
        h = hashlib.sha256()
        for _, img, _ in scenes:
            h.update(img.tobytes())
        gts = [list(s[2]) for s in scenes]
        _labels_digest(h, gts)
        info = {"source": "embedded road scenes (datasets.roads), test split", "split": "test",
                "size": list(det["size"]), "seed": prof.seed, "fingerprint": h.hexdigest()}
        return DetectionSet("roads", [s[0] for s in scenes], gts, lambda i: images[i], info)

    from detectors.kitti import KittiDetection

    if name.lower() == "kitti":
        if data_root is None:
            raise DatasetMissing("KITTI: no data root; pass --data-root or set RESGUIDE_DATA "
                                 "(expected <root>/KITTI/training/{image_2,label_2})")
        root = Path(data_root) / "KITTI" / "training"
        label = "KITTI"
    elif Path(name).is_dir() and (Path(name) / "image_2").is_dir():
        root, label = Path(name), Path(name).name
    else:
        raise ValueError(f"unknown detection dataset {name!r}; choose roads, KITTI or a folder with image_2/, label_2/")
    if not (root / "image_2").is_dir() or not (root / "label_2").is_dir():
        raise DatasetMissing(f"KITTI: no detection data at {root} (expected {root}/image_2 and {root}/label_2)")
    ds = KittiDetection(root)
    ids = ds.ids[: prof.real_limit] if prof.real_limit else ds.ids
    ds = KittiDetection(root, ids)
    gts = ds.all_labels()
    h = hashlib.sha256()
    for i, image_id in enumerate(ds.ids):
        h.update(image_id.encode())
        h.update(str(ds.image_path(i).stat().st_size).encode())
    _labels_digest(h, gts)

    def load(i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(ds.image_path(i)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()

    info = {"source": str(root), "limit": prof.real_limit, "fingerprint": h.hexdigest()}
    return DetectionSet(label, list(ds.ids), gts, load, info)


# --------------------------------------------------------------------------
# rain


def rain_seed(seed: int, image_id: str) -> int:
    """The rain seed of one image: a stable 32-bit hash of ``(seed, image id)``."""
    digest = hashlib.sha256(f"detection-rain/{int(seed)}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def rainy(images: Sequence[np.ndarray], rain: str, seed: int, ids: Sequence[str] | None = None) -> list[np.ndarray]:
    """Rainy uint8 copies of ``images`` (uint8 HxWx3), image ``k`` seeded with ``rain_seed(seed, ids[k])``.

    ``rain`` is ``"none"`` (the images themselves are returned, uncopied), ``"light"`` or
    ``"heavy"`` (the :mod:`datasets.rain` presets, the same whatever the frame size: KITTI's
    1242x375 frames are not given retuned streaks -- no tuning on test data).  ``ids``
    default to ``"0", "1", ...``: pass the frames' ids so that an image's rain does not depend
    on where it sits in a list.
    """
    if rain not in RAINS:
        raise ValueError(f"rain must be one of {', '.join(RAINS)}, got {rain!r}")
    images = list(images)
    if ids is None:
        ids = [str(k) for k in range(len(images))]
    if len(ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(ids)} ids")
    if rain == "none":
        return images
    from datasets.rain import add_rain

    return [add_rain(img, rain, rain_seed(seed, image_id)) for img, image_id in zip(images, ids)]


# --------------------------------------------------------------------------
# detector


def detector_paths(name: str, profile: str) -> dict[str, Path]:
    """Where a detector's weights are looked for: ``shipped`` and ``cache`` (plus the run's ``ckpt``)."""
    from models import provider

    cache = provider.CACHE_DIR.parent / "detectors"
    return {"shipped": provider.WEIGHTS_DIR / f"detector-{name}-{profile}.pt",
            "cache": cache / f"{name}-{profile}.pt",
            "ckpt": cache / f"{name}-{profile}.ckpt"}


def _train_command(name: str, profile: str) -> str:
    return f"python -m benchmark.run train-detector --detector {name} --profile {profile}"


def _checkpoint_meta(path: Path) -> dict:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return {}  # load_checkpoint reports the problem
    if isinstance(obj, dict) and isinstance(obj.get("meta"), dict):
        return dict(obj["meta"])
    return {}


def get_detector(name: str | None = None, weights: str | Path | None = None, profile: str = "quick",
                 data_root: Path | None = None, device: str = "cpu"):
    """A :class:`detectors.torchvision_det.Detector` with trained weights (see the module doc).

    ``detector.meta["identity"]`` describes the weights (path, bytes, sha256, source).
    The resize limits come from the checkpoint's meta (``min_size`` / ``max_size``) when it
    has them, else from the profile's road-scene size.  ``data_root`` is unused (the
    detector never trains on real data); it is accepted for symmetry with ``registry.load``.
    """
    from detectors.torchvision_det import DEFAULT_DETECTOR, build_detector
    from models.registry import WeightsUnavailable, file_identity

    name = name or DEFAULT_DETECTOR
    _, det = _profile(profile)
    if weights is not None:
        path, source = Path(weights), "given"
        if not path.is_file():
            raise ValueError(f"detector checkpoint {path} does not exist")
    else:
        paths = detector_paths(name, profile)
        if paths["shipped"].is_file():
            path, source = paths["shipped"], "shipped"
        elif paths["cache"].is_file():
            path, source = paths["cache"], "trained here (cache)"
        else:
            raise WeightsUnavailable(
                f"no trained {name} detector for the {profile} profile (looked for {paths['shipped']} and "
                f"{paths['cache']}): train one with `{_train_command(name, profile)}` "
                f"(or pass --detector-weights PATH)")
    meta = _checkpoint_meta(path)
    min_size = int(meta.get("min_size") or det["size"][0])
    max_size = int(meta.get("max_size") or det["size"][1])
    detector = build_detector(name, checkpoint=path, min_size=min_size, max_size=max_size, device=device)
    detector.meta.update(min_size=min_size, max_size=max_size,
                         identity={"source": source, **file_identity(path)})
    return detector


def train_detector_cmd(name: str | None = None, profile: str = "quick", data_root: Path | None = None,
                       max_seconds: float | None = None, progress: bool = True, device: str = "cpu") -> dict:
    """Train (or resume) the study's detector on the road scenes' *train* split and cache it.

    The checkpoint ``<cache>/detectors/<name>-<profile>.ckpt`` makes a stopped run
    (``max_seconds``) resumable; when complete the weights go to ``<name>-<profile>.pt``
    with a ``.json`` record beside them.  ``data_root`` is unused on purpose: KITTI frames
    are test data here.  Returns ``{"complete", "weights", "iterations", "seconds", ...}``.
    """
    import torch

    from datasets.roads import road_scenes
    from detectors.torchvision_det import DEFAULT_DETECTOR, build_detector
    from detectors.train_det import train_detector
    from models.registry import file_identity

    name = name or DEFAULT_DETECTOR
    prof, det = _profile(profile)
    paths = detector_paths(name, profile)
    out = {"detector": name, "profile": prof.name}
    for key in ("shipped", "cache"):
        if paths[key].is_file():
            return {**out, "complete": True, "weights": str(paths[key]), "already": key}
    h, w = det["size"]
    samples = road_scenes("train", det["n_train"], size=(h, w), seed=prof.seed)
    torch.manual_seed(prof.seed)
    model = build_detector(name, min_size=h, max_size=w)
    paths["ckpt"].parent.mkdir(parents=True, exist_ok=True)
    res = train_detector(model, samples, det["iterations"], batch=det["batch"], seed=prof.seed,
                         ckpt_path=paths["ckpt"], progress=progress, max_seconds=max_seconds, device=device)
    out.update(complete=res["complete"], iterations=res["iterations"], seconds=res["seconds"],
               final_loss=res["final_loss"], checkpoint=str(paths["ckpt"]))
    if not res["complete"]:
        return out
    training_data = {"source": "embedded road scenes (datasets.roads)", "split": "train",
                     "n": det["n_train"], "size": [h, w], "seed": prof.seed,
                     "samples_sha256": res["config"]["samples_sha256"]}
    meta = {"min_size": h, "max_size": w, "profile": prof.name, "training_data": training_data,
            "iterations": res["iterations"], "seconds": res["seconds"], "final_loss": res["final_loss"],
            "config": res["config"]}
    model.save(paths["cache"], meta)
    record = {**meta, **file_identity(paths["cache"])}
    from benchmark.cells import atomic_write_text

    atomic_write_text(paths["cache"].with_suffix(".json"), json.dumps(record, indent=1, default=str) + "\n")
    out["weights"] = str(paths["cache"])
    return out


# --------------------------------------------------------------------------
# cells


class _Key:
    def __init__(self, cid: str):
        self.id = cid


def cell_id(detector: str, derainer: str, dataset: str, rain: str, derainer_weights: str | None = None) -> str:
    """``det__{detector}__{derainer[@weights]}__{dataset}__{rain}``, file-name safe."""
    d = derainer if derainer_weights in (None, "") else f"{derainer}@{derainer_weights}"
    raw = f"det__{detector}__{d}__{dataset}__{rain}"
    return re.sub(r"[^A-Za-z0-9_.@=+-]", "-", raw)


def _det_store(results: Path, profile: str):
    from benchmark.cells import Store

    return Store(Path(results) / "cells" / profile / "detection")


def default_derainer_weights(derainer: str, rain: str) -> str | None:
    """The weights a derainer uses on ``rain`` when none are named: the suite-trained model of that
    rain for the methods the suite trains, the authors' checkpoint for those it does not."""
    if derainer in NO_DERAINER:
        return None
    from models import registry

    spec = registry.get(derainer)
    if getattr(spec.factory, "family", None) is not None:
        return rain if rain in ("light", "heavy") else None
    if derainer in registry.OFFICIAL_WEIGHTS:
        return "official"
    return None


def _round_dets(objs: list[Object]) -> list[list[float]]:
    return [[round(float(v), 3) for v in o.bbox] + [round(float(o.score), 6)] for o in objs]


def _dets_from_rows(rows) -> list[Object]:
    return [Object(type="Car", truncated=0.0, occluded=0, bbox=tuple(r[:4]), score=float(r[4])) for r in rows]


def cell_detections(cell: dict) -> tuple[list[list[Object]], list[list[Object]]]:
    """(ground truths, detections) per image, rebuilt from a stored ``ok`` cell."""
    gts = [[parse_label_line(line) for line in p["gt"]] for p in cell["per_image"]]
    dets = [_dets_from_rows(p["dets"]) for p in cell["per_image"]]
    return gts, dets


def _ap40m(g, d) -> float:
    from detectors.kitti_eval import kitti_car_ap

    return kitti_car_ap(g, d)["ap40_moderate"]


def _coco50(g, d) -> float:
    from detectors.coco_eval import coco_car_ap

    return coco_car_ap(g, d)["ap50"]


CI_METRICS = {"ap40_moderate": _ap40m, "coco_ap50": _coco50}


def _metrics(gts, dets, n_boot: int, seed: int) -> dict:
    from detectors.bootstrap import bootstrap_ci
    from detectors.coco_eval import coco_car_ap
    from detectors.kitti_eval import kitti_car_ap

    m = dict(kitti_car_ap(gts, dets))
    coco = coco_car_ap(gts, dets)
    m.update(coco_ap=coco["ap"], coco_ap50=coco["ap50"], coco_ap75=coco["ap75"])
    ci = {k: list(bootstrap_ci(fn, gts, dets, n=n_boot, seed=seed)) for k, fn in CI_METRICS.items()}
    return {"metrics": m, "ci": ci}


def detect_cell(derainer: str, dataset: str, rain: str = "light", detector: str | None = None, *,
                profile: str = "quick", data_root: Path | None = None, detector_weights: str | Path | None = None,
                derainer_weights: str | None = None, results: Path | None = None, force: bool = False,
                progress: bool = False, stats: dict | None = None, batch: int = 4) -> dict:
    """Compute (or reuse) one detection cell; never raises for a bad input (see the module doc).

    ``derainer``: a registered method or ``"none"`` / ``"identity"`` (the clean and rainy
    rows); ``derainer_weights`` default to :func:`default_derainer_weights`.  The cell holds
    ``metrics`` (``ap11_*``, ``ap40_*``, ``coco_ap``, ``coco_ap50``, ``coco_ap75``), ``ci``
    (95 % percentile bootstrap intervals over images of ``ap40_moderate`` and ``coco_ap50``),
    ``n_images``, ``n_objects`` (Car ground truths), ``seconds`` (``derain``, ``detect``) and
    per image the ground truth and the detections.
    """
    from benchmark.cells import fingerprint, settle
    from benchmark.evaluate import run_model, to_tensor
    from benchmark.metrics import to_uint8
    from detectors.torchvision_det import DEFAULT_DETECTOR
    from models import registry

    stats = stats if stats is not None else {}
    for k in ("computed", "reused", "kept", "failed", "skipped"):
        stats.setdefault(k, 0)
    if results is None:
        from benchmark.run import RESULTS as results
    detector = detector or DEFAULT_DETECTOR
    prof, det_prof = _profile(profile)
    no_derain = derainer in NO_DERAINER
    if derainer_weights is None and not no_derain:
        try:
            derainer_weights = default_derainer_weights(derainer, rain)
        except registry.UnknownMethod:
            pass  # reported below as a failed cell
    cid = cell_id(detector, "none" if no_derain else derainer, dataset, rain, derainer_weights)
    store = _det_store(results, prof.name)
    key = _Key(cid)
    n_boot = det_prof["n_boot"]
    cell = {"format": DET_FORMAT, "id": cid, "kind": "detection", "detector": detector,
            "derainer": "none" if no_derain else derainer, "derainer_weights_request": derainer_weights,
            "dataset": dataset, "rain": rain, "profile": prof.name, "seed": prof.seed, "n_boot": n_boot}
    def compute(stage: dict):
        stage["now"] = "checking the rain"
        if rain not in RAINS:
            raise ValueError(f"rain must be one of {', '.join(RAINS)}, got {rain!r}")
        stage["now"] = "opening the dataset"
        ds = detection_dataset(dataset, data_root, prof.name)
        stage["now"] = "loading the detector"
        det = get_detector(detector, detector_weights, prof.name, data_root)
        stage["now"] = "loading the derainer"
        if no_derain:
            net, winfo = None, {"tag": "none"}
        else:
            net, winfo = registry.load(derainer, derainer_weights, prof.name, data_root)
        fp = fingerprint({"format": DET_FORMAT, "detector": det.meta["identity"]["sha256"], "detector_name": detector,
                          "detector_size": [det.meta["min_size"], det.meta["max_size"]],
                          "derainer": cell["derainer"], "derainer_weights": winfo, "dataset": ds.info["fingerprint"],
                          "n_images": len(ds), "rain": rain, "seed": prof.seed, "n_boot": n_boot})
        old = store.load(key)
        if old and old.get("status") == "ok" and old.get("fingerprint") == fp and not force:
            return old
        stage["now"] = "detecting"
        from tqdm.auto import tqdm

        t_derain = t_detect = 0.0
        dets: list[list[Object]] = []
        pending: list = []

        def flush():
            nonlocal t_detect
            t0 = time.perf_counter()
            outs = det.detect_objects(pending, score_min=0.0)
            t_detect += time.perf_counter() - t0
            dets.extend(_dets_from_rows(_round_dets(o)) for o in outs)  # the stored precision
            pending.clear()

        for i in tqdm(range(len(ds)), disable=not progress, desc=f"{cell['derainer']} on {ds.name} ({rain})"):
            img = rainy([ds.image(i)], rain, prof.seed, ids=[ds.ids[i]])[0]
            if net is not None:
                t0 = time.perf_counter()
                img = to_uint8(run_model(net, img))
                t_derain += time.perf_counter() - t0
            pending.append(to_tensor(img)[0])
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
        stage["now"] = "scoring"
        scored = _metrics(ds.gts, dets, n_boot, prof.seed)
        cell.update(status="ok", **scored, n_images=len(ds), n_objects=ds.n_objects,
                    seconds={"derain": t_derain, "detect": t_detect}, dataset_info=ds.info,
                    detector_weights=det.meta["identity"],
                    detector_size=[det.meta["min_size"], det.meta["max_size"]],
                    detector_training=(det.meta.get("training_data") or None),
                    derainer_weights=winfo, fingerprint=fp,
                    per_image=[{"id": image_id, "gt": [format_label(o) for o in g], "dets": _round_dets(d)}
                               for image_id, g, d in zip(ds.ids, ds.gts, dets)])
        return None

    return settle(key, cell, store, stats, compute,
                  skip_reason=lambda stage: "detector" if stage == "loading the detector" else "weights")


CONTRACT_KEYS = ("ap11_moderate", "ap40_moderate", "coco_ap", "coco_ap50")


def contract(cell: dict) -> dict:
    """The one-line summary the CLI prints for a cell."""
    line = {"id": cell["id"], "status": cell["status"], "detector": cell["detector"], "derainer": cell["derainer"],
            "dataset": cell["dataset"], "rain": cell["rain"], "profile": cell["profile"]}
    if cell["status"] == "ok":
        line.update({k: cell["metrics"][k] for k in CONTRACT_KEYS})
        line.update(n_images=cell["n_images"], n_objects=cell["n_objects"],
                    ap40_moderate_ci=cell["ci"]["ap40_moderate"], coco_ap50_ci=cell["ci"]["coco_ap50"],
                    seconds=cell["seconds"], detector_weights=cell["detector_weights"].get("path"))
    else:
        line["error"] = cell.get("error")
    return line


# --------------------------------------------------------------------------
# the AP table


@dataclass
class _Row:
    label: str
    derainer: str
    weights: str | None
    rain: str


def _rows(rain: str, derainers) -> list[_Row]:
    rows = [_Row("clean (no rain)", "none", None, "none"), _Row("rainy", "none", None, rain)]
    for method, weights in derainers:
        rows.append(_Row(method, method, weights, rain))
    return rows


def ap_cell_plan(datasets=("roads", "KITTI"), rains=("light", "heavy"), derainers=DEFAULT_DERAINERS):
    """[(dataset, rain, [rows])]: every cell the AP table needs."""
    return [(d, r, _rows(r, derainers)) for d in datasets for r in rains]


def _paper_name(method: str) -> str:
    from models import registry

    try:
        return registry.get(method).paper_name
    except LookupError:
        return method


def _f(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(ci) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]"


def ap_table(profile: str = "quick", data_root: Path | None = None, detector: str | None = None,
             detector_weights: str | Path | None = None, results: Path | None = None, force: bool = False,
             progress: bool = False, train_missing: bool = False, datasets=("roads", "KITTI"),
             rains=("light", "heavy"), derainers=DEFAULT_DERAINERS, stats: dict | None = None) -> list[Path]:
    """Compute the cells of the AP table and write ``ap.{md,csv,tex}``; returns the written paths.

    Sections: one per (dataset, rain) whose clean and rainy cells exist (a dataset absent
    here is named in a note).  Rows: clean, rainy, then each derainer whose weights exist.
    The gain column is derained minus rainy AP40-moderate with its paired bootstrap 95 %
    interval; the note says whether each gain is beyond the bootstrap noise.
    """
    from benchmark.cells import atomic_write_text
    from benchmark.profiles import DEFAULT_PROFILE
    from detectors.bootstrap import paired_bootstrap_ci
    from detectors.torchvision_det import DEFAULT_DETECTOR
    from models.provider import training_allowed

    if results is None:
        from benchmark.run import RESULTS as results
    detector = detector or DEFAULT_DETECTOR
    prof, det_prof = _profile(profile)
    stats = stats if stats is not None else {}
    sections = []
    with training_allowed(train_missing):
        for dataset, rain, rows in ap_cell_plan(datasets, rains, derainers):
            cells = [detect_cell(r.derainer, dataset, r.rain, detector, profile=prof.name, data_root=data_root,
                                 detector_weights=detector_weights, derainer_weights=r.weights, results=results,
                                 force=force, progress=progress, stats=stats) for r in rows]
            sections.append((dataset, rain, rows, cells))

    md, tex = [f"# Car AP on clean, rainy and derained frames (section 5.2), profile {prof.name}", ""], []
    csv_lines = ["dataset,rain,row,method,derainer_weights,ap40_moderate,ap40_moderate_lo,ap40_moderate_hi,"
                 "ap11_moderate,coco_ap,coco_ap50,coco_ap50_lo,coco_ap50_hi,gain_ap40_moderate,gain_lo,gain_hi,"
                 "beyond_noise,n_images,n_objects"]
    for dataset, rain, rows, cells in sections:
        base_clean, base_rainy = cells[0], cells[1]
        title = f"{dataset}, {rain} rain"
        if base_rainy.get("status") != "ok" or base_clean.get("status") != "ok":
            why = (base_rainy if base_rainy.get("status") != "ok" else base_clean).get("error", "")
            md += [f"## {title}", "", f"Not computed: {why}", ""]
            continue
        gts, rainy_dets = cell_detections(base_rainy)
        header = ["Frames", "Derainer weights", "AP40 mod. [95% CI]", "AP11 mod.", "COCO AP", "COCO AP50 [95% CI]",
                  "Gain AP40 mod. vs rainy [paired 95% CI]"]
        body, notes, left_out = [], [], []
        for row, cell in zip(rows, cells):
            if cell.get("status") != "ok":
                left_out.append(f"{row.label} ({cell.get('status')}: {cell.get('error', '')})")
                continue
            m, ci = cell["metrics"], cell["ci"]
            gain, glo, ghi, beyond = None, None, None, ""
            name = row.label if row.derainer == "none" else f"rainy + {_paper_name(row.derainer)}"
            if row.derainer != "none":
                _, dets = cell_detections(cell)
                if len(dets) == len(rainy_dets):
                    gain = m["ap40_moderate"] - base_rainy["metrics"]["ap40_moderate"]
                    glo, ghi = paired_bootstrap_ci(_ap40m, gts, rainy_dets, dets, n=det_prof["n_boot"], seed=prof.seed)
                    beyond = "yes" if (glo > 0 or ghi < 0) else "no"
                    notes.append(f"{_paper_name(row.derainer)}: gain {gain:+.3f} AP40-moderate, paired interval "
                                 f"[{glo:+.3f}, {ghi:+.3f}] "
                                 + ("excludes 0: beyond the bootstrap noise" if beyond == "yes"
                                    else "contains 0: not beyond the bootstrap noise"))
            wtag = (cell.get("derainer_weights") or {}).get("tag", "none") if row.derainer != "none" else "-"
            values = [name, wtag, f"{_f(m['ap40_moderate'])} {_ci(ci['ap40_moderate'])}", _f(m["ap11_moderate"]),
                      _f(m["coco_ap"]), f"{_f(m['coco_ap50'])} {_ci(ci['coco_ap50'])}",
                      "-" if gain is None else f"{gain:+.3f} [{glo:+.3f}, {ghi:+.3f}]"]
            body.append(values)
            csv_lines.append(",".join(str(x) for x in [
                dataset, rain, row.label, row.derainer, wtag, m["ap40_moderate"], *ci["ap40_moderate"],
                m["ap11_moderate"], m["coco_ap"], m["coco_ap50"], *ci["coco_ap50"],
                "" if gain is None else gain, "" if glo is None else glo, "" if ghi is None else ghi, beyond,
                cell["n_images"], cell["n_objects"]]))
        dw = base_rainy["detector_weights"]
        note = (f"Note: detector {base_rainy['detector']} with weights {dw.get('path')} ({dw.get('source')}, "
                f"sha256 {str(dw.get('sha256'))[:12]}), trained on the embedded road scenes' train split only; "
                f"data {dataset}: {base_rainy['n_images']} frames, {base_rainy['n_objects']} Car labels "
                f"({base_rainy['dataset_info'].get('source')}); rain: datasets.rain '{rain}' preset seeded per "
                f"frame; intervals: percentile bootstrap over frames, {det_prof['n_boot']} replicates. "
                + ("; ".join(notes) + "." if notes else "No derained row to compare."))
        if left_out:
            note += " Not shown: " + "; ".join(left_out) + "."
        md += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(v) + " |" for v in body]
        md += ["", note, ""]
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
        tex += [f"% {title}", r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\hline",
                " & ".join(esc(h) for h in header) + r" \\", r"\hline"]
        tex += [" & ".join(esc(x) for x in v) + r" \\" for v in body]
        tex += [r"\hline", r"\end{tabular}", "% " + note.replace("\n", " "), ""]
    out_dir = Path(results) / "tables" if prof.name == DEFAULT_PROFILE else Path(results) / "tables" / prof.name
    paths = []
    for ext, text in (("md", "\n".join(md)), ("csv", "\n".join(csv_lines)), ("tex", "\n".join(tex))):
        p = out_dir / f"ap.{ext}"
        atomic_write_text(p, text.rstrip("\n") + "\n")
        paths.append(p)
    return paths


def ap_dry_run(profile: str, results: Path, detector: str | None = None, datasets=("roads", "KITTI"),
               rains=("light", "heavy"), derainers=DEFAULT_DERAINERS) -> list[str]:
    """Lines ``  <cell id>: stored (<status>) | missing`` for the AP table's cells (computes nothing)."""
    from detectors.torchvision_det import DEFAULT_DETECTOR

    detector = detector or DEFAULT_DETECTOR
    store = _det_store(results, profile)
    lines = []
    for dataset, rain, rows in ap_cell_plan(datasets, rains, derainers):
        for r in rows:
            w = r.weights if r.weights is not None else (r.rain if r.derainer != "none" else None)
            cid = cell_id(detector, r.derainer, dataset, r.rain, w)
            old = store.load(_Key(cid))
            lines.append(f"  {cid}: {'stored (' + str(old.get('status')) + ')' if old else 'missing'}")
    return lines
