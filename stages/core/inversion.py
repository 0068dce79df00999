"""Synthetic images from a trained classifier: the methods of DeepInversion and "The Knowledge Within".

Every optimizing method starts from Gaussian noise and runs ``iterations`` Adam steps
(cosine learning-rate decay, pixels clamped to the valid input range after each step)
on one batch at a time. Before each forward pass the batch goes through the in-batch
augmentation of ``imageops.augment_copies`` (``duplicates`` copies per image). The
BN statistics come from the one ``bn.BatchStatsHook``. Losses per method:

- ``deepinversion`` (Yin et al. 2020; arXiv 2511.20702):
  lambda_bn * BN + lambda_ce * CE + lambda_tv * TV_l2 + lambda_l2 * ||x||_2, where BN is
  ``bn_loss: normalized`` (the default, ``bn.bn_normalized_loss``: mean over layers of the per-channel RMS
  mean shift / std and relative variance error, the same size for any teacher) or ``bn_loss: l2``, the
  paper's sum_l (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2), which grows with width and depth; the first
  BN layer's term (in forward order) is multiplied by ``first_bn_weight`` (DeepInversion's ``first_bn_multiplier``)
- ``inception``: lambda_inception * exp(-logit[target] / inception_scale) + lambda_prior * MSE(x, blur(x))
- ``bns`` (BN-Stats): lambda_bns * mean_l KL(N(running stats) || N(batch stats)), the input
  normalization counted as a layer, + lambda_prior * MSE(x, blur(x)); untargeted.
- ``bns_inception``: the sum of the ``bns`` and ``inception`` losses (alpha, beta, gamma =
  lambda_bns, lambda_prior, lambda_inception).
- ``gaussian``: no optimization; per-channel Gaussian with the input normalization's mean/std
  (standard normal in normalized space).

Untargeted methods (``bns``, ``gaussian``) are labelled by the teacher's prediction afterwards.

Speed levers (measured by ``benchmarks/synthesis.py`` and the compute sweep; README "Speed"):
``precision: bf16`` runs the teacher under bfloat16 autocast (``auto``, the default, only where bf16 is native:
CPU with AVX512-BF16/AMX, or CUDA; the BN statistics and losses stay float32);
``early_stop_tol`` ends a batch once its loss stops improving; ``warm_start`` > 0 starts every
batch after the first from the first batch's finished images of the same class (mixed with
noise) and runs only ``warm_iterations`` steps on it; ``synthesize_set(rank=, world=)`` makes
only the batches ``b % world == rank`` (the torchrun shards), and because batch ``b`` draws its
noise from a generator seeded with (seed, b), the shards of N processes merge into exactly the
set one process makes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import precision
from .bn import BatchStatsHook, bn_l2_loss, bn_normalized_loss, bns_kl, with_input, with_input_target
from .generator import check_finite, generator_set
from .imageops import augment_copies, smoothing_prior
from .runtime import StageError
from .training import cosine_lambda

METHODS = ("deepinversion", "gaussian", "inception", "bns", "bns_inception", "generator")
TARGETED = ("deepinversion", "inception", "bns_inception", "generator")
# Terms of each method's objective; bn_l2 and bns_kl are also logged for every method as diagnostics.
METHOD_TERMS = {
    "deepinversion": ("bn", "ce", "tv", "l2"),  # bn = bn_norm or bn_l2 (synthesize.bn_loss)
    "inception": ("inception", "prior"),
    "bns": ("bns_kl", "prior"),
    "bns_inception": ("bns_kl", "prior", "inception"),
    "gaussian": (),
    "generator": ("bn", "ce", "tv", "l2"),  # DeepInversion's objective, optimized through a generator's weights
}
INCEPTION_MAX_EXPONENT = 30.0  # exp(-logit/scale) is capped at e^30 so that very negative logits cannot overflow


DIAGNOSTICS = ("bn_l2", "bn_norm", "bns_kl")


def curve_columns(method: str) -> list[str]:
    return ["total", *DIAGNOSTICS, *(t for t in METHOD_TERMS[method] if t not in DIAGNOSTICS)]


def competition_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Adaptive DeepInversion's competition term (Yin et al. 2020): 1 - JS(p_teacher || p_student) / ln 2, batch mean.

    p = softmax(logits / ``temperature``); JS is the Jensen-Shannon divergence in nats (at most ln 2), so the term runs
    from 1 (the student agrees with the teacher) to 0 (disjoint predictions): minimizing it makes images on which
    the student disagrees with the teacher.
    """
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_m = torch.logsumexp(torch.stack([log_t, log_s]), dim=0) - math.log(2.0)
    kl_t = (log_t.exp() * (log_t - log_m)).sum(1)
    kl_s = (log_s.exp() * (log_s - log_m)).sum(1)
    return 1.0 - (0.5 * (kl_t + kl_s)).mean() / math.log(2.0)


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
    objective = set(METHOD_TERMS[method])
    bn_name = "bn_norm" if cfg.bn_loss == "normalized" else "bn_l2"
    unweighted = cfg.first_bn_weight == 1.0  # then the logged (unweighted) BN term is the objective's
    if method in ("deepinversion", "generator") and unweighted:
        objective.add(bn_name)
    grad = torch.is_grad_enabled()
    t = {}
    bn_fns = {"bn_l2": bn_l2_loss, "bn_norm": bn_normalized_loss}
    for name, fn in (*bn_fns.items(), ("bns_kl", None)):
        with torch.set_grad_enabled(grad and name in objective):  # a logged diagnostic builds no graph
            t[name] = fn(stats, target_stats) if fn else bns_kl(with_input(stats, xa), target_stats)
    if method in ("deepinversion", "generator"):
        t["bn"] = t[bn_name] if unweighted else bn_fns[bn_name](stats, target_stats, cfg.first_bn_weight)
        t["ce"] = F.cross_entropy(logits, targets)
        t["tv"] = tv_l2(xa)
        t["l2"] = torch.linalg.vector_norm(xa.flatten(1), dim=1).mean()
        t["total"] = cfg.lambda_bn * t["bn"] + cfg.lambda_ce * t["ce"] + cfg.lambda_tv * t["tv"] + cfg.lambda_l2 * t["l2"]
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
    iterations: int = 0  # optimization steps actually run (early stopping, warm start)
    extra_image_iterations: int = 0  # compute not per image of this batch (the generator's warm-up, charged to one batch)
    warmup_curve: list[dict] = field(default_factory=list)  # the generator's warm-up losses (on the batch charged with it)


