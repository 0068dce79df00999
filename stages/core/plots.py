"""Matplotlib figures for the reports (headless backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def image_grid(images: torch.Tensor, labels: torch.Tensor, classes, mean, std, per_class: int, path: Path, title: str) -> None:
    """One row per class, ``per_class`` images each; ``images`` in normalized space."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    pix = (images.float() * s + m).clamp(0, 1)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95), squeeze=False)
    for c, name in enumerate(classes):
        idx = (labels == c).nonzero().flatten()[:per_class]
        for j in range(per_class):
            ax = axes[c][j]
            ax.axis("off")
            if j < len(idx):
                img = pix[idx[j]].permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
        axes[c][0].text(-2, pix.shape[2] / 2, name, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def curves(df, x: str, ys: list[str], path: Path, title: str, logy: bool = False) -> None:
    fig, axes = plt.subplots(1, len(ys), figsize=(3.2 * len(ys), 2.8), squeeze=False)
    for ax, y in zip(axes[0], ys):
        ax.plot(df[x], df[y])
        ax.set_xlabel(x)
        ax.set_title(y, fontsize=9)
        if logy and (df[y] > 0).all():
            ax.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bars(names: list[str], values: list[float], path: Path, title: str, label: str, horizontal: bool = False, logx: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1) if horizontal else (4.5, 3))
    if horizontal:
        ax.barh(names, values)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        if logx:
            ax.set_xscale("log")
        else:
            lo = 0.0 if min(values) < 0.5 * max(values) else min(values)
            ax.set_xlim(lo - 0.1 * (max(values) - lo + 1e-9), max(values) + 0.15 * (max(values) - lo + 1e-9))
    else:
        ax.bar(names, values)
        ax.set_ylabel(label)
    ax.set_title(title, fontsize=10)
    for i, v in enumerate(values):
        if horizontal:
            ax.text(v, i, f" {v:.4f}", va="center", fontsize=8)
        else:
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
