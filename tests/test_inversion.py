from types import SimpleNamespace

import torch

from stages.core.bn import running_stats
from stages.core.inversion import balanced_targets, invert_batch, synthesize_set, tv_l2


def cfg(**kw):
    base = dict(
        n_images=12,
        batch_size=6,
        iterations=60,
        lr=0.1,
        lambda_bn=1.0,
        lambda_ce=1.0,
        lambda_tv=1e-4,
        lambda_l2=0.0,
        max_shift=1,
        flip=True,
    )
    return SimpleNamespace(**(base | kw))


BOUNDS = (torch.full((1, 1, 1, 1), -5.0), torch.full((1, 1, 1, 1), 5.0))


def test_balanced_targets():
    t = balanced_targets(25, 10)
    assert torch.bincount(t).tolist() == [3] * 5 + [2] * 5
    assert torch.bincount(balanced_targets(20, 10)[:10]).tolist() == [1] * 10


def test_tv_zero_for_constant_image():
    assert float(tv_l2(torch.full((2, 1, 5, 5), 3.0))) == 0.0
    assert float(tv_l2(torch.randn(2, 1, 5, 5))) > 0


def test_inversion_loss_falls(trained_toy_net):
    stats = running_stats(trained_toy_net)
    res = invert_batch(
        trained_toy_net,
        torch.tensor([0, 1, 2, 0, 1, 2]),
        stats,
        cfg(),
        BOUNDS,
        (1, 8, 8),
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    assert res.images.shape == (6, 1, 8, 8)
    assert res.bn_loss_final < res.bn_loss_initial / 3
    assert res.curve[-1]["total"] < res.curve[0]["total"]
    assert res.images.min() >= -5 and res.images.max() <= 5


def test_synthesis_deterministic_per_seed(trained_toy_net):
    stats = running_stats(trained_toy_net)
    run = lambda seed: synthesize_set(trained_toy_net, stats, 3, (1, 8, 8), BOUNDS, cfg(iterations=5), seed, torch.device("cpu"))  # noqa: E731
    a, ta, _ = run(1)
    b, tb, _ = run(1)
    c, _, _ = run(2)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, c)
    assert a.shape == (12, 1, 8, 8) and torch.bincount(ta).tolist() == [4, 4, 4]
    # The teacher's BN running statistics are untouched by synthesis.
    assert all(torch.equal(stats[k][0], v[0]) for k, v in running_stats(trained_toy_net).items())
