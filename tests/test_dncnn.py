"""DnCNN baselines: architecture, the MatConvNet (.mat v7.3) importer and weight loading."""
from pathlib import Path

import numpy as np
import pytest
import torch

from models.dncnn import BN_EPS, DnCNN, load_dncnn_mat, matlab_filters_to_torch
from models.registry import REGISTRY, count_parameters
from core.errors import WeightsUnavailable
from core.weights import parse_weights

h5py = pytest.importorskip("h5py")


def _factory(name):
    import models.dncnn  # noqa: F401  (registers the methods)

    return REGISTRY[name].factory


def _random(net, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.uniform_(0.5, 1.5) if t.ndim == 1 else t.normal_(0.0, 0.05)
    return net.eval()


@pytest.mark.parametrize("name,channels", [("dncnn", 1), ("dncnn_color", 3)])
def test_init_shape_and_residual(name, channels):
    net, info = _factory(name)(parse_weights("init"), "smoke", None)
    assert info == {"tag": "init"}
    x = torch.rand(2, channels, 10, 7)
    with torch.no_grad():
        y = net.eval()(x)
        assert y.shape == x.shape
        assert torch.allclose(y, x - net.noise(x))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 17
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 15


def test_grayscale_model_on_rgb_batch_works_per_channel():
    net = _random(DnCNN(1, depth=3, features=4))
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        y = net(x)
        for c in range(3):
            assert torch.allclose(y[:, c:c + 1], net(x[:, c:c + 1]), atol=1e-6)


def test_parameter_counts():
    net, _ = _factory("dncnn")(parse_weights("init"), "smoke", None)
    c = count_parameters(net)
    conv = 64 * 9 + 64 + 15 * (64 * 64 * 9 + 64) + 64 * 9 + 1
    assert c["trainable"] == conv + 15 * 128
    assert c["all_variables"] == conv + 15 * 256  # running mean and variance too


def test_no_weights_asks_for_the_file():
    with pytest.raises(WeightsUnavailable, match=r"--weights PATH.*sigma=25\.mat"):
        _factory("dncnn")(parse_weights(None), "smoke", None)


def test_state_dict_round_trip(tmp_path):
    ref = _random(DnCNN(1))
    path = tmp_path / "dncnn.pth"
    torch.save(ref.state_dict(), path)
    net, info = _factory("dncnn")(parse_weights(str(path)), "smoke", None)
    assert info["tag"] == "official" and info["format"] == "state_dict" and len(info["sha256"]) == 64
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), ref(x))


def test_wrong_shape_names_the_tensor(tmp_path):
    state = DnCNN(1).state_dict()
    state["body.9.running_var"] = torch.ones(63)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"bad\.pth.*body\.9\.running_var"):
        _factory("dncnn")(parse_weights(str(path)), "smoke", None)


def test_grayscale_weights_do_not_fit_the_colour_model(tmp_path):
    path = tmp_path / "gray.pth"
    torch.save(DnCNN(1).state_dict(), path)
    with pytest.raises(ValueError, match=r"gray\.pth.*head\.weight"):
        _factory("dncnn_color")(parse_weights(str(path)), "smoke", None)


# --------------------------------------------------------------------------
# MatConvNet import


def test_filter_permutation_by_hand():
    # MATLAB filters H x W x Cin x Cout = 2 x 3 x 1 x 2 with value 1000*o + 100*i + 10*h + w (1-based)
    mat = np.zeros((2, 3, 1, 2), np.float32)
    for h in range(2):
        for w in range(3):
            for o in range(2):
                mat[h, w, 0, o] = 1000 * (o + 1) + 100 + 10 * (h + 1) + (w + 1)
    as_h5py = mat.T  # what h5py shows for a MATLAB v7.3 array: dimensions reversed
    got = matlab_filters_to_torch(as_h5py)
    assert got.shape == (2, 1, 2, 3)
    assert got[1, 0, 0, 2] == 2113 and got[0, 0, 1, 0] == 1121
    # a last layer with Cout = 1: MATLAB drops the trailing singleton (H x W x Cin)
    last = np.arange(3 * 3 * 4, dtype=np.float32).reshape(3, 3, 4)
    got = matlab_filters_to_torch(last.T)
    assert got.shape == (1, 4, 3, 3) and got[0, 2, 1, 0] == last[1, 0, 2]


def _matlab(arr):
    """A MATLAB array as MATLAB v7.3 stores it: trailing singletons dropped, dimensions reversed."""
    arr = np.asarray(arr)
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr.T


