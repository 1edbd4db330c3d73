"""One registered entry per method variant (derainers and denoisers).

A method is an ``nn.Module`` factory. ``load(name, weights, profile)`` returns the module
in eval mode together with a description of the weights it holds, which goes into every
result cell. Register a new method with::

    from models.registry import register

    @register("mynet", paper_name="MyNet", version="1")
    def build_mynet(weights, profile, data_root):
        net = MyNet()
        info = {"tag": "none"}
        if weights:                      # a path or a tag the method understands
            info = load_state(net, weights)
        return net, info
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from core.errors import UnknownMethod, WeightsUnavailable
from core.files import read_torch_file
from core.weights import RAIN_TAGS, Weights, parse_weights
from core.layout import REPO

Factory = Callable[[str | None, str, "Path | None"], tuple[nn.Module, dict]]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: Factory
    paper_name: str
    version: str
    task: str = "derain"  # "derain" or "denoise"
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


REGISTRY: dict[str, MethodSpec] = {}


#: Where the authors' released checkpoints sit under the data root (``--weights official``).
OFFICIAL_WEIGHTS = {
    "ddn": "weights/DDN/model",
    "prenet": "weights/PReNet/Rain100L/net_latest.pth",
    "jorder": "weights/JORDER/rain_removal_single_light.caffemodel",
}


def official_weights(method: str, data_root: Path | None) -> Path:
    """The authors' checkpoint of ``method`` under the data root; WeightsUnavailable if absent."""
    rel = OFFICIAL_WEIGHTS.get(method)
    if rel is None:
        raise WeightsUnavailable(f"{method}: the suite knows no official checkpoint for this method")
    if data_root is None:
        raise WeightsUnavailable(f"{method}: official weights are looked up under the data root "
                                 f"({rel}); pass --data-root or set RESGUIDE_DATA, or give --weights PATH")
    path = Path(data_root) / rel
    candidates = [path, path.with_name(path.name + ".index")]
    if not any(c.exists() for c in candidates):
        raise WeightsUnavailable(f"{method}: no official checkpoint at {path}")
    return path


def register(name: str, *, paper_name: str | None = None, version: str = "1", task: str = "derain",
             description: str = "") -> Callable[[Factory], Factory]:
    def deco(factory: Factory) -> Factory:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        REGISTRY[name] = MethodSpec(name=name, factory=factory, paper_name=paper_name or name,
                                    version=version, task=task, description=description)
        return factory
    return deco


def get(name: str) -> MethodSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownMethod(f"unknown method {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


def names() -> list[str]:
    return sorted(REGISTRY)


def load(name: str, weights: str | Weights | None = None, profile: str = "quick",
         data_root: Path | None = None) -> tuple[nn.Module, dict]:
    """Build method ``name`` with ``weights`` (None = its default) for ``profile``; eval mode.

    ``weights`` is parsed once here (:func:`core.weights.parse_weights`) and the factory receives
    the :class:`core.weights.Weights`.  ``weights="init"`` asks for the bare architecture (parameter counts); ``data_root`` is
    where a method that must be trained first finds its training images.
    """
    spec = get(name)
    net, info = spec.factory(parse_weights(weights), profile, data_root)
    net.eval()
    info = {"tag": "none", **info, "method_version": spec.version}
    return net, info


#: The rain each dataset's derainers are trained for (the paper trains separate models). The real test
#: sets get the models trained on the rain fitted to real training pairs (``light-real``/``heavy-real``,
#: datasets.rainfit); the embedded sets, rendered with the first presets, the models trained on those.
#: DAWN's photographs carry real rain of no known density: one command defaults to the light-real
#: model (a fixed choice, made before any DAWN score), and the study scores both models there.
RAIN_OF_DATASET = {"Rain100H": "heavy-real", "Rain100L": "light-real", "Rain12": "light-real",
                   "embedded-heavy": "heavy", "embedded-light": "light", "Rain1400": "ddn", "DAWN": "light-real"}


def rain_of(dataset: str | None) -> str:
    """The rain tag of the derainers run on ``dataset`` (``light`` for a set it does not list)."""
    return RAIN_OF_DATASET.get(dataset or "", "light")


def weights_for(method: str, dataset: str | None = None, rain: str | None = None) -> str | None:
    """The weights ``method`` runs with when none are named, the one decision ``score``, ``detect``,
    the tables and the study ask: on a paired set, the model for that set's rain (:func:`rain_of`,
    as Table 2); on a detection set with synthetic ``rain`` added, the model for that rain (the KITTI
    rows); on real rain (``rain`` None or ``"none"``), the model for the dataset's rain."""
    return weights_for_rain(method, rain if rain not in (None, "none") else rain_of(dataset))


def weights_for_rain(method: str, rain: str) -> str | None:
    """The weights ``method`` uses on ``rain``: the suite-trained model of that rain for the
    methods the suite trains, the authors' checkpoint for those it does not, else the method's own
    default (None).  ``none`` / ``identity`` (no deraining) take none."""
    if method in ("none", "identity"):
        return None
    factory = get(method).factory
    if getattr(factory, "only_rain", None) is not None:  # one model for every rain (DID-MDN: "density")
        return factory.only_rain
    if getattr(factory, "family", None) is not None:
        return rain if rain in RAIN_TAGS else None
    return "official" if method in OFFICIAL_WEIGHTS else None


def count_parameters(net: nn.Module) -> dict[str, int]:
    """Trainable parameters, and all variables (parameters plus buffers such as batch-norm
    running statistics, not counting the ``num_batches_tracked`` step counters)."""
    if hasattr(net, "parameter_counts"):  # e.g. a detached ResGuideNet_k counts only the blocks it runs
        return net.parameter_counts()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    params = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for n, b in net.named_buffers() if not n.endswith("num_batches_tracked"))
    return {"trainable": trainable, "all_variables": params + buffers}




def read_state_dict(path: str | Path, what: str = "") -> dict:
    """A PyTorch state dict from ``path``: a raw state dict, a ``{"state_dict": ...}`` file, or an
    ``nn.DataParallel`` save (``module.`` prefixes dropped). ValueError names the file otherwise."""
    import torch

    path = Path(path)
    obj = read_torch_file(path, "weights file")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a {what + ' ' if what else ''}state dict")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def file_identity(path: str | Path) -> dict:
    """Weights identity for a checkpoint file: path (relative to the repository when inside it),
    size and sha256."""
    p = Path(path).resolve()
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    shown = p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else str(p)
    return {"path": shown, "bytes": p.stat().st_size, "sha256": digest}


def first_mismatch(saved: dict, model: dict) -> str | None:
    """The first tensor whose name or shape differs between a saved state dict and a model's
    (model order first, then names only the file has); None when every tensor fits."""
    def shape(t):
        return tuple(t.shape) if hasattr(t, "shape") else None

    for name, tensor in model.items():
        if name not in saved:
            return f"{name}: missing from checkpoint (model {tuple(tensor.shape)})"
        if shape(saved[name]) != tuple(tensor.shape):
            return f"{name}: checkpoint {shape(saved[name])} vs model {tuple(tensor.shape)}"
    for name, tensor in saved.items():
        if name not in model:
            return f"{name}: in checkpoint {shape(tensor)} but not in model"
    return None


__all__ = ["MethodSpec", "REGISTRY", "register", "get", "names", "load", "count_parameters",
           "file_identity", "weights_for_rain", "weights_for", "rain_of", "RAIN_OF_DATASET", "UnknownMethod", "WeightsUnavailable", "official_weights", "first_mismatch"]
