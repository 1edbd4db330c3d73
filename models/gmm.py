"""GMM: the layer-prior derainer of Li, Tan, Guo, Lu and Brown, "Rain Streak Removal Using Layer
Priors" (CVPR 2016), the "GMM" column of the paper's Table 2. Our own implementation of the idea
(no code of the authors' MATLAB release is used).

Model
-----
The rainy image O is the sum of a background layer B and a rain layer R. Both layers get a
patch prior that is a Gaussian mixture model:

* background GMM G_B (``bg_components`` = 20 components, full covariances, on mean-removed
  ``patch`` x ``patch`` = 8 x 8 patches) fitted OFFLINE with scikit-learn on patches of the suite's
  clean training images (``models.train.training_images``: BSDS500 train+val minus the Rain100
  backgrounds + Kodak24 with a data root, else the embedded train split) -- never on test images;
* rain GMM G_R (``rain_components`` = 3 components) fitted on the INPUT itself, on patches of the
  region where the rain dominates: the square block (side about a quarter of the image) whose
  background shows the least texture relative to the rain in it. The background there is estimated
  by a lower envelope (a ``min`` filter that removes thin bright streaks, then a box blur), and the
  rain patches are those of ``O - background`` (not mean-removed: the rain prior carries the
  positive mean of the rain, which fixes how low frequencies split between the layers; the
  background prior is mean-invariant).

Energy (Y channel; see below), with the constraint 0 <= B, R <= O:

    lam/2 ||O - B - R||^2 + omega/2 ||grad B||^2
        - gamma * sum_i [ log G_B(P_i B) + log G_R(P_i R) ]

solved by half-quadratic splitting in the EPLL manner (Zoran and Weiss 2011): auxiliary patches
z_i (for B) and y_i (for R) with the coupling beta/2 ||P_i B - z_i||^2, beta raised over a short
schedule (``betas``; 5 values, 200 ... 51200, by default). Every iteration

1. for every overlapping patch of B and of R (all patches as one tensor, ``unfold``): pick the
   most likely mixture component under N(mu_k, Sigma_k + I/beta) and replace the patch by its MAP
   estimate under that Gaussian, the Wiener filter mu_k + Sigma_k (Sigma_k + I/beta)^-1 (p - mu_k)
   (``GaussianMixturePrior.map_patches``; the patch mean is kept for the background);
2. solve the quadratic problem in (B, R) exactly: the image is reflect-padded and treated as
   periodic, so every pixel lies in exactly patch^2 patches and the 2 x 2 linear system per spatial
   frequency is solved in closed form with FFTs; then B and R are projected onto [0, O].

Y vs RGB
--------
The suite scores on Y (MATLAB ``rgb2ycbcr``), so the decomposition runs on Y only and the derained
Y is recombined with the rainy input's Cb/Cr (the rain streaks of the benchmark sets are nearly
achromatic); the RGB result is clipped to [0, 1].

All GMM arrays are buffers, so the module has no trainable parameters. The result is deterministic
(fixed ``random_state`` for every scikit-learn fit, no randomness elsewhere).
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets.training import training_images
import models.provider as provider
from models.colour import rgb2ycbcr, ycbcr2rgb
from models.registry import file_identity, register

PATCH = 8
BG_COMPONENTS = 20
RAIN_COMPONENTS = 3
BETAS = (200.0, 800.0, 3200.0, 12800.0, 51200.0)   # 1/beta = Wiener noise variance (Y in [0, 1])
LAM = 1e4          # data term weight; chosen (with BETAS) on 4 BSDS train crops with our light rain, not on test images
GAMMA = 1.0        # weight of the patch priors
OMEGA = 0.0        # smoothness weight on B (per pixel)
SEED = 0
#: (patches sampled, EM iterations) of the background fit per profile
BG_FIT = {"smoke": (8_000, 30), "quick": (60_000, 100), "paper": (200_000, 200), "init": (20_000, 50)}


def _rgb2ycbcr(x: torch.Tensor) -> torch.Tensor:
    return rgb2ycbcr(x)


def _ycbcr2rgb(x: torch.Tensor) -> torch.Tensor:
    return ycbcr2rgb(x)


# --------------------------------------------------------------------------- the patch prior

class GaussianMixturePrior(nn.Module):
    """A GMM over flattened patches (K weights, K x d means, K x d x d covariances) as buffers."""

    def __init__(self, weights, means, covariances, remove_mean: bool):
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(np.asarray(weights), dtype=torch.float64))
        self.register_buffer("means", torch.as_tensor(np.asarray(means), dtype=torch.float64))
        self.register_buffer("covariances", torch.as_tensor(np.asarray(covariances), dtype=torch.float64))
        self.remove_mean = remove_mean

    @classmethod
    def fit(cls, patches: np.ndarray, components: int, remove_mean: bool, max_iter: int = 100,
            seed: int = SEED, reg_covar: float = 1e-6, verbose: bool = False) -> "GaussianMixturePrior":
        """EM fit with scikit-learn; ``verbose`` prints its progress every 10 iterations (a
        60,000-patch fit takes minutes)."""
        from sklearn.mixture import GaussianMixture

        x = np.asarray(patches, dtype=np.float64)
        if remove_mean:
            x = x - x.mean(axis=1, keepdims=True)
        components = max(1, min(components, len(x)))
        gm = GaussianMixture(components, covariance_type="full", random_state=seed, max_iter=max_iter,
                             reg_covar=reg_covar, init_params="kmeans",
                             verbose=2 if verbose else 0, verbose_interval=10)
        gm.fit(x)
        return cls(gm.weights_, gm.means_, gm.covariances_, remove_mean)

    def _filters(self, noise_var: float):
        """Per component: whitening matrix of Sigma_k + s I (transposed), log-normaliser, the
        Wiener matrix Sigma_k (Sigma_k + s I)^-1 (transposed)."""
        cov = self.covariances
        d = cov.shape[-1]
        c = cov + noise_var * torch.eye(d, dtype=cov.dtype)
        chol = torch.linalg.cholesky(c)
        inv_l = torch.linalg.solve_triangular(chol, torch.eye(d, dtype=cov.dtype).expand_as(c), upper=False)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        const = torch.log(self.weights) - 0.5 * logdet
        wiener = cov @ torch.cholesky_inverse(chol)          # Sigma (Sigma + sI)^-1
        return inv_l.transpose(1, 2), const, wiener.transpose(1, 2)

    def map_patches(self, patches: torch.Tensor, noise_var: float) -> tuple[torch.Tensor, torch.Tensor]:
        """For N x d ``patches`` observed with white noise of variance ``noise_var``: the most
        likely component of every patch and the patch's MAP estimate under it (N x d, labels N)."""
        dtype = patches.dtype
        inv_lt, const, wiener_t = (t.to(dtype) for t in self._filters(noise_var))
        means = self.means.to(dtype)
        if self.remove_mean:
            dc = patches.mean(dim=1, keepdim=True)
            x = patches - dc
        else:
            x = patches
        best = torch.full((x.shape[0],), -float("inf"), dtype=dtype)
        labels = torch.zeros(x.shape[0], dtype=torch.long)
        for k in range(means.shape[0]):
            w = x @ inv_lt[k] - means[k] @ inv_lt[k]
            score = const[k] - 0.5 * (w * w).sum(dim=1)
            better = score > best
            best = torch.where(better, score, best)
            labels = torch.where(better, torch.full_like(labels, k), labels)
        out = torch.empty_like(x)
        for k in range(means.shape[0]):
            idx = (labels == k).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = means[k] + (x[idx] - means[k]) @ wiener_t[k]
        if self.remove_mean:
            out = out + dc
        return out, labels

    def arrays(self) -> dict:
        return {"weights": self.weights.numpy(), "means": self.means.numpy(),
                "covariances": self.covariances.numpy(), "remove_mean": np.array(self.remove_mean)}


