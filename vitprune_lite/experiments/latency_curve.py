"""Notebook 03's experiment: latency-workload curves and latency-aware token pruning (POMT).

Steps, each one function (the notebook calls them in this order):

1. :func:`setup` - the benchmark, the base model, the token counts to profile and the image
   subsets (validation for every choice, test and device splits for the final rows only);
   checks the token-count grids of :class:`Params` against the model's token count;
2. :func:`naive_vs_interleaved` - two naive (sequential) sweeps beside the interleaved batch-1
   profile of the base model, and their test-retest table;
3. :func:`profile_base` - the other batch sizes and the per-block curve (all saved under
   ``data/latency/``);
4. :func:`gather_curves` - the timm DeiTs' curves (profiled only when asked or missing) and every
   curve file found, as one table;
5. :func:`choose_r` - POMT's accuracy proxy A(n), utility U and R on validation images;
6. :func:`choose_layer` - the pruning block, compared on validation at the chosen R;
7. :func:`compare_methods` - POMT, ToMe, Top-K and EViT: validation accuracy, FLOPs and measured
   batch-1 latency (one interleaved measurement of every setting);
   :func:`token_maps` - which patches POMT, Top-K and ToMe keep, fuse, drop or merge on a few test
   images (:func:`plot_token_maps`; nothing timed);
8. :func:`matched` - matched accuracy and matched budget, the chosen rows evaluated on test;
9. :func:`slower_than_dense` and :func:`zero_overhead` - settings slower than dense, and
   ToMe r=0 / POMT R=0 reproduce the model exactly;
10. :func:`timm_tome` - ToMe on the DeiTs at the published figures' thread count.

:class:`Result` gathers what the notebook reports and writes ``03_latency_curve_profiling.json``
(the keys :mod:`vitprune_lite.report` and ``benchmarks.tome_bench`` read are kept).

Base-model curves are saved under the benchmark's own model name (:func:`base_model_name`:
``base_vit`` for v1, ``base_vit_v2`` for v2), so one benchmark's curves never overwrite or mix
with the other's; each also records the benchmark in its ``environment`` and
:func:`load_base_curve` refuses a curve of another benchmark.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..errors import InvalidFileError, InvalidValueError
from ..data import BENCHMARK_NAMES, DEFAULT_BENCHMARK
from . import _params

__all__ = ["Params", "PRESETS", "Result", "SCHEMA_VERSION", "RESULT_FILE", "base_model_name", "load_base_curve",
           "check_token_grids", "setup", "naive_vs_interleaved", "profile_base", "gather_curves", "curve_row",
           "choose_r", "choose_layer", "compare_methods", "matched", "slower_than_dense", "zero_overhead", "ZERO_ROUNDS_FACTOR",
           "timm_tome", "check_result_benchmark", "read_result", "summary_markdown", "plot_naive_vs_interleaved",
           "plot_curves",
           "plot_utility", "plot_methods", "run", "staircase_ms", "staircase_choice", "plot_staircase",
           "TokenMaps", "comparable_tome_r", "token_maps", "plot_token_maps"]

SCHEMA_VERSION = 1
#: The results file, under :func:`vitprune_lite.paths.results_dir`.
RESULT_FILE = "03_latency_curve_profiling.json"
_TIMM_CURVES = ("missing", "always", "never")


def base_model_name(benchmark: str) -> str:
    """The name a base model's latency curves are saved under: ``base_vit`` (v1) or ``base_vit_<benchmark>``."""
    if benchmark not in BENCHMARK_NAMES:
        raise InvalidValueError(f"benchmark {benchmark!r}: accepted {BENCHMARK_NAMES}")
    return "base_vit" if benchmark == "v1" else f"base_vit_{benchmark}"


