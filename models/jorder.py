"""JORDER baseline (Yang et al., CVPR 2017, "Deep Joint Rain Detection and Removal from a Single
Image"), as the authors released it for Rain100L: ``deploy_rain_removal_single.prototxt`` with
``rain_removal_single_light.caffemodel`` (demo_JORDER_release, ``test_rain_removal_light.m``).

Network (the deploy prototxt, layer by layer; all convolutions 3x3, stride 1, pad 1, no dilation)
-----------------------------------------------------------------------------------------------
Input ``data`` is ONE channel (the luma Y in [0, 1]); ``Split_data`` copies it to ``DummyData1``.

    Convolution1 (1 -> 64) + ReLU1 (in place)                  c1 = relu(conv1(x))
    five residual units u = 1..5 (Convolution2 .. Convolution11, Eltwise1 .. Eltwise5):
        Convolution(2u) (64 -> 64) + ReLU(2u)                    t = relu(conv_2u(e))
        Convolution(2u+1) (64 -> 64), no ReLU                    t = conv_(2u+1)(t)
        Eltwise(u) SUM coeff 0.5, 0.5 + ReLU(2u+1) (in place)    e = relu(0.5 e + 0.5 t)
      with e = c1 before unit 1
    Eltwise6 SUM coeff 0.5, 0.5 of Convolution1 and Eltwise5     g = 0.5 c1 + 0.5 e   (no ReLU)
    Convolution12 (64 -> 1), no ReLU                             r = conv12(g)
    Eltwise7 SUM (coeff 1, 1) of DummyData1 and Convolution12    out = x + r
    z1/z2/z3_Eltwise7: Split copies of the output (the demo reads the first)

Because ReLU1 works in place, the ``Convolution1`` that Eltwise1 and Eltwise6 read is already
rectified. This released "single" network is a plain residual CNN on Y: it has none of the paper's
rain-mask / streak branches, dilated convolutions or recurrent stages (those are in the paper's
full JORDER-R model, not in this deploy file). Parameters are named after the Caffe layers
(``Convolution1.weight`` ...), and blob 0 / blob 1 of each layer are weight / bias.

Parameter count: 370,497 trainable (weights and biases). The paper's 369,792 is the count without
the 705 biases (64 x 11 + 1): 576 + 10 x 36,864 + 576 = 369,792 -- the weights only.

Pre/post-processing (inside ``forward``, following the authors' MATLAB demo)
-----------------------------------------------------------------------------
* RGB -> YCbCr with MATLAB's ``rgb2ycbcr`` on the uint8 image (so Y, Cb, Cr are rounded to 8-bit
  levels); the network sees ``Y / 255`` (Y in [16, 235]); no mean subtraction, no BGR reordering.
* ``matcaffe_rain_joint_one_direction``: the Y image is padded by 20 pixels (replicate), cut into
  100 x 100 crops every 80 pixels (the last crop of a row/column moved back to end at the border),
  each crop runs through the network, its 10-pixel border is dropped, and overlapping results are
  averaged; the padding is then cut off.
* matcaffe hands a MATLAB H x W array to Caffe as a blob of height W and width H, i.e. Caffe runs the
  network on the TRANSPOSED crop (the weights were learned that way). ``forward`` transposes every
  crop before the network and back after it (``transpose=True``).
* The result is rounded to uint8 (``uint8(im_res_final * 255)``, saturating) as the demo does before
  scoring. The demo's PSNR/SSIM are on Y only; its colour image borrows the ground truth's Cb/Cr,
  which a derainer cannot know, so here the derained Y is recombined with the RAINY image's Cb/Cr
  (``ycbcr2rgb``) and the RGB result, clipped to [0, 1], is returned. The suite's Y metrics then
  recover the network's Y up to the RGB rounding.

Trained here (``python -m benchmark.run train jorder --rain light|heavy``)
--------------------------------------------------------------------------
The CVPR'17 release has no training code or solver file. :func:`train_recipe` takes the recipe of
the same authors' later PyTorch release (JORDER-E, TPAMI 2019: ``src/train.sh`` and ``option.py``):
Adam (betas 0.9 / 0.999) at learning rate 1e-4, the L1 loss, batches of 8 patches of 64 x 64, PyTorch's
default initialisation, no decay within their 200 epochs. The network sees Y only, so the loss is the
L1 error of Y (:func:`training_outputs` puts the derained Y back with the rainy input's Cb/Cr, the
same recombination as ``forward`` without the 8-bit rounding and the tiling).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import models.provider as provider
from models.caffe import as_list, read_caffemodel, read_prototxt
from models.colour import rgb2ycbcr, ycbcr2rgb
from models.registry import file_identity, first_mismatch, official_weights, register

FEATURES = 64
UNITS = 5            # residual units: Convolution2..Convolution11
PAPER_PARAMS = 369_792
PROTOTXT = "deploy_rain_removal_single.prototxt"
PAPER_BATCH = 8      # JORDER-E's train.sh
PAPER_PATCH = 64

# matcaffe_rain_joint_one_direction.m
PAD = 20
CROP = 100
STEP = 80
BORDER = 10


def _uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``uint8(x * 255) / 255``: saturate to [0, 255], round half away from zero."""
    return torch.floor((x * 255.0).clamp(0.0, 255.0) + 0.5) / 255.0


