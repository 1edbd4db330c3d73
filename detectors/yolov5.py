"""A COCO-trained YOLOv5 detector in this suite's own modules, read from an Ultralytics checkpoint.

:func:`load_yolov5` reads the file without any of its code
(:func:`detectors.yolov5_checkpoint.read_yolov5_checkpoint`), rebuilds the network from its
config (:func:`detectors.yolov5_net.build_yolov5`) and loads the tensors strictly.

:class:`YoloV5Detector` follows torchvision's detection contract (the same as
:class:`detectors.torchvision_det.Detector`): ``detector(images)`` takes a list of
3xHxW float tensors in [0, 1] (sizes may differ) and returns, per image,
``{"boxes": Nx4 (x1, y1, x2, y2) in input pixels, "labels": N int64 (COCO index,
2 = car), "scores": N}``, computed in eval mode without gradients; outputs are on
the CPU.  Images are letterboxed (:func:`letterbox`): the long side is scaled to
``img_size`` keeping the aspect ratio, and the result is padded, centred, to a
multiple of the largest stride with grey 114/255 -- the input statistics the
network was trained with.  Scores are objectness x class probability, one
candidate per (box, class) pair above ``conf_thres`` (what AP evaluation wants),
followed by class-aware NMS.  :func:`to_objects` turns an output into
:class:`datasets.kitti.Object` detections for the KITTI / COCO evaluators.

``img_size`` defaults to 1280: KITTI frames are 1242x375, so that is about their
native scale; at 640 most distant cars fall below the network's smallest anchors.

Licence: the checkpoint itself is AGPL-3.0 (Ultralytics); no code of that
repository is imported or copied here, and the weights file must not be committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from datasets.kitti import Object
from detectors.yolov5_checkpoint import read_yolov5_checkpoint
from detectors.yolov5_net import YoloV5Net, build_yolov5, load_state
from detectors.torchvision_det import check_images

__all__ = [
    "COCO_CAR",
    "DEFAULT_IMG_SIZE",
    "PAD_VALUE",
    "VEHICLE_CLASSES",
    "Letterbox",
    "YoloV5Detector",
    "letterbox",
    "load_yolov5",
    "to_objects",
]

#: COCO class index of ``car`` in the 80-class YOLOv5 models
COCO_CAR = 2
#: COCO class index -> type of the classes merged into "vehicle" (car, bus, truck)
VEHICLE_CLASSES = {2: "Car", 5: "Bus", 7: "Truck"}
#: long side of the network input for KITTI frames (1242x375, so roughly native scale)
DEFAULT_IMG_SIZE = 1280
#: letterbox padding value (grey 114 of 255, as in training)
PAD_VALUE = 114 / 255


# --------------------------------------------------------------------------------------
# Restricted reading of the pickled checkpoint
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Letterbox and the detector
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterboxed image: input ``x`` maps to ``x * scale_x + left``."""

    height: int  # original image
    width: int
    scale_x: float
    scale_y: float
    left: int
    top: int

    def to_input(self, boxes: torch.Tensor) -> torch.Tensor:
        """(x1, y1, x2, y2) boxes in image pixels -> network-input pixels."""
        out = boxes.clone()
        out[..., 0::2] = boxes[..., 0::2] * self.scale_x + self.left
        out[..., 1::2] = boxes[..., 1::2] * self.scale_y + self.top
        return out

    def to_image(self, boxes: torch.Tensor) -> torch.Tensor:
        """Network-input boxes -> image pixels, clipped to the image."""
        out = boxes.clone()
        out[..., 0::2] = ((boxes[..., 0::2] - self.left) / self.scale_x).clamp(0, self.width)
        out[..., 1::2] = ((boxes[..., 1::2] - self.top) / self.scale_y).clamp(0, self.height)
        return out


def letterbox(image: torch.Tensor, img_size: int = DEFAULT_IMG_SIZE, multiple: int = 32,
              pad_value: float = PAD_VALUE) -> tuple[torch.Tensor, Letterbox]:
    """Scale a 3xHxW image so its long side is ``img_size`` (bilinear, antialiased when
    shrinking), then pad it, centred, to multiples of ``multiple`` with ``pad_value``."""
    _, h, w = image.shape
    r = img_size / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=r < 1)[0].clamp(0, 1)
    ph, pw = math.ceil(nh / multiple) * multiple, math.ceil(nw / multiple) * multiple
    top, left = (ph - nh) // 2, (pw - nw) // 2
    out = image.new_full((3, ph, pw), pad_value)
    out[:, top : top + nh, left : left + nw] = image
    return out, Letterbox(h, w, nw / w, nh / h, left, top)


