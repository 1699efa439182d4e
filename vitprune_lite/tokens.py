"""Token reduction inside timm ViTs, applied in place: ToMe, Top-K, EViT and Pruning One More Token.

All four methods shorten the token sequence *inside* a block, after the attention residual and
before the MLP, so every later layer runs on fewer tokens. They differ only in how they choose:

- **ToMe** (Bolya et al., ICLR 2023): bipartite soft matching on the attention keys merges the
  ``r`` most similar pairs per block (size-weighted average); token sizes are tracked and
  ``log(size)`` is added to the attention logits (proportional attention). The bias is passed to
  ``scaled_dot_product_attention`` as an additive mask, so attention stays fused.
- **Top-K**: keep the patch tokens the CLS token attends to most (mean over heads), drop the rest.
- **EViT** (Liang et al., ICLR 2022): as Top-K, but the dropped tokens are fused into one token,
  their average weighted by the CLS attention.
- **POMT** (Pruning One More Token, WACV 2025): once, at one block; score = attention received
  (max over heads, summed over queries, CLS row and column excluded, divided by its maximum) +
  softmax over tokens of V summed over the head dimension (max over heads). CLS and the top
  tokens are kept; the rest are averaged into one fused token appended at the end.

Counting convention (one for every method): a *schedule* is the number of tokens each block
removes, so a block entering with ``N`` tokens hands ``N - schedule[i]`` to its MLP. ToMe removes
``r`` by merging ``r`` pairs; Top-K drops ``d``; EViT and POMT fuse ``d + 1`` tokens into one,
which also removes ``d``. POMT's ``R`` thus leaves exactly ``n* = N - R`` tokens (CLS and the
fused token included) from its block's MLP onwards, the count the latency curve was read at.

Prefix tokens (CLS, distillation or register tokens, ``model.num_prefix_tokens``) are never
merged, dropped or fused. A block whose schedule entry is 0 and that sees no token sizes runs
timm's own ``Block.forward`` untouched: ``r=0`` / ``R=0`` reproduce the unpatched model exactly
(LayerScale, q/k norms and the fused attention kernel included), at the cost of one Python call.

**Source tracking** (as ToMe's ``trace_source``): :func:`token_sources` runs one forward and
also returns, for every token leaving the last block, the input tokens it stands for (kept,
fused or merged into it). It replays each reduction on a 0/1 ``[B, N_now, N]`` map with the same
scores and partner choices; the tokens themselves are computed as without it, and a forward
that does not ask for it runs no extra code beyond one flag test per reducing block.

Also here: the random token pruning used for the latency curve and for POMT's accuracy proxy
(:class:`SubsetViT`, :func:`random_token_accuracy`) and POMT's choice of ``R`` from a latency
curve and an accuracy curve (:func:`choose_prune_count`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import paths, variants, vit  # noqa: F401  (paths: torchvision compat shim before timm)
from . import measure  # after paths, like every module that may import timm
from .errors import InvalidValueError, UnsupportedModelError

from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer

__all__ = [
    "patch_tome", "patch_topk", "patch_evit", "patch_pomt", "restore", "is_patched",
    "schedule_of", "token_flow", "tokens_per_block", "tome_schedule", "keep_rate_schedule",
    "default_pomt_layer", "evit_locations", "bipartite_merge", "pomt_scores", "token_sources", "SubsetViT",
    "random_token_accuracy", "token_count", "utility", "choose_prune_count", "reduced_copy",
    "fastest_within",
]

Schedule = Union[int, Sequence[int]]
_METHODS = ("tome", "topk", "evit", "pomt")


# ----------------------------------------------------------------------------- model checks

def _check_vit(model: Any, where: str) -> None:
    """A supported ViT whose classes token reduction can swap (it patches ``__class__`` in place)."""
    vit.require_vit(model, where)
    if type(model) not in (VisionTransformer, _ReducingViT):
        raise UnsupportedModelError(f"{where}: token reduction swaps the model's class in place and needs "
                                    f"timm's VisionTransformer itself, not the subclass {type(model).__name__}")
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (Block, _ReducingBlock):
            raise UnsupportedModelError(f"{where}: block {i} is {type(blk).__name__}; token reduction needs "
                                        "timm's own Block (restore any other patch first)")
    if model.attn_pool is not None:
        raise UnsupportedModelError(f"{where}: models with attention pooling are not supported: pooling "
                                    "must read the CLS token or average the tokens")


def _n_tokens(model: VisionTransformer) -> int:
    return int(model.num_prefix_tokens + model.patch_embed.num_patches)


def token_count(model: nn.Module) -> int:
    """Tokens entering the first block: prefix tokens (CLS, ...) plus patches, e.g. 197 for DeiT-S."""
    _check_vit(model, "tokens.token_count")
    return _n_tokens(model)


def _prefix(model: VisionTransformer) -> int:
    return int(model.num_prefix_tokens)


# ----------------------------------------------------------------------------- schedules

def _as_schedule(value: Schedule, depth: int, what: str) -> list[int]:
    """An int (same count in every block) or one non-negative int per block -> list of ints."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int or a list of {depth} ints, got a bool")
    if isinstance(value, (int, np.integer)):
        values = [int(value)] * depth
    else:
        try:
            values = [v for v in value]
        except TypeError:
            raise ValueError(f"{what} must be an int or a list of {depth} ints, "
                             f"got {type(value).__name__}") from None
        if len(values) != depth:
            raise ValueError(f"{what} has {len(values)} entries; the model has {depth} blocks, "
                             f"give one per block (or a single int)")
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
            raise ValueError(f"{what} entries must be ints, got {values}")
        values = [int(v) for v in values]
    if any(v < 0 for v in values):
        raise ValueError(f"{what} entries must be >= 0 (tokens removed per block), got {values}")
    return values


