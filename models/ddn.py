"""DDN (Fu et al., CVPR 2017), "Removing Rain from Single Images via a Deep Detail Network".

Structure (the authors' TensorFlow re-implementation, ``CVPR17_training_code/training.py``)
------------------------------------------------------------------------------------------
The rainy image X (RGB in [0, 1]) is split into a base and a detail layer with a guided filter,
applied to every colour channel with that channel as its own guide (radius 15, eps 1):

    detail = X - guided_filter(X, X, r=15, eps=1)

A 26-layer network of 16 feature maps and 3x3 convolutions maps the detail layer to the negative
rain residual, which is added back to the *input* (not to the detail layer):

    layer 1:          h0 = ReLU(BN(conv(detail, 3 -> 16)))
    layers 2..25:     12 units u = 1..12, each two conv(16 -> 16) + BN + ReLU, with a shortcut
                      over the pair: h_u = h_(u-1) + ReLU(BN(conv(ReLU(BN(conv(h_(u-1)))))))
    layer 26:         r = BN(conv(h_12, 16 -> 3))           (batch norm, no ReLU)
    output:           Y = X + r

Every convolution has a bias (TensorFlow's ``tf.layers.conv2d`` default) and every layer has batch
normalization (``tf.layers.batch_normalization`` defaults: epsilon 1e-3, momentum 0.99, with gamma
and beta). In eval mode the output is clipped to [0, 1], as the authors' ``testing.py`` does.

Parameter count: 57,369 trainable; with the 806 batch-norm moving means and variances the
"all_variables" count is 58,175, the number the paper reports and the number of floats in the
authors' released checkpoint.

Guided filter
-------------
The authors use the box-filter guided filter of Wu et al. ("Fast End-to-End Trainable Guided
Filter", its TensorFlow ``guided_filter``): window sums by cumulative sums, windows truncated at the
image border and every mean divided by the number of pixels actually inside the window
(``N = box(ones)``), i.e. ``avg_pool`` with ``count_include_pad=False`` semantics. The same is done
here (in float64), for any image size; the authors' slicing needs H, W >= 2r + 1 = 31 and gives the
same values there.

Weights
-------
``weights`` is the path of the authors' TF1 checkpoint, as its prefix (``.../model``) or its
``.index`` file; it is read by ``models.tf_checkpoint`` without TensorFlow. ``"init"`` is the bare
architecture.

Training here
-------------
``None`` or a rain tag (``light``, ``heavy``, ``ddn``) is DDN trained by the suite on its own rain
synthesis (``python -m benchmark.run train ddn --rain light``), with the recipe of the authors'
released training code (:func:`train_recipe`): Xavier-uniform kernels and zero biases
(:func:`ddn_init_`), SGD with momentum 0.9 at learning rate 0.1, divided by 10 after a third and
after two thirds of the iterations, on the mean squared error between output and clean patch;
batch-norm layers in training mode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import models.provider as provider
from models.registry import file_identity, official_weights, register
from models.tf_checkpoint import CheckpointError, index_path, read_checkpoint

RADIUS = 15
EPS = 1.0
FEATURES = 16
UNITS = 12                  # residual units of two layers: layers 2..25
LAYERS = 2 * UNITS + 2      # 26
BN_EPS = 1e-3               # tf.layers.batch_normalization default
BN_MOMENTUM = 0.01          # torch convention for TF's decay 0.99
PAPER_PARAMS = 58_175


# --------------------------------------------------------------------------- guided filter

def box_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """Sum over the (2r+1) x (2r+1) window around each pixel of N x C x H x W ``x``, the window
    truncated at the image border."""
    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        c = torch.cumsum(t, dim=dim)
        c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)  # c[k] = sum of t[:k]
        idx = torch.arange(n, device=t.device)
        hi = (idx + r + 1).clamp(max=n)
        lo = (idx - r).clamp(min=0)
        return c.index_select(dim, hi) - c.index_select(dim, lo)

    return along(along(x, 2), 3)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, r: int = RADIUS, eps: float = EPS) -> torch.Tensor:
    """Box-filter guided filter of ``src`` with guide ``guide`` (N x C x H x W, per channel).

    Means are taken over the border-truncated windows (count_include_pad=False semantics).
    """
    dtype = src.dtype
    x = guide.double()
    y = src.double()
    n = box_sum(torch.ones_like(x[:1, :1]), r)
    mean_x = box_sum(x, r) / n
    mean_y = box_sum(y, r) / n
    cov_xy = box_sum(x * y, r) / n - mean_x * mean_y
    var_x = box_sum(x * x, r) / n - mean_x * mean_x
    a = cov_xy / (var_x + eps)
    b = mean_y - a * mean_x
    out = (box_sum(a, r) / n) * x + box_sum(b, r) / n
    return out.to(dtype)


# --------------------------------------------------------------------------- network

class ConvBN(nn.Module):
    """3x3 convolution (with bias) followed by batch norm with TensorFlow's defaults."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x):
        return self.bn(self.conv(x))