def _write_simplenn(path, layers):
    """A MatConvNet simplenn ``net.layers`` cell array the way MATLAB -v7.3 writes it."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        layer_refs = []
        for i, (kind, weights) in enumerate(layers):
            g = refs.create_group(f"L{i}")
            g["type"] = np.array([[ord(c)] for c in kind], np.uint16)
            g["name"] = np.array([[ord(c)] for c in f"layer{i + 1}"], np.uint16)
            if weights:
                wrefs = []
                for j, w in enumerate(weights):
                    refs[f"W{i}_{j}"] = _matlab(np.asarray(w, np.float32))
                    wrefs.append(refs[f"W{i}_{j}"].ref)
                g.create_dataset("weights", data=np.array(wrefs, dtype=h5py.ref_dtype).reshape(-1, 1))
            layer_refs.append(g.ref)
        net = f.create_group("net")
        net.create_dataset("layers", data=np.array(layer_refs, dtype=h5py.ref_dtype).reshape(-1, 1))


def test_mat_importer_on_synthetic_v73_file(tmp_path):
    rng = np.random.default_rng(0)
    feat = 3

    def conv(cin, cout):
        return ("conv", [rng.normal(size=(3, 3, cin, cout)), rng.normal(size=(cout, 1))])

    mult, beta = rng.uniform(0.5, 1.5, (feat, 1)), rng.normal(size=(feat, 1))
    moments = np.concatenate([rng.normal(size=(feat, 1)), rng.uniform(0.5, 2.0, (feat, 1))], axis=1)  # [mean, sigma]
    first, mid1, mid2, last = conv(1, feat), conv(feat, feat), conv(feat, feat), conv(feat, 1)
    layers = [first, ("relu", None), mid1, ("bnorm", [mult, beta, moments]), ("relu", None),
              mid2, ("relu", None),  # batch norm folded into mid2, as in the released models
              last]
    path = tmp_path / "tiny.mat"
    _write_simplenn(path, layers)

    state = load_dncnn_mat(path)
    net = DnCNN(1, depth=4, features=feat)
    net.load_state_dict(state, strict=True)
    net.eval()
    w = mid1[1][0]
    assert torch.allclose(state["body.0.weight"], torch.from_numpy(w.transpose(3, 2, 0, 1)).float())
    assert state["tail.weight"].shape == (1, feat, 3, 3)
    assert torch.allclose(state["tail.bias"], torch.tensor(last[1][1].ravel(), dtype=torch.float32))

    # the batch norm computes mult * (x - mean) / sigma + bias, like vl_nnbnorm in test mode
    x = torch.randn(1, feat, 4, 4, dtype=torch.float32)
    with torch.no_grad():
        got = net.body[1](x)
    m = torch.tensor(mult.ravel(), dtype=torch.float32).view(1, -1, 1, 1)
    b = torch.tensor(beta.ravel(), dtype=torch.float32).view(1, -1, 1, 1)
    mu = torch.tensor(moments[:, 0], dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(moments[:, 1], dtype=torch.float32).view(1, -1, 1, 1)
    assert torch.allclose(got, m * (x - mu) / sd + b, atol=1e-5)
    # a folded batch norm is the identity
    with torch.no_grad():
        assert torch.allclose(net.body[4](x), x, atol=1e-6)
    assert torch.allclose(state["body.4.running_var"], torch.full((feat,), 1 - BN_EPS))

    # the architecture-sized model rejects the tiny file, naming the first differing tensor
    with pytest.raises(ValueError, match=r"tiny\.mat.*head\.weight"):
        _factory("dncnn")(parse_weights(str(path)), "smoke", None)


# --------------------------------------------------------------------------
# the authors' files (RESGUIDE_DATA)


def _mats(data_root: Path):
    files = sorted((data_root / "weights" / "DnCNN").glob("sigma=*.mat"))
    if not files:
        pytest.skip("no DnCNN .mat files under the data root")
    return files


def test_authors_mat_files_fit(data_root):
    for path in _mats(data_root):
        net, info = _factory("dncnn")(parse_weights(str(path)), "smoke", None)
        assert info["format"] == "matconvnet"
        state = load_dncnn_mat(path)
        assert set(state) == set(net.state_dict())
        for k, v in net.state_dict().items():
            assert v.shape == state[k].shape and torch.equal(v, state[k]), f"{path.name}: {k}"


def test_authors_sigma25_denoises(data_root):
    from PIL import Image

    path = data_root / "weights" / "DnCNN" / "sigma=25.mat"
    images = sorted((data_root / "BSD68").glob("*.png"))
    if not path.is_file() or not images:
        pytest.skip("sigma=25.mat or BSD68 is absent")
    net, _ = _factory("dncnn")(parse_weights(str(path)), "smoke", None)
    clean = np.asarray(Image.open(images[0]).convert("L"), np.float64)[:64, :64] / 255.0
    noisy = clean + 25 / 255.0 * np.random.default_rng(0).standard_normal(clean.shape)
    with torch.no_grad():
        out = net.eval()(torch.from_numpy(noisy).float()[None, None])[0, 0].double().numpy()

    def psnr(a):
        return 10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - clean) ** 2))

    assert psnr(out) > psnr(noisy) + 5.0
