"""Command (not a pipeline stage): is a folder of images like the teacher's training data?

    python -m stages.bns_divergence IMAGES [--teacher models/teacher] [--reference reports/evaluate/jkl.json] [--json OUT]

IMAGES is a folder of image files (searched recursively: png, jpg, jpeg, bmp, gif, webp,
tif) or a dreamprune synthetic set (a folder with images.safetensors). Images are converted
to the teacher's channel count, resized to its input size and normalized with the
normalization in its card. Prints J_KL, the BNS divergence (mean over the input and every BN
layer of KL(N(running stats) || N(the images' statistics))), and, when the evaluate stage's
J_KL table for the same teacher exists, J_KL relative to the real training split
(~1: like the training data; noise scores 10-1000x). Exit status 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from stages.core.artifacts import load_tensors, read_json, sha256_file
from stages.core.bn import j_kl
from stages.core.checkpoints import load_model
from stages.core.imageops import normalize
from stages.core.runtime import StageError, resolve_device, run_stage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image_folder(folder: Path, input_shape) -> torch.Tensor:
    """All images under ``folder`` as uint8 (N, C, H, W) in the teacher's channel count and size."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise StageError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    channels, h, w = input_shape
    out = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise StageError(f"{f}: cannot decode image ({e})") from e
        out.append(torch.from_numpy(arr.copy()).view(h, w, channels).permute(2, 0, 1))
    return torch.stack(out)


def load_images(path: Path, card: dict) -> tuple[torch.Tensor, str]:
    """Normalized images from a folder of files or from a synthetic set; returns (x, description)."""
    if not path.exists():
        raise StageError(f"{path}: no such file or folder")
    if (path / "images.safetensors").is_file():
        x = load_tensors(path / "images.safetensors")["images"].float()
        if list(x.shape[1:]) != list(card["input_shape"]):
            raise StageError(f"{path}: images are {list(x.shape[1:])}, the teacher takes {card['input_shape']}")
        return x, "synthetic set (normalized tensors)"
    if not path.is_dir():
        raise StageError(f"{path}: expected a folder of images or a synthetic set folder")
    u8 = load_image_folder(path, card["input_shape"])
    norm = card["normalization"]
    return normalize(u8, norm["mean"], norm["std"]), "image files"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m stages.bns_divergence", description=__doc__.split("\n\n")[0])
    ap.add_argument("images", type=Path, help="folder of images, or a synthetic set folder (images.safetensors)")
    ap.add_argument("--teacher", type=Path, default=Path("models/teacher"), help="teacher folder (model.safetensors + card.json)")
    ap.add_argument("--reference", type=Path, default=Path("reports/evaluate/jkl.json"), help="evaluate's J_KL table for this teacher")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--json", type=Path, help="also write the result to this JSON file")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        raise StageError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    teacher, card = load_model(args.teacher, device)
    x, kind = load_images(args.images, card)
    result = {
        "images": str(args.images),
        "kind": kind,
        "n_images": len(x),
        "teacher": str(args.teacher),
        "j_kl": j_kl(teacher, x, args.batch_size, device),
    }
    if args.reference.is_file():
        ref = read_json(args.reference)
        train = next((r for r in ref.get("rows", []) if r["dataset"] == "train"), None)
        if train and ref.get("teacher_sha256") == sha256_file(args.teacher / "model.safetensors"):
            result["j_kl_train"] = train["j_kl"]
            result["relative_to_train"] = result["j_kl"] / train["j_kl"]
    line = f"{result['n_images']} images ({kind}): J_KL = {result['j_kl']:.5f}"
    if "relative_to_train" in result:
        line += f" = {result['relative_to_train']:.2f} x the training split's ({result['j_kl_train']:.5f})"
    print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    run_stage(main)
