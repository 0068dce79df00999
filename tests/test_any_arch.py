"""Any classifier as teacher: the arch syntax (registry, torchvision, module:callable), first-conv adaptation, card
round trips with arch_kwargs and the code hash, and pruning / fake-quant on models outside the registry. Toy sizes."""

import json
import sys

import pytest
import torch
import torchvision
from torch import nn

from stages.core.artifacts import save_model
from stages.core.checkpoints import load_model
from stages.core.models import apply_structure, arch_card, build_model, layer_structure, prunable_layers, resolve_arch
from stages.core.params import ParamsError, section_with
from stages.core.pruning import global_sparsity, make_permanent, prune_l1_unstructured, prune_structured
from stages.core.quant import layer_bits, quant_layers, quantize_model
from stages.core.runtime import StageError

EXAMPLE = "models.external.example_nets:TinyBNNet"


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A package ``usernets`` on the path, in a temporary working directory; yields its model file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "usernets").mkdir()
    path = tmp_path / "usernets" / "nets.py"
    path.write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes, width=4):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, width, 3)\n"
        "        self.bn = nn.BatchNorm2d(width)\n"
        "        self.fc = nn.Linear(width, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.bn(self.conv(x)).mean((2, 3)))\n"
        "def fixed():\n"
        "    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(5))\n"
        "def not_a_module(num_classes):\n"
        "    return num_classes\n"
        "value = 3\n"
    )
    yield path
    for name in [m for m in sys.modules if m == "usernets" or m.startswith("usernets.")]:
        del sys.modules[name]


def test_resolver_sources():
    assert resolve_arch("resnet18").source == "registry"  # the registry wins over torchvision's name
    assert resolve_arch("torchvision:resnet18").source == "torchvision"
    assert resolve_arch("regnet_x_400mf").name == "regnet_x_400mf"
    spec = resolve_arch(EXAMPLE)
    assert (spec.source, spec.module, spec.name) == ("custom", "models.external.example_nets", "TinyBNNet")


@pytest.mark.parametrize(
    "arch,words",
    [
        ("resnet21", ["unknown arch 'resnet21'", "torchvision:<name>", "module:callable", "resnet20"]),
        ("torchvision:fasterrcnn_resnet50_fpn", ["unknown arch"]),  # detection models are not classifiers
        ("torchvision:nonet", ["unknown arch"]),
        ("no_such_pkg.nets:Net", ["no_such_pkg", "module:callable"]),
        ("models.external.example_nets:Absent", ["has no 'Absent'"]),
        ("models.external:TinyBNNet", ["no source file"]),  # a namespace package
    ],
)
def test_resolver_errors_name_the_arch_and_the_syntax(arch, words):
    with pytest.raises(ValueError) as e:
        build_model(arch, 10, 3)
    for w in words:
        assert w in str(e.value)


def test_torchvision_model_is_stock_and_first_conv_adapted_only_when_channels_differ():
    torch.manual_seed(0)
    stock = torchvision.models.resnet18(num_classes=10)
    three = build_model("torchvision:resnet18", 10, 3)
    assert list(three.state_dict()) == list(stock.state_dict())
    assert three.conv1.stride == (2, 2) and isinstance(three.maxpool, nn.MaxPool2d)  # ImageNet stem kept
    three.load_state_dict(stock.state_dict(), strict=True)
    one = build_model("torchvision:resnet18", 10, 1)
    assert list(one.state_dict()) == list(stock.state_dict())  # torchvision's key names
    c = one.conv1
    assert (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.bias, c.groups) == (1, 64, (7, 7), (2, 2), (3, 3), None, 1)
    mnas = build_model("mnasnet0_5", 7, 1, {"dropout": 0.0})
    assert mnas.layers[0].in_channels == 1 and mnas.classifier[-1].out_features == 7 and mnas.classifier[0].p == 0.0
    with pytest.raises(ValueError, match="arch_kwargs"):
        build_model("torchvision:resnet18", 10, 3, {"bogus": 1})
    with pytest.raises(ValueError, match="registry"):
        build_model("resnet20", 10, 3, {"width": 8})


