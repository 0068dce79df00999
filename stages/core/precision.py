"""Numeric precision that fits the machine: ``auto`` runs bfloat16 autocast only where bf16 is native.

Native bf16: a CUDA device that supports it, or a CPU with AVX512-BF16 or AMX. Elsewhere (an AVX2-only
CPU) PyTorch emulates bf16 and autocast is slower, not faster: measured on a 2-core AMD EPYC with AVX2
only, one ResNet-20 training step at batch 128 took 2.55 s in bf16 vs 0.22 s in fp32 (11.5x), and the
bf16 synthesis ran at 0.13x the fp32 reference loop. ``resolve`` turns a requested precision
(``auto`` | ``fp32`` | ``bf16``) into the one that runs; ``bf16`` forced where it is emulated is
allowed but warns once. ``describe`` is what cards and metrics record.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch

from .params import PRECISIONS as CHOICES

_warned: set[str] = set()


def cpu_capability() -> str:
    """The vector ISA PyTorch's CPU kernels use here (``AVX2``, ``AVX512``, ``DEFAULT``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic runs in hardware on ``device`` (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve(requested: str, device: torch.device, key: str) -> str:
    """``fp32`` or ``bf16`` for ``requested`` on ``device``; ``key`` (e.g. ``synthesize.precision``) names the
    setting in the warning given once when bf16 is forced on a device that emulates it."""
    if requested not in CHOICES:
        raise ValueError(f"{key} = {requested!r}: choose one of {list(CHOICES)}")
    native = native_bf16(device)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native and key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"{key} = bf16 on a {device.type} without native bfloat16 (CPU capability {cpu_capability()}, no AVX512-BF16/AMX): "
            "bf16 is emulated here, ~10x slower than fp32 (measured 11.5x on a ResNet-20 training step); "
            f"set {key}: auto to run fp32 on this machine",
            stacklevel=2,
        )
    return requested


def autocast(precision: str, device: torch.device):
    """bfloat16 autocast for a resolved ``precision`` of ``bf16``; nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def describe(requested: str, resolved: str, device: torch.device) -> dict:
    """What ran, for cards and metrics: requested and resolved precision, the device's bf16 support, the CPU ISA."""
    return {
        "requested": requested,
        "resolved": resolved,
        "native_bf16": native_bf16(device),
        "device": device.type,
        "cpu_capability": cpu_capability(),
    }
