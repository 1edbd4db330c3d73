"""The detection study's cells (the paper's section 5.2): car AP of a detector on clean, rainy and
derained frames.

A detector that knows cars loses them when the frames are rainy; deraining first should win
some of that AP back.  One result cell per (detector, derainer, dataset, rain):

    rain (datasets.detection.rainy, seeded per frame) -> derainer (models.registry)
    -> uint8 (what a derainer writing an image file hands on) -> detector (detectors.zoo)
    -> KITTI devkit AP (ap11 / ap40, easy / moderate / hard) + COCO AP / AP50
    + percentile bootstrap intervals over frames

The data are :func:`datasets.detection.detection_dataset`'s; the detector of each dataset's
rows is :data:`STUDY_DETECTORS` (the road-scene Faster R-CNN on the road scenes, the
COCO-trained YOLOv5n on the real KITTI frames).  Derained frames are cached per (derainer,
weights, rain, frame) (:class:`DerainedFrames`), so a second detector or a rerun reuses them.

Cells are JSON files ``<results>/cells/<profile>/detection/<id>.json`` (a subfolder, so the
PSNR/SSIM tables never see them) settled by :func:`core.store.settle`: a fresh ``ok`` cell is
reused, an absent input keeps the stored cell (or gives a ``skipped`` one), any other error a
``failed`` cell, and the run goes on.  A user's own dataset (a folder or a COCO file) is a
one-off: its cells go to the uncommitted cache.  A cell stores its detections and ground truth
per frame, so :mod:`benchmark.ap_table` computes paired intervals from the cells alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.derained import DerainedFrames
from benchmark.executor import concurrently, gather, parallel
from benchmark.inference import Derainer, image_megapixels, to_tensor
from benchmark.shards import DerainTask, derain_shard, method_module, shard_ranges
from core.errors import UnknownMethod
from core.layout import RESULTS
from core.metrics import to_uint8
from core.profiles import detection_profile
from core.store import Store, StoredKey, file_safe, fingerprint, settle
from datasets.detection import RAINS, detection_dataset, rainy
from datasets.kitti import Object, format_label, parse_label_line
from detectors.bootstrap import bootstrap_ci
from detectors.coco_eval import VEHICLE_TYPES, coco_car_ap
from detectors.kitti_eval import kitti_car_ap, kitti_car_ap40_moderate
from detectors.torchvision_det import DEFAULT_DETECTOR
from detectors.zoo import get_detector
from models import registry
from models.provider import training_allowed

__all__ = [
    "DEFAULT_DERAINERS",
    "cell_id",
    "detect_cell",
    "contract",
    "ap_cell_plan",
]

DET_FORMAT = 1
NO_DERAINER = ("none", "identity")

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

#: Rows of a real-rain set's sections (DAWN) after "rainy": every derainer of the study, each with
#: the weights named, since no added rain picks them: the suite's models of both fitted rains and the
#: authors' checkpoints.  GMM is left out (:data:`LEFT_OUT`).
REAL_RAIN_DERAINERS: tuple[tuple[str, str | None], ...] = (
    ("resguidenet", "light-real"), ("resguidenet", "heavy-real"),
    ("resguidenet_3", "light-real"), ("resguidenet_3", "heavy-real"),
    ("ddn", "light-real"), ("ddn", "heavy-real"), ("jorder", "light-real"), ("jorder", "heavy-real"),
    ("did_mdn", "density"),
    ("prenet", "official"), ("jorder", "official"), ("ddn", "official"),
)
#: Derainers the study does not run on the detection sets, and why (the tables say it).
LEFT_OUT = {"gmm": "GMM (layer priors) solves an optimisation per image: 19 s per 500x500 image on this CPU "
                   "(Table 4), so about 4 hours for DAWN's 200 megapixel photographs"}
#: The rains of each dataset's sections: the rain fitted to real pairs first, then the first presets
#: (kept as the study's superseded section), on KITTI; the real rain of the photographs on DAWN.
STUDY_RAINS = {"roads": ("light", "heavy"), "KITTI": ("light-real", "heavy-real", "light", "heavy"),
               "DAWN": ("none",)}
STUDY_DATASETS = tuple(STUDY_RAINS)


# --------------------------------------------------------------------------
# data


# --------------------------------------------------------------------------
# rain


# --------------------------------------------------------------------------
# detector


# --------------------------------------------------------------------------
# cells


def cell_id(detector: str, derainer: str, dataset: str, rain: str, derainer_weights: str | None = None) -> str:
    """``det__{detector}__{derainer[@weights]}__{dataset}__{rain}``, file-name safe."""
    d = derainer if derainer_weights in (None, "") else f"{derainer}@{derainer_weights}"
    return file_safe(f"det__{detector}__{d}__{dataset}__{rain}")


#: The detection datasets whose cells are results of the suite; any other (a user's folder or
#: COCO file) is a one-off whose cells go to the uncommitted cache.
SUITE_DATASETS = ("roads", "kitti", "dawn")


def _det_store(results: Path, profile: str, dataset: str = "roads"):
    if dataset.lower() in SUITE_DATASETS:
        return Store(Path(results) / "cells" / profile / "detection")
    return Store(Path(results) / "cache" / "cells" / profile / "detection")


def _round_dets(objs: list[Object]) -> list[list[float]]:
    return [[round(float(v), 3) for v in o.bbox] + [round(float(o.score), 6)] for o in objs]


def _dets_from_rows(rows) -> list[Object]:
    return [Object(type="Car", truncated=0.0, occluded=0, bbox=tuple(r[:4]), score=float(r[4])) for r in rows]


def _round_typed(objs: list[Object]) -> list[list]:
    return [row + [o.type] for row, o in zip(_round_dets(objs), objs)]


def _typed_from_rows(rows) -> list[Object]:
    return [Object(type=r[5], truncated=0.0, occluded=0, bbox=tuple(r[:4]), score=float(r[4])) for r in rows]


def cell_detections(cell: dict, vehicle: bool = False) -> tuple[list[list[Object]], list[list[Object]]]:
    """(ground truths, detections) per image, rebuilt from a stored ``ok`` cell; ``vehicle``: the
    merged car / truck / bus detections (``vehicle_dets``, KeyError when the cell has none)."""
    gts = [[parse_label_line(line) for line in p["gt"]] for p in cell["per_image"]]
    if vehicle:
        dets = [_typed_from_rows(p["vehicle_dets"]) for p in cell["per_image"]]
    else:
        dets = [_dets_from_rows(p["dets"]) for p in cell["per_image"]]
    return gts, dets


def has_vehicle(cell: dict) -> bool:
    """Whether an ``ok`` cell carries the merged vehicle detections and metrics."""
    return bool((cell.get("vehicle") or {}).get("metrics"))


def _ap40m(g, d) -> float:
    return kitti_car_ap40_moderate(g, d)


def _coco50(g, d) -> float:
    return coco_car_ap(g, d, iou_thrs=(0.5,))["ap50"]


CI_METRICS = {"ap40_moderate": _ap40m, "coco_ap50": _coco50}


def _vehicle50(g, d) -> float:
    return coco_car_ap(g, d, iou_thrs=(0.5,), types=VEHICLE_TYPES)["ap50"]


def _vehicle_metrics(gts, dets, n_boot: int, seed: int) -> dict:
    """The merged vehicle class (:data:`detectors.coco_eval.VEHICLE_TYPES`): COCO AP, AP50 and AP50's
    bootstrap interval, and the count of its ground truths."""
    coco = coco_car_ap(gts, dets, types=VEHICLE_TYPES)
    counted = {t.lower() for t in VEHICLE_TYPES}
    return {"types": list(VEHICLE_TYPES),
            "metrics": {"coco_ap": coco["ap"], "coco_ap50": coco["ap50"], "coco_ap75": coco["ap75"]},
            "ci": {"coco_ap50": list(bootstrap_ci(_vehicle50, gts, dets, n=n_boot, seed=seed))},
            "n_objects": sum(o.type.lower() in counted for g in gts for o in g)}


def wants_vehicles(det, dataset: str) -> bool:
    """Whether cells of ``dataset`` score the merged vehicle class with ``det``: a real-rain set and a
    detector with truck and bus classes (YOLOv5n; not the Car-only Faster R-CNN)."""
    return dataset.lower() in REAL_RAIN_DATASETS and hasattr(det, "detect_vehicles")


def detect_batch(det, images, vehicles: bool) -> tuple[list[list[Object]], list[list]]:
    """Car detections per image at the stored precision and, with ``vehicles``, the merged vehicle
    class's rows (``[x1, y1, x2, y2, score, type]``; else an empty list)."""
    cars = [_dets_from_rows(_round_dets(o)) for o in det.detect_objects(images, score_min=0.0)]
    rows = [_round_typed(o) for o in det.detect_vehicles(images, score_min=0.0)] if vehicles else []
    return cars, rows


