"""Image tensor operations shared by all stages: normalization, valid pixel range, augmentation.

The one augmentation module. ``random_shift_flip`` (per-sample random shift and
horizontal flip) serves teacher training, synthesis (DeepInversion's jitter/flip) and
distillation; ``augment_copies`` adds the in-batch augmentation of synthesis ("Augment
your batch", used by "The Knowledge Within"): every image duplicated, each copy with its
own random crop-resize, shift, flip and cutout. All of it is differentiable, so the
gradients of a synthesis loss flow back to the images. Randomness comes from an explicit
``torch.Generator`` so that every stage is deterministic per seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def random_resized_crop(x: torch.Tensor, min_area: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random square crop covering an area fraction in [min_area, 1], resized back (bilinear)."""
    n = len(x)
    side = torch.sqrt(min_area + (1.0 - min_area) * torch.rand(n, generator=generator))
    shift = (2 * torch.rand(n, 2, generator=generator) - 1) * (1 - side)[:, None]  # crop stays inside the image
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_cutout(x: torch.Tensor, size: float, generator: torch.Generator) -> torch.Tensor:
    """Zero (= the data mean in normalized space) one random square of side ``size`` x height per image."""
    n, _, h, w = x.shape
    k = max(1, round(size * h))
    cy = torch.randint(0, h, (n, 1, 1), generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    top, left = cy - k // 2, cx - k // 2  # a k x k square centred at (cy, cx), clipped at the border
    hole = (ys >= top) & (ys < top + k) & (xs >= left) & (xs < left + k)
    return x * (~hole).unsqueeze(1).to(x.device, x.dtype)


def augment_copies(
    x: torch.Tensor,
    duplicates: int,
    generator: torch.Generator,
    *,
    max_shift: int = 0,
    flip: bool = False,
    crop_min_area: float = 1.0,
    cutout: float = 0.0,
) -> torch.Tensor:
    """``duplicates`` randomly augmented copies of every image, stacked copy-major: (duplicates * B, C, H, W).

    Copy ``k`` of image ``i`` is row ``k * B + i``. A loss averaged over the rows therefore gives each
    image the mean of its copies' gradients. With duplicates 1, no crop and no cutout this is
    ``random_shift_flip``.
    """
    xa = x.repeat(duplicates, 1, 1, 1) if duplicates > 1 else x
    if crop_min_area < 1.0:
        xa = random_resized_crop(xa, crop_min_area, generator)
    xa = random_shift_flip(xa, max_shift, flip, generator)
    if cutout > 0:
        xa = random_cutout(xa, cutout, generator)
    return xa


def smoothing_prior(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """MSE(x, gaussian_blur(x)): small for smooth, natural-looking images ("The Knowledge Within")."""
    from torchvision.transforms.v2.functional import gaussian_blur

    k = 2 * math.ceil(2 * sigma) + 1
    return F.mse_loss(x, gaussian_blur(x, [k, k], [sigma, sigma]))
