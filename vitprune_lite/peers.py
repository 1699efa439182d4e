"""A real peer: the ``torch-pruning`` library pruning whole heads and MLP channels.

``torch-pruning`` (PyPI, Fang et al., "DepGraph", CVPR 2023) traces the model's dependency
graph and removes coupled channels itself; its importance criteria (group magnitude, group
Taylor) score the groups. Here it prunes the same timm ViT to the same parameter budget as the
project's own criteria:

- whole heads (``prune_num_heads``; head dimensions stay), the same count in every block;
- MLP hidden channels, the same fraction in every block;
- the residual width, the patch embedding and the classifier are left alone (their layers are
  ignored), so the comparison is with head/channel pruning only.

A budget is a TAP-ViTs pair ``(mlp_keep, attn_keep)``. Heads come in steps of ``1/H``, so the
head count is rounded and the MLP keep ratio is adjusted to keep the block-parameter fraction
``(8 m + 4 a) / 12`` of the pair.

torch-pruning slices the Linear layers but leaves timm's ``num_heads``, ``head_dim`` and
``attn_dim`` stale (timm 1.0.31's reshape then fails); :func:`torch_pruning_prune` sets them on
every attention module afterwards.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import importance, vit

from timm.layers import Mlp  # noqa: E402  (after the package's torchvision shim)
from timm.layers.attention import Attention

__all__ = ["torch_pruning_prune", "fix_attention_attrs", "IMPORTANCES"]

IMPORTANCES = ("magnitude", "taylor")


def _target(budget: importance.Budget, heads: int) -> tuple[int, float]:
    """Kept heads per block and the MLP keep ratio that holds the budget's parameter fraction."""
    m, a = budget
    frac = budget.block_param_fraction
    k_heads = max(1, min(heads, int(round(a * heads))))
    m_adj = (12 * frac - 4 * k_heads / heads) / 8
    if not 0 < m_adj <= 1:
        raise ValueError(f"budget {budget} with {k_heads}/{heads} heads would need an MLP keep "
                         f"ratio of {m_adj:.3f}; choose a budget reachable with whole heads")
    return k_heads, m_adj


def fix_attention_attrs(model: nn.Module, num_heads: dict[nn.Module, int]) -> None:
    """Set ``num_heads``, ``head_dim`` and ``attn_dim`` of every attention from its sliced
    ``qkv`` (``num_heads``: torch-pruning's record, qkv Linear -> heads left)."""
    for b in model.blocks:
        attn = b.attn
        h = int(num_heads.get(attn.qkv, attn.num_heads))
        out = attn.qkv.out_features
        if out % (3 * h):
            raise RuntimeError(f"qkv has {out} outputs, not divisible into q, k, v of {h} heads")
        attn.num_heads = h
        attn.head_dim = out // (3 * h)
        attn.attn_dim = h * attn.head_dim


def torch_pruning_prune(
    model: nn.Module,
    budget: tuple[float, float],
    *,
    importance_kind: str = "magnitude",
    example_inputs: Optional[Tensor] = None,
    x: Optional[Tensor] = None,
    y: Optional[Tensor] = None,
    batch_size: int = 64,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a deep copy of ``model`` with torch-pruning to a TAP-ViTs budget.

    Args:
        model: timm VisionTransformer (unpruned; the original is not modified).
        budget: ``(mlp_keep, attn_keep)`` in (0, 1].
        importance_kind: ``"magnitude"`` (group L2 magnitude) or ``"taylor"`` (group first-order
            Taylor; needs ``x`` and ``y`` for the loss gradients).
        example_inputs: one input for tracing, e.g. ``[1, 3, H, W]`` (default: zeros of the
            model's image size).
        x, y: images ``[N, 3, H, W]`` and int64 labels ``[N]`` for Taylor.
        batch_size: images per backward pass (Taylor).

    Returns:
        ``(pruned model in eval mode, info)``; info holds heads kept per block, MLP keep ratio
        used, parameters before/after and seconds taken.
    """
    import torch_pruning as tp

    blocks = vit.require_vit(model, "peers.torch_pruning_prune", mlp=(Mlp,))
    if importance_kind not in IMPORTANCES:
        raise ValueError(f"importance_kind must be one of {IMPORTANCES}, got {importance_kind!r}")
    if any(type(b.attn) is not Attention for b in blocks):
        raise ValueError("torch_pruning_prune needs an unpruned timm model (plain Attention)")
    heads = {b.attn.num_heads for b in blocks}
    if len(heads) != 1:
        raise ValueError(f"blocks have different head counts {sorted(heads)}; need one")
    (H,) = heads
    k_heads, m_adj = _target(importance.check_budget(budget), H)
    if importance_kind == "taylor":
        if x is None or y is None:
            raise ValueError("importance_kind='taylor' needs images x [N, 3, H, W] and labels y [N]")
        importance._check_images(x)
        if not isinstance(y, Tensor) or y.shape != (len(x),):
            raise ValueError(f"y must be int64 labels [{len(x)}]")
    size = model.patch_embed.img_size
    if example_inputs is None:
        example_inputs = torch.zeros(1, 3, *size, device=next(model.parameters()).device)

    t0 = time.perf_counter()
    pruned = copy.deepcopy(model).eval()
    before = sum(p.numel() for p in pruned.parameters())
    ignored = [pruned.head, pruned.patch_embed.proj]
    ignored += [b.attn.proj for b in pruned.blocks] + [b.mlp.fc2 for b in pruned.blocks]
    num_heads = {b.attn.qkv: b.attn.num_heads for b in pruned.blocks}
    # cls_token / pos_embed follow the residual width, which is not pruned here.
    # (a list of pairs, whatever the library's type hint says)
    unwrapped = [(p, p.dim() - 1) for p in (pruned.cls_token, pruned.pos_embed)
                 if isinstance(p, nn.Parameter)]
    imp = (tp.importance.GroupMagnitudeImportance(p=2) if importance_kind == "magnitude"
           else tp.importance.GroupTaylorImportance())
    # head_pruning_ratio -> ceil(ratio * H) heads removed; stay just below the exact ratio.
    head_ratio = max(0.0, (H - k_heads) / H - 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruner = tp.pruner.MetaPruner(
            pruned, example_inputs, importance=imp, pruning_ratio=1 - m_adj,
            ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
            prune_head_dims=False, head_pruning_ratio=head_ratio, unwrapped_parameters=unwrapped,
        )
        if importance_kind == "taylor":
            pruned.zero_grad(set_to_none=True)
            for s in range(0, len(x), batch_size):
                loss = F.cross_entropy(pruned(x[s:s + batch_size]), y[s:s + batch_size],
                                       reduction="sum") / len(x)
                loss.backward()
        pruner.step()
    pruned.zero_grad(set_to_none=True)
    fix_attention_attrs(pruned, pruner.num_heads)
    seconds = time.perf_counter() - t0
    info = {
        "importance": importance_kind,
        "budget": list(budget),
        "heads_kept": [b.attn.num_heads for b in pruned.blocks],
        "mlp_kept": [b.mlp.fc1.out_features for b in pruned.blocks],
        "mlp_keep_used": m_adj,
        "params_before": before,
        "params_after": sum(p.numel() for p in pruned.parameters()),
        "seconds": seconds,
    }
    return pruned.eval(), info