def _starts(size: int, crop: int, step: int) -> list[int]:
    """0-based crop origins of ``for ii = 1:step:size`` with the last crops moved back inside."""
    return [i if i + crop <= size else size - crop for i in range(0, size, step)]


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


class _CropNetwork(nn.Module):
    """``JORDER._net_image`` of one model as a module of its own, for compiling it alone."""

    def __init__(self, jorder: "JORDER"):
        super().__init__()
        self.jorder = jorder

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.jorder._net_image(y)


class JORDER(nn.Module):
    """The authors' released single-image JORDER network on Y, with their test-time processing.

    ``transpose``: run the network on transposed crops, as matcaffe does (see the module doc).
    ``tiled``: the demo's 100 x 100 overlapping crops; False runs the whole (padded) image at once.
    ``quantize``: 8-bit Y/Cb/Cr in and 8-bit Y out, as the demo's uint8 images.
    ``chunk``: how many crops go through the network at once.
    """

    def __init__(self, features: int = FEATURES, transpose: bool = True, tiled: bool = True,
                 quantize: bool = True, chunk: int = 16):
        super().__init__()
        self.features = features
        self.transpose = transpose
        self.tiled = tiled
        self.quantize = quantize
        self.chunk = chunk
        f = features
        self.Convolution1 = _conv(1, f)
        for k in range(2, 2 * UNITS + 2):
            setattr(self, f"Convolution{k}", _conv(f, f))
        self.Convolution12 = _conv(f, 1)

    # ----------------------------------------------------------------- the Caffe network
    def net(self, x: torch.Tensor) -> torch.Tensor:
        """The deploy network on an N x 1 x H x W blob in Caffe's orientation: Eltwise7."""
        c1 = F.relu(self.Convolution1(x))
        e = c1
        for u in range(1, UNITS + 1):
            t = F.relu(getattr(self, f"Convolution{2 * u}")(e))
            t = getattr(self, f"Convolution{2 * u + 1}")(t)
            e = F.relu(0.5 * e + 0.5 * t)
        g = 0.5 * c1 + 0.5 * e
        return x + self.Convolution12(g)

    def _net_image(self, y: torch.Tensor) -> torch.Tensor:
        """The network on an image-oriented crop batch (transposed for Caffe when asked)."""
        if self.transpose:
            return self.net(y.transpose(-1, -2)).transpose(-1, -2)
        return self.net(y)

    def derain_y(self, y: torch.Tensor) -> torch.Tensor:
        """N x 1 x H x W luma in [0, 1] -> derained luma, unclipped (the demo's ``im_res_final``)."""
        n, _, h, w = y.shape
        padded = F.pad(y, (PAD, PAD, PAD, PAD), mode="replicate")
        if not self.tiled:
            return self._net_image(padded)[:, :, PAD:PAD + h, PAD:PAD + w]
        rh, rw = padded.shape[-2:]
        ch, cw = min(CROP, rh), min(CROP, rw)  # the demo needs images of at least 60 x 60
        origins = [(i, j) for i in _starts(rh, ch, STEP) for j in _starts(rw, cw, STEP)]
        acc = torch.zeros_like(padded)
        weight = torch.zeros_like(padded[:1, :1])
        for k in range(0, len(origins), self.chunk):
            part = origins[k:k + self.chunk]
            crops = torch.cat([padded[:, :, i:i + ch, j:j + cw] for i, j in part], dim=0)
            out = self._net_image(crops)
            for m, (i, j) in enumerate(part):
                res = out[m * n:(m + 1) * n, :, BORDER:ch - BORDER, BORDER:cw - BORDER]
                acc[:, :, i + BORDER:i + ch - BORDER, j + BORDER:j + cw - BORDER] += res
                weight[:, :, i + BORDER:i + ch - BORDER, j + BORDER:j + cw - BORDER] += 1.0
        acc = acc[:, :, PAD:PAD + h, PAD:PAD + w]
        weight = weight[:, :, PAD:PAD + h, PAD:PAD + w]
        if bool((weight == 0).any()):  # cannot happen with PAD >= BORDER and STEP <= CROP - 2 * BORDER
            raise RuntimeError("JORDER tiling left pixels uncovered")
        return acc / weight

    def compile_parts(self, compile_fn) -> "JORDER":
        """A copy of this model whose crop network goes through ``compile_fn`` (a module -> module
        compiler such as :func:`benchmark.inference.compile_for_inference`). The crop loop stays in
        Python: compiled whole, Dynamo unrolls it into one graph per image size, which at 500x500
        had not compiled after 10 minutes. Here each chunk shape compiles once (two at most per
        image size: full chunks and the rest). The copy shares the weights; this model is not
        changed."""
        twin = copy.copy(self)
        object.__setattr__(twin, "_net_image", compile_fn(_CropNetwork(self)))
        return twin

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W RGB in [0, 1] -> derained RGB in [0, 1]."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"JORDER expects N x 3 x H x W RGB, got {tuple(rgb.shape)}")
        ycc = rgb2ycbcr(rgb.double())
        if self.quantize:
            ycc = _uint8_levels(ycc)
        y = self.derain_y(ycc[:, :1].to(rgb.dtype)).double()
        if self.quantize:
            y = _uint8_levels(y)
        out = ycbcr2rgb(torch.cat([y, ycc[:, 1:]], dim=1)).clamp(0.0, 1.0)
        return out.to(rgb.dtype)


