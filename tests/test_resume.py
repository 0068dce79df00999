"""An interrupted teacher training resumes from its last epoch and ends with the uninterrupted run's exact weights."""

import pytest
import torch

from conftest import ToyBNNet
from stages.core import training
from stages.core.params import section_with

CFG = section_with("train_teacher", epochs=4, batch_size=16, lr=0.05, max_shift=1)


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 3, (96,), generator=g)


def run(checkpoint, key="k"):
    torch.manual_seed(0)
    model = ToyBNNet()
    x, y = data()
    history = training.train_classifier(model, x, y, CFG, torch.device("cpu"), 7, checkpoint=checkpoint, key=key)
    return model.state_dict(), history


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, k):
    """Let the checkpoint of epoch k be written, then stop the run (as a kill between epochs would)."""
    real = training.save_checkpoint

    def save_then_stop(path, state):
        real(path, state)
        if state["epoch"] == k:
            raise Interrupted

    monkeypatch.setattr(training, "save_checkpoint", save_then_stop)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("k", [1, 3])
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch, k):
    full, full_history = run(None)
    ckpt = tmp_path / "resume.pt"
    with monkeypatch.context() as m:
        interrupt_after(m, k)
        with pytest.raises(Interrupted):
            run(ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == k
    resumed, history = run(ckpt)
    assert history == full_history  # the resumed run keeps the saved epochs' rows and adds the rest
    assert all(torch.equal(resumed[n], full[n]) for n in full), "resumed weights differ from the uninterrupted run"


@pytest.mark.usefixtures("one_thread")
def test_a_checkpoint_of_other_params_is_not_resumed(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "resume.pt"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(Interrupted):
            run(ckpt, key="other params")
    fresh, _ = run(ckpt, key="these params")
    assert "resume:" not in capsys.readouterr().out
    full, _ = run(None)
    assert all(torch.equal(fresh[n], full[n]) for n in full)


def test_a_torn_checkpoint_is_ignored(tmp_path, capsys):
    ckpt = tmp_path / "resume.pt"
    ckpt.write_bytes(b"not a checkpoint")
    assert training.load_checkpoint(ckpt, "k") is None
    assert "ignoring unreadable checkpoint" in capsys.readouterr().out
