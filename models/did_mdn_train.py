"""DID-MDN trained here (Table 2's DID-MDN column), and the method's factory.

The authors' release trains its networks one at a time; the suite does the same, in three stages, on
the suite's labelled ``density`` rain (:data:`datasets.rain.DENSITY_PRESETS`: heavy, medium, light =
the classifier's targets 0, 1, 2, as in their ``pix2pix_class`` loader). Each stage has its own
resumable checkpoint ``<weights name>.<stage>.ckpt``; a finished stage is restored, not retrained.

1. ``residual``: the residual net (``Dense_rain_residual``), run with label 0 as ``test.py`` and
   ``train_rain_class.py`` run it. The release ships it trained but not its training script; since the
   classifier sees ``input - residual_net(input)``, it is trained here (L1) to output the clean image,
   so that this difference is the rain layer.
2. ``classifier``: ``train_rain_class.py``: cross entropy of the classifier on that residue of whole
   training images resized to 512 x 512, the residual net frozen. Its Linear(127896, 512) stays at a
   seeded random draw (:class:`models.did_mdn.SeededLinear`), not trained and not saved: 262 MB cannot
   ship. The convolutions and Linear(512, 4) learn. The residues of a fixed set of rained images are
   computed once per run (the residual net is frozen), and the batches are drawn from them.
3. ``generator``: ``derain_train_2018.py``: L1 of the generator's clean output, given the true density
   label. The test pipeline feeds ``argmax + 1`` (1 heavy .. 3 light), so training feeds ``label + 1``
   too. The release adds two VGG16 perceptual terms; no VGG16 weights are to be had here, so they are
   left out.

Optimiser: Adam at 2e-4, betas (0.5, 0.999), weight decay 5e-5 (the release's scripts). Batch
normalisation uses each image's own statistics in training and test, as the release (batch of one).
The authors' test protocol resizes every image to 512 x 512, so training patches are cut as from the
image resized to 512 x 512: a native crop of ceil(P h / 512) x ceil(P w / 512) pixels is rained at
native scale, and both crops are resized to P x P.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from core.errors import WeightsUnavailable
from core.profiles import get_profile
from datasets.rain import add_rain, density_choice
from datasets.training import training_images
import models.provider as provider
from models.did_mdn import (
    AUTHOR_FILES,
    CLASSIFIER_SIZE,
    DIDMDN,
    PAD_MULTIPLE,
    _resize,
    load_did_mdn_weights,
)
from models.registry import register
from models.samplers import _to_tensor, patch_rain_seed
from models.train import TrainConfig, train

#: The rain DID-MDN is trained on: the labelled mixture of datasets.rain.DENSITY_PRESETS.
TAG = "density"
#: The seed of the classifier's fixed 127896 x 512 projection in the models trained here.
PROJECTION_SEED = 1234
#: The release's optimiser and learning rate (both scripts).
LR = 2e-4
#: Classifier stage per profile: steps, whole images per batch, and rained images in its set.
CLASSIFIER_SCHEDULE = {
    "smoke": {"iterations": 4, "batch": 2, "images": 6},
    "quick": {"iterations": 400, "batch": 4, "images": 400},
    "long": {"iterations": 1600, "batch": 4, "images": 400},
    "paper": {"iterations": 3000, "batch": 4, "images": 1200},
}
STAGES = ("residual", "classifier", "generator")


class DensityPatches:
    """Batches ``((rainy, label), clean)``: P x P patches cut as from the image resized to 512 x 512,
    rained with the ``density`` mixture; label = the density's class index (0 heavy, 1 medium, 2 light).
    A step's batch is a pure function of (seed, step)."""

    def __init__(self, images, patch: int, seed: int, size: int = CLASSIFIER_SIZE):
        if not images:
            raise ValueError("DensityPatches: no images")
        self.images, self.patch, self.seed, self.size = list(images), int(patch), int(seed), int(size)

    def batch(self, n: int, step: int):
        p, rng = self.patch, np.random.default_rng([self.seed, int(step)])
        rainy, clean, labels = [], [], []
        for i in range(n):
            img = self.images[int(rng.integers(len(self.images)))]
            h, w = img.shape[:2]
            ch, cw = min(h, math.ceil(p * h / self.size)), min(w, math.ceil(p * w / self.size))
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            flip = bool(rng.random() < 0.5)
            crop = img[y:y + ch, x:x + cw]
            seed = patch_rain_seed(self.seed, step, i)
            wet = add_rain(crop, TAG, seed)
            if flip:
                crop, wet = crop[:, ::-1], wet[:, ::-1]
            pair = _resize(_to_tensor(np.stack([wet, crop])), (p, p)).clamp_(0.0, 1.0)
            rainy.append(pair[0])
            clean.append(pair[1])
            labels.append(density_choice(seed))
        return (torch.stack(rainy), torch.tensor(labels)), torch.stack(clean)


