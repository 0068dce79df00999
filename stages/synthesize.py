"""Stage synthesize: DeepInversion images from the teacher and its BN statistics (no real data)."""

from pathlib import Path

import pandas as pd
import torch

from stages.core.artifacts import atomic_dir, library_versions, load_bn_stats, load_model, save_tensors, sha256_file, write_json
from stages.core.bn import bn_layers
from stages.core.imageops import pixel_bounds
from stages.core.inversion import LOSS_TERMS, synthesize_set
from stages.core.params import as_dict, load_params
from stages.core.plots import curves, image_grid
from stages.core.runtime import resolve_device, run_stage, seed_everything, timed
from stages.core.training import match_rate, predict

TEACHER = Path("models/teacher")
STATS = Path("models/bn_stats/stats.safetensors")
OUT = Path("data/synthetic")
REPORTS = Path("reports/synthesize")


def main() -> None:
    p = load_params("common", "synthesize")
    common, cfg = p["common"], p["synthesize"]
    seed_everything(common.seed)
    device = resolve_device(common.device)
    teacher, tcard = load_model(TEACHER, device)
    teacher = teacher.to(memory_format=torch.channels_last)
    stats = load_bn_stats(STATS, {n: m.num_features for n, m in bn_layers(teacher)})
    stats = {n: (mu.to(device), var.to(device)) for n, (mu, var) in stats.items()}
    norm = tcard["normalization"]
    timings = {}
    with timed(timings, "wall_s"):
        images, targets, batches = synthesize_set(
            teacher,
            stats,
            tcard["num_classes"],
            tuple(tcard["input_shape"]),
            pixel_bounds(norm["mean"], norm["std"]),
            cfg,
            common.seed,
            device,
        )
    wall = timings["wall_s"]
    images16 = images.half()
    logits = predict(teacher, images16.float(), 256, device)
    conf, pred = logits.softmax(1).max(1)
    agreement = match_rate(pred, targets)
    curve = pd.DataFrame([{t: sum(b.curve[i][t] for b in batches) / len(batches) for t in LOSS_TERMS} for i in range(cfg.iterations)])
    curve.insert(0, "step", range(1, cfg.iterations + 1))
    bn_initial = sum(b.bn_loss_initial for b in batches) / len(batches)
    bn_final = sum(b.bn_loss_final for b in batches) / len(batches)
    classes = tcard["classes"]
    card = {
        "kind": "synthetic_set",
        "method": "deepinversion",
        "n_images": len(images),
        "input_shape": tcard["input_shape"],
        "storage": "float16, teacher-normalized input space",
        "classes": classes,
        "teacher_sha256": sha256_file(TEACHER / "model.safetensors"),
        "bn_stats_sha256": sha256_file(STATS),
        "teacher_agreement": round(agreement, 6),
        "bn_loss_initial": round(bn_initial, 6),
        "bn_loss_final": round(bn_final, 6),
        "params": {"common": as_dict(common), "synthesize": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        save_tensors(tmp / "images.safetensors", {"images": images16, "targets": targets, "teacher_pred": pred, "teacher_conf": conf})
        write_json(tmp / "card.json", dict(card, images_sha256=sha256_file(tmp / "images.safetensors")))
    counts = pd.DataFrame(
        {
            "class": classes,
            "targets": torch.bincount(targets, minlength=len(classes)).tolist(),
            "teacher_pred": torch.bincount(pred, minlength=len(classes)).tolist(),
        }
    )
    with atomic_dir(REPORTS) as tmp:
        curve.to_csv(tmp / "loss.csv", index=False)
        counts.to_csv(tmp / "class_counts.csv", index=False)
        write_json(
            tmp / "metrics.json",
            {
                "n_images": len(images),
                "teacher_agreement": agreement,
                "mean_teacher_confidence": float(conf.mean()),
                "bn_loss_initial": bn_initial,
                "bn_loss_final": bn_final,
                "bn_loss_reduction": bn_initial / max(bn_final, 1e-12),
                "wall_s": round(wall, 2),
                "images_per_s": len(images) / wall,
                "image_iterations_per_s": len(images) * cfg.iterations / wall,
                "device": str(device),
            },
        )
        curves(curve, "step", list(LOSS_TERMS), tmp / "loss.png", "DeepInversion losses (mean over batches)", logy=True)
        image_grid(
            images16,
            targets,
            classes,
            norm["mean"],
            norm["std"],
            cfg.grid_per_class,
            tmp / "grid.png",
            "synthetic images (rows: target class)",
        )
    print(
        f"{len(images)} images in {wall:.0f} s; teacher agrees with targets on {agreement:.1%}; BN loss {bn_initial:.2f} -> {bn_final:.3f}"
    )


if __name__ == "__main__":
    run_stage(main)
