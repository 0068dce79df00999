"""Stage evaluate: teacher / pruned / recovered student on the real test split, the J_KL table, and the report.

Every model is also scored on the validation part (data.val_fraction, never in the test split): that column
is what tuning reads; the test accuracy is what is reported. Real images are fitted to the teacher's
input shape (resized, channels converted) when they differ."""

from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from stages.core import machine, onnx_runtime, precision
from stages.core.artifacts import atomic_dir, atomic_write_text, load_tensors, read_json, sha256_file, write_json
from stages.core.checkpoints import load_model
from stages.core.cost import effective_bits, latency_ms, macs
from stages.core.data import ImageSet, fit_to_input, has_split, load_part
from stages.core.imageops import normalize
from stages.core.labels import EXPORT_LABELS, MODEL_LABELS
from stages.core.lineage import verdict
from stages.core.params import load_params
from stages.core.plots import bars
from stages.core.pruning import global_sparsity
from stages.core.runtime import StageError, resolve_device, run_stage, seed_everything
from stages.core.similarity import fgsm, jkl_table, noise_sets
from stages.core.training import accuracy, match_rate, predict

MODELS = {
    "teacher": Path("models/teacher"),
    "pruned": Path("models/pruned"),
    "quantized": Path("models/quantized"),  # a row only when quantize is on: calibration only, before KD
    "student": Path("models/student"),
}
EXPORTS = (Path("models/export"), Path("models/export_real"))  # ONNX models; export_real is NOT data-free
REFERENCE_EXPORT = "teacher_fp32"  # the file speed-ups are paired against
SYNTHETIC = Path("data/synthetic")
REPORTS = Path("reports")
STAGES = ("train_teacher", "synthesize", "distill")
LATENCY_BATCHES = (1, 64)


def describe(folder: Path, x: torch.Tensor, y: torch.Tensor, val: tuple, cfg, device) -> tuple[dict, torch.Tensor]:
    """One model's row: test accuracy (reported), validation accuracy (for tuning), sparsity, size, MACs, latency;
    and its test-split logits."""
    model, card = load_model(folder, device)
    logits = predict(model, x, cfg.batch_size, device, progress=f"{folder.name}: test accuracy")
    pred = logits.argmax(1)
    x_val, y_val = val
    params = list(model.parameters())
    shape = tuple(card["input_shape"])
    q = card.get("quantization") or {}
    sparsity = global_sparsity(model)
    row = {
        "accuracy": match_rate(pred, y),
        "val_accuracy": accuracy(model, x_val, y_val, cfg.batch_size, device, f"{folder.name}: validation accuracy")
        if len(y_val)
        else None,
        "sparsity": sparsity,
        "params": sum(p.numel() for p in params),
        "nonzero_params": int(sum((p != 0).sum() for p in params)),
        "file_bytes": (folder / "model.safetensors").stat().st_size,
        "storage": card.get("storage", "dense"),
        "bits": f"{q['weight_bits']}w{q['act_bits']}a" if q else "fp32",
        **macs(model, shape),
        # unstructured-sparse models are sized in the bitmask format (the student is saved in it)
        "effective_bits": effective_bits(model, sparse_storage="masks_sha256" in card and sparsity > 0),
        **{
            f"latency_ms_b{b}": latency_ms(model, shape, b, cfg.latency_threads, cfg.latency_repeats, cfg.latency_budget_s)
            for b in LATENCY_BATCHES
        },
    }
    return row, logits


