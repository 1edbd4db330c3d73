"""ResGuideNet model family: shapes, early exits, parameter counts, init, gradients."""
import pytest
import torch

from models.resguidenet import PAPER_PARAMS, VARIANTS, ResGuideNet, build, param_counts, xavier_init_


def _x():
    torch.manual_seed(0)
    return torch.rand(1, 3, 24, 20)


def _block_params(k, f=16, reuse=True):
    cin = 3 * k if reuse else 3
    return (9 * cin * f + f) + 2 * (9 * f * f + f) + (9 * f * 3 + 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_per_variant(variant):
    net = build(variant)
    with torch.no_grad():
        out = net(_x())
        outs = net.forward_all(_x())
    assert out.shape == (1, 3, 24, 20)
    assert all(o.shape == (1, 3, 24, 20) for o in outs)
    assert len(outs) == 5 + (1 if net.merge is not None else 0)


def test_variant_flags():
    assert build("resguidenet").merge is not None
    assert build("baseline_rr").merge is None and build("baseline_rr").residual_reuse
    assert not build("baseline").residual_reuse
    nrecur = build("resguidenet_nrecur")
    assert nrecur.recursions == 1 and all(b.recursions == 1 for b in nrecur.blocks)
    assert build("resguidenet").blocks[0].recursions == 5
    with pytest.raises(ValueError):
        build("nope")


def test_exit_matches_forward_all_and_last_block():
    net = ResGuideNet(blocks=3, features=4, recursions=2)
    x = _x()
    with torch.no_grad():
        outs = net.forward_all(x)
        for k in range(1, 4):
            assert torch.equal(net(x, exit_block=k), outs[k - 1])
        assert torch.equal(net(x), outs[-1])
    no_merge = ResGuideNet(blocks=3, features=4, recursions=2, merge=False)
    with torch.no_grad():
        assert torch.equal(no_merge(x), no_merge.forward_all(x)[-1])
    with pytest.raises(ValueError):
        net(x, exit_block=4)
    with pytest.raises(ValueError):
        net(x, exit_block=0)


def test_exit_runs_only_early_blocks():
    net = ResGuideNet(blocks=5, features=4, recursions=1)
    called = []
    for i, block in enumerate(net.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: called.append(i))
    net.merge.register_forward_hook(lambda m, a, o: called.append("merge"))
    with torch.no_grad():
        net(_x(), exit_block=3)
    assert called == [0, 1, 2]


def test_block_inputs_follow_eq5():
    net = ResGuideNet(blocks=4, features=4, recursions=1)
    assert [b.extract.in_channels for b in net.blocks] == [3, 6, 9, 12]
    base = ResGuideNet(blocks=4, features=4, recursions=1, residual_reuse=False)
    assert [b.extract.in_channels for b in base.blocks] == [3, 3, 3, 3]
    # block 2 sees [y1, r1] with r1 = y1 - X
    seen = {}
    net.blocks[1].register_forward_hook(lambda m, a, o: seen.update(inp=a[0]))
    x = _x()
    with torch.no_grad():
        y1 = net(x, exit_block=1)
        net(x, exit_block=2)
    assert torch.allclose(seen["inp"][:, :3], y1)
    assert torch.allclose(seen["inp"][:, 3:], y1 - x, atol=1e-6)


def test_param_counts_formula():
    net = build("resguidenet")
    full = sum(_block_params(k) for k in range(1, 6)) + (15 * 3 + 3)
    three = sum(_block_params(k) for k in range(1, 4))
    assert (full, three) == (31983, 17865)
    pc = param_counts(net)
    assert pc["trainable"] == full == pc["total"] == sum(p.numel() for p in net.parameters())
    assert pc["paper"] == PAPER_PARAMS["resguidenet"]
    pc3 = param_counts(net, exit_block=3)
    assert pc3["trainable"] == three and pc3["merge"] == 0
    assert pc3["paper"] == PAPER_PARAMS["resguidenet_3"]
    assert param_counts(build("resguidenet_nrecur"))["trainable"] == full


def test_baseline_matches_baseline_rr_params():
    rr = param_counts(build("baseline_rr"))["trainable"]
    assert rr == sum(_block_params(k) for k in range(1, 6))
    base_net = build("baseline")
    base = param_counts(base_net)["trainable"]
    assert abs(base - rr) / rr < 0.03
    assert base_net.widths == (17, 17, 17, 18, 18)
    assert base == sum(_block_params(1, f, reuse=False) for f in base_net.widths)
    uniform = build("baseline", features=20)
    assert uniform.widths == (20,) * 5


def test_xavier_init_zero_biases():
    net = ResGuideNet(blocks=2, features=4, recursions=1)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.bias)
    xavier_init_(net)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.count_nonzero(m.bias) == 0 for m in convs)
    w = net.blocks[0].extract.weight
    fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    assert w.abs().max() <= bound and w.std() > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_merge_starts_as_the_mean_of_the_blocks(channels):
    torch.manual_seed(0)
    net = ResGuideNet(blocks=3, features=4, recursions=1, channels=channels)
    ys = [torch.rand(2, channels, 5, 6) for _ in range(3)]
    with torch.no_grad():
        merged = net.merged(ys)
    # channel by channel: colour channels are not mixed, and the weights of each sum to one
    assert torch.allclose(merged, sum(ys) / 3, atol=1e-6)
    assert torch.count_nonzero(net.merge.bias) == 0


def test_merge_init_changes_the_merge_only():
    torch.manual_seed(0)
    mean = ResGuideNet(blocks=3, features=4, recursions=1)
    torch.manual_seed(0)
    xavier = ResGuideNet(blocks=3, features=4, recursions=1, merge_init="xavier")
    a, b = mean.state_dict(), xavier.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("merge."))
    assert not torch.equal(a["merge.weight"], b["merge.weight"])
    bound = (6.0 / (9 + 3)) ** 0.5  # Xavier uniform on the 1x1 merge, fan 9 -> 3
    assert b["merge.weight"].abs().max() <= bound
    with pytest.raises(ValueError, match="merge_init"):
        ResGuideNet(blocks=2, features=4, merge_init="zeros")


def test_gradient_reaches_first_block_from_merge():
    net = ResGuideNet(blocks=3, features=4, recursions=2)
    net(_x()).mean().backward()
    g = net.blocks[0].extract.weight.grad
    assert g is not None and torch.count_nonzero(g) > 0
    assert net.blocks[0].unit.conv1.weight.grad.abs().sum() > 0


def test_any_size_and_no_clamp():
    net = ResGuideNet(blocks=2, features=4, recursions=1)
    with torch.no_grad():
        out = net(torch.rand(2, 3, 7, 11) * 5)
    assert out.shape == (2, 3, 7, 11)
