"""Benchmark (not a test): what a latency-workload profile costs on this machine, and what it finds.

    python -m vitprune_lite.benchmarks.latency_bench                      # deit_small, batch 1, 2 threads
    python -m vitprune_lite.benchmarks.latency_bench --models deit_tiny_patch16_224 deit_small_patch16_224
    python -m vitprune_lite.benchmarks.latency_bench --device cuda --batch 1 8   # on a GPU

Each model (random weights: latency does not depend on them) is profiled over every token count
with two independent interleaved sweeps (``latency.profile``), each limited to ``--budget``
seconds after its first ``--rounds`` rounds, with ``--protocol`` (default ``adaptive``, see
:func:`vitprune_lite.latency.sweep`; ``rounds`` is the notebooks' protocol). Reported per
sweep: wall time, rounds per point, the 95 % interval half-width (target +-3 %), the load
average before and after; per profile:
the step-detection verdict and the test-retest agreement. Curves are written to
``data/latency/<device>__<model>__b<batch>.json`` (commit them, with the machine named in the
file name), a summary to ``data/benchmarks/latency_bench.json``.

The issue's target: one whole-network sweep of deit_small_patch16_224 at batch 1, every token
count, median interval half-width <= 3 %, in at most 3 minutes. The authors' protocol spends
about 2 s per point (195 points: 402 s measured on this kind of machine).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vitprune_lite import latency, measure, models
from vitprune_lite.benchmarks import save


def summarise(curve: latency.Curve, target: float) -> dict:
    """Per-sweep cost and precision, and the profile's verdict."""
    sweeps = []
    for s in curve.sweeps:
        hw = s.rel_halfwidth()
        rounds = np.array([len(v) for v in s.samples_ms])
        sweeps.append({"seconds": s.seconds, "points": len(s.n), "rounds_min": int(rounds.min()),
                       "rounds_median": float(np.median(rounds)), "rounds_max": int(rounds.max()),
                       "halfwidth_median": float(np.median(hw)), "halfwidth_max": float(hw.max()),
                       "share_within_target": float((hw <= target).mean()), "load_avg": s.load_avg,
                       "L_N_ms": s.median_ms[-1], "L_2_ms": s.median_ms[0]})
    return {"model": curve.model, "device": curve.device, "batch": curve.batch_size,
            "threads": curve.threads, "part": curve.part, "sweeps": sweeps,
            "verdict": curve.analysis["verdict"], "retest": curve.analysis["retest"],
            "reliable_steps": curve.analysis["reliable_steps"],
            "steps_per_sweep": curve.analysis["steps_per_sweep"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["deit_small_patch16_224"])
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget", type=float, default=180.0, help="seconds per sweep, at most")
    p.add_argument("--rounds", type=int, default=5, help="rounds every point gets")
    p.add_argument("--max-rounds", type=int, default=60)
    p.add_argument("--protocol", default="adaptive", choices=latency.PROTOCOLS,
                   help="latency.sweep's protocol: 'adaptive' (single timed calls, mini-rounds, the budget spent "
                        "on the widest intervals) or 'rounds' (the notebooks' default)")
    p.add_argument("--target", type=float, default=0.03, help="interval half-width / median")
    p.add_argument("--sweeps", type=int, default=2)
    p.add_argument("--block", action="store_true", help="also profile block 0 alone")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = {"args": vars(args), "profiles": []}
    for name in args.models:
        model = models.create_timm_model(name).to(args.device)
        for b in args.batch:
            for part in ["network"] + (["block0"] if args.block else []):
                t0 = time.perf_counter()
                curve = latency.profile(model, name, sweeps=args.sweeps, batch_size=b, threads=args.threads,
                                        part=part, device=args.device, time_budget_s=args.budget,
                                        rounds=args.rounds, max_rounds=args.max_rounds,
                                        target_rel_ci=args.target, progress=args.progress,
                                        protocol=args.protocol)
                path = latency.save_curve(curve)
                s = summarise(curve, args.target)
                s.update(file=str(path), total_seconds=time.perf_counter() - t0)
                out["profiles"].append(s)
                print(f"\n{name} {part} batch {b}, {args.threads} threads on {curve.device} -> {path.name}")
                for i, sw in enumerate(s["sweeps"], 1):
                    print(f"  sweep {i}: {sw['points']} points in {sw['seconds']:.0f} s, rounds "
                          f"{sw['rounds_min']}-{sw['rounds_max']} (median {sw['rounds_median']:.0f}), CI half-width "
                          f"median {100 * sw['halfwidth_median']:.1f} % / max {100 * sw['halfwidth_max']:.1f} %, "
                          f"{100 * sw['share_within_target']:.0f} % of points within +-{100 * args.target:.0f} %, "
                          f"L(N) {sw['L_N_ms']:.1f} ms, load {sw['load_avg'][0]} -> {sw['load_avg'][1]}")
                rt = s["retest"] or {}
                print(f"  verdict: {s['verdict']}")
                if rt:
                    print(f"  test-retest: median |diff| {100 * rt['rel_diff_median']:.1f} %, max "
                          f"{100 * rt['rel_diff_max']:.1f} %, detrended correlation {rt['residual_corr']}")
    out["environment"] = measure.environment()
    save(out, "latency_bench")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
