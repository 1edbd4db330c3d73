"""Automatic exit for ResGuideNet (beyond the paper).

The detachable cascade lets light rain stop early. ``AutoExit`` runs the blocks one at a
time and stops after block k (k >= 2) as soon as the mean absolute change between
successive reconstructions, ``mean|y(k) - y(k-1)|``, falls below a threshold ``tau``: the
cascade has settled, so later blocks are expected to add little. When it never settles it
returns the merged output of all five blocks.

``tau`` is calibrated on the *training* images (never a test set): on rainy patches
synthesised like the training data, it is the largest candidate whose mean PSNR loss
against the full model stays within ``tolerance_db``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.metrics import psnr


class AutoExit(nn.Module):
    def __init__(self, net: nn.Module, tau: float):
        super().__init__()
        self.net = net
        self.tau = float(tau)
        self.last_exit = None  # blocks run for the last input (merged output: all of them)

    def forward(self, x):
        outputs = []
        for y in self.net.iter_blocks(x):
            if outputs and (y - outputs[-1]).abs().mean().item() < self.tau:
                self.last_exit = len(outputs) + 1
                return y
            outputs.append(y)
        self.last_exit = len(outputs)
        return self.net.merged(outputs)


def _changes_and_psnrs(net, rainy: torch.Tensor, clean: torch.Tensor):
    """Per patch: the successive changes d(2..M), PSNR of y(1..M), and PSNR of the merged output."""
    with torch.inference_mode():
        outs = list(net.iter_blocks(rainy))
        merged = net.merged(outs)
    changes = np.stack([(b - a).abs().mean(dim=(1, 2, 3)).numpy() for a, b in zip(outs, outs[1:])], axis=1)
    tgt = clean.numpy()
    ps = np.array([[psnr(np.clip(o[i].numpy(), 0, 1), tgt[i]) for o in outs] for i in range(len(tgt))])
    pm = np.array([psnr(np.clip(merged[i].numpy(), 0, 1), tgt[i]) for i in range(len(tgt))])
    return changes, ps, pm


def calibrate(net, sampler, n_patches: int = 64, tolerance_db: float = 0.1, batch: int = 16) -> dict:
    """Choose ``tau`` on training patches from ``sampler`` (a ``models.train.PatchSampler``)."""
    changes, ps, pm = [], [], []
    for step in range(0, n_patches, batch):
        rainy, clean = sampler.batch(min(batch, n_patches - step), 10_000_000 + step)
        c, p, m = _changes_and_psnrs(net, rainy, clean)
        changes.append(c), ps.append(p), pm.append(m)
    changes, ps, pm = np.concatenate(changes), np.concatenate(ps), np.concatenate(pm)
    best = {"tau": 0.0, "mean_blocks": float(ps.shape[1]), "psnr_loss_db": 0.0}
    for tau in sorted(set(np.round(np.quantile(changes, np.linspace(0, 1, 41)), 6))):
        exits = [next((k + 2 for k in range(changes.shape[1]) if changes[i, k] < tau), None) for i in range(len(pm))]
        got = np.array([pm[i] if e is None else ps[i, e - 1] for i, e in enumerate(exits)])
        loss = float(np.mean(pm - got))
        blocks = float(np.mean([ps.shape[1] if e is None else e for e in exits]))
        if loss <= tolerance_db and blocks <= best["mean_blocks"]:
            best = {"tau": float(tau), "mean_blocks": blocks, "psnr_loss_db": loss}
    return {**best, "tolerance_db": tolerance_db, "n_patches": int(len(pm))}
