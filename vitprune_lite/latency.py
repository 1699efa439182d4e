"""Latency-workload curves L(n): how long a ViT takes when it runs on n tokens.

Pruning One More Token reads the number of tokens to prune off this curve; on GPUs it is a
staircase, and landing just below a step saves latency a smooth schedule would waste. This
module measures the curve so that noise cannot pass for a step:

- **What is timed**: the whole network with ``n`` tokens (prefix + ``n - 1`` fixed random
  patches kept right after the patch and position embedding, :class:`tokens.SubsetViT`), or one
  block on ``n`` tokens (``part="block<i>"``), for every ``n`` from 2 to the full count.
- **How**: through :func:`measure.measure_latency` (``torch.utils.benchmark``), one call per
  round, so every round visits all token counts once in a fresh shuffled order; a burst of load
  hits a random point of each round instead of a contiguous stretch of the curve. Load that
  lasts a whole round slows every point of it alike; :func:`round_factors` estimates that
  factor per round from all its points and divides it out. Each point's value is the median of
  its corrected round values with a bootstrap confidence interval. Rounds are added only for
  points whose interval is still wider than the target, within a time budget.
  ``order="sequential"`` is the naive protocol (each point's rounds back to back, n descending),
  kept for comparison.
- **Steps**: :func:`detect_steps` tests every boundary between neighbouring token counts for a
  level shift (two local line fits, a z-test on the jump with the noise taken from the largest
  of the fit residuals, the confidence intervals and the curve's robust point-to-point noise,
  Bonferroni-corrected, repeated with the windows moved off the boundary so a lone spike does
  not count), then requires the two neighbours' intervals to be disjoint and the jump to be
  large enough to matter.
  :func:`test_retest` reports a step only if two independent sweeps find it at the same place.
- **Files**: ``data/latency/<device>__<model>__b<batch>.json`` holds the sweeps, their analysis,
  the model's fingerprint and the environment, so curves measured elsewhere (a GPU, an edge
  board) can be dropped in and compared (:func:`find_curves`).
- **Backends**: ``backend="onnxruntime"`` times the same points with ONNX Runtime on the CPU
  (:mod:`vitprune_lite.runtime`: one fixed-shape export per point), in the same rounds; such a
  curve is stored as ``<device>__<model>__b<batch>__onnxruntime.json`` and found only with
  ``find_curves(..., backend="onnxruntime")``.
"""
from __future__ import annotations

import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import measure, paths, tokens
from .errors import InvalidFileError, InvalidValueError

__all__ = [
    "Sweep", "Curve", "sweep", "profile", "bootstrap_median_ci", "detect_steps", "test_retest",
    "analyse", "ripple", "linear_fit", "device_label", "model_fingerprint", "curve_path",
    "curves_dir", "save_curve", "load_curve", "find_curves", "check_curve", "plot_sweep",
    "round_factors", "predict_ms",
]

_ORDERS = ("interleaved", "sequential")
#: Interleaved sweep protocols (:func:`sweep`'s ``protocol``).
PROTOCOLS = ("rounds", "adaptive")
#: Points per mini-round in the ``"adaptive"`` protocol: short enough that a round's load factor
#: follows the machine's load, and at least :func:`round_factors`' ``min_points``.
ROUND_POINTS = 24


# ----------------------------------------------------------------------------- records

@dataclass
class Sweep:
    """One sweep over token counts: per-point median and 95 % bootstrap interval, milliseconds.

    ``samples_ms[i]`` holds point ``n[i]``'s raw round values (the median of the timed blocks of
    one round, per forward of the whole batch) and ``round_ids[i]`` the rounds they came from.
    In an interleaved sweep every round is divided by its load factor ``round_factors[round]``
    (how much slower the machine ran that round than a typical one, estimated from all the
    points it visited) before medians and intervals are taken; a sequential sweep cannot be
    corrected this way (its factors are all 1).
    """

    n: list[int]
    median_ms: list[float]
    ci_low_ms: list[float]
    ci_high_ms: list[float]
    samples_ms: list[list[float]]
    order: str = "interleaved"
    seed: int = 0
    seconds: float = 0.0  # wall time of the sweep, timing overhead included
    load_avg: list[Optional[float]] = field(default_factory=lambda: [None, None])  # 1-min load before, after
    round_ids: Optional[list[list[int]]] = None
    round_factors: Optional[list[float]] = None

    def normalised_samples(self) -> list[list[float]]:
        """``samples_ms`` with each round divided by its load factor (raw if there are none)."""
        if self.round_ids is None or self.round_factors is None:
            return [list(v) for v in self.samples_ms]
        return [[v / self.round_factors[r] for v, r in zip(vals, ids)]
                for vals, ids in zip(self.samples_ms, self.round_ids)]

    def rel_halfwidth(self) -> np.ndarray:
        """Half-width of each point's interval over its median (0.03 = +-3 %)."""
        lo, hi, med = (np.asarray(v, dtype=float) for v in (self.ci_low_ms, self.ci_high_ms, self.median_ms))
        return (hi - lo) / 2 / med

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sweep":
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


