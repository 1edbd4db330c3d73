"""COCO-style AP (IoU .50:.95) and AP50 for the KITTI Car class, through pycocotools.

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
* No detections at all give 0.0 (pycocotools cannot load an empty result
  list).  No countable Car ground truth gives NaN (AP undefined; pycocotools
  reports -1).
* ``max_dets`` (default 100, COCO's) caps detections per image, by score.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .kitti import Object
from .kitti_eval import _as_detection

__all__ = ["coco_car_ap", "IGNORE_TYPES", "COCO_TYPES", "read_coco_labels"]

IGNORE_TYPES = ("Van", "DontCare")
_CAR_ID = 1


def _coco_box(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_car_ap(
    gts: Sequence[Sequence[Object]],
    dets: Sequence[Sequence],
    max_dets: int = 100,
    ignore_types: Sequence[str] = IGNORE_TYPES,
) -> dict[str, float]:
    """``{"ap": AP@[.50:.95], "ap50": AP@.50, "ap75": AP@.75}`` for Car, in [0, 1] (see module doc)."""
    if len(gts) != len(dets):
        raise ValueError(f"gts has {len(gts)} images but dets has {len(dets)}")
    ignore = {t.lower() for t in ignore_types}

    images, annotations = [], []
    n_car = 0
    for index, objects in enumerate(gts):
        image_id = index + 1
        images.append({"id": image_id})
        for obj in objects:
            kind = obj.type.lower()
            if kind == "car":
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
            if kind.lower() == "car":
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
        evaluator.evaluate()
        evaluator.accumulate()

    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M max-dets]
    precision = evaluator.eval["precision"][:, :, 0, 0, -1]
    iou_thrs = evaluator.params.iouThrs

    def mean_valid(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else math.nan

    return {
        "ap": mean_valid(precision),
        "ap50": mean_valid(precision[np.isclose(iou_thrs, 0.5)]),
        "ap75": mean_valid(precision[np.isclose(iou_thrs, 0.75)]),
    }


#: COCO category names (lower case) -> KITTI types; crowd annotations become DontCare
COCO_TYPES = {"car": "Car", "van": "Van"}


def read_coco_labels(json_path) -> tuple[list[str], list[Path], list[list[Object]]]:
    """A user's labelled images in a COCO JSON file -> (ids, image paths, KITTI ``Object`` labels).

    The second, real-rain data source of the detection study.  ``bbox`` ``[x, y, w, h]``
    becomes ``(x, y, x + w, y + h)``; category ``car`` -> ``Car``, ``van`` -> ``Van``, any
    other name is kept as its capitalised name (not counted for Car; a detection on it is a
    false positive, as in KITTI); ``iscrowd=1`` -> ``DontCare``.  A COCO file has no
    truncation or occlusion, so both are 0 (only the difficulty's height limit applies).
    Images are looked for at ``file_name`` relative to the JSON's folder, then under its
    ``images/`` subfolder.  Read with pycocotools; a missing file, image or malformed entry
    raises ValueError naming the file and the entry.
    """
    from pycocotools.coco import COCO

    json_path = Path(json_path)
    if not json_path.is_file():
        raise ValueError(f"COCO labels {json_path} do not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(json_path))
    except Exception as exc:
        raise ValueError(f"{json_path}: not a COCO annotation file ({type(exc).__name__}: {exc})") from exc
    names = {c["id"]: str(c.get("name", "")).lower() for c in coco.dataset.get("categories", [])}
    ids, paths, labels = [], [], []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        if "file_name" not in info:
            raise ValueError(f"{json_path}: image {image_id} has no file_name")
        candidates = [json_path.parent / info["file_name"], json_path.parent / "images" / info["file_name"]]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"{json_path}: image {image_id} file {info['file_name']} not found "
                             f"(looked in {json_path.parent} and {json_path.parent / 'images'})")
        objects = []
        for ann in coco.imgToAnns.get(image_id, []):
            box = ann.get("bbox")
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
                raise ValueError(f"{json_path}: annotation {ann.get('id')} of image {image_id}: bbox must be "
                                 f"[x, y, w, h] with w, h >= 0, got {box!r}")
            if ann.get("category_id") not in names:
                raise ValueError(f"{json_path}: annotation {ann.get('id')}: unknown category_id {ann.get('category_id')!r}")
            name = names[ann["category_id"]]
            kind = "DontCare" if ann.get("iscrowd") else COCO_TYPES.get(name, name.capitalize() or "Other")
            x, y, w, h = (float(v) for v in box)
            objects.append(Object(type=kind, truncated=-1.0 if kind == "DontCare" else 0.0,
                                  occluded=-1 if kind == "DontCare" else 0, bbox=(x, y, x + w, y + h)))
        ids.append(Path(info["file_name"]).stem)
        paths.append(path)
        labels.append(objects)
    if not ids:
        raise ValueError(f"{json_path}: no images")
    return ids, paths, labels
