"""A torchvision-backed ``mmcv.ops`` for ``mmcv-lite``, enough for mmdet's Faster R-CNN.

``mmcv-lite`` is mmcv without its compiled extension (``mmcv._ext``), so
``import mmcv.ops`` fails, and with it ``import mmdet.models`` and
``import mmdet.apis``.  :func:`install` puts a small replacement module under the
name ``mmcv.ops`` (in ``sys.modules`` and as the ``ops`` attribute of the ``mmcv``
package) when, and only when, the real one cannot be imported.

Implemented through ``torchvision.ops``, following the conventions of mmcv 2.1.0
(argument names, defaults, return values, numpy-in/numpy-out for :func:`nms`):

- :func:`nms` -> ``(dets, keep)``, ``dets`` an Nx5 ``(x1, y1, x2, y2, score)``;
- :func:`batched_nms` -> ``(dets, keep)``, with the ``nms_cfg`` keys ``type``,
  ``iou_threshold``, ``class_agnostic``, ``split_thr``, ``max_num``,
  ``score_threshold``, ``offset``, and ``nms_cfg=None`` (sort only);
- :func:`roi_align` and :class:`RoIAlign` (``pool_mode="avg"`` only, unless
  ``use_torchvision=True``, where mmcv itself ignores ``pool_mode``);
- ``get_compiler_version`` / ``get_compiling_cuda_version`` (for
  ``mmcv.utils.collect_env``), answering ``"n/a"``.

Every other name that ``mmdet.models`` / ``mmdet.apis`` import from ``mmcv.ops`` at
import time (deformable convolutions, CARAFE, corner pooling, focal-loss kernel,
point sampling, ...) is a stand-in: importing it works, so mmdet imports, but
calling it, or building a layer from it, raises :class:`NotImplementedError`
that names the op.  Models that need those ops need the full ``mmcv`` package.

Submodules that mmdet imports by path are registered too: ``mmcv.ops.nms``,
``mmcv.ops.roi_align``, ``mmcv.ops.carafe``, ``mmcv.ops.merge_cells``,
``mmcv.ops.modulated_deform_conv`` and ``mmcv.ops.multi_scale_deform_attn`` (which
``mmcv.cnn.bricks.transformer`` re-exports and mmdet imports from there).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["install", "is_shim", "nms", "batched_nms", "roi_align", "RoIAlign", "STAND_INS", "SHIM_FLAG"]

#: attribute set on the replacement module (and its submodules)
SHIM_FLAG = "__torchvision_shim__"

_HINT = (
    "mmcv-lite has no compiled ops and detectors.mmcv_ops serves only nms, batched_nms, "
    "roi_align and RoIAlign (through torchvision); install the full mmcv package for this op"
)


# ---------------------------------------------------------------- NMS


def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, Tensor):
        return x
    raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _kept_indices(
    boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int, score_threshold: float, max_num: int
) -> Tensor:
    """Indices into ``boxes`` that survive NMS, in decreasing score order (int64)."""
    from torchvision.ops import nms as tv_nms

    candidates = None
    if score_threshold > 0:
        candidates = torch.nonzero(scores > score_threshold, as_tuple=False).squeeze(1)
        boxes, scores = boxes[candidates], scores[candidates]
    b = boxes.detach()
    s = scores.detach()
    if b.dtype not in (torch.float32, torch.float64):  # torchvision's CPU kernel: float/double only
        b = b.float()
    s = s.to(b.dtype)
    if offset == 1:
        # mmcv's legacy pixel convention: width = x2 - x1 + 1.  Moving the far
        # corner out by one pixel gives the same areas and overlaps.
        b = b.clone()
        b[:, 2:] += 1
    keep = tv_nms(b, s, float(iou_threshold))
    if max_num > 0:
        keep = keep[:max_num]
    if candidates is not None:
        keep = candidates[keep]
    return keep


def nms(
    boxes: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    iou_threshold: float,
    offset: int = 0,
    score_threshold: float = 0,
    max_num: int = -1,
) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray]:
    """Greedy NMS, mmcv's ``nms``: ``(dets, keep)``.

    ``boxes`` Nx4 ``(x1, y1, x2, y2)``, ``scores`` N.  A box is dropped when its IoU with a
    kept, higher-scoring box is above ``iou_threshold``.  ``offset=1`` counts box edges
    inclusively (width ``x2 - x1 + 1``); boxes with ``score <= score_threshold`` are dropped
    first when ``score_threshold > 0``; at most ``max_num`` are kept when it is positive.
    ``dets`` is ``cat(boxes[keep], scores[keep, None])`` (so it carries gradients),
    ``keep`` int64 indices into the input in decreasing score order.  numpy inputs give
    numpy outputs.
    """
    is_numpy = isinstance(boxes, np.ndarray)
    boxes_t = _as_tensor(boxes, "boxes")
    scores_t = _as_tensor(scores, "scores")
    if boxes_t.dim() != 2 or boxes_t.size(1) != 4:
        raise ValueError(f"nms: boxes must be Nx4, got {tuple(boxes_t.shape)}")
    if scores_t.dim() != 1 or scores_t.size(0) != boxes_t.size(0):
        raise ValueError(f"nms: scores must have shape ({boxes_t.size(0)},), got {tuple(scores_t.shape)}")
    if offset not in (0, 1):
        raise ValueError(f"nms: offset must be 0 or 1, got {offset!r}")
    keep = _kept_indices(boxes_t, scores_t, iou_threshold, offset, score_threshold, max_num)
    dets = torch.cat((boxes_t[keep], scores_t[keep].reshape(-1, 1)), dim=1)
    if is_numpy:
        return dets.cpu().numpy(), keep.cpu().numpy()
    return dets, keep


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, nms_cfg: dict | None, class_agnostic: bool = False
) -> tuple[Tensor, Tensor]:
    """NMS within each group of ``idxs`` (e.g. class), mmcv's ``batched_nms``: ``(dets, keep)``.

    ``nms_cfg=None`` skips NMS: every box, sorted by decreasing score.  Otherwise ``nms_cfg``
    holds ``iou_threshold`` and optionally ``type`` (``"nms"`` or a callable with
    :func:`nms`'s signature), ``class_agnostic`` (overrides the argument), ``split_thr``
    (default 10000), ``max_num``, ``score_threshold``, ``offset``.

    Below ``split_thr`` boxes, the groups are kept apart by shifting each group's boxes by
    ``idx * (boxes.max() + 1)`` and one NMS runs over all of them (``max_num`` then caps
    that NMS).  From ``split_thr`` boxes on, NMS runs group by group, the survivors are
    sorted by decreasing score and then cut to ``max_num``.  ``dets`` is Nx5 (the input
    boxes, unshifted, with their scores); ``keep`` indexes the input.  Empty input gives
    empty outputs (where mmcv itself would fail on ``boxes.max()``).
    """
    if nms_cfg is None:
        scores, order = scores.sort(descending=True)
        return torch.cat([boxes[order], scores[:, None]], -1), order
    if boxes.numel() == 0:
        return boxes.new_zeros((0, boxes.size(-1) + 1)), torch.zeros(0, dtype=torch.long, device=boxes.device)

    cfg = dict(nms_cfg)
    class_agnostic = cfg.pop("class_agnostic", class_agnostic)
    if class_agnostic:
        boxes_for_nms = boxes
    elif boxes.size(-1) == 5:  # rotated (cx, cy, w, h, angle): shift only the centres
        span = boxes[..., :2].max() + boxes[..., 2:4].max() + 1
        shift = idxs.to(boxes) * span
        boxes_for_nms = torch.cat([boxes[..., :2] + shift[:, None], boxes[..., 2:5]], dim=-1)
    else:
        shift = idxs.to(boxes) * (boxes.max() + 1)
        boxes_for_nms = boxes + shift[:, None]

    nms_op = _resolve_nms_type(cfg.pop("type", "nms"))
    split_thr = cfg.pop("split_thr", 10000)
    if boxes_for_nms.shape[0] < split_thr:
        dets, keep = nms_op(boxes_for_nms, scores, **cfg)
        kept_boxes = boxes[keep]
        kept_scores = dets[:, -1]
    else:
        max_num = cfg.pop("max_num", -1)
        survived = scores.new_zeros(scores.size(), dtype=torch.bool)
        rescored = scores.new_zeros(scores.size())
        for group in torch.unique(idxs):
            members = (idxs == group).nonzero(as_tuple=False).view(-1)
            dets, keep = nms_op(boxes_for_nms[members], scores[members], **cfg)
            survived[members[keep]] = True
            rescored[members[keep]] = dets[:, -1]
        keep = survived.nonzero(as_tuple=False).view(-1)
        kept_scores, order = rescored[keep].sort(descending=True)
        keep = keep[order]
        kept_boxes = boxes[keep]
        if max_num > 0:
            keep, kept_boxes, kept_scores = keep[:max_num], kept_boxes[:max_num], kept_scores[:max_num]
    return torch.cat([kept_boxes, kept_scores[:, None]], -1), keep


def _resolve_nms_type(kind: Any) -> Callable:
    if callable(kind):
        return kind
    if kind == "nms":
        return nms
    if isinstance(kind, str) and kind in STAND_INS:
        return _shim_namespace()[kind]
    raise NotImplementedError(f"batched_nms: nms type {kind!r} is not available; {_HINT}")


# ---------------------------------------------------------------- RoIAlign


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    pool_mode: str = "avg",
    aligned: bool = True,
) -> Tensor:
    """mmcv's ``roi_align`` through ``torchvision.ops.roi_align`` (differentiable).

    ``input`` NxCxHxW, ``rois`` Kx5 ``(batch index, x1, y1, x2, y2)`` in input-image
    coordinates (multiplied by ``spatial_scale``); returns KxCxhxw.  ``sampling_ratio``
    0 samples adaptively (``ceil(roi size / output size)`` points per bin), as in mmcv;
    ``aligned=True`` shifts by half a pixel (the detectron2 convention shared by both).
    Only ``pool_mode="avg"``: torchvision has no max-pooling RoIAlign.
    """
    from torchvision.ops import roi_align as tv_roi_align

    if pool_mode not in ("avg", "max"):
        raise ValueError(f"roi_align: pool_mode must be 'avg' or 'max', got {pool_mode!r}")
    if pool_mode == "max":
        raise NotImplementedError(f"roi_align(pool_mode='max') is not available; {_HINT}")
    if rois.dim() != 2 or rois.size(1) != 5:
        raise ValueError(f"roi_align: RoIs must be Kx5 (idx, x1, y1, x2, y2), got {tuple(rois.shape)}")
    return tv_roi_align(input, rois.to(input.dtype), _pair(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned))


class RoIAlign(nn.Module):
    """mmcv's ``RoIAlign`` layer over :func:`roi_align` (same arguments and ``repr``).

    ``forward(input, rois)``: NCHW features and Kx5 RoIs.  With ``use_torchvision=True``
    torchvision's op is called directly, as mmcv does, and ``pool_mode`` is ignored; the
    other path is :func:`roi_align`, which refuses ``pool_mode="max"``.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        pool_mode: str = "avg",
        aligned: bool = True,
        use_torchvision: bool = False,
    ) -> None:
        super().__init__()
        if pool_mode not in ("avg", "max"):
            raise ValueError(f"RoIAlign: pool_mode must be 'avg' or 'max', got {pool_mode!r}")
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.pool_mode = pool_mode
        self.aligned = aligned
        self.use_torchvision = use_torchvision

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        if self.use_torchvision:
            from torchvision.ops import roi_align as tv_roi_align

            return tv_roi_align(input, rois.to(input.dtype), self.output_size, self.spatial_scale,
                                self.sampling_ratio, self.aligned)
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.pool_mode, self.aligned)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, pool_mode={self.pool_mode}, aligned={self.aligned}, "
                f"use_torchvision={self.use_torchvision})")


