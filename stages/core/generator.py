"""Generator-based synthesis (``synthesize.method: generator``): a small conditional generator trained against the
teacher, so that each batch needs a few steps instead of hundreds from noise.

The objective is DeepInversion's (``inversion.method_losses``: the BN term, CE on the target class, TV, l2), but the
variables are the weights of a generator G(z, y) instead of the pixels. As in Fast-Datafree (Fang et al., AAAI 2022),
one shared starting point is learned first and each batch starts from it:

1. warm-up: ``generator_warmup`` Adam steps on fresh (z, y) each step (batches of ``batch_size``, uniformly drawn
   targets) train G from its seeded initialization into a common starting point;
2. batch b: a copy of that starting point runs ``generator_steps`` Adam steps on batch b's own latent codes and
   targets, then emits its images (pixels clamped to the valid range).

Batch b depends only on (seed, b) and on the warm-up, which every process repeats identically, so torchrun shards
merge into exactly the set one process makes (at the same thread count). Compute: ``generator_warmup`` x
``batch_size`` image-steps once per process, plus ``generator_steps`` x the batch's images per batch; the synthesize
stage counts both in ``image_iterations``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .bn import BatchStatsHook
from .imageops import augment_copies
from .runtime import StageError


class ConditionalGenerator(nn.Module):
    """(z, class) -> an image inside the pixel bounds (normalized space). DCGAN-style: a linear layer to a
    (2 width, H/4, W/4) map, two (2x upsample, 3x3 conv, BN, LeakyReLU) blocks, a 3x3 conv to the image channels and a
    tanh mapped per channel onto [lo, hi]; sizes that do not divide by 4 are resized at the end."""

    def __init__(self, nz: int, num_classes: int, shape: tuple[int, int, int], width: int, bounds):
        super().__init__()
        c, h, w = shape
        self.nz, self.shape = nz, (c, h, w)
        self.h0, self.w0 = math.ceil(h / 4), math.ceil(w / 4)
        self.embed = nn.Embedding(num_classes, nz)
        self.fc = nn.Linear(nz, 2 * width * self.h0 * self.w0)
        self.width = width
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, padding=1),
        )
        lo, hi = bounds
        self.register_buffer("lo", lo.reshape(1, -1, 1, 1).float().clone())
        self.register_buffer("hi", hi.reshape(1, -1, 1, 1).float().clone())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(z * self.embed(y)).view(len(z), 2 * self.width, self.h0, self.w0)
        x = self.body(h)
        if tuple(x.shape[2:]) != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        return self.lo + (torch.tanh(x) + 1) / 2 * (self.hi - self.lo)


def check_finite(terms: dict, where: str, advice: str) -> None:
    """One StageError naming the non-finite loss terms (``name = value``), ``where`` they arose and what to change."""
    bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
    if bad:
        values = ", ".join(f"{k} = {float(terms[k].detach())}" for k in bad)
        raise StageError(f"{where.split(':')[0]}: non-finite loss ({values}) in {where.split(': ', 1)[1]}: {advice}; nothing was written")


def build_generator(cfg, num_classes: int, shape, bounds, seed: int) -> ConditionalGenerator:
    """The generator with its weights drawn from ``seed`` alone (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConditionalGenerator(cfg.generator_nz, num_classes, tuple(shape), cfg.generator_width, bounds)


def train_steps(gen, teacher, z, y, cfg, steps: int, rng: torch.Generator, device, where: str, losses, autocast_factory):
    """``steps`` Adam steps of ``gen`` on latent codes ``z`` (or fresh codes each step when ``z`` is None) and targets
    ``y`` (or fresh uniformly drawn targets). Returns the loss rows. A non-finite loss stops with a StageError naming
    ``where`` and the step."""
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999))
    curve = []
    num_classes = gen.embed.num_embeddings
    for step in range(steps):
        zb = torch.randn((cfg.batch_size, cfg.generator_nz), generator=rng) if z is None else z
        yb = torch.randint(0, num_classes, (len(zb),), generator=rng) if y is None else y
        zb, yb = zb.to(device), yb.to(device)
        x = gen(zb, yb).contiguous(memory_format=torch.channels_last)
        xa = augment_copies(
            x, cfg.duplicates, rng, max_shift=cfg.max_shift, flip=cfg.flip, crop_min_area=cfg.crop_min_area, cutout=cfg.cutout
        )
        with BatchStatsHook(teacher) as hook, autocast_factory():
            logits = teacher(xa)
        terms = losses(x, xa, logits.float(), hook.stats, yb.repeat(cfg.duplicates))
        check_finite(terms, f"synthesize (generator): {where}, step {step}", f"lower synthesize.generator_lr (now {cfg.generator_lr})")
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        curve.append({k: float(v.detach()) for k, v in terms.items()})
    return curve


def generator_set(teacher, targets, starts, mine, cfg, bounds, shape, seed, device, losses, autocast_factory, batch_generator):
    """Images of the batches ``mine`` (indices into ``starts``) made by the warm-started generator; see the module
    docstring. Returns ``[(batch index, starting images, images, curve, warm-up image-steps charged to it, warm-up
    curve)]`` - the warm-up is charged to this process's first batch."""
    gen = build_generator(cfg, int(targets.max()) + 1, shape, bounds, seed).to(device).train()
    warm_rng = batch_generator(seed, -1)
    teacher.requires_grad_(False)
    warm_curve = []
    if cfg.generator_warmup:
        for chunk in tqdm(range(0, cfg.generator_warmup, 10), desc="generator warm-up", unit="10 steps"):
            steps = min(10, cfg.generator_warmup - chunk)
            warm_curve += train_steps(gen, teacher, None, None, cfg, steps, warm_rng, device, "the warm-up", losses, autocast_factory)
    start = copy.deepcopy(gen.state_dict())
    out = []
    for i, b in enumerate(tqdm(mine, desc="synthesize (generator)", unit="batch")):
        rng = batch_generator(seed, b)
        yb = targets[starts[b] : starts[b] + cfg.batch_size].clamp_min(0)
        zb = torch.randn((len(yb), cfg.generator_nz), generator=rng)
        gen.load_state_dict(start)
        with torch.no_grad():
            initial = gen(zb.to(device), yb.to(device)).float().cpu()
        where = f"batch {b}"
        curve = train_steps(gen, teacher, zb, yb, cfg, cfg.generator_steps, rng, device, where, losses, autocast_factory)
        with torch.no_grad():
            images = gen(zb.to(device), yb.to(device)).clamp(gen.lo, gen.hi).float().cpu()
        if not torch.isfinite(images).all():
            raise StageError(f"synthesize (generator): non-finite pixels in batch {b}; nothing was written")
        out.append((b, initial, images, curve, cfg.generator_warmup * cfg.batch_size if i == 0 else 0, warm_curve if i == 0 else []))
    return out
