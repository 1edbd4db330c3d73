"""The YOLOv5 back end: restricted checkpoint reading, config parsing, letterbox and decoding.

The checkpoint tests save a small network in the layout of a released YOLOv5 file:
a pickle whose model classes claim to live in ``models.yolo`` / ``models.common``
(throwaway classes, registered in ``sys.modules`` only while pickling), holding
``torch.nn`` children, half-precision tensors and the ``yaml`` config.
"""

from __future__ import annotations

import copy
import os
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from datasets.kitti import KittiDetection
from detectors.kitti_eval import box_overlap
from detectors.yolov5 import COCO_CAR, PAD_VALUE, Letterbox, YoloV5Detector, letterbox, load_yolov5, to_objects
from detectors.yolov5_checkpoint import read_yolov5_checkpoint
from detectors.yolov5_net import C3, Detect, build_yolov5, load_state

pytestmark = pytest.mark.usefixtures("one_thread")

ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]]
#: a two-level (strides 8 and 16) network with every supported layer kind
TINY_CFG = {
    "nc": 3,
    "depth_multiple": 0.67,
    "width_multiple": 0.25,
    "anchors": ANCHORS,
    "backbone": [
        [-1, 1, "Conv", [32, 6, 2, 2]],  # 0 stride 2
        [-1, 1, "Conv", [64, 3, 2]],  # 1 stride 4
        [-1, 3, "C3", [64]],  # 2 (3 * 0.67 -> 2 bottlenecks)
        [-1, 1, "Conv", [128, 3, 2]],  # 3 stride 8
        [-1, 1, "C3", [128]],  # 4
        [-1, 1, "Conv", [256, 3, 2]],  # 5 stride 16
        [-1, 1, "SPPF", [256, 5]],  # 6
    ],
    "head": [
        [-1, 1, "Conv", [128, 1, 1]],  # 7
        [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],  # 8
        [[-1, 4], 1, "Concat", [1]],  # 9
        [-1, 1, "C3", [128, False]],  # 10 -> stride 8 output
        [-1, 1, "Conv", [128, 3, 2]],  # 11
        [[-1, 7], 1, "Concat", [1]],  # 12
        [-1, 1, "C3", [256, False]],  # 13 -> stride 16 output
        [[10, 13], 1, "Detect", ["nc", "anchors"]],  # 14
    ],
}
NAMES = ["person", "bicycle", "car"]


def _stand_in_class(name: str, module: str) -> type:
    return type(name, (), {"__module__": module, "__qualname__": name})


@contextmanager
def _foreign_modules(classes: dict[str, type]):
    """Make ``models.yolo`` / ``models.common`` importable (for pickling) with ``classes``, then undo it."""
    saved = {name: sys.modules.get(name) for name in ("models.yolo", "models.common")}
    try:
        for name in saved:
            fake = types.ModuleType(name)
            for cls in classes.values():
                if cls.__module__ == name:
                    setattr(fake, cls.__qualname__, cls)
            sys.modules[name] = fake
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _mirror(module: nn.Module, classes: dict[str, type], prefix: str = "", replace=None) -> object:
    """A copy of ``module``'s tree as a released checkpoint holds it: this suite's classes become
    the throwaway ``models.*`` classes, torch.nn classes stay, tensors become half precision.
    ``replace`` maps state-dict names to tensors to put instead (None: drop the tensor)."""
    replace = replace or {}
    kind = type(module)
    if kind.__module__.startswith("torch.nn"):
        out = copy.copy(module)
    else:
        out = object.__new__(classes[kind.__name__])
        out.__dict__.update(module.__dict__)
    for group in ("_parameters", "_buffers"):
        tensors = OrderedDict()
        for name, t in getattr(module, group).items():
            t = replace.get(prefix + name, t)
            if t is None:
                continue
            t = t.detach().half() if t.is_floating_point() else t.detach().clone()
            tensors[name] = nn.Parameter(t, requires_grad=False) if group == "_parameters" else t
        out.__dict__[group] = tensors
    out.__dict__["_modules"] = OrderedDict(
        (name, _mirror(child, classes, f"{prefix}{name}.", replace)) for name, child in module._modules.items()
    )
    return out


