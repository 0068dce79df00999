"""Inference cost of a model: MACs, parameters, effective size in bits, CPU latency.

- MACs: ``torch.utils.flop_counter.FlopCounterMode`` on one image (FLOPs / 2); ``nonzero_macs``
  counts only products with a nonzero weight (what a sparse kernel could skip).
- Effective size: stored dense, every conv/linear weight costs its bit width; stored sparse
  (unstructured pruning), its nonzeros (after quantization) x its bit width plus 1 bit per weight
  for the bit mask; every other
  tensor element (biases, BatchNorm affine parameters and running statistics, a fake-quant layer's activation
  range and per-channel weight clip, which stand for the scales an integer runtime stores) costs 32 bits.
- Latency: median wall time of ``repeats`` forwards (fewer when a time budget is set) at a fixed batch
  size with the CPU thread count pinned, after warm-up. Fake-quant models are timed with quantization disabled: the
  simulation ops are not a deployment kernel, the float architecture underneath is what we time.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import prunable_layers
from .quant import FLOAT_BITS, quant_layers, quantization_disabled

WARMUP = 5


@torch.no_grad()
def macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """``{"macs": dense MACs, "nonzero_macs": MACs with a nonzero weight}`` for one image."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, *input_shape, device=device)
    out_sizes: dict[str, int] = {}
    hooks = [m.register_forward_hook(_size_hook(out_sizes, n)) for n, m in prunable_layers(model)]
    try:
        with FlopCounterMode(display=False) as counter, quantization_disabled(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    nonzero = 0
    for name, m in prunable_layers(model):
        positions = out_sizes[name] // m.weight.shape[0]  # output positions per output channel
        nonzero += positions * int((m.weight != 0).sum())
    return {"macs": counter.get_total_flops() // 2, "nonzero_macs": nonzero}


def _size_hook(store: dict, name: str):
    def hook(_m, _inputs, output):
        store[name] = output[0].numel()

    return hook


def effective_bits(model: nn.Module, sparse_storage: bool) -> int:
    """Model size in bits at the weights' bit widths (see the module docstring)."""
    quant = dict(quant_layers(model))
    weights = {}
    with torch.no_grad():
        for n, m in prunable_layers(model):
            w = quant[n].quantized_weight() if n in quant else m.weight  # zeros after rounding count as zeros
            weights[f"{n}.weight"] = (w, quant[n].weight_bits if n in quant else FLOAT_BITS)
    total = 0
    for name, w in model.state_dict().items():
        if name in weights:
            tensor, b = weights[name]
            total += int((tensor != 0).sum()) * b + tensor.numel() if sparse_storage else tensor.numel() * b
        elif name.endswith("num_batches_tracked"):
            continue
        else:
            total += w.numel() * 32
    return total


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], batch: int, threads: int, repeats: int, budget_s: float = 0.0) -> float:
    """Median milliseconds per forward of a ``batch``-image input on CPU with ``threads`` threads (channels_last).

    ``budget_s`` > 0 bounds the time spent: the first forward's time decides how many of the ``WARMUP``
    warm-up forwards and of the ``repeats`` timed ones fit (at least 3 timed), so a large model costs
    about ``budget_s`` seconds instead of ``repeats`` x its forward time."""
    model = copy.deepcopy(model).eval().cpu().to(memory_format=torch.channels_last)
    x = torch.zeros(batch, *input_shape).contiguous(memory_format=torch.channels_last)  # no draw from the global RNG
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with quantization_disabled(model):
            return median_ms(lambda: model(x), repeats, budget_s)
    finally:
        torch.set_num_threads(saved)


def median_ms(run, repeats: int, budget_s: float = 0.0) -> float:
    """Median milliseconds of ``run()`` after warm-up. ``budget_s`` > 0 bounds the time spent: the first run's time
    decides how many of the ``WARMUP`` warm-up runs and of the ``repeats`` timed ones fit (at least 3 timed)."""
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    warmup, timed = WARMUP - 1, repeats
    if budget_s > 0:
        warmup = min(warmup, int(0.2 * budget_s / first))
        timed = max(3, min(repeats, int(0.8 * budget_s / first)))
    for _ in range(warmup):
        run()
    times = []
    for _ in range(timed):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
