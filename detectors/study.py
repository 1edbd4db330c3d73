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
* a COCO ``.json`` file of labelled images (:func:`detectors.coco_eval.read_coco_labels`):
  a user's own frames, e.g. real rain with manual boxes (then use ``rain="none"``).

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
#: detector's training schedule, bootstrap replicates.  ``smoke`` (the CI gate) scores a few
#: test scenes with the ``quick`` profile's detector (``detector_profile``): a detector trained
#: for seconds would score AP ~ 0 and check nothing.
DET_PROFILES: dict[str, dict] = {
    "smoke": dict(n_test=12, size=(192, 576), n_boot=20, detector_profile="quick"),
    "quick": dict(n_test=60, size=(192, 576), n_train=400, iterations=3000, batch=4, lr_steps=(2400,), n_boot=200),
    "paper": dict(n_test=300, size=(192, 576), n_train=2000, iterations=12000, batch=8, lr_steps=(9600,),
                  n_boot=1000),
}

#: The paper-profile ResGuideNet runs committed as resumable checkpoints (``{rain}`` filled in
#: per row; a relative path is taken from the repository root when it is not in the working
#: directory).  Their merged output is sound, which the quick heavy model's is not yet.
PAPER_RUN = "results/weights/resguidenet-{rain}-paper.ckpt"

#: Rows of the AP table after "clean" and "rainy": (method, weights); ``None`` weights = the
#: suite-trained weights matching the rain (light / heavy), ``"official"`` = the authors'
#: checkpoint under the data root.  Rows whose weights are absent are left out (and named).
DEFAULT_DERAINERS: tuple[tuple[str, str | None], ...] = (
    ("resguidenet_3", None),
    ("resguidenet", None),
    ("resguidenet", PAPER_RUN),
    ("prenet", "official"),
    ("jorder", "official"),
    ("ddn", None),
    ("ddn", "official"),
)


def _profile(name: str):
    from benchmark.profiles import get_profile

    prof = get_profile(name)
    if prof.name not in DET_PROFILES:
        raise ValueError(f"no detection settings for profile {prof.name!r}")
    return prof, DET_PROFILES[prof.name]