@dataclass
class Curve:
    """A latency-workload profile of one model at one batch size on one device.

    Attributes:
        model: model name (timm name, or e.g. ``"base_vit"``); ``part`` is ``"network"`` or
            ``"block<i>"``.
        device: device label (:func:`device_label`), threads included for CPUs.
        fingerprint: :func:`model_fingerprint` of the profiled model.
        sweeps: independent sweeps (two for a test-retest check).
        analysis: :func:`analyse` of the sweeps (steps, agreement, verdict).
        environment: :func:`measure.environment` at the end of profiling.
        backend: what ran the model: ``"eager"`` PyTorch or ``"onnxruntime"``.
    """

    model: str
    device: str
    batch_size: int
    threads: int
    part: str
    fingerprint: dict[str, Any]
    sweeps: list[Sweep]
    analysis: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    backend: str = "eager"

    def pooled(self, n_boot: int = 1000) -> dict[str, np.ndarray]:
        """All sweeps pooled per token count: ``{"n", "median_ms", "ci_low_ms", "ci_high_ms"}``.

        The sweeps' rounds are treated as rounds of one long sweep: :func:`round_factors` puts
        them on a common load level (sweeps run minutes apart rarely see the same load) before
        medians and bootstrap intervals are taken.
        """
        common = sorted(set.intersection(*(set(s.n) for s in self.sweeps)))
        samples: list[list[float]] = [[] for _ in common]
        ids: list[list[int]] = [[] for _ in common]
        offset = 0
        for s in self.sweeps:
            sid = s.round_ids or [[j * 10_000 + r for r in range(len(v))] for j, v in enumerate(s.samples_ms)]
            for i, n in enumerate(common):
                j = s.n.index(n)
                samples[i].extend(s.samples_ms[j])
                ids[i].extend(offset + r for r in sid[j])
            offset += 1 + max(max(r) for r in sid if r)
        f = round_factors(samples, ids)
        norm = [[v / f[r] for v, r in zip(vals, rid)] for vals, rid in zip(samples, ids)]
        rng = np.random.default_rng(0)
        cis = np.array([bootstrap_median_ci(p, n_boot=n_boot, rng=rng) for p in norm])
        return {"n": np.array(common), "median_ms": np.array([np.median(p) for p in norm]),
                "ci_low_ms": cis[:, 0], "ci_high_ms": cis[:, 1]}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (sweeps as dicts)."""
        d = asdict(self)
        d["sweeps"] = [s.to_dict() for s in self.sweeps]
        return {"format": "vitprune_lite.latency_curve/1", **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Curve":
        """Inverse of :meth:`to_dict`."""
        d = {k: v for k, v in d.items() if k != "format"}
        d["sweeps"] = [Sweep.from_dict(s) for s in d["sweeps"]]
        return cls(**d)


# ----------------------------------------------------------------------------- statistics

def bootstrap_median_ci(samples: Sequence[float], level: float = 0.95, n_boot: int = 1000,
                        rng: Optional[np.random.Generator] = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``samples`` (one value: a zero-width interval)."""
    x = np.asarray(samples, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("samples must be a non-empty 1-D sequence")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = rng if rng is not None else np.random.default_rng(0)
    draws = np.sort(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)
    k = x.size
    meds = draws[:, k // 2] if k % 2 else (draws[:, k // 2 - 1] + draws[:, k // 2]) / 2
    a = (1 - level) / 2
    return float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))


def _polyfit_resid(n: np.ndarray, y: np.ndarray, deg: int) -> np.ndarray:
    return y - np.polyval(np.polyfit(n, y, deg), n)


def ripple(n: Sequence[int], median_ms: Sequence[float]) -> dict[str, float]:
    """Deviation of a curve from its quadratic trend, relative to the trend.

    Returns:
        ``{"median_abs", "p95_abs", "max_abs"}``: fractions (0.03 = 3 %).
    """
    n, y = np.asarray(n, dtype=float), np.asarray(median_ms, dtype=float)
    trend = np.polyval(np.polyfit(n, y, 2), n)
    rel = np.abs(y - trend) / trend
    return {"median_abs": float(np.median(rel)), "p95_abs": float(np.quantile(rel, 0.95)),
            "max_abs": float(rel.max())}


def linear_fit(n: Sequence[int], median_ms: Sequence[float]) -> dict[str, float]:
    """Least-squares ``L(n) = intercept + slope * n`` and its R^2 (ms, ms per token)."""
    n, y = np.asarray(n, dtype=float), np.asarray(median_ms, dtype=float)
    slope, intercept = np.polyfit(n, y, 1)
    resid = y - (intercept + slope * n)
    r2 = 1 - resid.var() / y.var() if y.var() > 0 else 1.0
    return {"intercept_ms": float(intercept), "slope_ms_per_token": float(slope), "r2": float(r2)}


def _line_predict(n: np.ndarray, y: np.ndarray, at: float) -> tuple[float, float, np.ndarray]:
    """OLS line through (n, y): prediction at ``at``, residual sum of squares, prediction weights."""
    dn = n - n.mean()
    weights = 1.0 / len(n) + (at - n.mean()) * dn / (dn @ dn)  # prediction = weights @ y
    slope = dn @ y / (dn @ dn)
    rss = float(((y - y.mean() - slope * dn) ** 2).sum())
    return float(weights @ y), rss, weights


def _noise_rel(y: np.ndarray) -> float:
    """Robust point-to-point noise of a curve, relative to its level.

    Second differences cancel any locally linear trend; their median absolute deviation ignores
    the few large ones that steps or spikes produce. For i.i.d. noise of relative size s, a
    second difference has standard deviation sqrt(6) * s.
    """
    d2 = (y[2:] - 2 * y[1:-1] + y[:-2]) / y[1:-1]
    mad = np.median(np.abs(d2 - np.median(d2)))
    return float(1.4826 * mad / math.sqrt(6))


def _jump(n: np.ndarray, y: np.ndarray, se_point: np.ndarray, noise_rel: float,
          left: slice, right: slice, at: float) -> tuple[float, float, float]:
    """Jump between two local line fits at ``at``, its standard error, and the level before it."""
    yl, rss_l, wl = _line_predict(n[left], y[left], at)
    yr, rss_r, wr = _line_predict(n[right], y[right], at)
    dof = max(1, len(n[left]) + len(n[right]) - 4)
    se_fit = math.sqrt((rss_l + rss_r) / dof * ((wl ** 2).sum() + (wr ** 2).sum()))
    se_ci = math.sqrt(((wl * se_point[left]) ** 2).sum() + ((wr * se_point[right]) ** 2).sum())
    se_glob = noise_rel * math.sqrt(((wl * y[left]) ** 2).sum() + ((wr * y[right]) ** 2).sum())
    # The largest of three noise estimates: a quiet stretch of one sweep must not make a
    # ripple look significant.
    return yr - yl, max(se_fit, se_ci, se_glob, 1e-12 * max(abs(yl), 1.0)), yl


