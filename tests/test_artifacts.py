import pickle

import pytest
import torch

from stages.core.artifacts import atomic_dir, load_bn_stats, load_tensors, save_bn_stats, save_model, save_tensors
from stages.core.checkpoints import load_model
from stages.core.models import build_model
from stages.core.runtime import StageError

CARD = {"arch": "resnet20", "num_classes": 10, "in_channels": 1}


def test_atomic_dir_replaces_whole_or_nothing(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("stage failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp left behind
    assert [p.name for p in out.iterdir()] == ["a.txt"]  # old output intact
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("2")
    assert [p.name for p in out.iterdir()] == ["c.txt"]  # rewritten whole


def test_model_round_trip_is_exact(tmp_path):
    m = build_model("resnet20", 10, 1).to(memory_format=torch.channels_last)
    save_model(tmp_path, m, CARD)
    m2, card = load_model(tmp_path)
    assert card["arch"] == "resnet20" and len(card["weights_sha256"]) == 64
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_load_model_reports_mismatched_keys(tmp_path):
    save_model(tmp_path, build_model("resnet20", 10, 1), CARD)
    state = load_tensors(tmp_path / "model.safetensors")
    del state["fc.weight"]
    state["extra.weight"] = torch.zeros(1)
    save_tensors(tmp_path / "model.safetensors", state)
    with pytest.raises(StageError, match=r"missing keys \['fc.weight'\].*unexpected keys \['extra.weight'\]"):
        load_model(tmp_path)


def test_pickle_is_refused_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(StageError, match="not a readable safetensors"):
        load_tensors(tmp_path / "model.safetensors")
    assert not (tmp_path / "pwned").exists()


def test_missing_artifact_says_what_to_run(tmp_path):
    with pytest.raises(StageError, match="dvc repro"):
        load_model(tmp_path / "nothing")


def test_bn_stats_round_trip_and_mismatch(tmp_path):
    stats = {"bn1": (torch.zeros(4), torch.ones(4)), "bn2": (torch.ones(6), torch.ones(6))}
    save_bn_stats(tmp_path / "s.safetensors", stats, [0.5], [0.2])
    back = load_bn_stats(tmp_path / "s.safetensors", {"bn1": 4, "bn2": 6})
    assert torch.equal(back["bn2"][0], torch.ones(6))
    with pytest.raises(StageError, match="only in teacher"):
        load_bn_stats(tmp_path / "s.safetensors", {"bn1": 4, "bn2": 6, "bn3": 2})
    with pytest.raises(StageError, match="channels"):
        load_bn_stats(tmp_path / "s.safetensors", {"bn1": 4, "bn2": 7})
