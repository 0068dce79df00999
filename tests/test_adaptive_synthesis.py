"""Student-aware synthesis during KD (distill.adaptive_rounds; Adaptive DeepInversion's competition term)."""

import copy
import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from stages.core.bn import running_stats
from stages.core.inversion import competition_loss, student_aware_images
from stages.core.kd import PoolBatches, distill, round_epochs
from stages.core.params import section_with
from stages.core.pruning import prune_l1_unstructured
from stages.core.runtime import StageError
from stages.core.training import minibatches

BOUNDS = (torch.full((1, 1, 1, 1), -5.0), torch.full((1, 1, 1, 1), 5.0))
CPU = torch.device("cpu")


def synth_cfg(**kw):
    base = dict(batch_size=6, iterations=40, lr=0.1, lambda_tv=1e-4, max_shift=1, flip=True)
    return section_with("synthesize", **(base | kw))


def kd_cfg(**kw):
    base = dict(epochs=6, batch_size=8, lr=0.05, schedule="cosine", max_shift=0, flip=False, adaptive_images=6, adaptive_weight=1.0)
    return section_with("distill", **(base | kw))


def js_reference(t_logits, s_logits, temperature):
    """JS(p || q) in nats from torch.distributions: 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2."""
    p, q = (torch.softmax(z / temperature, 1) for z in (t_logits, s_logits))
    m = Categorical(probs=(p + q) / 2)
    return 0.5 * kl_divergence(Categorical(probs=p), m) + 0.5 * kl_divergence(Categorical(probs=q), m)


def test_competition_loss_is_one_minus_normalized_jensen_shannon():
    torch.manual_seed(0)
    t, s = torch.randn(7, 5) * 3, torch.randn(7, 5) * 3
    for temp in (1.0, 3.0):
        expected = 1 - js_reference(t, s, temp).mean() / math.log(2)
        assert float(competition_loss(t, s, temp)) == pytest.approx(float(expected), abs=1e-6)
    assert float(competition_loss(t, t.clone(), 3.0)) == pytest.approx(1.0, abs=1e-6)  # agreement: JS 0
    one_hot = torch.tensor([[60.0, 0.0], [0.0, 60.0]])
    assert float(competition_loss(one_hot, one_hot.flip(1), 1.0)) == pytest.approx(0.0, abs=1e-6)  # disjoint: JS ln 2


def test_round_epochs_are_evenly_spaced():
    assert round_epochs(160, 3) == [41, 81, 121]
    assert round_epochs(160, 1) == [81]
    assert round_epochs(6, 2) == [3, 5]
    assert round_epochs(10, 0) == []


def test_pool_batches_without_growth_are_minibatches_draw_for_draw():
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    pool = PoolBatches(20, 8, a)
    mine = [pool.next() for _ in range(3 * 3)]  # three passes of ceil(20 / 8) = 3 batches
    ref = [idx for _ in range(3) for idx in minibatches(20, 8, b)]
    assert all(torch.equal(x, y) for x, y in zip(mine, ref))


def test_pool_batches_cover_the_grown_pool():
    pool = PoolBatches(4, 4, torch.Generator().manual_seed(0))
    assert sorted(pool.next().tolist()) == [0, 1, 2, 3]
    pool.grow(12)
    seen = torch.cat([pool.next() for _ in range(3)])
    assert sorted(seen.tolist()) == list(range(12))


def make_images(teacher, student, weight, seed=0, n=6, temperature=3.0):
    stats = running_stats(teacher)
    return student_aware_images(teacher, student, stats, 3, (1, 8, 8), BOUNDS, synth_cfg(), n, 0, weight, temperature, seed, CPU)


def test_competition_makes_images_the_student_disagrees_on(trained_toy_net):
    teacher = trained_toy_net
    with torch.no_grad():  # a confident teacher, and a student that disagrees on part of the input space (perturbed head)
        teacher.fc.weight.mul_(10)
        student = copy.deepcopy(teacher)
        student.fc.weight.add_(10 * torch.randn(student.fc.weight.shape, generator=torch.Generator().manual_seed(0)))
    plain, _, plain_res = make_images(teacher, student, 0.0, temperature=1.0)
    hard, _, hard_res = make_images(teacher, student, 1000.0, temperature=1.0)
    assert "compete" in hard_res[0].curve[-1] and hard_res[0].curve[-1]["compete"] < plain_res[0].curve[-1]["compete"] - 0.03
    with torch.no_grad():
        js = [float(js_reference(teacher(x), student(x), 1.0).mean()) for x in (plain, hard)]
    assert js[1] > 1.3 * js[0], js  # measured: 0.058 -> 0.092 nats


def test_student_aware_images_are_deterministic_and_leave_the_student_as_it_was(trained_toy_net):
    student = copy.deepcopy(trained_toy_net).train()
    frozen = next(student.parameters())
    frozen.requires_grad_(False)
    a, _, _ = make_images(trained_toy_net, student, 1.0, seed=5)
    b, _, _ = make_images(trained_toy_net, student, 1.0, seed=5)
    c, _, _ = make_images(trained_toy_net, student, 1.0, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert student.training and not frozen.requires_grad and all(p.requires_grad for p in list(student.parameters())[1:])


def test_student_aware_images_refuse_a_gaussian_set(trained_toy_net):
    with pytest.raises(StageError, match="method gaussian"):
        student_aware_images(
            trained_toy_net,
            trained_toy_net,
            running_stats(trained_toy_net),
            3,
            (1, 8, 8),
            BOUNDS,
            synth_cfg(method="gaussian"),
            6,
            0,
            1,
            3,
            0,
            CPU,
        )


def test_distill_grows_the_pool_at_the_rounds_with_the_current_student(trained_toy_net):
    x = torch.randn(12, 1, 8, 8) * 2 + 1.5
    calls = []

    def grow(r, student):
        calls.append((r, copy.deepcopy(student.state_dict())))
        return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(r)) * 2 + 1.5

    student, again = copy.deepcopy(trained_toy_net), copy.deepcopy(trained_toy_net)  # (distill freezes the teacher's weights)
    for s in (student, again):
        prune_l1_unstructured(s, 0.5, "global")
    hist = distill(student, trained_toy_net, x, kd_cfg(adaptive_rounds=2), CPU, 0, grow=grow)
    assert [r for r, _ in calls] == [0, 1]
    assert [h["pool"] for h in hist] == [12, 12, 18, 18, 24, 24]  # rounds before epochs 3 and 5 (round_epochs(6, 2))
    # the second round saw the student after four epochs of KD, not the starting one
    assert not torch.equal(calls[0][1]["conv1.weight_orig"], calls[1][1]["conv1.weight_orig"])
    distill(again, trained_toy_net, x, kd_cfg(adaptive_rounds=2), CPU, 0, grow=grow)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in student.state_dict().items())


def test_distill_steps_are_those_of_the_final_pool(trained_toy_net):
    """Each epoch runs ceil(final pool / batch) steps, so the cosine schedule ends at 0 on the last step, as for a
    fixed set of the final size."""
    x = torch.randn(8, 1, 8, 8)

    def grow(r, student):
        return torch.randn(16, 1, 8, 8)

    students = [copy.deepcopy(trained_toy_net) for _ in range(2)]  # (distill freezes the teacher's weights)
    hist = distill(students[0], trained_toy_net, x, kd_cfg(adaptive_rounds=1, adaptive_images=16), CPU, 0, grow=grow)
    assert hist[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and len(hist) == 6
    with pytest.raises(ValueError, match="needs grow"):
        distill(students[1], trained_toy_net, x, kd_cfg(adaptive_rounds=1), CPU, 0)
