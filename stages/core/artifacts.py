"""Artifact I/O: safetensors weights, JSON cards, atomic output folders, hashes.

Outputs are written into a temporary sibling folder and renamed into place only
when complete, so a failed stage never leaves a half-written artifact. Cards hold
no timestamps or wall times: rerunning a stage with the same inputs writes the
same bytes (timings go to ``reports/``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .models import prunable_layers
from .runtime import StageError


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temp folder; on success it replaces ``path`` whole, on error it is removed.

    A process killed outright (SIGKILL, power loss) runs no cleanup: its temp folder (``.<name>.tmp-*``) or the
    previous output set aside for the swap (``.<name>.old-*``) stays behind, never under ``path`` itself, so DVC
    sees the output missing or unchanged and reruns the stage. Those leftovers are removed here, at the next run
    (DVC runs one stage per output path at a time, so no live writer owns them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path} not found: run the stage that produces it first (dvc repro)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageError(f"{path} is not valid JSON: {e}") from e


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no pickle: nothing in the file can execute)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path} not found: run the stage that produces it first (dvc repro)")
    try:
        return load_file(str(path))
    except (safetensors.SafetensorError, OSError) as e:
        raise StageError(f"{path} is not a readable safetensors file: {e}") from e


def library_versions() -> dict:
    import torchvision

    return {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous NCHW copy of the weights (channels_last training leaves strided tensors)."""
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def pack_sparse(state: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """Store each of ``keys`` as ``<key>.bitmask`` (1 bit per weight, uint8-packed) + ``<key>.nonzero`` (its nonzeros)."""
    out = dict(state)
    for key in keys:
        w = out.pop(key)
        mask = w != 0
        out[f"{key}.bitmask"] = torch.from_numpy(np.packbits(mask.flatten().numpy()))
        out[f"{key}.nonzero"] = w[mask]
    return out


def unpack_sparse(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Inverse of ``pack_sparse``; ``shapes`` = {key: dense shape} from the card."""
    out = dict(tensors)
    for key, shape in shapes.items():
        bits, values = out.pop(f"{key}.bitmask"), out.pop(f"{key}.nonzero")
        n = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool))
        if mask.numel() != n:
            raise ValueError(f"{key}: bitmask holds {mask.numel()} bits, the shape {shape} needs {n}")
        if int(mask.sum()) != values.numel():
            raise ValueError(f"{key}: bitmask has {int(mask.sum())} ones but {values.numel()} nonzero values")
        dense = torch.zeros(n, dtype=values.dtype)
        dense[mask] = values
        out[key] = dense.reshape(shape)
    return out


def save_model(folder: Path, model: nn.Module, card: dict, storage: str = "dense") -> None:
    """Write ``model.safetensors`` and ``card.json`` (card must name arch, num_classes, in_channels).

    ``storage`` = ``bitmask`` keeps every conv/linear weight as a bit mask plus its nonzero values
    (for unstructured sparsity; the card records the dense shapes). A channel-pruned model's card
    carries ``structure`` and a fake-quantized one's ``quantization``: ``checkpoints.load_model`` rebuilds both."""
    for key in ("arch", "num_classes", "in_channels"):
        if key not in card:
            raise ValueError(f"model card needs {key!r}")
    state = state_dict_cpu(model)
    card = dict(card, storage=storage)
    if storage == "bitmask":
        keys = [f"{n}.weight" for n, _ in prunable_layers(model)]
        card["bitmask_shapes"] = {k: list(state[k].shape) for k in keys}
        state = pack_sparse(state, keys)
    elif storage != "dense":
        raise ValueError(f"unknown storage {storage!r}")
    save_tensors(folder / "model.safetensors", state)
    card["weights_sha256"] = sha256_file(folder / "model.safetensors")
    write_json(folder / "card.json", card)


def save_bn_stats(path: Path, stats: dict[str, tuple[torch.Tensor, torch.Tensor]], mean, std) -> None:
    """BN running stats as ``<layer>.running_mean/var`` plus the input normalization as ``input.mean/std``."""
    tensors = {}
    for name, (mu, var) in stats.items():
        tensors[f"{name}.running_mean"] = mu.float()
        tensors[f"{name}.running_var"] = var.float()
    tensors["input.mean"] = torch.tensor(mean, dtype=torch.float32)
    tensors["input.std"] = torch.tensor(std, dtype=torch.float32)
    save_tensors(path, tensors)


def load_bn_stats(path: Path, expected_layers: dict[str, int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read a BN-stats artifact and check it covers exactly ``expected_layers`` ({layer: channels})."""
    t = load_tensors(path)
    layers = sorted({k.rsplit(".", 1)[0] for k in t if k.endswith(".running_mean")})
    if sorted(expected_layers) != layers:
        raise StageError(
            f"{path} does not match the teacher's BN layers (stale artifact?): "
            f"only in stats {sorted(set(layers) - set(expected_layers))[:5]}, "
            f"only in teacher {sorted(set(expected_layers) - set(layers))[:5]}"
        )
    out = {}
    for name in layers:
        mu, var = t[f"{name}.running_mean"], t[f"{name}.running_var"]
        if mu.numel() != expected_layers[name] or var.numel() != expected_layers[name]:
            raise StageError(f"{path}: layer {name} has {mu.numel()} channels, the teacher has {expected_layers[name]}")
        out[name] = (mu, var)
    return out
