"""Small plotting helpers shared by the notebooks (matplotlib; one figure per call)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def image_grid(images: np.ndarray, ncols: int, titles: Sequence[str] | None = None,
               row_labels: Sequence[str] | None = None, scale: float = 1.0, suptitle: str | None = None):
    """A grid of uint8 ``[N, H, W, 3]`` images; returns the matplotlib figure.

    Args:
        images: the images, filled row by row.
        ncols: images per row.
        titles: one small title per image (optional).
        row_labels: one label per row, written left of the row (optional).
        scale: figure size multiplier.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.0 * scale, nrows * 1.05 * scale), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7, pad=2)
    if row_labels is not None:
        for r, label in enumerate(row_labels[:nrows]):
            axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(pad=0.3)
    return fig


def annotate_env(ax, env: dict) -> None:
    """Write the measurement context (threads, device, versions) in an axis corner."""
    text = f"{env.get('device', '?')}, {env.get('threads', '?')} threads, torch {env.get('torch', '?')}"
    ax.text(0.99, 0.01, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="0.4")
