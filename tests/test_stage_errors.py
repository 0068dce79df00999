"""Stage CLIs: bad params or inputs -> one clear error line, exit code 2, nothing written."""

import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from stages.core.artifacts import save_model
from stages.core.models import build_model


def workspace(tmp_path, **overrides):
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        section, name = key.split(".")
        params[section][name] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def run(ws, stage):
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=ws, capture_output=True, text=True, timeout=120)


def teacher(ws, untrained=False, change=None):
    m = build_model("resnet20", 10, 1)
    card = {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "classes": list("abcdefghij"), "input_shape": [1, 28, 28]}
    card["normalization"] = {"mean": [0.286], "std": [0.353]}
    if not untrained:
        m.train()
        m(__import__("torch").randn(8, 1, 28, 28))
    if change is not None:
        with __import__("torch").no_grad():
            change(m)
    (ws / "models" / "teacher").mkdir(parents=True)
    save_model(ws / "models" / "teacher", m, card)


@pytest.mark.parametrize(
    "stage,key,value,expect",
    [
        ("prune", "prune.sparsity", 1.5, "prune.sparsity = 1.5 is out of range; expected a number in [0.0, 1.0)"),
        ("synthesize", "synthesize.iterations", -1, "synthesize.iterations = -1 is out of range"),
        ("synthesize", "synthesize.n_images", "many", "synthesize.n_images = 'many' has the wrong type"),
        ("prune", "prune.sparsty", 0.5, "unknown key prune.sparsty (did you mean prune.sparsity?)"),
        ("distill", "distill.freeze_bn", "yes", "distill.freeze_bn = 'yes' has the wrong type; expected true/false"),
    ],
)
def test_bad_params_fail_cleanly(tmp_path, stage, key, value, expect):
    ws = workspace(tmp_path, **{key: value})
    teacher(ws)
    r = run(ws, stage)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: params.yaml: {expect}" + r.stderr.split(expect, 1)[1].strip()]
    assert sorted(p.name for p in (ws / "models").iterdir()) == ["teacher"]
    assert not (ws / "reports").exists() and not (ws / "data").exists()


def test_missing_dataset_says_how_to_get_it(tmp_path):
    ws = workspace(tmp_path, **{"prepare_data.source": "debian", "prepare_data.debian_dir": str(tmp_path / "none")})
    r = run(ws, "prepare_data")
    assert r.returncode == 2
    assert "apt-get install -y dataset-fashion-mnist" in r.stderr
    assert not (ws / "data" / "raw").exists()
    r = run(ws, "train_teacher")
    assert r.returncode == 2 and "dataset-fashion-mnist" in r.stderr


def test_untrained_teacher_rejected_by_extract_bn_stats(tmp_path):
    ws = workspace(tmp_path)
    teacher(ws, untrained=True)
    r = run(ws, "extract_bn_stats")
    assert r.returncode == 2 and "default statistics" in r.stderr
    assert not (ws / "models" / "bn_stats").exists()


def test_missing_teacher_names_the_file(tmp_path):
    ws = workspace(tmp_path)
    r = run(ws, "prune")
    assert r.returncode == 2 and "models/teacher/card.json not found" in r.stderr
