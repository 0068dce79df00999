"""Stage distill: recover the pruned student by KD from the teacher on a transfer set.

distill.transfer_set picks data/synthetic (default, data-free), data/gaussian (noise baseline,
data-free) or data/real (real training images: NOT data-free, the upper-bound baseline);
dvc.yaml makes the chosen folder the stage's dependency, so dvc.lock and the lineage
command show which one a student saw. distill.nproc > 1 trains under torchrun +
DistributedDataParallel; rank 0 writes the outputs.

distill.adaptive_rounds > 0 (synthetic transfer set only): student-aware synthesis. During KD, rounds of new images
are made from noise against the current student with the synthetic set's own objective and settings (its card.json)
plus the competition term, from the teacher and models/bn_stats alone (still data-free); they are saved beside the
student (models/student/adaptive_images.safetensors) and counted in reports/distill/metrics.json.
"""

from pathlib import Path

import pandas as pd
import torch

from stages.core.artifacts import (
    atomic_dir,
    library_versions,
    load_bn_stats,
    load_tensors,
    read_json,
    save_model,
    save_tensors,
    sha256_file,
    write_json,
)
from stages.core.bn import bn_layers
from stages.core.checkpoints import load_model
from stages.core.distributed import relaunch, setup
from stages.core.imageops import pixel_bounds
from stages.core.inversion import student_aware_images
from stages.core.kd import distill
from stages.core.live import log_curve
from stages.core.models import ARCH_CARD_FIELDS
from stages.core.params import as_dict, load_params, parse_section
from stages.core.plots import curves
from stages.core.pruning import apply_masks, global_sparsity, make_permanent
from stages.core.runtime import StageError, resolve_device, run_stage, seed_everything, timed
from stages.core.training import match_rate, predict

TEACHER = Path("models/teacher")
STATS = Path("models/bn_stats/stats.safetensors")
QUANTIZED = Path("models/quantized")  # the pruned model, fake-quantized + calibrated (passed through when quantize is off)
OUT = Path("models/student")
REPORTS = Path("reports/distill")


