"""The J_KL command on folders of image files."""

import subprocess
import sys

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import gaussian_blur

from conftest import ROOT
from stages.bns_divergence import main
from stages.core.artifacts import save_model
from stages.core.models import build_model
from stages.core.runtime import StageError


def smooth_images(n, seed):
    """uint8 (n, 1, 16, 16) blurred blobs: the 'training distribution' of the test teacher."""
    g = torch.Generator().manual_seed(seed)
    x = gaussian_blur(torch.randn(n, 1, 16, 16, generator=g), [7, 7], [2.0, 2.0])
    return ((x / x.std() * 0.2 + 0.4).clamp(0, 1) * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A resnet20 whose BN running stats are the exact statistics of smooth_images (cumulative average)."""
    torch.manual_seed(0)
    imgs = smooth_images(512, 0).float() / 255
    mean, std = float(imgs.mean()), float(imgs.std())
    model = build_model("resnet20", 3, 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, 512, 128):
            model((imgs[i : i + 128] - mean) / std)
    folder = tmp_path_factory.mktemp("teacher")
    card = {
        "arch": "resnet20",
        "num_classes": 3,
        "in_channels": 1,
        "input_shape": [1, 16, 16],
        "normalization": {"mean": [mean], "std": [std]},
    }
    save_model(folder, model.eval(), card)
    return folder


def write_folder(folder, images):
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        sub = folder / f"class{i % 2}"  # nested folders are searched too
        sub.mkdir(exist_ok=True)
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(sub / f"{i}.png")
    return folder


def test_like_training_data_scores_below_noise(teacher_dir, tmp_path):
    real = write_folder(tmp_path / "real", smooth_images(64, 1))
    noise = write_folder(tmp_path / "noise", torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8))
    args = ["--teacher", str(teacher_dir), "--reference", str(tmp_path / "absent.json")]
    r = main([str(real), *args, "--json", str(tmp_path / "r.json")])
    n = main([str(noise), *args])
    assert r["n_images"] == 64 and (tmp_path / "r.json").is_file()
    assert 5 * r["j_kl"] < n["j_kl"]


def test_resizes_and_converts_rgb(teacher_dir, tmp_path):
    rgb = write_folder(tmp_path / "rgb", smooth_images(8, 2).repeat(1, 3, 2, 2))  # 3 x 32 x 32
    out = main([str(rgb), "--teacher", str(teacher_dir)])
    assert out["n_images"] == 8 and out["j_kl"] > 0


def test_bad_input_is_one_clear_error(teacher_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="no image files"):
        main([str(tmp_path / "empty"), "--teacher", str(teacher_dir)])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(StageError, match="a.png"):
        main([str(tmp_path / "broken"), "--teacher", str(teacher_dir)])
    cmd = [sys.executable, "-m", "stages.bns_divergence", str(tmp_path / "missing"), "--teacher", str(teacher_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
