"""DDN: architecture, guided filter, parameter counts, and the TF1 checkpoint reader."""
import struct

import numpy as np
import pytest
import torch

from datasets.embedded import clean_images
from models import registry
from models.ddn import DDN, PAPER_PARAMS, build_ddn, guided_filter, tf_names
from models.tf_checkpoint import masked_crc32c, read_checkpoint, read_entries, snappy_decompress
from core.errors import WeightsUnavailable
from core.weights import parse_weights

# --------------------------------------------------------------------------- a tiny checkpoint writer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _field_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _snappy_literal(data: bytes) -> bytes:
    """A valid snappy stream holding ``data`` as one literal (2-byte length form)."""
    assert 0 < len(data) <= 65536
    return _varint(len(data)) + bytes([61 << 2]) + (len(data) - 1).to_bytes(2, "little") + data


def _block(entries, restart_every: int = 2) -> bytes:
    """A table block with prefix-compressed keys and a restart point every ``restart_every`` entries."""
    out = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        if i % restart_every == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        prev = key
    if not restarts:
        restarts = [0]
    for r in restarts:
        out += struct.pack("<I", r)
    out += struct.pack("<I", len(restarts))
    return bytes(out)


def write_checkpoint(prefix, tensors: dict, compression: int = 0, block_entries: int = 3) -> None:
    """Write ``{name: float32 array}`` as a TF tensor bundle (index SSTable + one data shard)."""
    data = bytearray()
    entries = []
    header = _field_varint(1, 1) + _field_bytes(3, _field_varint(1, 1))  # num_shards 1, version {producer 1}
    entries.append((b"", header))
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        raw = arr.tobytes()
        shape = b"".join(_field_bytes(2, _field_varint(1, d)) for d in arr.shape)
        proto = (_field_varint(1, 1) + _field_bytes(2, shape) + _field_varint(4, len(data))
                 + _field_varint(5, len(raw)) + _varint(6 << 3 | 5) + struct.pack("<I", masked_crc32c(raw)))
        entries.append((name.encode(), proto))
        data += raw
    table = bytearray()
    index = []

    def put(block: bytes, kind: int) -> bytes:
        body = _snappy_literal(block) if kind == 1 else block
        handle = _varint(len(table)) + _varint(len(body))
        table.extend(body + bytes([kind]) + b"\0\0\0\0")
        return handle

    for i in range(0, len(entries), block_entries):
        chunk = entries[i:i + block_entries]
        index.append((chunk[-1][0], put(_block(chunk), compression)))
    meta = put(_block([]), 0)
    idx = put(_block(index, restart_every=1), 0)
    footer = (meta + idx).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    (prefix.parent / (prefix.name + ".index")).write_bytes(bytes(table) + footer)
    (prefix.parent / (prefix.name + ".data-00000-of-00001")).write_bytes(bytes(data))


def _ddn_tensors(net: DDN) -> dict:
    sd = net.state_dict()
    out = {}
    for tf_name, key, _shape in tf_names(net):
        v = sd[key].numpy()
        out[tf_name] = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v
    return out


# --------------------------------------------------------------------------- TF reader


def test_snappy_copy_overlaps():
    # "abcd" as a literal, then a 6-byte copy from offset 4 (overlapping its own output)
    assert snappy_decompress(bytes([10, 3 << 2]) + b"abcd" + bytes([(2 << 2) | 1, 4])) == b"abcdabcdab"


@pytest.mark.parametrize("compression", [0, 1])
def test_tf_reader_round_trip(tmp_path, compression):
    rng = np.random.default_rng(0)
    tensors = {"scope/conv/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
               "scope/conv/bias": rng.standard_normal(4).astype(np.float32)}
    prefix = tmp_path / "model"
    write_checkpoint(prefix, tensors, compression=compression, block_entries=2)
    header, entries = read_entries(prefix)
    assert header["num_shards"] == 1 and set(entries) == set(tensors)
    for arg in (prefix, str(prefix) + ".index"):
        got = read_checkpoint(arg, verify_crc=True)
        assert set(got) == set(tensors)
        for k, v in tensors.items():
            assert got[k].dtype == np.float32 and np.array_equal(got[k], v)


