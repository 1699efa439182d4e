"""Explanatory diagrams for the notebooks (matplotlib; drawn, not measured; one figure per call).

- :func:`device_cloud_flow`: TAP-ViTs' exchange between a device and the cloud (notebook 01).
- :func:`qk_vo_coupling`: ToaSt's coupled query/key and value/output dimensions inside one head,
  with the ``qkv`` and ``proj`` weight shapes before and after surgery (notebook 02).
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidValueError

_DEVICE, _CLOUD, _LINK = "#dbe9f6", "#fde9d4", "#2b6aa6"


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, size: float = 9.0) -> None:
    """A rounded box with its lower-left corner at ``(x, y)`` (axis units) and centred text."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=color, edgecolor="#555555", linewidth=1.0))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, wrap=False)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str = "#444444",
           width: float = 1.3, rad: float = 0.0) -> None:
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=color, lw=width, mutation_scale=14,
                                connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))


def device_cloud_flow():
    """TAP-ViTs' flow: the device uploads a Gaussian mixture, never images; the cloud returns a model.

    Device: private images -> frozen features -> mixture fit (K by BIC) -> upload of the mixture's
    weights, means and covariances. Cloud: public pool scored by the mixture -> metric and
    fine-tune sets -> importance scoring -> surgery and recovery -> the device's pruned model,
    sent back.

    Returns:
        The matplotlib figure (about 11 x 6 inches).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 6.2)
    ax.axis("off")
    # The two sides, as shaded panels.
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((0.1, 0.1), 3.8, 5.6, facecolor="#f3f8fc", edgecolor="#9bbbd8", linestyle="--"))
    ax.add_patch(Rectangle((5.3, 0.1), 5.6, 5.6, facecolor="#fff8f0", edgecolor="#e0b48a", linestyle="--"))
    ax.text(2.0, 5.9, "device (private data stays here)", ha="center", fontsize=11, weight="bold")
    ax.text(8.1, 5.9, "cloud (dense ViT + labelled public pool)", ha="center", fontsize=11, weight="bold")

    w = 3.2
    dev = [(4.55, "private training images\n(never uploaded)"),
           (3.35, "frozen feature extractor\n(the same one as the cloud's)"),
           (2.15, "fit a Gaussian mixture\nK chosen by the lowest BIC"),
           (0.45, "runs its pruned model\non its own data")]
    for y, text in dev:
        _box(ax, 0.4, y, w, 0.85, text, _DEVICE)
    for (y0, _), (y1, _) in zip(dev[:2], dev[1:3]):
        _arrow(ax, (2.0, y0), (2.0, y1 + 0.85))

    cw, cx = 4.6, 5.8
    cloud = [(4.55, "public pool: embed every image\nwith the same extractor"),
             (3.35, "score each by its likelihood under the upload\nmetric set (top 640), fine-tune set (top 6,400)"),
             (2.15, "importance scoring on the metric set\n(composite HSIC score, KL layer ratios)"),
             (0.95, "surgery to the device's budget\n+ recovery on the fine-tune set")]
    for y, text in cloud:
        _box(ax, cx, y, cw, 0.85, text, _CLOUD)
    for (y0, _), (y1, _) in zip(cloud[:-1], cloud[1:]):
        _arrow(ax, (cx + cw / 2, y0), (cx + cw / 2, y1 + 0.85))

    # Upload: the mixture only.
    _arrow(ax, (0.4 + w, 2.6), (cx, 3.75), color=_LINK, width=2.2)
    ax.text(4.55, 2.55, "upload: mixture only\nweights, means, covariances\n(a few kB, no images)",
            ha="center", va="top", fontsize=8.5, color=_LINK)
    # Download: one pruned model per device and budget.
    _arrow(ax, (cx, 1.35), (0.4 + w, 0.85), color=_LINK, width=2.2)
    ax.text(4.6, 1.38, "per-device pruned model", ha="center", va="bottom", fontsize=8.5, color=_LINK)
    fig.tight_layout()
    return fig


def qk_vo_coupling(num_heads: int = 4, head_dim: int = 32, width: int = 128, keep: int = 13, seed: int = 0):
    """ToaSt's coupled pruning inside one head, with the weight shapes before and after surgery.

    Query dim ``d`` is kept or removed together with key dim ``d`` (rows of ``[Q | K]``), value
    dim ``d`` together with column ``d`` of the output projection (rows of ``[V | O^T]``); the two
    pairs choose their ``keep`` dims independently. Every head keeps ``keep`` dims, so ``qkv``
    goes from ``[3 H D, C]`` to ``[3 H keep, C]`` and ``proj`` from ``[C, H D]`` to ``[C, H keep]``.
    The kept rows drawn are an illustration (a seeded draw), not scores of a model.

    Args:
        num_heads: H; head_dim: D; width: C, the token width (defaults: the v1 base model).
        keep: dims kept per head, in [1, head_dim] (default: 13, block 1 of the v1 base model at
            half of all head dims with block 0 dense).
        seed: seed of the illustrative kept rows.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    for name, v in (("num_heads", num_heads), ("head_dim", head_dim), ("width", width)):
        if int(v) < 1:
            raise InvalidValueError(f"qk_vo_coupling: {name} = {v!r}; accepted a positive integer")
    if not 1 <= keep <= head_dim:
        raise InvalidValueError(f"qk_vo_coupling: keep = {keep!r}; accepted 1..head_dim = {head_dim}")
    rng = np.random.default_rng(seed)
    kept = {pair: set(rng.choice(head_dim, keep, replace=False).tolist()) for pair in ("qk", "vo")}
    span, row = 32.0, 32.0 / head_dim  # the stack of rows is always drawn 32 units tall

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6))
    panels = (("qk", ("Q", "K"), "query dim d and key dim d\nare removed together",
               "#3f7fbf"),
              ("vo", ("V", "O^T"), "value dim d and proj column d\nare removed together", "#c8642a"))
    for ax, (pair, names, note, color) in zip(axes, panels):
        ax.set_xlim(-1.6, 10.0)
        ax.set_ylim(-3.0, span + 8.0)
        ax.axis("off")
        for d in range(head_dim):
            y = (head_dim - 1 - d) * row
            on = d in kept[pair]
            for x0 in (0.0, 5.0):
                ax.add_patch(Rectangle((x0, y), 4.6, 0.9 * row, facecolor=color if on else "#dddddd",
                                       edgecolor="white", linewidth=0.4))
        for x0, n in zip((0.0, 5.0), names):
            ax.text(x0 + 2.3, span + 0.6, f"{n} rows of head h\n[{head_dim}, {width}]", ha="center",
                    va="bottom", fontsize=9)
        ax.text(-0.4, span / 2, f"dim d = 0..{head_dim - 1}", rotation=90, ha="right", va="center", fontsize=9)
        ax.text(4.8, span + 4.6, f"[{names[0]} | {names[1]}]: {note}", ha="center", va="bottom", fontsize=10)
        ax.text(4.8, -1.2, f"coloured: the {keep} kept dims, grey: removed\n(the same rows on both sides)",
                ha="center", va="top", fontsize=8.5)
    H, D, C, k = num_heads, head_dim, width, keep
    fig.text(0.5, 0.02, f"every one of the {H} heads keeps {k} of {D} dims, so the layer re-packs densely:\n"
             f"qkv.weight [{3 * H * D}, {C}] -> [{3 * H * k}, {C}]     proj.weight [{C}, {H * D}] -> [{C}, {H * k}]",
             ha="center", fontsize=9.5, weight="bold")
    fig.suptitle("ToaSt: coupled dimensions inside one attention head", fontsize=12)
    return fig
