"""The YOLOv5 network rebuilt from its config dict, in the suite's own modules.

Conv (Conv2d without bias + BatchNorm + SiLU), C3 with Bottlenecks, SPPF (three chained 5x5
max-pools), the PAN neck (nearest upsampling and Concat) and the Detect head (per level a 1x1
conv to ``na * (5 + nc)`` channels, decoded as ``xy = (2 s - 0.5 + grid) * stride`` and
``wh = (2 s)^2 * anchor``).  Config scaling follows the YOLOv5 yaml convention: repeats
``n > 1`` become ``max(round(n * depth_multiple), 1)`` and output widths
``ceil(c * width_multiple / 8) * 8``.  Written from the architecture's description; no code of
the YOLOv5 repository is used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from detectors.yolov5_checkpoint import DEFAULT_BN_EPS


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



def tap_maps(layers, froms: Sequence[int | list[int]], keep: set[int], taps: Sequence[int], x: torch.Tensor
             ) -> list[torch.Tensor]:
    """Run ``layers`` in order, layer ``i`` reading ``froms[i]`` (-1: the previous layer's output; a
    list: those outputs), keeping the outputs whose index is in ``keep``; return the outputs at
    ``taps`` (-1: the last one), the maps a ``Detect`` head reads."""
    outputs: list[torch.Tensor | None] = []
    for i, (layer, f) in enumerate(zip(layers, froms)):
        if f != -1:
            x = outputs[f] if isinstance(f, int) else [x if j == -1 else outputs[j] for j in f]
        x = layer(x)
        outputs.append(x if i in keep else None)
    return [x if j == -1 else outputs[j] for j in taps]



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
        layers = list(self.model)
        return self.detect(tap_maps(layers[:-1], self.froms[:-1], self._keep, self.froms[-1], x), decode)



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
