"""Latency you can plan with: predict a plan's latency from measurements taken once per device.

A *plan* is a pruned structure (per-block widths, uneven allowed) x a token method x its
setting (:class:`PlanSpec`). A :class:`Predictor` belongs to one device, one backend (eager
PyTorch or ONNX Runtime), one thread count and one batch size. It is fitted once, from
measurements that :func:`profile_device` takes with the project's interleaved protocol
(:func:`vitprune_lite.measure.measure_latency`, shuffled rounds, round load factors divided out):

- the dense model's network curve ``L(n)`` (:func:`vitprune_lite.latency.sweep`);
- the *frame* ``F``: the model with no blocks (patch embedding, final norm, head);
- a few calibration plans: uniform and uneven widths, and every token method at a few settings.

**The model.** ``b(n) = (L(n) - F) / depth`` is a dense block's cost at ``n`` tokens, read off
the curve (so its shape, steps included, comes from the device). A plan's block ``i`` runs its
attention at ``n_a`` tokens (entering the block) and its MLP at ``n_m`` (after the block's token
reduction). Its latency is linear in a few coefficients, fitted by non-negative least squares on
relative errors:

    L = c_frame * F
      + c_attn_w * sum_i rho_a,i b(n_a,i) + c_attn_0 * sum_i b(n_a,i)     (attention side)
      + c_mlp_w  * sum_i rho_m,i b(n_m,i) + c_mlp_0  * sum_i b(n_m,i)     (MLP side)
      + ToMe:  c_calls * (blocks that merge) + c_tokens * sum B n C (gathers, weighted average)
               + c_work * sum B (n/2)^2 d_qk (bipartite similarities)
               + c_bias * sum B H n_a^2 over the blocks after the first merge (proportional
                 attention: the log-size bias is added to every attention logit)
      + Top-K, EViT: c_calls * (blocks that prune) + c_tokens * sum B n C (CLS scores, sort,
               gather, fuse)
      + POMT:  c_calls * 1 + c_work * B H n^2 (its block's explicit attention and scores; POMT
               prunes once, at N tokens, so its own work does not depend on R)

``rho_a`` is the attention's kept weight fraction (``heads (qk + v) / (H0 * 2 * d0)``), ``rho_m``
the MLP's kept hidden fraction: the ``_w`` terms are the work that shrinks with width, the
``_0`` terms what does not (norms, residuals, per-operator overhead); ``n`` is the tokens
entering a reducing block, ``B`` the batch size, ``C`` the embedding width, ``H`` and ``d_qk``
the block's heads and query/key width. Element counts are in millions. The curve's own points
enter the fit too (all blocks dense at ``n`` tokens: the frame plus ``L(n) - F`` in every
structure term), which ties the dense model to its measured curve.

Fitting is a function of measurements (plain dicts, :func:`fit`); the predictor is a plain
record (:meth:`Predictor.to_json`); :func:`validate` reports the share of held-out plans
predicted within +-10 % and +-5 %. Nothing here asserts or stores a timing by itself.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import latency, measure, paths, runtime, surgery, tokens

__all__ = [
    "PlanSpec", "Geometry", "Predictor", "features", "fit", "validate", "build_model",
    "calibration_plans", "random_plans", "measure_plans", "profile_device", "Calibration", "calibrate",
    "FEATURES",
]

_METHODS = ("tome", "topk", "evit", "pomt")
#: Names of the fitted coefficients, in design-matrix order.
FEATURES = ("frame", "attn_w", "attn_0", "mlp_w", "mlp_0",
            "tome_calls", "tome_tokens", "tome_work", "tome_bias",
            "topk_calls", "topk_tokens", "evit_calls", "evit_tokens", "pomt_calls", "pomt_work")
MEAS_FORMAT = "vitprune_lite.latency_measurements/1"
PRED_FORMAT = "vitprune_lite.latency_predictor/1"


# ----------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class PlanSpec:
    """What a plan runs: per-block widths and a token schedule (no weights).

    Attributes:
        widths: per block ``(heads, qk_dim, v_dim, mlp_hidden)`` (per-head widths).
        method: ``None`` or one of ``"tome"``, ``"topk"``, ``"evit"``, ``"pomt"``.
        schedule: tokens removed per block (all 0 without a method).
        proportional: ToMe's proportional attention (ignored by the other methods).
    """

    widths: tuple[tuple[int, int, int, int], ...]
    method: Optional[str] = None
    schedule: tuple[int, ...] = ()
    proportional: bool = True

    def __post_init__(self) -> None:
        w = tuple(tuple(int(v) for v in row) for row in self.widths)
        if not w or any(len(row) != 4 or min(row) < 1 for row in w):
            raise ValueError(f"widths must be one (heads, qk_dim, v_dim, mlp_hidden) row of ints >= 1 per "
                             f"block, got {self.widths!r}")
        sched = tuple(int(v) for v in self.schedule) if self.schedule else (0,) * len(w)
        if len(sched) != len(w) or min(sched) < 0:
            raise ValueError(f"schedule must hold one count >= 0 per block ({len(w)}), got {self.schedule!r}")
        if self.method is not None and self.method not in _METHODS:
            raise ValueError(f"method must be None or one of {_METHODS}, got {self.method!r}")
        if self.method is None and any(sched):
            raise ValueError(f"a schedule {list(sched)} needs a method, one of {_METHODS}")
        if self.method == "pomt" and sum(1 for v in sched if v) > 1:
            raise ValueError(f"POMT removes tokens in one block, got schedule {list(sched)}")
        object.__setattr__(self, "widths", w)
        object.__setattr__(self, "schedule", sched)
        object.__setattr__(self, "method", self.method if any(sched) else None)
        object.__setattr__(self, "proportional", bool(self.proportional) or self.method != "tome")

    @property
    def depth(self) -> int:
        return len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"widths": [list(r) for r in self.widths], "method": self.method,
                "schedule": list(self.schedule), "proportional": self.proportional}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlanSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(tuple(r) for r in d["widths"]), d.get("method"), tuple(d.get("schedule") or ()),
                   bool(d.get("proportional", True)))

    @classmethod
    def of_model(cls, model: nn.Module) -> "PlanSpec":
        """Read a (surgery-pruned, token-patched) timm ViT's plan."""
        widths = tuple((w["heads"], w["qk_dim"], w["v_dim"], w["mlp_hidden"]) for w in surgery.block_widths(model))
        sched = tokens.schedule_of(model)
        state = getattr(model, "_tr_state", None)
        return cls(widths, sched["method"], tuple(sched["schedule"]),
                   bool(getattr(state, "proportional", True)))

    def label(self) -> str:
        """Short readable name, e.g. ``"w[4x32x32x512,...] tome[4,4,...]"``."""
        dense = len(set(self.widths)) == 1
        w = "x".join(map(str, self.widths[0])) if dense else ",".join("x".join(map(str, r)) for r in self.widths)
        np_ = "" if self.proportional else " (not proportional)"
        return f"w[{w}] {self.method or 'none'}{list(self.schedule) if self.method else ''}{np_}"


