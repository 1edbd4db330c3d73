"""The optional mmdet back end: an mmdet 3 model behind the :mod:`detectors.torchvision_det` contract.

Needs the ``mmdet`` extra (``pip install .[mmdet]``: mmdet 3.3.0, mmengine 0.10.7,
mmcv-lite 2.1.0).  ``mmcv-lite`` has no compiled ops; :func:`detectors.mmcv_ops.install`
serves ``nms`` / ``batched_nms`` / ``RoIAlign`` / ``roi_align`` through torchvision, which
is all that a two-stage Faster R-CNN needs (other mmcv ops are stand-ins that raise).

:func:`build_mmdet_detector` loads a user's mmdet config (a ``.py`` file) and checkpoint
(``.pth``) and returns an :class:`MMDetDetector`, a :class:`~detectors.torchvision_det.Detector`:

- ``det(images)``: a list of 3xHxW float tensors in [0, 1] (RGB; sizes may differ) ->
  per image ``{"boxes": Nx4 (x1, y1, x2, y2) in input pixels, "labels": N int64 (1 = Car),
  "scores": N}``, on the CPU, without gradients;
- ``det.detect_objects(images, score_min=0.0)``: :class:`datasets.kitti.Object` lists
  (through :func:`detectors.torchvision_det.to_objects`).

Images go through the config's own test pipeline (``test_dataloader.dataset.pipeline``,
its file loader swapped for ``LoadImageFromNDArray``) and the model's data preprocessor,
exactly as a file read by mmdet would: our RGB [0, 1] tensors become HxWx3 float32 arrays
in [0, 255] in the channel order the loader would produce (BGR unless the loader says
``channel_order="rgb"``), and the preprocessor does its usual ``bgr_to_rgb`` / mean / std.
They stay float, so derained outputs are not quantised to 8 bits.  The model predicts with
``rescale=True``, so boxes come back in input pixels; they are clipped to the image.  A
config without a test pipeline gets ``LoadImageFromNDArray`` + ``PackDetInputs`` (no resize).

Classes: mmdet labels are 0-based class indices.  The car class (``car_class``; by default
the index of "car", any case, in the checkpoint's ``dataset_meta["classes"]`` / old
``CLASSES``, else in the config's ``metainfo``, else 2 for an 80-class model, COCO's car)
becomes our label 1 (``"Car"``); every other class is dropped.  Note that mmdet caps
detections per image over all classes (``test_cfg.rcnn.max_per_img``) before that.

Importing this module installs the ``mmcv.ops`` shim when mmcv is installed, so that
``mmdet.apis`` / ``mmdet.models`` can be imported after it (with mmcv-lite they cannot be
imported before :func:`detectors.mmcv_ops.install` has run).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch

from detectors import mmcv_ops
from detectors.torchvision_det import CLASS_NAMES, Detector
from models.registry import first_mismatch

__all__ = [
    "MMDET_VERSIONS", "INSTALL_HINT", "MMDetDetector", "build_mmdet_detector", "load_mmdet_config",
    "build_mmdet_model", "use_torchvision_roi_layers", "find_car_class",
]

MMDET_VERSIONS = {"mmdet": "3.3.0", "mmengine": "0.10.7", "mmcv-lite": "2.1.0"}
INSTALL_HINT = (
    "the mmdet back end needs the optional extra: pip install .[mmdet] "
    "(mmdet==3.3.0, mmengine==0.10.7, mmcv-lite==2.1.0)"
)
#: COCO's 80-class index of "car" (person, bicycle, car, ...)
COCO_CAR = 2


def _install_shim_if_mmcv() -> None:
    """On import, when mmcv is installed: serve ``mmcv.ops`` before anyone imports mmdet."""
    import importlib.util

    if importlib.util.find_spec("mmcv") is None:
        return
    try:
        mmcv_ops.install()
    except Exception:  # a broken install: reported by build_mmdet_detector
        pass


_install_shim_if_mmcv()


def _require_mmdet() -> None:
    """Import mmdet and friends with the torchvision ``mmcv.ops``; ValueError if absent."""
    try:
        import mmcv  # noqa: F401
        import mmdet  # noqa: F401
        import mmengine  # noqa: F401
    except (ImportError, AssertionError) as exc:  # mmdet asserts on an mmcv version outside its range
        raise ValueError(f"{INSTALL_HINT}; import failed: {exc}") from exc

    mmcv_ops.install()


def use_torchvision_roi_layers(node: Any) -> int:
    """Set ``use_torchvision=True`` on every ``roi_layer`` of type ``RoIAlign`` in a config
    (in place, recursively); return how many were set.  mmcv's ``RoIAlign`` then calls
    ``torchvision.ops.roi_align`` itself, for inference and training alike."""
    count = 0
    if isinstance(node, dict):
        layer = node.get("roi_layer")
        if isinstance(layer, dict) and layer.get("type") in ("RoIAlign", "mmcv.RoIAlign"):
            layer["use_torchvision"] = True
            count += 1
        for value in node.values():
            count += use_torchvision_roi_layers(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += use_torchvision_roi_layers(value)
    return count


def _set_score_thr(test_cfg: Any, score_thresh: float) -> None:
    """Lower (or raise) mmdet's own final score threshold: ``rcnn.score_thr`` for two-stage
    models, ``score_thr`` for one-stage ones."""
    if not isinstance(test_cfg, dict):
        return
    if isinstance(test_cfg.get("rcnn"), dict):
        test_cfg["rcnn"]["score_thr"] = score_thresh
    elif "score_thr" in test_cfg:
        test_cfg["score_thr"] = score_thresh


def load_mmdet_config(config: Any, score_thresh: float | None = None):
    """An ``mmengine.Config`` from a path (or a copy of a Config), ready to build.

    The backbone's ``init_cfg`` is cleared (no pretrained download; the checkpoint has the
    weights), every RoIAlign ``roi_layer`` gets ``use_torchvision=True`` (also right for
    training with the shim), and ``score_thresh``, when given, becomes the model's final
    score threshold.  A missing or unreadable file is a ValueError naming it.
    """
    _require_mmdet()
    from mmengine.config import Config

    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        where = getattr(config, "filename", None) or "<Config>"
    else:
        path = Path(config)
        where = str(path)
        if not path.is_file():
            raise ValueError(f"mmdet config {path} does not exist")
        try:
            cfg = Config.fromfile(str(path))
        except Exception as exc:
            hint = ""
            if "pkg_resources" in str(exc):  # mmengine resolves "mmdet::" bases through pkg_resources
                hint = "; mmengine needs pkg_resources for package-scoped bases: pip install 'setuptools<81'"
            raise ValueError(f"{path}: cannot read mmdet config ({type(exc).__name__}: {exc}){hint}") from exc
    if "model" not in cfg:
        raise ValueError(f"{where}: mmdet config has no 'model'")
    backbone = cfg.model.get("backbone")
    if isinstance(backbone, dict) and "init_cfg" in backbone:
        backbone["init_cfg"] = None
    use_torchvision_roi_layers(cfg.model)
    if score_thresh is not None:
        _set_score_thr(cfg.model.get("test_cfg"), float(score_thresh))
    return cfg


def build_mmdet_model(cfg: Any):
    """``MODELS.build(cfg.model)`` in mmdet's registry scope (no weights loaded, none fetched)."""
    _require_mmdet()
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope(cfg.get("default_scope", "mmdet") or "mmdet"):
        return MODELS.build(cfg.model)


