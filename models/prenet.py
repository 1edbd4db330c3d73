"""PReNet (Ren et al., "Progressive Image Deraining Networks: A Better and Simpler Baseline", CVPR 2019).

The six-stage progressive recurrent network with an LSTM unit, as in the authors' release
(csdwren/PReNet, ``networks.py``, class ``PReNet``). Every stage

1. concatenates the rainy input with the current estimate (6 channels) -> 3x3 conv to 32 + ReLU (``conv0``);
2. updates a convolutional LSTM whose gates ``conv_i`` / ``conv_f`` / ``conv_g`` / ``conv_o`` are 3x3
   convs on concat(features, h) (64 -> 32) with sigmoid / sigmoid / tanh / sigmoid;
3. runs h through five residual blocks (``res_conv1`` … ``res_conv5``; each two 3x3 convs with ReLU,
   then ReLU(block(x) + x));
4. maps to 3 channels (``conv``) and adds the rainy input: x = input + conv(...).

Parameter names equal the authors' state dict, so their ``net_latest.pth`` loads strictly.

Evaluation follows the authors' ``test_PReNet.py``: the image (read with cv2, then reordered to
RGB, so the network takes RGB) is divided by 255, the network runs, the output is clamped to
[0, 1] and written as ``np.uint8(255 * out)`` -- a truncation, not a rounding. ``forward``
reproduces that (``truncate=True``), so the suite's metrics see the authors' saved PNG.
``forward_stages`` gives the raw, unclamped outputs of every stage.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import WeightsUnavailable
from models.registry import (
    file_identity,
    first_mismatch,
    official_weights,
    read_state_dict,
    register,
)
from core.weights import parse_weights

OFFICIAL_WEIGHTS = "PReNet/Rain100L/net_latest.pth"  # csdwren/PReNet logs/Rain100L/PReNet6/net_latest.pth


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


class PReNet(nn.Module):
    """PReNet_T with T = ``stages`` (6 in the paper), 32 feature maps."""

    def __init__(self, stages: int = 6, features: int = 32, truncate: bool = True):
        super().__init__()
        self.stages = stages
        self.features = features
        self.truncate = truncate
        f = features
        self.conv0 = nn.Sequential(_conv(6, f), nn.ReLU())
        for k in range(1, 6):
            setattr(self, f"res_conv{k}", nn.Sequential(_conv(f, f), nn.ReLU(), _conv(f, f), nn.ReLU()))
        self.conv_i = nn.Sequential(_conv(2 * f, f), nn.Sigmoid())
        self.conv_f = nn.Sequential(_conv(2 * f, f), nn.Sigmoid())
        self.conv_g = nn.Sequential(_conv(2 * f, f), nn.Tanh())
        self.conv_o = nn.Sequential(_conv(2 * f, f), nn.Sigmoid())
        self.conv = nn.Sequential(_conv(f, 3))

    def forward_stages(self, rainy: torch.Tensor) -> list[torch.Tensor]:
        """Raw (unclamped) estimate after each stage; the last one is the network's output."""
        n, _, hgt, wid = rainy.shape
        hidden = rainy.new_zeros(n, self.features, hgt, wid)
        cell = rainy.new_zeros(n, self.features, hgt, wid)
        estimate = rainy
        outputs = []
        for _ in range(self.stages):
            feat = self.conv0(torch.cat((rainy, estimate), dim=1))
            both = torch.cat((feat, hidden), dim=1)
            cell = self.conv_f(both) * cell + self.conv_i(both) * self.conv_g(both)
            hidden = self.conv_o(both) * torch.tanh(cell)
            y = hidden
            for k in range(1, 6):
                y = F.relu(getattr(self, f"res_conv{k}")(y) + y)
            estimate = self.conv(y) + rainy
            outputs.append(estimate)
        return outputs

    def forward(self, rainy: torch.Tensor) -> torch.Tensor:
        out = self.forward_stages(rainy)[-1].clamp(0.0, 1.0)
        if self.truncate:  # the authors save np.uint8(255 * out)
            out = torch.floor(out * 255.0) / 255.0
        return out


# --------------------------------------------------------------------------
# weights



def load_prenet_weights(net: PReNet, path: str | Path) -> None:
    """Load a PReNet state dict strictly; ValueError names the file and the first differing tensor."""
    path = Path(path)
    state = read_state_dict(path, "PReNet")
    problem = first_mismatch(state, net.state_dict())
    if problem is not None:
        raise ValueError(f"{path}: weights do not fit PReNet: {problem}")
    net.load_state_dict(state, strict=True)


@register("prenet", paper_name="PReNet",
          description="progressive recurrent network, 6 stages with LSTM (Ren et al. CVPR 2019); authors' weights")
def build_prenet(weights, profile, data_root):
    net = PReNet()
    if weights.kind == "init":
        return net, {"tag": "init"}
    if weights.kind == "official":
        weights = parse_weights(official_weights("prenet", data_root))
    if weights.kind != "path":
        raise WeightsUnavailable("prenet needs the authors' weights: pass --weights official (under the data root) "
                                 "or --weights PATH to their "
                                 f"{OFFICIAL_WEIGHTS} (csdwren/PReNet logs/Rain100L/PReNet6/net_latest.pth); "
                                 "the suite does not train PReNet yet")
    path = weights.path
    if not path.is_file():
        raise FileNotFoundError(f"prenet weights {weights!r}: no such file")
    load_prenet_weights(net, path)
    return net, {"tag": "official", **file_identity(path)}


__all__ = ["PReNet", "load_prenet_weights", "build_prenet"]
