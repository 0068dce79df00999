"""Structured (channel) pruning with Torch-Pruning: smaller model, consistent BN, reload without pickle."""

import json

import pytest
import torch
from torch import nn

from stages.core.artifacts import save_model
from stages.core.checkpoints import load_model
from stages.core.cost import macs
from stages.core.models import build_model, layer_structure
from stages.core.pruning import prune_structured

SHAPE = (1, 28, 28)


def trained_bn(model):
    """Non-trivial BN running stats, so a wrong slice of them would change outputs."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *SHAPE) * 1.5 + 0.3)
    return model.eval()


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_mac_target_reached_and_forward_works(scope):
    torch.manual_seed(0)
    m = trained_bn(build_model("resnet20", 10, 1))
    before = macs(m, SHAPE)["macs"]
    info = prune_structured(m, "macs", 0.5, scope, SHAPE)
    after = macs(m, SHAPE)["macs"]
    assert info["macs_after"] == after
    assert 0.40 <= after / before <= 0.5  # stops at the first 1% step below the target
    assert m(torch.randn(4, *SHAPE)).shape == (4, 10)
    assert m.fc.out_features == 10  # classifier outputs are never pruned


def test_bn_shapes_match_their_convs():
    torch.manual_seed(0)
    m = trained_bn(build_model("resnet20", 10, 1))
    prune_structured(m, "channels", 0.3, "layerwise", SHAPE)
    mods = dict(m.named_modules())
    for name, mod in mods.items():
        if isinstance(mod, nn.BatchNorm2d):
            conv = mods[name.replace("bn", "conv")] if "bn" in name else mods[name[:-1] + "0"]  # downsample.1 <- downsample.0
            n = conv.out_channels
            assert mod.num_features == n
            assert mod.weight.shape == mod.bias.shape == mod.running_mean.shape == mod.running_var.shape == (n,)
    assert m.layer1[0].conv1.out_channels < 16  # really fewer channels
    # residual coupling: every block output of a stage has the stage's channel count
    assert m.layer1[0].conv2.out_channels == m.conv1.out_channels == m.layer1[2].conv2.out_channels


def test_structured_model_reloads_from_card_and_safetensors(tmp_path):
    torch.manual_seed(0)
    m = trained_bn(build_model("resnet20", 10, 1))
    prune_structured(m, "macs", 0.5, "global", SHAPE)
    card = {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "structure": layer_structure(m)}
    save_model(tmp_path, m, card)
    # the structure is plain JSON channel counts; the weights file is safetensors (no pickle anywhere)
    conv = m.layer1[0].conv1
    assert json.loads((tmp_path / "card.json").read_text())["structure"]["layer1.0.conv1"] == [conv.out_channels, conv.in_channels]
    # safetensors layout: 8-byte little-endian header length, then that many bytes of JSON naming every tensor; a
    # torch.save file starts with a zip header (PK\x03\x04) and a legacy one with a pickle opcode (\x80), and fail this
    raw = (tmp_path / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert raw[:2] != b"PK" and raw[:1] != b"\x80" and 8 + n <= len(raw)
    header = json.loads(raw[8 : 8 + n])
    assert {k for k in header if k != "__metadata__"} == set(m.state_dict())
    loaded, _ = load_model(tmp_path)
    x = torch.randn(4, *SHAPE)
    torch.testing.assert_close(loaded(x), m(x))


def test_card_without_structure_does_not_fit_pruned_weights(tmp_path):
    from stages.core.runtime import StageError

    m = build_model("resnet20", 10, 1)
    prune_structured(m, "channels", 0.3, "layerwise", SHAPE)
    save_model(tmp_path, m, {"arch": "resnet20", "num_classes": 10, "in_channels": 1})
    with pytest.raises(StageError, match="does not fit"):
        load_model(tmp_path)


def test_round_to_keeps_channel_counts_multiples():
    torch.manual_seed(0)
    m = trained_bn(build_model("resnet20", 10, 1))
    prune_structured(m, "macs", 0.5, "layerwise", SHAPE, round_to=8)
    counts = {mod.out_channels for mod in m.modules() if isinstance(mod, nn.Conv2d)}
    assert counts and all(c % 8 == 0 for c in counts)
    assert counts != {16, 32, 64}  # something was pruned
    assert m(torch.randn(2, *SHAPE)).shape == (2, 10)