# --------------------------------------------------------------------------- periodic patches

def periodic_patches(img: torch.Tensor, p: int) -> torch.Tensor:
    """All p x p patches of the H x W image taken as periodic: (H*W) x p^2, one per top-left pixel."""
    h, w = img.shape
    ext = F.pad(img[None, None], (0, p - 1, 0, p - 1), mode="circular")
    return F.unfold(ext, p).squeeze(0).T


def periodic_fold(patches: torch.Tensor, shape: tuple[int, int], p: int) -> torch.Tensor:
    """Adjoint of ``periodic_patches``: sum every patch back onto the periodic H x W image."""
    h, w = shape
    acc = F.fold(patches.T[None], (h + p - 1, w + p - 1), p).squeeze(0).squeeze(0)
    out = acc[:h, :w].clone()
    out[:, : p - 1] += acc[:h, w:]
    out[: p - 1, :] += acc[h:, :w]
    out[: p - 1, : p - 1] += acc[h:, w:]
    return out


# --------------------------------------------------------------------------- the rain region

def _background_envelope(o: torch.Tensor, width: int = 7) -> torch.Tensor:
    """Lower envelope of the H x W image: min filter (removes thin bright streaks), then box blur."""
    r = width // 2
    x = o[None, None]
    low = -F.max_pool2d(F.pad(-x, (r, r, r, r), mode="replicate"), width, stride=1)
    low = F.avg_pool2d(F.pad(low, (r, r, r, r), mode="replicate"), width, stride=1)
    return low[0, 0]