# ---------------------------------------------------------------- stand-ins


def _stand_in_function(name: str) -> Callable:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"mmcv.ops.{name} is not available; {_HINT}")

    missing.__name__ = missing.__qualname__ = name
    missing.__doc__ = f"Stand-in for mmcv.ops.{name}: raises NotImplementedError."
    return missing


def _stand_in_layer(name: str) -> type:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"mmcv.ops.{name} is not available; {_HINT}")

    return type(name, (nn.Module,), {
        "__init__": __init__,
        "__doc__": f"Stand-in for mmcv.ops.{name}: building one raises NotImplementedError.",
        "__module__": "mmcv.ops",
    })


#: names imported from ``mmcv.ops`` at import time by mmdet 3.3.0 that this module does
#: not implement; layers (classes) fail when built, functions when called
STAND_IN_LAYERS = (
    "CARAFEPack", "ConcatCell", "CornerPool", "DeformConv2d", "GlobalPoolingCell", "MaskedConv2d",
    "ModulatedDeformConv2d", "MultiScaleDeformableAttention", "RoIPool", "SumCell", "SyncBatchNorm",
)
STAND_IN_FUNCTIONS = (
    "deform_conv2d", "nms_match", "point_sample", "rel_roi_point_to_rel_img_point", "sigmoid_focal_loss",
    "soft_nms",
)
STAND_INS = STAND_IN_LAYERS + STAND_IN_FUNCTIONS

