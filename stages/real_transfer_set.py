"""Stage real_transfer_set: NOT DATA-FREE. Real training images as a transfer set, the upper-bound baseline.

Draws as many images as the synthetic set has (or real_transfer_set.n_images), class-balanced,
from the real training split, in the same artifact format as data/synthetic. Only a student
distilled with distill.transfer_set = real uses it; that student's card, the report and
`python -m stages.lineage` all mark it not data-free.
"""

from pathlib import Path

import torch

from stages.core.artifacts import atomic_dir, library_versions, read_json, save_tensors, sha256_file, write_json
from stages.core.data import fit_to_input, has_split, load_part
from stages.core.imageops import normalize
from stages.core.params import as_dict, load_params
from stages.core.runtime import StageError, run_stage, seed_everything

TEACHER = Path("models/teacher")
SYNTHETIC = Path("data/synthetic")
OUT = Path("data/real")


def balanced_sample(labels: torch.Tensor, n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``n`` images, every class n//C or n//C+1 times, drawn without replacement."""
    per_class = [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]
    picks = []
    for c, k in enumerate(per_class):
        idx = (labels == c).nonzero().flatten()
        if k > len(idx):
            raise StageError(f"real_transfer_set: class {c} has only {len(idx)} training images, {k} requested")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    return torch.cat(picks).sort().values


def main() -> None:
    p = load_params("common", "data", "real_transfer_set")
    common, data, cfg = p["common"], p["data"], p["real_transfer_set"]
    seed_everything(common.seed)
    tcard = read_json(TEACHER / "card.json")
    n = cfg.n_images or read_json(SYNTHETIC / "card.json")["n_images"]
    if not has_split(data.name, data.root, train=True):
        return write_unavailable(data, tcard, common, cfg)
    train = load_part(data.name, data.root, "train", data.val_fraction)  # the teacher's training images, not the validation ones
    idx = balanced_sample(train.labels, n, tcard["num_classes"], torch.Generator().manual_seed(common.seed))
    norm = tcard["normalization"]
    images = normalize(fit_to_input(train.images[idx], tcard["input_shape"]), norm["mean"], norm["std"]).half()
    card = {
        "kind": "transfer_set",
        "source": "real",
        "data_free": False,
        "labels": "true labels (unused by distillation)",
        "n_images": len(idx),
        "input_shape": tcard["input_shape"],
        "storage": "float16, teacher-normalized input space",
        "classes": tcard["classes"],
        "dataset": data.name,
        "dataset_sha256": tcard.get("dataset_sha256"),
        "teacher_sha256": sha256_file(TEACHER / "model.safetensors"),
        "params": {"common": as_dict(common), "real_transfer_set": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        save_tensors(tmp / "images.safetensors", {"images": images, "targets": train.labels[idx], "train_index": idx})
        write_json(tmp / "card.json", dict(card, images_sha256=sha256_file(tmp / "images.safetensors")))
    print(f"NOT data-free baseline: {len(idx)} real training images -> {OUT}")


def write_unavailable(data, tcard: dict, common, cfg) -> None:
    """An evaluation-only data set (bring-your-own teacher) has no training images: record that, so that
    `dvc repro` still completes; distill refuses transfer_set = real with this card."""
    reason = f"the {data.name} data in {data.root} has no train split (an evaluation-only set)"
    card = {
        "kind": "transfer_set",
        "source": "real",
        "available": False,
        "reason": reason,
        "data_free": False,
        "n_images": 0,
        "input_shape": tcard["input_shape"],
        "teacher_sha256": sha256_file(TEACHER / "model.safetensors"),
        "params": {"common": as_dict(common), "real_transfer_set": as_dict(cfg)},
    }
    empty = torch.zeros(0, *tcard["input_shape"], dtype=torch.float16)
    with atomic_dir(OUT) as tmp:
        save_tensors(tmp / "images.safetensors", {"images": empty, "targets": torch.zeros(0, dtype=torch.int64)})
        write_json(tmp / "card.json", dict(card, images_sha256=sha256_file(tmp / "images.safetensors")))
    print(f"real-data baseline unavailable: {reason}")


if __name__ == "__main__":
    run_stage(main)