def rain_region(o: torch.Tensor, side: int) -> tuple[int, int]:
    """Top-left corner of the side x side block of the H x W image where the rain dominates: the
    smallest texture of the background envelope relative to the rain energy above it."""
    bg = _background_envelope(o)
    gy = torch.zeros_like(bg)
    gx = torch.zeros_like(bg)
    gy[1:] = (bg[1:] - bg[:-1]).abs()
    gx[:, 1:] = (bg[:, 1:] - bg[:, :-1]).abs()
    texture = F.avg_pool2d((gx + gy)[None, None], side, stride=1)[0, 0]
    rain = F.avg_pool2d((o - bg).clamp(min=0)[None, None], side, stride=1)[0, 0]
    score = texture / (rain + 1e-3)
    flat = int(torch.argmin(score))
    return flat // score.shape[1], flat % score.shape[1]


def fit_rain_prior(o: torch.Tensor, p: int, components: int, max_patches: int = 4000,
                   max_iter: int = 100) -> GaussianMixturePrior:
    h, w = o.shape
    side = int(min(max(min(h, w) // 4, 3 * p), h, w))
    top, left = rain_region(o, side)
    block = o[top: top + side, left: left + side]
    rain = (block - _background_envelope(block)).clamp(min=0)
    patches = F.unfold(rain[None, None], p).squeeze(0).T.double().numpy()
    if len(patches) > max_patches:
        step = int(np.ceil(len(patches) / max_patches))
        patches = patches[::step]
    return GaussianMixturePrior.fit(patches, components, remove_mean=False, max_iter=max_iter)


# --------------------------------------------------------------------------- the derainer

class GMMDerain(nn.Module):
    def __init__(self, background: GaussianMixturePrior, patch: int = PATCH, rain_components: int = RAIN_COMPONENTS,
                 betas=BETAS, lam: float = LAM, gamma: float = GAMMA, omega: float = OMEGA,
                 rain_fit_iter: int = 100):
        super().__init__()
        d = background.means.shape[1]
        if d != patch * patch:
            raise ValueError(f"background GMM is over {d}-pixel patches, not {patch}x{patch}")
        self.background = background
        self.patch = patch
        self.rain_components = rain_components
        self.betas = tuple(float(b) for b in betas)
        self.lam, self.gamma, self.omega = float(lam), float(gamma), float(omega)
        self.rain_fit_iter = rain_fit_iter

    def decompose(self, o: torch.Tensor, rain_prior: GaussianMixturePrior | None = None):
        """B, R of the H x W layer ``o`` (float64 work, float32 patch products)."""
        p = self.patch
        h, w = o.shape
        o = o.double()
        if rain_prior is None:
            rain_prior = fit_rain_prior(o, p, self.rain_components, max_iter=self.rain_fit_iter)
        m = p
        mode = "reflect" if min(h, w) > m else "replicate"
        op = F.pad(o[None, None], (m, m, m, m), mode=mode)[0, 0]
        hp, wp = op.shape
        d = p * p
        fy = torch.fft.fftfreq(hp, dtype=torch.float64)[:, None]
        fx = torch.fft.rfftfreq(wp, dtype=torch.float64)[None, :]
        lap = (2 - 2 * torch.cos(2 * np.pi * fy)) + (2 - 2 * torch.cos(2 * np.pi * fx))
        fo = torch.fft.rfft2(op)
        b = op.clone()
        r = torch.zeros_like(op)
        for beta in self.betas:
            s = 1.0 / beta
            zb, _ = self.background.map_patches(periodic_patches(b, p).float(), s)
            zr, _ = rain_prior.map_patches(periodic_patches(r, p).float(), s)
            sb = torch.fft.rfft2(periodic_fold(zb.double(), (hp, wp), p))
            sr = torch.fft.rfft2(periodic_fold(zr.double(), (hp, wp), p))
            gb = self.gamma * beta
            a11 = self.lam + self.omega * lap + gb * d
            a22 = self.lam + gb * d
            a12 = self.lam
            r1 = self.lam * fo + gb * sb
            r2 = self.lam * fo + gb * sr
            det = a11 * a22 - a12 * a12
            b = torch.fft.irfft2((a22 * r1 - a12 * r2) / det, s=(hp, wp))
            r = torch.fft.irfft2((a11 * r2 - a12 * r1) / det, s=(hp, wp))
            b = torch.minimum(b.clamp(min=0), op)
            r = torch.minimum(r.clamp(min=0), op)
        return b[m: m + h, m: m + w], r[m: m + h, m: m + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        ycc = _rgb2ycbcr(x.double())
        out = []
        for i in range(x.shape[0]):
            b, _ = self.decompose(ycc[i, 0])
            out.append(torch.cat([b[None], ycc[i, 1:]], dim=0))
        rgb = _ycbcr2rgb(torch.stack(out)).clamp(0.0, 1.0)
        return rgb.to(x.dtype)


# --------------------------------------------------------------------------- the background GMM

def sample_patches(images, p: int, n: int, seed: int = SEED) -> np.ndarray:
    """``n`` random p x p patches of the Y channel of uint8 RGB images (about n / len(images) each)."""
    rng = np.random.default_rng(seed)
    per = int(np.ceil(n / len(images)))
    out = []
    for img in images:
        t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].double() / 255.0
        y = _rgb2ycbcr(t)[0, 0].numpy()
        hh, ww = y.shape
        if hh < p or ww < p:
            continue
        rows = rng.integers(0, hh - p + 1, per)
        cols = rng.integers(0, ww - p + 1, per)
        idx = np.arange(p)
        out.append(y[rows[:, None, None] + idx[None, :, None], cols[:, None, None] + idx[None, None, :]].reshape(per, -1))
    return np.concatenate(out)[:n]


def background_prior(profile: str, data_root, patch: int = PATCH, components: int = BG_COMPONENTS) -> tuple[GaussianMixturePrior, dict]:
    """The background GMM for ``profile``: shipped under results/weights, cached under the training
    cache, or fitted now on the clean training images (and cached).

    A shipped prior is used whenever its fit settings match, whatever the data root of this run:
    shipped weights are part of the suite, so a cell that uses them gives the same numbers on a
    machine with real data and on one without.  A cached prior must also match the source of the
    training images (embedded or the data root), since the cache is this machine's own."""
    n, iters = BG_FIT.get(profile, BG_FIT["quick"])
    source = "embedded" if data_root is None else "data_root"  # training_images() decides what that holds
    key = hashlib.sha256(json.dumps([profile, patch, components, n, iters, SEED, source]).encode()).hexdigest()[:12]
    settings = {"profile": profile, "patch": patch, "components": components, "patches": n,
                "em_iterations": iters, "seed": SEED}
    name = f"gmm-background-{profile}"
    for folder in (provider.WEIGHTS_DIR, provider.CACHE_DIR):
        path = folder / f"{name}.npz"
        meta_path = folder / f"{name}.json"
        if path.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            shipped = folder == provider.WEIGHTS_DIR and all(meta.get(k) == v for k, v in settings.items())
            if shipped or meta.get("key") == key:
                with np.load(path) as z:
                    prior = GaussianMixturePrior(z["weights"], z["means"], z["covariances"], bool(z["remove_mean"]))
                return prior, {"tag": "gmm", **file_identity(path), "fit": meta}
    images, desc = training_images(data_root)
    patches = sample_patches(images, patch, n)
    print(f"fitting the GMM background prior ({profile}): {len(patches):,} patches of {patch}x{patch}, "
          f"{components} components, up to {iters} EM iterations; it is cached for later runs", file=sys.stderr)
    prior = GaussianMixturePrior.fit(patches, components, remove_mean=True, max_iter=iters, verbose=True)
    provider.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = provider.CACHE_DIR / f"{name}.npz"
    arrays = prior.arrays()
    np.savez_compressed(path, **{k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in arrays.items()})
    meta = {"key": key, "profile": profile, "patch": patch, "components": components, "patches": int(len(patches)),
            "em_iterations": iters, "seed": SEED, "training_images": desc,
            "source_kind": "embedded" if data_root is None else "data_root",
            "method": "sklearn GaussianMixture(full covariances, kmeans init) on mean-removed Y patches"}
    (provider.CACHE_DIR / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    with np.load(path) as z:  # use exactly what was stored (float32), so cached and fresh runs agree
        prior = GaussianMixturePrior(z["weights"], z["means"], z["covariances"], True)
    return prior, {"tag": "gmm", **file_identity(path), "fit": meta}


@register("gmm", paper_name="GMM", version="1",
          description="layer priors (Li et al. CVPR 2016): patch GMMs for background (fitted on the clean "
                      "training images) and rain (fitted on the input), EPLL-style half-quadratic splitting on Y")
def build_gmm(weights, profile, data_root):
    if weights.kind not in ("default", "init") and weights.tag not in ("none", "gmm"):
        raise ValueError(f"gmm takes no weights file (got {weights})")
    if weights.kind == "init":
        prior, info = background_prior("init", None)
        return GMMDerain(prior), {**info, "tag": "init"}
    prior, info = background_prior(profile, data_root)
    return GMMDerain(prior), info


__all__ = ["GMMDerain", "GaussianMixturePrior", "periodic_patches", "periodic_fold", "rain_region",
           "fit_rain_prior", "background_prior", "build_gmm", "sample_patches"]
