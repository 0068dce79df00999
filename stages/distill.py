"""Stage distill: recover the pruned student by KD from the teacher on synthetic images only."""

from pathlib import Path

import pandas as pd
import torch

from stages.core.artifacts import atomic_dir, library_versions, load_model, load_tensors, read_json, save_model, sha256_file, write_json
from stages.core.kd import distill
from stages.core.params import as_dict, load_params
from stages.core.plots import curves
from stages.core.pruning import apply_masks, global_sparsity, make_permanent
from stages.core.runtime import StageError, resolve_device, run_stage, seed_everything, timed

TEACHER = Path("models/teacher")
PRUNED = Path("models/pruned")
SYNTHETIC = Path("data/synthetic")
OUT = Path("models/student")
REPORTS = Path("reports/distill")


def main() -> None:
    p = load_params("common", "distill")
    common, cfg = p["common"], p["distill"]
    seed_everything(common.seed)
    device = resolve_device(common.device)
    teacher, _ = load_model(TEACHER, device)
    student, pcard = load_model(PRUNED, device)
    masks = load_tensors(PRUNED / "masks.safetensors")
    apply_masks(student, masks)
    scard = read_json(SYNTHETIC / "card.json")
    teacher_sha = sha256_file(TEACHER / "model.safetensors")
    for folder, card in ((PRUNED, pcard), (SYNTHETIC, scard)):
        if card["teacher_sha256"] != teacher_sha:
            raise StageError(f"{folder} was made from another teacher than {TEACHER} (teacher_sha256 in its card.json): rerun dvc repro")
    x = load_tensors(SYNTHETIC / "images.safetensors")["images"].float()
    teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    timings = {}
    with timed(timings, "wall_s"):
        history = distill(student, teacher, x, cfg, device, common.seed)
    wall = timings["wall_s"]
    make_permanent(student)
    sparsity = global_sparsity(student)
    card = {
        "kind": "student",
        **{k: pcard[k] for k in ("arch", "num_classes", "classes", "in_channels", "input_shape", "normalization")},
        "data_free": True,
        "transfer_set": "synthetic",
        "teacher_sha256": teacher_sha,
        "pruned_sha256": sha256_file(PRUNED / "model.safetensors"),
        "masks_sha256": sha256_file(PRUNED / "masks.safetensors"),
        "synthetic_sha256": sha256_file(SYNTHETIC / "images.safetensors"),
        "sparsity": round(sparsity, 6),
        "params": {"common": as_dict(common), "distill": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        save_model(tmp, student, card)
    df = pd.DataFrame(history)
    with atomic_dir(REPORTS) as tmp:
        df.to_csv(tmp / "curve.csv", index=False)
        last = history[-1] if history else {}
        write_json(
            tmp / "metrics.json",
            {
                "kd_loss_final": last.get("kd_loss"),
                "teacher_agreement_final": last.get("teacher_agreement"),
                "sparsity": sparsity,
                "wall_s": round(wall, 2),
                "device": str(device),
            },
        )
        if len(df):
            curves(df, "epoch", ["kd_loss", "teacher_agreement"], tmp / "curve.png", "distillation on synthetic images")
    print(f"distilled {cfg.epochs} epochs in {wall:.0f} s; sparsity {sparsity:.4f}")


if __name__ == "__main__":
    run_stage(main)