def test_custom_callable_with_and_without_num_classes(user_code):
    net = build_model("usernets.nets:Net", 6, 1, {"width": 3})
    assert net.fc.out_features == 6 and net.conv.out_channels == 3
    assert build_model("usernets.nets:Net", 6, 1, {"num_classes": 4}).fc.out_features == 4  # arch_kwargs win
    assert isinstance(build_model("usernets.nets:fixed", 6, 1), nn.Sequential)  # no num_classes parameter: none passed
    example = build_model(EXAMPLE, 10, 3, {"width": 8})  # num_classes and in_channels from the data
    assert example.features[0][0].in_channels == 3 and example.fc.out_features == 10
    with pytest.raises(ValueError, match="not an nn.Module"):
        build_model("usernets.nets:not_a_module", 6, 1)
    with pytest.raises(ValueError, match="not a class or function"):
        build_model("usernets.nets:value", 6, 1)
    with pytest.raises(ValueError, match="arch_kwargs"):
        build_model("usernets.nets:Net", 6, 1, {"depth": 3})


def test_card_round_trip_torchvision_with_arch_kwargs(tmp_path):
    torch.manual_seed(0)
    model = build_model("torchvision:mobilenet_v2", 5, 1, {"width_mult": 0.25}).eval()
    card = {**arch_card("torchvision:mobilenet_v2", {"width_mult": 0.25}), "num_classes": 5, "in_channels": 1}
    assert card["arch_source"] == "torchvision" and "arch_code" not in card
    save_model(tmp_path, model, card)
    loaded, got = load_model(tmp_path)
    assert got["arch_kwargs"] == {"width_mult": 0.25}
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_card_round_trip_custom_and_changed_code_refused(user_code, tmp_path):
    model = build_model("usernets.nets:Net", 3, 1, {"width": 5}).eval()
    card = {**arch_card("usernets.nets:Net", {"width": 5}), "num_classes": 3, "in_channels": 1}
    assert card["arch_source"] == "custom" and card["arch_code"] == "usernets/nets.py"
    assert card["arch_code_sha256"] == __import__("hashlib").sha256(user_code.read_bytes()).hexdigest()
    out = tmp_path / "teacher"
    out.mkdir()
    save_model(out, model, card)
    loaded, _ = load_model(out)
    assert loaded.conv.out_channels == 5
    user_code.write_text(user_code.read_text() + "# edited\n")
    with pytest.raises(StageError, match="architecture code usernets/nets.py changed since the teacher was made.*rerun dvc repro"):
        load_model(out)
    stale = json.loads((out / "card.json").read_text())
    del stale["arch_code_sha256"]
    (out / "card.json").write_text(json.dumps(stale))
    with pytest.raises(StageError, match="lacks 'arch_code_sha256'"):
        load_model(out)


def test_registry_card_without_new_fields_still_loads(tmp_path):
    save_model(tmp_path, build_model("resnet20", 10, 1), {"arch": "resnet20", "num_classes": 10, "in_channels": 1})
    assert load_model(tmp_path)[1]["arch"] == "resnet20"
    assert arch_card("resnet20") == {"arch": "resnet20", "arch_source": "registry", "arch_kwargs": {}}


def test_params_arch_syntax_and_arch_kwargs_types():
    for arch in ("resnet20", "regnet_x_400mf", "torchvision:resnet18", EXAMPLE, "pkg:make.model"):
        assert section_with("train_teacher", **{"arch": arch}).arch == arch
    cfg = section_with("train_teacher", **{"arch_kwargs": {"width": 8, "p": 0.1, "bn": True, "act": "relu", "sizes": [1, 2]}})
    assert cfg.arch_kwargs == {"width": 8, "p": 0.1, "bn": True, "act": "relu", "sizes": [1, 2]}
    assert section_with("train_teacher").arch_kwargs == {}
    for bad in ("torchvision:", "pkg:", ":Net", "res net", "a:b:c", "torchvision:re-snet", 5):
        with pytest.raises(ParamsError, match="train_teacher.arch"):
            section_with("train_teacher", **{"arch": bad})
    for bad in ([1, 2], {"w": {"x": 1}}, {"w": None}, {1: 2}, {"w": [[1]]}, "width=8"):
        with pytest.raises(ParamsError, match="train_teacher.arch_kwargs .* wrong type"):
            section_with("train_teacher", **{"arch_kwargs": bad})


