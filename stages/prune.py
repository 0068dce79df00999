"""Stage prune: L1 unstructured magnitude pruning of the teacher's conv + linear weights (no data)."""

from pathlib import Path

import pandas as pd

from stages.core.artifacts import atomic_dir, load_model, save_model, save_tensors, sha256_file, write_json
from stages.core.params import as_dict, load_params
from stages.core.plots import bars
from stages.core.pruning import global_sparsity, make_permanent, masks_of, prune_l1_unstructured, sparsity_table
from stages.core.runtime import run_stage

TEACHER = Path("models/teacher")
OUT = Path("models/pruned")
REPORTS = Path("reports/prune")


def main() -> None:
    cfg = load_params("prune")["prune"]
    model, tcard = load_model(TEACHER)
    prune_l1_unstructured(model, cfg.sparsity, cfg.scope)
    masks = masks_of(model)
    make_permanent(model)
    rows = sparsity_table(model)
    sparsity = global_sparsity(model)
    card = {
        "kind": "pruned",
        **{k: tcard[k] for k in ("arch", "num_classes", "classes", "in_channels", "input_shape", "normalization")},
        "teacher_sha256": sha256_file(TEACHER / "model.safetensors"),
        "sparsity": round(sparsity, 6),
        "params": {"prune": as_dict(cfg)},
    }
    with atomic_dir(OUT) as tmp:
        save_tensors(tmp / "masks.safetensors", masks)
        card["masks_sha256"] = sha256_file(tmp / "masks.safetensors")
        save_model(tmp, model, card)
    with atomic_dir(REPORTS) as tmp:
        df = pd.DataFrame(rows)
        df.to_csv(tmp / "sparsity.csv", index=False)
        write_json(tmp / "metrics.json", {"sparsity": sparsity, "zeros": int(df.zeros.sum()), "prunable_weights": int(df.numel.sum())})
        bars(
            list(df.layer),
            list(df.sparsity),
            tmp / "sparsity.png",
            f"per-layer sparsity ({cfg.scope} L1, {sparsity:.1%} overall)",
            "sparsity",
            horizontal=True,
        )
    print(f"pruned {cfg.scope} L1 to sparsity {sparsity:.4f}")


if __name__ == "__main__":
    run_stage(main)
