from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import datasets.training as dt
import models.train as mt
from datasets.embedded import clean_images
from models.samplers import PatchSampler
from models.train import TrainConfig, train
from models.checkpoints import TrainingDiverged, load_weights, save_weights
from datasets.training import training_images


class Tiny(nn.Module):
    def __init__(self, inp=3, feat=4):
        super().__init__()
        self.conv0 = nn.Conv2d(inp, feat, 3, padding=1)
        self.conv1 = nn.Conv2d(feat, 3, 3, padding=1)

    def forward(self, x):
        return x[:, :3] + self.conv1(torch.relu(self.conv0(x)))


def outputs(net, x):
    return [net(x)]


class NaNAfter(Tiny):
    """Returns NaN from its ``bad_call``-th forward on."""

    def __init__(self, bad_call):
        super().__init__()
        self.calls = 0
        self.bad_call = bad_call

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out * float("nan") if self.calls >= self.bad_call else out


class FixedSampler:
    def __init__(self, rainy, clean):
        self.rainy, self.clean = rainy, clean

    def batch(self, n, step):
        return self.rainy[:n], self.clean[:n]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sampler():
    return PatchSampler([img for _, img in clean_images("train", 64)], "light", patch=16, seed=3)


def _net(seed=0, cls=Tiny, *args):
    torch.manual_seed(seed)
    return cls(*args)


def _cfg(**kw):
    base = dict(iterations=6, batch=2, patch=16, lr=1e-3, seed=0, ckpt_every=3)
    base.update(kw)
    return TrainConfig(**base)


def test_sampler_shapes_and_determinism(sampler):
    rainy, clean = sampler.batch(3, step=5)
    assert rainy.shape == clean.shape == (3, 3, 16, 16)
    assert rainy.dtype == clean.dtype == torch.float32
    assert 0.0 <= float(rainy.min()) and float(rainy.max()) <= 1.0
    again = sampler.batch(3, step=5)
    assert torch.equal(again[0], rainy) and torch.equal(again[1], clean)
    other = sampler.batch(3, step=6)
    assert not torch.equal(other[1], clean)
    same_seed = PatchSampler(sampler.images, "light", 16, seed=3).batch(3, step=5)
    assert torch.equal(same_seed[0], rainy)
    # rain is added somewhere across a few batches (screen blend only brightens)
    r, c = PatchSampler(sampler.images, "medium", 16, seed=3).batch(4, 0)
    assert (r >= c - 1e-6).all() and (r > c).any()


