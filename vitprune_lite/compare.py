"""Side-by-side comparison of methods: averaging over seeds, Pareto fronts, the per-device plot.

Notebook 04 collects one row per (method, setting, device, seed) - accuracy on the device's
private test split, FLOPs, measured latency - and this module turns the rows into what a reader
compares: means with their spread over seeds, the points no other point beats on both accuracy
and cost, and the best method per device and budget.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["aggregate", "pareto_front", "best_per", "pareto_axes"]


def aggregate(rows: Iterable[Mapping[str, Any]], keys: Sequence[str], values: Sequence[str]) -> list[dict[str, Any]]:
    """Group rows by ``keys`` and average ``values`` over the group (typically over seeds).

    Args:
        rows: dicts holding every name in ``keys`` and ``values`` (a value may be None: skipped).
        keys: the grouping columns, e.g. ``("method", "setting", "device")``.
        values: numeric columns to summarise.

    Returns:
        One dict per group, in first-seen order: the key columns, ``n`` (rows in the group) and for
        every value ``v``: ``v`` (mean), ``v_std`` (sample standard deviation, 0 for one row),
        ``v_min`` and ``v_max``.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        missing = [k for k in (*keys, *values) if k not in r]
        if missing:
            raise KeyError(f"row {dict(r)} lacks {missing}")
        groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(keys, key), n=len(members))
        for v in values:
            xs = np.array([m[v] for m in members if m[v] is not None], dtype=float)
            agg[v] = float(xs.mean()) if xs.size else None
            agg[f"{v}_std"] = float(xs.std(ddof=1)) if xs.size > 1 else 0.0
            agg[f"{v}_min"] = float(xs.min()) if xs.size else None
            agg[f"{v}_max"] = float(xs.max()) if xs.size else None
        out.append(agg)
    return out


def pareto_front(cost: Sequence[float], quality: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point beats: none is cheaper-or-equal *and* better-or-equal
    with at least one strict. Lower ``cost`` and higher ``quality`` are better.

    Returns:
        int64 ``[k]`` indices sorted by cost (ties keep the better quality first).
    """
    c, q = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    if c.shape != q.shape or c.ndim != 1:
        raise ValueError(f"cost and quality must be 1-D and equally long, got {c.shape} and {q.shape}")
    order = np.lexsort((-q, c))  # by cost, then best quality first
    front, best = [], -np.inf
    for i in order:
        if q[i] > best:
            front.append(i)
            best = q[i]
    return np.asarray(front, dtype=np.int64)


def best_per(rows: Iterable[Mapping[str, Any]], by: Sequence[str], score: str,
             exclude: Sequence[str] = (), method_key: str = "method") -> dict[tuple, Mapping[str, Any]]:
    """The row with the highest ``score`` per group ``by`` (e.g. per device and budget).

    Args:
        exclude: methods never chosen (e.g. the oracle, which no deployment can run).

    Returns:
        group key tuple -> the winning row; ties go to the first row seen.
    """
    best: dict[tuple, Mapping[str, Any]] = {}
    for r in rows:
        if r[method_key] in exclude or r[score] is None:
            continue
        key = tuple(r[k] for k in by)
        if key not in best or r[score] > best[key][score]:
            best[key] = r
    return best


def pareto_axes(ax, points: Sequence[Mapping[str, Any]], x: str, y: str = "acc", *,
                styles: Optional[Mapping[str, Mapping[str, Any]]] = None,
                front_exclude: Sequence[str] = ()) -> None:
    """One panel: every point (``y`` mean with its seed spread as an error bar) by method, and the
    Pareto front over them as a grey step line.

    Args:
        points: aggregated rows (:func:`aggregate`) with ``"method"``, ``x``, ``y`` and ``y_std``.
        styles: method -> keyword arguments of ``ax.errorbar`` (a ``"label"`` replaces the method name).
        front_exclude: methods drawn but left out of the front (e.g. the oracle).
    """
    styles = styles or {}
    by_method: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in points:
        if p.get(x) is not None and p.get(y) is not None:
            by_method[p["method"]].append(p)
    for m, ps in by_method.items():
        ps = sorted(ps, key=lambda p: p[x])
        kw = {"marker": "o", "ms": 4, "capsize": 2, "lw": 1, "label": m, **styles.get(m, {})}
        ax.errorbar([p[x] for p in ps], [p[y] for p in ps], yerr=[p.get(f"{y}_std", 0.0) for p in ps], **kw)
    allp = [p for m, ps in by_method.items() if m not in front_exclude for p in ps]
    if allp:
        f = pareto_front([p[x] for p in allp], [p[y] for p in allp])
        ax.step([allp[i][x] for i in f], [allp[i][y] for i in f], where="post", color="0.6", lw=3,
                alpha=0.4, zorder=0)