def exported_rows(pixels: torch.Tensor, y: torch.Tensor, logits: dict[str, torch.Tensor], cfg) -> dict:
    """Every exported ONNX model run in ONNX Runtime: real test-split accuracy, agreement with the PyTorch model it
    came from (max |logit difference|, top-1), latency at batch 1 and 64 (evaluate.latency_threads; all files timed
    in interleaved rounds) with the paired speed-up over the float teacher's file, file size, and its data-free
    verdict (from the lineage of the folder that holds it)."""
    shape = tuple(pixels.shape[1:])
    rows, paths = {}, {}
    for folder in EXPORTS:
        card = read_json(folder / "card.json")
        basis = verdict(Path("."), str(folder))
        for name, entry in card.get("models", {}).items():
            path = paths[name] = folder / entry["file"]
            if sha256_file(path) != entry["sha256"]:
                raise StageError(f"{path} does not match the sha256 in {folder / 'card.json'}: rerun dvc repro")
            out = onnx_runtime.predict(onnx_runtime.session(path, torch.get_num_threads()), pixels, cfg.batch_size, f"{name}: ONNX Runtime")
            source = logits["teacher" if name.startswith("teacher") else "student"]
            rows[name] = {
                "accuracy": match_rate(out.argmax(1), y),
                "top1_agreement_with_pytorch": match_rate(out.argmax(1), source.argmax(1)),
                "max_abs_logit_diff_vs_pytorch": float((out - source).abs().max()),
                "file_bytes": path.stat().st_size,
                "format": entry["kind"],
                "calibration": entry.get("calibration"),
                "data_free": basis["data_free"],
                "data_free_basis": basis["basis"],
            }
    ref = REFERENCE_EXPORT if REFERENCE_EXPORT in paths else ""
    for b in LATENCY_BATCHES:  # all files interleaved, so that they share the machine's state (onnx_runtime)
        timed = onnx_runtime.interleaved_latency_ms(
            paths, shape, b, cfg.latency_threads, cfg.latency_repeats, cfg.latency_budget_s * len(paths), ref
        )
        for name, t in timed.items():
            rows[name][f"latency_ms_b{b}"] = t["latency_ms"]
            if ref:
                rows[name][f"speedup_b{b}_vs_{ref}"] = t["speedup_vs_reference"]
    return rows


def real_part(data, part: str, tcard: dict) -> tuple[torch.Tensor, ImageSet]:
    """A real part (train / val / test): its images fitted to the teacher's input shape and normalized, and the set
    itself (labels, class names)."""
    images = load_part(data.name, data.root, part, data.val_fraction)
    norm = tcard["normalization"]
    return normalize(fit_to_input(images.images, tcard["input_shape"]), norm["mean"], norm["std"]), images