def main() -> None:
    p = load_params("common", "distill")
    common, cfg = p["common"], p["distill"]
    relaunch(cfg.nproc, "stages.distill")
    seed_everything(common.seed)
    ctx = setup(resolve_device(common.device), cfg.threads)
    device = ctx.device
    teacher, _ = load_model(TEACHER, device)
    student, pcard = load_model(QUANTIZED, device)
    if pcard.get("quantization") and cfg.recalibrate_bn:
        raise StageError(
            "distill.recalibrate_bn = true would change the BN statistics under the activation ranges quantize calibrated; "
            "set it to false for a quantized student (quantize.weight_bits / act_bits < 32)"
        )
    if (QUANTIZED / "masks.safetensors").is_file():  # unstructured pruning: keep pruned weights at zero
        apply_masks(student, load_tensors(QUANTIZED / "masks.safetensors"))
    transfer = Path("data") / cfg.transfer_set
    scard = read_json(transfer / "card.json")
    if scard.get("available") is False:
        raise StageError(f"distill.transfer_set = {cfg.transfer_set}: {transfer} is empty - {scard.get('reason')}")
    teacher_sha = sha256_file(TEACHER / "model.safetensors")
    for folder, card in ((QUANTIZED, pcard), (transfer, scard)):
        if card["teacher_sha256"] != teacher_sha:
            raise StageError(f"{folder} was made from another teacher than {TEACHER} (teacher_sha256 in its card.json): rerun dvc repro")
    x = load_tensors(transfer / "images.safetensors")["images"].float()
    teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    kd_seed = common.seed * 1_000_003 + cfg.seed
    grow, made = None, []
    if cfg.adaptive_rounds > 0:
        if cfg.transfer_set != "synthetic":
            raise StageError(
                f"distill.adaptive_rounds = {cfg.adaptive_rounds} makes synthetic images: it needs distill.transfer_set = synthetic "
                f"(now {cfg.transfer_set})"
            )
        grow = student_aware_round(teacher, pcard, scard, cfg, kd_seed, ctx, made)
    timings = {}
    with timed(timings, "wall_s"):
        history = distill(student, teacher, x, cfg, device, kd_seed, ctx, grow)
    n_made = sum(len(m["images"]) for m in made)
    ctx.close()
    if not ctx.main:  # rank 0 holds the same weights and writes the outputs
        return
    wall = timings["wall_s"]
    make_permanent(student)
    sparsity = global_sparsity(student)
    card = {
        "kind": "student",
        **{k: pcard[k] for k in ("arch", "num_classes", "classes", "in_channels", "input_shape", "normalization")},
        **{k: pcard[k] for k in ARCH_CARD_FIELDS if k in pcard},
        **{k: pcard[k] for k in ("structure", "quantization") if pcard.get(k)},
        "prune_method": pcard.get("method", "l1_unstructured"),
        "transfer_set": cfg.transfer_set,
        "transfer_set_sha256": sha256_file(transfer / "images.safetensors"),
        "teacher_sha256": teacher_sha,
        "pruned_sha256": pcard["pruned_sha256"],
        "quantized_sha256": sha256_file(QUANTIZED / "model.safetensors"),
        **({"masks_sha256": pcard["masks_sha256"]} if "masks_sha256" in pcard else {}),
        "sparsity": round(sparsity, 6),
        **({"adaptive_images": n_made} if made else {}),
        "params": {"common": as_dict(common), "distill": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        # unstructured sparsity is stored compactly: a bit mask + the nonzero values of each conv/linear weight
        save_model(tmp, student, card, storage="bitmask" if "masks_sha256" in card and sparsity > 0 else "dense")
        if made:  # the student-aware images, as data/synthetic stores its own (float16, normalized space)
            save_tensors(
                tmp / "adaptive_images.safetensors",
                {"images": torch.cat([m["images"] for m in made]).half(), "round": torch.cat([m["round"] for m in made])},
            )
    df = pd.DataFrame(history)
    with atomic_dir(REPORTS) as tmp:
        log_curve(tmp, history, "epoch")  # live/plots/metrics/{kd_loss,teacher_agreement,...}.tsv
        last = history[-1] if history else {}
        write_json(
            tmp / "metrics.json",
            {
                "kd_loss_final": last.get("kd_loss"),
                "teacher_agreement_final": last.get("teacher_agreement"),
                "sparsity": sparsity,
                "wall_s": round(wall, 2),
                **(
                    {
                        "adaptive_images": n_made,
                        "adaptive_synthesis_s": round(sum(m["wall_s"] for m in made), 2),
                        "adaptive_teacher_agreement": sum(m["agreement"] * len(m["images"]) for m in made) / n_made,
                    }
                    if made
                    else {}
                ),
                "processes": ctx.world,
                "threads_per_process": ctx.threads,
                "device": str(device),
            },
        )
        if len(df):
            ys = ["kd_loss", "teacher_agreement"] + (["iq_loss"] if cfg.iq_beta > 0 else [])
            curves(df, "epoch", ys, tmp / "curve.png", f"distillation on the {cfg.transfer_set} transfer set")
    label = " (NOT data-free: real training images)" if cfg.transfer_set == "real" else ""
    print(f"distilled {cfg.epochs} epochs on {cfg.transfer_set}{label} in {wall:.0f} s; sparsity {sparsity:.4f}")


def student_aware_round(teacher, pcard: dict, scard: dict, cfg, seed: int, ctx, made: list):
    """``grow(round, student)`` for ``kd.distill``: ``cfg.adaptive_images`` images against the current student, made
    with the synthetic set's synthesize params (its card.json) and the teacher's BN statistics (models/bn_stats), by
    rank 0 and sent to the other ranks. Each round's images, its wall time and the teacher's agreement with the
    targets are appended to ``made``."""
    scfg = parse_section("synthesize", scard["params"]["synthesize"])
    stats = load_bn_stats(STATS, {n: m.num_features for n, m in bn_layers(teacher)})
    stats = {n: (mu.to(ctx.device), var.to(ctx.device)) for n, (mu, var) in stats.items()}
    norm, shape = pcard["normalization"], tuple(pcard["input_shape"])
    bounds = pixel_bounds(norm["mean"], norm["std"])

    def grow(r: int, student) -> torch.Tensor:
        first = scard["n_images"] + r * cfg.adaptive_images  # the class cycle goes on from the pool's size
        images = torch.empty((cfg.adaptive_images, *shape))
        if ctx.main:
            t = {}
            with timed(t, "wall_s"):
                images, targets, _ = student_aware_images(
                    teacher,
                    student,
                    stats,
                    pcard["num_classes"],
                    shape,
                    bounds,
                    scfg,
                    cfg.adaptive_images,
                    first,
                    cfg.adaptive_weight,
                    cfg.temperature,
                    (seed * 1_000_003 + r) % 2**31,
                    ctx.device,
                )
            images = images.half().float()  # stored in float16 like data/synthetic: KD sees exactly the saved images
            agreement = match_rate(predict(teacher, images, 256, ctx.device).argmax(1), targets)
            made.append({"images": images, "round": torch.full((len(images),), r), "wall_s": t["wall_s"], "agreement": agreement})
            print(f"student-aware round {r + 1}/{cfg.adaptive_rounds}: {len(images)} images in {t['wall_s']:.0f} s", flush=True)
        return ctx.broadcast(images)

    return grow


if __name__ == "__main__":
    run_stage(main)
