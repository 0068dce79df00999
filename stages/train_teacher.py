"""Stage train_teacher: train the BatchNorm CNN teacher on the real training split."""

from pathlib import Path

import pandas as pd
import torch

from stages.core.artifacts import atomic_dir, library_versions, save_model, sha256_file, write_json
from stages.core.data import channel_stats, load_split
from stages.core.imageops import normalize
from stages.core.models import build_model
from stages.core.params import as_dict, load_params
from stages.core.runtime import resolve_device, run_stage, seed_everything, timed
from stages.core.training import accuracy, train_classifier

OUT = Path("models/teacher")
REPORTS = Path("reports/train_teacher")


def main() -> None:
    p = load_params("common", "data", "train_teacher")
    common, data, cfg = p["common"], p["data"], p["train_teacher"]
    seed_everything(common.seed)
    device = resolve_device(common.device)
    train, test = load_split(data.name, data.root, train=True), load_split(data.name, data.root, train=False)
    if cfg.max_train_images:
        keep = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(common.seed))[: cfg.max_train_images]
        train.images, train.labels = train.images[keep], train.labels[keep]
    mean, std = channel_stats(train.images)
    x_train, x_test = normalize(train.images, mean, std), normalize(test.images, mean, std)
    model = build_model(cfg.arch, len(train.classes), train.input_shape[0])
    timings = {}
    with timed(timings, "wall_s"):
        history = train_classifier(
            model, x_train, train.labels, cfg, device, common.seed, eval_fn=lambda m: accuracy(m, x_test, test.labels, 1000, device)
        )
    test_acc = history[-1]["test_acc"]
    card = {
        "kind": "teacher",
        "arch": cfg.arch,
        "num_classes": len(train.classes),
        "classes": list(train.classes),
        "in_channels": train.input_shape[0],
        "input_shape": list(train.input_shape),
        "normalization": {"mean": mean, "std": std},
        "dataset": data.name,
        "dataset_sha256": sha256_file(Path(data.root) / "SOURCE.json"),
        "train_images": len(train.labels),
        "test_accuracy": round(test_acc, 6),
        "params": {"common": as_dict(common), "train_teacher": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        save_model(tmp, model, card)
    with atomic_dir(REPORTS) as tmp:
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
        write_json(tmp / "metrics.json", {"test_accuracy": test_acc, "epochs": cfg.epochs, **timings})
    print(f"teacher {cfg.arch}: test accuracy {test_acc:.4f} ({timings['wall_s']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
