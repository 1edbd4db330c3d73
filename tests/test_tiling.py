import pytest
import torch
from torch import nn

from models.registry import load
from models.tiling import Tiled, tiled_forward

pytestmark = pytest.mark.usefixtures("one_thread")


def _three_convs():
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)))  # receptive-field radius 3


def test_exact_when_the_halo_covers_the_receptive_field():
    net = _three_convs()
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = net(x)
        assert torch.allclose(tiled_forward(net, x, tile=16, halo=3), full, atol=1e-6)
        # too small a halo is an approximation, and visibly so at the tile seams
        assert not torch.allclose(tiled_forward(net, x, tile=16, halo=1), full, atol=1e-6)


def test_resguidenet_tiled_matches_untiled():
    net, _ = load("resguidenet_3", "init")
    x = torch.rand(1, 3, 80, 72, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = net(x)
        tiled = Tiled(net, tile=32, halo=40)(x)  # 3 blocks x 12 convs: radius 36
    assert torch.allclose(tiled, full, atol=1e-5)


def test_rejects_bad_arguments_and_size_changing_nets():
    with pytest.raises(ValueError, match="tile"):
        tiled_forward(nn.Identity(), torch.zeros(1, 3, 8, 8), tile=0, halo=0)
    with pytest.raises(ValueError, match="size-preserving"):
        tiled_forward(nn.MaxPool2d(2), torch.zeros(1, 3, 8, 8), tile=4, halo=0)
