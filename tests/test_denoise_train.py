"""Denoising training for Table 5: the noisy patch stream, ResGuideNet/DnCNN training and resumption,
the ``train --sigma`` command line and the table5 spec. CPU, one thread, no data needed."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets.training as dt
import models.train as mt
from core.profiles import PROFILES, Profile
from benchmark.run import main
from datasets.embedded import clean_images
from datasets.noisy import NoisyImages, _noise_seed, add_noise, to_grey
from models import provider
from models.dncnn import BN_GAMMA_MIN, DnCNN, dncnn_init_, train_recipe
from models.resguidenet import ResGuideNet, build
from models.samplers import NoisyPatchSampler
from models.train import TrainConfig, train
from datasets.training import denoise_training_images
from models.checkpoints import save_weights
from core.weights import denoise_tag, parse_denoise_tag

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images():
    return [img for _, img in clean_images("train", 64)]


# ------------------------------------------------------------------ the noisy stream


@pytest.mark.parametrize("channels", [1, 3])
def test_noisy_stream_is_a_function_of_seed_and_step(images, channels):
    s = NoisyPatchSampler(images, sigma=30, patch=24, seed=3, channels=channels)
    noisy, clean = s.batch(4, step=5)
    assert noisy.shape == clean.shape == (4, channels, 24, 24)
    assert noisy.dtype == clean.dtype == torch.float32
    again = NoisyPatchSampler(images, sigma=30, patch=24, seed=3, channels=channels).batch(4, step=5)
    assert torch.equal(again[0], noisy) and torch.equal(again[1], clean)
    other = s.batch(4, step=6)
    assert not torch.equal(other[1], clean) and not torch.equal(other[0], noisy)
    assert not torch.equal(NoisyPatchSampler(images, 30, 24, seed=4, channels=channels).batch(4, 5)[0], noisy)
    # the clean patch is a crop of a (grey) training image: multiples of 1/255
    assert torch.equal(torch.round(clean * 255) / 255, clean)


@pytest.mark.parametrize("sigma", [10, 30, 70])
def test_noise_has_the_requested_sigma_and_is_not_clipped(images, sigma):
    noisy, clean = NoisyPatchSampler(images, sigma=sigma, patch=32, seed=0, channels=1).batch(8, step=0)
    diff = (noisy - clean).double()
    assert float(diff.std()) * 255 == pytest.approx(sigma, rel=0.04)
    assert abs(float(diff.mean())) * 255 < 0.1 * sigma
    if sigma == 70:
        assert float(noisy.min()) < 0 or float(noisy.max()) > 1  # float, unclipped


def test_grey_stream_uses_the_test_sets_conversion_and_noise(tmp_path, images):
    # the grey conversion is PIL's "L", as NoisyImages reads BSDS500-test-sN
    img = images[0]
    Image.fromarray(img).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert np.array_equal(to_grey(img)[..., 0], np.asarray(im.convert("L")))
    # add_noise is NoisyImages' formula: same generator, same noisy image
    test_dir = tmp_path / "root" / "BSDS500" / "test"
    test_dir.mkdir(parents=True)
    Image.fromarray(img[:24, :32]).save(test_dir / "a.png")
    (name, noisy, clean), = list(NoisyImages("BSDS500-test-s25", tmp_path / "root", seed=7))
    mine = add_noise(clean, 25, np.random.default_rng(_noise_seed(7, 25, "a.png")))
    assert mine.dtype == np.float32 and np.array_equal(mine, noisy)


def test_forked_workers_give_the_same_noisy_batches(images):
    s = NoisyPatchSampler(images, sigma=30, patch=16, seed=1, channels=3)
    with mt.Batches(s, 3, start=2, workers=2) as forked:
        got = [forked.get() for _ in range(3)]
    for k, (noisy, clean) in enumerate(got):
        want = s.batch(3, 2 + k)
        assert torch.equal(noisy, want[0]) and torch.equal(clean, want[1])


def test_sampler_and_config_reject_bad_arguments(images):
    with pytest.raises(ValueError, match="sigma"):
        NoisyPatchSampler(images, sigma=0, patch=16, seed=0)
    with pytest.raises(ValueError, match="channels"):
        NoisyPatchSampler(images, sigma=10, patch=16, seed=0, channels=2)
    with pytest.raises(ValueError, match="smaller than"):
        NoisyPatchSampler(images, sigma=10, patch=100, seed=0)
    with pytest.raises(ValueError, match="sigma"):
        TrainConfig(iterations=1, task="denoise")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(iterations=1, optimizer="lbfgs")


def test_denoise_tags():
    assert denoise_tag(30, False) == "denoise-s30" and denoise_tag(70, True) == "denoise-color-s70"
    assert parse_denoise_tag("denoise-s30") == (30, False)
    assert parse_denoise_tag("denoise-color-s10") == (10, True)
    for other in ("light", "heavy", None, "official-s25", "denoise-colour-s10", "denoise-s", "x/denoise-s30"):
        assert parse_denoise_tag(other) is None


def test_denoise_training_images_fallback_says_so(tmp_path):
    imgs, desc = denoise_training_images(None, size=32)
    assert imgs and all(i.shape == (32, 32, 3) for i in imgs) and "embedded" in desc and "no data root" in desc
    assert "embedded" in denoise_training_images(tmp_path, size=32)[1]


# ------------------------------------------------------------------ training and resumption


def _resguide(seed=0):
    torch.manual_seed(seed)
    return ResGuideNet(blocks=2, features=4, recursions=1, channels=1)


def _dncnn(seed=0):
    torch.manual_seed(seed)
    return dncnn_init_(DnCNN(channels=1, depth=3, features=4))


RESGUIDE = dict(make=_resguide, outputs=lambda net, x: net.forward_all(x), recipe={})
DNCNN = dict(make=_dncnn, outputs=lambda net, x: [net(x)], recipe=train_recipe("smoke"))


def _cfg(recipe, **kw):
    base = dict(iterations=3, batch=2, patch=16, seed=0, ckpt_every=1, task="denoise", sigma=30, channels=1,
                rain="none", **recipe)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("model", [RESGUIDE, DNCNN], ids=["resguidenet", "dncnn"])
def test_three_iterations_resume_bit_exactly(images, tmp_path, model):
    sampler = NoisyPatchSampler(images, sigma=30, patch=16, seed=0, channels=1)
    full = model["make"](0)
    r_full = train(full, model["outputs"], sampler, _cfg(model["recipe"]), tmp_path / "full.pt", progress=False)
    assert r_full["complete"] and r_full["iterations"] == 3 and np.isfinite(r_full["final_loss"])

    part = model["make"](0)
    r1 = train(part, model["outputs"], sampler, _cfg(model["recipe"], iterations=1), tmp_path / "part.pt",
               progress=False)
    assert r1["iterations"] == 1
    resumed = model["make"](123)  # another init: the checkpoint overwrites it
    r2 = train(resumed, model["outputs"], sampler, _cfg(model["recipe"]), tmp_path / "part.pt", progress=False)
    assert r2["iterations"] == 3 and r2["final_loss"] == r_full["final_loss"]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k  # parameters and batch-norm statistics alike
    saved = torch.load(tmp_path / "part.pt", weights_only=True)
    assert saved["config"]["task"] == "denoise" and saved["config"]["sigma"] == 30
    # another noise level is another run: refused, naming the field
    with pytest.raises(ValueError, match=r"sigma: checkpoint 30 vs now 70"):
        train(model["make"](0), model["outputs"], sampler, _cfg(model["recipe"], sigma=70), tmp_path / "part.pt",
              progress=False)


def test_dncnn_recipe_uses_adam_and_the_residual_loss():
    assert train_recipe("quick") == {"optimizer": "adam", "lr": 1e-3, "loss": "dncnn"}
    assert train_recipe("paper")["batch"] == 128 and train_recipe("paper")["patch"] == 40
    out, target = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    assert float(mt.dncnn_loss([out], target)) == pytest.approx(0.5 * 16 * 0.25)  # 1/(2N) sum over pixels


def test_dncnn_starts_with_the_authors_small_batch_norm_gammas():
    torch.manual_seed(0)
    net = dncnn_init_(DnCNN(channels=3))
    gammas = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert gammas.numel() == 15 * 64 and float(gammas.abs().min()) == pytest.approx(BN_GAMMA_MIN)
    assert 0.4 < float((gammas > 0).float().mean()) < 0.6  # both signs, as drawn
    assert float(gammas.std()) == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.15)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # so the untrained network predicts small noise (about unit variance with gammas at 1)
    with torch.no_grad():
        assert float(net.noise(torch.rand(4, 3, 32, 32)).std()) < 0.2


def test_grey_resguidenet_keeps_the_blocks_and_loads_from_a_file(tmp_path):
    grey, rgb = build("resguidenet", channels=1), build("resguidenet")
    assert grey.num_blocks == rgb.num_blocks and grey.widths == rgb.widths and grey.recursions == rgb.recursions
    assert grey.blocks[2].extract.in_channels == 3 and grey.merge.out_channels == 1
    assert grey(torch.rand(1, 1, 12, 12)).shape == (1, 1, 12, 12)
    path = tmp_path / "grey.pt"
    save_weights(grey, path, {"config": {"channels": 1}})
    from models import registry

    net, info = registry.load("resguidenet", str(path))
    assert info["tag"] == "path" and net(torch.rand(1, 1, 12, 12)).shape == (1, 1, 12, 12)


# ------------------------------------------------------------------ command line


@pytest.fixture
def tiny_smoke(monkeypatch):
    """The smoke profile with a 2-iteration, 2 x 16 x 16 schedule (full-size models, seconds)."""
    monkeypatch.setitem(PROFILES, "smoke", Profile("smoke", embedded_size=64, real_limit=8, train_iterations=2,
                                                   train_batch=2, train_patch=16, runtime_size=64))


def test_cli_rejects_sigma_with_rain(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "resguidenet", "--sigma", "30", "--rain", "light"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "dncnn", "--rain", "light"], "dncnn is a denoiser: train it with --sigma"),
    (["train", "dncnn"], "dncnn is a denoiser"),
    (["train", "baseline", "--sigma", "30"], "baseline is trained for deraining only"),
    (["train", "dncnn", "--sigma", "30", "--color"], "dncnn is grayscale only"),
    (["train", "dncnn_color", "--sigma", "30", "--grey"], "dncnn_color is colour only"),
    (["train", "resguidenet", "--color"], "need --sigma"),
    (["train", "resguidenet", "--sigma", "0"], "1..255"),
])
def test_cli_wrong_task_is_a_clear_error(capsys, no_weights, argv, message):
    assert main([*argv, "--profile", "smoke", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (no_weights / "cache").exists()  # nothing was trained


@pytest.mark.parametrize("method, flags, family, tag, channels", [
    ("dncnn", [], "dncnn", "denoise-s30", 1),
    ("dncnn_color", [], "dncnn_color", "denoise-color-s30", 3),
    ("resguidenet", ["--grey"], "resguidenet", "denoise-s30", 1),
    ("resguidenet", ["--color"], "resguidenet", "denoise-color-s30", 3),
])
def test_cli_trains_a_denoiser_and_score_finds_it(capsys, no_weights, tiny_smoke, method, flags, family, tag,
                                                    channels):
    assert main(["train", method, "--sigma", "30", *flags, "--profile", "smoke", "--no-progress"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["tag"] == tag and line["sigma"] == 30 and line["rain"] is None and line["iterations"] == 2
    weights = no_weights / "cache" / f"{family}-{tag}-smoke.pt"
    assert Path(line["weights"]) == weights
    record = json.loads(weights.with_suffix(".json").read_text())
    cfg = record["config"]
    assert (cfg["task"], cfg["sigma"], cfg["channels"]) == ("denoise", 30, channels)
    assert (cfg["optimizer"], cfg["loss"]) == (("adam", "dncnn") if family.startswith("dncnn") else
                                               ("rmsprop", "resguide"))
    # ResGuideNet's rate drops tenfold for the last fifth (models.resguidenet_zoo.RECIPE); DnCNN's stays
    assert cfg["lr_drops"] == ([] if family.startswith("dncnn") else [0.8])
    assert "embedded train split" in record["training_data"] and "no data root" in record["training_data"]
    assert f"train {family} --sigma 30 {'--color' if channels == 3 else '--grey'} --profile smoke" in record["command"]

    from models import registry

    with provider.training_allowed(False):  # found, not trained again
        net, info = registry.load(method, tag, "smoke")
    assert info["source"] == "trained here (cache)" and info["tag"] == tag
    assert net(torch.rand(1, channels, 16, 16)).shape == (1, channels, 16, 16)


# ------------------------------------------------------------------ table5


def test_table5_keys_switch_to_the_colour_models():
    from benchmark.tables import TABLES, get_table

    spec = get_table("table5")
    assert "table5" in TABLES  # part of `all`, `render` and `check`
    ids = {k.id for k in spec.keys()}
    assert {"dncnn@denoise-s10__BSDS500-test-s10", "resguidenet@denoise-s70__BSDS500-test-s70",
            "dncnn_color@denoise-color-s30__CBSDS500-test-s30",
            "resguidenet@denoise-color-s10__CBSDS500-test-s10", "identity@default__CBSDS500-test-s70"} <= ids
    assert len(ids) == 18
    assert spec.paper[("BSDS500-test-s70", "resguidenet")] == (None, 0.831)
    assert not any("BSD68" in k.dataset for k in spec.keys())


def test_table5_cells_without_weights_are_skipped_with_the_train_command(tmp_path, no_weights, capsys):
    root = tmp_path / "data"
    (root / "BSDS500" / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("1.jpg", "2.jpg"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "BSDS500" / "test" / name)
    results = tmp_path / "results"
    assert main(["table", "table5", "--profile", "smoke", "--data-root", str(root), "--results", str(results),
                 "--no-progress"]) == 0
    cells = {p.stem: json.loads(p.read_text()) for p in (results / "cells" / "smoke").glob("*.json")}
    assert len(cells) == 18
    assert cells["identity@default__BSDS500-test-s30"]["status"] == "ok"
    cases = [("dncnn@denoise-s30__BSDS500-test-s30", "dncnn --sigma 30 --grey"),
             ("resguidenet@denoise-s10__BSDS500-test-s10", "resguidenet --sigma 10 --grey"),
             ("dncnn_color@denoise-color-s70__CBSDS500-test-s70", "dncnn_color --sigma 70 --color"),
             ("resguidenet@denoise-color-s30__CBSDS500-test-s30", "resguidenet --sigma 30 --color")]
    for cid, what in cases:
        cell = cells[cid]
        assert cell["status"] == "skipped" and cell["skip_reason"] == "weights", cid
        assert f"`python -m benchmark.run train {what} --profile smoke --data-root {root}`" in cell["error"]
    md = (results / "tables" / "smoke" / "table5.md").read_text()
    assert "skipped, no weights" in md and "python -m benchmark.run train" in md
    assert not (no_weights / "cache").exists()  # nothing was trained


# ------------------------------------------------------------------ real data (optional)


@pytest.mark.realdata
def test_denoise_training_images_are_the_300_of_train_and_val(data_root, monkeypatch):
    opened = []
    real_open = dt.Image.open
    monkeypatch.setattr(dt.Image, "open", lambda p, *a, **k: (opened.append(Path(p)), real_open(p, *a, **k))[1])
    images, desc = denoise_training_images(data_root)
    assert len(images) == 300 and "300 images" in desc
    assert {p.parent.name for p in opened} == {"train", "val"} and len(opened) == 300
    assert all(p.parent.parent.name == "BSDS500" for p in opened)
    test_ids = {f.stem for f in (data_root / "BSDS500" / "test").iterdir()}
    assert not test_ids & {p.stem for p in opened}


def test_our_denoisers_are_never_scored_on_bsd68():
    from datasets.noisy import refuse_seen_test_set

    with pytest.raises(ValueError, match="BSD68 lies inside BSDS500 val.*BSDS500-test-s30"):
        refuse_seen_test_set("BSD68-s30", "denoise-s30")
    with pytest.raises(ValueError, match="CBSD68"):
        refuse_seen_test_set("CBSD68-s10", "some/path.pt", {"training_data": {"source": "BSDS500 train+val"}})
    refuse_seen_test_set("BSD68-s25", "official-s25", {"tag": "official-s25"})  # the authors' Train400 model
    refuse_seen_test_set("BSDS500-test-s30", "denoise-s30")  # the Table 5 test set
    refuse_seen_test_set("Rain100L", "light")
