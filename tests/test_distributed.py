"""Sharded synthesis (torchrun ranks), shard merging and the synthesis speed levers, on a toy net in one process."""

import pytest
import torch

from stages.core.bn import running_stats, with_input_target
from stages.core.distributed import Context, asdict_row, merge_shards
from stages.core.inversion import invert_batch, plateaued, synthesize_set, warm_init
from stages.core.params import section_with

BOUNDS = (torch.full((1, 1, 1, 1), -5.0), torch.full((1, 1, 1, 1), 5.0))
SHAPE = (1, 8, 8)


def cfg(**kw):
    base = dict(n_images=30, batch_size=6, iterations=8, lr=0.1, max_shift=1, flip=True)
    return section_with("synthesize", **(base | kw))


pytestmark = pytest.mark.usefixtures("one_thread")


def run(net, c, rank=0, world=1, share_pool=None):
    stats = running_stats(net)
    return synthesize_set(net, stats, 3, SHAPE, BOUNDS, c, 7, torch.device("cpu"), rank=rank, world=world, share_pool=share_pool)


class FilesOnlyContext(Context):
    """A rank of a fake 2-process group: merge_shards then only needs the shared folder (barrier is a no-op)."""

    def barrier(self) -> None:
        pass


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_the_single_process_batches(trained_toy_net, world):
    images, targets, results = run(trained_toy_net, cfg())
    assert len(images) == 30 and len(results) == 5
    for rank in range(world):
        mine = list(range(rank, 5, world))
        x, t, res = run(trained_toy_net, cfg(), rank, world)
        assert len(res) == len(mine)
        expected = torch.cat([images[6 * b : 6 * b + 6] for b in mine])
        assert torch.equal(x, expected)  # per-shard determinism: batch b depends on (seed, b) only
        assert torch.equal(t, torch.cat([targets[6 * b : 6 * b + 6] for b in mine]))


def test_merged_shards_equal_the_single_process_set(trained_toy_net, tmp_path):
    images, targets, results = run(trained_toy_net, cfg(n_images=27))  # last batch short: 3 images
    shards = {}
    for rank in (1, 0):  # rank 0 merges after the others wrote their files
        x, t, res = run(trained_toy_net, cfg(n_images=27), rank, 2)
        rows = [asdict_row(r, len(r.images), drop=("images",)) for r in res]
        shards[rank] = merge_shards(
            FilesOnlyContext(rank, 2, torch.device("cpu"), 1), tmp_path / "s", {"images": x, "targets": t}, rows, list(range(rank, 5, 2))
        )
    assert shards[1] is None
    merged, rows = shards[0]
    assert torch.equal(merged["images"], images) and torch.equal(merged["targets"], targets)
    assert torch.bincount(merged["targets"]).tolist() == [9, 9, 9]  # class balance survives the merge
    assert [r["n_items"] for r in rows] == [6, 6, 6, 6, 3]
    assert [r["bn_loss_final"] for r in rows] == [r.bn_loss_final for r in results]
    assert not (tmp_path / "s").exists()


def test_warm_start_shards_match_with_the_broadcast_pool(trained_toy_net):
    c = cfg(warm_start=0.7, warm_iterations=3)
    images, _, results = run(trained_toy_net, c)
    assert [r.iterations for r in results] == [8, 3, 3, 3, 3]
    x1, _, _ = run(trained_toy_net, c, rank=1, world=2, share_pool=lambda _: images[:6])  # what rank 0 broadcasts
    assert torch.equal(x1, torch.cat([images[6:12], images[18:24]]))
    with pytest.raises(ValueError, match="share_pool"):
        run(trained_toy_net, c, rank=1, world=2)


def test_warm_init_starts_from_images_of_the_same_class():
    pool = torch.stack([torch.full((1, 2, 2), float(c)) for c in (0, 1, 2, 0, 1, 2)])
    pool_targets = torch.tensor([0, 1, 2, 0, 1, 2])
    targets = torch.tensor([2, 2, 1, 0])
    g = torch.Generator().manual_seed(0)
    x0 = warm_init(pool, pool_targets, targets, 1.0, g)  # weight 1: pure pool images
    assert x0[:, 0, 0, 0].tolist() == [2.0, 2.0, 1.0, 0.0]
    x_half = warm_init(pool, pool_targets, targets, 0.5, torch.Generator().manual_seed(0))
    noise = torch.randn((4, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x_half, 0.5 * x0 + 0.5 * noise)


def test_plateau_test():
    falling = [{"total": 100.0 / (i + 1)} for i in range(40)]
    flat = [{"total": 5.0 + 1e-4 * (i % 2)} for i in range(40)]
    assert not plateaued(falling[:10], 10, 0.01)  # needs two windows
    assert plateaued(flat, 10, 0.01) and not plateaued(flat, 10, 0.0)
    assert not plateaued([{"total": 100.0 - i} for i in range(40)], 10, 0.01)


def test_early_stop_ends_a_batch_and_bf16_lowers_the_loss(trained_toy_net):
    stats = with_input_target(running_stats(trained_toy_net), 1)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    args = (trained_toy_net, targets, stats)
    long = invert_batch(*args, cfg(iterations=300, lr=0.05), BOUNDS, SHAPE, torch.Generator().manual_seed(0), torch.device("cpu"))
    stopped = invert_batch(
        *args,
        cfg(iterations=300, lr=0.05, early_stop_tol=0.05, early_stop_window=10),
        BOUNDS,
        SHAPE,
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    assert long.iterations == 300 and 20 <= stopped.iterations < 300
    assert stopped.curve == long.curve[: stopped.iterations]  # the same trajectory, cut short
    bf16 = invert_batch(*args, cfg(iterations=60, precision="bf16"), BOUNDS, SHAPE, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert bf16.bn_loss_final < 0.5 * bf16.bn_loss_initial
