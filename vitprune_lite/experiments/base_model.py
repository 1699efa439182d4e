"""Notebook 00's experiment: the embedded benchmark, the base model and what it learned.

Steps, each one function:

1. :func:`load_benchmark` - the benchmark for ``Params.benchmark`` and seed (generated once,
   then cached by content under ``data/cache/``);
2. :func:`galleries` - example images: every class in the clean style, every style on one
   class per shape, and each device's first private training images;
3. :func:`load_model` - the shipped checkpoint (its sha256 checked), or a fresh training run;
4. :func:`evaluate` - accuracy on the public test split (overall, by style, by class) and on
   each device's private test split, each with a 95 % interval;
5. the cross-device check of :mod:`vitprune_lite.experiments.device_specificity`.

:class:`Result` gathers what the notebook reports and writes ``00_base_model.json``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import InvalidValueError
from ..data import DEFAULT_BENCHMARK
from . import _params

__all__ = ["Params", "PRESETS", "Result", "SCHEMA_VERSION", "load_benchmark", "galleries", "load_model",
           "evaluate", "cross_device", "wilson_interval", "plot_accuracy"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Params:
    """What notebook 00 runs; the defaults are the full run.

    Attributes:
        benchmark: ``"v1"`` or ``"v2"``.
        seed: benchmark seed (the shipped checkpoints were trained on seed 0).
        retrain: train the base model here instead of loading the shipped checkpoint.
        train_epochs: epochs when retraining (0: the benchmark's recipe).
        public: public split sizes (empty: the benchmark's own; smaller for quick runs).
        device_images: private train/test images per device (0: the benchmark's own).
        threads: torch CPU threads.
        cross_device: preset of :mod:`~vitprune_lite.experiments.device_specificity` for the
            cross-device check (``""``: skip it). Its committed result is read when it matches.
        cross_device_rerun: run the cross-device check even when a matching result is stored.
    """

    benchmark: str = DEFAULT_BENCHMARK
    seed: int = 0
    retrain: bool = False
    train_epochs: int = 0
    public: tuple[tuple[str, int], ...] = ()
    device_images: int = 0
    threads: int = 2
    cross_device: str = "lab"
    cross_device_rerun: bool = False

    def __post_init__(self) -> None:
        _params.check_benchmark(self)
        _params.check_ints(self, (("seed", 0), ("train_epochs", 0), ("device_images", 0), ("threads", 1)))
        for name in ("retrain", "cross_device_rerun"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidValueError(f"Params.{name} = {getattr(self, name)!r}: accepted True or False")
        from . import device_specificity

        if self.cross_device and self.cross_device not in device_specificity.PRESETS:
            raise InvalidValueError(f"Params.cross_device = {self.cross_device!r}: accepted '' (skip) or one of "
                                    f"{sorted(device_specificity.PRESETS)}")
        splits = dict(self.public)
        if self.public and (set(splits) != {"train", "val", "test"} or min(splits.values()) < 1):
            raise InvalidValueError(f"Params.public = {self.public!r}: accepted () or sizes >= 1 for exactly "
                                    "train, val and test")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Params":
        """A named preset (:data:`PRESETS`), with ``overrides`` on top."""
        return _params.preset(cls, PRESETS, name, overrides)


#: ``full``: the defaults; ``lab``: the same generator at a quarter of the public test images and
#: 300 test images per device (the intervals widen; the cross-device check is read from its
#: committed result); ``smoke``: a small benchmark from the same generator and the cross-device
#: check at its smoke sizes, run here, for the tests.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "extended": {},  # the full run: nothing here is cut short
    "lab": {"public": (("train", 2000), ("val", 500), ("test", 1000)), "device_images": 300},
    "smoke": {"public": (("train", 480), ("val", 96), ("test", 192)), "device_images": 48, "threads": 1,
              "cross_device": "smoke"},
}


def load_benchmark(params: Params):
    """The benchmark of ``params`` (generated once, then read from the cache)."""
    from .. import data

    module = data.benchmark_module(params.benchmark)
    devices = module.DEVICES
    if params.device_images:
        devices = [data.DeviceSpec(d.name, d.classes, d.style_mix, n_train=params.device_images,
                                   n_test=params.device_images) for d in devices]
    return module.load_benchmark(params.seed, public=dict(params.public) or None, devices=devices)


def galleries(params: Params, bench, per_device: int = 10) -> dict[str, dict[str, Any]]:
    """Example images, each ``{"images": uint8 [N, H, W, 3], "ncols", "titles", "row_labels"}``.

    ``classes``: every class in the clean style, one row per shape family (v2) or one row (v1);
    ``styles``: every style on each shape (solid fill in v2); ``devices``: each device's first
    ``per_device`` private training images.
    """
    from .. import data

    module = data.benchmark_module(params.benchmark)
    rng = np.random.default_rng(params.seed)
    n_cls, n_sty = len(module.CLASSES), len(module.STYLES)
    if params.benchmark == "v2":
        rows, ncols = module.FAMILIES, len(module.FILLS)
        class_titles = [c.split("/")[1] if i < ncols else "" for i, c in enumerate(module.CLASSES)]
        shapes = np.arange(0, n_cls, len(module.FILLS))  # each family, solid
    else:
        rows, ncols = None, n_cls
        class_titles = list(module.CLASSES)
        shapes = np.arange(n_cls)
    out = {"classes": {"images": module.render(np.arange(n_cls), np.zeros(n_cls, int), rng), "ncols": ncols,
                       "titles": class_titles, "row_labels": rows}}
    labels, styles = np.repeat(shapes, n_sty), np.tile(np.arange(n_sty), len(shapes))
    out["styles"] = {"images": module.render(labels, styles, rng), "ncols": n_sty,
                     "titles": [module.STYLES[s] if k < n_sty else "" for k, s in enumerate(styles)],
                     "row_labels": [module.CLASSES[c].split("/")[0] for c in shapes]}
    out["devices"] = {"images": np.concatenate([bench.devices[d]["train"].images[:per_device] for d in bench.specs]),
                      "ncols": per_device, "titles": None, "row_labels": list(bench.specs)}
    return out


def load_model(params: Params, bench, progress: bool = True):
    """``(model, metadata)``: the shipped checkpoint of ``params.benchmark``, or a fresh training run."""
    from .. import models

    if not params.retrain:
        return models.load_base_model(params.benchmark)
    v2 = params.benchmark == "v2"
    tcfg = models.V2_TRAIN if v2 else models.TrainConfig()
    tcfg = dataclasses.replace(tcfg, seed=params.seed, threads=params.threads,
                               **({"epochs": params.train_epochs} if params.train_epochs else {}))
    return models.train_base_model(models.V2_CONFIG if v2 else models.ViTConfig(), tcfg, bench=bench,
                                   progress=progress)


def cross_device(params: Params, bench, model, progress: bool = True):
    """The cross-device check at preset ``params.cross_device`` (``None`` when it is ``""``).

    At ``smoke`` it runs here and writes ``00_cross_device.json`` under the results folder; at other
    presets the committed ``data/benchmarks/device_specificity*.json`` of the benchmark is read when it
    holds a run of the same parameters on the same checkpoint, and otherwise run and written there.

    Returns:
        ``(device_specificity.Result, loaded)`` or ``None``.
    """
    from .. import paths
    from . import device_specificity as ds

    if not params.cross_device:
        return None
    cd = ds.Params.preset(params.cross_device, benchmark=params.benchmark, data_seed=params.seed,
                          threads=params.threads)
    path = (paths.results_dir() / "00_cross_device.json" if params.cross_device == "smoke"
            else ds.default_path(params.benchmark))
    return ds.load_or_run(cd, path, bench=bench, model=model, rerun=params.cross_device_rerun, progress=progress)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95 % for ``z = 1.96``)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(centre - half), float(centre + half))


def _acc(ok: np.ndarray) -> dict[str, float]:
    lo, hi = wilson_interval(int(ok.sum()), int(ok.size))
    return {"acc": float(ok.mean()) if ok.size else float("nan"), "lo": lo, "hi": hi, "n": int(ok.size)}


def evaluate(params: Params, bench, model) -> dict[str, Any]:
    """Per-image accuracy of ``model`` (eval mode: no image sees another), with 95 % Wilson intervals.

    Returns:
        ``{"public_test": {acc, lo, hi, n}, "by_style": {style: ...}, "by_class": {class: ...},
        "devices": {device: ...}}``.
    """
    import torch

    from .. import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        test = bench.public["test"]
        x, y = test.tensors()
        ok = measure.correct(model, x, y).numpy()
        devices = {d: _acc(measure.correct(model, *sp["test"].tensors()).numpy()) for d, sp in bench.devices.items()}
    finally:
        torch.set_num_threads(threads)
    labels = y.numpy()
    return {"public_test": _acc(ok),
            "by_style": {s: _acc(ok[test.styles == i]) for i, s in enumerate(bench.styles)},
            "by_class": {c: _acc(ok[labels == i]) for i, c in enumerate(bench.classes)},
            "devices": devices}


@dataclass
class Result(_params.ResultFile):
    """What notebook 00 reports.

    Attributes:
        params: the run's parameters.
        benchmark: generator version, fingerprint, split sizes and the device table.
        model: parameters, FLOPs, token count, checkpoint sha256, training seconds, fixed-cost share.
        accuracy: :func:`evaluate`'s output.
        val_curve: ``[[step, public val accuracy], ...]`` from training.
        cross_device: the cross-device summary (gap and its interval; the full result is its own file).
        smoke: the parameters differ from the ``full`` preset's (the README then flags the run).
        environment: what it ran on.
        schema: :data:`SCHEMA_VERSION`.
    """

    params: Params
    benchmark: dict[str, Any]
    model: dict[str, Any]
    accuracy: dict[str, Any]
    val_curve: list
    cross_device: Optional[dict[str, Any]] = None
    seconds: float = 0.0
    smoke: bool = False
    environment: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    SCHEMA_VERSION = SCHEMA_VERSION
    PARAMS = Params
    KIND = "notebook 00 result"
    RERUN = "notebook 00"

    @classmethod
    def collect(cls, params: Params, bench, model, meta: dict[str, Any], accuracy: dict[str, Any],
                cross_device=None, seconds: float = 0.0) -> "Result":
        """Assemble the result from the steps' outputs."""
        from .. import measure

        size = bench.public["test"].images.shape[1]
        report = measure.model_report(model, (1, 3, size, size))
        tokens = int(model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 1))
        info = {"params": report["params"], "flops": report["flops"], "tokens": tokens,
                "sha256": meta.get("sha256"), "train_seconds": meta.get("train_seconds"),
                "fixed_cost": meta.get("fixed_cost"), "config": meta.get("model_config")}
        gap = None if cross_device is None else {
            "gap": cross_device.gap, "devices": cross_device.devices, "seeds": list(cross_device.params.seeds),
            "block_param_share": cross_device.sizes["one_size_fits_all"]["block_param_share"],
            "preset_params": asdict(cross_device.params)}
        return cls(params,
                   {"generator_version": bench.version, "fingerprint": bench.fingerprint,
                    "public": {k: len(v) for k, v in bench.public.items()},
                    "devices": {n: {"classes": [bench.classes[c] for c in s.classes], "style_mix": dict(s.style_mix),
                                    "n_train": len(bench.devices[n]["train"]), "n_test": len(bench.devices[n]["test"])}
                                for n, s in bench.specs.items()}},
                   info, accuracy, list(meta.get("val_curve", [])), gap, round(seconds, 1),
                   params != Params.preset("full", benchmark=params.benchmark), measure.environment())


def plot_accuracy(result: Result, val_curve: bool = True):
    """Training curve, public test accuracy by style, private test accuracy by device (95 % intervals)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.6), gridspec_kw={"width_ratios": [1, 1.3, 1.5]})
    curve = np.asarray(result.val_curve, dtype=float)
    if val_curve and curve.size:
        axes[0].plot(np.arange(1, len(curve) + 1), curve[:, 1], marker="o")
    axes[0].set(xlabel="epoch", ylabel="public val top-1", title="training", ylim=(0, 1))
    for ax, part, colour, title in ((axes[1], result.accuracy["by_style"], "tab:blue", "public test, by style"),
                                    (axes[2], result.accuracy["devices"], "tab:green", "private test, by device")):
        names = list(part)
        acc = np.array([part[k]["acc"] for k in names])
        err = np.array([[part[k]["acc"] - part[k]["lo"] for k in names], [part[k]["hi"] - part[k]["acc"] for k in names]])
        err = np.clip(err, 0, None)  # at 0 % or 100 % the interval's end equals the estimate up to rounding
        ax.bar(names, acc, yerr=err, color=colour, capsize=2)
        ax.bar_label(ax.containers[-1], fmt="%.3f", fontsize=7)
        ax.set(ylim=(0, 1.05), title=title)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def run(params: Params = Params(), progress: bool = True) -> Result:
    """Every step in order (the notebook calls them one by one)."""
    t0 = time.perf_counter()
    bench = load_benchmark(params)
    model, meta = load_model(params, bench, progress)
    acc = evaluate(params, bench, model)
    cd = cross_device(params, bench, model, progress)
    return Result.collect(params, bench, model, meta, acc, None if cd is None else cd[0], time.perf_counter() - t0)