class DDN(nn.Module):
    def __init__(self, features: int = FEATURES, units: int = UNITS, radius: int = RADIUS, eps: float = EPS):
        super().__init__()
        self.radius = radius
        self.eps = eps
        self.units = units
        chans = [(3, features)] + [(features, features)] * (2 * units) + [(features, 3)]
        self.layers = nn.ModuleList(ConvBN(a, b) for a, b in chans)  # layers[i] is the authors' layer_{i+1}

    def detail(self, x: torch.Tensor) -> torch.Tensor:
        return x - guided_filter(x, x, self.radius, self.eps)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The negative rain residual predicted from the detail layer of ``x``."""
        h = F.relu(self.layers[0](self.detail(x)))
        for u in range(self.units):
            t = F.relu(self.layers[1 + 2 * u](h))
            t = F.relu(self.layers[2 + 2 * u](t))
            h = h + t
        return self.layers[-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.residual(x)
        return out if self.training else out.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- the authors' checkpoint

def tf_names(net: DDN) -> list[tuple[str, str, tuple[int, ...]]]:
    """(TF variable name, our state_dict key, TF shape) for every variable of the checkpoint."""
    out = []
    for i, layer in enumerate(net.layers):
        n = i + 1
        cout, cin, kh, kw = layer.conv.weight.shape
        base = f"layer_{n}"
        out.append((f"{base}/conv_{n}/kernel", f"layers.{i}.conv.weight", (kh, kw, cin, cout)))
        out.append((f"{base}/conv_{n}/bias", f"layers.{i}.conv.bias", (cout,)))
        for tf_leaf, ours in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                              ("moving_variance", "running_var")):
            out.append((f"{base}/bn_{n}/{tf_leaf}", f"layers.{i}.bn.{ours}", (cout,)))
    return out


_IGNORED_SUFFIXES = ("/Momentum", "/Adam", "/Adam_1")


def _checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    idx = index_path(path)
    data = idx.with_name(idx.name[: -len(".index")] + ".data-00000-of-00001")
    if not idx.is_file():
        raise FileNotFoundError(f"DDN weights {str(path)!r}: no TensorFlow checkpoint index {idx}")
    return idx, data


def load_tf_checkpoint(net: DDN, path: str | Path) -> dict:
    """Copy the authors' TF1 checkpoint into ``net``; returns the weights identity.

    Raises ValueError naming the file and the first variable whose name or shape does not fit.
    """
    idx, data = _checkpoint_files(path)
    try:
        tensors = read_checkpoint(idx, verify_crc=True)
    except CheckpointError as e:
        raise ValueError(f"{idx}: not a readable DDN checkpoint ({e})") from None
    expected = tf_names(net)
    state = {}
    for tf_name, key, shape in expected:
        if tf_name not in tensors:
            raise ValueError(f"{idx}: checkpoint does not fit DDN: variable {tf_name!r} is missing")
        value = tensors[tf_name]
        if tuple(value.shape) != shape:
            raise ValueError(f"{idx}: checkpoint does not fit DDN: variable {tf_name!r} has shape "
                             f"{tuple(value.shape)}, expected {shape}")
        if value.ndim == 4:  # H x W x Cin x Cout -> Cout x Cin x H x W
            value = value.transpose(3, 2, 0, 1)
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    known = {t for t, _k, _s in expected}
    extra = sorted(n for n in tensors if n not in known and n != "global_step" and not n.endswith(_IGNORED_SUFFIXES))
    if extra:
        raise ValueError(f"{idx}: checkpoint does not fit DDN: unexpected variable {extra[0]!r}")
    own = net.state_dict()
    for key, value in state.items():
        own[key].copy_(value)
    return {"tag": "official", **file_identity(data), "index_sha256": file_identity(idx)["sha256"],
            "training_data": "authors' release (DDN's own rain data)"}


# --------------------------------------------------------------------------- training here

#: The authors' batch and patch size (CVPR17_training_code/training.py: 20 patches of 64 x 64).
PAPER_BATCH, PAPER_PATCH = 20, 64


def ddn_init_(net: DDN) -> DDN:
    """The authors' initialisation: Xavier-uniform kernels (TF's glorot_uniform, the same fans as
    torch's), zero biases; batch norm gamma 1, beta 0 (torch's defaults, as TF's)."""
    for layer in net.layers:
        nn.init.xavier_uniform_(layer.conv.weight)
        nn.init.zeros_(layer.conv.bias)
    return net


def train_recipe(profile: str) -> dict:
    """TrainConfig overrides for training DDN the authors' way (their released training code):
    SGD, momentum 0.9, learning rate 0.1 divided by 10 after 1/3 and after 2/3 of the iterations
    (20k and 40k of their 60k), mean squared error of the output. The paper profile uses their
    20 patches of 64 x 64; the smaller profiles use the profile's batch and patch, like the other
    suite-trained methods (the same budget). Their L2 regulariser (scale 1e-10) is built but never
    added to their loss, so there is none here either."""
    recipe = {"optimizer": "sgd", "lr": 0.1, "loss": "mse", "lr_drops": (1 / 3, 2 / 3)}
    if profile == "paper":
        recipe.update(batch=PAPER_BATCH, patch=PAPER_PATCH)
    return recipe


@register("ddn", paper_name="DDN",
          description="deep detail network (Fu et al. CVPR 2017); trained here, or the authors' TF weights")
def build_ddn(weights, profile, data_root):
    net = DDN()
    if weights.kind == "init":
        return net, {"tag": "init"}
    if weights.trained_here:
        return provider.trained("ddn", weights.tag or "light", profile, lambda: ddn_init_(DDN()), provider.single_output,
                                data_root, recipe=train_recipe(profile))
    if weights.kind == "official":
        return net, load_tf_checkpoint(net, official_weights("ddn", data_root))
    if weights.kind != "path":
        raise ValueError(f"ddn takes init, a rain tag, official or a checkpoint, not {weights}")
    return net, load_tf_checkpoint(net, weights.path)


build_ddn.family = "ddn"  # trained by the suite (`benchmark.run train ddn --rain R`)
build_ddn.tasks = ("derain",)


__all__ = ["DDN", "guided_filter", "box_sum", "tf_names", "load_tf_checkpoint", "build_ddn", "PAPER_PARAMS",
           "ddn_init_", "train_recipe"]
