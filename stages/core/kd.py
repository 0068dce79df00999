"""Knowledge distillation of a (pruned) student from the teacher on a transfer set.

Loss: Hinton et al.'s KL(p_teacher^T || p_student^T) * T^2 on temperature-softened
outputs. The teacher is queried online on the same (augmented) batch the student
sees. BatchNorm handling is a choice the ablation measures:
``freeze_bn`` keeps the student's BN layers in eval mode (running statistics fixed,
affine parameters still trained, as in arXiv 2511.20702); otherwise they run in train
mode and re-estimate their statistics on the synthetic images. ``recalibrate_bn``
first re-estimates the running statistics on the transfer set (no weight update).

Options of "The Knowledge Within": ``iq_beta`` > 0 adds the intermediate-feature ("IQ")
loss, beta * mean over ``iq_layers`` of smooth-L1(student features, teacher features) at the
outputs of the named modules; ``mixup_alpha`` > 0 mixes each batch with a shuffled copy of
itself (lambda ~ Beta(alpha, alpha)) before both networks see it - the teacher labels the
mixed image, its outputs are not mixed. ``cutmix_alpha`` > 0 pastes one box of a shuffled copy
into every image instead (CutMix); with both on, each batch takes one of the two.

Several processes (``ctx.world`` > 1, torchrun): the student runs under DistributedDataParallel
and every rank takes the rows ``rank::world`` of each batch, drawn and augmented identically on
all ranks from the same generator, so the global batch, the averaged gradient and the schedule
are those of one process (the student's train-mode BN normalizes each rank's part separately).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from .imageops import random_shift_flip
from .runtime import StageError
from .training import cosine_lambda, minibatches


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, rows: int | None = None) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2 summed over the rows given and divided by ``rows`` (default: their count,
    i.e. the batch mean). Data-parallel ranks pass the global batch size, so that the ranks' losses add up to the
    global batch mean whatever share of the batch each rank holds."""
    t = temperature
    total = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="sum",
        log_target=True,
    ) * (t * t)
    return total / (len(student_logits) if rows is None else rows)


class FeatureTap:
    """Context manager: ``self.features[name]`` = output of each named module during a forward."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            blocks = sorted(k for k in modules if k and "." not in k)
            raise StageError(f"distill.iq_layers: no module named {missing} in the model; top-level blocks: {blocks}")
        self.modules = [(n, modules[n]) for n in names]
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> FeatureTap:
        for name, module in self.modules:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name):
        def hook(_m, _inputs, output):
            self.features[name] = output

        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def iq_loss(student_features: dict, teacher_features: dict, rows: int | None = None) -> torch.Tensor:
    """Mean over layers of smooth-L1 between student and teacher features (shapes must match): per layer the sum over
    the rows given divided by ``rows`` x the elements of one row (default ``rows``: their count, i.e. the mean)."""
    terms = []
    for name, t in teacher_features.items():
        s = student_features[name]
        if s.shape != t.shape:
            raise StageError(f"distill.iq_layers: {name} has shape {tuple(s.shape)} in the student, {tuple(t.shape)} in the teacher")
        per_row = t[0].numel() if len(t) else 1
        n = (len(t) if rows is None else rows) * per_row
        terms.append(F.smooth_l1_loss(s.float(), t.float(), reduction="sum") / n)
    return torch.stack(terms).mean()


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, float, torch.Tensor]:
    """In-batch MixUp: returns (lam * x + (1 - lam) * x[perm], lam, perm), one lam ~ Beta(alpha, alpha) per batch.

    The draw comes from ``generator`` (via a numpy Generator seeded from it), so runs are deterministic.
    """
    rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=generator)))
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator)
    return lam * x + (1 - lam) * x[perm], lam, perm


def cutmix_box(h: int, w: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """CutMix's box (Yun et al. 2019, ``rand_bbox``) in an h x w image: sides ``int(h * sqrt(1 - lam))`` and
    ``int(w * sqrt(1 - lam))`` (rounded down to even), centred on pixel (cy, cx), clipped at the border; returns
    (y0, y1, x0, x1), the rows y0:y1 and columns x0:x1. Its area is at most 1 - lam of the image (less where clipped)."""
    side = math.sqrt(1.0 - min(max(lam, 0.0), 1.0))
    dh, dw = int(h * side) // 2, int(w * side) // 2
    return max(cy - dh, 0), min(cy + dh, h), max(cx - dw, 0), min(cx + dw, w)


def cutmix(x: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, float, torch.Tensor]:
    """In-batch CutMix for distillation: one box (``cutmix_box``, lam ~ Beta(alpha, alpha), centre uniform over the
    pixels), the same for the whole batch, of every image is replaced by that box of ``x[perm]`` (an image paired with
    itself, as always in a batch of 1, stays as it is). Returns (mixed, share of each image kept, perm). The teacher
    labels the mixed image, so no label mixing is needed; draws come from ``generator``, so runs are deterministic.
    """
    rng = np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=generator)))
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator)
    h, w = x.shape[-2:]
    y0, y1, x0, x1 = cutmix_box(h, w, lam, int(rng.integers(h)), int(rng.integers(w)))
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1][perm]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (h * w), perm


def mix_batch(x: torch.Tensor, mixup_alpha: float, cutmix_alpha: float, generator: torch.Generator) -> torch.Tensor:
    """The batch after in-batch MixUp or CutMix (each off at alpha 0); with both on, each batch takes one of the two
    with equal chance (as timm's Mixup with switch_prob 0.5)."""
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or bool(torch.rand((), generator=generator) < 0.5))
    if use_cutmix:
        return cutmix(x, cutmix_alpha, generator)[0]
    return mixup(x, mixup_alpha, generator)[0] if mixup_alpha > 0 else x