def detect_steps(n: Sequence[int], median_ms: Sequence[float], ci_low_ms: Sequence[float],
                 ci_high_ms: Sequence[float], *, window: int = 6, alpha: float = 0.01,
                 min_rel: float = 0.02) -> list[dict[str, Any]]:
    """Level shifts ("steps") in a latency curve, tested against its noise.

    At each boundary between neighbouring token counts, a line is fitted to the ``window``
    points on each side and the jump between the two lines at the boundary is z-tested. Its
    standard error is the largest of those implied by (a) the two fits' residuals, (b) the
    points' own confidence intervals and (c) the whole curve's robust point-to-point noise. A
    step must pass at family-wise level ``alpha`` (Bonferroni over all boundaries) twice: with
    the windows next to the boundary and with both windows moved one point outward (so a
    single slow point, a spike, is not a step); its neighbours' intervals must be disjoint; and
    the jump must be at least ``min_rel`` of the latency before it. Of steps closer than
    ``window``, the strongest is kept.

    Args:
        n: token counts, increasing; median_ms, ci_low_ms, ci_high_ms: aligned per point (ms).
        window: points per side in each local fit, >= 3.
        alpha: family-wise false-step rate, in (0, 1).
        min_rel: smallest jump reported, relative to the latency before it.

    Returns:
        One dict per step, by position: ``n_before``, ``n_after``, ``jump_ms``, ``rel``
        (jump / latency before), ``z`` (the smaller z of the two window placements) and ``p``
        (its Bonferroni-adjusted p-value).
    """
    n_arr = np.asarray(n, dtype=float)
    y, lo, hi = (np.asarray(v, dtype=float) for v in (median_ms, ci_low_ms, ci_high_ms))
    if not (n_arr.shape == y.shape == lo.shape == hi.shape) or n_arr.ndim != 1:
        raise ValueError("n, median, ci_low and ci_high must be 1-D and equally long")
    for name, v in (("median_ms", y), ("ci_low_ms", lo), ("ci_high_ms", hi)):
        bad = ~(np.isfinite(v) & (v > 0))
        if bad.any():
            k = int(np.argmax(bad))
            raise InvalidValueError(f"{name} at n={n_arr[k]:g} is {v[k]}; latencies must be finite and > 0 ms")
    if window < 3 or not 0 < alpha < 1 or min_rel < 0:
        raise ValueError(f"need window >= 3, 0 < alpha < 1, min_rel >= 0; got {window}, {alpha}, {min_rel}")
    if np.any(np.diff(n_arr) <= 0):
        raise ValueError("n must be strictly increasing")
    first, last = window, len(n_arr) - window - 2  # room for the outward-shifted windows
    m = last - first + 1
    if m < 1:
        return []
    se_point = (hi - lo) / (2 * 1.96)  # 95 % interval -> standard error
    noise = _noise_rel(y)
    found = []
    for i in range(first, last + 1):
        at = (n_arr[i] + n_arr[i + 1]) / 2
        zs = []
        for shift in (0, 1):
            left = slice(i - window + 1 - shift, i + 1 - shift)
            right = slice(i + 1 + shift, i + 1 + window + shift)
            jump, se, base = _jump(n_arr, y, se_point, noise, left, right, at)
            if shift == 0:
                jump0, base0 = jump, base
            zs.append(jump / se)
        same_sign = np.sign(zs[0]) == np.sign(zs[1])
        z = min(zs, key=abs)
        p = min(1.0, math.erfc(abs(z) / math.sqrt(2)) * m)  # two-sided normal, Bonferroni
        disjoint = lo[i + 1] > hi[i] if jump0 > 0 else hi[i + 1] < lo[i]
        rel = jump0 / base0 if base0 > 0 else float("inf")
        if same_sign and p < alpha and disjoint and abs(rel) >= min_rel:
            found.append({"n_before": int(n_arr[i]), "n_after": int(n_arr[i + 1]), "jump_ms": float(jump0),
                          "rel": float(rel), "z": float(z), "p": float(p)})
    kept: list[dict[str, Any]] = []
    for s in sorted(found, key=lambda s: -abs(s["z"])):
        if all(abs(s["n_after"] - k["n_after"]) >= window for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s["n_after"])


def _steps_of(s: Sweep, **kw) -> list[dict[str, Any]]:
    return detect_steps(s.n, s.median_ms, s.ci_low_ms, s.ci_high_ms, **kw)


def test_retest(a: Sweep, b: Sweep, *, tol: int = 1, **detect_kw) -> dict[str, Any]:
    """Do two independent sweeps agree? Steps count only if both find them.

    Args:
        a, b: two sweeps of the same model, batch and device.
        tol: how many token counts apart two sweeps' steps may be and still match.
        detect_kw: passed to :func:`detect_steps`.

    Returns:
        ``steps_a``, ``steps_b`` (each sweep's own), ``reliable`` (steps of ``a`` matched in ``b``
        with the same sign), ``residual_corr`` (correlation of the two curves after removing
        each one's quadratic trend: near 1 if the ripple repeats, near 0 if it is noise),
        ``rel_diff_median`` / ``rel_diff_max`` (point-wise |a - b| over their mean),
        ``level_ratio`` (median a / b) and ``shape_diff_median`` / ``shape_diff_max`` (the same
        after scaling b by ``level_ratio``: disagreement in shape, not in overall load).
    """
    common = sorted(set(a.n) & set(b.n))
    if len(common) < 3:
        raise ValueError("the sweeps share fewer than 3 token counts; profile the same n values")
    ya = np.array([a.median_ms[a.n.index(n)] for n in common])
    yb = np.array([b.median_ms[b.n.index(n)] for n in common])
    nn = np.asarray(common, dtype=float)
    ra, rb = _polyfit_resid(nn, ya, 2), _polyfit_resid(nn, yb, 2)
    corr = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")
    diff = np.abs(ya - yb) / ((ya + yb) / 2)
    level = float(np.median(ya / yb))  # sweeps minutes apart may run at different load levels
    shape = np.abs(ya - level * yb) / ((ya + level * yb) / 2)
    sa, sb = _steps_of(a, **detect_kw), _steps_of(b, **detect_kw)
    reliable = [s for s in sa if any(abs(s["n_after"] - t["n_after"]) <= tol
                                     and np.sign(s["jump_ms"]) == np.sign(t["jump_ms"]) for t in sb)]
    return {"steps_a": sa, "steps_b": sb, "reliable": reliable,
            "residual_corr": None if math.isnan(corr) else corr,
            "rel_diff_median": float(np.median(diff)), "rel_diff_max": float(diff.max()),
            "level_ratio": level, "shape_diff_median": float(np.median(shape)),
            "shape_diff_max": float(shape.max()), "tol": tol}


