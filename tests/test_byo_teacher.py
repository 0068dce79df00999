"""Bring your own teacher, end to end: a stock torchvision ResNet-18 (ImageNet stem, 1-channel 7x7 conv1) and a custom
``module:callable`` net, both trained outside the pipeline, enter through train_teacher.source = file with an
evaluation-only ImageFolder set of 28x28 images (resized to the 32x32 the ResNet takes), and come out pruned,
recovered and reported. Bad checkpoints fail in the stage with one clear message and leave models/teacher untouched."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from test_pipeline import dvc, ran, set_params, sh
from torch import nn

from conftest import ROOT
from stages.core.data import FMNIST_CLASSES, fit_to_input, load_split, prepare_fashion_mnist

MEAN, STD = [0.286], [0.353]
CUSTOM = "models.external.example_nets:TinyBNNet"


def trained_elsewhere(m: nn.Module, x, y) -> nn.Module:
    """What a user brings: a model briefly trained (20 steps), its BN running statistics re-estimated exactly."""
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    m.train()
    for i in range(0, len(y), 64):
        loss = nn.functional.cross_entropy(m(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # 20 steps leave BN's running averages far from the weights' statistics: re-estimate them exactly
    with torch.no_grad():
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None
        for i in range(0, len(y), 256):
            m(x[i : i + 256])
    return m.eval()


def stock_torchvision_resnet18(x32, y) -> nn.Module:
    """torchvision's resnet18 as it ships (7x7 stride-2 conv1 + max-pool), conv1 taking 1 channel, at 32x32."""
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return trained_elsewhere(m, x32, y)


def custom_net(x, y) -> nn.Module:
    from models.external.example_nets import TinyBNNet

    torch.manual_seed(0)
    return trained_elsewhere(TinyBNNet(num_classes=10, in_channels=1, width=8), x, y)


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.fail("this test needs the Debian package dataset-fashion-mnist (see README)")
    tmp = tmp_path_factory.mktemp("byo")
    prepare_fashion_mnist(tmp / "fm", "debian", Path("/usr/share/datasets/fashion-mnist"))
    train, test = load_split("fashion_mnist", tmp / "fm", True), load_split("fashion_mnist", tmp / "fm", False)
    norm = lambda u8: (u8.float() / 255 - MEAN[0]) / STD[0]  # noqa: E731
    x, y = norm(train.images[:1280]), train.labels[:1280]
    resnet = stock_torchvision_resnet18(norm(fit_to_input(train.images[:1280], [1, 32, 32])), y)
    custom = custom_net(x, y)
    evalset = tmp / "evalset"  # the labelled evaluation set: class folders of PNGs, no train split
    for i in range(300):
        # ImageFolder numbers classes by sorted folder name: the prefix keeps the teacher's output order
        c = int(test.labels[i])
        d = evalset / f"{c}_{FMNIST_CLASSES[c].replace('/', '_')}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i, 0].numpy()).save(d / f"{i}.png")
    ws = tmp / "ws"
    ws.mkdir()
    shutil.copytree(ROOT / "stages", ws / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "models/external", ws / "models/external")
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, ws / f)
    torch.save(resnet.state_dict(), ws / "models/external/resnet18_fmnist.pt")
    save_file(custom.state_dict(), str(ws / "models/external/tinybnnet.safetensors"))
    set_params(
        ws,
        data={"name": "imagefolder"},
        prepare_data={"path": str(evalset)},
        train_teacher={
            "source": "file",
            "file": "models/external/resnet18_fmnist.pt",
            "arch": "torchvision:resnet18",
            "num_classes": 10,
            "input_shape": [1, 32, 32],
            "mean": MEAN,
            "std": STD,
        },
        synthesize={"n_images": 40, "batch_size": 20, "iterations": 15, "grid_per_class": 2},
        distill={"epochs": 2, "batch_size": 20},
        evaluate={"jkl_max_images": 200, "latency_repeats": 2},
    )
    sh(ws, "git", "init", "-q", "-b", "main")
    sh(ws, "git", "config", "user.email", "t@t")
    sh(ws, "git", "config", "user.name", "t")
    dvc(ws, "init", "-q")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-q", "-m", "init")
    (ws / "repro.log").write_text(dvc(ws, "repro"))
    return ws


def test_brought_teacher_is_pruned_recovered_and_reported(byo):
    assert "Running stage 'distill'" in (byo / "repro.log").read_text()
    card = json.loads((byo / "models/teacher/card.json").read_text())
    assert card["source"] == "file" and card["arch"] == "torchvision:resnet18" and card["arch_source"] == "torchvision"
    assert card["input_shape"] == [1, 32, 32] and card["val_accuracy"] is None
    assert card["file_sha256"] == __import__("hashlib").sha256((byo / "models/external/resnet18_fmnist.pt").read_bytes()).hexdigest()
    assert card["dataset_source"].startswith("folder:") and len(card["dataset_source_sha256"]) == 64
    assert json.loads((byo / "reports/train_teacher/metrics.json").read_text())["source"] == "file"
    m = json.loads((byo / "reports/metrics.json").read_text())
    # the 300-image evaluation set: 10% held out as the validation part, the other 270 reported; 28x28 -> 32x32
    assert (m["test_images"], m["val_images"]) == (270, 30) and m["teacher"]["accuracy"] > 0.3  # trained briefly; chance 0.1
    assert m["teacher"]["val_accuracy"] is not None and json.loads((byo / "data/synthetic/card.json").read_text())["input_shape"] == [
        1,
        32,
        32,
    ]
    assert abs(m["student"]["sparsity"] - 0.75) < 0.005 and m["student"]["accuracy"] > 0.1
    assert m["data_free"] is True and "j_kl_relative_to_test" in m  # no train split: J_KL relative to the test split
    assert "recovered student" in (byo / "reports/report.md").read_text()
    assert json.loads((byo / "data/real/card.json").read_text())["available"] is False
    # the stock torchvision net ships too: ONNX float (same predictions) and data-free int8; no real images, no int8_real
    assert set(m["export"]) == {"teacher_fp32", "student_fp32", "int8_synthetic"} and m["export"]["int8_synthetic"]["data_free"] is True
    assert m["export"]["student_fp32"]["top1_agreement_with_pytorch"] == 1.0
    assert json.loads((byo / "models/export_real/card.json").read_text())["reason"].startswith("no real training images")
    lineage = sh(byo, sys.executable, "-m", "stages.lineage", "models/student")
    assert "DATA-FREE" in lineage and "train_teacher.source=file" in lineage and "file_sha256" in lineage


