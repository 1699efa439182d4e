"""The real path, pruning side: a model by name or file + an image folder + a budget -> a pruned,
measured model on disk.

``python -m vitprune_lite prune`` runs :func:`prune`: it loads the model (:func:`load_model`:
the embedded ``base_vit``, any timm ViT name with random, hub or local weights, or a file saved
by :mod:`vitprune_lite.structure`), reads a scoring set from ``DIR/train`` (the device upload's
metric set for TAP-ViTs, a seeded random sample otherwise), scores and prunes with the same
pipeline functions the notebooks call (:data:`METHODS`, no recovery here: that is
:mod:`vitprune_lite.recover`), saves the pruned model with its structure and writes
``report.json`` (parameters, FLOPs, latency at batch 1 and 32, accuracy on ``DIR/val``, all
through :mod:`vitprune_lite.measure`).

``python -m vitprune_lite upload`` is the device's side of TAP-ViTs on folders (:func:`upload`):
pixel statistics of its private images, in a feature space fitted on the public ``DIR/train``
pool, summarised as a Gaussian mixture (:mod:`vitprune_lite.gmm`). The cloud refits the same
space from the same pool (:func:`pool_features`) and refuses an upload made in another one.

Every argument is checked (:func:`check_prune_args`) before any model or image is loaded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import folder_data, methods, structure

BASE_VIT = "base_vit"

# ----------------------------------------------------------------------------- methods

#: Defaults of the public pool the TAP-ViTs feature space is fitted on; ``upload`` and ``prune``
#: must use the same values (the upload's feature-space version checks it).
POOL_SIZE = 20_000      # public images embedded (a seeded sample of DIR/train)
FEATURE_SIZE = 64       # pixels per side for pixel statistics
FEATURE_DIM = 16        # whitened principal components


Budget = tuple[float, float]  # (mlp_keep, attn_keep)


def _request(budget: Budget) -> Any:
    from .pipelines import DeviceRequest

    return DeviceRequest("cli", budget)


def _run_tap_vits(base: nn.Module, public: Any, budget: Budget, seed: int) -> Any:
    from . import gmm, pipelines

    idx = np.arange(len(public.x))  # the loaded images ARE the upload's metric set, best first
    return pipelines.tap_vits(base, _request(budget), public, selection=gmm.Selection(idx, idx),
                              ft_steps=0, val_fraction=0.0, seed=seed)


def _run_one_size(base: nn.Module, public: Any, budget: Budget, seed: int) -> Any:
    from . import pipelines

    n = len(public.x)
    return pipelines.one_size_fits_all(base, _request(budget), public, n_metric=n, n_finetune=n,
                                       ft_steps=0, val_fraction=0.0, seed=seed)


def _run_toast(base: nn.Module, public: Any, budget: Budget, seed: int) -> Any:
    from . import pipelines, tcs

    # Token Channel Selection is a forward-time patch with no weights of its own; the file
    # holds the coupled QK/VO structure, which is what physically shrinks.
    res = pipelines.toast(base, _request(budget), public, n_finetune=len(public.x), tcs_fc1=0.0, tcs_fc2=0.0,
                          ft_steps=0, val_fraction=0.0, seed=seed)
    tcs.unpatch(res.model)
    return res


def _torch_pruning(kind: str) -> Callable[..., Any]:
    def run(base: nn.Module, public: Any, budget: Budget, seed: int) -> Any:
        from . import pipelines

        return pipelines.torch_pruning(base, _request(budget), public, n_finetune=len(public.x),
                                       importance_kind=kind, ft_steps=0, val_fraction=0.0, seed=seed)
    return run


def _criterion(name: str) -> Callable[..., Any]:
    def run(base: nn.Module, public: Any, budget: Budget, seed: int) -> Any:
        from . import pipelines

        idx = np.arange(len(public.x))
        model, report = pipelines.prune_and_recover(base, public, idx, idx, budget, criterion=name,
                                                    adaptive=False, ft_steps=0, val_fraction=0.0, seed=seed)
        return pipelines.PrunedModel(name, "*", model, report)
    return run


@dataclass(frozen=True)
class Method:
    """One pruning method as the command line runs it (its name, label and summary are in
    :mod:`vitprune_lite.methods`).

    Attributes:
        run: ``(base, public, (mlp_keep, attn_keep), seed) -> pipelines.PrunedModel``, no recovery.
        reads_images: scores on the scoring set (else weights only; a couple of images suffice).
        needs_upload: reads a device upload (TAP-ViTs).
    """

    run: Callable[..., Any]
    reads_images: bool
    needs_upload: bool


#: name (:mod:`vitprune_lite.methods`) -> method; every entry calls the notebooks' pipeline or
#: importance code; :data:`vitprune_lite.cli_real.METHOD_NAMES` lists the same names (tests check).
METHODS: dict[str, Method] = {
    "tap_vits": Method(_run_tap_vits, True, True),
    "one_size_fits_all": Method(_run_one_size, True, False),
    "toast": Method(_run_toast, False, False),  # TCS off: the file holds the coupled structure
    "torch_pruning": Method(_torch_pruning("magnitude"), False, False),
    "torch_pruning_taylor": Method(_torch_pruning("taylor"), True, False),
    "taylor": Method(_criterion("taylor"), True, False),
    "magnitude_l1": Method(_criterion("magnitude_l1"), False, False),
    "magnitude_l2": Method(_criterion("magnitude_l2"), False, False),
    "random": Method(_criterion("random"), False, False),
}


def budget_pair(fraction: float) -> Budget:
    """A block-parameter fraction -> ``(mlp_keep, attn_keep)``.

    TAP-ViTs' five fractions (0.9 ... 0.5) map to its published pairs
    (:data:`vitprune_lite.importance.TAP_BUDGETS`), as in the notebooks; any other fraction ``f``
    keeps ``f`` of both (``(8 m + 4 a) / 12 = f`` either way).
    """
    from .importance import TAP_BUDGETS, block_param_fraction

    for pair in TAP_BUDGETS:
        if abs(block_param_fraction(*pair) - fraction) < 5e-3:
            return pair
    return float(fraction), float(fraction)


# ----------------------------------------------------------------------------- arguments

def _timm_names() -> list[str]:
    from . import models  # noqa: F401  (torchvision work-around before timm)
    import timm

    return timm.list_models()


def check_prune_args(*, model: Optional[str], checkpoint: Optional[str], data: str, method: str,
                     budget: float, upload_path: Optional[str], image_size: Optional[int],
                     n_metric: int, device: Optional[str] = None) -> tuple[str, ...]:
    """Refuse bad arguments before any work; returns the dataset's classes.

    Raises:
        ValueError: unknown method or model, budget outside (0, 1], upload given to a method that
            does not read one (or missing for one that does), bad sizes.
        FileNotFoundError: missing data folder, split, checkpoint or upload.
    """
    methods.check(method, tuple(METHODS))
    if not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget {budget!r} is the fraction of block parameters kept; accepted (0, 1], e.g. 0.5")
    spec = METHODS[method]
    if spec.needs_upload and not upload_path:
        raise ValueError(f"method {method!r} selects its images with a device upload: pass --upload FILE "
                         f"(made by `python -m vitprune_lite upload`)")
    if upload_path and not spec.needs_upload:
        raise ValueError(f"method {method!r} does not read a device upload; --upload is for "
                         f"{[m for m, s in METHODS.items() if s.needs_upload]}")
    if upload_path and not Path(upload_path).is_file():
        raise FileNotFoundError(f"upload {upload_path} not found")
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be a positive number of pixels, got {image_size}")
    if n_metric < 2:
        raise ValueError(f"--n-metric must be >= 2 images, got {n_metric}")
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {device!r}; accepted: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no GPU here")
    check_model_arg(model, checkpoint)
    classes = folder_data.classes_of(data)
    folder_data.scan(data, "val", classes)  # the report's accuracy split must exist before work starts
    return classes


def is_base_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a base-model checkpoint (``make train``): its JSON beside it names a model config."""
    import json

    meta = Path(path).with_suffix(".json")
    try:
        return "model_config" in json.loads(meta.read_text())
    except (OSError, ValueError):
        return False


