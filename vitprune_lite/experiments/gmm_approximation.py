"""Notebook 01's experiment: a Gaussian mixture per device stands in for its private data.

TAP-ViTs' data side (docs/methods.md, "TAP-ViTs": device side and cloud side), measured in three feature spaces:

1. :func:`load` - the benchmark, the selection pool (``bench.public["train"]``), each device's
   private splits and the base model;
2. :func:`embed` - the two frozen extractors (``vit_cls``, ``pixel_stats``) fitted on the
   public pool, every pool and private image embedded, and ``combined`` built from both;
3. :func:`fit_mixtures` - per device and space, a mixture for every K in the range, K by BIC,
   behind the capacity guard (:func:`vitprune_lite.gmm.fit_upload`);
4. :func:`select_sets` - the cloud ranks the pool by likelihood under each upload (metric and
   fine-tune sets), against a random public subset per device;
5. :func:`selection_quality` and :func:`sampling_temperatures` - precision, class balance and
   distances to the device's private *test* images; sampling by likelihood against the top;
6. :func:`privacy_audit` and :func:`membership_sweep` - membership inference on the upload,
   and how it grows with the mixture's capacity (guard off);
7. :func:`save_sets` - the index sets later notebooks read (``01_selected_sets.npz``, recording
   the benchmark and seed), and :func:`collect` - the :class:`Result` (``01_gmm_data_approximation.json``).

:func:`run` does every step in order without figures; from the command line,
``python -m vitprune_lite.experiments.gmm_approximation --preset lab --benchmark v2`` runs a preset
and writes the result JSON and the selected sets.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import InvalidValueError
from ..data import BENCHMARK_NAMES, DEFAULT_BENCHMARK
from . import _params

__all__ = ["Params", "PRESETS", "Result", "SCHEMA_VERSION", "SPACES", "Setup", "Embeddings", "Fits", "Selections",
           "load", "device_table", "embed", "fit_mixtures", "upload_table", "select_sets", "selection_quality",
           "quality_table", "sampling_temperatures", "temperature_lines", "privacy_audit", "audit_lines",
           "membership_sweep", "save_sets", "collect", "summary_lines", "run", "plot_bic", "plot_samples",
           "plot_top_bottom", "plot_selection_quality", "plot_membership", "main"]

SCHEMA_VERSION = 1
#: The feature spaces the experiment knows (:mod:`vitprune_lite.features`).
SPACES = ("vit_cls", "pixel_stats", "combined")
_MARKERS = {"diag": "o", "full": "s", "tied": "^", "spherical": "v"}


@dataclass(frozen=True)
class Params:
    """What notebook 01 runs; the defaults are the full run (tuned for benchmark v1).

    Attributes:
        benchmark: ``"v2"`` (the default) or ``"v1"``.
        seed: benchmark seed and every random choice (selection, samples, audits).
        threads: torch CPU threads (feature extraction).
        feature_spaces: the spaces compared, from :data:`SPACES`.
        default_feature_space: the one later notebooks use by default (one of ``feature_spaces``).
        feature_dim: principal components kept per space (fitted on public images only).
        combined_keep: ``combined`` = the leading ``combined_keep`` components of each extractor.
        covariance: covariance type of the uploaded mixture.
        k_min, k_max: the BIC search range of K.
        n_metric, n_finetune: metric-set and fine-tune-set sizes (the fine-tune set is capped by
            the pool).
        sample: False: the top of the ranking (the paper); True: sample by likelihood.
        sample_temperature: with ``sample``: probability ~ likelihood ** (1 / T).
        sample_temperatures: the temperatures compared with the top of the ranking.
        audit_ks: components fitted (guard off) in the privacy sweep.
        audit_covariances: covariance types of the privacy sweep.
        pool_images: the first ``pool_images`` images of the public train split form the pool
            (0: all of it). The default, 12,000, is v1's whole pool and 30 % of v2's 40,000 (which
            exist to train the base model): embedding all of v2's pool would triple this run.
        private_train, private_test: each device's first images of its private splits
            (0: the whole split).
    """

    benchmark: str = DEFAULT_BENCHMARK
    seed: int = 0
    threads: int = 2
    feature_spaces: tuple[str, ...] = SPACES
    default_feature_space: str = "combined"
    feature_dim: int = 16
    combined_keep: int = 8
    covariance: str = "diag"
    k_min: int = 2
    k_max: int = 10
    n_metric: int = 640
    n_finetune: int = 6400
    sample: bool = False
    sample_temperature: float = 4.0
    sample_temperatures: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0)
    audit_ks: tuple[int, ...] = (1, 2, 5, 10, 20, 40)
    audit_covariances: tuple[str, ...] = ("diag", "full")
    pool_images: int = 12_000
    private_train: int = 0
    private_test: int = 0

    def __post_init__(self) -> None:
        from .. import gmm

        _params.check_benchmark(self)
        _params.check_ints(self, (("seed", 0), ("threads", 1), ("feature_dim", 1), ("combined_keep", 1),
                                  ("k_min", 1), ("k_max", 1), ("n_metric", 1), ("n_finetune", 1),
                                  ("pool_images", 0), ("private_train", 0), ("private_test", 0)))
        fs = self.feature_spaces
        if not isinstance(fs, tuple) or not fs or len(set(fs)) != len(fs) or not set(fs) <= set(SPACES):
            raise InvalidValueError(f"Params.feature_spaces = {fs!r}: accepted a non-empty tuple of distinct "
                                    f"names from {SPACES}")
        if self.default_feature_space not in fs:
            raise InvalidValueError(f"Params.default_feature_space = {self.default_feature_space!r}: accepted one "
                                    f"of feature_spaces {fs}")
        if self.combined_keep > self.feature_dim:
            raise InvalidValueError(f"Params.combined_keep = {self.combined_keep}: accepted at most feature_dim "
                                    f"= {self.feature_dim} (components kept from each extractor)")
        if self.k_max < self.k_min:
            raise InvalidValueError(f"Params.k_max = {self.k_max}: accepted an integer >= k_min = {self.k_min}")
        if self.n_finetune < self.n_metric:
            raise InvalidValueError(f"Params.n_finetune = {self.n_finetune}: accepted at least n_metric = "
                                    f"{self.n_metric} (the metric set is the fine-tune set's prefix)")
        if self.covariance not in gmm.COVARIANCE_TYPES:
            raise InvalidValueError(f"Params.covariance = {self.covariance!r}: accepted {gmm.COVARIANCE_TYPES}")
        if not isinstance(self.sample, bool):
            raise InvalidValueError(f"Params.sample = {self.sample!r}: accepted True or False")
        for name in ("sample_temperature",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise InvalidValueError(f"Params.{name} = {v!r}: accepted a finite number > 0")
        ts = self.sample_temperatures
        if not isinstance(ts, tuple) or any(isinstance(t, bool) or not isinstance(t, (int, float))
                                            or not 0 < t < float("inf") for t in ts):
            raise InvalidValueError(f"Params.sample_temperatures = {ts!r}: accepted a tuple of finite numbers > 0")
        ks = self.audit_ks
        if not isinstance(ks, tuple) or not ks or any(not _params._is_int(k) or k < 1 for k in ks):
            raise InvalidValueError(f"Params.audit_ks = {ks!r}: accepted a non-empty tuple of integers >= 1")
        cv = self.audit_covariances
        if not isinstance(cv, tuple) or not cv or not set(cv) <= set(gmm.COVARIANCE_TYPES):
            raise InvalidValueError(f"Params.audit_covariances = {cv!r}: accepted a non-empty tuple from "
                                    f"{gmm.COVARIANCE_TYPES}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Params":
        """A named preset (:data:`PRESETS`), with ``overrides`` on top (lists, as JSON or papermill
        pass them, are taken as the tuples the fields hold)."""
        tuples = {"feature_spaces", "sample_temperatures", "audit_ks", "audit_covariances"}
        overrides = {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in overrides.items()}
        return _params.preset(cls, PRESETS, name, overrides)

    def is_reduced(self) -> bool:
        """Whether any size differs from the full run's (pool, private splits, set sizes, sweep)."""
        full = Params(benchmark=self.benchmark)
        return any(getattr(self, f) != getattr(full, f) for f in
                   ("pool_images", "private_train", "private_test", "n_metric", "n_finetune", "audit_ks"))