#: submodules imported by path (``from mmcv.ops.X import Y``) and the names they carry
_SUBMODULES = {
    "nms": ("nms", "batched_nms", "soft_nms", "nms_match"),
    "roi_align": ("roi_align", "RoIAlign"),
    "carafe": ("CARAFEPack",),
    "merge_cells": ("ConcatCell", "GlobalPoolingCell", "SumCell"),
    "modulated_deform_conv": ("ModulatedDeformConv2d",),
    # mmcv.cnn.bricks.transformer re-exports it from here, and mmdet imports it from there
    "multi_scale_deform_attn": ("MultiScaleDeformableAttention",),
}

_NAMESPACE: dict[str, Any] | None = None


def _shim_namespace() -> dict[str, Any]:
    global _NAMESPACE
    if _NAMESPACE is None:
        space: dict[str, Any] = {
            "nms": nms, "batched_nms": batched_nms, "roi_align": roi_align, "RoIAlign": RoIAlign,
            "get_compiler_version": lambda: "n/a",
            "get_compiling_cuda_version": lambda: "n/a",
        }
        space.update({name: _stand_in_layer(name) for name in STAND_IN_LAYERS})
        space.update({name: _stand_in_function(name) for name in STAND_IN_FUNCTIONS})
        _NAMESPACE = space
    return _NAMESPACE


