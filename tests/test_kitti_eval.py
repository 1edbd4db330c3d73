"""KITTI devkit AP (Car, IoU 0.7), COCO AP and the image bootstrap.

Most rule tests start from BASE: 41 images with one easy, perfectly detected
car each (score 0.9).  41 counted ground truths is the smallest number for
which the devkit's 41 recall samples are all filled, so BASE alone scores 1.0
in every AP; one extra image then probes one rule, and the expected AP follows
by hand (precision at every threshold is tp / (tp + fp)).
"""

from dataclasses import replace

import math

import numpy as np

import pytest

from detectors.bootstrap import bootstrap_ci, bootstrap_indices, paired_bootstrap_ci
from detectors.coco_eval import coco_car_ap
from datasets.kitti import Object
from detectors.kitti_eval import (
    kitti_car_ap40_moderate,
    box_overlap,
    get_thresholds,
    kitti_car_ap,
    kitti_car_eval,
)

KEYS = ["ap11_easy", "ap11_moderate", "ap11_hard", "ap40_easy", "ap40_moderate", "ap40_hard"]
N_BASE = 41


def gt(kind="Car", box=(100.0, 100.0, 200.0, 160.0), occluded=0, truncated=0.0):
    return Object(kind, truncated, occluded, tuple(box))


def det(box=(100.0, 100.0, 200.0, 160.0), score=0.9, kind="Car"):
    return Object(kind, -1.0, -1, tuple(box), score=score)


def base():
    """41 images, one 60-px-tall easy car each, detected exactly with score 0.9."""
    return [[gt()] for _ in range(N_BASE)], [[det()] for _ in range(N_BASE)]


def with_extra(extra_gt, extra_det):
    gts, dets = base()
    return gts + [list(extra_gt)], dets + [list(extra_det)]


def assert_all(result, value, keys=KEYS):
    for key in keys:
        assert result[key] == pytest.approx(value), key


# ---------------------------------------------------------------- oracles


def test_perfect_detections_give_one():
    gts, dets = base()
    assert_all(kitti_car_ap(gts, dets), 1.0)


def test_perfect_detections_mixed_scene():
    # Vans, pedestrians, DontCare and occluded / truncated / small cars around the counted ones.
    gts, dets = [], []
    for i in range(45):
        x = 10.0 * i
        frame = [
            gt(box=(x, 100, x + 120, 170)),
            gt("Van", box=(x + 300, 90, x + 420, 180)),
            gt("Pedestrian", box=(x + 500, 100, x + 530, 180)),
            gt("DontCare", box=(x + 600, 120, x + 650, 140)),
            gt(box=(x + 700, 100, x + 760, 130), occluded=1),
            gt(box=(x + 800, 100, x + 830, 112)),  # 12 px: ignored everywhere
        ]
        gts.append(frame)
        dets.append([replace(o, score=1.0) for o in frame if o.type == "Car"])
    assert_all(kitti_car_ap(gts, dets), 1.0)


def test_no_detections_give_zero():
    gts, _ = base()
    assert_all(kitti_car_ap(gts, [[] for _ in gts]), 0.0)


def test_tuple_detections_are_cars():
    gts, _ = base()
    dets = [[((100, 100, 200, 160), 0.9)] for _ in gts]
    assert_all(kitti_car_ap(gts, dets), 1.0)


def test_few_ground_truths_follow_the_devkit_sampling():
    # One GT found with precision 1 fills only sample 0 of 41: R11 = 1/11, R40 = 0.
    r = kitti_car_ap([[gt()]], [[det()]])
    assert r["ap11_easy"] == pytest.approx(1 / 11)
    assert r["ap40_easy"] == 0.0


def test_get_thresholds_samples_recall():
    assert get_thresholds([1.0], 1) == [1.0]
    assert len(get_thresholds([1.0] * 41, 41)) == 41
    assert len(get_thresholds([1.0] * 40, 40)) == 40  # recall 1.0 sampled at 39/40's slot
    # 100 GTs: the 41 thresholds are the scores whose recall is nearest k/40.
    scores = [1 - i / 1000 for i in range(100)]
    t = get_thresholds(scores, 100)
    assert len(t) == 41 and t[0] == scores[0] and t[-1] == scores[-1]


