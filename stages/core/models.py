"""Architecture registry.

Every model is built from plain hyperparameters (arch name, number of classes,
input channels) so that a checkpoint's card is enough to rebuild it: loading never
needs a pickled module. The CIFAR-style ResNet family (ResNet-20/32/44/56, He et al.
2016, 3 stages of 16/32/64 channels) reuses torchvision's ``BasicBlock``; only the
3x3 stem and the stage layout differ from the ImageNet ResNets.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


class CifarResNet(nn.Module):
    """3-stage CIFAR ResNet (depth = 6n + 2) with BatchNorm after every conv."""

    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._make_stage(width, n, stride=1)
        self.layer2 = self._make_stage(2 * width, n, stride=2)
        self.layer3 = self._make_stage(4 * width, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: each block starts as identity.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ARCHS = {f"resnet{d}": d for d in (20, 32, 44, 56)}


def build_model(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build an untrained model by registry name."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
    return CifarResNet(ARCHS[arch], num_classes, in_channels)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv and linear layers whose weights pruning acts on and sparsity counts."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
