"""What every module knows about a timm ViT's structure, written down once.

A supported model is a timm ``VisionTransformer`` (dense, or pruned by
:mod:`vitprune_lite.surgery` or torch-pruning): a stack of blocks, each with a timm
``Attention`` as ``attn`` and an MLP as ``mlp``, between the embedding and the head. Here:

- :func:`head_geometry`: an attention's heads and per-head query/key and value widths;
- :func:`require_vit`: the supported-model check, with one exception type
  (:class:`vitprune_lite.errors.UnsupportedModelError`) and one message for every module;
- the forward stages, so that "run up to block k", "cut tokens after the embedding" or
  "probe one block" are written once::

      logits = head(model, run_blocks(model, embed(model, x)))   # == model(x), exactly

- :func:`eval_mode`: eval mode for a while, every submodule's own flag restored afterwards.

This module reads models; it never changes one, and it knows no pruning method. It imports
timm only inside :func:`require_vit`, so the measurement and runtime modules stay light.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

from torch import Tensor, nn

from .errors import UnsupportedModelError

__all__ = ["STAGES", "head_geometry", "require_vit", "embed", "run_blocks", "head", "forward",
           "eval_mode"]

#: The model attributes the forward stages use, in the order they run (``blocks`` in between).
STAGES = ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "norm", "forward_head")

_ACCEPTED = ("a timm VisionTransformer (e.g. models.create_base_model() or "
             "timm.create_model('deit_small_patch16_224'), pruned or not) whose blocks hold a timm "
             "Attention (or surgery's SlimAttention) as .attn and an Mlp as .mlp")


def head_geometry(attn: nn.Module) -> tuple[int, int, int]:
    """``(heads, qk_dim, v_dim)``: head count and query/key and value widths per head.

    timm's ``Attention`` has one ``head_dim`` for both; surgery's ``SlimAttention`` carries
    ``qk_dim`` and ``v_dim`` (its ``head_dim`` follows the value width, as timm's reshape needs).
    """
    d = attn.head_dim
    return attn.num_heads, getattr(attn, "qk_dim", d), getattr(attn, "v_dim", d)


def _refuse(model: Any, where: str, problem: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{where}: unsupported model {type(model).__name__} ({problem}); "
                                 f"accepted: {_ACCEPTED}")


def require_vit(model: Any, where: str, *, attention: Optional[tuple[type, ...]] = None,
                mlp: Optional[tuple[type, ...]] = None, stages: bool = True) -> Sequence[nn.Module]:
    """The model's blocks, if ``model`` is a ViT this package supports.

    Args:
        model: the object to check.
        where: the function asking, named in the message (e.g. ``"importance.score"``).
        attention: exact classes accepted as a block's ``attn`` (default: timm ``Attention``
            or any subclass of it).
        mlp: exact classes accepted as a block's ``mlp`` (default: any module).
        stages: also require the forward stages (:data:`STAGES`); ``False`` accepts a bare
            stack of blocks (a module with ``.blocks`` only).

    Returns:
        ``model.blocks`` (``nn.Sequential`` or ``nn.ModuleList``, at least one block).

    Raises:
        UnsupportedModelError: the message names ``where``, the model's class, what is missing
            or of the wrong class, and what is accepted.
    """
    from timm.layers.attention import Attention  # the package's torchvision shim is loaded by now

    if not isinstance(model, nn.Module):
        raise _refuse(model, where, "not a torch.nn.Module")
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise _refuse(model, where, "no .blocks (nn.Sequential or nn.ModuleList)")
    if len(blocks) == 0:
        raise _refuse(model, where, "no blocks")
    missing = [a for a in STAGES if not hasattr(model, a)] if stages else []
    if missing:
        raise _refuse(model, where, f"no {', '.join('.' + a for a in missing)}")
    for i, block in enumerate(blocks):
        attn, block_mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        ok = isinstance(attn, Attention) if attention is None else type(attn) in attention
        if not ok:
            wanted = "" if attention is None else "; accepted here: " + ", ".join(c.__name__ for c in attention)
            raise _refuse(model, where, f"block {i} attention is {type(attn).__name__}{wanted}")
        ok = isinstance(block_mlp, nn.Module) if mlp is None else type(block_mlp) in mlp
        if not ok:
            wanted = "" if mlp is None else "; accepted here: " + ", ".join(c.__name__ for c in mlp)
            raise _refuse(model, where, f"block {i} MLP is {type(block_mlp).__name__}{wanted}")
    return blocks


# ----------------------------------------------------------------------------- forward stages

def embed(model: nn.Module, x: Tensor) -> Tensor:
    """Images ``[B, 3, H, W]`` -> tokens entering block 0, ``[B, N, C]`` (prefix tokens first).

    timm's order: patch embedding, prefix tokens and position embedding, patch dropout (identity
    in eval mode), pre-norm.
    """
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def run_blocks(model: nn.Module, tokens: Tensor, start: int = 0, stop: Optional[int] = None) -> Tensor:
    """Tokens ``[B, N, C]`` through ``model.blocks[start:stop]`` (all by default).

    The token count may change on the way (token reduction); the result is ``[B, N', C]``.
    """
    blocks = model.blocks
    if start == 0 and stop is None and isinstance(blocks, nn.Sequential):
        return blocks(tokens)  # timm's own call: the same modules, hooks and trace as model(x)
    for block in list(blocks)[start:stop]:
        tokens = block(tokens)
    return tokens


def head(model: nn.Module, tokens: Tensor) -> Tensor:
    """Tokens leaving the last block ``[B, N, C]`` -> logits ``[B, classes]``.

    timm's order: final norm, pooling (class token or mean), ``fc_norm``, head dropout, classifier.
    """
    return model.forward_head(model.norm(tokens))


def forward(model: nn.Module, x: Tensor) -> Tensor:
    """Images ``[B, 3, H, W]`` -> logits ``[B, classes]`` through the three stages; equals
    ``model(x)`` exactly (no attention mask, no gradient checkpointing)."""
    return head(model, run_blocks(model, embed(model, x)))


# ----------------------------------------------------------------------------- modes

@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the context; afterwards every submodule gets its own ``training`` flag
    back (``model.train(previous)`` would overwrite a deliberate mix, e.g. a frozen part)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