def tome_schedule(r: int, depth: int, kind: str = "constant") -> list[int]:
    """Per-block merge counts for ToMe.

    Args:
        r: tokens merged per block on average, >= 0.
        depth: number of blocks.
        kind: ``"constant"`` (``r`` in every block) or ``"decreasing"`` (linear from ``2r`` in the
            first block to 0 in the last, rounded, same total as constant within rounding).

    Returns:
        ``depth`` ints.
    """
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
        raise ValueError(f"r must be an int >= 0, got {r!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if kind == "constant":
        return [int(r)] * depth
    if kind == "decreasing":
        if depth == 1:
            return [int(r)]
        return [int(math.floor(2 * r * (depth - 1 - i) / (depth - 1) + 0.5)) for i in range(depth)]
    raise ValueError(f"kind must be 'constant' or 'decreasing', got {kind!r}")


def evit_locations(depth: int) -> list[int]:
    """Blocks where Top-K/EViT prune: a quarter, half and three quarters of the depth.

    Reproduces EViT's DeiT setting (blocks 3, 6, 9 of 12, 0-based) and scales it to other depths
    (``[1, 3, 4]`` for the 6-block base model).
    """
    if not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth must be an int >= 2, got {depth!r}")
    return sorted({max(1, depth * k // 4) for k in (1, 2, 3)})


def keep_rate_schedule(model: nn.Module, keep_rate: float,
                       locations: Optional[Sequence[int]] = None) -> list[int]:
    """Drop counts for Top-K/EViT: at each location keep ``ceil(keep_rate * patches)`` patch tokens.

    Args:
        model: the ViT (its token count and depth are read).
        keep_rate: fraction of patch tokens kept at each location, in (0, 1].
        locations: 0-based block indices (default :func:`evit_locations`).

    Returns:
        One drop count per block (0 outside the locations), as for :func:`patch_topk`.
    """
    _check_vit(model, "tokens.keep_rate_schedule")
    if isinstance(keep_rate, bool) or not (isinstance(keep_rate, (float, int)) and 0 < keep_rate <= 1):
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate!r}")
    depth = len(model.blocks)
    locs = evit_locations(depth) if locations is None else list(locations)
    if any(not isinstance(i, (int, np.integer)) or not 0 <= i < depth for i in locs):
        raise ValueError(f"locations must be block indices in 0..{depth - 1}, got {locs}")
    patches = _n_tokens(model) - _prefix(model)
    out = [0] * depth
    for i in range(depth):
        if i in locs:
            keep = max(1, math.ceil(keep_rate * patches))
            out[i] = patches - keep
            patches = keep
    return out


def default_pomt_layer(depth: int) -> int:
    """POMT's pruning block (0-based) at the paper's relative depth: a quarter, rounded half up.

    The paper prunes in the 4th block of 12 (index 3 = 12 / 4). For the 6-block base model this
    gives index 2 (the 3rd block): two full blocks of context before the attention that scores
    the tokens, and pruned tokens for the last 3.5 blocks.
    """
    if not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth must be an int >= 2, got {depth!r}")
    return min(depth - 1, max(1, int(math.floor(depth / 4 + 0.5))))


def token_flow(n_tokens: int, prefix: int, schedule: Sequence[int], method: str) -> list[int]:
    """Tokens reaching each block's MLP for a schedule, checking every entry is feasible.

    Args:
        n_tokens: tokens entering the first block (prefix included).
        prefix: prefix tokens (never removed).
        schedule: tokens removed per block.
        method: one of ``"tome"``, ``"topk"``, ``"evit"``, ``"pomt"`` (limits differ).

    Returns:
        Tokens at each block's MLP (= tokens entering the next block).

    Raises:
        ValueError: an entry removes more than the method can (ToMe: at most half of the
            non-prefix tokens; Top-K: all but one patch; EViT/POMT: all patches but the fused one).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    flow, n = [], int(n_tokens)
    for i, d in enumerate(schedule):
        patches = n - prefix
        limit = patches // 2 if method == "tome" else patches - 1
        if d > limit:
            what = {"tome": "half of the non-prefix tokens (ToMe merges pairs)",
                    "topk": "the patch tokens less one",
                    "evit": "the patch tokens less one (the fused token)",
                    "pomt": "the patch tokens less one (the fused token)"}[method]
            raise ValueError(f"block {i}: cannot remove {d} tokens from {n} ({patches} non-prefix); "
                             f"{method} can remove at most {limit}, {what}")
        n -= d
        flow.append(n)
    return flow


# ----------------------------------------------------------------------------- patched classes

@dataclass
class _Plan:
    """What one block does: method and tokens removed (0: nothing)."""

    method: Optional[str] = None
    remove: int = 0


class _State:
    """Per-forward state shared by a patched model's blocks (ToMe's token sizes, tracked sources)."""

    def __init__(self, method: str, proportional: bool, variant: str = "project") -> None:
        self.method = method
        self.proportional = proportional
        self.variant = variant  # "project" or "reference" (the authors' partition / score)
        self.size: Optional[Tensor] = None  # [B, N, 1] tokens merged into each token; None = all 1
        self.bias: Optional[Tensor] = None  # [B, 1, 1, N] log(size), the attention logit bias
        self.track = False  # set by token_sources only: replay every reduction on ``source``
        self.source: Optional[Tensor] = None  # [B, N_now, N] 0/1 input tokens per token; None = identity


class _ReducingViT(VisionTransformer):
    """A timm ``VisionTransformer`` whose blocks reduce tokens; resets token sizes per forward."""

    def forward_features(self, x: Tensor, attn_mask: Optional[Tensor] = None,
                         is_causal: bool = False) -> Tensor:
        self._tr_state.size = self._tr_state.bias = self._tr_state.source = None
        try:
            return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)
        finally:
            self._tr_state.size = self._tr_state.bias = None  # don't keep a batch's tensors alive


class _ReducingBlock(Block):
    """A timm ``Block`` that may shorten the sequence between attention and MLP."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        plan, state = self._tr_plan, self._tr_state
        if plan.remove == 0 and state.size is None:
            return Block.forward(self, x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise ValueError("token reduction cannot combine with attn_mask/is_causal: the mask "
                             "would not follow the merged tokens; restore(model) first")
        need = {None: None, "tome": "keys", "topk": "cls", "evit": "cls", "pomt": "full"}[
            plan.method if plan.remove else None]
        h, aux = _attend(self.attn, self.norm1(x), state.bias, need)
        x = x + self.drop_path1(self.ls1(h))
        if plan.remove:
            prefix = self._tr_prefix
            src = _source(state, x) if state.track else None
            if plan.method == "tome":
                x, state.size = bipartite_merge(x, aux, plan.remove, prefix, state.size, state.variant)
                if state.proportional:  # computed once per merge, used by every later block
                    state.bias = state.size.log().transpose(1, 2).unsqueeze(1)  # [B, 1, 1, N]
                if src is not None:  # the same pairs (same metric), unweighted: any share > 0 is a member
                    src = bipartite_merge(src, aux, plan.remove, prefix, None, state.variant)[0]
            else:
                if plan.method == "pomt":
                    score = pomt_scores(*aux, prefix=prefix, variant=state.variant)
                    fuse, drop_only = None, False
                else:
                    score = aux.mean(1)[:, prefix:]  # [B, N - prefix]: CLS attention, mean over heads
                    fuse, drop_only = (score if plan.method == "evit" else None), plan.method == "topk"
                x = _keep_and_fuse(x, score, plan.remove, prefix, fuse, drop_only=drop_only)
                if src is not None:  # the same order (same score); the fused row is the union
                    src = _keep_and_fuse(src, score, plan.remove, prefix, None, drop_only=drop_only)
            if src is not None:
                state.source = (src > 0).to(src.dtype)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _source(state: _State, x: Tensor) -> Tensor:
    """The tracked source map ``[B, N_now, N]`` before this block's reduction (identity at first)."""
    if state.source is not None:
        return state.source
    B, N, _ = x.shape  # no reduction yet: each token stands for itself
    return torch.eye(N, dtype=x.dtype, device=x.device).expand(B, N, N)


def _attend(attn: Attention, x: Tensor, bias: Optional[Tensor], need: Optional[str]):
    """Self-attention of a timm ``Attention`` (or surgery's ``SlimAttention``) with extras.

    Args:
        attn: the block's attention module (its weights, norms, scale and fused flag are used).
        x: normalised tokens ``[B, N, C]``.
        bias: additive logit bias ``[B, 1, 1, N]`` (ToMe's ``log(size)``) or None.
        need: ``None``; ``"keys"`` -> keys averaged over heads ``[B, N, Dqk]``; ``"cls"`` -> CLS
            attention probabilities ``[B, H, N]``; ``"full"`` -> (probabilities ``[B, H, N, N]``,
            values ``[B, H, N, Dv]``), computed explicitly.

    Returns:
        (output ``[B, N, C_out]``, extra or None).
    """
    B, N, _ = x.shape
    H, dq, dv = vit.head_geometry(attn)
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x)
    if dq == dv:  # timm's layout: one reshape and permute for all three (fewer ops than a split)
        q, k, v = qkv.reshape(B, N, 3, H, dq).permute(2, 0, 3, 1, 4).unbind(0)
    else:  # surgery's SlimAttention: [q (H*dq) | k (H*dq) | v (H*dv)]
        q, k, v = qkv.split([H * dq, H * dq, H * dv], dim=-1)
        q, k = q.reshape(B, N, H, dq).transpose(1, 2), k.reshape(B, N, H, dq).transpose(1, 2)
        v = v.reshape(B, N, H, dv).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)  # [B, H, N, Dqk]; v: [B, H, N, Dv]
    aux: Any = None
    if need == "full" or not attn.fused_attn:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(dim=-1)
        out = attn.attn_drop(probs) @ v
        if need == "full":
            aux = (probs, v)
        elif need == "cls":
            aux = probs[:, :, 0]
    else:
        # The bias rides in SDPA's additive mask, so proportional attention keeps the fused kernel.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, scale=attn.scale,
            dropout_p=attn.attn_drop.p if attn.training else 0.0)
        if need == "cls":
            logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # one query row: cheap
            if bias is not None:
                logits = logits + bias
            aux = logits.softmax(dim=-1)[:, :, 0]
    if need == "keys":
        aux = k.mean(dim=1)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, H * dv))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), aux


