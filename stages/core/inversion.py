"""DeepInversion: optimize random noise until the teacher's BN batch statistics match its running stats.

Loss per batch (Yin et al. 2020; arXiv 2511.20702):
    lambda_bn * sum_l (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2)
  + lambda_ce * CE(teacher(x), targets) + lambda_tv * TV_l2(x) + lambda_l2 * ||x||_2
with a random shift/flip of the batch before each forward, Adam with a cosine
learning-rate decay, and pixels clamped to the valid input range after each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .bn import BatchStatsHook, bn_l2_loss
from .imageops import random_shift_flip
from .training import cosine_lambda

LOSS_TERMS = ("total", "bn", "ce", "tv", "l2")


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's l2 total variation: norms of the four neighbour differences."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))


def balanced_targets(n: int, num_classes: int) -> torch.Tensor:
    """Class labels 0..C-1 repeated: every class gets n//C or n//C+1 images, every batch is balanced."""
    return torch.arange(n) % num_classes


@dataclass
class BatchResult:
    images: torch.Tensor  # (B, C, H, W) float32, normalized space, on CPU
    curve: list[dict]  # one row of loss terms per iteration
    bn_loss_initial: float  # BN loss of the starting noise (no augmentation)
    bn_loss_final: float  # BN loss of the final images (no augmentation)


def bn_loss_of(teacher: nn.Module, x: torch.Tensor, target_stats) -> float:
    with torch.no_grad(), BatchStatsHook(teacher) as hook:
        teacher(x)
        return float(bn_l2_loss(hook.stats, target_stats))


def invert_batch(
    teacher: nn.Module,
    targets: torch.Tensor,
    target_stats: dict,
    cfg,
    bounds: tuple[torch.Tensor, torch.Tensor],
    input_shape: tuple[int, int, int],
    generator: torch.Generator,
    device: torch.device,
) -> BatchResult:
    """Run ``cfg.iterations`` Adam steps on one batch of noise. ``teacher`` must be in eval mode."""
    lo, hi = (b.to(device) for b in bounds)
    x0 = torch.randn((len(targets), *input_shape), generator=generator)
    x = x0.to(device).clamp_(lo, hi).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    targets = targets.to(device)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(cfg.iterations))
    bn_initial = bn_loss_of(teacher, x.detach(), target_stats)
    curve = []
    for _ in range(cfg.iterations):
        xa = random_shift_flip(x, cfg.max_shift, cfg.flip, generator)
        with BatchStatsHook(teacher) as hook:
            logits = teacher(xa)
        bn = bn_l2_loss(hook.stats, target_stats)
        ce = F.cross_entropy(logits, targets)
        tv = tv_l2(xa)
        l2 = torch.linalg.vector_norm(xa.flatten(1), dim=1).mean()
        total = cfg.lambda_bn * bn + cfg.lambda_ce * ce + cfg.lambda_tv * tv + cfg.lambda_l2 * l2
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
        curve.append(dict(zip(LOSS_TERMS, (float(t.detach()) for t in (total, bn, ce, tv, l2)))))
    final = x.detach().contiguous()
    return BatchResult(final.cpu(), curve, bn_initial, bn_loss_of(teacher, final, target_stats))


def synthesize_set(
    teacher: nn.Module,
    target_stats: dict,
    num_classes: int,
    input_shape: tuple[int, int, int],
    bounds,
    cfg,
    seed: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[BatchResult]]:
    """Synthesize ``cfg.n_images`` class-balanced images batch by batch.

    Batch ``b`` draws its noise and augmentations from a generator seeded with
    (seed, b), so any batch can be regenerated alone and the set is deterministic.
    """
    teacher.eval().requires_grad_(False)
    targets = balanced_targets(cfg.n_images, num_classes)
    images, results = [], []
    starts = range(0, cfg.n_images, cfg.batch_size)
    for b, start in enumerate(tqdm(starts, desc="synthesize", unit="batch")):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        res = invert_batch(teacher, targets[start : start + cfg.batch_size], target_stats, cfg, bounds, input_shape, gen, device)
        images.append(res.images)
        results.append(res)
    return torch.cat(images), targets, results
