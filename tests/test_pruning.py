import pytest
import torch

from stages.core.models import build_model, prunable_layers
from stages.core.pruning import (
    apply_masks,
    effective_floor,
    global_sparsity,
    guarded_global_masks,
    make_permanent,
    masks_of,
    prune_l1_unstructured,
    sparsity_table,
)


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_global_sparsity_is_exact(sparsity):
    m = build_model("resnet20", 10, 1)
    prune_l1_unstructured(m, sparsity, "global")
    make_permanent(m)
    assert abs(global_sparsity(m) - sparsity) < 1e-4
    assert not any(hasattr(mod, "weight_mask") for _, mod in prunable_layers(m))


def test_global_removes_smallest_magnitudes(toy_net):
    all_w = torch.cat([mod.weight.detach().abs().flatten() for _, mod in prunable_layers(toy_net)])
    prune_l1_unstructured(toy_net, 0.5, "global")
    make_permanent(toy_net)
    kept = torch.cat([mod.weight.detach().abs().flatten() for _, mod in prunable_layers(toy_net)])
    kept = kept[kept != 0]
    assert kept.min() >= all_w.kthvalue(len(all_w) // 2).values


def test_layerwise_prunes_each_layer(toy_net):
    prune_l1_unstructured(toy_net, 0.5, "layerwise")
    make_permanent(toy_net)
    for row in sparsity_table(toy_net):
        assert abs(row["sparsity"] - 0.5) <= 1 / row["numel"] + 1e-9


def test_masks_keep_pruned_weights_zero_during_training(toy_net):
    prune_l1_unstructured(toy_net, 0.75, "global")
    masks = masks_of(toy_net)
    make_permanent(toy_net)
    apply_masks(toy_net, masks)
    opt = torch.optim.SGD(toy_net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(toy_net(torch.randn(8, 1, 8, 8)), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    make_permanent(toy_net)
    for name, mod in prunable_layers(toy_net):
        w = mod.weight.detach()
        assert torch.all(w[~masks[f"{name}.weight"]] == 0)
    assert abs(global_sparsity(toy_net) - 0.75) < 0.02  # kept weights may only become zero by chance


def test_apply_masks_rejects_unknown_layer(toy_net):
    with pytest.raises(KeyError, match="unknown layers"):
        apply_masks(toy_net, {"nope.weight": torch.ones(1, dtype=torch.bool)})


def test_guarded_global_pruning_keeps_a_floor_in_every_layer_at_the_same_overall_sparsity():
    small = torch.tensor([0.01, 0.02, 0.03, 0.04])  # plain global L1 at 50% would empty this layer
    big = torch.arange(1.0, 13.0)  # 1..12
    plain = guarded_global_masks([small, big], 0.5, 0.0)
    assert plain[0].sum() == 0 and plain[1].tolist() == [False] * 4 + [True] * 8
    guarded = guarded_global_masks([small, big], 0.5, 0.25)  # each layer keeps >= ceil(0.25 * n)
    assert guarded[0].tolist() == [False, False, False, True]  # the small layer's largest weight
    assert guarded[1].tolist() == [False] * 5 + [True] * 7  # the rest of the 8 kept weights: the largest of the others
    assert sum(int(m.sum()) for m in guarded) == 8


def test_min_density_is_exact_on_a_real_model_and_plain_global_matches_torch():
    plain, m = build_model("resnet20", 10, 1), build_model("resnet20", 10, 1)
    m.load_state_dict(plain.state_dict())
    prune_l1_unstructured(plain, 0.9, "global")
    prune_l1_unstructured(m, 0.9, "global", min_density=0.1)  # capped at half the average density: 0.05
    make_permanent(m)
    make_permanent(plain)
    assert abs(global_sparsity(m) - 0.9) < 1e-4
    assert min(1 - r["sparsity"] for r in sparsity_table(m)) >= 0.05 - 1e-9  # no layer below the floor
    assert effective_floor(0.75, 0.1) == 0.1 and abs(effective_floor(0.9, 0.1) - 0.05) < 1e-12
    a, b = build_model("resnet20", 10, 1), build_model("resnet20", 10, 1)
    b.load_state_dict(a.state_dict())
    prune_l1_unstructured(a, 0.75, "global", min_density=0.0)  # torch.nn.utils.prune.global_unstructured
    masks = guarded_global_masks([layer.weight for _, layer in prunable_layers(b)], 0.75, 0.0)
    assert all(torch.equal(layer.weight_mask.bool(), mk) for (_, layer), mk in zip(prunable_layers(a), masks))