def check_model_arg(model: Optional[str], checkpoint: Optional[str]) -> None:
    """``--model`` / ``--checkpoint``: a known name, an existing file."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    if model is None:
        if checkpoint is None or not (structure.is_structured(checkpoint) or is_base_checkpoint(checkpoint)):
            raise ValueError("--model is needed (base_vit or a timm ViT name) unless --checkpoint is a model "
                             "file saved by this package (prune/recover output, or a base-model checkpoint)")
        return
    if model != BASE_VIT and model not in _timm_names():
        raise ValueError(f"unknown model {model!r}; accepted: {BASE_VIT!r} (the embedded base model) or a timm "
                         f"ViT name such as 'deit_small_patch16_224' (see timm.list_models('deit*'))")


# ----------------------------------------------------------------------------- models

def _plain_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_ema"):  # common wrappers of training scripts
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


def load_model(model: Optional[str], checkpoint: Optional[str] = None, *, classes: Optional[Sequence[str]] = None,
               image_size: Optional[int] = None, pretrained: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The model to prune or recover, and its :func:`vitprune_lite.structure.origin`.

    Args:
        model: ``"base_vit"``, a timm name, or None when ``checkpoint`` is a structured file.
        checkpoint: a file saved by :func:`vitprune_lite.structure.save` (any pruned model), the
            base model's checkpoint, or plain weights (safetensors / torch state dict) for ``model``.
        classes: the data's class names; a fresh timm model gets that many outputs, a loaded
            one must already have them.
        image_size: pixels per side; a fresh timm model is built for it, a loaded one must match.
        pretrained: timm hub weights (cached or reachable).

    Raises:
        ValueError: class count or image size that the model does not have.
    """
    from . import models

    n_cls = len(classes) if classes is not None else None
    if checkpoint is not None and structure.is_structured(checkpoint):
        net, struct, _ = structure.load(checkpoint)
        if model is not None and model != (struct["name"] or BASE_VIT) and struct["builder"] == "timm":
            raise ValueError(f"--model {model!r} but {checkpoint} was built from {struct['name']!r}; "
                             f"omit --model for a saved model file")
        src = {k: struct[k] for k in ("builder", "name", "kwargs", "classes", "mean", "std")}
    elif model == BASE_VIT or (model is None and checkpoint is not None and is_base_checkpoint(checkpoint)):
        model = BASE_VIT
        net, meta = models.load_checkpoint(checkpoint) if checkpoint else models.load_base_model()
        from .data import CLASSES

        src = structure.origin("vit", meta["model_config"], classes=CLASSES)
    else:
        kwargs: dict[str, Any] = {}
        if not pretrained and checkpoint is None:
            if n_cls is not None:
                kwargs["num_classes"] = n_cls
            if image_size is not None:
                kwargs["img_size"] = image_size
        net = models.create_timm_model(model, pretrained=pretrained, **kwargs)
        if checkpoint is not None:
            try:
                net.load_state_dict(_plain_state(Path(checkpoint)))
            except RuntimeError as err:
                raise ValueError(f"{checkpoint} does not fit timm model {model!r} (wrong model, or a head "
                                 f"for another number of classes): {str(err).splitlines()[0]} ...") from None
        cfg = getattr(net, "pretrained_cfg", None) or {}
        size = net.patch_embed.img_size
        kwargs = {"num_classes": int(net.num_classes), "img_size": int(size[0])}
        src = structure.origin("timm", kwargs, name=model, mean=cfg.get("mean", (0.5,) * 3),
                               std=cfg.get("std", (0.5,) * 3))
    have = int(net.patch_embed.img_size[0])
    if image_size is not None and image_size != have:
        raise ValueError(f"--image-size {image_size} but the model takes {have} x {have} images; omit "
                         f"--image-size (images are resized to {have}) or build the model for {image_size}")
    if n_cls is not None and int(net.num_classes) != n_cls:
        raise ValueError(f"the model has {net.num_classes} classes but the data has {n_cls} class folders; "
                         f"use data with the model's classes, or a fresh timm model (no weights) for these")
    if classes is not None:
        if src["classes"] is not None and list(src["classes"]) != list(classes) and model != BASE_VIT:
            raise ValueError(f"the model's classes {src['classes'][:5]}... differ from the data's "
                             f"{list(classes)[:5]}...")
        src["classes"] = list(classes)
    return net.eval(), src


