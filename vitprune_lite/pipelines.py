"""End to end, per device: what the device sends + its budget -> a pruned model and a report.

Every pipeline has the same shape so notebook 04 can run them side by side::

    pipeline(base, request, public, *, options...) -> PrunedModel

- ``base``: the dense model (never modified; a pruned copy is returned);
- ``request``: a :class:`DeviceRequest` - what leaves the device (its GMM upload, or nothing for
  the data-free methods), its parameter budget and, for the combined plan, its latency budget;
- ``public``: a :class:`PublicData` - the cloud's labelled public pool and its features;
- the result: a :class:`PrunedModel` whose ``report`` says what was done and at what size.

The cloud never sees the device's private images: the private test accuracy is added on the
device side by :func:`evaluate_on_device`, after the pipeline has returned (the oracle is the one
exception, by design). Model selection uses a validation split carved from the fine-tune set,
never the device's test split.

The pipelines (:data:`PIPELINES`):

- :func:`tap_vits`: TAP-ViTs (docs/methods.md, "TAP-ViTs"): GMM upload -> metric and fine-tune sets
  (:func:`vitprune_lite.gmm.select`) -> composite neuron importance + KL layer sensitivity
  (:mod:`vitprune_lite.importance`) -> surgery -> recovery fine-tune (:func:`vitprune_lite.models.fit`).
- :func:`one_size_fits_all`: the same steps on a random public subset (no upload), one model
  for every device - the baseline TAP-ViTs argues against.
- :func:`toast`: ToaSt (docs/methods.md, "ToaSt"): coupled QK/VO dimension pruning from the weights,
  block 0 dense, the same recovery on random public images, then Token Channel Selection in
  ``sample`` mode (method ``toast_tcs``; ``toast`` when TCS is off). Data-free: one model for
  every device.
- :func:`torch_pruning`: the torch-pruning library (whole heads + MLP channels) at the same
  parameter budget, the same recovery (method ``torch_pruning``, or ``torch_pruning_taylor``
  with Taylor importance).
- :func:`token_reduction`: POMT, ToMe, Top-K or EViT on the dense model; no training.
- :func:`combined_plan`: given a latency budget in milliseconds, choose a TAP-ViTs structure and
  a token schedule together from the device's latency curve, maximising validation accuracy.
- :func:`oracle`: TAP-ViTs scored and recovered on the device's private training data - the
  upper bound no real deployment reaches.

Each :class:`PrunedModel` records its method under its :mod:`vitprune_lite.methods` name.

Structured methods share :func:`prune_and_recover` (or :func:`recover` where another library
prunes), so their recoveries are identical: same steps, data order, learning rate and selection
rule.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import gmm, importance, latency, measure, methods, models, peers, surgery, tcs, tokens, variants, vit


@dataclass(frozen=True)
class DeviceRequest:
    """What a device sends to the cloud.

    Attributes:
        device: the device's name (for the report only).
        budget: ``(mlp_keep, attn_keep)``, each in (0, 1] (e.g. one of
            :data:`vitprune_lite.importance.TAP_BUDGETS`).
        upload: the device's :class:`vitprune_lite.gmm.Upload` (``None`` for data-free methods).
        latency_ms: the device's latency budget for one image (batch 1), in milliseconds; read
            only by :func:`combined_plan`.
    """

    device: str
    budget: tuple[float, float]
    upload: Optional[gmm.Upload] = None
    latency_ms: Optional[float] = None


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
        method: the method's :mod:`vitprune_lite.methods` name (e.g. ``"toast_tcs"``).
        device: the device it was built for (``"*"``: every device).
        model: the pruned model (eval mode).
        report: JSON-serialisable facts: budget, sizes, FLOPs, validation accuracies, timings.
    """

    method: str
    device: str
    model: nn.Module
    report: dict[str, Any] = field(default_factory=dict)


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


