"""Data-parallel distillation normalizes by the global batch: the same update as one process, whatever the split.

Each rank computes its rows' KD sum divided by the global batch size (times the world size, which
DistributedDataParallel's gradient average divides out again). Before, every rank took its own batch mean and DDP
averaged those: right only when the batch divides by the process count, and a rank with no rows still counted."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_kd import cfg as kd_cfg

from conftest import make_trained_toy_net
from stages.core.distributed import Context
from stages.core.kd import distill, kd_loss

# test_kd's distillation config; eval-mode BN (freeze_bn): a row's forward does not depend on the other rows of its rank
CFG = dict(epochs=1, lr=0.5, momentum=0.0, temperature=2.0, freeze_bn=True, iq_beta=0.5)


def nets():
    teacher = make_trained_toy_net(steps=5)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return teacher, student


def test_rank_losses_sum_to_the_global_batch_mean_gradient():
    """By hand: 5 rows over 2 or 3 ranks, and 1 row over 2 ranks (one rank empty)."""
    for n, world in ((5, 2), (5, 3), (1, 2)):
        torch.manual_seed(n)
        s, t = torch.randn(n, 4, requires_grad=True), torch.randn(n, 4)
        (full,) = torch.autograd.grad(kd_loss(s, t, 2.0), s)
        ddp = torch.zeros_like(s)
        for r in range(world):
            part = s[r::world]
            if len(part):
                (g,) = torch.autograd.grad(kd_loss(part, t[r::world], 2.0, rows=n) * world, s)
                ddp += g / world  # DDP's all-reduce averages over the ranks
        assert torch.allclose(ddp, full, atol=1e-6), (n, world)


def _worker(rank, world, init, batch_size, n, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    teacher, student = nets()
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 + 1
    distill(
        student,
        teacher,
        x,
        kd_cfg(**CFG, batch_size=batch_size),
        torch.device("cpu"),
        seed=0,
        ctx=Context(rank, world, torch.device("cpu"), 1),
    )
    if rank == 0:
        torch.save(student.state_dict(), out)
    dist.destroy_process_group()


@pytest.mark.parametrize("batch_size,n", [(5, 5), (3, 7)])  # 5 rows on 2 ranks; batches of 3, 3 and 1 row (one rank empty)
def test_two_processes_take_the_single_process_step(tmp_path, batch_size, n):
    teacher, student = nets()
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 + 1
    torch.set_num_threads(1)
    distill(student, teacher, x, kd_cfg(**CFG, batch_size=batch_size), torch.device("cpu"), seed=0)
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", batch_size, n, str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    moved = max(float((p - q).abs().max()) for p, q in zip(student.state_dict().values(), nets()[1].state_dict().values()))
    assert moved > 1e-3  # the step did something
    for k, v in student.state_dict().items():
        assert torch.allclose(ddp[k], v, atol=1e-5), k