# ----------------------------------------------------------------------------- the reductions

def bipartite_merge(x: Tensor, metric: Tensor, r: int, prefix: int = 1,
                    size: Optional[Tensor] = None, variant: str = "project") -> tuple[Tensor, Tensor]:
    """ToMe's bipartite soft matching: merge the ``r`` most similar (A, B) pairs of tokens.

    Non-prefix tokens alternate between set A (even positions) and set B (odd). Each A token's
    most similar B token (cosine of ``metric``) is its match; the ``r`` A tokens with the best
    matches are averaged into their matches, weighted by size. Prefix tokens are untouched.

    ``variant="reference"`` follows ToMe's code (``tome/merge.py``, ``bipartite_soft_matching``
    with ``class_token=True``; one prefix token only): A and B alternate over the *whole*
    sequence, the class token at position 0 in A with its similarities set to ``-inf`` (never
    merged), and the result is the unmerged A tokens in their original order followed by every
    B token. The project's order (survivors in place) is also valid ToMe; the two differ only in
    which tokens are paired and in token order.

    Args:
        x: tokens ``[B, N, C]``.
        metric: similarity features ``[B, N, D]`` (ToMe: attention keys averaged over heads).
        r: pairs to merge, ``0 <= r <= (N - prefix) // 2``.
        prefix: leading tokens never merged (CLS, ...).
        size: tokens already merged into each token ``[B, N, 1]``; None means all ones.
        variant: ``"project"`` or ``"reference"`` (see above).

    Returns:
        (tokens ``[B, N - r, C]``, sizes ``[B, N - r, 1]``), surviving tokens in their original
        order (prefix first; reference: unmerged A, then B); the sum of ``size * x`` over tokens
        and the sum of sizes are preserved.
    """
    B, N, C = x.shape
    reference = variants.check(variant) == "reference"
    if not 0 <= r <= (N - prefix) // 2:
        raise ValueError(f"r must be in 0..{(N - prefix) // 2} (half of the {N - prefix} "
                         f"non-prefix tokens), got {r}")
    if reference and prefix != 1:
        raise ValueError(f"the reference ToMe partition protects exactly one class token; got "
                         f"prefix={prefix}")
    if r == 0:
        return x, x.new_ones(B, N, 1) if size is None else size
    w = torch.cat([x, x.new_ones(B, N, 1)] if size is None else [x * size, size], dim=-1)
    if reference:
        return _merge_reference(w, metric, r)
    m = metric[:, prefix:]
    m = m / m.norm(dim=-1, keepdim=True)
    sim = torch.bmm(m[:, 0::2], m[:, 1::2].transpose(1, 2))  # [B, Na, Nb] cosine, A = even, B = odd
    best, match = sim.max(dim=-1)  # [B, Na]
    src = best.topk(r, dim=-1).indices  # [B, r] the A tokens with the closest partners
    dst = match.gather(1, src)
    # Work on rows of the flattened [B * N, C] tensor with 1-D index ops (cheaper per call than
    # batched gathers), merging in place: survivors keep their order, so the prefix stays first.
    base = prefix if B == 1 else torch.arange(0, B * N, N, device=x.device).unsqueeze(1) + prefix
    src = (2 * src + base).flatten()
    dst = (2 * dst + (base + 1)).flatten()
    # Features and sizes travel together: [size * x | size], one index_add merges both.
    w = w.view(B * N, C + 1)  # a fresh tensor (from cat): safe to update in place
    w.index_add_(0, dst, w.index_select(0, src))
    keep = torch.ones(B * N, dtype=torch.bool, device=x.device).index_fill_(0, src, False)
    w = w.index_select(0, keep.nonzero().squeeze(1)).view(B, N - r, C + 1)
    size = w[..., C:]
    return w[..., :C] / size, size


