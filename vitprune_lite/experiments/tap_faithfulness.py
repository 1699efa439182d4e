"""TAP-ViTs as its authors' code runs it and as this project runs it, on four kinds of metric set.

Notebook 02 finds TAP-ViTs scored on a device's GMM metric set doing worse than scored on random
public images. Two things could be behind that: the **method** (which public
images a GMM upload picks, and how well they cover the device's task) and the
**implementation** (the project's TAP-ViTs differs from the authors' code in the layer
sensitivity, the keep ratios, the HSIC details and the rounding; ``docs/deviations.md``). This
experiment separates them by crossing both:

- **variant**: ``"reference"`` (the authors' code: scores, one probe sparsity per budget, their
  KL scale, ratios clipped with nothing redistributed, floor counts) and ``"project"``
  (:mod:`vitprune_lite.variants`);
- **metric set** per device: the GMM selection as the paper does it (the top of the likelihood
  ranking, ``"gmm"``), the same upload sampled at temperatures (``"gmm_T<t>"``: probability
  proportional to ``likelihood ** (1 / t)``, which trades class purity for class coverage), a
  random public subset (``"random"``) and the device's own private training images
  (``"oracle"``). The recovery set follows the metric set: the GMM (or sampled) fine-tune
  ranking, the random subset, or the private training split.

Three steps, one function each:

1. :func:`metric_sets`: the device fits its upload on its private training images in notebook
   01's default feature space; the cloud selects; every metric set's **class coverage** (share
   of its images in the device's classes, and the fewest images of any one device class).
2. :func:`ratios`: TAP-ViTs' per-block keep ratios (MLP and attention) under both variants on
   every metric set (:func:`vitprune_lite.importance.layer_sensitivity`,
   :func:`vitprune_lite.importance.adaptive_ratios`).
3. :func:`prune`: accuracy on each device's private test split of TAP-ViTs pruned with each
   (variant x metric set), zero-shot and after the standard recovery
   (:func:`vitprune_lite.pipelines.prune_and_recover`, :func:`vitprune_lite.pipelines.recover`),
   with 95 % paired bootstrap intervals of reference - project per metric set
   (:func:`~vitprune_lite.experiments.device_specificity.paired_gap`: the same test images for
   both, resampled within each device, and the recovery seeds resampled).

The metric sets are drawn once (``selection_seed``); the seeds vary the recovery only, so the
intervals cover test images and recovery noise, not the draw of a random or sampled set.

Run it from the command line
(``python -m vitprune_lite.experiments.tap_faithfulness --preset lab --benchmark v1``) or call
:func:`run`.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InvalidValueError
from ..data import BENCHMARK_NAMES, DEFAULT_BENCHMARK
from . import _params
from .device_specificity import _load, paired_gap

__all__ = ["Params", "PRESETS", "SCHEMA_VERSION", "VARIANTS", "STAGES", "FEATURE_SPACES", "MetricSet",
           "MetricSets", "LayerRatios", "Accuracy", "Result", "set_names", "coverage", "metric_sets", "ratios",
           "prune", "run", "load_or_run", "stored_path", "summary_markdown", "plot_ratios", "plot_accuracy", "main"]

SCHEMA_VERSION = 1
#: The two implementations compared, in the order tables and figures show them.
VARIANTS = ("reference", "project")
#: Accuracy is measured right after pruning and after the standard recovery.
STAGES = ("zero_shot", "recovered")
#: Notebook 01's feature spaces; ``"combined"`` is its default.
FEATURE_SPACES = ("vit_cls", "pixel_stats", "combined")
_COVARIANCES = ("full", "diag", "tied", "spherical")


@dataclass(frozen=True)
class Params:
    """What the experiment runs; the defaults are the full run.

    Attributes:
        benchmark: ``"v2"`` (the default benchmark) or ``"v1"``.
        checkpoint: the base model's safetensors file (``""``: the benchmark's shipped one).
        data_seed: benchmark seed (the shipped checkpoints were trained on seed 0).
        budget_index: which of TAP-ViTs' five budgets (:data:`vitprune_lite.importance.TAP_BUDGETS`;
            index 4 keeps about 50 % of block parameters).
        seeds: recovery seeds (data order, augmentation, validation split).
        devices: device names (empty: every device of the benchmark).
        n_metric, n_finetune: metric-set and fine-tune-set sizes (paper: 640 and 6,400). The oracle
            scores its first ``n_metric`` private training images and recovers on all of them.
        ft_steps, ft_batch, ft_lr, val_fraction: the standard recovery (as in notebook 04).
        score_tokens: token positions per image in the project's HSIC scoring (the reference
            variant uses every token, as the authors' code does).
        sens_images: metric-set images for the KL layer sensitivity.
        feature_space, feature_dim, combined_keep: the device's feature space (notebook 01's
            default: ``"combined"``, 16 principal components per extractor, the leading 8 of each
            joined).
        covariance, k_min, k_max: the uploaded mixture's covariance type and its BIC search range.
        temperatures: sampling temperatures of the extra GMM metric sets (empty: top only).
        selection_seed: seeds the mixture fit, the sampling and the random subsets (one draw).
        test_images: private test images per device (0: the whole split).
        n_boot: bootstrap resamples for the intervals.
        threads: torch CPU threads.
    """

    benchmark: str = DEFAULT_BENCHMARK
    checkpoint: str = ""
    data_seed: int = 0
    budget_index: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    devices: tuple[str, ...] = ()
    n_metric: int = 640
    n_finetune: int = 6400
    ft_steps: int = 30
    ft_batch: int = 64
    ft_lr: float = 3e-4
    val_fraction: float = 0.1
    score_tokens: int = 32
    sens_images: int = 64
    feature_space: str = "combined"
    feature_dim: int = 16
    combined_keep: int = 8
    covariance: str = "diag"
    k_min: int = 2
    k_max: int = 10
    temperatures: tuple[float, ...] = (1.0, 4.0, 16.0)
    selection_seed: int = 0
    test_images: int = 0
    n_boot: int = 2000
    threads: int = 2

    def __post_init__(self) -> None:
        _params.check_benchmark(self)
        _params.check_ints(self, (("data_seed", 0), ("n_metric", 2), ("n_finetune", 2), ("ft_steps", 0),
                                  ("ft_batch", 1), ("score_tokens", 1), ("sens_images", 1), ("feature_dim", 1),
                                  ("combined_keep", 1), ("k_min", 1), ("k_max", 1), ("selection_seed", 0),
                                  ("test_images", 0), ("n_boot", 10), ("threads", 1)))
        _params.check_pruning(self)
        if self.feature_space not in FEATURE_SPACES:
            raise InvalidValueError(f"Params.feature_space = {self.feature_space!r}: accepted {FEATURE_SPACES}")
        if self.combined_keep > self.feature_dim:
            raise InvalidValueError(f"Params.combined_keep = {self.combined_keep}: accepted at most feature_dim "
                                    f"({self.feature_dim}) components per extractor")
        if self.covariance not in _COVARIANCES:
            raise InvalidValueError(f"Params.covariance = {self.covariance!r}: accepted {_COVARIANCES}")
        if self.k_max < self.k_min:
            raise InvalidValueError(f"Params.k_max = {self.k_max}: accepted an integer >= k_min ({self.k_min})")
        if not isinstance(self.temperatures, tuple) or any(
                isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating))
                or not math.isfinite(t) or t <= 0 for t in self.temperatures):
            raise InvalidValueError(f"Params.temperatures = {self.temperatures!r}: accepted a tuple of finite "
                                    "numbers > 0 (empty: no sampled metric sets)")
        names = [f"{t:g}" for t in self.temperatures]
        if len(set(names)) != len(names):
            raise InvalidValueError(f"Params.temperatures = {self.temperatures!r}: accepted distinct values "
                                    "(each names its metric set, gmm_T<t>)")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Params":
        """A named preset (:data:`PRESETS`), with ``overrides`` on top."""
        return _params.preset(cls, PRESETS, name, overrides)


#: ``full``: the defaults. ``lab``: one recovery seed and two temperatures, a quick look (wider intervals).
#: ``smoke``: seconds, for the tests (tiny sets, one temperature, a smaller feature space so a
#: mixture fits on a few dozen private images; only the plumbing is meaningful).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "lab": {"seeds": (0,), "n_boot": 1000, "temperatures": (4.0, 16.0)},
    "smoke": {"seeds": (0,), "n_metric": 32, "n_finetune": 160, "ft_steps": 2, "ft_batch": 16, "score_tokens": 8,
              "sens_images": 8, "feature_dim": 8, "combined_keep": 4, "k_max": 3, "temperatures": (4.0,),
              "test_images": 64, "n_boot": 100, "threads": 1},
}


def set_names(params: Params) -> list[str]:
    """The metric sets' names, in table order: ``gmm``, ``gmm_T<t>`` per temperature, ``random``, ``oracle``."""
    return ["gmm"] + [f"gmm_T{t:g}" for t in params.temperatures] + ["random", "oracle"]