def detector_profile(profile: str) -> str:
    """The profile whose detector (weights and training schedule) ``profile`` uses."""
    prof, det = _profile(profile)
    return det.get("detector_profile") or prof.name


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

    if name.lower().endswith(".json") and Path(name).is_file():  # a user's labelled (e.g. real-rain) images
        from detectors.coco_eval import read_coco_labels

        ids, paths, gts = read_coco_labels(name)
        if prof.real_limit:
            ids, paths, gts = ids[: prof.real_limit], paths[: prof.real_limit], gts[: prof.real_limit]
        h = hashlib.sha256()
        for image_id, path in zip(ids, paths):
            h.update(image_id.encode())
            h.update(str(path.stat().st_size).encode())
        _labels_digest(h, gts)
        info = {"source": str(Path(name).resolve()), "limit": prof.real_limit, "fingerprint": h.hexdigest()}
        return DetectionSet(Path(name).stem, ids, gts, lambda i: _read_rgb(paths[i]), info)
    if name.lower() == "kitti":
        if data_root is None:
            raise DatasetMissing("KITTI: no data root; pass --data-root or set RESGUIDE_DATA "
                                 "(expected <root>/KITTI/training/{image_2,label_2})")
        root = Path(data_root) / "KITTI" / "training"
        label = "KITTI"
    elif Path(name).is_dir() and (Path(name) / "image_2").is_dir():
        root, label = Path(name), Path(name).name
    else:
        raise ValueError(f"unknown detection dataset {name!r}; choose roads, KITTI, a folder with image_2/, label_2/ "
                         "or a COCO .json file of labelled images")
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

    info = {"source": str(root), "limit": prof.real_limit, "fingerprint": h.hexdigest()}
    return DetectionSet(label, list(ds.ids), gts, lambda i: _read_rgb(ds.image_path(i)), info)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


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
                 data_root: Path | None = None, device: str = "cpu", config: str | Path | None = None):
    """A :class:`detectors.torchvision_det.Detector` with trained weights (see the module doc).

    ``detector.meta["identity"]`` describes the weights (path, bytes, sha256, source).
    The resize limits come from the checkpoint's meta (``min_size`` / ``max_size``) when it
    has them, else from the profile's road-scene size.  ``data_root`` is unused (the
    detector never trains on real data); it is accepted for symmetry with ``registry.load``.
    """
    from detectors.torchvision_det import DEFAULT_DETECTOR, build_detector
    from models.registry import WeightsUnavailable, file_identity

    if config is not None:  # the mmdet back end: a user's config and checkpoint
        if weights is None:
            raise ValueError("an mmdet config (--detector-config) needs its checkpoint (--detector-weights)")
        from detectors.mmdet_det import build_mmdet_detector

        detector = build_mmdet_detector(config, weights, device=device)
        detector.meta.update(min_size=None, max_size=None, identity={
            "source": "given", **file_identity(weights), "config": str(config),
            "config_sha256": file_identity(config)["sha256"]})
        return detector
    name = name or DEFAULT_DETECTOR
    profile = detector_profile(profile)
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
                       max_seconds: float | None = None, progress: bool = True, device: str = "cpu", *,
                       train_data: str | Path | None = None, init: str | Path | None = None,
                       min_size: int | None = None, max_size: int | None = None, iterations: int | None = None,
                       out_path: str | Path | None = None) -> dict:
    """Train (or resume) a detector on clean frames and save it; returns ``{"complete", "weights", ...}``.

    Default: the study's detector, on the road scenes' *train* split, cached as
    ``<cache>/detectors/<name>-<profile>.pt`` (a ``.json`` record beside it) where the study
    finds it.  ``data_root`` is unused on purpose: the KITTI frames under it are test data.

    For the paper's own setting (a detector trained on clean KITTI): ``train_data`` is a
    KITTI-layout folder of *clean training* frames (``image_2/``, ``label_2/``; keep the
    frames you score out of it), ``init`` a local checkpoint to fine-tune from (e.g.
    torchvision's COCO Faster R-CNN ``.pth``: every tensor whose shape fits is loaded, the
    others -- the 91-class box predictor -- keep their fresh initialisation and are listed
    in the record; the backbone's batch norms are then frozen, torchvision's convention for
    a pretrained backbone), ``min_size`` / ``max_size`` the resize limits (KITTI: 375 /
    1242), and the weights go to ``out_path`` (default
    ``<cache>/detectors/<name>-<folder name>-<profile>.pt``); score with
    ``detect ... --detector-weights <that file>``.  The checkpoint ``<weights>.ckpt`` makes a
    stopped run (``max_seconds``) resumable.
    """
    import torch

    from detectors.torchvision_det import DEFAULT_DETECTOR, build_detector
    from detectors.train_det import train_detector
    from models.registry import file_identity

    name = name or DEFAULT_DETECTOR
    prof, det = _profile(detector_profile(profile))
    paths = detector_paths(name, prof.name)
    out = {"detector": name, "profile": prof.name}
    h, w = det["size"]
    h, w = int(min_size or h), int(max_size or w)
    n_iter = int(iterations or det["iterations"])
    if train_data is None:
        if init is not None or out_path is not None:
            raise ValueError("--init and --out go with --train-data (the road-scene detector is the study's own)")
        for key in ("shipped", "cache"):
            if paths[key].is_file():
                return {**out, "complete": True, "weights": str(paths[key]), "already": key}
        from datasets.roads import road_scenes

        samples = road_scenes("train", det["n_train"], size=det["size"], seed=prof.seed)
        weights, ckpt = paths["cache"], paths["ckpt"]
        training_data = {"source": "embedded road scenes (datasets.roads)", "split": "train",
                         "n": det["n_train"], "size": list(det["size"]), "seed": prof.seed}
    else:
        from detectors.kitti import KittiDetection

        folder = Path(train_data)
        if not (folder / "image_2").is_dir() or not (folder / "label_2").is_dir():
            raise ValueError(f"--train-data {folder}: expected a KITTI-layout folder with image_2/ and label_2/")
        ds = KittiDetection(folder)
        samples = [(ds.load_image(i), ds.labels(i), ds.ids[i]) for i in range(len(ds))]
        weights = Path(out_path) if out_path else paths["cache"].with_name(f"{name}-{folder.name}-{prof.name}.pt")
        ckpt = weights.with_suffix(".ckpt")
        training_data = {"source": str(folder.resolve()), "n": len(ds)}
    if weights.is_file():
        return {**out, "complete": True, "weights": str(weights), "already": "trained"}
    torch.manual_seed(prof.seed)
    model = build_detector(name, min_size=h, max_size=w)
    init_record = None
    if init is not None:
        init_record = load_partial(model.model, init)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    res = train_detector(model, samples, n_iter, batch=det["batch"], seed=prof.seed,
                         lr_steps=tuple(s for s in det["lr_steps"] if s < n_iter) if iterations else det["lr_steps"],
                         ckpt_path=ckpt, progress=progress, max_seconds=max_seconds, device=device)
    out.update(complete=res["complete"], iterations=res["iterations"], seconds=res["seconds"],
               final_loss=res["final_loss"], checkpoint=str(ckpt))
    if not res["complete"]:
        return out
    training_data["samples_sha256"] = res["config"]["samples_sha256"]
    meta = {"min_size": h, "max_size": w, "profile": prof.name, "training_data": training_data,
            "iterations": res["iterations"], "seconds": res["seconds"], "final_loss": res["final_loss"],
            "config": res["config"], "init": init_record}
    model.save(weights, meta)
    record = {**meta, **file_identity(weights)}
    from benchmark.cells import atomic_write_text

    atomic_write_text(weights.with_suffix(".json"), json.dumps(record, indent=1, default=str) + "\n")
    out["weights"] = str(weights)
    return out


