"""Stage export_int8_real: NOT DATA-FREE. The student's int8 ONNX model calibrated on real training images.

The reference for the data-free int8 model of stage export: the same float graph (models/export/student_fp32.onnx)
and the same ONNX Runtime settings (export.calibration, per_channel, batch_size), with data/real - real training
images (stage real_transfer_set) - as the calibration set instead of the synthetic one. Its card, the lineage and
the report mark it NOT data-free.
"""

from pathlib import Path

from stages.core.artifacts import atomic_dir, library_versions, read_json, sha256_file, write_json
from stages.core.onnx_export import calibration_pixels, quantize_int8, versions
from stages.core.params import as_dict, load_params
from stages.core.runtime import run_stage, seed_everything, timed

EXPORT = Path("models/export")
REAL = Path("data/real")
OUT = Path("models/export_real")


def main() -> None:
    p = load_params("common", "export", "export_int8_real")
    common, cfg, own = p["common"], p["export"], p["export_int8_real"]
    seed_everything(common.seed)
    ecard = read_json(EXPORT / "card.json")
    rcard = read_json(REAL / "card.json")
    reason = None
    if not cfg.int8:
        reason = "export.int8 is false"
    elif rcard.get("available") is False:
        reason = f"no real training images: {rcard.get('reason')}"
    timings = {}
    with atomic_dir(OUT) as tmp:
        card = {
            "kind": "export",
            "format": "onnx",
            "data_free": False,
            "baseline": "NOT data-free: int8 calibrated on real training images",
            "student_fp32_onnx_sha256": sha256_file(EXPORT / "student_fp32.onnx"),
            "teacher_sha256": ecard["teacher_sha256"],
            "params": {"common": as_dict(common), "export": as_dict(cfg), "export_int8_real": as_dict(own)},
            "versions": library_versions() | versions(),
        }
        if reason:
            write_json(tmp / "card.json", card | {"available": False, "reason": reason, "models": {}})
            print(f"export_int8_real: nothing to do ({reason})")
            return
        n = own.n_images or ecard["models"]["int8_synthetic"]["calibration"]["images"]
        pixels, calib = calibration_pixels(REAL, n, ecard["input"]["normalization"])
        path = tmp / "student_int8_real.onnx"
        with timed(timings, "student_int8_real_s"):
            fp32, desc = EXPORT / "student_fp32.onnx", "int8 calibration (REAL images)"
            graph = quantize_int8(fp32, path, pixels, cfg, desc)
        entry = {
            "file": path.name,
            "kind": f"int8 QDQ (weights int8{' (7-bit range)' if cfg.reduce_range else ''} "
            f"{'per channel' if cfg.per_channel else 'per tensor'}, activations {cfg.activation_type})",
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "calibration": {"set": str(REAL), "method": cfg.calibration, **calib},
            "data_free": False,
            **graph,
        }
        card |= {
            "models": {"int8_real": entry},
            "real_calibration_set_sha256": sha256_file(REAL / "images.safetensors"),
            "wall_s": {k: round(v, 2) for k, v in timings.items()},
        }
        write_json(tmp / "card.json", card)
    print(f"NOT data-free reference: int8 calibrated on {calib['images']} real training images -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
