"""Synthetic images from a trained classifier: the methods of DeepInversion and "The Knowledge Within".

Every optimizing method starts from Gaussian noise and runs ``iterations`` Adam steps
(cosine learning-rate decay, pixels clamped to the valid input range after each step)
on one batch at a time. Before each forward pass the batch goes through the in-batch
augmentation of ``imageops.augment_copies`` (``duplicates`` copies per image). The
BN statistics come from the one ``bn.BatchStatsHook``. Losses per method:

- ``deepinversion`` (Yin et al. 2020; arXiv 2511.20702):
  lambda_bn * sum_l (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2) + lambda_ce * CE
  + lambda_tv * TV_l2 + lambda_l2 * ||x||_2
- ``inception``: lambda_inception * exp(-logit[target] / inception_scale) + lambda_prior * MSE(x, blur(x))
- ``bns`` (BN-Stats): lambda_bns * mean_l KL(N(running stats) || N(batch stats)), the input
  normalization counted as a layer, + lambda_prior * MSE(x, blur(x)); untargeted.
- ``bns_inception``: the sum of the ``bns`` and ``inception`` losses (alpha, beta, gamma =
  lambda_bns, lambda_prior, lambda_inception).
- ``gaussian``: no optimization; per-channel Gaussian with the input normalization's mean/std
  (standard normal in normalized space).

Untargeted methods (``bns``, ``gaussian``) are labelled by the teacher's prediction afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .bn import BatchStatsHook, bn_l2_loss, bns_kl, with_input, with_input_target
from .imageops import augment_copies, smoothing_prior
from .training import cosine_lambda

METHODS = ("deepinversion", "gaussian", "inception", "bns", "bns_inception")
TARGETED = ("deepinversion", "inception", "bns_inception")
# Terms of each method's objective; bn_l2 and bns_kl are also logged for every method as diagnostics.
METHOD_TERMS = {
    "deepinversion": ("bn_l2", "ce", "tv", "l2"),
    "inception": ("inception", "prior"),
    "bns": ("bns_kl", "prior"),
    "bns_inception": ("bns_kl", "prior", "inception"),
    "gaussian": (),
}
INCEPTION_MAX_EXPONENT = 30.0  # exp(-logit/scale) is capped at e^30 so that very negative logits cannot overflow


def curve_columns(method: str) -> list[str]:
    return ["total", "bn_l2", "bns_kl", *(t for t in METHOD_TERMS[method] if t not in ("bn_l2", "bns_kl"))]


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's l2 total variation: norms of the four neighbour differences."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))


def inception_loss(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """Single-logit maximization: mean of exp(-logit[target] / scale)."""
    z = logits.float().gather(1, targets[:, None]).squeeze(1)
    return torch.exp((-z / scale).clamp(max=INCEPTION_MAX_EXPONENT)).mean()


def balanced_targets(n: int, num_classes: int) -> torch.Tensor:
    """Class labels 0..C-1 repeated: every class gets n//C or n//C+1 images, every batch is balanced."""
    return torch.arange(n) % num_classes


def method_losses(method: str, cfg, x: torch.Tensor, xa: torch.Tensor, logits, stats: dict, targets, target_stats: dict) -> dict:
    """All logged terms for one forward pass; ``total`` is the method's objective.

    ``x`` is the batch being optimized, ``xa`` its augmented copies fed to the teacher,
    ``stats`` the hook's BN batch statistics of that forward, ``targets`` one per row of ``xa``.
    """
    t = {"bn_l2": bn_l2_loss(stats, target_stats), "bns_kl": bns_kl(with_input(stats, xa), target_stats)}
    if method == "deepinversion":
        t["ce"] = F.cross_entropy(logits, targets)
        t["tv"] = tv_l2(xa)
        t["l2"] = torch.linalg.vector_norm(xa.flatten(1), dim=1).mean()
        t["total"] = cfg.lambda_bn * t["bn_l2"] + cfg.lambda_ce * t["ce"] + cfg.lambda_tv * t["tv"] + cfg.lambda_l2 * t["l2"]
        return t
    t["prior"] = smoothing_prior(x, cfg.blur_sigma)
    total = cfg.lambda_prior * t["prior"]
    if method in ("bns", "bns_inception"):
        total = total + cfg.lambda_bns * t["bns_kl"]
    if method in ("inception", "bns_inception"):
        t["inception"] = inception_loss(logits, targets, cfg.inception_scale)
        total = total + cfg.lambda_inception * t["inception"]
    t["total"] = total
    return t