@torch.no_grad()
def bn_losses_of(teacher: nn.Module, x: torch.Tensor, target_stats: dict) -> tuple[float, float]:
    """(BN-L2, BNS KL) of batch ``x`` without augmentation."""
    with BatchStatsHook(teacher) as hook:
        teacher(x)
    return float(bn_l2_loss(hook.stats, target_stats)), float(bns_kl(with_input(hook.stats, x), target_stats))


def autocast(cfg, device: torch.device):
    """bfloat16 autocast for the teacher's forward/backward when ``cfg.precision`` resolves to bf16 on ``device``
    (``auto``: only where bf16 is native; see ``precision.resolve``)."""
    return precision.autocast(precision.resolve(cfg.precision, device, "synthesize.precision"), device)


def plateaued(curve: list[dict], window: int, tol: float) -> bool:
    """True when the mean total loss of the last ``window`` steps improved by less than ``tol`` (relative)
    on the ``window`` steps before them."""
    if tol <= 0 or len(curve) < 2 * window:
        return False
    last = sum(r["total"] for r in curve[-window:]) / window
    before = sum(r["total"] for r in curve[-2 * window : -window]) / window
    return before - last < tol * abs(before)


def invert_batch(
    teacher: nn.Module,
    targets: torch.Tensor,
    target_stats: dict,
    cfg,
    bounds: tuple[torch.Tensor, torch.Tensor],
    input_shape: tuple[int, int, int],
    generator: torch.Generator,
    device: torch.device,
    init: torch.Tensor | None = None,
    iterations: int | None = None,
    batch: int = 0,
    student: nn.Module | None = None,
    competition: float = 0.0,
    temperature: float = 1.0,
) -> BatchResult:
    """Make one batch with ``cfg.method``. ``teacher`` must be in eval mode; ``target_stats`` includes the input layer.

    ``init`` (optional, same shape as the batch) replaces the starting noise (warm start);
    ``iterations`` overrides ``cfg.iterations`` (the cosine schedule spans it). A non-finite loss term or image
    stops the synthesis with one StageError naming the batch (``batch``, for the message) and the step.
    ``student`` (in eval mode, weights frozen; run in float32): adds ``competition`` x ``competition_loss`` at
    ``temperature`` to the objective (Adaptive DeepInversion: images the student does not yet match the teacher on).
    """
    lo, hi = (b.to(device) for b in bounds)
    iterations = cfg.iterations if iterations is None else iterations
    x0 = torch.randn((len(targets), *input_shape), generator=generator)
    if init is not None:
        x0 = init
    x0 = x0.to(device)
    if cfg.method == "gaussian":
        l2, kl = bn_losses_of(teacher, x0.contiguous(memory_format=torch.channels_last), target_stats)
        return BatchResult(x0.cpu(), [], l2, l2, kl, kl)
    x = x0.clamp_(lo, hi).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    targets_a = targets.to(device).repeat(cfg.duplicates)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(iterations))
    l2_initial, kl_initial = bn_losses_of(teacher, x.detach(), target_stats)
    window, tol = cfg.early_stop_window, cfg.early_stop_tol
    curve = []
    for step in range(iterations):
        xa = augment_copies(
            x, cfg.duplicates, generator, max_shift=cfg.max_shift, flip=cfg.flip, crop_min_area=cfg.crop_min_area, cutout=cfg.cutout
        )
        with BatchStatsHook(teacher) as hook, autocast(cfg, device):
            logits = teacher(xa)
        terms = method_losses(cfg.method, cfg, x, xa, logits.float(), hook.stats, targets_a, target_stats)
        if student is not None:
            terms["compete"] = competition_loss(logits, student(xa), temperature)
            terms["total"] = terms["total"] + competition * terms["compete"]
        check_finite(terms, f"synthesize: batch {batch}, step {step}", f"lower synthesize.lr (now {cfg.lr}) or the loss weights")
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
        curve.append({k: float(v.detach()) for k, v in terms.items()})
        if plateaued(curve, window, tol):
            break
    final = x.detach().contiguous()
    if not torch.isfinite(final).all():
        raise StageError(f"synthesize: non-finite pixels in batch {batch} after step {len(curve) - 1}; nothing was written")
    l2_final, kl_final = bn_losses_of(teacher, final, target_stats)
    return BatchResult(final.cpu(), curve, l2_initial, l2_final, kl_initial, kl_final, len(curve))