# ----------------------------------------------------------------------------- step 1: metric sets

@dataclass(frozen=True, eq=False)
class MetricSet:
    """One metric set and its recovery set.

    Attributes:
        pool: the labelled images both index into (the public pool, or the device's private
            training split for the oracle), a :class:`vitprune_lite.pipelines.PublicData`.
        metric: int64 ``[n_metric]`` pool indices scored for importance.
        finetune: int64 ``[n_finetune]`` pool indices for the recovery.
    """

    pool: Any
    metric: np.ndarray
    finetune: np.ndarray


@dataclass
class MetricSets:
    """Step 1's output.

    Attributes:
        names: set names (:func:`set_names`).
        sets: device -> set name -> :class:`MetricSet`.
        coverage: device -> set name -> ``{"metric": coverage, "finetune": coverage,
            "overlap_with_top": share of the metric set also in the GMM top set (None: oracle)}``
            with each coverage from :func:`coverage`.
        uploads: device -> facts about its upload (chosen K, skipped K, parameters, bytes).
    """

    names: list[str]
    sets: dict[str, dict[str, MetricSet]]
    coverage: dict[str, dict[str, dict[str, Any]]]
    uploads: dict[str, dict[str, Any]]


def coverage(labels: np.ndarray, classes: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """How a set of images covers a device's classes.

    Args:
        labels: int ``[n]`` class labels of the set's images.
        classes: the device's class indices.
        names: class names, indexed by label (``bench.classes``).

    Returns:
        ``{"n", "in_class": share of the n images in a device class, "min_count": fewest images of
        any one device class, "min_share": min_count / (in-class images / device classes) (1: an
        even cover, 0: a class missing), "counts": {class name: images}}``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise InvalidValueError(f"coverage: labels must be a non-empty 1-D array, got shape {labels.shape}")
    counts = {str(names[c]): int((labels == c).sum()) for c in classes}
    total = sum(counts.values())
    return {"n": int(len(labels)), "in_class": float(np.isin(labels, list(classes)).mean()),
            "min_count": min(counts.values()),
            "min_share": float(min(counts.values()) / (total / len(counts))) if total else 0.0,
            "counts": counts}


def _devices(params: Params, bench) -> list[str]:
    devices = list(params.devices) or list(bench.specs)
    unknown = [d for d in devices if d not in bench.specs]
    if unknown:
        raise InvalidValueError(f"Params.devices: {unknown} are not devices of this benchmark; accepted {list(bench.specs)}")
    return devices


def _feature_space(params: Params, model, images: np.ndarray):
    """Notebook 01's extractor for ``params.feature_space``, fitted on the public ``images``;
    returns ``(extractor, features [M, dim])``."""
    from .. import features

    made = {"vit_cls": lambda: features.ViTCls(model, dim=params.feature_dim),
            "pixel_stats": lambda: features.PixelStats(dim=params.feature_dim)}
    if params.feature_space in made:
        ex = made[params.feature_space]()
        return ex, ex.fit_transform(images)
    parts = [made["vit_cls"](), made["pixel_stats"]()]
    feats = [p.fit_transform(images) for p in parts]
    combo = features.Concat(parts, keep=params.combined_keep)
    return combo, combo.combine(feats)


def metric_sets(params: Params, bench, model, progress: bool = False) -> MetricSets:
    """Step 1: every device's metric and recovery sets, with their class coverage.

    Device side: embed the private training images in notebook 01's feature space (fitted on the
    public pool) and fit the upload (:func:`vitprune_lite.gmm.device_upload`, lowest BIC over
    ``k_min..k_max``, capacity guard on). Cloud side: the top of the likelihood ranking
    (:func:`vitprune_lite.gmm.select`), the same ranking sampled at each temperature, and a
    random subset (:func:`vitprune_lite.gmm.random_selection`, a per-device seed). Seeds,
    extractor and mixture settings are notebook 01's, so on its benchmark and defaults the
    ``gmm`` and ``random`` sets are the ones it ships. The oracle is the device's private
    training split.

    Args:
        params: what to run.
        bench: the benchmark (``bench.public["train"]`` is the pool).
        model: the dense base model (the ``vit_cls`` extractor runs it).
        progress: print one line per device.
    """
    from .. import gmm, pipelines

    t0 = time.perf_counter()
    devices = _devices(params, bench)
    pool = bench.public["train"]
    public = pipelines.PublicData(*pool.tensors())
    extractor, pool_features = _feature_space(params, model, pool.images)
    cloud = gmm.CloudFeatures(pool_features, extractor.space, np.arange(len(pool)))
    names = set_names(params)
    sets: dict[str, dict[str, MetricSet]] = {}
    cover: dict[str, dict[str, dict[str, Any]]] = {}
    uploads: dict[str, dict[str, Any]] = {}
    for d in devices:
        spec, train = bench.specs[d], bench.devices[d]["train"]
        with warnings.catch_warnings():  # the guard's decisions are recorded in ``uploads``
            warnings.simplefilter("ignore", gmm.CapacityWarning)
            fit = gmm.device_upload(train.images, extractor, k_range=range(params.k_min, params.k_max + 1),
                                    covariance_type=params.covariance, seed=params.selection_seed)
        up = fit.upload
        uploads[d] = {"k": fit.chosen_k, "skipped_k": sorted(int(k) for k in fit.skipped),
                      "n_parameters": up.n_parameters, "capacity_ratio": float(fit.capacity_ratio),
                      "upload_bytes": up.nbytes, "n_private": up.n_samples}
        chosen = {"gmm": gmm.select(up, cloud, params.n_metric, params.n_finetune)}
        for t in params.temperatures:
            chosen[f"gmm_T{t:g}"] = gmm.select(up, cloud, params.n_metric, params.n_finetune,
                                               seed=params.selection_seed, sample=True, temperature=float(t))
        chosen["random"] = gmm.random_selection(cloud.index, params.n_metric, params.n_finetune,
                                                seed=gmm.device_seed(params.selection_seed, d))
        sets[d] = {name: MetricSet(public, s.metric, s.finetune) for name, s in chosen.items()}
        idx = np.arange(len(train))
        sets[d]["oracle"] = MetricSet(pipelines.PublicData(*train.tensors()), idx[:params.n_metric], idx)
        top = set(chosen["gmm"].metric.tolist())
        cover[d] = {}
        for name in names:
            ms = sets[d][name]
            labels = (pool.labels if name != "oracle" else train.labels)
            cover[d][name] = {
                "metric": coverage(labels[ms.metric], spec.classes, bench.classes),
                "finetune": coverage(labels[ms.finetune], spec.classes, bench.classes),
                "overlap_with_top": (None if name == "oracle"
                                     else len(top.intersection(ms.metric.tolist())) / len(ms.metric))}
        if progress:
            c = cover[d]
            print(f"{d}: upload K={fit.chosen_k}; metric sets in the device's classes: "
                  + ", ".join(f"{n} {c[n]['metric']['in_class']:.0%} (min {c[n]['metric']['min_count']})" for n in names)
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return MetricSets(names, sets, cover, uploads)


# ----------------------------------------------------------------------------- step 2: layer ratios

@dataclass
class LayerRatios:
    """Step 2's output.

    Attributes:
        ratios: device -> set name -> variant -> ``{"mlp": [L], "attn": [L]}`` keep ratios per
            block, and ``"kl_mlp"``, ``"kl_attn"`` ``[L]``: the layer sensitivities they came from
            (nats; the reference's are on the authors' scale, see ``docs/deviations.md``).
        cache: the scores and sensitivities, keyed as :func:`vitprune_lite.pipelines.prune_and_recover`
            keys its ``cache``, so step 3 prunes with exactly these without scoring again.
    """

    ratios: dict[str, dict[str, dict[str, dict[str, list[float]]]]]
    cache: dict = field(default_factory=dict, repr=False)


def _score_options(params: Params, variant: str) -> dict[str, Any]:
    """``score_options`` for the pipeline: the reference scores every token (its code's only setting)."""
    return {"tokens": params.score_tokens, "seed": 0} if variant == "project" else {}


def ratios(params: Params, model, sets: MetricSets, progress: bool = False) -> LayerRatios:
    """Step 2: TAP-ViTs' per-block keep ratios under both variants on every metric set.

    Per (device, metric set, variant): the composite importance on the metric set
    (:func:`vitprune_lite.importance.score`), the KL layer sensitivity on its first
    ``sens_images`` images (the project: summed over the five probe sparsities; the reference:
    the budget's one probe sparsity, :func:`vitprune_lite.importance.probe_sparsity`), and the
    keep ratios (:func:`vitprune_lite.importance.adaptive_ratios`): the project's average exactly
    the budget's keep; the reference's are clipped to [0, 1] with nothing redistributed.
    """
    from .. import importance, pipelines

    t0 = time.perf_counter()
    budget = importance.TAP_BUDGETS[params.budget_index]
    out: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
    cache: dict = {}
    for d, by_name in sets.sets.items():
        out[d] = {}
        for name in sets.names:
            ms = by_name[name]
            x, y = ms.pool.x[ms.metric], ms.pool.y[ms.metric]
            out[d][name] = {}
            for v in VARIANTS:
                options = _score_options(params, v)
                sparsities = importance.PROBE_SPARSITIES
                if v == "reference":
                    options["variant"] = "reference"
                    sparsities = (importance.probe_sparsity(budget),)
                scores = importance.score(model, "tap_vits", x, y, **options)
                sens = importance.layer_sensitivity(model, x, scores, sparsities=sparsities,
                                                    max_images=params.sens_images, variant=v)
                r = importance.adaptive_ratios(sens, budget, variant=v)
                key = pipelines._cache_key(model, "tap_vits", x, y, True, params.sens_images, options)
                cache[key + ((sparsities,) if v == "reference" else ())] = (scores, sens)
                out[d][name][v] = {"mlp": [float(a) for a in r["mlp"]], "attn": [float(a) for a in r["attn"]],
                                   "kl_mlp": [float(a) for a in sens["mlp"]],
                                   "kl_attn": [float(a) for a in sens["attn"]]}
        if progress:
            print(f"{d}: layer ratios on {len(sets.names)} metric sets x {len(VARIANTS)} variants "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return LayerRatios(out, cache)


# ----------------------------------------------------------------------------- step 3: prune and test

@dataclass
class Accuracy:
    """Step 3's output (accuracies in [0, 1] on each device's private test split).

    Attributes:
        dense: device -> the dense model's accuracy.
        acc: stage -> set -> variant -> device -> accuracy per recovery seed (zero-shot: the
            same value for every seed; the pruned model does not depend on it).
        interval: stage -> set -> variant -> ``{"mean", "lo", "hi"}``: mean over devices with its
            95 % bootstrap interval (seeds and test images resampled).
        gap: stage -> set -> reference - project, :func:`paired_gap` (``mean``, ``lo``, ``hi``,
            ``by_device``).
        sizes: set -> variant -> device -> ``{"block_param_share", "flops_share"}`` of the pruned
            model relative to the dense one.
        kept: set -> variant -> device -> per seed, what the recovery kept (``"finetuned"`` or
            ``"pruned"``, when fine-tuning lowered validation accuracy).
    """

    dense: dict[str, float]
    acc: dict[str, dict[str, dict[str, dict[str, list[float]]]]]
    interval: dict[str, dict[str, dict[str, dict[str, float]]]]
    gap: dict[str, dict[str, dict[str, Any]]]
    sizes: dict[str, dict[str, dict[str, dict[str, float]]]]
    kept: dict[str, dict[str, dict[str, list[str]]]]


def _block_params(model) -> int:
    from .. import measure

    return sum(measure.count_params(b) for b in model.blocks)


def prune(params: Params, bench, model, sets: MetricSets, layer_ratios: LayerRatios,
          progress: bool = False) -> Accuracy:
    """Step 3: prune with each (variant x metric set), test zero-shot and after the standard recovery.

    The pruned model is :func:`vitprune_lite.pipelines.prune_and_recover` with no fine-tune steps
    (scores and sensitivities from step 2's cache; its keep ratios are checked against step 2's),
    then :func:`vitprune_lite.pipelines.recover` once per seed on the metric set's recovery set.

    Raises:
        RuntimeError: the pipeline pruned with other ratios than step 2 computed.
    """
    from .. import importance, measure, pipelines

    t0 = time.perf_counter()
    budget = importance.TAP_BUDGETS[params.budget_index]
    devices = list(sets.sets)
    tests = {}
    for d in devices:
        split = bench.devices[d]["test"]
        n = len(split) if params.test_images == 0 else min(params.test_images, len(split))
        tests[d] = split.subset(np.arange(n)).tensors()
    rec = {"ft_batch": params.ft_batch, "ft_lr": params.ft_lr, "val_fraction": params.val_fraction}
    x1 = tests[devices[0]][0][:1]
    dense_blocks, dense_flops = _block_params(model), measure.count_flops(model, x1)
    dense = {d: float(measure.correct(model, *tests[d]).float().mean()) for d in devices}
    n_seeds = len(params.seeds)
    correct: dict = {s: {n: {v: {} for v in VARIANTS} for n in sets.names} for s in STAGES}
    sizes: dict = {n: {v: {} for v in VARIANTS} for n in sets.names}
    kept: dict = {n: {v: {} for v in VARIANTS} for n in sets.names}
    for d in devices:
        for name in sets.names:
            ms = sets.sets[d][name]
            for v in VARIANTS:
                pruned, rep = pipelines.prune_and_recover(
                    model, ms.pool, ms.metric, ms.finetune, budget, criterion="tap_vits", sens_images=params.sens_images,
                    score_options=_score_options(params, v), cache=layer_ratios.cache, variant=v,
                    ft_steps=0, seed=params.seeds[0], **rec)
                want = layer_ratios.ratios[d][name][v]
                for kind in ("mlp", "attn"):
                    if not np.allclose(rep["layer_keep"][kind], want[kind], rtol=0, atol=1e-9):
                        raise RuntimeError(f"{d}/{name}/{v}: the pipeline pruned with {kind} ratios "
                                           f"{rep['layer_keep'][kind]}, step 2 computed {want[kind]}")
                zero = measure.correct(pruned, *tests[d]).numpy().astype(bool)
                correct["zero_shot"][name][v][d] = [zero] * n_seeds
                correct["recovered"][name][v][d] = []
                kept[name][v][d] = []
                for seed in params.seeds:
                    tuned, info = pipelines.recover(pruned, ms.pool, ms.finetune, ft_steps=params.ft_steps,
                                                    seed=seed, **rec)
                    correct["recovered"][name][v][d].append(measure.correct(tuned, *tests[d]).numpy().astype(bool))
                    kept[name][v][d].append(info["kept"])
                sizes[name][v][d] = {"block_param_share": _block_params(pruned) / dense_blocks,
                                     "flops_share": measure.count_flops(pruned, x1) / dense_flops}
        if progress:
            print(f"{d}: {len(sets.names) * len(VARIANTS)} models pruned, recovered x {n_seeds} and tested "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    acc = {s: {n: {v: {d: [float(c.mean()) for c in correct[s][n][v][d]] for d in devices}
                   for v in VARIANTS} for n in sets.names} for s in STAGES}
    interval, gap = {}, {}
    for s in STAGES:
        interval[s], gap[s] = {}, {}
        for n in sets.names:
            arrays = {v: {d: np.stack(correct[s][n][v][d]) for d in devices} for v in VARIANTS}
            interval[s][n] = {}
            for v in VARIANTS:  # accuracy itself: the gap to a model that is never right
                g = paired_gap(arrays[v], {d: np.zeros_like(a) for d, a in arrays[v].items()}, n_boot=params.n_boot)
                interval[s][n][v] = {k: g[k] for k in ("mean", "lo", "hi")}
            gap[s][n] = paired_gap(arrays["reference"], arrays["project"], n_boot=params.n_boot)
    return Accuracy(dense, acc, interval, gap, sizes, kept)


# ----------------------------------------------------------------------------- the result

@dataclass
class Result(_params.ResultFile):
    """Everything the three steps measured.

    Attributes:
        params: the run's parameters.
        devices: device names.
        sets: metric-set names (:func:`set_names`).
        budget: ``{"mlp_keep", "attn_keep", "block_param_share"}`` targeted.
        uploads, coverage: step 1 (:class:`MetricSets`).
        ratios: step 2 (:class:`LayerRatios`).
        dense, acc, interval, gap, sizes, kept: step 3 (:class:`Accuracy`).
        seconds: wall time of the run.
        environment: what it ran on (:func:`vitprune_lite.measure.environment`).
        inputs: identities of the inputs besides ``params`` (``checkpoint_sha256``, set by
            :func:`load_or_run`).
        schema: :data:`SCHEMA_VERSION`.
    """

    params: Params
    devices: list[str]
    sets: list[str]
    budget: dict[str, float]
    uploads: dict[str, dict[str, Any]]
    coverage: dict[str, dict[str, dict[str, Any]]]
    ratios: dict[str, dict[str, dict[str, dict[str, list[float]]]]]
    dense: dict[str, float]
    acc: dict[str, dict[str, dict[str, dict[str, list[float]]]]]
    interval: dict[str, dict[str, dict[str, dict[str, float]]]]
    gap: dict[str, dict[str, dict[str, Any]]]
    sizes: dict[str, dict[str, dict[str, dict[str, float]]]]
    kept: dict[str, dict[str, dict[str, list[str]]]]
    seconds: float
    environment: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    SCHEMA_VERSION = SCHEMA_VERSION
    PARAMS = Params
    KIND = "TAP faithfulness result"
    RERUN = "notebook 02 (its faithfulness step) or python -m vitprune_lite.experiments.tap_faithfulness"

    def table(self) -> list[dict[str, Any]]:
        """One row per (metric set, variant): coverage (mean over devices), accuracies and the gap.

        Accuracies are means over devices and seeds in [0, 1]; ``gap_*`` is reference - project
        (the same on both rows of a set).
        """
        rows = []
        for n in self.sets:
            cov = [self.coverage[d][n]["metric"] for d in self.devices]
            for v in VARIANTS:
                row = {"set": n, "variant": v, "in_class": float(np.mean([c["in_class"] for c in cov])),
                       "min_count": min(c["min_count"] for c in cov)}
                for s in STAGES:
                    i = self.interval[s][n][v]
                    row.update({f"{s}": i["mean"], f"{s}_lo": i["lo"], f"{s}_hi": i["hi"],
                                f"gap_{s}": self.gap[s][n]["mean"], f"gap_{s}_lo": self.gap[s][n]["lo"],
                                f"gap_{s}_hi": self.gap[s][n]["hi"]})
                rows.append(row)
        return rows

    def _check(self) -> str:
        """What does not fit together ("" if everything does)."""
        if self.sets != set_names(self.params):
            return f"sets {self.sets} do not follow the parameters' {set_names(self.params)}"
        n_seeds = len(self.params.seeds)
        for s in STAGES:
            for n in self.sets:
                for v in VARIANTS:
                    for d in self.devices:
                        a = self.acc[s][n][v][d]
                        if len(a) != n_seeds or not all(0 <= x <= 1 for x in a):
                            return f"acc[{s}][{n}][{v}][{d}] holds {a}, expected {n_seeds} accuracies in [0, 1]"
        for d in self.devices:
            for n in self.sets:
                for v in VARIANTS:
                    r = self.ratios[d][n][v]
                    if len({len(r[k]) for k in ("mlp", "attn", "kl_mlp", "kl_attn")}) != 1:
                        return f"ratios[{d}][{n}][{v}] hold per-block lists of different lengths"
        return ""


def run(params: Params = Params(), bench=None, model=None, progress: bool = True) -> Result:
    """All three steps.

    Args:
        params: what to run.
        bench, model: the benchmark and dense base model (default: loaded from ``params``).
        progress: print one line per device and step.
    """
    import torch

    from .. import importance, measure

    t0 = time.perf_counter()
    if bench is None or model is None:
        bench, model = _load(params)
    _devices(params, bench)  # refuse unknown devices before any work
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        ms = metric_sets(params, bench, model, progress)
        lr = ratios(params, model, ms, progress)
        acc = prune(params, bench, model, ms, lr, progress)
    finally:
        torch.set_num_threads(threads)
    m, a = importance.TAP_BUDGETS[params.budget_index]
    budget = {"mlp_keep": m, "attn_keep": a, "block_param_share": importance.block_param_fraction(m, a)}
    return Result(params, list(ms.sets), list(ms.names), budget, ms.uploads, ms.coverage, lr.ratios, acc.dense,
                  acc.acc, acc.interval, acc.gap, acc.sizes, acc.kept, round(time.perf_counter() - t0, 1),
                  measure.environment())


def load_or_run(params: Params, path: str | Path, rerun: bool = False) -> tuple[Result, bool]:
    """:func:`run` with a cache: the result in ``path`` if it is a run of exactly ``params`` on the same
    base checkpoint, otherwise a fresh run written there. Returns ``(result, loaded from path)``."""
    return _params.load_or_run(params, path, run, Result.from_json, rerun=rerun)


# ----------------------------------------------------------------------------- figures

def plot_ratios(result: Result, device: Optional[str] = None):
    """Per-block keep ratios, reference vs project, one column per metric set (rows: MLP, attention).

    Args:
        result: a :class:`Result`.
        device: whose ratios (default: the first device).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    device = device or result.devices[0]
    if device not in result.devices:
        raise InvalidValueError(f"device {device!r}: accepted one of {result.devices}")
    n = len(result.sets)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n + 0.8, 5.0), sharex=True, sharey=True, squeeze=False)
    styles = {"reference": dict(color="tab:orange", marker="s", ls="--"), "project": dict(color="tab:blue", marker="o")}
    for j, name in enumerate(result.sets):
        for i, (kind, target) in enumerate((("mlp", result.budget["mlp_keep"]), ("attn", result.budget["attn_keep"]))):
            ax = axes[i, j]
            for v in VARIANTS:
                r = result.ratios[device][name][v][kind]
                ax.plot(range(len(r)), r, label=v, **styles[v])
            ax.axhline(target, color="0.5", lw=0.8, ls=":", label="budget keep")
            ax.set_ylim(0, 1.05)
            if i == 0:
                c = result.coverage[device][name]["metric"]
                ax.set_title(f"{name}\n{c['in_class']:.0%} in class, min {c['min_count']}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{'MLP' if kind == 'mlp' else 'attention'} keep ratio")
            if i == 1:
                ax.set_xlabel("block")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"TAP-ViTs layer keep ratios for {device}, "
                 f"{result.budget['block_param_share']:.0%} of block parameters", fontsize=10)
    fig.tight_layout()
    return fig


def plot_accuracy(result: Result):
    """Left: accuracy per metric set and variant after recovery (bars; zero-shot as open markers),
    each with its 95 % interval, the dense model as a line. Right: reference - project per metric
    set and stage with the paired 95 % interval. Means over devices and seeds, in percent.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    names, x = result.sets, np.arange(len(result.sets))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(9.0, 1.6 * len(names) + 5), 4.6))
    width = 0.38
    colors = {"reference": "tab:orange", "project": "tab:blue"}
    for k, v in enumerate(VARIANTS):
        xs = x + (k - 0.5) * width
        rec = [result.interval["recovered"][n][v] for n in names]
        zs = [result.interval["zero_shot"][n][v] for n in names]
        mean = np.array([r["mean"] for r in rec]) * 100
        err = np.array([[r["mean"] - r["lo"], r["hi"] - r["mean"]] for r in rec]).T * 100
        ax.bar(xs, mean, width, yerr=err, capsize=3, color=colors[v], alpha=0.8, label=f"{v}, recovered")
        zmean = np.array([r["mean"] for r in zs]) * 100
        zerr = np.array([[r["mean"] - r["lo"], r["hi"] - r["mean"]] for r in zs]).T * 100
        ax.errorbar(xs, zmean, yerr=zerr, fmt="o", mfc="white", color=colors[v], capsize=2, label=f"{v}, zero-shot")
    ax.axhline(100 * float(np.mean(list(result.dense.values()))), color="k", lw=1, ls="--", label="dense")
    lowest = min(result.interval[s][n][v]["lo"] for s in STAGES for n in names for v in VARIANTS)
    ax.set_ylim(max(0.0, 100 * lowest - 3), 100.5)  # the differences, not the distance from 0
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("private test accuracy (%)")
    ax.set_title("accuracy (mean over devices, 95 % interval)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    for k, s in enumerate(STAGES):
        g = [result.gap[s][n] for n in names]
        mean = np.array([e["mean"] for e in g]) * 100
        err = np.array([[e["mean"] - e["lo"], e["hi"] - e["mean"]] for e in g]).T * 100
        bx.errorbar(x + (k - 0.5) * 0.25, mean, yerr=err, fmt="o" if s == "recovered" else "s", capsize=3,
                    color="k" if s == "recovered" else "0.5",  # not the variants' colours of the left panel
                    mfc="white" if s == "zero_shot" else None, label=s.replace("_", "-"))
    bx.axhline(0, color="0.4", lw=0.8)
    bx.set_xticks(x, names, rotation=20)
    bx.set_ylabel("reference - project (points)")
    bx.set_title("paired difference, 95 % interval", fontsize=9)
    bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    fig.suptitle(f"TAP-ViTs at {result.budget['block_param_share']:.0%} of block parameters, "
                 f"{len(result.devices)} devices x {len(result.params.seeds)} recovery seeds", fontsize=10)
    fig.tight_layout()
    return fig


def _pct(i: Mapping[str, float]) -> str:
    return f"{100 * i['mean']:.1f} % [{100 * i['lo']:.1f}, {100 * i['hi']:.1f}]"


def _compare(a: Mapping[str, float], b: Mapping[str, float]) -> str:
    """How interval ``a`` stands against interval ``b``: above, below, or not resolved (they overlap)."""
    if a["lo"] > b["hi"]:
        return "above"
    if a["hi"] < b["lo"]:
        return "below"
    return "not resolved (the intervals overlap)"


def summary_markdown(result: Result) -> str:
    """What the result says, in sentences written from its numbers (for notebook 02's "what we found").

    Accuracies are means over devices and seeds with their 95 % intervals; reference - project is
    the paired difference. Two metric sets are compared by their separate intervals: "not
    resolved" when they overlap (a conservative reading: a paired interval could be narrower).
    """
    stage = "recovered"
    iv, gap = result.interval, result.gap

    def diff(g: Mapping[str, float]) -> str:
        verdict = "reference better" if g["lo"] > 0 else "project better" if g["hi"] < 0 else "not resolved"
        return f"{100 * g['mean']:+.1f} points [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}], {verdict}"

    lines = [f"TAP-ViTs at {result.budget['block_param_share']:.0%} of block parameters on {len(result.devices)} "
             f"devices x {len(result.params.seeds)} recovery seed(s), private test accuracy after recovery, and "
             "reference - project zero-shot and after recovery:", ""]
    for n in result.sets:
        lines.append(f"- **{n}**: project {_pct(iv[stage][n]['project'])}, reference {_pct(iv[stage][n]['reference'])}; "
                     f"reference - project zero-shot {diff(gap['zero_shot'][n])}; after recovery {diff(gap[stage][n])}.")
    if "gmm" in result.sets and "random" in result.sets:
        lines += ["", "GMM top-ranked set against random public images, after recovery: " + "; ".join(
            f"{v} {_compare(iv[stage]['gmm'][v], iv[stage]['random'][v])}" for v in VARIANTS)
            + ". Zero-shot: " + "; ".join(
            f"{v} {_compare(iv['zero_shot']['gmm'][v], iv['zero_shot']['random'][v])}" for v in VARIANTS) + "."]
    ratios = result.ratios
    spread = {v: max(max(ratios[d][n][v][k]) - min(ratios[d][n][v][k])
                     for d in result.devices for n in result.sets for k in ("mlp", "attn")) for v in VARIANTS}
    lines += ["", "Layer keep ratios: the largest spread between one layer and another (any device, set, MLP or "
                  f"attention) is {spread['reference']:.2f} in the reference variant and {spread['project']:.2f} in "
                  "the project's."]
    cov = {n: min((result.coverage[d][n]["metric"]["min_count"], d) for d in result.devices) for n in result.sets}
    lines += ["", "Class coverage (fewest images of any one device class in a metric set, over devices): "
              + ", ".join(f"{n} {c} ({d})" for n, (c, d) in cov.items()) + "."]
    return "\n".join(lines)


def stored_path(benchmark: str) -> Path:
    """Where a benchmark's stored run lives: ``data/benchmarks/tap_faithfulness.json`` for v1,
    ``tap_faithfulness_<benchmark>.json`` otherwise (so a run on one never overwrites another's)."""
    from .. import paths

    name = "tap_faithfulness.json" if benchmark == "v1" else f"tap_faithfulness_{benchmark}.json"
    return paths.data_dir() / "benchmarks" / name


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: run a preset, write the result JSON and both figures beside it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--benchmark", default=None, choices=BENCHMARK_NAMES)
    p.add_argument("--out", default=None, help="result JSON (default: stored_path(benchmark), "
                                               "data/benchmarks/tap_faithfulness[_v2].json)")
    args = p.parse_args(argv)
    params = Params.preset(args.preset, **({"benchmark": args.benchmark} if args.benchmark else {}))
    out = Path(args.out) if args.out else stored_path(params.benchmark)
    if out.suffix != ".json":
        raise InvalidValueError(f"--out {out}: accepted a path ending in .json")
    result, _ = load_or_run(params, out, rerun=True)
    for suffix, fig in (("ratios", plot_ratios(result)), ("accuracy", plot_accuracy(result))):
        fig.savefig(out.with_name(f"{out.stem}_{suffix}.png"), dpi=120)
    print(f"wrote {out} in {result.seconds:.0f} s")
    print(f"{'metric set':12s} {'variant':10s} {'in class':>8s} {'min':>4s} {'zero-shot':>10s} {'recovered':>10s}"
          f" {'ref - proj after recovery [95 %]':>34s}")
    for row in result.table():
        print(f"{row['set']:12s} {row['variant']:10s} {row['in_class']:8.0%} {row['min_count']:4d} "
              f"{row['zero_shot']:10.1%} {row['recovered']:10.1%} "
              f"{100 * row['gap_recovered']:+8.1f} [{100 * row['gap_recovered_lo']:+.1f}, "
              f"{100 * row['gap_recovered_hi']:+.1f}] points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
