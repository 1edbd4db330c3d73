"""The optional mmdet back end (detectors/mmdet_det.py) and its torchvision mmcv.ops (detectors/mmcv_ops.py).

Skipped unless the ``mmdet`` extra is installed (``pip install .[mmdet]``).  Nothing is
downloaded: the tiny Faster R-CNN below is random-initialised (``init_cfg=None``).
"""

import sys

import pytest

pytest.importorskip("mmdet")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from detectors import mmcv_ops  # noqa: E402
from datasets.kitti import Object

mmcv_ops.install()

from detectors.mmdet_det import (  # noqa: E402
    INSTALL_HINT,
    MMDetDetector,
    build_mmdet_detector,
    build_mmdet_model,
    find_car_class,
    load_mmdet_config,
)

CLASSES = ("Car", "Cyclist")  # the car is mmdet class 0 here, reported as our label 1

TINY_CONFIG = """
default_scope = 'mmdet'
metainfo = dict(classes=('Pedestrian', 'Truck'))  # the checkpoint's dataset_meta wins
model = dict(
    type='FasterRCNN',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(type='ResNet', depth=18, base_channels=16, num_stages=4, out_indices=(0, 1, 2, 3),
                  frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
                  style='pytorch', init_cfg=None),
    neck=dict(type='FPN', in_channels=[16, 32, 64, 128], out_channels=32, num_outs=5),
    rpn_head=dict(
        type='RPNHead', in_channels=32, feat_channels=32,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(type='SingleRoIExtractor',
                                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                                out_channels=32, featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(type='Shared2FCBBoxHead', in_channels=32, fc_out_channels=64, roi_feat_size=7,
                       num_classes=2,
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                                       target_stds=[0.1, 0.1, 0.2, 0.2]),
                       reg_class_agnostic=False,
                       loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                       loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                               match_low_quality=True, ignore_iof_thr=-1),
                 sampler=dict(type='RandomSampler', num=64, pos_fraction=0.5, neg_pos_ub=-1,
                              add_gt_as_proposals=False),
                 allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=200, max_per_img=100, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                match_low_quality=False, ignore_iof_thr=-1),
                  sampler=dict(type='RandomSampler', num=32, pos_fraction=0.25, neg_pos_ub=-1,
                               add_gt_as_proposals=True),
                  pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=200, max_per_img=100, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=200)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(dataset=dict(type='CocoDataset', metainfo=metainfo, pipeline=test_pipeline))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    """(config path, checkpoint path, the random-init model whose weights the checkpoint holds)."""
    root = tmp_path_factory.mktemp("mmdet")
    config = root / "tiny_faster_rcnn.py"
    config.write_text(TINY_CONFIG)
    torch.manual_seed(0)
    model = build_mmdet_model(load_mmdet_config(config))
    checkpoint = root / "tiny_faster_rcnn.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": CLASSES}}}, checkpoint)
    return config, checkpoint, model


@pytest.fixture(scope="module")
def detector(tiny):
    config, checkpoint, _ = tiny
    return build_mmdet_detector(config, checkpoint)


# ---------------------------------------------------------------- (a) the mmcv.ops shim


def test_shim_is_mmcv_ops():
    import mmcv
    import mmcv.ops
    from mmcv.ops import RoIAlign, RoIPool, batched_nms, nms
    from mmcv.ops.nms import batched_nms as batched_nms_by_path
    from mmcv.ops.roi_align import roi_align

    assert mmcv_ops.is_shim() and mmcv.ops is sys.modules["mmcv.ops"]
    assert (nms, batched_nms, batched_nms_by_path, RoIAlign, roi_align) == (
        mmcv_ops.nms, mmcv_ops.batched_nms, mmcv_ops.batched_nms, mmcv_ops.RoIAlign, mmcv_ops.roi_align)
    assert mmcv_ops.install() is True  # idempotent
    with pytest.raises(NotImplementedError, match="RoIPool"):
        RoIPool(7, 1.0)
    with pytest.raises(NotImplementedError, match="sigmoid_focal_loss"):
        mmcv.ops.sigmoid_focal_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 2.0, 0.25)


# A (0,0,10,10) .9; B (1,1,11,11) .8, IoU(A,B) = 81/119 = 0.681 (offset 1: 100/142 = 0.704);
# C far away .7; D = A .6, IoU(A,D) = 1.
BOXES = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6])


@pytest.mark.parametrize("kwargs, keep", [
    (dict(iou_threshold=0.5), [0, 2]),
    (dict(iou_threshold=0.7), [0, 1, 2]),
    (dict(iou_threshold=0.7, offset=1), [0, 2]),
    (dict(iou_threshold=0.7, score_threshold=0.75), [0, 1]),
    (dict(iou_threshold=0.7, max_num=2), [0, 1]),
    (dict(iou_threshold=1.0), [0, 1, 2, 3]),
])
def test_nms_hand_worked(kwargs, keep):
    dets, kept = mmcv_ops.nms(BOXES, SCORES, **kwargs)
    assert kept.dtype == torch.int64 and kept.tolist() == keep
    assert torch.equal(dets, torch.cat([BOXES[keep], SCORES[keep, None]], 1))
    dets_np, kept_np = mmcv_ops.nms(BOXES.numpy(), SCORES.numpy(), **kwargs)  # numpy in, numpy out
    assert isinstance(dets_np, np.ndarray) and kept_np.tolist() == keep and dets_np.shape == (len(keep), 5)


def test_batched_nms_hand_worked():
    # E = A in another class, .85: kept beside A unless class-agnostic
    boxes = torch.cat([BOXES[:3], BOXES[:1]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.85])
    idxs = torch.tensor([0, 0, 0, 1])
    cfg = dict(type="nms", iou_threshold=0.5)
    for extra, keep in [({}, [0, 3, 2]), ({"split_thr": 2}, [0, 3, 2]), ({"class_agnostic": True}, [0, 2]),
                        ({"max_num": 2}, [0, 3]), ({"max_num": 2, "split_thr": 2}, [0, 3])]:
        dets, kept = mmcv_ops.batched_nms(boxes, scores, idxs, {**cfg, **extra})
        assert kept.tolist() == keep, extra
        assert torch.equal(dets, torch.cat([boxes[keep], scores[keep, None]], 1)), extra  # unshifted boxes
    dets, kept = mmcv_ops.batched_nms(boxes, scores, idxs, cfg, class_agnostic=True)
    assert kept.tolist() == [0, 2]
    dets, kept = mmcv_ops.batched_nms(boxes, scores, idxs, None)  # no NMS: sorted
    assert kept.tolist() == [0, 3, 1, 2] and dets.shape == (4, 5)
    dets, kept = mmcv_ops.batched_nms(boxes[:0], scores[:0], idxs[:0], cfg)
    assert dets.shape == (0, 5) and kept.numel() == 0


def test_nms_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 30], 1)
    scores = torch.rand(300, generator=g)
    idxs = torch.randint(0, 4, (300,), generator=g)
    _, keep = mmcv_ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    for split_thr in (10000, 1):  # one offset NMS, and group by group
        dets, keep = mmcv_ops.batched_nms(boxes, scores, idxs, dict(iou_threshold=0.5, split_thr=split_thr))
        assert torch.equal(keep, expected) and torch.equal(dets[:, :4], boxes[keep])


def test_roi_align_matches_torchvision():
    from mmcv.ops import RoIAlign, roi_align

    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 4, 20, 24, generator=g, requires_grad=True)
    xy = torch.rand(12, 2, generator=g) * 30
    rois = torch.cat([torch.randint(0, 2, (12, 1), generator=g).float(), xy, xy + 2 + torch.rand(12, 2, generator=g) * 15], 1)
    for aligned in (True, False):
        for sampling in (0, 2):
            expected = torchvision.ops.roi_align(feats, rois, (7, 7), 0.5, sampling, aligned)
            layer = RoIAlign(7, spatial_scale=0.5, sampling_ratio=sampling, aligned=aligned)
            assert torch.equal(layer(feats, rois), expected)
            assert torch.equal(RoIAlign((7, 7), 0.5, sampling, aligned=aligned, use_torchvision=True)(feats, rois), expected)
            assert torch.equal(roi_align(feats, rois, 7, 0.5, sampling, "avg", aligned), expected)
    layer(feats, rois).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert "use_torchvision=False" in repr(layer) and "output_size=(7, 7)" in repr(layer)
    with pytest.raises(NotImplementedError, match="max"):
        roi_align(feats, rois, 7, 0.5, 0, "max", True)


# ---------------------------------------------------------------- (b) the detector contract


def test_detector_contract(detector):
    assert isinstance(detector, MMDetDetector) and detector.car_class == 0  # "Car" in dataset_meta
    assert detector.channel_order == "bgr"
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 144, generator=g), torch.rand(3, 120, 100, generator=g)]
    outputs = detector(images)
    assert len(outputs) == 2
    for img, out in zip(images, outputs):
        assert set(out) == {"boxes", "labels", "scores"}
        n = len(out["scores"])
        assert n > 0  # random weights: every RoI scores about 1/3 per class
        assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,)
        assert out["labels"].dtype == torch.int64 and (out["labels"] == 1).all()
        assert out["boxes"].is_floating_point() and out["scores"].is_floating_point()
        for t in out.values():
            assert t.device.type == "cpu" and not t.requires_grad
        h, w = img.shape[1:]
        b = out["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert (out["scores"] >= 0.01).all() and (out["scores"][:-1] >= out["scores"][1:]).all()
    objects = detector.detect_objects(images, score_min=0.2)
    assert len(objects) == 2 and all(isinstance(o, Object) and o.type == "Car" and o.score >= 0.2 for o in objects[0])
    # another class as the car gives other detections
    other = build_mmdet_detector(*_paths(detector), car_class=1)
    assert not torch.equal(other(images[:1])[0]["scores"], outputs[0]["scores"])
    assert detector.model.training is False


def _paths(det):
    return det.meta["config"], det.meta["checkpoint"]


def test_boxes_in_input_pixels(detector):
    """The config's Resize scales 96x144 to 107x160; boxes come back divided by that scale."""
    img = torch.rand(3, 96, 144, generator=torch.Generator().manual_seed(6))
    ours = detector([img])[0]
    packed = detector.pipeline({"img": detector._to_array(img), "img_id": 0})
    sample = packed["data_samples"]
    assert tuple(sample.img_shape) == (107, 160)
    model = detector.model
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": [packed["inputs"]], "data_samples": [sample]})
        raw = model.predict(data["inputs"], data["data_samples"], rescale=False)[0].pred_instances
    car = (raw.labels == detector.car_class) & (raw.scores >= 0.01)
    order = raw.scores[car].argsort(descending=True)
    scale = torch.tensor(sample.scale_factor).repeat(2)  # (w, h) -> x1, y1, x2, y2
    assert torch.allclose(ours["boxes"] * scale, raw.bboxes[car][order], atol=1e-3)
    assert torch.allclose(ours["scores"], raw.scores[car][order])
    assert float(ours["boxes"][:, 2].max()) <= 144 and float((raw.bboxes[:, 2]).max()) > 144


