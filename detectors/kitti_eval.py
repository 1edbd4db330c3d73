"""KITTI 2-D detection AP for class Car, as the official devkit computes it.

A re-implementation (in our own words) of the 2-D ("image") part of the KITTI
object devkit, ``cpp/evaluate_object.cpp``: ``cleanData``,
``computeStatistics``, ``getThresholds`` and ``eval_class``.  The rules:

* Difficulties Easy / Moderate / Hard: minimum box height 40 / 25 / 25 px,
  maximum occlusion level 0 / 1 / 2, maximum truncation 0.15 / 0.3 / 0.5.
* Ground truth (``cleanData``): a ``Car`` passing the difficulty filter counts
  (recall denominator).  A ``Car`` failing it (occlusion or truncation above
  the maximum, or height ``<=`` the minimum -- note ``<=``), and every ``Van``
  (the neighbouring class), is *ignored*: a detection may be matched to it and
  is then neither TP nor FP, and it is never a FN.  Other classes play no part.
  ``DontCare`` boxes become "stuff" regions.
* Detections: a detection whose height, *truncated to an integer* as the C++
  ``int32_t height = fabs(y1 - y2)`` does, is ``<`` the minimum height is
  ignored (whatever its class -- the devkit checks height before class); else
  a ``Car`` detection is evaluated and any other class plays no part.
* Matching (``computeStatistics``), ground truths in file order, IoU strictly
  ``> 0.7``, each detection used at most once:

  - first pass (to collect scores): each GT takes the unassigned candidate with
    the highest score; if the GT or that detection is ignored, the detection is
    just consumed, otherwise it is a TP and its score is recorded.
  - PR pass at threshold ``t`` (detections scoring ``< t`` are dropped): each
    GT takes the unassigned, evaluated (non-ignored) candidate with the largest
    IoU, falling back to an ignored (too small) candidate only when no
    evaluated one overlaps.  An unmatched counted GT is a FN.  Unassigned
    evaluated detections are FPs, except those whose intersection with a
    ``DontCare`` box covers ``> 0.7`` of the *detection's* area (the devkit's
    ``boxoverlap(det, dc, 0)`` against the class's minimum overlap), which are
    dropped.
* Score thresholds (``getThresholds``): the TP scores of the first pass,
  sorted descending, sampled so that their recalls come as close as possible to
  0, 1/40, ..., 1 (41 sample points); at most 41 thresholds.
* Precision at threshold ``i`` is ``tp / (tp + fp)`` summed over images, then
  replaced by the maximum over ``i..end`` (interpolation to the right) in a
  41-long array padded with zeros.  AP|R11 is the mean of entries 0, 4, ..., 40
  (the old metric); AP|R40 the mean of entries 1..40 (the current one).  Like
  the devkit, values here are fractions in [0, 1], not percentages.

Consequences of following the devkit exactly, worth knowing when reading a
small-sample number:

* The sample index, not the measured recall, decides which AP term a precision
  feeds.  With fewer than ~41 counted ground truths there are fewer than 41
  thresholds, so even perfect detections score below 1: one GT found with
  precision 1 gives R11 = 1/11 and R40 = 0.  Perfect detections reach 1.0 once
  each difficulty has at least 41 counted ground truths.
* ``0/0`` precision (a threshold with neither TP nor FP, which the devkit
  would turn into NaN) is taken as 0 here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from datasets.kitti import Object

__all__ = [
    "DIFFICULTIES",
    "MIN_HEIGHT",
    "MAX_OCCLUSION",
    "MAX_TRUNCATION",
    "MIN_OVERLAP",
    "N_SAMPLE_PTS",
    "box_overlap",
    "get_thresholds",
    "KittiClassResult",
    "kitti_car_eval",
    "kitti_car_ap",
]

DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
MIN_OVERLAP = 0.7  # Car, 2-D image boxes
N_SAMPLE_PTS = 41

_CLASS = "car"
_NEIGHBOUR = "van"
_DONTCARE = "dontcare"
_NO_DETECTION = float("-inf")


def box_overlap(a: Sequence[float], b: Sequence[float], criterion: int = -1) -> float:
    """Overlap of two (x1, y1, x2, y2) boxes in continuous coordinates (no +1).

    ``criterion=-1``: intersection over union; ``0``: over the area of ``a``;
    ``1``: over the area of ``b`` (the devkit's ``boxoverlap``).
    """
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    if criterion == -1:
        return inter / (area_a + area_b - inter)
    if criterion == 0:
        return inter / area_a
    if criterion == 1:
        return inter / area_b
    raise ValueError(f"criterion must be -1, 0 or 1, got {criterion}")


def _overlap_matrix(a: np.ndarray, b: np.ndarray, criterion: int) -> np.ndarray:
    """Pairwise :func:`box_overlap` of boxes ``a`` (N x 4) and ``b`` (M x 4)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    valid = (w > 0) & (h > 0)
    inter = np.where(valid, w * h, 0.0)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    if criterion == -1:
        denom = area_a + area_b - inter
    elif criterion == 0:
        denom = np.broadcast_to(area_a, inter.shape)
    else:
        denom = np.broadcast_to(area_b, inter.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(valid, inter / np.where(denom > 0, denom, 1.0), 0.0)
    return out


def get_thresholds(scores: Sequence[float], n_gt: int) -> list[float]:
    """Score thresholds whose recalls best approximate 0, 1/40, ..., 1 (``getThresholds``)."""
    v = sorted(scores, reverse=True)
    thresholds: list[float] = []
    current_recall = 0.0
    last = len(v) - 1
    for i, score in enumerate(v):
        l_recall = (i + 1) / n_gt
        r_recall = (i + 2) / n_gt if i < last else l_recall
        # Skip this score while the next one is a closer approximation of the target recall.
        if (r_recall - current_recall) < (current_recall - l_recall) and i < last:
            continue
        thresholds.append(score)
        current_recall += 1.0 / (N_SAMPLE_PTS - 1.0)
    return thresholds[:N_SAMPLE_PTS]


def _as_detection(det) -> tuple[str, tuple[float, float, float, float], float]:
    """``Object`` (with a score) or ``(box, score)`` (taken as a Car) -> (type, box, score)."""
    if isinstance(det, Object):
        if det.score is None:
            raise ValueError(f"detection {det} has no score")
        return det.type, tuple(float(v) for v in det.bbox), float(det.score)
    try:
        box, score = det
        box = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"a detection must be an Object or (box, score), got {det!r}") from None
    if len(box) != 4:
        raise ValueError(f"a detection box needs 4 numbers (x1, y1, x2, y2), got {box!r}")
    return "Car", box, float(score)


@dataclass
class _Frame:
    """One image at one difficulty, reduced to what matching needs.

    Ground truths and detections that the devkit marks ``-1`` (other classes)
    are dropped up front: they are skipped everywhere, so dropping them changes
    nothing.  Order is kept, since matching is greedy in file order.
    """

    gt_ignored: list[bool]  # per kept GT: True = ignored (devkit 1), False = counted (0)
    det_ignored: list[bool]  # per kept detection: True = too small (devkit 1), False = evaluated (0)
    det_scores: list[float]
    iou: list[list[float]]  # [gt][det]
    dc_hit: list[bool]  # per kept detection: inside some DontCare box (> MIN_OVERLAP of its area)
    n_gt: int
    sorted_scores: np.ndarray = field(init=False)
    _cache: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        self.sorted_scores = np.sort(np.asarray(self.det_scores, dtype=float))

    def statistics(self, compute_fp: bool, thresh: float = 0.0) -> tuple[int, int, int, list[float]]:
        """(tp, fp, fn, tp scores) of ``computeStatistics`` for this frame."""
        if compute_fp:
            # The outcome depends only on which detections pass the threshold,
            # i.e. on how many scores are >= thresh: cache on that count.
            key = len(self.sorted_scores) - int(np.searchsorted(self.sorted_scores, thresh, side="left"))
            hit = self._cache.get(key)
            if hit is None:
                hit = self._cache[key] = self._statistics(True, thresh)
            return hit
        return self._statistics(False, 0.0)

    def _statistics(self, compute_fp: bool, thresh: float):
        scores = self.det_scores
        det_ignored = self.det_ignored
        n_det = len(scores)
        assigned = [False] * n_det
        below = [s < thresh for s in scores] if compute_fp else [False] * n_det
        tp = fp = fn = 0
        tp_scores: list[float] = []
        for i, gt_ignored in enumerate(self.gt_ignored):
            row = self.iou[i]
            det_idx = -1
            valid = _NO_DETECTION
            max_overlap = 0.0
            assigned_ignored_det = False
            for j in range(n_det):
                if assigned[j] or below[j]:
                    continue
                overlap = row[j]
                if overlap <= MIN_OVERLAP:
                    continue
                if not compute_fp:
                    # Recall-threshold pass: the highest-scoring candidate.
                    if scores[j] > valid:
                        det_idx, valid = j, scores[j]
                elif not det_ignored[j] and (overlap > max_overlap or assigned_ignored_det):
                    # PR pass: the largest overlap among evaluated detections ...
                    det_idx, valid, max_overlap = j, 1.0, overlap
                    assigned_ignored_det = False
                elif det_ignored[j] and valid == _NO_DETECTION:
                    # ... an ignored (too small) one only while nothing else matched.
                    det_idx, valid = j, 1.0
                    assigned_ignored_det = True
            if valid == _NO_DETECTION:
                if not gt_ignored:
                    fn += 1
            elif gt_ignored or det_ignored[det_idx]:
                assigned[det_idx] = True
            else:
                tp += 1
                tp_scores.append(scores[det_idx])
                assigned[det_idx] = True
        if compute_fp:
            for j in range(n_det):
                if assigned[j] or det_ignored[j] or below[j]:
                    continue
                if self.dc_hit[j]:
                    continue  # assigned to a DontCare (stuff) area: neither TP nor FP
                fp += 1
        return tp, fp, fn, tp_scores


def _prepare(gt: Sequence[Object], det: Sequence, difficulty: int) -> _Frame:
    """``cleanData`` for one image and difficulty."""
    min_height = MIN_HEIGHT[difficulty]
    gt_boxes, gt_ignored, dc_boxes = [], [], []
    n_gt = 0
    for obj in gt:
        kind = obj.type.lower()
        if kind == _DONTCARE:
            dc_boxes.append(obj.bbox)
        if kind == _CLASS:
            valid_class = 1
        elif kind == _NEIGHBOUR:
            valid_class = 0
        else:
            continue  # devkit -1: plays no part
        height = obj.bbox[3] - obj.bbox[1]
        ignore = (
            obj.occluded > MAX_OCCLUSION[difficulty]
            or obj.truncated > MAX_TRUNCATION[difficulty]
            or height <= min_height
        )
        counted = valid_class == 1 and not ignore
        n_gt += counted
        gt_boxes.append(obj.bbox)
        gt_ignored.append(not counted)

    det_boxes, det_ignored, det_scores = [], [], []
    for d in det:
        kind, box, score = _as_detection(d)
        height = int(abs(box[1] - box[3]))  # the devkit stores it in an int32_t
        if height < min_height:
            ignored = True  # devkit 1, whatever the class
        elif kind.lower() == _CLASS:
            ignored = False
        else:
            continue  # devkit -1
        det_boxes.append(box)
        det_ignored.append(ignored)
        det_scores.append(score)

    g = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)
    d = np.asarray(det_boxes, dtype=float).reshape(-1, 4)
    c = np.asarray(dc_boxes, dtype=float).reshape(-1, 4)
    iou = _overlap_matrix(g, d, -1).tolist()
    dc_hit = (_overlap_matrix(d, c, 0) > MIN_OVERLAP).any(axis=1).tolist() if len(c) else [False] * len(d)
    return _Frame(gt_ignored, det_ignored, det_scores, iou, dc_hit, n_gt)


