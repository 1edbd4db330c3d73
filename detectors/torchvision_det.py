"""The default detection back end: torchvision's Faster R-CNN, built without any download.

:func:`build_detector` builds one of :data:`DETECTORS` with ``weights=None,
weights_backbone=None`` (random initialisation: the builders' default
``weights_backbone`` would fetch ImageNet weights, so ``None`` is always passed
explicitly) and wraps it in a :class:`Detector`.  Class 0 is the background and
class 1 is ``Car`` (``num_classes=2``).  Trained weights come only from a local
``checkpoint`` file.

The :class:`Detector` follows torchvision's detection contract:
``detector(images)`` takes a list of 3xHxW float tensors in [0, 1] (sizes may
differ) and returns, per image, ``{"boxes": Nx4 (x1, y1, x2, y2) in input
pixels, "labels": N int64, "scores": N}``, in eval mode, without gradients, on
the CPU.  :func:`to_objects` turns one such output into
:class:`datasets.kitti.Object` detections (``type="Car"``, score set) that
:func:`detectors.kitti_eval.kitti_car_ap` and :func:`detectors.coco_eval.coco_car_ap`
take directly.

``min_size`` / ``max_size`` are the resize limits of torchvision's
``GeneralizedRCNNTransform``: an image is scaled so that its short side is
``min_size`` unless its long side would then exceed ``max_size``.  The defaults
(192 / 576) keep the embedded road scenes (:mod:`datasets.roads`, 192x576) at
their native size; KITTI frames (375x1242) would be shrunk to 174x576, so pass
larger limits for real KITTI.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from core.files import read_torch_file
from datasets.kitti import Object
from detectors.yolo_frcnn import fasterrcnn_kitti
from models.checkpoints import save_weights
from models.registry import first_mismatch

__all__ = ["DETECTORS", "DEFAULT_DETECTOR", "CLASS_NAMES", "LIGHT_DEFAULTS", "Detector", "TinyBackbone",
           "build_detector", "fasterrcnn_tiny_fpn", "load_checkpoint", "read_state", "to_objects"]

DEFAULT_DETECTOR = "fasterrcnn_tiny_fpn"
DETECTORS = ("fasterrcnn_tiny_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn", "fasterrcnn_kitti")
#: label index -> KITTI type for the default two-class model
CLASS_NAMES = ("__background__", "Car")
#: FasterRCNN options changed from torchvision's defaults (override any through kwargs).
#: Scenes hold a handful of cars, so far fewer proposals and sampled RoIs do: the RoI
#: head's 12.8M-weight fc6 on 512 RoIs per image dominated a CPU training step (about
#: 3x slower at batch 4, 192x576); box_score_thresh is lowered so AP sees the low tail.
LIGHT_DEFAULTS = {
    "box_score_thresh": 0.01,
    "box_batch_size_per_image": 64,
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_test": 300,
}
#: :class:`TinyBackbone` stage widths (strides 2, 4, 8, 16, 32), FPN channels, box-head width
TINY_WIDTHS = (16, 32, 48, 64, 96)
TINY_FPN_CHANNELS = 64
TINY_BOX_HEAD = 256


class TinyBackbone(nn.Module):
    """A small plain CNN (3x3 conv + BatchNorm + ReLU, five stride-2 stages) with an FPN.

    Returns FPN maps ``"0"``, ``"1"``, ``"2"`` at strides 8, 16 and 32, each with
    :data:`TINY_FPN_CHANNELS` channels.  About 0.5 M weights: small enough for torchvision's
    ``FasterRCNN`` to train from scratch on a 2-core CPU in minutes on the road scenes.
    """

    def __init__(self, widths: Sequence[int] = TINY_WIDTHS, out_channels: int = TINY_FPN_CHANNELS) -> None:
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

        super().__init__()

        def stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for k in range(blocks):
                layers += [nn.Conv2d(cin if k == 0 else cout, cout, 3, 2 if k == 0 else 1, 1, bias=False),
                           nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        w = list(widths)
        self.stem = nn.Sequential(stage(3, w[0], 1), stage(w[0], w[1], 1))  # stride 4
        self.c3 = stage(w[1], w[2], 2)  # stride 8
        self.c4 = stage(w[2], w[3], 2)  # stride 16
        self.c5 = stage(w[3], w[4], 2)  # stride 32
        self.fpn = FeaturePyramidNetwork([w[2], w[3], w[4]], out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor):
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        return self.fpn(OrderedDict([("0", c3), ("1", c4), ("2", c5)]))


def fasterrcnn_tiny_fpn(weights=None, weights_backbone=None, num_classes: int = 2, **kwargs: Any):
    """torchvision's ``FasterRCNN`` over :class:`TinyBackbone`, sized for cars of 15-100 px.

    Anchors: sizes 16/24, 32/48 and 64/96 px on the three FPN levels, aspect ratios
    (height / width) 0.4, 0.7 and 1.0 (cars seen from the side to from the rear);
    RoIAlign 7x7 over all three levels; a two-layer 256-wide box head.  Same signature
    as torchvision's builders; there are no pretrained weights (``weights`` must be None).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if weights is not None or weights_backbone is not None:
        raise ValueError("fasterrcnn_tiny_fpn has no pretrained weights; pass a local checkpoint= file")
    backbone = TinyBackbone()
    anchors = AnchorGenerator(sizes=((16, 24), (32, 48), (64, 96)), aspect_ratios=((0.4, 0.7, 1.0),) * 3)
    pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(backbone.out_channels * 7 * 7, TINY_BOX_HEAD)
    return FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                      box_head=head, box_predictor=FastRCNNPredictor(TINY_BOX_HEAD, num_classes), **kwargs)