def vehicle_entry(gts, vehicle_rows, vehicles: bool, detector: str, n_boot: int, seed: int) -> dict:
    """A real-rain cell's ``vehicle``: :func:`_vehicle_metrics` of the rows, or why there are none."""
    if not vehicles:
        return {"why": f"{detector} has no truck / bus classes: car AP only"}
    return _vehicle_metrics(gts, [_typed_from_rows(r) for r in vehicle_rows], n_boot, seed)


#: Datasets of real rainy photographs: scored as they are (``rain="none"``), never with rain added,
#: and with COCO AP only, the KITTI keys left None (their labels have no truncation / occlusion levels).
REAL_RAIN_DATASETS = ("dawn",)


def _metrics(gts, dets, n_boot: int, seed: int, kitti_levels: bool = True) -> dict:
    coco = coco_car_ap(gts, dets)
    if kitti_levels:
        m = dict(kitti_car_ap(gts, dets))
        fns = CI_METRICS
    else:
        m = {k: None for k in kitti_car_ap([[]], [[]])}
        fns = {k: fn for k, fn in CI_METRICS.items() if k.startswith("coco")}
    m.update(coco_ap=coco["ap"], coco_ap50=coco["ap50"], coco_ap75=coco["ap75"])
    ci = {k: list(bootstrap_ci(fns[k], gts, dets, n=n_boot, seed=seed)) if k in fns else None for k in CI_METRICS}
    return {"metrics": m, "ci": ci}