@dataclass
class KittiClassResult:
    """Full outcome for one difficulty."""

    difficulty: str
    n_gt: int
    thresholds: list[float]
    tp: list[int]
    fp: list[int]
    fn: list[int]
    recall: list[float]
    precision: np.ndarray  # 41 entries, interpolated, zero-padded

    @property
    def ap11(self) -> float:
        return float(self.precision[0::4].sum() / 11.0)

    @property
    def ap40(self) -> float:
        return float(self.precision[1:].sum() / 40.0)


def _eval_frames(frames: Sequence[_Frame], difficulty: str) -> KittiClassResult:
    """``eval_class`` over prepared frames of one difficulty."""
    scores: list[float] = []
    n_gt = 0
    for frame in frames:
        n_gt += frame.n_gt
        scores.extend(frame.statistics(False)[3])
    thresholds = get_thresholds(scores, n_gt) if n_gt > 0 else []
    k = len(thresholds)
    tp, fp, fn = [0] * k, [0] * k, [0] * k
    for frame in frames:
        for t, thresh in enumerate(thresholds):
            a, b, c, _ = frame.statistics(True, thresh)
            tp[t] += a
            fp[t] += b
            fn[t] += c
    precision = np.zeros(N_SAMPLE_PTS)
    recall = []
    for t in range(k):
        recall.append(tp[t] / (tp[t] + fn[t]) if tp[t] + fn[t] else 0.0)
        precision[t] = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else 0.0
    for t in range(k):
        precision[t] = precision[t:].max()
    return KittiClassResult(difficulty, n_gt, thresholds, tp, fp, fn, recall, precision)


