"""DID-MDN (Zhang & Patel, "Density-aware Single Image De-raining using a Multi-stream Dense
Network", CVPR 2018), as released in hezhangsprinter/DID-MDN (``models/derain_dense.py``,
``models/derain_residual.py``, ``test.py``). Written from a reading of that release; the
parameter names equal the authors' state dicts so their three ``.pth`` files load strictly.

The authors' test pipeline (``test.py``) chains three networks:

1. ``residual_net`` (their ``Dense_rain_residual``, checkpoint ``residual_heavy/netG_epoch_6.pth``):
   three dense streams (all 3x3 bottlenecks, additive skips, 2 output maps each) + the rainy
   image + a 4-channel label map filled with 0 -> 3x3 conv to 20, a four-level pyramid pooling
   (avg-pool 32/16/8/4 -> 1x1 conv to 1 -> nearest upsampling), 3x3 conv to 3 and tanh.
   ``test.py`` then forms ``residue = input - residual_net(input)``.
2. ``classifier`` (their ``vgg19ca``, ``classification/netG_epoch_9.pth``): VGG19-BN's first
   conv+BN+ReLU (3->64), a 3x3 conv to 24, ReLU, 7x7 average pooling, Linear(127896, 512), ReLU,
   Linear(512, 4). 127896 = 24*73*73 fixes the input to 512x512 (511..517). It is trained with
   targets 0 = heavy, 1 = medium, 2 = light (``datasets/pix2pix_class.py``); the fourth logit is
   never a target. The density label is ``argmax + 1`` (1 heavy, 2 medium, 3 light).
3. ``generator`` (their ``Dense_rain``, ``pre_trained/netG_epoch_9.pth``): the multi-stream dense
   network. Streams ``dense0`` (3x3 bottlenecks, down x2), ``dense1`` (5x5, down x4), ``dense2``
   (7x7, down x8): six bottleneck dense blocks (BN-ReLU-1x1 conv to 4g, BN-ReLU-kxk conv to g,
   concatenated to the input) with transition layers (BN-ReLU-1x1 transposed conv, then avg-pool,
   nearest x2 upsampling or nothing), concatenating U-Net-like skips, then five copies of a side map
   (``conv11`` on the first-level features, LeakyReLU, upsampled; ``conv21``..``conv61`` exist but
   the release's forward uses ``conv11`` five times) and the input: 12 channels per stream.
   concat(stream0, input, stream1, stream2, 8-channel label map) = 47 -> 3x3 conv 47->47, pyramid
   pooling (32/16/8/4, 1x1 conv to 2 each) -> 55 -> 3x3 conv to 3, tanh = the rain residual;
   clean = input - residual -> 7x7 conv to 8, LeakyReLU, 3x3 conv to 3, tanh.

Several modules exist in the checkpoints but not in any forward path (the generator streams'
``conv_refin``/``refine3``/``batchnorm*``, ``conv21``..``conv61``, the residual net's top-level
``dense_block*``/``trans_block*``, ...); they are kept so the files load strictly and are
counted separately by :func:`parameter_breakdown`.

Evaluation protocol reproduced in ``forward`` (``protocol="authors"``, the default):
the image is resized to 512x512 (``transforms.Scale(512)``, PIL bilinear), mapped to [-1, 1]
(Normalize(0.5, 0.5)), run through the three networks, and the generator's clean image is
min-max stretched to [0, 1] (``norm_range(tensor, None)`` in ``test.py``); we then resize back to
the input size. ``test.py`` never calls ``.eval()`` (it even calls ``netG.train()``), so every
batch-norm layer normalises with the statistics of the image itself (batch of 1); that is
``bn_mode="batch"`` (default; per image, so a batch of N gives the same as N single images).
``bn_mode="running"`` uses the stored running statistics instead.
``protocol="native"`` runs the two dense networks at the input resolution instead (reflection
padded to a multiple of 32 -- the deepest stream downsamples by 8 and the pyramid pools by 32 --
and cropped back); only the classifier still sees the residue resized to 512x512.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import file_identity, first_mismatch, read_state_dict

#: The authors' checkpoints, relative to a folder laid out like their repository.
AUTHOR_FILES = {
    "generator": "pre_trained/netG_epoch_9.pth",
    "classifier": "classification/netG_epoch_9.pth",
    "residual_net": "residual_heavy/netG_epoch_6.pth",
}
DENSITY_NAMES = ("heavy", "medium", "light", "unused")
CLASSIFIER_SIZE = 512
PAD_MULTIPLE = 32


# --------------------------------------------------------------------------
# building blocks


class _BN(nn.BatchNorm2d):
    """BatchNorm2d whose normalisation statistics can come from each image itself (the authors'
    test script runs the networks in training mode with batch size 1) or from the running
    averages. Same parameters and buffers as nn.BatchNorm2d."""

    batch_stats = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_stats:  # = BN in training mode on a batch of one, image by image (test and training)
            track = self.training and self.track_running_stats
            return F.instance_norm(x, self.running_mean if track else None, self.running_var if track else None,
                                   self.weight, self.bias, use_input_stats=True, momentum=self.momentum,
                                   eps=self.eps)
        if self.training:
            return super().forward(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Bottleneck(nn.Module):
    """Dense layer: BN-ReLU-1x1 conv (to 4*growth) - BN-ReLU-kxk conv (to growth), concatenated."""

    def __init__(self, cin: int, growth: int, kernel: int = 3):
        super().__init__()
        inter = 4 * growth
        self.bn1 = _BN(cin)
        self.conv1 = nn.Conv2d(cin, inter, 1, bias=False)
        self.bn2 = _BN(inter)
        self.conv2 = nn.Conv2d(inter, growth, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        return torch.cat([x, y], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 transposed conv, then 'down' (2x2 average pool), 'up' (nearest x2) or 'same'."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        self.bn1 = _BN(cin)
        self.conv1 = nn.ConvTranspose2d(cin, cout, 1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        if self.mode == "down":
            return F.avg_pool2d(y, 2)
        if self.mode == "up":
            return F.interpolate(y, scale_factor=2, mode="nearest")
        return y


def _leaky(x):
    return F.leaky_relu(x, 0.2)


class DenseStream(nn.Module):
    """One dense stream: six bottleneck blocks with transitions, skips from level 2 into block 5's
    input and from level 1 into block 6's input ('cat' in the generator, 'add' in the residual net).

    ``side`` (generator streams): five copies of LeakyReLU(conv11(level-1 features)) upsampled, and the
    input, are appended to the output. ``extras``: modules that only exist in the checkpoint.
    """

    def __init__(self, blocks, transitions, kernel: int, skip: str, side=None, extras: str | None = None):
        super().__init__()
        self.skip = skip
        for i, ((cin, g), (tin, tout, mode)) in enumerate(zip(blocks, transitions), start=1):
            setattr(self, f"dense_block{i}", Bottleneck(cin, g, kernel))
            setattr(self, f"trans_block{i}", Transition(tin, tout, mode))
        self.has_side = side is not None
        if extras is not None:
            self.conv_refin = nn.Conv2d(11, 20, 3, 1, 1)
        if side is not None:
            for name, c in zip(("conv11", "conv21", "conv31", "conv41", "conv51", "conv61"), side):
                setattr(self, name, nn.Conv2d(c, 1, 3, 1, 1))
        if extras == "pyramid":
            for name in ("conv1010", "conv1020", "conv1030", "conv1040"):
                setattr(self, name, nn.Conv2d(20, 1, 1))
        if extras is not None:
            self.refine3 = nn.Conv2d(24, 3, 3, 1, 1)
            self.batchnorm20 = _BN(20)
            self.batchnorm1 = _BN(1)

    def forward(self, x):
        x1 = self.trans_block1(self.dense_block1(x))
        x2 = self.trans_block2(self.dense_block2(x1))
        x3 = self.trans_block3(self.dense_block3(x2))
        x4 = self.trans_block4(self.dense_block4(x3))
        x4 = torch.cat([x4, x2], 1) if self.skip == "cat" else x4 + x2
        x5 = self.trans_block5(self.dense_block5(x4))
        x5 = torch.cat([x5, x1], 1) if self.skip == "cat" else x5 + x1
        x6 = self.trans_block6(self.dense_block6(x5))
        if not self.has_side:
            return x6
        s = F.interpolate(_leaky(self.conv11(x1)), size=x6.shape[2:], mode="nearest")
        return torch.cat([x6, s, s, s, s, s, x], 1)


_GEN_BLOCKS_12 = [(3, 13), (8, 16), (16, 16), (16, 16), (32, 8), (16, 8)]
_GEN_SIDE_12 = (8, 16, 16, 32, 16, 8)
_RES_BLOCKS_12 = [(3, 13), (8, 16), (16, 16), (16, 16), (16, 8), (8, 8)]


def _pyramid(x9, convs, size):
    maps = [F.interpolate(_leaky(conv(F.avg_pool2d(x9, k))), size=size, mode="nearest")
            for conv, k in zip(convs, (32, 16, 8, 4))]
    return torch.cat(maps + [x9], 1)


def _label_map(label: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    n, _, h, w = like.shape
    return label.to(like.dtype).view(n, 1, 1, 1).expand(n, channels, h, w)


class DenseRain(nn.Module):
    """The multi-stream density-aware generator (authors' ``Dense_rain``). Input in [-1, 1] and a
    density label per image (1 heavy, 2 medium, 3 light); returns (rain residual, clean), both tanh."""

    def __init__(self):
        super().__init__()
        self.conv_refin = nn.Conv2d(47, 47, 3, 1, 1)
        for name in ("conv1010", "conv1020", "conv1030", "conv1040"):
            setattr(self, name, nn.Conv2d(47, 2, 1))
        self.refine3 = nn.Conv2d(47 + 8, 3, 3, 1, 1)
        self.refineclean1 = nn.Conv2d(3, 8, 7, 1, 3)
        self.refineclean2 = nn.Conv2d(8, 3, 3, 1, 1)
        self.batchnorm20 = _BN(20)  # unused in the release's forward
        self.batchnorm1 = _BN(1)
        self.dense0 = DenseStream(
            [(3, 5), (4, 8), (12, 4), (12, 4), (24, 8), (8, 8)],
            [(8, 4, "down"), (12, 12, "same"), (16, 12, "same"), (16, 12, "same"), (32, 4, "same"), (16, 4, "up")],
            kernel=3, skip="cat", side=(4, 12, 12, 24, 8, 8))
        self.dense1 = DenseStream(
            _GEN_BLOCKS_12,
            [(16, 8, "down"), (24, 16, "down"), (32, 16, "same"), (32, 16, "same"), (40, 8, "up"), (24, 4, "up")],
            kernel=5, skip="cat", side=_GEN_SIDE_12, extras="plain")
        self.dense2 = DenseStream(
            _GEN_BLOCKS_12,
            [(16, 8, "down"), (24, 16, "down"), (32, 16, "down"), (32, 16, "up"), (40, 8, "up"), (24, 4, "up")],
            kernel=7, skip="cat", side=_GEN_SIDE_12, extras="plain")

    def forward(self, x, label):
        x3, x2, x1 = self.dense2(x), self.dense1(x), self.dense0(x)
        x8 = torch.cat([x1, x, x2, x3, _label_map(label, 8, x)], 1)
        x9 = _leaky(self.conv_refin(x8))
        feats = _pyramid(x9, (self.conv1010, self.conv1020, self.conv1030, self.conv1040), x9.shape[2:])
        residual = torch.tanh(self.refine3(feats))
        clean = x - residual
        clean = torch.tanh(self.refineclean2(_leaky(self.refineclean1(clean))))
        return residual, clean


class DenseRainResidual(nn.Module):
    """The residual estimator used to feed the classifier (authors' ``Dense_rain_residual``)."""

    def __init__(self):
        super().__init__()
        # top-level dense blocks: in the checkpoint, never run
        unused_blocks = [(3, 13), (8, 16), (16, 32), (16, 16), (16, 8), (8, 8)]
        unused_trans = [(16, 8), (24, 16), (48, 16), (32, 16), (24, 8), (16, 4)]
        for i, ((cin, g), (tin, tout)) in enumerate(zip(unused_blocks, unused_trans), start=1):
            setattr(self, f"dense_block{i}", Bottleneck(cin, g, 3))
            setattr(self, f"trans_block{i}", Transition(tin, tout, "same"))
        self.conv_refin = nn.Conv2d(13, 20, 3, 1, 1)
        for name in ("conv1010", "conv1020", "conv1030", "conv1040"):
            setattr(self, name, nn.Conv2d(20, 1, 1))
        self.refine3 = nn.Conv2d(20 + 4, 3, 3, 1, 1)
        self.batchnorm20 = _BN(20)
        self.batchnorm1 = _BN(1)
        self.dense0 = DenseStream(
            [(3, 5), (4, 8), (12, 4), (12, 4), (12, 8), (4, 8)],
            [(8, 4, "same"), (12, 12, "same"), (16, 12, "same"), (16, 12, "same"), (20, 4, "same"), (12, 2, "same")],
            kernel=3, skip="add")
        self.dense1 = DenseStream(
            _RES_BLOCKS_12,
            [(16, 8, "down"), (24, 16, "same"), (32, 16, "same"), (32, 16, "same"), (24, 8, "same"), (16, 2, "up")],
            kernel=3, skip="add", extras="pyramid")
        self.dense2 = DenseStream(
            _RES_BLOCKS_12,
            [(16, 8, "down"), (24, 16, "down"), (32, 16, "same"), (32, 16, "same"), (24, 8, "up"), (16, 2, "up")],
            kernel=3, skip="add", extras="pyramid")

    def forward(self, x, label):
        x3, x2, x1 = self.dense2(x), self.dense1(x), self.dense0(x)
        x8 = torch.cat([x1, x, x2, x3, _label_map(label, 4, x)], 1)
        x9 = _leaky(self.conv_refin(x8))
        feats = _pyramid(x9, (self.conv1010, self.conv1020, self.conv1030, self.conv1040), x9.shape[2:])
        return torch.tanh(self.refine3(feats))


class SeededLinear(nn.Module):
    """A linear layer fixed at a random initialisation regenerated from ``seed``: weights and bias
    uniform in +-1/sqrt(cin) (nn.Linear's default law) from a torch CPU generator. They are buffers
    that are not saved: a DID-MDN trained here keeps its 127896 x 512 layer (262 MB) at this draw, so
    its weights file stays small."""

    def __init__(self, cin: int, cout: int, seed: int):
        super().__init__()
        self.seed = int(seed)
        g = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / math.sqrt(cin)
        self.register_buffer("weight", (torch.rand(cout, cin, generator=g) * 2 - 1) * bound, persistent=False)
        self.register_buffer("bias", (torch.rand(cout, generator=g) * 2 - 1) * bound, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class DensityClassifier(nn.Module):
    """Rain-density classifier (authors' ``vgg19ca``); 512x512 input in [-1, 1] scale, 4 logits.
    With ``projection_seed`` its Linear(127896, 512) is a :class:`SeededLinear` (the suite-trained
    model); without, an ordinary layer (the authors' weights)."""

    def __init__(self, projection_seed: int | None = None):
        super().__init__()
        self.feature = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1), _BN(64), nn.ReLU())  # vgg19_bn.features[0:3]
        self.conv16 = nn.Conv2d(64, 24, 3, 1, 1)
        self.dense_classifier = (nn.Linear(24 * 73 * 73, 512) if projection_seed is None  # 127896
                                 else SeededLinear(24 * 73 * 73, 512, projection_seed))
        self.dense_classifier1 = nn.Linear(512, 4)

    def forward(self, x):
        if not (511 <= x.shape[2] <= 517 and 511 <= x.shape[3] <= 517):
            raise ValueError(f"the DID-MDN classifier takes 512x512 inputs, got {tuple(x.shape[2:])}")
        y = F.relu(self.conv16(self.feature(x)))
        y = F.avg_pool2d(y, 7).flatten(1)
        return self.dense_classifier1(F.relu(self.dense_classifier(y)))


# --------------------------------------------------------------------------
# the whole test pipeline


def _resize(x, size):
    if tuple(x.shape[2:]) == tuple(size):
        return x
    # antialiased resizing has no bfloat16 kernel on the CPU: resize in float32, keep the caller's dtype
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True).to(x.dtype)


