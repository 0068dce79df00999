import pytest
import torch

from stages.core.bn import BatchStatsHook, _BatchMoments, batch_mean_var, bn_l2_loss, running_stats


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