def _num_classes(model_cfg: Any) -> int | None:
    for head_key in ("roi_head", None):
        holder = model_cfg.get(head_key) if head_key else model_cfg
        if not isinstance(holder, dict):
            continue
        head = holder.get("bbox_head")
        if isinstance(head, (list, tuple)) and head:  # cascade: the last stage decides
            head = head[-1]
        if isinstance(head, dict) and isinstance(head.get("num_classes"), int):
            return head["num_classes"]
    return None


def _config_classes(cfg: Any) -> Sequence[str] | None:
    candidates = [cfg.get("metainfo")]
    for loader in ("test_dataloader", "val_dataloader", "train_dataloader"):
        dataset = (cfg.get(loader) or {}).get("dataset") if isinstance(cfg.get(loader), dict) else None
        while isinstance(dataset, dict):
            candidates.append(dataset.get("metainfo"))
            dataset = dataset.get("dataset")
    for meta in candidates:
        if isinstance(meta, dict) and meta.get("classes"):
            return tuple(meta["classes"])
    return None


def find_car_class(classes: Sequence[str] | None, num_classes: int | None) -> int:
    """Index of "car" (any case) in ``classes``; else COCO's 2 for an 80-class model."""
    if classes:
        for k, name in enumerate(classes):
            if str(name).strip().lower() == "car":
                return k
    if num_classes == 80:
        return COCO_CAR
    known = f"classes {tuple(classes)}" if classes else "no class names"
    raise ValueError(f"cannot tell which mmdet class is the car ({known}, {num_classes} classes); pass car_class=")