def warm_init(pool: torch.Tensor, pool_targets: torch.Tensor, targets: torch.Tensor, weight: float, generator) -> torch.Tensor:
    """Starting images for a warm-started batch: ``weight`` x a random finished image of the same class from
    ``pool`` + (1 - ``weight``) x fresh Gaussian noise (any class missing from the pool gets noise alone)."""
    noise = torch.randn((len(targets), *pool.shape[1:]), generator=generator)
    pick = torch.randint(0, 2**31 - 1, (len(targets),), generator=generator)
    x0 = noise.clone()
    for c in targets.unique().tolist():
        rows = (targets == c).nonzero().squeeze(1)
        cands = (pool_targets == c).nonzero().squeeze(1)
        if len(cands):
            chosen = cands[pick[rows] % len(cands)]
            x0[rows] = weight * pool[chosen] + (1 - weight) * noise[rows]
    return x0


def batch_generator(seed: int, b: int) -> torch.Generator:
    """The generator of batch ``b``: every batch's noise and augmentations depend on (seed, b) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + b)


def generated_set(teacher, target_stats, targets, starts, mine, cfg, bounds, input_shape, seed, device):
    """``synthesize_set`` for ``method: generator`` (``generator.generator_set``), as (images, targets, results)."""

    def losses(x, xa, logits, stats, t):
        return method_losses("generator", cfg, x, xa, logits, stats, t, target_stats)

    made = generator_set(
        teacher,
        targets,
        starts,
        mine,
        cfg,
        bounds,
        input_shape,
        seed,
        device,
        losses,
        lambda: autocast(cfg, device),
        batch_generator,
    )
    results = []
    for _b, initial, images, curve, extra, warm in made:
        l2_i, kl_i = bn_losses_of(teacher, initial.to(device).contiguous(memory_format=torch.channels_last), target_stats)
        l2_f, kl_f = bn_losses_of(teacher, images.to(device).contiguous(memory_format=torch.channels_last), target_stats)
        results.append(BatchResult(images, curve, l2_i, l2_f, kl_i, kl_f, len(curve), extra, warm))
    mine_targets = torch.cat([targets[starts[b] : starts[b] + cfg.batch_size] for b in mine]) if mine else targets[:0]
    images = torch.cat([r.images for r in results]) if results else torch.empty((0, *input_shape))
    return images, mine_targets, results


def synthesize_set(
    teacher: nn.Module,
    running: dict,
    num_classes: int,
    input_shape: tuple[int, int, int],
    bounds,
    cfg,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    share_pool: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[BatchResult]]:
    """Synthesize ``cfg.n_images`` images batch by batch with ``cfg.method``; ``running`` = the BN running stats.

    Returns (images, targets, per-batch results); targets are class-balanced for targeted
    methods and -1 for untargeted ones. Batch ``b`` draws its noise and augmentations from
    ``batch_generator(seed, b)``, so any batch can be regenerated alone and the set is
    deterministic. With ``world`` > 1 only the batches ``b % world == rank`` are made and
    returned (images and targets of those batches, in batch order): the shard of one process.
    With ``cfg.warm_start`` > 0, batch 0 runs ``cfg.iterations`` steps from noise (on rank 0) and
    becomes the pool every later batch starts from; ``share_pool`` sends it from rank 0 to the
    others (a broadcast; required when ``world`` > 1).
    """
    teacher.eval().requires_grad_(False)
    target_stats = with_input_target(running, input_shape[0])
    if cfg.method in TARGETED:
        targets = balanced_targets(cfg.n_images, num_classes)
    else:
        targets = torch.full((cfg.n_images,), -1, dtype=torch.long)
    starts = list(range(0, cfg.n_images, cfg.batch_size))
    warm = cfg.warm_start > 0 and cfg.method != "gaussian" and len(starts) > 1
    if warm and world > 1 and share_pool is None:
        raise ValueError("synthesize_set: warm_start with world > 1 needs share_pool (a broadcast from rank 0)")
    mine = [b for b in range(len(starts)) if b % world == rank]
    if cfg.method == "generator":
        return generated_set(teacher, target_stats, targets, starts, mine, cfg, bounds, input_shape, seed, device)

    def make(b: int, init=None, iterations=None) -> BatchResult:
        gen = batch_generator(seed, b)
        batch_targets = targets[starts[b] : starts[b] + cfg.batch_size].clamp_min(0)
        if init is not None:
            init = init(batch_targets, gen)
        return invert_batch(teacher, batch_targets, target_stats, cfg, bounds, input_shape, gen, device, init, iterations, batch=b)

    first = None  # batch 0's result when it was made early as the warm-start pool
    if warm:
        if rank == 0:
            first = make(0)
            pool = first.images
        else:
            pool = torch.empty((min(cfg.batch_size, cfg.n_images), *input_shape))
        pool = share_pool(pool) if share_pool is not None else pool
        pool_targets = targets[: len(pool)].clamp_min(0)
    images, results = [], []
    bar = tqdm(mine, desc=f"synthesize ({cfg.method}{f', shard {rank}/{world}' if world > 1 else ''})", unit="batch")
    for b in bar:
        if b == 0 and first is not None:
            res = first
        elif warm and b > 0:
            res = make(b, lambda t, g: warm_init(pool, pool_targets, t, cfg.warm_start, g), cfg.warm_iterations or cfg.iterations)
        else:
            res = make(b)
        images.append(res.images)
        results.append(res)
    mine_targets = torch.cat([targets[starts[b] : starts[b] + cfg.batch_size] for b in mine]) if mine else targets[:0]
    return (torch.cat(images) if images else torch.empty((0, *input_shape))), mine_targets, results


def student_aware_images(
    teacher: nn.Module,
    student: nn.Module,
    running: dict,
    num_classes: int,
    input_shape: tuple[int, int, int],
    bounds,
    cfg,
    n_images: int,
    first_target: int,
    competition: float,
    temperature: float,
    seed: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[BatchResult]]:
    """``n_images`` new images (and their targets) against the current ``student`` (one round of Adaptive DeepInversion during KD).

    ``cfg`` is the synthesize section the transfer set was made with: its objective, iterations, batch size and
    augmentation, from noise (its warm start and the generator are not used: ``generator`` sets are extended with the
    DeepInversion objective the generator optimizes), plus ``competition`` x ``competition_loss`` at ``temperature``.
    Targets continue the class-balanced cycle at ``first_target`` (the pool's size), so pool and new images stay
    balanced. Batch ``b`` draws from ``batch_generator(seed, b)``: the same seed, student and teacher give the same
    images. The student is put in eval mode and its weights are frozen for the round, then restored.
    """
    if cfg.method == "gaussian":
        raise StageError("distill.adaptive_rounds > 0 needs an optimized synthetic set; data/synthetic was made with method gaussian")
    if cfg.method == "generator":
        cfg = cfg.model_copy(update={"method": "deepinversion"})
    teacher.eval().requires_grad_(False)
    was_training, grads = student.training, [p.requires_grad for p in student.parameters()]
    student.eval().requires_grad_(False)
    target_stats = with_input_target(running, input_shape[0])
    targets = balanced_targets(first_target + n_images, num_classes)[first_target:]
    images, results = [], []
    try:
        for b, start in enumerate(tqdm(range(0, n_images, cfg.batch_size), desc="student-aware synthesis", unit="batch")):
            res = invert_batch(
                teacher,
                targets[start : start + cfg.batch_size],
                target_stats,
                cfg,
                bounds,
                input_shape,
                batch_generator(seed, b),
                device,
                batch=b,
                student=student,
                competition=competition,
                temperature=temperature,
            )
            images.append(res.images)
            results.append(res)
    finally:
        student.train(was_training)
        for p, g in zip(student.parameters(), grads):
            p.requires_grad_(g)
    return torch.cat(images), targets, results
