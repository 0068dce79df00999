"""Bring your own teacher: read a state_dict file without running any code from it, and check that
it fits a registry architecture before anything else happens.

Formats: ``.safetensors`` (tensors only), or a torch file (``.pt``/``.pth``/``.bin``) read with
``torch.load(weights_only=True)``, whose unpickler accepts only tensors and plain containers and
refuses any object that would run code. A checkpoint dict that wraps the weights under
``state_dict`` / ``model_state_dict`` / ``model`` is unwrapped, and a ``module.`` prefix
(DataParallel / DDP) is stripped.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .bn import invalid_running_stats
from .runtime import StageError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def unpickler_reason(e: Exception) -> str:
    """The part of torch.load's refusal that names what the file holds ("Unsupported global: GLOBAL posix.system"),
    without torch's advice to retry with weights_only=False (which would run the file's code)."""
    lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(e).splitlines()]
    lines = [line for line in lines if line]
    named = [line for line in lines if line.startswith("Unsupported")]
    if named:
        return named[0].split(". ")[0]
    return lines[0].split(". ")[0] if lines else type(e).__name__


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise StageError(f"train_teacher.file = {str(path)!r} not found")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise StageError(f"{path}: not a readable safetensors file ({e})") from e
    elif path.suffix in TORCH_SUFFIXES:
        try:
            with warnings.catch_warnings():  # torch's note on the pickle protocol is not the user's concern
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
            first = unpickler_reason(e)
            raise StageError(
                f"{path}: refused - torch.load(weights_only=True) accepts only tensors and plain containers, and this file "
                f"is not that (a pickled object that would run code, or a whole pickled model; save model.state_dict() "
                f"instead): {first}"
            ) from e
    else:
        raise StageError(f"{path}: unknown checkpoint format {path.suffix!r}; use .safetensors or {', '.join(TORCH_SUFFIXES)}")
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise StageError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Raise one StageError listing every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs {arch} {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:8]}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes[:6]}")
        raise StageError(
            f"{path} does not fit train_teacher.arch = {arch} with the given num_classes / input_shape: "
            + "; ".join(parts)
            + " - check train_teacher.arch, num_classes and input_shape"
        )
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise StageError(f"{path}: {k} holds NaN or inf values")
    bn = {
        k.removesuffix(".running_var"): (state[k.removesuffix("var") + "mean"], v) for k, v in state.items() if k.endswith(".running_var")
    }
    problem = invalid_running_stats(bn)
    if problem:
        raise StageError(f"{path}: {problem}")