def _merge_reference(w: Tensor, metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """ToMe's own partition and order on ``w = [size * x | size]`` ``[B, N, C + 1]`` (one class
    token at position 0): A = even positions (class token included, never matched), B = odd."""
    m = metric / metric.norm(dim=-1, keepdim=True)
    sim = m[:, 0::2] @ m[:, 1::2].transpose(1, 2)  # [B, Na, Nb]
    sim[:, 0, :] = -math.inf  # the class token is never a source
    best, match = sim.max(dim=-1)  # [B, Na]
    order = best.argsort(dim=-1, descending=True)
    src, unm = order[:, :r], order[:, r:].sort(dim=-1).values  # unmerged A in original order
    dst = match.gather(1, src)
    a, b = w[:, 0::2], w[:, 1::2]
    c = w.shape[-1]
    kept = a.gather(1, unm[..., None].expand(-1, -1, c))
    b = b.scatter_add(1, dst[..., None].expand(-1, -1, c), a.gather(1, src[..., None].expand(-1, -1, c)))
    out = torch.cat([kept, b], dim=1)
    size = out[..., c - 1:]
    return out[..., :c - 1] / size, size


def pomt_scores(probs: Tensor, v: Tensor, prefix: int = 1, variant: str = "project") -> Tensor:
    """POMT's importance of each non-prefix token.

    Args:
        probs: attention probabilities ``[B, H, N, N]`` (query, key).
        v: values ``[B, H, N, Dv]``.
        prefix: leading tokens (CLS, ...) excluded as queries and as keys.
        variant: ``"project"``: the value term is V summed over the head dimension, a softmax
            over the patch tokens, then the max over heads; ``"reference"``: as POMT's code
            (``pomt/timm_patch.py``, ``POMTMetric``): the max over heads of V, summed over the
            head dimension, a softmax over *all* tokens (prefix included), prefix dropped last.

    Returns:
        ``[B, N - prefix]``: attention received (max over heads, summed over queries, divided by
        the sample's maximum, so in [0, 1]) + the value term. Computed per sample in both
        variants: no statistic crosses the batch (POMT's code divides the attention term by the
        maximum over the whole batch).
    """
    reference = variants.check(variant) == "reference"
    received = probs[:, :, prefix:, prefix:].amax(dim=1).sum(dim=1)  # [B, P]
    received = received / received.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    if reference:
        energy = v.amax(dim=1).sum(dim=-1).softmax(dim=-1)[:, prefix:]  # [B, P]
    else:
        energy = v[:, :, prefix:].sum(dim=-1).softmax(dim=-1).amax(dim=1)  # [B, P]
    return received + energy


def _keep_and_fuse(x: Tensor, score: Tensor, remove: int, prefix: int,
                   weights: Optional[Tensor], drop_only: bool = False) -> Tensor:
    """Keep the top-scoring non-prefix tokens; drop the rest or fuse them into one appended token.

    Args:
        x: tokens ``[B, N, C]``.
        score: ``[B, N - prefix]``, higher is kept.
        remove: tokens the result is shorter by.
        prefix: leading tokens always kept.
        weights: ``[B, N - prefix]`` fusion weights (EViT: CLS attention) or None (plain mean).
        drop_only: drop ``remove`` tokens (Top-K) instead of fusing ``remove + 1`` into one.

    Returns:
        ``[B, N - remove, C]``: prefix, kept tokens (best first), then the fused token if any.
    """
    B, N, C = x.shape
    keep = N - prefix - remove - (0 if drop_only else 1)
    order = score.argsort(dim=-1, descending=True)
    patches = x[:, prefix:]
    kept = patches.gather(1, order[:, :keep, None].expand(-1, -1, C))
    parts = [x[:, :prefix], kept]
    if not drop_only:
        gone = patches.gather(1, order[:, keep:, None].expand(-1, -1, C))
        if weights is None:
            parts.append(gone.mean(dim=1, keepdim=True))
        else:
            w = weights.gather(1, order[:, keep:])[..., None]  # [B, remove + 1, 1]
            parts.append((gone * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1e-12))
    return torch.cat(parts, dim=1)


# ----------------------------------------------------------------------------- patch / restore

def is_patched(model: nn.Module) -> bool:
    """True if a token-reduction patch is applied to ``model``."""
    return isinstance(model, _ReducingViT)


def restore(model: nn.Module) -> nn.Module:
    """Undo any token-reduction patch in place (a no-op on an unpatched model); returns the model."""
    if not is_patched(model):
        return model
    for blk in model.blocks:
        blk.__class__ = Block
        for name in ("_tr_plan", "_tr_state", "_tr_prefix"):
            blk.__dict__.pop(name, None)
    model.__class__ = VisionTransformer
    model.__dict__.pop("_tr_state", None)
    model.__dict__.pop("_tr_method", None)
    return model


def _patch(model: nn.Module, method: str, schedule: list[int], proportional: bool,
           variant: str = "project") -> nn.Module:
    restore(model)
    state = _State(method, proportional, variant)
    prefix = _prefix(model)
    for blk, remove in zip(model.blocks, schedule):
        blk.__class__ = _ReducingBlock
        blk._tr_plan = _Plan(method if remove else None, remove)
        blk._tr_state = state
        blk._tr_prefix = prefix
    model.__class__ = _ReducingViT
    model._tr_state = state
    model._tr_method = method
    return model


def _prepare(model: nn.Module, method: str, schedule: Schedule, what: str) -> list[int]:
    """The checked schedule of a model already checked by the public patch function."""
    if _prefix(model) < 1:
        raise UnsupportedModelError("token reduction needs a CLS (prefix) token: the class-token-free "
                                    "model has no token that is guaranteed to survive")
    plan = _as_schedule(schedule, len(model.blocks), what)
    token_flow(_n_tokens(model), _prefix(model), plan, method)
    return plan


def patch_tome(model: nn.Module, r: Schedule, *, kind: str = "constant",
               proportional: bool = True, clip: bool = False, variant: str = "project") -> nn.Module:
    """Apply ToMe in place: merge ``r`` token pairs in every block; returns the model.

    Args:
        model: a timm ``VisionTransformer`` (replaces any earlier token patch).
        r: merges per block: an int (with ``kind``) or a list with one int per block.
        kind: for an int ``r``: ``"constant"`` or ``"decreasing"`` (see :func:`tome_schedule`).
        proportional: add ``log(size)`` to the attention logits (ToMe's proportional attention).
        clip: cap each block's r at half of its non-prefix tokens instead of refusing, as the
            published ToMe does silently (e.g. DeiT-S at r=16 merges only 10 in its last block).
        variant: ``"project"`` (A/B alternate over the patches, survivors keep their order) or
            ``"reference"`` (ToMe's partition and output order, see :func:`bipartite_merge`).

    Raises:
        ValueError: a block would merge more than half of its non-prefix tokens (unless
            ``clip``), or a negative r.
    """
    variants.check(variant)
    _check_vit(model, "tokens.patch_tome")
    if variant == "reference" and _prefix(model) != 1:
        raise ValueError("the reference ToMe partition protects exactly one class token; the model "
                         f"has {_prefix(model)} prefix tokens")
    if isinstance(r, (int, np.integer)) and not isinstance(r, bool):
        if r < 0:
            raise ValueError(f"r must be >= 0 (pairs merged per block), got {r}")
        r = tome_schedule(int(r), len(model.blocks), kind)
    if clip:
        plan, n, prefix = _as_schedule(r, len(model.blocks), "r"), _n_tokens(model), _prefix(model)
        r = []
        for d in plan:
            r.append(min(d, (n - prefix) // 2))
            n -= r[-1]
    return _patch(model, "tome", _prepare(model, "tome", r, "r"), proportional, variant)


def patch_topk(model: nn.Module, drop: Schedule) -> nn.Module:
    """Apply Top-K in place: drop the ``drop[i]`` patch tokens least attended by CLS in block i.

    ``drop`` is an int (every block) or one int per block; see :func:`keep_rate_schedule` for
    EViT-style keep rates at a few blocks. Returns the model.
    """
    _check_vit(model, "tokens.patch_topk")
    return _patch(model, "topk", _prepare(model, "topk", drop, "drop"), False)


def patch_evit(model: nn.Module, drop: Schedule) -> nn.Module:
    """Apply EViT in place: as Top-K, but the ``drop[i] + 1`` least attended tokens are fused.

    The fused token is their average weighted by CLS attention, appended at the end; the block
    hands ``drop[i]`` fewer tokens to its MLP. Returns the model.
    """
    _check_vit(model, "tokens.patch_evit")
    return _patch(model, "evit", _prepare(model, "evit", drop, "drop"), False)


def patch_pomt(model: nn.Module, R: int, *, layer: Optional[int] = None,
               variant: str = "project") -> nn.Module:
    """Apply Pruning One More Token in place: remove ``R`` tokens once, in block ``layer``.

    The block's MLP and every later block then run at exactly ``n* = N - R`` tokens (CLS, the
    ``n* - 2`` best patches and one fused token, for a single prefix token).

    Args:
        model: a timm ``VisionTransformer``.
        R: tokens removed, ``0 <= R <= N - prefix - 1`` (0 reproduces the model exactly).
        layer: 0-based block index, default :func:`default_pomt_layer`.
        variant: ``"project"`` or ``"reference"`` (POMT's value-term order, see
            :func:`pomt_scores`). Both keep the score per sample and both run at exactly
            ``N - R`` tokens; POMT's ``compute_r`` gives an R two below this one for the same n*.

    Raises:
        ValueError: R negative or too large (e.g. the published code's ``R=-1``), layer out of range.
    """
    _check_vit(model, "tokens.patch_pomt")
    variants.check(variant)
    depth = len(model.blocks)
    if isinstance(R, bool) or not isinstance(R, (int, np.integer)):
        raise ValueError(f"R must be an int, got {R!r}")
    n, prefix = _n_tokens(model), _prefix(model)
    if not 0 <= R <= n - prefix - 1:
        raise ValueError(f"R must be in 0..{n - prefix - 1} for a model with {n} tokens "
                         f"(at least {prefix} prefix + 1 fused token remain), got {R}")
    layer = default_pomt_layer(depth) if layer is None else layer
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < depth:
        raise ValueError(f"layer must be a block index in 0..{depth - 1}, got {layer!r}")
    plan = [0] * depth
    plan[int(layer)] = int(R)
    return _patch(model, "pomt", _prepare(model, "pomt", plan, "R"), False, variant)


def schedule_of(model: nn.Module) -> dict[str, Any]:
    """The applied patch: ``{"method", "schedule" (removed per block), "tokens" (at each MLP)}``."""
    _check_vit(model, "tokens.schedule_of")
    depth, n = len(model.blocks), _n_tokens(model)
    if not is_patched(model):
        return {"method": None, "schedule": [0] * depth, "tokens": [n] * depth}
    plan = [blk._tr_plan.remove for blk in model.blocks]
    return {"method": model._tr_method, "schedule": plan,
            "tokens": token_flow(n, _prefix(model), plan, model._tr_method)}


def tokens_per_block(model: nn.Module, x: Tensor) -> list[int]:
    """Tokens each block's MLP really receives in one forward of ``x`` (measured with hooks)."""
    _check_vit(model, "tokens.tokens_per_block")
    seen: list[int] = []
    hooks = [blk.norm2.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
             for blk in model.blocks]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def token_sources(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One forward of a patched model that also says which input tokens each final token holds.

    Every reduction is replayed on a 0/1 map with the block's own scores (POMT, Top-K, EViT) or
    matches (ToMe), so the map follows the tokens exactly: a kept token holds itself, a fused or
    merged token every input token averaged into it; a dropped input token is in no row. The logits are
    those of an ordinary forward (the tokens are computed as without tracking).

    Args:
        model: a model patched by :func:`patch_tome`, :func:`patch_topk`, :func:`patch_evit` or
            :func:`patch_pomt` (any setting, 0 included).
        x: images ``[B, 3, H, W]``.

    Returns:
        (logits ``[B, classes]``, sources ``[B, N_out, N]`` bool): row ``t`` marks the input tokens
        (prefix first, then patches in raster order, as after the patch embedding) that token ``t``
        leaving the last block stands for; rows follow the model's token order.
    """
    _check_vit(model, "tokens.token_sources")
    if not is_patched(model):
        raise ValueError("token_sources needs a model patched by a tokens.patch_* function (an unpatched "
                         "model keeps every token); patch it first, e.g. tokens.patch_pomt(model, 0)")
    state = model._tr_state
    state.track = True
    try:
        with torch.inference_mode():
            logits = model(x)
            source = state.source
            if source is None:  # nothing was removed: every token stands for itself
                n = _n_tokens(model)
                source = torch.eye(n, device=logits.device).expand(len(x), n, n)
            return logits, source > 0
    finally:
        state.track, state.source = False, None


# ----------------------------------------------------------------------------- random pruning

class SubsetViT(nn.Module):
    """A ViT run on ``n`` tokens: prefix tokens plus ``n - prefix`` fixed random patches.

    The cut is made after the patch and position embedding, as in POMT's latency-workload
    profile; everything after it (blocks, final norm, head) runs on ``n`` tokens. Which patches
    are kept does not change the cost; they are fixed by ``seed``.

    Args:
        model: an unpatched timm ``VisionTransformer`` (shared, not copied).
        n: tokens kept, ``prefix + 1 <= n <= N``.
        seed: which patches.
    """

    def __init__(self, model: nn.Module, n: int, seed: int = 0) -> None:
        super().__init__()
        _check_vit(model, "tokens.SubsetViT")
        if is_patched(model):
            raise ValueError("SubsetViT needs an unpatched model; call tokens.restore(model) first")
        total, prefix = _n_tokens(model), _prefix(model)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not prefix + 1 <= n <= total:
            raise ValueError(f"n must be an int in {prefix + 1}..{total} (tokens incl. {prefix} "
                             f"prefix), got {n!r}")
        self.model, self.n = model, int(n)
        g = torch.Generator().manual_seed(seed)
        patches = torch.randperm(total - prefix, generator=g)[: n - prefix] + prefix
        self.register_buffer("index", torch.cat([torch.arange(prefix), patches.sort().values]),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` -> logits ``[B, classes]``."""
        m = self.model
        return vit.head(m, vit.run_blocks(m, vit.embed(m, x).index_select(1, self.index)))


def random_token_accuracy(model: nn.Module, x: Tensor, y: Tensor, n_values: Sequence[int], *,
                          seed: int = 0, batch_size: int = measure.EVAL_BATCH) -> np.ndarray:
    """POMT's accuracy proxy A(n): top-1 with ``n`` tokens kept at random after the embedding.

    Each sample gets its own random patch order (seeded, drawn once for the whole set, so the
    result does not depend on batching); ``n`` keeps the prefix and the first ``n - prefix``
    patches of that order, so smaller ``n`` keep subsets of larger ones.

    Args:
        model: an unpatched timm ``VisionTransformer``.
        x: images ``[S, 3, H, W]``; y: labels ``[S]``. Use a validation split, never test.
        n_values: token counts, each in ``prefix + 1 .. N``.
        seed: the patch orders.
        batch_size: samples per forward.

    Returns:
        Accuracies in [0, 1], one per entry of ``n_values``.
    """
    _check_vit(model, "tokens.random_token_accuracy")
    if is_patched(model):
        raise ValueError("random_token_accuracy needs an unpatched model; call tokens.restore(model)")
    total, prefix = _n_tokens(model), _prefix(model)
    ns = [int(n) for n in n_values]
    if not ns or any(not prefix + 1 <= n <= total for n in ns):
        raise ValueError(f"n_values must be non-empty, each in {prefix + 1}..{total}, got {list(n_values)}")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y) or len(x) == 0:
        raise ValueError("x [S, 3, H, W] and y [S] must be non-empty tensors of equal length")
    g = torch.Generator().manual_seed(seed)
    orders = torch.rand(len(x), total - prefix, generator=g).argsort(dim=-1) + prefix  # [S, P]
    hits = np.zeros(len(ns))
    with vit.eval_mode(model), torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb, yb, ob = x[i:i + batch_size], y[i:i + batch_size], orders[i:i + batch_size]
            t = vit.embed(model, xb)
            head = torch.arange(prefix).expand(len(xb), -1)
            for j, n in enumerate(ns):
                idx = torch.cat([head, ob[:, : n - prefix]], dim=1)
                sub = t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))
                logits = vit.head(model, vit.run_blocks(model, sub))
                hits[j] += (logits.argmax(-1) == yb).sum().item()
    return hits / len(x)


# ----------------------------------------------------------------------------- choosing R

def utility(latency_ms: Sequence[float], acc: Sequence[float], alpha: float = 0.5) -> np.ndarray:
    """POMT's utility ``U = alpha * (1 - L / max L) + (1 - alpha) * A / max A`` per token count.

    Args:
        latency_ms: L(n) per token count (milliseconds).
        acc: A(n) at the same token counts.
        alpha: weight of latency, in [0, 1] (paper: 0.5).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    lat, a = np.asarray(latency_ms, dtype=float), np.asarray(acc, dtype=float)
    if lat.shape != a.shape or lat.ndim != 1 or lat.size == 0:
        raise ValueError(f"latency and accuracy must be 1-D and equally long, got {lat.shape} and {a.shape}")
    if not np.all(np.isfinite(a) & (a >= 0) & (a <= 1)):
        k = int(np.argmax(~(np.isfinite(a) & (a >= 0) & (a <= 1))))
        raise InvalidValueError(f"accuracy at position {k} is {a[k]}; A(n) must be finite, in [0, 1]")
    if not np.all(np.isfinite(lat)) or lat.max() <= 0:
        raise ValueError("latency must be finite and positive")
    if a.max() <= 0:
        raise ValueError("accuracy is 0 everywhere: A(n) cannot rank token counts")
    return alpha * (1 - lat / lat.max()) + (1 - alpha) * a / a.max()


def choose_prune_count(n_values: Sequence[int], latency_ms: Sequence[float], acc: Sequence[float],
                       n_tokens: int, alpha: float = 0.5) -> dict[str, Any]:
    """POMT's choice: ``n* = argmax U(n)`` and ``R = N - n*``.

    Args:
        n_values: token counts (prefix included) where L and A were read, each in 2..N.
        latency_ms: L(n); acc: A(n), aligned with ``n_values``.
        n_tokens: N, the model's full token count.
        alpha: latency weight in [0, 1].

    Returns:
        ``{"n_star", "R", "alpha", "utility" (list, aligned with n_values)}``; ties go to the
        larger n (fewer tokens pruned).
    """
    ns = np.asarray(list(n_values), dtype=int)
    if ns.ndim != 1 or ns.size == 0 or ns.min() < 2 or ns.max() > n_tokens:
        raise ValueError(f"n_values must lie in 2..{n_tokens} (N tokens), got min "
                         f"{ns.min() if ns.size else None}, max {ns.max() if ns.size else None}")
    u = utility(latency_ms, acc, alpha)
    if u.shape != ns.shape:
        raise ValueError(f"n_values ({ns.size}) and the curves ({u.size}) differ in length")
    best = np.flatnonzero(u == u.max())
    i = best[np.argmax(ns[best])]
    n_star = int(ns[i])
    return {"n_star": n_star, "R": int(n_tokens - n_star), "alpha": float(alpha), "utility": u.tolist()}


# ----------------------------------------------------------------------------- comparing methods

def reduced_copy(model: nn.Module, method: str, amount: Any, **kwargs: Any) -> nn.Module:
    """A patched deep copy of ``model`` (the original is untouched), in eval mode.

    Args:
        model: a timm ``VisionTransformer``.
        method: ``"dense"`` (plain copy), ``"tome"`` (``amount`` = r), ``"topk"``/``"evit"``
            (``amount`` = a drop schedule, a list with one int per block, or a keep rate, a float
            in (0, 1] applied at :func:`evit_locations`; a bare int is refused as ambiguous),
            ``"pomt"`` (``amount`` = R; ``layer=`` in kwargs).
        kwargs: passed to the patch function.
    """
    import copy

    if method not in ("dense", *_METHODS):
        raise ValueError(f"method must be 'dense' or one of {_METHODS}, got {method!r}")
    if method in ("topk", "evit") and (isinstance(amount, (bool, int, np.integer))):
        # 1 and 1.0 would mean different things (drop one token per block vs keep them all).
        raise InvalidValueError(f"{method} amount {amount!r} is ambiguous: give a keep rate as a float in (0, 1] "
                                f"(e.g. 0.7 or 1.0) or a drop schedule as a list with one int per block")
    _check_vit(model, "tokens.reduced_copy")
    m = restore(copy.deepcopy(model)).eval()
    if method == "dense":
        return m
    if method in ("topk", "evit") and isinstance(amount, (float, np.floating)):
        amount = keep_rate_schedule(m, float(amount))
    patch = {"tome": patch_tome, "topk": patch_topk, "evit": patch_evit, "pomt": patch_pomt}[method]
    return patch(m, amount, **kwargs)


def fastest_within(rows: Sequence[dict[str, Any]], reference: float, tol: float = 0.005,
                   acc_key: str = "val_acc", latency_key: str = "latency_ms") -> dict[str, Any]:
    """Per method, the fastest row whose accuracy is at least ``reference - tol``.

    Args:
        rows: dicts with ``"method"``, ``acc_key`` and ``latency_key``.
        reference: accuracy to match (e.g. POMT's validation accuracy), in [0, 1].
        tol: allowed shortfall (0.005 = half a point).

    Returns:
        method -> the chosen row, or None where no setting reaches the reference.
    """
    if not 0 <= tol < 1:
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    out: dict[str, Any] = {}
    for r in rows:
        out.setdefault(r["method"], None)
        if r[acc_key] >= reference - tol:
            best = out[r["method"]]
            if best is None or r[latency_key] < best[latency_key]:
                out[r["method"]] = r
    return out