@dataclass(frozen=True)
class Params:
    """What notebook 03 runs; the defaults are the full run, sized for the v2 benchmark.

    The token-count grids (``pomt_r_grid``, ``tome_r``, ``pomt_layers``) are v2 values (145 tokens,
    6 blocks: R up to 108 of 144 patches). They are checked against the model's token count by
    :func:`check_token_grids`; for a v1 run (65 tokens) pass v1's grids as overrides, e.g.
    ``pomt_r_grid=(8, 16, 24, 32, 40, 48), tome_r=(1, 2, 3, 4, 5, 6, 7, 8, 9)``.

    Attributes:
        benchmark: ``"v2"`` (the default) or ``"v1"``.
        seed: benchmark seed and every random choice.
        threads: torch CPU threads for every timing (recorded; 1 stays meaningful on a shared machine).
        compute_threads: torch CPU threads for accuracy (no timing depends on it).
        rounds: interleaved rounds every token count gets.
        max_rounds: at most, for points whose 95 % interval is still too wide.
        target_ci: wanted half-width of each point's interval (0.03: +-3 % of its median).
        sweep_budget_s: seconds per base-model sweep, at most (after the first ``rounds``).
        n_step: profile every ``n_step``-th token count (1: all of them).
        batch_sizes: base-model batch sizes profiled (batch 1 always is).
        timm_models: timm DeiTs profiled / timed with ToMe (random weights).
        timm_curves: ``"missing"`` (profile a timm model only if ``data/latency`` has no curve),
            ``"always"`` or ``"never"``.
        timm_budget_s: seconds per timm sweep, at most.
        alpha: POMT's latency weight in U (paper: 0.5).
        val_subset: public validation images for A(n) and every choice (never test).
        test_subset: public test images for the final rows (0: all).
        device_subset: test images per device (0: all).
        pomt_layers: candidate pruning blocks (0-based), compared on validation.
        pomt_r_grid: POMT's R values compared with the other methods (tokens removed).
        tome_r: ToMe's merges per block.
        keep_rates: Top-K / EViT keep rates at :func:`~vitprune_lite.tokens.evit_locations`.
        match_tol: "equal accuracy": within this share, on validation (0.005 = half a point).
        lat_rounds: interleaved rounds for the method comparison and the DeiT ToMe timing.
        lat_min_run_time: seconds per model per round.
        timm_tome_r: ToMe's r on the DeiTs (empty: skip that section).
        public: public split sizes (empty: the benchmark's own; smaller for quick runs).
        device_images: private train/test images per device (0: the benchmark's own).
    """

    benchmark: str = DEFAULT_BENCHMARK
    seed: int = 0
    threads: int = 1
    compute_threads: int = 2
    rounds: int = 5
    max_rounds: int = 25
    target_ci: float = 0.03
    sweep_budget_s: float = 30.0
    n_step: int = 3
    batch_sizes: tuple[int, ...] = (1, 8)
    timm_models: tuple[str, ...] = ("deit_tiny_patch16_224", "deit_small_patch16_224")
    timm_curves: str = "missing"
    timm_budget_s: float = 180.0
    alpha: float = 0.5
    val_subset: int = 1000
    test_subset: int = 1000
    device_subset: int = 250
    pomt_layers: tuple[int, ...] = (1, 2, 3)
    pomt_r_grid: tuple[int, ...] = (18, 36, 54, 72, 90, 108)
    tome_r: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 14, 16, 18)
    keep_rates: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
    match_tol: float = 0.005
    lat_rounds: int = 5
    lat_min_run_time: float = 0.2
    timm_tome_r: tuple[int, ...] = (0, 4, 8, 13, 16)
    public: tuple[tuple[str, int], ...] = ()
    device_images: int = 0

    def __post_init__(self) -> None:
        _params.check_benchmark(self)
        _params.check_ints(self, (("seed", 0), ("threads", 1), ("compute_threads", 1), ("rounds", 2),
                                  ("n_step", 1), ("val_subset", 1), ("test_subset", 0), ("device_subset", 0),
                                  ("lat_rounds", 2), ("device_images", 0)))
        _params.check_ints(self, (("max_rounds", self.rounds),))
        for name, ok, accepted in (("target_ci", lambda v: 0 < v < 1, "(0, 1)"),
                                   ("alpha", lambda v: 0 <= v <= 1, "[0, 1]"),
                                   ("match_tol", lambda v: 0 <= v < 1, "[0, 1)")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise InvalidValueError(f"Params.{name} = {v!r}: accepted a number in {accepted}")
        for name in ("sweep_budget_s", "timm_budget_s", "lat_min_run_time"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise InvalidValueError(f"Params.{name} = {v!r}: accepted seconds > 0")
        self._check_int_tuple("batch_sizes", 1, nonempty=True)
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise InvalidValueError(f"Params.batch_sizes = {self.batch_sizes!r}: accepted distinct batch sizes")
        self._check_int_tuple("pomt_layers", 0, nonempty=True)
        self._check_int_tuple("pomt_r_grid", 1, nonempty=False)
        self._check_int_tuple("tome_r", 1, nonempty=False)
        self._check_int_tuple("timm_tome_r", 0, nonempty=False)
        if not isinstance(self.keep_rates, tuple) or any(
                isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1 for k in self.keep_rates):
            raise InvalidValueError(f"Params.keep_rates = {self.keep_rates!r}: accepted a tuple of keep rates "
                                    "in (0, 1]")
        if not isinstance(self.timm_models, tuple) or any(not isinstance(m, str) or not m for m in self.timm_models):
            raise InvalidValueError(f"Params.timm_models = {self.timm_models!r}: accepted a tuple of timm model names")
        if self.timm_curves not in _TIMM_CURVES:
            raise InvalidValueError(f"Params.timm_curves = {self.timm_curves!r}: accepted {list(_TIMM_CURVES)}")
        splits = dict(self.public) if isinstance(self.public, tuple) else None
        if splits is None or (self.public and (set(splits) != {"train", "val", "test"} or min(splits.values()) < 1)):
            raise InvalidValueError(f"Params.public = {self.public!r}: accepted () or sizes >= 1 for exactly "
                                    "train, val and test")

    def _check_int_tuple(self, name: str, lo: int, nonempty: bool) -> None:
        v = getattr(self, name)
        if not isinstance(v, tuple) or (nonempty and not v) or any(not _params._is_int(x) or x < lo for x in v):
            raise InvalidValueError(f"Params.{name} = {v!r}: accepted a {'non-empty ' if nonempty else ''}tuple of "
                                    f"integers >= {lo}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Params":
        """A named preset (:data:`PRESETS`), with ``overrides`` on top."""
        return _params.preset(cls, PRESETS, name, overrides)


#: ``full``: the defaults (the committed results); ``extended``: every second token count instead of
#: every third, longer sweeps, twice the public test images and seven latency rounds (about 1.3x
#: the full run's time); ``lab``: every section on fewer points, rounds and images (each effect
#: still shows, with wider intervals); ``smoke``: the tests' sizes.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "extended": {"n_step": 2, "sweep_budget_s": 45.0, "test_subset": 2000, "lat_rounds": 7},
    "lab": {"rounds": 3, "max_rounds": 6, "sweep_budget_s": 8.0, "n_step": 6, "batch_sizes": (1,),
            "val_subset": 200, "test_subset": 300, "device_subset": 60, "lat_rounds": 2,
            "lat_min_run_time": 0.1, "timm_curves": "never", "timm_tome_r": (0, 8, 16),
            "pomt_r_grid": (36, 72, 108), "tome_r": (4, 8, 12, 16), "keep_rates": (0.8, 0.6)},
    "smoke": {"rounds": 2, "max_rounds": 2, "sweep_budget_s": 10.0, "n_step": 8, "batch_sizes": (1,),
              "timm_curves": "never", "timm_tome_r": (), "val_subset": 120, "test_subset": 120,
              "device_subset": 30, "pomt_layers": (2,), "pomt_r_grid": (32,), "tome_r": (4, 8),
              "keep_rates": (0.6,), "lat_rounds": 2, "lat_min_run_time": 0.01, "compute_threads": 1,
              "public": (("train", 48), ("val", 120), ("test", 120)), "device_images": 30},
}


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_token_grids(params: Params, model) -> None:
    """Refuse token-count grids that do not fit ``model``.

    Raises:
        InvalidValueError: naming the field, the bad value and the model's token count / depth.
    """
    from .. import tokens

    n, prefix, depth = tokens.token_count(model), int(model.num_prefix_tokens), len(model.blocks)
    for r in params.pomt_r_grid:
        if not 1 <= r <= n - prefix - 1:
            raise InvalidValueError(f"Params.pomt_r_grid holds R = {r}: the {params.benchmark} base model has {n} "
                                    f"tokens ({prefix} prefix); accepted R in 1..{n - prefix - 1}")
    for layer in params.pomt_layers:
        if not 0 <= layer < depth:
            raise InvalidValueError(f"Params.pomt_layers holds block {layer}: the {params.benchmark} base model has "
                                    f"{depth} blocks; accepted 0..{depth - 1}")
    for r in params.tome_r:
        try:
            tokens.token_flow(n, prefix, tokens.tome_schedule(r, depth), "tome")
        except ValueError as err:
            raise InvalidValueError(f"Params.tome_r holds r = {r}: too many merges for the {params.benchmark} base "
                                    f"model's {n} tokens over {depth} blocks ({err})") from None


# ----------------------------------------------------------------------------- 1. setup

@dataclass
class Setup:
    """What every later step uses.

    Attributes:
        bench: the benchmark.
        base: the dense base model (eval mode).
        meta: its checkpoint metadata.
        name: the curves' model name (:func:`base_model_name`).
        n_tokens: tokens entering the first block, N (prefix included).
        n_values: token counts profiled (ascending, N included).
        x_val, y_val: validation subset ``[V, 3, H, W]``, ``[V]``.
        x_test, y_test: public test subset.
        device_sets: device -> ``(x, y)`` of its private test subset.
        load_avg_start: 1-minute load average when the run began.
    """

    bench: Any
    base: Any
    meta: dict[str, Any]
    name: str
    n_tokens: int
    n_values: list[int]
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any
    device_sets: dict[str, tuple[Any, Any]]
    load_avg_start: Optional[float]


def _sweep_kw(params: Params, st: Setup) -> dict[str, Any]:
    return dict(n_values=st.n_values, rounds=params.rounds, max_rounds=params.max_rounds,
                target_rel_ci=params.target_ci)


def setup(params: Params) -> Setup:
    """Load the benchmark and base model of ``params.benchmark``, check the grids, cut the subsets."""
    from .. import data, measure, models, tokens

    base, meta = models.load_base_model(params.benchmark)
    base.eval()
    check_token_grids(params, base)  # before generating anything
    module = data.benchmark_module(params.benchmark)
    devices = module.DEVICES
    if params.device_images:
        devices = [data.DeviceSpec(d.name, d.classes, d.style_mix, n_train=params.device_images,
                                   n_test=params.device_images) for d in devices]
    bench = module.load_benchmark(params.seed, public=dict(params.public) or None, devices=devices)
    n = tokens.token_count(base)
    prefix = int(base.num_prefix_tokens)
    n_values = sorted(set(range(prefix + 1, n + 1, params.n_step)) | {n})
    x_val, y_val = bench.public["val"].tensors()
    x_test, y_test = bench.public["test"].tensors()
    if params.test_subset:
        x_test, y_test = x_test[:params.test_subset], y_test[:params.test_subset]
    device_sets = {}
    for name in bench.devices:
        xd, yd = bench.devices[name]["test"].tensors()
        device_sets[name] = (xd[:params.device_subset], yd[:params.device_subset]) if params.device_subset else (xd, yd)
    return Setup(bench, base, meta, base_model_name(params.benchmark), n, n_values,
                 x_val[:params.val_subset], y_val[:params.val_subset], x_test, y_test, device_sets,
                 measure.environment()["load_avg_1min"])


def _profile(params: Params, model, name: str, **kw: Any):
    """``latency.profile`` with the benchmark recorded in the curve's environment."""
    from .. import latency

    curve = latency.profile(model, name, sweeps=2, threads=params.threads, seed=params.seed, **kw)
    curve.environment["benchmark"] = params.benchmark
    return curve


# ----------------------------------------------------------------------------- 2. naive vs interleaved

@dataclass
class Protocols:
    """Section 1's output.

    Attributes:
        naive: two sequential :class:`~vitprune_lite.latency.Sweep`.
        curve_b1: the interleaved batch-1 :class:`~vitprune_lite.latency.Curve` (two sweeps).
        naive_retest: :func:`~vitprune_lite.latency.test_retest` of the naive sweeps.
        table: column -> row label -> value (seconds, agreement, correlation, candidate steps).
    """

    naive: list
    curve_b1: Any
    naive_retest: dict[str, Any]
    table: dict[str, dict[str, Optional[float]]]


_COMPARE_ROWS = ("seconds (2 sweeps)", "median |sweep1 - sweep2| / mean", "max |sweep1 - sweep2| / mean",
                 "correlation of detrended sweeps", "candidate steps (both sweeps)")


def _bar(total: int, what: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, disable=not progress)


def naive_vs_interleaved(params: Params, st: Setup, progress: bool = True) -> Protocols:
    """Two naive sweeps (each point's rounds back to back) and the interleaved batch-1 profile."""
    from .. import latency

    kw = _sweep_kw(params, st)
    naive = []
    with _bar(3, "naive sweeps, then the interleaved profile", progress) as bar:
        for i in range(2):
            naive.append(latency.sweep(st.base, order="sequential", threads=params.threads,
                                       seed=params.seed + 10 + i, **kw))
            bar.update()
        curve = _profile(params, st.base, st.name, batch_size=1, time_budget_s=params.sweep_budget_s, **kw)
        bar.update()
    nrt, irt = latency.test_retest(*naive), curve.analysis["retest"]
    cols = {"naive (sequential)": [sum(s.seconds for s in naive), nrt["rel_diff_median"], nrt["rel_diff_max"],
                                   nrt["residual_corr"], len(nrt["steps_a"]) + len(nrt["steps_b"])],
            "interleaved": [sum(s.seconds for s in curve.sweeps), irt["rel_diff_median"], irt["rel_diff_max"],
                            irt["residual_corr"], sum(len(s) for s in curve.analysis["steps_per_sweep"])]}
    table = {k: {row: (None if v is None else float(v)) for row, v in zip(_COMPARE_ROWS, vals)}
             for k, vals in cols.items()}
    return Protocols(naive, curve, nrt, table)


# ----------------------------------------------------------------------------- 3. batch sizes, block curve

@dataclass
class BaseCurves:
    """Section 2's output: ``by_batch`` batch size -> network curve; ``block`` block 0 alone, batch 1."""

    by_batch: dict[int, Any]
    block: Any
    saved: list[Path]


def profile_base(params: Params, st: Setup, proto: Protocols, progress: bool = True) -> BaseCurves:
    """Profile the other batch sizes and block 0 alone; save every base-model curve under ``data/latency/``."""
    from .. import latency

    kw = _sweep_kw(params, st)
    by_batch = {1: proto.curve_b1}
    todo = [b for b in params.batch_sizes if b != 1]
    with _bar(len(todo) + 1, "profiles", progress) as bar:
        for b in todo:
            by_batch[b] = _profile(params, st.base, st.name, batch_size=b, time_budget_s=params.sweep_budget_s,
                                   **kw)
            bar.update()
        block = _profile(params, st.base, st.name, batch_size=1, part="block0",
                         time_budget_s=params.sweep_budget_s, **kw)
        bar.update()
    saved = [latency.save_curve(c) for c in [*by_batch.values(), block]]
    return BaseCurves(by_batch, block, saved)


def load_base_curve(benchmark: str, batch_size: int = 1, part: str = "network", device: Optional[str] = None):
    """The saved base-model curve of ``benchmark`` (the newest file for ``device``, or any device).

    Raises:
        FileNotFoundError: no such curve (run notebook 03).
        InvalidFileError: the file's curve records another benchmark than ``benchmark``.
    """
    from .. import latency

    name = base_model_name(benchmark)
    found = [p for p in latency.find_curves(name, batch_size, part)
             if device is None or p.name.startswith(f"{device}__")]
    if not found:
        raise FileNotFoundError(f"no {part} curve of {name} (benchmark {benchmark}) at batch {batch_size} in "
                                f"data/latency/; run notebook 03 with BENCHMARK = {benchmark!r}")
    path = max(found, key=lambda p: p.stat().st_mtime)
    curve = latency.load_curve(path)
    held = curve.environment.get("benchmark", "v1")
    if curve.model != name or held != benchmark:
        raise InvalidFileError(f"{path}: holds a curve of {curve.model!r} on benchmark {held!r}; asked for "
                               f"benchmark {benchmark!r} ({name!r})")
    return curve


def curve_row(c) -> dict[str, Any]:
    """One table row of a curve: shape, fit, ripple, interval widths, seconds, load and step verdict."""
    a = c.analysis
    return {"device": c.device, "model": c.model, "part": c.part, "batch": c.batch_size, "threads": c.threads,
            "points": len(c.sweeps[0].n), "L(N) ms": c.sweeps[0].median_ms[-1],
            "L(2)/L(N)": a["fixed_cost_fraction"][0], "linear R^2": a["linear_fit"][0]["r2"],
            "ripple p95 %": 100 * max(r["p95_abs"] for r in a["ripple"]),
            "CI half-width max %": 100 * max(a["rel_halfwidth_max"]),
            "CI half-width median %": 100 * max(a["rel_halfwidth_median"]),
            "seconds per sweep": float(np.mean([s.seconds for s in c.sweeps])),
            "load avg": c.sweeps[-1].load_avg[1], "verdict": a["verdict"]}


# ----------------------------------------------------------------------------- 4. every curve

@dataclass
class Curves:
    """Section 3's output: ``curves`` every curve drawn (files found + this run's block curve);
    ``records`` one dict per curve (:func:`curve_row` plus its points); ``timm_measured`` model ->
    curve profiled in this run."""

    curves: list
    records: list[dict[str, Any]]
    timm_measured: dict[str, Any]


def gather_curves(params: Params, st: Setup, base_curves: BaseCurves) -> Curves:
    """Profile the timm DeiTs when ``timm_curves`` asks for it; read every curve file in ``data/latency/``.

    Base-model curves of the other benchmark are left out (their model has other tokens and widths).
    """
    from .. import latency, models

    measured = {}
    for name in params.timm_models:
        if params.timm_curves == "always" or (params.timm_curves == "missing" and not latency.find_curves(name, 1)):
            m = models.create_timm_model(name)
            measured[name] = latency.profile(m, name, sweeps=2, batch_size=1, threads=params.threads,
                                             seed=params.seed, time_budget_s=params.timm_budget_s,
                                             rounds=params.rounds, max_rounds=params.max_rounds,
                                             target_rel_ci=params.target_ci)
            latency.save_curve(measured[name])
    others = {base_model_name(b) for b in BENCHMARK_NAMES} - {st.name}
    curves = [c for c in (latency.load_curve(p) for p in latency.find_curves()) if c.model not in others]
    curves.append(base_curves.block)
    fresh = {(c.device, c.model, c.part, c.batch_size)
             for c in [*base_curves.by_batch.values(), base_curves.block, *measured.values()]}
    records = [{**curve_row(c), "n": c.sweeps[0].n, "median_ms": [s.median_ms for s in c.sweeps],
                "reliable_steps": c.analysis["reliable_steps"],
                "measured_here": (c.device, c.model, c.part, c.batch_size) in fresh,
                "profile_utc": c.environment.get("utc")} for c in curves]
    return Curves(curves, records, measured)


# ----------------------------------------------------------------------------- 5-6. POMT's R and block

@dataclass
class Choice:
    """POMT's choice: ``pooled`` the pooled batch-1 curve, ``acc_n`` A(n) on validation, ``choice``
    :func:`~vitprune_lite.tokens.choose_prune_count`'s output, ``per_sweep`` n* of each sweep alone."""

    pooled: dict[str, np.ndarray]
    acc_n: np.ndarray
    choice: dict[str, Any]
    per_sweep: list[int]

    @property
    def R(self) -> int:
        """Tokens to remove."""
        return int(self.choice["R"])


def choose_r(params: Params, st: Setup, curve_b1) -> Choice:
    """A(n) (random tokens kept, validation), U and ``R = N - argmax U`` from the pooled batch-1 curve."""
    from .. import latency, tokens

    latency.check_curve(curve_b1, st.base, batch_size=1)
    pooled = curve_b1.pooled()
    with _threads(params.compute_threads):
        acc_n = tokens.random_token_accuracy(st.base, st.x_val, st.y_val, pooled["n"], seed=params.seed)
    choice = tokens.choose_prune_count(pooled["n"], pooled["median_ms"], acc_n, st.n_tokens, alpha=params.alpha)
    per_sweep = [int(tokens.choose_prune_count(s.n, s.median_ms, acc_n, st.n_tokens, alpha=params.alpha)["n_star"])
                 for s in curve_b1.sweeps]
    return Choice(pooled, np.asarray(acc_n), choice, per_sweep)


def choose_layer(params: Params, st: Setup, R: int) -> dict[str, Any]:
    """The pruning block at ``R``: the default (a quarter of the depth) unless a candidate is more accurate.

    Returns:
        ``{"layer", "default_layer", "layer_val_acc": {block: validation accuracy}}``.
    """
    from .. import measure, tokens

    default = tokens.default_pomt_layer(len(st.base.blocks))
    with _threads(params.compute_threads):
        acc = {int(l): measure.accuracy(tokens.reduced_copy(st.base, "pomt", R, layer=int(l)), st.x_val, st.y_val)
               for l in params.pomt_layers}
    best = max(acc.values())
    layer = default if acc.get(default, -1) >= best else max(acc, key=acc.get)
    return {"layer": int(layer), "default_layer": int(default), "layer_val_acc": acc}


def staircase_ms(n: Any, tile: int = 16, base_ms: float = 10.0, step: float = 0.08) -> Any:
    """A synthetic GPU-like latency curve (not a measurement): flat within tiles, one step per tile.

    ``L(n) = base_ms * (1 + step * ((n - 1) // tile))``: token counts 1..tile cost ``base_ms``,
    tile + 1..2 tile cost ``(1 + step) * base_ms`` and so on, so L jumps between ``k * tile`` and
    ``k * tile + 1``, the shape POMT exploits. The step detector's tests and the notebook's
    staircase figure (:func:`plot_staircase`) use this same generator.

    Args:
        n: a token count or an array of them, integers >= 1.
        tile: tokens per flat stretch, >= 1.
        base_ms: latency of the first tile, > 0.
        step: rise per tile relative to ``base_ms``, >= 0.

    Returns:
        A float for a single ``n``, else a float array aligned with ``n`` (ms).
    """
    k = np.asarray(n)
    if k.dtype == bool or not np.issubdtype(k.dtype, np.integer) or (k < 1).any():
        raise InvalidValueError(f"staircase token counts must be integers >= 1, got {n!r:.80}")
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise InvalidValueError(f"staircase tile = {tile!r}: accepted an integer >= 1")
    if not (base_ms > 0 and step >= 0):
        raise InvalidValueError(f"staircase base_ms = {base_ms!r}, step = {step!r}: accepted base_ms > 0, step >= 0")
    out = base_ms * (1 + step * ((k - 1) // tile))
    return float(out) if out.ndim == 0 else out.astype(float)


def staircase_choice(n_values: Any, acc: Any, n_tokens: int, alpha: float = 0.5, **staircase: Any) -> dict[str, Any]:
    """POMT's choice (:func:`~vitprune_lite.tokens.choose_prune_count`) with :func:`staircase_ms` as L(n).

    Args:
        n_values, acc: token counts and A(n) at them (e.g. ``choice.pooled["n"]``, ``choice.acc_n``).
        n_tokens: N; alpha: latency weight of U.
        staircase: ``tile``, ``base_ms``, ``step`` of :func:`staircase_ms`.

    Returns:
        ``choose_prune_count``'s dict plus ``"latency_ms"``, the synthetic L(n) at ``n_values``.
    """
    from .. import tokens

    lat = staircase_ms(np.asarray(n_values), **staircase)
    return {**tokens.choose_prune_count(n_values, lat, acc, n_tokens, alpha=alpha), "latency_ms": lat.tolist()}


# ----------------------------------------------------------------------------- 7. methods

@dataclass
class Comparison:
    """Section 6's output.

    Attributes:
        variants: key (``"dense"``, ``"pomt(24)"``, ``"tome(4)"``, ``"topk(0.6)"``, ...) -> model,
            including ``"tome(0)"`` and ``"pomt(0)"``.
        rows: one dict per setting (not the r=0 / R=0 ones): key, method, setting, tokens per
            block, flops (per image), val_acc, latency_ms (median), ratio_vs_dense, ratio_iqr,
            flops_ratio, mean_tokens.
        lat: :func:`~vitprune_lite.measure.measure_latency`'s output.
        seconds: wall time of the latency measurement.
        layer, R: POMT's block and chosen R.
        load_avg: 1-minute load average right after the latency measurement.
    """

    variants: dict[str, Any]
    rows: list[dict[str, Any]]
    lat: dict[str, Any]
    seconds: float
    layer: int
    R: int
    load_avg: Optional[float] = None

    @property
    def pomt_key(self) -> str:
        """The chosen POMT setting's key (``"dense"`` when R = 0)."""
        return f"pomt({self.R})" if self.R > 0 else "dense"


def compare_methods(params: Params, st: Setup, R: int, layer: int, progress: bool = True) -> Comparison:
    """Every setting's validation accuracy, FLOPs and tokens; then one interleaved batch-1 latency
    measurement of all of them (``threads``, ``lat_rounds`` rounds, ratios as medians of per-round ratios)."""
    from tqdm.auto import tqdm

    from .. import measure, tokens

    configs = [("dense", None)] + [("pomt", r) for r in sorted(set(params.pomt_r_grid) | {R}) if r > 0]
    configs += [("tome", r) for r in params.tome_r] + [("topk", float(k)) for k in params.keep_rates]
    configs += [("evit", float(k)) for k in params.keep_rates]
    zero = [("tome", 0), ("pomt", 0)]
    variants, rows = {}, []
    x1 = st.x_val[:1]
    with _threads(params.compute_threads):
        for method, amount in tqdm(configs + zero, desc="settings", disable=not progress):
            kw = {"layer": layer} if method == "pomt" else {}
            m = tokens.reduced_copy(st.base, method, amount, **kw)
            key = f"{method}({amount})" if method != "dense" else "dense"
            variants[key] = m
            if (method, amount) in zero:
                continue
            rows.append({"key": key, "method": method, "setting": amount,
                         "tokens": tokens.schedule_of(m)["tokens"], "flops": measure.count_flops(m, x1),
                         "val_acc": measure.accuracy(m, st.x_val, st.y_val)})
    t0 = time.perf_counter()
    lat = measure.measure_latency(variants, x1, threads=params.threads, rounds=params.lat_rounds,
                                  min_run_time=params.lat_min_run_time, seed=params.seed)
    seconds = time.perf_counter() - t0
    dense_flops = rows[0]["flops"]
    for r in rows:
        r["latency_ms"] = lat[r["key"]].median_ms
        r["ratio_vs_dense"] = measure.latency_ratio(lat, r["key"], "dense")
        per_round = np.asarray(lat[r["key"]].round_medians_ms) / np.asarray(lat["dense"].round_medians_ms)
        r["ratio_iqr"] = np.percentile(per_round, [25, 75]).tolist()
        r["flops_ratio"] = r["flops"] / dense_flops
        r["mean_tokens"] = float(np.mean(r["tokens"]))
    return Comparison(variants, rows, lat, seconds, int(layer), int(R), measure.environment()["load_avg_1min"])


# ----------------------------------------------------------------------------- 7b. which tokens

@dataclass
class TokenMaps:
    """Which patches POMT, Top-K and ToMe keep, fuse, drop or merge, on a few test images.

    Attributes:
        images: the images, uint8 ``[I, H, W, 3]``.
        labels: their class names, ``I`` strings.
        patch: pixels per patch, ``(height, width)``.
        grid: patches per image, ``(rows, columns)``; ``P = rows * columns``.
        n_tokens: tokens entering the first block, N (prefix included).
        depth: the model's blocks.
        layer: the block (0-based) where POMT and Top-K prune, after its attention, before its MLP.
        benchmark: the benchmark's name.
        methods: ``"pomt"``, ``"topk"``, ``"tome"`` -> ``{"amount": R / tokens dropped / r per block,
            "tokens": tokens leaving the last block (prefix included), "owner": int ``[I, P]``}``;
            ``owner[i, p]`` is the position of the final token that holds patch ``p`` (raster order),
            ``-1`` when the patch was dropped. Patches sharing an owner were fused or merged into one token.
    """

    images: np.ndarray
    labels: list[str]
    patch: tuple[int, int]
    grid: tuple[int, int]
    n_tokens: int
    depth: int
    layer: int
    benchmark: str
    methods: dict[str, dict[str, Any]]


def comparable_tome_r(n_tokens: int, prefix: int, depth: int, R: int) -> int:
    """ToMe's r per block whose final token count is closest to POMT's ``N - R`` (ties: the smaller r)."""
    from .. import tokens

    best, r = 0, 0
    while True:
        r += 1
        try:
            tokens.token_flow(n_tokens, prefix, tokens.tome_schedule(r, depth), "tome")
        except ValueError:
            return best
        if abs(depth * r - R) < abs(depth * best - R):
            best = r


def token_maps(params: Params, st: Setup, R: int, layer: int, n_images: int = 4,
               tome_r: Optional[int] = None) -> TokenMaps:
    """Where each method's tokens come from, on the first test image of each of ``n_images`` classes.

    POMT removes ``R`` tokens in block ``layer``; Top-K drops ``R`` patch tokens in the same block
    (so both hand the same number of tokens to the rest of the network); ToMe merges ``tome_r``
    pairs in every block (default :func:`comparable_tome_r`: its final count is closest to
    ``N - R``). Each patched copy's token sources come from
    :func:`~vitprune_lite.tokens.token_sources`. Nothing is timed.

    Args:
        params: ``compute_threads`` and ``benchmark`` are read.
        st: :func:`setup`'s output (base model and public test subset).
        R: POMT's tokens removed (e.g. ``choose_r(...).R``), ``0 <= R <= N - prefix - 1``.
        layer: POMT's block (e.g. ``choose_layer(...)["layer"]``).
        n_images: images (rows of the figure), >= 1.
        tome_r: ToMe's merges per block (None: :func:`comparable_tome_r`).
    """
    import torch

    from .. import data, tokens

    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise InvalidValueError(f"n_images = {n_images!r}: accepted an integer >= 1")
    base = st.base
    prefix, depth = int(base.num_prefix_tokens), len(base.blocks)
    y = st.y_test.numpy()
    firsts = [int(np.flatnonzero(y == c)[0]) for c in dict.fromkeys(y.tolist())]  # one per class, in order
    idx = (firsts + [i for i in range(len(y)) if i not in set(firsts)])[:n_images]
    if len(idx) < n_images:
        raise InvalidValueError(f"n_images = {n_images}: the test subset holds only {len(y)} images")
    x = st.x_test[idx]
    if tome_r is None:
        tome_r = comparable_tome_r(st.n_tokens, prefix, depth, int(R))
    settings = [("pomt", R, {"layer": layer}), ("topk", None, {}), ("tome", tome_r, {})]
    out: dict[str, dict[str, Any]] = {}
    with _threads(params.compute_threads):
        for method, amount, kw in settings:  # POMT first: it validates R and layer
            if method == "topk":
                amount = [int(R) if i == layer else 0 for i in range(depth)]
            _, src = tokens.token_sources(tokens.reduced_copy(base, method, amount, **kw), x)
            held = src[:, :, prefix:]  # [I, T, P]: final token t holds patch p
            owner = held.to(torch.uint8).argmax(dim=1)
            owner[~held.any(dim=1)] = -1
            out[method] = {"amount": int(R) if method == "topk" else int(amount), "tokens": int(src.shape[1]),
                           "owner": owner.numpy().astype(np.int64)}
    names = st.bench.classes
    return TokenMaps(images=data.to_images(x), labels=[str(names[int(y[i])]) for i in idx],
                     patch=tuple(int(p) for p in base.patch_embed.patch_size),
                     grid=tuple(int(g) for g in base.patch_embed.grid_size), n_tokens=int(st.n_tokens),
                     depth=depth, layer=int(layer), benchmark=params.benchmark, methods=out)


# ----------------------------------------------------------------------------- 8. matched comparisons

def matched(params: Params, st: Setup, comp: Comparison, choice: Choice) -> dict[str, Any]:
    """Matched accuracy (the fastest setting of each other method within ``match_tol`` of POMT's
    validation accuracy) and matched budget (FLOPs closest to POMT's); only the chosen rows are
    evaluated on the test split and on each device's test split.

    Returns:
        ``{"final_rows": [...], "matched_accuracy": {"reference", "tolerance", "unreachable"},
        "pomt_vs_tome_latency_at_matched_accuracy": float or None, "pomt_grid_matched": [...]}``.
    """
    from .. import measure, tokens

    rows, lat, pomt_key = comp.rows, comp.lat, comp.pomt_key
    by_key = {r["key"]: r for r in rows}
    ref = by_key[pomt_key]
    others = [r for r in rows if r["method"] not in ("dense", "pomt")]
    best = tokens.fastest_within(others, ref["val_acc"], tol=params.match_tol)
    budget: dict[str, dict[str, Any]] = {}
    for r in others:
        cur = budget.get(r["method"])
        if cur is None or abs(r["flops"] - ref["flops"]) < abs(cur["flops"] - ref["flops"]):
            budget[r["method"]] = r
    evaluated: dict[str, tuple[float, dict[str, float]]] = {}

    def final(r: dict[str, Any], why: str) -> dict[str, Any]:
        if r["key"] not in evaluated:
            m = comp.variants[r["key"]]
            with _threads(params.compute_threads):
                evaluated[r["key"]] = (measure.accuracy(m, st.x_test, st.y_test),
                                       {d: measure.accuracy(m, xd, yd) for d, (xd, yd) in st.device_sets.items()})
        test_acc, dev = evaluated[r["key"]]
        return {"row": why, "config": r["key"], "method": r["method"], "val_acc": r["val_acc"],
                "test_acc": test_acc, "device_acc_mean": float(np.mean(list(dev.values()))),
                "device_acc": dev, "flops_ratio": r["flops_ratio"], "mean_tokens": r["mean_tokens"],
                "latency_ms": r["latency_ms"], "ratio_vs_dense": r["ratio_vs_dense"],
                "ratio_vs_pomt": measure.latency_ratio(lat, r["key"], pomt_key)}

    final_rows = [final(by_key["dense"], "dense"), final(ref, "POMT (chosen R)")]
    final_rows += [final(r, "matched accuracy") for r in best.values() if r is not None]
    final_rows += [final(r, "matched budget") for r in budget.values()]
    tome = best.get("tome")
    grid = []
    for r in (q for q in rows if q["method"] == "pomt"):
        match = tokens.fastest_within(others, r["val_acc"], tol=params.match_tol)
        row = {"pomt": r["key"], "n after block": st.n_tokens - r["setting"], "val_acc": r["val_acc"],
               "A(n) random": float(np.interp(st.n_tokens - r["setting"], choice.pooled["n"], choice.acc_n)),
               "pomt/dense": r["ratio_vs_dense"]}
        for meth in ("tome", "topk", "evit"):
            q = match.get(meth)
            row[f"{meth} match"] = None if q is None else q["key"]
            row[f"pomt/{meth}"] = None if q is None else measure.latency_ratio(lat, r["key"], q["key"])
        grid.append(row)
    return {"final_rows": final_rows,
            "matched_accuracy": {"reference": pomt_key, "tolerance": params.match_tol,
                                 "unreachable": [k for k, r in best.items() if r is None]},
            "pomt_vs_tome_latency_at_matched_accuracy":
                None if tome is None else measure.latency_ratio(lat, pomt_key, tome["key"]),
            "pomt_grid_matched": grid}


# ----------------------------------------------------------------------------- 9. slower / zero cost

def slower_than_dense(comp: Comparison) -> list[dict[str, Any]]:
    """Settings whose whole per-round interquartile range of latency / dense lies above 1."""
    return [{"config": r["key"], "ratio_vs_dense": r["ratio_vs_dense"], "ratio_iqr": r["ratio_iqr"]}
            for r in comp.rows if r["method"] != "dense" and r["ratio_iqr"][0] > 1.0]


#: Interleaved rounds of the zero-cost check, as a multiple of ``Params.lat_rounds``: the check
#: times only three models, so it can afford more rounds than the method comparison, whose few
#: rounds over many models left its r=0 ratios several per cent from 1 (noise, not cost).
ZERO_ROUNDS_FACTOR = 4


def zero_overhead(params: Params, st: Setup, comp: Comparison) -> dict[str, dict[str, Any]]:
    """ToMe r=0 and POMT R=0: bit-identical logits to dense on the validation subset, and their
    batch-1 latency ratio to dense from their own interleaved run (``ZERO_ROUNDS_FACTOR`` x
    ``lat_rounds`` rounds of the three models): the median of the per-round ratios and their
    interquartile range."""
    import torch

    from .. import measure

    keys = ("dense", "tome(0)", "pomt(0)")
    lat = measure.measure_latency({k: comp.variants[k] for k in keys}, st.x_val[:1], threads=params.threads,
                                  rounds=ZERO_ROUNDS_FACTOR * params.lat_rounds,
                                  min_run_time=params.lat_min_run_time, seed=params.seed + 1)
    out = {}
    with _threads(params.compute_threads), torch.inference_mode():
        ref = comp.variants["dense"](st.x_val)
        for key in keys[1:]:
            ratios = np.asarray(lat[key].round_medians_ms) / np.asarray(lat["dense"].round_medians_ms)
            out[key] = {"exact": bool(torch.equal(comp.variants[key](st.x_val), ref)),
                        "ratio_vs_dense": measure.latency_ratio(lat, key, "dense"),
                        "ratio_iqr": [float(q) for q in np.percentile(ratios, [25, 75])], "rounds": len(ratios)}
    return out


# ----------------------------------------------------------------------------- 10. DeiT ToMe

def timm_tome(params: Params) -> list[dict[str, Any]]:
    """ToMe on each timm DeiT at batch 1, timed at the published figures' thread count, beside the
    published ratios (``benchmarks.tome_bench.PUBLISHED_TOME_B1``); empty when ``timm_tome_r`` is."""
    import torch

    from .. import measure, models, tokens
    from ..benchmarks.tome_bench import PUBLISHED_TOME_B1, PUBLISHED_TOME_THREADS

    rows: list[dict[str, Any]] = []
    for name in params.timm_models if params.timm_tome_r else ():
        dense = models.create_timm_model(name)
        ms = {"dense": dense}
        ms.update({f"r={r}": tokens.patch_tome(copy.deepcopy(dense), r, clip=True) for r in params.timm_tome_r})
        size = dense.patch_embed.img_size
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(params.seed))
        res = measure.measure_latency(ms, x, threads=PUBLISHED_TOME_THREADS, rounds=params.lat_rounds,
                                      min_run_time=params.lat_min_run_time, seed=params.seed)
        for r in params.timm_tome_r:
            rows.append({"model": name, "r": r, "threads": PUBLISHED_TOME_THREADS, "dense_ms": res["dense"].median_ms,
                         "ratio_vs_dense": measure.latency_ratio(res, f"r={r}", "dense"),
                         "published_ratio": PUBLISHED_TOME_B1.get(name, {}).get(r)})
    return rows


# ----------------------------------------------------------------------------- result

@dataclass
class Result(_params.ResultFile):
    """What notebook 03 reports (the JSON keys report.py and ``benchmarks.tome_bench`` read are kept).

    Attributes:
        params: the run's parameters.
        benchmark: ``params.benchmark`` (repeated at the top for readers of the file).
        smoke: True when any parameter differs from the full run of this benchmark (a smoke or lab
            run, or overrides): the claims table then withholds its verdict.
        seed, threads: ``params.seed`` and the timing thread count.
        n_tokens, depth: the base model's token count N and blocks.
        load_avg_start, load_avg_end: 1-minute load average at the start and end.
        naive_vs_interleaved: :class:`Protocols`' table.
        curves: :class:`Curves`' records.
        accuracy_proxy: ``{"n", "acc", "val_images"}``: A(n) on validation.
        pomt_choice: ``{"n_star", "R", "alpha", "n_tokens", "n_star_per_sweep", "utility", "layer",
            "default_layer", "layer_val_acc"}``.
        final_rows, matched_accuracy, pomt_vs_tome_latency_at_matched_accuracy, pomt_grid_matched:
            :func:`matched`'s output.
        slower_than_dense_batch1: :func:`slower_than_dense`.
        methods: :class:`Comparison` rows.
        method_latency: ``{"seconds", "rounds", "models"}`` of the method measurement.
        zero_overhead: :func:`zero_overhead`.
        timm_tome_batch1: :func:`timm_tome`.
        fixed_cost_fraction: curve label -> L(2)/L(N).
        seconds: wall time of the run; environment: what it ran on (threads = the timing threads).
        inputs: identities of the inputs (``checkpoint_sha256``).
        schema: :data:`SCHEMA_VERSION`.
    """

    params: Params
    benchmark: str
    smoke: bool
    seed: int
    threads: int
    n_tokens: int
    depth: int
    load_avg_start: Optional[float]
    naive_vs_interleaved: dict[str, Any]
    curves: list[dict[str, Any]]
    accuracy_proxy: dict[str, Any]
    pomt_choice: dict[str, Any]
    final_rows: list[dict[str, Any]]
    matched_accuracy: dict[str, Any]
    pomt_vs_tome_latency_at_matched_accuracy: Optional[float]
    pomt_grid_matched: list[dict[str, Any]]
    slower_than_dense_batch1: list[dict[str, Any]]
    methods: list[dict[str, Any]]
    method_latency: dict[str, Any]
    zero_overhead: dict[str, Any]
    timm_tome_batch1: list[dict[str, Any]]
    fixed_cost_fraction: dict[str, float]
    load_avg_end: Optional[float] = None
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    SCHEMA_VERSION = SCHEMA_VERSION
    PARAMS = Params
    KIND = "notebook 03 result"
    RERUN = "notebook 03"

    @classmethod
    def _restore(cls, fields: dict[str, Any]) -> dict[str, Any]:
        choice = fields["pomt_choice"]  # JSON keys are strings; the block indices are integers
        return {**fields, "pomt_choice": {**choice, "layer_val_acc": {int(k): v for k, v in
                                                                       choice["layer_val_acc"].items()}}}

    @classmethod
    def collect(cls, params: Params, st: Setup, proto: Protocols, curves: Curves, choice: Choice,
                layer: dict[str, Any], comp: Comparison, match: dict[str, Any], slower: list[dict[str, Any]],
                zero: dict[str, Any], timm_rows: list[dict[str, Any]], seconds: float = 0.0) -> "Result":
        """Assemble the result from the steps' outputs."""
        from .. import measure

        env = measure.environment()
        env["threads"] = params.threads
        pc = {"n_star": int(choice.choice["n_star"]), "R": choice.R, "alpha": params.alpha, "n_tokens": st.n_tokens,
              "n_star_per_sweep": choice.per_sweep, "utility": np.asarray(choice.choice["utility"]).tolist(), **layer}
        return cls(params=params, benchmark=params.benchmark, smoke=params != Params(benchmark=params.benchmark),
                   seed=params.seed, threads=params.threads, n_tokens=st.n_tokens, depth=len(st.base.blocks),
                   load_avg_start=st.load_avg_start, naive_vs_interleaved=proto.table, curves=curves.records,
                   accuracy_proxy={"n": choice.pooled["n"].tolist(), "acc": choice.acc_n.tolist(),
                                   "val_images": len(st.x_val)},
                   pomt_choice=pc, final_rows=match["final_rows"], matched_accuracy=match["matched_accuracy"],
                   pomt_vs_tome_latency_at_matched_accuracy=match["pomt_vs_tome_latency_at_matched_accuracy"],
                   pomt_grid_matched=match["pomt_grid_matched"], slower_than_dense_batch1=slower,
                   methods=[dict(r) for r in comp.rows],
                   method_latency={"seconds": comp.seconds, "rounds": params.lat_rounds, "models": len(comp.variants)},
                   zero_overhead=zero, timm_tome_batch1=timm_rows,
                   fixed_cost_fraction={f"{c.model} b{c.batch_size} {c.device}": c.analysis["fixed_cost_fraction"][0]
                                        for c in curves.curves},
                   load_avg_end=env["load_avg_1min"], seconds=round(seconds, 1), environment=env,
                   inputs={"checkpoint_sha256": st.meta.get("sha256") or ""})


def check_result_benchmark(raw: Any, path: str | Path, benchmark: str) -> None:
    """Refuse notebook 03's results (a :class:`Result` or the file's dict) of another benchmark than ``benchmark``.

    A file written before the benchmark was recorded holds a v1 run.

    Raises:
        InvalidFileError: naming the file, the benchmark it holds and the one asked for.
    """
    held = raw.benchmark if isinstance(raw, Result) else (raw.get("benchmark", "v1") if isinstance(raw, dict) else None)
    if held != benchmark:
        raise InvalidFileError(f"{path}: holds notebook 03's result on benchmark {held!r}; asked for "
                               f"{benchmark!r} (rerun notebook 03 with BENCHMARK = {benchmark!r})")


def read_result(path: str | Path, benchmark: str) -> Result:
    """:meth:`Result.from_json`, refusing a result of another benchmark than ``benchmark``.

    Raises:
        InvalidFileError: another schema, a malformed file, or a run on another benchmark.
    """
    res = Result.from_json(path)
    check_result_benchmark(res, path, benchmark)
    if res.params.benchmark != res.benchmark:
        raise InvalidFileError(f"{path}: malformed notebook 03 result (benchmark {res.benchmark!r} but parameters "
                               f"of {res.params.benchmark!r})")
    return res


def summary_markdown(res: Result) -> str:
    """The notebook's "what we found" text, generated from the result."""
    def name(c: dict[str, Any]) -> str:
        return f"{c['model']}{'' if c['part'] == 'network' else ' ' + c['part']} b{c['batch']}"

    pc = res.pomt_choice
    lines = ["**Profiling.** " + "; ".join(
        f"{name(c)} on {c['device']}: {c['points']} points, {c['seconds per sweep']:.0f} s per sweep, "
        f"CI half-width max {c['CI half-width max %']:.1f} % (median {c['CI half-width median %']:.1f} %), "
        f"load average {c['load avg']}" for c in res.curves), "",
        "**Steps.** " + "; ".join(f"{name(c)} ({c['device']}): {c['verdict']}" for c in res.curves), "",
        f"**POMT's choice.** n* = {pc['n_star']}, R = {pc['R']} (per sweep n* = {pc['n_star_per_sweep']}), "
        f"block {pc['layer']}.", "",
        "| row | config | val | test | devices | FLOPs/dense | batch-1 latency/dense | /POMT |",
        "|---|---|---|---|---|---|---|---|"]
    for r in res.final_rows:
        lines.append(f"| {r['row']} | {r['config']} | {r['val_acc']:.3f} | {r['test_acc']:.3f} | "
                     f"{r['device_acc_mean']:.3f} | {r['flops_ratio']:.2f} | {r['ratio_vs_dense']:.3f} | "
                     f"{r['ratio_vs_pomt']:.3f} |")
    ratio = res.pomt_vs_tome_latency_at_matched_accuracy
    lines += ["", "**POMT vs ToMe at matched accuracy** (batch 1, POMT latency / ToMe latency): "
              + ("no ToMe setting reaches POMT's accuracy" if ratio is None else f"{ratio:.3f}"
                 + (" - POMT is faster" if ratio < 1 else " - POMT is NOT faster here")),
              f"**Every R of POMT's grid vs the fastest ToMe within {100 * res.params.match_tol:.1f} point:** "
              + ", ".join(f"{g['pomt']} {g['pomt/dense']:.2f}x dense"
                          + ("" if g["pomt/tome"] is None else f", {g['pomt/tome']:.2f}x {g['tome match']}")
                          for g in res.pomt_grid_matched) + ".",
              "**Slower than dense at batch 1:** "
              f"{', '.join(s['config'] for s in res.slower_than_dense_batch1) or 'none'}.",
              "**r=0 / R=0:** " + ", ".join(f"{k} exact={v['exact']}, latency {v['ratio_vs_dense']:.3f}x"
                                           + (f" (IQR {v['ratio_iqr'][0]:.3f}-{v['ratio_iqr'][1]:.3f}, {v['rounds']} rounds)"
                                              if "ratio_iqr" in v else "")
                                           for k, v in res.zero_overhead.items())]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def plot_naive_vs_interleaved(params: Params, proto: Protocols):
    """Both protocols' two sweeps side by side, log scale, candidate steps dotted."""
    import matplotlib.pyplot as plt

    from .. import latency, plots

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)  # log scale: a burst is off by 10x
    for i, s in enumerate(proto.naive):
        steps = proto.naive_retest["steps_a" if i == 0 else "steps_b"]
        latency.plot_sweep(axes[0], s, f"naive sweep {i + 1}", steps=steps)
    for i, s in enumerate(proto.curve_b1.sweeps):
        latency.plot_sweep(axes[1], s, f"interleaved sweep {i + 1}",
                           steps=proto.curve_b1.analysis["steps_per_sweep"][i])
    axes[0].set_title("naive: each point's repetitions back to back")
    axes[1].set_title("interleaved: shuffled rounds, median + bootstrap CI")
    for ax in axes:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        plots.annotate_env(ax, proto.curve_b1.environment)
    fig.suptitle(f"base model ({params.benchmark}), batch 1, {params.threads} threads "
                 "(dotted: candidate steps of one sweep)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(curves: Curves):
    """Every curve's first sweep, normalised to L(N), against the token fraction n / N."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    styles: dict[str, str] = {}
    for c in curves.curves:
        ls = styles.setdefault(c.device, ["-", "--", "-.", ":"][len(styles) % 4])
        s = c.sweeps[0]
        n = np.asarray(s.n)
        part = "" if c.part == "network" else f" {c.part} alone"
        ax.plot(n / n.max(), np.asarray(s.median_ms) / s.median_ms[-1], ls=ls, lw=1.2,
                label=f"{c.model}{part}, b{c.batch_size} ({c.device})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, label="proportional to n")
    ax.set(xlabel="n / N (token fraction)", ylabel="L(n) / L(N)", title="latency-workload curves, first sweep of each")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_utility(params: Params, choice: Choice):
    """L(n), A(n) and U normalised, with n* (dashed) and each sweep's own n* (dotted)."""
    import matplotlib.pyplot as plt

    p = choice.pooled
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(p["n"], p["median_ms"] / p["median_ms"].max(), label="L(n) / max L (pooled)")
    ax.plot(p["n"], choice.acc_n / choice.acc_n.max(), label="A(n) / max A (random tokens, val)")
    ax.plot(p["n"], choice.choice["utility"], label=f"U, alpha = {params.alpha}", lw=2)
    n_star = choice.choice["n_star"]
    ax.axvline(n_star, color="k", ls="--", lw=1, label=f"n* = {n_star} (R = {choice.R})")
    for n_s in choice.per_sweep:
        ax.axvline(n_s, color="0.5", ls=":", lw=1)
    ax.set(xlabel="tokens n", title="POMT's choice on the base model (dotted: n* from each sweep alone)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_staircase(params: Params, choice: Choice, tile: int = 16, step: float = 0.08):
    """The measured batch-1 curve beside a synthetic staircase, each with the n* POMT's rule picks on it.

    Both panels feed the same A(n) (validation) and ``params.alpha`` to
    :func:`~vitprune_lite.tokens.choose_prune_count`; only L(n) differs. Left: the pooled measured
    curve (95 % band) and ``choice``'s n*. Right: :func:`staircase_ms` (``tile``, ``step``), not a
    measurement, drawn at every token count, its tile boundaries dotted, and the n* of
    :func:`staircase_choice` on the token counts where A(n) was measured. Latency is relative to L(N).
    """
    import matplotlib.pyplot as plt

    from .. import methods

    p = choice.pooled
    n = np.asarray(p["n"])
    n_tokens = int(choice.choice["n_star"]) + choice.R
    ref = float(np.asarray(p["median_ms"])[np.argmax(n)])  # L(N), measured
    syn = staircase_choice(n, choice.acc_n, n_tokens, alpha=params.alpha, tile=tile, step=step)
    color = methods.style("pomt").color
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)

    def mark(ax, n_star: int, level: float) -> None:
        ax.axvline(n_star, color="k", ls="--", lw=1, label=f"POMT's n* = {n_star} (R = {n_tokens - n_star})")
        ax.plot([n_star], [level], "o", color="k", ms=5)

    ax = axes[0]
    ax.fill_between(n, np.asarray(p["ci_low_ms"]) / ref, np.asarray(p["ci_high_ms"]) / ref, color=color,
                    alpha=0.2, lw=0)
    ax.plot(n, np.asarray(p["median_ms"]) / ref, color=color, lw=1.2,
            label="measured L(n) / L(N) (both sweeps pooled, 95 % CI)")
    n_star = int(choice.choice["n_star"])
    mark(ax, n_star, float(np.interp(n_star, n, np.asarray(p["median_ms"]) / ref)))
    threads = f"{params.threads} thread{'s' if params.threads != 1 else ''}"
    ax.set(title=f"measured here: base model ({params.benchmark}), batch 1, {threads}",
           ylabel="relative latency L(n) / L(N)")

    ax = axes[1]
    every = np.arange(int(n.min()), n_tokens + 1)
    lat = staircase_ms(every, tile=tile, step=step)
    full = staircase_ms(n_tokens, tile=tile, step=step)
    ax.plot(every, lat / full, color="0.3", lw=1.2, label="synthetic (not measured) L(n) / L(N)")
    for b in range(tile, n_tokens, tile):
        ax.axvline(b + 0.5, color="0.8", ls=":", lw=0.8, zorder=0)
    s_star = int(syn["n_star"])
    mark(ax, s_star, staircase_ms(s_star, tile=tile, step=step) / full)
    ax.set(title=f"synthetic (not measured) staircase: flat within {tile}-token tiles, +{100 * step:g} % per tile")
    for ax in axes:
        ax.set_xlabel("tokens n (CLS included)")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"where POMT's rule lands: same A(n) (random tokens, validation) and alpha = {params.alpha}, "
                 "two latency curves", fontsize=10)
    fig.tight_layout()
    return fig


def plot_methods(params: Params, comp: Comparison):
    """Validation accuracy against measured batch-1 latency / dense and against FLOPs / dense.

    One point per setting in its method's colour and marker. Left: the median of the per-round
    latency ratios (``ratio_vs_dense``) with a horizontal bar over their interquartile range
    (``ratio_iqr``), a top axis in ms (the dense model's median times the ratio) and the dense
    model's latency as a dashed vertical line. Right: FLOPs per image / dense (exact, no bar).
    Only ``comp.rows`` is read.
    """
    import matplotlib.pyplot as plt

    from .. import measure, methods

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    dense = next((r for r in comp.rows if r["method"] == "dense"), None)
    for method in dict.fromkeys(r["method"] for r in comp.rows if r["method"] != "dense"):
        grp = sorted((r for r in comp.rows if r["method"] == method), key=lambda r: r["flops_ratio"])
        x = np.array([r["ratio_vs_dense"] for r in grp], dtype=float)
        q = np.array([r["ratio_iqr"] for r in grp], dtype=float).reshape(-1, 2)
        acc = [r["val_acc"] for r in grp]
        style = {**methods.style(method).line(), "ls": "none"}
        axes[0].errorbar(x, acc, xerr=np.clip(np.vstack([x - q[:, 0], q[:, 1] - x]), 0, None), ms=5, capsize=2,
                         elinewidth=1, label=methods.label(method), **style)
        axes[1].plot([r["flops_ratio"] for r in grp], acc, ms=5, **style)
    if dense is not None:
        ds = methods.style("dense")
        for ax in axes:
            ax.axvline(1.0, color=ds.color, ls="--", lw=0.9, zorder=0,
                       label=f"{methods.label('dense')} ({dense['latency_ms']:.1f} ms, top-1 {dense['val_acc']:.3f})")
            ax.plot([1.0], [dense["val_acc"]], ls="none", marker=ds.marker, color=ds.color, ms=8)
        dense_ms = float(dense["latency_ms"])
        top = axes[0].secondary_xaxis("top", functions=(lambda r: r * dense_ms, lambda ms: ms / dense_ms))
        top.set_xlabel("batch-1 latency, ms (median)", fontsize=9)
    axes[0].set(xlabel="batch-1 latency / dense (median of per-round ratios; bar: interquartile range)",
                ylabel="top-1 accuracy, public val subset")
    axes[1].set(xlabel="FLOPs per image / dense")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    env = measure.environment()
    threads = f"{params.threads} thread{'s' if params.threads != 1 else ''}"
    fig.suptitle(f"token methods on the base model ({params.benchmark}): accuracy vs measured latency (left) "
                 f"and FLOPs (right); batch 1, {threads}, {env.get('device', '?')}, torch {env.get('torch', '?')}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _borders(owner: np.ndarray, special: np.ndarray, patch: tuple[int, int]) -> list[list[tuple[float, float]]]:
    """Segments between neighbouring patches held by different tokens, where either side is ``special``.

    Args:
        owner: ``[rows, cols]`` final token of each patch (-1: dropped).
        special: ``[rows, cols]`` bool, patches whose region is outlined (fused, merged or dropped).
        patch: pixels per patch ``(height, width)``.

    Returns:
        Line segments in pixel coordinates, for a ``LineCollection``.
    """
    ph, pw = patch
    segs = []
    rows, cols = owner.shape
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols and owner[r, c] != owner[r, c + 1] and (special[r, c] or special[r, c + 1]):
                segs.append([((c + 1) * pw, r * ph), ((c + 1) * pw, (r + 1) * ph)])
            if r + 1 < rows and owner[r, c] != owner[r + 1, c] and (special[r, c] or special[r + 1, c]):
                segs.append([(c * pw, (r + 1) * ph), ((c + 1) * pw, (r + 1) * ph)])
    return segs


def plot_token_maps(maps: TokenMaps):
    """One row per image: the image, POMT's kept and fused patches, Top-K's kept and dropped patches,
    and ToMe's final merge groups (one colour per token that holds several patches; patches kept
    alone are left uncoloured). Patches are drawn at their own pixels (nearest), with their borders;
    a thick line outlines each fused, dropped or merged region. Only ``maps`` is read.
    """
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors
    from matplotlib.collections import LineCollection
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from .. import methods

    (gh, gw), (ph, pw) = maps.grid, maps.patch
    H, W = gh * ph, gw * pw
    n_img = len(maps.images)
    pomt, topk, tome = (maps.methods[k] for k in ("pomt", "topk", "tome"))
    sizes = [np.bincount(o[o >= 0]) for o in tome["owner"]]  # patches per final ToMe token, per image
    palette = _group_colours(max(3, *(int((c > 1).sum()) for c in sizes)))
    pomt_c, topk_c = (mcolors.to_rgb(methods.style(k).color) for k in ("pomt", "topk"))
    fig, axes = plt.subplots(n_img, 4, figsize=(11, 2.9 * n_img + 1.4), squeeze=False, layout="constrained")

    def show(ax, img, overlay=None, segs=(), edge="k") -> None:
        ax.imshow(img, interpolation="nearest", extent=(0, W, H, 0))
        if overlay is not None:
            ax.imshow(overlay, interpolation="nearest", extent=(0, W, H, 0))
        ax.vlines(np.arange(0, W + 1, pw), 0, H, color="w", lw=0.4, alpha=0.5)
        ax.hlines(np.arange(0, H + 1, ph), 0, W, color="w", lw=0.4, alpha=0.5)
        if segs:
            ax.add_collection(LineCollection(segs, colors=[edge], linewidths=1.6))
        ax.set(xlim=(0, W), ylim=(H, 0), xticks=[], yticks=[])

    for i in range(n_img):
        img = maps.images[i]
        row = axes[i]
        show(row[0], img)
        row[0].set_ylabel(f"{maps.labels[i]}", fontsize=9)

        owner = pomt["owner"][i].reshape(gh, gw)
        counts = np.bincount(owner[owner >= 0].ravel(), minlength=owner.max() + 1)
        fused = (owner >= 0) & (counts[np.maximum(owner, 0)] > 1)
        overlay = np.zeros((gh, gw, 4))
        overlay[fused] = (*pomt_c, 0.6)
        show(row[1], img, overlay, _borders(owner, fused, (ph, pw)), edge=pomt_c)
        if fused.any():  # the one fused token: a star on its patch nearest the fused patches' centre
            rr, cc = np.nonzero(fused)
            k = np.argmin((rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2)
            row[1].plot((cc[k] + 0.5) * pw, (rr[k] + 0.5) * ph, marker="*", ms=13, color="w", mec="k", mew=0.8)
        row[1].set_xlabel(f"{int((~fused).sum())} kept + {int(fused.sum())} fused into 1" if fused.any()
                          else f"{int((~fused).sum())} kept, nothing fused", fontsize=8)

        owner = topk["owner"][i].reshape(gh, gw)
        dropped = owner < 0
        overlay = np.zeros((gh, gw, 4))
        overlay[dropped] = (0.08, 0.08, 0.08, 0.75)
        show(row[2], img, overlay, _borders(owner, dropped, (ph, pw)), edge=topk_c)
        row[2].set_xlabel(f"{int((~dropped).sum())} kept, {int(dropped.sum())} dropped", fontsize=8)

        owner = tome["owner"][i].reshape(gh, gw)
        counts = sizes[i]
        merged = counts[owner] > 1
        groups = np.flatnonzero(counts > 1)  # tokens holding several patches, in token order
        colour = {int(g): palette[j] for j, g in enumerate(groups)}
        overlay = np.zeros((gh, gw, 4))
        for (r, c) in zip(*np.nonzero(merged)):
            overlay[r, c] = (*colour[int(owner[r, c])], 0.7)
        show(row[3], img, overlay, _borders(owner, merged, (ph, pw)), edge="k")
        row[3].set_xlabel(f"{len(groups)} merged tokens (largest {int(counts.max())} patches), "
                          f"{int((~merged).sum())} alone" if len(groups) else "nothing merged", fontsize=8)

    n = maps.n_tokens
    axes[0, 0].set_title(f"image ({H} x {W} px, {gh} x {gw} patches)", fontsize=9)
    axes[0, 1].set_title(f"{methods.label('pomt')}, R = {pomt['amount']}: {pomt['tokens']} tokens",
                         fontsize=9, color=methods.style("pomt").color)
    axes[0, 2].set_title(f"{methods.label('topk')}, {topk['amount']} dropped: {topk['tokens']} tokens",
                         fontsize=9, color=methods.style("topk").color)
    axes[0, 3].set_title(f"{methods.label('tome')}, r = {tome['amount']} per block: {tome['tokens']} tokens",
                         fontsize=9, color=methods.style("tome").color)
    handles = [Patch(color=(*pomt_c, 0.6), label=f"{methods.label('pomt')}: fused, averaged into one token"),
               Line2D([], [], ls="none", marker="*", ms=11, color="w", mec="k",
                      label=f"{methods.label('pomt')}: its one fused token (all tinted patches)"),
               Patch(color=(0.08, 0.08, 0.08, 0.75), label=f"{methods.label('topk')}: dropped"),
               tuple(Patch(facecolor=palette[j], edgecolor="k") for j in range(3))]
    labels = [h.get_label() for h in handles[:3]]
    labels.append(f"{methods.label('tome')}: one colour per merged token (uncoloured: kept alone)")
    fig.legend(handles=handles, labels=labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False,
               handler_map={tuple: HandlerTuple(ndivide=None, pad=0)})
    fig.suptitle(f"Where the tokens go, {n_img} public test images ({maps.benchmark} base model, {n} tokens with "
                 f"CLS; counts include CLS).\n{methods.label('pomt')} and {methods.label('topk')} prune once, in "
                 f"block {maps.layer} (0-based, of {maps.depth}), after its attention and before its MLP; "
                 f"{methods.label('tome')} merges in every block (final groups shown)", fontsize=10)
    return fig


def _group_colours(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct colours: hues a golden angle apart, alternating between three lightnesses."""
    import colorsys

    return [colorsys.hsv_to_rgb((0.61803398875 * j) % 1.0, (0.85, 0.55, 0.95)[j % 3], (0.95, 0.9, 0.65)[j % 3])
            for j in range(n)]


def run(params: Params = Params(), progress: bool = False) -> Result:
    """Every step in order (the notebook calls them one by one, with their tables and figures)."""
    t0 = time.perf_counter()
    st = setup(params)
    proto = naive_vs_interleaved(params, st, progress)
    base_curves = profile_base(params, st, proto, progress)
    curves = gather_curves(params, st, base_curves)
    choice = choose_r(params, st, proto.curve_b1)
    layer = choose_layer(params, st, choice.R)
    comp = compare_methods(params, st, choice.R, layer["layer"], progress=progress)
    match = matched(params, st, comp, choice)
    return Result.collect(params, st, proto, curves, choice, layer, comp, match, slower_than_dense(comp),
                          zero_overhead(params, st, comp), timm_tome(params), time.perf_counter() - t0)