def image_size_of(model: nn.Module) -> int:
    """Pixels per side the model takes."""
    return int(model.patch_embed.img_size[0])


# ----------------------------------------------------------------------------- TAP-ViTs upload

def pool_features(root: str | Path, *, pool_size: int = POOL_SIZE, feature_size: int = FEATURE_SIZE,
                  dim: int = FEATURE_DIM, seed: int = 0, workers: int = 0):
    """The public pool and its pixel-statistics features: ``(pool split, extractor, CloudFeatures)``.

    The pool is a seeded sample of ``root/train`` (all of it if smaller than ``pool_size``); the
    extractor's projection is fitted on it, so a device and the cloud calling this with the same
    arguments get the same feature space (same version string).
    """
    from . import gmm
    from .features import PixelStats

    train = folder_data.scan(root, "train")
    if len(train) > pool_size:
        idx = np.sort(np.random.default_rng(seed).choice(len(train), pool_size, replace=False))
        train = train.subset(idx)
    ex = PixelStats(dim)
    raw = np.concatenate([ex.raw(c) for c in folder_data.load_uint8(train, feature_size, workers)])
    ex.projection.fit(raw)
    cloud = gmm.CloudFeatures(ex.projection.transform(raw), ex.space, np.arange(len(train)))
    return train, ex, cloud


