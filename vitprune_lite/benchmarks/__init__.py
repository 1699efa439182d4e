"""Benchmarks (not tests): speed and memory targets, measured side by side in one run.

Run one with ``python -m vitprune_lite.benchmarks.<name>``; each prints a table and writes
``data/benchmarks/<name>.json`` with the environment it ran in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from torch import nn


def save(res: dict[str, Any], name: str, path: Optional[str | Path] = None) -> Path:
    """Write a benchmark's results atomically to ``path`` (default ``data/benchmarks/<name>.json``)."""
    from vitprune_lite import paths

    target = Path(path) if path else paths.data_dir() / "benchmarks" / f"{name}.json"
    paths.write_json_atomic(target, res)
    print(f"wrote {target}")
    return target


def speedups(dense: nn.Module, pruned: nn.Module, size: int, *, threads: int, rounds: int,
             min_run_time: float, batches: Sequence[int] = (1, 32)) -> dict[str, Any]:
    """FLOPs of both models (one image) and their latency, interleaved, at each batch size
    (random ``[B, 3, size, size]`` inputs).

    Returns:
        ``{"flops_dense", "flops_pruned", "flop_speedup", "batch<B>": {"dense", "pruned" (latency
        dicts), "speedup", "speedup_over_flop_speedup"}}``.
    """
    import torch

    from vitprune_lite import measure

    x1 = torch.randn(1, 3, size, size)
    f_dense, f_pruned = measure.count_flops(dense, x1), measure.count_flops(pruned, x1)
    out: dict[str, Any] = {"flops_dense": f_dense, "flops_pruned": f_pruned, "flop_speedup": f_dense / f_pruned}
    for b in batches:
        lat = measure.measure_latency({"dense": dense, "pruned": pruned}, torch.randn(b, 3, size, size),
                                      threads=threads, rounds=rounds, min_run_time=min_run_time)
        sp = 1.0 / measure.latency_ratio(lat, "pruned", "dense")
        out[f"batch{b}"] = {"dense": lat["dense"].to_dict(), "pruned": lat["pruned"].to_dict(),
                            "speedup": sp, "speedup_over_flop_speedup": sp / out["flop_speedup"]}
    return out
