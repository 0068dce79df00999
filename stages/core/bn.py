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


class _BatchMoments(torch.autograd.Function):
    """Per-channel mean and biased variance of ``x`` (N, C, ...) in float32 (float64 for float64 input), differentiable.

    The forward pass takes the moments from the fused batch-norm kernel (one pass over ``x``;
    eps 0, so var = invstd^-2); the backward is the closed form d mean/dx = 1/n,
    d var/dx = 2 (x - mean) / n. Measured on this CPU (256 x 16 x 28 x 28, channels_last,
    forward + backward): 5.8 ms against 21 ms for ``x.transpose(0, 1).reshape(C, -1).var(1)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        if x.dtype in (torch.bfloat16, torch.float16):
            # mixed-type kernel: low-precision input, float32 affine parameters -> float32 statistics, no float32 copy of x
            one = torch.ones(x.shape[1], dtype=torch.float32, device=x.device)
            _, mean, invstd = torch.native_batch_norm(x, one, torch.zeros_like(one), None, None, True, 0.0, 0.0)
        else:
            xf = x if x.dtype == torch.float64 else x.float()
            _, mean, invstd = torch.native_batch_norm(xf, None, None, None, None, True, 0.0, 0.0)
        ctx.save_for_backward(x, mean)
        return mean, invstd.pow(-2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mean, g_var):
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # dL/dx = a * x + b per channel, a = 2 g_var / n, b = g_mean / n - a * mean: one fused pass over x
        a = (2.0 / n) * g_var if g_var is not None else torch.zeros_like(mean)
        b = -a * mean + (g_mean / n if g_mean is not None else 0.0)
        return torch.addcmul(b.view(shape), a.view(shape), x).to(x.dtype)


def batch_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over all but the channel dim, in float32 or float64 (gradients reach ``x``)."""
    return _BatchMoments.apply(x)


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


# --- BN-Stats (BNS) divergence of "The Knowledge Within" (Haroush et al. 2020) ---------------------------------------
#
# The input normalization counts as one more "layer": normalized training data has per-channel
# mean 0 and variance 1, so the network input's batch statistics are compared with (0, 1).

INPUT = "input"
BATCH_VAR_EPS = 1e-8


def with_input(stats: dict, x: torch.Tensor) -> dict:
    """``stats`` plus the batch statistics of the network input ``x`` under the key ``INPUT``."""
    return {INPUT: batch_mean_var(x), **stats}


def with_input_target(stats: dict, channels: int) -> dict:
    """``stats`` plus the input layer's target (mean 0, var 1 per channel in normalized space)."""
    ref = next(iter(stats.values()))[0] if stats else torch.zeros(0)
    return {INPUT: (torch.zeros(channels, device=ref.device), torch.ones(channels, device=ref.device)), **stats}


def gaussian_kl(mu_p: torch.Tensor, var_p: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor) -> torch.Tensor:
    """Per-channel KL(N(mu_p, var_p) || N(mu_q, var_q))."""
    return 0.5 * (torch.log(var_q / var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1.0)


def bns_kl(batch: dict[str, tuple[torch.Tensor, torch.Tensor]], target: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over layers of the channel-mean KL(N(stored mu, var) || N(batch mu, var + 1e-8)).

    ``target`` holds the stored (running) statistics; every layer of ``batch`` must be in it.
    """
    terms = []
    for name, (mu_b, var_b) in batch.items():
        mu_s, var_s = target[name]
        terms.append(gaussian_kl(mu_s, var_s.clamp_min(BATCH_VAR_EPS), mu_b, var_b + BATCH_VAR_EPS).mean())
    return torch.stack(terms).mean()


@torch.no_grad()
def dataset_stats(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device | str = "cpu") -> dict:
    """Per-channel mean and variance of every BN input (and of the network input) over a whole data set.

    ``model`` runs in eval mode; batches are pooled exactly (float64 sums), so the result does
    not depend on the batch size.
    """
    model.eval()
    sums: dict[str, list] = {}
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device).float().contiguous(memory_format=torch.channels_last)
        with BatchStatsHook(model) as hook:
            model(xb)
        for name, (mu, var) in with_input(hook.stats, xb).items():
            n = len(xb)
            mu, var = mu.double(), var.double()
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += n
            acc[1] = acc[1] + n * mu
            acc[2] = acc[2] + n * (var + mu * mu)
    out = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n
        out[name] = (mean.float(), (s2 / n - mean * mean).clamp_min(0).float())
    return out


def j_kl(model: nn.Module, x: torch.Tensor, batch_size: int = 500, device: torch.device | str = "cpu") -> float:
    """The BNS divergence of a data set ``x`` (normalized inputs) from the model's training data.

    Mean over BN layers (and the input) of KL(N(running stats) || N(data set's stats)); ~0 for
    data distributed like the training data, large for data unlike it.
    """
    channels = x.shape[1]
    target = with_input_target({n: (mu.to(device), var.to(device)) for n, (mu, var) in running_stats(model).items()}, channels)
    return float(bns_kl(dataset_stats(model, x, batch_size, device), target))
