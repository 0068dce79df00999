"""Loading a model artifact: rebuild the architecture its card describes, then load the safetensors weights.

The card names the arch and its arch_kwargs (``models.build_model``; for custom code also the
sha256 of its source file, which must not have changed), and, when they apply, the channel
counts of a channel-pruned model (``structure``), the bit widths of a fake-quantized one
(``quantization``) and the bit-mask storage of an unstructured-sparse one (``storage``). Nothing
is unpickled. Kept apart from ``artifacts`` so that the teacher's training stage does not depend
on the pruning/quantization code it never uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .artifacts import load_tensors, read_json, unpack_sparse
from .models import apply_structure, arch_card, build_model, versioned
from .quant import quantize_model
from .runtime import StageError


def build_from_card(card: dict, where: Path) -> nn.Module:
    """The (untrained) architecture a card describes: arch + arch_kwargs, channel structure, fake-quant layers."""
    try:
        now = arch_card(card["arch"], card.get("arch_kwargs"))
        if "arch_code_sha256" in now and now["arch_code_sha256"] != card["arch_code_sha256"]:
            raise StageError(
                f"{where}: the architecture code {now['arch_code']} changed since the teacher was made "
                f"(its sha256 differs from arch_code_sha256 in the card): rerun dvc repro"
            )
        model = build_model(card["arch"], card["num_classes"], card["in_channels"], card.get("arch_kwargs"))
        if card.get("structure"):
            apply_structure(model, card["structure"])
        if card.get("quantization"):
            quantize_model(model, {k: tuple(v) for k, v in card["quantization"]["layers"].items()})
    except KeyError as e:
        raise StageError(f"{where} lacks {e}: cannot rebuild the architecture") from e
    except (ValueError, TypeError, AttributeError) as e:
        raise StageError(f"{where}: {e}") from e
    return model


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from its card and load its weights strictly; returns (model, card)."""
    folder = Path(folder)
    card = read_json(folder / "card.json")
    model = build_from_card(card, folder / "card.json")
    state = load_tensors(folder / "model.safetensors")
    if card.get("storage") == "bitmask":
        try:
            state = unpack_sparse(state, card["bitmask_shapes"])
        except (KeyError, ValueError) as e:
            raise StageError(f"{folder / 'model.safetensors'}: bad bitmask storage ({e})") from e
    try:
        result = model.load_state_dict(versioned(model, state), strict=False)
    except RuntimeError as e:  # shape mismatch
        raise StageError(f"{folder / 'model.safetensors'} does not fit the architecture in its card: {str(e)[:400]}") from e
    if result.missing_keys or result.unexpected_keys:
        raise StageError(
            f"{folder / 'model.safetensors'} does not fit {card['arch']}: "
            f"missing keys {result.missing_keys[:8]}, unexpected keys {result.unexpected_keys[:8]}"
        )
    return model.to(device).eval(), card
