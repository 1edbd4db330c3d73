"""The detection study's detectors: where their weights are found, how they are built and trained.

:func:`get_detector` takes ``weights`` (a local checkpoint path), else the shipped
``results/weights/detector-<name>-<profile>.pt``, else the cached
``<cache>/detectors/<name>-<profile>.pt`` (the same shipped-before-cache order as
:mod:`models.provider`), else raises ``WeightsUnavailable`` naming the command that trains
one.  The road-scene detector is trained on the road scenes' *train* split only -- never on
KITTI, never on the test split -- so a KITTI number from it is a transfer number.  Its resize
limits are part of the detector: saved in the checkpoint's meta and applied to every dataset.
"""
from __future__ import annotations

import json
from pathlib import Path

from core.errors import WeightsUnavailable
from core.files import atomic_write_text
from core.profiles import detection_profile, detector_profile
from datasets.kitti import KittiDetection
from datasets.roads import road_scenes
from detectors.mmdet_det import build_mmdet_detector
from detectors.torchvision_det import DEFAULT_DETECTOR, build_detector, read_state
from detectors.train_det import train_detector
from detectors.yolo_frcnn import NAME as KITTI_DETECTOR
from detectors.yolo_frcnn import POSITIVE_TYPES as KITTI_POSITIVES
from detectors.yolo_frcnn import TRAINING as KITTI_TRAINING
from detectors.yolo_frcnn import freeze_batch_norms, init_from_yolov5, yolo_cfg_of
from detectors.yolov5 import DEFAULT_IMG_SIZE, load_yolov5
from datasets.kitti_tracking import TRACKING_DIR, tracking_samples
from models import provider
from models.registry import file_identity


def detector_paths(name: str, profile: str) -> dict[str, Path]:
    """Where a detector's weights are looked for: ``shipped`` and ``cache`` (plus the run's ``ckpt``)."""
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



#: COCO-trained detectors read from their authors' files: name -> (path under the data root,
#: input size).  They know real cars, so they are the detectors of the real (KITTI) study.
COCO_DETECTORS = {"yolov5n": ("weights/YOLOv5/yolov5n.pt", DEFAULT_IMG_SIZE)}


def coco_detector(name: str, weights: str | Path | None, data_root: Path | None, device: str = "cpu"):
    """A COCO detector of :data:`COCO_DETECTORS`, its car class only, from ``weights`` or from its
    file under the data root; ``WeightsUnavailable`` when neither is there."""
    rel, img_size = COCO_DETECTORS[name]
    if weights is not None:
        path, source = Path(weights), "given"
        if not path.is_file():
            raise ValueError(f"detector checkpoint {path} does not exist")
    elif data_root is not None and (Path(data_root) / rel).is_file():
        path, source = Path(data_root) / rel, "data root"
    else:
        raise WeightsUnavailable(f"no {name} weights: expected <data root>/{rel} (pass --data-root or set "
                                 "RESGUIDE_DATA, or --detector-weights PATH)")
    detector = load_yolov5(path, img_size=img_size, device=device)
    identity = {"tag": name, "source": source, **file_identity(path)}
    if source == "data root":  # named the same on every machine
        identity["path"] = f"<data root>/{rel}"
    detector.meta = {"min_size": img_size, "max_size": img_size, "identity": identity}
    return detector


def get_detector(name: str | None = None, weights: str | Path | None = None, profile: str = "quick",
                 data_root: Path | None = None, device: str = "cpu", config: str | Path | None = None):
    """A :class:`detectors.torchvision_det.Detector` with trained weights (see the module doc).

    ``detector.meta["identity"]`` describes the weights (path, bytes, sha256, source).
    The resize limits come from the checkpoint's meta (``min_size`` / ``max_size``) when it
    has them, else from the profile's road-scene size.  ``data_root`` is only read for the
    COCO detectors (:data:`COCO_DETECTORS`), whose weights live under it.
    """
    if config is not None:  # the mmdet back end: a user's config and checkpoint
        if weights is None:
            raise ValueError("an mmdet config (--detector-config) needs its checkpoint (--detector-weights)")

        detector = build_mmdet_detector(config, weights, device=device)
        detector.meta.update(min_size=None, max_size=None, identity={
            "source": "given", **file_identity(weights), "config": str(config),
            "config_sha256": file_identity(config)["sha256"]})
        return detector
    name = name or DEFAULT_DETECTOR
    if name in COCO_DETECTORS:
        return coco_detector(name, weights, data_root, device)
    profile = detector_profile(profile)
    _, det = detection_profile(profile)
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
    extra = {}
    if name == KITTI_DETECTOR:
        if not isinstance(meta.get("yolo_cfg"), dict):
            raise ValueError(f"{path}: a {name} checkpoint must carry its YOLOv5 config (meta 'yolo_cfg'); "
                             "use the weights file that train-detector writes, not its .ckpt")
        extra["yolo_cfg"] = meta["yolo_cfg"]
    detector = build_detector(name, checkpoint=path, min_size=min_size, max_size=max_size, device=device, **extra)
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

    name = name or DEFAULT_DETECTOR
    prof, det = detection_profile(detector_profile(profile))
    paths = detector_paths(name, prof.name)
    if name == KITTI_DETECTOR:
        if train_data is not None or init is not None:
            raise ValueError(f"{KITTI_DETECTOR} trains on <data root>/{TRACKING_DIR} from <data root>/"
                             f"{COCO_DETECTORS['yolov5n'][0]}; --train-data / --init are for the other detectors")
        return _train_kitti_detector(paths, prof, data_root, max_seconds, progress, device, out_path)
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

        samples = road_scenes("train", det["n_train"], size=det["size"], seed=prof.seed)
        weights, ckpt = paths["cache"], paths["ckpt"]
        training_data = {"source": "embedded road scenes (datasets.roads)", "split": "train",
                         "n": det["n_train"], "size": list(det["size"]), "seed": prof.seed}
    else:
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
    _save_trained(model, weights, meta)
    out["weights"] = str(weights)
    return out


