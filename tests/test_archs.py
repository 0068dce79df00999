"""Every registry arch on CIFAR-like (3x32x32) and MNIST-like (1x28x28) inputs: training step, BN hooks,
unstructured prune + KD, structured prune + reload from the card. Sizes stay tiny: batch 2, a couple of steps."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from stages.core.artifacts import save_model
from stages.core.bn import BatchStatsHook, bn_layers
from stages.core.checkpoints import load_model
from stages.core.cost import macs
from stages.core.kd import distill
from stages.core.models import ARCH_NAMES, apply_structure, build_model, layer_structure, prunable_layers
from stages.core.pruning import apply_masks, global_sparsity, make_permanent, masks_of, prune_l1_unstructured, prune_structured

NUM_CLASSES = 10
SHAPES = [(3, 32, 32), (1, 28, 28)]

arch_shape = pytest.mark.parametrize("shape", SHAPES, ids=["3x32x32", "1x28x28"])
archs = pytest.mark.parametrize("arch", ARCH_NAMES)


def built(arch, shape, seed=0):
    torch.manual_seed(seed)
    return build_model(arch, NUM_CLASSES, shape[0])


def with_bn_stats(model, shape):
    """Non-trivial BN running statistics (a train-mode forward), so that mis-sliced statistics change outputs."""
    model.train()
    with torch.no_grad():
        model(torch.randn(2, *shape) * 1.5 + 0.3)
    return model.eval()


@archs
@arch_shape
def test_forward_backward(arch, shape):
    model = built(arch, shape).train()
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, NUM_CLASSES)
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@archs
@arch_shape
def test_bn_hook_sees_every_bn_layer(arch, shape):
    model = built(arch, shape).eval()
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n for n, _ in bn_layers(model)] == [n for n, _ in bns]
    assert len(bns) == sum(isinstance(m, nn.Conv2d) for m in model.modules())  # BN after every conv
    with torch.no_grad(), BatchStatsHook(model) as hook:
        model(torch.randn(2, *shape))
    assert set(hook.stats) == {n for n, _ in bns}
    for name, bn in bns:
        mean, var = hook.stats[name]
        assert mean.shape == var.shape == (bn.num_features,), name
        assert torch.isfinite(mean).all() and (var >= 0).all(), name


@archs
@arch_shape
def test_unstructured_prune_then_distill_keeps_zeros(arch, shape):
    teacher = with_bn_stats(built(arch, shape), shape)
    student = copy.deepcopy(teacher)
    prune_l1_unstructured(student, 0.75, "global")
    masks = masks_of(student)
    make_permanent(student)
    apply_masks(student, masks)  # as the distill stage does after loading the pruned model
    cfg = SimpleNamespace(
        epochs=1,
        batch_size=2,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="constant",
        temperature=3.0,
        freeze_bn=False,
        recalibrate_bn=False,
        max_shift=1,
        flip=True,
        iq_beta=0.0,
        iq_layers="",
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        adaptive_rounds=0,
        adaptive_images=1,
        adaptive_weight=0.0,
    )
    x = torch.randn(4, *shape)  # two steps at batch 2
    before = {n: m.weight.detach().clone() for n, m in prunable_layers(student)}
    history = distill(student, teacher, x, cfg, torch.device("cpu"), seed=0)
    assert math.isfinite(history[0]["kd_loss"])
    make_permanent(student)
    for name, m in prunable_layers(student):
        w = m.weight.detach()
        assert torch.all(w[~masks[f"{name}.weight"]] == 0), name
    assert abs(global_sparsity(student) - 0.75) < 1e-3
    assert any(not torch.equal(m.weight, before[n]) for n, m in prunable_layers(student))  # the student did train


@archs
@arch_shape
def test_structured_prune_reloads_from_card(arch, shape, tmp_path):
    model = with_bn_stats(built(arch, shape), shape)
    unpruned = layer_structure(model)
    info = prune_structured(model, "macs", 0.5, "layerwise", shape, round_to=8)
    assert info["macs_after"] <= 0.5 * info["macs_before"]
    assert info["macs_after"] == macs(model, shape)["macs"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert prunable_layers(model)[-1][1].out_features == NUM_CLASSES
    structure = layer_structure(model)
    if arch == "mobilenet_v2":  # depthwise convs shrink with their groups
        depthwise = [k for k, s in structure.items() if len(s) == 3]
        assert depthwise and all(structure[k][0] == structure[k][1] == structure[k][2] for k in depthwise)
        assert any(structure[k][0] < unpruned[k][0] for k in depthwise)
    save_model(tmp_path, model, {"arch": arch, "num_classes": NUM_CLASSES, "in_channels": shape[0], "structure": structure})
    loaded, _ = load_model(tmp_path)  # card JSON + safetensors: no pickle
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@archs
def test_build_is_deterministic(arch):
    a, b = built(arch, (3, 32, 32)).state_dict(), built(arch, (3, 32, 32)).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resnet18_keeps_torchvision_keys():
    tv = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    tv.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    state = tv.state_dict()
    model = build_model("resnet18", NUM_CLASSES, 3)
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state, strict=True)
    assert isinstance(model.maxpool, nn.Identity)


def test_vgg16_bn_is_the_cifar_variant():
    model = build_model("vgg16_bn", NUM_CLASSES, 1)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    assert all(m.ceil_mode for m in model.features if isinstance(m, nn.MaxPool2d))
    assert model.features[0].in_channels == 1


def test_existing_cards_keep_two_entry_convs():
    """groups == 1 keeps the [out, in] format that existing cards hold."""
    assert all(len(s) <= 2 for s in layer_structure(build_model("resnet20", NUM_CLASSES, 1)).values())


def test_apply_structure_rejects_bad_groups():
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="grouped"):
        apply_structure(grouped, {"0": [2, 4, 2]})
    depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(ValueError, match="depthwise"):
        apply_structure(depthwise, {"0": [8, 4]})
    apply_structure(depthwise, {"0": [4, 4, 4]})
    assert depthwise[0].weight.shape == (4, 1, 3, 3) and depthwise[0].groups == 4
    with pytest.raises(ValueError, match="not grouped"):
        apply_structure(nn.Sequential(nn.Conv2d(4, 4, 3)), {"0": [2, 2, 2]})