#: ``full``: the defaults. ``lab``: a sixth of the pool, 15 % of each device's private images,
#: half the metric set, an eighth of the fine-tune set and a shorter sweep (every effect still
#: shows: selection vs random, the spaces' differences, AUC rising with K).
#: ``smoke``: the tests' sizes (1,000 pool images, 160/80 private images per device).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "extended": {},  # the full run: nothing here is cut short
    "lab": {"pool_images": 2000, "n_metric": 320, "n_finetune": 800, "audit_ks": (1, 5, 20, 40), "private_train": 300,
            "private_test": 150},
    "smoke": {"pool_images": 1000, "private_train": 160, "private_test": 80, "n_metric": 64, "n_finetune": 640,
              "audit_ks": (2, 10)},
}


# ----------------------------------------------------------------------------- steps

@dataclass
class Setup:
    """What every step works on.

    Attributes:
        bench: the benchmark (:class:`vitprune_lite.data.Benchmark`).
        pool: the public train split; ``pool_index`` int64 ``[n]`` the images of it that form the
            selection pool (every selected index points into ``pool``).
        private: device -> ``{"train", "test"}`` ImageSets (possibly cut to the first images).
        devices: device names.
        model: the dense base model; meta: its checkpoint metadata.
        started: ``time.perf_counter()`` when it was loaded (the run's wall time counts from it).
    """

    bench: Any
    pool: Any
    pool_index: np.ndarray
    private: dict[str, dict[str, Any]]
    devices: list[str]
    model: Any
    meta: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)


