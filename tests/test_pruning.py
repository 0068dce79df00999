import pytest
import torch

from stages.core.models import build_model, prunable_layers
from stages.core.pruning import apply_masks, global_sparsity, make_permanent, masks_of, prune_l1_unstructured, sparsity_table


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
