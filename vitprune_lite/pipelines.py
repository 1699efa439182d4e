"""End to end, per device: what the device sends + its budget -> a pruned model and a report.

Every pipeline has the same shape so notebook 04 can run them side by side::

    pipeline(base, request, public, *, options...) -> PrunedModel

- ``base``: the dense model (never modified; a pruned copy is returned);
- ``request``: a :class:`DeviceRequest` - what leaves the device (its GMM upload, or nothing for
  the data-free methods) and its budget;
- ``public``: a :class:`PublicData` - the cloud's labelled public pool and its features;
- the result: a :class:`PrunedModel` whose ``report`` says what was done and at what size.

The cloud never sees the device's private images: the private test accuracy is added on the
device side by :func:`evaluate_on_device`, after the pipeline has returned. Model selection uses
a validation split carved from the cloud's own fine-tune set.

Implemented here:

- :func:`tap_vits`: TAP-ViTs (METHODS.md section 1): GMM upload -> metric and fine-tune sets
  (:func:`vitprune_lite.gmm.select`) -> composite neuron importance + KL layer sensitivity
  (:mod:`vitprune_lite.importance`) -> surgery -> recovery fine-tune (:func:`vitprune_lite.models.fit`).
- :func:`one_size_fits_all`: the same steps on a random public subset (no upload), one model
  for every device - the baseline TAP-ViTs argues against.

Not implemented yet (notebook 04's other rows): ToaSt (+ TCS), the torch-pruning peer, the
token methods, the combined structure + token plan, and the oracle; each is meant to return a
:class:`PrunedModel` from the same arguments, sharing :func:`prune_and_recover`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from . import gmm, importance, measure, models, surgery


@dataclass(frozen=True)
class DeviceRequest:
    """What a device sends to the cloud.

    Attributes:
        device: the device's name (for the report only).
        budget: ``(mlp_keep, attn_keep)``, each in (0, 1] (e.g. one of
            :data:`vitprune_lite.importance.TAP_BUDGETS`).
        upload: the device's :class:`vitprune_lite.gmm.Upload` (``None`` for data-free methods).
    """

    device: str
    budget: tuple[float, float]
    upload: Optional[gmm.Upload] = None


@dataclass(frozen=True, eq=False)
class PublicData:
    """The cloud's labelled public pool.

    Attributes:
        x: float ``[M, 3, H, W]`` normalised images (``ImageSet.tensors()``), pool order.
        y: int64 ``[M]`` public labels.
        features: the pool embedded in the uploads' feature space (:func:`vitprune_lite.gmm.embed_pool`);
            its ``index`` addresses rows of ``x``. Needed only by methods that read an upload.
    """

    x: Tensor
    y: Tensor
    features: Optional[gmm.CloudFeatures] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.x, Tensor) and self.x.ndim == 4 and self.x.shape[1] == 3):
            raise ValueError(f"public x must be a float tensor [M, 3, H, W], got {getattr(self.x, 'shape', type(self.x))}")
        if not isinstance(self.y, Tensor) or self.y.shape != (len(self.x),):
            raise ValueError(f"public y must be a tensor [M] with M = {len(self.x)}, got {getattr(self.y, 'shape', type(self.y))}")
        if self.features is not None and len(self.features.index) and int(self.features.index.max()) >= len(self.x):
            raise ValueError(f"public features index rows up to {int(self.features.index.max())}, "
                             f"but the pool holds {len(self.x)} images")


@dataclass(eq=False)
class PrunedModel:
    """A pipeline's output.

    Attributes:
        method: pipeline name.
        device: the device it was built for (``"*"``: every device).
        model: the pruned model (eval mode).
        report: JSON-serialisable facts: budget, sizes, FLOPs, validation accuracies, timings.
    """

    method: str
    device: str
    model: nn.Module
    report: dict[str, Any] = field(default_factory=dict)


def _check_budget(budget: Any) -> tuple[float, float]:
    try:
        m, a = (float(v) for v in budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a pair (mlp_keep, attn_keep), got {budget!r}") from None
    if not (0 < m <= 1 and 0 < a <= 1):
        raise ValueError(f"budget keeps must each be in (0, 1], got ({m}, {a})")
    return m, a


def split_validation(idx: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split fine-tune indices ``[n]`` into (train, validation) with a seeded permutation.

    Args:
        idx: pool indices of the fine-tune set.
        fraction: share held out for validation, in [0, 1); 0 gives an empty validation split.

    Raises:
        ValueError: fraction outside [0, 1), or a split that would leave no training images.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    idx = np.asarray(idx, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(idx))
    n_val = int(round(fraction * len(idx)))
    if len(idx) - n_val < 1:
        raise ValueError(f"a fine-tune set of {len(idx)} images leaves none for training at val_fraction {fraction}")
    return idx[perm[n_val:]], idx[perm[:n_val]]


def prune_and_recover(
    base: nn.Module,
    public: PublicData,
    metric_idx: np.ndarray,
    finetune_idx: np.ndarray,
    budget: tuple[float, float],
    *,
    criterion: str = "tap",
    adaptive: bool = True,
    alpha: float = 1.1,
    score_options: Optional[Mapping[str, Any]] = None,
    sens_images: Optional[int] = None,
    val_fraction: float = 0.1,
    ft_steps: int = 200,
    ft_batch: int = 64,
    ft_lr: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The shared core: score on the metric set, prune, fine-tune, keep the better on validation.

    Args:
        base: dense timm ViT (left untouched).
        public: the public pool.
        metric_idx: pool indices ``[n_metric]`` the units are scored on.
        finetune_idx: pool indices ``[n_finetune]`` for recovery (a validation share is held out).
        budget: ``(mlp_keep, attn_keep)``.
        criterion: an :data:`vitprune_lite.importance.CRITERIA` name.
        adaptive: TAP-ViTs' KL layer sensitivity -> per-layer keep ratios; False keeps every
            layer at the budget's ratio.
        alpha: softmax factor of the adaptive ratios (paper: 1.1).
        score_options: passed to :func:`vitprune_lite.importance.score`.
        sens_images: images of the metric set used by the layer sensitivity (None: all).
        val_fraction: share of the fine-tune set held out for validation.
        ft_steps: recovery optimiser steps (0: no fine-tune).
        ft_batch, ft_lr: recovery batch size and peak learning rate.
        seed: seeds the validation split, scoring options that take one, and the fine-tune.
        progress: show the fine-tune progress bar.

    Returns:
        ``(model, report)``: the pruned model (eval mode) and what happened, including
        ``"val_acc_pruned"``, ``"val_acc_finetuned"`` and ``"kept"`` (which of the two was kept:
        fine-tuning is kept unless it lowers validation accuracy).
    """
    budget = _check_budget(budget)
    if ft_steps < 0:
        raise ValueError(f"ft_steps must be >= 0, got {ft_steps}")
    metric_idx = np.asarray(metric_idx, dtype=np.int64)
    if len(metric_idx) < 2:
        raise ValueError(f"the metric set needs at least 2 images, got {len(metric_idx)}")
    train_idx, val_idx = split_validation(finetune_idx, val_fraction, seed)
    t = {"start": time.perf_counter()}
    x_metric = public.x[metric_idx]
    scores = importance.score(base, criterion, x_metric, public.y[metric_idx], **dict(score_options or {}))
    t["scored"] = time.perf_counter()
    ratios = None
    if adaptive:
        sens = importance.layer_sensitivity(base, x_metric, scores, max_images=sens_images)
        ratios = importance.adaptive_ratios(sens, budget, alpha)
    t["ratios"] = time.perf_counter()
    model = importance.prune_copy(base, importance.make_plan(base, scores, budget, layer_ratios=ratios))
    val = (public.x[val_idx], public.y[val_idx]) if len(val_idx) else None
    acc_pruned = measure.accuracy(model, *val) if val else None
    hist: dict[str, Any] = {"steps": 0, "seconds": 0.0}
    acc_ft, kept = None, "pruned"
    if ft_steps:
        tuned = copy.deepcopy(model)
        hist = models.fit(tuned, public.x[train_idx], public.y[train_idx], steps=ft_steps, batch_size=ft_batch,
                          lr=ft_lr, seed=seed, progress=progress, desc="recover")
        acc_ft = measure.accuracy(tuned, *val) if val else None
        # Without a validation split there is nothing to select on: the fine-tuned weights stand.
        if acc_ft is None or acc_pruned is None or acc_ft >= acc_pruned:
            model, kept = tuned, "finetuned"
    t["done"] = time.perf_counter()
    x1 = public.x[:1]
    report = {
        "criterion": criterion, "budget": list(budget),
        "block_params_kept_target": importance.block_param_fraction(*budget),
        "adaptive": adaptive,
        "layer_keep": {k: v.tolist() for k, v in ratios.items()} if ratios else None,
        "n_metric": int(len(metric_idx)), "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
        "params": measure.count_params(model), "flops": measure.count_flops(model, x1),
        "dense_params": measure.count_params(base), "dense_flops": measure.count_flops(base, x1),
        "widths": surgery.block_widths(model),
        "val_acc_pruned": acc_pruned, "val_acc_finetuned": acc_ft, "kept": kept,
        "finetune": {"steps": hist["steps"], "seconds": hist["seconds"], "lr": ft_lr, "batch": ft_batch},
        "seconds": {"score": t["scored"] - t["start"], "layer_ratios": t["ratios"] - t["scored"],
                    "prune_and_recover": t["done"] - t["ratios"]},
    }
    return model.eval(), report


