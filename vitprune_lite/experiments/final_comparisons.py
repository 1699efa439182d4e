"""Notebook 04's experiment: every method through the same pipeline, per device, seed and budget.

Which method gives a device the best model, and at what cost? Every method is built by
:mod:`vitprune_lite.pipelines` with the same recovery and tested on each device's private test
split. Steps, one function each:

1. :func:`load_inputs` - the benchmark, the base model, notebook 01's selected sets
   (``01_selected_sets.npz``) and each device's private train/test splits; the token settings
   are checked against the model's token count;
2. :func:`build_models` - per seed and parameter budget: ``one_size_fits_all``, ``toast_tcs``
   (ToaSt + TCS) and ``torch_pruning`` once for all devices, ``tap_vits`` and the ``oracle`` per
   device; the token methods (``pomt``, ``tome``, ``topk``) once, on the dense model;
3. :func:`evaluate` - private test accuracy of every model a device would receive;
4. :func:`measure_latencies` - the first seed's models timed interleaved with the dense model
   at batch 1 and 32;
5. :func:`calibrate_planner` and :func:`combined_plans` - the latency predictor of this machine
   (:func:`vitprune_lite.predictor.calibrate`) and the planner choosing structure and tokens
   together under latency budgets, each choice then timed
   (:func:`vitprune_lite.pipelines.check_plans`);
6. :func:`summarise` - means over seeds, the best method per device and budget, and 95 %
   paired bootstrap intervals of TAP-ViTs minus every other structured method.

:class:`Result` gathers what the notebook reports and writes ``04_final_comparisons.json``.
The defaults are the full run, tuned for the ``v1`` benchmark (65 tokens); POMT's R, ToMe's r
and the combined plan's token settings are counts of tokens and are refused with a clear error
when they do not fit another model.

Run it from the command line (``python -m vitprune_lite.experiments.final_comparisons --preset
lab``) or call :func:`run`.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InvalidFileError, InvalidValueError
from ..data import BENCHMARK_NAMES, DEFAULT_BENCHMARK
from . import _params
from .device_specificity import paired_gap

__all__ = ["Params", "PRESETS", "SCHEMA_VERSION", "STRUCTURED", "RESULT_FILE", "MAX_MARGIN", "Inputs",
           "Evaluation", "Result", "check_token_settings", "load_inputs", "build_models", "evaluate",
           "measure_latencies", "calibrate_planner", "combined_plans", "combined_means", "summarise", "class_prior",
           "class_prior_table", "CLASS_PRIOR_METHODS",
           "differences_table", "plot_predicted_vs_measured", "plot_pareto", "run", "main"]

SCHEMA_VERSION = 1
RESULT_FILE = "04_final_comparisons.json"

#: The structured (parameter-budget) methods, in the order tables show them; the oracle is their
#: upper bound and never a deployable winner. Names of :mod:`vitprune_lite.methods`.
STRUCTURED = ("tap_vits", "one_size_fits_all", "toast_tcs", "torch_pruning")
#: The largest margin the planner applies (:func:`vitprune_lite.pipelines.choose_plan` needs one
#: below 1); a calibrated margin of 100 % or more is used as this, so no plan counts as predicted
#: within budget.
MAX_MARGIN = 0.999


def _int_tuple(params: Any, name: str, lo: int) -> None:
    v = getattr(params, name)
    if not isinstance(v, tuple) or not v or any(not _params._is_int(x) or x < lo for x in v):
        raise InvalidValueError(f"Params.{name} = {v!r}: accepted a non-empty tuple of integers >= {lo}")


def _share_tuple(params: Any, name: str, what: str) -> None:
    v = getattr(params, name)
    if (not isinstance(v, tuple) or not v
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1 for x in v)):
        raise InvalidValueError(f"Params.{name} = {v!r}: accepted a non-empty tuple of {what} in (0, 1]")


@dataclass(frozen=True)
class Params(_params.RecoveryParams):
    """What notebook 04 runs; the defaults are the full run (sized for benchmark v2 on two cores).

    Attributes:
        benchmark: ``"v2"`` (the default) or ``"v1"``.
        data_seed: benchmark seed (the shipped checkpoints were trained on seed 0).
        selected_sets: notebook 01's selected sets (``""``: ``data/results/01_selected_sets.npz``).
        seeds: recovery seeds: data order, augmentation, validation split, random public sets. The
            full run takes one seed: on v2 a recovery costs about 4x more than on v1, and the
            intervals come from the 1,000 test images per device (the recovery seed's own spread is
            not in them; ``seeds=(0, 1, 2)`` puts it in, at three times the building cost).
        threads: torch threads for scoring, recovery and evaluation.
        lat_threads: torch threads while timing (1: steadier on a shared machine).
        devices: device names (empty: every device of the benchmark that the selected sets hold).
        max_devices: keep only the first this many devices (0: all; the full run takes the first four
            of v2's eight, in the benchmark's own order, chosen before any result was seen).
        budgets: shares of block parameters kept (each one of TAP-ViTs' 0.9, 0.8, 0.7, 0.6, 0.5).
        n_metric, n_finetune: metric-set (importance scoring) and fine-tune-set (recovery) images.
        score_tokens, sens_images: HSIC token positions per image; images for the KL layer sensitivity.
        ft_steps, ft_batch, ft_lr, val_fraction: the standard recovery, identical for every structured
            method and as in notebook 02 (:class:`~vitprune_lite.experiments._params.RecoveryParams`);
            the planner chooses on the validation split.
        pomt_r: tokens POMT removes in its block. The defaults are a quarter, a half and three
            quarters of v2's 144 patches (v1's 64 patches: pass ``(16, 32, 48)``).
        tome_r: tokens ToMe merges in every block (v2's 144 patches; v1: ``(2, 4, 8)``).
        topk_keep: Top-K keep rates (at EViT's three locations).
        latency_budgets: combined plan budgets, shares of the dense model's batch-1 latency here.
        combined_tokens: ``(method, amount)`` token settings the plan may add to a structure.
        planner_profile_s: seconds of timing to profile this machine for the latency predictor
            (and again for the held-out plans).
        planner_holdout: held-out random plans that check the predictor and size its margin.
        planner_margin_q: planner margin: this quantile of the held-out |relative error|.
        planner_anchor: time each TAP-ViTs structure and each token setting (on the dense
            model) once against the dense model, and let the predictor supply only how the two
            combine (:func:`vitprune_lite.pipelines.plan_candidates`'s ``anchor_structures`` and
            ``anchor_tokens``). ``False``: every candidate's latency from the predictor alone
            (the random widths it is fitted on underestimated TAP-ViTs' structures by 3-16 % on
            v2).
        planner_rounds: interleaved rounds for the planner's own timings: the anchors and the
            check of its choices. Batch-1 ratios to dense spread by several per cent between
            rounds on a 2-core machine; with 5 rounds the same tokens-only plan measured 0.79 to
            0.89 of dense across the four devices' checks (v2, AMD EPYC).
        test_images: private test images per device (0: the whole split, 1,000 on v2; the claims'
            intervals come from them, so the full run takes them all).
        lat_rounds, lat_min_run: interleaved latency rounds; seconds per model per round.
        n_boot: bootstrap resamples for the intervals.
    """

    benchmark: str = DEFAULT_BENCHMARK
    data_seed: int = 0
    selected_sets: str = ""
    seeds: tuple[int, ...] = (0,)
    threads: int = 2
    lat_threads: int = 1
    devices: tuple[str, ...] = ()
    max_devices: int = 4
    budgets: tuple[float, ...] = (0.5,)
    n_metric: int = 640
    n_finetune: int = 6400
    score_tokens: int = 32
    sens_images: int = 64
    pomt_r: tuple[int, ...] = (36, 72, 108)
    tome_r: tuple[int, ...] = (4, 9, 18)
    topk_keep: tuple[float, ...] = (0.9, 0.7)
    latency_budgets: tuple[float, ...] = (0.9, 0.8)
    combined_tokens: tuple[tuple[str, int], ...] = (("pomt", 36), ("pomt", 72), ("tome", 4), ("tome", 9))
    planner_profile_s: float = 40.0
    planner_holdout: int = 20
    planner_margin_q: float = 0.9
    planner_anchor: bool = True
    planner_rounds: int = 15
    test_images: int = 0
    lat_rounds: int = 5
    lat_min_run: float = 0.05
    n_boot: int = 2000

    def __post_init__(self) -> None:
        from .. import importance

        _params.check_benchmark(self)
        _params.check_ints(self, (("data_seed", 0), ("threads", 1), ("lat_threads", 1), ("max_devices", 0),
                                  ("n_metric", 1), ("n_finetune", 1), ("score_tokens", 1), ("sens_images", 1),
                                  ("planner_holdout", 1), ("planner_rounds", 1), ("test_images", 0),
                                  ("lat_rounds", 1), ("n_boot", 10)))
        if not isinstance(self.selected_sets, str):
            raise InvalidValueError(f"Params.selected_sets = {self.selected_sets!r}: accepted a path as a string "
                                    "('' for notebook 01's default file)")
        _int_tuple(self, "seeds", 0)
        if not isinstance(self.devices, tuple) or any(not isinstance(d, str) or not d for d in self.devices):
            raise InvalidValueError(f"Params.devices = {self.devices!r}: accepted a tuple of device names "
                                    "(empty: every device)")
        fracs = sorted(round(importance.block_param_fraction(*b), 2) for b in importance.TAP_BUDGETS)
        _share_tuple(self, "budgets", "shares of block parameters")
        bad = [f for f in self.budgets if round(f, 2) not in fracs]
        if bad:
            raise InvalidValueError(f"Params.budgets = {self.budgets!r}: {bad} are not TAP-ViTs budgets; "
                                    f"accepted shares {fracs}")
        self.check_recovery()
        _int_tuple(self, "pomt_r", 1)
        _int_tuple(self, "tome_r", 1)
        _share_tuple(self, "topk_keep", "keep rates")
        _share_tuple(self, "latency_budgets", "shares of dense latency")
        ok = isinstance(self.combined_tokens, tuple) and all(
            isinstance(t, tuple) and len(t) == 2 and t[0] in ("pomt", "tome") and _params._is_int(t[1]) and t[1] >= 1
            for t in self.combined_tokens)
        if not ok:
            raise InvalidValueError(f"Params.combined_tokens = {self.combined_tokens!r}: accepted a tuple of "
                                    "(method, amount) pairs, method 'pomt' or 'tome' and amount an integer >= 1 "
                                    "(the plan always considers no token reduction as well)")
        if not (isinstance(self.planner_profile_s, (int, float)) and self.planner_profile_s > 0):
            raise InvalidValueError(f"Params.planner_profile_s = {self.planner_profile_s!r}: accepted seconds > 0")
        if not (0 <= self.planner_margin_q < 1):
            raise InvalidValueError(f"Params.planner_margin_q = {self.planner_margin_q!r}: "
                                    "accepted a quantile in [0, 1)")
        if not isinstance(self.planner_anchor, bool):
            raise InvalidValueError(f"Params.planner_anchor = {self.planner_anchor!r}: accepted True or False")
        if not (isinstance(self.lat_min_run, (int, float)) and self.lat_min_run > 0):
            raise InvalidValueError(f"Params.lat_min_run = {self.lat_min_run!r}: accepted seconds > 0")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Params":
        """A named preset (:data:`PRESETS`), with ``overrides`` on top."""
        return _params.preset(cls, PRESETS, name, overrides)

    def is_full(self) -> bool:
        """Whether this is the full run: the defaults, on either benchmark and whichever selected-sets file."""
        return self == Params(benchmark=self.benchmark, selected_sets=self.selected_sets)


#: ``full``: the defaults (the committed results; ``extended`` is the same). ``lab``: two devices,
#: 200 test images each, 40 % of the metric set, an eighth of the fine-tune set, a third of the
#: recovery steps at half the batch, two token settings per method, a shorter profile of this
#: machine and shorter timing: every method and every comparison, with wider intervals. Measured
#: run times per preset: ``data/run_times.json``.
#: ``smoke``: the tests' sizes (one device, one seed, tiny sets; only the plumbing is meaningful).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "extended": {},  # the full run: nothing here is cut short
    "lab": {"max_devices": 2, "n_metric": 256, "n_finetune": 800, "sens_images": 16, "ft_steps": 10, "ft_batch": 32,
            "test_images": 200, "pomt_r": (36, 72), "tome_r": (4, 9), "topk_keep": (0.7,),
            "combined_tokens": (("pomt", 36), ("tome", 4)), "planner_profile_s": 10.0, "planner_holdout": 10,
            "planner_rounds": 6, "lat_rounds": 2, "lat_min_run": 0.02, "n_boot": 1000},
    "smoke": {"seeds": (0,), "max_devices": 1, "n_metric": 32, "n_finetune": 160, "score_tokens": 8,
              "sens_images": 8, "ft_steps": 2, "ft_batch": 16, "test_images": 32, "pomt_r": (16,), "tome_r": (4,),
              "topk_keep": (0.7,), "combined_tokens": (("pomt", 16),), "lat_rounds": 1, "lat_min_run": 0.002,
              "threads": 1, "planner_profile_s": 3.0, "planner_holdout": 4, "planner_rounds": 1,
              "n_boot": 100},
}


def _setting(frac: float) -> str:
    return f"{round(100 * frac)}%"


def _token_schedule(model, method: str, amount: Any) -> list[int]:
    from .. import tokens

    depth = len(model.blocks)
    if method == "pomt":
        sched = [0] * depth
        sched[tokens.default_pomt_layer(depth)] = int(amount)
        return sched
    if method == "tome":
        return tokens.tome_schedule(int(amount), depth)
    return tokens.keep_rate_schedule(model, float(amount))


def check_token_settings(params: Params, model) -> None:
    """Every token setting of ``params`` fits ``model``'s token count.

    POMT's R, ToMe's r and the combined plan's settings are counts of tokens; the defaults are
    v2's (145 tokens). Raises :class:`~vitprune_lite.errors.InvalidValueError` naming the field,
    the setting, the model's token count and what fits.
    """
    from .. import tokens

    n, prefix = tokens.token_count(model), int(model.num_prefix_tokens)
    checks = ([("pomt_r", "pomt", r) for r in params.pomt_r] + [("tome_r", "tome", r) for r in params.tome_r]
              + [("topk_keep", "topk", k) for k in params.topk_keep]
              + [("combined_tokens", m, a) for m, a in params.combined_tokens])
    for name, method, amount in checks:
        try:
            tokens.token_flow(n, prefix, _token_schedule(model, method, amount), method)
        except ValueError as err:
            fits = {"pomt": f"R in 1..{n - prefix - 1}", "tome": "r whose merges fit every block",
                    "topk": "a keep rate in (0, 1]"}[method]
            raise InvalidValueError(
                f"Params.{name}: {method} {amount!r} does not fit the {params.benchmark} model's {n} tokens "
                f"({n - prefix} patches, {len(model.blocks)} blocks): {err}; accepted {fits} "
                f"(set it with OVERRIDES, e.g. {{'{name}': ...}})") from None


@dataclass(eq=False)
class Inputs:
    """What every step reads.

    Attributes:
        bench: the benchmark; model: the dense base model (eval mode).
        public: the public training pool (notebook 01's indices point into it).
        devices: the devices compared (in the selected sets and the benchmark).
        space: the feature space of the selected sets used (notebook 01's default).
        selection: device -> :class:`vitprune_lite.gmm.Selection` (metric and fine-tune indices).
        private: device -> ``(x [n, 3, H, W], y [n])`` private training split (the oracle only).
        tests: device -> ``(x, y)`` private test split (read only by :func:`evaluate`).
        budgets: setting label (e.g. ``"50%"``) -> ``(mlp_keep, attn_keep)``.
        x1: a zero image ``[1, 3, H, W]`` (FLOPs).
        sets_path: the selected-sets file read.
    """

    bench: Any
    model: Any
    public: Any
    devices: list[str]
    space: str
    selection: dict[str, Any]
    private: dict[str, Any]
    tests: dict[str, Any]
    budgets: dict[str, tuple[float, float]]
    x1: Any
    sets_path: str


def _read_sets(params: Params) -> tuple[dict[str, np.ndarray], Path]:
    from .. import gmm, paths

    path = Path(params.selected_sets) if params.selected_sets else paths.results_dir() / gmm.SELECTED_SETS
    return gmm.load_selected_sets(path, benchmark=params.benchmark), path


def load_inputs(params: Params, bench=None, model=None) -> Inputs:
    """The benchmark, the base model, notebook 01's selected sets and the devices' splits.

    Args:
        params: what to run.
        bench, model: the benchmark and dense model (default: loaded for ``params.benchmark``).

    Raises:
        InvalidValueError: unknown devices, or token settings that do not fit the model.
        InvalidFileError: the selected sets hold none of the devices, or indices outside the pool.
    """
    import torch

    from .. import data, gmm, importance, models, pipelines

    if bench is None:
        bench = data.benchmark_module(params.benchmark).load_benchmark(params.data_seed)
    if model is None:
        model, _ = models.load_base_model(params.benchmark)
    model = model.eval()
    check_token_settings(params, model)
    unknown = [d for d in params.devices if d not in bench.specs]
    if unknown:
        raise InvalidValueError(f"Params.devices: {unknown} are not devices of the {params.benchmark} benchmark; "
                                f"accepted {list(bench.specs)}")
    pool = bench.public["train"]
    sets, path = _read_sets(params)
    space = str(sets["default_feature_space"])
    wanted = list(params.devices) or list(bench.specs)
    devices = [d for d in wanted if f"{d}/{space}/metric" in sets and f"{d}/{space}/finetune" in sets]
    if not devices:
        raise InvalidFileError(f"{path}: holds no '{space}' sets for any of {wanted}; rerun notebook 01 on the "
                               f"{params.benchmark} benchmark")
    if params.max_devices:
        devices = devices[:params.max_devices]
    selection = {}
    for d in devices:
        metric, finetune = sets[f"{d}/{space}/metric"], sets[f"{d}/{space}/finetune"]
        top = int(max(metric.max(initial=0), finetune.max(initial=0)))
        if top >= len(pool):
            raise InvalidFileError(f"{path}: {d}'s sets index public image {top}, but the {params.benchmark} "
                                   f"public pool holds {len(pool)}; the file was written for another benchmark - "
                                   f"rerun notebook 01 with BENCHMARK = {params.benchmark!r}")
        selection[d] = gmm.Selection(metric, finetune)
    tests = {}
    for d in devices:
        split = bench.devices[d]["test"]
        n = len(split) if params.test_images == 0 else min(params.test_images, len(split))
        tests[d] = split.subset(np.arange(n)).tensors()
    by_frac = {round(importance.block_param_fraction(*b), 2): tuple(b) for b in importance.TAP_BUDGETS}
    size = int(pool.images.shape[1])
    return Inputs(bench, model, pipelines.PublicData(*pool.tensors()), devices, space, selection,
                  {d: bench.devices[d]["train"].tensors() for d in devices}, tests,
                  {_setting(f): by_frac[round(f, 2)] for f in params.budgets}, torch.zeros(1, 3, size, size),
                  str(path))


def _progress(it, progress: bool, total: int, desc: str):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc)


def build_models(params: Params, inp: Inputs, progress: bool = True) -> dict[tuple, Any]:
    """Every model: structured methods per seed and budget, token methods once.

    Importance scores depend only on the metric set (token positions drawn with seed 0), so they
    are computed once per metric set and reused across seeds and budgets; the seeds vary what the
    recovery does (and the random public sets of ``one_size_fits_all``).

    Returns:
        ``(method, setting, device or "*", seed or None) -> pipelines.PrunedModel``; ``"*"`` marks
        a model shared by every device, ``None`` a deterministic model built once.
    """
    import torch

    from .. import pipelines

    rec = params.recovery()
    tap = dict(score_options={"tokens": params.score_tokens, "seed": 0}, sens_images=params.sens_images)
    model, public, cache, built = inp.model, inp.public, {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        jobs = [(seed, s, b) for seed in params.seeds for s, b in inp.budgets.items()]
        for seed, setting, b in _progress(jobs, progress, len(jobs), "seeds x budgets"):
            shared = pipelines.DeviceRequest("*", b)
            built[("one_size_fits_all", setting, "*", seed)] = pipelines.one_size_fits_all(
                model, shared, public, n_metric=params.n_metric, n_finetune=params.n_finetune, seed=seed,
                cache=cache, **rec, **tap)
            built[("toast_tcs", setting, "*", seed)] = pipelines.toast(model, shared, public, n_finetune=params.n_finetune,
                                                                  seed=seed, **rec)
            built[("torch_pruning", setting, "*", seed)] = pipelines.torch_pruning(
                model, shared, public, n_finetune=params.n_finetune, seed=seed, **rec)
            for d in inp.devices:
                req = pipelines.DeviceRequest(d, b)
                built[("tap_vits", setting, d, seed)] = pipelines.tap_vits(
                    model, req, public, selection=inp.selection[d], n_metric=params.n_metric,
                    n_finetune=params.n_finetune, seed=seed, cache=cache, **rec, **tap)
                built[("oracle", setting, d, seed)] = pipelines.oracle(
                    model, req, public, private=inp.private[d], n_metric=params.n_metric, seed=seed, cache=cache,
                    **rec, **tap)
        token_settings = ([("pomt", f"R={r}", r) for r in params.pomt_r]
                          + [("tome", f"r={r}", r) for r in params.tome_r]
                          + [("topk", f"keep={k}", k) for k in params.topk_keep])
        for method, setting, amount in token_settings:
            built[(method, setting, "*", None)] = pipelines.token_reduction(model, None, public, method=method,
                                                                          amount=amount)
    finally:
        torch.set_num_threads(threads)
    return built


@dataclass(eq=False)
class Evaluation:
    """Private test accuracy of every model a device would receive.

    Attributes:
        rows: one dict per (method, setting, device, seed): ``method``, ``setting``, ``device``,
            ``seed``, ``acc``, ``flops`` (FLOPs per image, 2 x MACs), ``params``, ``val_acc``.
        dense_acc: device -> the dense model's accuracy.
        correct: ``(method, setting, device, seed)`` -> bool ``[n_test]`` per-image correctness
            (the intervals' input; not written to the results file).
        restricted: the same for the methods of :data:`CLASS_PRIOR_METHODS`, with the model's
            prediction restricted to the device's own classes (see :func:`class_prior`).
    """

    rows: list[dict[str, Any]]
    dense_acc: dict[str, float]
    correct: dict[tuple, np.ndarray]
    restricted: dict[tuple, np.ndarray] = field(default_factory=dict)


#: The models whose accuracy is also measured with predictions restricted to the device's classes.
CLASS_PRIOR_METHODS = ("dense", "one_size_fits_all", "tap_vits")


def _correct(model, x, y, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness ``[n]`` of ``model``: as it is, and with its prediction restricted to ``classes``."""
    import torch

    from .. import measure

    z = measure.logits(model, x)
    outside = torch.ones(z.shape[1], dtype=torch.bool)
    outside[list(classes)] = False
    return (z.argmax(-1) == y).numpy(), (z.masked_fill(outside, float("-inf")).argmax(-1) == y).numpy()


def evaluate(params: Params, inp: Inputs, built: Mapping[tuple, Any]) -> Evaluation:
    """Accuracy on each device's private test split; a shared model is tested on every device."""
    import torch

    from .. import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        dense_flops, dense_params = measure.count_flops(inp.model, inp.x1), measure.count_params(inp.model)
        correct, restricted = {}, {}
        for d in inp.devices:
            key = ("dense", "-", d, None)
            correct[key], restricted[key] = _correct(inp.model, *inp.tests[d], inp.bench.specs[d].classes)
        rows = [{"method": "dense", "setting": "-", "device": d, "seed": None,
                 "acc": float(correct[("dense", "-", d, None)].mean()), "flops": dense_flops, "params": dense_params,
                 "val_acc": None} for d in inp.devices]
        for (method, setting, dev, seed), out in built.items():
            for d in (inp.devices if dev == "*" else [dev]):
                if method in CLASS_PRIOR_METHODS:
                    ok, restricted[(method, setting, d, seed)] = _correct(out.model, *inp.tests[d],
                                                                          inp.bench.specs[d].classes)
                else:
                    ok = measure.correct(out.model, *inp.tests[d]).numpy()
                correct[(method, setting, d, seed)] = ok
                rows.append({"method": method, "setting": setting, "device": d, "seed": seed, "acc": float(ok.mean()),
                             "flops": out.report["flops"], "params": out.report["params"],
                             "val_acc": out.report.get("val_acc")})
    finally:
        torch.set_num_threads(threads)
    return Evaluation(rows, {d: r["acc"] for d, r in zip(inp.devices, rows)}, correct, restricted)


def class_prior(params: Params, inp: Inputs, evaluation: Evaluation) -> dict[str, Any]:
    """How much of TAP-ViTs' lead over one-size-fits-all a class prior alone would give.

    Recovering on a device's fine-tune set teaches the classifier which classes occur on that
    device. Restricting a model's prediction to the device's own classes (the largest logit among
    them) gives the same knowledge to any model without training. It is an analysis, not a
    deployable method: it needs the device's class list, which the device never uploads.

    Returns:
        ``{setting: {"acc": {device: {method: acc, "<method> restricted": acc}} (means over
        seeds), "tap_vits minus restricted one_size_fits_all": paired gap, "restricted minus
        plain one_size_fits_all": paired gap, "restricted tap_vits minus restricted
        one_size_fits_all": paired gap}}``; each gap as :func:`paired_gap` (mean over devices, 95 %
        interval over seeds and test images, ``by_device``).
    """
    out: dict[str, Any] = {}
    for setting in inp.budgets:
        def stack(table: Mapping[tuple, np.ndarray], m: str) -> dict[str, np.ndarray]:
            return {d: np.stack([table[(m, setting, d, s)] for s in params.seeds]) for d in inp.devices}

        tap, one = stack(evaluation.correct, "tap_vits"), stack(evaluation.correct, "one_size_fits_all")
        tap_r, one_r = stack(evaluation.restricted, "tap_vits"), stack(evaluation.restricted, "one_size_fits_all")
        acc = {d: {"dense": float(evaluation.correct[("dense", "-", d, None)].mean()),
                   "dense restricted": float(evaluation.restricted[("dense", "-", d, None)].mean()),
                   "one_size_fits_all": float(one[d].mean()), "one_size_fits_all restricted": float(one_r[d].mean()),
                   "tap_vits": float(tap[d].mean()), "tap_vits restricted": float(tap_r[d].mean())}
               for d in inp.devices}
        out[setting] = {"acc": acc,
                        "tap_vits minus restricted one_size_fits_all": paired_gap(tap, one_r, n_boot=params.n_boot),
                        "restricted minus plain one_size_fits_all": paired_gap(one_r, one, n_boot=params.n_boot),
                        "restricted tap_vits minus restricted one_size_fits_all": paired_gap(tap_r, one_r,
                                                                                             n_boot=params.n_boot)}
    return out


def measure_latencies(params: Params, inp: Inputs, built: Mapping[tuple, Any],
                      evaluation: Evaluation) -> dict[str, Any]:
    """Time the first seed's models interleaved with the dense model at batch 1 and 32.

    Other seeds share their structures (except the random public sets of ``one_size_fits_all``,
    which shift per-layer widths slightly), so each row takes its first-seed model's timing.

    Returns:
        ``{"rows": evaluation rows with ms_b1, rel_b1, ms_b32, rel_b32 added (milliseconds,
        median; ratio to dense), "dense_ms": {1: ms, 32: ms}, "threads": lat_threads}``.
    """
    import torch

    from .. import measure

    seed0 = params.seeds[0]
    timed = {"dense": inp.model} | {f"{m}|{s}|{dev}": out.model for (m, s, dev, seed), out in built.items()
                                    if seed in (seed0, None)}
    lat = {}
    for batch in (1, 32):
        x = torch.randn(batch, *inp.x1.shape[1:], generator=torch.Generator().manual_seed(0))
        lat[batch] = measure.measure_latency(timed, x, threads=params.lat_threads, rounds=params.lat_rounds,
                                             min_run_time=params.lat_min_run, seed=0)
    rows = []
    for r in evaluation.rows:
        shared = (r["method"], r["setting"], "*", r["seed"]) in built
        key = "dense" if r["method"] == "dense" else f"{r['method']}|{r['setting']}|{'*' if shared else r['device']}"
        row = dict(r)
        for batch in (1, 32):
            row[f"ms_b{batch}"] = lat[batch][key].median_ms
            row[f"rel_b{batch}"] = measure.latency_ratio(lat[batch], key, "dense")
        rows.append(row)
    return {"rows": rows, "dense_ms": {b: lat[b]["dense"].median_ms for b in (1, 32)}, "threads": params.lat_threads}


def calibrate_planner(params: Params, inp: Inputs, progress: bool = False):
    """This machine's batch-1 latency predictor for the base model, checked on held-out plans.

    Returns:
        :class:`vitprune_lite.predictor.Calibration` (``predictor``, ``validation``, ``margin``,
        ``seconds``).
    """
    from .. import predictor

    return predictor.calibrate(inp.model, batch_size=1, threads=params.lat_threads,
                               time_budget_s=params.planner_profile_s, holdout=params.planner_holdout,
                               holdout_budget_s=params.planner_profile_s, margin_quantile=params.planner_margin_q,
                               seed=0, progress=progress)


def combined_plans(params: Params, inp: Inputs, built: Mapping[tuple, Any], evaluation: Evaluation, cal,
                   dense_ms: float, progress: bool = True) -> list[dict[str, Any]]:
    """Per seed, device, latency budget and kind: the planner's choice, timed, and its test accuracy.

    The candidates are every TAP-ViTs structure built for the device (and the dense model), each
    with no token reduction or one of ``params.combined_tokens``, scored on a validation split of
    the device's fine-tune set; :func:`vitprune_lite.pipelines.check_plans` chooses with the
    calibrated predictor and its margin (with ``planner_anchor``, each structure's own latency
    and token setting measured once), then times the choices against the dense model. A
    margin of 100 % or more (a predictor whose held-out error is that large, e.g. profiled for
    seconds on a loaded machine) promises nothing: it is applied as :data:`MAX_MARGIN`, with a
    warning, and every choice is the fastest predicted plan.

    Args:
        dense_ms: the dense model's batch-1 latency (milliseconds, median) measured by
            :func:`measure_latencies`: budgets and measured latencies are stated in it.

    Returns:
        One dict per choice: ``device``, ``seed``, ``budget_share``, ``kind``, ``plan``,
        ``val_acc``, ``predicted_ms``, ``predicted_ratio``, ``measured_ms``, ``measured_ratio``,
        ``predicted_met``, ``measured_met``, ``budget_ms``, ``acc`` (private test).
    """
    import warnings

    import torch

    from .. import measure, pipelines

    public, out = inp.public, []
    margin = cal.margin
    if margin >= 1:  # the held-out error reaches 100 %: no prediction can promise a budget
        warnings.warn(f"the latency predictor's margin is {100 * margin:.0f} % (the {params.planner_margin_q} quantile "
                      f"of its held-out error): no plan can be predicted within a budget, so every choice is the "
                      f"fastest predicted plan (predicted_met False); profile longer (planner_profile_s) on a quieter "
                      f"machine", stacklevel=2)
        margin = MAX_MARGIN
    threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        jobs = [(seed, d) for seed in params.seeds for d in inp.devices]
        for seed, d in _progress(jobs, progress, len(jobs), "plans"):
            structures = {"dense": inp.model} | {f"tap_vits {s}": m.model for (meth, s, dev, sd), m in built.items()
                                                 if meth == "tap_vits" and dev == d and sd == seed}
            _, val_idx = pipelines.split_validation(inp.selection[d].finetune[:params.n_finetune],
                                                    params.val_fraction, seed)
            cands = pipelines.plan_candidates(inp.model, structures, (public.x[val_idx], public.y[val_idx]),
                                              predictor=cal.predictor, anchor_structures=params.planner_anchor,
                                              anchor_tokens=params.planner_anchor,
                                              threads=params.lat_threads, rounds=params.planner_rounds,
                                              min_run_time=params.lat_min_run, seed=seed,
                                              token_grid=[list(t) for t in params.combined_tokens])
            test_acc: dict[int, float] = {}  # one test evaluation per chosen candidate (kinds and budgets share picks)
            for c in pipelines.check_plans(inp.model, cands, list(params.latency_budgets), predictor=cal.predictor,
                                           margin=margin, threads=params.lat_threads, rounds=params.planner_rounds,
                                           min_run_time=params.lat_min_run, seed=seed, reference_ms=dense_ms):
                if id(c["model"]) not in test_acc:
                    test_acc[id(c["model"])] = measure.accuracy(c["model"], *inp.tests[d])
                out.append({"device": d, "seed": seed, **{k: v for k, v in c.items() if k != "model"},
                            "budget_ms": c["budget_share"] * dense_ms, "acc": test_acc[id(c["model"])]})
    finally:
        torch.set_num_threads(threads)
    return out


def combined_means(combined: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per device, budget and kind, over seeds: mean test ``acc`` and its ``acc_std`` (0 for one
    seed), mean ``val_acc``, median ``measured_ms`` and ``predicted_ms``, share of seeds whose
    measured latency ``met`` the budget, and the most frequent ``plan``."""
    from collections import Counter

    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for c in combined:
        groups.setdefault((c["device"], c["budget_share"], c["kind"]), []).append(c)
    out = []
    for (d, share, kind), g in groups.items():
        acc = np.array([c["acc"] for c in g], dtype=float)
        out.append({"device": d, "budget_share": share, "kind": kind, "acc": float(acc.mean()),
                    "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    "val_acc": float(np.mean([c["val_acc"] for c in g])),
                    "measured_ms": float(np.median([c["measured_ms"] for c in g])),
                    "predicted_ms": float(np.median([c["predicted_ms"] for c in g])),
                    "met": float(np.mean([c["measured_met"] for c in g])),
                    "plan": Counter(c["plan"] for c in g).most_common(1)[0][0]})
    return out


def _differences(params: Params, inp: Inputs, evaluation: Evaluation, method: str,
                 others: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per budget: ``method`` minus each of ``others`` (paired bootstrap over seeds and test images)."""
    out: dict[str, dict[str, Any]] = {}
    for setting in inp.budgets:
        def stack(m: str, d: str) -> np.ndarray:
            return np.stack([evaluation.correct[(m, setting, d, s)] for s in params.seeds])

        mine = {d: stack(method, d) for d in inp.devices}
        out[setting] = {m: paired_gap(mine, {d: stack(m, d) for d in inp.devices}, n_boot=params.n_boot)
                        for m in others}
    return out


def class_prior_table(prior: Mapping[str, Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`class_prior` as two tables: accuracies (``budget``, ``device`` or ``"mean"``, one
    column per model and restriction) and the paired gaps (``budget``, ``gap``, ``mean``, ``lo``,
    ``hi`` over devices, accuracy units)."""
    accs, gaps = [], []
    for setting, per in prior.items():
        rows = [{"budget": setting, "device": d, **a} for d, a in per["acc"].items()]
        accs += rows + [{"budget": setting, "device": "mean",
                         **{k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("budget", "device")}}]
        gaps += [{"budget": setting, "gap": name, "mean": g["mean"], "lo": g["lo"], "hi": g["hi"]}
                 for name, g in per.items() if name != "acc"]
    return accs, gaps


def differences_table(differences: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`summarise`'s ``differences`` as rows: ``budget``, ``tap_vits minus`` (the other method),
    ``device`` (a device, or ``"mean"`` over devices), ``mean``, ``lo``, ``hi`` (accuracy units)."""
    rows = []
    for setting, per in differences.items():
        for method, g in per.items():
            rows += [{"budget": setting, "tap_vits minus": method, "device": d, "mean": v["mean"], "lo": v["lo"],
                      "hi": v["hi"]} for d, v in g["by_device"].items()]
            rows.append({"budget": setting, "tap_vits minus": method, "device": "mean", "mean": g["mean"],
                         "lo": g["lo"], "hi": g["hi"]})
    return rows


def _acc_intervals(params: Params, evaluation: Evaluation) -> dict[tuple, tuple[float, float]]:
    """95 % bootstrap interval (seeds x test images) of each (method, setting, device)'s mean accuracy."""
    groups: dict[tuple, list[np.ndarray]] = {}
    for (m, s, d, _), ok in evaluation.correct.items():
        groups.setdefault((m, s, d), []).append(ok)
    out = {}
    for key, oks in groups.items():
        a = np.stack(oks)
        g = paired_gap({key[2]: a}, {key[2]: np.zeros_like(a)}, n_boot=params.n_boot)
        out[key] = (g["lo"], g["hi"])
    return out


def summarise(params: Params, inp: Inputs, evaluation: Evaluation, latencies: Mapping[str, Any],
              combined: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over seeds, the best method per device and budget, the intervals, the planner's record.

    Returns:
        ``{"aggregate": per (method, setting, device): means, sds, min/max of acc, flops, ms_b1,
        ms_b32, params over seeds, plus ``acc_lo``/``acc_hi`` (95 % bootstrap over seeds and
        test images); "per_budget": {setting: {method: acc_mean, ms_b1, ms_b32, flops (means
        over devices)}}; "main_budget": the tightest budget's label; "summary": one row per
        device x parameter budget (best structured method, each method's accuracy) and per device
        x latency budget (best kind that met the budget in at least half of the seeds, each
        kind's accuracy, ms and met share); "combined_overall": per kind, means over devices,
        budgets and seeds; "planner_check": :func:`vitprune_lite.pipelines.summarise_checks`;
        "differences": {setting: {method: TAP-ViTs minus method, mean over devices with lo, hi
        and by_device}}; "toast_differences": the same for ToaSt + TCS minus each data-free peer;
        "class_prior": :func:`class_prior`}``.
    """
    from .. import compare, pipelines

    rows = latencies["rows"]
    dense_ms = latencies["dense_ms"][1]
    agg = compare.aggregate(rows, ("method", "setting", "device"), ("acc", "flops", "ms_b1", "ms_b32", "params"))
    ci = _acc_intervals(params, evaluation)
    for p in agg:
        p["acc_lo"], p["acc_hi"] = ci[(p["method"], p["setting"], p["device"])]

    def mean_over(method: str, setting: str, key: str = "acc") -> Optional[float]:
        vals = [p[key] for p in agg if p["method"] == method and p["setting"] == setting]
        return float(np.mean(vals)) if vals else None

    per_budget = {s: {m: {"acc_mean": mean_over(m, s), "ms_b1": mean_over(m, s, "ms_b1"),
                          "ms_b32": mean_over(m, s, "ms_b32"), "flops": mean_over(m, s, "flops")}
                      for m in (*STRUCTURED, "oracle")} for s in inp.budgets}
    winners = compare.best_per([p for p in agg if p["method"] in STRUCTURED], ("device", "setting"), "acc")
    means = combined_means(combined)
    summary = []
    for d in inp.devices:
        for setting in inp.budgets:
            cand = {p["method"]: p for p in agg if p["device"] == d and p["setting"] == setting}
            best = winners[(d, setting)]
            summary.append({"device": d, "budget": f"{setting} params", "best": best["method"],
                            "best_acc": best["acc"], "best_acc_std": best["acc_std"],
                            **{m: cand[m]["acc"] for m in (*STRUCTURED, "oracle")},
                            "dense": evaluation.dense_acc[d]})
        for share in params.latency_budgets:
            sub = {m["kind"]: m for m in means if m["device"] == d and m["budget_share"] == share}
            met = [k for k, m in sub.items() if m["met"] >= 0.5]  # a plan counts only where it met the budget
            best = max(met, key=lambda k: sub[k]["acc"]) if met else None
            row = {"device": d, "budget": f"{round(100 * share)}% latency", "budget_ms": share * dense_ms,
                   "best": best or "none met the budget", "best_acc": None if best is None else sub[best]["acc"],
                   "best_acc_std": None if best is None else sub[best]["acc_std"], "dense": evaluation.dense_acc[d],
                   "combined_plan": sub["combined"]["plan"]}
            for kind in pipelines.PLAN_KINDS:
                row[kind] = sub[kind]["acc"]
                row[f"{kind} ms"] = sub[kind]["measured_ms"]
                row[f"{kind} met"] = sub[kind]["met"]
            summary.append(row)
    overall = {}
    for kind in pipelines.PLAN_KINDS:
        g = [c for c in combined if c["kind"] == kind]
        overall[kind] = {"acc": float(np.mean([c["acc"] for c in g])),
                         "measured_met": float(np.mean([c["measured_met"] for c in g])),
                         "predicted_met": float(np.mean([c["predicted_met"] for c in g])),
                         "measured_over_predicted": float(np.median([c["measured_ratio"] / c["predicted_ratio"]
                                                                     for c in g]))}
    return {"aggregate": agg, "per_budget": per_budget, "main_budget": _setting(params.budgets[-1]),
            "summary": summary, "combined_overall": overall, "planner_check": pipelines.summarise_checks(combined),
            "differences": _differences(params, inp, evaluation, "tap_vits", (*STRUCTURED[1:], "oracle")),
            "toast_differences": _differences(params, inp, evaluation, "toast_tcs",
                                              ("one_size_fits_all", "torch_pruning")),
            "class_prior": class_prior(params, inp, evaluation)}


@dataclass
class Result(_params.ResultFile):
    """What notebook 04 reports (``04_final_comparisons.json``; ``vitprune_lite.report`` renders it).

    Attributes:
        params: the run's parameters.
        smoke: True unless ``params`` is the full run (the README then withholds verdicts).
        seeds: the recovery seeds.
        parameters: the run's settings as the report reads them (devices compared, feature space, ...).
        dense: the dense model: ``acc`` per device, ``ms_b1``, ``ms_b32`` (milliseconds, median),
            ``flops``, ``params``.
        rows: one per (method, setting, device, seed): accuracy, FLOPs, parameters, validation
            accuracy, latency at batch 1 and 32 and its ratio to dense.
        aggregate, per_budget, main_budget, summary, combined_overall, planner_check, differences,
            toast_differences, class_prior: :func:`summarise`'s output (``class_prior`` is empty
            in files written before it existed).
        combined: :func:`combined_plans`' output.
        predictor: the planner's predictor: ``validation`` (held-out check), ``margin``,
            ``seconds``, ``predictor`` (its fitted terms).
        reports: ``"method|setting|device|seed"`` -> the pipeline's report (budget, widths,
            validation accuracies, what recovery kept, timings).
        inputs: the selected sets read (file name and sha256) and the benchmark's fingerprint.
        seconds: wall time of the run; environment: what it ran on.
        schema: :data:`SCHEMA_VERSION`.
    """

    params: Params
    smoke: bool
    seeds: list[int]
    parameters: dict[str, Any]
    dense: dict[str, Any]
    rows: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    per_budget: dict[str, Any]
    main_budget: str
    combined: list[dict[str, Any]]
    combined_overall: dict[str, Any]
    planner_check: dict[str, Any]
    differences: dict[str, Any]
    predictor: dict[str, Any]
    summary: list[dict[str, Any]]
    reports: dict[str, Any]
    toast_differences: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    class_prior: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    SCHEMA_VERSION = SCHEMA_VERSION
    PARAMS = Params
    KIND = "notebook 04 result"
    RERUN = "notebook 04"

    @classmethod
    def collect(cls, params: Params, inp: Inputs, built: Mapping[tuple, Any], latencies: Mapping[str, Any],
                combined: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], cal, seconds: float) -> "Result":
        """Assemble the result from the steps' outputs."""
        from .. import measure, paths

        parameters = {"benchmark": params.benchmark, "devices": list(inp.devices), "budgets": list(params.budgets),
                      "feature_space": inp.space, "n_metric": params.n_metric, "n_finetune": params.n_finetune,
                      "score_tokens": params.score_tokens, "sens_images": params.sens_images,
                      "ft_steps": params.ft_steps, "ft_batch": params.ft_batch, "ft_lr": params.ft_lr,
                      "val_fraction": params.val_fraction, "pomt_r": list(params.pomt_r),
                      "tome_r": list(params.tome_r), "topk_keep": list(params.topk_keep),
                      "latency_budgets": list(params.latency_budgets),
                      "combined_tokens": [list(t) for t in params.combined_tokens], "threads": params.threads,
                      "lat_threads": params.lat_threads, "lat_rounds": params.lat_rounds,
                      "planner_profile_s": params.planner_profile_s, "planner_holdout": params.planner_holdout,
                      "planner_margin_q": params.planner_margin_q, "n_boot": params.n_boot}
        dense = {"acc": {r["device"]: r["acc"] for r in latencies["rows"] if r["method"] == "dense"},
                 "ms_b1": latencies["dense_ms"][1], "ms_b32": latencies["dense_ms"][32],
                 "flops": measure.count_flops(inp.model, inp.x1), "params": measure.count_params(inp.model)}
        return cls(params, not params.is_full(), list(params.seeds), parameters, dense, list(latencies["rows"]),
                   summary["aggregate"], summary["per_budget"], summary["main_budget"], list(combined),
                   summary["combined_overall"], summary["planner_check"], summary["differences"],
                   {"validation": cal.validation, "margin": cal.margin, "seconds": cal.seconds,
                    "predictor": cal.predictor.to_dict()},
                   summary["summary"], {f"{m}|{s}|{d}|{sd}": out.report for (m, s, d, sd), out in built.items()},
                   summary["toast_differences"],
                   {"selected_sets": Path(inp.sets_path).name,
                    "selected_sets_sha256": paths.sha256_file(Path(inp.sets_path)),
                    "benchmark_fingerprint": inp.bench.fingerprint},
                   round(seconds, 1), measure.environment(), class_prior=summary["class_prior"])


def plot_predicted_vs_measured(validation_rows: Sequence[Mapping[str, Any]], combined: Sequence[Mapping[str, Any]],
                               latency_budgets: Sequence[float], lat_threads: int):
    """Predicted against measured batch-1 latency, both as ratios to dense: the predictor's held-out
    random plans (grey) and the planner's chosen plans by kind, with the ±10 % band and each
    budget as a dotted line. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 5))
    ax.scatter([r["predicted_ratio"] for r in validation_rows], [r["measured_ratio"] for r in validation_rows],
               s=14, c="0.6", label="held-out random plans")
    kinds = list(dict.fromkeys(c["kind"] for c in combined))
    for kind, marker in zip(kinds, ("o", "s", "^", "v", "D")):
        g = [c for c in combined if c["kind"] == kind]
        ax.scatter([c["predicted_ratio"] for c in g], [c["measured_ratio"] for c in g], marker=marker, s=30,
                   alpha=0.8, label=f"chosen: {kind}")
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [0.9 * lo, 0.9 * hi], [1.1 * lo, 1.1 * hi], color="k", alpha=0.07,
                    label="within ±10 %")
    for share in latency_budgets:
        ax.axvline(share, ls=":", c="k", lw=0.8)
    ax.set(xlabel="predicted latency / dense (batch 1)", ylabel="measured latency / dense (batch 1)",
           title=f"latency predictor on this machine ({lat_threads} thread(s))")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_pareto(aggregate: Sequence[Mapping[str, Any]], devices: Sequence[str], n_seeds: int, lat_threads: int,
                combined: Optional[Sequence[Mapping[str, Any]]] = None):
    """One row per device: test accuracy (mean ± sd over seeds) against batch-1 latency, batch-32
    latency and MFLOPs per image, with the Pareto front over the deployable points (the oracle
    drawn, not on the front). Returns the figure.

    Args:
        combined: the planner's choices (:func:`combined_plans`, :attr:`Result.combined`; None:
            not drawn). On each device's batch-1 panel, the ``"combined"`` choices are black-edged
            stars, one fill per latency budget (mean accuracy ± sd and median measured latency over
            seeds), and each budget is a dotted vertical line.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    from .. import compare, measure, methods

    styles = {m: {**methods.style(m).line(), "label": methods.label(m)} for m in {p["method"] for p in aggregate}}
    axes_spec = [("ms_b1", "latency, batch 1 (ms)"), ("ms_b32", "latency, batch 32 (ms)"),
                 ("mflops", "MFLOPs per image")]
    points = [{**p, "mflops": None if p.get("flops") is None else p["flops"] / 1e6} for p in aggregate]
    chosen = [c for c in (combined or []) if c["kind"] == "combined"]
    shares = sorted({c["budget_share"] for c in chosen}, reverse=True)
    greys = {s: str(round(0.95 - 0.6 * i / max(len(shares) - 1, 1), 2)) for i, s in enumerate(shares)}
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for c in chosen:
        groups.setdefault((c["device"], c["budget_share"]), []).append(c)
    fig, axes = plt.subplots(len(devices), 3, figsize=(13, 3.3 * len(devices)), squeeze=False)
    for r, d in enumerate(devices):
        pts = [p for p in points if p["device"] == d]
        for c, (key, label) in enumerate(axes_spec):
            ax = axes[r, c]
            compare.pareto_axes(ax, pts, key, "acc", styles=styles, front_exclude=("oracle",))
            ax.set(xlabel=label, ylabel=f"{d}: test accuracy" if c == 0 else None)
            ax.grid(alpha=0.3)
        ax = axes[r, 0]
        for s in shares:
            g = groups.get((d, s), [])
            if not g:
                continue
            acc = np.array([c["acc"] for c in g], dtype=float)
            ax.errorbar([float(np.median([c["measured_ms"] for c in g]))], [float(acc.mean())],
                        yerr=[float(acc.std(ddof=1)) if len(acc) > 1 else 0.0], marker="*", ms=13, mfc=greys[s],
                        mec="k", mew=1, color="k", capsize=2, lw=1, ls="none", zorder=5,
                        label=f"planner's choice (budget {round(100 * s)} %)")
            budget = [c["budget_ms"] for c in g if c.get("budget_ms") is not None]
            if budget:
                x = float(np.median(budget))
                ax.axvline(x, color="k", ls=":", lw=1, label="planner's latency budget")
                ax.text(x, 0.02, f" {round(100 * s)} %", transform=ax.get_xaxis_transform(), fontsize=7,
                        ha="left", va="bottom")
        for ax in axes[r]:
            for axis in (ax.xaxis, ax.yaxis):
                if isinstance(axis.get_major_formatter(), ScalarFormatter):
                    axis.get_major_formatter().set_useOffset(False)
                    axis.get_major_formatter().set_scientific(False)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = {methods.label(m): i for i, m in enumerate(methods.names())}  # registry order, then the planner
    handles = dict(sorted(handles.items(), key=lambda kv: order.get(kv[0], len(order))))
    fig.suptitle(f"accuracy vs cost per device (mean ± sd over {n_seeds} seed(s); latency measured with "
                 f"{lat_threads} thread(s) on {measure.environment()['cpu_model'] or 'CPU'})", fontsize=10)
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), fontsize=8, loc="upper left", frameon=False,
               bbox_to_anchor=(1.0, axes[0, -1].get_position().y1))
    return fig


def run(params: Params = Params(), bench=None, model=None, progress: bool = True) -> Result:
    """Every step in order (the notebook calls them one by one)."""
    t0 = time.perf_counter()
    inp = load_inputs(params, bench, model)
    built = build_models(params, inp, progress)
    ev = evaluate(params, inp, built)
    lat = measure_latencies(params, inp, built, ev)
    cal = calibrate_planner(params, inp)
    combined = combined_plans(params, inp, built, ev, cal, lat["dense_ms"][1], progress)
    summary = summarise(params, inp, ev, lat, combined)
    return Result.collect(params, inp, built, lat, combined, summary, cal, time.perf_counter() - t0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: run a preset and write the result JSON (not the notebook's figures, so by
    default beside the executed notebooks, never over the committed results)."""
    from .. import paths

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--benchmark", default=None, choices=BENCHMARK_NAMES)
    p.add_argument("--out", default=None, help=f"result JSON (default build/{RESULT_FILE})")
    args = p.parse_args(argv)
    params = Params.preset(args.preset, **({"benchmark": args.benchmark} if args.benchmark else {}))
    out = Path(args.out) if args.out else paths.build_dir() / RESULT_FILE
    if out.suffix != ".json":
        raise InvalidValueError(f"--out {out}: accepted a path ending in .json")
    result = run(params)
    result.to_json(out)
    g = result.differences[result.main_budget]["one_size_fits_all"]
    print(f"wrote {out}: TAP-ViTs - one-size-fits-all {100 * g['mean']:+.2f} points [{100 * g['lo']:+.2f}, "
          f"{100 * g['hi']:+.2f}] at {result.main_budget} parameters over {len(result.parameters['devices'])} "
          f"device(s), in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