def test_rgb_float_images_reach_the_model_as_mmdet_expects(detector):
    """RGB [0, 1] -> BGR [0, 255] for the loader -> the preprocessor's bgr_to_rgb and mean/std."""
    img = torch.zeros(3, 64, 80)
    img[0], img[1], img[2] = 1.0, 0.5, 0.0  # orange
    packed = detector.pipeline({"img": detector._to_array(img), "img_id": 0})
    assert tuple(packed["data_samples"].ori_shape) == (64, 80) and tuple(packed["data_samples"].img_shape) == (128, 160)
    data = detector.model.data_preprocessor({"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]})
    x = data["inputs"][0, :, :128, :160]
    expected = (torch.tensor([255.0, 127.5, 0.0]) - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-4) and float(x.std(dim=(1, 2)).max()) < 1e-4


def test_agrees_with_mmdets_own_inference(detector):
    """mmdet's inference_detector on the same picture as an 8-bit BGR array (what mmdet
    reads from a file) gives the same cars, up to the 8-bit rounding of its resize."""
    from mmdet.apis import inference_detector, init_detector

    config, checkpoint = _paths(detector)
    reference = init_detector(config, checkpoint, device="cpu", cfg_options={"model.test_cfg.rcnn.score_thr": 0.01})
    img = (torch.rand(3, 96, 144, generator=torch.Generator().manual_seed(8)) * 255).round() / 255
    bgr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).flip(-1).contiguous().numpy()
    ref = inference_detector(reference, bgr).pred_instances
    car = ref.labels == detector.car_class
    ours = detector([img])[0]
    # (an NMS call near the IoU threshold may go either way, so compare the top five)
    assert abs(len(ours["scores"]) - int(car.sum())) <= 2 and len(ours["scores"]) >= 5
    order = ref.scores[car].argsort(descending=True)[:5]
    assert torch.allclose(ours["scores"][:5], ref.scores[car][order], atol=2e-3)
    assert torch.allclose(ours["boxes"][:5], ref.bboxes[car][order], atol=0.5)


def test_default_car_class():
    assert find_car_class(("person", "bicycle", "car"), 3) == 2
    assert find_car_class(("Pedestrian", "CAR"), 2) == 1
    assert find_car_class(None, 80) == 2  # a COCO model without names
    with pytest.raises(ValueError, match="car_class"):
        find_car_class(("a", "b"), 2)


def test_checkpoint_without_classes_uses_the_config(tiny, tmp_path):
    config, _, model = tiny
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)  # a bare state dict: the config's metainfo names no car
    with pytest.raises(ValueError, match="car_class"):
        build_mmdet_detector(config, bare)
    assert build_mmdet_detector(config, bare, car_class=1, score_thresh=None).car_class == 1
    with pytest.raises(ValueError, match="car_class"):
        build_mmdet_detector(config, bare, car_class=2)


