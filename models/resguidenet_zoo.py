"""Registered ResGuideNet methods: the merged model, its detached exits, and the ablation variants.

``resguidenet`` and ``resguidenet_1`` … ``resguidenet_5`` share one trained model (the
``resguidenet`` family): ``resguidenet_k`` runs blocks 1..k of the same weights and returns
ŷ(k). The ablation variants are trained separately: ``baseline`` (cascade without residual
reuse, widened to Baseline-RR's parameter count), ``baseline_rr`` (with residual reuse, no
merge), ``resguidenet_nrecur`` (no recursion) and ``resguidenet_l2`` (ℓ2 loss only).

Weights: ``None`` means the light-rain model; ``light`` / ``heavy`` / ``ddn`` pick the rain
type it was trained for (see ``models.provider``); ``denoise-sSIGMA`` / ``denoise-color-sSIGMA``
pick the denoiser of Table 5 (the ``resguidenet`` family only), trained with the paper's
recipe on noisy/clean pairs; the grey one is built with ``channels=1`` (same blocks, 1-channel
image layers, see ``models.resguidenet.ResGuideNet``); ``init`` is the bare architecture; any
other value is a path to a weights file saved by ``models.train.save_weights``.
"""
from __future__ import annotations


from torch import nn

from core.profiles import get_profile
from datasets.training import training_images
import models.provider as provider
from models.autoexit import AutoExit, calibrate
from models.checkpoints import _load, load_weights

from models.registry import file_identity, register
from models.resguidenet import build, param_counts
from models.samplers import PatchSampler
from core.errors import WeightsUnavailable
from core.weights import require_file


class Exit(nn.Module):
    """ResGuideNet detached after block ``k`` (ŷ(k)); only blocks 1..k run."""

    def __init__(self, net: nn.Module, k: int):
        super().__init__()
        self.net = net
        self.k = k
        self.last_exit = k

    def forward(self, x):
        return self.net(x, exit_block=self.k)

    def parameter_counts(self) -> dict:
        c = param_counts(self.net, self.k)
        return {"trainable": c["trainable"], "all_variables": c["trainable"], "paper": c["paper"]}


class Full(nn.Module):
    """The whole model, counting its parameters with the paper's published figure beside them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.last_exit = net.num_blocks

    def forward(self, x):
        return self.net(x)

    def parameter_counts(self) -> dict:
        c = param_counts(self.net)
        return {"trainable": c["trainable"], "all_variables": c["trainable"], "paper": c["paper"]}


def _outputs(net, x):
    return net.forward_all(x)


#: ResGuideNet's training recipe beside the paper's (RMSprop, initial rate 0.001, batch 16): the rate
#: drops tenfold for the last fifth of the iterations.  The paper gives only the initial rate; with a
#: constant one, the final RMSprop steps leave the output's mean brightness off by several grey levels
#: (measured on fresh renders of training images, see docs/methods.md).
RECIPE = {"lr_drops": (0.8,)}


#: Families that may be trained as denoisers (``--weights denoise-sSIGMA``); the ablations derain only.
DENOISE_FAMILIES = ("resguidenet",)


def _channels_of(meta: dict | None) -> int:
    """Image channels recorded in a weights file's training config (3 when absent)."""
    return int(((meta or {}).get("config") or {}).get("channels", 3))


def _factory(family: str, variant: str, exit_block: int | None = None, use_ssim: bool = True):
    def factory(weights, profile, data_root):
        def make(channels: int = 3):
            return build(variant, channels=channels)

        if weights.kind == "init":
            net, info = make(), {"tag": "init"}
        elif weights.trained_here:
            net, info = provider.trained(family, weights.tag or "light", profile, make, _outputs, data_root,
                                         use_ssim, recipe=RECIPE)
        elif weights.kind == "denoise":
            if family not in DENOISE_FAMILIES:
                raise ValueError(f"{family} is trained for deraining only; denoising weights ({weights}) exist for "
                                 f"{', '.join(DENOISE_FAMILIES)}")
            channels = 3 if weights.colour else 1
            net, info = provider.trained(family, weights.tag, profile, lambda: make(channels), _outputs, data_root,
                                         use_ssim, recipe=RECIPE)
        elif weights.kind == "official":
            raise WeightsUnavailable(f"{family} has no authors' weights: the paper's code was not released")
        else:
            path = require_file(weights)
            obj = _load(path)
            # a weights file keeps its training config in "meta", a training checkpoint at the top
            net = make(_channels_of((obj.get("meta") or obj) if isinstance(obj, dict) else None))
            meta = load_weights(net, path)
            info = {"tag": "path", **file_identity(path), "training_data": (meta or {}).get("training_data")}
        return (Exit(net, exit_block) if exit_block else Full(net)), info

    factory.family = family
    factory.tasks = ("derain", "denoise") if family in DENOISE_FAMILIES else ("derain",)
    return factory


register("resguidenet", paper_name="ResGuideNet", description="merged output of all five blocks")(
    _factory("resguidenet", "resguidenet"))
for _k in range(1, 6):
    register(f"resguidenet_{_k}", paper_name=f"ResGuideNet_{_k}",
             description=f"the same weights detached after block {_k}")(
        _factory("resguidenet", "resguidenet", exit_block=_k))
ABLATIONS = {  # method -> (paper name, variant, uses the SSIM loss, description)
    "baseline": ("Baseline", "baseline", True, "cascade without residual reuse"),
    "baseline_rr": ("Baseline-RR", "baseline_rr", True, "cascade with residual reuse, no merge"),
    "resguidenet_nrecur": ("ResGuideNet-NRecur", "resguidenet_nrecur", True, "no recursion"),
    "resguidenet_l2": ("ResGuideNet (l2 only)", "resguidenet", False, "trained with the l2 loss only"),
}
for _name, (_paper, _variant, _ssim, _desc) in ABLATIONS.items():
    register(_name, paper_name=_paper, description=f"{_desc} (ablation)")(
        _factory(_name, _variant, use_ssim=_ssim))
    for _k in range(1, 6):  # per-block curves of the ablation figures
        register(f"{_name}_{_k}", paper_name=f"{_paper} block {_k}", description=f"{_desc}, block {_k} (ablation)")(
            _factory(_name, _variant, exit_block=_k, use_ssim=_ssim))


def _auto(weights, profile, data_root):
    """ResGuideNet with the automatic exit; the threshold is calibrated on training patches."""
    if weights.kind == "denoise":
        raise ValueError(f"resguidenet_auto calibrates its exit on rainy patches; it has no denoising weights "
                         f"({weights}): use resguidenet")
    full, info = _factory("resguidenet", "resguidenet")(weights, profile, data_root)
    net = full.net
    if weights.kind == "init":
        return AutoExit(net, 0.0), {**info, "autoexit": None}
    tag = weights.rain or "light"

    def make():
        prof = get_profile(profile)
        images, desc = training_images(data_root)
        sampler = PatchSampler(images, rain=tag, patch=prof.train_patch, seed=prof.seed + 1)
        return {**calibrate(net, sampler), "training_data": desc, "rain": tag}

    if info.get("tag") == "path":
        record = make()
    else:
        record = provider.derived("resguidenet", weights.tag or tag, profile, "autoexit", make,
                                  weights_sha256=info.get("sha256"))
    return AutoExit(net, record["tau"]), {**info, "autoexit": record}


register("resguidenet_auto", paper_name="ResGuideNet (auto exit)",
         description="stops after the block where the output settles (beyond the paper)")(_auto)
