"""JORDER baseline: the Caffe readers (models.caffe), the network and its weight loading, and
(optionally) the authors' Caffe weights on Rain100L."""
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.caffe import as_list, decode_caffemodel, parse_prototxt, read_caffemodel, read_prototxt
from models.jorder import JORDER, PAPER_PARAMS, _starts, build_jorder, check_prototxt, expected_layers, load_caffe
from models.colour import rgb2ycbcr, ycbcr2rgb
from models.registry import count_parameters
from core.weights import parse_weights


# --------------------------------------------------------------------------- a tiny protobuf encoder

def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _blob(arr: np.ndarray, legacy: bool = False, packed: bool = True) -> bytes:
    arr = np.asarray(arr, dtype="<f4")
    out = b""
    if legacy:  # num, channels, height, width = fields 1..4
        dims = (1,) * (4 - arr.ndim) + arr.shape
        out += b"".join(_key(k, 0) + _varint(d) for k, d in zip((1, 2, 3, 4), dims))
    else:
        out += _bytes_field(7, _bytes_field(1, b"".join(_varint(d) for d in arr.shape)))
    if packed:
        out += _bytes_field(5, arr.tobytes())
    else:
        out += b"".join(_key(5, 5) + struct.pack("<f", float(v)) for v in arr.ravel())
    return out


def _layer(name: str, blobs: list, kind: str = "Convolution", v1: bool = False, **blob_kw) -> bytes:
    if v1:  # V1LayerParameter in NetParameter.layers (2): name = 4, type enum = 5, blobs = 6
        body = _bytes_field(4, name.encode()) + _key(5, 0) + _varint(4)
        body += b"".join(_bytes_field(6, _blob(b, **blob_kw)) for b in blobs)
        return _bytes_field(2, body)
    body = _bytes_field(1, name.encode()) + _bytes_field(2, kind.encode())
    body += _bytes_field(4, b"data")  # a bottom, to be skipped
    body += b"".join(_bytes_field(7, _blob(b, **blob_kw)) for b in blobs)
    return _bytes_field(100, body)


def _net(layers: bytes) -> bytes:
    return _bytes_field(1, b"SRCNN") + _bytes_field(3, b"data") + layers


def _random_state(seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    return {k: (g.standard_normal(tuple(v.shape)) * 0.05).astype(np.float32)
            for k, v in JORDER().state_dict().items()}


def _caffemodel_of(state: dict) -> bytes:
    names = dict.fromkeys(k.rsplit(".", 1)[0] for k in state)
    return _net(b"".join(_layer("ReLU1", [], kind="ReLU") + _layer(n, [state[f"{n}.weight"], state[f"{n}.bias"]])
                         for n in names))


# --------------------------------------------------------------------------- (a) caffemodel decoding

def test_synthetic_caffemodel_decodes(tmp_path):
    g = np.random.default_rng(1)
    w = g.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = g.standard_normal(4).astype(np.float32)
    w1 = g.standard_normal((3, 1, 1, 2)).astype(np.float32)
    b1 = g.standard_normal(3).astype(np.float32)
    data = _net(_layer("conv_a", [w, b]) + _layer("relu", [], kind="ReLU")
                + _layer("old_conv", [w1, b1], v1=True, legacy=True, packed=False))
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(data)
    got = read_caffemodel(path)
    assert list(got) == ["conv_a", "old_conv"]  # layers without blobs are left out
    assert [a.shape for a in got["conv_a"]] == [(4, 2, 3, 3), (4,)]
    assert np.array_equal(got["conv_a"][0], w) and np.array_equal(got["conv_a"][1], b)
    # legacy 4-D shape: a bias is stored as 1 x 1 x 1 x N
    assert got["old_conv"][0].shape == (3, 1, 1, 2) and got["old_conv"][1].shape == (1, 1, 1, 3)
    assert np.array_equal(got["old_conv"][1].ravel(), b1)
    assert all(a.dtype == np.float32 for v in got.values() for a in v)


@pytest.mark.parametrize("cut", [1, 7, 40, -1])
def test_truncated_caffemodel_names_the_file(tmp_path, cut):
    data = _caffemodel_of(_random_state())
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[:cut] if cut > 0 else data[:cut])
    with pytest.raises(ValueError, match=r"cut\.caffemodel"):
        read_caffemodel(path)