def test_save_and_reload(detector, tmp_path):
    saved = tmp_path / "saved.pth"
    detector.save(saved)  # Detector.save: {"state_dict", "meta"}
    again = build_mmdet_detector(detector.meta["config"], saved, car_class=0)
    img = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(7))
    a, b = detector([img])[0], again([img])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


# ---------------------------------------------------------------- (c) errors


def test_missing_files_are_named(tiny, tmp_path):
    config, checkpoint, _ = tiny
    missing = tmp_path / "nowhere" / "faster_rcnn.pth"
    with pytest.raises(ValueError, match="nowhere/faster_rcnn.pth"):
        build_mmdet_detector(config, missing)
    with pytest.raises(ValueError, match="no_config.py"):
        build_mmdet_detector(tmp_path / "no_config.py", checkpoint)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        build_mmdet_detector(config, junk)


def test_mismatched_checkpoint_is_named(tiny, tmp_path):
    config, _, model = tiny
    state = dict(model.state_dict())
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 64)
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": state}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pth.*fc_cls.weight"):
        build_mmdet_detector(config, wrong)


def test_missing_mmdet_says_how_to_install(monkeypatch, tiny):
    config, checkpoint, _ = tiny
    monkeypatch.setitem(sys.modules, "mmdet", None)  # import mmdet -> ImportError
    with pytest.raises(ValueError) as info:
        build_mmdet_detector(config, checkpoint)
    message = str(info.value)
    assert "pip install .[mmdet]" in message and "mmdet==3.3.0" in message and "mmcv-lite==2.1.0" in message
    assert message.startswith(INSTALL_HINT)


