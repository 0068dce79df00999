"""BN-Stats (BNS) KL divergence and the J_KL data-similarity measure."""

import pytest
import torch

from stages.core.bn import INPUT, batch_mean_var, bns_kl, dataset_stats, gaussian_kl, j_kl, running_stats, with_input_target
from stages.evaluate import evenly_spaced


def test_gaussian_kl_matches_torch_distributions():
    mu_p, var_p, mu_q, var_q = torch.randn(5), torch.rand(5) + 0.1, torch.randn(5), torch.rand(5) + 0.1
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu_p, var_p.sqrt()), torch.distributions.Normal(mu_q, var_q.sqrt()))
    assert torch.allclose(gaussian_kl(mu_p, var_p, mu_q, var_q), ref, atol=1e-6)


def test_bns_kl_zero_at_running_stats_positive_otherwise():
    target = {"a": (torch.randn(4), torch.rand(4) + 0.5), "b": (torch.randn(8), torch.rand(8) + 0.5)}
    assert abs(float(bns_kl(target, target))) < 1e-6
    shifted = {k: (mu + 0.3, var) for k, (mu, var) in target.items()}
    wider = {k: (mu, var * 2) for k, (mu, var) in target.items()}
    assert float(bns_kl(shifted, target)) > 1e-3 and float(bns_kl(wider, target)) > 1e-3


def test_bns_kl_handles_a_constant_batch():
    """A zero-variance batch channel stays finite thanks to the eps on the batch variance."""
    target = {"a": (torch.zeros(3), torch.ones(3))}
    loss = bns_kl({"a": (torch.zeros(3), torch.zeros(3))}, target)
    assert torch.isfinite(loss) and loss > 0


def test_input_counts_as_a_layer():
    t = with_input_target({"a": (torch.zeros(2), torch.ones(2))}, 3)
    assert torch.equal(t[INPUT][0], torch.zeros(3)) and torch.equal(t[INPUT][1], torch.ones(3))


def test_dataset_stats_independent_of_batch_size(trained_toy_net):
    x = torch.randn(40, 1, 8, 8)
    a, b = dataset_stats(trained_toy_net, x, 7), dataset_stats(trained_toy_net, x, 40)
    assert set(a) == {INPUT, "bn1", "bn2"}
    for k in a:
        assert torch.allclose(a[k][0], b[k][0], atol=1e-5) and torch.allclose(a[k][1], b[k][1], atol=1e-5)
    mu, var = batch_mean_var(x)
    assert torch.allclose(a[INPUT][0], mu, atol=1e-6) and torch.allclose(a[INPUT][1], var, atol=1e-5)


def test_j_kl_training_data_below_noise():
    """A net trained (BN in train mode) on one distribution scores it far below noise and shifted data."""
    from conftest import ToyBNNet

    torch.manual_seed(0)
    net = ToyBNNet()
    gen = torch.Generator().manual_seed(1)
    proto = torch.randn(3, 1, 8, 8, generator=gen)  # three class prototypes

    def data(n):
        y = torch.randint(0, 3, (n,), generator=gen)
        return proto[y] + 0.3 * torch.randn(n, 1, 8, 8, generator=gen), y

    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _ in range(150):
        x, y = data(64)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    train, _ = data(2000)
    held_out, _ = data(2000)
    j_train, j_test = j_kl(net, train, 500), j_kl(net, held_out, 500)
    j_noise = j_kl(net, torch.randn(2000, 1, 8, 8) * 2 + 1, 500)
    j_uniform = j_kl(net, torch.rand(2000, 1, 8, 8) * 4 - 2, 500)
    assert j_test < 2 * j_train
    assert j_noise > 5 * j_train and j_uniform > 5 * j_train
    # Computed from the model's own running statistics.
    assert set(running_stats(net)) == {"bn1", "bn2"}


def test_jkl_subset_of_a_class_sorted_split_keeps_every_class():
    labels = torch.arange(10).repeat_interleave(600)  # an ImageFolder split: class 0 first, then class 1, ...
    idx = evenly_spaced(len(labels), 1000)
    assert len(idx) == 1000 and len(set(idx.tolist())) == 1000
    assert torch.bincount(labels[idx], minlength=10).tolist() == [100] * 10  # the first 1000 would be classes 0 and 1
    assert torch.equal(evenly_spaced(50, 1000), torch.arange(50)) and torch.equal(evenly_spaced(50, 0), torch.arange(50))


def test_bns_kl_direction_against_torch_distributions():
    """bns_kl = mean over layers of the channel mean of KL(N(stored mu, var) || N(batch mu, batch var + 1e-8)) - the
    direction of "The Knowledge Within" - computed with torch.distributions; the reversed KL differs on this case."""
    Normal, kl = torch.distributions.Normal, torch.distributions.kl_divergence
    stored = {"a": (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0])), "b": (torch.tensor([2.0]), torch.tensor([0.5]))}
    batch = {"a": (torch.tensor([0.5, 0.0]), torch.tensor([2.0, 1.0])), "b": (torch.tensor([1.0]), torch.tensor([3.0]))}
    per_layer = [kl(Normal(stored[n][0], stored[n][1].sqrt()), Normal(batch[n][0], (batch[n][1] + 1e-8).sqrt())).mean() for n in stored]
    reverse = [kl(Normal(batch[n][0], batch[n][1].sqrt()), Normal(stored[n][0], stored[n][1].sqrt())).mean() for n in stored]
    got = float(bns_kl(batch, stored))
    assert got == pytest.approx(float(torch.stack(per_layer).mean()), abs=1e-6)
    assert abs(got - float(torch.stack(reverse).mean())) > 0.05
