"""How important is each head, channel and layer? One interface, several criteria.

Every criterion maps a model (and, where it needs them, images) to a score per prunable unit,
higher meaning "keep"; :func:`make_plan` turns scores and a budget into a plan for
:func:`vitprune_lite.surgery.apply_plan`, the one place where units are removed.

Units, per block ``i`` (one dict of tensors per block in :class:`UnitScores`):

- ``"mlp"``   ``[M]``     MLP hidden channels (fc1 row + fc2 column);
- ``"attn"``  ``[H, D]``  attention channels: dimension ``d`` of head ``h`` in q, k and v together
  (TAP-ViTs' unit);
- ``"qk"``, ``"vo"`` ``[H, D]`` ToaSt's coupled query/key and value/output dimensions (criteria
  that do not score them separately use the ``"attn"`` score for both);
- ``"heads"`` ``[H]``     whole heads.

Criteria (:data:`CRITERIA`):

- ``"tap_vits"``: TAP-ViTs composite neuron importance (arXiv 2601.02437): HSIC relevance of a unit
  to the model's own softmax output, HSIC redundancy with its layer, activation magnitude, each
  min-max normalised within the layer and mixed with the paper's weights. HSIC samples are
  images (a unit's activations over a subsample of token positions form one sample), and the
  kernels of all channels of a layer are computed at once (:func:`tap_importance`,
  :func:`hsic_rbf`). Its coarse half, the KL layer sensitivity and the keep ratios drawn
  from it, is :func:`layer_sensitivity` + :func:`adaptive_ratios`.
- ``"toast"`` / ``"toast_heads"``: ToaSt (arXiv 2602.15720) geometric-median distance of each
  head's stacked ``[Q | K]`` and ``[V | O^T]`` rows, from weights only; the whole-head variant
  scores each head's flattened weights against the median head.
- ``"magnitude_l1"``, ``"magnitude_l2"``: norm of every weight a unit owns.
- ``"taylor"``: first-order Taylor estimate of the loss change when a unit's activation is
  removed, ``|sum_tokens a * dL/da|`` averaged over images.
- ``"random"``: seeded uniform scores, the floor every criterion must beat.

Budgets are TAP-ViTs' (MLP keep, attention keep) pairs, :data:`TAP_BUDGETS`; a pair keeps
``(8 m + 4 a) / 12`` of every block's parameters (:func:`block_param_fraction`). A budget is
checked once, by :func:`check_budget`, which returns a :class:`Budget` that later functions
accept without checking it again.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import methods, surgery, variants, vit
from .errors import InvalidValueError

from timm.layers import Mlp  # noqa: E402  (after the package's torchvision shim)
from timm.layers.attention import Attention

__all__ = [
    "CRITERIA", "DATA_CRITERIA", "TAP_BUDGETS", "TAP_WEIGHTS", "UnitScores", "score",
    "tap_importance", "hsic_rbf", "centred_gram", "magnitude_scores", "taylor_scores", "random_scores",
    "toast_scores", "layer_sensitivity", "keep_ratios", "adaptive_ratios", "allocate_counts",
    "make_plan", "PLAN_DEFAULTS", "prune_copy", "block_param_fraction", "rank_correlation",
    "rbf_gram", "probe_sparsity", "VARIANT_CRITERIA", "Budget", "check_budget",
]

CRITERIA = ("tap_vits", "taylor", "magnitude_l1", "magnitude_l2", "random", "toast", "toast_heads")
#: Criteria that read images (the others read weights only).
DATA_CRITERIA = ("tap_vits", "taylor")

#: TAP-ViTs' five (MLP keep, attention keep) budgets: 90/80/70/60/50 % of block parameters.
TAP_BUDGETS: tuple[tuple[float, float], ...] = (
    (0.886, 0.928), (0.772, 0.856), (0.658, 0.784), (0.544, 0.712), (0.429, 0.642),
)
#: Composite weights (rel, 1 - red, act) per unit kind, from the TAP-ViTs paper.
TAP_WEIGHTS = {"mlp": (0.1, 0.1, 0.8), "attn": (0.8, 0.1, 0.1)}
#: Probe sparsities (fraction of a layer's units removed) of the KL layer sensitivity; the
#: authors' code probes budget ``TAP_BUDGETS[i]`` at ``PROBE_SPARSITIES[i]`` alone.
PROBE_SPARSITIES = (0.9, 0.8, 0.7, 0.6, 0.5)
#: Token positions per HSIC sample in the project's TAP importance (the authors' code: all).
TAP_TOKENS = 32
#: Criteria whose authors' code has a ``variant="reference"`` here.
VARIANT_CRITERIA = ("tap_vits", "toast", "toast_heads")


# ----------------------------------------------------------------------------- containers

@dataclass
class UnitScores:
    """Scores per unit for every block (higher = more important).

    Attributes:
        criterion: the criterion's name (a :mod:`vitprune_lite.methods` name), e.g. ``"tap_vits"``.
        blocks: one dict per block with ``"mlp"`` ``[M]``, ``"attn"`` ``[H, D]``, ``"heads"``
            ``[H]`` and, for ToaSt, ``"qk"`` / ``"vo"`` ``[H, D]``; float32 CPU tensors.
        components: TAP only: per block ``{"mlp_rel", "mlp_red", "mlp_act", "attn_rel", ...}``,
            each min-max normalised within its layer.
        info: how the scores were made (sizes, seconds, options).
    """

    criterion: str
    blocks: list[dict[str, Tensor]]
    components: list[dict[str, Tensor]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.blocks[i]

    def matrix(self, key: str) -> np.ndarray:
        """``[blocks, units]`` array of one unit kind (``[H, D]`` flattened), for heatmaps."""
        rows = [b[key].flatten().numpy() for b in self.blocks]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"blocks hold different numbers of {key!r} units; plot them one by one")
        return np.stack(rows)


# ----------------------------------------------------------------------------- validation

def _check_model(model: Any, where: str) -> Sequence[nn.Module]:
    """The model's blocks: every criterion reads plain timm (or surgery) attention and Mlp."""
    return vit.require_vit(model, where, attention=(Attention, surgery.SlimAttention), mlp=(Mlp,))


def _check_images(x: Any, what: str = "x") -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what} must be an image tensor [N, 3, H, W], got {got}")
    if len(x) == 0:
        raise ValueError(f"{what} is empty: importance needs at least one image (the metric set)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf")
    return x