def _xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    half = b[:, 2:4] / 2
    return torch.cat((b[:, :2] - half, b[:, :2] + half), 1)


class YoloV5Detector(nn.Module):
    """A :class:`YoloV5Net` behind torchvision's detection contract (module docstring).

    Options: ``img_size`` -- the network input's long side (default 1280 for
    KITTI's 1242x375 frames); ``conf_thres`` -- minimum objectness x class score
    kept (low, 0.001, so AP sees the whole precision-recall curve);
    ``iou_thres`` -- class-aware NMS IoU (0.5); ``max_det`` -- detections kept per
    image (100); ``classes`` -- the class indices reported (default ``(2,)``: COCO
    car only; ``None`` for all); ``batch_size`` -- images letterboxed and run
    together (one forward pass per letterboxed shape within such a chunk);
    ``device`` -- where the network runs (outputs always come back on the CPU).  ``class_names[k]`` names label
    ``k`` (COCO names when the checkpoint records them).
    """

    def __init__(
        self,
        net: YoloV5Net,
        img_size: int = DEFAULT_IMG_SIZE,
        conf_thres: float = 0.001,
        iou_thres: float = 0.5,
        max_det: int = 100,
        classes: Sequence[int] | None = (COCO_CAR,),
        class_names: Sequence[str] | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        max_candidates: int = 30000,
    ) -> None:
        super().__init__()
        if img_size < 1 or batch_size < 1 or max_det < 1:
            raise ValueError(f"img_size, batch_size and max_det must be positive, got {img_size}, "
                             f"{batch_size}, {max_det}")
        if classes is not None:
            classes = tuple(int(c) for c in classes)
            bad = [c for c in classes if not 0 <= c < net.nc]
            if bad:
                raise ValueError(f"classes {bad} outside 0..{net.nc - 1}")
        self.net = net
        self.img_size = int(img_size)
        self.conf_thres = float(conf_thres)
        self.iou_thres = float(iou_thres)
        self.max_det = int(max_det)
        self.classes = classes
        self.class_names = tuple(class_names) if class_names else tuple(f"class{k}" for k in range(net.nc))
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.max_candidates = int(max_candidates)

    @property
    def max_stride(self) -> int:
        return int(self.net.stride.max())

    def forward(self, images: Sequence[torch.Tensor], classes: Sequence[int] | None = None,
                agnostic: bool = False) -> list[dict[str, torch.Tensor]]:
        """Detections per image; ``classes`` overrides the classes reported, ``agnostic`` runs one
        NMS across them (one "vehicle" class from car, bus and truck boxes)."""
        images = check_images(images)
        was_training = self.net.training
        self.net.to(self.device).eval()
        out: list[dict[str, torch.Tensor] | None] = [None] * len(images)
        try:
            with torch.inference_mode():
                for start in range(0, len(images), self.batch_size):
                    boxed = {k: letterbox(images[k].detach().float().cpu(), self.img_size, self.max_stride)
                             for k in range(start, min(start + self.batch_size, len(images)))}
                    groups: dict[tuple[int, ...], list[int]] = {}
                    for k, (x, _) in boxed.items():
                        groups.setdefault(tuple(x.shape[1:]), []).append(k)
                    for members in groups.values():
                        batch = torch.stack([boxed[k][0] for k in members]).to(self.device)
                        preds = self.net(batch).float().cpu()
                        for k, pred in zip(members, preds):
                            out[k] = self._postprocess(pred, boxed[k][1], classes, agnostic)
        finally:
            self.net.train(was_training)
        return out  # type: ignore[return-value]

    def _postprocess(self, pred: torch.Tensor, geometry: Letterbox, classes: Sequence[int] | None = None,
                     agnostic: bool = False) -> dict[str, torch.Tensor]:
        """Decoded predictions of one image (``N x (5 + nc)``) -> thresholded, NMS'd boxes in image pixels."""
        pred = pred[pred[:, 4] > self.conf_thres]
        classes = self.classes if classes is None else tuple(int(c) for c in classes)
        if classes is None:
            labels_of = torch.arange(self.net.nc)
        else:
            labels_of = torch.tensor(classes, dtype=torch.int64)
        scores = pred[:, 4:5] * pred[:, 5 + labels_of]
        rows, cols = (scores > self.conf_thres).nonzero(as_tuple=True)
        boxes = _xywh_to_xyxy(pred[rows, :4])
        conf = scores[rows, cols]
        labels = labels_of[cols]
        if len(conf) > self.max_candidates:
            top = conf.topk(self.max_candidates).indices
            boxes, conf, labels = boxes[top], conf[top], labels[top]
        groups = torch.zeros_like(labels) if agnostic else labels
        keep = torchvision.ops.batched_nms(boxes, conf, groups, self.iou_thres)[: self.max_det]
        return {"boxes": geometry.to_image(boxes[keep]), "labels": labels[keep].to(torch.int64),
                "scores": conf[keep]}

    def to_objects(self, output: dict[str, torch.Tensor], score_min: float = 0.0) -> list[Object]:
        return to_objects(output, score_min)

    def detect_objects(self, images: Sequence[torch.Tensor], score_min: float = 0.0) -> list[list[Object]]:
        """``[to_objects(o) for o in self(images)]``: Car detections ready for the evaluators."""
        return [to_objects(o, score_min) for o in self(images)]

    def detect_vehicles(self, images: Sequence[torch.Tensor], score_min: float = 0.0) -> list[list[Object]]:
        """Car, bus and truck detections (:data:`VEHICLE_CLASSES`) with one NMS across the three, typed
        ``Car`` / ``Bus`` / ``Truck``: the detections of a merged "vehicle" class (a COCO model only)."""
        if self.net.nc <= max(VEHICLE_CLASSES):
            raise ValueError(f"vehicle detections need a COCO model (80 classes), this one has {self.net.nc}")
        return [to_objects(o, score_min, VEHICLE_CLASSES) for o in self(images, tuple(VEHICLE_CLASSES), agnostic=True)]

    def extra_repr(self) -> str:
        return (f"img_size={self.img_size}, conf_thres={self.conf_thres}, iou_thres={self.iou_thres}, "
                f"max_det={self.max_det}, classes={self.classes}")


