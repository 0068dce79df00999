"""Distillation ablation on the pipeline's saved artifacts: BN handling x recipe, several seeds.

Reads models/teacher, models/pruned, data/synthetic (the data-free inputs of distill) and,
for scoring only, the validation part of the real training split (data.val_fraction): a recipe is chosen
here, so the test split is not read (evaluate reports it for the chosen default). Writes reports/ablation/distill_bn.{csv,md,png}.
Run after `dvc repro`:  python scripts/distill_ablation.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core.artifacts import atomic_dir, load_tensors  # noqa: E402
from stages.core.checkpoints import load_model  # noqa: E402
from stages.core.data import load_part  # noqa: E402
from stages.core.imageops import normalize  # noqa: E402
from stages.core.kd import distill  # noqa: E402
from stages.core.params import load_params, parse_section  # noqa: E402
from stages.core.plots import bars  # noqa: E402
from stages.core.pruning import apply_masks, make_permanent  # noqa: E402
from stages.core.runtime import StageError  # noqa: E402
from stages.core.training import accuracy  # noqa: E402

PAPER = {"epochs": 15, "lr": 1e-3, "schedule": "constant", "max_shift": 0, "flip": False}
TUNED = {"epochs": 40, "lr": 1e-2, "schedule": "cosine", "max_shift": 2, "flip": True}
CONFIGS = {
    "no recovery": None,
    "BN recalibration only (no KD)": {"epochs": 0, "recalibrate_bn": True},
    "paper: frozen BN": {**PAPER, "freeze_bn": True},
    "paper + BN recalibrated, then frozen": {**PAPER, "freeze_bn": True, "recalibrate_bn": True},
    "paper recipe, train-mode BN": {**PAPER, "freeze_bn": False},
    "tuned (40 ep, lr 1e-2 cosine, shift/flip), frozen BN": {**TUNED, "freeze_bn": True, "recalibrate_bn": True},
    "tuned, train-mode BN (default)": {**TUNED, "freeze_bn": False},
}
OUT = Path("reports/ablation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    data = load_params("data")["data"]
    device = torch.device("cpu")
    teacher, tcard = load_model("models/teacher", device)
    teacher = teacher.to(memory_format=torch.channels_last)
    pruned, _ = load_model("models/pruned", device)
    masks = load_tensors("models/pruned/masks.safetensors")
    x = load_tensors("data/synthetic/images.safetensors")["images"].float()
    test = load_part(data.name, data.root, "val", data.val_fraction)  # scoring set: the validation part
    xt = normalize(test.images, tcard["normalization"]["mean"], tcard["normalization"]["std"])
    rows = [
        {
            "setting": "teacher",
            "seed": 0,
            "accuracy": round(accuracy(teacher, xt, test.labels, 1000, device), 4),
            "seconds": 0.0,
            "note": "",
        }
    ]
    for name, overrides in CONFIGS.items():
        for seed in args.seeds if overrides and overrides.get("epochs") else args.seeds[:1]:
            student = copy.deepcopy(pruned)
            apply_masks(student, masks)
            student = student.to(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            try:
                if overrides is not None:
                    distill(student, teacher, x, parse_section("distill", overrides), device, seed)
                make_permanent(student)
                acc, note = round(accuracy(student, xt, test.labels, 1000, device), 4), ""
            except StageError as e:  # a diverged run is a result, scored as chance level
                acc, note = 1.0 / len(test.classes), f"diverged: {e}"
            rows.append({"setting": name, "seed": seed, "accuracy": acc, "seconds": round(time.perf_counter() - t0, 1), "note": note})
            print(f"{name:55s} seed {seed}: {acc:.4f}", flush=True)
    df = pd.DataFrame(rows)
    summary = df.groupby("setting", sort=False).agg(
        mean=("accuracy", "mean"), std=("accuracy", "std"), runs=("seed", "count"), diverged=("note", lambda n: int((n != "").sum()))
    )
    summary["std"] = summary["std"].fillna(0.0)
    with atomic_dir(OUT) as tmp:
        df.to_csv(tmp / "distill_bn.csv", index=False)
        lines = [
            f"# Distillation ablation ({len(x)} synthetic images, sparsity from models/pruned; validation part, {len(test.labels)} images)",
            "",
            "Seeds vary the distillation (batch order, augmentation); the synthetic set is fixed.",
            "",
            "Diverged runs (non-finite KD loss) are scored at chance level and counted.",
            "",
            "| setting | validation accuracy (mean) | std | runs | diverged |",
            "|---|---|---|---|---|",
            *[f"| {k} | {r['mean']:.2%} | {r['std']:.2%} | {int(r['runs'])} | {int(r['diverged'])} |" for k, r in summary.iterrows()],
            "",
        ]
        (tmp / "distill_bn.md").write_text("\n".join(lines))
        bars(
            list(summary.index),
            list(summary["mean"]),
            tmp / "distill_bn.png",
            "distillation ablation",
            "validation accuracy",
            horizontal=True,
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
