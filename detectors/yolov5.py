"""A COCO-trained YOLOv5 detector, read from an Ultralytics checkpoint into this suite's own modules.

The released YOLOv5 files (e.g. ``yolov5n.pt``, release v6) are pickles of a whole
``DetectionModel`` whose classes live in the YOLOv5 repository's ``models.yolo`` /
``models.common``.  That module path clashes with this project's own ``models``
package, and unpickling it normally would import (and run) foreign code.  So the
file is read here without any of that code:

* :func:`read_yolov5_checkpoint` opens the zip archive itself and unpickles
  ``data.pkl`` with a restricted unpickler (:class:`_RestrictedUnpickler`).
  Every class from ``models.*``, ``utils.*`` or ``torch.nn.modules.*`` becomes an
  inert stand-in (:class:`_Foreign`) that only records the state the pickle gives
  it; tensors are rebuilt by this module's own functions from the archive's
  storage records.  Any other global (``os.system``, ``builtins.eval``, ...) is
  refused.  From the stand-in tree it keeps the model's ``yaml`` config and a flat
  state dict named as ``DetectionModel.state_dict()`` would name it
  (``model.0.conv.weight``, ...), in float32.
* :func:`build_yolov5` rebuilds the network from that config (the v6 layer set:
  ``Conv``, ``C3``, ``SPPF``, ``nn.Upsample``, ``Concat``, ``Detect``), written here
  from the published architecture, and :func:`load_yolov5` loads the tensors into
  it strictly.

Architecture, as implemented here: ``Conv`` is Conv2d (no bias, "same" padding
``k // 2``) + BatchNorm2d + SiLU.  ``C3`` runs two 1x1 ``Conv`` branches of half the
output width, one through ``n`` ``Bottleneck`` blocks (1x1 then 3x3 ``Conv``,
residual when ``shortcut`` and the widths agree), concatenates them and fuses with a
1x1 ``Conv``.  ``SPPF`` halves the width, max-pools 5x5 (stride 1) three times in a
row and fuses the four maps.  The neck is a PAN (nearest upsampling + concat, then
strided ``Conv`` + concat) and ``Detect`` has one 1x1 conv per level giving
``na * (5 + nc)`` channels, decoded with sigmoids as ``xy = (2 s - 0.5 + grid) *
stride`` and ``wh = (2 s)^2 * anchor``.  Config scaling follows the YOLOv5 yaml
convention: repeats ``n > 1`` become ``max(round(n * depth_multiple), 1)`` and
output widths ``ceil(c * width_multiple / 8) * 8``.

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
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from datasets.kitti import Object

__all__ = [
    "COCO_CAR",
    "DEFAULT_IMG_SIZE",
    "PAD_VALUE",
    "Conv",
    "Bottleneck",
    "C3",
    "SPPF",
    "Concat",
    "Detect",
    "YoloV5Net",
    "Letterbox",
    "YoloV5Detector",
    "build_yolov5",
    "letterbox",
    "load_state",
    "load_yolov5",
    "read_yolov5_checkpoint",
    "to_objects",
]

#: COCO class index of ``car`` in the 80-class YOLOv5 models
COCO_CAR = 2
#: long side of the network input for KITTI frames (1242x375, so roughly native scale)
DEFAULT_IMG_SIZE = 1280
#: letterbox padding value (grey 114 of 255, as in training)
PAD_VALUE = 114 / 255
#: BatchNorm epsilon used by YOLOv5 when a checkpoint does not record one
DEFAULT_BN_EPS = 1e-3


# --------------------------------------------------------------------------------------
# Restricted reading of the pickled checkpoint
# --------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
_DTYPES = {str(d).split(".")[1]: d for d in set(_STORAGE_DTYPES.values())}
#: top-level packages whose classes are replaced by inert stand-ins
_FOREIGN_PACKAGES = ("models", "utils")


class _Foreign:
    """An inert stand-in for a class the pickle names but this process must not import.

    Creating one runs no code beyond recording: positional / keyword constructor
    arguments go to ``_args`` / ``_kwargs`` and the pickled state (for an
    ``nn.Module`` its ``__dict__``: ``_modules``, ``_parameters``, ``_buffers``,
    ``yaml``, ...) is copied into ``__dict__`` by ``__setstate__``.  Subclasses are
    made per pickled class name, so ``type(obj).__name__`` is e.g. ``"Detect"`` and
    ``type(obj).foreign_name`` ``"models.yolo.Detect"``.
    """

    foreign_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args
        self.__dict__["_kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        slots = None
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state, slots = state
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif state is not None:
            self.__dict__["_state"] = state
        if isinstance(slots, dict):
            self.__dict__.update(slots)

    def __repr__(self) -> str:
        return f"<stand-in for {self.foreign_name}>"


class _StorageType:
    """What the pickle's ``torch.<X>Storage`` globals resolve to: just a dtype."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *extra):
    """A tensor viewing ``storage`` (a flat tensor from the archive), copied out of it."""
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise pickle.UnpicklingError("tensor record does not point at a storage of the archive")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    return storage.as_strided(size, stride, int(storage_offset)).clone()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    """Parameters come back as plain tensors: only their values are needed."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter record does not hold a tensor")
    return data


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "slice"): slice,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


def _is_foreign(module: str) -> bool:
    return module.split(".")[0] in _FOREIGN_PACKAGES or module.startswith("torch.nn.modules.")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch zip checkpoint's ``data.pkl`` allowing only tensors, containers
    and inert stand-ins (see the module docstring); ``archive`` supplies the storages."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path, little_endian: bool) -> None:
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._little_endian = little_endian
        self._storages: dict[str, torch.Tensor] = {}
        self._stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if _is_foreign(module):
            key = (module, name)
            if key not in self._stand_ins:
                self._stand_ins[key] = type(name, (_Foreign,), {"foreign_name": f"{module}.{name}"})
            return self._stand_ins[key]
        raise pickle.UnpicklingError(
            f"{self._path}: refusing to load global '{module}.{name}' (only tensors, containers and "
            f"model classes from {', '.join(p + '.*' for p in _FOREIGN_PACKAGES)} / torch.nn are allowed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._path}: unknown persistent record {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._path}: storage record of unknown type {storage_type!r:.80}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, storage_type.dtype)
        storage = self._storages[key]
        if storage.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"{self._path}: storage {key} read as two dtypes")
        return storage

    def _read_storage(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        try:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
        except KeyError:
            raise pickle.UnpicklingError(f"{self._path}: storage record data/{key} is missing") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if len(raw) % itemsize:
            raise pickle.UnpicklingError(f"{self._path}: storage data/{key} is not a whole number of {dtype}")
        if not raw:
            return torch.empty(0, dtype=dtype)
        flat = torch.frombuffer(raw, dtype=torch.uint8)
        if not self._little_endian and itemsize > 1:
            flat = flat.view(-1, itemsize).flip(1).reshape(-1)
        return flat.view(dtype)


def _unpickle(path: Path) -> Any:
    """The object in a torch zip checkpoint, read with :class:`_RestrictedUnpickler`."""
    if not path.is_file():
        raise FileNotFoundError(f"YOLOv5 checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a torch zip checkpoint (corrupt, truncated or a legacy format)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pkl) != 1:
                raise ValueError(f"{path}: not a torch checkpoint (no single data.pkl in the archive)")
            prefix = pkl[0][: -len("data.pkl")]
            order = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
            with archive.open(pkl[0]) as fh:
                unpickler = _RestrictedUnpickler(fh, archive, prefix, path, little_endian=(order == "little"))
                return unpickler.load()
    except Exception as exc:  # a damaged archive or pickle stream, or a refused global
        if isinstance(exc, (ValueError, pickle.UnpicklingError)) and str(exc).startswith(str(path)):
            raise ValueError(str(exc)) from exc
        raise ValueError(f"{path}: cannot read YOLOv5 checkpoint ({type(exc).__name__}: {exc})") from exc


def _module_state(root: _Foreign, path: Path) -> "OrderedDict[str, torch.Tensor]":
    """Flat state dict of a stand-in module tree, named and ordered as ``nn.Module.state_dict``."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()

    def walk(module: Any, prefix: str) -> None:
        if not isinstance(module, _Foreign):
            raise ValueError(f"{path}: module {prefix.rstrip('.') or '<root>'} is a {type(module).__name__}, "
                             "not a pickled module")
        state = module.__dict__
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, tensor in (state.get(group) or {}).items():
                if tensor is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(tensor, torch.Tensor):
                    raise ValueError(f"{path}: {prefix}{name} is not a tensor")
                if tensor.is_floating_point() and tensor.dtype != torch.float64:
                    tensor = tensor.float()
                out[prefix + name] = tensor
        for name, child in (state.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    return out


def _stand_ins(root: _Foreign):
    """Every stand-in module of a tree (depth first, root included)."""
    stack = [root]
    while stack:
        module = stack.pop()
        if isinstance(module, _Foreign):
            yield module
            stack.extend(reversed([c for c in (module.__dict__.get("_modules") or {}).values() if c is not None]))


def read_yolov5_checkpoint(path: str | Path) -> tuple[dict, "OrderedDict[str, torch.Tensor]"]:
    """``(cfg, state)`` of a pickled YOLOv5 model file, read without YOLOv5's code.

    ``cfg`` is a copy of the model's ``yaml`` dict (``nc``, ``depth_multiple``,
    ``width_multiple``, ``anchors``, ``backbone``, ``head``) plus, where the file
    records them, ``stride`` (the ``Detect`` strides, a list of floats),
    ``bn_eps`` (the BatchNorm epsilon) and ``names`` (class names).  ``state``
    maps names such as ``model.0.conv.weight`` to tensors, half precision
    converted to float32; it includes ``Detect``'s ``anchors`` buffer (in units
    of each level's stride).  The EMA model is preferred when the file holds one.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the
    file for a corrupt or non-zip file, a forbidden global in the pickle, or a
    file without a model or config.
    """
    path = Path(path)
    obj = _unpickle(path)
    model = None
    if isinstance(obj, dict):
        model = obj.get("ema") or obj.get("model")
    elif isinstance(obj, _Foreign):
        model = obj
    if not isinstance(model, _Foreign):
        raise ValueError(f"{path}: no pickled model under 'ema' or 'model'")
    config = model.__dict__.get("yaml")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the model has no 'yaml' config dict")
    missing = [k for k in ("backbone", "head", "nc", "anchors") if k not in config]
    if missing:
        raise ValueError(f"{path}: the model config lacks {', '.join(missing)}")
    cfg = dict(config)
    state = _module_state(model, path)
    for module in _stand_ins(model):
        kind = type(module).__name__
        if kind == "Detect" and isinstance(module.__dict__.get("stride"), torch.Tensor):
            cfg["stride"] = [float(s) for s in module.__dict__["stride"].reshape(-1)]
        if kind == "BatchNorm2d" and "bn_eps" not in cfg and isinstance(module.__dict__.get("eps"), float):
            cfg["bn_eps"] = module.__dict__["eps"]
    names = model.__dict__.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        cfg["names"] = list(names)
    return cfg, state


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class Conv(nn.Module):
    """Conv2d (no bias, padding ``k // 2`` unless given) + BatchNorm2d + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=DEFAULT_BN_EPS, momentum=0.03)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 ``Conv`` to ``c2 * e`` channels, 3x3 ``Conv`` back to ``c2``, plus the input when
    ``shortcut`` and ``c1 == c2``."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block: ``cv3(cat(m(cv1(x)), cv2(x)))`` with ``n`` :class:`Bottleneck` blocks in ``m``."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast form: three chained ``k x k`` max-pools (stride 1),
    whose outputs and input are concatenated between two 1x1 ``Conv``."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenates a list of maps along ``dimension``."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(x), self.d)


class Detect(nn.Module):
    """The YOLOv5 head: per level a 1x1 conv to ``na * (5 + nc)`` channels.

    ``anchors`` (a buffer, shape ``nl x na x 2``) is in units of each level's
    stride, as in the checkpoints; ``stride`` (a plain tensor, not part of the
    state dict) is set by :class:`YoloV5Net`.  ``forward(maps)`` returns the raw
    maps (``bs x na x ny x nx x no``) when ``decode`` is False, else the decoded
    predictions ``bs x N x (5 + nc)``: box centre and size in input pixels,
    objectness and class probabilities.
    """

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int]) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.stride = torch.ones(self.nl)

    def forward(self, maps: Sequence[torch.Tensor], decode: bool = True):
        raw, decoded = [], []
        for i, x in enumerate(maps):
            x = self.m[i](x)
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(x)
            if not decode:
                continue
            stride = float(self.stride[i])
            ys, xs = torch.meshgrid(torch.arange(ny, device=x.device, dtype=x.dtype),
                                    torch.arange(nx, device=x.device, dtype=x.dtype), indexing="ij")
            grid = torch.stack((xs, ys), -1).view(1, 1, ny, nx, 2)
            anchor = (self.anchors[i] * stride).to(x.dtype).view(1, self.na, 1, 1, 2)
            s = x.sigmoid()
            xy = (s[..., :2] * 2 - 0.5 + grid) * stride
            wh = (s[..., 2:4] * 2) ** 2 * anchor
            decoded.append(torch.cat((xy, wh, s[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(decoded, 1) if decode else raw


_MODULES = {"Conv": Conv, "C3": C3, "SPPF": SPPF, "Concat": Concat, "Detect": Detect,
            "nn.Upsample": nn.Upsample, "torch.nn.Upsample": nn.Upsample, "Upsample": nn.Upsample}
_LITERALS = {"None": None, "True": True, "False": False}


class YoloV5Net(nn.Module):
    """The network described by a YOLOv5 yaml config (see :func:`build_yolov5`).

    ``model`` is an ``nn.Sequential`` of the layers, so the state dict names match
    the checkpoints' (``model.<i>.<...>``); ``froms[i]`` is layer ``i``'s input
    (-1: the previous layer; a list for ``Concat`` / ``Detect``).  ``forward(x)``
    returns :class:`Detect`'s decoded predictions (``decode=False``: its raw maps).
    """

    def __init__(self, layers: Sequence[nn.Module], froms: Sequence[int | list[int]], nc: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)
        self.froms = [f if isinstance(f, int) else list(f) for f in froms]
        self.nc = nc
        self._keep = {j % i for i, f in enumerate(self.froms) for j in ([f] if isinstance(f, int) else f) if j != -1}
        if not isinstance(self.model[-1], Detect):
            raise ValueError("the last layer of a YOLOv5 config must be Detect")

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    def forward(self, x: torch.Tensor, decode: bool = True):
        outputs: list[torch.Tensor | None] = []
        for i, (layer, f) in enumerate(zip(self.model, self.froms)):
            if f != -1:
                x = outputs[f] if isinstance(f, int) else [x if j == -1 else outputs[j] for j in f]
            x = layer(x, decode) if isinstance(layer, Detect) else layer(x)
            outputs.append(x if i in self._keep else None)
        return x


def build_yolov5(cfg: Mapping[str, Any], ch: int = 3) -> YoloV5Net:
    """Build the network of a YOLOv5 yaml config dict (as stored in checkpoints).

    ``cfg`` needs ``nc``, ``anchors`` (a list of per-level ``[w0, h0, w1, h1, ...]``
    in pixels, or an int: that many placeholder anchors per level), ``backbone``
    and ``head`` (lists of ``[from, number, module, args]``), and optionally
    ``depth_multiple`` / ``width_multiple`` (default 1), ``ch`` (input channels, over the
    argument) and ``bn_eps``.  The
    strides are measured with a 256x256 forward pass; when ``cfg`` records
    ``stride`` it must agree.  The anchors buffer is initialised to the config's
    anchors over the strides (a checkpoint's buffer replaces it on loading).
    Unsupported modules or malformed rows raise ValueError.
    """
    try:
        nc = int(cfg["nc"])
        anchors = cfg["anchors"]
        rows = list(cfg["backbone"]) + list(cfg["head"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"YOLOv5 config lacks nc / anchors / backbone / head ({exc})") from None
    ch = int(cfg.get("ch", ch))
    gd = float(cfg.get("depth_multiple", 1.0))
    gw = float(cfg.get("width_multiple", 1.0))
    channels: list[int] = []
    layers: list[nn.Module] = []
    froms: list[Any] = []
    for i, row in enumerate(rows):
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise ValueError(f"YOLOv5 config layer {i}: expected [from, number, module, args], got {row!r}")
        f, n, name, args = row
        if name not in _MODULES:
            raise ValueError(f"YOLOv5 config layer {i}: unsupported module {name!r}")
        kind = _MODULES[name]
        args = [nc if a == "nc" else anchors if a == "anchors" else _LITERALS.get(a, a) if isinstance(a, str) else a
                for a in args]
        n = max(round(n * gd), 1) if n > 1 else n

        def source(j: int) -> int:
            return channels[j] if j != -1 or channels else ch

        if kind in (Conv, C3, SPPF):
            c1, c2 = source(f), args[0]
            if c2 != nc + 5:
                c2 = _make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if kind is C3:
                args.insert(2, n)
                n = 1
        elif kind is Concat:
            c2 = sum(source(j) for j in f)
        elif kind is Detect:
            args.append([source(j) for j in f])
            if isinstance(args[1], int):
                args[1] = [list(range(args[1] * 2))] * len(f)
            c2 = 0
        else:
            c2 = source(f)
        layer = nn.Sequential(*(kind(*args) for _ in range(n))) if n > 1 else kind(*args)
        layers.append(layer)
        froms.append(f)
        channels.append(c2)
    net = YoloV5Net(layers, froms, nc)
    eps = float(cfg.get("bn_eps", DEFAULT_BN_EPS))
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = eps
    detect = net.detect
    with torch.no_grad():
        was = net.training
        net.eval()
        size = 256
        maps = net(torch.zeros(1, ch, size, size), decode=False)
        net.train(was)
    stride = torch.tensor([size / m.shape[2] for m in maps], dtype=torch.float32)
    if "stride" in cfg and [float(s) for s in cfg["stride"]] != stride.tolist():
        raise ValueError(f"YOLOv5 config: recorded strides {list(cfg['stride'])} but the network has "
                         f"{stride.tolist()}")
    detect.stride = stride
    detect.anchors /= stride.view(-1, 1, 1)
    return net


def load_state(net: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path = "<state>") -> None:
    """Copy ``state`` into ``net`` strictly: the first tensor that is missing, unexpected or
    of another shape raises ValueError naming it and ``path``."""
    own = net.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise ValueError(f"{path}: {name} missing from checkpoint (model {tuple(tensor.shape)})")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{path}: {name}: checkpoint {tuple(state[name].shape)} vs model {tuple(tensor.shape)}")
    for name, tensor in state.items():
        if name not in own:
            raise ValueError(f"{path}: {name} in checkpoint {tuple(tensor.shape)} but not in the model")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


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

    def forward(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        images = list(images)
        for k, img in enumerate(images):
            if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3:
                shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
                raise ValueError(f"image {k}: expected a 3xHxW float tensor in [0, 1], got {shape}")
            if not img.is_floating_point():
                raise ValueError(f"image {k}: expected a float tensor in [0, 1], got dtype {img.dtype}")
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
                            out[k] = self._postprocess(pred, boxed[k][1])
        finally:
            self.net.train(was_training)
        return out  # type: ignore[return-value]

    def _postprocess(self, pred: torch.Tensor, geometry: Letterbox) -> dict[str, torch.Tensor]:
        """Decoded predictions of one image (``N x (5 + nc)``) -> thresholded, NMS'd boxes in image pixels."""
        pred = pred[pred[:, 4] > self.conf_thres]
        if self.classes is None:
            labels_of = torch.arange(self.net.nc)
        else:
            labels_of = torch.tensor(self.classes, dtype=torch.int64)
        scores = pred[:, 4:5] * pred[:, 5 + labels_of]
        rows, cols = (scores > self.conf_thres).nonzero(as_tuple=True)
        boxes = _xywh_to_xyxy(pred[rows, :4])
        conf = scores[rows, cols]
        labels = labels_of[cols]
        if len(conf) > self.max_candidates:
            top = conf.topk(self.max_candidates).indices
            boxes, conf, labels = boxes[top], conf[top], labels[top]
        keep = torchvision.ops.batched_nms(boxes, conf, labels, self.iou_thres)[: self.max_det]
        return {"boxes": geometry.to_image(boxes[keep]), "labels": labels[keep].to(torch.int64),
                "scores": conf[keep]}

    def to_objects(self, output: dict[str, torch.Tensor], score_min: float = 0.0) -> list[Object]:
        return to_objects(output, score_min)

    def detect_objects(self, images: Sequence[torch.Tensor], score_min: float = 0.0) -> list[list[Object]]:
        """``[to_objects(o) for o in self(images)]``: Car detections ready for the evaluators."""
        return [to_objects(o, score_min) for o in self(images)]

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