def detect_cell(derainer: str, dataset: str, rain: str = "light", detector: str | None = None, *,
                profile: str = "quick", data_root: Path | None = None, detector_weights: str | Path | None = None,
                detector_config: str | Path | None = None,
                derainer_weights: str | None = None, results: Path | None = None, force: bool = False,
                progress: bool = False, stats: dict | None = None, batch: int = 4, executor=None,
                progress_bar=None) -> dict:
    """Compute (or reuse) one detection cell; never raises for a bad input (see the module doc).

    ``derainer``: a registered method or ``"none"`` / ``"identity"`` (the clean and rainy
    rows); ``derainer_weights`` default to :func:`models.registry.weights_for`.  The cell holds
    ``metrics`` (``ap11_*``, ``ap40_*``, ``coco_ap``, ``coco_ap50``, ``coco_ap75``), ``ci``
    (95 % percentile bootstrap intervals over images of ``ap40_moderate`` and ``coco_ap50``),
    ``n_images``, ``n_objects`` (Car ground truths), ``seconds`` (``derain``, ``detect``) and
    per image the ground truth and the detections.  With a parallel ``executor``
    (:mod:`benchmark.executor`) the frames are derained in shards on its workers first
    (:func:`benchmark.shards.derain_shard`), then detected here from the cache.
    """
    stats = stats if stats is not None else {}
    for k in ("computed", "reused", "kept", "failed", "skipped"):
        stats.setdefault(k, 0)
    results = RESULTS if results is None else results
    detector = detector or (f"mmdet-{Path(detector_config).stem}" if detector_config else DEFAULT_DETECTOR)
    prof, det_prof = detection_profile(profile)
    no_derain = derainer in NO_DERAINER
    if derainer_weights is None and not no_derain:
        try:
            derainer_weights = registry.weights_for(derainer, dataset, rain)
        except UnknownMethod:
            pass  # reported below as a failed cell
    cid = cell_id(detector, "none" if no_derain else derainer, dataset, rain, derainer_weights)
    store = _det_store(results, prof.name, dataset)
    key = StoredKey(cid)
    n_boot = det_prof["n_boot"]
    cell = {"format": DET_FORMAT, "id": cid, "kind": "detection", "detector": detector,
            "derainer": "none" if no_derain else derainer, "derainer_weights_request": derainer_weights,
            "dataset": dataset, "rain": rain, "profile": prof.name, "seed": prof.seed, "n_boot": n_boot}
    def compute(stage: dict):
        stage["now"] = "checking the rain"
        if rain not in RAINS:
            raise ValueError(f"rain must be one of {', '.join(RAINS)}, got {rain!r}")
        if dataset.lower() in REAL_RAIN_DATASETS and rain != "none":
            raise ValueError(f"{dataset}'s photographs are already rainy: score them with rain 'none', not {rain!r}")
        stage["now"] = "opening the dataset"
        ds = detection_dataset(dataset, data_root, prof.name)
        stage["now"] = "loading the detector"
        det = get_detector(detector, detector_weights, prof.name, data_root, config=detector_config)
        stage["now"] = "loading the derainer"
        if no_derain:
            net, winfo = None, {"tag": "none"}
        else:
            net, winfo = registry.load(derainer, _weights_path(derainer_weights), prof.name, data_root)
        fp = fingerprint({"format": DET_FORMAT, "detector": det.meta["identity"]["sha256"], "detector_name": detector,
                          "detector_config": det.meta["identity"].get("config_sha256"),
                          "detector_size": [det.meta["min_size"], det.meta["max_size"]],
                          "derainer": cell["derainer"], "derainer_weights": winfo, "dataset": ds.info["fingerprint"],
                          "n_images": len(ds), "rain": rain, "seed": prof.seed, "n_boot": n_boot})
        kitti_levels = dataset.lower() not in REAL_RAIN_DATASETS
        vehicles = wants_vehicles(det, dataset)
        old = store.load(key)
        if (old and old.get("status") == "ok" and old.get("fingerprint") == fp and not force
                and (has_vehicle(old) or not vehicles)):  # a cell from before the vehicle class is redone
            return old
        if net is not None:  # the whole set's megapixels decide the path (read only for a cell to compute)
            net = Derainer(net, derainer, megapixels=len(ds) * image_megapixels(ds.image(0)) if len(ds) else 0.0)
        stage["now"] = "detecting"
        t_derain = t_detect = 0.0
        dets: list[list[Object]] = []
        vdets: list[list] = []  # rows of the merged vehicle class, with their types
        pending: list = []

        def flush():
            nonlocal t_detect
            t0 = time.perf_counter()
            cars, rows = detect_batch(det, pending, vehicles)
            t_detect += time.perf_counter() - t0
            dets.extend(cars)
            vdets.extend(rows)
            pending.clear()

        frames = DerainedFrames(cell["derainer"], winfo, rain, prof.seed, ds.info["fingerprint"]) if net is not None else None
        if frames and parallel(executor) and method_module(cell["derainer"]) and frames.missing(ds.ids):
            stage["now"] = "deraining the frames on the executor"
            tasks = [DerainTask(cell["derainer"], _weights_path(derainer_weights), dataset, rain, prof.name,
                                str(data_root) if data_root else None, a, b, str(frames.root), ds.info["fingerprint"],
                                fingerprint(winfo), method_module(cell["derainer"]), net.megapixels)
                     for a, b in shard_ranges(len(ds), executor.workers)]
            done = gather(executor, derain_shard, tasks, progress_bar, size=lambda t: t.stop - t.start)
            t_derain += sum(r["seconds"] for r in done)
            stage["now"] = "detecting"
        for i in tqdm(range(len(ds)), disable=not progress, desc=f"{cell['derainer']} on {ds.name} ({rain})"):
            img = frames.load(ds.ids[i]) if frames else None
            if img is None:
                img = rainy([ds.image(i)], rain, prof.seed, ids=[ds.ids[i]])[0]
                if net is not None:
                    t0 = time.perf_counter()
                    img = to_uint8(net(img))
                    t_derain += time.perf_counter() - t0
                    frames.save(ds.ids[i], img)
            pending.append(to_tensor(img)[0])
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
        stage["now"] = "scoring"
        scored = _metrics(ds.gts, dets, n_boot, prof.seed, kitti_levels)
        if not kitti_levels:
            scored["note"] = ("COCO AP only: the labels have no KITTI truncation / occlusion levels, so KITTI's "
                              "Easy / Moderate / Hard do not apply")
            scored["vehicle"] = vehicle_entry(ds.gts, vdets, vehicles, detector, n_boot, prof.seed)
        cell.update(status="ok", **scored, n_images=len(ds), n_objects=ds.n_objects,
                    seconds={"derain": t_derain, "detect": t_detect},
                    derained_from_cache=frames.hits if frames else 0, dataset_info=ds.info,
                    inference=net.describe() if net is not None else None,
                    detector_weights=det.meta["identity"],
                    detector_size=[det.meta["min_size"], det.meta["max_size"]],
                    detector_training=(det.meta.get("training_data") or None),
                    derainer_weights=winfo, fingerprint=fp,
                    per_image=[{"id": image_id, "gt": [format_label(o) for o in g], "dets": _round_dets(d),
                                **({"vehicle_dets": vdets[k]} if vehicles else {})}
                               for k, (image_id, g, d) in enumerate(zip(ds.ids, ds.gts, dets))])
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
        if has_vehicle(cell):
            v = cell["vehicle"]
            line.update(vehicle_ap=v["metrics"]["coco_ap"], vehicle_ap50=v["metrics"]["coco_ap50"],
                        vehicle_ap50_ci=v["ci"]["coco_ap50"], n_vehicles=v["n_objects"])
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
    detector: str = ""