def main() -> None:
    p = load_params("common", "data", "evaluate")
    common, data, cfg = p["common"], p["data"], p["evaluate"]
    seed_everything(common.seed)
    device = resolve_device(common.device)
    tcard = read_json(MODELS["teacher"] / "card.json")
    norm = tcard["normalization"]
    x, test = real_part(data, "test", tcard)
    x_val, val = real_part(data, "val", tcard)
    jkl, ref = similarity_table(common.seed, data, cfg, norm, x, test.labels, device)
    rows, preds = {}, {}
    quantized = bool(read_json(MODELS["quantized"] / "card.json").get("quantization"))
    models = [k for k in MODELS if k != "quantized" or quantized]
    logits = {}
    for name in tqdm(models, desc="evaluate models", unit="model"):
        rows[name], logits[name] = describe(MODELS[name], x, test.labels, (x_val, val.labels), cfg, device)
        preds[name] = logits[name].argmax(1)
    exported = exported_rows(fit_to_input(test.images, tcard["input_shape"]).float() / 255.0, test.labels, logits, cfg)
    scard = read_json(SYNTHETIC / "card.json")
    student_card = read_json(MODELS["student"] / "card.json")
    provenance = verdict(Path("."), str(MODELS["student"]))
    before = "quantized" if quantized else "pruned"  # the model distillation starts from
    t, pr, s = (rows[k]["accuracy"] for k in ("teacher", before, "student"))
    stage_metrics = {st: read_json(REPORTS / st / "metrics.json") for st in STAGES}
    timings = {st: m["wall_s"] for st, m in stage_metrics.items()}
    metrics = {
        **rows,
        "gap_points": round(100 * (t - s), 3),
        "recovered_fraction": (s - pr) / (t - pr) if t != pr else None,
        "recovery_starts_from": before,
        "student_teacher_agreement": match_rate(preds["student"], preds["teacher"]),
        "speedup_b64": rows["teacher"]["latency_ms_b64"] / rows["student"]["latency_ms_b64"],
        "size_ratio": rows["teacher"]["effective_bits"] / rows["student"]["effective_bits"],
        "synthetic": {
            "n_images": scard["n_images"],
            "method": scard.get("method", "deepinversion"),
            "teacher_agreement": scard["teacher_agreement"],
            "pred_class_balance": scard.get("pred_class_balance"),
            "bn_loss_final": scard["bn_loss_final"],
            # synthesis compute: images x optimization steps actually run (early stop / warm start lower it)
            "image_iterations": stage_metrics["synthesize"].get("image_iterations"),
        },
        # the verdict over dvc.yaml + dvc.lock (stages.lineage's), never a card flag or a default
        "data_free": provenance["data_free"],
        "data_free_basis": provenance["basis"],
        f"j_kl_relative_to_{ref}": {r["dataset"]: r[f"relative_to_{ref}"] for r in jkl},
        "wall_s": timings,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "cpu_capability": precision.cpu_capability(),
        "precision": {
            "train_teacher": (tcard.get("precision") or {}).get("resolved"),
            "synthesize": (scard.get("precision") or {}).get("resolved"),
            "native_bf16": precision.native_bf16(device),
        },
        "test_images": len(test.labels),
        "val_images": len(val.labels),
        # the shipped models, run in ONNX Runtime (stages export / export_int8_real)
        "export": exported,
        "export_runtime": onnx_runtime.runtime_facts()
        | {"cpu": machine.cpu_name(), "cpu_capability": precision.cpu_capability(), **machine.int8_features()}
        | {"latency_threads": cfg.latency_threads},
    }
    in_class = [test.labels == c for c in range(len(test.classes))]
    per_class = pd.DataFrame(
        {"class": list(test.classes)} | {k: [match_rate(preds[k][m], test.labels[m]) for m in in_class] for k in models}
    )
    with atomic_dir(REPORTS / "evaluate") as tmp:
        per_class.to_csv(tmp / "per_class_accuracy.csv", index=False)
        bars(models, [rows[k]["accuracy"] for k in models], tmp / "accuracy.png", "real test-split accuracy", "accuracy")
        pd.DataFrame([{"model": k, **rows[k]} for k in models]).to_csv(tmp / "cost.csv", index=False)
        pd.DataFrame(jkl).to_csv(tmp / "jkl.csv", index=False)
        write_json(tmp / "jkl.json", {"teacher_sha256": sha256_file(MODELS["teacher"] / "model.safetensors"), "rows": jkl})
        bars(
            [r["dataset"] for r in jkl],
            [r[f"relative_to_{ref}"] for r in jkl],
            tmp / "jkl.png",
            f"BNS divergence J_KL / J_KL({ref} split)",
            "relative J_KL (log)",
            horizontal=True,
            logx=True,
        )
    write_json(REPORTS / "metrics.json", metrics)
    atomic_write_text(REPORTS / "report.md", render_report(metrics, scard, student_card, timings, data.name, jkl, ref, cfg))
    print(f"teacher {t:.4f}  pruned {pr:.4f}  student {s:.4f}  (gap {metrics['gap_points']:.2f} points)")


def evenly_spaced(n: int, cap: int) -> torch.Tensor:
    """Indices of at most ``cap`` (0 = no cap) evenly spaced items of ``n``: deterministic, and class-proportional
    even in a class-sorted split (an ImageFolder copy), where the first ``cap`` images would be a few classes."""
    return torch.arange(n) if not cap or n <= cap else torch.linspace(0, n - 1, cap).round().long()


