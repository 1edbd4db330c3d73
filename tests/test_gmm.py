"""GMM (layer priors, Li et al. CVPR 2016): the batched patch step, determinism, and deraining a
synthetic image. Tiny images, a tiny background GMM and few iterations keep it fast."""
import numpy as np
import pytest
import torch

from models import registry
from models.gmm import GaussianMixturePrior, GMMDerain, periodic_fold, periodic_patches

P = 5


def _smooth(h=40, w=40, seed=0):
    """A smooth RGB background in [0.2, 0.7]: a few low-frequency cosines."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.zeros((3, h, w))
    for c in range(3):
        for _ in range(3):
            fy, fx, ph = rng.uniform(0.3, 1.5), rng.uniform(0.3, 1.5), rng.uniform(0, 6.3)
            out[c] += np.cos(2 * np.pi * (fy * yy + fx * xx) + ph)
    out = (out - out.min()) / (out.max() - out.min())
    return torch.from_numpy(0.2 + 0.5 * out).float()[None]


def _streaks(h=40, w=40, seed=1):
    """Thin oblique streaks (1 px wide, slope 2) of amplitude 0.25."""
    rng = np.random.default_rng(seed)
    r = np.zeros((h, w))
    for _ in range(14):
        y0, x0, n = rng.integers(0, h), rng.integers(0, w), rng.integers(6, 12)
        for t in range(n):
            y, x = y0 + 2 * t, x0 + t
            if 0 <= y < h and 0 <= x < w:
                r[y, x] = 0.25
                if y + 1 < h:
                    r[y + 1, x] = 0.25
    return torch.from_numpy(r).float()


def _background_prior(components=3):
    """A small mean-removed GMM on P x P patches of smooth images (not the test image)."""
    imgs = [_smooth(32, 32, seed=s)[0, 0] for s in range(10, 16)]
    patches = torch.cat([torch.nn.functional.unfold(im[None, None].double(), P).squeeze(0).T for im in imgs])
    return GaussianMixturePrior.fit(patches.numpy()[::2], components, remove_mean=True, max_iter=50)


@pytest.fixture(scope="module")
def net(one_thread):
    return GMMDerain(_background_prior(), patch=P, rain_components=2, betas=(50, 400, 3200), rain_fit_iter=30)


def _psnr(a, b):
    return 10 * torch.log10(1.0 / ((a - b) ** 2).mean()).item()


def test_derains_synthetic(net):
    clean = _smooth()
    rainy = (clean + _streaks()).clamp(0, 1)
    with torch.inference_mode():
        out = net(rainy)
    assert out.shape == rainy.shape
    assert out.min() >= 0 and out.max() <= 1
    assert _psnr(out, clean) > _psnr(rainy, clean) + 1.0


def test_deterministic(net):
    rainy = (_smooth(seed=3) + _streaks(seed=4)).clamp(0, 1)
    with torch.inference_mode():
        a = net(rainy)
        b = GMMDerain(_background_prior(), patch=P, rain_components=2, betas=(50, 400, 3200), rain_fit_iter=30)(rainy)
    assert torch.equal(a, b)


def test_shape_and_range_batch(net):
    x = torch.rand(2, 3, 21, 27, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = net(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("remove_mean", [True, False])
def test_batched_map_matches_per_patch_loop(remove_mean, one_thread):
    rng = np.random.default_rng(5)
    d, k = 9, 3
    a = rng.normal(size=(k, d, d))
    covs = a @ a.transpose(0, 2, 1) / d + 0.05 * np.eye(d)
    means = rng.normal(scale=0.1, size=(k, d))
    weights = np.array([0.5, 0.3, 0.2])
    prior = GaussianMixturePrior(weights, means, covs, remove_mean)
    x = torch.from_numpy(rng.normal(scale=0.7, size=(40, d)))
    s = 0.1
    z, labels = prior.map_patches(x, s)
    for i in range(x.shape[0]):  # naive: every patch, every component, by the textbook formulas
        p = x[i].numpy()
        dc = p.mean() if remove_mean else 0.0
        p = p - dc
        scores = []
        for j in range(k):
            c = covs[j] + s * np.eye(d)
            diff = p - means[j]
            scores.append(np.log(weights[j]) - 0.5 * np.linalg.slogdet(c)[1] - 0.5 * diff @ np.linalg.solve(c, diff))
        j = int(np.argmax(scores))
        assert labels[i].item() == j
        want = means[j] + covs[j] @ np.linalg.solve(covs[j] + s * np.eye(d), p - means[j]) + dc
        np.testing.assert_allclose(z[i].numpy(), want, rtol=1e-8, atol=1e-10)


def test_periodic_fold_is_adjoint_and_counts(one_thread):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(7, 9, generator=g, dtype=torch.float64)
    pt = periodic_patches(img, 3)
    assert pt.shape == (63, 9)
    # every pixel lies in exactly p^2 patches
    assert torch.allclose(periodic_fold(torch.ones_like(pt), (7, 9), 3), torch.full((7, 9), 9.0, dtype=torch.float64))
    q = torch.rand(pt.shape, generator=g, dtype=torch.float64)
    assert torch.allclose((pt * q).sum(), (img * periodic_fold(q, (7, 9), 3)).sum())


def test_registered_without_trainable_parameters():
    assert "gmm" in registry.names()
    assert registry.get("gmm").paper_name == "GMM"
    counts = registry.count_parameters(GMMDerain(_background_prior(2), patch=P))
    assert counts["trainable"] == 0 and counts["all_variables"] > 0