# ---------------------------------------------------------------- (d) training through the shim


def test_one_training_step(tiny):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    config, _, _ = tiny
    cfg = load_mmdet_config(config)
    assert cfg.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is True
    torch.manual_seed(4)
    model = build_mmdet_model(cfg)
    assert all(layer.use_torchvision for layer in model.roi_head.bbox_roi_extractor.roi_layers)
    model.train()
    g = torch.Generator().manual_seed(5)
    inputs, samples = [], []
    for h, w, boxes in [(96, 128, [[10, 20, 60, 70], [70, 30, 120, 90]]), (80, 112, [[5, 5, 50, 40]])]:
        inputs.append((torch.rand(3, h, w, generator=g) * 255).to(torch.uint8))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                           labels=torch.zeros(len(boxes), dtype=torch.long))
        samples.append(sample)
    data = model.data_preprocessor({"inputs": inputs, "data_samples": samples}, True)
    losses = model.loss(data["inputs"], data["data_samples"])
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= set(losses)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.zero_grad()
    loss.backward()
    fc = model.roi_head.bbox_head.shared_fcs[0].weight
    assert fc.grad is not None and fc.grad.abs().sum() > 0  # the RoI head learned through RoIAlign
    before = fc.detach().clone()
    optimizer.step()
    assert not torch.equal(before, fc.detach())


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")
def test_a_model_zoo_config_builds(tmp_path, one_thread):
    """mmdet's own Faster R-CNN R50-FPN COCO config (shipped in the wheel, read through an
    ``mmdet::`` base, which needs pkg_resources, i.e. setuptools<81) builds with the shim."""
    from detectors.mmdet_det import _num_classes

    config = tmp_path / "zoo.py"
    config.write_text("_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'\n")
    cfg = load_mmdet_config(config, score_thresh=0.01)
    assert cfg.model.backbone.init_cfg is None  # no torchvision://resnet50 download
    assert cfg.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is True
    assert cfg.model.test_cfg.rcnn.score_thr == 0.01
    assert find_car_class(None, _num_classes(cfg.model)) == 2
    model = build_mmdet_model(cfg)
    layers = model.roi_head.bbox_roi_extractor.roi_layers
    assert all(isinstance(layer, mmcv_ops.RoIAlign) and layer.use_torchvision for layer in layers)


def test_the_study_runs_an_mmdet_detector(tiny, tmp_path, capsys):
    """`detect ... --detector-config CFG --detector-weights CKPT`: one detection cell through mmdet."""
    import json

    from benchmark.run import main

    config, checkpoint, _ = tiny
    args = ["detect", "none", "roads", "--rain", "heavy", "--profile", "smoke", "--detector-config", str(config),
            "--detector-weights", str(checkpoint), "--results", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "ok" and line["detector"] == "mmdet-tiny_faster_rcnn" and line["n_images"] == 12
    assert 0 <= line["ap40_moderate"] <= 1
    assert main(args[:7] + ["--detector-config", str(config), "--results", str(tmp_path), "--no-progress"]) == 2
    assert "needs its checkpoint" in capsys.readouterr().err