def _save_trained(model, weights: Path, meta: dict, leave_out: tuple[str, ...] = ()) -> None:
    """Write the trained detector with ``meta``, and its ``.json`` record (``meta`` without
    ``leave_out``, plus the file's identity) beside it."""
    model.save(weights, meta)
    record = {**{k: v for k, v in meta.items() if k not in leave_out}, **file_identity(weights)}
    atomic_write_text(weights.with_suffix(".json"), json.dumps(record, indent=1, default=str) + "\n")



def _train_kitti_detector(paths: dict, prof, data_root: Path | None, max_seconds, progress: bool, device: str,
                          out_path) -> dict:
    """:data:`detectors.yolo_frcnn.NAME`: YOLOv5n's backbone and neck, heads trained on the clean KITTI
    tracking frames (:data:`detectors.yolo_frcnn.TRAINING`); weights to ``out_path`` or the cache."""
    import torch

    out = {"detector": KITTI_DETECTOR, "profile": prof.name}
    if data_root is None:
        raise WeightsUnavailable(f"{KITTI_DETECTOR} trains on <data root>/{TRACKING_DIR}: pass --data-root "
                                 "or set RESGUIDE_DATA")
    yolo_path = Path(data_root) / COCO_DETECTORS["yolov5n"][0]
    if not yolo_path.is_file():
        raise WeightsUnavailable(f"{KITTI_DETECTOR} starts from {yolo_path}, which is absent")
    weights = Path(out_path) if out_path else paths["cache"]
    if out_path is None and paths["shipped"].is_file():
        return {**out, "complete": True, "weights": str(paths["shipped"]), "already": "shipped"}
    if weights.is_file():
        return {**out, "complete": True, "weights": str(weights), "already": "trained"}
    ckpt = weights.with_suffix(".ckpt")
    sched = KITTI_TRAINING
    samples = tracking_samples(Path(data_root) / TRACKING_DIR)
    yolo_cfg = yolo_cfg_of(yolo_path)
    torch.manual_seed(sched["seed"])
    model = build_detector(KITTI_DETECTOR, min_size=sched["min_size"], max_size=sched["max_size"], yolo_cfg=yolo_cfg)
    init_record = {**file_identity(yolo_path), **init_from_yolov5(model.model, yolo_path),
                   "path": f"<data root>/{COCO_DETECTORS['yolov5n'][0]}",
                   "licence": "AGPL-3.0 (YOLOv5, Ultralytics): these weights derive from it"}
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    res = train_detector(model, samples, sched["iterations"], batch=sched["batch"], lr=sched["lr"], seed=sched["seed"],
                         warmup=sched["warmup"], lr_steps=sched["lr_steps"], ckpt_every=sched["ckpt_every"],
                         ckpt_path=ckpt, progress=progress, max_seconds=max_seconds, device=device,
                         positive_types=KITTI_POSITIVES)
    out.update(complete=res["complete"], iterations=res["iterations"], seconds=res["seconds"],
               final_loss=res["final_loss"], checkpoint=str(ckpt))
    if not res["complete"]:
        return out
    training_data = {"source": f"<data root>/{TRACKING_DIR}", "n": len(samples),
                     "positives": list(KITTI_POSITIVES), "samples_sha256": res["config"]["samples_sha256"]}
    meta = {"min_size": sched["min_size"], "max_size": sched["max_size"], "profile": prof.name,
            "training_data": training_data, "iterations": res["iterations"], "seconds": res["seconds"],
            "final_loss": res["final_loss"], "config": res["config"], "init": init_record, "yolo_cfg": yolo_cfg,
            "command": _train_command(KITTI_DETECTOR, prof.name) + " --data-root DATA"}
    _save_trained(model, weights, meta, leave_out=("yolo_cfg",))
    out["weights"] = str(weights)
    return out


def load_partial(model, path: str | Path) -> dict:
    """Load every tensor of the checkpoint at ``path`` whose name and shape fit ``model``;
    freeze the backbone's batch norms (``FrozenBatchNorm2d``); return what was loaded / left."""
    state = read_state(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fits:
        raise ValueError(f"{path}: no tensor of the checkpoint fits the detector (is it a Faster R-CNN?)")
    model.load_state_dict(fits, strict=False)

    freeze_batch_norms(model.backbone)
    return {"path": str(path), "loaded": len(fits), "left_at_init": sorted(k for k in own if k not in fits),
            "unused": sorted(k for k in state if k not in fits)[:20]}
