"""PReNet baseline: architecture, weight loading and (optionally) the authors' weights on Rain100L."""
import json
from pathlib import Path

import pytest
import torch

from models.prenet import PReNet, build_prenet
from core.errors import WeightsUnavailable
from models.registry import count_parameters
from core.weights import parse_weights


def _random_net(seed=0):
    torch.manual_seed(seed)
    net = PReNet()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    return net.eval()


def test_output_shape_and_range():
    net, info = build_prenet(parse_weights("init"), "smoke", None)
    assert info == {"tag": "init"}
    x = torch.rand(2, 3, 9, 7)
    with torch.no_grad():
        y = net.eval()(x)
        stages = net.forward_stages(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert len(stages) == 6 and all(s.shape == x.shape for s in stages)
    # the authors save np.uint8(255 * out): outputs are whole 8-bit levels
    assert torch.allclose(y * 255, torch.round(y * 255), atol=1e-3)


def test_parameter_names_and_count():
    net, _ = build_prenet(parse_weights("init"), "smoke", None)
    keys = list(net.state_dict())
    assert keys[0] == "conv0.0.weight" and "res_conv5.2.bias" in keys and keys[-1] == "conv.0.bias"
    assert {"conv_i.0.weight", "conv_f.0.weight", "conv_g.0.weight", "conv_o.0.weight"} <= set(keys)
    c = count_parameters(net)
    assert c["trainable"] == c["all_variables"] == 168_963


def test_no_weights_asks_for_the_file():
    with pytest.raises(WeightsUnavailable, match="--weights PATH.*net_latest.pth"):
        build_prenet(parse_weights(None), "smoke", None)


@pytest.mark.parametrize("wrap", ["raw", "module", "state_dict"])
def test_saved_state_dict_round_trip(tmp_path, wrap):
    ref = _random_net()
    state = ref.state_dict()
    if wrap == "module":  # nn.DataParallel save
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "state_dict":
        state = {"state_dict": state, "meta": {}}
    path = tmp_path / "w.pth"
    torch.save(state, path)
    net, info = build_prenet(parse_weights(str(path)), "smoke", None)
    assert info["tag"] == "official" and info["bytes"] == path.stat().st_size and len(info["sha256"]) == 64
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), ref(x))


def test_wrong_shape_names_the_tensor(tmp_path):
    state = _random_net().state_dict()
    state["conv_g.0.weight"] = torch.zeros(32, 63, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"bad\.pth.*conv_g\.0\.weight"):
        build_prenet(parse_weights(str(path)), "smoke", None)


def test_missing_tensor_is_named(tmp_path):
    state = _random_net().state_dict()
    del state["res_conv3.0.bias"]
    path = tmp_path / "short.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"short\.pth.*res_conv3\.0\.bias"):
        build_prenet(parse_weights(str(path)), "smoke", None)


def _official(data_root: Path) -> Path:
    path = data_root / "weights" / "PReNet" / "Rain100L" / "net_latest.pth"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_authors_weights_fit(data_root):
    path = _official(data_root)
    net, info = build_prenet(parse_weights(str(path)), "smoke", None)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw = {k.removeprefix("module."): v for k, v in raw.items()}
    assert set(raw) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.equal(v, raw[k]), k


def test_authors_weights_on_rain100l_first_images(data_root, capsys):
    import models.prenet  # noqa: F401  (registers the method)
    from benchmark.run import main

    path = _official(data_root)
    if not (data_root / "Rain100L").is_dir():
        pytest.skip("Rain100L is absent")
    main(["score", "prenet", "Rain100L", "--data-root", str(data_root), "--weights", str(path),
          "--limit", "5", "--no-progress"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["n_images"] == 5
    assert line["psnr_y"] > 33.0