def set_bn_train(model: nn.Module, train: bool) -> None:
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.train(train)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Replace BN running statistics by their exact average over ``x`` (weights untouched)."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.eval()
    set_bn_train(model, True)
    for idx in minibatches(len(x), batch_size):
        model(x[idx].to(device).contiguous(memory_format=torch.channels_last))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def round_epochs(epochs: int, rounds: int) -> list[int]:
    """The epochs before which the student-aware rounds run: ``rounds`` evenly inside ``epochs``
    (160 epochs, 3 rounds: before epochs 41, 81 and 121); KD runs ``epochs`` / (rounds + 1) epochs on each pool."""
    return [1 + (r * epochs) // (rounds + 1) for r in range(1, rounds + 1)]


class PoolBatches:
    """Minibatch indices drawn from a pool that may grow: passes over shuffled permutations of the current pool (the
    last batch of a pass may be short); ``grow`` drops the rest of the pass and the next batch starts a pass over the
    larger pool. Without growth this is ``minibatches(n, batch_size, generator)`` repeated, draw for draw."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._pass = iter(())

    def grow(self, n: int) -> None:
        self.n, self._pass = n, iter(())

    def next(self) -> torch.Tensor:
        idx = next(self._pass, None)
        if idx is None:
            self._pass = minibatches(self.n, self.batch_size, self.generator)
            idx = next(self._pass)
        return idx


def distill(
    student: nn.Module, teacher: nn.Module, x: torch.Tensor, cfg, device: torch.device, seed: int, ctx=None, grow=None
) -> list[dict]:
    """Train ``student`` to match ``teacher`` on transfer images ``x`` (normalized, CPU). Returns per-epoch rows.

    ``ctx`` (a ``distributed.Context``) with world > 1: data-parallel over its processes.

    ``grow(round, student)`` (with ``cfg.adaptive_rounds`` > 0) returns ``cfg.adaptive_images`` new images made against
    the current student; they join the pool before the epochs of ``round_epochs``. Every epoch has as many steps as
    one pass over the final pool (len(x) + rounds x adaptive_images), so the KD budget (steps, schedule) is that of a
    fixed set of the final size; batches are passes over the pool as it is (``PoolBatches``).
    """
    rank, world = (ctx.rank, ctx.world) if ctx is not None else (0, 1)
    gen = torch.Generator().manual_seed(seed)
    teacher.eval().requires_grad_(False)
    if cfg.recalibrate_bn:
        recalibrate_bn(student, x, cfg.batch_size, device)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    rounds = round_epochs(cfg.epochs, cfg.adaptive_rounds) if cfg.adaptive_rounds > 0 else []
    if rounds and grow is None:
        raise ValueError("distill: adaptive_rounds > 0 needs grow (the student-aware synthesis)")
    steps_per_epoch = math.ceil((len(x) + len(rounds) * cfg.adaptive_images) / cfg.batch_size)
    steps = cfg.epochs * steps_per_epoch
    pool = PoolBatches(len(x), cfg.batch_size, gen)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps) if cfg.schedule == "cosine" else (lambda _: 1.0))
    iq_layers = [n.strip() for n in cfg.iq_layers.split(",") if n.strip()] if cfg.iq_beta > 0 else []
    model = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
        # 1x1 convolutions in channels_last report size-1 strides that differ from the bucket's: harmless, not a copy
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    history, step = [], 0
    with FeatureTap(teacher, iq_layers) as t_tap, FeatureTap(student, iq_layers) as s_tap:
        for epoch in tqdm(range(1, cfg.epochs + 1), desc="distill", unit="epoch"):
            while rounds and rounds[0] == epoch:
                x = torch.cat([x, grow(cfg.adaptive_rounds - len(rounds), student)])
                rounds.pop(0)
                pool.grow(len(x))
            student.train()
            set_bn_train(student, not cfg.freeze_bn)
            sums, agree, seen = {"kd_loss": 0.0, "iq_loss": 0.0}, 0, 0
            for batch in range(steps_per_epoch):
                idx = pool.next()
                step += 1
                xb = random_shift_flip(x[idx], cfg.max_shift, cfg.flip, gen)
                xb = mix_batch(xb, cfg.mixup_alpha, cfg.cutmix_alpha, gen)
                rows = len(xb)  # the global batch: every rank normalizes by it, so a short or empty share weighs its rows only
                xb = xb[rank::world].to(device).contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    t_logits = teacher(xb)
                s_logits = model(xb)
                # a rank whose part of a short last batch is empty still joins the gradient all-reduce, with loss 0
                kd = kd_loss(s_logits, t_logits, cfg.temperature, rows) if len(xb) else s_logits.sum() * 0.0
                iq = iq_loss(s_tap.features, t_tap.features, rows) if iq_layers and len(xb) else torch.zeros((), device=kd.device)
                loss = kd + cfg.iq_beta * iq
                if not torch.isfinite(loss):
                    raise StageError(
                        f"distill: non-finite loss ({loss.item()}) in epoch {epoch}, batch {batch}, step {step}: lower distill.lr "
                        f"(now {cfg.lr}); with distill.freeze_bn = true the pruned student is less stable"
                    )
                opt.zero_grad(set_to_none=True)
                # DistributedDataParallel averages the ranks' gradients; the rank losses already sum to the batch mean
                (loss * world).backward()
                opt.step()
                sched.step()
                sums["kd_loss"] += float(kd.detach()) * rows
                sums["iq_loss"] += float(iq.detach()) * rows
                agree += int((s_logits.argmax(1) == t_logits.argmax(1)).sum())
                seen += len(xb)
            if world > 1:
                sums["kd_loss"], sums["iq_loss"], agree, seen = ctx.all_sum([sums["kd_loss"], sums["iq_loss"], agree, seen])
            history.append(
                {
                    "epoch": epoch,
                    **{k: v / seen for k, v in sums.items()},
                    "teacher_agreement": agree / seen,
                    "lr": sched.get_last_lr()[0],
                    **({"pool": len(x)} if cfg.adaptive_rounds > 0 else {}),
                }
            )
    student.eval()
    return history
