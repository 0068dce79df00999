"""Knowledge distillation of a (pruned) student from the teacher on a transfer set.

Loss: Hinton et al.'s KL(p_teacher^T || p_student^T) * T^2 on temperature-softened
outputs. The teacher is queried online on the same (augmented) batch the student
sees. BatchNorm handling is a choice the ablation measures:
``freeze_bn`` keeps the student's BN layers in eval mode (running statistics fixed,
affine parameters still trained, as in arXiv 2511.20702); otherwise they run in train
mode and re-estimate their statistics on the synthetic images. ``recalibrate_bn``
first re-estimates the running statistics on the transfer set (no weight update).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from .imageops import random_shift_flip
from .runtime import StageError
from .training import cosine_lambda, minibatches


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


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


def distill(student: nn.Module, teacher: nn.Module, x: torch.Tensor, cfg, device: torch.device, seed: int) -> list[dict]:
    """Train ``student`` to match ``teacher`` on transfer images ``x`` (normalized, CPU). Returns per-epoch rows."""
    gen = torch.Generator().manual_seed(seed)
    teacher.eval().requires_grad_(False)
    if cfg.recalibrate_bn:
        recalibrate_bn(student, x, cfg.batch_size, device)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps) if cfg.schedule == "cosine" else (lambda _: 1.0))
    history = []
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="distill", unit="epoch"):
        student.train()
        set_bn_train(student, not cfg.freeze_bn)
        loss_sum, agree, seen = 0.0, 0, 0
        for idx in minibatches(len(x), cfg.batch_size, gen):
            xb = random_shift_flip(x[idx], cfg.max_shift, cfg.flip, gen).to(device).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                t_logits = teacher(xb)
            s_logits = student(xb)
            loss = kd_loss(s_logits, t_logits, cfg.temperature)
            if not torch.isfinite(loss):
                raise StageError(
                    f"distillation diverged in epoch {epoch} (KD loss {loss.item()}): lower distill.lr "
                    f"(now {cfg.lr}); with distill.freeze_bn = true the pruned student is less stable"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            agree += int((s_logits.argmax(1) == t_logits.argmax(1)).sum())
            seen += len(idx)
        history.append({"epoch": epoch, "kd_loss": loss_sum / seen, "teacher_agreement": agree / seen, "lr": sched.get_last_lr()[0]})
    student.eval()
    return history