def analyse(sweeps: Sequence[Sweep], **detect_kw) -> dict[str, Any]:
    """Steps, test-retest agreement, ripple, linear fit and a one-line verdict for a profile.

    With one sweep no step can be confirmed: the verdict says so. With two or more, the first
    two are compared (:func:`test_retest`).
    """
    if not sweeps:
        raise ValueError("need at least one sweep")
    first = sweeps[0]
    out: dict[str, Any] = {
        "ripple": [ripple(s.n, s.median_ms) for s in sweeps],
        "linear_fit": [linear_fit(s.n, s.median_ms) for s in sweeps],
        "rel_halfwidth_median": [float(np.median(s.rel_halfwidth())) for s in sweeps],
        "rel_halfwidth_max": [float(np.max(s.rel_halfwidth())) for s in sweeps],
        "fixed_cost_fraction": [float(s.median_ms[int(np.argmin(s.n))] / s.median_ms[int(np.argmax(s.n))])
                                for s in sweeps],
        "detect": {"window": 6, "alpha": 0.01, "min_rel": 0.02, **detect_kw},
    }
    if len(sweeps) < 2:
        steps = _steps_of(first, **detect_kw)
        out.update(steps_per_sweep=[steps], reliable_steps=[], retest=None,
                   verdict=f"one sweep only: {len(steps)} candidate step(s), none confirmed "
                           "(a second, independent sweep is needed)")
        return out
    rt = test_retest(sweeps[0], sweeps[1], **detect_kw)
    out.update(steps_per_sweep=[rt["steps_a"], rt["steps_b"]], reliable_steps=rt["reliable"],
               retest={k: v for k, v in rt.items() if k not in ("steps_a", "steps_b", "reliable")})
    na, nb = len(rt["steps_a"]), len(rt["steps_b"])
    rip = max(r["p95_abs"] for r in out["ripple"][:2])
    if rt["reliable"]:
        where = ", ".join(f"{s['n_before']}->{s['n_after']} ({100 * s['rel']:+.1f} %)" for s in rt["reliable"])
        out["verdict"] = f"{len(rt['reliable'])} step(s) found by both sweeps: {where}"
    elif na or nb:
        out["verdict"] = (f"no reliable steps: the sweeps found {na} and {nb} candidate step(s) "
                          f"but none at the same place; ripple up to {100 * rip:.1f} % (p95)")
    else:
        out["verdict"] = (f"no steps: a smooth curve in both sweeps; ripple up to {100 * rip:.1f} % (p95), "
                          f"residual correlation between sweeps {rt['residual_corr']:.2f}"
                          if rt["residual_corr"] is not None else "no steps: a smooth curve in both sweeps")
    return out


# ----------------------------------------------------------------------------- measuring