def test_box_overlap_criteria():
    a, b = (0, 0, 10, 10), (5, 0, 15, 10)
    assert box_overlap(a, b) == pytest.approx(50 / 150)
    assert box_overlap(a, b, 0) == pytest.approx(0.5)
    assert box_overlap((0, 0, 10, 10), (0, 0, 40, 40), 0) == pytest.approx(1.0)
    assert box_overlap(a, (20, 20, 30, 30)) == 0.0


# ---------------------------------------------------------------- PR by hand


def test_tp_plus_lower_fp_gives_one():
    # The FP scores below every TP threshold, so it never enters precision.
    gts, dets = with_extra([gt()], [det(), det(box=(500, 100, 600, 160), score=0.1)])
    assert_all(kitti_car_ap(gts, dets), 1.0)


def test_fp_above_tp_single_ground_truth():
    # 1 GT, TP 0.5, FP 0.9: one threshold (0.5), precision 1/2 at sample 0.
    res = kitti_car_eval([[gt()]], [[det(score=0.5), det(box=(500, 100, 600, 160), score=0.9)]])
    easy = res["easy"]
    assert easy.thresholds == [0.5]
    assert (easy.tp, easy.fp, easy.fn) == ([1], [1], [0])
    assert easy.precision[0] == pytest.approx(0.5) and easy.precision[1:].sum() == 0
    assert easy.ap11 == pytest.approx(0.5 / 11)
    assert easy.ap40 == 0.0


def test_fp_between_tp_scores_hand_worked():
    # 41 GTs found with scores 1.00, 0.99, ..., 0.60; one FP at 0.795.
    # Threshold k is the k-th score (recall (k+1)/41); the FP counts from k = 21
    # (score 0.79) on: precision 1 for k <= 20, (k+1)/(k+2) after, whose
    # right-max is 41/42 for all k >= 21.
    gts = [[gt()] for _ in range(41)]
    dets = [[det(score=1 - k / 100)] for k in range(41)]
    dets[0].append(det(box=(500, 100, 600, 160), score=0.795))
    res = kitti_car_eval(gts, dets)["moderate"]
    assert len(res.thresholds) == 41
    assert res.fp[20] == 0 and res.fp[21] == 1
    expected = [1.0] * 21 + [41 / 42] * 20
    assert res.precision.tolist() == pytest.approx(expected)
    assert res.ap11 == pytest.approx((6 + 5 * 41 / 42) / 11)
    assert res.ap40 == pytest.approx((20 + 20 * 41 / 42) / 40)


def test_high_scoring_fp_everywhere():
    gts, dets = with_extra([], [det(box=(500, 100, 600, 160), score=0.99)])
    assert_all(kitti_car_ap(gts, dets), 41 / 42)


def test_iou_must_exceed_0_7():
    # A detection at IoU exactly 0.7 is no match: it is a FP and the GT a FN.
    box = (100.0, 100.0, 200.0, 160.0)
    shifted = (100.0, 100.0, 170.0, 160.0)  # IoU = 70 / 100
    assert box_overlap(box, shifted) == pytest.approx(0.7)
    gts, dets = with_extra([gt(box=box)], [det(box=shifted, score=0.99)])
    res = kitti_car_eval(gts, dets)["easy"]
    assert res.n_gt == 42
    assert res.fp[-1] == 1 and res.fn[-1] == 1


# ---------------------------------------------------------------- KITTI rules


def test_van_match_is_ignored_not_fp():
    gts, dets = with_extra([gt("Van")], [det(score=0.99)])
    assert_all(kitti_car_ap(gts, dets), 1.0)
    # the same detection on a Pedestrian (not a neighbouring class) is a FP
    gts, dets = with_extra([gt("Pedestrian")], [det(score=0.99)])
    assert_all(kitti_car_ap(gts, dets), 41 / 42)


def test_van_detection_is_not_evaluated():
    gts, dets = with_extra([], [det(box=(500, 100, 600, 160), score=0.99, kind="Van")])
    assert_all(kitti_car_ap(gts, dets), 1.0)


