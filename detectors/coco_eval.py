"""COCO-style AP (IoU .50:.95) and AP50 for the KITTI Car class (or one merged class of several
types, e.g. the "vehicle" of car + truck + bus), through pycocotools.

The ground-truth and detection dicts are built in memory (no JSON files).

Choices, since KITTI labels are not COCO labels:

* Every ``Car`` ground truth counts (``iscrowd=0``), whatever its size,
  occlusion or truncation: COCO has no difficulty levels.  Areas are box
  areas ``w * h`` in continuous coordinates, like the KITTI devkit's.
* ``Van`` (the neighbouring class the KITTI devkit ignores for Car) and
  ``DontCare`` regions become ignore regions: ``iscrowd=1`` annotations of the
  Car category.  pycocotools matches a detection to a crowd region when the
  intersection covers at least the IoU threshold of the *detection's* area,
  and such a detection is then neither TP nor FP -- the same spirit as the
  devkit's neighbouring-class and DontCare rules (not identical: the devkit
  uses IoU > 0.7 for a Van and area fraction > 0.7 for DontCare; here the
  fraction is compared with each of the ten thresholds .50..95).
  (A ``ignore`` flag would not do: pycocotools overwrites it from ``iscrowd``.)
* Every other class is dropped.  Detections: ``Object`` of type ``Car`` (other
  types dropped) or ``(box, score)`` pairs, taken as Cars.
* ``types`` (default ``("Car",)``) are the ground-truth and detection types that count, merged into
  one category: :data:`VEHICLE_TYPES` scores "vehicle" AP, where a car box on a labelled truck is
  a true positive.  An ignore type that is also counted is counted, not ignored.
* No detections at all give 0.0 (pycocotools cannot load an empty result
  list).  No countable Car ground truth gives NaN (AP undefined; pycocotools
  reports -1).
* ``max_dets`` (default 100, COCO's) caps detections per image, by score.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Sequence

import numpy as np

from datasets.kitti import Object
from detectors.kitti_eval import _as_detection

__all__ = ["coco_car_ap", "IGNORE_TYPES", "VEHICLE_TYPES"]

IGNORE_TYPES = ("Van", "DontCare")
#: the types merged into one "vehicle" class (COCO's car, truck and bus)
VEHICLE_TYPES = ("Car", "Truck", "Bus")
_CAR_ID = 1


def _coco_box(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_car_ap(
    gts: Sequence[Sequence[Object]],
    dets: Sequence[Sequence],
    max_dets: int = 100,
    ignore_types: Sequence[str] = IGNORE_TYPES,
    iou_thrs: Sequence[float] | None = None,
    types: Sequence[str] = ("Car",),
) -> dict[str, float]:
    """``{"ap": AP@[.50:.95], "ap50": AP@.50, "ap75": AP@.75}`` for Car (or the merged ``types``), in
    [0, 1] (see module doc).

    ``iou_thrs`` (e.g. ``(0.5,)``) evaluates only those IoU thresholds and the "all" area range:
    the same matching, so the same AP at those thresholds, in a fraction of the time (a bootstrap
    of AP50 repeats the evaluation hundreds of times); the keys of the others are then NaN."""
    if len(gts) != len(dets):
        raise ValueError(f"gts has {len(gts)} images but dets has {len(dets)}")
    counted = {t.lower() for t in types}
    ignore = {t.lower() for t in ignore_types} - counted

    images, annotations = [], []
    n_car = 0
    for index, objects in enumerate(gts):
        image_id = index + 1
        images.append({"id": image_id})
        for obj in objects:
            kind = obj.type.lower()
            if kind in counted:
                crowd = 0
                n_car += 1
            elif kind in ignore:
                crowd = 1
            else:
                continue
            bbox = _coco_box(obj.bbox)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": _CAR_ID,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": crowd,
                }
            )

    results = []
    for index, per_image in enumerate(dets):
        kept = []
        for d in per_image:
            kind, box, score = _as_detection(d)
            if kind.lower() in counted:
                kept.append((score, box))
        kept.sort(key=lambda sb: -sb[0])
        for score, box in kept[:max_dets]:
            results.append(
                {"image_id": index + 1, "category_id": _CAR_ID, "bbox": _coco_box(box), "score": score}
            )

    if n_car == 0:
        return {"ap": math.nan, "ap50": math.nan, "ap75": math.nan}
    if not results:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": _CAR_ID, "name": "Car"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.catIds = [_CAR_ID]
        evaluator.params.maxDets = [1, 10, max_dets]
        if iou_thrs is not None:
            evaluator.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
            evaluator.params.areaRng = [evaluator.params.areaRng[0]]
            evaluator.params.areaRngLbl = [evaluator.params.areaRngLbl[0]]
        evaluator.evaluate()
        evaluator.accumulate()

    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M max-dets]
    precision = evaluator.eval["precision"][:, :, 0, 0, -1]
    thresholds = evaluator.params.iouThrs

    def mean_valid(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else math.nan

    at = lambda t: mean_valid(precision[np.isclose(thresholds, t)]) if np.isclose(thresholds, t).any() else math.nan  # noqa: E731
    return {
        "ap": mean_valid(precision) if iou_thrs is None else math.nan,
        "ap50": at(0.5),
        "ap75": at(0.75),
    }


