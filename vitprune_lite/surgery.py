"""Physically remove heads, head dimensions and channels from timm ViT blocks.

Every pruning method in the project only *scores* units; this module is the one place where
the chosen units are cut out. The result is a smaller dense model (no masks, no gates), so
FLOPs, parameters and latency really fall. Surgery is applied in place and returns the model.

Units, per block ``model.blocks[i]`` (timm ``Attention`` + ``Mlp``):

- heads:            whole attention heads (q, k and v rows, proj input columns);
- q/k dimensions:   per-head query/key dimensions, removed from Q and K together;
- v/o dimensions:   per-head value dimensions, removed from V rows and the proj input columns;
- MLP channels:     hidden units (fc1 rows and bias, fc2 columns);
- embed channels:   the residual width of the whole model (:func:`prune_embed`).

After head or dimension surgery a block's attention becomes :class:`SlimAttention`, which keeps
the *original* softmax scale, so for heads, dims and MLP channels the pruned model computes
exactly what the zero-masked model (:func:`mask_model`) computes, up to float rounding.

Index conventions: ``keep`` arguments are indices of units to keep, into the *current* units
(list, numpy array or LongTensor). They are sorted before use, so kept units keep their order.
Everything is validated before the model is touched; a bad request changes nothing.
"""
from __future__ import annotations

import copy
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import Mlp
from timm.layers.attention import Attention, maybe_add_mask, resolve_self_attn_mask

from . import vit
from .errors import UnsupportedModelError

__all__ = [
    "SlimAttention", "prune_heads", "prune_head_dims", "prune_mlp", "prune_embed",
    "apply_plan", "mask_model", "keep_top", "block_widths",
]

Index = Union[Sequence[int], Sequence[Sequence[int]], np.ndarray, torch.Tensor]
_PLAN_KEYS = ("heads", "qk", "vo", "mlp")


class SlimAttention(Attention):
    """timm ``Attention`` whose per-head query/key width and value width may differ.

    ``qkv`` stays one fused Linear with output rows ``[q (H*qk_dim) | k (H*qk_dim) | v (H*v_dim)]``,
    each part head-major; ``proj`` takes ``H*v_dim`` inputs. ``scale`` is carried over from the
    unpruned module (``head_dim_original ** -0.5``): SDPA's default would be ``qk_dim ** -0.5``
    and change every logit. ``head_dim`` and ``attn_dim`` follow the value width, as timm's
    reshape and other tools expect.
    """

    def __init__(self, src: Attention, num_heads: int, qk_dim: int, v_dim: int) -> None:
        # Attention.__init__ is skipped on purpose: it would allocate fresh full-size weights.
        # The (already sliced) submodules of `src` are adopted instead.
        nn.Module.__init__(self)
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.head_dim = v_dim
        self.attn_dim = num_heads * v_dim
        self.scale = src.scale
        self.fused_attn = src.fused_attn
        self.qkv, self.q_norm, self.k_norm = src.qkv, src.q_norm, src.k_norm
        self.attn_drop, self.norm, self.gate = src.attn_drop, src.norm, None
        self.proj, self.proj_drop = src.proj, src.proj_drop
        self.train(src.training)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        """x: [B, N, C] -> [B, N, C_out]; attn_mask broadcastable to [B, H, N, N]."""
        B, N, _ = x.shape
        H, dq, dv = self.num_heads, self.qk_dim, self.v_dim
        q, k, v = self.qkv(x).split([H * dq, H * dq, H * dv], dim=-1)
        q = q.reshape(B, N, H, dq).transpose(1, 2)  # [B, H, N, dq]
        k = k.reshape(B, N, H, dq).transpose(1, 2)
        v = v.reshape(B, N, H, dv).transpose(1, 2)  # [B, H, N, dv]
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                dropout_p=self.attn_drop.p if self.training else 0.,
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, qk_dim={self.qk_dim}, v_dim={self.v_dim}, "
                f"scale={self.scale:.4g}")


# ----------------------------------------------------------------------------- validation

