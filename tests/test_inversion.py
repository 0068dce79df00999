import pytest
import torch

from stages.core.bn import running_stats, with_input_target
from stages.core.inversion import METHOD_TERMS, METHODS, balanced_targets, inception_loss, invert_batch, synthesize_set, tv_l2
from stages.core.params import Synthesize, section_with


def cfg(**kw):
    base = dict(n_images=12, batch_size=6, iterations=60, lr=0.1, lambda_tv=1e-4, max_shift=1, flip=True)
    return section_with("synthesize", **(base | kw))


BOUNDS = (torch.full((1, 1, 1, 1), -5.0), torch.full((1, 1, 1, 1), 5.0))


def test_balanced_targets():
    t = balanced_targets(25, 10)
    assert torch.bincount(t).tolist() == [3] * 5 + [2] * 5
    assert torch.bincount(balanced_targets(20, 10)[:10]).tolist() == [1] * 10


def test_tv_zero_for_constant_image():
    assert float(tv_l2(torch.full((2, 1, 5, 5), 3.0))) == 0.0
    assert float(tv_l2(torch.randn(2, 1, 5, 5))) > 0


def test_params_offer_exactly_the_implemented_methods():
    assert Synthesize.model_fields["method"].annotation.__args__ == METHODS


def test_inception_loss_falls_as_target_logit_rises():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    t = torch.tensor([1, 0])
    assert float(inception_loss(logits * 3, t, 1.0)) < float(inception_loss(logits, t, 1.0))
    assert torch.isfinite(inception_loss(torch.full((1, 2), -1e4), torch.tensor([0]), 1.0))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "gaussian"])
def test_each_method_lowers_its_own_loss(trained_toy_net, method):
    stats = with_input_target(running_stats(trained_toy_net), 1)
    res = invert_batch(
        trained_toy_net,
        torch.tensor([0, 1, 2, 0, 1, 2]),
        stats,
        cfg(method=method, iterations=80, duplicates=2, crop_min_area=0.6, cutout=0.2),
        BOUNDS,
        (1, 8, 8),
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    first, last = res.curve[0], res.curve[-1]
    assert set(METHOD_TERMS[method]) <= set(last)
    assert last["total"] < 0.7 * first["total"], (method, first, last)
    if "bns_kl" in METHOD_TERMS[method]:
        assert res.bns_kl_final < res.bns_kl_initial / 3


def test_gaussian_method_is_standard_normal_without_optimization(trained_toy_net):
    stats = with_input_target(running_stats(trained_toy_net), 1)
    x, t, res = synthesize_set(
        trained_toy_net,
        running_stats(trained_toy_net),
        3,
        (1, 8, 8),
        BOUNDS,
        cfg(method="gaussian", n_images=600, batch_size=300),
        0,
        torch.device("cpu"),
    )
    assert x.shape == (600, 1, 8, 8) and (t == -1).all() and res[0].curve == []
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02
    assert set(stats) == {"input", "bn1", "bn2"}


def test_inversion_loss_falls(trained_toy_net):
    stats = with_input_target(running_stats(trained_toy_net), 1)
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

    def run(seed):
        return synthesize_set(trained_toy_net, stats, 3, (1, 8, 8), BOUNDS, cfg(iterations=5), seed, torch.device("cpu"))

    a, ta, _ = run(1)
    b, tb, _ = run(1)
    c, _, _ = run(2)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, c)
    assert a.shape == (12, 1, 8, 8) and torch.bincount(ta).tolist() == [4, 4, 4]
    # The teacher's BN running statistics are untouched by synthesis.
    assert all(torch.equal(stats[k][0], v[0]) for k, v in running_stats(trained_toy_net).items())


@pytest.mark.parametrize("method", ["bns", "bns_inception"])
def test_bns_methods_deterministic_with_in_batch_augmentation(trained_toy_net, method):
    stats = running_stats(trained_toy_net)
    kw = dict(method=method, iterations=4, duplicates=3, crop_min_area=0.5, cutout=0.25)
    a, ta, _ = synthesize_set(trained_toy_net, stats, 3, (1, 8, 8), BOUNDS, cfg(**kw), 5, torch.device("cpu"))
    b, tb, _ = synthesize_set(trained_toy_net, stats, 3, (1, 8, 8), BOUNDS, cfg(**kw), 5, torch.device("cpu"))
    assert torch.equal(a, b) and torch.equal(ta, tb) and a.shape == (12, 1, 8, 8)


@pytest.mark.parametrize("bn_loss", ["normalized", "l2"])
def test_first_bn_weight_enters_the_objective_not_the_logged_terms(trained_toy_net, bn_loss):
    """With first_bn_weight w the objective's BN term is the loss with the first layer (forward order) times w;
    the logged bn_l2 / bn_norm stay the unweighted diagnostics, and w = 1 is the plain loss."""
    from stages.core.bn import BatchStatsHook, bn_l2_loss, bn_normalized_loss
    from stages.core.inversion import method_losses

    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    target = with_input_target(running_stats(trained_toy_net), 1)
    with BatchStatsHook(trained_toy_net) as hook:
        logits = trained_toy_net(x)
    stats = hook.stats
    fn = bn_normalized_loss if bn_loss == "normalized" else bn_l2_loss
    per_layer = [float(fn({k: v}, target)) for k, v in stats.items()]
    plain = method_losses("deepinversion", cfg(bn_loss=bn_loss, first_bn_weight=1.0), x, x, logits, stats, targets, target)
    heavy = method_losses("deepinversion", cfg(bn_loss=bn_loss, first_bn_weight=10.0), x, x, logits, stats, targets, target)
    agg = (lambda v: sum(v) / len(v)) if bn_loss == "normalized" else sum
    assert float(plain["bn"]) == pytest.approx(agg(per_layer), rel=1e-5)
    assert float(heavy["bn"]) == pytest.approx(agg([10 * per_layer[0], *per_layer[1:]]), rel=1e-5)
    for name in ("bn_l2", "bn_norm"):
        assert float(heavy[name]) == pytest.approx(float(plain[name]), rel=1e-6)
    lam = cfg().lambda_bn
    assert float(heavy["total"] - plain["total"]) == pytest.approx(lam * (float(heavy["bn"]) - float(plain["bn"])), rel=1e-4)
