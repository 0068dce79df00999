"""cifar10 / imagefolder preparation from ImageFolder trees and archives (tiny fabricated images)."""

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from stages.core.data import CIFAR10_CLASSES, class_names, has_split, load_split, prepare_image_dataset
from stages.core.runtime import StageError


def write_png(img, path):
    arr = img.permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)


def make_tree(root, classes=("cat", "dog"), per_class=3, size=8, channels=3, splits=("train", "test")):
    g = torch.Generator().manual_seed(0)
    for split in splits:
        for c in classes:
            d = root / split / c if split else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                write_png(torch.randint(0, 256, (channels, size, size), dtype=torch.uint8, generator=g), str(d / f"{i}.png"))
    return root


def test_folder_tree_becomes_tensors_with_sorted_class_labels(tmp_path):
    tree = make_tree(tmp_path / "tree", classes=("dog", "cat"))
    raw = tmp_path / "raw"
    info = prepare_image_dataset(raw, "imagefolder", str(tree), 0)
    assert info["splits"] == ["test", "train"] and info["source"].startswith("folder:") and len(info["source_sha256"]) == 64
    train = load_split("imagefolder", raw, train=True)
    assert train.images.shape == (6, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.classes == ("cat", "dog")  # ImageFolder order: sorted folder names
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert class_names("imagefolder", raw) == ("cat", "dog")


def test_archive_grayscale_and_resize(tmp_path):
    tree = make_tree(tmp_path / "tree" / "top", channels=1, size=10)
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="top")  # one top folder, as many archives have
    raw = tmp_path / "raw"
    info = prepare_image_dataset(raw, "imagefolder", str(archive), 6)
    assert info["source"].startswith("archive:")
    test = load_split("imagefolder", raw, train=False)
    assert test.input_shape == (1, 6, 6)


def test_test_only_tree_is_an_evaluation_set(tmp_path):
    tree = make_tree(tmp_path / "tree", splits=("",))  # class folders directly: the test split
    raw = tmp_path / "raw"
    assert prepare_image_dataset(raw, "imagefolder", str(tree), 0)["splits"] == ["test"]
    assert has_split("imagefolder", raw, train=False) and not has_split("imagefolder", raw, train=True)
    with pytest.raises(StageError, match="no train split"):
        load_split("imagefolder", raw, train=True)


def test_cifar10_needs_its_ten_classes(tmp_path):
    tree = make_tree(tmp_path / "tree", classes=("cat", "dog"))
    with pytest.raises(StageError, match="differ from the expected"):
        prepare_image_dataset(tmp_path / "raw", "cifar10", str(tree), 0)
    ok = make_tree(tmp_path / "c10", classes=CIFAR10_CLASSES, per_class=1, size=32)
    prepare_image_dataset(tmp_path / "raw2", "cifar10", str(ok), 0)
    assert json.loads((tmp_path / "raw2" / "cifar10" / "classes.json").read_text()) == list(CIFAR10_CLASSES)


def test_mixed_sizes_name_the_resize_key(tmp_path):
    tree = make_tree(tmp_path / "tree", splits=("test",))
    write_png(torch.zeros(3, 5, 5, dtype=torch.uint8), str(tree / "test" / "cat" / "odd.png"))
    with pytest.raises(StageError, match="prepare_data.image_size"):
        prepare_image_dataset(tmp_path / "raw", "imagefolder", str(tree), 0)


def test_archive_escaping_its_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(StageError, match="cannot unpack the archive safely"):
        prepare_image_dataset(tmp_path / "raw", "imagefolder", str(archive), 0)
    assert not (tmp_path / "escaped.txt").exists()


def test_missing_path_and_undecodable_image(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        prepare_image_dataset(tmp_path / "raw", "imagefolder", str(tmp_path / "nope"), 0)
    tree = make_tree(tmp_path / "tree", splits=("test",))
    (tree / "test" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(StageError, match="broken.png"):
        prepare_image_dataset(tmp_path / "raw2", "imagefolder", str(tree), 0)