def test_detection_inside_dontcare_is_ignored():
    dc = gt("DontCare", box=(0, 0, 300, 300))
    gts, dets = with_extra([dc], [det(box=(10, 10, 110, 110), score=0.99)])
    assert_all(kitti_car_ap(gts, dets), 1.0)
    # 80 % of the detection inside (> 0.7 of its area): still ignored
    gts, dets = with_extra([dc], [det(box=(220, 10, 320, 110), score=0.99)])
    assert_all(kitti_car_ap(gts, dets), 1.0)
    # only half inside: a FP
    gts, dets = with_extra([dc], [det(box=(250, 10, 350, 110), score=0.99)])
    assert_all(kitti_car_ap(gts, dets), 41 / 42)


def test_small_ground_truth_by_difficulty():
    # A 30-px car, missed: too small for Easy (ignored, no FN), a FN in Moderate/Hard.
    gts, dets = with_extra([gt(box=(500, 100, 560, 130))], [])
    res = kitti_car_eval(gts, dets)
    assert res["easy"].n_gt == 41 and res["easy"].ap40 == pytest.approx(1.0)
    for level in ("moderate", "hard"):
        assert res[level].n_gt == 42
        assert all(fn == 1 for fn in res[level].fn)
        assert res[level].ap40 < 1.0 and res[level].ap11 < 1.0
    # A 20-px car is below every minimum height: ignored everywhere.
    gts, dets = with_extra([gt(box=(500, 100, 560, 120))], [])
    assert_all(kitti_car_ap(gts, dets), 1.0)


def test_min_height_boundary_is_inclusive_for_ground_truth():
    # The devkit ignores a GT with height <= min height: exactly 25 px is out of Moderate ...
    gts, dets = with_extra([gt(box=(500, 100, 560, 125))], [])
    assert kitti_car_eval(gts, dets)["moderate"].n_gt == N_BASE
    # ... 25.5 px is in.
    gts, dets = with_extra([gt(box=(500, 100, 560, 125.5))], [])
    assert kitti_car_eval(gts, dets)["moderate"].n_gt == N_BASE + 1


def test_small_detection_is_ignored_not_fp():
    # A 20-px false detection is below every minimum height: no FP anywhere.
    gts, dets = with_extra([], [det(box=(500, 100, 560, 120), score=0.99)])
    assert_all(kitti_car_ap(gts, dets), 1.0)
    # A 30-px false detection is ignored in Easy (< 40) but a FP in Moderate/Hard.
    gts, dets = with_extra([], [det(box=(500, 100, 560, 130), score=0.99)])
    r = kitti_car_ap(gts, dets)
    assert_all(r, 1.0, ["ap11_easy", "ap40_easy"])
    assert_all(r, 41 / 42, ["ap11_moderate", "ap40_moderate", "ap11_hard", "ap40_hard"])
    # The detection height boundary is strict: exactly 25 px is evaluated in Moderate.
    gts, dets = with_extra([], [det(box=(500, 100, 560, 125), score=0.99)])
    assert kitti_car_ap(gts, dets)["ap40_moderate"] == pytest.approx(41 / 42)


def test_detection_on_ignored_ground_truth_is_not_fp():
    # An occluded (level 1) car, detected: ignored GT in Easy (the detection is
    # consumed, not a FP), a counted TP in Moderate.
    gts, dets = with_extra([gt(box=(500, 100, 600, 160), occluded=1)], [det(box=(500, 100, 600, 160), score=0.99)])
    res = kitti_car_eval(gts, dets)
    assert res["easy"].n_gt == 41 and res["moderate"].n_gt == 42
    assert_all(kitti_car_ap(gts, dets), 1.0)


def test_too_small_detection_can_absorb_a_ground_truth():
    # 30-px car (counted in Moderate) and a 24-px detection inside it (IoU 0.8,
    # ignored in Moderate): the devkit assigns the ignored detection, so the GT
    # is neither TP nor FN.
    gts, dets = with_extra([gt(box=(500, 100, 600, 130))], [det(box=(500, 103, 600, 127), score=0.99)])
    res = kitti_car_eval(gts, dets)["moderate"]
    assert res.n_gt == N_BASE + 1
    assert all(fn == 0 for fn in res.fn) and all(fp == 0 for fp in res.fp)
    assert all(tp == N_BASE for tp in res.tp)
    # An evaluated detection overlapping above 0.7 wins over the ignored one even
    # with a lower IoU (0.74 < 0.8) and a lower score.
    evaluated = det(box=(515, 100, 615, 130), score=0.95)
    gts, dets = with_extra(
        [gt(box=(500, 100, 600, 130))], [det(box=(500, 103, 600, 127), score=0.99), evaluated]
    )
    res = kitti_car_eval(gts, dets)["moderate"]
    assert res.tp[-1] == N_BASE + 1 and res.fn[-1] == 0 and res.fp[-1] == 0