def _save_foreign(net: nn.Module, path, cfg=TINY_CFG, replace=None, with_yaml=True) -> None:
    classes = {"Model": _stand_in_class("Model", "models.yolo"), "Detect": _stand_in_class("Detect", "models.yolo")}
    for name in ("Conv", "C3", "Bottleneck", "SPPF", "Concat"):
        classes[name] = _stand_in_class(name, "models.common")
    classes["YoloV5Net"] = classes["Model"]
    model = _mirror(net, classes, replace=replace)
    if with_yaml:
        model.yaml = copy.deepcopy(cfg)
    model.names = list(NAMES)
    model.stride = net.stride.clone()
    with _foreign_modules(classes):
        torch.save({"epoch": -1, "best_fitness": None, "model": model, "ema": None, "optimizer": None}, path)


@pytest.fixture(scope="module")
def tiny_net():
    """The tiny network, weights rounded to half precision (what a saved file holds) and
    BatchNorm statistics randomised so that loading them matters."""
    torch.manual_seed(0)
    net = build_yolov5(TINY_CFG)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean") or name.endswith("bn.bias"):
                t.normal_(0, 0.1)
            if t.is_floating_point():
                t.copy_(t.half().float())
    return net.eval()


@pytest.fixture(scope="module")
def tiny_file(tiny_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("yolo") / "tiny.pt"
    _save_foreign(tiny_net, path)
    return path


# ---------------------------------------------------------------- config parsing / network


def test_build_applies_depth_and_width_multiples(tiny_net):
    layers = tiny_net.model
    assert layers[0].conv.weight.shape == (8, 3, 6, 6)  # 32 * 0.25
    assert layers[1].conv.out_channels == 16
    assert isinstance(layers[2], C3) and len(layers[2].m) == 2  # max(round(3 * 0.67), 1)
    assert len(layers[4].m) == 1
    assert layers[6].cv2.conv.out_channels == 64
    assert isinstance(layers[14], Detect)
    assert [m.in_channels for m in layers[14].m] == [32, 64]
    assert layers[14].m[0].out_channels == 3 * (5 + 3)
    assert tiny_net.stride.tolist() == [8.0, 16.0]
    assert torch.allclose(layers[14].anchors[1] * 16, torch.tensor([[30.0, 61], [62, 45], [59, 119]]))
    assert layers[0].bn.eps == 1e-3
    assert list(tiny_net.state_dict())[:2] == ["model.0.conv.weight", "model.0.bn.weight"]


def test_build_rejects_unknown_module():
    cfg = copy.deepcopy(TINY_CFG)
    cfg["backbone"][2][2] = "C3TR"
    with pytest.raises(ValueError, match="layer 2: unsupported module 'C3TR'"):
        build_yolov5(cfg)


def test_detect_decodes_with_grid_stride_and_anchors():
    head = Detect(nc=1, anchors=[[10, 20]], ch=[4])
    head.stride = torch.tensor([8.0])
    head.anchors /= 8
    with torch.no_grad():
        head.m[0].weight.zero_()
        head.m[0].bias.zero_()  # every sigmoid is 0.5
    out = head([torch.zeros(1, 4, 2, 3)])
    assert out.shape == (1, 6, 6)
    # xy = (2 * 0.5 - 0.5 + grid) * 8, wh = (2 * 0.5)^2 * anchor
    assert out[0, :, 0].tolist() == [4, 12, 20, 4, 12, 20]
    assert out[0, :, 1].tolist() == [4, 4, 4, 12, 12, 12]
    assert out[0, :, 2:4].tolist() == [[10, 20]] * 6
    assert out[0, :, 4:].tolist() == [[0.5, 0.5]] * 6


# ---------------------------------------------------------------- reading checkpoints


def test_checkpoint_round_trip(tiny_net, tiny_file):
    cfg, state = read_yolov5_checkpoint(tiny_file)
    assert {k: cfg[k] for k in TINY_CFG} == TINY_CFG
    assert cfg["stride"] == [8.0, 16.0] and cfg["bn_eps"] == 1e-3 and cfg["names"] == NAMES
    own = tiny_net.state_dict()
    assert list(state) == list(own)
    for name, tensor in own.items():
        assert state[name].dtype == tensor.dtype, name
        assert torch.equal(state[name], tensor), name

    detector = load_yolov5(tiny_file, img_size=128, classes=None)
    assert isinstance(detector, YoloV5Detector) and detector.class_names == tuple(NAMES)
    x = torch.rand(1, 3, 64, 96)
    assert torch.allclose(detector.net(x), tiny_net(x), atol=1e-5)


def test_detector_contract(tiny_file):
    detector = load_yolov5(tiny_file, img_size=96, conf_thres=0.0, max_det=7, classes=(COCO_CAR,))
    detector.train()
    images = [torch.rand(3, 40, 90), torch.rand(3, 70, 50)]
    images.append(images[0].clone())  # batched with image 0: same result
    outputs = detector(images)
    assert detector.net.training  # mode restored
    assert len(outputs) == 3
    for image, out in zip(images, outputs):
        assert set(out) == {"boxes", "labels", "scores"}
        n = len(out["scores"])
        assert 0 < n <= 7 and out["boxes"].shape == (n, 4) and out["labels"].dtype == torch.int64
        assert (out["labels"] == COCO_CAR).all()
        boxes = out["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= image.shape[2]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= image.shape[1]).all()
        assert not out["scores"].requires_grad
    assert torch.equal(outputs[0]["boxes"], outputs[2]["boxes"])
    objects = detector.detect_objects(images[:1])[0]
    assert len(objects) == len(outputs[0]["scores"]) and all(o.type == "Car" for o in objects)
    with pytest.raises(ValueError, match="image 0"):
        detector([torch.rand(1, 8, 8)])


@pytest.mark.parametrize(
    "replace, message",
    [
        ({"model.14.m.0.weight": torch.zeros(24, 16, 1, 1)},
         r"model\.14\.m\.0\.weight: checkpoint \(24, 16, 1, 1\) vs model \(24, 32, 1, 1\)"),
        ({"model.10.cv3.bn.running_var": None}, r"model\.10\.cv3\.bn\.running_var missing from checkpoint"),
    ],
)
def test_mismatching_tensor_is_named(tiny_net, tmp_path, replace, message):
    path = tmp_path / "bad.pt"
    _save_foreign(tiny_net, path, replace=replace)
    with pytest.raises(ValueError, match=message) as err:
        load_yolov5(path)
    assert str(path) in str(err.value)


def test_other_mismatches_are_named(tiny_net, tmp_path):
    cfg = copy.deepcopy(TINY_CFG)
    cfg["nc"] = 2  # the file's head is for 3 classes
    path = tmp_path / "nc.pt"
    _save_foreign(tiny_net, path, cfg=cfg)
    with pytest.raises(ValueError, match=r"model\.14\.m\.0\.weight: checkpoint \(24, 32, 1, 1\) vs model \(21, 32"):
        load_yolov5(path)
    state = dict(tiny_net.state_dict())
    state["model.99.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"x\.pt: model\.99\.weight in checkpoint \(1,\) but not in the model"):
        load_state(copy.deepcopy(tiny_net), state, "x.pt")


def test_missing_config_is_reported(tiny_net, tmp_path):
    path = tmp_path / "noyaml.pt"
    _save_foreign(tiny_net, path, with_yaml=False)
    with pytest.raises(ValueError, match="no 'yaml' config") as err:
        read_yolov5_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_and_corrupt_files(tiny_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        read_yolov5_checkpoint(tmp_path / "nowhere.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a torch zip checkpoint") as err:
        load_yolov5(junk)
    assert str(junk) in str(err.value)
    truncated = tmp_path / "truncated.pt"
    data = tiny_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as err:
        read_yolov5_checkpoint(truncated)
    assert str(truncated) in str(err.value)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(data.replace(b"models.yolo", b"models.yolX", 1))  # same length, bad CRC
    with pytest.raises(ValueError) as err:
        read_yolov5_checkpoint(damaged)
    assert str(damaged) in str(err.value)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(marker)}, path)
    with pytest.raises(ValueError, match=r"refusing to load global '(posix|os|nt)\.system'") as err:
        read_yolov5_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()

    class Evil:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    torch.save({"model": Evil()}, path)
    with pytest.raises(ValueError, match=r"refusing to load global '(__builtin__|builtins)\.eval'"):
        read_yolov5_checkpoint(path)


# ---------------------------------------------------------------- letterbox and post-processing


def test_letterbox_pads_centred_and_maps_boxes_back():
    image = torch.zeros(3, 50, 100)
    image[:, 10:20, 30:50] = 1.0
    padded, geo = letterbox(image, img_size=100, multiple=32)
    assert padded.shape == (3, 64, 128) and (geo.left, geo.top) == (14, 7)
    ys, xs = torch.nonzero(padded[0] == 1.0, as_tuple=True)
    found = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    box = torch.tensor([[30.0, 10.0, 50.0, 20.0]])
    assert torch.equal(geo.to_input(box), found)
    assert torch.equal(geo.to_image(found), box)
    assert torch.allclose(padded[:, :7], torch.full((3, 7, 128), PAD_VALUE))

    padded, geo = letterbox(torch.rand(3, 100, 300), img_size=600, multiple=32)
    assert padded.shape == (3, 224, 608) and geo == Letterbox(100, 300, 2.0, 2.0, 4, 12)
    box = torch.tensor([[30.0, 20.0, 90.0, 60.0]])
    assert geo.to_input(box).tolist() == [[64.0, 52.0, 184.0, 132.0]]
    assert torch.equal(geo.to_image(geo.to_input(box)), box)
    assert geo.to_image(torch.tensor([[-10.0, 0.0, 700.0, 300.0]])).tolist() == [[0.0, 0.0, 300.0, 100.0]]


def test_postprocess_scores_filters_classes_and_undoes_letterbox(tiny_net):
    detector = YoloV5Detector(tiny_net, img_size=600, conf_thres=0.01, iou_thres=0.5, classes=(COCO_CAR,))
    geo = Letterbox(100, 300, 2.0, 2.0, 4, 12)
    # centre x, y, w, h in letterbox pixels, objectness, 3 class probabilities
    pred = torch.tensor([
        [124.0, 92.0, 120.0, 80.0, 0.9, 0.0, 0.1, 0.8],  # car: box (30, 20, 90, 60) in the image
        [126.0, 92.0, 120.0, 80.0, 0.9, 0.0, 0.1, 0.7],  # its duplicate, suppressed
        [400.0, 100.0, 40.0, 40.0, 0.9, 0.9, 0.0, 0.0],  # a person: not reported
        [300.0, 100.0, 40.0, 40.0, 0.005, 0.0, 0.0, 1.0],  # objectness under conf_thres
    ])
    out = detector._postprocess(pred, geo)
    assert out["labels"].tolist() == [COCO_CAR]
    assert torch.allclose(out["scores"], torch.tensor([0.72]))
    assert torch.allclose(out["boxes"], torch.tensor([[30.0, 20.0, 90.0, 60.0]]))
    (car,) = to_objects(out)
    assert car.type == "Car" and car.bbox == pytest.approx((30, 20, 90, 60)) and car.score == pytest.approx(0.72)
    assert to_objects(out, score_min=0.8) == []
    everything = YoloV5Detector(tiny_net, conf_thres=0.01, classes=None)._postprocess(pred, geo)
    assert sorted(everything["labels"].tolist()) == [0, 1, 2]  # multi-label: the car box is also class 1 at 0.09
    # one NMS across the classes (the merged vehicle class): the class-1 twin of the car box goes
    merged = detector._postprocess(pred, geo, classes=(1, 2), agnostic=True)
    assert merged["labels"].tolist() == [COCO_CAR]
    assert sorted(detector._postprocess(pred, geo, classes=(1, 2))["labels"].tolist()) == [1, 2]
    with pytest.raises(ValueError, match="80 classes"):
        detector.detect_vehicles([torch.zeros(3, 32, 32)])


# ---------------------------------------------------------------- the released checkpoint on KITTI


@pytest.mark.realdata
def test_yolov5n_finds_kitti_cars(data_root):
    weights = data_root / "weights" / "YOLOv5" / "yolov5n.pt"
    kitti = data_root / "KITTI" / "training"
    if not weights.is_file() or not (kitti / "label_2").is_dir():
        pytest.skip(f"no yolov5n.pt or KITTI training folder under {data_root}")
    detector = load_yolov5(weights)
    assert sum(p.numel() for p in detector.net.parameters()) == 1_872_157
    frames = KittiDetection(kitti, ids=["000006", "000007", "000008"])
    images = [frames.load_image(i) for i in range(len(frames))]
    found = labelled = 0
    for index, output in enumerate(detector(images)):
        cars = [o for o in frames.labels(index) if o.type == "Car"]
        detections = to_objects(output, score_min=0.5)
        labelled += len(cars)
        found += sum(any(box_overlap(c.bbox, d.bbox) >= 0.7 for d in detections) for c in cars)
    # measured: 12 of the 13 labelled cars (the one missed is a 23 px high, partly occluded car)
    assert labelled == 13 and found >= 12
