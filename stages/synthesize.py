"""Stage synthesize: synthetic images from the teacher and its BN statistics (no real data); synthesize.method picks the method.

synthesize.nproc > 1 runs the stage under torchrun: every process makes every nproc-th batch and
rank 0 merges the shards into the same artifact one process writes.
"""

import math
from pathlib import Path

import pandas as pd
import torch

from stages.core import precision
from stages.core.artifacts import atomic_dir, library_versions, load_bn_stats, save_tensors, sha256_file, write_json
from stages.core.bn import bn_layers, j_kl
from stages.core.checkpoints import load_model
from stages.core.distributed import asdict_row, merge_shards, relaunch, setup
from stages.core.imageops import pixel_bounds
from stages.core.inversion import TARGETED, BatchResult, curve_columns, synthesize_set
from stages.core.live import log_curve
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
    relaunch(cfg.nproc, "stages.synthesize")
    seed_everything(common.seed)
    ctx = setup(resolve_device(common.device), cfg.threads)
    device = ctx.device
    teacher, tcard = load_model(TEACHER, device)
    teacher = teacher.to(memory_format=torch.channels_last)
    stats = load_bn_stats(STATS, {n: m.num_features for n, m in bn_layers(teacher)})
    stats = {n: (mu.to(device), var.to(device)) for n, (mu, var) in stats.items()}
    norm = tcard["normalization"]
    ran = precision.describe(cfg.precision, precision.resolve(cfg.precision, device, "synthesize.precision"), device)
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
            rank=ctx.rank,
            world=ctx.world,
            share_pool=ctx.broadcast,
        )
        mine = list(range(ctx.rank, math.ceil(cfg.n_images / cfg.batch_size), ctx.world))
        rows = [asdict_row(b, len(b.images), drop=("images",)) for b in batches]
        merged = merge_shards(ctx, OUT.parent / f".{OUT.name}.shards", {"images": images, "targets": targets}, rows, mine)
    ctx.close()
    if merged is None:  # not rank 0: rank 0 writes the outputs
        return
    images, targets = merged[0]["images"], merged[0]["targets"]
    batches = [BatchResult(torch.empty(0), **{k: v for k, v in r.items() if k != "n_items"}) for r in merged[1]]
    wall = timings["wall_s"]
    images16 = images.half()
    logits = predict(teacher, images16.float(), 256, device)
    conf, pred = logits.softmax(1).max(1)
    targeted = cfg.method in TARGETED
    if not targeted:
        targets = pred.clone()  # untargeted methods: the teacher's prediction is the label
    agreement = match_rate(pred, targets) if targeted else None
    pred_counts = torch.bincount(pred, minlength=tcard["num_classes"])
    columns = curve_columns(cfg.method)
    if cfg.method == "gaussian":  # nothing optimized: one row with the noise's BN losses
        curve = pd.DataFrame(
            [{"step": 0, "total": 0.0, "bn_l2": mean_of(batches, "bn_loss_final"), "bns_kl": mean_of(batches, "bns_kl_final")}]
        )
    else:
        # mean over the batches still running at each step (early stopping and warm start shorten some)
        steps = pd.concat([pd.DataFrame(b.curve, columns=columns).assign(step=range(1, len(b.curve) + 1)) for b in batches])
        curve = steps.groupby("step", as_index=False)[columns].mean()
    # images x steps, plus compute that is not per image (the generator's warm-up)
    image_iterations = sum(b.iterations * n + b.extra_image_iterations for b, n in zip(batches, batch_sizes(len(images), cfg.batch_size)))
    bn_initial, bn_final = mean_of(batches, "bn_loss_initial"), mean_of(batches, "bn_loss_final")
    kl_initial, kl_final = mean_of(batches, "bns_kl_initial"), mean_of(batches, "bns_kl_final")
    set_jkl = j_kl(teacher, images16.float(), 256, device)
    classes = tcard["classes"]
    card = {
        "kind": "synthetic_set",
        "method": cfg.method,
        "targeted": targeted,
        "labels": "target class" if targeted else "teacher prediction (untargeted method)",
        "n_images": len(images),
        "input_shape": tcard["input_shape"],
        "storage": "float16, teacher-normalized input space",
        "classes": classes,
        "teacher_sha256": sha256_file(TEACHER / "model.safetensors"),
        "bn_stats_sha256": sha256_file(STATS),
        "teacher_agreement": None if agreement is None else round(agreement, 6),
        "pred_class_balance": round(class_balance(pred_counts), 6),
        "bn_loss_initial": round(bn_initial, 6),
        "bn_loss_final": round(bn_final, 6),
        "bns_kl_initial": round(kl_initial, 6),
        "bns_kl_final": round(kl_final, 6),
        "j_kl": round(set_jkl, 6),
        "precision": ran,
        "params": {"common": as_dict(common), "synthesize": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        save_tensors(tmp / "images.safetensors", {"images": images16, "targets": targets, "teacher_pred": pred, "teacher_conf": conf})
        write_json(tmp / "card.json", dict(card, images_sha256=sha256_file(tmp / "images.safetensors")))
    counts = pd.DataFrame(
        {
            "class": classes,
            "targets": torch.bincount(targets, minlength=len(classes)).tolist() if targeted else [None] * len(classes),
            "teacher_pred": pred_counts.tolist(),
        }
    )
    with atomic_dir(REPORTS) as tmp:
        log_curve(tmp, curve.to_dict("records"), "step")  # live/plots/metrics/<loss term>.tsv
        warm = [r for b in batches for r in b.warmup_curve][: cfg.generator_warmup]  # one process's warm-up (all repeat it)
        if warm:
            pd.DataFrame(warm, columns=columns).assign(step=range(1, len(warm) + 1)).to_csv(tmp / "generator_warmup.csv", index=False)
        counts.to_csv(tmp / "class_counts.csv", index=False)
        write_json(
            tmp / "metrics.json",
            {
                "method": cfg.method,
                "n_images": len(images),
                "teacher_agreement": agreement,
                "pred_class_balance": class_balance(pred_counts),
                "mean_teacher_confidence": float(conf.mean()),
                "bn_loss_initial": bn_initial,
                "bn_loss_final": bn_final,
                "bn_loss_reduction": bn_initial / max(bn_final, 1e-12),
                "bns_kl_initial": kl_initial,
                "bns_kl_final": kl_final,
                "j_kl": set_jkl,
                "wall_s": round(wall, 2),
                "images_per_s": len(images) / wall,
                "image_iterations": image_iterations,
                "image_iterations_per_s": image_iterations / wall,
                "processes": ctx.world,
                "threads_per_process": ctx.threads,
                "precision": ran,
                "device": str(device),
            },
        )
        curves(curve, "step", columns, tmp / "loss.png", f"{cfg.method} losses (mean over batches)", logy=True)
        image_grid(
            images16,
            targets,
            classes,
            norm["mean"],
            norm["std"],
            cfg.grid_per_class,
            tmp / "grid.png",
            f"{cfg.method} images (rows: {'target class' if targeted else 'teacher prediction'})",
        )
    agree = f"teacher agrees with targets on {agreement:.1%}" if targeted else f"teacher's class balance {class_balance(pred_counts):.3f}"
    print(f"{cfg.method}: {len(images)} images in {wall:.1f} s; {agree}; BN-L2 {bn_initial:.2f} -> {bn_final:.3f}; J_KL {set_jkl:.4f}")


def batch_sizes(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


def mean_of(batches, attr: str) -> float:
    return sum(getattr(b, attr) for b in batches) / len(batches)


def class_balance(counts: torch.Tensor) -> float:
    """Normalized entropy of a class histogram: 1 = every class equally often, 0 = one class only."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum() / torch.log(torch.tensor(float(len(counts)), dtype=torch.float64)))


if __name__ == "__main__":
    run_stage(main)