def recover(
    model: nn.Module,
    public: PublicData,
    finetune_idx: np.ndarray,
    *,
    val_fraction: float = 0.1,
    ft_steps: int = 200,
    ft_batch: int = 64,
    ft_lr: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The shared recovery: fine-tune a pruned model, keep it unless validation says otherwise.

    Args:
        model: the pruned model (not modified; the fine-tune runs on a copy).
        public: the pool ``finetune_idx`` points into.
        finetune_idx: pool indices ``[n]``; a seeded ``val_fraction`` share is held out.
        val_fraction: share held out for validation, in [0, 1).
        ft_steps: optimiser steps (0: no fine-tune); ft_batch, ft_lr: batch size and peak
            learning rate (AdamW, warm-up and cosine decay in :func:`vitprune_lite.models.fit`).
        seed: seeds the split and the fine-tune (data order, augmentation).
        progress: show the fine-tune progress bar.

    Returns:
        ``(model, info)``: the fine-tuned copy, or the pruned model if fine-tuning lowered
        validation accuracy (``info["kept"]`` says which), with both validation accuracies.
    """
    if ft_steps < 0:
        raise ValueError(f"ft_steps must be >= 0, got {ft_steps}")
    train_idx, val_idx = split_validation(finetune_idx, val_fraction, seed)
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
    info = {"n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
            "val_acc_pruned": acc_pruned, "val_acc_finetuned": acc_ft, "kept": kept,
            "val_acc": acc_ft if kept == "finetuned" and acc_ft is not None else acc_pruned,
            "finetune": {"steps": hist["steps"], "seconds": hist["seconds"], "lr": ft_lr, "batch": ft_batch}}
    return model.eval(), info


def size_report(base: nn.Module, model: nn.Module, x1: Tensor) -> dict[str, Any]:
    """Parameters, FLOPs (for the one-image input ``x1``) and block widths, next to the dense model's."""
    return {"params": measure.count_params(model), "flops": measure.count_flops(model, x1),
            "dense_params": measure.count_params(base), "dense_flops": measure.count_flops(base, x1),
            "widths": surgery.block_widths(model)}


def _cache_key(base: nn.Module, criterion: str, x: Tensor, y: Tensor, adaptive: bool,
               sens_images: Optional[int], options: Mapping[str, Any]) -> tuple:
    """Identifies a scoring by the images themselves (not their indices: the oracle's private
    pools share index ranges) and everything else the scores depend on."""
    h = hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return (id(base), criterion, h.hexdigest(), tuple(x.shape), adaptive, sens_images, repr(sorted(options.items())))


def prune_and_recover(
    base: nn.Module,
    public: PublicData,
    metric_idx: np.ndarray,
    finetune_idx: np.ndarray,
    budget: tuple[float, float],
    *,
    criterion: str = "tap_vits",
    adaptive: bool = True,
    alpha: float = 1.1,
    score_options: Optional[Mapping[str, Any]] = None,
    sens_images: Optional[int] = None,
    cache: Optional[dict] = None,
    variant: str = "project",
    **recovery: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """The shared core: score on the metric set, prune, then :func:`recover`.

    Args:
        base: dense timm ViT (left untouched).
        public: the public pool (or any labelled pool the indices point into).
        metric_idx: pool indices ``[n_metric]`` the units are scored on.
        finetune_idx: pool indices ``[n_finetune]`` for recovery (a validation share is held out).
        budget: ``(mlp_keep, attn_keep)``.
        criterion: an :data:`vitprune_lite.importance.CRITERIA` name.
        adaptive: TAP-ViTs' KL layer sensitivity -> per-layer keep ratios; False keeps every
            layer at the budget's ratio.
        alpha: softmax factor of the adaptive ratios (paper: 1.1).
        score_options: passed to :func:`vitprune_lite.importance.score`.
        sens_images: images of the metric set used by the layer sensitivity (None: all).
        cache: optional dict kept by the caller: scores and layer sensitivities computed for the
            same model, criterion, metric set and options are reused from it (budgets and
            recovery seeds then cost no rescoring).
        variant: ``"project"`` or ``"reference"`` (the authors' code: scores, layer
            sensitivity at the budget's one probe sparsity, ratios and counts; criteria in
            :data:`vitprune_lite.importance.VARIANT_CRITERIA` only).
        **recovery: passed to :func:`recover` (``ft_steps``, ``ft_batch``, ``ft_lr``,
            ``val_fraction``, ``seed``, ``progress``).

    Returns:
        ``(model, report)``: the pruned (and possibly fine-tuned) model in eval mode and what
        happened, including ``"val_acc_pruned"``, ``"val_acc_finetuned"`` and ``"kept"``.
    """
    budget = importance.check_budget(budget)  # a Budget from a pipeline passes unchecked
    if recovery.get("ft_steps", 0) < 0:
        raise ValueError(f"ft_steps must be >= 0, got {recovery['ft_steps']}")
    split_validation(finetune_idx, recovery.get("val_fraction", 0.1))  # refuse a bad split before scoring
    metric_idx = np.asarray(metric_idx, dtype=np.int64)
    if len(metric_idx) < 2:
        raise ValueError(f"the metric set needs at least 2 images, got {len(metric_idx)}")
    options = dict(score_options or {})
    reference = variants.check(variant) == "reference"
    sparsities = importance.PROBE_SPARSITIES
    if reference:
        if criterion not in importance.VARIANT_CRITERIA:
            raise ValueError(f"variant='reference' exists for criteria {importance.VARIANT_CRITERIA}, "
                             f"not {criterion!r} (no published code to follow)")
        options["variant"] = "reference"
        if adaptive:
            sparsities = (importance.probe_sparsity(budget),)
    t0 = time.perf_counter()
    x_metric, y_metric = public.x[metric_idx], public.y[metric_idx]
    key = _cache_key(base, criterion, x_metric, y_metric, adaptive, sens_images, options)
    if reference:  # the reference sensitivity depends on the budget's probe sparsity
        key = key + (sparsities,)
    hit = cache is not None and key in cache
    if hit:
        scores, sens = cache[key]
    else:
        scores = importance.score(base, criterion, x_metric, y_metric, **options)
        sens = importance.layer_sensitivity(base, x_metric, scores, max_images=sens_images,
                                            sparsities=sparsities, variant=variant) if adaptive else None
        if cache is not None:
            cache[key] = (scores, sens)
    ratios = importance.adaptive_ratios(sens, budget, alpha, variant=variant) if adaptive else None
    t1 = time.perf_counter()
    model = importance.prune_copy(base, importance.make_plan(base, scores, budget, layer_ratios=ratios,
                                                             variant=variant))
    model, rec = recover(model, public, finetune_idx, **recovery)
    t2 = time.perf_counter()
    report = {
        "criterion": criterion, "budget": list(budget),
        "block_params_kept_target": budget.block_param_fraction,
        "adaptive": adaptive, "variant": variant,
        "layer_keep": {k: v.tolist() for k, v in ratios.items()} if ratios else None,
        "n_metric": int(len(metric_idx)), **rec, **size_report(base, model, public.x[:1]),
        "seconds": {"score_and_ratios": t1 - t0, "scores_cached": hit, "prune_and_recover": t2 - t1},
    }
    return model, report


def _selection(request: DeviceRequest, public: PublicData, selection: Optional[gmm.Selection],
               n_metric: int, n_finetune: int) -> gmm.Selection:
    """The device's metric and fine-tune sets: given (already picked from its upload), or picked now."""
    if selection is not None:
        if not isinstance(selection, gmm.Selection):
            raise TypeError(f"selection must be a gmm.Selection, got {type(selection).__name__}")
        return gmm.Selection(selection.metric[:n_metric], selection.finetune[:n_finetune])
    if request.upload is None:
        raise ValueError(f"tap_vits needs the device's GMM upload; request for {request.device!r} has none")
    if public.features is None:
        raise ValueError("tap_vits needs PublicData.features (gmm.embed_pool in the upload's feature space)")
    return gmm.select(request.upload, public.features, n_metric=n_metric, n_finetune=n_finetune)


def _random_selection(public: PublicData, n_metric: int, n_finetune: int, seed: int) -> gmm.Selection:
    pool = public.features.index if public.features is not None else np.arange(len(public.x))
    return gmm.random_selection(pool, n_metric=n_metric, n_finetune=n_finetune, seed=seed)


def tap_vits(base: nn.Module, request: DeviceRequest, public: PublicData, *, n_metric: int = 640,
             n_finetune: int = 6400, selection: Optional[gmm.Selection] = None, **options: Any) -> PrunedModel:
    """TAP-ViTs for one device: its GMM upload picks the public images; prune; recover.

    Args:
        base: dense timm ViT (left untouched).
        request: the device's budget and upload.
        public: the public pool with ``features`` in the upload's feature space.
        n_metric, n_finetune: sizes of the metric and fine-tune sets (paper: 640 and 6,400).
        selection: the sets the cloud already picked from this upload (e.g. notebook 01's
            shipped selection); then neither ``request.upload`` nor ``public.features`` is read.
        **options: passed to :func:`prune_and_recover` (``ft_steps``, ``val_fraction``, ``cache``, ...).

    Raises:
        ValueError: no upload and no selection, or public data without features.
    """
    budget = importance.check_budget(request.budget)
    sel = _selection(request, public, selection, n_metric, n_finetune)
    model, report = prune_and_recover(base, public, sel.metric, sel.finetune, budget, **options)
    report["selection"] = "gmm"
    return PrunedModel("tap_vits", request.device, model, report)


def one_size_fits_all(base: nn.Module, request: DeviceRequest, public: PublicData, *, n_metric: int = 640,
                      n_finetune: int = 6400, **options: Any) -> PrunedModel:
    """The same pruning scored and recovered on a random public subset: one model for all devices.

    The upload, if any, is ignored; the selection is seeded by ``options["seed"]`` (default 0)
    only, so every device gets the same model.
    """
    budget = importance.check_budget(request.budget)
    sel = _random_selection(public, n_metric, n_finetune, options.get("seed", 0))
    model, report = prune_and_recover(base, public, sel.metric, sel.finetune, budget, **options)
    report["selection"] = "random"
    return PrunedModel("one_size_fits_all", "*", model, report)


#: ToaSt's Token Channel Selection schedule for the 6-block base model: fraction of FFN input
#: channels (fc1) and MLP hidden units (fc2) dropped per block - the later, more redundant blocks
#: drop most (docs/methods.md, "Token Channel Selection"; notebook 02 audits it).
TCS_FC1 = (0.0, 0.0, 0.0, 0.0, 0.0, 0.3)
TCS_FC2 = (0.0, 0.0, 0.0, 0.5, 0.9, 0.9)


def toast(base: nn.Module, request: DeviceRequest, public: PublicData, *, n_finetune: int = 6400,
          tcs_fc1: Any = TCS_FC1, tcs_fc2: Any = TCS_FC2, **options: Any) -> PrunedModel:
    """ToaSt: coupled QK/VO dimension pruning (weights only, block 0 dense), recovery, then TCS.

    Recovery uses a random public fine-tune set (seeded like :func:`one_size_fits_all`'s), since
    ToaSt reads no device data; the model is the same for every device. Token Channel Selection
    is installed after recovery in ``sample`` mode (per-image choice: no batch dependence).

    Args:
        tcs_fc1, tcs_fc2: TCS drop fractions per block (one number or ``[depth]``); both 0
            gives plain coupled pruning.
        **options: passed to :func:`prune_and_recover` (``ft_steps``, ``seed``, ``variant``, ...);
            ``variant="reference"`` also installs ToaSt's reference TCS (:func:`vitprune_lite.tcs.patch`).
    """
    budget = importance.check_budget(request.budget)
    depth = len(vit.require_vit(base, "pipelines.toast"))
    fc1, fc2 = tcs._ratio_list(tcs_fc1, depth, "tcs_fc1"), tcs._ratio_list(tcs_fc2, depth, "tcs_fc2")  # refuse early
    sel = _random_selection(public, 2, n_finetune, options.get("seed", 0))
    model, report = prune_and_recover(base, public, sel.metric, sel.finetune, budget, criterion="toast",
                                      adaptive=False, **options)
    flops_no_tcs = report["flops"]
    variant = options.get("variant", "project")
    tcs.patch(model, fc1, fc2, mode="sample", variant=variant)
    report.update(selection="random", flops=measure.count_flops(model, public.x[:1]),
                  flops_without_tcs=flops_no_tcs,
                  tcs={"fc1": fc1, "fc2": fc2, "mode": "sample", "variant": variant})
    return PrunedModel("toast_tcs" if any(fc1) or any(fc2) else "toast", "*", model, report)


def torch_pruning(base: nn.Module, request: DeviceRequest, public: PublicData, *, n_finetune: int = 6400,
                  importance_kind: str = "magnitude", **options: Any) -> PrunedModel:
    """The torch-pruning peer: whole heads and MLP channels to the same parameter budget, same recovery.

    Args:
        importance_kind: ``"magnitude"`` (weights only) or ``"taylor"`` (gradients on the
            random public metric set's first 640 images).
        **options: passed to :func:`recover`.
    """
    budget = importance.check_budget(request.budget)
    if importance_kind not in peers.IMPORTANCES:
        raise ValueError(f"importance_kind must be one of {peers.IMPORTANCES}, got {importance_kind!r}")
    sel = _random_selection(public, 640, n_finetune, options.get("seed", 0))
    split_validation(sel.finetune, options.get("val_fraction", 0.1))  # refuse a bad split before pruning
    t0 = time.perf_counter()
    xy = {"x": public.x[sel.metric], "y": public.y[sel.metric]} if importance_kind == "taylor" else {}
    model, info = peers.torch_pruning_prune(base, budget, importance_kind=importance_kind, **xy)
    t1 = time.perf_counter()
    model, rec = recover(model, public, sel.finetune, **options)
    name = "torch_pruning" if importance_kind == "magnitude" else f"torch_pruning_{importance_kind}"
    report = {"criterion": methods.check(name), "budget": list(budget),
              "block_params_kept_target": budget.block_param_fraction, "selection": "random",
              "torch_pruning": info, **rec, **size_report(base, model, public.x[:1]),
              "seconds": {"prune": t1 - t0, "recover": time.perf_counter() - t1}}
    return PrunedModel(name, "*", model, report)


def token_reduction(base: nn.Module, request: DeviceRequest, public: Optional[PublicData] = None, *,
                    method: str = "pomt", amount: Any = 16, **kwargs: Any) -> PrunedModel:
    """A token method on the dense model, no training: the same model for every device.

    Args:
        method: ``"pomt"`` (``amount`` = R), ``"tome"`` (``amount`` = r per block), ``"topk"`` /
            ``"evit"`` (``amount`` = keep rate, a float in (0, 1], or a drop schedule, a list).
        kwargs: passed to the patch (e.g. POMT's ``layer``).

    ``request.budget`` is not read: a token method has no parameter budget.
    """
    if method not in tokens._METHODS:
        raise ValueError(f"method must be one of {tokens._METHODS}, got {method!r}")
    model = tokens.reduced_copy(base, method, amount, **kwargs)
    size = model.patch_embed.img_size
    x1 = public.x[:1] if public is not None else torch.zeros(1, 3, *size)
    report = {"criterion": method, "amount": amount, "schedule": tokens.schedule_of(model),
              **size_report(base, model, x1)}
    return PrunedModel(method, "*", model, report)


def oracle(base: nn.Module, request: DeviceRequest, public: PublicData, *, private: tuple[Tensor, Tensor],
           n_metric: int = 640, **options: Any) -> PrunedModel:
    """TAP-ViTs with the device's private training images as metric and fine-tune sets.

    The upper bound: what the method would reach if the cloud had the device's data. Only the
    private *training* split may be passed; the test split stays for :func:`evaluate_on_device`.

    Args:
        private: ``(x [n, 3, H, W], y [n])`` the device's private training split (its order is
            already random: the first ``n_metric`` images are scored, all are fine-tuned on).
        n_metric: images scored.
        **options: passed to :func:`prune_and_recover` (``seed`` draws the validation split).
    """
    budget = importance.check_budget(request.budget)
    x, y = private
    pool = PublicData(x, y)
    idx = np.arange(len(x))
    model, report = prune_and_recover(base, pool, idx[:n_metric], idx, budget, **options)
    report["selection"] = "private"
    return PrunedModel("oracle", request.device, model, report)


#: Token settings the combined plan considers by default (with "none" always included).
COMBINED_TOKENS = (("pomt", 8), ("pomt", 16), ("pomt", 24), ("pomt", 32), ("tome", 2), ("tome", 4), ("tome", 6))


def plan_candidates(base: nn.Module, structures: Mapping[str, nn.Module], val: tuple[Tensor, Tensor], *,
                    curve: Optional[latency.Curve] = None, token_grid: Any = COMBINED_TOKENS,
                    threads: Optional[int] = None, rounds: int = 5, seed: int = 0,
                    predictor: Any = None, anchor_structures: bool = False, anchor_tokens: bool = False,
                    min_run_time: float = 0.2) -> list[dict[str, Any]]:
    """Every structure x token setting, with predicted batch-1 latency and validation accuracy.

    With a ``curve``: each structure's full-token latency is measured once on this machine
    (interleaved, in the curve's backend); a token setting scales it by the device's latency
    curve (:func:`vitprune_lite.latency.predict_ms`). With a ``predictor`` (a batch-1
    :class:`vitprune_lite.predictor.Predictor` of this device) instead: every candidate's
    latency, structure and token method's own work included, comes from the predictor and
    nothing is timed here - unless ``anchor_structures``: then each structure is timed once
    against the dense model (interleaved) and the predictor supplies only what the token method
    changes, ``measured(structure) x predicted(structure + tokens) / predicted(structure)``. The
    predictor is fitted on random widths; a pruned structure's own latency is cheap to measure
    and the part a predictor gets most wrong (:mod:`vitprune_lite.predictor`). With
    ``anchor_tokens`` as well, each token setting is timed once on the dense model in the same
    rounds, and its measured-over-predicted factor multiplies every candidate with that setting:
    a tokens-only candidate is then its own measurement, and a combined one carries both the
    structure's and the token setting's correction (the predictor's error taken as a structure
    part times a token part).
    Accuracy is measured on ``val``, a validation split of the device's fine-tune set (public
    images, never the private test split).

    Args:
        base: the dense model the curve was profiled on.
        structures: name -> model, e.g. ``{"dense": base, "tap_vits 50%": ...}`` (not changed).
        val: ``(x [n, 3, H, W], y [n])`` validation images and labels.
        curve: the device's batch-1 network latency curve for ``base``.
        predictor: the device's batch-1 latency predictor for ``base`` (instead of ``curve``).
        token_grid: ``(method, amount)`` pairs; "no token reduction" is always included.
        threads, rounds, seed, min_run_time: for measuring each structure's full-token latency.
        anchor_structures: with a ``predictor``, measure each structure (see above); the
            returned milliseconds stay in the predictor's scale (its dense prediction times the
            measured ratio to dense), so budgets stated as shares of the predicted dense
            latency (:func:`check_plans`) still apply.
        anchor_tokens: with ``anchor_structures``, also measure each token setting on the
            dense model (see above).

    Returns:
        One dict per candidate: ``structure``, ``tokens`` (method or ``"none"``), ``amount``,
        ``model`` (a patched copy, or the structure itself for ``"none"``), ``structure_ms``,
        ``predicted_ms``, ``val_acc``.
    """
    if not structures:
        raise ValueError("structures must name at least one model (e.g. {'dense': base})")
    if anchor_structures and predictor is None:
        raise ValueError("anchor_structures applies to a predictor=; with a curve= every structure is measured anyway")
    if anchor_tokens and not anchor_structures:
        raise ValueError("anchor_tokens applies with anchor_structures=True (a token setting's correction "
                         "is taken on the measured dense model)")
    if (curve is None) == (predictor is None):
        raise ValueError("pass exactly one of curve= (a latency.Curve) and predictor= (a predictor.Predictor)")
    if predictor is not None:
        from . import predictor as _pred

        if not isinstance(predictor, _pred.Predictor):
            raise TypeError(f"predictor must be a predictor.Predictor, got {type(predictor).__name__}")
        if predictor.batch_size != 1 or predictor.geometry != _pred.Geometry.of_model(base, 1):
            raise ValueError(f"predictor was fitted for {predictor.geometry}, not for this model at batch 1; "
                             f"profile it with predictor.profile_device(base, batch_size=1)")
    else:
        latency.check_curve(curve, base, 1)
    grid = [("none", 0)] + [tuple(g) for g in token_grid]
    for method, _ in grid[1:]:
        if method not in tokens._METHODS:
            raise ValueError(f"token_grid method must be one of {tokens._METHODS}, got {method!r}")
    if predictor is None:
        lat = measure.measure_latency(dict(structures), val[0][:1], threads=threads or curve.threads,
                                      rounds=rounds, seed=seed, backend=curve.backend)
        pooled = curve.pooled()
    elif anchor_structures:
        timed = {"__dense__": base} | {name: m for name, m in structures.items() if m is not base}
        if anchor_tokens:
            timed |= {f"__dense__|{method}|{amount}": tokens.reduced_copy(base, method, amount)
                      for method, amount in grid[1:]}
        lat = measure.measure_latency(timed, val[0][:1], threads=threads, rounds=rounds,
                                      min_run_time=min_run_time, seed=seed)
        dense_pred = predictor.predict(predictor.geometry.dense_plan())
        anchored = {name: dense_pred * (1.0 if m is base else measure.latency_ratio(lat, name, "__dense__"))
                    for name, m in structures.items()}
        token_factor = dict.fromkeys(grid, 1.0)  # measured / predicted, per token setting on the dense model
        if anchor_tokens:
            for method, amount in grid[1:]:
                key = f"__dense__|{method}|{amount}"
                measured = dense_pred * measure.latency_ratio(lat, key, "__dense__")
                token_factor[(method, amount)] = measured / predictor.predict(timed[key])
    out = []
    for name, struct in structures.items():
        for method, amount in grid:
            model = struct if method == "none" else tokens.reduced_copy(struct, method, amount)
            flow = tokens.schedule_of(model)["tokens"]  # tokens at each block's MLP
            if predictor is None:
                struct_ms = lat[name].median_ms
                pred_ms = latency.predict_ms(pooled["n"], pooled["median_ms"], flow, struct_ms)
            else:
                struct_ms, pred_ms = predictor.predict(struct), predictor.predict(model)
                if anchor_structures:
                    struct_ms, pred_ms = (anchored[name],
                                          anchored[name] * pred_ms / struct_ms * token_factor[(method, amount)])
            out.append({"structure": name, "tokens": method, "amount": amount, "model": model,
                        "structure_ms": struct_ms, "predicted_ms": pred_ms,
                        "val_acc": measure.accuracy(model, *val)})
    return out


def choose_plan(candidates: Sequence[Mapping[str, Any]], latency_ms: float,
                where: Optional[Callable[[Mapping[str, Any]], bool]] = None,
                margin: float = 0.0) -> tuple[Mapping[str, Any], bool]:
    """The best validation accuracy among candidates predicted within ``latency_ms`` (ties: the faster).

    Args:
        candidates: from :func:`plan_candidates`.
        latency_ms: the budget, > 0.
        where: optional filter (e.g. structure only: ``lambda c: c["tokens"] == "none"``).
        margin: safety margin in [0, 1): a candidate must be predicted within
            ``latency_ms * (1 - margin)``. An unbiased predictor puts a plan chosen right at the
            budget over it about half the time; a margin taken from the predictor's held-out
            error (e.g. its 90th percentile) makes a met budget the rule.

    Returns:
        ``(candidate, met)``; if none is predicted within budget, the fastest predicted one and False.
    """
    if not latency_ms > 0:
        raise ValueError(f"latency budget must be > 0 ms, got {latency_ms!r}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    pool = [c for c in candidates if where is None or where(c)]
    if not pool:
        raise ValueError("no candidate passes the filter")
    fits = [c for c in pool if c["predicted_ms"] <= latency_ms * (1 - margin)]
    if fits:
        return max(fits, key=lambda c: (c["val_acc"], -c["predicted_ms"])), True
    return min(pool, key=lambda c: c["predicted_ms"]), False


#: The planner's three kinds of choice: structure and tokens together, and each ingredient alone.
PLAN_KINDS: dict[str, Optional[Callable[[Mapping[str, Any]], bool]]] = {
    "combined": None, "structure only": lambda c: c["tokens"] == "none",
    "tokens only": lambda c: c["structure"] == "dense"}


def repredict(candidates: Sequence[Mapping[str, Any]], predictor: Any) -> list[dict[str, Any]]:
    """The same candidates (models and validation accuracies kept) with another predictor's latencies.

    Validation accuracy does not depend on the backend or the device, so one
    :func:`plan_candidates` call serves every predictor of the same model.
    """
    out = [{**c, "predicted_ms": predictor.predict(c["model"])} for c in candidates]
    alone = {c["structure"]: c["predicted_ms"] for c in out if c["tokens"] == "none"}
    return [{**c, "structure_ms": alone[c["structure"]]} for c in out]  # plan_candidates lists every "none"


def check_plans(base: nn.Module, candidates: Sequence[Mapping[str, Any]], shares: Sequence[float], *,
                predictor: Any, margin: float = 0.0, threads: int = 1, rounds: int = 7,
                min_run_time: float = 0.1, seed: int = 0, backend: str = "eager",
                exported: Optional[dict[Any, Any]] = None,
                reference_ms: Optional[float] = None) -> list[dict[str, Any]]:
    """Choose under each latency budget, then time the choices: did the budget hold?

    For every budget share (of the dense model's batch-1 latency) and every kind in
    :data:`PLAN_KINDS`, :func:`choose_plan` picks from ``candidates`` with the budget
    ``share * predictor.predict(dense)`` and ``margin`` - budgets and predictions compared as
    ratios to the predicted dense latency, which cancels the drift of absolute milliseconds
    between the profiling run and this one. The chosen models and the dense model are then timed
    in the same interleaved rounds (:func:`vitprune_lite.measure.measure_latency`, batch 1,
    ``backend``; a model chosen more than once is timed once); a budget is met when the
    measured ratio to dense is at most the share.

    Args:
        base: the dense model (timed as the reference).
        candidates: from :func:`plan_candidates` (or :func:`repredict`) with the same predictor.
        shares: budgets in (0, 1], shares of dense latency.
        predictor: the device's batch-1 :class:`vitprune_lite.predictor.Predictor`.
        exported: with ``backend="onnxruntime"``, a cache shared between calls, keyed by the
            model's :class:`~vitprune_lite.predictor.PlanSpec` (latency does not depend on the
            weights, so each distinct plan is exported once; an export takes seconds).
        reference_ms: the dense model's batch-1 latency in milliseconds that the budgets are
            stated against (e.g. measured earlier in the same run); ``measured_ms`` is the
            measured ratio to dense times it. ``None``: the dense model's median in this check.

    Returns:
        One dict per share x kind: ``budget_share``, ``kind``, ``plan`` (text), ``model``,
        ``predicted_ms``, ``predicted_ratio``, ``measured_ms``, ``measured_ratio``,
        ``predicted_met``, ``measured_met``, ``val_acc``.
    """
    from . import runtime

    bad = [s for s in shares if not 0 < s <= 1]
    if bad or not shares:
        raise ValueError(f"shares must be budgets in (0, 1] (shares of dense latency), got {list(shares)}")
    if reference_ms is not None and not (isinstance(reference_ms, (int, float)) and np.isfinite(reference_ms)
                                         and reference_ms > 0):
        raise ValueError(f"reference_ms must be a dense latency in milliseconds > 0 (or None), got {reference_ms!r}")
    dense_pred = predictor.predict(predictor.geometry.dense_plan())
    picks = {(share, kind): choose_plan(candidates, share * dense_pred, where, margin=margin)
             for share in shares for kind, where in PLAN_KINDS.items()}
    key_of: dict[int, str] = {id(base): "dense"}  # each distinct model timed once, whichever picks share it
    for (s, k), (c, _) in picks.items():
        key_of.setdefault(id(c["model"]), f"{s}|{k}")
    timed: dict[str, Any] = {"dense": base} | {key_of[id(c["model"])]: c["model"] for c, _ in picks.values()}
    x1 = torch.randn(1, 3, *base.patch_embed.img_size, generator=torch.Generator().manual_seed(seed))
    if backend != "eager":
        from .predictor import PlanSpec

        cache = exported if exported is not None else {}
        for k, m in timed.items():
            plan = PlanSpec.of_model(m)
            if plan not in cache:
                cache[plan] = runtime.export(m, x1)
            timed[k] = cache[plan]
    check = measure.measure_latency(timed, x1, threads=threads, rounds=rounds, min_run_time=min_run_time,
                                    seed=seed, backend=backend)
    dense_ms = check["dense"].median_ms if reference_ms is None else float(reference_ms)
    cases = []
    for (share, kind), (c, predicted_met) in picks.items():
        ratio = measure.latency_ratio(check, key_of[id(c["model"])], "dense")
        cases.append({"budget_share": share, "kind": kind, "model": c["model"], "val_acc": c["val_acc"],
                      "plan": c["structure"] + ("" if c["tokens"] == "none" else f" + {c['tokens']} {c['amount']}"),
                      "predicted_ms": c["predicted_ms"], "predicted_ratio": c["predicted_ms"] / dense_pred,
                      "measured_ms": ratio * dense_ms, "measured_ratio": ratio, "predicted_met": predicted_met,
                      "measured_met": bool(ratio <= share)})
    return cases


def summarise_checks(cases: Sequence[Mapping[str, Any]], group: Sequence[str] = ("device", "seed")) -> dict[str, Any]:
    """Shares over cases (``group`` keys x budget): the combined plan met its measured budget; and
    it was at least as accurate (validation) as the best single-ingredient plan that also met it."""
    groups: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for c in cases:
        groups.setdefault(tuple(c[k] for k in group) + (c["budget_share"],), {})[c["kind"]] = c
    met, as_good = [], []
    for g in groups.values():
        comb = g["combined"]
        met.append(comb["measured_met"])
        singles = [g[k]["val_acc"] for k in ("structure only", "tokens only") if k in g and g[k]["measured_met"]]
        as_good.append(bool(comb["measured_met"] and (not singles or comb["val_acc"] >= max(singles))))
    return {"n_cases": len(groups), "combined_met_share": float(np.mean(met)) if met else None,
            "combined_at_least_as_accurate_share": float(np.mean(as_good)) if as_good else None}


def combined_plan(base: nn.Module, request: DeviceRequest, public: PublicData, *,
                  curve: Optional[latency.Curve] = None, structures: Mapping[str, nn.Module],
                  val: tuple[Tensor, Tensor], token_grid: Any = COMBINED_TOKENS, threads: Optional[int] = None,
                  rounds: int = 5, seed: int = 0, predictor: Any = None) -> PrunedModel:
    """Structure and tokens together: the most accurate plan predicted to meet the latency budget.

    :func:`plan_candidates` lists every structure (the dense model or a pruned one) with every
    token setting, its predicted latency and validation accuracy; :func:`choose_plan` picks the
    best predicted within ``request.latency_ms`` (if none fits, the fastest predicted).

    Args:
        request: ``latency_ms`` is the budget (milliseconds per image, batch 1).
        structures, val, curve, token_grid, threads, rounds, seed, predictor: see
            :func:`plan_candidates` (one of ``curve`` and ``predictor``).

    Returns:
        The chosen model (a patched copy) with a report listing every candidate.
    """
    if request.latency_ms is None or not request.latency_ms > 0:
        raise ValueError(f"combined_plan needs request.latency_ms > 0 (milliseconds per image), "
                         f"got {request.latency_ms!r}")
    cands = plan_candidates(base, structures, val, curve=curve, token_grid=token_grid, threads=threads,
                            rounds=rounds, seed=seed, predictor=predictor)
    best, met = choose_plan(cands, request.latency_ms)
    model = best["model"] if best["tokens"] != "none" else copy.deepcopy(best["model"])
    report = {"criterion": "combined", "latency_budget_ms": request.latency_ms, "budget_predicted_met": met,
              "choice": {k: v for k, v in best.items() if k != "model"},
              "candidates": [{k: v for k, v in c.items() if k != "model"} for c in cands],
              **({"curve": {"model": curve.model, "device": curve.device, "threads": curve.threads}}
                 if curve is not None else
                 {"predictor": {"device": predictor.device, "backend": predictor.backend,
                                "threads": predictor.threads}}),
              **size_report(base, model, val[0][:1])}
    return PrunedModel("combined", request.device, model.eval(), report)


PIPELINES = {"tap_vits": tap_vits, "one_size_fits_all": one_size_fits_all, "toast": toast,
             "torch_pruning": torch_pruning, "token_reduction": token_reduction,
             "combined_plan": combined_plan, "oracle": oracle}


def evaluate_on_device(result: PrunedModel, x: Tensor, y: Tensor, batch_size: int = measure.EVAL_BATCH) -> float:
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
