"""Is the benchmark device-specific? Pruning on a device's own data against one shared model.

TAP-ViTs' premise is that a model pruned for one device's data serves that device better than one
model pruned for everyone. Whether a benchmark can show this does not depend on any method: if
even the **oracle** - TAP-ViTs scored and recovered on the device's private training images -
cannot beat **one-size-fits-all** - the same pruning on a random public subset, one model for all
devices - then no upload and no selection can, and comparing them teaches nothing.

The experiment prunes one oracle model per device and one shared model at the same share of block
parameters, with the standard recovery, and tests every model on every device's private test
split: the **cross-device matrix** (row: the data a model was pruned for; column: the device it is
tested on). A device-specific benchmark shows a bright diagonal: a model does best on the device
it was pruned for, and worse on the others.

The headline is the **gap** on the diagonal: oracle minus one-size-fits-all, averaged over
devices, with a 95 % interval from a paired bootstrap (the same test images for both models,
resampled within each device, and the recovery seeds resampled too).

Run it from the command line (``python -m vitprune_lite.experiments.device_specificity --preset lab``)
or call :func:`run`.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InvalidValueError
from ..data import BENCHMARK_NAMES, DEFAULT_BENCHMARK
from . import _params

__all__ = ["Params", "PRESETS", "Result", "SCHEMA_VERSION", "run", "paired_gap", "default_path", "load_or_run",
           "plot_matrix", "main"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Params:
    """What the experiment runs; the defaults are the full run.

    Attributes:
        benchmark: ``"v2"`` (the default benchmark) or ``"v1"``.
        checkpoint: the base model's safetensors file (``""``: the benchmark's shipped one).
        data_seed: benchmark seed (the shipped checkpoint was trained on seed 0).
        budget_index: which of TAP-ViTs' five budgets (:data:`vitprune_lite.importance.TAP_BUDGETS`;
            index 4 keeps about 50 % of block parameters).
        seeds: recovery seeds (data order, validation split, the shared model's random subset).
        devices: device names (empty: every device of the benchmark).
        n_metric, n_finetune: metric-set and fine-tune-set sizes (paper: 640 and 6,400).
        ft_steps, ft_batch, ft_lr, val_fraction: the standard recovery (as in notebook 04).
        score_tokens, sens_images: TAP scoring: token positions per image, images for the KL
            layer sensitivity.
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
    test_images: int = 0
    n_boot: int = 2000
    threads: int = 2

    def __post_init__(self) -> None:
        _params.check_benchmark(self)
        _params.check_ints(self, (("data_seed", 0), ("n_metric", 1), ("n_finetune", 1), ("ft_steps", 0),
                                  ("ft_batch", 1), ("score_tokens", 1), ("sens_images", 1), ("test_images", 0),
                                  ("n_boot", 10), ("threads", 1)))
        _params.check_pruning(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Params":
        """A named preset (:data:`PRESETS`), with ``overrides`` on top."""
        return _params.preset(cls, PRESETS, name, overrides)


#: ``full``: the defaults. ``lab``: one seed, a quick look (the same effect, a wider interval).
#: ``smoke``: seconds, for the tests (two devices, tiny sets; only the plumbing is meaningful).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "lab": {"seeds": (0,), "n_boot": 1000},
    "smoke": {"seeds": (0,), "devices": (), "n_metric": 32, "n_finetune": 160, "ft_steps": 2, "ft_batch": 16,
              "score_tokens": 8, "sens_images": 8, "test_images": 64, "n_boot": 100, "threads": 1},
}


@dataclass
class Result(_params.ResultFile):
    """The cross-device matrix and the diagonal gap.

    Attributes:
        params: the run's parameters.
        devices: device names (the matrix's columns, and the oracle rows' order).
        rows: model names: ``"dense"``, ``"one_size_fits_all"``, then ``"oracle:<device>"`` per device.
        acc: accuracy ``[seed][row][device]`` on each device's private test split.
        gap: mean over devices of oracle minus one-size-fits-all on the diagonal, with ``lo``,
            ``hi`` (95 % paired bootstrap) and per device (``by_device``: mean, lo, hi).
        sizes: per row, kept share of block parameters and FLOPs relative to the dense model.
        seconds: wall time of the run.
        environment: what it ran on (:func:`vitprune_lite.measure.environment`).
        inputs: what a cached copy must match besides ``params`` (``checkpoint_sha256``; set by
            :func:`load_or_run`; empty in files written before it existed, which are then re-run).
        schema: :data:`SCHEMA_VERSION`.
    """

    params: Params
    devices: list[str]
    rows: list[str]
    acc: list[list[list[float]]]
    gap: dict[str, Any]
    sizes: dict[str, dict[str, float]]
    seconds: float
    environment: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    SCHEMA_VERSION = SCHEMA_VERSION
    PARAMS = Params
    KIND = "device-specificity result"
    RERUN = "notebook 00 (its cross-device check) or python -m vitprune_lite.experiments.device_specificity"

    def _check(self) -> str:
        m = self.matrix()
        if m.shape != (len(self.rows), len(self.devices)):
            return f"accuracy matrix of shape {m.shape}, expected {(len(self.rows), len(self.devices))}"
        return ""

    def matrix(self) -> np.ndarray:
        """Seed-mean accuracy ``[rows, devices]``."""
        return np.asarray(self.acc, dtype=float).mean(axis=0)


def paired_gap(correct_a: Mapping[str, np.ndarray], correct_b: Mapping[str, np.ndarray], n_boot: int = 2000,
               level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Mean over devices of accuracy(a) - accuracy(b), with a paired bootstrap interval.

    Args:
        correct_a, correct_b: device -> bool ``[seeds, n_images]``: whether each model (one per
            seed) got each test image right; the same images in the same order for a and b.
        n_boot: resamples. Each resample draws the seeds with replacement and, within every
            device, the test images with replacement - the same draw for a and b (paired).
        level: interval coverage.
        seed: seeds the resampling.

    Returns:
        ``{"mean", "lo", "hi", "by_device": {device: {"mean", "lo", "hi"}}}`` in accuracy units.
    """
    rng = np.random.default_rng(seed)
    devices = list(correct_a)
    diffs = {d: np.asarray(correct_a[d], dtype=float) - np.asarray(correct_b[d], dtype=float) for d in devices}
    for d, v in diffs.items():
        if v.ndim != 2 or v.shape[1] == 0:
            raise InvalidValueError(f"paired_gap: device {d!r} needs bool [seeds, images] arrays, got shape {v.shape}")
    n_seeds = {v.shape[0] for v in diffs.values()}
    if len(n_seeds) != 1:
        raise InvalidValueError(f"paired_gap: every device needs the same number of seeds, got {sorted(n_seeds)}")
    s = n_seeds.pop()
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    boot = np.empty((n_boot, len(devices)))
    for b in range(n_boot):
        seeds = rng.integers(0, s, s)
        for k, d in enumerate(devices):
            v = diffs[d]
            boot[b, k] = v[seeds][:, rng.integers(0, v.shape[1], v.shape[1])].mean()
    point = np.array([diffs[d].mean() for d in devices])
    lo, hi = np.percentile(boot.mean(axis=1), q)
    by = {d: {"mean": float(point[k]), "lo": float(np.percentile(boot[:, k], q[0])),
              "hi": float(np.percentile(boot[:, k], q[1]))} for k, d in enumerate(devices)}
    return {"mean": float(point.mean()), "lo": float(lo), "hi": float(hi), "level": level, "by_device": by}


def _load(params: Params):
    from .. import data, models

    if params.checkpoint:
        model, _ = models.load_checkpoint(Path(params.checkpoint))
    else:
        model, _ = models.load_base_model(params.benchmark)
    return data.benchmark_module(params.benchmark).load_benchmark(params.data_seed), model


def run(params: Params = Params(), bench=None, model=None, progress: bool = True) -> Result:
    """Prune the oracle per device and the shared model, and test each on every device.

    Args:
        params: what to run.
        bench, model: the benchmark and dense base model (default: loaded from ``params``).
        progress: print one line per model built.
    """
    import torch

    from .. import importance, measure, pipelines

    t0 = time.perf_counter()
    if bench is None or model is None:
        bench, model = _load(params)
    devices = list(params.devices) or list(bench.specs)
    unknown = [d for d in devices if d not in bench.specs]
    if unknown:
        raise InvalidValueError(f"Params.devices: {unknown} are not devices of this benchmark; accepted {list(bench.specs)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        public = pipelines.PublicData(*bench.public["train"].tensors())
        budget = importance.TAP_BUDGETS[params.budget_index]
        tests = {}
        for d in devices:
            split = bench.devices[d]["test"]
            n = len(split) if params.test_images == 0 else min(params.test_images, len(split))
            tests[d] = split.subset(np.arange(n)).tensors()
        opts = dict(ft_steps=params.ft_steps, ft_batch=params.ft_batch, ft_lr=params.ft_lr,
                    val_fraction=params.val_fraction, score_options={"tokens": params.score_tokens, "seed": 0},
                    sens_images=params.sens_images)
        rows = ["dense", "one_size_fits_all"] + [f"oracle:{d}" for d in devices]
        correct = {r: {d: [] for d in devices} for r in rows}  # row -> device -> [seed] bool arrays
        sizes: dict[str, dict[str, float]] = {}
        x1 = tests[devices[0]][0][:1]
        dense_flops = measure.count_flops(model, x1)
        for d in devices:
            correct["dense"][d] = [measure.correct(model, *tests[d]).numpy()] * len(params.seeds)
        sizes["dense"] = {"block_param_share": 1.0, "flops_share": 1.0}
        cache: dict = {}
        for seed in params.seeds:
            built = {"one_size_fits_all": pipelines.one_size_fits_all(
                model, pipelines.DeviceRequest("*", budget), public, n_metric=params.n_metric,
                n_finetune=params.n_finetune, seed=seed, cache=cache, **opts)}
            for d in devices:
                built[f"oracle:{d}"] = pipelines.oracle(
                    model, pipelines.DeviceRequest(d, budget), public, private=bench.devices[d]["train"].tensors(),
                    n_metric=params.n_metric, seed=seed, cache=cache, **opts)
            for name, out in built.items():
                for d in devices:
                    correct[name][d].append(measure.correct(out.model, *tests[d]).numpy())
                sizes[name] = {"block_param_share": round(importance.block_param_fraction(*budget), 4),
                               "flops_share": out.report["flops"] / dense_flops}
            if progress:
                print(f"seed {seed}: {len(built)} models pruned and tested in {time.perf_counter() - t0:.0f} s so far",
                      flush=True)
    finally:
        torch.set_num_threads(threads)
    acc = [[[float(np.mean(correct[r][d][k])) for d in devices] for r in rows] for k in range(len(params.seeds))]
    gap = paired_gap({d: np.stack(correct[f"oracle:{d}"][d]) for d in devices},
                     {d: np.stack(correct["one_size_fits_all"][d]) for d in devices}, n_boot=params.n_boot)
    return Result(params, devices, rows, acc, gap, sizes, round(time.perf_counter() - t0, 1), measure.environment())


def default_path(benchmark: str) -> Path:
    """Where the committed result of ``benchmark`` lives: ``data/benchmarks/device_specificity.json``
    (v2, the default benchmark) or ``device_specificity_v1.json``."""
    from .. import paths

    suffix = "" if benchmark == "v2" else f"_{benchmark}"
    return paths.data_dir() / "benchmarks" / f"device_specificity{suffix}.json"


def load_or_run(params: Params, path: str | Path, bench=None, model=None, rerun: bool = False,
                progress: bool = True) -> tuple[Result, bool]:
    """The result of ``params``: read from ``path`` when it holds a run of exactly these parameters
    on the same base checkpoint (sha256), otherwise run (with ``bench`` and ``model`` if given) and
    written there. Returns ``(result, loaded)``."""
    return _params.load_or_run(params, path, lambda p: run(p, bench=bench, model=model, progress=progress),
                               Result.from_json, rerun=rerun)


def plot_matrix(result: Result, ax=None):
    """The cross-device matrix as a heat map: rows the data a model was pruned for, columns the test device.

    Each cell is the seed-mean accuracy; the oracle rows' diagonal is outlined. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    m = result.matrix() * 100
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 * len(result.devices) + 3, 0.45 * len(result.rows) + 1.6))
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(result.devices)), result.devices, rotation=30, ha="right")
    labels = [r.replace("oracle:", "pruned for ") for r in result.rows]
    ax.set_yticks(range(len(result.rows)), labels)
    mid = np.nanmean(m)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if m[i, j] > mid else "white")
    for j, d in enumerate(result.devices):
        i = result.rows.index(f"oracle:{d}")
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.8))
    ax.axhline(1.5, color="white", lw=2)
    g = result.gap
    budget = result.sizes.get("one_size_fits_all", {}).get("block_param_share", float("nan"))
    ax.set_title(f"test accuracy (%), models pruned to {budget:.0%} of block parameters; diagonal gap over "
                 f"one-size-fits-all {100 * g['mean']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}] points",
                 fontsize=9)
    ax.set_xlabel("tested on device")
    ax.figure.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    ax.figure.tight_layout()
    return ax.figure


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: run a preset, write the result JSON and the figure."""
    from .. import paths

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--benchmark", default=None, choices=BENCHMARK_NAMES)
    p.add_argument("--out", default=None, help="result JSON (default data/benchmarks/device_specificity.json "
                                                "for v2, device_specificity_v1.json for v1)")
    args = p.parse_args(argv)
    params = Params.preset(args.preset, **({"benchmark": args.benchmark} if args.benchmark else {}))
    out = Path(args.out) if args.out else default_path(params.benchmark)
    if out.suffix != ".json":
        raise InvalidValueError(f"--out {out}: accepted a path ending in .json")
    result, _ = load_or_run(params, out, rerun=True)  # records the checkpoint's sha256 with the result
    fig = plot_matrix(result)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    g = result.gap
    print(f"wrote {out}: oracle - one-size-fits-all {100 * g['mean']:+.2f} points "
          f"[{100 * g['lo']:+.2f}, {100 * g['hi']:+.2f}] over {len(result.devices)} devices in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
