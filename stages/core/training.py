"""Supervised training and accuracy measurement on in-memory tensors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .imageops import random_cutout, random_shift_flip
from .precision import autocast


def minibatches(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Index tensors covering range(n); shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device, progress: str | None = None) -> torch.Tensor:
    """Logits (float32, CPU) of ``model`` in eval mode for normalized inputs ``x``; ``progress`` names a tqdm bar over the batches."""
    model.eval()
    out = []
    batches = minibatches(len(x), batch_size)
    if progress:
        batches = tqdm(batches, desc=progress, total=math.ceil(len(x) / batch_size), unit="batch", leave=False)
    for idx in batches:
        xb = x[idx].to(device).contiguous(memory_format=torch.channels_last)
        out.append(model(xb).float().cpu())
    return torch.cat(out)


def match_rate(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Exact fraction of positions where ``pred == target`` (accuracy, agreement)."""
    return int((pred == target).sum()) / len(target)


def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device, progress: str | None = None
) -> float:
    return match_rate(predict(model, x, batch_size, device, progress).argmax(1), y)


def cosine_lambda(total_steps: int):
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a training checkpoint whole (temp file, then rename): a kill mid-write leaves the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint at ``path`` if it belongs to this run (same ``key``: params, data and code), else None.
    Tensors and plain containers only (``weights_only=True``): a checkpoint cannot run code."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: start over rather than fail (it is only a cache)
        print(f"resume: ignoring unreadable checkpoint {path} ({type(e).__name__})", flush=True)
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


def train_classifier(
    model, x, y, cfg, device, seed: int, eval_fn=None, precision: str = "fp32", checkpoint: Path | None = None, key: str = ""
) -> list[dict]:
    """SGD + Nesterov momentum with cosine decay and per-sample shift/flip (+ cutout) augmentation.

    ``x`` are normalized float images on CPU, ``y`` int64 labels; ``precision`` is a resolved precision
    (``fp32`` or ``bf16`` autocast, see ``precision.resolve``). Returns one history row per epoch;
    ``eval_fn(model)`` (optional) adds the ``val_acc`` column (accuracy on the held-out validation split).

    ``checkpoint``: after every epoch the whole training state (weights, optimizer, schedule, the augmentation RNG,
    history) is saved there under ``key``; a later call with the same key resumes after the last saved epoch and
    ends with the same weights, bit for bit, as an uninterrupted run (at the same thread count).
    """
    gen = torch.Generator().manual_seed(seed)
    model.to(device).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
    )
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(steps))
    history, start = [], 1
    saved = load_checkpoint(checkpoint, key) if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        history, start = list(saved["history"]), int(saved["epoch"]) + 1
        print(f"resume: epochs 1-{start - 1} of {cfg.epochs} from {checkpoint}", flush=True)
    for epoch in range(start, cfg.epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(list(minibatches(len(x), cfg.batch_size, gen)), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch")
        for idx in bar:
            xb = random_shift_flip(x[idx], cfg.max_shift, cfg.flip, gen)
            if cfg.cutout > 0:  # drawn after shift/flip, so cutout 0 leaves the RNG stream (and the weights) unchanged
                xb = random_cutout(xb, cfg.cutout, gen)
            xb = xb.to(device).contiguous(memory_format=torch.channels_last)
            yb = y[idx].to(device)
            with autocast(precision, device):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen}
        if eval_fn is not None:
            row["val_acc"] = eval_fn(model)
        history.append(row)
        print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        if checkpoint is not None and epoch < cfg.epochs:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
            save_checkpoint(checkpoint, {**state, "generator": gen.get_state(), "history": history, "epoch": epoch, "key": key})
    return history