def _private_images(folder: Path, size: int) -> np.ndarray:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in folder_data.IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no images with suffixes {folder_data.IMAGE_SUFFIXES}")
    return np.stack([folder_data.load_image(f, size) for f in files])


def upload(data: str | Path, private: str | Path, out: str | Path, *, pool_size: int = POOL_SIZE,
           feature_size: int = FEATURE_SIZE, dim: int = FEATURE_DIM, seed: int = 0, workers: int = 0) -> dict[str, Any]:
    """Device side: summarise the images under ``private`` as a GMM upload, written to ``out`` (JSON).

    Returns:
        ``{"path", "n_private", "k", "bytes"}``.
    """
    from . import gmm, paths

    private = Path(private)
    if not private.is_dir():
        raise FileNotFoundError(f"private image folder {private} does not exist")
    _, ex, _ = pool_features(data, pool_size=pool_size, feature_size=feature_size, dim=dim, seed=seed, workers=workers)
    images = _private_images(private, feature_size)
    fit = gmm.device_upload(images, ex, seed=seed)
    text = fit.upload.to_json()
    paths.write_bytes_atomic(Path(out), text.encode())
    return {"path": str(out), "n_private": len(images), "k": fit.chosen_k, "bytes": len(text)}


def read_upload(path: str | Path):
    """A :class:`vitprune_lite.gmm.Upload` from ``.json`` or ``.npz``."""
    from .gmm import Upload

    path = Path(path)
    return Upload.from_bytes(path.read_bytes()) if path.suffix == ".npz" else Upload.from_json(path.read_text())


# ----------------------------------------------------------------------------- prune

def _scoring_set(root: Path, method: str, upload_path: Optional[str], n_metric: int, n_finetune: int,
                 seed: int, pool_size: int, feature_size: int, workers: int):
    """(metric split, fine-tune split or None, selection facts)."""
    from . import gmm

    if METHODS[method].needs_upload:
        up = read_upload(upload_path)
        if up.feature_space != "pixel_stats":
            raise ValueError(f"upload is in feature space {up.feature_space!r}; the command line reads "
                             f"'pixel_stats' uploads (python -m vitprune_lite upload)")
        pool, _, cloud = pool_features(root, pool_size=pool_size, feature_size=feature_size, dim=up.dim,
                                       seed=seed, workers=workers)
        if up.feature_version != cloud.space.version:
            raise ValueError(f"upload feature space version {up.feature_version} differs from the pool's "
                             f"{cloud.space.version}: make the upload from this DIR with the same "
                             f"--pool-size/--feature-size/--seed as prune")
        sel = gmm.select(up, cloud, n_metric=n_metric, n_finetune=n_finetune)
        return pool.subset(sel.metric), pool.subset(sel.finetune), {"selection": "upload", "pool": len(pool)}
    train = folder_data.scan(root, "train")
    n = min(n_metric if METHODS[method].reads_images else 2, len(train))
    idx = np.random.default_rng(seed).permutation(len(train))[:n]
    return train.subset(idx), None, {"selection": "random", "pool": len(train)}


