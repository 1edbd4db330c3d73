"""An exponential moving average of a network's weights over the training steps (what a run with
``TrainConfig.ema`` ships in place of its last step's weights)."""
from __future__ import annotations

import torch


class WeightAverage:
    """Shadow copies of ``net``'s floating-point parameters and buffers, updated after every step as
    ``avg = d * avg + (1 - d) * w`` with ``d = min(decay, (1 + t) / (10 + t))`` at step ``t``: the
    average forgets the start quickly and then spans about ``1 / (1 - decay)`` steps."""

    def __init__(self, net: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    def rate(self, step: int) -> float:
        """The decay ``d`` applied at 1-based ``step``."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> None:
        d = self.rate(step)
        state = net.state_dict()
        for k, avg in self.shadow.items():
            avg.lerp_(state[k].detach(), 1.0 - d)

    def state(self) -> dict[str, torch.Tensor]:
        """CPU copies of the averages (for a checkpoint)."""
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load(self, saved: dict[str, torch.Tensor], source: str) -> None:
        """Restore the averages of a checkpoint ``source`` (ValueError naming it when they do not fit)."""
        if set(saved) != set(self.shadow):
            raise ValueError(f"{source}: the weight average in the checkpoint does not match the model")
        for k, avg in self.shadow.items():
            avg.copy_(saved[k])

    @torch.no_grad()
    def copy_to(self, net: torch.nn.Module) -> None:
        """Put the averages into ``net`` (its weights become the average)."""
        state = net.state_dict()
        for k, avg in self.shadow.items():
            state[k].copy_(avg)
