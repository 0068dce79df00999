"""Facts about the machine a timing ran on, for the line beside every number: the CPU's name and its int8
dot-product instructions (where ONNX Runtime's int8 kernels gain most). The vector ISA PyTorch uses and its bf16
support are precision.py's (``cpu_capability``, ``native_bf16``)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def int8_features() -> dict:
    """Whether the CPU has VNNI and AMX tiles (PyTorch's probes; False where this PyTorch lacks one)."""
    probe = {"vnni": "_is_vnni_supported", "amx": "_is_amx_tile_supported"}
    return {k: bool(getattr(torch.cpu, f, lambda: False)()) for k, f in probe.items()}