def test_custom_module_callable_teacher_comes_out_pruned_recovered_and_reported(byo, tmp_path):
    ws = tmp_path / "custom"
    shutil.copytree(byo, ws, symlinks=True)
    set_params(
        ws,
        train_teacher={
            "file": "models/external/tinybnnet.safetensors",
            "arch": CUSTOM,
            "arch_kwargs": {"width": 8},
            "input_shape": [1, 28, 28],
        },
    )
    log = dvc(ws, "repro")
    assert {"train_teacher", "synthesize", "prune", "distill", "evaluate"} <= ran(log)
    card = json.loads((ws / "models/teacher/card.json").read_text())
    assert card["arch"] == CUSTOM and card["arch_source"] == "custom" and card["arch_kwargs"] == {"width": 8}
    assert card["arch_code"] == "models/external/example_nets.py" and len(card["arch_code_sha256"]) == 64
    student = json.loads((ws / "models/student/card.json").read_text())
    assert student["arch"] == CUSTOM and student["arch_code_sha256"] == card["arch_code_sha256"]
    m = json.loads((ws / "reports/metrics.json").read_text())
    assert m["test_images"] == 270 and abs(m["student"]["sparsity"] - 0.75) < 0.005 and m["data_free"] is True
    rows = (ws / "reports/prune/sparsity.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # per-layer sparsity of the custom net: 3 convs + the classifier
    assert json.loads((ws / "reports/prune/metrics.json").read_text())["min_layer_density"] >= 0.1 - 1e-9  # prune.min_density
    lineage = sh(ws, sys.executable, "-m", "stages.lineage", "models/student")
    assert "DATA-FREE" in lineage and "arch_code_sha256" in lineage
    # the architecture code is part of the lineage: changed code is refused, not silently rebuilt
    code = ws / "models/external/example_nets.py"
    code.write_text(code.read_text() + "\n# edited\n")
    r = subprocess.run([sys.executable, "-m", "stages.evaluate"], cwd=ws, capture_output=True, text=True)
    assert r.returncode != 0 and "arch" in r.stderr and "Traceback" not in r.stderr


def run_teacher_stage(ws):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "stages.train_teacher"], cwd=ws, env=env, capture_output=True, text=True)


def test_wrong_num_classes_fails_clearly_and_keeps_the_teacher(byo):
    before = (byo / "models/teacher/model.safetensors").read_bytes()
    set_params(byo, train_teacher={"num_classes": 100})
    r = run_teacher_stage(byo)
    assert r.returncode != 0
    assert "fc.weight: file (10, 512) vs torchvision:resnet18 (100, 512)" in r.stderr and "Traceback" not in r.stderr
    set_params(byo, train_teacher={"num_classes": 10, "arch": "torchvision:resnet34"})
    r = run_teacher_stage(byo)
    assert r.returncode != 0 and "missing keys" in r.stderr and "layer1.2.conv1.weight" in r.stderr
    assert (byo / "models/teacher/model.safetensors").read_bytes() == before


def test_pickle_that_would_run_code_is_refused_by_the_stage(byo):
    class RunsCode:
        def __reduce__(self):
            import os

            return (os.system, ("touch PWNED_BY_PICKLE",))

    import pickle

    with open(byo / "models/external/evil.pt", "wb") as f:
        pickle.dump({"conv1.weight": RunsCode()}, f)
    set_params(byo, train_teacher={"file": "models/external/evil.pt", "arch": "resnet18"})
    r = run_teacher_stage(byo)
    assert r.returncode != 0 and "weights_only=True" in r.stderr
    assert not (byo / "PWNED_BY_PICKLE").exists()
    set_params(byo, train_teacher={"file": "/tmp/outside.pt"})
    r = run_teacher_stage(byo)
    assert r.returncode != 0 and "must lie under models/external/" in r.stderr
    set_params(byo, train_teacher={"file": "models/external/resnet18_fmnist.pt", "arch": "torchvision:resnet18"})
    assert ran(dvc(byo, "repro")) == {"train_teacher"}  # models/external changed (evil.pt): DVC noticed
    (byo / "models/external/evil.pt").unlink()
    assert ran(dvc(byo, "repro")) <= {"train_teacher"}  # back (maybe from the run cache); nothing after the teacher
    assert "up to date" in dvc(byo, "status")