def is_shim(module: Any = None) -> bool:
    """Whether ``module`` (default: ``sys.modules["mmcv.ops"]``) is this replacement."""
    if module is None:
        module = sys.modules.get("mmcv.ops")
    return bool(getattr(module, SHIM_FLAG, False))


def install(force: bool = False) -> bool:
    """Make ``import mmcv.ops`` work on ``mmcv-lite``; return True if the shim is in place.

    With a full mmcv whose ``mmcv.ops`` imports, nothing changes and False is returned
    (``force=True`` installs the shim anyway, for tests).  Idempotent.  Raises ImportError
    if ``mmcv`` itself is not installed.
    """
    import mmcv

    if is_shim():
        return True
    if not force:
        try:
            importlib.import_module("mmcv.ops")
            return False
        except ImportError:
            # a failed import may leave half-imported submodules behind
            for key in [k for k in sys.modules if k == "mmcv.ops" or k.startswith("mmcv.ops.")]:
                del sys.modules[key]

    space = _shim_namespace()
    ops = types.ModuleType("mmcv.ops", __doc__)
    ops.__dict__.update(space)
    ops.__all__ = sorted(space)
    setattr(ops, SHIM_FLAG, True)
    for sub, names in _SUBMODULES.items():
        module = types.ModuleType(f"mmcv.ops.{sub}", f"torchvision shim for mmcv.ops.{sub}")
        for name in names:
            setattr(module, name, space[name])
        module.__all__ = list(names)
        setattr(module, SHIM_FLAG, True)
        sys.modules[module.__name__] = module
        if sub not in space:  # as in mmcv, mmcv.ops.nms / .roi_align are the functions
            setattr(ops, sub, module)
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops
    # mmcv.cnn.bricks.transformer takes MultiScaleDeformableAttention from mmcv.ops when it is
    # first imported (mmdet then imports it from there); if that already happened without the
    # shim, hand it the stand-in now
    transformer = sys.modules.get("mmcv.cnn.bricks.transformer")
    if transformer is not None and not hasattr(transformer, "MultiScaleDeformableAttention"):
        transformer.MultiScaleDeformableAttention = space["MultiScaleDeformableAttention"]
    return True
