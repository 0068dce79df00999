"""Image tensor operations shared by all stages: normalization, valid pixel range, augmentation.

The per-sample random shift and horizontal flip below is one differentiable
implementation that serves teacher training, synthesis (DeepInversion's jitter/flip,
gradients flow back to the images) and distillation. Randomness comes
from an explicit ``torch.Generator`` so that every stage is deterministic per seed.
"""

from __future__ import annotations

import torch


def random_shift_flip(x: torch.Tensor, max_shift: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer offset in [-max_shift, max_shift]^2 (zero fill), flip half of them.

    Zero is the fill value, i.e. the dataset mean in normalized space.
    """
    n, _, h, w = x.shape
    if max_shift > 0:
        dx = torch.randint(-max_shift, max_shift + 1, (n, 1), generator=generator)
        dy = torch.randint(-max_shift, max_shift + 1, (n, 1), generator=generator)
        pad = torch.nn.functional.pad(x, (max_shift,) * 4)
        # Per-sample crop of the padded batch by advanced indexing: rows (n, h) and cols (n, w).
        rows = (torch.arange(h) + max_shift - dy).to(x.device)
        cols = (torch.arange(w) + max_shift - dx).to(x.device)
        idx_n = torch.arange(n, device=x.device)[:, None, None]
        x = pad.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def normalize(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images -> float32 in the model's normalized input space."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images_u8.float() / 255.0 - m) / s


def pixel_bounds(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (lo, hi) of valid pixels [0, 1] in normalized space, shaped (1, C, 1, 1)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (0.0 - m) / s, (1.0 - m) / s