def _builder(name: str):
    from torchvision.models import detection

    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    if name == "fasterrcnn_tiny_fpn":
        return fasterrcnn_tiny_fpn
    if name == "fasterrcnn_kitti":
        return fasterrcnn_kitti
    return getattr(detection, name)


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Load a local checkpoint into ``model`` strictly; return its metadata (may be empty).

    Accepted files: ``{"state_dict": ..., "meta": ...}`` (weights files),
    ``{"model": ..., "optimizer": ...}`` (training checkpoints of
    :func:`detectors.train_det.train_detector`) or a bare state dict (e.g. a
    torchvision ``.pth``).  A missing or unreadable file, or weights that do not
    fit the model, raise ValueError naming the file (and the first mismatching
    tensor, e.g. ``roi_heads.box_predictor.cls_score.weight: checkpoint (91, 1024)
    vs model (2, 1024)``).
    """
    path = Path(path)
    state, meta = _read(path)
    own = model.state_dict()
    # a model trained with frozen batch norms (fine-tuned from a pretrained checkpoint) has no
    # BatchNorm step counters; they play no part in inference
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}, **state}
    problem = first_mismatch(state, own)
    if problem is not None:
        raise ValueError(f"{path}: checkpoint does not match the detector: {problem}")
    model.load_state_dict(state, strict=True)
    return meta


def _read(path: Path) -> tuple[dict, dict]:
    """(state dict, metadata) of a detector file: see :func:`load_checkpoint` for the formats."""
    if not path.is_file():
        raise ValueError(f"detector checkpoint {path} does not exist")
    obj = read_torch_file(path, "detector checkpoint")
    meta: dict = {}
    if isinstance(obj, dict) and "state_dict" in obj:
        state, meta = obj["state_dict"], dict(obj.get("meta") or {})
    elif isinstance(obj, dict) and "model" in obj and "optimizer" in obj:
        state = obj["model"]
        meta = {"config": obj.get("config"), "iteration": obj.get("iteration")}
    else:
        state = obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors in the file")
    return state, meta


def read_state(path: str | Path) -> dict:
    """The state dict in a detector file (weights file, training checkpoint or bare state dict)."""
    return _read(Path(path))[0]


def check_images(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The detection contract's input: a list of 3xHxW float tensors in [0, 1]; ValueError naming
    the first image that is not one."""
    images = list(images)
    for k, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
            raise ValueError(f"image {k}: expected a 3xHxW float tensor in [0, 1], got {shape}")
        if not img.is_floating_point():
            raise ValueError(f"image {k}: expected a float tensor in [0, 1], got dtype {img.dtype}")
    return images


