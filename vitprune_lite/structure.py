"""A (pruned) ViT's architecture written into its safetensors file, so it loads with no original.

A pruned model is no longer what any constructor builds: every block may keep its own number
of heads, query/key and value widths per head, and MLP hidden units, and the residual width
may be narrower. :func:`save` stores the weights as safetensors and, in the file's metadata,
a *structure*: how to build the dense model it came from (a timm name or
``VisionTransformer`` arguments), the widths it was cut to, its classes and input
normalisation. :func:`load` builds the dense skeleton, cuts it to those widths with
:mod:`vitprune_lite.surgery` (keeping the first units; their values are overwritten) and loads
the weights, so the result computes exactly what the saved model computed.

Structure (JSON, under the metadata key ``"vitprune_structure"``)::

    {"format": "vitprune-model", "format_version": 1,
     "builder": "vit" | "timm", "name": "deit_small_patch16_224" | null,
     "kwargs": {...constructor arguments: img_size, num_classes, ...},
     "img_size": 224, "num_classes": 1000, "embed_dim": 384,
     "blocks": [{"heads": 6, "qk_dim": 64, "v_dim": 64, "mlp_hidden": 1536}, ...],
     "classes": ["n01440764", ...] | null, "mean": [3 floats], "std": [3 floats]}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from . import paths, surgery

FORMAT = "vitprune-model"
FORMAT_VERSION = 1
META_KEY = "vitprune_structure"
INFO_KEY = "vitprune_info"


def origin(builder: str, kwargs: Mapping[str, Any], *, name: Optional[str] = None,
           classes: Optional[Sequence[str]] = None, mean: Sequence[float] = (0.5, 0.5, 0.5),
           std: Sequence[float] = (0.5, 0.5, 0.5)) -> dict[str, Any]:
    """How to build the dense model: ``builder`` ``"vit"`` (``VisionTransformer(**kwargs)``) or
    ``"timm"`` (``timm.create_model(name, **kwargs)``), plus classes and normalisation."""
    if builder not in ("vit", "timm"):
        raise ValueError(f"builder must be 'vit' or 'timm', got {builder!r}")
    if builder == "timm" and not name:
        raise ValueError("builder 'timm' needs the timm model name")
    return {"builder": builder, "name": name, "kwargs": dict(kwargs),
            "classes": list(classes) if classes is not None else None,
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def describe(model: nn.Module, source: Mapping[str, Any]) -> dict[str, Any]:
    """The structure of ``model`` (its current widths) built on ``source`` (:func:`origin`)."""
    widths = surgery.block_widths(model)
    img = model.patch_embed.img_size
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            **{k: source[k] for k in ("builder", "name", "kwargs", "classes", "mean", "std")},
            "img_size": int(img[0]) if isinstance(img, (tuple, list)) else int(img),
            "num_classes": int(model.num_classes), "embed_dim": int(model.embed_dim),
            "blocks": [{k: int(w[k]) for k in ("heads", "qk_dim", "v_dim", "mlp_hidden")} for w in widths]}


def _dense(structure: Mapping[str, Any]) -> nn.Module:
    from . import models  # noqa: F401  (loads the torchvision work-around before timm)
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if structure["builder"] == "vit":
        return VisionTransformer(**structure["kwargs"])
    return timm.create_model(structure["name"], pretrained=False, **structure["kwargs"])


def build(structure: Mapping[str, Any]) -> nn.Module:
    """An untrained model with exactly the widths of ``structure`` (weights are placeholders).

    Raises:
        ValueError: not a structure of this format, or widths the dense model cannot be cut to.
    """
    if structure.get("format") != FORMAT or structure.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"not a {FORMAT!r} version {FORMAT_VERSION} structure: "
                         f"format {structure.get('format')!r}, version {structure.get('format_version')!r}")
    model = _dense(structure)
    blocks = structure["blocks"]
    if len(blocks) != len(model.blocks):
        raise ValueError(f"structure has {len(blocks)} blocks, the dense {structure['builder']} model "
                         f"{structure.get('name') or ''} has {len(model.blocks)}")
    if structure["embed_dim"] != model.embed_dim:
        surgery.prune_embed(model, list(range(structure["embed_dim"])))
    plan = {}
    for i, (want, have) in enumerate(zip(blocks, surgery.block_widths(model))):
        entry: dict[str, Any] = {}
        h = want["heads"]
        if h != have["heads"]:
            entry["heads"] = list(range(h))
        if want["qk_dim"] != have["qk_dim"]:
            entry["qk"] = [list(range(want["qk_dim"]))] * h
        if want["v_dim"] != have["v_dim"]:
            entry["vo"] = [list(range(want["v_dim"]))] * h
        if want["mlp_hidden"] != have["mlp_hidden"]:
            entry["mlp"] = list(range(want["mlp_hidden"]))
        if entry:
            plan[i] = entry
    # Changed blocks become SlimAttention with the dense model's softmax scale, as surgery (and
    # torch-pruning, which keeps each head's width) left the saved model.
    surgery.apply_plan(model, plan)
    return model.eval()


def save(model: nn.Module, path: str | Path, source: Mapping[str, Any],
         info: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` as safetensors with its structure (and optional ``info``) in the metadata,
    atomically.

    Args:
        model: a timm ViT, pruned by :mod:`vitprune_lite.surgery` or torch-pruning, or not.
        path: ``*.safetensors`` file.
        source: :func:`origin` of the dense model, or a structure read by :func:`load`.
        info: JSON-serialisable facts to keep beside it (method, budget, step, accuracy...).
    """
    from safetensors.torch import save as st_save

    structure = describe(model, source)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "pt", META_KEY: json.dumps(structure)}
    if info is not None:
        meta[INFO_KEY] = json.dumps(info, default=paths._to_builtin)
    return paths.write_bytes_atomic(Path(path), st_save(state, metadata=meta))


def read_structure(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(structure, info)`` from a file's metadata, without reading the weights.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a safetensors file without a structure (e.g. plain timm weights).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if META_KEY not in meta:
        raise ValueError(f"{path} holds weights but no {META_KEY!r} metadata; pass plain weights "
                         f"with --model NAME --checkpoint FILE instead")
    return json.loads(meta[META_KEY]), json.loads(meta.get(INFO_KEY, "{}"))


def is_structured(path: str | Path) -> bool:
    """True if ``path`` is a safetensors file written by :func:`save`."""
    try:
        read_structure(path)
    except (ValueError, OSError, RuntimeError):  # RuntimeError: safetensors' header errors
        return False
    return True


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Build the model a :func:`save` file describes and load its weights.

    Returns:
        ``(model in eval mode, structure, info)``.
    """
    from safetensors.torch import load_file

    structure, info = read_structure(path)
    model = build(structure)
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval(), structure, info
