"""Stage export: the recovered student (and the teacher) as ONNX for a runtime, and data-free int8.

models/export/ holds student_fp32.onnx (teacher_fp32.onnx with export.teacher) - pixels in [0, 1] in, logits out -
and with export.int8 student_int8.onnx: ONNX Runtime static int8 (QDQ) calibrated on the **synthetic** set, so the
integer model is data-free too. Every float export is checked against PyTorch on the calibration images (max
|logit difference| <= export.check_atol, else the stage fails). No real image is read; the NOT data-free reference
(the same int8 calibrated on real images) is the separate stage export_int8_real. evaluate measures them in ONNX
Runtime on the real test split.
"""

from pathlib import Path

from stages.core import precision
from stages.core.artifacts import atomic_dir, library_versions, sha256_file, write_json
from stages.core.checkpoints import load_model
from stages.core.onnx_export import calibration_pixels, check_against_pytorch, export_onnx, quantize_int8, versions
from stages.core.onnx_runtime import runtime_facts
from stages.core.params import as_dict, load_params
from stages.core.runtime import StageError, run_stage, seed_everything, timed

TEACHER = Path("models/teacher")
STUDENT = Path("models/student")
SYNTHETIC = Path("data/synthetic")
OUT = Path("models/export")


def main() -> None:
    p = load_params("common", "export")
    common, cfg = p["common"], p["export"]
    seed_everything(common.seed)
    teacher, tcard = load_model(TEACHER, "cpu")
    student, scard = load_model(STUDENT, "cpu")
    teacher_sha = sha256_file(TEACHER / "model.safetensors")
    if scard["teacher_sha256"] != teacher_sha:
        raise StageError(f"{STUDENT} was distilled from another teacher than {TEACHER}: rerun dvc repro")
    norm, shape = tcard["normalization"], tcard["input_shape"]
    pixels, calib = calibration_pixels(SYNTHETIC, cfg.calib_images, norm)
    models = {"student_fp32": student} | ({"teacher_fp32": teacher} if cfg.teacher else {})
    files, timings = {}, {}
    with atomic_dir(OUT) as tmp:
        for name, model in models.items():
            path = tmp / f"{name}.onnx"
            with timed(timings, f"{name}_s"):
                graph = export_onnx(model, shape, norm["mean"], norm["std"], path, cfg.opset)
            simulated = name == "student_fp32" and bool(scard.get("quantization"))
            check = check_against_pytorch(model, path, pixels, norm, cfg, name, simulated)
            kind = (
                f"float32, {scard['quantization']['weight_bits']}w{scard['quantization']['act_bits']}a simulated"
                if simulated
                else "float32"
            )
            files[name] = {"file": path.name, "kind": kind, "bytes": path.stat().st_size, **graph, "pytorch_check": check}
        if cfg.int8:
            path = tmp / "student_int8.onnx"
            with timed(timings, "student_int8_s"):
                fp32, desc = tmp / "student_fp32.onnx", "int8 calibration (synthetic)"
                graph = quantize_int8(fp32, path, pixels, cfg, desc)
            files["int8_synthetic"] = {
                "file": path.name,
                "kind": f"int8 QDQ (weights int8{' (7-bit range)' if cfg.reduce_range else ''} "
                f"{'per channel' if cfg.per_channel else 'per tensor'}, activations {cfg.activation_type})",
                "bytes": path.stat().st_size,
                "calibration": {"set": str(SYNTHETIC), "method": cfg.calibration, **calib},
                **graph,
            }
        for entry in files.values():
            entry["sha256"] = sha256_file(tmp / entry["file"])
        card = {
            "kind": "export",
            "format": "onnx",
            "input": {"name": "pixels", "dtype": "float32", "shape": ["batch", *shape], "range": [0, 1], "normalization": norm},
            "output": "logits",
            "exporter": f"torch.onnx.export (dynamo=True), opset {cfg.opset}",
            "models": files,
            "teacher_sha256": teacher_sha,
            "student_sha256": sha256_file(STUDENT / "model.safetensors"),
            **({"calibration_set_sha256": sha256_file(SYNTHETIC / "images.safetensors")} if cfg.int8 else {}),
            "classes": tcard["classes"],
            "runtime": runtime_facts(),
            "cpu_capability": precision.cpu_capability(),
            "wall_s": {k: round(v, 2) for k, v in timings.items()},
            "params": {"common": as_dict(common), "export": as_dict(cfg)},
            "versions": library_versions() | versions(),
        }
        write_json(tmp / "card.json", card)
    print(", ".join(f"{k} {v['bytes'] / 1024:.0f} KiB" for k, v in files.items()) + f" -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