def with_bn_stats(model, shape):
    model.train()
    with torch.no_grad():
        model(torch.randn(2, *shape) * 1.5 + 0.3)
    return model.eval()


CASES = [
    ("torchvision:resnet18", (1, 32, 32), {}),
    ("torchvision:resnet18", (3, 32, 32), {}),
    ("torchvision:mobilenet_v2", (3, 32, 32), {}),
    ("mnasnet0_5", (3, 32, 32), {}),
    (EXAMPLE, (1, 28, 28), {"width": 16}),
]


@pytest.mark.parametrize("arch,shape,kwargs", CASES, ids=[f"{a}-{s[0]}ch" for a, s, _ in CASES])
def test_structured_prune_reload_and_fake_quant(arch, shape, kwargs, tmp_path):
    torch.manual_seed(0)
    model = with_bn_stats(build_model(arch, 10, shape[0], kwargs), shape)
    info = prune_structured(model, "channels", 0.3, "layerwise", shape, round_to=8)
    assert info["params_after"] < info["params_before"]
    card = {**arch_card(arch, kwargs), "num_classes": 10, "in_channels": shape[0], "structure": layer_structure(model)}
    save_model(tmp_path, model, card)
    loaded, _ = load_model(tmp_path)  # rebuilt from the card, strict load
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    bits = layer_bits(loaded, 4, 8, 8)
    quantize_model(loaded, bits)
    assert len(quant_layers(loaded)) == len(prunable_layers(model))
    with torch.no_grad():
        out = loaded(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch,shape,kwargs", CASES[1:], ids=[f"{a}-{s[0]}ch" for a, s, _ in CASES[1:]])
def test_unstructured_prune(arch, shape, kwargs):
    model = build_model(arch, 10, shape[0], kwargs)
    prune_l1_unstructured(model, 0.5, "global")
    make_permanent(model)
    assert abs(global_sparsity(model) - 0.5) < 1e-3
    assert model(torch.randn(2, *shape)).shape == (2, 10)


class ChannelScale(nn.Module):
    """A per-channel learned scale held as a bare parameter: a layer apply_structure cannot resize."""

    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, n, 1, 1))

    def forward(self, x):
        return x * self.scale


def test_unsupported_models_fail_with_one_clear_error():
    with pytest.raises(ValueError, match=r"trunk_output\.block1\.block1-0\.f\.b\.0 is a Conv2d with groups=\d+.*l1_unstructured"):
        prune_structured(build_model("regnet_x_400mf", 10, 3), "channels", 0.3, "layerwise", (3, 32, 32))
    with pytest.raises(ValueError, match="Torch-Pruning cannot trace the channel dependencies of ShuffleNetV2"):
        prune_structured(build_model("shufflenet_v2_x0_5", 10, 3), "channels", 0.3, "layerwise", (3, 32, 32))
    scaled = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), ChannelScale(16), nn.Conv2d(16, 16, 3), nn.Flatten(1), nn.LazyLinear(4))
    scaled(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="2 is a ChannelScale: channel pruning resized it"):
        prune_structured(scaled, "channels", 0.5, "layerwise", (1, 8, 8))
    with pytest.raises(ValueError, match="grouped convolutions"):
        apply_structure(build_model("regnet_x_400mf", 10, 3), layer_structure(build_model("regnet_x_400mf", 10, 3)))


def test_train_teacher_names_an_unknown_arch():
    from types import SimpleNamespace

    from stages.train_teacher import teacher_model

    with pytest.raises(StageError, match="train_teacher.arch = 'resnet21'.*torchvision:<name>"):
        teacher_model(SimpleNamespace(arch="resnet21", arch_kwargs={}), 10, 1)
    assert teacher_model(SimpleNamespace(arch=EXAMPLE, arch_kwargs={"width": 4}), 10, 1).fc.in_features == 16