@dataclass(frozen=True)
class Geometry:
    """The dense model a predictor belongs to, and the batch size it predicts for."""

    tokens: int  # N, tokens entering the first block (prefix included)
    prefix: int
    embed_dim: int
    depth: int
    heads: int
    head_dim: int
    mlp_hidden: int
    batch_size: int

    @classmethod
    def of_model(cls, model: nn.Module, batch_size: int) -> "Geometry":
        """Read an unpruned timm ViT's geometry."""
        w = surgery.block_widths(model)[0]
        return cls(tokens.token_count(model), int(model.num_prefix_tokens), int(model.embed_dim),
                   len(model.blocks), int(w["heads"]), int(w["v_dim"]), int(w["mlp_hidden"]), int(batch_size))

    def dense_plan(self) -> PlanSpec:
        return PlanSpec(((self.heads, self.head_dim, self.head_dim, self.mlp_hidden),) * self.depth)


def _flow(plan: PlanSpec, geo: Geometry) -> tuple[list[int], list[int]]:
    """Tokens at each block's attention and at its MLP."""
    if plan.depth != geo.depth:
        raise ValueError(f"plan has {plan.depth} blocks, the model {geo.depth}")
    if plan.method is None:
        return [geo.tokens] * geo.depth, [geo.tokens] * geo.depth
    n_mlp = tokens.token_flow(geo.tokens, geo.prefix, list(plan.schedule), plan.method)
    return [geo.tokens] + n_mlp[:-1], n_mlp


def features(plan: PlanSpec, geo: Geometry, curve_n: Sequence[int], curve_ms: Sequence[float],
             frame_ms: float) -> dict[str, float]:
    """The plan's design row: one value per name in :data:`FEATURES` (see the module docstring).

    Args:
        plan: what runs.
        geo: the dense model and batch size.
        curve_n, curve_ms: the dense network curve ``L(n)``, ascending ``n`` ending at N.
        frame_ms: the frame's latency ``F``.
    """
    n_arr, y = np.asarray(curve_n, dtype=float), np.asarray(curve_ms, dtype=float)
    if n_arr.ndim != 1 or n_arr.shape != y.shape or len(n_arr) < 2 or np.any(np.diff(n_arr) <= 0):
        raise ValueError("the curve needs >= 2 ascending token counts with one latency each")
    n_a, n_m = _flow(plan, geo)
    lo = min(n_a + n_m)
    if lo < n_arr[0] or geo.tokens > n_arr[-1]:
        raise ValueError(f"the plan runs blocks at {lo}..{geo.tokens} tokens, outside the curve's "
                         f"{int(n_arr[0])}..{int(n_arr[-1])}; profile the curve over these counts")

    def b(n: float) -> float:
        return float((np.interp(n, n_arr, y) - frame_ms) / geo.depth)

    f = dict.fromkeys(FEATURES, 0.0)
    f["frame"] = float(frame_ms)
    B, C, mega = geo.batch_size, geo.embed_dim, 1e-6
    dense_attn = geo.heads * 2 * geo.head_dim
    first_merge = next((i for i, r in enumerate(plan.schedule) if r), None)
    for i, ((H, dq, dv, M), na, nm, r) in enumerate(zip(plan.widths, n_a, n_m, plan.schedule)):
        f["attn_w"] += H * (dq + dv) / dense_attn * b(na)
        f["attn_0"] += b(na)
        f["mlp_w"] += M / geo.mlp_hidden * b(nm)
        f["mlp_0"] += b(nm)
        m = plan.method
        if r:
            f[f"{m}_calls"] += 1
            if m == "pomt":
                f["pomt_work"] += B * H * na * na * mega
            else:
                f[f"{m}_tokens"] += B * na * C * mega
            if m == "tome":
                f["tome_work"] += B * (na / 2) ** 2 * dq * mega
        if m == "tome" and plan.proportional and first_merge is not None and i > first_merge:
            f["tome_bias"] += B * H * na * na * mega  # blocks after a merge carry token sizes
    return f


