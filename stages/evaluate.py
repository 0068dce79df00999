"""Stage evaluate: teacher / pruned / recovered student on the real test split, the J_KL table, and the report."""

from pathlib import Path

import pandas as pd
import torch

from stages.core.artifacts import atomic_dir, atomic_write_text, load_model, load_tensors, read_json, sha256_file, write_json
from stages.core.data import load_split
from stages.core.imageops import normalize
from stages.core.params import load_params
from stages.core.plots import bars
from stages.core.pruning import global_sparsity
from stages.core.runtime import resolve_device, run_stage, seed_everything
from stages.core.similarity import fgsm, jkl_table, noise_sets
from stages.core.training import match_rate, predict

MODELS = {"teacher": Path("models/teacher"), "pruned": Path("models/pruned"), "student": Path("models/student")}
SYNTHETIC = Path("data/synthetic")
REPORTS = Path("reports")
STAGES = ("train_teacher", "synthesize", "distill")


def describe(folder: Path, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> tuple[dict, torch.Tensor]:
    model, _ = load_model(folder, device)
    pred = predict(model, x, batch_size, device).argmax(1)
    params = list(model.parameters())
    row = {
        "accuracy": match_rate(pred, y),
        "sparsity": global_sparsity(model),
        "params": sum(p.numel() for p in params),
        "nonzero_params": int(sum((p != 0).sum() for p in params)),
        "file_bytes": (folder / "model.safetensors").stat().st_size,
    }
    return row, pred


def main() -> None:
    p = load_params("common", "data", "evaluate")
    common, data, cfg = p["common"], p["data"], p["evaluate"]
    seed_everything(common.seed)
    device = resolve_device(common.device)
    norm = read_json(MODELS["teacher"] / "card.json")["normalization"]
    test = load_split(data.name, data.root, train=False)
    x = normalize(test.images, norm["mean"], norm["std"])
    jkl = similarity_table(common.seed, data, cfg, norm, x, test.labels, device)
    rows, preds = {}, {}
    for name, folder in MODELS.items():
        rows[name], preds[name] = describe(folder, x, test.labels, cfg.batch_size, device)
    scard = read_json(SYNTHETIC / "card.json")
    student_card = read_json(MODELS["student"] / "card.json")
    t, pr, s = (rows[k]["accuracy"] for k in ("teacher", "pruned", "student"))
    timings = {st: read_json(REPORTS / st / "metrics.json")["wall_s"] for st in STAGES}
    metrics = {
        **rows,
        "gap_points": round(100 * (t - s), 3),
        "recovered_fraction": (s - pr) / (t - pr) if t != pr else None,
        "student_teacher_agreement": match_rate(preds["student"], preds["teacher"]),
        "synthetic": {
            "n_images": scard["n_images"],
            "method": scard.get("method", "deepinversion"),
            "teacher_agreement": scard["teacher_agreement"],
            "pred_class_balance": scard.get("pred_class_balance"),
            "bn_loss_final": scard["bn_loss_final"],
        },
        "data_free": bool(student_card.get("data_free")),
        "j_kl_relative_to_train": {r["dataset"]: r["relative_to_train"] for r in jkl},
        "wall_s": timings,
        "test_images": len(test.labels),
    }
    in_class = [test.labels == c for c in range(len(test.classes))]
    per_class = pd.DataFrame(
        {"class": list(test.classes)} | {k: [match_rate(preds[k][m], test.labels[m]) for m in in_class] for k in MODELS}
    )
    with atomic_dir(REPORTS / "evaluate") as tmp:
        per_class.to_csv(tmp / "per_class_accuracy.csv", index=False)
        bars(list(MODELS), [rows[k]["accuracy"] for k in MODELS], tmp / "accuracy.png", "real test-split accuracy", "accuracy")
        pd.DataFrame(jkl).to_csv(tmp / "jkl.csv", index=False)
        write_json(tmp / "jkl.json", {"teacher_sha256": sha256_file(MODELS["teacher"] / "model.safetensors"), "rows": jkl})
        bars(
            [r["dataset"] for r in jkl],
            [r["relative_to_train"] for r in jkl],
            tmp / "jkl.png",
            "BNS divergence J_KL / J_KL(train split)",
            "relative J_KL (log)",
            horizontal=True,
            logx=True,
        )
    write_json(REPORTS / "metrics.json", metrics)
    atomic_write_text(REPORTS / "report.md", render_report(metrics, scard, student_card, timings, data.name, jkl))
    print(f"teacher {t:.4f}  pruned {pr:.4f}  student {s:.4f}  (gap {metrics['gap_points']:.2f} points)")


def similarity_table(seed: int, data, cfg, norm: dict, x_test: torch.Tensor, y_test: torch.Tensor, device) -> list[dict]:
    """J_KL of the real splits, the synthetic set, noise and an FGSM copy of the test split, relative to the train split."""
    teacher, tcard = load_model(MODELS["teacher"], device)
    cap = cfg.jkl_max_images or None  # the first images of each set (the splits' own order, so deterministic)
    train = load_split(data.name, data.root, train=True)
    x_test, y_test = x_test[:cap], y_test[:cap]
    sets = {
        "train": normalize(train.images[:cap], norm["mean"], norm["std"]),
        "test": x_test,
        "synthetic": load_tensors(SYNTHETIC / "images.safetensors")["images"][:cap].float(),
        **noise_sets(len(x_test), tuple(tcard["input_shape"]), norm["mean"], norm["std"], seed),
        f"fgsm_test_eps{cfg.fgsm_eps:g}": fgsm(teacher, x_test, y_test, cfg.fgsm_eps, norm["mean"], norm["std"], cfg.batch_size, device),
    }
    return jkl_table(teacher, sets, "train", cfg.batch_size, device)


def render_report(m: dict, scard: dict, student_card: dict, timings: dict, dataset: str, jkl: list[dict]) -> str:
    d = student_card["params"]["distill"]
    rec = m["recovered_fraction"]
    rows = [
        f"| {label} | {m[k]['accuracy']:.2%} | {m[k]['sparsity']:.4f} | {m[k]['nonzero_params']:,} / {m[k]['params']:,} "
        f"| {m[k]['file_bytes'] / 1024:.0f} KiB |"
        for k, label in (("teacher", "teacher"), ("pruned", "pruned, before recovery"), ("student", "recovered student"))
    ]
    method = scard.get("method", "deepinversion")
    agreement = (
        f"the teacher assigns {scard['teacher_agreement']:.1%} of them to their target class"
        if scard.get("teacher_agreement") is not None
        else f"untargeted; class balance of the teacher's predictions {scard['pred_class_balance']:.3f}"
    )
    transfer = student_card.get("transfer_set", "synthetic")
    if not m["data_free"]:
        provenance = (
            "**NOT data-free** (baseline): the student was distilled on real training images "
            "(distill.transfer_set = real), not on the synthetic set. For reference, the pipeline's"
        )
    elif transfer == "gaussian":
        provenance = "Data-free noise baseline: the student was distilled on Gaussian noise, not on the synthetic set. For reference,"
    else:
        provenance = "Data-free: the student saw no real image. It was distilled only on"
    return "\n".join(
        [
            "# dreamprune report",
            "",
            f"Dataset: {dataset}, real test split ({m['test_images']} images). "
            f"Pruning: {student_card['sparsity']:.2%} of conv+linear weights are zero.",
            "",
            "| model | test accuracy | conv+linear sparsity | nonzero params / params | file (dense safetensors) |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Gap teacher - student: **{m['gap_points']:.2f} points**"
            + (f"; the student recovered {rec:.1%} of the accuracy lost to pruning" if rec is not None else "")
            + f"; it agrees with the teacher on {m['student_teacher_agreement']:.2%} of test images.",
            "",
            "## Data-free",
            "",
            f"{provenance} {scard['n_images']} synthetic images (method `{method}`) made from the teacher and its BatchNorm "
            f"statistics ({agreement}; BN-L2 loss {scard['bn_loss_initial']:.2f} -> {scard['bn_loss_final']:.3f}). "
            "dvc.yaml (`dvc dag`) shows that extract_bn_stats, synthesize, prune and distill have no dependency on data/raw.",
            "",
            f"Distillation: {d['epochs']} epochs, T={d['temperature']}, SGD lr {d['lr']} ({d['schedule']}), "
            f"freeze_bn={d['freeze_bn']}, recalibrate_bn={d['recalibrate_bn']}, shift {d['max_shift']} px, flip {d['flip']}.",
            "",
            "## How close is each data set to the training data? (BNS divergence J_KL)",
            "",
            "J_KL = mean over the input and every BN layer of KL(N(running stats) || N(the data set's statistics)) in the "
            "teacher, divided by J_KL of the real training split (1 = as close as the training data itself).",
            "",
            "| data set | images | J_KL | relative to train |",
            "|---|---|---|---|",
            *[f"| {r['dataset']} | {r['images']:,} | {r['j_kl']:.5f} | {r['relative_to_train']:.2f} |" for r in jkl],
            "",
            "![J_KL](evaluate/jkl.png)",
            "",
            "## Synthetic images",
            "",
            "![synthetic grid](synthesize/grid.png)",
            "",
            "## Curves",
            "",
            "![synthesis losses](synthesize/loss.png) ![distillation](distill/curve.png)",
            "",
            "Per-layer sparsity: ![sparsity](prune/sparsity.png)",
            "",
            "## Wall time of the last run of each stage (s)",
            "",
            "| stage | seconds |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in timings.items()],
            "",
        ]
    )


if __name__ == "__main__":
    run_stage(main)
