"""Architecture registry.

Every model is built from plain hyperparameters (arch name, number of classes, input channels)
so that a checkpoint's card is enough to rebuild it: loading never needs a pickled module.
``build_model`` is the one entry point; ``ARCH_NAMES`` lists the names it knows.

- resnet20/32/44/56: CIFAR ResNets (He et al. 2016; depth 6n+2, 3 stages of 16/32/64 channels)
  built from torchvision's ``BasicBlock``.
- resnet18/34/50, mobilenet_v2, vgg16_bn: torchvision's ImageNet models, their stem adapted to
  32x32 inputs and to the input-channel count; state-dict keys stay torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torchvision
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


def stem_conv(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    """3x3 stride-1 conv replacing an ImageNet stem, initialized like torchvision's convs."""
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def small_input_resnet(factory: Callable[..., torchvision.models.ResNet], num_classes: int, in_channels: int) -> nn.Module:
    """torchvision ResNet with the CIFAR stem: 3x3 stride-1 ``conv1`` and no max-pool (32x32 -> 4x4 at layer4)."""
    model = factory(num_classes=num_classes)
    model.conv1 = stem_conv(in_channels, model.conv1.out_channels, bias=False)
    model.maxpool = nn.Identity()
    return model


def small_input_mobilenet_v2(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision MobileNetV2 whose first conv (``features.0.0``) takes ``in_channels`` at stride 1."""
    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    first = model.features[0][0]
    model.features[0][0] = stem_conv(in_channels, first.out_channels, bias=False)
    return model


def small_input_vgg16_bn(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision VGG-16-BN in the CIFAR VGG convention: global average pooling and one ``Linear(512, num_classes)``
    classifier instead of the three 4096-wide layers. The first conv takes ``in_channels``; every max-pool rounds
    up (``ceil_mode``), so 28x28 inputs shrink 28-14-7-4-2-1 instead of reaching 0x0."""
    model = torchvision.models.vgg16_bn(num_classes=num_classes)
    first = model.features[0]
    model.features[0] = stem_conv(in_channels, first.out_channels, bias=True)
    for m in model.features:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(512, num_classes)  # the last block's channels
    nn.init.normal_(model.classifier.weight, 0, 0.01)  # torchvision's VGG init for linear layers
    nn.init.zeros_(model.classifier.bias)
    return model


ARCHS: dict[str, Callable[[int, int], nn.Module]] = {
    **{f"resnet{d}": partial(CifarResNet, d) for d in (20, 32, 44, 56)},
    "resnet18": partial(small_input_resnet, torchvision.models.resnet18),
    "resnet34": partial(small_input_resnet, torchvision.models.resnet34),
    "resnet50": partial(small_input_resnet, torchvision.models.resnet50),
    "mobilenet_v2": small_input_mobilenet_v2,
    "vgg16_bn": small_input_vgg16_bn,
}
ARCH_NAMES = tuple(ARCHS)


def build_model(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build an untrained model by registry name."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch](num_classes, in_channels)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv and linear layers whose weights pruning acts on and sparsity counts."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_structure(model: nn.Module) -> dict[str, list[int]]:
    """Channel counts of every conv ([out, in], or [out, in, groups] when grouped), linear ([out, in]) and
    BN ([features]) layer: with the arch name, enough to rebuild a channel-pruned model without unpickling a module."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = [m.out_channels, m.in_channels] + ([m.groups] if m.groups != 1 else [])
        elif isinstance(m, nn.Linear):
            out[name] = [m.out_features, m.in_features]
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = [m.num_features]
    return out


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def apply_structure(model: nn.Module, structure: dict[str, list[int]]) -> nn.Module:
    """Resize the layers of a freshly built model to ``structure`` (from ``layer_structure``); weights are
    left uninitialized, to be filled by a strict ``load_state_dict``. Depthwise convs stay depthwise
    (groups = in = out); other grouped convs cannot be resized."""
    modules = dict(model.named_modules())
    unknown = sorted(set(structure) - set(modules))
    if unknown:
        raise ValueError(f"structure names layers the architecture lacks: {unknown[:5]}")
    for name, shape in structure.items():
        m = modules[name]
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 and not is_depthwise(m):
                raise ValueError(f"{name}: grouped convolutions other than depthwise ones cannot be resized")
            out_ch, in_ch, groups = shape if len(shape) == 3 else (*shape, 1)
            if is_depthwise(m) and not out_ch == in_ch == groups:
                raise ValueError(f"{name} is depthwise: its structure must be [n, n, n] (or [1, 1]), got {shape}")
            if not is_depthwise(m) and groups != 1:
                raise ValueError(f"{name} is not grouped, but its structure has groups: {shape}")
            m.out_channels, m.in_channels, m.groups = out_ch, in_ch, groups
            m.weight = nn.Parameter(torch.empty(out_ch, in_ch // groups, *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(out_ch))
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