def _load_state(path: Path, trust_checkpoint: bool) -> tuple[dict, dict]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as exc:
        hint = ("; it holds Python objects besides tensors (e.g. an mmengine training checkpoint): "
                "pass trust_checkpoint=True if you trust the file") if not trust_checkpoint else ""
        raise ValueError(f"{path}: cannot read mmdet checkpoint ({type(exc).__name__}: {exc}){hint}") from exc
    meta: dict = {}
    if isinstance(obj, dict) and "state_dict" in obj:
        state, meta = obj["state_dict"], obj.get("meta") or {}
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    else:
        state = obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors in the mmdet checkpoint")
    # checkpoints written from a (Distributed)DataParallel wrapper
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, dict(meta) if isinstance(meta, dict) else {}


class MMDetDetector(Detector):
    """An mmdet detector behind :class:`~detectors.torchvision_det.Detector`'s contract.

    ``model`` is the mmdet module (its ``data_preprocessor`` and ``cfg`` attached),
    ``car_class`` the mmdet class index reported as label 1, ``pipeline`` the test
    transforms.  ``save`` (inherited) writes ``{"state_dict", "meta"}``, which
    :func:`build_mmdet_detector` reads back.
    """

    def __init__(self, model: Any, pipeline: Any, car_class: int, channel_order: str = "bgr",
                 name: str = "mmdet", device: str | torch.device = "cpu", meta: dict | None = None,
                 score_thresh: float | None = None) -> None:
        super().__init__(model, name=name, class_names=CLASS_NAMES, device=device, meta=meta)
        self.pipeline = pipeline
        self.car_class = int(car_class)
        self.channel_order = channel_order
        self.score_thresh = score_thresh

    def _to_array(self, img: torch.Tensor):
        """3xHxW RGB [0, 1] -> HxWx3 float32 [0, 255] in the loader's channel order."""
        hwc = img.detach().to("cpu", torch.float32).clamp(0, 1).mul(255).permute(1, 2, 0)
        if self.channel_order == "bgr":
            hwc = hwc.flip(-1)
        return hwc.contiguous().numpy()

    def _no_grad(self):
        return torch.no_grad()

    def _predict(self, chunk: list[torch.Tensor], start: int) -> list[dict[str, torch.Tensor]]:
        packed = [self.pipeline({"img": self._to_array(im), "img_id": start + i}) for i, im in enumerate(chunk)]
        data = {"inputs": [p["inputs"] for p in packed], "data_samples": [p["data_samples"] for p in packed]}
        return [self._convert(sample, img.shape[-2], img.shape[-1])
                for img, sample in zip(chunk, self.model.test_step(data))]

    def _convert(self, sample: Any, height: int, width: int) -> dict[str, torch.Tensor]:
        pred = sample.pred_instances
        boxes = pred.bboxes.detach().to("cpu", torch.float32).reshape(-1, 4)
        scores = pred.scores.detach().to("cpu", torch.float32).reshape(-1)
        labels = pred.labels.detach().to("cpu").reshape(-1)
        keep = labels == self.car_class
        if self.score_thresh is not None:
            keep &= scores >= self.score_thresh
        boxes, scores = boxes[keep], scores[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        order = scores.argsort(descending=True)
        return {"boxes": boxes[order], "labels": torch.ones(len(order), dtype=torch.int64), "scores": scores[order]}

    def __repr__(self) -> str:
        return f"MMDetDetector({self.name!r}, car_class={self.car_class}, device={str(self.device)!r})"


def _test_pipeline(cfg: Any):
    """The config's test pipeline, reading arrays instead of files -> (Compose, channel order)."""
    from mmcv.transforms import Compose
    from mmengine.registry import DefaultScope

    try:
        from mmdet.utils import get_test_pipeline_cfg

        steps = [dict(s) for s in copy.deepcopy(get_test_pipeline_cfg(cfg))]
    except Exception:  # no test_dataloader / pipeline in the config
        steps = [dict(type="LoadImageFromFile"), dict(type="PackDetInputs")]
    channel_order = "bgr"
    if steps and "LoadImage" in str(steps[0].get("type", "")):
        channel_order = str(steps[0].get("channel_order", "bgr")).lower()
        steps[0] = {k: v for k, v in steps[0].items() if k not in ("channel_order", "imdecode_backend")}
        steps[0]["type"] = "mmdet.LoadImageFromNDArray"
    else:
        steps.insert(0, dict(type="mmdet.LoadImageFromNDArray"))
    # annotation loading has nothing to load at inference
    steps = [s for s in steps if "LoadAnnotations" not in str(s.get("type", ""))]
    with DefaultScope.overwrite_default_scope(cfg.get("default_scope", "mmdet") or "mmdet"):
        return Compose(steps), channel_order


def build_mmdet_detector(
    config: str | Path | Any,
    checkpoint: str | Path,
    car_class: int | None = None,
    device: str | torch.device = "cpu",
    score_thresh: float | None = 0.01,
    trust_checkpoint: bool = False,
) -> MMDetDetector:
    """Load an mmdet ``config`` (``.py`` path or ``mmengine.Config``) and ``checkpoint`` (``.pth``).

    The checkpoint (``{"state_dict": ..., "meta": ...}`` as mmdet saves it, or a bare state
    dict) loads strictly; it is read with ``torch.load(weights_only=True)`` unless
    ``trust_checkpoint`` (mmengine training checkpoints pickle other objects).
    ``score_thresh`` becomes the model's final score threshold and filters the outputs
    (``None``: keep the config's).  See the module doc for ``car_class``.  Errors are
    ValueErrors: mmdet missing (with the install line), a missing or unreadable config or
    checkpoint (naming the file), weights that do not fit (naming the first tensor), no way
    to tell the car class.
    """
    cfg = load_mmdet_config(config, score_thresh)
    where = str(config) if isinstance(config, (str, Path)) else (getattr(config, "filename", None) or "<Config>")
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise ValueError(f"mmdet checkpoint {ckpt} does not exist")
    try:
        model = build_mmdet_model(cfg)
    except NotImplementedError as exc:
        raise ValueError(f"{where}: the model needs an mmcv op that mmcv-lite lacks ({exc})") from exc
    except Exception as exc:
        raise ValueError(f"{where}: cannot build the mmdet model ({type(exc).__name__}: {exc})") from exc
    state, meta = _load_state(ckpt, trust_checkpoint)

    problem = first_mismatch(state, model.state_dict())
    if problem is not None:
        raise ValueError(f"{ckpt}: checkpoint does not match the mmdet model of {where}: {problem}")
    model.load_state_dict(state, strict=True)

    classes = None
    dataset_meta = meta.get("dataset_meta")
    if isinstance(dataset_meta, dict):
        dataset_meta = {str(k).lower(): v for k, v in dataset_meta.items()}
        classes = dataset_meta.get("classes")
    elif meta.get("CLASSES"):
        classes = meta["CLASSES"]
    if not classes:
        classes = _config_classes(cfg)
    classes = tuple(classes) if classes else None
    model.dataset_meta = {"classes": classes} if classes else {}
    n_classes = _num_classes(cfg.model)
    if car_class is None:
        car_class = find_car_class(classes, n_classes)
    elif isinstance(car_class, bool) or not isinstance(car_class, int) or car_class < 0 or (
        n_classes is not None and car_class >= n_classes
    ):
        raise ValueError(f"car_class must be a class index in [0, {n_classes}), got {car_class!r}")

    model.cfg = cfg
    pipeline, channel_order = _test_pipeline(cfg)
    model.to(torch.device(device)).eval()
    info = {"config": where, "checkpoint": str(ckpt), "car_class": int(car_class), "classes": classes}
    return MMDetDetector(model, pipeline, car_class, channel_order=channel_order, name=f"mmdet:{Path(where).stem}",
                         device=device, meta={**info, "checkpoint_meta": meta},
                         score_thresh=None if score_thresh is None else float(score_thresh))
