import copy

import pytest
import torch

from stages.core.bn import BatchStatsHook, _BatchMoments, _EvalBatchNormWithMoments, batch_mean_var, bn_l2_loss, running_stats


def test_hook_stats_equal_direct_computation(toy_net):
    x = torch.randn(16, 1, 8, 8)
    with BatchStatsHook(toy_net) as hook:
        toy_net.eval()(x)
    h1 = toy_net.conv1(x)
    assert torch.allclose(hook.stats["bn1"][0], h1.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(hook.stats["bn1"][1], h1.var((0, 2, 3), unbiased=False), atol=1e-6)
    h2 = toy_net.conv2(torch.relu(toy_net.bn1(h1)))
    assert torch.allclose(hook.stats["bn2"][1], h2.var((0, 2, 3), unbiased=False), atol=1e-5)
    assert set(hook.stats) == {"bn1", "bn2"}


def test_hook_is_removed(toy_net):
    with BatchStatsHook(toy_net) as hook:
        pass
    hook.stats.clear()
    toy_net(torch.randn(2, 1, 8, 8))
    assert hook.stats == {}
    frozen = toy_net.eval().requires_grad_(False)  # the fused path replaces each BN's forward while active ...
    with BatchStatsHook(frozen) as hook:
        assert all("forward" in m.__dict__ for m in (frozen.bn1, frozen.bn2))
    assert not any("forward" in m.__dict__ for m in (frozen.bn1, frozen.bn2))  # ... and restores it on exit
    frozen(torch.randn(2, 1, 8, 8))
    assert hook.stats == {}


def _hooked_loss_and_grad(net, x, dtype=None):
    x = x.clone().requires_grad_(True)
    with BatchStatsHook(net) as hook, torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        logits = net(x)
    loss = bn_l2_loss(hook.stats, running_stats(net)) + logits.float().pow(2).mean()
    loss.backward()
    return loss.detach(), {k: (mu.detach(), var.detach()) for k, (mu, var) in hook.stats.items()}, x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_eval_bn_path_equals_the_pre_hook_path(trained_toy_net, dtype):
    """A frozen eval-mode teacher takes the fused path; a copy whose BN parameters require grad takes the pre-hook
    path: same loss, statistics and input gradient."""
    frozen = copy.deepcopy(trained_toy_net).requires_grad_(False)
    plain = copy.deepcopy(trained_toy_net).requires_grad_(True)
    x = torch.randn(16, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    l_fused, s_fused, g_fused = _hooked_loss_and_grad(frozen, x, dtype)
    l_plain, s_plain, g_plain = _hooked_loss_and_grad(plain, x, dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype is torch.float32 else dict(rtol=2e-2, atol=2e-3)
    assert torch.allclose(l_fused, l_plain, **tol)
    assert s_fused.keys() == s_plain.keys() and all(torch.allclose(s_fused[k][i], s_plain[k][i], **tol) for k in s_fused for i in (0, 1))
    assert torch.allclose(g_fused, g_plain, rtol=tol["rtol"], atol=tol["atol"] * float(g_plain.abs().max()) * 10)


def test_fused_eval_bn_gradcheck():
    bn = torch.nn.BatchNorm2d(3).double().eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)

    def f(x):
        return _EvalBatchNormWithMoments.apply(x, w, b, bn.running_mean, bn.running_var, bn.eps)

    y, mean, var = f(x)
    assert torch.allclose(y, torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, w, b, False, 0.0, bn.eps))
    assert torch.allclose(var, x.var((0, 2, 3), unbiased=False)) and torch.allclose(mean, x.mean((0, 2, 3)))
    assert torch.autograd.gradcheck(f, (x,))


def test_channels_last_same_stats():
    x = torch.randn(4, 3, 5, 5)
    a = batch_mean_var(x)
    b = batch_mean_var(x.contiguous(memory_format=torch.channels_last))
    assert all(torch.allclose(u, v) for u, v in zip(a, b))


def test_bn_l2_loss_zero_at_target_and_differentiable(trained_toy_net):
    stats = {"l": batch_mean_var(torch.randn(8, 3, 4, 4))}
    assert float(bn_l2_loss(stats, stats)) == 0.0
    x = torch.randn(8, 1, 8, 8, requires_grad=True)
    with BatchStatsHook(trained_toy_net) as hook:
        trained_toy_net(x)
    loss = bn_l2_loss(hook.stats, running_stats(trained_toy_net))
    assert float(loss.detach()) > 0
    loss.backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (7, 4), (5, 2, 9)])
