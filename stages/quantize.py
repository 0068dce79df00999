"""Stage quantize: simulated low-precision weights/activations, calibrated on the synthetic set (no real data).

Wraps the pruned model's conv and linear layers in fake-quant layers (core/quant.py: per-channel
symmetric weights, per-tensor activations, first/last layer bits separate; BN untouched), with
weight_range mse clips each weight channel where rounding errs least (from the weights alone), sets
the activation ranges from the synthetic images (mean of per-batch min/max, or percentiles) and
writes the calibrated model: the "calibration only" row of the report. distill then fine-tunes
it by KD with these ranges frozen. With weight_bits = act_bits = 32 the stage passes the pruned
model through unchanged, so prune -> quantize -> distill is always the chain.
"""

import shutil
from pathlib import Path

import pandas as pd

from stages.core.artifacts import atomic_dir, load_tensors, read_json, save_model, sha256_file, write_json
from stages.core.checkpoints import load_model
from stages.core.params import as_dict, load_params
from stages.core.quant import FLOAT_BITS, calibrate, layer_bits, quantize_model, set_weight_clip
from stages.core.runtime import StageError, resolve_device, run_stage, seed_everything, timed

PRUNED = Path("models/pruned")
SYNTHETIC = Path("data/synthetic")
OUT = Path("models/quantized")
REPORTS = Path("reports/quantize")


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def main() -> None:
    p = load_params("common", "quantize")
    common, cfg = p["common"], p["quantize"]
    seed_everything(common.seed)
    device = resolve_device(common.device)
    model, pcard = load_model(PRUNED, device)
    scard = read_json(SYNTHETIC / "card.json")
    if scard.get("teacher_sha256") != pcard.get("teacher_sha256"):
        raise StageError(f"{SYNTHETIC} and {PRUNED} come from different teachers (teacher_sha256 in their cards): rerun dvc repro")
    enabled = cfg.weight_bits < FLOAT_BITS or cfg.act_bits < FLOAT_BITS
    card = {
        **{k: v for k, v in pcard.items() if k not in ("weights_sha256", "storage", "params", "kind")},
        "kind": "quantized" if enabled else "pruned (not quantized: quantize.weight_bits = act_bits = 32)",
        "pruned_sha256": sha256_file(PRUNED / "model.safetensors"),
        "calibration_set_sha256": sha256_file(SYNTHETIC / "images.safetensors"),
        "params": {"common": as_dict(common), "quantize": as_dict(cfg)},
        "quantization": None,
    }
    ranges, clips, timings = {}, {}, {"wall_s": 0.0}
    if enabled:
        bits = layer_bits(model, cfg.weight_bits, cfg.act_bits, cfg.first_last_bits)
        quantize_model(model, bits)
        clips = set_weight_clip(model, cfg.weight_range)  # before calibration: ranges are observed with quantized weights
        x = load_tensors(SYNTHETIC / "images.safetensors")["images"].float()
        x = x[: cfg.calib_images or None]
        with timed(timings, "wall_s"):
            try:
                ranges = calibrate(model, x, cfg.batch_size, cfg.calibration, cfg.percentile, device)
            except ValueError as e:
                raise StageError(f"quantize: {e}") from e
        card["quantization"] = {
            "weight_bits": cfg.weight_bits,
            "act_bits": cfg.act_bits,
            "first_last_bits": cfg.first_last_bits,
            "weights": "per-channel symmetric, levels -(2^(b-1)-1)..2^(b-1)-1",
            "weight_range": cfg.weight_range,
            "activations": f"per-tensor asymmetric on every conv/linear input, {cfg.calibration} calibration on {len(x)} synthetic images",
            "layers": {k: list(v) for k, v in bits.items()},
        }
    with atomic_dir(OUT) as tmp:
        if (PRUNED / "masks.safetensors").is_file():
            shutil.copyfile(PRUNED / "masks.safetensors", tmp / "masks.safetensors")
            card["masks_sha256"] = sha256_file(tmp / "masks.safetensors")
        save_model(tmp, model, card)
    layers = (card["quantization"] or {}).get("layers", {})
    rows = [
        {"layer": k, "weight_bits": layers[k][0], "act_bits": layers[k][1], "lo": lo, "hi": hi, "weight_clip_mean": _mean(clips.get(k))}
        for k, (lo, hi) in ranges.items()
    ]
    with atomic_dir(REPORTS) as tmp:
        columns = ["layer", "weight_bits", "act_bits", "lo", "hi", "weight_clip_mean"]
        pd.DataFrame(rows, columns=columns).to_csv(tmp / "ranges.csv", index=False)
        write_json(
            tmp / "metrics.json",
            {"enabled": enabled, **{k: getattr(cfg, k) for k in ("weight_bits", "act_bits", "first_last_bits")}, **timings},
        )
    what = f"{cfg.weight_bits}w{cfg.act_bits}a (first/last {cfg.first_last_bits or 'same'})" if enabled else "off (passed through)"
    print(f"quantize: {what}; {len(ranges)} activation ranges calibrated on the synthetic set")


if __name__ == "__main__":
    run_stage(main)
