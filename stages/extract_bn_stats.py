"""Stage extract_bn_stats: the teacher's BN running statistics + input normalization (reads only the teacher)."""

from pathlib import Path

import torch

from stages.core.artifacts import atomic_dir, save_bn_stats, sha256_file, write_json
from stages.core.bn import invalid_running_stats, running_stats
from stages.core.checkpoints import load_model
from stages.core.params import as_dict, load_params
from stages.core.runtime import StageError, run_stage

TEACHER = Path("models/teacher")
OUT = Path("models/bn_stats")


def main() -> None:
    cfg = load_params("extract_bn_stats")["extract_bn_stats"]
    teacher, card = load_model(TEACHER)
    stats = running_stats(teacher)
    if not stats:
        raise StageError(f"{TEACHER} ({card['arch']}) has no BatchNorm layers: BN-statistics inversion needs them")
    problem = invalid_running_stats(stats)
    if problem:
        raise StageError(f"{TEACHER}: {problem}: these statistics are what synthesis inverts, so the teacher is refused")
    defaults = [
        n
        for n, (mu, var) in stats.items()
        if torch.allclose(mu, torch.zeros_like(mu), atol=cfg.default_atol)
        and torch.allclose(var, torch.ones_like(var), atol=cfg.default_atol)
    ]
    if len(defaults) == len(stats):
        raise StageError(
            f"{TEACHER}: every BN layer still has the default statistics (mean 0, var 1 within "
            f"extract_bn_stats.default_atol={cfg.default_atol}): the teacher was never trained in train mode"
        )
    layers = []
    for name, (mu, var) in stats.items():
        layers.append(
            {
                "layer": name,
                "channels": mu.numel(),
                "mean_of_running_mean": round(float(mu.mean()), 6),
                "mean_of_running_var": round(float(var.mean()), 6),
                "max_running_var": round(float(var.max()), 6),
                "still_default": name in defaults,
            }
        )
    norm = card["normalization"]
    with atomic_dir(OUT) as tmp:
        save_bn_stats(tmp / "stats.safetensors", stats, norm["mean"], norm["std"])
        write_json(
            tmp / "summary.json",
            {
                "kind": "bn_stats",
                "teacher_sha256": sha256_file(TEACHER / "model.safetensors"),
                "n_layers": len(stats),
                "n_channels": sum(r["channels"] for r in layers),
                "input_normalization": norm,
                "layers": layers,
                "params": {"extract_bn_stats": as_dict(cfg)},
                "stats_sha256": sha256_file(tmp / "stats.safetensors"),
            },
        )
    print(f"{len(stats)} BN layers ({sum(r['channels'] for r in layers)} channels) -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
