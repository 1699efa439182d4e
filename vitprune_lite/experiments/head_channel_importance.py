"""Notebook 02's experiment: which heads and channels matter, scored ten ways (thirteen in the
``extended`` preset), pruned to five budgets.

Steps, one function each (the notebook calls them in this order):

1. :func:`load` - benchmark, base model and notebook 01's index sets (the file must record the
   same benchmark as ``Params.benchmark``);
2. :func:`metric_sets` - per device the ``gmm``, ``random`` and ``oracle`` metric sets and the
   private test split;
3. :func:`score` - TAP-ViTs composite importance and KL layer sensitivity on every metric set,
   the weight-only criteria and first-order Taylor;
4. :func:`rank_correlations` - Spearman agreement between criteria and between data sources;
5. :func:`prune_all` - every criterion at every TAP-ViTs budget (:func:`build` makes one model),
   zero-shot accuracy, parameters and FLOPs;
6. :func:`recovery` - the standard recovery (:func:`vitprune_lite.pipelines.recover`, as in
   notebook 04) of ``tap_vits`` and the ``ft_top`` criteria best on validation data, at 50 %;
7. :func:`tcs_audit` - Token Channel Selection evaluated one image at a time, in shuffled and in
   class-sorted batches;
8. :func:`timing` - measured speed-up against FLOP speed-up of every pruned model;
9. :func:`faithfulness` - :mod:`~vitprune_lite.experiments.tap_faithfulness`, read from its
   file when it holds a run of the same parameters.

:class:`Result` gathers what the notebook reports and writes ``02_head_channel_importance.json``
(the keys :mod:`vitprune_lite.report` reads are kept).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from .. import methods
from ..errors import InvalidFileError, InvalidValueError
from ..data import DEFAULT_BENCHMARK
from . import _params

__all__ = ["Params", "PRESETS", "Result", "SCHEMA_VERSION", "ALL_CRITERIA", "CORE_CRITERIA", "DATA_FREE", "SOURCES",
           "TAP_SOURCE", "Inputs", "Sources", "Scores", "Pruned", "load", "check_sets", "metric_sets", "score",
           "rank_correlations", "build", "prune_all", "accuracy_table", "recovery", "tcs_audit", "timing",
           "faithfulness",
           "faithfulness_file", "speed_summary", "summary_50", "layer_ratios", "accuracy_interval",
           "mean_accuracy_interval", "plot_head_importance", "plot_mlp_channels", "plot_layer_ratios",
           "plot_rank_correlation", "plot_accuracy_vs_budget", "plot_accuracy_curves", "plot_speedup"]

SCHEMA_VERSION = 1
#: Every criterion the notebook compares, in legend order (names of :mod:`vitprune_lite.methods`).
ALL_CRITERIA = ("tap_vits", "one_size_fits_all", "oracle", "tap_vits_uniform", "taylor", "magnitude_l1",
                "magnitude_l2", "random", "toast", "toast_tcs", "toast_heads", "torch_pruning",
                "torch_pruning_taylor")
#: Criteria that read no device data: one model serves every device.
DATA_FREE = frozenset({"magnitude_l1", "magnitude_l2", "random", "toast", "toast_tcs", "toast_heads",
                       "torch_pruning"})
#: The three metric sets per device.
SOURCES = ("gmm", "random", "oracle")
#: The criteria that prune with TAP-ViTs' composite scores, and the metric set each scores on:
#: ``tap_vits`` on the GMM-selected public images, ``one_size_fits_all`` on a random public subset
#: (notebook 01's, drawn per device), ``oracle`` on the device's private training images.
TAP_SOURCE = {"tap_vits": "gmm", "one_size_fits_all": "random", "oracle": "oracle", "tap_vits_uniform": "gmm"}
#: The full run's criteria: :data:`ALL_CRITERIA` without the three variants of another criterion
#: (``magnitude_l1`` of ``magnitude_l2``, ``toast_heads`` of ``toast``, ``torch_pruning_taylor`` of
#: ``torch_pruning``), which the ``extended`` preset adds back.
CORE_CRITERIA = tuple(c for c in ALL_CRITERIA if c not in ("magnitude_l1", "toast_heads", "torch_pruning_taylor"))
_WEIGHT_CRITERIA = ("magnitude_l1", "magnitude_l2", "random", "toast", "toast_heads")
_FAITH_PRESETS = ("full", "lab", "smoke")


@dataclass(frozen=True)
class Params(_params.RecoveryParams):
    """What notebook 02 runs; the defaults are the full run (sized for benchmark v2 on two cores).

    Attributes:
        benchmark: ``"v2"`` (the default) or ``"v1"``.
        seed: benchmark seed and every random choice (random scores, token positions, recovery).
        threads: torch CPU threads for scoring, evaluation and fine-tuning.
        lat_threads: torch CPU threads while timing.
        devices: device names (empty: every device of the benchmark that notebook 01's sets hold).
            The default is the benchmark's first two devices (night_cam and drone on v1 and v2):
            every criterion at every budget costs about 4x more per image on v2 than on v1, so the
            full run takes two devices rather than all eight.
        metric_images: images per metric set (notebook 01 selects 640).
        sens_images: metric-set images used by the KL layer-sensitivity probes.
        tokens: token positions per HSIC sample (CLS + patches).
        hsic_batch: images per HSIC sample set.
        alpha: TAP-ViTs softmax temperature factor of the layer keep ratios.
        probes: probe sparsities of the layer sensitivity.
        criteria: criteria pruned and compared (from :data:`ALL_CRITERIA`; ``tap_vits`` is
            required). The full run takes :data:`CORE_CRITERIA`.
        test_images: private test images per device (0: the whole split, 1,000 on v2). The full
            run takes the first 500: each of the 100 pruned models is evaluated on them, and the
            evaluation is most of the run (a 95 % interval of one accuracy is then about +-4
            points, of a paired difference over both devices and five budgets about +-1.6).
        ft_top: besides ``tap_vits``, recover the ``ft_top`` criteria best on validation data.
        ft_steps, ft_batch, ft_lr, val_fraction: the standard recovery, as in notebook 04
            (:class:`~vitprune_lite.experiments._params.RecoveryParams`); the criteria to recover
            are chosen on the validation split.
        ft_images: images taken from each device's fine-tune set (0: all of it).
        tcs_fc1: TCS share of FFN input channels dropped, per block (padded with 0 to the depth).
        tcs_fc2: TCS share of MLP hidden units dropped, per block (padded with 0 to the depth).
        audit_batch: batch size of the shuffled and class-sorted TCS evaluations.
        audit_public: public test images in the TCS audit (0: the whole split).
        lat_rounds: interleaved latency rounds per batch size.
        lat_min_run: seconds per model per round.
        lat_all_budgets: time every budget (False: the smallest only).
        faithfulness: preset of :mod:`~vitprune_lite.experiments.tap_faithfulness` (``"smoke"`` also
            limits it to this run's devices and keeps its file with the results).
        faithfulness_benchmark: the benchmark that check runs on (empty: ``benchmark``). The default
            is ``"v1"``, whose stored run (``data/benchmarks/tap_faithfulness.json``, about 18 minutes)
            is read. On v2 it would cost an estimated 2-3 hours (twice the devices, about 4.6x the cost per
            image) and is not stored yet.
        faithfulness_rerun: run it even if its file holds a run of the same parameters.
    """

    benchmark: str = DEFAULT_BENCHMARK
    seed: int = 0
    threads: int = 2
    lat_threads: int = 1
    devices: tuple[str, ...] = ("night_cam", "drone")
    metric_images: int = 640
    sens_images: int = 64
    tokens: int = 32
    hsic_batch: int = 64
    alpha: float = 1.1
    probes: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)
    criteria: tuple[str, ...] = CORE_CRITERIA
    test_images: int = 500
    ft_top: int = 2
    ft_images: int = 0
    tcs_fc1: tuple[float, ...] = (0, 0, 0, 0, 0, 0.3)
    tcs_fc2: tuple[float, ...] = (0, 0, 0, 0.5, 0.9, 0.9)
    audit_batch: int = 128
    audit_public: int = 500
    lat_rounds: int = 2
    lat_min_run: float = 0.05
    lat_all_budgets: bool = True
    faithfulness: str = "lab"
    faithfulness_benchmark: str = "v1"
    faithfulness_rerun: bool = False

    def __post_init__(self) -> None:
        _params.check_benchmark(self)
        _params.check_ints(self, (("seed", 0), ("threads", 1), ("lat_threads", 1), ("metric_images", 2),
                                  ("sens_images", 1), ("tokens", 1), ("hsic_batch", 2), ("test_images", 0),
                                  ("ft_top", 0), ("ft_images", 0),
                                  ("audit_batch", 1), ("audit_public", 0), ("lat_rounds", 1)))
        if not isinstance(self.devices, tuple) or any(not isinstance(d, str) or not d for d in self.devices):
            raise InvalidValueError(f"Params.devices = {self.devices!r}: accepted a tuple of device names "
                                    "(empty: every device)")
        if not _number(self.alpha) or self.alpha <= 0:
            raise InvalidValueError(f"Params.alpha = {self.alpha!r}: accepted a number > 0")
        if not isinstance(self.probes, tuple) or not self.probes or any(
                not _number(p) or not 0 < p < 1 for p in self.probes):
            raise InvalidValueError(f"Params.probes = {self.probes!r}: accepted a non-empty tuple of sparsities in (0, 1)")
        if (not isinstance(self.criteria, tuple) or "tap_vits" not in self.criteria
                or any(c not in ALL_CRITERIA for c in self.criteria) or len(set(self.criteria)) != len(self.criteria)):
            unknown = [c for c in self.criteria if c not in ALL_CRITERIA] if isinstance(self.criteria, tuple) else []
            bad = f" (unknown: {unknown})" if unknown else ""
            raise InvalidValueError(f"Params.criteria = {self.criteria!r}{bad}: accepted a tuple of distinct "
                                    f"names from {ALL_CRITERIA}, including "
                                    "'tap_vits' (the method under study)")
        self.check_recovery()
        for name in ("tcs_fc1", "tcs_fc2"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or any(not _number(r) or not 0 <= r < 1 for r in v):
                raise InvalidValueError(f"Params.{name} = {v!r}: accepted a tuple of shares in [0, 1), one per block")
        if not _number(self.lat_min_run) or self.lat_min_run <= 0:
            raise InvalidValueError(f"Params.lat_min_run = {self.lat_min_run!r}: accepted seconds > 0")
        for name in ("lat_all_budgets", "faithfulness_rerun"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidValueError(f"Params.{name} = {getattr(self, name)!r}: accepted True or False")
        if self.faithfulness not in _FAITH_PRESETS:
            raise InvalidValueError(f"Params.faithfulness = {self.faithfulness!r}: accepted a preset of "
                                    f"experiments.tap_faithfulness, one of {_FAITH_PRESETS}")
        from .. import data

        if self.faithfulness_benchmark and self.faithfulness_benchmark not in data.BENCHMARK_NAMES:
            raise InvalidValueError(f"Params.faithfulness_benchmark = {self.faithfulness_benchmark!r}: accepted "
                                    f"one of {data.BENCHMARK_NAMES} or '' (the run's own benchmark)")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Params":
        """A named preset (:data:`PRESETS`), with ``overrides`` on top."""
        return _params.preset(cls, PRESETS, name, overrides)


_number = _params._number


#: ``full``: the defaults (two devices, 500 test images each, ten criteria, the faithfulness
#: section read from its stored v1 file). ``extended``: every test image (1,000 per device), all
#: thirteen criteria, the whole-size TCS audit and a third latency round; about twice the run time.
#: ``lab``: one device (night_cam), 150 of its test images, 40 % of the metric images, the ten
#: criteria of the full run, a shorter
#: recovery of one criterion besides TAP-ViTs, 200 public test images in the TCS audit, one short
#: latency round at the smallest budget - every section, a quick qualitative look with wide
#: intervals. ``smoke``: the
#: tests' sizes (most of it the faithfulness experiment at its smoke preset). Measured run times
#: per preset: ``data/run_times.json``.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "extended": {"criteria": ALL_CRITERIA, "test_images": 0, "audit_public": 1000, "lat_rounds": 3},
    "lab": {"devices": ("night_cam",), "metric_images": 256, "sens_images": 16, "test_images": 150,
            "ft_top": 1, "ft_steps": 10, "ft_batch": 32, "ft_images": 800, "audit_public": 200,
            "criteria": CORE_CRITERIA, "lat_rounds": 1, "lat_min_run": 0.02, "lat_all_budgets": False},
    "smoke": {"devices": ("night_cam",), "metric_images": 32, "sens_images": 8, "tokens": 8, "hsic_batch": 16,
              "probes": (0.5,), "criteria": ("tap_vits", "one_size_fits_all", "oracle", "magnitude_l2", "toast",
                                             "toast_tcs", "torch_pruning"),
              "test_images": 32, "ft_top": 0, "ft_steps": 2, "ft_batch": 16, "ft_images": 160, "audit_batch": 16,
              "audit_public": 48, "lat_rounds": 1, "lat_min_run": 0.002, "lat_all_budgets": False, "threads": 1,
              "faithfulness": "smoke"},
}


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _key(crit: str, device: str, label: str) -> tuple[str, Optional[str], str]:
    """Models are keyed by (criterion, device or None for data-free criteria, budget label)."""
    return (crit, None if crit in DATA_FREE else device, label)


# ----------------------------------------------------------------------------- step 1: inputs

@dataclass(eq=False)
class Inputs:
    """Step 1's output.

    Attributes:
        bench: the benchmark; pool: its public training split (notebook 01's indices point into it).
        model: the dense base model (eval mode); meta: its checkpoint metadata.
        sets: notebook 01's index sets; space: their default feature space.
        devices: the devices of this run.
        image_size: image side in pixels (from the benchmark).
        budgets: TAP-ViTs' ``(mlp_keep, attn_keep)`` pairs; labels: each one's % of block parameters.
    """

    bench: Any
    pool: Any
    model: Any
    meta: dict
    sets: dict
    space: str
    devices: list[str]
    image_size: int
    budgets: list[tuple[float, float]]
    labels: list[str]

    @property
    def lab50(self) -> str:
        """The label of the smallest budget (about 50 % of block parameters)."""
        return self.labels[-1]

    def x1(self):
        """One zero image ``[1, 3, H, W]`` for FLOP counts."""
        import torch

        return torch.zeros(1, 3, self.image_size, self.image_size)


def check_sets(sets: Mapping[str, Any], benchmark: str, path: Any = "notebook 01's sets") -> dict:
    """Notebook 01's index sets, checked to be of ``benchmark``; the ``benchmark`` entry is removed.

    Files written before the benchmark was recorded hold no ``benchmark`` entry; they were made on v1.

    Raises:
        InvalidFileError: the sets were selected on another benchmark.
    """
    sets = dict(sets)
    sets.pop("seed", None)
    held = str(np.asarray(sets.pop("benchmark", "v1")))
    if held != benchmark:
        raise InvalidFileError(f"{path} holds index sets selected on benchmark {held!r}, but benchmark "
                               f"{benchmark!r} was asked; run notebook 01 with BENCHMARK = {benchmark!r} first")
    return sets


def load(params: Params, sets: Optional[Mapping[str, Any]] = None, sets_path: Any = None) -> Inputs:
    """Benchmark, base model and notebook 01's sets for ``params``.

    Args:
        sets: index sets to use instead of reading notebook 01's file (same keys as
            :func:`vitprune_lite.gmm.load_selected_sets` returns, plus an optional ``benchmark``).
        sets_path: notebook 01's file (default: ``data/results/01_selected_sets.npz``).
    """
    from .. import data, gmm, importance, models, paths

    if sets is None:
        path = Path(sets_path) if sets_path else paths.results_dir() / gmm.SELECTED_SETS
        held = gmm.load_selected_sets(path, benchmark=params.benchmark)  # refuses sets of another benchmark
        sets = {k: v for k, v in held.items() if k not in ("seed", "benchmark")}
    else:
        sets = check_sets(sets, params.benchmark)
    bench = data.benchmark_module(params.benchmark).load_benchmark(params.seed)
    model, meta = models.load_base_model(params.benchmark)
    space = str(sets["default_feature_space"])
    unknown = [d for d in params.devices if d not in bench.specs]
    if unknown:
        raise InvalidValueError(f"Params.devices: {unknown} are not devices of benchmark {params.benchmark}; "
                                f"accepted {list(bench.specs)}")
    wanted = list(params.devices) or list(bench.specs)
    devices = [d for d in wanted if f"{d}/{space}/metric" in sets]
    if not devices:
        raise InvalidFileError(f"notebook 01's sets hold none of {wanted} (feature space {space!r}); "
                               "run notebook 01 for these devices first")
    n_tokens = int(model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 1))
    if params.tokens > n_tokens:
        raise InvalidValueError(f"Params.tokens = {params.tokens}: accepted at most the model's {n_tokens} tokens "
                                f"(benchmark {params.benchmark})")
    depth = len(model.blocks)
    for name in ("tcs_fc1", "tcs_fc2"):
        if len(getattr(params, name)) > depth:
            raise InvalidValueError(f"Params.{name} = {getattr(params, name)!r}: accepted at most one share per "
                                    f"block ({depth} blocks)")
    budgets = [tuple(b) for b in importance.TAP_BUDGETS]
    labels = [f"{round(100 * importance.block_param_fraction(*b))}" for b in budgets]
    return Inputs(bench, bench.public["train"], model.eval(), meta, sets, space, devices,
                  int(bench.public["test"].images.shape[1]), budgets, labels)


def _tcs_ratios(params: Params, inp: Inputs) -> tuple[list[float], list[float]]:
    depth = len(inp.model.blocks)
    return ([float(r) for r in params.tcs_fc1] + [0.0] * (depth - len(params.tcs_fc1)),
            [float(r) for r in params.tcs_fc2] + [0.0] * (depth - len(params.tcs_fc2)))


# ----------------------------------------------------------------------------- step 2: metric sets

@dataclass(eq=False)
class Sources:
    """Step 2's output.

    Attributes:
        sets: ``{(device, source): (x [n, 3, H, W], y [n])}`` for every source of :data:`SOURCES`.
        tests: ``{device: (x, y)}`` private test images.
        coverage: ``{device: {"gmm_in_class": share of the gmm set in the device's classes, ...sizes}}``.
    """

    sets: dict
    tests: dict
    coverage: dict


def metric_sets(params: Params, inp: Inputs) -> Sources:
    """The ``gmm``, ``random`` and ``oracle`` metric sets of every device, and its private test split."""
    n = params.metric_images
    out, tests, cover = {}, {}, {}
    for d in inp.devices:
        out[(d, "gmm")] = inp.pool.subset(np.asarray(inp.sets[f"{d}/{inp.space}/metric"])[:n]).tensors()
        out[(d, "random")] = inp.pool.subset(np.asarray(inp.sets[f"{d}/random/metric"])[:n]).tensors()
        private = inp.bench.devices[d]["train"]
        out[(d, "oracle")] = private.subset(np.arange(min(n, len(private)))).tensors()
        split = inp.bench.devices[d]["test"]
        m = len(split) if params.test_images == 0 else min(params.test_images, len(split))
        tests[d] = split.subset(np.arange(m)).tensors()
        y_g = out[(d, "gmm")][1].numpy()
        cover[d] = {"gmm_in_class": float(np.isin(y_g, inp.bench.specs[d].classes).mean()),
                    **{f"n_{s}": int(len(out[(d, s)][0])) for s in SOURCES}, "n_test": int(len(tests[d][0]))}
    return Sources(out, tests, cover)


# ----------------------------------------------------------------------------- step 3: scores

@dataclass(eq=False)
class Scores:
    """Step 3's output.

    Attributes:
        tap: ``{(device, source): UnitScores}`` TAP-ViTs composite importance.
        sens: ``{(device, source): {"mlp": [L], "attn": [L]}}`` KL layer sensitivity.
        seconds: ``{(device, source): {"composite": s, "sensitivity": s}}``.
        weight: ``{criterion: UnitScores}`` for the weight-only criteria.
        taylor: ``{device: UnitScores}`` first-order Taylor on the gmm set with its public labels.
    """

    tap: dict
    sens: dict
    seconds: dict
    weight: dict
    taylor: dict


def score(params: Params, inp: Inputs, src: Sources, progress: bool = True) -> Scores:
    """TAP-ViTs scores and layer sensitivity on every metric set (identical sets scored once), the
    weight-only criteria, and Taylor; ``progress`` prints one line per metric set (its scoring
    times; :func:`plot_layer_ratios` shows the sensitivities)."""
    from .. import importance

    tap, sens, seconds, done = {}, {}, {}, {}
    with _threads(params.threads):
        for (d, s), (x, _) in src.sets.items():
            key = (s, tuple(x.shape), float(x.sum()), float(x[:, 0, 0, 0].sum()))
            if key in done:  # e.g. one random set shared by every device
                tap[(d, s)], sens[(d, s)], seconds[(d, s)] = done[key]
                continue
            t0 = time.perf_counter()
            sc = importance.tap_importance(inp.model, x, tokens=params.tokens, batch_size=params.hsic_batch,
                                           seed=params.seed)
            t1 = time.perf_counter()
            kl = importance.layer_sensitivity(inp.model, x, sc, sparsities=params.probes,
                                              max_images=params.sens_images)
            t2 = time.perf_counter()
            tap[(d, s)], sens[(d, s)] = sc, kl
            seconds[(d, s)] = {"composite": t1 - t0, "sensitivity": t2 - t1}
            done[key] = (sc, kl, seconds[(d, s)])
            if progress:
                print(f"{d:10s} {s:7s} composite {t1 - t0:5.1f} s, sensitivity {t2 - t1:5.1f} s")
        weight = {c: importance.score(inp.model, c, **({"seed": params.seed} if c == "random" else {}))
                  for c in _WEIGHT_CRITERIA}
        taylor = {d: importance.taylor_scores(inp.model, *src.sets[(d, "gmm")]) for d in inp.devices}
    return Scores(tap, sens, seconds, weight, taylor)


def layer_ratios(params: Params, scores: Scores, device: str, source: str,
                 budget: tuple[float, float]) -> dict[str, Any]:
    """TAP-ViTs' per-block keep ratios of one metric set at one budget (what :func:`build` prunes to).

    :func:`vitprune_lite.importance.adaptive_ratios` of the set's KL layer sensitivity with
    ``params.alpha``: sensitive blocks keep more, and the ratios of each kind average to the budget.

    Args:
        scores: step 3's output; its ``sens[(device, source)]`` is used.
        device: a device of the run; source: one of :data:`SOURCES`.
        budget: ``(mlp_keep, attn_keep)``, one of ``Inputs.budgets``.

    Returns:
        ``{"mlp": [L], "attn": [L]}`` float64 tensors: share of the block's MLP hidden channels and
        of its per-head attention dimensions kept.
    """
    from .. import importance

    if (device, source) not in scores.sens:
        raise InvalidValueError(f"layer_ratios: no KL sensitivity for device {device!r} and source {source!r}; "
                                f"accepted {sorted(scores.sens)}")
    return importance.adaptive_ratios(scores.sens[(device, source)], budget, params.alpha)


#: How figures name the metric sets (the criterion that prunes with each one in brackets).
_SOURCE_LABEL = {"gmm": "gmm: GMM-selected public images (TAP-ViTs)",
                 "random": "random: random public images (one-size-fits-all)",
                 "oracle": "oracle: the device's private images (oracle)"}
#: The criterion whose colour each metric set takes in figures.
_SOURCE_CRIT = {"gmm": "tap_vits", "random": "one_size_fits_all", "oracle": "oracle"}


def _heatmap(ax, m: np.ndarray, vmin: float, vmax: float, cmap: str, annot: bool, unit_ticks: bool = True) -> None:
    """``m`` ``[blocks, units]`` as a seaborn heatmap without its own colour bar, blocks as rows
    (``annot``: each cell's value written in it; ``unit_ticks``: unit indices on the x axis)."""
    import seaborn as sns

    sns.heatmap(m, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, cbar=False, annot=annot, fmt=".2f",
                annot_kws={"fontsize": 7}, xticklabels="auto" if unit_ticks else False, yticklabels=True)
    ax.tick_params(axis="y", labelrotation=0)


def plot_head_importance(inp: Inputs, scores: Scores):
    """Head importance per block (mean of the head's channel scores): TAP on each source per device,
    then three weight-only criteria (row-normalised).

    One row per device (TAP-ViTs' composite on its ``gmm``, ``random`` and ``oracle`` metric sets,
    on one colour scale per row so the sources compare), and a last row with ``magnitude_l2``,
    ``toast`` and ``random`` scores, each block divided by its largest head score. Each row has a
    labelled colour bar; cells are annotated when there are at most 12 heads.

    Returns:
        The figure: axes ``[devices + 1, 3]`` of ``[blocks, heads]`` heatmaps, then one colour bar per row.
    """
    import matplotlib.pyplot as plt

    n = len(inp.devices)
    fig, axes = plt.subplots(n + 1, 3, figsize=(10, 2.5 * (n + 1)), squeeze=False, layout="constrained")
    rows = [(f"{d} · TAP-ViTs on {s}", scores.tap[(d, s)].matrix("heads")) for d in inp.devices for s in SOURCES]
    annot = rows[0][1].shape[1] <= 12
    for r, d in enumerate(inp.devices):
        ms = [m for _, m in rows[3 * r:3 * r + 3]]
        lo, hi = min(float(m.min()) for m in ms), max(float(m.max()) for m in ms)
        for c, (title, m) in enumerate(rows[3 * r:3 * r + 3]):
            _heatmap(axes[r, c], m, lo, hi, "viridis", annot)
            axes[r, c].set(title=title, xlabel="head", ylabel="block")
        fig.colorbar(axes[r, 0].collections[0], ax=axes[r, :], shrink=0.9,
                     label="TAP composite score\n(mean of the head's channels)")
    for c, name in enumerate(["magnitude_l2", "toast", "random"]):
        m = scores.weight[name].matrix("heads")
        m = m / m.max(1, keepdims=True)
        _heatmap(axes[-1, c], m, min(0.0, float(m.min())), 1.0, "viridis", annot)
        axes[-1, c].set(title=f"{methods.label(name)} (row-normalised)", xlabel="head", ylabel="block")
    fig.colorbar(axes[-1, 0].collections[0], ax=axes[-1, :], shrink=0.9,
                 label="head score / block maximum\n(row-normalised)")
    return fig


def plot_mlp_channels(inp: Inputs, scores: Scores, device: Optional[str] = None):
    """Per-channel MLP scores of one device (default: the first), every row in the order of the
    TAP·gmm ranking, each row min-max scaled.

    Five ``[blocks, channels]`` heatmaps (TAP-ViTs on each metric set, ``magnitude_l2``, ``toast``)
    on one colour scale, with one colour bar: 1 is the block's highest-scoring channel, 0 its lowest.

    Returns:
        The figure: five heatmap axes, then the colour bar.
    """
    import matplotlib.pyplot as plt

    d = device or inp.devices[0]
    if d not in inp.devices:
        raise InvalidValueError(f"plot_mlp_channels: device {d!r}; accepted one of {inp.devices}")
    panels = [(f"TAP-ViTs on {s}", scores.tap[(d, s)].matrix("mlp")) for s in SOURCES]
    panels += [(methods.label(name), scores.weight[name].matrix("mlp")) for name in ("magnitude_l2", "toast")]
    order = np.argsort(-panels[0][1], axis=1)
    n_ch = panels[0][1].shape[1]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.45 * len(panels) + 0.8), sharex=True,
                             layout="constrained")
    for ax, (title, m) in zip(axes, panels):
        lo, hi = m.min(1, keepdims=True), m.max(1, keepdims=True)
        m = np.take_along_axis((m - lo) / (hi - lo + 1e-12), order, axis=1)
        _heatmap(ax, m, 0.0, 1.0, "magma", annot=False, unit_ticks=False)
        ax.set(ylabel="block", title=title)
    ticks = np.linspace(0, n_ch, 5).round().astype(int)
    axes[-1].set_xticks(ticks, [str(t) for t in ticks], rotation=0)
    axes[-1].set_xlabel("MLP hidden channels, sorted per block by the TAP·gmm score (rank, high to low)")
    fig.colorbar(axes[0].collections[0], ax=axes, shrink=0.6, label="channel score\n(min-max scaled per block)")
    fig.suptitle(f"{d} · MLP channel importance per block", fontsize=11)
    return fig


def plot_layer_ratios(params: Params, inp: Inputs, scores: Scores, label: Optional[str] = None):
    """TAP-ViTs' KL layer sensitivity per block beside the keep ratio it gives, per metric set.

    One column per device; rows: MLP KL sensitivity (bars), MLP keep ratio (points), attention KL
    sensitivity, attention keep ratio. Each metric set of :data:`SOURCES` has one colour (that of
    the criterion pruning with it). The KL axis is logarithmic when every value is positive. The
    dotted line is the budget's keep ratio, which every block keeps under uniform ratios
    (``tap_vits_uniform``); the adaptive ratios average to it.

    Args:
        params: the run's parameters (``alpha``).
        inp: step 1's output (devices, budgets and their labels).
        scores: step 3's output (``sens``).
        label: the budget, as one of ``inp.labels`` (% of block parameters kept; default: the 50 % budget).

    Returns:
        The figure: axes ``[4, devices]`` (row-major), one legend outside on the right.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    label = inp.lab50 if label is None else str(label)
    if label not in inp.labels:
        raise InvalidValueError(f"plot_layer_ratios: label {label!r}; accepted one of {inp.labels} "
                                "(% of block parameters kept)")
    budget = inp.budgets[inp.labels.index(label)]
    recs = []
    for d in inp.devices:
        for s in SOURCES:
            ratios = layer_ratios(params, scores, d, s, budget)
            for kind in ("mlp", "attn"):
                kl = np.asarray(scores.sens[(d, s)][kind], dtype=float)
                for b, (v, r) in enumerate(zip(kl, np.asarray(ratios[kind], dtype=float))):
                    recs.append({"device": d, "source": s, "kind": kind, "block": b, "kl": v, "keep": r})
    df = pd.DataFrame(recs)
    palette = {s: methods.style(_SOURCE_CRIT[s]).color for s in SOURCES}
    log = bool((df["kl"] > 0).all())
    unit = {"mlp": ("MLP", "share of hidden channels kept"), "attn": ("attention", "share of head dims kept")}
    rows = [(k, what) for k in ("mlp", "attn") for what in ("kl", "keep")]
    n = len(inp.devices)
    fig, axes = plt.subplots(4, n, figsize=(4.6 * n + 3.2, 9.6), squeeze=False, sharex=True, sharey="row",
                             layout="constrained")
    for c, d in enumerate(inp.devices):
        for r, (kind, what) in enumerate(rows):
            ax, part = axes[r, c], df[(df["device"] == d) & (df["kind"] == kind)]
            name = unit[kind][0]
            if what == "kl":
                sns.barplot(data=part, x="block", y="kl", hue="source", hue_order=list(SOURCES), palette=palette,
                            ax=ax, legend=False, saturation=1.0, errorbar=None)
                if log:  # set after drawing: seaborn's own log_scale leaves the bars undrawn here
                    ax.set_yscale("log")
                ax.set_ylabel(f"{name}: KL divergence\n(nats{', log scale' if log else ''})")
                ax.set_title(f"{d} · {name} KL sensitivity")
            else:
                sns.pointplot(data=part, x="block", y="keep", hue="source", hue_order=list(SOURCES), palette=palette,
                              ax=ax, legend=False, dodge=0.3, markersize=5, linewidth=1.4, errorbar=None)
                target = budget[0] if kind == "mlp" else budget[1]
                ax.axhline(target, color="0.35", ls=":", lw=1.2)
                ax.set_ylim(0, 1.05)
                ax.set_ylabel(f"{name}: keep ratio\n({unit[kind][1]})")
                ax.set_title(f"{d} · {name} keep ratio at {label} %")
            ax.grid(axis="y", alpha=0.3)
            ax.set_xlabel("block" if r == len(rows) - 1 else "")
            if c > 0:
                ax.set_ylabel("")
    handles = [Patch(color=palette[s], label=_SOURCE_LABEL[s]) for s in SOURCES]
    handles.append(Line2D([], [], color="0.35", ls=":", lw=1.2, label="budget keep ratio\n(every block, uniform)"))
    fig.legend(handles=handles, loc="outside right center", title="metric set", fontsize=8, title_fontsize=9,
               frameon=False)
    fig.suptitle(f"TAP-ViTs' keep ratios per block at {label} % of block parameters (MLP keep {budget[0]:.3f}, "
                 f"attention keep {budget[1]:.3f}, alpha {params.alpha:g})\nfrom the KL sensitivity: KL(dense || "
                 "block pruned alone) per image, summed over the probe sparsities", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- step 4: rank correlations

def _mean_rank_corr(a, b, key: str) -> float:
    from .. import importance

    return float(np.mean([importance.rank_correlation(a[i][key], b[i][key]) for i in range(len(a))]))


def rank_correlations(inp: Inputs, scores: Scores) -> dict[str, Any]:
    """Spearman rank correlation of unit scores, per layer and averaged over layers.

    Returns:
        ``{"criteria": {"names": [...], "device": first device, "mlp": [[...]], "attn": [[...]]},
        "sources": {device: {"gmm~oracle" | "random~oracle" | "gmm~random": {"mlp", "attn"}}}}``.
    """
    d0 = inp.devices[0]
    named = {"tap_vits": scores.tap[(d0, "gmm")], "oracle": scores.tap[(d0, "oracle")],
             "taylor": scores.taylor[d0], **{c: scores.weight[c] for c in ("magnitude_l1", "magnitude_l2", "toast",
                                                                           "random")}}
    names = list(named)
    corr = {k: [[_mean_rank_corr(named[a], named[b], k) for b in names] for a in names] for k in ("mlp", "attn")}
    sources = {d: {f"{a}~{b}": {k: _mean_rank_corr(scores.tap[(d, a)], scores.tap[(d, b)], k) for k in ("mlp", "attn")}
                   for a, b in (("gmm", "oracle"), ("random", "oracle"), ("gmm", "random"))} for d in inp.devices}
    return {"criteria": {"names": names, "device": d0, **corr}, "sources": sources}


def plot_rank_correlation(corr: Mapping[str, Any]):
    """The criteria x criteria rank-correlation matrices (MLP and attention units)."""
    import matplotlib.pyplot as plt

    c = corr["criteria"]
    names = c["names"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"wspace": 0.55})
    for ax, key in zip(axes, ("mlp", "attn")):
        m = np.asarray(c[key])
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="coolwarm")
        ax.set(xticks=range(len(names)), yticks=range(len(names)), title=f"{key} units ({c['device']})")
        ax.set_xticklabels([methods.label(n) for n in names], rotation=45, ha="right")
        ax.set_yticklabels([methods.label(n) for n in names])
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8)
    return fig


# ----------------------------------------------------------------------------- step 5: prune

def build(params: Params, inp: Inputs, src: Sources, scores: Scores, crit: str, device: str,
          budget: tuple[float, float]):
    """A pruned copy of the base model for one criterion, device and budget (:data:`ALL_CRITERIA`).

    ``tap_vits``, ``one_size_fits_all``, ``oracle``: composite scores of their metric set
    (:data:`TAP_SOURCE`) with KL-adaptive layer ratios (``tap_vits_uniform``: the ``gmm`` scores,
    the same ratio in every layer); ``taylor`` (on the ``gmm`` set with its public labels) and the
    weight-only criteria: uniform ratios; ``toast_tcs``: ``toast`` with Token Channel Selection
    (``sample`` mode); ``torch_pruning`` / ``torch_pruning_taylor`` (Taylor on the ``gmm`` set):
    the torch-pruning library (whole heads and MLP channels).
    """
    from .. import importance, peers, tcs

    model = inp.model
    if crit in TAP_SOURCE:
        s = TAP_SOURCE[crit]
        ratios = None if crit == "tap_vits_uniform" else layer_ratios(params, scores, device, s, budget)
        return importance.prune_copy(model, importance.make_plan(model, scores.tap[(device, s)], budget,
                                                                 layer_ratios=ratios))
    if crit == "taylor":
        return importance.prune_copy(model, importance.make_plan(model, scores.taylor[device], budget))
    if crit == "toast_tcs":
        fc1, fc2 = _tcs_ratios(params, inp)
        return tcs.patch(build(params, inp, src, scores, "toast", device, budget), fc1, fc2, mode="sample")
    if crit == "torch_pruning":
        return peers.torch_pruning_prune(model, budget, example_inputs=inp.x1())[0]
    if crit == "torch_pruning_taylor":
        x, y = src.sets[(device, "gmm")]
        return peers.torch_pruning_prune(model, budget, importance_kind="taylor", example_inputs=inp.x1(), x=x, y=y)[0]
    if crit in scores.weight:
        return importance.prune_copy(model, importance.make_plan(model, scores.weight[crit], budget))
    raise InvalidValueError(f"criterion {crit!r}: accepted {ALL_CRITERIA}")


@dataclass(eq=False)
class Pruned:
    """Step 5's output.

    Attributes:
        models: ``{(criterion, device or None, label): model}`` (data-free criteria: device None).
        results: ``{device: {label: {criterion: {"params", "flops", "acc"}}}}`` (later steps add
            ``"acc_recovered"`` and ``"latency"``).
        dense: ``{"params", "flops", "acc": {device: accuracy}}``.
        seconds: building and evaluating, in seconds.
        n_test: ``{device: private test images}`` every accuracy of that device is measured on.
    """

    models: dict
    results: dict
    dense: dict
    seconds: float
    n_test: dict = field(default_factory=dict)


def prune_all(params: Params, inp: Inputs, src: Sources, scores: Scores, progress: bool = True) -> Pruned:
    """Every criterion at every budget; parameters, FLOPs (one image) and private test accuracy."""
    from .. import measure

    x1 = inp.x1()
    models, size = {}, {}
    results: dict = {d: {lab: {} for lab in inp.labels} for d in inp.devices}
    jobs = [(c, b, lab, d) for c in params.criteria for b, lab in zip(inp.budgets, inp.labels) for d in inp.devices]
    t0 = time.perf_counter()
    with _threads(params.threads):
        bar = _tqdm(jobs, progress, "prune")
        for crit, b, lab, d in bar:
            key = _key(crit, d, lab)
            if key not in models:
                models[key] = m = build(params, inp, src, scores, crit, d, b)
                size[key] = {"params": measure.count_params(m), "flops": measure.count_flops(m, x1)}
            results[d][lab][crit] = {**size[key], "acc": measure.accuracy(models[key], *src.tests[d])}
        dense = {"params": measure.count_params(inp.model), "flops": measure.count_flops(inp.model, x1),
                 "acc": {d: measure.accuracy(inp.model, *src.tests[d]) for d in inp.devices}}
    return Pruned(models, results, dense, time.perf_counter() - t0,
                  {d: int(len(src.tests[d][1])) for d in inp.devices})


def _tqdm(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def accuracy_interval(acc: Any, n: Any, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of accuracies measured on ``n`` images each (95 % for ``z = 1.96``).

    Each accuracy is a count of correct images out of ``n``
    (:func:`vitprune_lite.experiments.base_model.wilson_interval` of that count).

    Args:
        acc: accuracies in [0, 1], any shape.
        n: images per accuracy, an integer >= 1 or an array broadcastable to ``acc``.
        z: normal quantile of the coverage.

    Returns:
        ``(lo, hi)``, arrays of ``acc``'s shape.

    Raises:
        InvalidValueError: an accuracy outside [0, 1], an ``n`` below 1, or an accuracy that is
            no count out of its ``n`` (the wrong ``n``).
    """
    from .base_model import wilson_interval

    a = np.asarray(acc, dtype=float)
    nn = np.broadcast_to(np.asarray(n), a.shape)
    if not np.all(np.isfinite(a)) or (a < 0).any() or (a > 1).any():
        raise InvalidValueError(f"accuracy_interval: accuracies {a.tolist()}; accepted values in [0, 1]")
    if nn.dtype.kind not in "iu" or (nn < 1).any():
        raise InvalidValueError(f"accuracy_interval: n = {np.asarray(n).tolist()}; accepted integers >= 1 "
                                "(images per accuracy)")
    k = np.rint(a * nn)
    if (np.abs(a * nn - k) > 0.25).any():  # float32 accuracies are within 0.1 image of a count up to 10^6 images
        raise InvalidValueError(f"accuracy_interval: accuracies {a.tolist()} are not counts out of n = "
                                f"{np.asarray(n).tolist()} images; pass the number of test images they were "
                                "measured on")
    out = np.array([wilson_interval(int(ki), int(ni), z) for ki, ni in zip(k.flat, nn.flat)]).reshape(*a.shape, 2)
    return np.minimum(out[..., 0], a), np.maximum(out[..., 1], a)  # the interval holds its point despite rounding


def mean_accuracy_interval(acc: Any, n: Any, z: float = 1.96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean accuracy over devices with a normal-approximation interval (95 % for ``z = 1.96``).

    The devices' test sets are independent, so the mean's variance is
    ``sum_d p_d (1 - p_d) / n_d / D^2`` (binomial per device); the interval is the mean
    ``+- z`` standard errors, clipped to [0, 1].

    Args:
        acc: ``[D, ...]`` accuracies, one row per device.
        n: ``[D]`` test images per device.
        z: normal quantile of the coverage.

    Returns:
        ``(mean, lo, hi)``, arrays of shape ``acc.shape[1:]``.
    """
    a = np.asarray(acc, dtype=float)
    nn = np.asarray(n)
    if a.ndim == 0 or nn.shape != a.shape[:1] or nn.dtype.kind not in "iu" or (nn < 1).any():
        raise InvalidValueError(f"mean_accuracy_interval: n = {nn.tolist()} for accuracies of shape {a.shape}; "
                                "accepted one integer >= 1 per device (row of acc)")
    if not np.all(np.isfinite(a)) or (a < 0).any() or (a > 1).any():
        raise InvalidValueError(f"mean_accuracy_interval: accuracies {a.tolist()}; accepted values in [0, 1]")
    nn = nn.reshape(-1, *([1] * (a.ndim - 1)))
    mean = a.mean(0)
    se = np.sqrt((a * (1 - a) / nn).sum(0)) / len(a)
    return mean, np.clip(mean - z * se, 0, 1), np.clip(mean + z * se, 0, 1)


def _n_test(n_test: Any, devices: list[str]) -> Optional[dict[str, int]]:
    """``n_test`` (None, one count for every device, or ``{device: count}``) as ``{device: count}``."""
    if n_test is None:
        return None
    if isinstance(n_test, Mapping):
        missing = [d for d in devices if d not in n_test]
        if missing:
            raise InvalidValueError(f"n_test: no test-image count for {missing}; accepted {{device: images}} "
                                    f"for each of {devices}")
        out = {d: n_test[d] for d in devices}
    else:
        out = {d: n_test for d in devices}
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in out.values()):
        raise InvalidValueError(f"n_test = {n_test!r}: accepted integers >= 1 (test images per device)")
    return {d: int(v) for d, v in out.items()}


def accuracy_table(params: Params, inp: Inputs, pruned: Pruned, label: Optional[str] = None) -> list[dict[str, Any]]:
    """Rows ``{"criterion", <device>: accuracy, ..., "mean"}`` at ``label`` (default: the 50 % budget),
    the dense model first."""
    lab = label or inp.lab50
    rows = [{"criterion": "dense", **pruned.dense["acc"], "mean": float(np.mean(list(pruned.dense["acc"].values())))}]
    for c in params.criteria:
        accs = {d: pruned.results[d][lab][c]["acc"] for d in inp.devices}
        rows.append({"criterion": c, **accs, "mean": float(np.mean(list(accs.values())))})
    return rows


def plot_accuracy_vs_budget(params: Params, inp: Inputs, pruned: Pruned):
    """Private test accuracy against the share of block parameters kept, from step 5's output:
    :func:`plot_accuracy_curves` of ``params.criteria``, ``inp``'s budgets and ``pruned``'s accuracies."""
    from .. import importance

    budgets = [{"label": lab, "block_params_kept": importance.block_param_fraction(*b)}
               for b, lab in zip(inp.budgets, inp.labels)]
    return plot_accuracy_curves(params.criteria, budgets, pruned.results, pruned.dense["acc"], inp.devices,
                                n_test=pruned.n_test or None)


def plot_accuracy_curves(criteria, budgets, results: Mapping[str, Any], dense_acc: Mapping[str, float],
                         devices=None, n_test: Any = None):
    """Private test accuracy against the share of block parameters kept, in two rows of panels.

    Top row: TAP-ViTs' metric-set sources (the criteria of :data:`TAP_SOURCE`); bottom row: every
    other criterion, with ``tap_vits`` for reference. One column per device and a last one with the
    mean over devices; the dense model is the dashed line. The y-limits are shared within a row and
    fitted to its data. It takes the result file's plain data, so a stored run is redrawn with
    ``r = Result.from_json(path)``; ``plot_accuracy_curves(r.params.criteria, r.budgets, r.results,
    r.dense["acc"], r.devices, r.n_test or None)``.

    With ``n_test``, 95 % intervals over the test images are drawn: bands of the Wilson interval
    (:func:`accuracy_interval`) in the top row, and in the mean column of both rows the
    normal-approximation interval of the mean (:func:`mean_accuracy_interval`), as bands on top and
    error bars below (the bottom row's device panels stay lines: ten bands would hide them).

    Args:
        criteria: the criteria to draw (names of :mod:`vitprune_lite.methods`, ``tap_vits`` among them).
        budgets: ``[{"label", "block_params_kept"}]`` (:attr:`Result.budgets`).
        results: ``{device: {label: {criterion: {"acc", ...}}}}`` (:attr:`Result.results`).
        dense_acc: ``{device: accuracy}`` of the dense model.
        devices: the devices, in column order (default: those of ``results``).
        n_test: test images per device, ``{device: images}`` or one integer for all (:attr:`Result.n_test`);
            None draws no intervals.
    """
    import matplotlib.pyplot as plt

    devices = list(results) if devices is None else list(devices)
    criteria = list(criteria)
    n = _n_test(n_test, devices)
    frac = [float(b["block_params_kept"]) for b in budgets]
    labels = [str(b["label"]) for b in budgets]
    rows = [("TAP-ViTs' metric-set sources", [c for c in criteria if c in TAP_SOURCE]),
            ("other criteria", ["tap_vits"] * ("tap_vits" in criteria) + [c for c in criteria if c not in TAP_SOURCE])]

    def curve(crit: str, d: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """Accuracy per budget ``[budgets]`` with its interval (None, None without ``n_test``)."""
        if d is not None:
            y = np.array([float(results[d][lab][crit]["acc"]) for lab in labels])
            return (y, *accuracy_interval(y, n[d])) if n else (y, None, None)
        per = np.array([[float(results[dd][lab][crit]["acc"]) for lab in labels] for dd in devices])
        if not n:
            return per.mean(0), None, None
        return mean_accuracy_interval(per, np.array([n[dd] for dd in devices]))

    columns = [(d, d) for d in devices] + [(None, "mean over devices")]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3.4 * len(columns) + 2.6, 6.9), squeeze=False,
                             sharex=True, sharey="row")
    for r, (row_name, crits) in enumerate(rows):
        ys = []
        for c, (d, title) in enumerate(columns):
            ax = axes[r, c]
            for crit in crits:
                y, lo, hi = curve(crit, d)
                ys += list(y)
                st = methods.style(crit)
                ax.plot(frac, y, ms=4, label=methods.label(crit), **st.line())
                if lo is None or (r > 0 and d is not None):
                    continue
                ys += list(lo) + list(hi)
                if r == 0:
                    ax.fill_between(frac, lo, hi, color=st.color, alpha=0.15, lw=0)
                else:
                    ax.errorbar(frac, y, yerr=[y - lo, hi - y], fmt="none", ecolor=st.color, elinewidth=1.0,
                                capsize=2, alpha=0.7)
            dense = float(dense_acc[d]) if d is not None else float(np.mean([dense_acc[dd] for dd in devices]))
            ys.append(dense)
            ax.axhline(dense, color=methods.style("dense").color, ls="--", lw=1, label="dense model")
            ax.set_title(title if d is None or not n else f"{title} (n = {n[d]:,})", fontsize=10)
            ax.grid(alpha=0.3)
            if r == len(rows) - 1:
                ax.set_xlabel("share of block parameters kept")
        lo_, hi_ = min(ys), max(ys)
        pad = max(0.06 * (hi_ - lo_), 0.01)
        axes[r, 0].set_ylim(lo_ - pad, hi_ + pad)
        axes[r, 0].set_ylabel(f"{row_name}\nprivate test accuracy")
        axes[r, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.03, 0.5), frameon=False)
    axes[0, 0].set_xlim(max(frac) + 0.02, min(frac) - 0.02)  # from the largest budget down to the smallest
    if n:
        fig.suptitle("Bands (top row) and error bars (bottom right): 95 % intervals over the test images "
                     "(Wilson per device; normal approximation for the mean over devices)", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- step 6: recovery

def recovery(params: Params, inp: Inputs, src: Sources, pruned: Pruned, progress: bool = True) -> dict[str, Any]:
    """The standard recovery (:func:`vitprune_lite.pipelines.recover`) at the 50 % budget.

    Each device's fine-tune set (notebook 01's, the first ``ft_images``) is split by
    :func:`vitprune_lite.pipelines.split_validation` with ``seed``; the criteria to recover are
    ``tap_vits`` and the ``ft_top`` others with the best zero-shot accuracy on that validation
    split (mean over devices), and :func:`~vitprune_lite.pipelines.recover` holds out the same
    split. Adds ``"acc_recovered"`` (private test) to ``pruned.results``.

    Returns:
        ``{"criteria": [...], "val_zero_shot": {criterion: accuracy}, "runs": {"device/criterion":
        {"test_acc", "val_acc_pruned", "val_acc_finetuned", "kept", "seconds", "n_train", "n_val"}}}``.
    """
    from .. import measure, pipelines

    lab = inp.lab50
    ft, vals = {}, {}
    for d in inp.devices:
        idx = np.asarray(inp.sets[f"{d}/{inp.space}/finetune"])
        idx = idx[:params.ft_images] if params.ft_images else idx
        ft[d] = pipelines.PublicData(*inp.pool.subset(idx).tensors())
        _, val_pos = pipelines.split_validation(np.arange(len(idx)), params.val_fraction, params.seed)
        if not len(val_pos):
            raise InvalidValueError(f"Params.val_fraction = {params.val_fraction}: leaves no validation image of "
                                    f"{d}'s {len(idx)} fine-tune images; accepted a larger share or more ft_images")
        vals[d] = (ft[d].x[val_pos], ft[d].y[val_pos])
    with _threads(params.threads):
        val_zero = {c: float(np.mean([measure.accuracy(pruned.models[_key(c, d, lab)], *vals[d]) for d in inp.devices]))
                    for c in params.criteria}
        others = sorted((c for c in params.criteria if c != "tap_vits"), key=lambda c: -val_zero[c])
        chosen = ["tap_vits"] + others[:params.ft_top]
        runs = {}
        for d in inp.devices:
            for crit in chosen:
                m, info = pipelines.recover(pruned.models[_key(crit, d, lab)], ft[d], np.arange(len(ft[d].x)),
                                            **params.recovery(), seed=params.seed, progress=progress)
                acc = measure.accuracy(m, *src.tests[d])
                pruned.results[d][lab][crit]["acc_recovered"] = acc
                runs[f"{d}/{crit}"] = {"test_acc": acc, "val_acc_pruned": info["val_acc_pruned"],
                                       "val_acc_finetuned": info["val_acc_finetuned"], "kept": info["kept"],
                                       "seconds": info["finetune"]["seconds"], "n_train": info["n_train"],
                                       "n_val": info["n_val"]}
    return {"criteria": chosen, "val_zero_shot": val_zero, "runs": runs}


# ----------------------------------------------------------------------------- step 7: TCS audit

def tcs_audit(params: Params, inp: Inputs, src: Sources) -> dict[str, Any]:
    """TCS on the dense model, audited on every device's test split and the public test split.

    Returns:
        ``{"audit": {device | "public": {mode: tcs.audit's row}}, "tcs_flops": {"dense", "tcs"}}``
        (FLOPs per image).
    """
    from .. import measure, tcs

    fc1, fc2 = _tcs_ratios(params, inp)
    test = inp.bench.public["test"]
    n = len(test) if params.audit_public == 0 else min(params.audit_public, len(test))
    with _threads(params.threads):
        audit = {d: tcs.audit(inp.model, *src.tests[d], fc1, fc2, batch_size=params.audit_batch, seed=params.seed)
                 for d in inp.devices}
        audit["public"] = tcs.audit(inp.model, *test.subset(np.arange(n)).tensors(), fc1, fc2,
                                    batch_size=params.audit_batch, seed=params.seed)
        flops = {"dense": measure.count_flops(inp.model, inp.x1()),
                 "tcs": measure.count_flops(tcs.patch(copy.deepcopy(inp.model), fc1, fc2), inp.x1())}
    return {"audit": audit, "tcs_flops": flops}


# ----------------------------------------------------------------------------- step 8: timing

def timing(params: Params, inp: Inputs, pruned: Pruned) -> dict[tuple[str, str, str], dict[int, dict[str, float]]]:
    """Measured speed-up of every pruned model against its FLOP speed-up, at batch 1 and 32.

    The models of one budget and the dense model are timed interleaved in shuffled rounds
    (:func:`vitprune_lite.measure.measure_latency`, ``lat_threads`` threads). Adds
    ``"latency"`` to ``pruned.results``.

    Returns:
        ``{(criterion, device or "None", label): {batch: {"median_ms", "dense_ms", "speedup",
        "flop_speedup", "ratio"}}}``; ratio = speed-up / FLOP speed-up.
    """
    import torch

    from .. import measure

    speed: dict = {}
    size = inp.image_size
    for b, lab in zip(inp.budgets, inp.labels):
        if not params.lat_all_budgets and lab != inp.lab50:
            continue
        group = {"dense": inp.model} | {f"{c}|{dd}": m for (c, dd, l), m in pruned.models.items() if l == lab}
        flops = {f"{c}|{dd}": pruned.results[inp.devices[0] if dd is None else dd][lab][c]["flops"]
                 for (c, dd, l) in pruned.models if l == lab}
        for batch in (1, 32):
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(params.seed))
            lat = measure.measure_latency(group, x, threads=params.lat_threads, rounds=params.lat_rounds,
                                          min_run_time=params.lat_min_run, seed=params.seed)
            for name in flops:
                crit, dd = name.split("|")
                flop_x = pruned.dense["flops"] / flops[name]
                sp = 1.0 / measure.latency_ratio(lat, name, "dense")
                speed.setdefault((crit, dd, lab), {})[batch] = {
                    "median_ms": lat[name].median_ms, "dense_ms": lat["dense"].median_ms,
                    "speedup": sp, "flop_speedup": flop_x, "ratio": sp / flop_x}
    for d in inp.devices:
        for lab in inp.labels:
            for crit in params.criteria:
                rec = speed.get((crit, str(_key(crit, d, lab)[1]), lab))
                if rec is not None:
                    pruned.results[d][lab][crit]["latency"] = {f"batch{k}": v for k, v in rec.items()}
    return speed


def plot_speedup(params: Params, speed: Mapping[tuple, Mapping[int, Mapping[str, float]]]):
    """Measured speed-up against FLOP speed-up per criterion, batch 1 and 32 (the environment annotated)."""
    import matplotlib.pyplot as plt

    from .. import measure, plots

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, batch in zip(axes, (1, 32)):
        for crit in params.criteria:
            pts = [v[batch] for (c, _, _), v in speed.items() if c == crit]
            ax.scatter([p["flop_speedup"] for p in pts], [p["speedup"] for p in pts], s=14,
                       label=methods.label(crit), **methods.style(crit).point())
        top = max(v[batch]["flop_speedup"] for v in speed.values()) * 1.05
        ax.plot([1, top], [1, top], "k-", lw=0.8, label="speed-up = FLOP speed-up")
        ax.plot([1, top], [0.9, 0.9 * top], "k:", lw=0.8, label="0.9 x FLOP speed-up")
        ax.set(title=f"batch {batch}, {params.lat_threads} thread(s)", xlabel="FLOP speed-up",
               ylabel="measured speed-up")
    axes[1].legend(fontsize=7)
    plots.annotate_env(axes[0], measure.environment())
    fig.tight_layout()
    return fig


def speed_summary(params: Params, speed: Mapping) -> dict[str, Any]:
    """``{"min_per_criterion": {"batch1": {criterion: min ratio}, ...}, "speedup_ratio_min": {"batch1", "batch32"},
    "speedup_ratio_median": {...}}`` of speed-up / FLOP speed-up."""
    per = {f"batch{b}": {c: float(min(v[b]["ratio"] for (cc, _, _), v in speed.items() if cc == c))
                         for c in params.criteria if any(cc == c for (cc, _, _) in speed)} for b in (1, 32)}
    allr = {b: [v[b]["ratio"] for v in speed.values()] for b in (1, 32)}
    return {"min_per_criterion": per,
            "speedup_ratio_min": {f"batch{b}": float(min(r)) for b, r in allr.items()},
            "speedup_ratio_median": {f"batch{b}": float(np.median(r)) for b, r in allr.items()}}


# ----------------------------------------------------------------------------- step 9: faithfulness

def faithfulness_file(params: Params) -> Path:
    """Where the faithfulness result is read and written: ``data/benchmarks/tap_faithfulness.json`` (v1)
    or ``tap_faithfulness_<benchmark>.json``; a ``smoke`` run's goes to the results folder."""
    from .. import paths
    from . import tap_faithfulness as tf

    path = tf.stored_path(params.faithfulness_benchmark or params.benchmark)
    return paths.results_dir() / path.name if params.faithfulness == "smoke" else path


def faithfulness(params: Params, inp: Inputs):
    """:func:`vitprune_lite.experiments.tap_faithfulness.load_or_run` at preset ``params.faithfulness``
    on ``params.faithfulness_benchmark`` (``""``: the run's own benchmark); the ``smoke`` preset runs
    on one device, this run's first where that benchmark has it. Returns ``(result, loaded, path)``."""
    from .. import data
    from . import tap_faithfulness as tf

    bench = params.faithfulness_benchmark or params.benchmark
    extra = {}
    if params.faithfulness == "smoke":
        names = [d.name for d in data.benchmark_module(bench).DEVICES]
        extra["devices"] = (next((d for d in inp.devices if d in names), names[0]),)
    fparams = tf.Params.preset(params.faithfulness, benchmark=bench, **extra)
    path = faithfulness_file(params)
    result, loaded = tf.load_or_run(fparams, path, rerun=params.faithfulness_rerun)
    return result, loaded, path


# ----------------------------------------------------------------------------- result

def summary_50(params: Params, inp: Inputs, pruned: Pruned) -> dict[str, Any]:
    """TAP at the 50 % budget per device and source, and the mean gaps gmm - random and oracle - gmm
    (present when ``tap_vits``, ``one_size_fits_all`` and ``oracle``, one per source, were all pruned)."""
    lab = inp.lab50
    crit_of = {s: c for c, s in TAP_SOURCE.items() if c != "tap_vits_uniform"}
    tap = {d: {s: pruned.results[d][lab][crit_of[s]]["acc"] for s in SOURCES if crit_of[s] in params.criteria}
           for d in inp.devices}
    out: dict[str, Any] = {"tap_acc": tap}
    if all(len(v) == 3 for v in tap.values()):
        out["gmm_minus_random_mean"] = float(np.mean([v["gmm"] - v["random"] for v in tap.values()]))
        out["oracle_minus_gmm_mean"] = float(np.mean([v["oracle"] - v["gmm"] for v in tap.values()]))
        out["gmm_beats_random"] = out["gmm_minus_random_mean"] > 0
        out["gmm_within_3_points_of_oracle"] = out["oracle_minus_gmm_mean"] <= 0.03
    return out


@dataclass
class Result(_params.ResultFile):
    """What notebook 02 reports (``data/results/02_head_channel_importance.json``).

    Attributes:
        params: the run's parameters; smoke: whether it ran at the ``smoke`` preset.
        benchmark: ``params.benchmark`` (repeated for readers of the file).
        devices, feature_space: the devices and notebook 01's feature space.
        budgets: ``[{"label", "mlp_keep", "attn_keep", "block_params_kept"}]``.
        dense: ``{"params", "flops", "acc": {device: accuracy}}``.
        results: ``{device: {label: {criterion: {"params", "flops", "acc", ["acc_recovered"], ["latency"]}}}}``.
        summary_50: :func:`summary_50`.
        scoring: ``{"device/source": {"seconds", "sensitivity", "layer_keep_50"}}``.
        rank_correlation: :func:`rank_correlations`.
        finetune: :func:`recovery`'s output.
        tcs_audit, tcs_flops: :func:`tcs_audit`'s output.
        tap_faithfulness: ``{"file", "loaded", "params", "table"}`` (empty when not run).
        speedup_ratio_min, speedup_ratio_median: speed-up / FLOP speed-up over every timed model.
        seconds, environment, schema: run time, what it ran on, :data:`SCHEMA_VERSION`.
        n_test: ``{device: private test images}`` behind every accuracy of ``dense`` and ``results``
            (the ``n`` of their 95 % intervals; empty in files written before it existed).
    """

    params: Params
    smoke: bool
    benchmark: str
    devices: list
    feature_space: str
    budgets: list
    dense: dict
    results: dict
    summary_50: dict
    scoring: dict
    rank_correlation: dict
    finetune: dict
    tcs_audit: dict
    tcs_flops: dict
    tap_faithfulness: dict
    speedup_ratio_min: dict
    speedup_ratio_median: dict
    seconds: float = 0.0
    environment: dict = field(default_factory=dict)
    n_test: dict = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    SCHEMA_VERSION = SCHEMA_VERSION
    PARAMS = Params
    KIND = "notebook 02 result"
    RERUN = "notebook 02"

    def _check(self) -> str:
        if self.n_test and (sorted(self.n_test) != sorted(self.devices) or any(
                not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in self.n_test.values())):
            return f"n_test {self.n_test} must give an image count >= 1 for each of the devices {self.devices}"
        return ""

    @classmethod
    def collect(cls, params: Params, inp: Inputs, scores: Scores, corr: Mapping[str, Any], pruned: Pruned,
                finetune: Mapping[str, Any], audit: Mapping[str, Any], speed: Mapping, faith: Any, loaded: bool,
                faith_path: Path, seconds: float = 0.0, smoke: bool = False) -> "Result":
        """Assemble the result from the steps' outputs (``faith`` None: the faithfulness step was not run)."""
        from .. import importance, measure

        scoring = {f"{d}/{s}": {"seconds": scores.seconds[(d, s)],
                                "sensitivity": {k: scores.sens[(d, s)][k].tolist() for k in ("mlp", "attn")},
                                "layer_keep_50": {k: v.tolist() for k, v in layer_ratios(
                                    params, scores, d, s, inp.budgets[-1]).items()}}
                   for (d, s) in scores.tap}
        sp = speed_summary(params, speed)
        parts = [list(inp.devices), inp.space,
                 [{"label": lab, "mlp_keep": b[0], "attn_keep": b[1],
                   "block_params_kept": importance.block_param_fraction(*b)} for b, lab in zip(inp.budgets, inp.labels)],
                 pruned.dense, pruned.results, summary_50(params, inp, pruned), scoring, corr, finetune,
                 audit["audit"], audit["tcs_flops"],
                 {} if faith is None else {"file": Path(faith_path).name, "loaded": loaded,
                                           "params": asdict(faith.params), "table": faith.table()},
                 sp["speedup_ratio_min"], sp["speedup_ratio_median"]]
        return cls(params, smoke, params.benchmark, *[_params.plain(p) for p in parts], round(seconds, 1),
                   measure.environment(), n_test=_params.plain(pruned.n_test))


def run(params: Params = Params(), sets: Optional[Mapping[str, Any]] = None, progress: bool = False,
        smoke: bool = False) -> Result:
    """Every step in order (the notebook calls them one by one, with its figures in between)."""
    t0 = time.perf_counter()
    inp = load(params, sets=sets)
    src = metric_sets(params, inp)
    scores = score(params, inp, src, progress=progress)
    corr = rank_correlations(inp, scores)
    pruned = prune_all(params, inp, src, scores, progress=progress)
    ft = recovery(params, inp, src, pruned, progress=progress)
    audit = tcs_audit(params, inp, src)
    speed = timing(params, inp, pruned)
    faith, loaded, path = faithfulness(params, inp)
    return Result.collect(params, inp, scores, corr, pruned, ft, audit, speed, faith, loaded, path,
                          time.perf_counter() - t0, smoke)