def _rows(rain: str, derainers, real_rain: bool = False, detector: str = "") -> list[_Row]:
    """clean, rainy, then one row per derainer; a real-rain set has no clean row."""
    rows = [_Row("rainy", "none", None, rain, detector)]
    if not real_rain:
        rows.insert(0, _Row("clean (no rain)", "none", None, "none", detector))
    for method, weights in derainers:
        weights = weights.format(rain=rain) if weights else weights
        label = method if weights in (None, "official") else f"{method} ({Path(weights).stem})"
        rows.append(_Row(label, method, weights, rain, detector))
    return rows


def _weights_path(weights: str | None) -> str | None:
    """A relative weights *path* that is not in the working directory but is in the repository
    (e.g. :data:`PAPER_RUN`) resolves there; tags and other values pass unchanged."""
    if weights and ("/" in weights or weights.endswith((".pt", ".ckpt", ".pth"))) and not Path(weights).exists():
        repo = Path(__file__).resolve().parent.parent
        if (repo / weights).exists():
            return str(repo / weights)
    return weights


def ap_cell_plan(datasets=STUDY_DATASETS, rains=None, derainers=DEFAULT_DERAINERS, detector: str | None = None):
    """[(dataset, rain, [rows])]: every cell the AP table needs, one section per (dataset, rain,
    detector); ``rains`` default to :data:`STUDY_RAINS`, the detectors to :data:`STUDY_DETECTORS`.
    A real-rain set (DAWN) takes rain ``none`` and :data:`REAL_RAIN_DERAINERS`."""
    plan = []
    for d in datasets:
        real = d.lower() in REAL_RAIN_DATASETS
        for r in (("none",) if real else rains or STUDY_RAINS.get(d, ("light", "heavy"))):
            for det in ([detector] if detector else STUDY_DETECTORS.get(d, (DEFAULT_DETECTOR,))):
                plan.append((d, r, _rows(r, REAL_RAIN_DERAINERS if real else derainers, real, det)))
    return plan