def similarity_table(seed: int, data, cfg, norm: dict, x_test: torch.Tensor, y_test: torch.Tensor, device) -> list[dict]:
    """J_KL of the real splits, the synthetic set, noise and an FGSM copy of the test split, relative to the train
    split (the test split for an evaluation-only data set). Returns (rows, reference split)."""
    teacher, tcard = load_model(MODELS["teacher"], device)
    cap = cfg.jkl_max_images
    keep = evenly_spaced(len(x_test), cap)
    x_test, y_test = x_test[keep], y_test[keep]
    ref = "train" if has_split(data.name, data.root, train=True) else "test"
    train = real_part(data, "train", tcard)[0] if ref == "train" else None
    real = {"train": train[evenly_spaced(len(train), cap)]} if train is not None else {}
    synthetic = load_tensors(SYNTHETIC / "images.safetensors")["images"]
    sets = {
        **real,
        "test": x_test,
        "synthetic": synthetic[evenly_spaced(len(synthetic), cap)].float(),
        **noise_sets(len(x_test), tuple(tcard["input_shape"]), norm["mean"], norm["std"], seed),
        f"fgsm_test_eps{cfg.fgsm_eps:g}": fgsm(teacher, x_test, y_test, cfg.fgsm_eps, norm["mean"], norm["std"], cfg.batch_size, device),
    }
    return jkl_table(teacher, sets, ref, cfg.batch_size, device), ref


def export_section(m: dict) -> list[str]:
    """The report's table of the exported ONNX models as ONNX Runtime ran them, and which file is fastest here."""
    if not m.get("export"):
        return []
    rt, e = m["export_runtime"], m["export"]
    key = f"speedup_b64_vs_{REFERENCE_EXPORT}"
    rows = [
        f"| {EXPORT_LABELS.get(k, k)} | {r['accuracy']:.2%} | {r['top1_agreement_with_pytorch']:.2%} "
        f"| {r['max_abs_logit_diff_vs_pytorch']:.2g} "
        f"| {r['latency_ms_b1']:.2f} / {r['latency_ms_b64']:.1f} | {f'{r[key]:.2f}x' if key in r else '-'} "
        f"| {r['file_bytes'] / 1024:.0f} KiB | "
        f"{'yes' if r['data_free'] else 'undetermined' if r['data_free'] is None else '**no**'} |"
        for k, r in e.items()
    ]
    shipped = {k: r for k, r in e.items() if not k.startswith("teacher") and r["data_free"]}
    fastest = []
    if shipped:
        k = min(shipped, key=lambda k: shipped[k]["latency_ms_b64"])
        vs = f", {shipped[k][key]:.2f}x the float teacher's file (paired rounds)" if key in shipped[k] else ""
        fastest = [
            f"Fastest data-free student file on this CPU at batch 64: **{EXPORT_LABELS.get(k, k)}** "
            f"({shipped[k]['latency_ms_b64']:.1f} ms{vs}, {shipped[k]['accuracy']:.2%} test accuracy). Which one wins depends on "
            "the CPU: int8 kernels gain most where it has VNNI or AMX.",
            "",
        ]
    return [
        "## Shipped models (ONNX, run in ONNX Runtime)",
        "",
        f"ONNX Runtime {rt['onnxruntime']}, {rt['execution_provider']}, {rt.get('cpu', 'CPU')} (capability {rt['cpu_capability']}, "
        f"VNNI {'yes' if rt.get('vnni') else 'no'}, AMX {'yes' if rt.get('amx') else 'no'}), "
        f"{rt['latency_threads']} thread(s) while timing, every file timed in the same interleaved rounds (median; speed-up: "
        "median of per-round ratios to the float teacher's file). Files in models/export/ (models/export_real/: NOT data-free). "
        "Agreement: with the PyTorch model each was exported from, on the real test split.",
        "",
        "| model | test accuracy | top-1 agreement with PyTorch | max abs logit diff | latency ms, batch 1 / 64 "
        "| vs teacher fp32, batch 64 | file | data-free |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *fastest,
    ]


