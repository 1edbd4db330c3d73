"""MATLAB's ``rgb2ycbcr`` / ``ycbcr2rgb`` on torch tensors in [0, 1], for the models that work on
Y (JORDER's pre-processing, GMM's decomposition) and for the Y-channel losses."""
from __future__ import annotations

import torch

# MATLAB rgb2ycbcr / ycbcr2rgb on [0, 1] values: ycbcr = OFFSET + M @ rgb
_M = torch.tensor([[65.481, 128.553, 24.966],
                   [-37.797, -74.203, 112.0],
                   [112.0, -93.786, -18.214]], dtype=torch.float64) / 255.0



_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0



def rgb2ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W RGB in [0, 1] -> YCbCr in [0, 1] (MATLAB ``rgb2ycbcr`` for double input)."""
    m = _M.to(rgb.dtype).to(rgb.device)
    off = _OFFSET.to(rgb.dtype).to(rgb.device)
    return torch.einsum("ij,njhw->nihw", m, rgb) + off.view(1, 3, 1, 1)



def ycbcr2rgb(ycc: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb2ycbcr`` (MATLAB ``ycbcr2rgb`` for double input), not clipped."""
    minv = torch.linalg.inv(_M).to(ycc.dtype).to(ycc.device)
    off = _OFFSET.to(ycc.dtype).to(ycc.device)
    return torch.einsum("ij,njhw->nihw", minv, ycc - off.view(1, 3, 1, 1))