def to_objects(
    output: dict[str, torch.Tensor], score_min: float = 0.0, class_map: Mapping[int, str] | None = None
) -> list[Object]:
    """One image's detector output -> ``Object`` detections with ``score >= score_min``.

    ``class_map`` maps a COCO label to a KITTI type (default ``{2: "Car"}``); other
    labels are dropped.  Truncation / occlusion are unknown for a detection and set
    to 0.  Sorted by decreasing score.  Same contract as
    :func:`detectors.torchvision_det.to_objects`.
    """
    class_map = {COCO_CAR: "Car"} if class_map is None else dict(class_map)
    boxes = output["boxes"].detach().cpu().double().tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().double().tolist()
    objects = []
    for box, label, score in sorted(zip(boxes, labels, scores), key=lambda t: -t[2]):
        if score < score_min or label not in class_map:
            continue
        objects.append(Object(type=class_map[label], truncated=0.0, occluded=0, bbox=tuple(box), score=float(score)))
    return objects


def load_yolov5(
    path: str | Path,
    img_size: int = DEFAULT_IMG_SIZE,
    conf_thres: float = 0.001,
    iou_thres: float = 0.5,
    max_det: int = 100,
    classes: Sequence[int] | None = (COCO_CAR,),
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> YoloV5Detector:
    """A :class:`YoloV5Detector` with the weights of a YOLOv5 checkpoint file.

    Reads the file with :func:`read_yolov5_checkpoint`, rebuilds the network with
    :func:`build_yolov5` and loads the tensors strictly (:func:`load_state`); the
    options are :class:`YoloV5Detector`'s.  Errors name the file.
    """
    path = Path(path)
    cfg, state = read_yolov5_checkpoint(path)
    try:
        net = build_yolov5(cfg)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    load_state(net, state, path)
    net.eval()
    return YoloV5Detector(net, img_size=img_size, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                          classes=classes, class_names=cfg.get("names"), batch_size=batch_size, device=device)
