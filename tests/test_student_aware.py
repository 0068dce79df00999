"""Student-aware synthesis during KD (Adaptive DeepInversion's competition term): JS against an independent
reference, the round schedule worked by hand, the images' divergence rising, determinism, the growing set."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from stages.core.bn import running_stats, with_input_target
from stages.core.inversion import invert_batch, js_divergence, student_aware_set
from stages.core.kd import distill, round_epochs
from stages.core.params import section_with
from stages.core.pruning import make_permanent, prune_l1_unstructured
from stages.core.runtime import StageError

BOUNDS = (torch.full((1, 1, 1, 1), -5.0), torch.full((1, 1, 1, 1), 5.0))
CPU = torch.device("cpu")


def syn_cfg(**kw):
    base = dict(n_images=12, batch_size=6, iterations=40, lr=0.1, lambda_tv=1e-4, max_shift=1, flip=True)
    return section_with("synthesize", **(base | kw))


def kd_cfg(**kw):
    base = dict(
        epochs=6,
        batch_size=8,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        schedule="cosine",
        temperature=3.0,
        freeze_bn=False,
        recalibrate_bn=False,
        max_shift=0,
        flip=False,
        iq_beta=0.0,
        iq_layers="",
        mixup_alpha=0.0,
        student_aware_rounds=0,
        student_aware_images=0,
        student_aware_js=0.0,
    )
    return SimpleNamespace(**(base | kw))


def test_js_divergence_matches_torch_distributions():
    a, b = torch.randn(7, 5), torch.randn(7, 5) * 3
    p, q = a.softmax(1), b.softmax(1)
    m = torch.distributions.Categorical(probs=(p + q) / 2)
    kl = torch.distributions.kl_divergence
    ref = (0.5 * kl(torch.distributions.Categorical(probs=p), m) + 0.5 * kl(torch.distributions.Categorical(probs=q), m)).mean()
    assert js_divergence(a, b).item() == pytest.approx(ref.item(), rel=1e-5)
    assert js_divergence(a, a).item() == pytest.approx(0.0, abs=1e-6)
    # disjoint one-hot outputs reach the bound ln 2
    big = torch.tensor([[50.0, -50.0]])
    assert js_divergence(big, -big).item() == pytest.approx(math.log(2), rel=1e-4)


def test_round_epochs_by_hand():
    assert round_epochs(160, 1) == [81]
    assert round_epochs(9, 2) == [4, 7]
    assert round_epochs(6, 3) == [2, 4, 5]


def pruned_student(teacher):
    student = copy.deepcopy(teacher).requires_grad_(True)
    prune_l1_unstructured(student, 0.7, "global")
    make_permanent(student)
    return student


def perturbed_student(teacher):
    """The teacher with noise on every weight: a student that disagrees with it (JS ~0.25 on noise)."""
    student = copy.deepcopy(teacher)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return student.eval().requires_grad_(False)


def test_competition_term_raises_teacher_student_divergence(trained_toy_net):
    student = perturbed_student(trained_toy_net)
    stats = with_input_target(running_stats(trained_toy_net), 1)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    # the competition term alone (the other weights 0): with weight 0 the noise stays as it is
    only_js = syn_cfg(iterations=100, lambda_bn=0.0, lambda_ce=0.0, lambda_tv=0.0, max_shift=0, flip=False)

    def js_of(weight):
        res = invert_batch(
            trained_toy_net, targets, stats, only_js, BOUNDS, (1, 8, 8), torch.Generator().manual_seed(0), CPU,
            student=student, lambda_js=weight,
        )  # fmt: skip
        with torch.no_grad():
            return js_divergence(trained_toy_net(res.images), student(res.images)).item(), res

    plain, res0 = js_of(0.0)
    aware, res1 = js_of(1.0)
    assert "js" not in res0.curve[0] and res1.curve[0]["js"] == pytest.approx(plain, rel=1e-2)  # same start (bf16 where native)
    assert aware > plain + 0.05
    assert res1.curve[-1]["total"] == pytest.approx(-res1.curve[-1]["js"], rel=1e-6)


def test_student_aware_set_deterministic_and_restores_student(trained_toy_net):
    student = pruned_student(trained_toy_net).train()
    before = [p.clone() for p in student.parameters()]
    run = lambda k: student_aware_set(  # noqa: E731
        trained_toy_net, student, running_stats(trained_toy_net), 3, (1, 8, 8), BOUNDS, syn_cfg(iterations=5), 9, 0, k, CPU, 1.0
    )
    a, ta = run(0)
    b, _ = run(0)
    c, _ = run(1)
    assert a.shape == (9, 1, 8, 8) and torch.bincount(ta).tolist() == [3, 3, 3]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert student.training and all(p.requires_grad and p.grad is None for p in student.parameters())
    assert all(torch.equal(p, q) for p, q in zip(before, student.parameters()))


def test_student_aware_set_refuses_untargeted_method(trained_toy_net):
    with pytest.raises(StageError, match="bns"):
        student_aware_set(
            trained_toy_net, trained_toy_net, running_stats(trained_toy_net), 3, (1, 8, 8), BOUNDS, syn_cfg(method="bns"),
            6, 0, 0, CPU, 1.0,
        )  # fmt: skip


def test_distill_grows_the_set_on_schedule(trained_toy_net):
    student = pruned_student(trained_toy_net)
    calls = []

    def grow(current, k):
        calls.append(k)
        return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(k))

    hist = distill(
        student, trained_toy_net, torch.randn(8, 1, 8, 8), kd_cfg(student_aware_rounds=2, student_aware_images=4), CPU, 0, grow=grow
    )
    assert calls == [0, 1]
    assert [h["transfer_images"] for h in hist] == [8, 8, 12, 12, 16, 16]  # rounds before epochs 3 and 5
    # the cosine schedule spans the grown set's steps (1+1+2+2+2+2 = 10) and ends at lr 0
    assert hist[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert hist[0]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 1 / 10)), rel=1e-6)


def test_distill_rounds_need_a_synthesizer(trained_toy_net):
    with pytest.raises(StageError, match="student_aware_rounds"):
        distill(copy.deepcopy(trained_toy_net), trained_toy_net, torch.randn(8, 1, 8, 8), kd_cfg(student_aware_rounds=1), CPU, 0)