class Residues:
    """The classifier's training set: ``count`` whole training images rained with the ``density``
    mixture, resized to 512 x 512 in [-1, 1], minus the frozen residual net's output (label 0).
    Computed on the first batch; ``batch(n, step)`` draws n of them, a pure function of (seed, step)."""

    def __init__(self, images, residual_net, count: int, seed: int, progress: bool = True):
        self.images, self.net, self.count, self.seed, self.progress = list(images), residual_net, int(count), \
            int(seed), progress
        self.inputs: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def _compute(self) -> None:
        rng = np.random.default_rng([self.seed, 512])
        inputs, labels = [], []
        self.net.eval()
        with torch.no_grad():
            for k in tqdm(range(self.count), desc="DID-MDN residues", unit="img", disable=not self.progress):
                img = self.images[int(rng.integers(len(self.images)))]
                seed = patch_rain_seed(self.seed, k, 512)  # 512: never a patch index, so apart from any patch's
                x = _resize(_to_tensor(add_rain(img, TAG, seed)[None]), (CLASSIFIER_SIZE,) * 2) * 2 - 1
                inputs.append((x - self.net(x, torch.zeros(1)))[0])
                labels.append(density_choice(seed))
        self.inputs, self.labels = torch.stack(inputs), torch.tensor(labels)

    def batch(self, n: int, step: int):
        if self.inputs is None:
            self._compute()
        idx = np.random.default_rng([self.seed, int(step)]).integers(self.count, size=n)
        return self.inputs[torch.from_numpy(idx)], self.labels[torch.from_numpy(idx)]


def _residual_outputs(net, batch):
    rainy, _label = batch
    return [(net(rainy * 2 - 1, torch.zeros(rainy.shape[0], device=rainy.device)) + 1) / 2]


def _generator_outputs(net, batch):
    rainy, label = batch
    _residual, clean = net(rainy * 2 - 1, (label + 1).float())
    return [(clean + 1) / 2]


def _classifier_outputs(net, residue):
    return [net(residue)]