def test_fused_moments_match_the_plain_formula_and_gradcheck(shape):
    x = (torch.randn(shape) * 2 + 1).requires_grad_(True)
    mu, var = batch_mean_var(x)
    flat = x.detach().transpose(0, 1).reshape(shape[1], -1)
    assert torch.allclose(mu, flat.mean(1), atol=1e-5) and torch.allclose(var, flat.var(1, unbiased=False), atol=1e-5)
    assert mu.dtype == var.dtype == torch.float32
    # the closed-form backward against finite differences, in float64
    x64 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_BatchMoments.apply, (x64,))
    w = torch.randn(shape[1])
    (mu * w).sum().backward()  # only the mean used: the variance's gradient is None in backward
    assert torch.allclose(x.grad, (w / (x.numel() // shape[1])).view((1, -1) + (1,) * (len(shape) - 2)).expand(shape))


def test_moments_of_bf16_activations_are_float32_accurate():
    x = (torch.randn(64, 8, 6, 6) * 3 + 2).bfloat16()
    mu, var = batch_mean_var(x)
    flat = x.float().transpose(0, 1).reshape(8, -1)
    assert mu.dtype == torch.float32 and torch.allclose(mu, flat.mean(1), atol=1e-5)
    assert torch.allclose(var, flat.var(1, unbiased=False), rtol=1e-5)


def test_normalized_bn_loss_by_hand_and_scale_free():
    from stages.core.bn import BN_EPS, bn_normalized_loss

    target = {"a": (torch.tensor([0.0, 1.0]), torch.tensor([4.0, 1.0]) - BN_EPS)}  # std 2 and 1 once eps is added
    batch = {"a": (torch.tensor([2.0, 1.0]), torch.tensor([8.0, 1.0]) - BN_EPS)}
    # mean shift / std: (1, 0) -> RMS sqrt(1/2); relative variance error: (1, 0) -> RMS sqrt(1/2)
    assert abs(float(bn_normalized_loss(batch, target)) - 2 * 0.5**0.5) < 1e-5
    torch.manual_seed(0)
    mu_t, var_t = torch.randn(8), torch.rand(8) + 0.5
    mu_b, var_b = mu_t + 0.3 * torch.randn(8), var_t * (1 + 0.2 * torch.rand(8))
    base = float(bn_normalized_loss({"l": (mu_b, var_b)}, {"l": (mu_t, var_t)}))
    # 4x wider (channels repeated), activations 10x larger, the layer repeated 5 times: the same loss; BN-L2 grows
    wide = {f"l{i}": (10 * mu_b.repeat(4), 100 * var_b.repeat(4)) for i in range(5)}
    wide_t = {f"l{i}": (10 * mu_t.repeat(4), 100 * var_t.repeat(4)) for i in range(5)}
    assert abs(float(bn_normalized_loss(wide, wide_t)) - base) < 1e-3 * base
    assert float(bn_l2_loss(wide, wide_t)) > 100 * float(bn_l2_loss({"l": (mu_b, var_b)}, {"l": (mu_t, var_t)}))


def test_bn_l2_loss_by_hand():
    """DeepInversion's BN term: sum over layers of ||mu_b - mu||_2 + ||var_b - var||_2 (norms, not squared norms).
    Layer a: mean off by (3, 4) -> 5; layer b: variance off by 1 in 4 channels -> 2; total 7 (squared: 25 + 4 = 29)."""
    target = {"a": (torch.zeros(2), torch.ones(2)), "b": (torch.zeros(4), torch.ones(4))}
    batch = {"a": (torch.tensor([3.0, 4.0]), torch.ones(2)), "b": (torch.zeros(4), torch.full((4,), 2.0))}
    assert float(bn_l2_loss(batch, target)) == pytest.approx(7.0, abs=1e-6)


def test_first_bn_weight_multiplies_the_first_layer_in_forward_order():
    """DeepInversion's first_bn_multiplier: the term of the first layer the input reaches, times w.
    BN-L2 by hand (layers a: 5, b: 2, as above): w=10 -> 10*5 + 2 = 52; b first -> 10*2 + 5 = 25.
    Normalized, by hand: layer a's term sqrt(1/2) + sqrt(1/2), layer b's 0 + 1 (variance off by 100%):
    mean with w=3 -> (3 * sqrt(2) + 1) / 2."""
    from stages.core.bn import BN_EPS, bn_normalized_loss

    target = {"a": (torch.zeros(2), torch.ones(2)), "b": (torch.zeros(4), torch.ones(4))}
    batch = {"a": (torch.tensor([3.0, 4.0]), torch.ones(2)), "b": (torch.zeros(4), torch.full((4,), 2.0))}
    assert float(bn_l2_loss(batch, target, first_weight=10.0)) == pytest.approx(52.0, abs=1e-5)
    b_first = {"b": batch["b"], "a": batch["a"]}
    assert float(bn_l2_loss(b_first, target, first_weight=10.0)) == pytest.approx(25.0, abs=1e-5)
    target = {"a": (torch.tensor([0.0, 1.0]), torch.tensor([4.0, 1.0]) - BN_EPS), "b": (torch.zeros(3), torch.ones(3) - BN_EPS)}
    batch = {"a": (torch.tensor([2.0, 1.0]), torch.tensor([8.0, 1.0]) - BN_EPS), "b": (torch.zeros(3), 2 * torch.ones(3) - BN_EPS)}
    assert float(bn_normalized_loss(batch, target)) == pytest.approx((2**0.5 + 1) / 2, abs=1e-5)
    assert float(bn_normalized_loss(batch, target, first_weight=3.0)) == pytest.approx((3 * 2**0.5 + 1) / 2, abs=1e-5)
