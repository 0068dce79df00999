import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class ToyBNNet(nn.Module):
    """conv-BN-ReLU x2 + linear: the smallest net with the structure the stages rely on."""

    def __init__(self, in_ch=1, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def toy_net():
    torch.manual_seed(0)
    return ToyBNNet()


def make_trained_toy_net(steps: int = 50) -> ToyBNNet:
    """A toy net whose BN running stats come from a non-standard input distribution (seeded: the same net each call)."""
    torch.manual_seed(0)
    net = ToyBNNet()
    net.train()
    with torch.no_grad():
        for _ in range(steps):
            net(torch.randn(32, 1, 8, 8) * 2.0 + 1.5)
    return net.eval()


@pytest.fixture
def trained_toy_net():
    return make_trained_toy_net()


@pytest.fixture
def one_thread():
    """Shards and single runs compare bit for bit only at the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
