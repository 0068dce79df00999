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


def layer_structure(model: nn.Module) -> dict[str, list[int]]:
    """Channel counts of every conv / linear ([out, in]) and BN ([features]) layer: with the arch name,
    enough to rebuild a channel-pruned model without unpickling a module."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = [m.out_channels, m.in_channels]
        elif isinstance(m, nn.Linear):
            out[name] = [m.out_features, m.in_features]
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = [m.num_features]
    return out


def apply_structure(model: nn.Module, structure: dict[str, list[int]]) -> nn.Module:
    """Resize the layers of a freshly built model to ``structure`` (from ``layer_structure``); weights are
    left uninitialized, to be filled by a strict ``load_state_dict``."""
    modules = dict(model.named_modules())
    unknown = sorted(set(structure) - set(modules))
    if unknown:
        raise ValueError(f"structure names layers the architecture lacks: {unknown[:5]}")
    for name, shape in structure.items():
        m = modules[name]
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ValueError(f"{name}: grouped convolutions cannot be resized")
            m.out_channels, m.in_channels = shape
            m.weight = nn.Parameter(torch.empty(shape[0], shape[1], *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(shape[0]))
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = shape
            m.weight = nn.Parameter(torch.empty(shape[0], shape[1]))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(shape[0]))
        elif isinstance(m, nn.BatchNorm2d):
            (n,) = shape
            m.num_features = n
            if m.affine:
                m.weight, m.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))
            m.register_buffer("running_mean", torch.zeros(n))
            m.register_buffer("running_var", torch.ones(n))
        else:
            raise ValueError(f"{name} is a {type(m).__name__}: only Conv2d, Linear and BatchNorm2d can be resized")
    return model