def render_report(m: dict, scard: dict, student_card: dict, timings: dict, dataset: str, jkl: list[dict], ref: str, cfg) -> str:
    d = student_card["params"]["distill"]
    rec = m["recovered_fraction"]
    rows = [
        f"| {label} | {m[k]['accuracy']:.2%} | {m[k]['bits']} | {m[k]['sparsity']:.4f} | {m[k]['nonzero_params']:,} / {m[k]['params']:,} "
        f"| {m[k]['macs'] / 1e6:.2f} M ({m[k]['nonzero_macs'] / 1e6:.2f} M) | {m[k]['effective_bits'] / 8 / 1024:.0f} KiB "
        f"| {m[k]['file_bytes'] / 1024:.0f} KiB ({m[k]['storage']}) | {m[k]['latency_ms_b1']:.2f} / {m[k]['latency_ms_b64']:.1f} |"
        for k, label in MODEL_LABELS.items()
        if k in m
    ]
    method = scard.get("method", "deepinversion")
    agreement = (
        f"the teacher assigns {scard['teacher_agreement']:.1%} of them to their target class"
        if scard.get("teacher_agreement") is not None
        else f"untargeted; class balance of the teacher's predictions {scard['pred_class_balance']:.3f}"
    )
    transfer = student_card.get("transfer_set", "synthetic")
    if m["data_free"] is None:
        provenance = f"**Data-free status undetermined** ({m['data_free_basis']}). The pipeline's"
    elif not m["data_free"]:
        provenance = (
            f"**NOT data-free** (baseline; {m['data_free_basis']}): the student was distilled on real training images "
            f"(distill.transfer_set = {transfer}), not on the synthetic set. For reference, the pipeline's"
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
            + (
                f"Pruning: structured, {1 - m['student']['macs'] / m['teacher']['macs']:.1%} fewer MACs than the teacher."
                if student_card.get("prune_method") == "structured"
                else f"Pruning: {student_card['sparsity']:.2%} of conv+linear weights are zero."
            )
            + (f" Quantization: {m['student']['bits']} (simulated)." if student_card.get("quantization") else ""),
            "",
            "| model | test accuracy | bits | conv+linear sparsity | nonzero params / params | MACs (nonzero) | effective size "
            "| file (format) | CPU latency ms, batch 1 / 64 |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Effective size: conv/linear weights at their bit width (when unstructured-sparse: nonzeros only, + 1 bit "
            f"per weight of bit mask), everything else 32 bits. Latency: median of {cfg.latency_repeats} CPU forwards, "
            f"{cfg.latency_threads} thread(s), channels_last, float kernels (a fake-quant model is timed as the float model "
            f"underneath; unstructured zeros run through dense kernels). Student vs teacher: {m['speedup_b64']:.2f}x faster "
            f"at batch 64, {m['size_ratio']:.1f}x smaller.",
            "",
            f"Gap teacher - student: **{m['gap_points']:.2f} points**"
            + (f"; the student recovered {rec:.1%} of the accuracy lost to pruning" if rec is not None else "")
            + f"; it agrees with the teacher on {m['student_teacher_agreement']:.2%} of test images.",
            "",
            *export_section(m),
            "## Data-free",
            "",
            f"{provenance} {scard['n_images']} synthetic images (method `{method}`) made from the teacher and its BatchNorm "
            f"statistics ({agreement}; BN-L2 loss {scard['bn_loss_initial']:.2f} -> {scard['bn_loss_final']:.3f}). "
            + (
                f"Verdict from {m['data_free_basis'].split(':')[0]} (`python -m stages.lineage` prints the chain): "
                f"{m['data_free_basis'].split(': ', 1)[1]}."
                if m["data_free"]
                else ""
            ),
            "",
            f"Distillation: {d['epochs']} epochs, T={d['temperature']}, SGD lr {d['lr']} ({d['schedule']}), "
            f"freeze_bn={d['freeze_bn']}, recalibrate_bn={d['recalibrate_bn']}, shift {d['max_shift']} px, flip {d['flip']}.",
            "",
            "## How close is each data set to the training data? (BNS divergence J_KL)",
            "",
            "J_KL = mean over the input and every BN layer of KL(N(running stats) || N(the data set's statistics)) in the "
            f"teacher, divided by J_KL of the real {ref} split (1 = as close as that split; the training split when the "
            "data has one).",
            "",
            f"| data set | images | J_KL | relative to {ref} |",
            "|---|---|---|---|",
            *[f"| {r['dataset']} | {r['images']:,} | {r['j_kl']:.5f} | {r[f'relative_to_{ref}']:.2f} |" for r in jkl],
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
