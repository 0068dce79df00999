import pytest
import torch
from torch import nn

from stages.core.bn import bn_layers
from stages.core.models import ARCH_NAMES, build_model, prunable_layers


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_resnet20_forward_backward(shape):
    m = build_model("resnet20", 10, shape[0])
    x = torch.randn(4, *shape)
    out = m(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_resnet20_structure():
    m = build_model("resnet20", 10, 1)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    # 19 3x3 convs + 2 projection shortcuts (stage 2 and 3): BN after every one.
    assert len(convs) == 21
    assert len(bn_layers(m)) == len(convs)
    assert len(prunable_layers(m)) == 22  # + fc
    assert 0.26e6 < sum(p.numel() for p in m.parameters()) < 0.28e6


def test_family_depths_and_unknown_arch():
    for depth in (20, 32, 44, 56):
        name = f"resnet{depth}"
        assert name in ARCH_NAMES
        m = build_model(name, 10, 1)
        assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == depth - 2 + 1 + 2
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet21", 10, 1)
