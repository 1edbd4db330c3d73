import numpy as np
import pytest
import torch

from core import metrics
from models.losses import block_loss, resguide_loss, ssim_torch


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(dtype, shape=(2, 3, 24, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_ssim_matches_numpy_metric_per_channel(dtype, tol):
    a, b = _pair(dtype)
    for n in range(a.shape[0]):
        for c in range(a.shape[1]):
            ref = metrics.ssim(a[n, c].double().numpy() * 255.0, b[n, c].double().numpy() * 255.0)
            got = ssim_torch(a[n : n + 1, c : c + 1], b[n : n + 1, c : c + 1]).item()
            assert abs(got - ref) < tol, (n, c, got, ref)


def test_ssim_is_mean_over_batch_and_channels():
    a, b = _pair(torch.float64)
    per = [ssim_torch(a[n : n + 1, c : c + 1], b[n : n + 1, c : c + 1]) for n in range(2) for c in range(3)]
    assert torch.allclose(ssim_torch(a, b), torch.stack(per).mean())
    assert ssim_torch(a, a).item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_images_smaller_than_window():
    x = torch.zeros(1, 3, 10, 30)
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        ssim_torch(x, x)


def test_loss_finite_and_decreases_towards_target():
    target, _ = _pair(torch.float32, seed=1)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    losses = [block_loss((target + t * noise).clamp(0, 1), target).item() for t in (1.0, 0.5, 0.2, 0.05, 0.0)]
    assert all(np.isfinite(losses))
    assert all(x > y for x, y in zip(losses, losses[1:])), losses
    assert losses[-1] == pytest.approx(np.log(1.0 + 1e-4), abs=1e-6)
    mse_only = block_loss((target + noise).clamp(0, 1), target, use_ssim=False)
    assert mse_only.item() == pytest.approx(torch.mean(((target + noise).clamp(0, 1) - target) ** 2).item())


def test_loss_stays_finite_for_anticorrelated_prediction():
    target, _ = _pair(torch.float32, seed=3)
    assert torch.isfinite(block_loss(1.0 - target, target))


def test_a_negated_image_is_a_trap_of_eq1():
    """Why ResGuideNet's merge starts as the blocks' mean (models.resguidenet.MERGE_INITS): along
    pred = a * target, Eq. 1 is lower at a = -0.9 than at a = 0 (SSIM's two factors are both
    negative there, so SSIM is positive), so a merge that starts negated has to climb out."""
    target, _ = _pair(torch.float32, seed=5, shape=(2, 1, 32, 32))
    loss = {a: block_loss(a * target, target).item() for a in (-0.9, 0.0, 0.5, 1.0)}
    assert ssim_torch(-0.9 * target, target).item() > 0.1
    assert loss[-0.9] < loss[0.0] - 1.0 and loss[0.0] > loss[0.5] > loss[1.0]


def test_gradient_flows_through_all_outputs():
    target, start = _pair(torch.float32, seed=4)
    outs = [start.clone().requires_grad_(True) for _ in range(3)]
    loss = resguide_loss(outs, target, lam=0.5)
    loss.backward()
    for o in outs:
        assert o.grad is not None and torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0
    # Eq. 2 is the mean over outputs
    single = block_loss(start, target, lam=0.5)
    assert loss.item() == pytest.approx(single.item(), rel=1e-6)
    with pytest.raises(ValueError):
        resguide_loss([], target)
