"""The validation part is carved from the training split (from the evaluation set when there is none), never
overlaps the test part, and the data shapes fit any teacher's input."""

import numpy as np
import torch
from PIL import Image

from stages.core.artifacts import save_tensors
from stages.core.data import fit_to_input, holdout_index, load_part


def fake_dataset(root, splits: dict[str, int]):
    """A prepared imagefolder data set whose every image carries its own id in pixel (0, 0) (+ a row for ids > 255)."""
    (root / "imagefolder").mkdir(parents=True)
    (root / "imagefolder" / "classes.json").write_text('["a", "b"]\n')
    start = 0
    for split, n in splits.items():
        ids = torch.arange(start, start + n)
        images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = (ids % 256).to(torch.uint8), (ids // 256).to(torch.uint8)
        save_tensors(root / "imagefolder" / f"{split}.safetensors", {"images": images, "labels": ids % 2})
        start += n


def ids(images):
    return set((images.images[:, 0, 0, 0].long() + 256 * images.images[:, 0, 0, 1].long()).tolist())


def test_validation_comes_from_the_train_split_and_is_disjoint_from_test(tmp_path):
    fake_dataset(tmp_path, {"train": 1000, "test": 300})
    train, val, test = (load_part("imagefolder", tmp_path, p, 0.1) for p in ("train", "val", "test"))
    assert (len(train.labels), len(val.labels), len(test.labels)) == (900, 100, 300)
    assert ids(train) | ids(val) == set(range(1000)) and not ids(train) & ids(val)
    assert ids(test) == set(range(1000, 1300)) and not ids(val) & ids(test)
    # a fixed draw, the same on every call, spread over the whole split (not its first images)
    assert torch.equal(holdout_index(1000, 0.1), holdout_index(1000, 0.1))
    assert max(ids(val)) > 900 and min(ids(val)) < 100


def test_evaluation_only_set_gives_validation_from_its_test_split(tmp_path):
    fake_dataset(tmp_path, {"test": 300})
    val, test = load_part("imagefolder", tmp_path, "val", 0.2), load_part("imagefolder", tmp_path, "test", 0.2)
    assert (len(val.labels), len(test.labels)) == (60, 240)
    assert ids(val) | ids(test) == set(range(300)) and not ids(val) & ids(test)


def test_no_validation_split_when_the_fraction_is_zero(tmp_path):
    fake_dataset(tmp_path, {"train": 50, "test": 20})
    assert len(load_part("imagefolder", tmp_path, "val", 0.0).labels) == 0
    assert len(load_part("imagefolder", tmp_path, "train", 0.0).labels) == 50


def test_fit_to_input_resizes_and_converts_channels():
    gray = torch.full((2, 1, 28, 28), 100, dtype=torch.uint8)
    out = fit_to_input(gray, [3, 32, 32])
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8 and bool((out == 100).all())  # constant stays constant
    rgb = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    rgb[:, 0] = 255  # pure red: luminance 0.299 * 255 = 76.2
    assert int(fit_to_input(rgb, [1, 8, 8])[0, 0, 0, 0]) == 76
    ramp = torch.arange(8, dtype=torch.uint8).repeat(1, 1, 8, 1) * 30  # columns 0, 30, ..., 210
    half = fit_to_input(ramp, [1, 8, 4])
    # antialiased 2:1 = a triangle filter over 4 columns, weights 1/8, 3/8, 3/8, 1/8 (worked by hand for the interior
    # outputs: (30 + 3*60 + 3*90 + 120) / 8 = 75) and the same as PIL's reducing bilinear resize at the edges
    assert half[0, 0, 0].tolist()[1:3] == [75, 135]
    pil = Image.fromarray(ramp[0, 0].numpy()).resize((4, 8), Image.Resampling.BILINEAR)
    assert (half[0, 0].int() - torch.from_numpy(np.array(pil)).int()).abs().max() <= 1
    assert fit_to_input(gray, [1, 28, 28]) is not None and torch.equal(fit_to_input(gray, [1, 28, 28]), gray)
