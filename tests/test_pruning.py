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


def test_lamp_scores_by_hand_and_allocation_differs_from_global_l1():
    """LAMP (Lee et al. 2021): score(u) = w_u^2 / sum_{v >= u} w_v^2 over a layer's weights sorted by |w|.
    A = [1, -2, 3]: squares 1, 4, 9, tails 14, 13, 9 -> 1/14, 4/13, 1. B = four 10s: 1/4, 1/3, 1/2, 1 (ties in any
    order). Keeping 4 of 7: global L1 keeps B whole and empties A; LAMP keeps A's 3 and three of B's weights."""
    from stages.core.pruning import guarded_global_masks, lamp_scores

    a, b = torch.tensor([1.0, -2.0, 3.0]), torch.full((4,), 10.0)
    sa, sb = lamp_scores([a, b])
    assert torch.allclose(sa, torch.tensor([1 / 14, 4 / 13, 1.0], dtype=torch.float64))
    assert sorted(sb.tolist()) == pytest.approx([1 / 4, 1 / 3, 1 / 2, 1.0])
    l1 = guarded_global_masks([a, b], 3 / 7, 0.0)
    assert l1[0].tolist() == [False, False, False] and l1[1].all()
    lamp = guarded_global_masks([a, b], 3 / 7, 0.0, lamp_scores([a, b]))
    assert lamp[0].tolist() == [False, False, True] and int(lamp[1].sum()) == 3


def test_lamp_ranking_on_a_model_keeps_the_overall_sparsity_and_every_layer():
    from stages.core.models import build_model, prunable_layers
    from stages.core.pruning import global_sparsity, make_permanent, prune_l1_unstructured

    m = build_model("mobilenet_v2", 10, 1)
    prune_l1_unstructured(m, 0.75, "global", min_density=0.0, ranking="lamp")
    make_permanent(m)
    assert global_sparsity(m) == pytest.approx(0.75, abs=1e-6)
    assert all(int((layer.weight != 0).sum()) >= 1 for _, layer in prunable_layers(m))
    with pytest.raises(ValueError, match="unknown pruning ranking"):
        prune_l1_unstructured(m, 0.5, "global", ranking="random")