@pytest.mark.parametrize(
    "occluded, truncated, counted",
    [
        (1, 0.0, (False, True, True)),
        (2, 0.0, (False, False, True)),
        (3, 0.0, (False, False, False)),
        (0, 0.15, (True, True, True)),
        (0, 0.2, (False, True, True)),
        (0, 0.4, (False, False, True)),
        (0, 0.6, (False, False, False)),
    ],
)
def test_occlusion_and_truncation_filters(occluded, truncated, counted):
    gts, dets = with_extra([gt(box=(500, 100, 600, 160), occluded=occluded, truncated=truncated)], [])
    res = kitti_car_eval(gts, dets)
    for level, is_counted in zip(("easy", "moderate", "hard"), counted):
        assert res[level].n_gt == N_BASE + is_counted, level
        assert (res[level].ap40 < 1.0) == is_counted, level  # a counted miss costs recall


def test_class_names_case_insensitive():
    gts, dets = base()
    gts = [[replace(o, type="car") for o in g] for g in gts]
    dets = [[replace(o, type="CAR") for o in d] for d in dets]
    assert_all(kitti_car_ap(gts, dets), 1.0)


def test_detection_without_score_is_rejected():
    with pytest.raises(ValueError, match="no score"):
        kitti_car_ap([[gt()]], [[gt()]])
    with pytest.raises(ValueError, match="images"):
        kitti_car_ap([[gt()]], [])


# ---------------------------------------------------------------- COCO


def test_coco_perfect_and_empty():
    gts, dets = base()
    gts[0] = gts[0] + [gt("Van", box=(300, 100, 400, 160)), gt("DontCare", box=(600, 0, 700, 50))]
    r = coco_car_ap(gts, dets)
    assert r["ap"] == pytest.approx(1.0) and r["ap50"] == pytest.approx(1.0)
    assert coco_car_ap(gts, [[] for _ in gts]) == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    assert math.isnan(coco_car_ap([[gt("Van")]], [[det()]])["ap"])


def test_coco_van_is_ignore_region_and_fp_counts():
    gts, dets = base()
    gts[0] = gts[0] + [gt("Van", box=(300, 100, 400, 160))]
    dets[0] = dets[0] + [det(box=(300, 100, 400, 160), score=0.99)]
    assert coco_car_ap(gts, dets)["ap"] == pytest.approx(1.0)
    gts[0][-1] = gt("Pedestrian", box=(300, 100, 400, 160))
    r = coco_car_ap(gts, dets)
    assert r["ap"] < 1.0 and r["ap50"] < 1.0


def test_coco_vehicle_merges_car_truck_and_bus():
    from detectors.coco_eval import VEHICLE_TYPES

    gts, dets = base()
    gts[0] = gts[0] + [gt("Truck", box=(300, 100, 400, 160))]
    dets[0] = dets[0] + [det(box=(300, 100, 400, 160), score=0.99)]  # a "Car" box on the labelled truck
    assert coco_car_ap(gts, dets)["ap"] < 1.0  # car only: the truck is not a car, the box a false positive
    assert coco_car_ap(gts, dets, types=VEHICLE_TYPES)["ap"] == pytest.approx(1.0)
    bus = [[gt("Bus")]]
    assert coco_car_ap(bus, [[det()]], types=VEHICLE_TYPES)["ap50"] == pytest.approx(1.0)
    assert math.isnan(coco_car_ap(bus, [[det()]])["ap"])  # no car label at all
    assert coco_car_ap(bus, [[det(kind="Truck")]], types=VEHICLE_TYPES)["ap50"] == pytest.approx(1.0)


