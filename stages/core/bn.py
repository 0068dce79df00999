"""The one BatchNorm-statistics hook used everywhere.

``BatchStatsHook`` records, for every BN layer, the per-channel mean and (biased)
variance of the batch entering it; ``bn_l2_loss`` compares those with stored
running statistics (DeepInversion's feature-distribution regularizer). The same
hook serves synthesis, BN-stats extraction checks and tests.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def running_stats(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (running_mean, running_var)}`` copied out of the model's BN buffers."""
    return {n: (m.running_mean.detach().clone(), m.running_var.detach().clone()) for n, m in bn_layers(model)}


def batch_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over all but the channel dim, in float32."""
    x = x.float().transpose(0, 1).reshape(x.shape[1], -1)
    return x.mean(1), x.var(1, unbiased=False)


class BatchStatsHook:
    """Context manager: while active, ``self.stats[layer] = (mean, var)`` of each BN input.

    Gradients flow through the recorded statistics, so a loss on them reaches the input.
    """

    def __init__(self, model: nn.Module):
        self.layers = bn_layers(model)
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = []

    def __enter__(self) -> BatchStatsHook:
        for name, module in self.layers:
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name)))
        return self

    def _make_hook(self, name: str):
        def hook(_module, inputs):
            self.stats[name] = batch_mean_var(inputs[0])

        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def bn_l2_loss(batch: dict[str, tuple[torch.Tensor, torch.Tensor]], target: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum over layers of ||mu_batch - mu_target||_2 + ||var_batch - var_target||_2."""
    terms = [torch.linalg.vector_norm(mu - target[n][0]) + torch.linalg.vector_norm(var - target[n][1]) for n, (mu, var) in batch.items()]
    return torch.stack(terms).sum()