@dataclass
class BatchResult:
    images: torch.Tensor  # (B, C, H, W) float32, normalized space, on CPU
    curve: list[dict]  # one row of loss terms per iteration (empty for gaussian)
    bn_loss_initial: float  # DeepInversion BN-L2 loss of the starting noise (no augmentation)
    bn_loss_final: float  # ... of the final images
    bns_kl_initial: float  # BNS KL (input + BN layers) of the starting noise
    bns_kl_final: float  # ... of the final images


@torch.no_grad()
def bn_losses_of(teacher: nn.Module, x: torch.Tensor, target_stats: dict) -> tuple[float, float]:
    """(BN-L2, BNS KL) of batch ``x`` without augmentation."""
    with BatchStatsHook(teacher) as hook:
        teacher(x)
    return float(bn_l2_loss(hook.stats, target_stats)), float(bns_kl(with_input(hook.stats, x), target_stats))


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
    """Make one batch with ``cfg.method``. ``teacher`` must be in eval mode; ``target_stats`` includes the input layer."""
    lo, hi = (b.to(device) for b in bounds)
    x0 = torch.randn((len(targets), *input_shape), generator=generator).to(device)
    if cfg.method == "gaussian":
        l2, kl = bn_losses_of(teacher, x0.contiguous(memory_format=torch.channels_last), target_stats)
        return BatchResult(x0.cpu(), [], l2, l2, kl, kl)
    x = x0.clamp_(lo, hi).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    targets_a = targets.to(device).repeat(cfg.duplicates)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(cfg.iterations))
    l2_initial, kl_initial = bn_losses_of(teacher, x.detach(), target_stats)
    curve = []
    for _ in range(cfg.iterations):
        xa = augment_copies(
            x, cfg.duplicates, generator, max_shift=cfg.max_shift, flip=cfg.flip, crop_min_area=cfg.crop_min_area, cutout=cfg.cutout
        )
        with BatchStatsHook(teacher) as hook:
            logits = teacher(xa)
        terms = method_losses(cfg.method, cfg, x, xa, logits, hook.stats, targets_a, target_stats)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
        curve.append({k: float(v.detach()) for k, v in terms.items()})
    final = x.detach().contiguous()
    l2_final, kl_final = bn_losses_of(teacher, final, target_stats)
    return BatchResult(final.cpu(), curve, l2_initial, l2_final, kl_initial, kl_final)


def synthesize_set(
    teacher: nn.Module,
    running: dict,
    num_classes: int,
    input_shape: tuple[int, int, int],
    bounds,
    cfg,
    seed: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[BatchResult]]:
    """Synthesize ``cfg.n_images`` images batch by batch with ``cfg.method``; ``running`` = the BN running stats.

    Returns (images, targets, per-batch results); targets are class-balanced for targeted
    methods and -1 for untargeted ones. Batch ``b`` draws its noise and augmentations from a
    generator seeded with (seed, b), so any batch can be regenerated alone and the set is
    deterministic.
    """
    teacher.eval().requires_grad_(False)
    target_stats = with_input_target(running, input_shape[0])
    if cfg.method in TARGETED:
        targets = balanced_targets(cfg.n_images, num_classes)
    else:
        targets = torch.full((cfg.n_images,), -1, dtype=torch.long)
    images, results = [], []
    starts = range(0, cfg.n_images, cfg.batch_size)
    for b, start in enumerate(tqdm(starts, desc=f"synthesize ({cfg.method})", unit="batch")):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        batch_targets = targets[start : start + cfg.batch_size].clamp_min(0)
        res = invert_batch(teacher, batch_targets, target_stats, cfg, bounds, input_shape, gen, device)
        images.append(res.images)
        results.append(res)
    return torch.cat(images), targets, results
