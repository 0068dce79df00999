"""Stage prune: magnitude pruning of the teacher (no data).

prune.method = l1_unstructured zeroes the smallest conv + linear weights (global or per layer);
the masks go to masks.safetensors. prune.method = structured removes whole channels with
Torch-Pruning until prune.structured_amount of the MACs (or channels) is gone; the card's
``structure`` (channel counts per layer) rebuilds the smaller model without pickle.
"""

from pathlib import Path

import pandas as pd

from stages.core.artifacts import atomic_dir, save_model, save_tensors, sha256_file, write_json
from stages.core.checkpoints import load_model
from stages.core.models import ARCH_CARD_FIELDS, layer_structure
from stages.core.params import as_dict, load_params
from stages.core.plots import bars
from stages.core.pruning import (
    count_macs_params,
    effective_floor,
    global_sparsity,
    make_permanent,
    masks_of,
    prune_l1_unstructured,
    prune_structured,
    sparsity_table,
)
from stages.core.runtime import StageError, run_stage

TEACHER = Path("models/teacher")
OUT = Path("models/pruned")
REPORTS = Path("reports/prune")


def main() -> None:
    cfg = load_params("prune")["prune"]
    model, tcard = load_model(TEACHER)
    shape = tuple(tcard["input_shape"])
    teacher_structure = layer_structure(model)
    macs_before, params_before = count_macs_params(model, shape)
    if cfg.method == "structured":
        try:
            prune_structured(model, cfg.structured_target, cfg.structured_amount, cfg.structured_scope, shape, cfg.round_to)
        except ValueError as e:
            raise StageError(f"prune.method = structured, structured_amount = {cfg.structured_amount}: {e}") from e
    else:
        prune_l1_unstructured(model, cfg.sparsity, cfg.scope, cfg.min_density, cfg.ranking)
    masks = masks_of(model) if cfg.method == "l1_unstructured" else None
    make_permanent(model)
    macs, params = count_macs_params(model, shape)
    reduction = 1 - macs / macs_before
    structure = layer_structure(model)
    rows = sparsity_table(model)
    for r in rows:
        r["channels_kept"] = structure[r["layer"]][0] / teacher_structure[r["layer"]][0]
    sparsity = global_sparsity(model)
    card = {
        "kind": "pruned",
        **{k: tcard[k] for k in ("arch", "num_classes", "classes", "in_channels", "input_shape", "normalization")},
        **{k: tcard[k] for k in ARCH_CARD_FIELDS if k in tcard},
        "teacher_sha256": sha256_file(TEACHER / "model.safetensors"),
        "method": cfg.method,
        "sparsity": round(sparsity, 6),
        "macs": macs,
        "macs_reduction": round(reduction, 6),
        "params_count": params,
        "params": {"prune": as_dict(cfg)},
    }
    if cfg.method == "structured":
        card["structure"] = structure
    with atomic_dir(OUT) as tmp:
        if masks is not None:
            save_tensors(tmp / "masks.safetensors", masks)
            card["masks_sha256"] = sha256_file(tmp / "masks.safetensors")
        save_model(tmp, model, card)
    with atomic_dir(REPORTS) as tmp:
        df = pd.DataFrame(rows)
        df.to_csv(tmp / "sparsity.csv", index=False)
        write_json(
            tmp / "metrics.json",
            {
                "method": cfg.method,
                "sparsity": sparsity,
                "zeros": int(df.zeros.sum()),
                "prunable_weights": int(df.numel.sum()),
                "macs": macs,
                "macs_reduction": reduction,
                "params_count": params,
                "params_reduction": 1 - params / params_before,
                # the layer pruning left the fewest weights in (plain global L1 can empty one)
                "min_layer_density": float(1 - df.sparsity.max()),
                "layer_floor": effective_floor(cfg.sparsity, cfg.min_density) if cfg.scope == "global" else None,
                "emptiest_layer": df.layer[df.sparsity.idxmax()],
                "ranking": cfg.ranking if cfg.method == "l1_unstructured" and cfg.scope == "global" else None,
            },
        )
        if cfg.method == "structured":
            values, title, label = list(df.channels_kept), f"output channels kept per layer ({reduction:.1%} fewer MACs)", "kept"
        else:
            values, title, label = list(df.sparsity), f"per-layer sparsity ({scope_label(cfg)}, {sparsity:.1%} overall)", "sparsity"
        bars(list(df.layer), values, tmp / "sparsity.png", title, label, horizontal=True)
    scope = cfg.structured_scope if cfg.method == "structured" else cfg.scope
    print(f"pruned ({cfg.method}, {scope}): sparsity {sparsity:.4f}, MACs {macs_before:,} -> {macs:,} ({reduction:.1%} fewer)")


def scope_label(cfg) -> str:
    if cfg.scope != "global":
        return cfg.scope
    ranking = "LAMP-ranked" if cfg.ranking == "lamp" else "L1"
    return f"global {ranking}" + (f", min density {cfg.min_density:g}" if cfg.min_density > 0 else "")


if __name__ == "__main__":
    run_stage(main)