def load(params: Params, bench=None, model=None, meta: Optional[dict] = None) -> Setup:
    """The benchmark, pool, private splits and base model of ``params`` (``bench``/``model``: reuse loaded ones)."""
    from .. import data, models

    if bench is None:
        bench = data.benchmark_module(params.benchmark).load_benchmark(params.seed)
    if model is None:
        model, meta = models.load_base_model(params.benchmark)
    pool = bench.public["train"]
    n_pool = len(pool) if params.pool_images == 0 else params.pool_images
    if n_pool > len(pool):
        raise InvalidValueError(f"Params.pool_images = {params.pool_images}: the {params.benchmark} pool holds "
                                f"{len(pool):,} images; accepted 0 (all) to {len(pool):,}")
    private = {}
    for d, splits in bench.devices.items():
        private[d] = {}
        for s, n in (("train", params.private_train), ("test", params.private_test)):
            split = splits[s]
            private[d][s] = split if n == 0 or n >= len(split) else split.subset(np.arange(n))
    return Setup(bench, pool, np.arange(n_pool), private, list(bench.specs), model, dict(meta or {}))


def device_table(setup: Setup) -> list[dict[str, Any]]:
    """Per device: ``{"device", "classes" (names), "styles" (name -> share), "n_train", "raw_mb", "n_test"}``."""
    rows = []
    for d in setup.devices:
        spec, tr, te = setup.bench.specs[d], setup.private[d]["train"], setup.private[d]["test"]
        rows.append({"device": d, "classes": [setup.bench.classes[c] for c in spec.classes],
                     "styles": dict(spec.style_mix), "n_train": len(tr), "raw_mb": tr.images.nbytes / 1e6,
                     "n_test": len(te)})
    return rows


@dataclass
class Embeddings:
    """Features of the pool and of every private split.

    Attributes:
        extractors: space -> fitted extractor (``combined`` a :class:`~vitprune_lite.features.Concat`).
        cloud: space -> :class:`~vitprune_lite.gmm.CloudFeatures` of the pool.
        feats: space -> device -> ``{"train", "test"}`` float ``[n, dim]``.
        seconds: wall seconds per extractor (pool and private images).
    """

    extractors: dict[str, Any]
    cloud: dict[str, Any]
    feats: dict[str, dict[str, dict[str, np.ndarray]]]
    seconds: dict[str, float]


def embed(params: Params, setup: Setup, progress: bool = False) -> Embeddings:
    """Fit both extractors on the pool and embed the pool and every private split (``combined`` reuses them).

    ``progress``: one line per extractor (images embedded and wall time).
    """
    import torch

    from .. import features, gmm, measure

    threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        extractors: dict[str, Any] = {"vit_cls": features.ViTCls(setup.model, dim=params.feature_dim),
                                      "pixel_stats": features.PixelStats(dim=params.feature_dim)}
        cloud, feats, seconds = {}, {}, {}
        images = setup.pool.images[setup.pool_index]
        for name, ex in extractors.items():
            t0 = time.perf_counter()
            cloud[name] = gmm.CloudFeatures(ex.fit_transform(images), ex.space, setup.pool_index)
            feats[name] = {d: {s: ex(setup.private[d][s].images) for s in ("train", "test")} for d in setup.devices}
            seconds[name] = time.perf_counter() - t0
            if progress:
                n = len(setup.pool_index) + sum(len(setup.private[d][s]) for d in setup.devices
                                                for s in ("train", "test"))
                print(f"{name:12s} version {ex.version}: {n:,} images embedded in {seconds[name]:.1f} s "
                      f"({params.threads} threads, load {measure.environment()['load_avg_1min']:.1f})", flush=True)
    finally:
        torch.set_num_threads(threads)
    combo = extractors["combined"] = features.Concat([extractors["vit_cls"], extractors["pixel_stats"]],
                                                     keep=params.combined_keep)
    cloud["combined"] = gmm.CloudFeatures(combo.combine([cloud[p.name].features for p in combo.parts]), combo.space,
                                          setup.pool_index)
    feats["combined"] = {d: {s: combo.combine([feats[p.name][d][s] for p in combo.parts]) for s in ("train", "test")}
                         for d in setup.devices}
    return Embeddings(extractors, cloud, feats, seconds)


@dataclass
class Fits:
    """space -> device -> :class:`~vitprune_lite.gmm.DeviceFit`, and the wall seconds of each fit."""

    fits: dict[str, dict[str, Any]]
    seconds: dict[tuple[str, str], float]


def fit_mixtures(params: Params, setup: Setup, emb: Embeddings) -> Fits:
    """Each device fits its upload in each space: K in ``k_min..k_max`` by BIC, behind the capacity guard.

    The guard's skipped K are recorded in each fit (``skipped``); its warnings are silenced here.
    """
    from .. import gmm

    fits: dict[str, dict[str, Any]] = {}
    seconds: dict[tuple[str, str], float] = {}
    for name in params.feature_spaces:
        fits[name] = {}
        for d in setup.devices:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", gmm.CapacityWarning)
                fits[name][d] = gmm.fit_upload(emb.feats[name][d]["train"], emb.extractors[name].space,
                                               raw_bytes=setup.private[d]["train"].images.nbytes,
                                               k_range=range(params.k_min, params.k_max + 1),
                                               covariance_type=params.covariance, seed=params.seed)
            seconds[(name, d)] = time.perf_counter() - t0
    return Fits(fits, seconds)


