"""The identity "method": returns its input; it gives the paper's "Rainy images" column."""
from __future__ import annotations

from torch import nn

from models.registry import register


class Identity(nn.Module):
    def forward(self, x):
        return x


@register("identity", paper_name="Rainy images", description="returns the rainy input unchanged")
def build_identity(weights, profile, data_root):
    if weights.kind not in ("default", "init") and weights.tag != "none":
        raise ValueError(f"identity takes no weights (got {weights})")
    return Identity(), {"tag": "none"}
