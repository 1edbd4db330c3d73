"""DnCNN (Zhang et al., "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image
Denoising", TIP 2017).

17 layers of 64 feature maps: 3x3 conv + ReLU, 15 x (3x3 conv + batch norm + ReLU), 3x3 conv.
The network predicts the noise; the output is ``input - prediction`` (residual learning). It is
not clamped: the authors' demo rounds and clips only when it converts to uint8 for PSNR, as the
suite's metrics do.

Methods: ``dncnn`` (grayscale, 1 channel: DnCNN-S, one model per noise level) and ``dncnn_color``
(3 channels). A 1-channel model given a multi-channel batch denoises every channel on its own.

Weights: ``init`` is the bare architecture; ``denoise-sSIGMA`` (``dncnn``) and
``denoise-color-sSIGMA`` (``dncnn_color``) are the models the suite trains itself for Table 5
(:mod:`models.provider`, ``python -m benchmark.run train dncnn --sigma 30``) with the authors'
recipe (:func:`train_recipe`); ``official-sSIGMA`` is the authors' grayscale model under the
data root; a path loads either a PyTorch state dict of this
module (``.pth``/``.pt``, optionally ``{"state_dict": ...}``) or the authors' MatConvNet model
(``.mat``, MATLAB v7.3 = HDF5, e.g. ``model/specifics/sigma=25.mat`` from cszn/DnCNN) through
:func:`load_dncnn_mat`. The released ``.mat`` models hold batch norm already folded into the
convolutions (17 conv layers with biases, ReLUs, no ``bnorm`` layers); the importer then sets
every batch norm to the identity. A file that still has ``bnorm`` layers is converted too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import WeightsUnavailable
from core.weights import denoise_tag
import models.provider as provider
from models.registry import file_identity, first_mismatch, read_state_dict, register

#: MatConvNet's vl_nnbnorm epsilon (its stored moments are [mean, sqrt(var + eps)]).
BN_EPS = 1e-4


class DnCNN(nn.Module):
    def __init__(self, channels: int = 1, depth: int = 17, features: int = 64):
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN depth must be >= 3, got {depth}")
        self.channels = channels
        self.head = nn.Conv2d(channels, features, 3, padding=1, bias=True)
        blocks = []
        for _ in range(depth - 2):
            blocks += [nn.Conv2d(features, features, 3, padding=1, bias=True),
                       nn.BatchNorm2d(features, eps=BN_EPS),
                       nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*blocks)
        self.tail = nn.Conv2d(features, channels, 3, padding=1, bias=True)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(torch.relu(self.head(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.channels and self.channels == 1:  # a grayscale model on each channel
            flat = x.reshape(n * c, 1, h, w)
            return (flat - self.noise(flat)).reshape(n, c, h, w)
        return x - self.noise(x)


#: The smallest magnitude of a batch-norm gamma at the start (the authors' ``b_min``).
BN_GAMMA_MIN = 0.025


def dncnn_init_(net: DnCNN) -> DnCNN:
    """The authors' initialisation (their MatConvNet ``DnCNN_init_model_64_25_Res_Bnorm_Adam.m``):
    every convolution He (Kaiming) normal (fan-in, ReLU gain) with zero bias; every batch-norm
    gamma drawn from the same zero-mean Gaussian of standard deviation sqrt(2 / (9 * features))
    and pushed away from zero to a magnitude of at least :data:`BN_GAMMA_MIN`, keeping its sign;
    beta 0.

    The small gammas matter. With gammas at 1 (PyTorch's default) the untrained network predicts
    noise of about unit variance, 25 times sigma 10's, and Adam first spends its steps shrinking
    that: measured on colour sigma-10 patches (16 of 64 x 64, seed 0), the loss started at 5,336
    and was 12.8 after 120 iterations against the 9.45 of a zero residual, and the 1,000-iteration
    run plateaued at 10.06, worse than returning the noisy input. With the authors' gammas the
    shipped run started at 25.3, left the zero-residual level near iteration 270 and ended at 3.50
    (BSDS500 test: 32.48 dB against the noisy 28.28)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                gamma = torch.randn(m.num_features) * (2.0 / (9 * m.num_features)) ** 0.5
                small = gamma.abs() < BN_GAMMA_MIN
                gamma[small] = torch.where(gamma[small] < 0, -BN_GAMMA_MIN, BN_GAMMA_MIN)
                m.weight.copy_(gamma)
            nn.init.zeros_(m.bias)
    return net


#: DnCNN's batch and patch size (TIP 2017, section IV-A: mini-batches of 128 patches of 40 x 40).
PAPER_BATCH, PAPER_PATCH = 128, 40


def train_recipe(profile: str) -> dict:
    """TrainConfig overrides for training DnCNN the authors' way, per profile.

    Adam at learning rate 1e-3 (the authors' released training code; the paper's first
    version used SGD) on :func:`models.train.dncnn_loss`, the paper's residual loss
    ``1/(2N) sum ||R(y) - (y - x)||^2``. The paper profile uses DnCNN's 128 patches of 40 x 40
    (about as many pixels per step as ResGuideNet's 16 of 128 x 128); the smaller profiles use
    their own batch and patch, the same as ResGuideNet's, so that a quick run costs the same
    for both. The iteration count is the profile's for both models (the same budget). The
    authors' final drop of the learning rate to 1e-4 and their eight flip/rotation
    augmentations are not reproduced (both models see the same horizontally flipped patches).
    """
    recipe = {"optimizer": "adam", "lr": 1e-3, "loss": "dncnn"}
    if profile == "paper":
        recipe.update(batch=PAPER_BATCH, patch=PAPER_PATCH)
    return recipe


# --------------------------------------------------------------------------
# MatConvNet (MATLAB v7.3) import


def matlab_filters_to_torch(arr: np.ndarray) -> np.ndarray:
    """Conv filters as h5py reads a MATLAB v7.3 array -> PyTorch Cout x Cin x H x W.

    MATLAB stores the H x W x Cin x Cout filter bank column-major and drops trailing singleton
    dimensions (a last layer with Cout = 1 is H x W x Cin); h5py shows the dimensions
    reversed. Transposing restores MATLAB's indexing; then Cout, Cin go first. MatConvNet's
    vl_nnconv is a correlation, like PyTorch's conv2d, so no spatial flip is needed.
    """
    mat = np.asarray(arr).T  # MATLAB order: H x W [x Cin [x Cout]]
    mat = mat.reshape(mat.shape + (1,) * (4 - mat.ndim))
    return np.ascontiguousarray(mat.transpose(3, 2, 0, 1))


def _mat_string(ds) -> str:
    return "".join(chr(int(c)) for c in np.asarray(ds).ravel())


def _deref_list(h5, ds) -> list:
    return [h5[r] for r in np.asarray(ds).ravel()]


def read_matconvnet_layers(path: str | Path) -> list[dict]:
    """The layers of a MatConvNet simplenn ``net`` saved with ``-v7.3``: [{"type", "name", "weights"}]."""
    import h5py

    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a MATLAB v7.3 (HDF5) file ({exc})") from exc
    with h5:
        if "net" not in h5 or "layers" not in h5["net"]:
            raise ValueError(f"{path}: no net.layers in the file (expected a MatConvNet simplenn model)")
        layers = []
        for group in _deref_list(h5, h5["net"]["layers"]):
            layer = {"type": _mat_string(group["type"]),
                     "name": _mat_string(group["name"]) if "name" in group else "",
                     "weights": []}
            if "weights" in group:
                layer["weights"] = [np.asarray(w, dtype=np.float32) for w in _deref_list(h5, group["weights"])]
            layers.append(layer)
    return layers


def load_dncnn_mat(path: str | Path) -> dict[str, torch.Tensor]:
    """Convert the authors' MatConvNet DnCNN model to a state dict of :class:`DnCNN`.

    Conv layers map in order to ``head``, ``body.<3k>`` and ``tail``. A ``bnorm`` layer after a
    body conv gives that block's batch norm (multipliers, biases, moments [mean, sigma] with
    sigma = sqrt(var + eps)); without one (batch norm folded into the conv, as released)
    the batch norm is set to the identity. The state dict follows the file: a model of another
    depth or channel count gives names or shapes that :class:`DnCNN` rejects when loading.
    """
    path = Path(path)
    layers = read_matconvnet_layers(path)
    convs: list[tuple[dict, dict | None]] = []
    for i, layer in enumerate(layers):
        if layer["type"] == "conv":
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            convs.append((layer, nxt if nxt is not None and nxt["type"] == "bnorm" else None))
        elif layer["type"] not in ("relu", "bnorm"):
            raise ValueError(f"{path}: layer {layer['name'] or i} has type {layer['type']!r}, not conv/bnorm/relu")
    if len(convs) < 2:
        raise ValueError(f"{path}: {len(convs)} conv layers; a DnCNN has at least 3")
    state: dict[str, torch.Tensor] = {}
    for k, (conv, bnorm) in enumerate(convs):
        if len(conv["weights"]) != 2:
            raise ValueError(f"{path}: conv layer {conv['name']} holds {len(conv['weights'])} arrays, expected filters and biases")
        filters, biases = conv["weights"]
        prefix = "head" if k == 0 else "tail" if k == len(convs) - 1 else f"body.{3 * (k - 1)}"
        state[f"{prefix}.weight"] = torch.from_numpy(matlab_filters_to_torch(filters))
        state[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(biases.ravel()))
        if prefix.startswith("body"):
            bn = f"body.{3 * (k - 1) + 1}"
            features = state[f"{prefix}.weight"].shape[0]
            if bnorm is None:
                mult, beta = np.ones(features, np.float32), np.zeros(features, np.float32)
                mean, var = np.zeros(features, np.float32), np.full(features, 1.0 - BN_EPS, np.float32)
            else:
                mult, beta, moments = bnorm["weights"]
                moments = np.asarray(moments).T.reshape(-1, 2)  # MATLAB C x 2: [mean, sigma]
                mean, sigma = moments[:, 0], moments[:, 1]
                var = sigma.astype(np.float64) ** 2 - BN_EPS
                mult, beta = mult.ravel(), beta.ravel()
            state[f"{bn}.weight"] = torch.from_numpy(np.ascontiguousarray(mult, dtype=np.float32))
            state[f"{bn}.bias"] = torch.from_numpy(np.ascontiguousarray(beta, dtype=np.float32))
            state[f"{bn}.running_mean"] = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32))
            state[f"{bn}.running_var"] = torch.from_numpy(np.ascontiguousarray(var, dtype=np.float32))
            state[f"{bn}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


# --------------------------------------------------------------------------
# loading



def load_dncnn_weights(net: DnCNN, path: str | Path) -> str:
    """Load a ``.mat`` (authors') or PyTorch state dict strictly; return the format read."""
    path = Path(path)
    if path.suffix.lower() == ".mat":
        state, fmt = load_dncnn_mat(path), "matconvnet"
    else:
        state, fmt = read_state_dict(path, "DnCNN"), "state_dict"
    problem = first_mismatch(state, net.state_dict())
    if problem is not None:
        raise ValueError(f"{path}: weights do not fit DnCNN ({net.channels} channel(s), "
                         f"{2 + len(net.body) // 3} layers): {problem}")
    net.load_state_dict(state, strict=True)
    return fmt


def _official(tag: str, channels: int, data_root) -> Path:
    """``official-s25`` -> the authors' grayscale model for sigma 25 under the data root."""
    sigma = tag.partition("-s")[2]
    if channels != 1 or not sigma.isdigit():
        raise ValueError(f"DnCNN weights {tag!r}: official weights are named official-sSIGMA (grayscale DnCNN-S)")
    if data_root is None:
        raise WeightsUnavailable(f"dncnn {tag}: official weights are looked up under the data root "
                                 f"(weights/DnCNN/sigma={sigma}.mat); pass --data-root or set RESGUIDE_DATA")
    path = Path(data_root) / "weights" / "DnCNN" / f"sigma={int(sigma)}.mat"
    if not path.is_file():
        raise WeightsUnavailable(f"dncnn {tag}: no official checkpoint at {path}")
    return path


def _factory(channels: int, example: str):
    family = "dncnn" if channels == 1 else "dncnn_color"

    def factory(weights, profile, data_root):
        net = DnCNN(channels=channels)
        if weights.kind == "init":
            return net, {"tag": "init"}
        trained_tags = f"denoise{'-color' if channels == 3 else ''}-sSIGMA"
        if weights.kind == "denoise":  # a model the suite trains itself (Table 5)
            sigma, colour = weights.sigma, weights.colour
            if colour != (channels == 3):
                other = "dncnn_color" if colour else "dncnn"
                raise ValueError(f"{family} has {channels} channel(s); weights {weights!r} are for {other} "
                                 f"(use {family} --weights {denoise_tag(sigma, channels == 3)})")
            return provider.trained(family, weights.tag, profile, lambda: dncnn_init_(DnCNN(channels=channels)),
                                    provider.single_output, data_root, recipe=train_recipe(profile))
        if weights.kind == "rain":  # e.g. the detection study's default for a suite-trained method
            raise WeightsUnavailable(f"{family} is a denoiser: the suite trains it for Gaussian noise "
                                     f"(--weights {trained_tags}), "
                                     f"not for {weights} rain")
        if weights.kind == "default":
            raise WeightsUnavailable(f"this DnCNN needs the authors' weights: pass --weights PATH to {example}, "
                                     "or --weights official-sSIGMA; or the suite-trained model: "
                                     f"--weights {trained_tags}")
        if weights.kind == "official":
            path = _official(weights.tag, channels, data_root)
            fmt = load_dncnn_weights(net, path)
            return net, {"tag": weights.tag, **file_identity(path), "format": fmt}
        path = weights.path
        if not path.is_file():
            raise FileNotFoundError(f"DnCNN weights {str(path)!r}: no such file")
        fmt = load_dncnn_weights(net, path)
        return net, {"tag": "official", **file_identity(path), "format": fmt}

    factory.family = family  # trained by the suite (`benchmark.run train dncnn --sigma N`)
    factory.tasks = ("denoise",)
    factory.channels = channels  # grey only (dncnn) or colour only (dncnn_color)
    return factory


register("dncnn", paper_name="DnCNN", task="denoise",
         description="DnCNN-S, 17 layers, grayscale (Zhang et al. TIP 2017); authors' weights per noise level")(
    _factory(1, "a grayscale DnCNN-S model such as DnCNN/sigma=25.mat (cszn/DnCNN model/specifics/)"))
register("dncnn_color", paper_name="DnCNN (colour)", task="denoise",
         description="DnCNN, 17 layers, 3 channels (Zhang et al. TIP 2017)")(
    _factory(3, "a 17-layer 3-channel DnCNN state dict (.pth) or MatConvNet .mat"))


__all__ = ["DnCNN", "load_dncnn_mat", "load_dncnn_weights", "matlab_filters_to_torch",
           "read_matconvnet_layers", "BN_EPS", "BN_GAMMA_MIN", "dncnn_init_", "train_recipe"]
