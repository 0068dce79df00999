"""Architectures: the registry, torchvision's classifiers and the user's own code.

Every model is built from plain hyperparameters (arch string, arch_kwargs, number of classes,
input channels) so that a checkpoint's card is enough to rebuild it: loading never needs a
pickled module. ``build_model`` is the one entry point; ``resolve_arch`` reads the arch string:

- a registry name (``ARCH_NAMES``; registry wins on name clashes):
  - resnet20/32/44/56: CIFAR ResNets (He et al. 2016; depth 6n+2, 3 stages of 16/32/64 channels)
    built from torchvision's ``BasicBlock``.
  - resnet18/34/50, mobilenet_v2, vgg16_bn: torchvision's ImageNet models, their stem adapted to
    32x32 inputs and to the input-channel count; state-dict keys stay torchvision's.
- ``torchvision:<name>``, or a bare torchvision classification model name outside the registry:
  torchvision's stock model, stem unchanged; only its first conv is replaced when the input
  channels differ.
- ``package.module:callable``: the user's own factory (a class or function returning an
  nn.Module), imported from the project tree or an installed package; its source file's sha256
  goes on the card, so a later stage refuses to rebuild from changed code.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

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


def init_like_torchvision(conv: nn.Conv2d) -> nn.Conv2d:
    """torchvision's conv init: kaiming-normal (fan_out, relu) weights, zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def stem_conv(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    """3x3 stride-1 conv replacing an ImageNet stem, initialized like torchvision's convs."""
    return init_like_torchvision(nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=bias))


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


ARCH_SYNTAX = f"a registry name ({', '.join(ARCH_NAMES)}), torchvision:<name> (a torchvision classifier) or package.module:callable"
ARCH_CARD_FIELDS = ("arch_source", "arch_kwargs", "arch_code", "arch_code_sha256")  # with "arch": what rebuilds the architecture


@dataclass(frozen=True)
class ArchSpec:
    """What an arch string names: ``source`` registry | torchvision | custom, ``name`` the registry or torchvision
    model name or the callable's attribute path, ``module`` the custom code's module."""

    source: str
    name: str
    module: str = ""


def torchvision_names() -> list[str]:
    """torchvision's classification models (not detection, segmentation, video or quantized ones)."""
    return torchvision.models.list_models(module=torchvision.models)


def resolve_arch(arch: str) -> ArchSpec:
    """Read an arch string (see the module docstring); ValueError naming what is accepted when it names nothing."""
    prefix, colon, rest = arch.partition(":")
    if not colon and arch in ARCHS:
        return ArchSpec("registry", arch)
    if (not colon and arch in torchvision_names()) or (prefix == "torchvision" and rest in torchvision_names()):
        return ArchSpec("torchvision", rest or arch)
    if colon and prefix != "torchvision" and prefix and rest:
        custom_source(arch, prefix)  # the module must exist
        return ArchSpec("custom", rest, prefix)
    hint = difflib.get_close_matches(rest or arch, [*ARCHS, *torchvision_names()], n=1)
    raise ValueError(f"unknown arch {arch!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; expected {ARCH_SYNTAX}")


def custom_source(arch: str, module: str) -> Path:
    """The source file of a custom arch's module, found without running the module itself."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:  # a parent package is missing
        raise ValueError(f"arch {arch!r}: cannot find module {module!r} ({e}); expected {ARCH_SYNTAX}") from e
    if spec is None:
        raise ValueError(f"arch {arch!r}: no module {module!r} on the path (run from the project root); expected {ARCH_SYNTAX}")
    if not spec.has_location or not spec.origin or not Path(spec.origin).is_file():
        raise ValueError(f"arch {arch!r}: module {module!r} has no source file (a namespace package or a built-in module)")
    return Path(spec.origin)


def arch_card(arch: str, arch_kwargs: dict | None = None) -> dict:
    """The card fields that rebuild ``arch``: arch, arch_source, arch_kwargs and, for custom code, arch_code (the module
    file, relative to the working directory when inside it) and arch_code_sha256 (that file's sha256)."""
    spec = resolve_arch(arch)
    card = {"arch": arch, "arch_source": spec.source, "arch_kwargs": dict(arch_kwargs or {})}
    if spec.source == "custom":
        path = custom_source(arch, spec.module).resolve()
        cwd = Path.cwd().resolve()
        card["arch_code"] = str(path.relative_to(cwd) if path.is_relative_to(cwd) else path)
        card["arch_code_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return card


def with_in_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """``model`` whose first Conv2d takes ``in_channels``: when it takes another count, it is replaced by a conv with the
    same out_channels, kernel, stride, padding, dilation and bias (groups 1), initialized like torchvision's."""
    name, first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if first is None or first.in_channels == in_channels:
        return model
    conv = nn.Conv2d(
        in_channels,
        first.out_channels,
        first.kernel_size,
        first.stride,
        first.padding,
        first.dilation,
        bias=first.bias is not None,
        padding_mode=first.padding_mode,
    )
    model.set_submodule(name, init_like_torchvision(conv))
    return model


def build_custom(arch: str, spec: ArchSpec, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    """Call the user's factory with ``kwargs``, plus num_classes and in_channels where its signature names them and
    ``kwargs`` does not."""
    try:
        factory = importlib.import_module(spec.module)
    except ImportError as e:
        raise ValueError(f"arch {arch!r}: importing {spec.module!r} failed: {e}") from e
    for part in spec.name.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"arch {arch!r}: module {spec.module!r} has no {spec.name!r}; expected {ARCH_SYNTAX}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"arch {arch!r}: {spec.name} is a {type(factory).__name__}, not a class or function")
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no introspectable signature
        accepted = {}
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key in accepted and key not in kwargs:
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"arch {arch!r} with arch_kwargs {kwargs}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"arch {arch!r}: {spec.name}(...) returned a {type(model).__name__}, not an nn.Module")
    return model


def build_model(arch: str, num_classes: int, in_channels: int, arch_kwargs: dict | None = None) -> nn.Module:
    """Build an untrained model from an arch string (registry name, ``torchvision:<name>``, ``module:callable``)."""
    spec = resolve_arch(arch)
    kwargs = dict(arch_kwargs or {})
    if spec.source == "registry":
        if kwargs:
            raise ValueError(f"arch_kwargs {sorted(kwargs)} apply to torchvision: and module:callable archs, not to registry {arch!r}")
        return ARCHS[arch](num_classes, in_channels)
    if spec.source == "torchvision":
        try:
            model = torchvision.models.get_model(spec.name, weights=None, num_classes=num_classes, **kwargs)
        except TypeError as e:
            raise ValueError(f"arch {arch!r} with arch_kwargs {kwargs}: {e}") from e
        return with_in_channels(model, in_channels)
    return build_custom(arch, spec, num_classes, in_channels, kwargs)


def versioned(model: nn.Module, state: dict[str, torch.Tensor]) -> OrderedDict:
    """``state`` tagged with ``model``'s module versions, as ``model.state_dict()`` tags them: a state dict read back from
    safetensors has none, and some torchvision models (MNASNet) refuse to load without their version."""
    out = OrderedDict(state)
    out._metadata = model.state_dict()._metadata
    return out


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