def stage_configs(profile: str) -> dict[str, TrainConfig]:
    """The three stages' TrainConfigs under ``profile``; patches are rounded up to a multiple of 32
    (the deepest stream downsamples by 8, the pyramid pools by 32)."""
    prof = get_profile(profile)
    patch = -(-prof.train_patch // PAD_MULTIPLE) * PAD_MULTIPLE
    common = dict(seed=prof.seed, rain=TAG, optimizer="adam_pix2pix", lr=LR)
    cls = CLASSIFIER_SCHEDULE[profile]
    return {
        "residual": TrainConfig(iterations=prof.train_iterations, batch=prof.train_batch, patch=patch,
                                loss="l1", **common),
        "classifier": TrainConfig(iterations=cls["iterations"], batch=cls["batch"], patch=CLASSIFIER_SIZE,
                                  loss="cross_entropy", ckpt_every=10, **common),
        "generator": TrainConfig(iterations=prof.train_iterations, batch=prof.train_batch, patch=patch,
                                 loss="l1", **common),
    }


def train_stages(net: DIDMDN, tag: str, profile: str, data_root) -> Path:
    """Train the three networks of ``net`` in turn (see the module docstring) and save them as one file
    through :func:`models.provider.save_trained`. Raises provider.TrainingIncomplete at the time limit
    of ``train_options`` (the finished stages and the current one's checkpoint are kept)."""
    cfgs = stage_configs(profile)
    opts = provider.run_options()
    progress = opts.get("progress", True)
    images, data_desc = training_images(data_root)
    name = provider.weights_name("did_mdn", tag, profile)
    samplers = {
        "residual": lambda: DensityPatches(images, cfgs["residual"].patch, cfgs["residual"].seed),
        "classifier": lambda: Residues(images, net.residual_net, CLASSIFIER_SCHEDULE[profile]["images"],
                                       cfgs["classifier"].seed, progress),
        "generator": lambda: DensityPatches(images, cfgs["generator"].patch, cfgs["generator"].seed),
    }
    parts = {"residual": (net.residual_net, _residual_outputs), "classifier": (net.classifier, _classifier_outputs),
             "generator": (net.generator, _generator_outputs)}
    infos = {}
    for stage in STAGES:
        module, outputs_fn = parts[stage]
        print(f"DID-MDN stage {stage}", file=sys.stderr)
        infos[stage] = train(module, outputs_fn, samplers[stage](), cfgs[stage],
                             provider.checkpoint_path(f"{name}.{stage}"), progress=progress,
                             log=lambda msg: print(msg, file=sys.stderr), device=opts.get("device", "cpu"),
                             max_seconds=opts.get("max_seconds"))
        if not infos[stage]["complete"]:
            raise provider.TrainingIncomplete(
                f"did_mdn ({tag}, {profile} profile) stopped at its time limit in stage {stage}, iteration "
                f"{infos[stage]['iterations']}/{cfgs[stage].iterations}; the same command resumes it")
    command = provider.train_command("did_mdn", tag, profile, "DATA" if data_root else None)
    return provider.save_trained("did_mdn", tag, profile, net, {
        "config": {stage: asdict(cfg) for stage, cfg in cfgs.items()},
        "classifier_images": CLASSIFIER_SCHEDULE[profile]["images"], "projection_seed": PROJECTION_SEED,
        "training_data": data_desc + "; rain synthesised by datasets.rain (density: heavy/medium/light, labelled)",
        "iterations": {s: i["iterations"] for s, i in infos.items()},
        "seconds": round(sum(i["seconds"] for i in infos.values()), 1),
        "stage_seconds": {s: round(i["seconds"], 1) for s, i in infos.items()},
        "final_loss": {s: i["final_loss"] for s, i in infos.items()},
        "command": command,
        "left_out": "the VGG16 perceptual terms of the generator loss (no VGG16 weights here); the classifier's "
                    "Linear(127896, 512) is a fixed seeded draw"})


#: How the models trained here are tested: the authors' 512 x 512 resize, without their min-max stretch
#: of the output. The generator is trained with L1 on the plain output (as the release trains it);
#: ``table did_mdn_stages`` scores both on training data. The authors' weights keep their own
#: protocol, stretch included.
TRAINED_PROTOCOL = "authors' 512 x 512 resize and back, no min-max stretch (table did_mdn_stages)"


def _build_trained() -> DIDMDN:
    return DIDMDN(projection_seed=PROJECTION_SEED, stretch=False)


@register("did_mdn", paper_name="DID-MDN",
          description="density-aware multi-stream dense network (Zhang & Patel CVPR 2018): residual net, "
                      "rain-density classifier and 3/5/7-kernel dense-stream generator; trained here on the "
                      "three labelled densities (--weights density, the default), or the authors' weights")
def build_did_mdn(weights, profile, data_root):
    if weights.kind == "init":
        return DIDMDN(), {"tag": "init"}
    if weights.trained_here:
        tag = weights.rain or TAG
        if weights.seed is not None:
            raise WeightsUnavailable(f"DID-MDN trains its three stages with its profile's seed only, not "
                                     f"--weights {weights.tag}")
        if tag != TAG:
            raise WeightsUnavailable(f"DID-MDN is trained on the labelled density mixture only (--weights "
                                     f"{TAG}), not on {tag!r} rain")
        net, info = provider.trained("did_mdn", tag, profile, _build_trained, None, data_root,
                                     train_fn=lambda net: train_stages(net, tag, profile, data_root))
        return net, {**info, "test_protocol": TRAINED_PROTOCOL}  # in the cells' fingerprint
    if weights.kind != "path":
        raise WeightsUnavailable(
            f"DID-MDN takes --weights density (trained here), init, or a path to the authors' weights: a folder "
            f"holding {', '.join(AUTHOR_FILES.values())} (hezhangsprinter/DID-MDN), or one file with all three "
            f"networks' tensors under generator./classifier./residual_net.; not {weights}")
    net = DIDMDN()
    info = load_did_mdn_weights(net, weights.path)
    return net, {"tag": "official", **info}


build_did_mdn.family = "did_mdn"  # trained by the suite (`benchmark.run train did_mdn --rain density`)
build_did_mdn.tasks = ("derain",)
build_did_mdn.only_rain = TAG  # one model for every rain (models.registry.weights_for_rain)

__all__ = ["DensityPatches", "Residues", "stage_configs", "train_stages", "build_did_mdn", "PROJECTION_SEED",
           "CLASSIFIER_SCHEDULE", "STAGES"]