def _as_index(keep: Index, n: int, what: str, rows: Optional[int] = None) -> torch.Tensor:
    """Checked, sorted LongTensor of kept indices into range(n): [k], or [rows, k] if rows."""
    shape = "[k]" if rows is None else f"[{rows}, k] (one row per head, same k for every head)"
    per_row = isinstance(keep, (list, tuple)) and len(keep) > 0 and not np.isscalar(keep[0])
    try:
        parts = [torch.as_tensor(r) for r in keep] if per_row else [torch.as_tensor(keep)]
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what}: cannot read {keep!r} as indices ({e}); "
                         f"expected integers, shape {shape}") from None
    if len({p.shape for p in parts}) > 1:
        raise ValueError(f"{what}: heads keep different counts {[p.numel() for p in parts]}; "
                         f"every head must keep the same number, shape {shape}")
    t = torch.stack(parts) if per_row else parts[0]
    if t.numel() == 0:
        raise ValueError(f"{what}: keeps nothing; removing every unit is not supported, "
                         "keep at least 1")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{what}: indices must be integers, got dtype {t.dtype}")
    if t.dim() != (1 if rows is None else 2) or (rows is not None and t.shape[0] != rows):
        raise ValueError(f"{what}: got shape {list(t.shape)}, expected {shape}")
    t = t.long().sort(dim=-1).values
    if t.min() < 0 or t.max() >= n:
        raise ValueError(f"{what}: index out of range (min {t.min().item()}, "
                         f"max {t.max().item()}); accepted 0..{n - 1}")
    if (t[..., 1:] == t[..., :-1]).any():
        raise ValueError(f"{what}: duplicated indices; each unit may be kept once")
    return t


def _blocks(model: nn.Module, where: str, stages: bool = False) -> Sequence[nn.Module]:
    # A bare stack of blocks is enough for block surgery (importance prunes a lone block copy).
    return vit.require_vit(model, where, attention=(Attention, SlimAttention), stages=stages)


def _block(blocks: Sequence[nn.Module], i) -> nn.Module:
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise ValueError(f"block index must be an int, got {i!r}")
    if not 0 <= i < len(blocks):
        raise ValueError(f"block index {i} out of range; accepted 0..{len(blocks) - 1}")
    return blocks[int(i)]


def _attn(block: nn.Module, i: int) -> Attention:
    attn = block.attn
    if attn.gate is not None:
        raise ValueError(f"block {i}: gated attention (attn.gate) is not supported; "
                         "use an ungated model")
    return attn


def _mlp(block: nn.Module, i: int) -> Mlp:
    mlp = block.mlp
    if type(mlp) is not Mlp or not isinstance(mlp.fc1, nn.Linear):
        raise UnsupportedModelError(f"block {i}: MLP is {type(mlp).__name__}; surgery supports plain "
                                    "timm.layers.Mlp with Linear layers (not GLU/SwiGLU/gated or conv MLPs)")
    return mlp


def _check_entry(blocks: Sequence[nn.Module], i, entry: Mapping) -> dict[str, torch.Tensor]:
    """Validate one plan entry against block i; returns the normalised keep tensors."""
    if not isinstance(entry, Mapping) or set(entry) - set(_PLAN_KEYS):
        raise ValueError(f"plan entry for block {i} must be a dict with keys among {_PLAN_KEYS}, "
                         f"got {entry!r}")
    block, out = _block(blocks, i), {}
    if any(entry.get(key) is not None for key in ("heads", "qk", "vo")):
        attn = _attn(block, i)
        H, dq, dv = vit.head_geometry(attn)
        changes_width = entry.get("heads") is not None or entry.get("vo") is not None
        if changes_width and not isinstance(attn.norm, nn.Identity):
            raise ValueError(f"block {i}: attn.norm (scale_attn_norm) normalises over all heads' "
                             "outputs, so removing heads or v dims would change it; not supported")
        if entry.get("heads") is not None:
            out["heads"] = _as_index(entry["heads"], H, f"block {i} heads")
            H = len(out["heads"])  # q/k and v/o rows refer to the heads that remain
        if entry.get("qk") is not None:
            if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
                raise ValueError(f"block {i}: q/k dimensions cannot be removed when q_norm/k_norm "
                                 "(qk_norm=True) normalise over them; prune heads or v dims "
                                 "instead")
            out["qk"] = _as_index(entry["qk"], dq, f"block {i} qk dims", rows=H)
        if entry.get("vo") is not None:
            out["vo"] = _as_index(entry["vo"], dv, f"block {i} vo dims", rows=H)
    if entry.get("mlp") is not None:
        mlp = _mlp(block, i)
        out["mlp"] = _as_index(entry["mlp"], mlp.fc1.out_features, f"block {i} mlp channels")
    return out