def test_sampler_rejects_small_image():
    imgs = [np.zeros((40, 40, 3), np.uint8), np.zeros((12, 30, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"image 1 is 12x30"):
        PatchSampler(imgs, "light", patch=16, seed=0)


def test_loss_decreases_on_fixed_batch(sampler, tmp_path):
    rainy, clean = sampler.batch(2, 0)
    net = _net()
    res = train(net, outputs, FixedSampler(rainy, clean), _cfg(iterations=30, lr=3e-3, ckpt_every=100),
                tmp_path / "c.pt", progress=False)
    hist = res["loss_history"]
    assert [i for i, _ in hist] == [1, 10, 20, 30]
    assert all(np.isfinite(v) for _, v in hist)
    assert hist[-1][1] < hist[0][1]
    assert res["iterations"] == 30 and res["seconds"] > 0 and res["patches_per_s"] > 0
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    assert set(ck) >= {"model", "optimizer", "iteration", "seconds", "config", "loss_history"}
    assert ck["iteration"] == 30 and ck["config"]["lr"] == 3e-3
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_resume_matches_uninterrupted_run(sampler, tmp_path):
    full = _net(0)
    r_full = train(full, outputs, sampler, _cfg(), tmp_path / "full.pt", progress=False)

    part = _net(0)
    r1 = train(part, outputs, sampler, _cfg(iterations=3), tmp_path / "part.pt", progress=False)
    assert r1["iterations"] == 3
    assert torch.load(tmp_path / "part.pt", weights_only=True)["iteration"] == 3
    resumed = _net(123)  # different init: the checkpoint must overwrite it
    r2 = train(resumed, outputs, sampler, _cfg(), tmp_path / "part.pt", progress=False)
    assert r2["iterations"] == 6
    assert r2["seconds"] >= r1["seconds"]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert r2["final_loss"] == r_full["final_loss"]

    # already done: returns at once and changes nothing
    before = {k: v.clone() for k, v in resumed.state_dict().items()}
    r3 = train(resumed, outputs, sampler, _cfg(), tmp_path / "part.pt", progress=False)
    assert r3["iterations"] == 6 and r3["seconds"] == pytest.approx(r2["seconds"])
    assert all(torch.equal(before[k], v) for k, v in resumed.state_dict().items())


def test_resume_rejects_mismatched_model_or_config(sampler, tmp_path):
    ck = tmp_path / "m.pt"
    train(_net(0), outputs, sampler, _cfg(iterations=1), ck, progress=False)
    with pytest.raises(ValueError, match=r"m\.pt.*conv0\.weight"):
        train(_net(0, Tiny, 3, 5), outputs, sampler, _cfg(), ck, progress=False)
    with pytest.raises(ValueError, match=r"m\.pt.*lr"):
        train(_net(0), outputs, sampler, _cfg(lr=0.5), ck, progress=False)


def test_nan_raises_and_keeps_last_good_checkpoint(sampler, tmp_path):
    ck = tmp_path / "nan.pt"
    net = _net(0, NaNAfter, 5)
    with pytest.raises(TrainingDiverged, match=r"iteration 5.*iteration 4.*nan\.pt"):
        train(net, outputs, sampler, _cfg(iterations=10, ckpt_every=2), ck, progress=False)
    saved = torch.load(ck, weights_only=True)
    assert saved["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    # no checkpoint yet: the message says so
    with pytest.raises(TrainingDiverged, match="no checkpoint"):
        train(_net(0, NaNAfter, 1), outputs, sampler, _cfg(), tmp_path / "none.pt", progress=False)
    assert not (tmp_path / "none.pt").exists()


def test_weights_roundtrip_and_mismatch(tmp_path):
    path = tmp_path / "w.pt"
    src = nn.Sequential()
    src.add_module("conv0", nn.Conv2d(3, 16, 3))
    save_weights(src, path, {"tag": "x"})
    dst = nn.Sequential()
    dst.add_module("conv0", nn.Conv2d(3, 16, 3))
    assert load_weights(dst, path) == {"tag": "x"}
    assert torch.equal(dst.conv0.weight, src.conv0.weight)
    bad = nn.Sequential()
    bad.add_module("conv0", nn.Conv2d(6, 16, 3))
    with pytest.raises(ValueError) as err:
        load_weights(bad, path)
    msg = str(err.value)
    assert "w.pt" in msg and "conv0.weight: checkpoint (16, 3, 3, 3) vs model (16, 6, 3, 3)" in msg
    renamed = nn.Sequential()
    renamed.add_module("conv9", nn.Conv2d(3, 16, 3))
    with pytest.raises(ValueError, match="conv9.weight: missing from checkpoint"):
        load_weights(renamed, path)


def _jpeg(path: Path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.mark.parametrize("listing", ["train/b.jpg\n", "b\n", "# comment\nb.jpg\n"])
def test_training_images_from_fake_root(tmp_path, monkeypatch, listing):
    bsds = tmp_path / "BSDS500"
    _jpeg(bsds / "train" / "a.jpg", 0)
    _jpeg(bsds / "train" / "b.jpg", 1)
    _jpeg(bsds / "val" / "c.jpg", 2)
    _jpeg(bsds / "test" / "d.jpg", 3)
    _jpeg(tmp_path / "Rain100L" / "norain-001.jpg", 4)
    _jpeg(tmp_path / "CBSD68" / "e.jpg", 5)
    (bsds / "rain100-backgrounds.txt").write_text(listing)
    opened = []
    real_open = dt.Image.open
    monkeypatch.setattr(dt.Image, "open", lambda p, *a, **k: (opened.append(Path(p)), real_open(p, *a, **k))[1])
    images, desc = training_images(tmp_path, size=32)
    assert len(images) == 2 and all(im.shape == (20, 24, 3) and im.dtype == np.uint8 for im in images)
    assert sorted(p.name for p in opened) == ["a.jpg", "c.jpg"]
    assert "BSDS500" in desc


def test_training_images_requires_background_list(tmp_path):
    _jpeg(tmp_path / "BSDS500" / "train" / "a.jpg", 0)
    (tmp_path / "BSDS500" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="rain100-backgrounds"):
        training_images(tmp_path)


def test_training_images_fallback(tmp_path):
    images, desc = training_images(None, size=32)
    assert images and all(im.shape == (32, 32, 3) for im in images)
    assert "embedded" in desc
    images2, _ = training_images(tmp_path, size=32)  # root without BSDS500
    assert len(images2) == len(images)


@pytest.mark.realdata
def test_training_images_real_count(data_root):
    images, desc = training_images(data_root)
    assert len(images) == 234 + 24, desc


def test_worker_batches_equal_in_process_batches(sampler):
    with mt.Batches(sampler, 3, start=5, workers=2) as forked:
        got = [forked.get() for _ in range(4)]
    with mt.Batches(sampler, 3, start=5, workers=0) as local:
        want = [local.get() for _ in range(4)]
    for (a_r, a_c), (b_r, b_c) in zip(got, want):
        assert torch.equal(a_r, b_r) and torch.equal(a_c, b_c)
    assert torch.equal(got[0][0], sampler.batch(3, 5)[0])
    with pytest.raises(ValueError, match="workers"):
        mt.Batches(sampler, 3, start=0, workers=-1)


class _SlowSampler:
    """A sampler whose worker batches hang (sleep) or die (the process exits)."""

    def __init__(self, how: str):
        self.how = how

    def arrays(self, n, step):
        import os
        import time

        if self.how == "die":
            os._exit(3)
        time.sleep(30)


@pytest.mark.parametrize("how, message", [("hang", "timed out"), ("die", "exited unexpectedly")])
def test_a_hung_or_dead_worker_is_an_error_not_a_stall(how, message):
    with mt.Batches(_SlowSampler(how), 2, start=0, workers=1, timeout=2) as batches:
        with pytest.raises(RuntimeError, match=message):
            batches.get()


def test_time_limit_stops_with_checkpoint_and_resume_is_exact(sampler, tmp_path):
    full = _net(0)
    train(full, outputs, sampler, _cfg(), tmp_path / "full.pt", progress=False)

    part = _net(0)
    r1 = train(part, outputs, sampler, _cfg(), tmp_path / "part.pt", progress=False, max_seconds=0.0, workers=2)
    assert not r1["complete"] and r1["iterations"] == 1  # at least one step, then the limit
    assert torch.load(tmp_path / "part.pt", weights_only=True)["iteration"] == 1
    r2 = train(part, outputs, sampler, _cfg(), tmp_path / "part.pt", progress=False, workers=2)
    assert r2["complete"] and r2["iterations"] == 6
    for (k, a), (_, b) in zip(full.state_dict().items(), part.state_dict().items()):
        assert torch.equal(a, b), k
    assert next(part.parameters()).device.type == "cpu"


def test_suite_training_is_a_function_of_the_seed_not_of_the_rng_before_it(no_weights):
    """The starting weights of a suite-trained model come from the profile's seed, whatever the
    global random state was, so two trainings of the same model give the same weights."""
    import shutil

    from models import registry

    runs = []
    for before in (1, 2):
        torch.manual_seed(before)
        net, info = registry.load("jorder", "light", "smoke")
        assert info["source"] == "trained here (cache)"
        runs.append(net.state_dict())
        shutil.rmtree(no_weights / "cache")
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_weight_average_is_shipped_and_resumes_exactly(sampler, tmp_path):
    """A run with ``ema`` ships the moving average of its steps' weights (checked against the average
    computed by hand from every step's weights), and a run resumed step by step ships the same."""
    cfg = dict(ema=0.3, ckpt_every=1)  # the decay caps (1+t)/(10+t) from step 3 on
    whole = _net(0)
    train(whole, outputs, sampler, _cfg(**cfg), tmp_path / "whole.pt", progress=False)

    average = {k: v.clone() for k, v in _net(0).state_dict().items()}
    for t in range(1, 7):  # one step per call: the checkpoint holds that step's own weights
        steps = _net(0 if t == 1 else 100 + t)  # a resumed run starts from the checkpoint, whatever the init
        train(steps, outputs, sampler, _cfg(iterations=t, **cfg), tmp_path / "steps.pt", progress=False)
        raw = torch.load(tmp_path / "steps.pt", weights_only=True)["model"]
        d = min(0.3, (1 + t) / (10 + t))
        average = {k: d * average[k] + (1 - d) * raw[k] for k in average}
    for k, v in steps.state_dict().items():
        assert torch.allclose(v, average[k], atol=1e-6), k
        assert torch.equal(v, whole.state_dict()[k]), k
        assert not torch.allclose(v, raw[k]), k  # the average, not the last step
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(iterations=3, ema=1.0)


def test_split_sampler_takes_half_of_each_batch_from_each_source(sampler):
    from models.samplers import SplitSampler

    other = PatchSampler(sampler.images, "heavy", patch=16, seed=9)
    split = SplitSampler(sampler, other)
    rainy, clean = split.arrays(5, 4)
    assert np.array_equal(rainy[:2], sampler.arrays(2, 4)[0]) and np.array_equal(clean[2:], other.arrays(3, 4)[1])
    assert np.array_equal(split.arrays(5, 4)[0], rainy) and split.batch(5, 4)[0].shape == (5, 3, 16, 16)
    with pytest.raises(ValueError, match="cannot be split"):
        split.arrays(1, 0)


def test_a_seeded_repeat_is_its_own_model_with_its_own_record(no_weights, capsys):
    """``train --seed N`` trains a repeat under the tag ``RAIN-seedN``: its record holds that seed and
    the command that makes it, ``--weights RAIN-seedN`` loads it without training again, and its
    weights differ from the profile seed's. The profile's own seed names the plain model."""
    import json

    from benchmark.run import main
    from core.weights import parse_weights
    from models import provider, registry

    assert parse_weights("heavy-seed12") == parse_weights("heavy-seed12").__class__("rain", rain="heavy", seed=12)
    assert parse_weights("pairs-heavy-warm-seed3").tag == "pairs-heavy-warm-seed3"
    assert parse_weights("fog-seed1").kind == "path"  # not a rain the suite trains for

    assert main(["train", "jorder", "--rain", "light", "--seed", "1", "--profile", "smoke", "--no-progress"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["tag"] == "light-seed1" and line["seed"] == 1
    record = json.loads((no_weights / "cache" / "jorder-light-seed1-smoke.json").read_text())
    assert record["tag"] == "light-seed1" and record["config"]["seed"] == 1 and record["config"]["rain"] == "light"
    assert record["command"].endswith("train jorder --rain light --seed 1 --profile smoke")

    seeded, info = registry.load("jorder", "light-seed1", "smoke")
    assert info["source"] == "trained here (cache)" and info["tag"] == "light-seed1"
    plain, _ = registry.load("jorder", "light", "smoke")
    assert any(not torch.equal(a, b) for a, b in zip(seeded.state_dict().values(), plain.state_dict().values()))

    assert main(["train", "jorder", "--rain", "light", "--seed", "0", "--profile", "smoke", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tag"] == "light"  # already trained
    assert main(["train", "dncnn", "--sigma", "25", "--seed", "1", "--profile", "smoke"]) == 2
    assert "--seed trains a derainer's repeat" in capsys.readouterr().err
    # a seeded fine-tuning starts from the same weights as the plain one: it asks for them by name
    with pytest.raises(provider.WeightsUnavailable, match="heavy-real weights"):
        provider.warm_start(nn.Conv2d(1, 1, 1), "resguidenet", "pairs-heavy-warm-seed1", "smoke", None)
