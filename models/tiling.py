"""Tiled inference for images larger than memory allows.

The image is cut into ``tile`` x ``tile`` blocks; each block runs with ``halo`` extra pixels
of real context on every side (clipped at the image border), and only its centre is kept.
For a fully convolutional network whose receptive-field radius is at most ``halo`` the
result equals the untiled forward pass (up to floating-point summation order); with a
smaller halo it is an approximation whose effect on the metrics must be measured.
Peak activation memory scales with (tile + 2*halo)^2 instead of the whole image.
"""
from __future__ import annotations

import torch
from torch import nn


def tiled_forward(net: nn.Module, x: torch.Tensor, tile: int, halo: int) -> torch.Tensor:
    """``net(x)`` computed tile by tile (N x C x H x W in, same spatial size out)."""
    if tile < 1 or halo < 0:
        raise ValueError(f"tile must be >= 1 and halo >= 0, got tile={tile}, halo={halo}")
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return net(x)
    out = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(y0 - halo, 0), max(x0 - halo, 0)
            yb, xb = min(y1 + halo, h), min(x1 + halo, w)
            piece = net(x[..., ya:yb, xa:xb])
            if piece.shape[-2:] != (yb - ya, xb - xa):
                raise ValueError(f"tiled_forward: the network changed a {yb - ya}x{xb - xa} tile to "
                                 f"{tuple(piece.shape[-2:])}; tiling needs a size-preserving network")
            if out is None:
                out = piece.new_empty(*piece.shape[:-2], h, w)
            out[..., y0:y1, x0:x1] = piece[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return out


class Tiled(nn.Module):
    """Wraps a derainer so that its forward pass runs tile by tile (see :func:`tiled_forward`)."""

    def __init__(self, net: nn.Module, tile: int = 256, halo: int = 64):
        super().__init__()
        self.net, self.tile, self.halo = net, int(tile), int(halo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_forward(self.net, x, self.tile, self.halo)

    def __getattr__(self, name):  # expose the wrapped model's attributes (e.g. last_exit, parameter_counts)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)
