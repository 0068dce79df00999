"""Bring-your-own teacher: reading a state_dict without executing anything, and checking it fits the arch."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from stages.core.external import check_fits, read_state_dict
from stages.core.models import build_model
from stages.core.runtime import StageError


def resnet20_state():
    torch.manual_seed(0)
    return build_model("resnet20", 10, 1).state_dict()


def test_safetensors_and_pt_round_trip_with_wrappers_and_prefix(tmp_path):
    state = resnet20_state()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "t.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "t.pt")
    for f in ("t.safetensors", "t.pt"):
        got = read_state_dict(tmp_path / f)
        assert got.keys() == state.keys()
        assert all(torch.equal(got[k], state[k]) for k in state)
        check_fits(build_model("resnet20", 10, 1), got, tmp_path / f, "resnet20")


class RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as f:
        pickle.dump({"conv1.weight": RunsCode()}, f)
    with pytest.raises(StageError, match="weights_only=True"):
        read_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_whole_pickled_model_is_refused(tmp_path):
    torch.save(build_model("resnet20", 10, 1), tmp_path / "model.pt")
    with pytest.raises(StageError, match="state_dict"):
        read_state_dict(tmp_path / "model.pt")


def test_missing_unexpected_and_wrong_num_classes_are_listed(tmp_path):
    state = resnet20_state()
    state.pop("layer3.2.bn2.running_var")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(StageError) as e:
        check_fits(build_model("resnet20", 10, 1), state, tmp_path / "t.pt", "resnet20")
    msg = str(e.value)
    assert "layer3.2.bn2.running_var" in msg and "extra.weight" in msg and "missing keys (1)" in msg
    with pytest.raises(StageError, match=r"fc.weight: file \(10, 64\) vs resnet20 \(100, 64\)"):
        check_fits(build_model("resnet20", 100, 1), resnet20_state(), tmp_path / "t.pt", "resnet20")


def test_unknown_format_and_non_state_dict(tmp_path):
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(StageError, match="unknown checkpoint format"):
        read_state_dict(tmp_path / "w.h5")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(StageError, match="expected a state_dict"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(StageError, match="not found"):
        read_state_dict(tmp_path / "absent.safetensors")
