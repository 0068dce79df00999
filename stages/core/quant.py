"""Simulated (fake-quant) low-precision conv and linear layers; BatchNorm stays untouched.

Each ``nn.Conv2d`` / ``nn.Linear`` is swapped for a subclass with the same parameter names
(``weight``, ``bias``) whose forward fake-quantizes
- its input activations per tensor, asymmetric, ``act_bits`` (range ``[act_lo, act_hi]`` held as
  buffers: calibrated once on the synthetic set, then frozen), and
- its weights per output channel, symmetric, ``weight_bits`` (levels -(2^(b-1)-1)..2^(b-1)-1 times
  clip x max|w| / (2^(b-1)-1), recomputed from the current weights at every forward, so zeros stay zero; ``clip``
  per channel is a buffer: 1 (nothing clipped) unless ``set_weight_clip`` chose the ratio with the least squared
  rounding error, at 2 bits a must: max|w| / 1 puts the rounding threshold at max|w| / 2 and most weights at 0).
Both use torch's ``fake_quantize_per_*_affine`` ops, whose backward is the straight-through
estimator (gradient 1 inside the range, 0 where clipped). The first conv and the last linear
layer get ``first_last_bits`` when it is nonzero, as in "The Knowledge Within".
Pruning masks (torch.nn.utils.prune) compose: they set ``weight`` before forward runs.
torch.ao's QAT fuses BN into the conv, which would break the BN-statistics hooks; this does not.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from tqdm import tqdm

from .training import minibatches

FLOAT_BITS = 32  # bits = 32 means "not quantized"
WEIGHT_RANGES = ("max", "mse")


def _fq_arithmetic(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The fake-quant forward written in plain ops (Div, Round, Clip, Sub, Mul) for ONNX export, which has
    QuantizeLinear only for 8-bit grids: (clamp(round(x * (1 / scale)) + zero, lo, hi) - zero) * scale, in the
    order of operations of torch's fake_quantize kernels (round half to even, like their nearbyint)."""
    zero = zero.to(x.dtype)
    return (torch.clamp(torch.round(x * (1.0 / scale)) + zero, lo, hi) - zero) * scale


def _weight_fq(w: torch.Tensor, bits: int, clip: torch.Tensor) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().abs().flatten(1).amax(1)
    scale = (flat * clip / qmax).clamp_min(1e-12).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    if torch.compiler.is_exporting():
        shape = (-1,) + (1,) * (w.dim() - 1)
        return _fq_arithmetic(w, scale.reshape(shape), zero.reshape(shape), -qmax, qmax)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)


def act_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float) and zero point (int32) tensors of an asymmetric ``bits``-bit grid covering [lo, hi] and 0.
    Tensors on the model's device: no host sync per forward."""
    lo, hi = lo.float().clamp(max=0.0), hi.float().clamp(min=0.0)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp(min=1e-8)
    zero = torch.round(-lo / scale).clamp(0, qmax).to(torch.int32)
    return scale.reshape(1), zero.reshape(1)


class _FakeQuant:
    """Mixin: bits, activation-range buffers, and the fake-quant of input and weight."""

    def _init_quant(self, weight_bits: int, act_bits: int) -> None:
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.quant_enabled = True
        self.observer = None  # calibration: a function of the input batch -> [lo, hi], recorded instead of quantizing
        self.observed: list[torch.Tensor] = []
        self.register_buffer("act_lo", torch.zeros(()))
        self.register_buffer("act_hi", torch.zeros(()))
        self.register_buffer("weight_clip", torch.ones(self.weight.shape[0], device=self.weight.device))

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observed.append(self.observer(x.detach().float()))
            return x
        if not self.quant_enabled or self.act_bits >= FLOAT_BITS:
            return x
        scale, zero = act_qparams(self.act_lo, self.act_hi, self.act_bits)
        if torch.compiler.is_exporting():
            return _fq_arithmetic(x, scale, zero, 0, 2**self.act_bits - 1)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 2**self.act_bits - 1)

    def quantized_weight(self) -> torch.Tensor:
        if not self.quant_enabled or self.weight_bits >= FLOAT_BITS:
            return self.weight
        return _weight_fq(self.weight, self.weight_bits, self.weight_clip)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}, act_bits={self.act_bits}"


class QuantConv2d(_FakeQuant, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self.quantized_weight(), self.bias)


class QuantLinear(_FakeQuant, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self._quant_input(x), self.quantized_weight(), self.bias)


def quant_layers(model: nn.Module) -> list[tuple[str, _FakeQuant]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _FakeQuant)]