# --------------------------------------------------------------------------- the prototxt

def expected_layers(features: int = FEATURES) -> list[dict]:
    """The deploy graph ``JORDER.net`` implements, layer by layer, as (name, type, bottoms, tops,
    parameters) -- what ``check_prototxt`` compares the authors' file with."""
    def conv(k, bottom, cout):
        return {"name": f"Convolution{k}", "type": "Convolution", "bottom": [bottom], "top": [f"Convolution{k}"],
                "num_output": cout, "kernel_size": 3, "pad": 1, "stride": 1, "dilation": 1, "group": 1}

    def relu(k, blob):
        return {"name": f"ReLU{k}", "type": "ReLU", "bottom": [blob], "top": [blob]}

    def elt(k, a, b, coeff):
        return {"name": f"Eltwise{k}", "type": "Eltwise", "bottom": [a, b], "top": [f"Eltwise{k}"],
                "operation": "SUM", "coeff": coeff}

    layers = [{"name": "Split_data", "type": "Split", "bottom": ["data"], "top": ["DummyData1"]},
              conv(1, "DummyData1", features), relu(1, "Convolution1")]
    prev = "Convolution1"
    for u in range(1, UNITS + 1):
        layers += [conv(2 * u, prev, features), relu(2 * u, f"Convolution{2 * u}"),
                   conv(2 * u + 1, f"Convolution{2 * u}", features),
                   elt(u, prev, f"Convolution{2 * u + 1}", [0.5, 0.5]), relu(2 * u + 1, f"Eltwise{u}")]
        prev = f"Eltwise{u}"
    layers += [elt(6, "Convolution1", prev, [0.5, 0.5]), conv(12, "Eltwise6", 1),
               elt(7, "DummyData1", "Convolution12", [])]
    layers += [{"name": f"z{k}_Eltwise7", "type": "Split", "bottom": ["Eltwise7"], "top": [f"z{k}_Eltwise7"]}
               for k in (1, 2, 3)]
    return layers


def _describe(layer: dict) -> dict:
    d = {"name": layer.get("name"), "type": layer.get("type"),
         "bottom": as_list(layer.get("bottom")), "top": as_list(layer.get("top"))}
    if d["type"] == "Convolution":
        p = layer.get("convolution_param", {})

        def one(key, default):  # kernel_size / pad / stride / dilation are repeated fields in Caffe
            values = as_list(p.get(key))
            return values[0] if len(values) == 1 else (default if not values else values)

        d.update(num_output=p.get("num_output"), kernel_size=one("kernel_size", None), pad=one("pad", 0),
                 stride=one("stride", 1), dilation=one("dilation", 1), group=p.get("group", 1))
        if p.get("bias_term", True) is not True:
            d["bias_term"] = p.get("bias_term")
    elif d["type"] == "Eltwise":
        p = layer.get("eltwise_param", {})
        d.update(operation=p.get("operation", "SUM"), coeff=[float(c) for c in as_list(p.get("coeff"))])
    return d


