"""ToaSt's Token Channel Selection (TCS): per-forward channel choice inside the feed-forward net.

ToaSt (arXiv 2602.15720) keeps every token but computes the MLP on a subset of channels chosen
anew on every forward pass. With ``P`` patch tokens and ``a_p`` the class token's attention to
patch ``p`` (mean over heads, from the same block's attention), channel ``c`` of a tensor ``x``
``[B, N, C]`` scores

    score(c) = 1/(1+P) * 2 |x_cls[c]|  +  P/(1+P) * mean_p(|x_p[c]| * a_p)

and the top ``(1 - ratio)`` channels are kept, at two places per block:

- ``fc1`` ratio: channels of the FFN *input* (``norm2`` output), i.e. fc1's input columns;
- ``fc2`` ratio: hidden units after the activation, i.e. fc2's input columns.

Two modes:

- ``"sample"`` (default): every image picks its own channels. Predictions cannot depend on
  which other images share the batch.
- ``"batch"`` (the paper's code): scores are averaged over the batch and one subset serves all
  images, so an image's prediction depends on its batch-mates (and, with class-sorted
  evaluation batches, on their labels).

Two variants (``variant=``, see :mod:`vitprune_lite.variants`):

- ``"project"`` (default): the above, the kept count rounded, every block patchable, and the
  ``fc1`` site scoring and gathering the ``norm2`` output (fc1's real input columns);
- ``"reference"``: what ToaSt's code does (``toast/patch.py``, ``ToastBlock.forward``;
  ``toast/token_channel.py``): the ``fc1`` site scores the *pre-norm residual stream* and zeroes
  the dropped channels in the residual itself (``norm2`` and fc1 then run on every channel);
  kept count ``int((1 - ratio) * C)`` (floor, at least 1); block 0 always dense; the patch term
  from 2 % of the patches drawn with replacement; in ``"batch"`` mode the class attention is
  averaged over the batch before it weights the patches. Patches are drawn once per block from
  ``seed`` (the code redraws them on every forward from the global generator).

The implementation gathers the kept channels and multiplies dense, smaller matrices (a
per-image batched matmul in ``"sample"`` mode), so the saved FLOPs are really not computed and
:func:`vitprune_lite.measure.count_flops` counts what runs, scoring overhead included. The class
attention row is computed from the ``qkv`` output that the attention produces anyway (one
``q_cls . k^T`` per head), so fused attention stays fused. ``impl="mask"`` is the zero-masked
reference with the same choices. Selection is deterministic; ToaSt's random patch sampling for
the second term is available with ``patch_fraction < 1`` and an explicit ``seed``, and then uses
one fixed patch subset per block (drawn at patch time), so results never depend on call order.

:func:`patch` works in place and returns the model; :func:`unpatch` restores it. Ratios of 0
everywhere leave the model untouched.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import surgery, variants, vit
from .errors import UnsupportedModelError

from timm.layers import Mlp  # noqa: E402  (after the package's torchvision shim)
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block

__all__ = ["patch", "unpatch", "is_patched", "schedule", "settings", "channel_scores", "audit", "TCSMlp"]

Ratios = Union[float, Sequence[float]]
MODES = ("sample", "batch")
IMPLS = ("gather", "mask")
#: ToaSt's default share of patches sampled for the patch term (its ``DEFAULT_SAMPLE_RATIO``).
REFERENCE_PATCH_FRACTION = 0.02


def channel_scores(x: Tensor, cls_attn: Tensor, patches: Optional[Tensor] = None) -> Tensor:
    """ToaSt channel scores.

    ``score(c) = 2 / (1 + P) * |x_cls[c]| + P / (1 + P) * mean_p(|x_p[c]| * a_p)``, the mean
    over ``patches`` (indices into the P patch tokens; all if None).

    Args:
        x: tokens ``[B, N, C]``, class token first, ``P = N - 1`` patches.
        cls_attn: class-token attention to each patch, mean over heads, ``[B, P]``.
        patches: optional LongTensor ``[P']`` of patch indices used in the mean.

    Returns:
        ``[B, C]`` scores (higher = keep).
    """
    P = x.shape[1] - 1
    if cls_attn.shape != (x.shape[0], P):
        raise ValueError(f"cls_attn must be [B, P] = [{x.shape[0]}, {P}], got {tuple(cls_attn.shape)}")
    xp, a = x[:, 1:], cls_attn
    if patches is not None:
        idx = patches.to(x.device)
        xp, a = xp[:, idx], a[:, idx]
    # A [1 x P'] @ [P' x C] product per image: counted as 2 P' C FLOPs, like the rest of TCS.
    patch_term = (a[:, None, :] @ xp.abs())[:, 0] / xp.shape[1]  # [B, C]
    return (2.0 / (1 + P)) * x[:, 0].abs() + (P / (1 + P)) * patch_term


class TCSMlp(Mlp):
    """A timm ``Mlp`` whose forward selects channels per pass (installed by :func:`patch`).

    The class is swapped in place (ToMe-style), so weights, names and ``state_dict`` keys are
    the original ones. Settings live in plain attributes ``tcs_*``.
    """

    tcs_fc1_keep: Optional[int]
    tcs_fc2_keep: Optional[int]
    tcs_mode: str
    tcs_impl: str
    tcs_patches: Optional[Tensor]
    tcs_variant: str

    # --------------------------------------------------------------- class attention capture
    def _tcs_capture(self, qkv: nn.Module, args: tuple, out: Tensor) -> None:
        """Forward hook on the block's ``attn.qkv``: store the class token's attention to the
        patch tokens, mean over heads, ``[B, P]`` (softmax over all N keys, CLS included)."""
        attn = self.__dict__["_tcs_attn"]
        H, dq, dv = vit.head_geometry(attn)
        B, N, _ = out.shape
        q = out[:, :1, :H * dq].reshape(B, 1, H, dq).transpose(1, 2)  # [B, H, 1, dq]
        k = out[:, :, H * dq:2 * H * dq].reshape(B, N, H, dq).transpose(1, 2)  # [B, H, N, dq]
        q, k = attn.q_norm(q), attn.k_norm(k)
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # [B, H, 1, N]
        self.__dict__["_tcs_cls_attn"] = a.mean(1)[:, 0, 1:]  # [B, P]

    # --------------------------------------------------------------- selection
    def _tcs_scores(self, x: Tensor, a: Tensor) -> Tensor:
        if self.tcs_mode == "batch" and self.tcs_variant == "reference":
            a = a.mean(0, keepdim=True).expand_as(a)  # ToaSt: batch-mean attention weights |x|
        return channel_scores(x, a, self.tcs_patches)

    def _tcs_residual(self, x: Tensor) -> Tensor:
        """Reference fc1 site: the residual stream ``x`` ``[B, N, C]`` with the channels outside
        the top ``tcs_fc1_keep`` (scored on ``x`` itself) set to zero."""
        idx = self._tcs_choose(self._tcs_scores(x, self.__dict__["_tcs_cls_attn"]), self.tcs_fc1_keep)
        mask = torch.zeros(x.shape[0] if idx.dim() == 2 else 1, x.shape[-1], dtype=x.dtype, device=x.device)
        mask.scatter_(-1, idx if idx.dim() == 2 else idx[None], 1.0)
        return x * mask[:, None, :]

    def _tcs_choose(self, s: Tensor, keep: int) -> Tensor:
        """Kept channel indices, ascending: ``[B, keep]`` (sample) or ``[keep]`` (batch)."""
        if self.tcs_mode == "batch":
            s = s.mean(0)
        return s.topk(keep, dim=-1, sorted=False).indices.sort(dim=-1).values

    def _tcs_linear(self, x: Tensor, lin: nn.Linear, idx: Tensor, cache: str) -> Tensor:
        """``lin`` applied to ``x [B, N, C]`` using only input channels ``idx``."""
        if self.tcs_impl == "mask":
            mask = torch.zeros(x.shape[0] if idx.dim() == 2 else 1, x.shape[-1],
                               dtype=x.dtype, device=x.device)
            mask.scatter_(-1, idx if idx.dim() == 2 else idx[None], 1.0)
            return lin(x * mask[:, None, :])
        B, N, _ = x.shape
        wt = self._tcs_transposed(lin, cache)  # [C_in, C_out]: a kept channel is one contiguous row
        if idx.dim() == 1 or B == 1:  # one subset for all rows: a plain smaller matmul
            idx1 = idx.reshape(-1)
            xs = x.index_select(-1, idx1).reshape(B * N, -1)
            ws = wt.index_select(0, idx1)  # [k, C_out]
            out = torch.mm(xs, ws) if lin.bias is None else torch.addmm(lin.bias, xs, ws)
            return out.reshape(B, N, -1)
        xs = x.gather(2, idx[:, None, :].expand(B, N, idx.shape[1]))  # [B, N, k]
        ws = wt[idx]  # [B, k, C_out]
        if lin.bias is None:
            return torch.bmm(xs, ws)
        return torch.baddbmm(lin.bias.expand(B, 1, -1), xs, ws)

    def _tcs_transposed(self, lin: nn.Linear, name: str) -> Tensor:
        # Gathering rows of W^T for every image is cheap only if W^T is contiguous; keep one
        # copy, rebuilt when the weight tensor is replaced or modified in place.
        w = lin.weight
        key = (id(w), w._version, w.device, w.dtype)
        cached = self.__dict__.get(name)
        if cached is None or cached[0] != key:
            cached = (key, w.detach().t().contiguous())
            self.__dict__[name] = cached
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, N, C]`` (``norm2`` output, CLS first) -> ``[B, N, C_out]``."""
        a = self.__dict__.pop("_tcs_cls_attn", None)
        if a is None or a.shape[0] != x.shape[0] or a.shape[1] != x.shape[1] - 1:
            raise RuntimeError("TCS: no class attention captured for this forward; the MLP must "
                               "run right after its block's attention (patched model, block "
                               "forward)")
        if self.tcs_fc1_keep is not None and self.tcs_variant == "project":  # reference: block did it
            idx = self._tcs_choose(self._tcs_scores(x, a), self.tcs_fc1_keep)
            h = self._tcs_linear(x, self.fc1, idx, "_tcs_w1t")
        else:
            h = self.fc1(x)
        h = self.norm(self.drop1(self.act(h)))
        if self.tcs_fc2_keep is not None:
            idx = self._tcs_choose(self._tcs_scores(h, a), self.tcs_fc2_keep)
            out = self._tcs_linear(h, self.fc2, idx, "_tcs_w2t")
        else:
            out = self.fc2(h)
        return self.drop2(out)

    def extra_repr(self) -> str:
        return (f"tcs_fc1_keep={self.tcs_fc1_keep}, tcs_fc2_keep={self.tcs_fc2_keep}, "
                f"mode={self.tcs_mode!r}, impl={self.tcs_impl!r}, variant={self.tcs_variant!r}")


class _TCSReferenceBlock(Block):
    """A timm ``Block`` whose MLP input site follows ToaSt's code: channels are selected on the
    residual stream after attention and zeroed there, before ``norm2`` (installed by :func:`patch`
    with ``variant="reference"`` where an ``fc1`` ratio is set)."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = self.mlp._tcs_residual(x)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _ratio_list(value: Ratios, depth: int, what: str) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        vals = [float(value)] * depth
    else:
        try:
            vals = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a ratio or a list of {depth} ratios, got {value!r}") from None
        if len(vals) != depth:
            raise ValueError(f"{what} schedule has {len(vals)} entries; the model has {depth} "
                             "blocks (give one ratio per block, or one number for all)")
    for i, v in enumerate(vals):
        if not 0 <= v < 1:
            raise ValueError(f"{what}[{i}] = {v} out of range; a ratio is the fraction of channels "
                             "removed, accepted [0, 1)")
    return vals


def _keep(ratio: float, n: int, what: str, floor: bool = False) -> Optional[int]:
    if ratio == 0:
        return None
    if floor:  # ToaSt's code: int(C * (1 - ratio)), at least 1
        k = max(1, int(n * (1 - ratio)))
        return k if k < n else None
    k = int(round((1 - ratio) * n))
    if k < 1:
        raise ValueError(f"{what}: ratio {ratio} would remove all {n} channels; keep at least 1 "
                         f"(ratio < {1 - 0.5 / n:.4f})")
    return k if k < n else None


def _blocks(model: Any) -> Sequence[nn.Module]:
    """The blocks of a model TCS can patch: a supported ViT with one class token and plain MLPs."""
    blocks = vit.require_vit(model, "tcs.patch", attention=(Attention, surgery.SlimAttention),
                             mlp=(Mlp, TCSMlp))
    for i, b in enumerate(blocks):
        if not isinstance(b.mlp.fc1, nn.Linear) or not isinstance(b.mlp.norm, nn.Identity):
            raise UnsupportedModelError(f"tcs.patch: block {i} MLP has fc1 {type(b.mlp.fc1).__name__} and norm "
                                        f"{type(b.mlp.norm).__name__}; TCS needs a Linear fc1 and no mlp.norm")
    if getattr(model, "num_prefix_tokens", 1) != 1 or getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(f"tcs.patch: unsupported model {type(model).__name__}: TCS needs one class "
                                    f"token (num_prefix_tokens == 1 and a cls_token), got "
                                    f"{getattr(model, 'num_prefix_tokens', None)} prefix tokens")
    return blocks


def is_patched(model: nn.Module) -> bool:
    """True if any block's MLP is a :class:`TCSMlp`."""
    return any(isinstance(b.mlp, TCSMlp) for b in getattr(model, "blocks", []))


def schedule(depth: int, ratio: float, last: int) -> list[float]:
    """A back-loaded schedule: ``ratio`` on the last ``last`` blocks, 0 (dense) before them."""
    if not 0 <= last <= depth:
        raise ValueError(f"last must be in 0..{depth}, got {last}")
    return [0.0] * (depth - last) + [float(ratio)] * last


def patch(
    model: nn.Module,
    fc1: Ratios = 0.0,
    fc2: Ratios = 0.0,
    *,
    mode: str = "sample",
    impl: str = "gather",
    patch_fraction: Optional[float] = None,
    seed: Optional[int] = None,
    variant: str = "project",
) -> nn.Module:
    """Install Token Channel Selection in place and return the model.

    Args:
        model: timm ViT with a class token (pruned by surgery or not).
        fc1: fraction of FFN input channels removed per block: one number or ``[depth]``.
        fc2: fraction of MLP hidden units removed per block: one number or ``[depth]``.
        mode: ``"sample"`` (per-image choice, batch-independent) or ``"batch"`` (ToaSt's code:
            one choice per batch).
        impl: ``"gather"`` (compute only the kept channels) or ``"mask"`` (zero the others and
            compute everything; a reference).
        patch_fraction: fraction of patch tokens used for the second score term, (0, 1]; below
            1 a ``seed`` is required and each block uses a fixed patch subset drawn from it.
            Default: 1 (project), :data:`REFERENCE_PATCH_FRACTION` drawn with replacement
            (reference; ``seed`` then defaults to 0).
        seed: seed of that subset.
        variant: ``"project"`` or ``"reference"`` (ToaSt's code; see the module docstring).
            The reference leaves block 0 dense whatever its ratios say.

    Blocks whose two ratios are 0 are not touched; patching again replaces earlier settings.
    """
    blocks = _blocks(model)
    reference = variants.check(variant) == "reference"
    if patch_fraction is None:
        patch_fraction = REFERENCE_PATCH_FRACTION if reference else 1.0
        if reference and seed is None:
            seed = 0
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not 0 < patch_fraction <= 1:
        raise ValueError(f"patch_fraction = {patch_fraction} out of range; accepted (0, 1]")
    if patch_fraction < 1 and seed is None:
        raise ValueError("random patch sampling (patch_fraction < 1) needs an explicit seed; "
                         "without one TCS stays deterministic and uses every patch")
    r1 = _ratio_list(fc1, len(blocks), "fc1")
    r2 = _ratio_list(fc2, len(blocks), "fc2")
    if reference:
        r1[0] = r2[0] = 0.0  # ToaSt's code never selects channels in block 0
        if any(r > 0 for r in r1) and any(type(b) is not Block for b in blocks):
            raise ValueError("the reference fc1 site replaces the block's forward; it needs plain "
                             "timm Blocks (restore any token patch first)")
    n_patches = model.patch_embed.num_patches if hasattr(model.patch_embed, "num_patches") else None
    plans = []
    for i, b in enumerate(blocks):
        k1 = _keep(r1[i], b.mlp.fc1.in_features, f"fc1[{i}]", floor=reference)
        k2 = _keep(r2[i], b.mlp.fc2.in_features, f"fc2[{i}]", floor=reference)
        patches = None
        if (k1 or k2) and patch_fraction < 1:
            if n_patches is None:
                raise ValueError("patch_fraction < 1 needs model.patch_embed.num_patches")
            g = torch.Generator().manual_seed(int(seed) * 1000 + i)
            if reference:  # ToaSt: max(1, int(P * fraction)) patches, drawn with replacement
                n = max(1, int(n_patches * patch_fraction))
                patches = torch.randint(0, n_patches, (n,), generator=g) if n < n_patches else None
            else:
                n = max(1, int(round(patch_fraction * n_patches)))
                patches = torch.randperm(n_patches, generator=g)[:n].sort().values
        plans.append((k1, k2, patches))
    unpatch(model)  # checks done: from here on the model changes
    for b, (k1, k2, patches) in zip(blocks, plans):
        if k1 is None and k2 is None:
            continue
        mlp = b.mlp
        mlp.__class__ = TCSMlp
        mlp.tcs_fc1_keep, mlp.tcs_fc2_keep = k1, k2
        mlp.tcs_mode, mlp.tcs_impl, mlp.tcs_patches = mode, impl, patches
        mlp.tcs_variant = variant
        mlp.__dict__["_tcs_attn"] = b.attn  # plain attribute: not a submodule, not in state_dict
        b.attn.qkv.register_forward_hook(mlp._tcs_capture)
        if reference and k1 is not None:
            b.__class__ = _TCSReferenceBlock
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove TCS from every block, in place; the model computes exactly what it did before."""
    for b in getattr(model, "blocks", []):
        qkv = getattr(getattr(b, "attn", None), "qkv", None)
        if qkv is not None:
            for key, hook in list(qkv._forward_hooks.items()):
                if getattr(hook, "__func__", None) is TCSMlp._tcs_capture:
                    del qkv._forward_hooks[key]
        if type(b) is _TCSReferenceBlock:
            b.__class__ = Block
        mlp = getattr(b, "mlp", None)
        if isinstance(mlp, TCSMlp):
            for name in ("tcs_fc1_keep", "tcs_fc2_keep", "tcs_mode", "tcs_impl", "tcs_patches",
                         "tcs_variant"):
                mlp.__dict__.pop(name, None)
            for name in ("_tcs_attn", "_tcs_cls_attn", "_tcs_w1t", "_tcs_w2t"):
                mlp.__dict__.pop(name, None)
            mlp.__class__ = Mlp
    return model


def settings(model: nn.Module) -> list[dict[str, Any]]:
    """Per block: ``{"fc1_keep", "fc2_keep", "mode", "variant"}`` (None where TCS is not installed)."""
    out = []
    for b in getattr(model, "blocks", []):
        m = b.mlp
        if isinstance(m, TCSMlp):
            out.append({"fc1_keep": m.tcs_fc1_keep, "fc2_keep": m.tcs_fc2_keep, "mode": m.tcs_mode,
                        "variant": m.tcs_variant})
        else:
            out.append({"fc1_keep": None, "fc2_keep": None, "mode": None, "variant": None})
    return out


def audit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    fc1: Ratios = 0.0,
    fc2: Ratios = 0.0,
    *,
    batch_size: int = 128,
    modes: Sequence[str] = MODES,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Does TCS accuracy depend on how the evaluation batches are formed?

    For each mode, a patched copy of ``model`` predicts every image of ``x`` one at a time, in
    shuffled batches of ``batch_size``, and in class-sorted batches of ``batch_size`` (the
    order of the paper's evaluation), predictions mapped back to data order.

    Args:
        model: timm ViT (not modified).
        x: images ``[N, 3, H, W]``; y: int64 labels ``[N]``.
        fc1, fc2: TCS ratios (see :func:`patch`).
        batch_size: images per batch in the batched runs.
        modes: TCS modes to audit.
        seed: seed of the shuffle.

    Returns:
        ``{mode: {"acc_batch1", "acc_shuffled", "acc_sorted", "changed_shuffled",
        "changed_sorted"}}``; ``changed_*`` is the fraction of predictions that differ from
        the batch-1 run.
    """
    import copy

    from . import measure

    if not isinstance(x, Tensor) or x.dim() != 4 or len(x) == 0:
        raise ValueError("x must be a non-empty image tensor [N, 3, H, W]")
    if not isinstance(y, Tensor) or y.shape != (len(x),):
        raise ValueError(f"y must be int64 labels [{len(x)}]")
    if any(m not in MODES for m in modes):
        raise ValueError(f"modes must be among {MODES}, got {modes!r}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    by_class = torch.sort(y, stable=True).indices
    out = {}
    for mode in modes:
        patched = patch(copy.deepcopy(model), fc1, fc2, mode=mode)
        single = measure.predict(patched, x, batch_size=1)
        row = {"acc_batch1": (single == y).float().mean().item()}
        for name, order in (("shuffled", perm), ("sorted", by_class)):
            pred = torch.empty_like(single)
            pred[order] = measure.predict(patched, x[order], batch_size=batch_size)
            row[f"acc_{name}"] = (pred == y).float().mean().item()
            row[f"changed_{name}"] = (pred != single).float().mean().item()
        out[mode] = row
    return out
