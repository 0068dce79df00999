"""Stage gaussian_transfer_set: Gaussian-noise transfer set, the lower-bound baseline (data-free).

As many images as the synthetic set has (or gaussian_transfer_set.n_images), drawn per channel
from a Gaussian with the input normalization's mean/std (standard normal in normalized space),
labelled with the teacher's prediction, in the same artifact format as data/synthetic.
"""

from pathlib import Path

import torch

from stages.core.artifacts import atomic_dir, library_versions, read_json, save_tensors, sha256_file, write_json
from stages.core.checkpoints import load_model
from stages.core.params import as_dict, load_params
from stages.core.runtime import resolve_device, run_stage, seed_everything
from stages.core.training import predict

TEACHER = Path("models/teacher")
SYNTHETIC = Path("data/synthetic")
OUT = Path("data/gaussian")


def main() -> None:
    p = load_params("common", "gaussian_transfer_set")
    common, cfg = p["common"], p["gaussian_transfer_set"]
    seed_everything(common.seed)
    device = resolve_device(common.device)
    teacher, tcard = load_model(TEACHER, device)
    n = cfg.n_images or read_json(SYNTHETIC / "card.json")["n_images"]
    images = torch.randn((n, *tcard["input_shape"]), generator=torch.Generator().manual_seed(common.seed)).half()
    pred = predict(teacher, images.float(), 256, device).argmax(1)
    card = {
        "kind": "transfer_set",
        "source": "gaussian",
        "data_free": True,
        "labels": "teacher prediction",
        "n_images": n,
        "input_shape": tcard["input_shape"],
        "storage": "float16, teacher-normalized input space",
        "classes": tcard["classes"],
        "teacher_sha256": sha256_file(TEACHER / "model.safetensors"),
        "params": {"common": as_dict(common), "gaussian_transfer_set": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        save_tensors(tmp / "images.safetensors", {"images": images, "targets": pred})
        write_json(tmp / "card.json", dict(card, images_sha256=sha256_file(tmp / "images.safetensors")))
    print(f"{n} Gaussian-noise images -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