@pytest.mark.parametrize("junk", [b"", b"\xff" * 32, b"name: 'SRCNN'\nlayer { name: 'x' }\n",
                                  bytes(range(256)), _bytes_field(1, b"only a name")])
def test_not_a_caffemodel_names_the_file(tmp_path, junk):
    path = tmp_path / "junk.caffemodel"
    path.write_bytes(junk)
    with pytest.raises(ValueError, match=r"junk\.caffemodel.*caffemodel"):
        read_caffemodel(path)


def test_blob_whose_data_does_not_fit_its_shape():
    bad = _bytes_field(7, _bytes_field(1, _varint(2) + _varint(3))) + _bytes_field(5, np.zeros(5, "<f4").tobytes())
    with pytest.raises(ValueError, match=r"mem\.caffemodel.*\(2, 3\).*5 values"):
        decode_caffemodel(_net(_bytes_field(100, _bytes_field(1, b"c") + _bytes_field(7, bad))), "mem.caffemodel")


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="nothere.caffemodel"):
        read_caffemodel(tmp_path / "nothere.caffemodel")


# --------------------------------------------------------------------------- (b) prototxt

PROTO = """
name: "SRCNN"   # a comment
input: "data"
input_shape { dim: 1 dim: 1 dim: 80 dim: 80 }
layer {
  name: "Convolution1"
  type: "Convolution"
  bottom: "data"
  top: "Convolution1"
  convolution_param { num_output: 64 pad: 1 kernel_size: 3 weight_filler { type: "msra" } }
}
layer {
  name: 'Eltwise1' type: "Eltwise" bottom: "a" bottom: "b" top: "Eltwise1"
  eltwise_param: { operation: SUM coeff: 0.5 coeff: -1.5e-1 }
  include { phase: TEST }
  propagate_down: false
}
"""


def test_prototxt_parser():
    p = parse_prototxt(PROTO)
    assert p["name"] == "SRCNN" and p["input"] == "data"
    assert p["input_shape"] == {"dim": [1, 1, 80, 80]}
    layers = as_list(p["layer"])
    assert [la["name"] for la in layers] == ["Convolution1", "Eltwise1"]
    conv = layers[0]["convolution_param"]
    assert conv == {"num_output": 64, "pad": 1, "kernel_size": 3, "weight_filler": {"type": "msra"}}
    elt = layers[1]
    assert elt["bottom"] == ["a", "b"] and elt["top"] == "Eltwise1"
    assert elt["eltwise_param"] == {"operation": "SUM", "coeff": [0.5, -0.15]}
    assert elt["include"] == {"phase": "TEST"} and elt["propagate_down"] is False
    assert as_list("x") == ["x"] and as_list(None) == []


@pytest.mark.parametrize("text, what", [("layer { name: 'x'", "not closed"), ("}", "opening brace"),
                                        ("name:", "no value"), ("a: 'unterminated", "unexpected")])
def test_prototxt_errors_name_the_source(tmp_path, text, what):
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad\.prototxt.*{what}"):
        read_prototxt(path)


def test_check_prototxt_on_our_own_graph():
    def fmt(layer):
        lines = [f'layer {{ name: "{layer["name"]}" type: "{layer["type"]}"']
        lines += [f'bottom: "{b}"' for b in layer["bottom"]] + [f'top: "{t}"' for t in layer["top"]]
        if layer["type"] == "Convolution":
            lines.append(f'convolution_param {{ num_output: {layer["num_output"]} pad: {layer["pad"]} '
                         f'kernel_size: {layer["kernel_size"]} stride: 1 }}')
        if layer["type"] == "Eltwise":
            lines.append("eltwise_param { operation: SUM " + " ".join(f"coeff: {c}" for c in layer["coeff"]) + " }")
        return "\n".join(lines) + "}\n"

    layers = expected_layers()
    header = "input_shape { dim: 1 dim: 1 dim: 80 dim: 80 }\n"
    check_prototxt(parse_prototxt(header + "".join(fmt(la) for la in layers)))
    k = next(i for i, la in enumerate(layers) if la["name"] == "Convolution7")
    layers[k] = {**layers[k], "pad": 2, "kernel_size": 5}
    with pytest.raises(ValueError, match="Convolution7"):
        check_prototxt(parse_prototxt(header + "".join(fmt(la) for la in layers)))
    with pytest.raises(ValueError, match="channels"):
        check_prototxt(parse_prototxt("input_shape { dim: 1 dim: 3 dim: 80 dim: 80 }\n"
                                      + "".join(fmt(la) for la in expected_layers())))