def _stretch(x):
    """The authors' norm_range(t, None): per-image min-max stretch to [0, 1]."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


class DIDMDN(nn.Module):
    """The authors' test pipeline: residual net -> density classifier -> density-aware generator.

    State dict keys: ``generator.*``, ``classifier.*``, ``residual_net.*``, each followed by the
    authors' own key names.
    """

    def __init__(self, protocol: str = "authors", bn_mode: str = "batch", stretch: bool = True,
                 projection_seed: int | None = None):
        super().__init__()
        if protocol not in ("authors", "native"):
            raise ValueError(f"protocol must be 'authors' or 'native', not {protocol!r}")
        self.protocol = protocol
        self.stretch = stretch
        self.generator = DenseRain()
        self.classifier = DensityClassifier(projection_seed)
        self.residual_net = DenseRainResidual()
        self.set_bn_mode(bn_mode)
        self.last_density: torch.Tensor | None = None  # 0 heavy, 1 medium, 2 light (3 unused)

    def set_bn_mode(self, mode: str) -> None:
        if mode not in ("batch", "running"):
            raise ValueError(f"bn_mode must be 'batch' or 'running', not {mode!r}")
        self.bn_mode = mode
        for m in self.modules():
            if isinstance(m, _BN):
                m.batch_stats = mode == "batch"

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Class index per image (0 heavy, 1 medium, 2 light, 3 never trained) for x in [-1, 1]."""
        residue = x - self.residual_net(x, torch.zeros(x.shape[0], device=x.device))
        logits = self.classifier(_resize(residue, (CLASSIFIER_SIZE, CLASSIFIER_SIZE)))
        return logits.argmax(1)

    def forward(self, rainy: torch.Tensor, density: torch.Tensor | None = None) -> torch.Tensor:
        """Derained ``rainy`` (N x 3 x H x W in [0, 1]); ``density`` (class indices, 0 heavy .. 2 light)
        replaces the classifier's choice, to score the generator given the true label."""
        n, _, h, w = rainy.shape
        if self.protocol == "authors":
            x = _resize(rainy, (CLASSIFIER_SIZE, CLASSIFIER_SIZE))
        else:
            ph, pw = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
            x = rainy
            while ph or pw:  # reflection padding needs pad < size; repeat for tiny images
                sh, sw = min(ph, x.shape[2] - 1), min(pw, x.shape[3] - 1)
                x = F.pad(x, (0, sw, 0, sh), mode="reflect")
                ph, pw = ph - sh, pw - sw
        x = x * 2.0 - 1.0
        cls = self.density(x) if density is None else density.to(device=x.device, dtype=torch.int64)
        self.last_density = cls
        _, clean = self.generator(x, (cls + 1).float())
        if self.protocol == "authors":
            out = _stretch(clean) if self.stretch else (clean + 1.0) / 2.0
            out = _resize(out, (h, w))
        else:
            out = clean[:, :, :h, :w]
            out = _stretch(out) if self.stretch else (out + 1.0) / 2.0
        return out.clamp(0.0, 1.0)

    def parameter_counts(self) -> dict[str, int]:
        """Same conventions as models.registry.count_parameters (all three networks)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        params = sum(p.numel() for p in self.parameters())
        buffers = sum(b.numel() for k, b in self.named_buffers() if not k.endswith("num_batches_tracked"))
        return {"trainable": trainable, "all_variables": params + buffers}


def _count(module: nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in module.parameters())
    stats = sum(b.numel() for k, b in module.named_buffers() if not k.endswith("num_batches_tracked"))
    return params, stats


def _used_params(net: nn.Module, run) -> int:
    """Parameters of the modules that a forward pass actually calls."""
    called: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: called.add(id(mod))) for m in net.modules()]
    try:
        with torch.no_grad():
            run()
    finally:
        for hk in hooks:
            hk.remove()
    return sum(p.numel() for m in net.modules() if id(m) in called for p in m.parameters(recurse=False))


def parameter_breakdown(net: DIDMDN | None = None) -> dict[str, int]:
    """Parameter and BN-statistic counts per network and per generator stream, plus the
    parameters the test-time forward actually uses."""
    net = net or DIDMDN()
    out: dict[str, int] = {}
    for name in ("generator", "classifier", "residual_net"):
        p, s = _count(getattr(net, name))
        out[f"{name}.params"] = p
        out[f"{name}.bn_stats"] = s
    for k in ("dense0", "dense1", "dense2"):
        out[f"generator.{k}.params"] = _count(getattr(net.generator, k))[0]
    x = torch.zeros(1, 3, 64, 64)
    lab = torch.ones(1)
    out["generator.used_params"] = _used_params(net.generator, lambda: net.generator(x, lab))
    out["residual_net.used_params"] = _used_params(net.residual_net, lambda: net.residual_net(x, lab))
    return out


# --------------------------------------------------------------------------
# weights


def _fit(module: nn.Module, state: dict, what: str) -> dict:
    """Strict check; the authors' PyTorch 0.3 files carry no num_batches_tracked, which is filled in."""
    model = module.state_dict()
    state = dict(state)
    for k, v in model.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v.clone()
    problem = first_mismatch(state, model)
    if problem is not None:
        raise ValueError(f"{what}: weights do not fit DID-MDN: {problem}")
    return state