def check_prototxt(proto: dict | str | Path, features: int = FEATURES) -> None:
    """ValueError naming the first layer where a deploy prototxt (parsed, or a path) differs from
    the graph ``JORDER`` implements."""
    source = "prototxt"
    if not isinstance(proto, dict):
        source = str(proto)
        proto = read_prototxt(proto)
    layers = as_list(proto.get("layer")) or as_list(proto.get("layers"))
    want = expected_layers(features)
    for k, (ours, theirs) in enumerate(zip(want, layers)):
        got = _describe(theirs)
        if got != ours:
            raise ValueError(f"{source}: layer {k} {got.get('name')!r} differs from the JORDER graph: "
                             f"file {got} vs ours {ours}")
    if len(layers) != len(want):
        raise ValueError(f"{source}: {len(layers)} layers, the JORDER graph has {len(want)}")
    shape = proto.get("input_shape", {}).get("dim")
    if shape is not None and as_list(shape)[1:2] != [1]:
        raise ValueError(f"{source}: input has {as_list(shape)[1:2]} channels, JORDER takes 1 (Y)")


# --------------------------------------------------------------------------- weights

def caffe_state(blobs: dict, source: str) -> dict[str, torch.Tensor]:
    """Caffe blobs ``{layer: [weight, bias]}`` as a state dict ``{layer.weight, layer.bias}``."""
    state = {}
    for layer, arrays in blobs.items():
        if len(arrays) != 2:
            raise ValueError(f"{source}: layer {layer!r} holds {len(arrays)} blobs, a convolution "
                             "with bias holds 2 (weight, bias)")
        state[f"{layer}.weight"] = torch.from_numpy(arrays[0].astype("float32"))
        state[f"{layer}.bias"] = torch.from_numpy(arrays[1].astype("float32"))
    return state


def load_caffe(net: JORDER, caffemodel_path: str | Path) -> dict:
    """Copy the authors' caffemodel into ``net`` by layer name; ValueError names the file and the
    first tensor whose shape (or presence) differs. Returns the weights' identity."""
    path = Path(caffemodel_path)
    state = caffe_state(read_caffemodel(path), str(path))
    problem = first_mismatch(state, net.state_dict())
    if problem is not None:
        raise ValueError(f"{path}: weights do not fit JORDER: {problem}")
    net.load_state_dict(state, strict=True)
    return file_identity(path)


def train_recipe(profile: str) -> dict:
    """TrainConfig overrides for training JORDER the authors' way (their JORDER-E release; the CVPR'17
    release has no training code): Adam at 1e-4 on the L1 error of Y. The paper profile uses their
    8 patches of 64 x 64; the smaller profiles keep the profile's batch and patch, like DDN."""
    recipe = {"optimizer": "adam", "lr": 1e-4, "loss": "l1_y"}
    if profile == "paper":
        recipe.update(batch=PAPER_BATCH, patch=PAPER_PATCH)
    return recipe


def training_outputs(net: JORDER, rgb: torch.Tensor) -> list[torch.Tensor]:
    """The output supervised in training, differentiable: the network on the batch's Y (in the
    orientation ``net`` runs at test time), recombined with the input's Cb/Cr; unclipped floats."""
    ycc = rgb2ycbcr(rgb)
    y = net._net_image(ycc[:, :1])
    return [ycbcr2rgb(torch.cat([y, ycc[:, 1:]], dim=1))]


@register("jorder", paper_name="JORDER",
          description="JORDER (Yang et al. CVPR 2017), the authors' released single-image network on Y "
                      "(deploy_rain_removal_single) with their tiled test procedure; trained here, or the "
                      "authors' light-rain Caffe weights")
def build_jorder(weights, profile, data_root):
    net = JORDER()
    if weights.kind == "init":
        return net, {"tag": "init"}
    if weights.trained_here:
        return provider.trained("jorder", weights.tag or "light", profile, JORDER, training_outputs, data_root,
                                recipe=train_recipe(profile))
    if weights.kind not in ("official", "path"):
        raise ValueError(f"jorder takes init, a rain tag, official or a checkpoint, not {weights}")
    tag = weights.kind
    path = official_weights("jorder", data_root) if weights.kind == "official" else weights.path
    if not path.is_file():
        raise FileNotFoundError(f"jorder weights {str(path)!r}: no such file")
    proto = path.with_name(PROTOTXT)
    if proto.is_file():  # the authors' deploy file beside the weights: it must describe our graph
        check_prototxt(proto)
    info = load_caffe(net, path)
    return net, {"tag": tag, **info}


build_jorder.family = "jorder"  # trained by the suite (`benchmark.run train jorder --rain R`)
build_jorder.tasks = ("derain",)


__all__ = ["JORDER", "load_caffe", "caffe_state", "check_prototxt", "expected_layers", "build_jorder",
           "rgb2ycbcr", "ycbcr2rgb", "PAPER_PARAMS", "train_recipe", "training_outputs"]
