"""Stage distill: recover the pruned student by KD from the teacher on a transfer set.

distill.transfer_set picks data/synthetic (default, data-free), data/gaussian (noise baseline,
data-free) or data/real (real training images: NOT data-free, the upper-bound baseline);
dvc.yaml makes the chosen folder the stage's dependency, so dvc.lock and the lineage
command show which one a student saw. distill.nproc > 1 trains under torchrun +
DistributedDataParallel; rank 0 writes the outputs.
"""

from pathlib import Path

import pandas as pd
import torch

from stages.core.artifacts import atomic_dir, library_versions, load_tensors, read_json, save_model, sha256_file, write_json
from stages.core.checkpoints import load_model
from stages.core.distributed import relaunch, setup
from stages.core.kd import distill
from stages.core.live import log_curve
from stages.core.models import ARCH_CARD_FIELDS
from stages.core.params import as_dict, load_params
from stages.core.plots import curves
from stages.core.pruning import apply_masks, global_sparsity, make_permanent
from stages.core.runtime import StageError, resolve_device, run_stage, seed_everything, timed

TEACHER = Path("models/teacher")
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
    timings = {}
    with timed(timings, "wall_s"):
        history = distill(student, teacher, x, cfg, device, common.seed * 1_000_003 + cfg.seed, ctx)
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
        "params": {"common": as_dict(common), "distill": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        # unstructured sparsity is stored compactly: a bit mask + the nonzero values of each conv/linear weight
        save_model(tmp, student, card, storage="bitmask" if "masks_sha256" in card and sparsity > 0 else "dense")
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


if __name__ == "__main__":
    run_stage(main)