def _row_cell_id(detector: str, row: _Row, dataset: str) -> str:
    """The id :func:`detect_cell` gives the cell of ``row`` (same default derainer weights)."""
    weights = row.weights
    if weights is None and row.derainer not in NO_DERAINER:
        try:
            weights = registry.weights_for(row.derainer, dataset, row.rain)
        except LookupError:
            weights = None
    return cell_id(detector, "none" if row.derainer in NO_DERAINER else row.derainer, dataset, row.rain, weights)


#: The detectors of each dataset's sections in the AP table: the road-scene Faster R-CNN on the road
#: scenes; on the real KITTI frames and DAWN's photographs the COCO-trained YOLOv5n (which knows real
#: cars) and the paper's detector, a Faster R-CNN trained on clean KITTI frames.
STUDY_DETECTORS = {"roads": (DEFAULT_DETECTOR,), "KITTI": ("yolov5n", "fasterrcnn_kitti"),
                   "DAWN": ("yolov5n", "fasterrcnn_kitti")}
#: A planned cell with nothing stored: never computed, or its inputs were absent on every run.
MISSING = ("no stored cell: not computed yet, or an input (data, derainer weights, detector) was absent on every "
           "run; `python -m benchmark.run table ap` computes it or says what is absent")


def ap_cells(profile: str = "quick", data_root: Path | None = None, detector: str | None = None,
             detector_weights: str | Path | None = None, results: Path | None = None, force: bool = False,
             progress: bool = False, train_missing: bool = False, datasets=STUDY_DATASETS,
             rains=None, derainers=DEFAULT_DERAINERS, stats: dict | None = None,
             compute: bool = True, executor=None, progress_bar=None) -> list[tuple]:
    """[(dataset, rain, rows, cells)]: the AP table's cells, computed (or reused) with
    :func:`detect_cell`, or with ``compute=False`` read from the store as they are (a missing
    cell comes back as ``{"status": "missing"}``)."""
    results = RESULTS if results is None else results
    prof, _ = detection_profile(profile)
    stats = stats if stats is not None else {}
    store = _det_store(results, prof.name)
    sections = []
    with training_allowed(train_missing):
        for dataset, rain, rows in ap_cell_plan(datasets, rains, derainers, detector):
            det_name = rows[0].detector
            if compute:
                def one(r, det_name=det_name, dataset=dataset):
                    return detect_cell(r.derainer, dataset, r.rain, det_name, profile=prof.name, data_root=data_root,
                                       detector_weights=detector_weights, derainer_weights=r.weights,
                                       results=results, force=force, progress=progress, stats=stats,
                                       executor=executor, progress_bar=progress_bar)
                cells = concurrently(one, rows, executor)
            else:
                cells = [store.load(StoredKey(_row_cell_id(det_name, r, dataset)))
                         or {"status": "missing", "error": MISSING}
                         for r in rows]
            sections.append((dataset, rain, rows, cells))
    return sections


def ap_dry_run(profile: str, results: Path, detector: str | None = None, datasets=STUDY_DATASETS,
               rains=None, derainers=DEFAULT_DERAINERS) -> list[str]:
    """Lines ``  <cell id>: stored (<status>) | missing`` for the AP table's cells (computes nothing)."""
    store = _det_store(results, profile)
    lines = []
    for dataset, rain, rows in ap_cell_plan(datasets, rains, derainers, detector):
        for r in rows:
            cid = _row_cell_id(r.detector, r, dataset)
            old = store.load(StoredKey(cid))
            lines.append(f"  {cid}: {'stored (' + str(old.get('status')) + ')' if old else 'missing'}")
    return lines
