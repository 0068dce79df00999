"""How close is a data set to the teacher's training data? The BNS divergence J_KL as a measure.

``jkl_table`` scores named data sets with ``bn.j_kl`` and divides by the score of a
reference set (the real training split in the evaluate stage), as in Table 4 of "The
Knowledge Within". The reference data sets it is compared with - Gaussian and uniform
noise, and an FGSM-perturbed copy of real data - are made here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .bn import j_kl
from .imageops import pixel_bounds


def noise_sets(n: int, input_shape, mean, std, seed: int) -> dict[str, torch.Tensor]:
    """Gaussian noise with the input normalization's mean/std and uniform noise over the valid pixel range (normalized)."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    uniform = torch.rand((n, *input_shape), generator=gen)
    return {"gaussian_noise": torch.randn((n, *input_shape), generator=gen), "uniform_noise": (uniform - m) / s}


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, mean, std, batch_size: int, device) -> torch.Tensor:
    """One-step FGSM copy of ``x`` (normalized): pixels move by ``eps`` (in [0, 1] pixel units) along sign(dCE/dx)."""
    model.eval()
    lo, hi = (b.to(device) for b in pixel_bounds(mean, std))
    step = eps / torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc="FGSM copy of the test split", unit="batch", leave=False):
        xb = x[i : i + batch_size].to(device).requires_grad_(True)
        loss = F.cross_entropy(model(xb), y[i : i + batch_size].to(device))
        (grad,) = torch.autograd.grad(loss, xb)
        out.append(torch.max(torch.min(xb.detach() + step * grad.sign(), hi), lo).cpu())
    return torch.cat(out)


def jkl_table(model: nn.Module, sets: dict[str, torch.Tensor], reference: str, batch_size: int, device) -> list[dict]:
    """One row per data set: images, J_KL and J_KL relative to ``sets[reference]``."""
    scores = {name: j_kl(model, x, batch_size, device, progress=f"J_KL: {name}") for name, x in sets.items()}
    ref = scores[reference]
    return [{"dataset": k, "images": len(sets[k]), "j_kl": scores[k], "relative_to_" + reference: scores[k] / ref} for k in sets]
