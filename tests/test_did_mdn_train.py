"""DID-MDN trained here: labelled density batches, the seeded projection, the three resumable stages."""
import numpy as np
import pytest
import torch

import models.did_mdn_train as dt
from core.errors import WeightsUnavailable
from core.weights import parse_weights
from datasets.rain import DENSITY_PRESETS, add_rain, density_choice
from models import provider
from models.did_mdn import SeededLinear
from models.train import TrainConfig


def _images(n=3, h=70, w=90):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 200, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_density_mixture_renders_the_preset_its_label_names():
    img = _images(1)[0]
    labels = set()
    for seed in range(12):
        k = density_choice(seed)
        labels.add(k)
        assert np.array_equal(add_rain(img, "density", seed), add_rain(img, DENSITY_PRESETS[k], seed))
    assert labels == {0, 1, 2} and DENSITY_PRESETS == ("heavy", "medium", "light")


def test_density_patches_are_a_function_of_seed_and_step():
    s = dt.DensityPatches(_images(), patch=32, seed=5)
    (r1, l1), c1 = s.batch(4, 7)
    (r2, l2), c2 = dt.DensityPatches(_images(), patch=32, seed=5).batch(4, 7)
    assert r1.shape == c1.shape == (4, 3, 32, 32) and l1.dtype == torch.int64
    assert torch.equal(r1, r2) and torch.equal(c1, c2) and torch.equal(l1, l2)
    (r3, _), _ = s.batch(4, 8)
    assert not torch.equal(r1, r3)
    assert float(r1.min()) >= 0.0 and float(r1.max()) <= 1.0
    assert float((r1 - c1).mean()) > 0.0  # rain brightens


def test_seeded_projection_is_the_same_draw_everywhere():
    a, b = SeededLinear(1000, 4, 1234), SeededLinear(1000, 4, 1234)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, SeededLinear(1000, 4, 1).weight)
    assert float(a.weight.abs().max()) <= 1 / 1000 ** 0.5
    # reference values of torch's CPU generator (torch 2.14): a change of the draw changes every trained model
    assert a.weight[0, :3].tolist() == pytest.approx([-0.0297900, -0.0062045, -0.0151888], abs=1e-6)
    assert "weight" not in a.state_dict()  # regenerated, never saved


def _tiny(monkeypatch):
    cfg = dict(seed=0, rain="density", optimizer="adam_pix2pix", lr=dt.LR)
    configs = {"residual": TrainConfig(iterations=2, batch=2, patch=32, loss="l1", **cfg),
               "classifier": TrainConfig(iterations=2, batch=1, patch=512, loss="cross_entropy", **cfg),
               "generator": TrainConfig(iterations=3, batch=2, patch=32, loss="l1", **cfg)}
    monkeypatch.setattr(dt, "stage_configs", lambda profile: configs)
    monkeypatch.setitem(dt.CLASSIFIER_SCHEDULE, "smoke", {"iterations": 2, "batch": 1, "images": 2})


def test_three_stages_train_save_and_resume(no_weights, monkeypatch):
    _tiny(monkeypatch)
    with provider.training_allowed(True), provider.train_options(progress=False, max_seconds=0.0):
        with pytest.raises(provider.TrainingIncomplete, match="stage residual"):  # stops after one step
            dt.build_did_mdn(parse_weights("density"), "smoke", None)
    assert (no_weights / "cache" / "did_mdn-density-smoke.residual.ckpt").exists()
    with provider.training_allowed(True), provider.train_options(progress=False):
        net, info = dt.build_did_mdn(parse_weights(None), "smoke", None)  # the default: resumes, finishes
    record = provider.find("did_mdn", "density", "smoke").with_suffix(".json").read_text()
    assert info["tag"] == "density" and '"residual": 2' in record and '"generator": 3' in record
    assert "VGG16" in record
    again, info2 = dt.build_did_mdn(parse_weights("density"), "smoke", None)  # found, not retrained
    assert info2["sha256"] == info["sha256"]
    assert torch.equal(again.generator.refine3.weight, net.generator.refine3.weight)
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 40, 50))
    assert out.shape == (1, 3, 40, 50) and int(net.last_density[0]) in (0, 1, 2, 3)


def test_only_the_density_mixture_and_clear_errors(no_weights):
    from models.registry import weights_for_rain

    assert weights_for_rain("did_mdn", "heavy") == weights_for_rain("did_mdn", "light") == "density"
    with pytest.raises(WeightsUnavailable, match="density"):
        dt.build_did_mdn(parse_weights("light"), "smoke", None)
    with provider.training_allowed(False), pytest.raises(WeightsUnavailable, match="train did_mdn --rain density"):
        dt.build_did_mdn(parse_weights("density"), "smoke", None)


def test_every_profile_has_a_classifier_schedule():
    """A profile without a classifier stage would fail DID-MDN's training with a bare KeyError."""
    from core.profiles import PROFILES
    from models.did_mdn_train import CLASSIFIER_SCHEDULE

    assert set(CLASSIFIER_SCHEDULE) == set(PROFILES)
