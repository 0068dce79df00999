"""Real datasets: fetching into ``data/raw`` and loading as normalized tensors.

Only ``prepare_data``, ``train_teacher`` and ``evaluate`` import the loaders here;
the data-free stages never do (dvc.yaml shows it).

Fashion-MNIST sources, in order for ``source: auto``: the Debian package
``dataset-fashion-mnist`` (its .gz files are recompressed, so torchvision's
checksums fail on them: we gunzip them into torchvision's raw layout), then
torchvision's own download.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets

from .runtime import StageError

FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
HOW_TO_GET = (
    "install the Debian package (apt-get update && apt-get install -y dataset-fashion-mnist), "
    "or allow network access so torchvision can download it (prepare_data.source: download)"
)


def prepare_fashion_mnist(root: Path, source: str, debian_dir: Path) -> str:
    """Fill ``root/FashionMNIST/raw`` with the four idx files; returns a description of the source."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    have_debian = all((debian_dir / f"{f}.gz").is_file() for f in FMNIST_FILES)
    if source in ("auto", "debian") and have_debian:
        for f in FMNIST_FILES:
            with gzip.open(debian_dir / f"{f}.gz", "rb") as src, open(raw / f, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return f"debian:{debian_dir}"
    if source == "debian":
        raise StageError(f"Fashion-MNIST not found in {debian_dir} (prepare_data.source = debian): {HOW_TO_GET}")
    try:
        datasets.FashionMNIST(str(root), train=True, download=True)
        datasets.FashionMNIST(str(root), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise StageError(f"Fashion-MNIST not found in {debian_dir} and the download failed ({e}): {HOW_TO_GET}") from e
    for f in raw.glob("*.gz"):
        f.unlink()
    return "torchvision-download"


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W) plus int64 labels and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def load_split(name: str, root: str | Path, train: bool) -> ImageSet:
    """Load a real split into memory. Raises StageError saying how to get missing data."""
    if name != "fashion_mnist":
        raise StageError(f"data.name = {name!r} is not supported")
    root = Path(root)
    missing = [f for f in FMNIST_FILES if not (root / "FashionMNIST" / "raw" / f).is_file()]
    if missing:
        raise StageError(f"Fashion-MNIST files {missing} missing under {root}/FashionMNIST/raw: run `dvc repro prepare_data`; {HOW_TO_GET}")
    ds = datasets.FashionMNIST(str(root), train=train, download=False)
    return ImageSet(ds.data.unsqueeze(1).clone(), ds.targets.clone().long(), FMNIST_CLASSES)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (the input normalization)."""
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