def upload_table(params: Params, fits: Fits) -> list[str]:
    """One line per space and device: K, parameters, capacity ratio, upload and raw bytes."""
    lines = []
    for name in params.feature_spaces:
        for d, f in fits.fits[name].items():
            up = f.upload
            lines.append(f"{name:12s} {d:10s} K={up.n_components:2d}  {up.n_parameters:4d} parameters "
                         f"({f.capacity_ratio:.2f} per image)  upload {up.nbytes:6,d} B "
                         f"(JSON {len(up.to_json()):6,d} B)  "
                         f"raw {up.raw_bytes:,d} B  ->  {up.raw_bytes / up.nbytes:,.0f}x smaller"
                         + (f"  (guard skipped K={sorted(f.skipped)})" if f.skipped else ""))
    return lines


@dataclass
class Selections:
    """``sel``: space -> device -> :class:`~vitprune_lite.gmm.Selection`; ``rnd``: device -> random Selection."""

    sel: dict[str, dict[str, Any]]
    rnd: dict[str, Any]


def select_sets(params: Params, setup: Setup, emb: Embeddings, fits: Fits) -> Selections:
    """The cloud's metric and fine-tune sets per space and device, and a random subset per device."""
    from .. import gmm

    sel = {name: {d: gmm.select(fits.fits[name][d].upload, emb.cloud[name], params.n_metric, params.n_finetune,
                                seed=params.seed, sample=params.sample, temperature=params.sample_temperature)
                  for d in setup.devices} for name in params.feature_spaces}
    rnd = {d: gmm.random_selection(setup.pool_index, params.n_metric, params.n_finetune,
                                   seed=gmm.device_seed(params.seed, d)) for d in setup.devices}
    return Selections(sel, rnd)


def selection_quality(params: Params, setup: Setup, emb: Embeddings, sels: Selections) -> dict[tuple[str, str], dict]:
    """Per ``(space, device)``: how well the selection fits the device's task.

    Returns:
        ``{(space, device): {"precision": {"metric", "finetune"} -> {"class", "style", "both"},
        "random_precision": the same for the random subset, "distance": evaluation space ->
        :func:`~vitprune_lite.gmm.distance_report` of the sets ``selected``, ``selected_finetune``,
        ``random`` (metric size) and ``oracle`` (private train) to the private test features,
        "class_balance": {"metric", "finetune"} -> :func:`~vitprune_lite.gmm.class_balance`}}``.
    """
    from .. import gmm

    bench, pool = setup.bench, setup.pool
    quality = {}
    for d in setup.devices:
        spec = bench.specs[d]
        rand_prec = {s: gmm.precision(getattr(sels.rnd[d], s), pool, spec, styles=bench.styles)
                     for s in ("metric", "finetune")}
        for name in params.feature_spaces:
            chosen = sels.sel[name][d]
            prec = {s: gmm.precision(getattr(chosen, s), pool, spec, styles=bench.styles)
                    for s in ("metric", "finetune")}
            dist = {}
            for ev in params.feature_spaces:
                sets = {"selected": emb.cloud[ev].take(chosen.metric),
                        "selected_finetune": emb.cloud[ev].take(chosen.finetune),
                        "random": emb.cloud[ev].take(sels.rnd[d].metric),
                        "oracle": emb.feats[ev][d]["train"]}
                dist[ev] = gmm.distance_report(sets, emb.feats[ev][d]["test"], seed=params.seed)
            balance = {s: gmm.class_balance(getattr(chosen, s), pool, spec, classes=bench.classes)
                       for s in ("metric", "finetune")}
            quality[(name, d)] = {"precision": prec, "random_precision": rand_prec, "distance": dist,
                                  "class_balance": balance}
    return quality


def quality_table(quality: dict[tuple[str, str], dict]) -> list[str]:
    """The precision table: metric set, fine-tune set and random subset, with the metric set's class counts."""
    lines = [f"{'':23s} {'metric set':^22s}   {'fine-tune set':^22s}   {'random (metric size)':^22s}",
             f"{'space':12s} {'device':10s} " + "   class  style   both" * 3 + "   metric set per class"]
    for (name, d), q in quality.items():
        cells = [q["precision"]["metric"], q["precision"]["finetune"], q["random_precision"]["metric"]]
        lines.append(f"{name:12s} {d:10s} "
                     + "".join(f"   {c['class']:.3f}  {c['style']:.3f}  {c['both']:.3f}" for c in cells)
                     + f"   {q['class_balance']['metric']['counts']}")
    return lines