class Budget(tuple):
    """A checked TAP-ViTs budget ``(mlp_keep, attn_keep)``: two keep ratios, each in (0, 1].

    Built by :func:`check_budget` (or ``Budget(mlp_keep, attn_keep)``), the one place a budget
    is validated. Every function taking a budget passes it through :func:`check_budget`, which
    returns a ``Budget`` unchanged, so a budget is checked once however many functions it
    passes through. It behaves as the plain pair of floats (unpacking, ``list()``, JSON, repr).
    """

    __slots__ = ()

    def __new__(cls, mlp_keep: Any, attn_keep: Any) -> "Budget":
        try:
            m, a = float(mlp_keep), float(attn_keep)
        except (TypeError, ValueError):
            raise InvalidValueError(f"budget must be a pair of numbers (mlp_keep, attn_keep), got "
                                    f"({mlp_keep!r}, {attn_keep!r})") from None
        for name, v in (("mlp_keep", m), ("attn_keep", a)):
            if not 0 < v <= 1:
                raise InvalidValueError(f"budget keeps must each be in (0, 1]: {name} = {v} is out of "
                                        f"range in ({m}, {a})")
        return super().__new__(cls, (m, a))

    def __getnewargs__(self) -> tuple[float, float]:  # copy and pickle rebuild through __new__
        return self[0], self[1]

    @property
    def mlp_keep(self) -> float:
        return self[0]

    @property
    def attn_keep(self) -> float:
        return self[1]

    @property
    def block_param_fraction(self) -> float:
        """Fraction of a ViT block's weights kept: MLP holds 8 C^2, attention 4 C^2 (ratio 4)."""
        return (8 * self[0] + 4 * self[1]) / 12


def check_budget(budget: Any) -> Budget:
    """``budget`` as a :class:`Budget`: a ``Budget`` as it is, a pair ``(mlp_keep, attn_keep)``
    checked.

    Raises:
        InvalidValueError: not a pair of numbers, or a keep ratio outside (0, 1].
    """
    if isinstance(budget, Budget):
        return budget
    try:
        m, a = budget
    except (TypeError, ValueError):
        raise InvalidValueError(f"budget must be a pair (mlp_keep, attn_keep), got {budget!r}") from None
    return Budget(m, a)


