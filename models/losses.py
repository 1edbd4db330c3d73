"""Training losses of ResGuideNet (Fan et al., ACM MM 2018).

Each block of the network produces a derained estimate; every estimate is supervised
with a pixel term plus a structural term (paper Eq. 1)::

    L(pred, target) = ||pred - target||^2 + lam * log(1 / SSIM(pred, target) + eps)

and the total loss is the mean of that over all M + 1 outputs (Eq. 2).

:func:`ssim_torch` is a differentiable copy of the suite's metric
(:func:`core.metrics.ssim`, Wang et al.'s ``ssim_index``): an 11x11 Gaussian
window with sigma 1.5, K1 = 0.01, K2 = 0.03, statistics over the 'valid' region only.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from core.metrics import gaussian_window

__all__ = ["ssim_torch", "block_loss", "resguide_loss", "SSIM_EPS", "SSIM_FLOOR"]

#: The epsilon inside the log of Eq. 1.
SSIM_EPS = 1e-4
#: The mean SSIM is clamped to at least this before 1/SSIM is taken, so that a batch
#: whose SSIM is zero or negative (possible at initialisation) gives a large but
#: finite loss instead of NaN. The MSE term still gives a gradient there.
SSIM_FLOOR = 1e-4

_K1 = 0.01
_K2 = 0.03


def _window(size: int, sigma: float, channels: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.as_tensor(gaussian_window(size, sigma), dtype=dtype, device=device)
    vertical = g.view(1, 1, size, 1).expand(channels, 1, size, 1).contiguous()
    horizontal = g.view(1, 1, 1, size).expand(channels, 1, 1, size).contiguous()
    return vertical, horizontal


def ssim_torch(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Mean SSIM over the batch, the channels and the valid region of N x C x H x W tensors.

    Differentiable in both arguments. Computed in the inputs' dtype (float32 is fine
    for training; float64 reproduces the numpy metric to rounding).
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim_torch: shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if a.dim() != 4:
        raise ValueError(f"ssim_torch expects N x C x H x W tensors, got shape {tuple(a.shape)}")
    n, c, h, w = a.shape
    if h < window or w < window:
        raise ValueError(f"ssim_torch: images {h}x{w} are smaller than the {window}x{window} window")
    b = b.to(a.dtype)
    # Filter the five statistics in one depthwise pass: 5 * C channels.
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    vert, horiz = _window(window, sigma, 5 * c, a.dtype, a.device)
    filtered = F.conv2d(F.conv2d(stack, vert, groups=5 * c), horiz, groups=5 * c)
    mu_a, mu_b, e_aa, e_bb, e_ab = filtered.split(c, dim=1)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).mean()


def block_loss(pred: torch.Tensor, target: torch.Tensor, lam: float = 1.0, use_ssim: bool = True) -> torch.Tensor:
    """Eq. 1: mean squared error + lam * log(1 / SSIM + 1e-4), images in [0, 1]."""
    if pred.shape != target.shape:
        raise ValueError(f"block_loss: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}")
    target = target.to(pred.dtype)
    loss = F.mse_loss(pred, target)
    if use_ssim and lam != 0:
        s = ssim_torch(pred, target, data_range=1.0).clamp_min(SSIM_FLOOR)
        loss = loss + lam * torch.log(1.0 / s + SSIM_EPS)
    return loss


def resguide_loss(
    outputs: Sequence[torch.Tensor], target: torch.Tensor, lam: float = 1.0, use_ssim: bool = True
) -> torch.Tensor:
    """Eq. 2: the mean of :func:`block_loss` over every supervised output (M + 1 of them)."""
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    outputs = list(outputs)
    if not outputs:
        raise ValueError("resguide_loss: no outputs to supervise")
    total = block_loss(outputs[0], target, lam, use_ssim)
    for out in outputs[1:]:
        total = total + block_loss(out, target, lam, use_ssim)
    return total / len(outputs)