def sampling_temperatures(params: Params, setup: Setup, emb: Embeddings, fits: Fits,
                          sels: Selections) -> dict[str, dict[str, dict]]:
    """Metric sets in the default space: top of the ranking, sampled at each temperature, and random.

    Returns:
        device -> label (``"top"``, ``"T=<t>"``, ``"random"``) -> ``{"precision", "min_class_share",
        "mmd2"}`` (squared MMD to the private test features).
    """
    from .. import gmm

    name, bench = params.default_feature_space, setup.bench
    variants = [("top", {"sample": False})] + [(f"T={t:g}", {"sample": True, "temperature": t})
                                               for t in params.sample_temperatures]
    table: dict[str, dict[str, dict]] = {}
    for d in setup.devices:
        sets = {label: gmm.select(fits.fits[name][d].upload, emb.cloud[name], params.n_metric, params.n_finetune,
                                  seed=params.seed, **kw).metric for label, kw in variants}
        sets["random"] = sels.rnd[d].metric
        mmd = gmm.distance_report({k: emb.cloud[name].take(v) for k, v in sets.items()},
                                  emb.feats[name][d]["test"], seed=params.seed)["mmd2"]
        table[d] = {}
        for label, idx in sets.items():
            p = gmm.precision(idx, setup.pool, bench.specs[d], styles=bench.styles)
            bal = gmm.class_balance(idx, setup.pool, bench.specs[d], classes=bench.classes)
            table[d][label] = {"precision": p, "min_class_share": bal["min_share"], "mmd2": mmd[label]}
    return table


def temperature_lines(table: dict[str, dict[str, dict]]) -> list[str]:
    """The sampling table as printed lines."""
    lines = [f"{'device':10s} {'metric set':10s} class  style  min class share  MMD² to private test"]
    for d, rows in table.items():
        for label, r in rows.items():
            p = r["precision"]
            lines.append(f"{d:10s} {label:10s} {p['class']:.3f}  {p['style']:.3f}  {r['min_class_share']:15.2f}  "
                         f"{r['mmd2']:.4f}")
    return lines


def privacy_audit(params: Params, setup: Setup, emb: Embeddings, fits: Fits) -> dict[tuple[str, str], dict]:
    """Per ``(space, device)``: ``{"membership_auc", "nearest_record"}`` of the upload
    (:func:`vitprune_lite.privacy.membership_auc`, :func:`~vitprune_lite.privacy.nearest_record_audit`)."""
    from .. import privacy

    audit = {}
    for name in params.feature_spaces:
        for i, d in enumerate(setup.devices):
            up, f = fits.fits[name][d].upload, emb.feats[name][d]
            audit[(name, d)] = {"membership_auc": privacy.membership_auc(up, f["train"], f["test"]),
                                "nearest_record": privacy.nearest_record_audit(up, f["train"], f["test"],
                                                                               seed=params.seed + i)}
    return audit


def audit_lines(audit: dict[tuple[str, str], dict], fits: Fits) -> list[str]:
    """The audit as printed lines (K, membership AUC, nearest-record share and ratio)."""
    lines = []
    for (name, d), a in audit.items():
        up = fits.fits[name][d].upload
        lines.append(f"{name:12s} {d:10s} K={up.n_components:2d}  membership AUC {a['membership_auc']:.3f}  "
                     f"samples closer to a training image: {a['nearest_record']['closer_to_members']:.2f}  "
                     f"(median distance ratio {a['nearest_record']['ratio']:.2f})")
    return lines


def membership_sweep(params: Params, setup: Setup, emb: Embeddings,
                     progress: bool = False) -> dict[tuple[str, str], list]:
    """Membership AUC of mixtures fitted with the guard off, per ``(space, device)``: a list of
    :func:`vitprune_lite.privacy.membership_sweep` rows (``k``, ``covariance_type``, ``auc``,
    ``capacity_ratio``, ...). Ks larger than a device's training images are left out.

    ``progress``: a tqdm bar over spaces x devices.
    """
    from .. import privacy

    jobs = [(name, d) for name in params.feature_spaces for d in setup.devices]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="privacy sweep")
    sweep = {}
    for name, d in jobs:
        f = emb.feats[name][d]
        ks = [k for k in params.audit_ks if k <= len(f["train"])]
        sweep[(name, d)] = privacy.membership_sweep(f["train"], f["test"], emb.extractors[name].space, ks=ks,
                                                    covariance_types=params.audit_covariances, seed=params.seed)
    return sweep


def save_sets(params: Params, setup: Setup, sels: Selections, path: Optional[Path] = None) -> Path:
    """Write the index sets for notebooks 02 and 04 (default ``results_dir()/01_selected_sets.npz``).

    Keys ``"{device}/{source}/{set}"`` (``source``: a feature space or ``"random"``; ``set``:
    ``"metric"`` or ``"finetune"``), plus ``default_feature_space``, ``benchmark`` and ``seed``.
    """
    from .. import gmm

    sets = {}
    for d in setup.devices:
        for name in params.feature_spaces:
            chosen = sels.sel[name][d]
            sets[f"{d}/{name}/metric"], sets[f"{d}/{name}/finetune"] = chosen.metric, chosen.finetune
        sets[f"{d}/random/metric"], sets[f"{d}/random/finetune"] = sels.rnd[d].metric, sels.rnd[d].finetune
    return gmm.save_selected_sets(sets, params.default_feature_space, path, benchmark=params.benchmark,
                                  seed=params.seed)