# --------------------------------------------------------------------------- (c) the network

def test_bare_net_runs_and_counts(one_thread):
    net, info = build_jorder(parse_weights("init"), "smoke", None)
    assert info == {"tag": "init"}
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        y = net.eval()(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    c = count_parameters(net)
    assert c["trainable"] == c["all_variables"] == 370_497
    weights_only = sum(p.numel() for n, p in net.named_parameters() if n.endswith(".weight"))
    assert weights_only == PAPER_PARAMS == 369_792


def test_graph_of_the_forward_pass():
    """net() is the prototxt's graph: check it against a direct transcription with zero biases."""
    torch.manual_seed(0)
    net = JORDER()
    x = torch.rand(2, 1, 11, 13)
    conv = {k: getattr(net, f"Convolution{k}") for k in range(1, 13)}
    c1 = F.relu(conv[1](x))
    e1 = F.relu(0.5 * c1 + 0.5 * conv[3](F.relu(conv[2](c1))))
    e2 = F.relu(0.5 * e1 + 0.5 * conv[5](F.relu(conv[4](e1))))
    e3 = F.relu(0.5 * e2 + 0.5 * conv[7](F.relu(conv[6](e2))))
    e4 = F.relu(0.5 * e3 + 0.5 * conv[9](F.relu(conv[8](e3))))
    e5 = F.relu(0.5 * e4 + 0.5 * conv[11](F.relu(conv[10](e4))))
    want = x + conv[12](0.5 * c1 + 0.5 * e5)
    with torch.no_grad():
        assert torch.allclose(net.net(x), want, atol=1e-6)


def test_matlab_crop_origins():
    # for ii = 1:80:rh; if ii+99 <= rh, ii, else rh-99  (0-based here)
    assert _starts(361, 100, 80) == [0, 80, 160, 240, 261]
    assert _starts(521, 100, 80) == [0, 80, 160, 240, 320, 400, 421]
    assert _starts(170, 100, 80) == [0, 70, 70]  # MATLAB visits the last crop twice; so do we


def test_tiling_and_transpose(one_thread):
    torch.manual_seed(0)
    net = JORDER(quantize=False).eval()
    y = torch.rand(1, 1, 30, 50)
    with torch.no_grad():
        whole = net.derain_y(y)  # padded 70 x 90 < one crop: the single crop is the whole image
        net.tiled = False
        assert torch.allclose(whole, net.derain_y(y), atol=1e-6)
        # matcaffe runs the network on the transposed image
        padded = F.pad(y, (20, 20, 20, 20), mode="replicate")
        ref = net.net(padded.transpose(-1, -2)).transpose(-1, -2)[:, :, 20:50, 20:70]
        assert torch.allclose(whole, ref, atol=1e-6)
        net.tiled = True
        big = torch.rand(1, 1, 90, 75)  # several overlapping crops
        tiled = net.derain_y(big)
        net.tiled = False
        untiled = net.derain_y(big)
    assert tiled.shape == untiled.shape == big.shape
    assert float((tiled - untiled).abs().max()) < 0.05  # equal away from crop borders only


def test_colour_conversion_matches_the_metrics_luma():
    from core.metrics import rgb2y

    rgb = torch.rand(1, 3, 5, 6, dtype=torch.float64)
    ycc = rgb2ycbcr(rgb)
    assert np.allclose(ycc[0, 0].numpy(), rgb2y(rgb[0].permute(1, 2, 0).numpy()))
    assert torch.allclose(ycbcr2rgb(ycc), rgb, atol=1e-12)


# --------------------------------------------------------------------------- (d) loading

def test_caffemodel_round_trip(tmp_path, one_thread):
    state = _random_state()
    path = tmp_path / "w.caffemodel"
    path.write_bytes(_caffemodel_of(state))
    net, info = build_jorder(parse_weights(str(path)), "smoke", None)
    assert info["tag"] == "path" and info["bytes"] == path.stat().st_size and len(info["sha256"]) == 64
    for k, v in net.state_dict().items():
        assert np.array_equal(v.numpy(), state[k]), k


def test_wrong_shape_blob_names_the_tensor(tmp_path):
    state = _random_state()
    state["Convolution5.weight"] = np.zeros((64, 32, 3, 3), np.float32)
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(_caffemodel_of(state))
    with pytest.raises(ValueError, match=r"bad\.caffemodel.*Convolution5\.weight.*\(64, 32, 3, 3\).*\(64, 64, 3, 3\)"):
        load_caffe(JORDER(), path)


def test_missing_and_extra_layers_are_named(tmp_path):
    state = _random_state()
    del state["Convolution9.weight"], state["Convolution9.bias"]
    path = tmp_path / "short.caffemodel"
    path.write_bytes(_caffemodel_of(state))
    with pytest.raises(ValueError, match=r"short\.caffemodel.*Convolution9\.weight.*missing"):
        build_jorder(parse_weights(str(path)), "smoke", None)
    state = _random_state()
    state["Convolution13.weight"], state["Convolution13.bias"] = np.zeros((1, 1, 3, 3), np.float32), np.zeros(1, np.float32)
    path = tmp_path / "long.caffemodel"
    path.write_bytes(_caffemodel_of(state))
    with pytest.raises(ValueError, match=r"long\.caffemodel.*Convolution13\.weight"):
        build_jorder(parse_weights(str(path)), "smoke", None)


def test_no_such_file():
    with pytest.raises(FileNotFoundError, match="nope"):
        build_jorder(parse_weights("/nonexistent/nope.caffemodel"), "smoke", None)


# --------------------------------------------------------------------------- (e) the authors' weights

def _official(data_root: Path) -> Path:
    path = data_root / "weights" / "JORDER" / "rain_removal_single_light.caffemodel"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def _run_prototxt(proto: dict, blobs: dict, x: torch.Tensor) -> torch.Tensor:
    """A minimal Caffe interpreter (Split, Convolution, ReLU, Eltwise) for cross-checking."""
    env = {"data": x}
    for layer in as_list(proto["layer"]):
        bottoms, tops = as_list(layer.get("bottom")), as_list(layer.get("top"))
        kind = layer["type"]
        if kind == "Split":
            out = env[bottoms[0]]
        elif kind == "ReLU":
            out = F.relu(env[bottoms[0]])
        elif kind == "Convolution":
            p = layer["convolution_param"]
            w, b = (torch.from_numpy(a) for a in blobs[layer["name"]])
            out = F.conv2d(env[bottoms[0]], w, b, stride=p.get("stride", 1), padding=p.get("pad", 0),
                           dilation=p.get("dilation", 1))
        elif kind == "Eltwise":
            p = layer.get("eltwise_param", {})
            assert p.get("operation", "SUM") == "SUM"
            coeff = as_list(p.get("coeff")) or [1.0] * len(bottoms)
            out = sum(c * env[bt] for c, bt in zip(coeff, bottoms))
        else:
            raise AssertionError(f"layer type {kind} not handled")
        env[tops[0]] = out
    return env["z1_Eltwise7"]


def test_authors_weights_fit_and_match_the_prototxt(data_root):
    path = _official(data_root)
    net, info = build_jorder(parse_weights("official"), "smoke", data_root)  # the official weights under the data root
    assert info["tag"] == "official" and info["bytes"] == path.stat().st_size
    blobs = read_caffemodel(path)
    assert sorted(blobs) == sorted(f"Convolution{k}" for k in range(1, 13))
    state = net.state_dict()
    for layer, (w, b) in blobs.items():
        assert np.array_equal(state[f"{layer}.weight"].numpy(), w), layer
        assert np.array_equal(state[f"{layer}.bias"].numpy(), b), layer
    proto_path = path.with_name("deploy_rain_removal_single.prototxt")
    if proto_path.is_file():
        proto = read_prototxt(proto_path)
        check_prototxt(proto)
        x = torch.rand(1, 1, 24, 20)
        with torch.no_grad():
            assert torch.allclose(net.net(x), _run_prototxt(proto, blobs, x), atol=1e-5)


def test_authors_weights_on_rain100l_first_images(data_root, one_thread):
    from benchmark.evaluate import evaluate
    from core.metrics import image_metrics
    from datasets.catalog import open_dataset

    _official(data_root)
    if not (data_root / "Rain100L").is_dir():
        pytest.skip("Rain100L is absent")
    ds = open_dataset("Rain100L", data_root, size=None, seed=0, limit=5)
    net, _ = build_jorder(parse_weights("official"), "smoke", data_root)
    net.tiled = False  # 1.6x faster; the demo's 100x100 crops change PSNR by < 0.001 dB here
    res = evaluate(net.eval(), ds, progress=False)
    rainy = np.mean([image_metrics(r, c)["psnr_y"] for _, r, c in ds])
    assert res["n_images"] == 5
    assert res["metrics"]["psnr_y"] > 35.0 and res["metrics"]["psnr_y"] > rainy + 6.0
    assert res["metrics"]["ssim_y"] > 0.96


def test_untrained_default_names_its_train_command(no_weights):
    from models import provider
    from core.errors import WeightsUnavailable

    with provider.training_allowed(False):
        with pytest.raises(WeightsUnavailable, match="benchmark.run train jorder --rain light --profile smoke"):
            build_jorder(parse_weights(None), "smoke", None)
        with pytest.raises(WeightsUnavailable, match="train jorder --rain heavy"):
            build_jorder(parse_weights("heavy"), "smoke", None)


def test_recipe_is_the_authors_jorder_e_one():
    from models.jorder import train_recipe
    from models.train import TrainConfig

    recipe = train_recipe("quick")
    assert recipe == {"optimizer": "adam", "lr": 1e-4, "loss": "l1_y"}
    assert train_recipe("paper")["batch"] == 8 and train_recipe("paper")["patch"] == 64
    TrainConfig(iterations=1, **recipe)  # a valid configuration


def test_training_output_is_the_network_on_y_with_the_input_chroma():
    from models.colour import rgb2ycbcr, ycbcr2rgb
    from models.jorder import training_outputs
    from models.train import TrainConfig, _loss

    torch.manual_seed(0)
    net = JORDER()
    rgb = torch.rand(2, 3, 24, 20)
    (out,) = training_outputs(net, rgb)
    ycc_in, ycc_out = rgb2ycbcr(rgb), rgb2ycbcr(out)
    with torch.no_grad():
        assert torch.allclose(ycc_out[:, :1], net._net_image(ycc_in[:, :1]), atol=1e-5)
    assert torch.allclose(ycc_out[:, 1:], ycc_in[:, 1:], atol=1e-5)
    # the loss sees Y only: a target that differs from the output only in chroma costs nothing
    cfg = TrainConfig(iterations=1, optimizer="adam", lr=1e-4, loss="l1_y")
    target = out.detach().clone()
    shifted = rgb2ycbcr(target)
    shifted[:, 1:] += 0.05
    assert float(_loss(cfg, [out], ycbcr2rgb(shifted)).detach()) < 1e-5
    loss = _loss(cfg, [out], target + 0.1)  # +0.1 on every RGB channel: Y moves by 0.1 * 219/255
    assert float(loss.detach()) == pytest.approx(0.1 * 219 / 255, rel=1e-4)
    loss.backward()
    assert net.Convolution1.weight.grad is not None and net.Convolution1.weight.grad.abs().sum() > 0


def test_train_command_trains_and_registers_jorder(no_weights, capsys):
    import json

    from benchmark.run import main
    from models import registry

    assert main(["train", "jorder", "--rain", "heavy", "--profile", "smoke", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["family"] == "jorder" and out["iterations"] == 40 and out["final_loss"] > 0
    record = json.loads((no_weights / "cache" / "jorder-heavy-smoke.json").read_text())
    assert record["config"]["optimizer"] == "adam" and record["config"]["loss"] == "l1_y"
    net, info = registry.load("jorder", "heavy", "smoke")
    assert info["source"] == "trained here (cache)" and info["tag"] == "heavy"
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), JORDER().state_dict().values()))


def test_compiled_jorder_compiles_its_crop_network_only():
    from benchmark.inference import FrozenCompiled, compile_for_inference

    net = JORDER(features=4).eval()
    rgb = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    compiled = compile_for_inference(net)
    assert isinstance(compiled, JORDER) and isinstance(compiled._net_image, FrozenCompiled)
    assert "_net_image" not in vars(net)  # the model handed in is not changed
    with torch.inference_mode():
        eager, fast = net(rgb), compiled(rgb)
    # outputs are 8-bit levels: a float difference may flip a rounding, never more than one level
    assert (fast - eager).abs().max() <= 1.5 / 255
    assert (fast - eager).abs().mean() < 1e-3
