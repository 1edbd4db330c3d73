"""KITTI label reading and the plain-folder KittiDetection dataset."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.kitti import KittiDetection, Object, format_label, read_labels, write_labels

LABEL = """\
Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59
Van 0.12 1 1.85 387.63 181.54 423.81 203.12 2.22 1.87 4.20 -16.53 2.39 58.49 1.57

DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10
"""


def test_read_labels(tmp_path):
    path = tmp_path / "000001.txt"
    path.write_text(LABEL)
    objs = read_labels(path)
    assert [o.type for o in objs] == ["Car", "Van", "DontCare"]
    car, van, dc = objs
    assert car.bbox == (587.01, 173.33, 614.12, 200.12)
    assert car.truncated == 0.0 and car.occluded == 0 and car.score is None
    assert car.height == pytest.approx(26.79)
    assert van.truncated == pytest.approx(0.12) and van.occluded == 1
    assert car.dimensions == (1.65, 1.67, 3.64) and car.location == (-0.65, 1.71, 46.70)
    assert dc.occluded == -1


def test_detection_score_and_round_trip(tmp_path):
    det = Object("Car", -1.0, -1, (10.0, 20.0, 110.0, 80.0), score=0.875)
    path = tmp_path / "det.txt"
    write_labels(path, [det, Object("Car", 0.0, 0, (1.0, 2.0, 3.0, 4.0))])
    back = read_labels(path)
    assert back[0].score == pytest.approx(0.875) and back[0].bbox == det.bbox
    assert back[1].score is None
    assert len(format_label(det).split()) == 16


@pytest.mark.parametrize(
    "line, message",
    [
        ("Car 0.00 0 -1.58 587.01 173.33 614.12", "expected 15 fields"),
        ("Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59 0.5 9", "got 17"),
        ("Car 0.00 0 -1.58 587.01 abc 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59", "'y1' is not a number"),
        ("Car 0.00 0.5 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59", "'occluded'"),
        ("Car 0.00 0 -1.58 614.12 173.33 587.01 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59", "x2 < x1"),
        ("Car nan 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59", "not finite"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "000007.txt"
    path.write_text(LABEL + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_labels(path)
    assert f"{path}:5:" in str(info.value)  # line 5: 4 lines of LABEL (one blank) come first


def _make_root(tmp_path, ids, labels=True):
    (tmp_path / "image_2").mkdir()
    (tmp_path / "label_2").mkdir()
    for k, image_id in enumerate(ids):
        pixels = np.full((6, 8, 3), 40 * k, dtype=np.uint8)
        pixels[0, 0] = (255, 0, 128)
        Image.fromarray(pixels).save(tmp_path / "image_2" / f"{image_id}.png")
        if labels:
            (tmp_path / "label_2" / f"{image_id}.txt").write_text(LABEL)
    return tmp_path


def test_dataset_pairs_by_stem(tmp_path):
    root = _make_root(tmp_path, ["000002", "000000"])
    ds = KittiDetection(root)
    assert len(ds) == 2 and ds.ids == ["000000", "000002"]
    image, objs, image_id = ds[1]
    assert image_id == "000002"
    assert image.dtype == torch.float32 and image.shape == (3, 6, 8)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 128 / 255])
    assert image[0, 1, 1].item() == 0.0  # "000002" was written first (fill 0)
    assert ds[0][0][0, 1, 1].item() == pytest.approx(40 / 255)  # "000000" second (fill 40)
    assert [o.type for o in objs] == ["Car", "Van", "DontCare"]
    assert len(ds.all_labels()) == 2


def test_dataset_missing_label_is_named(tmp_path):
    root = _make_root(tmp_path, ["000000", "000001"])
    (root / "label_2" / "000001.txt").unlink()
    with pytest.raises(FileNotFoundError, match="000001.txt"):
        KittiDetection(root)


@pytest.mark.realdata
def test_real_data_counts(kitti_root):
    """The frame and car counts are the ones the data root's README states for this release."""
    readme = (kitti_root.parents[1] / "README.md").read_text(encoding="utf-8")
    frames = re.search(r"(\d+) consecutive frames", readme)
    cars = re.search(r"(\d+) Car\b", readme)
    assert frames and cars, "the data README no longer states the KITTI frame and car counts"
    ds = KittiDetection(kitti_root)
    assert len(ds) == int(frames.group(1))
    gts = ds.all_labels()
    assert sum(o.type == "Car" for g in gts for o in g) == int(cars.group(1))
    image, objs, image_id = ds[0]
    assert image.shape[0] == 3 and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