def _check_plan(model: nn.Module, plan: Mapping, where: str) -> dict[int, dict[str, torch.Tensor]]:
    blocks = _blocks(model, where)
    if not isinstance(plan, Mapping):
        raise TypeError(f"plan must be a dict {{block index: {{'heads'|'qk'|'vo'|'mlp': keep}}}}, "
                        f"got {type(plan).__name__}")
    checked = {}
    for i, entry in plan.items():
        keep = _check_entry(blocks, i, entry)  # validates i before it is used as a key
        checked[int(i)] = keep
    return checked


# ----------------------------------------------------------------------------- surgery

@torch.no_grad()
def _slice_linear(lin: nn.Linear, rows: Optional[torch.Tensor] = None,
                  cols: Optional[torch.Tensor] = None) -> None:
    """Keep only the given output rows / input columns of a Linear, in place."""
    w = lin.weight
    if rows is not None:
        rows = rows.to(w.device)
        w = w.index_select(0, rows)
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.index_select(0, rows), lin.bias.requires_grad)
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    lin.weight = nn.Parameter(w, lin.weight.requires_grad)
    lin.out_features, lin.in_features = w.shape


def _kept_rows(attn: Attention,
               keep: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat kept rows of qkv [q | k | v] and kept columns of proj for a block's plan."""
    H, dq, dv = vit.head_geometry(attn)
    heads = keep.get("heads", torch.arange(H))
    qk = keep.get("qk", torch.arange(dq).expand(len(heads), dq))
    vo = keep.get("vo", torch.arange(dv).expand(len(heads), dv))
    q_rows = (heads[:, None] * dq + qk).flatten()
    v_cols = (heads[:, None] * dv + vo).flatten()
    return torch.cat([q_rows, H * dq + q_rows, 2 * H * dq + v_cols]), v_cols


def _apply_entry(block: nn.Module, keep: Mapping[str, torch.Tensor]) -> None:
    if any(key in keep for key in ("heads", "qk", "vo")):
        attn = block.attn
        H, dq, dv = vit.head_geometry(attn)
        rows, cols = _kept_rows(attn, keep)
        _slice_linear(attn.qkv, rows=rows)
        _slice_linear(attn.proj, cols=cols)
        new_h = len(keep["heads"]) if "heads" in keep else H
        new_dq = keep["qk"].shape[1] if "qk" in keep else dq
        new_dv = keep["vo"].shape[1] if "vo" in keep else dv
        block.attn = SlimAttention(attn, new_h, new_dq, new_dv)
    if "mlp" in keep:
        mlp = block.mlp
        _slice_linear(mlp.fc1, rows=keep["mlp"])
        _slice_linear(mlp.fc2, cols=keep["mlp"])
        _slice_norm(mlp.norm, keep["mlp"])  # scale_mlp_norm: not mask-equivalent (see prune_embed)


def apply_plan(model: nn.Module, plan: Mapping[int, Mapping[str, Index]]) -> nn.Module:
    """Apply a whole pruning plan in place; nothing is modified if any entry is invalid.

    Args:
        model: timm VisionTransformer (blocks of timm ``Attention`` + ``Mlp``).
        plan: ``{block: {"heads": [k_h], "qk": [H', k_qk], "vo": [H', k_v], "mlp": [k_m]}}``,
            every key optional (``None`` = unchanged). ``"heads"`` index the block's current
            heads and are applied first; rows of ``"qk"``/``"vo"`` then refer to the H' heads
            that remain (H' = k_h, or the current count if no heads are removed).

    Returns:
        The same model, smaller.
    """
    for i, keep in _check_plan(model, plan, "surgery.apply_plan").items():
        _apply_entry(model.blocks[i], keep)
    return model


def prune_heads(model: nn.Module, block: int, keep: Index) -> nn.Module:
    """Keep only heads ``keep`` ([k], indices into the block's current heads), in place."""
    return apply_plan(model, {block: {"heads": keep}})


def prune_head_dims(model: nn.Module, block: int, qk_keep: Optional[Index] = None,
                    vo_keep: Optional[Index] = None) -> nn.Module:
    """Keep per-head dimensions, in place (ToaSt-style coupled pruning).

    Args:
        qk_keep: [H, k_qk] dims kept in both Q and K of each head; None = unchanged.
        vo_keep: [H, k_v] dims kept in V and the matching proj input columns; None = unchanged.
            k_qk and k_v may differ; each is the same for every head.
    """
    return apply_plan(model, {block: {"qk": qk_keep, "vo": vo_keep}})


def prune_mlp(model: nn.Module, block: int, keep: Index) -> nn.Module:
    """Keep MLP hidden channels ``keep`` ([k]): fc1 rows and bias, fc2 columns, mlp.norm."""
    return apply_plan(model, {block: {"mlp": keep}})


@torch.no_grad()
def mask_model(model: nn.Module, plan: Mapping[int, Mapping[str, Index]]) -> nn.Module:
    """Zero-masked reference of ``plan`` on a deep copy: same architecture, removed units zeroed.

    Removed q/k dims: q and k rows (and bias) zeroed. Removed v dims and removed heads: v rows
    (and bias) and proj input columns zeroed (a removed head's q/k rows too; its output is zero
    either way). Removed MLP channels: fc1 row and bias, fc2 column. ``apply_plan(model, plan)``
    then gives the same outputs as this model (unless ``scale_mlp_norm`` is used).
    """
    checked = _check_plan(model, plan, "surgery.mask_model")
    masked = copy.deepcopy(model)
    for i, keep in checked.items():
        block = masked.blocks[i]
        if any(key in keep for key in ("heads", "qk", "vo")):
            attn = block.attn
            rows, cols = _kept_rows(attn, keep)
            drop_rows = torch.ones(attn.qkv.out_features, dtype=torch.bool, device=rows.device)
            drop_rows[rows] = False
            drop_cols = torch.ones(attn.proj.in_features, dtype=torch.bool, device=cols.device)
            drop_cols[cols] = False
            attn.qkv.weight[drop_rows] = 0
            if attn.qkv.bias is not None:
                attn.qkv.bias[drop_rows] = 0
            attn.proj.weight[:, drop_cols] = 0
        if "mlp" in keep:
            mlp = block.mlp
            drop = torch.ones(mlp.fc1.out_features, dtype=torch.bool, device=keep["mlp"].device)
            drop[keep["mlp"]] = False
            mlp.fc1.weight[drop] = 0
            if mlp.fc1.bias is not None:
                mlp.fc1.bias[drop] = 0
            mlp.fc2.weight[:, drop] = 0
    return masked


# ----------------------------------------------------------------------------- embedding width

def _check_norm(norm: Optional[nn.Module], width: int, where: str) -> None:
    if norm is None or isinstance(norm, nn.Identity):
        return
    if tuple(getattr(norm, "normalized_shape", ())) != (width,):
        raise UnsupportedModelError(f"{where}: {type(norm).__name__} is not a LayerNorm-like norm over "
                                    f"{width} channels; cannot slice it")


@torch.no_grad()
def _slice_norm(norm: Optional[nn.Module], idx: torch.Tensor) -> None:
    if norm is None or isinstance(norm, nn.Identity):
        return
    for name in ("weight", "bias"):
        p = getattr(norm, name, None)
        if p is not None:
            setattr(norm, name, nn.Parameter(p.index_select(0, idx.to(p.device)), p.requires_grad))
    norm.normalized_shape = (len(idx),)


@torch.no_grad()
def prune_embed(model: nn.Module, keep: Index) -> nn.Module:
    """Keep embedding (residual) channels ``keep`` ([k]) across the whole model, in place.

    Sliced: patch_embed.proj outputs (and its norm), cls/reg/dist tokens, pos_embed, norm_pre,
    every norm1/norm2, qkv input columns, proj output rows, ls1/ls2 gamma, fc1 input columns,
    fc2 output rows, the final norm / fc_norm and the head input columns. ``embed_dim``,
    ``num_features`` and ``head_hidden_size`` are updated.

    NOT equivalent to zero-masking those channels: every LayerNorm then takes its mean and
    variance over the kept channels only, so outputs change even for "unused" channels. Expect
    to fine-tune afterwards.
    """
    blocks = _blocks(model, "surgery.prune_embed", stages=True)
    C = getattr(model, "embed_dim", None)
    proj = getattr(model.patch_embed, "proj", None)
    if not isinstance(C, int) or not isinstance(proj, nn.Conv2d):
        raise UnsupportedModelError(f"prune_embed: {type(model).__name__} has embed_dim {C!r} and patch_embed.proj "
                                    f"{type(proj).__name__}; accepted: an int .embed_dim and a Conv2d patch "
                                    "projection (a timm VisionTransformer)")
    if getattr(model, "attn_pool", None) is not None:
        raise UnsupportedModelError("prune_embed: attention pooling heads (global_pool='map'/'prr') are not "
                                    "supported; use a model with token or average pooling")
    idx = _as_index(keep, C, "embed channels")
    norms = [(getattr(model.patch_embed, "norm", None), "patch_embed.norm")]
    norms += [(getattr(model, n, None), n) for n in ("norm_pre", "norm", "fc_norm")]
    for i, block in enumerate(blocks):
        _attn(block, i)
        _mlp(block, i)
        norms += [(block.norm1, f"blocks.{i}.norm1"), (block.norm2, f"blocks.{i}.norm2")]
        for ls in ("ls1", "ls2"):
            scale = getattr(block, ls)
            if not isinstance(scale, nn.Identity) and not hasattr(scale, "gamma"):
                raise UnsupportedModelError(f"blocks.{i}.{ls}: expected LayerScale or Identity, "
                                            f"got {type(scale).__name__}")
    heads = [getattr(model, n, None) for n in ("head", "head_dist")]
    for head in heads:
        if head is not None and not isinstance(head, (nn.Linear, nn.Identity)):
            raise UnsupportedModelError(f"prune_embed: head {type(head).__name__} is not Linear or Identity")
    for norm, where in norms:
        _check_norm(norm, C, where)

    # Everything checked: from here on the model is modified.
    idx = idx.to(proj.weight.device)
    proj.weight = nn.Parameter(proj.weight.index_select(0, idx), proj.weight.requires_grad)
    if proj.bias is not None:
        proj.bias = nn.Parameter(proj.bias.index_select(0, idx), proj.bias.requires_grad)
    proj.out_channels = len(idx)
    for name in ("cls_token", "reg_token", "dist_token", "pos_embed"):
        p = getattr(model, name, None)
        if isinstance(p, nn.Parameter):
            setattr(model, name, nn.Parameter(p.index_select(-1, idx), p.requires_grad))
    for norm, _ in norms:
        _slice_norm(norm, idx)
    for block in blocks:
        _slice_linear(block.attn.qkv, cols=idx)
        _slice_linear(block.attn.proj, rows=idx)
        _slice_linear(block.mlp.fc1, cols=idx)
        _slice_linear(block.mlp.fc2, rows=idx)
        for ls in (block.ls1, block.ls2):
            if hasattr(ls, "gamma"):
                ls.gamma = nn.Parameter(ls.gamma.index_select(0, idx), ls.gamma.requires_grad)
    for head in heads:
        if isinstance(head, nn.Linear):
            _slice_linear(head, cols=idx)
    model.embed_dim = model.num_features = model.head_hidden_size = len(idx)
    for info in getattr(model, "feature_info", []):
        info["num_chs"] = len(idx)
    return model


# ----------------------------------------------------------------------------- helpers

def keep_top(scores: torch.Tensor, keep: Union[int, float], dim: int = -1) -> torch.Tensor:
    """Indices of the ``keep`` highest scores along ``dim``, sorted ascending.

    Args:
        scores: any shape, e.g. [H, head_dim] for per-head dimension scores.
        keep: a count (int, 1..n) or a ratio (float in (0, 1], rounded half up, at least 1).
        dim: the dimension to select along.

    Returns:
        LongTensor shaped like ``scores`` with ``dim`` reduced to the kept count. Ties go to
        the lower index, so the result is deterministic.
    """
    n = scores.shape[dim]
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise ValueError(f"keep must be an int count or a float ratio, got {keep!r}")
    if isinstance(keep, (float, np.floating)):
        if not 0 < keep <= 1:
            raise ValueError(f"keep ratio {keep} out of range; accepted (0, 1]")
        keep = max(1, int(np.floor(keep * n + 0.5)))
    if not 1 <= keep <= n:
        raise ValueError(f"keep count {keep} out of range; accepted 1..{n}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank them")
    order = torch.sort(scores, dim=dim, descending=True, stable=True).indices
    return order.narrow(dim, 0, int(keep)).sort(dim=dim).values


def block_widths(model: nn.Module) -> list[dict[str, Optional[int]]]:
    """Per block: ``heads``, ``qk_dim`` and ``v_dim`` (per head), ``mlp_hidden``."""
    rows = []
    for i, block in enumerate(_blocks(model, "surgery.block_widths")):
        H, dq, dv = vit.head_geometry(_attn(block, i))
        fc1 = getattr(block.mlp, "fc1", None)
        rows.append({"heads": H, "qk_dim": dq, "v_dim": dv,
                     "mlp_hidden": getattr(fc1, "out_features", None)})
    return rows
