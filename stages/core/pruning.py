"""Magnitude pruning of conv + linear weights with torch.nn.utils.prune.

``prune_l1_unstructured`` leaves the model re-parametrized (``weight_orig`` x
``weight_mask``), so any later training keeps pruned weights at exactly zero;
``make_permanent`` folds the masks back into plain ``weight`` tensors for saving.
Masks travel as their own safetensors file and are re-applied with ``apply_masks``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from .models import prunable_layers


def prune_l1_unstructured(model: nn.Module, sparsity: float, scope: str) -> None:
    """Zero the smallest-|w| fraction ``sparsity`` of conv+linear weights, globally or per layer."""
    layers = [m for _, m in prunable_layers(model)]
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=sparsity)
    elif scope == "layerwise":
        for m in layers:
            prune.l1_unstructured(m, "weight", amount=sparsity)
    else:
        raise ValueError(f"unknown pruning scope {scope!r}")


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer.weight: bool mask}`` for every conv/linear layer (all-true where unpruned)."""
    out = {}
    for name, m in prunable_layers(model):
        mask = getattr(m, "weight_mask", None)
        out[f"{name}.weight"] = (mask if mask is not None else (m.weight != 0)).detach().bool().cpu()
    return out


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Re-parametrize each layer with its mask so optimization cannot revive pruned weights."""
    layers = dict(prunable_layers(model))
    missing = [k for k in masks if k.removesuffix(".weight") not in layers]
    if missing:
        raise KeyError(f"masks for unknown layers: {missing[:5]}")
    for key, mask in masks.items():
        m = layers[key.removesuffix(".weight")]
        prune.custom_from_mask(m, "weight", mask.to(m.weight.device))


def make_permanent(model: nn.Module) -> None:
    """Fold every mask into its weight (weight = weight_orig * mask) and drop the re-parametrization."""
    for _, m in prunable_layers(model):
        if prune.is_pruned(m):
            prune.remove(m, "weight")


def sparsity_table(model: nn.Module) -> list[dict]:
    """Per-layer zero counts of conv+linear weights, counted from the weight values themselves."""
    rows = []
    for name, m in prunable_layers(model):
        w = m.weight.detach()
        zeros = int((w == 0).sum())
        rows.append({"layer": name, "type": type(m).__name__, "numel": w.numel(), "zeros": zeros, "sparsity": zeros / w.numel()})
    return rows


def global_sparsity(model: nn.Module) -> float:
    rows = sparsity_table(model)
    return sum(r["zeros"] for r in rows) / sum(r["numel"] for r in rows)