# ----------------------------------------------------------------------------- result


@dataclass
class Result(_params.ResultFile):
    """What notebook 01 reports; ``01_gmm_data_approximation.json`` is :meth:`to_json` of it.

    Attributes:
        params: the run's parameters.
        smoke: whether any size differs from the full run's (:meth:`Params.is_reduced`); the
            README marks such results as not the full ones.
        seed: the benchmark seed.
        benchmark: ``"v1"`` or ``"v2"``.
        parameters: the run's settings as notebook 01 always wrote them (``feature_spaces``,
            ``default_feature_space``, ``n_metric``, ``n_finetune``, guard ratios, ...).
        pool: ``{"split": "public/train", "n": pool images}``.
        base_model_sha256: the checkpoint's digest from its metadata.
        embed_seconds: extractor -> wall seconds.
        sampling_temperature: ``{"feature_space", "devices": :func:`sampling_temperatures`}``.
        devices: device -> ``{"classes", "style_mix", "n_train", "n_test", "spaces": space ->
            {"k", "bic", "skipped_k", "covariance_type", "feature_version", "n_params",
            "capacity_ratio", "upload_bytes", "upload_json_bytes", "raw_bytes", "precision",
            "random_precision", "distance", "class_balance", "membership_auc", "nearest_record",
            "membership_sweep", "fit_seconds"}}``.
        seconds: wall time from :func:`load` to :func:`collect`.
        environment: what it ran on (:func:`vitprune_lite.measure.environment`).
        schema: :data:`SCHEMA_VERSION`.
    """

    params: Params
    smoke: bool
    seed: int
    benchmark: str
    parameters: dict[str, Any]
    pool: dict[str, Any]
    base_model_sha256: Optional[str]
    embed_seconds: dict[str, float]
    sampling_temperature: dict[str, Any]
    devices: dict[str, Any]
    seconds: float
    environment: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    SCHEMA_VERSION = SCHEMA_VERSION
    PARAMS = Params
    KIND = "notebook 01 result (GMM data approximation)"
    RERUN = "notebook 01"

    def _check(self) -> str:
        for dev in self.devices.values():  # what the report and notebooks 02 and 04 read of each entry
            for e in dev["spaces"].values():
                float(e["membership_auc"]), e["precision"]["metric"]["class"], int(e["k"])
        if self.benchmark != self.params.benchmark:
            return f"benchmark {self.benchmark!r} disagrees with its params' {self.params.benchmark!r}"
        return ""


def collect(params: Params, setup: Setup, emb: Embeddings, fits: Fits, quality: dict, temperatures: dict,
            audit: dict, sweep: dict, seconds: Optional[float] = None) -> Result:
    """Gather every step's output into a :class:`Result` (the JSON keys notebook 01 always wrote).

    ``seconds``: the run's wall time (default: since :func:`load` built ``setup``)."""
    from .. import gmm, measure

    def space_entry(name: str, d: str) -> dict:
        f, up = fits.fits[name][d], fits.fits[name][d].upload
        q, a = quality[(name, d)], audit[(name, d)]
        return {"k": f.chosen_k, "bic": {str(k): v for k, v in f.bic.items()}, "skipped_k": sorted(f.skipped),
                "covariance_type": up.covariance_type, "feature_version": up.feature_version,
                "n_params": up.n_parameters, "capacity_ratio": f.capacity_ratio,
                "upload_bytes": up.nbytes, "upload_json_bytes": len(up.to_json()), "raw_bytes": up.raw_bytes,
                "precision": q["precision"], "random_precision": q["random_precision"], "distance": q["distance"],
                "class_balance": q["class_balance"],
                "membership_auc": a["membership_auc"], "nearest_record": a["nearest_record"],
                "membership_sweep": sweep[(name, d)], "fit_seconds": fits.seconds[(name, d)]}

    wall = time.perf_counter() - setup.started if seconds is None else seconds
    n_finetune = min(params.n_finetune, len(setup.pool_index))
    parameters = {"feature_spaces": list(params.feature_spaces), "default_feature_space": params.default_feature_space,
                  "feature_dim": params.feature_dim, "covariance_type": params.covariance,
                  "k_range": [params.k_min, params.k_max], "n_metric": params.n_metric, "n_finetune": params.n_finetune,
                  "n_finetune_used": n_finetune, "sample": params.sample,
                  "sample_temperature": params.sample_temperature, "audit_ks": list(params.audit_ks),
                  "audit_covariances": list(params.audit_covariances), "max_param_ratio": gmm.MAX_PARAM_RATIO,
                  "warn_param_ratio": gmm.WARN_PARAM_RATIO}
    devices = {d: {"classes": list(setup.bench.specs[d].classes), "style_mix": dict(setup.bench.specs[d].style_mix),
                   "n_train": len(setup.private[d]["train"]), "n_test": len(setup.private[d]["test"]),
                   "spaces": {name: space_entry(name, d) for name in params.feature_spaces}} for d in setup.devices}
    return Result(params=params, smoke=params.is_reduced(), seed=params.seed, benchmark=params.benchmark,
                  parameters=_params.plain(parameters), pool={"split": "public/train", "n": int(len(setup.pool_index))},
                  base_model_sha256=setup.meta.get("sha256"), embed_seconds=_params.plain(emb.seconds),
                  sampling_temperature={"feature_space": params.default_feature_space, "devices": _params.plain(temperatures)},
                  devices=_params.plain(devices), seconds=round(float(wall), 1), environment=_params.plain(measure.environment()))