def load_did_mdn_weights(net: DIDMDN, path: str | Path) -> dict:
    """Load either a folder laid out like the authors' repository (``AUTHOR_FILES``) or one file
    holding all three networks under the prefixes ``generator.`` / ``classifier.`` / ``residual_net.``.
    ValueError names the file and the first tensor that does not fit. Returns the weights identity."""
    path = Path(path)
    if path.is_dir():
        files = {name: path / rel for name, rel in AUTHOR_FILES.items()}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"DID-MDN weights folder {path}: missing {', '.join(missing)}")
        for name, f in files.items():
            sub = getattr(net, name)
            sub.load_state_dict(_fit(sub, read_state_dict(f), f"{f} ({name})"), strict=True)
        return {"path": str(path), "files": {name: file_identity(f) for name, f in files.items()}}
    if not path.is_file():
        raise FileNotFoundError(f"did_mdn weights {str(path)!r}: no such file or folder")
    state = _fit(net, read_state_dict(path), str(path))
    net.load_state_dict(state, strict=True)
    return file_identity(path)


__all__ = ["DIDMDN", "DenseRain", "DenseRainResidual", "DensityClassifier", "DenseStream",
           "load_did_mdn_weights", "parameter_breakdown", "AUTHOR_FILES", "DENSITY_NAMES", "SeededLinear"]