def test_tf_reader_rejects_a_non_table(tmp_path):
    (tmp_path / "model.index").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="magic"):
        read_checkpoint(tmp_path / "model")


# --------------------------------------------------------------------------- guided filter


def _guided_filter_reference(img: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Direct per-pixel guided filter of a 2-D image guided by itself; border windows truncated."""
    h, w = img.shape

    def box_mean(a):
        out = np.empty_like(a)
        for i in range(h):
            for j in range(w):
                out[i, j] = a[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].mean()
        return out

    mean_i = box_mean(img)
    var_i = box_mean(img * img) - mean_i ** 2
    a = var_i / (var_i + eps)           # cov(I, p) = var(I) with p = I
    b = mean_i - a * mean_i
    return box_mean(a) * img + box_mean(b)


@pytest.mark.parametrize("shape,r,eps", [((13, 11), 3, 0.01), ((9, 7), 15, 1.0), ((34, 33), 15, 1.0)])
def test_guided_filter_matches_direct_reference(shape, r, eps):
    rng = np.random.default_rng(1)
    img = rng.random((2, 3) + shape)
    got = guided_filter(torch.from_numpy(img), torch.from_numpy(img), r, eps).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[n, c], _guided_filter_reference(img[n, c], r, eps), atol=1e-10)


# --------------------------------------------------------------------------- model


def test_shapes_init_and_clipping():
    net, info = registry.load("ddn", "init")
    assert info["tag"] == "init" and not net.training
    for shape in [(1, 3, 20, 24), (2, 3, 33, 40)]:
        x = torch.rand(shape)
        with torch.no_grad():
            y = net(x)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    bn = net.layers[0].bn
    assert bn.eps == 1e-3 and len(net.layers) == 26


def test_parameter_counts():
    net, _ = registry.load("ddn", "init")
    assert registry.count_parameters(net) == {"trainable": 57_369, "all_variables": PAPER_PARAMS}
    assert PAPER_PARAMS == 58_175


def test_missing_weights_name_the_train_command_or_the_checkpoint(no_weights):
    from models import provider

    with provider.training_allowed(False):
        with pytest.raises(WeightsUnavailable, match="benchmark.run train ddn --rain heavy --profile quick"):
            registry.load("ddn", "heavy")
    with pytest.raises(WeightsUnavailable, match="data root"):
        registry.load("ddn", "official")
    with pytest.raises(FileNotFoundError):
        build_ddn(parse_weights("/nonexistent/model"), "quick", None)


# --------------------------------------------------------------------------- training here


def test_recipe_and_its_learning_rate_schedule():
    from models.ddn import train_recipe
    from models.train import TrainConfig

    recipe = train_recipe("quick")
    assert recipe["optimizer"] == "sgd" and recipe["lr"] == 0.1 and recipe["loss"] == "mse"
    assert "batch" not in recipe and train_recipe("paper")["batch"] == 20 and train_recipe("paper")["patch"] == 64
    cfg = TrainConfig(iterations=9, **recipe)
    assert [round(cfg.lr_at(s), 6) for s in range(1, 10)] == [0.1] * 3 + [0.01] * 3 + [0.001] * 3
    assert TrainConfig(iterations=9).lr_at(9) == 1e-3  # no drops: constant
    with pytest.raises(ValueError, match="lr_drops"):
        TrainConfig(iterations=9, lr_drops=(0.7, 0.3))
    with pytest.raises(ValueError, match="lr_drops"):
        TrainConfig(iterations=9, lr_drops=(1.0,))


def test_init_is_xavier_uniform_with_zero_biases():
    from models.ddn import ddn_init_

    torch.manual_seed(0)
    net = ddn_init_(DDN())
    for layer in net.layers:
        w = layer.conv.weight
        cout, cin, kh, kw = w.shape
        bound = (6.0 / (kh * kw * (cin + cout))) ** 0.5
        top = float(w.detach().abs().max())
        assert 0.8 * bound < top <= bound
        assert not layer.conv.bias.any()


def test_training_follows_the_recipe_and_resumes_bit_exactly(tmp_path):
    from models.ddn import ddn_init_, train_recipe
    from models.provider import single_output as _outputs
    from models.samplers import PatchSampler
    from models.train import TrainConfig, train

    images = [img for _, img in clean_images("train", 48)]
    sampler = PatchSampler(images, rain="heavy", patch=32, seed=0)

    def make(seed):
        torch.manual_seed(seed)
        return ddn_init_(DDN())

    cfg = TrainConfig(iterations=6, batch=2, patch=32, rain="heavy", **train_recipe("quick"))
    full = make(0)
    r = train(full, _outputs, sampler, cfg, tmp_path / "full.pt", progress=False)
    assert r["complete"] and np.isfinite(r["final_loss"])
    saved = torch.load(tmp_path / "full.pt", weights_only=True)
    group = saved["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["lr"] == pytest.approx(0.001)  # step 6 of 6: after both drops

    part = make(0)
    r1 = train(part, _outputs, sampler, cfg, tmp_path / "part.pt", progress=False, max_seconds=0.0)
    assert r1["iterations"] == 1 and not r1["complete"]
    resumed = make(99)
    r2 = train(resumed, _outputs, sampler, cfg, tmp_path / "part.pt", progress=False)
    assert r2["final_loss"] == r["final_loss"]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    # the drops are laid over the iteration count, so another count is another run
    with pytest.raises(ValueError, match="iterations: checkpoint 6 vs now 9"):
        train(make(0), _outputs, sampler, TrainConfig(**{**cfg.__dict__, "iterations": 9}), tmp_path / "part.pt",
              progress=False)


def test_train_command_trains_and_registers_ddn(no_weights, capsys):
    import json

    from benchmark.run import main

    assert main(["train", "ddn", "--rain", "light", "--profile", "smoke", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["family"] == "ddn" and out["iterations"] == 40
    record = json.loads((no_weights / "cache" / "ddn-light-smoke.json").read_text())
    assert record["config"]["optimizer"] == "sgd" and record["config"]["loss"] == "mse"
    net, info = registry.load("ddn", "light", "smoke")
    assert info["source"] == "trained here (cache)" and not net.training
    # a second run trains nothing and names the file that stands
    assert main(["train", "ddn", "--rain", "light", "--profile", "smoke", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "already trained" in err and "ddn-light-smoke.pt" in err and "nothing trained" in err


def test_synthetic_checkpoint_loads_and_misfit_names_the_variable(tmp_path):
    torch.manual_seed(0)
    src = DDN()
    for m in src.modules():  # non-trivial BN statistics so the mapping is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    src.eval()
    tensors = _ddn_tensors(src)
    write_checkpoint(tmp_path / "model", tensors, block_entries=40)
    net, info = registry.load("ddn", str(tmp_path / "model.index"))
    assert info["tag"] == "official" and info["sha256"] and info["bytes"] == 4 * PAPER_PARAMS
    x = torch.rand(1, 3, 18, 21)
    with torch.no_grad():
        assert torch.equal(net(x), src(x))

    bad = dict(tensors)
    bad["layer_3/conv_3/kernel"] = np.zeros((3, 3, 16, 8), np.float32)
    write_checkpoint(tmp_path / "other", bad, block_entries=40)
    with pytest.raises(ValueError, match=r"other\.index.*layer_3/conv_3/kernel"):
        registry.load("ddn", str(tmp_path / "other"))
    del bad["layer_3/conv_3/kernel"]
    bad["layer_3/conv_3/weights"] = np.zeros((3, 3, 16, 16), np.float32)
    write_checkpoint(tmp_path / "renamed", bad, block_entries=40)
    with pytest.raises(ValueError, match=r"renamed\.index.*layer_3/conv_3/kernel"):
        registry.load("ddn", str(tmp_path / "renamed"))


@pytest.mark.realdata
def test_real_checkpoint_fits(data_root):
    prefix = data_root / "weights" / "DDN" / "model"
    if not (data_root / "weights" / "DDN" / "model.index").is_file():
        pytest.skip("the DDN checkpoint is absent")
    tensors = read_checkpoint(prefix, verify_crc=True)
    assert sum(v.size for v in tensors.values()) == PAPER_PARAMS
    net = DDN()
    assert set(tensors) == {t for t, _k, _s in tf_names(net)}
    net, info = build_ddn(parse_weights(str(prefix)), "quick", data_root)
    assert info["tag"] == "official" and info["bytes"] == 4 * PAPER_PARAMS