def summary_lines(result: Result) -> list[str]:
    """Per space and device: K, metric-set precision (random in brackets) and membership AUC."""
    lines = [f"{'space':12s} {'device':10s}  K   metric set precision (random): class          style          both"
             "     membership AUC"]
    for name in result.params.feature_spaces:
        for d, dev in result.devices.items():
            e = dev["spaces"][name]
            p, r = e["precision"]["metric"], e["random_precision"]["metric"]
            lines.append(f"{name:12s} {d:10s} {e['k']:2d}   "
                         + "  ".join(f"{p[w]:.3f} ({r[w]:.3f})" for w in ("class", "style", "both"))
                         + f"     {e['membership_auc']:.3f}")
    return lines


def run(params: Params = Params(), bench=None, model=None, meta: Optional[dict] = None,
        sets_path: Optional[Path] = None, progress: bool = False) -> Result:
    """Every step in order, without figures; writes the selected sets to ``sets_path`` when given."""
    setup = load(params, bench, model, meta)
    emb = embed(params, setup, progress=progress)
    fits = fit_mixtures(params, setup, emb)
    sels = select_sets(params, setup, emb, fits)
    quality = selection_quality(params, setup, emb, sels)
    temps = sampling_temperatures(params, setup, emb, fits, sels)
    audit = privacy_audit(params, setup, emb, fits)
    sweep = membership_sweep(params, setup, emb, progress=progress)
    if sets_path is not None:
        save_sets(params, setup, sels, sets_path)
    return collect(params, setup, emb, fits, quality, temps, audit, sweep)


# ----------------------------------------------------------------------------- figures

