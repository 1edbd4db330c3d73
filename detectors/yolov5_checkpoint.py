"""Reading a pickled YOLOv5 checkpoint without its code: a restricted unpickler.

The file (``{'model': DetectionModel, ...}``) pickles whole modules whose classes live in the
YOLOv5 repository's ``models.yolo`` / ``models.common``, a path that clashes with this
project's own ``models`` package, and no code of that repository may be imported (AGPL-3.0).
:func:`read_yolov5_checkpoint` opens the zip archive itself and unpickles it with every foreign
class (and every ``torch.nn`` module class) mapped to an inert stand-in that only records its
state; tensors are rebuilt from the archive's storages; any other global is refused with an
error naming the file.  What is kept: the model's config dict (``yaml``), its tensors by
``state_dict()`` name, the Detect strides and the BatchNorm epsilon.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

#: BatchNorm epsilon used by YOLOv5 when a checkpoint does not record one
DEFAULT_BN_EPS = 1e-3


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
