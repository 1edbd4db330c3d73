"""The torchvision detector back end and its training loop (tiny configurations)."""

import urllib.request

import pytest
import torch

from datasets.roads import road_scenes
from detectors.kitti_eval import kitti_car_ap
from detectors.torchvision_det import DETECTORS, build_detector, to_objects
from detectors.train_det import TrainingDiverged, batch_plan, prepare_samples, train_detector

SIZE = (64, 192)
TINY = dict(min_size=64, max_size=192)


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to fetch weights fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"attempted download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


@pytest.fixture(scope="module")
def scenes():
    return road_scenes("train", 6, size=SIZE, seed=0)


def _tensor(image):
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def test_builds_without_download_and_meets_contract(no_download, one_thread, scenes):
    torch.manual_seed(0)
    det = build_detector(**TINY)
    images = [_tensor(scenes[0][1]), _tensor(scenes[1][1][:, :160].copy())]  # sizes may differ
    det.model.train()
    out = det(images)
    assert det.model.training  # mode restored
    assert len(out) == 2
    for o, img in zip(out, images):
        assert set(o) == {"boxes", "labels", "scores"}
        n = len(o["scores"])
        assert o["boxes"].shape == (n, 4) and o["labels"].shape == (n,)
        assert o["boxes"].device.type == "cpu" and not o["boxes"].requires_grad
        if n:
            assert (o["boxes"][:, 2] <= img.shape[2] + 1e-3).all() and (o["boxes"][:, 3] <= img.shape[1] + 1e-3).all()
    objs = det.to_objects(out[0])
    assert all(ob.type == "Car" and ob.score is not None for ob in objs)
    kitti_car_ap([scenes[0][2], scenes[1][2]], [det.to_objects(o) for o in out])  # feeds the evaluator


def test_tiny_backbone_strides_and_size(one_thread):
    from detectors.torchvision_det import TINY_FPN_CHANNELS, TinyBackbone

    feats = TinyBackbone()(torch.zeros(1, 3, 64, 192))
    assert list(feats) == ["0", "1", "2"]
    assert [tuple(f.shape[2:]) for f in feats.values()] == [(8, 24), (4, 12), (2, 6)]  # strides 8, 16, 32
    assert all(f.shape[1] == TINY_FPN_CHANNELS for f in feats.values())
    det = build_detector("fasterrcnn_tiny_fpn", **TINY)
    assert det.model.rpn.head.cls_logits.out_channels == 6  # 2 sizes x 3 aspect ratios per level
    assert sum(p.numel() for p in det.model.parameters()) < 2_000_000
    with pytest.raises(ValueError, match="no pretrained weights"):
        from detectors.torchvision_det import fasterrcnn_tiny_fpn
        fasterrcnn_tiny_fpn(weights="DEFAULT")


def test_mobilenet_and_resnet_build_without_download(no_download, one_thread):
    assert build_detector("fasterrcnn_mobilenet_v3_large_fpn", **TINY).model.roi_heads.box_predictor \
        .cls_score.out_features == 2
    assert "fasterrcnn_resnet50_fpn" in DETECTORS
    det = build_detector("fasterrcnn_resnet50_fpn", **TINY)
    assert det.model.roi_heads.box_predictor.cls_score.out_features == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("yolo")
    with pytest.raises(ValueError, match="download"):
        build_detector(weights="DEFAULT")
    with pytest.raises(ValueError, match="num_classes"):
        build_detector(num_classes=1)


def test_to_objects_filters_and_sorts():
    out = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 30, 40], [1, 1, 2, 2]]),
        "labels": torch.tensor([1, 1, 0]),
        "scores": torch.tensor([0.2, 0.9, 0.99]),
    }
    objs = to_objects(out, score_min=0.1)
    assert [o.score for o in objs] == pytest.approx([0.9, 0.2])
    assert objs[0].bbox == (5.0, 5.0, 30.0, 40.0) and objs[0].type == "Car"
    assert to_objects(out, score_min=0.5)[0].score == pytest.approx(0.9)


def test_checkpoint_errors_name_file_and_tensor(tmp_path, one_thread):
    torch.manual_seed(0)
    det = build_detector(**TINY)
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="nope.pt"):
        build_detector(checkpoint=missing, **TINY)
    # a 3-class checkpoint does not fit a 2-class model
    three = build_detector(num_classes=3, **TINY)
    path = tmp_path / "three.pt"
    three.save(path)
    with pytest.raises(ValueError, match=r"three\.pt.*roi_heads\.box_predictor\.cls_score\.weight"):
        build_detector(checkpoint=path, **TINY)
    # a matching one round-trips
    good = tmp_path / "good.pt"
    det.save(good)
    again = build_detector(checkpoint=good, **TINY)
    for (k, a), b in zip(det.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_targets_drop_vans_and_batches_are_pure(scenes):
    prepared = prepare_samples(scenes)
    for (_, _, objs), (img, boxes) in zip(scenes, prepared):
        assert img.dtype == torch.uint8 and img.shape == (3, *SIZE)
        assert len(boxes) == sum(o.type == "Car" for o in objs)
    assert batch_plan(6, 4, 0, 3) == batch_plan(6, 4, 0, 3)
    # every epoch visits every sample once
    seen = [i for step in range(3) for i, _ in batch_plan(6, 4, 0, step)]
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:12]) == list(range(6))


def _train(scenes, path, iterations, **kw):
    torch.manual_seed(123)
    det = build_detector(**TINY)
    result = train_detector(det, scenes, iterations, batch=2, seed=5, ckpt_path=path, progress=False,
                            warmup=2, ckpt_every=1, **kw)
    return det, result


def test_resume_is_bit_exact(tmp_path, one_thread, scenes):
    det_a, _ = _train(scenes, tmp_path / "a.pt", 2)
    det_a, res_a = _train(scenes, tmp_path / "a.pt", 4)  # fresh model, resumes at 2
    det_b, res_b = _train(scenes, tmp_path / "b.pt", 4)
    assert res_a["iterations"] == res_b["iterations"] == 4 and res_a["complete"]
    assert res_a["final_loss"] == res_b["final_loss"]
    for (k, a), b in zip(det_a.model.state_dict().items(), det_b.model.state_dict().values()):
        assert torch.equal(a, b), k
    # a changed configuration is refused
    with pytest.raises(ValueError, match="different configuration.*lr"):
        _train(scenes, tmp_path / "a.pt", 6, lr=5e-4)


def test_nan_loss_names_last_good_checkpoint(tmp_path, one_thread, scenes):
    torch.manual_seed(0)
    det = build_detector(**TINY)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        if calls["n"] >= 3:  # third forward pass: iteration 3
            return tuple(o * float("nan") for o in output)
        return output

    det.model.roi_heads.box_predictor.register_forward_hook(poison)
    path = tmp_path / "run.pt"
    with pytest.raises(TrainingDiverged, match=r"iteration 3.*iteration 2\) is in .*run\.pt"):
        train_detector(det, scenes, 5, batch=2, seed=0, ckpt_path=path, progress=False, ckpt_every=1)
    assert torch.load(path, weights_only=True)["iteration"] == 2