class Detector:
    """A torchvision detection model behind the contract of the module docstring.

    ``model`` is the underlying ``torchvision`` module (train it directly, e.g.
    with :func:`detectors.train_det.train_detector`); ``device`` is where
    inference runs (outputs always come back on the CPU).
    """

    def __init__(
        self,
        model: nn.Module,
        name: str = DEFAULT_DETECTOR,
        class_names: Sequence[str] = CLASS_NAMES,
        device: str | torch.device = "cpu",
        meta: dict | None = None,
    ) -> None:
        self.model = model
        self.name = name
        self.class_names = tuple(class_names)
        self.device = torch.device(device)
        self.meta = dict(meta or {})

    def __call__(self, images: Sequence[torch.Tensor], batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
        images = check_images(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        was_training = self.model.training
        self.model.to(self.device).eval()
        out: list[dict[str, torch.Tensor]] = []
        try:
            with self._no_grad():
                for start in range(0, len(images), batch_size):
                    out.extend(self._predict(images[start : start + batch_size], start))
        finally:
            self.model.train(was_training)
        return out

    def _no_grad(self):
        return torch.inference_mode()

    def _predict(self, chunk: list[torch.Tensor], start: int) -> list[dict[str, torch.Tensor]]:
        """The outputs (on the CPU) of one chunk of checked images; ``start`` is its first index."""
        dets = self.model([im.to(self.device) for im in chunk])
        return [{k: v.detach().cpu() for k, v in det.items()} for det in dets]

    def to_objects(self, output: dict[str, torch.Tensor], score_min: float = 0.0) -> list[Object]:
        return to_objects(output, score_min, self.class_names)

    def detect_objects(self, images: Sequence[torch.Tensor], score_min: float = 0.0) -> list[list[Object]]:
        """``[to_objects(o) for o in self(images)]``: detections ready for the evaluators."""
        return [self.to_objects(o, score_min) for o in self(images)]

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Atomically write ``{"state_dict", "meta"}`` (loadable with ``checkpoint=path``)."""
        save_weights(self.model, Path(path), {"detector": self.name, **self.meta, **(meta or {})})

    def __repr__(self) -> str:
        return f"Detector({self.name!r}, classes={self.class_names}, device={str(self.device)!r})"


def to_objects(
    output: dict[str, torch.Tensor], score_min: float = 0.0, class_names: Sequence[str] = CLASS_NAMES
) -> list[Object]:
    """One image's detector output -> ``Object`` detections with ``score >= score_min``.

    Label ``k`` becomes ``class_names[k]`` (``"Car"`` for 1); background and
    unknown labels are dropped.  Truncation / occlusion are unknown for a
    detection and set to 0.  Sorted by decreasing score.
    """
    boxes = output["boxes"].detach().cpu().double().tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().double().tolist()
    objects = []
    for box, label, score in sorted(zip(boxes, labels, scores), key=lambda t: -t[2]):
        if score < score_min or not 0 < label < len(class_names):
            continue
        objects.append(Object(type=class_names[label], truncated=0.0, occluded=0, bbox=tuple(box), score=float(score)))
    return objects


def build_detector(
    name: str = DEFAULT_DETECTOR,
    num_classes: int = 2,
    checkpoint: str | Path | None = None,
    min_size: int = 192,
    max_size: int = 576,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> Detector:
    """Build ``name`` (one of :data:`DETECTORS`) from scratch, or from a local ``checkpoint``.

    Never downloads: ``weights=None, weights_backbone=None`` always (so every
    backbone layer is trainable and uses ordinary BatchNorm, torchvision's choice
    for an untrained backbone).  ``kwargs`` go to torchvision's ``FasterRCNN``
    (e.g. ``box_score_thresh``, ``box_detections_per_img``) over
    :data:`LIGHT_DEFAULTS` (fewer proposals / RoIs, score threshold 0.01).
    Draws from torch's global RNG for the initial weights: seed it first for a
    reproducible model.
    """
    builder = _builder(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background + Car), got {num_classes!r}")
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    for banned in ("weights", "weights_backbone", "pretrained", "pretrained_backbone"):
        if kwargs.get(banned) not in (None, False):
            raise ValueError(f"{banned} would download weights; pass a local checkpoint= file instead")
        kwargs.pop(banned, None)
    options = dict(LIGHT_DEFAULTS)
    options.update(kwargs)
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        **options,
    )
    meta: dict = {}
    if checkpoint is not None:
        meta = load_checkpoint(model, checkpoint)
    names = CLASS_NAMES + tuple(f"class{k}" for k in range(len(CLASS_NAMES), num_classes))
    model.eval()
    return Detector(model, name=name, class_names=names[:num_classes], device=device, meta=meta)