def tap_vits(base: nn.Module, request: DeviceRequest, public: PublicData, *, n_metric: int = 640,
             n_finetune: int = 6400, **options: Any) -> PrunedModel:
    """TAP-ViTs for one device: its GMM upload picks the public images; prune; recover.

    Args:
        base: dense timm ViT (left untouched).
        request: the device's budget and upload (required).
        public: the public pool with ``features`` in the upload's feature space.
        n_metric, n_finetune: sizes of the metric and fine-tune sets (paper: 640 and 6,400).
        **options: passed to :func:`prune_and_recover` (``ft_steps``, ``val_fraction``, ...).

    Raises:
        ValueError: no upload, or public data without features.
    """
    _check_budget(request.budget)
    if request.upload is None:
        raise ValueError(f"tap_vits needs the device's GMM upload; request for {request.device!r} has none")
    if public.features is None:
        raise ValueError("tap_vits needs PublicData.features (gmm.embed_pool in the upload's feature space)")
    sel = gmm.select(request.upload, public.features, n_metric=n_metric, n_finetune=n_finetune)
    model, report = prune_and_recover(base, public, sel.metric, sel.finetune, request.budget, **options)
    report["selection"] = "gmm"
    return PrunedModel("tap_vits", request.device, model, report)


def one_size_fits_all(base: nn.Module, request: DeviceRequest, public: PublicData, *, n_metric: int = 640,
                      n_finetune: int = 6400, **options: Any) -> PrunedModel:
    """The same pruning scored and recovered on a random public subset: one model for all devices.

    The upload, if any, is ignored; the selection is seeded by ``options["seed"]`` (default 0)
    only, so every device gets the same model.
    """
    _check_budget(request.budget)
    pool = public.features.index if public.features is not None else np.arange(len(public.x))
    sel = gmm.random_selection(pool, n_metric=n_metric, n_finetune=n_finetune, seed=options.get("seed", 0))
    model, report = prune_and_recover(base, public, sel.metric, sel.finetune, request.budget, **options)
    report["selection"] = "random"
    return PrunedModel("one_size_fits_all", "*", model, report)


PIPELINES = {"tap_vits": tap_vits, "one_size_fits_all": one_size_fits_all}


def evaluate_on_device(result: PrunedModel, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Device side: accuracy on the device's private test split, recorded in the report.

    Args:
        result: a pipeline's output.
        x: float ``[N, 3, H, W]`` private test images; y: int64 ``[N]``.

    Returns:
        Top-1 accuracy in [0, 1] (per sample, independent of batching).
    """
    acc = measure.accuracy(result.model, x, y, batch_size=batch_size)
    result.report["device_test_acc"] = acc
    return acc