def plot_bic(params: Params, fits: Fits):
    """BIC against K per device, one panel per space (circle: the chosen K). Returns the figure."""
    import matplotlib.pyplot as plt

    spaces = params.feature_spaces
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.2 * len(spaces), 3.4), squeeze=False)
    for ax, name in zip(axes[0], spaces):
        for d, f in fits.fits[name].items():
            ks = sorted(f.bic)
            line, = ax.plot(ks, [f.bic[k] for k in ks], marker=".", label=d)
            ax.plot([f.chosen_k], [f.bic[f.chosen_k]], "o", ms=10, mfc="none", color=line.get_color())
        ax.set(xlabel="components K", ylabel="BIC (lower is better)",
               title=f"{name}: BIC per device (circle: chosen K)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_samples(params: Params, setup: Setup, emb: Embeddings, fits: Fits, n_show: int = 8):
    """Per device: its first private images above the public images nearest to samples of its
    upload (default space). Returns the figure."""
    from .. import gmm, plots

    name = params.default_feature_space
    rows, labels = [], []
    for i, d in enumerate(setup.devices):
        rows.append(setup.private[d]["train"].images[:n_show])
        samples = gmm.sample(fits.fits[name][d].upload, n_show, seed=params.seed + i)
        rows.append(setup.pool.images[emb.cloud[name].nearest(samples)])
        labels += [f"{d}\nprivate", f"{d}\nGMM sample"]
    fig = plots.image_grid(np.concatenate(rows), ncols=n_show, row_labels=labels, scale=0.9)
    fig.suptitle(f"private images vs public images nearest to mixture samples ({name})", fontsize=10, y=1.01)
    return fig


def _short_class(name: str) -> str:
    """A class name short enough for an image title: ``"triangle/h_stripes"`` -> ``"tri.h_st"`` (v2),
    ``"diamond"`` as it is (v1, first 7 letters)."""
    if "/" in name:
        family, fill = name.split("/", 1)
        return f"{family[:3]}.{fill[:4]}"
    return name[:7]


def plot_top_bottom(params: Params, setup: Setup, sels: Selections, n_show: int = 8):
    """The best- and worst-ranked pool images per device (default space), titled class/style. Returns the figure."""
    from .. import plots

    name, pool, bench = params.default_feature_space, setup.pool, setup.bench
    idx, titles, labels = [], [], []
    for d in setup.devices:
        ranking = sels.sel[name][d].ranking
        for where, part in (("top", ranking[:n_show]), ("bottom", ranking[-n_show:])):
            idx += list(part)
            titles += [f"{_short_class(bench.classes[pool.labels[i]])}/{bench.styles[pool.styles[i]][:5]}"
                       for i in part]
            labels.append(f"{d}\n{where}")
    fig = plots.image_grid(pool.images[idx], ncols=n_show, titles=titles, row_labels=labels, scale=1.0)
    fig.suptitle(f"best- and worst-ranked public images per device ({name})", fontsize=10, y=1.01)
    return fig


def plot_selection_quality(params: Params, setup: Setup, quality: dict):
    """Class and style precision of the metric sets per space against random, and their MMD² to the
    private test images in the default space (with the oracle). Returns the figure."""
    import matplotlib.pyplot as plt

    spaces, devices = params.feature_spaces, setup.devices
    if len(devices) <= 4:
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    else:  # one panel per row, so that every device's bars stay readable
        fig, axes = plt.subplots(3, 1, figsize=(max(10, 1.2 * len(devices)), 9.6))
    width = 0.8 / (len(spaces) + 1)
    x = np.arange(len(devices))
    ticks = dict(xticks=x + width * len(spaces) / 2, xticklabels=devices)
    for ax, what in zip(axes[:2], ("class", "style")):
        for j, name in enumerate(spaces):
            ax.bar(x + j * width, [quality[(name, d)]["precision"]["metric"][what] for d in devices], width,
                   label=f"{name} metric set")
        ax.bar(x + len(spaces) * width, [quality[(spaces[0], d)]["random_precision"]["metric"][what] for d in devices],
               width, color="0.6", label="random")
        ax.set(ylim=(0, 1), title=f"{what} precision of the metric set", **ticks)
    ev = params.default_feature_space
    for j, name in enumerate(spaces):
        axes[2].bar(x + j * width, [quality[(name, d)]["distance"][ev]["mmd2"]["selected"] for d in devices], width,
                    label=f"{name} metric set")
    axes[2].bar(x + len(spaces) * width, [quality[(spaces[0], d)]["distance"][ev]["mmd2"]["random"] for d in devices],
                width, color="0.6", label="random")
    axes[2].plot(x + width, [quality[(spaces[0], d)]["distance"][ev]["mmd2"]["oracle"] for d in devices], "k_", ms=30,
                 label="oracle (private train)")
    axes[2].set(title=f"MMD² to private test, in {ev} space (lower = closer)", **ticks)
    fig.tight_layout()
    fig.legend(*axes[2].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=len(spaces) + 2, fontsize=9)
    return fig


def plot_membership(params: Params, setup: Setup, sweep: dict):
    """Membership AUC against K (mean of devices) and against parameters per private image (every
    device), with the capacity guard's thresholds. Returns the figure."""
    import matplotlib.pyplot as plt

    from .. import gmm

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for j, name in enumerate(params.feature_spaces):
        for cov in params.audit_covariances:
            rows = [r for d in setup.devices for r in sweep[(name, d)] if r["covariance_type"] == cov]
            ks = sorted({r["k"] for r in rows})
            mean_auc = [float(np.mean([r["auc"] for r in rows if r["k"] == k])) for k in ks]
            axes[0].plot(ks, mean_auc, marker=_MARKERS[cov], color=f"C{j}", ls="-" if cov == "diag" else "--",
                         label=f"{name}, {cov} (mean of devices)")
            axes[1].scatter([r["capacity_ratio"] for r in rows], [r["auc"] for r in rows], marker=_MARKERS[cov],
                            color=f"C{j}", alpha=0.7, label=f"{name}, {cov}")
    axes[0].set(xscale="log", xlabel="components K", ylabel="membership ROC-AUC",
                title="risk grows with K and covariance freedom")
    axes[1].set(xscale="log", xlabel="free parameters per private image", ylabel="membership ROC-AUC",
                title="risk vs capacity (every device)")
    for ax in axes:
        ax.axhline(0.5, color="0.5", lw=0.8)
        ax.axhline(0.6, color="tab:red", lw=0.8, ls=":")
        ax.legend(fontsize=7)
    for r in (gmm.WARN_PARAM_RATIO, gmm.MAX_PARAM_RATIO):
        axes[1].axvline(r, color="k", ls="--", lw=0.8)
    fig.tight_layout()
    return fig


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: run a preset, write the result JSON and the selected sets next to it."""
    from .. import paths

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--benchmark", default=DEFAULT_BENCHMARK, choices=BENCHMARK_NAMES)
    p.add_argument("--out", default=None, help="result JSON (default data/benchmarks/gmm_approximation_"
                   "<benchmark>.json); the selected sets go beside it as <name>_sets.npz")
    args = p.parse_args(argv)
    params = Params.preset(args.preset, benchmark=args.benchmark)
    out = Path(args.out) if args.out else paths.data_dir() / "benchmarks" / f"gmm_approximation_{args.benchmark}.json"
    if out.suffix != ".json":
        raise InvalidValueError(f"--out {out}: accepted a path ending in .json")
    result = run(params, sets_path=out.with_name(out.stem + "_sets.npz"), progress=True)
    result.to_json(out)
    print("\n".join(summary_lines(result)))
    print(f"wrote {out} and {out.with_name(out.stem + '_sets.npz')} in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