def test_ap40_moderate_alone_equals_the_full_evaluation():
    gts, dets = base()
    dets[0] = dets[0] + [det(box=(300, 100, 400, 160), score=0.95)]  # a confident false positive
    dets[1] = []  # and a missed car
    assert kitti_car_ap40_moderate(gts, dets) == kitti_car_ap(gts, dets)["ap40_moderate"] < 1.0


def test_coco_ap50_alone_equals_the_full_evaluation():
    """The bootstrap's fast path (IoU 0.5 only, area "all") gives the full evaluation's AP50."""
    rng = np.random.default_rng(3)
    gts, dets = [], []
    for _ in range(12):
        boxes = [(float(x), float(y), float(x + w), float(y + h))
                 for x, y, w, h in rng.integers([0, 0, 30, 30], [400, 300, 120, 90], (4, 4))]
        gts.append([gt("Car", box=b) for b in boxes])
        dets.append([det(box=tuple(v + float(rng.normal(0, 8)) for v in b), score=float(rng.random()))
                     for b in boxes] + [det(box=(5, 5, 60, 40), score=float(rng.random()))])
    full = coco_car_ap(gts, dets)
    fast = coco_car_ap(gts, dets, iou_thrs=(0.5,))
    assert 0.0 < full["ap50"] < 1.0 and fast["ap50"] == full["ap50"] and math.isnan(fast["ap"])


# ---------------------------------------------------------------- bootstrap


def _noisy_set(n_images=40, miss_every=3, fp_every=4):
    gts, dets = [], []
    for i in range(n_images):
        gts.append([gt()])
        frame = [] if i % miss_every == 0 else [det(score=0.5 + 0.01 * (i % 40))]
        if i % fp_every == 0:
            frame.append(det(box=(500, 100, 600, 160), score=0.6 + 0.005 * i))
        dets.append(frame)
    return gts, dets


def _ap50(g, d):
    return coco_car_ap(g, d)["ap50"]


def _recall(g, d):
    found = sum(1 for gs, ds in zip(g, d) for o in gs if any(box_overlap(o.bbox, x.bbox) > 0.7 for x in ds))
    return found / max(1, sum(len(gs) for gs in g))


def test_bootstrap_deterministic_and_contains_estimate():
    gts, dets = _noisy_set()
    point = _recall(gts, dets)
    lo, hi = bootstrap_ci(_recall, gts, dets, n=200, seed=3)
    assert (lo, hi) == bootstrap_ci(_recall, gts, dets, n=200, seed=3)
    assert lo <= point <= hi and lo < hi
    assert (bootstrap_indices(10, 5, 1) == bootstrap_indices(10, 5, 1)).all()
    assert not (bootstrap_indices(10, 5, 1) == bootstrap_indices(10, 5, 2)).all()


def test_bootstrap_with_ap_metric():
    gts, dets = _noisy_set()
    point = _ap50(gts, dets)
    lo, hi = bootstrap_ci(_ap50, gts, dets, n=40, seed=0)
    assert 0.0 <= lo <= point <= hi <= 1.0


def test_paired_bootstrap():
    gts, raw = _noisy_set()
    lo, hi = paired_bootstrap_ci(_recall, gts, raw, raw, n=50, seed=0)
    assert lo == hi == 0.0
    derained = [[det()] for _ in gts]  # finds everything
    lo, hi = paired_bootstrap_ci(_recall, gts, raw, derained, n=100, seed=0)
    assert 0 < lo <= _recall(gts, derained) - _recall(gts, raw) <= hi
    assert (lo, hi) == paired_bootstrap_ci(_recall, gts, raw, derained, n=100, seed=0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci(_recall, gts, raw, derained[:-1])


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_data_ground_truth_as_detections(kitti_root):
    from datasets.kitti import KittiDetection

    gts = KittiDetection(kitti_root).all_labels()
    dets = [[replace(o, score=1.0) for o in g if o.type == "Car"] for g in gts]
    assert_all(kitti_car_ap(gts, dets), 1.0)
    r = coco_car_ap(gts, dets)
    assert r["ap"] == pytest.approx(1.0) and r["ap50"] == pytest.approx(1.0)
    assert_all(kitti_car_ap(gts, [[] for _ in gts]), 0.0)