# ----------------------------------------------------------------------------- the predictor

@dataclass
class Predictor:
    """A fitted latency model for one device, backend, thread count and batch size.

    Attributes:
        geometry: the dense model and batch size.
        backend: ``"eager"`` or ``"onnxruntime"``.
        device: device label (:func:`vitprune_lite.latency.device_label`).
        threads: intra-op threads of the measurements.
        curve_n, curve_ms: the dense curve ``L(n)`` (milliseconds per batch).
        frame_ms: the frame ``F``.
        coef: name -> coefficient (see :data:`FEATURES`).
        fitted: the coefficients the calibration could determine (others are 0 and a plan that
            needs them is refused).
        report: the fit's residuals and provenance.
    """

    geometry: Geometry
    backend: str
    device: str
    threads: int
    curve_n: list[int]
    curve_ms: list[float]
    frame_ms: float
    coef: dict[str, float]
    fitted: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.geometry.batch_size

    def features(self, plan: PlanSpec) -> dict[str, float]:
        """The plan's design row (see :func:`features`)."""
        return features(plan, self.geometry, self.curve_n, self.curve_ms, self.frame_ms)

    def predict(self, plan: PlanSpec | nn.Module) -> float:
        """Predicted latency of ``plan`` (a :class:`PlanSpec` or a model), milliseconds per batch.

        Raises:
            ValueError: the plan uses a token method the calibration did not measure.
        """
        if isinstance(plan, nn.Module):
            plan = PlanSpec.of_model(plan)
        f = self.features(plan)
        missing = [k for k, v in f.items() if v and k not in self.fitted]
        if missing:
            raise ValueError(f"plan {plan.label()} needs terms {missing} that this predictor's calibration "
                             f"did not measure (fitted: {self.fitted}); profile that token method too")
        return float(sum(self.coef[k] * v for k, v in f.items()))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        d = asdict(self)
        return {"format": PRED_FORMAT, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Predictor":
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != PRED_FORMAT:
            raise ValueError(f"not a latency predictor (format {d.get('format')!r}, expected {PRED_FORMAT!r})")
        d = {k: v for k, v in d.items() if k != "format"}
        d["geometry"] = Geometry(**d["geometry"])
        unknown = set(d["coef"]) - set(FEATURES)
        if unknown:
            raise ValueError(f"predictor has unknown coefficients {sorted(unknown)}; accepted {FEATURES}")
        return cls(**d)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "Predictor":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write atomically as JSON; returns the path."""
        return paths.write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        """Read a file written by :meth:`save`."""
        return cls.from_dict(paths.read_json(Path(path)))


def _check_measurements(m: Mapping[str, Any]) -> None:
    if not isinstance(m, Mapping) or m.get("format") != MEAS_FORMAT:
        raise ValueError(f"measurements must be a dict with format {MEAS_FORMAT!r} "
                         f"(from profile_device), got {type(m).__name__} {getattr(m, 'get', lambda k: None)('format')!r}")
    for key in ("geometry", "backend", "threads", "curve", "frame_ms", "plans"):
        if key not in m:
            raise ValueError(f"measurements lack {key!r}")
    if not m["plans"]:
        raise ValueError("measurements hold no calibration plans")


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(a, b)[0]


def fit(measurements: Mapping[str, Any], include_curve: bool = True, align_curve: bool = True) -> Predictor:
    """Fit a :class:`Predictor` from measurements (as written by :func:`profile_device`).

    ``measurements``: ``{"format", "geometry" (Geometry fields), "backend", "device", "threads",
    "curve": {"n", "median_ms"}, "frame_ms", "plans": [{"plan": PlanSpec dict, "median_ms"}]}``.
    Coefficients are non-negative and minimise the squared *relative* error over the plans
    (and, with ``include_curve``, the curve's points); a coefficient whose feature is zero in
    every row is left at 0 and marked unfitted.

    ``align_curve``: the curve is timed in its own rounds, before the plans and the frame; a
    machine that drifts between the two phases (CPU frequency, other load) puts them on
    different levels, and the coefficients then absorb the drift. When the dense plan is among
    the plans and the curve ends at the full token count, the curve is rescaled so that its
    ``L(N)`` equals the dense plan's latency: its shape is kept, its level follows the plans'
    rounds (the factor is reported as ``curve_scale``). On by default (``False`` fits the curve
    at the level it was timed at). Re-fitted offline from stored benchmark measurements (base model,
    batch 1, 1 thread; the held-out plans as measured): on a 2.1 GHz Xeon, where the curve's
    phase ran 13 % slow (eager) and 9 % fast (ONNX Runtime), the share of held-out ratios to
    dense within 10 % rose from 33 % to 100 % (eager) and from 57 % to 97 % (ONNX Runtime); on a
    2.5 GHz Xeon with little drift it stayed at 100 % and 97 % (within 5 %: 80 -> 90 % eager,
    83 -> 70 % ONNX Runtime).
    """
    _check_measurements(measurements)
    geo = Geometry(**measurements["geometry"])
    cn, cm = list(measurements["curve"]["n"]), list(measurements["curve"]["median_ms"])
    frame = float(measurements["frame_ms"])
    plans = [PlanSpec.from_dict(p["plan"]) for p in measurements["plans"]]
    y = np.array([float(p["median_ms"]) for p in measurements["plans"]])
    if np.any(~np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("plan latencies must be finite and > 0 ms")
    scale = 1.0
    dense = geo.dense_plan()
    if align_curve and cn and cn[-1] == geo.tokens and dense in plans:
        scale = float(y[plans.index(dense)] / cm[-1])
        cm = [v * scale for v in cm]
    x = np.array([[features(p, geo, cn, cm, frame)[k] for k in FEATURES] for p in plans])
    if include_curve:  # every curve point is the dense model with all blocks at n tokens
        structure = [FEATURES.index(k) for k in ("attn_w", "attn_0", "mlp_w", "mlp_0")]
        rows = np.zeros((len(cm), len(FEATURES)))
        rows[:, FEATURES.index("frame")] = frame
        rows[:, structure] = (np.asarray(cm, dtype=float) - frame)[:, None]
        x, y = np.vstack([x, rows]), np.concatenate([y, np.asarray(cm, dtype=float)])
    used = np.flatnonzero(np.any(x != 0, axis=0))
    w = 1.0 / y  # relative errors: every plan counts alike, whatever its latency
    theta = np.zeros(len(FEATURES))
    theta[used] = _nnls(x[:, used] * w[:, None], y * w)
    rel = (x @ theta)[:len(plans)] / y[:len(plans)] - 1
    rank = int(np.linalg.matrix_rank(x[:, used])) if len(used) else 0
    report = {"plans": len(plans), "curve_rows": len(y) - len(plans), "rank": rank, "columns": len(used),
              "curve_scale": scale,
              "fit_rel_err_median": float(np.median(np.abs(rel))), "fit_rel_err_max": float(np.abs(rel).max()),
              "seconds": measurements.get("seconds"), "environment": measurements.get("environment")}
    return Predictor(geometry=geo, backend=str(measurements["backend"]), device=str(measurements.get("device", "")),
                     threads=int(measurements["threads"]), curve_n=[int(v) for v in cn],
                     curve_ms=[float(v) for v in cm], frame_ms=frame,
                     coef={k: float(v) for k, v in zip(FEATURES, theta)},
                     fitted=[FEATURES[i] for i in used], report=report)


def validate(predictor: Predictor, held_out: Iterable[Mapping[str, Any]] | Mapping[str, Any],
             reference_ms: Optional[float] = None) -> dict[str, Any]:
    """How often the predictor lands within +-10 % and +-5 % of measured latency.

    Absolute milliseconds drift between measurement sessions (CPU frequency, cache and memory
    state, other load): a run that is uniformly a few per cent faster than the profiling run
    shifts every absolute error the same way. What the planner needs is the latency *relative to
    the dense model* (its budgets are shares of dense latency), so when ``reference_ms`` - the
    dense model timed in the same interleaved rounds as the held-out plans - is given, the
    relative prediction ``predict(plan) / predict(dense)`` is also checked against the measured
    ``plan / dense``.

    Args:
        predictor: a fitted :class:`Predictor`.
        held_out: records ``{"plan": PlanSpec dict, "median_ms"}`` measured on the same device,
            backend, threads and batch size, none of them used to fit; or a measurements dict
            holding them under ``"plans"``.
        reference_ms: the dense model's median in the same rounds (optional).

    Returns:
        ``{"n", "within_10", "within_5"`` (shares in [0, 1]), ``"rel_err_median"``,
        ``"rel_err_max"``, ``"rows"`` (per plan: label, measured, predicted, rel_err =
        predicted / measured - 1)``}``; with ``reference_ms`` also ``"ratio"``: the same summary
        for ``predicted_ratio / measured_ratio - 1``, per row ``measured_ratio``,
        ``predicted_ratio`` and ``ratio_err``.
    """
    if isinstance(held_out, Mapping):
        _check_measurements(held_out)
        theirs = (held_out["backend"], int(held_out["threads"]), Geometry(**held_out["geometry"]))
        if theirs != (predictor.backend, predictor.threads, predictor.geometry):
            raise ValueError(f"held-out measurements ({theirs[0]}, {theirs[1]} threads, {theirs[2]}) do not match "
                             f"the predictor ({predictor.backend}, {predictor.threads} threads, {predictor.geometry})")
        records = held_out["plans"]
    else:
        records = list(held_out)
    if not records:
        raise ValueError("held_out holds no measured plans")
    if reference_ms is not None and not reference_ms > 0:
        raise ValueError(f"reference_ms must be > 0 ms, got {reference_ms}")
    dense_pred = predictor.predict(predictor.geometry.dense_plan()) if reference_ms is not None else None
    rows = []
    for r in records:
        plan = PlanSpec.from_dict(r["plan"])
        measured = float(r["median_ms"])
        if not measured > 0:
            raise ValueError(f"measured latency must be > 0 ms, got {measured} for {plan.label()}")
        pred = predictor.predict(plan)
        row = {"plan": plan.label(), "measured_ms": measured, "predicted_ms": pred, "rel_err": pred / measured - 1}
        if reference_ms is not None:
            row.update(measured_ratio=measured / reference_ms, predicted_ratio=pred / dense_pred,
                       ratio_err=(pred / dense_pred) / (measured / reference_ms) - 1)
        rows.append(row)
    out = {**_hit_rates([r["rel_err"] for r in rows]), "rows": rows}
    if reference_ms is not None:
        out["ratio"] = {**_hit_rates([r["ratio_err"] for r in rows]), "reference_ms": reference_ms,
                        "dense_predicted_ms": dense_pred}
    return out


def _hit_rates(rel_err: Sequence[float]) -> dict[str, Any]:
    err = np.abs(np.asarray(rel_err, dtype=float))
    return {"n": int(err.size), "within_10": float(np.mean(err <= 0.10)), "within_5": float(np.mean(err <= 0.05)),
            "rel_err_median": float(np.median(err)), "rel_err_max": float(err.max())}


# ----------------------------------------------------------------------------- building plans

def build_model(base: nn.Module, plan: PlanSpec) -> nn.Module:
    """A model with ``plan``'s widths and token schedule, from a deep copy of ``base``.

    Units are kept by position (the first ``k`` heads, dims, channels): latency does not depend
    on which units are kept. ``base`` must be the dense model; it is not changed.
    """
    geo = Geometry.of_model(base, 1)
    if plan.depth != geo.depth:
        raise ValueError(f"plan has {plan.depth} blocks, the model {geo.depth}")
    entries: dict[int, dict[str, Any]] = {}
    for i, (H, dq, dv, M) in enumerate(plan.widths):
        if H > geo.heads or dq > geo.head_dim or dv > geo.head_dim or M > geo.mlp_hidden:
            raise ValueError(f"block {i}: widths {(H, dq, dv, M)} exceed the dense model's "
                             f"{(geo.heads, geo.head_dim, geo.head_dim, geo.mlp_hidden)}")
        e: dict[str, Any] = {}
        if H < geo.heads:
            e["heads"] = list(range(H))
        if dq < geo.head_dim:
            e["qk"] = [list(range(dq))] * H
        if dv < geo.head_dim:
            e["vo"] = [list(range(dv))] * H
        if M < geo.mlp_hidden:
            e["mlp"] = list(range(M))
        if e:
            entries[i] = e
    model = surgery.apply_plan(tokens.restore(copy.deepcopy(base)), entries).eval()
    if plan.method == "tome":
        tokens.patch_tome(model, list(plan.schedule), proportional=plan.proportional)
    elif plan.method in ("topk", "evit"):
        (tokens.patch_topk if plan.method == "topk" else tokens.patch_evit)(model, list(plan.schedule))
    elif plan.method == "pomt":
        layer = next(i for i, r in enumerate(plan.schedule) if r)
        tokens.patch_pomt(model, plan.schedule[layer], layer=layer)
    return model


def _frame_model(base: nn.Module) -> nn.Module:
    """The model without blocks: patch embedding, final norm and head (the frame ``F``)."""
    m = tokens.restore(copy.deepcopy(base)).eval()
    m.blocks = nn.Sequential()
    return m


def _widths(geo: Geometry, heads: float = 1.0, dims: float = 1.0, mlp: float = 1.0) -> tuple[int, int, int, int]:
    return (max(1, round(geo.heads * heads)), max(1, round(geo.head_dim * dims)),
            max(1, round(geo.head_dim * dims)), max(1, round(geo.mlp_hidden * mlp)))


def _token_plans(geo: Geometry, widths: tuple, rng: Optional[np.random.Generator] = None) -> list[PlanSpec]:
    """Each token method at a low and a high setting (random settings if ``rng`` is given)."""
    D, N, P = geo.depth, geo.tokens, geo.tokens - geo.prefix
    locs = tokens.evit_locations(D) if D >= 2 else [0]
    pomt_layer = tokens.default_pomt_layer(D) if D >= 2 else 0

    plans = []
    if rng is None:
        settings = {"tome": [max(1, P // (4 * D)), max(1, P // (2 * D))], "topk": [0.8, 0.55],
                    "evit": [0.8, 0.55], "pomt": [max(1, N // 4), max(1, N // 2)]}
    else:
        settings = {"tome": [int(rng.integers(1, max(2, P // (2 * D) + 1)))],
                    "topk": [float(rng.uniform(0.5, 0.95))], "evit": [float(rng.uniform(0.5, 0.95))],
                    "pomt": [int(rng.integers(1, max(2, (2 * N) // 3)))]}
    for method, values in settings.items():
        for v in values:
            if method == "tome":
                sched = tokens.tome_schedule(int(v), D)
            elif method == "pomt":
                layer = pomt_layer if rng is None else int(rng.integers(1, D)) if D > 1 else 0
                sched = [0] * D
                sched[layer] = int(v)
            else:
                sched = _keep_rate(geo, float(v), locs)
            try:
                tokens.token_flow(N, geo.prefix, sched, method)
            except ValueError:
                continue
            plans.append(PlanSpec((widths,) * D if isinstance(widths[0], int) else widths, method, tuple(sched)))
    return plans


def _keep_rate(geo: Geometry, rate: float, locs: Sequence[int]) -> list[int]:
    """As :func:`vitprune_lite.tokens.keep_rate_schedule`, from the geometry alone."""
    out, patches = [0] * geo.depth, geo.tokens - geo.prefix
    for i in locs:
        keep = max(1, math.ceil(rate * patches))
        out[i] = max(0, patches - keep)
        patches = min(patches, keep)
    return out


def calibration_plans(geo: Geometry) -> list[PlanSpec]:
    """The plans a predictor is fitted on: widths and token methods, each varied on its own.

    Dense; uniform MLP 50 % and 25 %; half the heads; half the per-head dims; an uneven model
    (alternating narrow MLP and few heads); ToMe, Top-K, EViT and POMT each at a low and a high
    setting on the dense model (ToMe also with a decreasing schedule and without proportional
    attention); and POMT and ToMe on the uneven model.
    """
    D = geo.depth
    dense = _widths(geo)
    uneven = tuple(_widths(geo, mlp=0.25) if i % 2 == 0 else _widths(geo, heads=0.5, dims=0.5) for i in range(D))
    plans = [PlanSpec((dense,) * D), PlanSpec((_widths(geo, mlp=0.5),) * D), PlanSpec((_widths(geo, mlp=0.25),) * D),
             PlanSpec((_widths(geo, heads=0.5),) * D), PlanSpec((_widths(geo, dims=0.5),) * D), PlanSpec(uneven)]
    plans += _token_plans(geo, dense)
    r = max(1, (geo.tokens - geo.prefix) // (3 * D))
    dec = tokens.tome_schedule(r, D, "decreasing")
    try:
        tokens.token_flow(geo.tokens, geo.prefix, dec, "tome")
        plans.append(PlanSpec((dense,) * D, "tome", tuple(dec)))
    except ValueError:
        pass
    plans.append(PlanSpec((dense,) * D, "tome", tuple(tokens.tome_schedule(r, D)), proportional=False))
    plans += [p for p in _token_plans(geo, uneven) if p.method in ("pomt", "tome")][::2]
    half_heads = (_widths(geo, heads=0.5),) * D  # POMT's own work scales with its block's heads
    plans += [p for p in _token_plans(geo, half_heads) if p.method == "pomt"][:1]
    return plans


def random_plans(geo: Geometry, k: int, seed: int = 0) -> list[PlanSpec]:
    """``k`` random plans for validation: random per-block widths x a random token method.

    Widths per block: heads 1..H, per-head dims (q/k and v alike) a multiple of an eighth,
    MLP hidden 15..100 %; each dimension pruned in a block with probability 1/2. The token
    method is none, ToMe, Top-K, EViT or POMT with equal probability, at a random setting.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    rng = np.random.default_rng(seed)
    out: list[PlanSpec] = []
    while len(out) < k:
        widths = []
        for _ in range(geo.depth):
            h = int(rng.integers(1, geo.heads + 1)) if rng.random() < 0.5 else geo.heads
            d = max(1, round(geo.head_dim * int(rng.integers(2, 9)) / 8)) if rng.random() < 0.5 else geo.head_dim
            m = max(1, round(geo.mlp_hidden * rng.uniform(0.15, 1.0))) if rng.random() < 0.5 else geo.mlp_hidden
            widths.append((h, d, d, m))
        method = rng.choice(["none", *_METHODS])
        if method == "none":
            out.append(PlanSpec(tuple(widths)))
            continue
        cands = [p for p in _token_plans(geo, tuple(widths), rng) if p.method == method]
        if cands:
            out.append(cands[0])
    return out


# ----------------------------------------------------------------------------- measuring

def measure_plans(base: nn.Module, plans: Sequence[PlanSpec], *, backend: str = "eager", batch_size: int = 1,
                  threads: int = 2, time_budget_s: float = 60.0, min_rounds: int = 3, max_rounds: int = 15,
                  min_run_time: float = 0.01, seed: int = 0, extra: Optional[Mapping[str, nn.Module]] = None,
                  progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, float]]:
    """Time plans against each other with the interleaved protocol, within a time budget.

    Every round times every plan once (:func:`vitprune_lite.measure.measure_latency`, fresh
    shuffle); rounds continue after ``min_rounds`` while the next would end within
    ``time_budget_s`` (measured from the first round) and fewer than ``max_rounds`` ran. With
    ten or more plans, each round's load factor (:func:`vitprune_lite.latency.round_factors`)
    is divided out before the medians are taken, as in a curve sweep.

    Args:
        base: the dense model plans are built from (:func:`build_model`).
        plans: what to time.
        backend: ``"eager"`` or ``"onnxruntime"`` (each plan exported once, before timing).
        batch_size: images per forward (random ``[B, 3, H, W]``, seeded).
        threads: intra-op threads.
        extra: more models to time in the same rounds (e.g. the frame), by name.

    Returns:
        ``(records, extra_ms, seconds)``: per plan ``{"plan", "label", "median_ms", "ci_ms",
        "rounds"}``; per extra model its median ms; the wall time spent building (and
        exporting) the models and timing them, ``{"build", "timing"}``.
    """
    runtime.check_backend(backend)
    if not plans and not extra:
        raise ValueError("nothing to measure: pass plans or extra models")
    if min_rounds < 1 or max_rounds < min_rounds or not time_budget_s > 0:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds and time_budget_s > 0, got "
                         f"{min_rounds}, {max_rounds}, {time_budget_s}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, *base.patch_embed.img_size, generator=g)
    t_build = time.perf_counter()
    mods = {f"plan{i}": build_model(base, p) for i, p in enumerate(plans)}
    mods.update(dict(extra or {}))
    mods = runtime.to_backend(mods, dict.fromkeys(mods, x), backend)
    names = list(mods)
    samples: dict[str, list[float]] = {k: [] for k in names}
    t0, r = time.perf_counter(), 0
    while True:
        t_round = time.perf_counter()
        res = measure.measure_latency(mods, x, threads=threads, rounds=1, min_run_time=min_run_time,
                                      seed=seed * 100_003 + r, warmup=1 if r == 0 else 0, backend=backend)
        for k, lat in res.items():
            samples[k].extend(lat.round_medians_ms)
        r += 1
        per_round = time.perf_counter() - t_round
        if progress:
            print(f"  round {r}: {per_round:.1f} s", flush=True)
        if r >= max_rounds or (r >= min_rounds and time.perf_counter() - t0 + per_round > time_budget_s):
            break
    ids = [list(range(r))] * len(names)
    f = latency.round_factors([samples[k] for k in names], ids)
    norm = {k: [v / f[i] for i, v in enumerate(samples[k])] for k in names}
    rng = np.random.default_rng(seed)
    records = []
    for i, p in enumerate(plans):
        vals = norm[f"plan{i}"]
        records.append({"plan": p.to_dict(), "label": p.label(), "median_ms": float(np.median(vals)),
                        "ci_ms": list(latency.bootstrap_median_ci(vals, rng=rng)), "rounds": len(vals)})
    extra_ms = {k: float(np.median(norm[k])) for k in (extra or {})}
    return records, extra_ms, {"build": t0 - t_build, "timing": time.perf_counter() - t0}


def _default_n_values(geo: Geometry, points: int) -> list[int]:
    lo = geo.prefix + 1
    if geo.tokens - lo + 1 <= points:
        return list(range(lo, geo.tokens + 1))
    return sorted({int(round(v)) for v in np.linspace(lo, geo.tokens, points)})


def profile_device(base: nn.Module, *, backend: str = "eager", batch_size: int = 1, threads: int = 2,
                   time_budget_s: float = 240.0, curve_share: float = 0.5, curve_points: int = 33,
                   plans: Optional[Sequence[PlanSpec]] = None, seed: int = 0, min_run_time: float = 0.01,
                   export_shapes: str = "static", progress: bool = False) -> dict[str, Any]:
    """Take exactly the measurements :func:`fit` needs, on this machine, within a time budget.

    1. The dense network curve ``L(n)`` at ``curve_points`` token counts spread over
       ``prefix + 1 .. N`` (one interleaved :func:`vitprune_lite.latency.sweep`, adaptive
       rounds, ``curve_share`` of the budget).
    2. The frame and the calibration plans (:func:`calibration_plans`, or ``plans``), all in the
       same interleaved rounds (:func:`measure_plans`, the rest of the budget).

    Building and exporting (onnxruntime) the curve's points and the plans happens before their
    timed rounds and is not charged to the budget; ``seconds`` reports it apart
    (``curve_build``, ``plans_build``). ``export_shapes``: see :func:`vitprune_lite.latency.sweep`.

    Returns:
        A measurements dict (format :data:`MEAS_FORMAT`) for :func:`fit`, with the wall time
        of each part under ``"seconds"`` and the environment.
    """
    runtime.check_backend(backend)
    if not 0 < curve_share < 1:
        raise ValueError(f"curve_share must be in (0, 1), got {curve_share}")
    geo = Geometry.of_model(base, batch_size)
    base = tokens.restore(copy.deepcopy(base)).eval()
    t0 = time.perf_counter()
    sw = latency.sweep(base, n_values=_default_n_values(geo, curve_points), batch_size=batch_size,
                       threads=threads, time_budget_s=curve_share * time_budget_s, seed=seed,
                       min_run_time=min_run_time, progress=progress, backend=backend,
                       export_shapes=export_shapes)
    t1 = time.perf_counter()
    todo = list(plans) if plans is not None else calibration_plans(geo)
    records, extra, spent = measure_plans(base, todo, backend=backend, batch_size=batch_size, threads=threads,
                                   time_budget_s=max(1.0, time_budget_s - (t1 - t0)), seed=seed,
                                   min_run_time=min_run_time, extra={"frame": _frame_model(base)},
                                   progress=progress)
    t2 = time.perf_counter()
    env = measure.environment()
    env["threads"] = threads
    env.update(runtime.versions() if backend == "onnxruntime" else {})
    return {"format": MEAS_FORMAT, "geometry": asdict(geo), "backend": backend,
            "device": latency.device_label("cpu", threads), "threads": threads,
            "curve": {"n": sw.n, "median_ms": sw.median_ms, "ci_low_ms": sw.ci_low_ms, "ci_high_ms": sw.ci_high_ms},
            "frame_ms": extra["frame"], "plans": records,
            "seconds": {"curve": t1 - t0, "curve_build": t1 - t0 - sw.seconds, "curve_timing": sw.seconds,
                        "plans": t2 - t1, "plans_build": spent["build"], "plans_timing": spent["timing"],
                        "total": t2 - t0, "timing": sw.seconds + spent["timing"]},
            "load_avg": sw.load_avg, "environment": env}


# ----------------------------------------------------------------------------- one call per device

@dataclass
class Calibration:
    """A device's predictor with its own held-out check and the planner's safety margin.

    Attributes:
        predictor: the fitted :class:`Predictor`.
        measurements: what :func:`profile_device` measured (the fit's input).
        validation: :func:`validate` on held-out random plans timed with the dense model in the
            same rounds (``validation["ratio"]`` is the check in ratios to dense).
        margin: the ``margin_quantile`` of the held-out ``|ratio error|``, for
            :func:`vitprune_lite.pipelines.choose_plan` (0 when ``margin_quantile`` is 0).
        seconds: wall time of profiling (``"profile"``, of which ``"timing"``) and of the
            held-out check (``"holdout"``).
    """

    predictor: Predictor
    measurements: dict[str, Any]
    validation: dict[str, Any]
    margin: float
    seconds: dict[str, float]


def calibrate(base: nn.Module, *, backend: str = "eager", batch_size: int = 1, threads: int = 1,
              time_budget_s: float = 60.0, curve_points: int = 33, holdout: int = 30,
              holdout_budget_s: float = 60.0, margin_quantile: float = 0.9, seed: int = 0,
              min_run_time: float = 0.01, progress: bool = False) -> Calibration:
    """Profile a device, fit its predictor, check it on held-out plans and derive the margin.

    The steps every user of the planner needs, in one place: :func:`profile_device` within
    ``time_budget_s`` of timing, :func:`fit`, then ``holdout`` :func:`random_plans` (seeded
    ``1000 + seed``, never used to fit) timed interleaved with the dense model
    (:func:`measure_plans`, ``holdout_budget_s``) and :func:`validate` against it.

    Args:
        margin_quantile: in [0, 1); the planner's margin is this quantile of the held-out
            ``|predicted ratio / measured ratio - 1|``; 0 means no margin.
    """
    if not 0 <= margin_quantile < 1:
        raise ValueError(f"margin_quantile must be in [0, 1), got {margin_quantile!r}")
    if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 1:
        raise ValueError(f"holdout must be an int >= 1, got {holdout!r}")
    t0 = time.perf_counter()
    meas = profile_device(base, backend=backend, batch_size=batch_size, threads=threads,
                          time_budget_s=time_budget_s, curve_points=curve_points, seed=seed,
                          min_run_time=min_run_time, progress=progress)
    t1 = time.perf_counter()
    pred = fit(meas)
    geo = pred.geometry
    held, ref, _ = measure_plans(base, random_plans(geo, holdout, seed=1000 + seed), backend=backend,
                                 batch_size=batch_size, threads=threads, time_budget_s=holdout_budget_s,
                                 seed=seed + 1, min_run_time=min_run_time,
                                 extra={"dense": build_model(base, geo.dense_plan())})
    val = validate(pred, held, reference_ms=ref["dense"])
    errs = [abs(r["ratio_err"]) for r in val["rows"]]
    margin = float(np.quantile(errs, margin_quantile)) if margin_quantile else 0.0
    return Calibration(pred, meas, val, margin, {"profile": t1 - t0, "timing": meas["seconds"]["timing"],
                                                 "holdout": time.perf_counter() - t1})