def _check_lengths(gts, dets) -> None:
    if len(gts) != len(dets):
        raise ValueError(f"gts has {len(gts)} images but dets has {len(dets)}")


def kitti_car_eval(gts: Sequence[Sequence[Object]], dets: Sequence[Sequence]) -> dict[str, KittiClassResult]:
    """Devkit evaluation of Car at IoU 0.7, per difficulty, with the PR details.

    ``gts[i]`` is the full label list of image ``i`` (all classes, DontCare
    included); ``dets[i]`` its detections, each an :class:`Object` with a score
    or a ``(box, score)`` pair (taken to be a Car).
    """
    _check_lengths(gts, dets)
    out = {}
    for level, name in enumerate(DIFFICULTIES):
        frames = [_prepare(g, d, level) for g, d in zip(gts, dets)]
        out[name] = _eval_frames(frames, name)
    return out


def kitti_car_ap(gts: Sequence[Sequence[Object]], dets: Sequence[Sequence]) -> dict[str, float]:
    """AP of Car at IoU 0.7: keys ``ap11_{easy,moderate,hard}`` and ``ap40_{...}``, in [0, 1]."""
    results = kitti_car_eval(gts, dets)
    out = {f"ap11_{name}": results[name].ap11 for name in DIFFICULTIES}
    out.update({f"ap40_{name}": results[name].ap40 for name in DIFFICULTIES})
    return out


def kitti_car_ap40_moderate(gts: Sequence[Sequence[Object]], dets: Sequence[Sequence]) -> float:
    """``kitti_car_ap(gts, dets)["ap40_moderate"]`` evaluating the Moderate difficulty alone: a
    third of the work, for the bootstrap, which repeats it hundreds of times."""
    _check_lengths(gts, dets)
    level = DIFFICULTIES.index("moderate")
    return _eval_frames([_prepare(g, d, level) for g, d in zip(gts, dets)], "moderate").ap40
