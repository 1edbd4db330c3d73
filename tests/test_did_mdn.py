"""DID-MDN baseline: architecture, parameter counts and weight loading (no authors' weights here)."""
import pytest
import torch

import models.did_mdn as did
from models.did_mdn_train import build_did_mdn
from core.errors import WeightsUnavailable
from models.registry import count_parameters
from core.weights import parse_weights


@pytest.fixture(scope="module")
def net():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    built, info = build_did_mdn(parse_weights("init"), "smoke", None)
    assert info == {"tag": "init"}
    return built.eval()


@pytest.mark.parametrize("protocol", ["authors", "native"])
def test_output_shape_and_range(net, protocol):
    net.protocol = protocol
    x = torch.rand(1, 3, 64, 80)  # 80 is not a multiple of 32: padded / resized and brought back
    try:
        with torch.no_grad():
            y = net(x)
    finally:
        net.protocol = "authors"
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert net.last_density is not None and net.last_density.shape == (1,)


def test_generator_sizes():
    g = did.DenseRain().eval()
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        residual, clean = g(x, torch.tensor([1.0, 3.0]))
        streams = [g.dense0(x), g.dense1(x), g.dense2(x)]
    assert residual.shape == clean.shape == x.shape
    assert [s.shape[1] for s in streams] == [12, 12, 12]
    assert all(s.shape[2:] == x.shape[2:] for s in streams)
    # the classifier only takes 512x512 (its Linear has 24*73*73 = 127896 inputs)
    with pytest.raises(ValueError, match="512x512"):
        did.DensityClassifier()(torch.zeros(1, 3, 64, 64))


def test_authors_key_names(net):
    keys = set(net.state_dict())
    for k in ("generator.conv_refin.weight", "generator.refineclean1.weight", "generator.conv1040.bias",
              "generator.dense2.dense_block1.conv2.weight", "generator.dense2.trans_block6.conv1.weight",
              "generator.dense1.conv61.weight", "generator.dense0.conv11.bias",
              "classifier.feature.0.weight", "classifier.feature.1.running_var",
              "classifier.dense_classifier.weight", "classifier.dense_classifier1.bias",
              "residual_net.dense_block3.conv2.weight", "residual_net.dense2.conv1010.weight"):
        assert k in keys, k
    sd = net.state_dict()
    assert tuple(sd["generator.dense2.dense_block1.conv2.weight"].shape) == (13, 52, 7, 7)
    assert tuple(sd["generator.dense1.dense_block1.conv2.weight"].shape) == (13, 52, 5, 5)
    assert tuple(sd["generator.dense0.trans_block1.conv1.weight"].shape) == (8, 4, 1, 1)  # ConvTranspose2d
    assert tuple(sd["classifier.dense_classifier.weight"].shape) == (512, 127896)
    assert tuple(sd["classifier.dense_classifier1.weight"].shape) == (4, 512)


def test_parameter_counts(net):
    assert net.parameter_counts() == {"trainable": 66_056_870, "all_variables": 66_063_972}
    assert count_parameters(net) == net.parameter_counts()
    b = did.parameter_breakdown(net)
    assert b["generator.params"] == 372_839 and b["generator.bn_stats"] == 3_016
    assert b["classifier.params"] == 65_501_084 and b["classifier.bn_stats"] == 128
    assert b["residual_net.params"] == 182_947 and b["residual_net.bn_stats"] == 3_958
    assert (b["generator.dense0.params"], b["generator.dense1.params"], b["generator.dense2.params"]) == \
        (12_552, 117_401, 219_641)
    assert b["generator.used_params"] == 365_236 and b["residual_net.used_params"] == 103_609


def test_official_weights_ask_for_the_authors_folder():
    with pytest.raises(WeightsUnavailable, match="pre_trained/netG_epoch_9.pth.*generator"):
        build_did_mdn(parse_weights("official"), "smoke", None)


def _authors_folder(tmp_path, gen_state):
    """The authors' layout; only the generator file is real (it is loaded first)."""
    for rel in did.AUTHOR_FILES.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    torch.save(gen_state, tmp_path / did.AUTHOR_FILES["generator"])
    for name in ("classifier", "residual_net"):
        (tmp_path / did.AUTHOR_FILES[name]).write_bytes(b"")


def test_wrong_shape_names_the_tensor(tmp_path):
    state = did.DenseRain().state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # PyTorch 0.3 file
    state["dense1.dense_block2.conv2.weight"] = torch.zeros(16, 64, 3, 3)
    _authors_folder(tmp_path, state)
    with pytest.raises(ValueError, match=r"dense1\.dense_block2\.conv2\.weight: checkpoint \(16, 64, 3, 3\) "
                                         r"vs model \(16, 64, 5, 5\)"):
        build_did_mdn(parse_weights(str(tmp_path)), "smoke", None)


def test_authors_generator_state_loads_by_name():
    torch.manual_seed(1)
    ref = did.DenseRain()
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    g = did.DenseRain()
    g.load_state_dict(did._fit(g, state, "gen"), strict=True)
    assert torch.equal(g.dense2.dense_block4.conv2.weight, ref.dense2.dense_block4.conv2.weight)
    with pytest.raises(ValueError, match="extra.weight: in checkpoint"):
        did._fit(g, {**state, "extra.weight": torch.zeros(1)}, "gen")
