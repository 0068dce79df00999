"""Real datasets: fetching into ``data/raw`` and loading as uint8 tensors.

Only ``prepare_data``, ``train_teacher``, ``real_transfer_set`` (the labelled not-data-free
baseline) and ``evaluate`` import the loaders here; the data-free stages never do (dvc.yaml shows it).

- ``fashion_mnist``: for ``source: auto`` the Debian package ``dataset-fashion-mnist`` (its .gz
  files are recompressed, so torchvision's checksums fail on them: we gunzip them into
  torchvision's raw layout), then torchvision's own download.
- ``cifar10``: ``prepare_data.path`` naming a CIFAR-10 python-batches folder (torchvision checks
  every batch file's MD5 before reading it), an ImageFolder tree or a ``.tar.gz`` of one (the
  JPEG copy: ``train/<class>/*.jpg``, ``test/<class>/*.jpg``); without a path, torchvision's
  download.
- ``imagefolder``: any labelled ImageFolder tree or ``.tar.gz`` at ``prepare_data.path`` with
  ``test/`` (the evaluation set) and optionally ``train/`` class folders; a tree with class
  folders only is taken as the test split. This is what a bring-your-own-teacher run needs.

cifar10 and imagefolder are decoded once into ``data/raw/<name>/{train,test}.safetensors``
(uint8 N x C x H x W + int64 labels) and ``classes.json``; SOURCE.json records where they came
from and the source's sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets

from .artifacts import load_tensors, save_tensors, sha256_file
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


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def tree_sha256(folder: Path) -> str:
    """One digest over the relative paths and contents of every file under ``folder``."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder)}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def read_image_folder(
    folder: Path, image_size: int, classes: tuple[str, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Decode ``folder/<class>/<image>`` into uint8 (N, C, H, W) and labels (class folders in sorted
    order, as torchvision's ImageFolder numbers them). Grayscale if the first image is, else RGB."""
    found = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))
    if not found:
        raise StageError(f"{folder} has no class folders (expected {folder}/<class>/<image files>)")
    if classes is not None and found != classes:
        raise StageError(f"{folder}: class folders {list(found)} differ from the expected {list(classes)}")
    files = [(f, c) for c, name in enumerate(found) for f in sorted((folder / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise StageError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    mode = None
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                if mode is None:
                    mode = "L" if im.mode in ("1", "L", "I;16", "I") else "RGB"
                im = im.convert(mode)
                if image_size:
                    im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise StageError(f"{f}: cannot decode the image ({e})") from e
        images.append(torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], -1).permute(2, 0, 1))
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise StageError(f"{folder}: images of different sizes {sorted(shapes)[:4]}; set prepare_data.image_size to resize them")
    return torch.stack(images), torch.tensor([c for _, c in files], dtype=torch.int64), found


def prepare_image_dataset(root: Path, name: str, path: str, image_size: int) -> dict:
    """Decode cifar10 / imagefolder into ``root/<name>/``; returns SOURCE.json's description."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    expected = CIFAR10_CLASSES if name == "cifar10" else None
    src = Path(path) if path else None
    if src is not None and not src.exists():
        raise StageError(f"prepare_data.path = {path!r} does not exist")
    if src is None:
        if name != "cifar10":
            raise StageError("data.name = imagefolder needs prepare_data.path (an ImageFolder tree or a .tar.gz of one)")
        return _cifar10_batches(out, root / "_download", download=True)
    if src.is_dir() and (src / "data_batch_1").is_file():
        return _cifar10_batches(out, src, download=False)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        if src.is_file():
            if not tarfile.is_tarfile(src):
                raise StageError(f"prepare_data.path = {path!r} is neither a folder nor a tar archive")
            try:
                with tarfile.open(src) as tar:
                    tar.extractall(tmp, filter="data")  # refuses absolute paths, links out of tmp, devices
            except (tarfile.TarError, OSError) as e:
                raise StageError(f"prepare_data.path = {path!r}: cannot unpack the archive safely ({e})") from e
            tree, digest, kind = Path(tmp), sha256_file(src), "archive"
            inner = [d for d in tree.iterdir() if d.is_dir()]
            if len(inner) == 1 and not (tree / "test").is_dir() and (inner[0] / "test").is_dir():
                tree = inner[0]  # archive with one top folder
        else:
            tree, digest, kind = src, tree_sha256(src), "folder"
        splits = {s: tree / s for s in ("train", "test") if (tree / s).is_dir()}
        if "test" not in splits:
            if "train" in splits:
                raise StageError(f"{src}: has train/ but no test/ split (the evaluation set)")
            splits = {"test": tree}
        classes = None
        for split, folder in splits.items():
            images, labels, classes = read_image_folder(folder, image_size, expected or classes)
            save_tensors(out / f"{split}.safetensors", {"images": images, "labels": labels})
    (out / "classes.json").write_text(json.dumps(list(classes)) + "\n")
    return {"source": f"{kind}:{src}", "source_sha256": digest, "splits": sorted(splits)}


def _cifar10_batches(out: Path, folder: Path, download: bool) -> dict:
    root = folder if download else folder.parent  # torchvision wants the parent of cifar-10-batches-py
    try:
        sets = {s: datasets.CIFAR10(str(root), train=s == "train", download=download) for s in ("train", "test")}
    except Exception as e:  # missing / corrupted batches (MD5 checked before unpickling) or network errors
        how = "the download failed" if download else f"{folder} is not an intact CIFAR-10 batches folder"
        raise StageError(f"CIFAR-10: {how} ({e}); or set prepare_data.path to the ImageFolder JPEG copy (.tar.gz)") from e
    for s, ds in sets.items():
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        save_tensors(out / f"{s}.safetensors", {"images": images, "labels": torch.tensor(ds.targets, dtype=torch.int64)})
    (out / "classes.json").write_text(json.dumps(list(CIFAR10_CLASSES)) + "\n")
    if download:
        shutil.rmtree(folder, ignore_errors=True)
    return {"source": "torchvision-download" if download else f"batches:{folder}", "source_sha256": None, "splits": ["test", "train"]}


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
    root = Path(root)
    split = "train" if train else "test"
    if name == "fashion_mnist":
        missing = [f for f in FMNIST_FILES if not (root / "FashionMNIST" / "raw" / f).is_file()]
        if missing:
            where = f"{root}/FashionMNIST/raw"
            raise StageError(f"Fashion-MNIST files {missing} missing under {where}: run `dvc repro prepare_data`; {HOW_TO_GET}")
        ds = datasets.FashionMNIST(str(root), train=train, download=False)
        return ImageSet(ds.data.unsqueeze(1).clone(), ds.targets.clone().long(), FMNIST_CLASSES)
    if name not in ("cifar10", "imagefolder"):
        raise StageError(f"data.name = {name!r} is not supported")
    f = root / name / f"{split}.safetensors"
    if not f.is_file():
        if (root / name / "classes.json").is_file():
            raise StageError(f"the {name} data in {root} has no {split} split (prepare_data.path gave none)")
        raise StageError(f"{f} missing: run `dvc repro prepare_data` with data.name = {name}")
    t = load_tensors(f)
    classes = tuple(json.loads((root / name / "classes.json").read_text()))
    return ImageSet(t["images"], t["labels"], classes)


PARTS = ("train", "val", "test")
VAL_SEED = 0  # the validation images are a property of the data set, the same for every common.seed


def holdout_index(n: int, fraction: float) -> torch.Tensor:
    """Sorted indices of the ``round(fraction * n)`` validation images among ``n``: a fixed random draw."""
    k = round(fraction * n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))[:k].sort().values


def load_part(name: str, root: str | Path, part: str, val_fraction: float) -> ImageSet:
    """The ``train``, ``val`` or ``test`` part of a prepared data set.

    The validation part is ``val_fraction`` of the stored training split, which then trains without it;
    an evaluation-only set (no training split) gives its validation images from the stored test split
    instead, and its ``test`` part is the rest. Tuning reads ``val``; reported accuracies come from ``test``;
    the two never share an image.
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; known: {PARTS}")
    carved = "train" if has_split(name, root, train=True) else "test"  # the stored split the validation images come from
    stored = carved if part == "val" else part
    images = load_split(name, root, train=stored == "train")
    if stored != carved:
        return images
    is_val = torch.zeros(len(images.labels), dtype=torch.bool)
    is_val[holdout_index(len(images.labels), val_fraction)] = True
    keep = is_val if part == "val" else ~is_val
    return ImageSet(images.images[keep], images.labels[keep], images.classes)


def fit_to_input(images: torch.Tensor, input_shape) -> torch.Tensor:
    """uint8 (N, C, H, W) images converted to the teacher's ``input_shape`` [channels, height, width]: resized
    (bilinear, antialiased) when the size differs, grayscale repeated to 3 channels or RGB turned to luminance
    (ITU-R 601 weights) when the channel count differs. Unchanged when they already fit."""
    c, h, w = (int(v) for v in input_shape)
    x = images
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif x.shape[1] == 3 and c == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise StageError(f"images with {x.shape[1]} channels cannot be fed to a teacher that takes {c}")
    if tuple(x.shape[2:]) != (h, w):
        x = torch.nn.functional.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def class_names(name: str, root: str | Path) -> tuple[str, ...] | None:
    """The prepared dataset's class names without loading its images (None when not prepared)."""
    if name == "fashion_mnist":
        return FMNIST_CLASSES
    f = Path(root) / name / "classes.json"
    return tuple(json.loads(f.read_text())) if f.is_file() else None


def has_split(name: str, root: str | Path, train: bool) -> bool:
    """Whether the prepared data has this split (an evaluation-only ImageFolder has no train split)."""
    if name == "fashion_mnist":
        return True
    return (Path(root) / name / f"{'train' if train else 'test'}.safetensors").is_file()


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (the input normalization)."""
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