def _check_int(value: Any, name: str, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def block_param_fraction(mlp_keep: float, attn_keep: float) -> float:
    """Fraction of a ViT block's weights kept: MLP holds 8 C^2, attention 4 C^2 (ratio 4)."""
    return Budget(mlp_keep, attn_keep).block_param_fraction


# ----------------------------------------------------------------------------- forward helpers

@contextlib.contextmanager
def _unit_inputs(model: nn.Module, fn: Callable[[int, str, Tensor], None]) -> Iterator[None]:
    """Call ``fn(block, kind, activation)`` with each attention output before ``proj``
    (``kind="attn"``, ``[B, N, H*Dv]``) and each MLP hidden activation before ``fc2``
    (``kind="mlp"``, ``[B, N, M]``) during forwards inside the context."""
    handles = []
    for i, block in enumerate(model.blocks):
        for kind, lin in (("attn", block.attn.proj), ("mlp", block.mlp.fc2)):
            handles.append(lin.register_forward_pre_hook(
                lambda _m, args, i=i, kind=kind: fn(i, kind, args[0])))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _minmax(v: Tensor) -> Tensor:
    """Min-max normalise to [0, 1]; a constant vector maps to zeros."""
    lo, hi = v.min(), v.max()
    return (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)


# ----------------------------------------------------------------------------- HSIC

def hsic_rbf(x: Tensor, grams: Tensor, bandwidths: Sequence[float] = (1, 2, 4, 8, 16),
             max_elements: int = 1 << 22, scale_by_dim: bool = True) -> Tensor:
    """Biased HSIC of every channel's activations with several targets, all channels at once.

    For channel ``c`` with samples ``x_c`` ``[n, d]`` and a target Gram matrix ``G``:
    ``HSIC = sum_sigma <K_sigma, G> / (n - 1)^2`` with the RBF kernel
    ``K_sigma[i, j] = exp(-|x_ci - x_cj|^2 / (2 sigma^2 d))`` (the HSIC-bottleneck convention:
    the variance grows with the feature count ``d``; ``scale_by_dim=False`` drops the ``d``, as
    the TAP-ViTs code does) and ``G = (H Z)(H Z)^T``, the centred linear kernel of the target
    ``Z`` (or any centred Gram matrix, e.g. :func:`rbf_gram`). Since ``tr(K H L H) = <K, (H Z)(H Z)^T>``, ``K`` itself needs no
    centring, and one ``[C, n, n]`` kernel stack serves every target. Exponents are clipped at
    -80 so no subnormal floats (slow on x86) ever appear; the clipped values are below 2e-35.

    Args:
        x: activations ``[C, n, d]`` (channel, sample, feature) or ``[C, n]`` (d = 1).
        grams: centred target Gram matrices ``[T, n, n]``.
        bandwidths: RBF bandwidths sigma.
        max_elements: kernel entries per vectorised step (memory ~ 3 x 4 bytes each).
        scale_by_dim: divide the squared distance by ``d`` (project) or not (TAP-ViTs' code).

    Returns:
        ``[C, T]``: HSIC of each channel with each target, summed over bandwidths.
    """
    if x.dim() == 2:
        x = x[:, :, None]
    if x.dim() != 3 or grams.dim() != 3 or grams.shape[1:] != (x.shape[1], x.shape[1]):
        raise ValueError(f"need x [C, n, d] and grams [T, n, n]; got {tuple(x.shape)} and "
                         f"{tuple(grams.shape)}")
    if not bandwidths or any(s <= 0 for s in bandwidths):
        raise ValueError(f"bandwidths must be positive numbers, got {bandwidths!r}")
    C, n, d = x.shape
    gram = grams.reshape(len(grams), n * n).t().contiguous().float()  # [n^2, T]
    out = torch.empty(C, len(grams), dtype=torch.float32)
    step = max(1, max_elements // (n * n))
    for c0 in range(0, C, step):
        xc = x[c0:c0 + step].float()
        sq = xc.square().sum(-1)  # [c, n]
        dist = torch.baddbmm(sq[:, :, None] + sq[:, None, :], xc, xc.transpose(1, 2), alpha=-2)
        dist.clamp_(min=0)  # [c, n, n] squared distances (rounding can make them < 0)
        acc = torch.zeros_like(dist)
        e = torch.empty_like(dist)
        for s in bandwidths:
            torch.mul(dist, -1.0 / (2 * s * s * (d if scale_by_dim else 1)), out=e)
            acc.add_(e.clamp_(min=-80).exp_())
        out[c0:c0 + len(xc)] = acc.reshape(len(xc), n * n) @ gram
    return out / max(n - 1, 1) ** 2


def rbf_gram(z: Tensor, bandwidths: Sequence[float] = (1, 2, 4, 8, 16)) -> Tensor:
    """Centred multi-bandwidth RBF Gram matrix ``H (sum_sigma K_sigma) H`` ``[n, n]`` of a target
    ``z`` ``[n, q]``, ``K_sigma[i, j] = exp(-|z_i - z_j|^2 / (2 sigma^2))`` (no division by ``q``):
    the redundancy target of TAP-ViTs' code (its layer or head mean activation)."""
    if z.dim() == 1:
        z = z[:, None]
    z = z.double()
    sq = z.square().sum(-1)
    dist = (sq[:, None] + sq[None, :] - 2 * z @ z.t()).clamp_(min=0)
    k = sum(torch.exp(-dist / (2 * s * s)) for s in bandwidths)
    k = k - k.mean(0, keepdim=True)
    return (k - k.mean(1, keepdim=True)).float()


def centred_gram(z: Tensor) -> Tensor:
    """Centred linear-kernel Gram matrix ``(H Z)(H Z)^T`` ``[n, n]`` of a target ``z`` ``[n, q]``."""
    if z.dim() == 1:
        z = z[:, None]
    z = z - z.mean(0, keepdim=True)
    return z @ z.t()


# ----------------------------------------------------------------------------- TAP composite

def _token_positions(n_tokens: int, tokens: Optional[int], seed: int) -> Tensor:
    """CLS plus ``tokens - 1`` patch positions drawn with ``seed`` (all tokens if None)."""
    if tokens is None or tokens >= n_tokens:
        return torch.arange(n_tokens)
    g = torch.Generator().manual_seed(seed)
    patches = 1 + torch.randperm(n_tokens - 1, generator=g)[:tokens - 1]
    return torch.cat([torch.zeros(1, dtype=torch.long), patches.sort().values])


@torch.no_grad()
def tap_importance(
    model: nn.Module,
    x: Tensor,
    *,
    tokens: Optional[int] = TAP_TOKENS,
    batch_size: int = 64,
    bandwidths: Sequence[float] = (1, 2, 4, 8, 16),
    weights: Mapping[str, tuple[float, float, float]] = TAP_WEIGHTS,
    seed: int = 0,
    variant: str = "project",
) -> UnitScores:
    """TAP-ViTs composite importance of every MLP hidden channel and attention channel.

    For each batch of ``batch_size`` images (a batch is one HSIC sample set, as in the
    authors' per-batch computation) one forward pass yields the softmax output and, per block,
    each unit's activation over (images x tokens). A unit's sample ``i`` is its activation
    vector over ``tokens`` token positions of image ``i`` (CLS plus patches drawn with
    ``seed``, the same for every image); then, averaged over batches,

    - ``rel`` = HSIC(unit, softmax output): RBF kernels ``bandwidths`` on the unit, linear kernel
      on the output (:func:`hsic_rbf`), no labels;
    - ``red`` = HSIC(unit, its layer's mean activation) for MLP channels; for attention channels
      the mean over the other heads of HSIC(unit, that head's mean activation) (linear kernel on
      the means);
    - ``act`` = sum of |activation| over all images and all tokens.

    Each term is min-max normalised within its layer and
    ``score = w_rel * rel + w_red * (1 - red) + w_act * act`` (:data:`TAP_WEIGHTS`: MLP
    0.1 / 0.1 / 0.8, attention 0.8 / 0.1 / 0.1).

    ``variant="reference"`` computes what the authors' code does (``dependency_criterion.py``,
    ``mlp_neuron_rank`` / ``attn_head_rank``): every token position (``tokens`` must be left at
    its default), RBF kernels ``exp(-d^2 / (2 sigma^2))`` without the division by the feature
    count, the redundancy target under the same multi-bandwidth RBF kernel instead of a linear
    one, and the three terms min-max normalised *per batch*, mixed, and the mixed scores summed
    over batches (the project averages the raw terms over batches and normalises once). Attention channel ``(h, d)``'s activation is
    the attention output entering ``proj``. All channels of a layer are computed together; the
    cost is ``O(batch_size^2 * tokens)`` per channel and batch, memory one batch of activations.

    Args:
        model: timm ViT (see :func:`score`).
        x: the metric set, images ``[N, 3, H, W]``, N >= 2.
        tokens: token positions per sample (None: all tokens).
        batch_size: images per forward and per HSIC sample set (>= 2).
        bandwidths: RBF bandwidths sigma.
        weights: ``{"mlp": (w_rel, w_red, w_act), "attn": (...)}``.
        seed: seed of the token positions.
        variant: ``"project"`` or ``"reference"`` (see above).

    Returns:
        :class:`UnitScores` with ``"mlp"``, ``"attn"``, ``"heads"`` (mean of the head's channel
        scores) and the normalised components ``rel``/``red``/``act`` (reference: each the mean
        over batches of its per-batch normalised values).
    """
    blocks = _check_model(model, "importance.tap_importance")
    x = _check_images(x)
    reference = variants.check(variant) == "reference"
    if reference:
        if tokens not in (None, TAP_TOKENS):
            raise ValueError(f"tokens={tokens}: the reference variant uses every token, as the "
                             "authors' code does; leave tokens at its default")
        tokens = None
    if tokens is not None:
        tokens = _check_int(tokens, "tokens")
    batch_size = _check_int(batch_size, "batch_size", 2)
    if len(x) < 2:
        raise ValueError("the metric set needs at least 2 images: HSIC compares samples")
    if set(weights) != {"mlp", "attn"} or any(len(w) != 3 for w in weights.values()):
        raise ValueError(f"weights must be {{'mlp': (rel, red, act), 'attn': (...)}}, got {weights!r}")
    dev = _device(model)
    L = len(blocks)
    t0 = time.perf_counter()
    with vit.eval_mode(model):
        n_tok = vit.embed(model, x[:1].to(dev)).shape[1]
    pos = _token_positions(n_tok, tokens, seed)
    act: dict[tuple[int, str], Tensor] = {}
    rel: dict[tuple[int, str], Tensor] = {}
    red: dict[tuple[int, str], Tensor] = {}
    cur: dict[tuple[int, str], Tensor] = {}
    comp_act: dict[tuple[int, str], Tensor] = {}  # reference: mean of per-batch normalised act
    total: dict[tuple[int, str], Tensor] = {}  # reference: composite summed over batches

    def record(i: int, kind: str, a: Tensor) -> None:
        s = a.abs().sum(dim=(0, 1)).float().cpu()
        if reference:  # this batch's activation term, normalised with the batch's other terms
            act[(i, kind)] = s
        else:
            act[(i, kind)] = act[(i, kind)] + s if (i, kind) in act else s
        cur[(i, kind)] = a[:, pos.to(a.device)].float().cpu()  # [b, t, C]

    # Equal-sized sample sets (no tiny last batch with a noisy HSIC estimate).
    batches = torch.tensor_split(torch.arange(len(x)), max(1, len(x) // batch_size))
    t_fwd = 0.0
    with vit.eval_mode(model), _unit_inputs(model, record):
        for idx in batches:
            t1 = time.perf_counter()
            y = model(x[idx].to(dev)).float().softmax(-1).cpu()  # [n, classes]
            t_fwd += time.perf_counter() - t1
            g_out = centred_gram(y)
            for i, block in enumerate(blocks):
                H, _, dv = vit.head_geometry(block.attn)
                for kind in ("mlp", "attn"):
                    a = cur.pop((i, kind))  # [n, t, C]
                    C = a.shape[-1]
                    target = (lambda z: rbf_gram(z, bandwidths)) if reference else centred_gram
                    if kind == "mlp":
                        grams = [g_out, target(a.mean(-1))]
                    else:
                        hm = a.reshape(*a.shape[:2], H, dv).mean(-1)  # [n, t, H] head means
                        grams = [g_out] + [target(hm[..., j]) for j in range(H)]
                    hs = hsic_rbf(a.permute(2, 0, 1), torch.stack(grams), bandwidths,
                                  scale_by_dim=not reference)  # [C, T]
                    if kind == "mlp":
                        r = hs[:, 1]
                    else:
                        per_head = hs[:, 1:]  # [C, H]
                        own = per_head[torch.arange(C), torch.arange(C) // dv]
                        r = (per_head.sum(1) - own) / max(H - 1, 1)
                    if reference:  # normalise and mix within the batch, sum over batches
                        terms = (_minmax(hs[:, 0]), _minmax(r), _minmax(act[(i, kind)]))
                        w_rel, w_red, w_act = weights[kind]
                        mixed = w_rel * terms[0] + w_red * (1 - terms[1]) + w_act * terms[2]
                        total[(i, kind)] = total.get((i, kind), 0) + mixed
                        for key, t in zip(("rel", "red", "act_n"), terms):
                            store = {"rel": rel, "red": red, "act_n": comp_act}[key]
                            store[(i, kind)] = store.get((i, kind), 0) + t / len(batches)
                    else:
                        rel[(i, kind)] = rel.get((i, kind), 0) + hs[:, 0] / len(batches)
                        red[(i, kind)] = red.get((i, kind), 0) + r / len(batches)
    out_blocks, comps = [], []
    for i, block in enumerate(blocks):
        H, _, dv = vit.head_geometry(block.attn)
        scores, comp = {}, {}
        for kind in ("mlp", "attn"):
            if reference:
                terms = (rel[(i, kind)], red[(i, kind)], comp_act[(i, kind)])
                mixed = total[(i, kind)]
            else:
                terms = (_minmax(rel[(i, kind)]), _minmax(red[(i, kind)]), _minmax(act[(i, kind)]))
                w_rel, w_red, w_act = weights[kind]
                mixed = w_rel * terms[0] + w_red * (1 - terms[1]) + w_act * terms[2]
            comp.update({f"{kind}_rel": terms[0], f"{kind}_red": terms[1], f"{kind}_act": terms[2]})
            scores[kind] = mixed if kind == "mlp" else mixed.reshape(H, dv)
        scores["heads"] = scores["attn"].mean(1)
        out_blocks.append(scores)
        comps.append(comp)
    info = {"images": len(x), "tokens": len(pos), "batch_size": batch_size,
            "batches": len(batches), "bandwidths": list(bandwidths), "seed": seed,
            "variant": variant, "forward_seconds": t_fwd, "seconds": time.perf_counter() - t0}
    return UnitScores("tap_vits", out_blocks, comps, info)



# ----------------------------------------------------------------------------- weight criteria

def _attn_parts(attn: nn.Module, bias: bool = True
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, int, int, int]:
    """q, k, v weights ``[H, D, C]`` (``bias``: the qkv bias appended as a column, ``[H, D, C + 1]``)
    and proj columns ``[H, Dv, C']``."""
    H, dq, dv = vit.head_geometry(attn)
    w = attn.qkv.weight.detach()
    if bias and attn.qkv.bias is not None:
        w = torch.cat([w, attn.qkv.bias.detach()[:, None]], 1)
    q, k, v = w.split([H * dq, H * dq, H * dv], 0)
    o = attn.proj.weight.detach().t()  # [H*dv, C_out]
    return (q.reshape(H, dq, -1), k.reshape(H, dq, -1), v.reshape(H, dv, -1),
            o.reshape(H, dv, -1), H, dq, dv)


def _mlp_parts(mlp: nn.Module, bias: bool = True) -> Tensor:
    """Per hidden channel: its fc1 row (+ bias if ``bias``) and fc2 column, ``[M, 2C (+ 1)]``."""
    w1 = mlp.fc1.weight.detach()
    if bias and mlp.fc1.bias is not None:
        w1 = torch.cat([w1, mlp.fc1.bias.detach()[:, None]], 1)
    return torch.cat([w1, mlp.fc2.weight.detach().t()], 1)


def magnitude_scores(model: nn.Module, p: int = 2) -> UnitScores:
    """Lp norm of every weight a unit owns (fc1 row, bias, fc2 column; q/k/v rows, proj column).

    Args:
        model: timm ViT.
        p: 1 or 2.
    """
    blocks = _check_model(model, "importance.magnitude_scores")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    out = []
    for block in blocks:
        q, k, v, o, H, dq, dv = _attn_parts(block.attn)
        if dq != dv:
            raise ValueError("magnitude scores of attention channels need equal q/k and v widths; "
                             "score the unpruned model")
        if p == 1:
            attn = q.abs().sum(-1) + k.abs().sum(-1) + v.abs().sum(-1) + o.abs().sum(-1)
            heads = attn.sum(1)
            mlp = _mlp_parts(block.mlp).abs().sum(1)
        else:
            sq = q.square().sum(-1) + k.square().sum(-1) + v.square().sum(-1) + o.square().sum(-1)
            attn, heads = sq.sqrt(), sq.sum(1).sqrt()
            mlp = _mlp_parts(block.mlp).norm(dim=1)
        out.append({"mlp": mlp.float().cpu(), "attn": attn.float().cpu(), "heads": heads.float().cpu()})
    return UnitScores(f"magnitude_l{p}", out, info={"p": p})


def _median_distance(rows: Tensor, lower: bool = False) -> Tensor:
    """L2 distance of each row ``[R, F]`` from the column-wise median; works on a leading batch
    dimension too. For an even count the median is the mean of the two middle values, or with
    ``lower`` the lower of them (``torch.median``, as ToaSt's code uses)."""
    if rows.shape[-2] == 1:
        med = rows
    elif lower:
        med = rows.median(dim=-2, keepdim=True).values
    else:
        med = rows.quantile(0.5, dim=-2, keepdim=True)
    return (rows - med).norm(dim=-1)


def toast_scores(model: nn.Module, variant: str = "project") -> UnitScores:
    """ToaSt's geometric-median criterion, from weights only.

    Per head: ``[Q_h | b_q | K_h | b_k]`` stacked as ``[D, 2C + 2]`` (row d = query and key
    weights of dimension d, each followed by its bias where qkv has one; ``[D, 2C]`` without) and
    ``[V_h | b_v | O_h^T]`` as ``[D, 2C + 1]``; a row's score is its L2 distance from the stack's
    column-wise median, the mean of the two middle values for an even count (far from the
    median = not replaceable by the others = keep). ``"heads"``: each head's flattened
    ``[Q; K; V; O^T]`` against the median head. ``"mlp"`` extends the same rule to MLP channels
    (``[fc1 row | fc1 bias | fc2 column]``), so ToaSt can be held to the same parameter budget as
    the other criteria; ToaSt itself leaves the MLP to Token Channel Selection. ``"attn"`` =
    ``(qk + vo) / 2``.

    ``variant="reference"`` follows ToaSt's code (``toast/importance.py``, ``gm_score``): rows
    without bias columns (``[D, 2C]``) and the lower middle value as the median for an even
    count (``torch.median``); the ``"heads"`` and ``"mlp"`` extensions use the same rules.
    """
    blocks = _check_model(model, "importance.toast_scores")
    reference = variants.check(variant) == "reference"
    out = []
    for block in blocks:
        q, k, v, o, H, dq, dv = _attn_parts(block.attn, bias=not reference)
        if v.shape[-1] != q.shape[-1]:
            raise ValueError("toast_scores: q and v rows have different widths")
        qk = _median_distance(torch.cat([q, k], -1), reference)  # [H, dq]
        vo = _median_distance(torch.cat([v, o], -1), reference)
        heads = _median_distance(torch.cat([q.flatten(1), k.flatten(1), v.flatten(1),
                                            o.flatten(1)], 1)[None], reference)[0]
        mlp = _median_distance(_mlp_parts(block.mlp, bias=not reference), reference)
        entry = {"mlp": mlp, "qk": qk, "vo": vo, "heads": heads}
        if dq == dv:
            entry["attn"] = (qk + vo) / 2
        out.append({key: val.float().cpu() for key, val in entry.items()})
    return UnitScores("toast", out, info={"variant": variant})


def random_scores(model: nn.Module, seed: int = 0) -> UnitScores:
    """Uniform random scores for every unit, reproducible for ``seed``."""
    blocks = _check_model(model, "importance.random_scores")
    g = torch.Generator().manual_seed(seed)
    out = []
    for block in blocks:
        H, dq, dv = vit.head_geometry(block.attn)
        out.append({"mlp": torch.rand(block.mlp.fc1.out_features, generator=g),
                    "attn": torch.rand(H, dv, generator=g), "heads": torch.rand(H, generator=g)})
    return UnitScores("random", out, info={"seed": seed})


def taylor_scores(model: nn.Module, x: Tensor, y: Optional[Tensor] = None,
                  batch_size: int = 64) -> UnitScores:
    """First-order Taylor importance: per image ``|sum_tokens a * dL/da|``, averaged over images.

    ``L`` is the cross-entropy with ``y`` (int64 ``[N]``) or, without labels, with the model's
    own top-1 prediction (label-free, like TAP-ViTs). Heads: the same with ``a * dL/da`` summed
    over the head's channels before the absolute value.
    """
    blocks = _check_model(model, "importance.taylor_scores")
    x = _check_images(x)
    batch_size = _check_int(batch_size, "batch_size")
    if y is not None and (not isinstance(y, Tensor) or y.shape != (len(x),)):
        raise ValueError(f"y must be int64 labels [N] = [{len(x)}], got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    dev = _device(model)
    acc: dict[tuple[int, str], Tensor] = {}
    acc_heads: dict[int, Tensor] = {}
    store: dict[tuple[int, str], Tensor] = {}

    def keep(i: int, kind: str, a: Tensor) -> None:
        store[(i, kind)] = a

    with vit.eval_mode(model), _unit_inputs(model, keep):
        for s in range(0, len(x), batch_size):
            store.clear()
            logits = model(x[s:s + batch_size].to(dev))
            target = (y[s:s + batch_size].to(dev) if y is not None
                      else logits.detach().argmax(-1))
            loss = F.cross_entropy(logits, target, reduction="sum")
            keys = list(store)
            grads = torch.autograd.grad(loss, [store[k] for k in keys])
            for key, g in zip(keys, grads):
                prod = (store[key].detach() * g).sum(1)  # [b, C]
                val = prod.abs().sum(0).float().cpu()
                acc[key] = acc.get(key, 0) + val
                if key[1] == "attn":
                    H = vit.head_geometry(blocks[key[0]].attn)[0]
                    ph = prod.reshape(len(prod), H, -1).sum(-1).abs().sum(0).float().cpu()
                    acc_heads[key[0]] = acc_heads.get(key[0], 0) + ph
    out = []
    for i, block in enumerate(blocks):
        H, _, dv = vit.head_geometry(block.attn)
        out.append({"mlp": acc[(i, "mlp")] / len(x), "attn": (acc[(i, "attn")] / len(x)).reshape(H, dv),
                    "heads": acc_heads[i] / len(x)})
    return UnitScores("taylor", out, info={"images": len(x), "labels": y is not None})


def score(model: nn.Module, criterion: str, x: Optional[Tensor] = None,
          y: Optional[Tensor] = None, **options: Any) -> UnitScores:
    """The common interface: ``model`` (+ images ``x [N, 3, H, W]``) -> scores per unit.

    Args:
        model: timm ViT with plain ``Attention``/``SlimAttention`` and ``Mlp`` blocks.
        criterion: one of :data:`CRITERIA`; ``"tap_vits"`` and ``"taylor"`` need ``x``.
        x: the images to score on (the metric set); ignored by weight-only criteria.
        y: labels for ``"taylor"`` (optional).
        **options: passed to the criterion's function (e.g. ``tokens_per_image``, ``seed``).
    """
    methods.check(criterion, CRITERIA, "criterion")
    if criterion in DATA_CRITERIA and x is None:  # the criterion checks the model and images
        raise ValueError(f"criterion {criterion!r} needs images x [N, 3, H, W]")
    if criterion == "tap_vits":
        return tap_importance(model, x, **options)
    if criterion == "taylor":
        return taylor_scores(model, x, y, **options)
    if criterion.startswith("magnitude"):
        return magnitude_scores(model, p=int(criterion[-1]), **options)
    if criterion == "random":
        return random_scores(model, **options)
    s = toast_scores(model, **options)
    if criterion == "toast_heads":
        s.criterion = "toast_heads"
    return s


# ----------------------------------------------------------------------------- layer importance

def _attn_keep_for(block: nn.Module, scores: Mapping[str, Tensor], keep: int
                   ) -> dict[str, Tensor]:
    """Plan entry keeping ``keep`` dims per head, by the ``qk``/``vo`` or ``attn`` scores."""
    qk = scores.get("qk", scores.get("attn"))
    vo = scores.get("vo", scores.get("attn"))
    return {"qk": surgery.keep_top(qk, keep), "vo": surgery.keep_top(vo, keep)}


class _Blocks(nn.Module):
    """A stand-in 'model' holding one block, so surgery.apply_plan can prune a block copy."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([block])


def probe_sparsity(budget: tuple[float, float]) -> float:
    """The one probe sparsity the authors' code pairs with a budget: ``TAP_BUDGETS[i]`` ->
    ``PROBE_SPARSITIES[i]`` (0.9 for the mildest budget ... 0.5 for the harshest).

    Raises:
        ValueError: ``budget`` is not one of :data:`TAP_BUDGETS` (the code defines no other pair).
    """
    m, a = check_budget(budget)
    for b, s in zip(TAP_BUDGETS, PROBE_SPARSITIES):
        if abs(b[0] - m) < 1e-9 and abs(b[1] - a) < 1e-9:
            return s
    raise ValueError(f"budget ({m}, {a}) is not one of TAP_BUDGETS {TAP_BUDGETS}: the authors' code "
                     "pairs a probe sparsity with those five budgets only")


def _masked_attn_probe(block: nn.Module, scores: Mapping[str, Tensor], sparsity: float) -> nn.Module:
    """A copy of ``block`` whose attention keeps the ``int(H * D * (1 - sparsity))`` best channels
    of the whole layer (heads may keep different numbers), the others' q, k and v rows zeroed:
    exactly the authors' 0/1 gate on q, k and v."""
    probe = copy.deepcopy(block)
    H, dq, dv = vit.head_geometry(probe.attn)
    flat = scores.get("attn", scores.get("qk")).flatten()
    keep = max(1, int(H * dv * (1 - sparsity)))
    drop = torch.ones(H * dv, dtype=torch.bool)
    drop[flat.topk(keep).indices] = False
    rows = torch.cat([drop, drop, drop]).to(probe.attn.qkv.weight.device)  # q | k | v rows
    with torch.no_grad():
        probe.attn.qkv.weight[rows] = 0
        if probe.attn.qkv.bias is not None:
            probe.attn.qkv.bias[rows] = 0
    return probe


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    x: Tensor,
    scores: UnitScores,
    *,
    sparsities: Sequence[float] = PROBE_SPARSITIES,
    batch_size: int = 64,
    max_images: Optional[int] = None,
    variant: str = "project",
) -> dict[str, Any]:
    """TAP-ViTs adaptive layer importance: KL(dense || pruned) summed over probe sparsities.

    For every block and kind (``"mlp"``, ``"attn"``), the layer alone is pruned at each probe
    sparsity (fraction of its units removed, the lowest-scoring by ``scores``; attention keeps
    the same number of dims in every head) and the KL divergence of the pruned model's softmax
    output from the dense one is averaged over the images; the per-layer value is the sum over
    sparsities. Work is shared: the dense tokens entering block ``i`` are cached, so a probe
    runs only blocks ``i..L-1``, and the probed layer is a physically pruned copy of the block.

    ``variant="reference"`` computes what the authors' code does (``dependency_criterion.py``,
    ``layer_rank`` and ``kl_divergence``): pass the budget's one probe sparsity
    (``sparsities=(probe_sparsity(budget),)``); a probe keeps ``int(M * (1 - s))`` MLP channels,
    and the ``int(H * D * (1 - s))`` best attention channels of the *whole layer* (zeroed, not
    per head); per batch of ``B`` images the divergence is KL(pruned || dense) of the softmax
    outputs each divided by their batch total, i.e. ``sum_images KL / B^2``, summed over batches.

    Args:
        model: timm ViT.
        x: metric set ``[N, 3, H, W]``.
        scores: unit scores deciding what each probe removes (``"mlp"`` and ``"attn"`` or
            ``"qk"``/``"vo"`` per block).
        sparsities: fractions removed, each in (0, 1).
        batch_size: images per forward.
        max_images: use only the first ``max_images`` images (None: all).
        variant: ``"project"`` or ``"reference"`` (see above).

    Returns:
        ``{"mlp": [L], "attn": [L]}`` summed KL (nats), plus ``"seconds"``.
    """
    blocks = _check_model(model, "importance.layer_sensitivity")
    x = _check_images(x)
    reference = variants.check(variant) == "reference"
    batch_size = _check_int(batch_size, "batch_size")
    if len(scores) != len(blocks):
        raise ValueError(f"scores hold {len(scores)} blocks, the model has {len(blocks)}")
    if not sparsities or any(not 0 < s < 1 for s in sparsities):
        raise ValueError(f"probe sparsities must be fractions in (0, 1), got {sparsities!r}")
    if any(vit.head_geometry(b.attn)[1] != vit.head_geometry(b.attn)[2] for b in blocks):
        raise ValueError("layer_sensitivity probes attention dims in q, k and v together; it needs "
                         "equal q/k and v widths per head (an unpruned model)")
    if max_images is not None:
        x = x[:_check_int(max_images, "max_images")]
    dev = _device(model)
    t0 = time.perf_counter()
    kl = {"mlp": torch.zeros(len(blocks)), "attn": torch.zeros(len(blocks))}
    with vit.eval_mode(model):
        hs = [vit.embed(model, x[s:s + batch_size].to(dev)) for s in range(0, len(x), batch_size)]
        logp = [vit.head(model, vit.run_blocks(model, h)).float().log_softmax(-1) for h in hs]
        for i, block in enumerate(blocks):
            H, dq, dv = vit.head_geometry(block.attn)
            M = block.mlp.fc1.out_features
            for kind in ("mlp", "attn"):
                for s in sparsities:
                    if reference and kind == "attn":
                        probe = _masked_attn_probe(block, scores[i], s)
                    else:
                        if kind == "mlp":
                            k = max(1, int(M * (1 - s))) if reference else max(1, M - round(s * M))
                            entry = {"mlp": surgery.keep_top(scores[i]["mlp"], k)}
                        else:
                            entry = _attn_keep_for(block, scores[i], max(1, dv - round(s * dv)))
                        probe = surgery.apply_plan(_Blocks(copy.deepcopy(block)), {0: entry}).blocks[0]
                    total = 0.0
                    for h, lp in zip(hs, logp):
                        lq = vit.head(model, vit.run_blocks(model, probe(h), i + 1)).float().log_softmax(-1)
                        if reference:  # KL(pruned || dense) of batch-normalised outputs
                            n = len(lq)
                            total += F.kl_div(lp, lq, log_target=True, reduction="sum").item() / n ** 2
                        else:
                            total += F.kl_div(lq, lp, log_target=True, reduction="sum").item()
                    kl[kind][i] += total if reference else total / len(x)
            hs = [block(h) for h in hs]  # advance the cache past block i
    kl["seconds"] = time.perf_counter() - t0
    return kl


def keep_ratios(weights: Sequence[float] | Tensor, keep_target: float,
                fixed: Optional[Mapping[int, float]] = None, hi: float = 1.0) -> Tensor:
    """Per-layer keep ratios proportional to ``weights``, clipped to ``[0, hi]``, mean exactly
    ``keep_target``.

    ``r_i = c * w_i`` with ``c`` chosen so that the ratios average to ``keep_target``; what
    clipping removes from layers that would exceed ``hi`` is redistributed over the others in
    proportion to their weights (water-filling), so the global budget is met exactly.
    ``fixed`` layers (e.g. ToaSt's dense block 0: ``{0: 1.0}``) keep their ratio and count
    towards the budget.

    Args:
        weights: ``[L]`` non-negative (e.g. ``softmax(alpha * KL)``), not all zero.
        keep_target: mean keep ratio in (0, 1].
        fixed: ``{layer: ratio}`` held constant.
        hi: upper clip (1 = keep everything).

    Returns:
        float64 ``[L]`` ratios with ``mean == keep_target`` (to rounding).
    """
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    L = len(w)
    if L == 0 or not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be a non-empty list of finite values >= 0, got {weights!r}")
    if not 0 < keep_target <= 1:
        raise ValueError(f"keep_target = {keep_target} out of range; accepted (0, 1]")
    fixed = dict(fixed or {})
    for i, r in fixed.items():
        if not 0 <= int(i) < L or not 0 <= r <= hi:
            raise ValueError(f"fixed ratio {i}: {r} invalid; layers 0..{L - 1}, ratios in [0, {hi}]")
    r = torch.zeros(L, dtype=torch.float64)
    free = torch.ones(L, dtype=torch.bool)
    for i, v in fixed.items():
        r[int(i)], free[int(i)] = v, False
    budget = L * keep_target - r[~free].sum().item()
    if budget < -1e-9 or budget > hi * free.sum().item() + 1e-9:
        raise ValueError(f"keep_target {keep_target} cannot be met with fixed layers {fixed} "
                         f"and ratios in [0, {hi}]")
    if free.any() and w[free].sum() <= 0:
        w = torch.where(free, torch.ones_like(w), w)  # no preference left: share evenly
    while free.any():
        c = budget / w[free].sum().item()
        trial = c * w
        over = free & (trial > hi)
        if not over.any():
            r[free] = trial[free]
            break
        r[over], free[over] = hi, False  # clip, then hand what was freed to the rest
        budget -= hi * over.sum().item()
    return r


def adaptive_ratios(sensitivity: Mapping[str, Tensor], budget: tuple[float, float],
                    alpha: float = 1.1, variant: str = "project") -> dict[str, Tensor]:
    """TAP-ViTs keep ratios: ``keep_i = L * keep_target * softmax(alpha * KL)_i``, clipped to
    [0, 1] with the clipped excess redistributed (:func:`keep_ratios`), so the ratios average to
    ``keep_target`` exactly.

    ``variant="reference"`` follows the authors' code (``normalized_layer_rank`` and
    ``rank_to_ratio``): ``w = exp(alpha * KL) / sum(exp(alpha * KL))`` (no max subtraction),
    ``keep_i = w_i * L * keep_target / sum(w)`` clipped to [0, 1] with nothing redistributed, so
    the mean falls below the target wherever a layer was clipped.

    Args:
        sensitivity: ``{"mlp": [L], "attn": [L]}`` from :func:`layer_sensitivity`.
        budget: ``(mlp_keep, attn_keep)``.
        alpha: softmax temperature factor (the paper: 1.1).
        variant: ``"project"`` or ``"reference"``.
    """
    m, a = check_budget(budget)
    reference = variants.check(variant) == "reference"
    out = {}
    for kind, target in (("mlp", m), ("attn", a)):
        kl = torch.as_tensor(sensitivity[kind], dtype=torch.float64)
        if reference:
            e = torch.exp(alpha * kl)
            if not torch.isfinite(e).all():
                raise ValueError(f"exp({alpha} * KL) overflows for {kind} KL {kl.tolist()}; the "
                                 "authors' formula has no max subtraction (use variant='project')")
            w = e / e.sum()
            out[kind] = (w * len(w) * target / w.sum()).clamp(0, 1)
        else:
            out[kind] = keep_ratios(torch.softmax(alpha * kl, 0), target)
    return out


# ----------------------------------------------------------------------------- plans

def allocate_counts(ratios: Sequence[float] | Tensor, sizes: Sequence[int],
                    min_count: int = 1) -> Tensor:
    """Integer unit counts per layer that meet the total exactly.

    ``counts_i`` approximates ``ratios_i * sizes_i`` within ``[min_count, sizes_i]``, and
    ``sum(counts) == round(sum(ratios_i * sizes_i))`` (half up): floor first, then largest
    remainders get the leftover units (ties to the lower layer).

    Returns:
        int64 ``[L]``.
    """
    r = torch.as_tensor(ratios, dtype=torch.float64).flatten()
    n = torch.as_tensor(list(sizes), dtype=torch.float64)
    if r.shape != n.shape or (r < 0).any() or (r > 1 + 1e-9).any():
        raise ValueError(f"ratios must be {len(n)} values in [0, 1], got {r.tolist()}")
    exact = r * n
    total = int(math.floor(exact.sum().item() + 0.5 + 1e-9))
    lo = torch.clamp(torch.full_like(n, min_count), max=n)
    counts = torch.maximum(torch.floor(exact + 1e-9), lo).minimum(n)
    if total < lo.sum() or total > n.sum():
        raise ValueError(f"cannot keep {total} units with {min_count}..size per layer")
    rem = exact - counts
    order = sorted(range(len(n)), key=lambda i: (-rem[i].item(), i))
    left = total - int(counts.sum().item())
    while left != 0:
        moved = False
        for i in (order if left > 0 else order[::-1]):
            if left > 0 and counts[i] < n[i]:
                counts[i] += 1
                left -= 1
                moved = True
            elif left < 0 and counts[i] > lo[i]:
                counts[i] -= 1
                left += 1
                moved = True
            if left == 0:
                break
        if not moved:
            break
    return counts.long()


def _ratios_arg(value: Any, L: int, what: str) -> Tensor:
    r = torch.as_tensor(value, dtype=torch.float64).flatten()
    if len(r) != L:
        raise ValueError(f"{what}: schedule has {len(r)} entries, the model has {L} blocks")
    if (r <= 0).any() or (r > 1 + 1e-9).any():
        raise ValueError(f"{what}: keep ratios must be in (0, 1], got {r.tolist()}")
    return r


#: How each criterion's scores become a plan by default (ToaSt: block 0 dense; its whole-head
#: variant removes heads). Everything else: per-head dims, uniform ratios.
PLAN_DEFAULTS: dict[str, dict[str, Any]] = {
    "toast": {"attn_unit": "dims", "attn_dense_blocks": (0,)},
    "toast_heads": {"attn_unit": "heads", "attn_dense_blocks": (0,)},
}


def make_plan(
    model: nn.Module,
    scores: UnitScores,
    budget: tuple[float, float],
    *,
    attn_unit: Optional[str] = None,
    layer_ratios: Optional[Mapping[str, Sequence[float]]] = None,
    attn_dense_blocks: Optional[Sequence[int]] = None,
    variant: str = "project",
) -> dict[int, dict[str, Tensor]]:
    """Scores + budget -> a plan for :func:`vitprune_lite.surgery.apply_plan`.

    Per block, the MLP keeps its top ``k_i`` channels and the attention its top ``d_i`` dims in
    every head (``attn_unit="dims"``: one count per block so heads re-pack densely; q/k dims by
    ``"qk"`` and v/o dims by ``"vo"`` scores where a criterion has them, else by ``"attn"``) or
    its top ``d_i`` heads (``attn_unit="heads"``). Counts come from :func:`allocate_counts`, so
    the model keeps exactly ``round(mlp_keep * all MLP channels)`` channels and
    ``round(attn_keep * all per-head dims)`` dims (or heads) in total; dense blocks keep every
    unit and the others share what is left (an error if too little is left for one unit each).

    ``variant="reference"`` counts as the authors' code does: every layer keeps
    ``max(1, floor(ratio_i * size_i))`` units on its own, with no global total to meet; ToaSt's
    (``toast/weight_pruning.py``) keeps ``floor(D * attn_keep)`` dims per head in every block but
    the dense ones, which therefore do not make the others prune more. TAP-ViTs' code gates the
    best attention channels of the whole layer (heads keep unequal numbers); surgery re-packs
    heads densely, so here every head keeps the same ``floor(D * ratio_i)``.

    Args:
        model: the model the scores belong to.
        scores: :class:`UnitScores` of ``model``.
        budget: ``(mlp_keep, attn_keep)``, each in (0, 1], e.g. one of :data:`TAP_BUDGETS`.
        attn_unit: ``"dims"`` or ``"heads"`` (default from :data:`PLAN_DEFAULTS` for the
            scores' criterion, else ``"dims"``).
        layer_ratios: optional per-layer keep ratios ``{"mlp": [L], "attn": [L]}`` (TAP's
            :func:`adaptive_ratios`); default: uniform.
        attn_dense_blocks: blocks whose attention stays dense (default from
            :data:`PLAN_DEFAULTS`: ToaSt ``(0,)``, else none); the others prune more so the total
            still meets ``attn_keep`` (project variant).
        variant: ``"project"`` or ``"reference"`` (see above).

    Returns:
        ``{block: {"mlp": [k_i], "qk": [H, d_i], "vo": [H, d_i]}}`` or with ``"heads"``.
    """
    blocks = _check_model(model, "importance.make_plan")
    m, a = check_budget(budget)
    reference = variants.check(variant) == "reference"
    L = len(blocks)
    defaults = PLAN_DEFAULTS.get(scores.criterion, {})
    attn_unit = attn_unit if attn_unit is not None else defaults.get("attn_unit", "dims")
    if attn_dense_blocks is None:
        attn_dense_blocks = defaults.get("attn_dense_blocks", ())
    if attn_unit not in ("dims", "heads"):
        raise ValueError(f"attn_unit must be 'dims' or 'heads', got {attn_unit!r}")
    if len(scores) != L:
        raise ValueError(f"scores hold {len(scores)} blocks, the model has {L}")
    dense = sorted({int(i) for i in attn_dense_blocks})
    if any(not 0 <= i < L for i in dense):
        raise ValueError(f"attn_dense_blocks {attn_dense_blocks} out of range 0..{L - 1}")
    if layer_ratios is not None:
        r_mlp = _ratios_arg(layer_ratios["mlp"], L, "layer_ratios['mlp']")
        r_attn = _ratios_arg(layer_ratios["attn"], L, "layer_ratios['attn']")
    elif reference:
        r_mlp = torch.full((L,), m, dtype=torch.float64)
        r_attn = torch.full((L,), a, dtype=torch.float64)
    else:
        r_mlp = keep_ratios(torch.ones(L), m)
        r_attn = keep_ratios(torch.ones(L), a, fixed={i: 1.0 for i in dense})
    geo = [vit.head_geometry(b.attn) for b in blocks]
    if attn_unit == "dims" and any(dq != dv for _, dq, dv in geo):
        raise ValueError("attn_unit='dims' needs equal q/k and v widths per head; the model was "
                         "already pruned unevenly")
    n_mlp = [b.mlp.fc1.out_features for b in blocks]
    n_attn = [g[0] if attn_unit == "heads" else g[2] for g in geo]
    if reference:
        def floor_counts(r: Tensor, n: Sequence[int]) -> Tensor:
            n_t = torch.as_tensor(list(n), dtype=torch.float64)
            return torch.floor(r * n_t + 1e-9).clamp(min=1).minimum(n_t).long()
        k_mlp = floor_counts(r_mlp, n_mlp)
        k_attn = floor_counts(r_attn, n_attn)
    else:
        k_mlp = allocate_counts(r_mlp, n_mlp)
        # Dense blocks are fixed first, so a harsh budget can never take units from them.
        free = [i for i in range(L) if i not in dense]
        k_attn = torch.as_tensor(n_attn, dtype=torch.long).clone()
        if free:
            left = float((r_attn[free] * torch.as_tensor([n_attn[i] for i in free], dtype=torch.float64)).sum())
            if math.floor(left + 0.5 + 1e-9) < len(free):
                raise ValueError(f"attn_keep {a} leaves {left:.2f} attention units for the {len(free)} "
                                 f"blocks outside the dense blocks {dense}: each needs at least 1; "
                                 "raise attn_keep or make fewer blocks dense")
            k_attn[free] = allocate_counts(r_attn[free], [n_attn[i] for i in free])
    for i in dense:
        k_attn[i] = n_attn[i]
    plan: dict[int, dict[str, Tensor]] = {}
    for i, block in enumerate(blocks):
        entry: dict[str, Tensor] = {}
        if k_mlp[i] < n_mlp[i]:
            entry["mlp"] = surgery.keep_top(scores[i]["mlp"], int(k_mlp[i]))
        if k_attn[i] < n_attn[i]:
            if attn_unit == "heads":
                entry["heads"] = surgery.keep_top(scores[i]["heads"], int(k_attn[i]))
            else:
                entry.update(_attn_keep_for(block, scores[i], int(k_attn[i])))
        if entry:
            plan[i] = entry
    return plan


def prune_copy(model: nn.Module, plan: Mapping[int, Mapping[str, Any]]) -> nn.Module:
    """A pruned deep copy of ``model`` (the original is untouched), in eval mode."""
    return surgery.apply_plan(copy.deepcopy(model), plan).eval()


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (start + (counts - 1) / 2)[inverse]


def rank_correlation(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Spearman rank correlation of two score vectors of equal length (ties: average ranks).

    Returns 0.0 if either vector is constant (no ranking to compare).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two score vectors of equal length >= 2, got {a.shape} and {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0
