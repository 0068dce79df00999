"""Hostile and broken teachers, through the stages a user runs: each is refused with one line naming the cause,
exit code 2, nothing executed and nothing written (probes listed in issue 16's closing note)."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from test_stage_errors import run, teacher, workspace

from conftest import ROOT  # noqa: F401  (puts the project on sys.path)
from stages.core.models import build_model

BYO = {
    "train_teacher.source": "file",
    "train_teacher.arch": "resnet20",
    "train_teacher.num_classes": 10,
    "train_teacher.input_shape": [1, 28, 28],
    "train_teacher.mean": [0.286],
    "train_teacher.std": [0.353],
}


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def trained_state():
    torch.manual_seed(0)
    m = build_model("resnet20", 10, 1).train()
    with torch.no_grad():
        m(torch.randn(8, 1, 28, 28))
    return {k: v.contiguous() for k, v in m.state_dict().items()}


def code_running_pickle(path):
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": RunsCode()}, f)


def whole_module(path):
    torch.save(build_model("resnet20", 10, 1), path)


def truncated_safetensors(path):
    save_file(trained_state(), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path):
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())


def with_state(change):
    def write(path):
        state = trained_state()
        change(state)
        save_file(state, str(path))

    return write


def nan_weight(state):
    state["conv1.weight"][0, 0, 0, 0] = float("nan")


def negative_var(state):
    state["layer2.0.bn1.running_var"][3] = -0.5


def zero_var(state):
    state["bn1.running_var"][:2] = 0.0  # dead channels: accepted (see test_dead_channels_with_zero_variance_are_accepted)


def nan_mean(state):
    state["layer3.1.bn2.running_mean"][0] = float("nan")


PROBES = {
    "code-running pickle (.pt)": ("evil.pt", code_running_pickle, "weights_only=True"),
    "whole pickled nn.Module (.pt)": ("model.pt", whole_module, "state_dict"),
    "truncated safetensors": ("cut.safetensors", truncated_safetensors, "cut.safetensors"),
    "random bytes as safetensors": ("noise.safetensors", random_bytes, "noise.safetensors"),
    "NaN weight": ("nan.safetensors", with_state(nan_weight), "conv1.weight holds NaN or inf"),
    "running_var < 0": ("neg.safetensors", with_state(negative_var), "BN layer layer2.0.bn1: running_var has 1 negative value(s)"),
    "NaN running_mean": ("nanmean.safetensors", with_state(nan_mean), "layer3.1.bn2.running_mean holds NaN or inf"),
}


@pytest.mark.parametrize("probe", list(PROBES))
def test_hostile_teacher_file_is_refused_and_nothing_runs(tmp_path, probe):
    name, write, expect = PROBES[probe]
    ws = workspace(tmp_path, **BYO, **{"train_teacher.file": f"models/external/{name}"})
    (ws / "models" / "external").mkdir(parents=True)
    write(ws / "models" / "external" / name)
    r = run(ws, "train_teacher")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert not (ws / "PWNED_BY_PICKLE").exists()
    assert sorted(p.name for p in (ws / "models").iterdir()) == ["external"] and not (ws / "reports").exists()


@pytest.mark.parametrize(
    "change,expect",
    [
        (lambda m: m.layer1[0].bn1.running_var.__setitem__(2, -1.0), "BN layer layer1.0.bn1: running_var has 1 negative value(s)"),
        (lambda m: m.bn1.running_mean.__setitem__(0, float("inf")), "BN layer bn1: running_mean has 1 non-finite value(s) of 16"),
    ],
)
def test_extract_bn_stats_refuses_impossible_statistics(tmp_path, change, expect):
    ws = workspace(tmp_path)
    teacher(ws, change=change)
    r = run(ws, "extract_bn_stats")
    assert r.returncode == 2 and expect in r.stderr, r.stderr
    assert not (ws / "models" / "bn_stats").exists()


def test_non_finite_synthesis_stops_naming_batch_and_step_and_writes_nothing(tmp_path):
    """A teacher whose activations overflow (finite weights x 1e30) makes the loss inf/NaN at the first step."""
    ws = workspace(tmp_path, **{"synthesize.n_images": 20, "synthesize.batch_size": 10, "synthesize.iterations": 3})
    teacher(ws)
    assert run(ws, "extract_bn_stats").returncode == 0
    import json

    from stages.core.artifacts import save_model
    from stages.core.checkpoints import load_model

    m, card = load_model(ws / "models" / "teacher")
    with torch.no_grad():
        m.fc.weight.mul_(1e30)
        m.layer3[2].conv2.weight.mul_(1e30)
    save_model(ws / "models" / "teacher", m, card)
    r = run(ws, "synthesize")
    assert r.returncode == 2, r.stderr
    assert "synthesize: non-finite loss" in r.stderr and "in batch 0, step 0" in r.stderr, r.stderr
    assert not (ws / "data" / "synthetic").exists() and not (ws / "reports" / "synthesize").exists()
    assert json.loads((ws / "models" / "teacher" / "card.json").read_text())["arch"] == "resnet20"


def test_dead_channels_with_zero_variance_are_accepted(tmp_path):
    """running_var exactly 0 is a channel whose input never varies; trained networks have them (the zoo's ShuffleNet-V2
    has two), so they are not refused: the file passes the import checks and extract_bn_stats takes the statistics."""
    from stages.core.external import check_fits

    state = trained_state()
    zero_var(state)
    check_fits(build_model("resnet20", 10, 1), state, tmp_path / "zero.safetensors", "resnet20")  # no error
    ws = workspace(tmp_path)
    teacher(ws, change=lambda m: m.bn1.running_var[:2].zero_())
    r = run(ws, "extract_bn_stats")
    assert r.returncode == 0, r.stderr
