"""Generator-based synthesis (synthesize.method: generator): the objective falls, the set is a function of the seed,
and torchrun shards merge into the one-process set."""

import pytest
import torch

from stages.core.bn import running_stats
from stages.core.distributed import Context, asdict_row, merge_shards
from stages.core.generator import ConditionalGenerator
from stages.core.inversion import synthesize_set
from stages.core.params import section_with

BOUNDS = (torch.tensor([-1.5]), torch.tensor([2.0]))
SHAPE = (1, 8, 8)


def cfg(**kw):
    base = dict(
        method="generator",
        n_images=27,
        batch_size=6,
        generator_warmup=40,
        generator_steps=8,
        generator_nz=16,
        generator_width=8,
        generator_lr=0.01,
        max_shift=1,
        # the toy net has two BN layers: at the default weight 30 the first one's term is nearly all of the objective,
        # whose per-batch fall the tests below measure; the generator's mechanics are the same at any weight
        first_bn_weight=1.0,
    )
    return section_with("synthesize", **(base | kw))


pytestmark = pytest.mark.usefixtures("one_thread")


def run(net, c, seed=7, rank=0, world=1):
    return synthesize_set(net, running_stats(net), 3, SHAPE, BOUNDS, c, seed, torch.device("cpu"), rank=rank, world=world)


def test_generator_output_stays_in_the_pixel_bounds_at_any_size():
    for shape in ((1, 8, 8), (3, 7, 10)):
        g = ConditionalGenerator(4, 3, shape, 4, (torch.full((shape[0],), -1.0), torch.full((shape[0],), 0.5)))
        x = g(torch.randn(5, 4) * 10, torch.tensor([0, 1, 2, 0, 1]))
        assert x.shape == (5, *shape) and x.min() >= -1.0 and x.max() <= 0.5


def test_loss_falls_in_the_warm_up_and_in_each_batch(trained_toy_net):
    # no random shift or flip: each step's objective is then the same function, so its fall is the optimizer's alone
    # (with augmentation the 8-step curve is as noisy as its fall, and its sign depends on the CPU's rounding)
    still = dict(max_shift=0, flip=False)
    images, targets, results = run(trained_toy_net, cfg(**still))
    assert images.shape == (27, *SHAPE) and torch.bincount(targets).tolist() == [9, 9, 9]
    warm = [r["total"] for r in results[0].warmup_curve]
    assert len(warm) == 40 and sum(warm[-5:]) / 5 < 0.7 * sum(warm[:5]) / 5
    assert all(r.warmup_curve == [] for r in results[1:])
    assert results[0].extra_image_iterations == 40 * 6 and all(r.iterations == 8 for r in results)
    for r in results:  # a few steps from the shared start lower each batch's objective
        assert r.curve[-1]["total"] < 0.95 * r.curve[0]["total"]
    # the warmed-up generator is far closer to the BN statistics than its random start
    untrained, _, u = run(trained_toy_net, cfg(generator_warmup=0, generator_steps=1, **still))
    assert sum(r.bn_loss_final for r in results) < 0.7 * sum(r.bn_loss_final for r in u)


def test_set_is_a_function_of_the_seed(trained_toy_net):
    a = run(trained_toy_net, cfg(n_images=12))[0]
    b = run(trained_toy_net, cfg(n_images=12))[0]
    c = run(trained_toy_net, cfg(n_images=12), seed=8)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.random.get_rng_state()
    run(trained_toy_net, cfg(n_images=6, generator_warmup=2, generator_steps=1))
    assert torch.equal(torch.random.get_rng_state(), g)  # the global RNG is left as it was


class FilesOnlyContext(Context):
    def barrier(self) -> None:
        pass


def test_shards_merge_into_the_one_process_set(trained_toy_net, tmp_path):
    images, targets, results = run(trained_toy_net, cfg())  # 5 batches, the last of 3 images
    shards = {}
    for rank in (1, 0):
        x, t, res = run(trained_toy_net, cfg(), rank=rank, world=2)
        assert res[0].extra_image_iterations == 40 * 6  # every process repeats the warm-up and counts it
        rows = [asdict_row(r, len(r.images), drop=("images",)) for r in res]
        shards[rank] = merge_shards(
            FilesOnlyContext(rank, 2, torch.device("cpu"), 1), tmp_path / "s", {"images": x, "targets": t}, rows, list(range(rank, 5, 2))
        )
    merged, rows = shards[0]
    assert torch.equal(merged["images"], images) and torch.equal(merged["targets"], targets)
    assert [r["n_items"] for r in rows] == [6, 6, 6, 6, 3]


def test_non_finite_objective_stops_naming_the_step(trained_toy_net):
    from stages.core.runtime import StageError

    stats = {k: (mu, var * float("nan")) for k, (mu, var) in running_stats(trained_toy_net).items()}
    with pytest.raises(StageError, match=r"synthesize \(generator\): non-finite loss .* in the warm-up, step 0"):
        synthesize_set(trained_toy_net, stats, 3, SHAPE, BOUNDS, cfg(n_images=6), 0, torch.device("cpu"))
