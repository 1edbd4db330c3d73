"""The procedurally generated road scenes (datasets.roads)."""

import numpy as np
import pytest

from datasets.roads import MAX_VEHICLES, MIN_VISIBLE, OCCLUSION_LEVELS, road_scene, road_scenes

SIZE = (96, 288)  # small, same 1:3 aspect as the default


def test_deterministic_and_prefix_stable():
    a = road_scenes("train", 4, size=SIZE, seed=3)
    b = road_scenes("train", 4, size=SIZE, seed=3)
    c = road_scenes("train", 2, size=SIZE, seed=3)
    for (na, ia, oa), (nb, ib, ob) in zip(a, b):
        assert na == nb and np.array_equal(ia, ib) and oa == ob
    for (na, ia, oa), (nc, ic, oc) in zip(a, c):
        assert na == nc and np.array_equal(ia, ic) and oa == oc
    other = road_scenes("train", 4, size=SIZE, seed=4)
    assert not any(np.array_equal(x[1], y[1]) for x, y in zip(a, other))


def test_shapes_types_and_counts():
    scenes = road_scenes("test", 6, seed=0)
    assert len({name for name, _, _ in scenes}) == 6
    for name, image, objects in scenes:
        assert image.shape == (192, 576, 3) and image.dtype == np.uint8
        assert 1 <= len(objects) <= MAX_VEHICLES
        for o in objects:
            assert o.type in ("Car", "Van") and o.score is None
            assert o.occluded in (0, 1, 2) and 0.0 <= o.truncated <= 1.0


def test_splits_use_disjoint_backgrounds():
    from datasets.roads import _photos

    train = {p.tobytes() for p in _photos("train", 64)}
    test = {p.tobytes() for p in _photos("test", 64)}
    assert train and test and not train & test


def test_boxes_inside_image_and_tight():
    h, w = SIZE
    for index in range(6):
        scene = road_scene("train", index, size=SIZE, seed=1)
        for k, (o, mask) in enumerate(zip(scene.objects, scene.masks)):
            x1, y1, x2, y2 = o.bbox
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            assert (x1, y1, x2, y2) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
            # Rendering the scene without vehicle k changes pixels only inside its box,
            # and only where it is visible; and it does change most of its visible pixels
            # (a pixel may match what is behind it by chance).
            without = road_scene("train", index, size=SIZE, seed=1, omit=(k,))
            diff = (scene.image != without.image).any(axis=2)
            assert not (diff & ~scene.visible[k]).any()
            inside = np.zeros_like(diff)
            inside[int(y1) : int(y2), int(x1) : int(x2)] = True
            assert not (diff & ~inside).any()
            assert diff.sum() >= 0.9 * scene.visible[k].sum()
            if o.occluded == 0 and o.truncated == 0:
                # a fully visible vehicle's box is exactly the bounding box of the change
                r = np.flatnonzero(diff.any(axis=1))
                c = np.flatnonzero(diff.any(axis=0))
                assert abs(c[0] - x1) <= 1 and abs(c[-1] + 1 - x2) <= 1
                assert abs(r[0] - y1) <= 1 and abs(r[-1] + 1 - y2) <= 1


def test_occlusion_labels_consistent():
    seen = set()
    for index in range(20):
        scene = road_scene("test", index, size=SIZE, seed=2)
        n = len(scene.objects)
        covered = np.zeros(SIZE, dtype=bool)
        # painter's order: later vehicles are nearer; visible = own mask minus all later masks
        for k in reversed(range(n)):
            mask, vis = scene.masks[k], scene.visible[k]
            assert np.array_equal(vis, mask & ~covered)
            covered |= mask
            hidden = 1.0 - vis.sum() / mask.sum()
            assert hidden <= 1.0 - MIN_VISIBLE + 1e-9
            expected = 0 if hidden <= OCCLUSION_LEVELS[0] else 1 if hidden <= OCCLUSION_LEVELS[1] else 2
            assert scene.objects[k].occluded == expected
            seen.add(expected)
            if expected > 0:  # something nearer overlaps its box
                assert any(
                    scene.masks[j][int(scene.objects[k].bbox[1]) : int(scene.objects[k].bbox[3]),
                                   int(scene.objects[k].bbox[0]) : int(scene.objects[k].bbox[2])].any()
                    for j in range(k + 1, n)
                )
        assert scene.objects[-1].occluded == 0  # the nearest vehicle is never hidden
        # truncation: fraction of the silhouette outside the frame
        for o, t in zip(scene.objects, scene.truncated_exact):
            assert o.truncated == round(t, 2)
            touches = o.bbox[0] == 0 or o.bbox[1] == 0 or o.bbox[2] == SIZE[1] or o.bbox[3] == SIZE[0]
            assert (t > 0) <= touches
    assert seen == {0, 1, 2}


def test_heights_and_vans():
    objects = [o for _, _, objs in road_scenes("train", 40, seed=0) for o in objs]
    heights = np.array([o.height for o in objects])
    assert heights.min() >= 4 and heights.max() <= 100
    assert np.median(heights) > 25  # most cars count for KITTI's moderate difficulty
    types = {o.type for o in objects}
    assert types == {"Car", "Van"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="val", n=1), "split"),
        (dict(split="train", n=-1), "n must be"),
        (dict(split="train", n=1.5), "n must be an integer"),
        (dict(split="train", n=1, size=(10, 576)), "height"),
        (dict(split="train", n=1, size=192), "pair"),
        (dict(split="train", n=1, seed=-2), "seed"),
        (dict(split="train", n=1, seed=True), "seed"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        road_scenes(**kwargs)


def test_bad_omit():
    with pytest.raises(ValueError, match="omit"):
        road_scene("train", 0, size=SIZE, omit=(99,))