def layer_bits(model: nn.Module, weight_bits: int, act_bits: int, first_last_bits: int) -> dict[str, tuple[int, int]]:
    """``{layer: (weight_bits, act_bits)}`` for every conv/linear layer: first and last get first_last_bits if nonzero."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    out = {n: (weight_bits, act_bits) for n in names}
    if first_last_bits and names:  # only what is quantized at all: 32w8a keeps float weights in the first/last layer too
        edge = (first_last_bits if weight_bits < FLOAT_BITS else FLOAT_BITS, first_last_bits if act_bits < FLOAT_BITS else FLOAT_BITS)
        for n in (names[0], names[-1]):
            out[n] = edge
    return out


def quantize_model(model: nn.Module, bits: dict[str, tuple[int, int]]) -> nn.Module:
    """Swap the named conv/linear layers for fake-quant ones in place (the same Parameter objects move over)."""
    for name, (wb, ab) in bits.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if isinstance(old, nn.Conv2d):
            new = QuantConv2d(
                old.in_channels,
                old.out_channels,
                old.kernel_size,
                old.stride,
                old.padding,
                old.dilation,
                old.groups,
                old.bias is not None,
                old.padding_mode,
                device="meta",
            )
        elif isinstance(old, nn.Linear):
            new = QuantLinear(old.in_features, old.out_features, old.bias is not None, device="meta")
        else:
            raise TypeError(f"{name} is a {type(old).__name__}, not a Conv2d or Linear")
        new.weight, new.bias = old.weight, old.bias
        new._init_quant(wb, ab)
        new.to(old.weight.device)
        setattr(parent, child, new)
    return model


@contextlib.contextmanager
def quantization_disabled(model: nn.Module):
    """Run the float model underneath (e.g. to time the architecture without the simulation ops)."""
    layers = [m for _, m in quant_layers(model)]
    saved = [m.quant_enabled for m in layers]
    for m in layers:
        m.quant_enabled = False
    try:
        yield model
    finally:
        for m, s in zip(layers, saved):
            m.quant_enabled = s


def mse_clip(w: torch.Tensor, bits: int, grid: int = 100, max_elements: int = 2**24) -> torch.Tensor:
    """Per output channel, the clip ratio r in (0, 1] whose symmetric ``bits``-bit grid (step r x max|w| / qmax)
    rounds the channel's weights with the least squared error: ``grid`` even ratios, then ``grid`` more across the
    best one's neighbours (resolution 2 / grid^2). Ties go to the larger ratio (less clipping). All-zero channels: 1."""
    qmax = 2 ** (bits - 1) - 1
    a = w.detach().float().abs().flatten(1)
    amax = a.amax(1)

    def best_of(ratios: torch.Tensor) -> torch.Tensor:  # ratios [R, C] -> [C]
        err = torch.empty_like(ratios)
        step = max(1, max_elements // max(a.numel(), 1))
        for i in range(0, len(ratios), step):
            s = (ratios[i : i + step] * amax / qmax).clamp_min(1e-12).unsqueeze(-1)  # [r, C, 1]
            err[i : i + step] = ((torch.clamp(torch.round(a / s), max=qmax) * s - a) ** 2).sum(-1)
        flipped = err.flip(0)  # argmin returns the first minimum: flip so that it is the largest ratio's
        return ratios.flip(0).gather(0, flipped.argmin(0, keepdim=True)).squeeze(0)

    coarse = best_of(torch.arange(1, grid + 1, dtype=torch.float32, device=a.device).div(grid).unsqueeze(1).expand(-1, len(a)))
    fine = (coarse + torch.linspace(-1, 1, grid, device=a.device).div(grid).unsqueeze(1)).clamp(1 / grid**2, 1.0)
    best = best_of(torch.cat([coarse.unsqueeze(0), fine]).sort(0).values)
    return torch.where(amax > 0, best, torch.ones_like(best))


@torch.no_grad()
def set_weight_clip(model: nn.Module, method: str) -> dict[str, list[float]]:
    """Every quantized-weight layer's per-channel clip ratio: 1 (``max``, nothing clipped) or ``mse_clip``
    (``mse``). Computed once from the weights, kept as the ``weight_clip`` buffer. Returns ``{layer: ratios}``."""
    if method not in WEIGHT_RANGES:
        raise ValueError(f"weight range {method!r} is not one of {WEIGHT_RANGES}")
    out = {}
    for name, m in quant_layers(model):
        if m.weight_bits >= FLOAT_BITS:
            continue
        clip = mse_clip(m.weight, m.weight_bits) if method == "mse" else torch.ones_like(m.weight_clip)
        m.weight_clip.copy_(clip)
        out[name] = clip.tolist()
    return out


def _range_observer(method: str, percentile: float):
    if method == "minmax":
        return lambda a: torch.stack([a.min(), a.max()])

    def observe(a: torch.Tensor) -> torch.Tensor:
        flat = a.flatten()
        if flat.numel() > 2**24:  # torch.quantile's input limit: an evenly spaced subsample
            flat = flat[torch.linspace(0, flat.numel() - 1, 2**24, device=flat.device).long()]
        return torch.quantile(flat, torch.tensor([1 - percentile / 100, percentile / 100], device=flat.device))

    return observe


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, batch_size: int, method: str, percentile: float, device) -> dict[str, list[float]]:
    """Set every layer's input range from images ``x``: per batch the min/max (``minmax``) or the
    ``percentile`` and its mirror (``percentile``), averaged over batches - the paper's running mean of
    per-chunk extremes. Observed with quantized weights and float activations. Returns ``{layer: [lo, hi]}``."""
    layers = quant_layers(model)
    if len(x) == 0:
        raise ValueError("no calibration images")
    model.eval()
    for _, m in layers:
        m.observer, m.observed = _range_observer(method, percentile), []
    try:
        for batch, idx in enumerate(tqdm(list(minibatches(len(x), batch_size)), desc="calibrate", unit="batch")):
            model(x[idx].to(device).contiguous(memory_format=torch.channels_last))
            for name, m in layers:
                if m.observed and not torch.isfinite(m.observed[-1]).all():
                    raise ValueError(f"calibration batch {batch}: {name} saw non-finite activations (range {m.observed[-1].tolist()})")
        ranges = {}
        for name, m in layers:
            lo, hi = (float(v) for v in torch.stack(m.observed).mean(0))
            if not (torch.isfinite(torch.tensor([lo, hi])).all()):
                raise ValueError(f"calibration of {name} gave a non-finite range [{lo}, {hi}]")
            m.act_lo.fill_(lo)
            m.act_hi.fill_(hi)
            ranges[name] = [lo, hi]
    finally:
        for _, m in layers:
            m.observer, m.observed = None, []
    return ranges