def load_partial(model, path: str | Path) -> dict:
    """Load every tensor of the checkpoint at ``path`` whose name and shape fit ``model``;
    freeze the backbone's batch norms (``FrozenBatchNorm2d``); return what was loaded / left."""
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    from detectors.torchvision_det import read_state

    state = read_state(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fits:
        raise ValueError(f"{path}: no tensor of the checkpoint fits the detector (is it a Faster R-CNN?)")
    model.load_state_dict(fits, strict=False)

    def freeze(module):
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for buf in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, buf).copy_(getattr(child, buf).detach())
                setattr(module, child_name, frozen)
            else:
                freeze(child)

    freeze(model.backbone)
    return {"path": str(path), "loaded": len(fits), "left_at_init": sorted(k for k in own if k not in fits),
            "unused": sorted(k for k in state if k not in fits)[:20]}


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


#: The detection datasets whose cells are results of the suite; any other (a user's folder or
#: COCO file) is a one-off whose cells go to the uncommitted cache.
SUITE_DATASETS = ("roads", "kitti")


def _det_store(results: Path, profile: str, dataset: str = "roads"):
    from benchmark.cells import Store

    if dataset.lower() in SUITE_DATASETS:
        return Store(Path(results) / "cells" / profile / "detection")
    return Store(Path(results) / "cache" / "cells" / profile / "detection")


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
                detector_config: str | Path | None = None,
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
    detector = detector or (f"mmdet-{Path(detector_config).stem}" if detector_config else DEFAULT_DETECTOR)
    prof, det_prof = _profile(profile)
    no_derain = derainer in NO_DERAINER
    if derainer_weights is None and not no_derain:
        try:
            derainer_weights = default_derainer_weights(derainer, rain)
        except registry.UnknownMethod:
            pass  # reported below as a failed cell
    cid = cell_id(detector, "none" if no_derain else derainer, dataset, rain, derainer_weights)
    store = _det_store(results, prof.name, dataset)
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
        det = get_detector(detector, detector_weights, prof.name, data_root, config=detector_config)
        stage["now"] = "loading the derainer"
        if no_derain:
            net, winfo = None, {"tag": "none"}
        else:
            net, winfo = registry.load(derainer, _weights_path(derainer_weights), prof.name, data_root)
            import torch

            net = net.to(memory_format=torch.channels_last)  # as benchmark.evaluate.evaluate: run_model's format
        fp = fingerprint({"format": DET_FORMAT, "detector": det.meta["identity"]["sha256"], "detector_name": detector,
                          "detector_config": det.meta["identity"].get("config_sha256"),
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
        weights = weights.format(rain=rain) if weights else weights
        label = method if weights in (None, "official") else f"{method} ({Path(weights).stem})"
        rows.append(_Row(label, method, weights, rain))
    return rows


def _weights_path(weights: str | None) -> str | None:
    """A relative weights *path* that is not in the working directory but is in the repository
    (e.g. :data:`PAPER_RUN`) resolves there; tags and other values pass unchanged."""
    if weights and ("/" in weights or weights.endswith((".pt", ".ckpt", ".pth"))) and not Path(weights).exists():
        repo = Path(__file__).resolve().parent.parent
        if (repo / weights).exists():
            return str(repo / weights)
    return weights


def ap_cell_plan(datasets=("roads", "KITTI"), rains=("light", "heavy"), derainers=DEFAULT_DERAINERS):
    """[(dataset, rain, [rows])]: every cell the AP table needs."""
    return [(d, r, _rows(r, derainers)) for d in datasets for r in rains]


def _paper_name(method: str) -> str:
    from models import registry

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


def _row_cell_id(detector: str, row: _Row, dataset: str) -> str:
    """The id :func:`detect_cell` gives the cell of ``row`` (same default derainer weights)."""
    weights = row.weights
    if weights is None and row.derainer not in NO_DERAINER:
        try:
            weights = default_derainer_weights(row.derainer, row.rain)
        except LookupError:
            weights = None
    return cell_id(detector, "none" if row.derainer in NO_DERAINER else row.derainer, dataset, row.rain, weights)


def ap_cells(profile: str = "quick", data_root: Path | None = None, detector: str | None = None,
             detector_weights: str | Path | None = None, results: Path | None = None, force: bool = False,
             progress: bool = False, train_missing: bool = False, datasets=("roads", "KITTI"),
             rains=("light", "heavy"), derainers=DEFAULT_DERAINERS, stats: dict | None = None,
             compute: bool = True) -> list[tuple]:
    """[(dataset, rain, rows, cells)]: the AP table's cells, computed (or reused) with
    :func:`detect_cell`, or with ``compute=False`` read from the store as they are (a missing
    cell comes back as ``{"status": "missing"}``)."""
    from detectors.torchvision_det import DEFAULT_DETECTOR
    from models.provider import training_allowed

    if results is None:
        from benchmark.run import RESULTS as results
    detector = detector or DEFAULT_DETECTOR
    prof, _ = _profile(profile)
    stats = stats if stats is not None else {}
    store = _det_store(results, prof.name)
    sections = []
    with training_allowed(train_missing):
        for dataset, rain, rows in ap_cell_plan(datasets, rains, derainers):
            if compute:
                cells = [detect_cell(r.derainer, dataset, r.rain, detector, profile=prof.name, data_root=data_root,
                                     detector_weights=detector_weights, derainer_weights=r.weights,
                                     results=results, force=force, progress=progress, stats=stats) for r in rows]
            else:
                cells = [store.load(_Key(_row_cell_id(detector, r, dataset)))
                         or {"status": "missing", "error": "no stored cell (run `python -m benchmark.run table ap`)"}
                         for r in rows]
            sections.append((dataset, rain, rows, cells))
    return sections


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
    from benchmark.run import output_dir

    if results is None:
        from benchmark.run import RESULTS as results
    prof, _ = _profile(profile)
    sections = ap_cells(prof.name, data_root, detector, detector_weights, results, force, progress, train_missing,
                        datasets, rains, derainers, stats, compute)
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
    from benchmark.cells import atomic_write_text
    from detectors.bootstrap import paired_bootstrap_ci

    prof, det_prof = _profile(profile)
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

    md, tex = [f"### Car AP on clean, rainy and derained frames (section 5.2), profile {prof.name}", ""], []
    csv_lines = ["dataset,rain,row,method,derainer_weights,ap40_moderate,ap40_moderate_lo,ap40_moderate_hi,"
                 "ap11_moderate,coco_ap,coco_ap50,coco_ap50_lo,coco_ap50_hi,gain_ap40_moderate,gain_lo,gain_hi,"
                 "beyond_noise,n_images,n_objects"]
    for dataset, rain, rows, cells in sections:
        base_clean, base_rainy = cells[0], cells[1]
        title = f"{dataset}, {rain} rain"
        if base_rainy.get("status") != "ok" or base_clean.get("status") != "ok":
            why = (base_rainy if base_rainy.get("status") != "ok" else base_clean).get("error", "")
            md += [f"**{title}**", "", f"Not computed: {why}", ""]
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
            name = row.label if row.derainer == "none" else f"rainy + {_row_name(row)}"
            if row.derainer != "none":
                _, dets = cell_detections(cell)
                if len(dets) == len(rainy_dets):
                    gain = m["ap40_moderate"] - base_rainy["metrics"]["ap40_moderate"]
                    glo, ghi = interval(base_rainy, cell, gts, rainy_dets, dets)
                    beyond = "yes" if (glo > 0 or ghi < 0) else "no"
                    notes.append(f"{_row_name(row)}: gain {gain:+.3f} AP40-moderate, paired interval "
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
    import matplotlib.pyplot as plt
    import seaborn as sns

    from benchmark.cells import atomic_write_text

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


def ap_dry_run(profile: str, results: Path, detector: str | None = None, datasets=("roads", "KITTI"),
               rains=("light", "heavy"), derainers=DEFAULT_DERAINERS) -> list[str]:
    """Lines ``  <cell id>: stored (<status>) | missing`` for the AP table's cells (computes nothing)."""
    from detectors.torchvision_det import DEFAULT_DETECTOR

    detector = detector or DEFAULT_DETECTOR
    store = _det_store(results, profile)
    lines = []
    for dataset, rain, rows in ap_cell_plan(datasets, rains, derainers):
        for r in rows:
            cid = _row_cell_id(detector, r, dataset)
            old = store.load(_Key(cid))
            lines.append(f"  {cid}: {'stored (' + str(old.get('status')) + ')' if old else 'missing'}")
    return lines
