"""``fasterrcnn_kitti``: the paper's detector kind (a Faster R-CNN for KITTI cars) over YOLOv5 features.

The paper scores deraining with a Faster R-CNN trained on clean KITTI.  This machine has one set
of real pretrained features: the COCO-trained YOLOv5n (``<data root>/weights/YOLOv5/yolov5n.pt``).
So the detector is torchvision's ``FasterRCNN`` whose backbone is YOLOv5's CSP-Darknet, SPPF and
PAN neck (the YOLO network without its ``Detect`` head), rebuilt in the suite's own modules
(:mod:`detectors.yolov5_net`) and initialised from those weights; its RPN and RoI heads are new,
and trained on the clean KITTI tracking frames (:mod:`datasets.kitti_tracking`).

Choices:

* Features: the three PAN outputs (strides 8, 16, 32; 64 / 128 / 256 channels for YOLOv5n), each
  through a 1x1 conv to :data:`OUT_CHANNELS`, since the RPN head shares its weights over levels.
* Frozen: every batch norm (``FrozenBatchNorm2d``: 93 correlated frames are too few to re-estimate
  COCO's statistics) and the backbone's layers before the neck (``FROZEN_LAYERS``); the neck,
  the adapters and both heads train.
* Input: YOLO's, RGB in [0, 1] without mean / std normalisation (``image_mean`` 0, ``image_std`` 1).
* Anchors for 16-300 px cars on the three levels, aspect ratios (h / w) 0.4, 0.7, 1.0.

The network's shape comes from the YOLOv5 config, which is read from the YOLOv5 checkpoint at
training time and kept in the trained detector's meta (``yolo_cfg``), so the shipped weights load
without the YOLOv5 file.  The weights derive from YOLOv5n's (AGPL-3.0); their record says so.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from detectors.yolov5_checkpoint import read_yolov5_checkpoint
from detectors.yolov5_net import Detect, build_yolov5, tap_maps

__all__ = ["NAME", "OUT_CHANNELS", "FROZEN_LAYERS", "YoloPanBackbone", "fasterrcnn_kitti", "init_from_yolov5",
           "TRAINING", "POSITIVE_TYPES", "yolo_cfg_of", "freeze_batch_norms"]

NAME = "fasterrcnn_kitti"
OUT_CHANNELS = 128
BOX_HEAD = 256
#: anchor sizes (px) of the feature levels, strides 8, 16, 32
ANCHOR_SIZES = ((16, 24, 32), (48, 72, 96), (128, 192, 288))
#: YOLO layers 0 .. FROZEN_LAYERS - 1 (CSP-Darknet and SPPF) keep their COCO weights
FROZEN_LAYERS = 10
#: the training schedule and sizes (``train-detector --detector fasterrcnn_kitti``): KITTI frames at
#: their native 375 x 1242
TRAINING = {"min_size": 375, "max_size": 1242, "iterations": 1000, "batch": 4, "lr": 5e-4, "warmup": 50,
            "lr_steps": (750,), "seed": 0, "ckpt_every": 25}
#: boxes trained as positives: KITTI's evaluation ignores detections on a Van (neither true nor false
#: positive), and DAWN and COCO call a van a car, so vans are taught as cars rather than as background
POSITIVE_TYPES = ("Car", "Van")


def freeze_batch_norms(module: nn.Module) -> None:
    """Replace every ``BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` with its statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for buf in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, buf).copy_(getattr(child, buf).detach())
            setattr(module, child_name, frozen)
        else:
            freeze_batch_norms(child)


class YoloPanBackbone(nn.Module):
    """YOLOv5's layers up to its ``Detect`` head; returns the maps ``Detect`` would read, through
    1x1 adapters to ``out_channels``, as an ``OrderedDict`` ``"0"``, ``"1"``, ``"2"``.

    ``body`` holds the layers under the checkpoints' names (``body.<i>`` for ``model.<i>``).
    """

    def __init__(self, yolo_cfg: Mapping[str, Any], out_channels: int = OUT_CHANNELS,
                 frozen_layers: int = FROZEN_LAYERS) -> None:
        super().__init__()
        net = build_yolov5(yolo_cfg)
        detect = net.model[-1]
        assert isinstance(detect, Detect)
        self.body = nn.ModuleList(list(net.model)[:-1])
        self.froms = net.froms[:-1]
        self.taps = list(net.froms[-1])
        self._keep = net._keep
        tap_channels = [m.in_channels for m in detect.m]
        self.adapters = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in tap_channels)
        self.out_channels = out_channels
        freeze_batch_norms(self.body)
        for layer in list(self.body)[:frozen_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = tap_maps(self.body, self.froms, self._keep, self.taps, x)
        return OrderedDict((str(k), adapter(m)) for k, (m, adapter) in enumerate(zip(maps, self.adapters)))


def fasterrcnn_kitti(weights=None, weights_backbone=None, num_classes: int = 2, *, yolo_cfg: Mapping[str, Any] | None = None,
                     **kwargs: Any):
    """torchvision's ``FasterRCNN`` over :class:`YoloPanBackbone` (module doc).  ``yolo_cfg`` (the
    YOLOv5 config dict, as :func:`detectors.yolov5_checkpoint.read_yolov5_checkpoint` returns it) is
    required; ``weights`` must be None (trained weights come from a local checkpoint)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if weights is not None or weights_backbone is not None:
        raise ValueError(f"{NAME} has no downloadable weights; pass a local checkpoint= file")
    if yolo_cfg is None:
        raise ValueError(f"{NAME} needs the YOLOv5 config (yolo_cfg): it is in the trained detector's meta, "
                         "or in the YOLOv5 checkpoint")
    backbone = YoloPanBackbone(yolo_cfg)
    levels = len(backbone.taps)
    if not 1 <= levels <= len(ANCHOR_SIZES):
        raise ValueError(f"{NAME}: the YOLOv5 config's Detect reads {levels} maps; 1 to {len(ANCHOR_SIZES)} supported")
    anchors = AnchorGenerator(sizes=ANCHOR_SIZES[:levels], aspect_ratios=((0.4, 0.7, 1.0),) * levels)
    pool = MultiScaleRoIAlign([str(k) for k in range(levels)], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(backbone.out_channels * 7 * 7, BOX_HEAD)
    kwargs.setdefault("image_mean", [0.0, 0.0, 0.0])
    kwargs.setdefault("image_std", [1.0, 1.0, 1.0])
    return FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                      box_head=head, box_predictor=FastRCNNPredictor(BOX_HEAD, num_classes), **kwargs)


def init_from_yolov5(model: nn.Module, path: str | Path) -> dict:
    """Copy the YOLOv5 checkpoint's layers (all but ``Detect``) into ``model.backbone.body``
    strictly: a missing or misshapen tensor raises ValueError naming the file.  Returns the record
    of what was loaded (for the detector's meta)."""
    path = Path(path)
    _, state = read_yolov5_checkpoint(path)
    body = model.backbone.body
    own = body.state_dict()
    detect_prefix = f"model.{len(body)}."
    mapped = {}
    for name, tensor in state.items():
        if name.startswith(detect_prefix):
            continue
        if not name.startswith("model."):
            raise ValueError(f"{path}: unexpected tensor {name}")
        key = name[len("model."):]
        if key.endswith("num_batches_tracked"):
            continue
        if key not in own:
            raise ValueError(f"{path}: {name} has no place in the {NAME} backbone")
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise ValueError(f"{path}: {name}: checkpoint {tuple(tensor.shape)} vs backbone {tuple(own[key].shape)}")
        mapped[key] = tensor.to(own[key].dtype)
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks backbone tensor(s) {missing[:3]}")
    body.load_state_dict(mapped, strict=True)
    return {"path": path.name, "loaded": len(mapped), "from": "YOLOv5 layers 0-%d (all but Detect)" % (len(body) - 1)}


def yolo_cfg_of(path: str | Path) -> dict:
    """The YOLOv5 config dict stored in a YOLOv5 checkpoint (the network's shape)."""
    cfg, _ = read_yolov5_checkpoint(Path(path))
    return dict(cfg)