def _latency(models: dict[str, nn.Module], size: int, device: str, rounds: int) -> dict[str, Any]:
    from . import measure

    out = {}
    for batch in (1, 32):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        lat = measure.measure_latency(models, x, rounds=rounds, device=device,
                                      min_run_time=0.2 if rounds > 1 else 0.02)
        out[f"batch_{batch}"] = {k: v.to_dict() for k, v in lat.items()}
    return out


def prune(*, model: Optional[str], data: str, method: str, budget: float, out: str,
          checkpoint: Optional[str] = None, upload_path: Optional[str] = None, pretrained: bool = False,
          image_size: Optional[int] = None, n_metric: int = 640, n_finetune: int = 6400, seed: int = 0,
          device: Optional[str] = None, workers: int = 2, latency_rounds: int = 5, pool_size: int = POOL_SIZE,
          feature_size: int = FEATURE_SIZE, batch_size: int = 128) -> dict[str, Any]:
    """Score, prune, save and measure; see the module docstring. Returns the report (also in ``out/report.json``).

    Writes ``out/pruned.safetensors`` (weights + structure), ``out/report.json`` and, for
    TAP-ViTs, ``out/finetune.txt`` (the upload's fine-tune set, for ``recover --train-list``).
    """
    from torch.utils.data import DataLoader

    from . import measure, paths, pipelines

    classes = check_prune_args(model=model, checkpoint=checkpoint, data=data, method=method, budget=budget,
                               upload_path=upload_path, image_size=image_size, n_metric=n_metric, device=device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir, root = Path(out), Path(data)
    t0 = time.perf_counter()
    base, src = load_model(model, checkpoint, classes=classes, image_size=image_size, pretrained=pretrained)
    size = image_size_of(base)
    metric, finetune, sel_info = _scoring_set(root, method, upload_path, n_metric, n_finetune, seed,
                                              pool_size, feature_size, workers)
    x, y = folder_data.load_tensors(metric, size, src["mean"], src["std"], workers)
    base = base.to(device)
    public = pipelines.PublicData(x.to(device), y.to(device))
    pair = budget_pair(budget)
    t1 = time.perf_counter()
    result = METHODS[method].run(base, public, pair, seed)
    pruned = result.model.eval()
    t2 = time.perf_counter()

    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"method": method, "budget": budget, "budget_pair": list(pair), "source": model or checkpoint}
    structure.save(pruned, out_dir / "pruned.safetensors", src, info)
    if finetune is not None:
        paths.write_bytes_atomic(out_dir / "finetune.txt", ("\n".join(finetune.files) + "\n").encode())

    val = folder_data.FolderDataset(folder_data.scan(root, "val", classes), size, src["mean"], src["std"])
    loader = DataLoader(val, batch_size=batch_size, num_workers=workers)
    x1 = torch.zeros(1, 3, size, size, device=device)
    report: dict[str, Any] = {
        "method": method, "model": model, "checkpoint": checkpoint, "data": str(root), "budget": budget,
        "budget_pair": list(pair), "device": device, "seed": seed, "classes": len(classes),
        "scoring": {**sel_info, "images": len(metric), "finetune_list": "finetune.txt" if finetune is not None else None},
        "structure": structure.describe(pruned, src),
        "params": {"dense": measure.count_params(base), "pruned": measure.count_params(pruned)},
        "flops_per_image": {"dense": measure.count_flops(base, x1), "pruned": measure.count_flops(pruned, x1)},
        "val_accuracy": {"dense": measure.accuracy(base, loader), "pruned": measure.accuracy(pruned, loader),
                         "images": len(val)},
        "pipeline": {k: v for k, v in result.report.items() if k not in ("widths",)},
        "seconds": {"load_and_select": t1 - t0, "score_and_prune": t2 - t1},
    }
    if latency_rounds > 0:
        report["latency_ms"] = _latency({"dense": base, "pruned": pruned}, size, device, latency_rounds)
    report["environment"] = measure.environment()
    paths.write_json_atomic(out_dir / "report.json", report)
    return report