def fixed_cost_share(model: nn.Module, *, threads: int = 1, batch_size: int = 1, **sweep_kw) -> dict[str, float]:
    """How much of a forward pass does not shrink with the token count: ``L(2) / L(N)``.

    A token method can save at most ``1 - share`` of the latency, so a model whose share is high
    (small width, few tokens, eager per-op overhead) cannot show what token pruning is for.

    Args:
        model: an unpatched timm ``VisionTransformer`` (random weights are fine).
        threads, batch_size: as in :func:`sweep`; ``sweep_kw`` goes to :func:`sweep` too.

    Returns:
        ``{"share", "L2_ms", "LN_ms", "tokens"}`` (milliseconds, medians of one interleaved sweep).
    """
    n_full = tokens.token_count(model)
    s = sweep(model, n_values=[2, n_full], threads=threads, batch_size=batch_size, **sweep_kw)
    return {"share": s.median_ms[0] / s.median_ms[-1], "L2_ms": s.median_ms[0], "LN_ms": s.median_ms[-1],
            "tokens": n_full}


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a curve must match to be used for a model: token count, widths, depth, parameters."""
    n = tokens.token_count(model)
    return {"tokens": n, "prefix": int(model.num_prefix_tokens), "embed_dim": int(model.embed_dim),
            "depth": len(model.blocks), "num_heads": int(model.blocks[0].attn.num_heads),
            "img_size": list(model.patch_embed.img_size), "params": measure.count_params(model)}


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def device_label(device: str | torch.device = "cpu", threads: Optional[int] = None) -> str:
    """A file-name-safe device name: ``cpu2t-intel-xeon-2-50ghz`` (threads in it), ``nvidia-h200``."""
    device = measure.check_device(device)
    if device.type == "cuda":
        return _slug(torch.cuda.get_device_name(device))
    cpu = measure.environment()["cpu_model"] or "unknown"
    return f"{device.type}{threads or torch.get_num_threads()}t-{_slug(cpu)}"


def _parse_part(part: str, depth: int) -> Optional[int]:
    if part == "network":
        return None
    m = re.fullmatch(r"block(\d+)", part) if isinstance(part, str) else None
    if not m or not int(m.group(1)) < depth:
        raise ValueError(f"part must be 'network' or 'block<i>' with i in 0..{depth - 1}, got {part!r}")
    return int(m.group(1))


def _check_n_values(model: nn.Module, n_values: Optional[Iterable[int]]) -> list[int]:
    total, prefix = tokens.token_count(model), int(model.num_prefix_tokens)
    if n_values is None:
        return list(range(prefix + 1, total + 1))
    ns = sorted({int(n) for n in n_values})
    if not ns or ns[0] < prefix + 1 or ns[-1] > total:
        raise ValueError(f"n values must lie in {prefix + 1}..{total} (tokens incl. {prefix} prefix) "
                         f"for this model, got {list(n_values)}")
    return ns


def _timed(model: nn.Module, ns: list[int], part: str, batch_size: int, seed: int,
           device: torch.device) -> tuple[dict[str, nn.Module], dict[str, Tensor]]:
    """name -> module timed at each n, and name -> its input."""
    block = _parse_part(part, len(model.blocks))
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    if block is None:
        img = model.patch_embed.img_size
        x = torch.randn(batch_size, 3, *img, generator=g).to(device=device, dtype=dtype)
        mods = {f"n={n}": tokens.SubsetViT(model, n, seed=seed).to(device) for n in ns}
        return mods, dict.fromkeys(mods, x)
    x = torch.randn(batch_size, max(ns), model.embed_dim, generator=g).to(device=device, dtype=dtype)
    mods = {f"n={n}": model.blocks[block] for n in ns}
    return mods, {f"n={n}": x[:, :n].contiguous() for n in ns}


def round_factors(samples: Sequence[Sequence[float]], round_ids: Sequence[Sequence[int]],
                  min_points: int = 10, iterations: int = 2) -> dict[int, float]:
    """Per-round load factors of an interleaved sweep (a two-way median polish, multiplicative).

    A round's factor is the median, over the points it timed, of value / that point's median;
    the factors are then scaled to a median of 1, so corrected values stay at the level of a
    typical round. Rounds that timed fewer than ``min_points`` points keep factor 1: a factor
    read off a handful of points would erase their own noise.

    Args:
        samples: per point, its round values.
        round_ids: per point, the round of each value.

    Returns:
        round id -> factor; divide a value by its round's factor.
    """
    vals = [np.asarray(v, dtype=float) for v in samples]
    ids = [np.asarray(r, dtype=int) for r in round_ids]
    factors = {int(r): 1.0 for rr in ids for r in rr}
    for _ in range(iterations):
        ratios: dict[int, list[float]] = {r: [] for r in factors}
        for v, rr in zip(vals, ids):
            corrected = v / np.array([factors[int(r)] for r in rr])
            ref = np.median(corrected)
            for r, c in zip(rr, corrected):
                ratios[int(r)].append(c / ref)
        full = [r for r, x in ratios.items() if len(x) >= min_points]
        for r in full:
            factors[r] *= float(np.median(ratios[r]))
        if full:
            mid = float(np.median([factors[r] for r in full]))
            for r in full:
                factors[r] /= mid
    return factors


def _load() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def sweep(model: nn.Module, *, n_values: Optional[Iterable[int]] = None, batch_size: int = 1,
          threads: int = 2, part: str = "network", order: str = "interleaved", rounds: int = 5,
          max_rounds: int = 15, target_rel_ci: float = 0.03, time_budget_s: Optional[float] = None,
          min_run_time: float = 0.005, seed: int = 0, device: str | torch.device = "cpu",
          progress: bool = False, backend: str = "eager", export_shapes: str = "static",
          protocol: str = "rounds") -> Sweep:
    """Measure L(n) once over all token counts.

    Interleaved (default): round after round, every point is timed once
    (:func:`measure.measure_latency` with a fresh shuffle seed); each round's load factor
    (:func:`round_factors`) is divided out. After ``rounds`` rounds, only points whose interval
    half-width exceeds ``target_rel_ci`` of their median get more rounds, up to ``max_rounds`` or
    until ``time_budget_s`` would be exceeded.
    Sequential: n descending, each point's ``rounds`` rounds back to back (the naive protocol).

    ``protocol="adaptive"`` (interleaved only) changes three things, each to spend the time where
    the intervals are wide: a sample is one timed call with nothing untimed before it
    (``measure_latency``'s ``calls=1``; ``min_run_time`` is not used); each pass over the points
    is cut into shuffled mini-rounds of :data:`ROUND_POINTS` points, each with its own load
    factor; a point stops when the interval the sweep reports for it (the same bootstrap)
    meets ``target_rel_ci``; and when the budget cannot pay for another pass over every point
    still above it, it times those with the widest intervals that it can pay for. On
    deit_small at batch 1 (2 threads, AMD EPYC, 196 token counts, budget 170 s, two sweeps
    each) ``"rounds"`` reached a median half-width of 8.6-9.5 % in 8-9 rounds, ``"adaptive"``
    2.8-2.9 % in 140-169 s.

    Args:
        model: an unpatched timm ``VisionTransformer`` (random weights are fine), on ``device``.
        n_values: token counts (prefix included); default every n from prefix + 1 to N.
        batch_size: images per forward, >= 1.
        threads: torch intra-op threads while timed.
        part: ``"network"`` (whole model) or ``"block<i>"`` (block i alone on n tokens).
        order: ``"interleaved"`` or ``"sequential"``.
        rounds: rounds every point gets, >= 2.
        max_rounds: rounds a point may get at most (interleaved), >= rounds.
        target_rel_ci: wanted half-width of the 95 % interval over the median (0.03 = +-3 %).
        time_budget_s: stop adding rounds when the next would end past this (seconds from start).
        min_run_time: seconds per point per round (``Timer.blocked_autorange``).
        seed: seeds the kept patches, the inputs and the round shuffles.
        device: where the model lives.
        progress: print one line per round.
        backend: ``"eager"`` or ``"onnxruntime"`` (CPU; see :mod:`vitprune_lite.runtime`).
        export_shapes: onnxruntime only: ``"static"`` (one fixed-shape export per point) or
            ``"dynamic"`` (one export for all points), see :func:`runtime.curve_models`.
        protocol: ``"rounds"`` (default) or ``"adaptive"`` (see above).

    Returns:
        A :class:`Sweep` (n ascending).
    """
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(rounds, int) or rounds < 2 or not isinstance(max_rounds, int) or max_rounds < rounds:
        raise ValueError(f"need rounds >= 2 and max_rounds >= rounds, got {rounds}, {max_rounds}")
    if not 0 < target_rel_ci < 1:
        raise ValueError(f"target_rel_ci must be in (0, 1), got {target_rel_ci}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "adaptive" and order != "interleaved":
        raise ValueError("protocol='adaptive' applies to order='interleaved'")
    adaptive = protocol == "adaptive"
    if tokens.is_patched(model):
        raise ValueError("profile the unpatched model: call tokens.restore(model) first")
    ns = _check_n_values(model, n_values)
    device = measure.check_device(device)
    if backend != "eager":
        from . import runtime

        runtime.check_backend(backend)
        if device.type != "cpu":
            raise ValueError(f"backend {backend!r} runs on the CPU, got device {device}")
        mods, inputs = runtime.curve_models(model, ns, _parse_part(part, len(model.blocks)), batch_size, seed,
                                            shapes=export_shapes)
    else:
        mods, inputs = _timed(model, ns, part, batch_size, seed, device)
    names = list(mods)
    samples: dict[str, list[float]] = {k: [] for k in names}
    rounds_of: dict[str, list[int]] = {k: [] for k in names}
    load0, t0 = _load(), time.perf_counter()

    def run(subset: list[str], r: int, k: int = 1) -> None:
        res = measure.measure_latency({k_: mods[k_] for k_ in subset}, {k_: inputs[k_] for k_ in subset},
                                      threads=threads, rounds=k, min_run_time=min_run_time,
                                      seed=seed * 100_003 + r, warmup=0, device=device, backend=backend,
                                      calls=1 if adaptive else None)
        for name, lat in res.items():
            samples[name].extend(lat.round_medians_ms)
            rounds_of[name].extend(range(r, r + len(lat.round_medians_ms)))

    def corrected() -> dict[str, list[float]]:
        if order == "sequential":
            return samples
        f = round_factors([samples[k] for k in names], [rounds_of[k] for k in names])
        return {k: [v / f[i] for v, i in zip(samples[k], rounds_of[k])] for k in names}

    # Untimed warm-up at both ends: first-call allocations must not land in round 1.
    with torch.inference_mode():
        for name in (names[0], names[-1]):
            if backend == "eager":
                mods[name](inputs[name])
            else:
                mods[name].runner(inputs[name], threads)()
    if order == "sequential":
        for i, name in enumerate(reversed(names)):
            run([name], i * rounds, rounds)  # round ids unique per point: nothing is shared
    else:
        active, r, rid = names, 0, 0  # passes over the active points; round ids (mini-rounds)
        shuffle = np.random.default_rng(seed)
        while active:
            t_round = time.perf_counter()
            for chunk in _mini_rounds(active, shuffle) if adaptive else [active]:
                run(chunk, rid)
                rid += 1
            per_point = (time.perf_counter() - t_round) / len(active)
            r += 1
            if progress:
                print(f"round {r}: {len(active)} points, {time.perf_counter() - t0:.0f} s", flush=True)
            if r < rounds:
                continue
            if r >= max_rounds:
                break
            norm = corrected()
            hw = {k: _rel_hw(norm[k], (seed, i) if adaptive else None)
                  for i, k in enumerate(names) if len(samples[k]) == r}
            active = [k for k in names if hw.get(k, 0.0) > target_rel_ci]
            if time_budget_s is None:
                continue
            left = time_budget_s - (time.perf_counter() - t0)
            if per_point * len(active) > left:
                fit = int(left / per_point) if adaptive else 0
                if fit < ROUND_POINTS:
                    break
                active = sorted(active, key=lambda k: -hw[k])[:fit]

    rng = np.random.default_rng(seed)
    norm = corrected()
    cis = [bootstrap_median_ci(norm[k], rng=np.random.default_rng((seed, i)) if adaptive else rng)
           for i, k in enumerate(names)]
    factors = None
    if order != "sequential":
        fd = round_factors([samples[k] for k in names], [rounds_of[k] for k in names])
        factors = [fd[i] for i in range(len(fd))]  # interleaved round ids run 0, 1, ...
    return Sweep(n=ns, median_ms=[float(np.median(norm[k])) for k in names],
                 ci_low_ms=[c[0] for c in cis], ci_high_ms=[c[1] for c in cis],
                 samples_ms=[samples[k] for k in names], order=order, seed=seed,
                 seconds=time.perf_counter() - t0, load_avg=[load0, _load()],
                 round_ids=[rounds_of[k] for k in names], round_factors=factors)


def _mini_rounds(active: list[str], rng: np.random.Generator) -> list[list[str]]:
    """``active`` shuffled and cut into rounds of :data:`ROUND_POINTS` (a short tail joins the last)."""
    order = [active[i] for i in rng.permutation(len(active))]
    chunks = [order[i:i + ROUND_POINTS] for i in range(0, len(order), ROUND_POINTS)]
    if len(chunks) > 1 and len(chunks[-1]) < ROUND_POINTS // 2:
        chunks[-2].extend(chunks.pop())
    return chunks


def _rel_hw(samples: list[float], point_seed: Optional[tuple[int, int]] = None) -> float:
    """Interval half-width over the median. With ``point_seed`` (the adaptive protocol): the very
    interval the sweep reports for that point, so a point stops exactly when its reported
    interval meets the target; without it a quicker estimate (400 resamples)."""
    if point_seed is None:
        lo, hi = bootstrap_median_ci(samples, n_boot=400, rng=np.random.default_rng(len(samples)))
    else:
        lo, hi = bootstrap_median_ci(samples, rng=np.random.default_rng(point_seed))
    return (hi - lo) / 2 / float(np.median(samples))


def profile(model: nn.Module, model_name: str, *, sweeps: int = 2, batch_size: int = 1,
            threads: int = 2, part: str = "network", seed: int = 0,
            device: str | torch.device = "cpu", detect: Optional[dict[str, Any]] = None,
            backend: str = "eager", **sweep_kw) -> Curve:
    """Profile a model: ``sweeps`` independent sweeps (seeds ``seed``, ``seed + 1``, ...) and their analysis.

    Args:
        model: an unpatched timm ``VisionTransformer`` on ``device``.
        model_name: name stored with the curve and used in its file name (no ``__``).
        sweeps: independent sweeps; 2 or more are needed before any step is reported.
        batch_size, threads, part, device: see :func:`sweep`.
        seed: first sweep's seed.
        detect: keyword arguments for :func:`detect_steps`.
        backend: ``"eager"`` or ``"onnxruntime"``; stored in the curve and its file name.
        sweep_kw: passed to :func:`sweep` (``n_values``, ``rounds``, ``time_budget_s``, ...).

    Returns:
        A :class:`Curve` with ``analysis`` and ``environment`` filled in.
    """
    _check_name(model_name, "model_name")
    if not isinstance(sweeps, int) or sweeps < 1:
        raise ValueError(f"sweeps must be an int >= 1, got {sweeps!r}")
    done = [sweep(model, batch_size=batch_size, threads=threads, part=part, seed=seed + i,
                  device=device, backend=backend, **sweep_kw) for i in range(sweeps)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # so the recorded environment shows the timed thread count
    try:
        env = measure.environment()
    finally:
        torch.set_num_threads(previous)
    return Curve(model=model_name, device=device_label(device, threads), batch_size=batch_size,
                 threads=threads, part=part, fingerprint=model_fingerprint(model), sweeps=done,
                 analysis=analyse(done, **(detect or {})), environment=env, backend=backend)


# ----------------------------------------------------------------------------- files

def curves_dir() -> Path:
    """Where curves are written: ``data/latency/`` under the output root (``$VITPRUNE_OUT``)."""
    return paths.out_root() / "data" / "latency"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_PART = re.compile(r"network|block\d+")
_FILE = re.compile(r"(?P<device>[A-Za-z0-9][A-Za-z0-9_-]*?)__(?P<model>[A-Za-z0-9][A-Za-z0-9_-]*?)"
                   r"(?:\.(?P<part>block\d+))?__b(?P<batch>\d+)(?:__(?P<backend>[a-z]+))?")


def _check_name(value: Any, what: str) -> str:
    """A model or device name that is safe as part of a file name (no path, no ``__``)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or "__" in value or value.endswith("_"):
        raise InvalidValueError(f"{what} {value!r} is not accepted: use letters, digits, '-' and "
                                f"single '_' (no '/', '.', '..' or '__'), e.g. 'deit_small_patch16_224'")
    return value


def curve_path(device: str, model: str, batch_size: int, part: str = "network",
               directory: Optional[Path] = None, backend: str = "eager") -> Path:
    """``<directory>/<device>__<model>__b<batch>.json``; a block curve's model is ``<model>.block<i>``.

    A curve of another backend than eager PyTorch ends in ``__<backend>.json``.

    Raises:
        InvalidValueError: a name that could leave ``directory`` or break file-name parsing.
    """
    _check_name(device, "curve device name")
    _check_name(model, "curve model name")
    if not isinstance(part, str) or not _PART.fullmatch(part):
        raise InvalidValueError(f"curve part {part!r}: accepted 'network' or 'block<i>'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidValueError(f"curve batch_size {batch_size!r}: accepted an integer >= 1")
    if not isinstance(backend, str) or not re.fullmatch(r"[a-z]+", backend):
        raise InvalidValueError(f"curve backend {backend!r}: accepted a lower-case name such as 'eager'")
    name = model if part == "network" else f"{model}.{part}"
    tail = "" if backend == "eager" else f"__{backend}"
    return Path(directory or curves_dir()) / f"{device}__{name}__b{int(batch_size)}{tail}.json"


def save_curve(curve: Curve, directory: Optional[Path] = None) -> Path:
    """Write a curve as JSON (atomically) under :func:`curves_dir` or ``directory``; returns the path."""
    path = curve_path(curve.device, curve.model, curve.batch_size, curve.part, directory, curve.backend)
    return paths.write_json_atomic(path, curve.to_dict())


def load_curve(path: str | Path) -> Curve:
    """Read a curve written by :func:`save_curve`, checking every field and point.

    Raises:
        FileNotFoundError: no such file.
        InvalidFileError: not JSON, not a curve, or a curve with missing fields or points that
            are NaN, infinite or not positive (named by sweep and token count).
    """
    path = Path(path)
    d = paths.read_json(path, what="latency curve")
    if not isinstance(d, dict) or d.get("format") != "vitprune_lite.latency_curve/1":
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise InvalidFileError(f"{path} is not a latency curve file (format {got!r}, expected "
                               f"'vitprune_lite.latency_curve/1')")
    try:
        _check_curve_dict(d)
        return Curve.from_dict(d)
    except (InvalidValueError, KeyError, TypeError, ValueError) as err:
        raise InvalidFileError(f"latency curve {path}: {err}") from None


def _check_curve_dict(d: dict) -> None:
    fields = {f for f in Curve.__dataclass_fields__} | {"format"}
    missing = sorted({"model", "device", "batch_size", "threads", "part", "fingerprint", "sweeps"} - set(d))
    unknown = sorted(set(d) - fields)
    if missing or unknown:
        raise InvalidValueError(f"fields missing {missing}, unknown {unknown}")
    _check_name(d["model"], "model name")
    _check_name(d["device"], "device name")
    for key in ("batch_size", "threads"):
        if isinstance(d[key], bool) or not isinstance(d[key], int) or d[key] < 1:
            raise InvalidValueError(f"{key} = {d[key]!r}; accepted an integer >= 1")
    if not isinstance(d["part"], str) or not _PART.fullmatch(d["part"]):
        raise InvalidValueError(f"part = {d['part']!r}; accepted 'network' or 'block<i>'")
    if not isinstance(d["sweeps"], list) or not d["sweeps"]:
        raise InvalidValueError("sweeps must be a non-empty list")
    for j, sw in enumerate(d["sweeps"]):
        if not isinstance(sw, dict):
            raise InvalidValueError(f"sweep {j} is a {type(sw).__name__}; expected an object")
        unknown = sorted(set(sw) - set(Sweep.__dataclass_fields__))
        if unknown:
            raise InvalidValueError(f"sweep {j} has unknown fields {unknown}")
        check_points(sw.get("n"), sw.get("median_ms"), sw.get("ci_low_ms"), sw.get("ci_high_ms"), f"sweep {j}")
        samples = sw.get("samples_ms")
        if not isinstance(samples, list) or len(samples) != len(sw["n"]):
            raise InvalidValueError(f"sweep {j}: samples_ms must hold one list per token count")
        for n, vals in zip(sw["n"], samples):
            if not isinstance(vals, list) or not vals or not all(_positive(v) for v in vals):
                raise InvalidValueError(f"sweep {j}: the samples at n={n} must be finite latencies > 0 ms, "
                                        f"got {vals!r:.80}")


def _positive(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def check_points(n: Any, median_ms: Any, ci_low_ms: Any = None, ci_high_ms: Any = None,
                 what: str = "curve") -> None:
    """Refuse a curve whose token counts are not strictly increasing integers or whose latencies
    are not finite and positive; the message names the first bad point.

    Raises:
        InvalidValueError: naming ``what`` and the token count.
    """
    if not isinstance(n, (list, tuple, np.ndarray)) or len(n) < 1:
        raise InvalidValueError(f"{what}: n must be a non-empty list of token counts, got {n!r:.80}")
    n = list(n)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in n):
        raise InvalidValueError(f"{what}: token counts must be integers >= 1, got {n!r:.80}")
    if any(b <= a for a, b in zip(n, n[1:])):
        raise InvalidValueError(f"{what}: token counts must be strictly increasing, got {n!r:.80}")
    for name, vals in (("median_ms", median_ms), ("ci_low_ms", ci_low_ms), ("ci_high_ms", ci_high_ms)):
        if vals is None and name != "median_ms":
            continue
        vals = list(vals) if isinstance(vals, (list, tuple, np.ndarray)) else vals
        if not isinstance(vals, list) or len(vals) != len(n):
            raise InvalidValueError(f"{what}: {name} must hold one latency per token count ({len(n)}), got {vals!r:.80}")
        for k, v in zip(n, vals):
            if not _positive(v):
                raise InvalidValueError(f"{what}: {name} at n={k} is {v!r}; latencies must be finite numbers > 0 ms")


def find_curves(model: Optional[str] = None, batch_size: Optional[int] = None,
                part: str = "network", backend: str = "eager") -> list[Path]:
    """Curve files in the committed ``data/latency/`` and the output root's, filtered by name.

    Only curves of ``backend`` (default eager PyTorch) are listed. A file in the output root
    shadows a committed one of the same name. Sorted by file name. A file whose name does not
    parse as ``<device>__<model>[.block<i>]__b<batch>[__<backend>].json`` is skipped with a
    warning naming it.
    """
    found: dict[str, Path] = {}
    for d in (paths.data_dir() / "latency", curves_dir()):
        for p in sorted(d.glob("*__*__b*.json")) if d.is_dir() else []:
            m = _FILE.fullmatch(p.stem)
            if m is None or "__" in m["device"] or "__" in m["model"]:
                warnings.warn(f"skipping {p}: not a curve file name "
                              f"(<device>__<model>[.block<i>]__b<batch>[__<backend>].json)", stacklevel=2)
                continue
            if (m["backend"] or "eager") != backend:
                continue
            if (model is None or m["model"] == model) and (batch_size is None or int(m["batch"]) == batch_size) \
                    and (m["part"] or "network") == part:
                found[p.name] = p
    return [found[k] for k in sorted(found)]


def check_curve(curve: Curve, model: nn.Module, batch_size: int) -> None:
    """Refuse a curve measured on another model or batch size than the one being pruned.

    Raises:
        ValueError: naming what differs.
    """
    if curve.batch_size != batch_size:
        raise ValueError(f"curve {curve.model!r} was measured at batch {curve.batch_size}, "
                         f"but you are pruning for batch {batch_size}; profile that batch size")
    if curve.part != "network":
        raise ValueError(f"curve is a per-block curve ({curve.part}); POMT needs the whole network")
    fp = model_fingerprint(model)
    diff = {k: (curve.fingerprint.get(k), v) for k, v in fp.items() if curve.fingerprint.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: curve {a} vs model {b}" for k, (a, b) in diff.items())
        raise ValueError(f"curve {curve.model!r} belongs to a different model ({what}); "
                         f"profile this model with latency.profile")


def predict_ms(n: Sequence[int], median_ms: Sequence[float], flow: Sequence[int], full_ms: float) -> float:
    """Predicted latency of a token schedule, read off a network latency curve.

    The curve gives ``L(n)``, the whole network at ``n`` tokens, so ``L(n) / L(N)`` is the cost of
    ``n`` tokens relative to all ``N``, fixed costs included. A schedule that runs block ``b``
    at ``flow[b]`` tokens is predicted at ``full_ms * mean_b L(flow[b]) / L(N)``: each block's
    share at its token count, scaled to ``full_ms`` (this model's measured latency at ``N``
    tokens, so a pruned structure can reuse the dense model's curve). The token method's own
    work (matching, sorting) is not in the curve: measure the chosen plan to check.

    Args:
        n: token counts of the curve, ascending, ending at N; median_ms: ``L(n)``, aligned.
        flow: tokens each block runs on (e.g. ``tokens.schedule_of(model)["tokens"]``).
        full_ms: the model's latency at N tokens.
    """
    n, y = np.asarray(n, dtype=float), np.asarray(median_ms, dtype=float)
    if n.ndim != 1 or n.shape != y.shape or len(n) < 2 or np.any(np.diff(n) <= 0):
        raise ValueError("the curve needs >= 2 ascending token counts with one latency each")
    bad = ~(np.isfinite(y) & (y > 0))
    if bad.any():
        k = int(np.argmax(bad))
        raise InvalidValueError(f"latency at n={int(n[k])} is {y[k]}; a curve's latencies must be finite and > 0 ms")
    f = np.asarray(flow, dtype=float)
    if f.size == 0 or f.min() < n[0] or f.max() > n[-1]:
        raise ValueError(f"flow {list(flow)} leaves the curve's range {int(n[0])}..{int(n[-1])}")
    if not full_ms > 0:
        raise ValueError(f"full_ms must be > 0, got {full_ms}")
    return float(full_ms * np.interp(f, n, y).mean() / y[-1])


# ----------------------------------------------------------------------------- plotting

def plot_sweep(ax, s: Sweep, label: str, normalise: bool = False, steps: Sequence[dict] = (),
               **style: Any) -> None:
    """Draw a sweep's medians with their 95 % band on a matplotlib axis (ms, or L(n)/L(N)).

    ``steps`` (from :func:`detect_steps`) are marked with vertical lines in the line's colour.
    """
    n = np.asarray(s.n)
    scale = s.median_ms[int(np.argmax(n))] if normalise else 1.0
    med, lo, hi = (np.asarray(v) / scale for v in (s.median_ms, s.ci_low_ms, s.ci_high_ms))
    (line,) = ax.plot(n, med, label=label, lw=1.2, **style)
    ax.fill_between(n, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    for st in steps:
        ax.axvline(st["n_after"] - 0.5, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("tokens n (CLS included)")
    ax.set_ylabel("L(n) / L(N)" if normalise else "latency, ms (median, 95 % CI)")
