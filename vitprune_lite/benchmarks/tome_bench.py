"""Benchmark (not a test): token reduction's measured latency on this machine.

    python -m vitprune_lite.benchmarks.tome_bench               # everything, 2 threads
    python -m vitprune_lite.benchmarks.tome_bench --parts tome zero

Parts:

- ``tome``: ToMe (``tokens.patch_tome``, proportional attention kept fused) at r = 0, 4, 8, 13,
  16 against the dense model, deit_tiny and deit_small (random weights), batch 1 (and
  ``--batch``), beside the published ToMe implementation measured on this kind of machine (shown
  only when ``--threads`` is the published figures' thread count, 2).
  r=16 exceeds half the tokens in DeiT's last block; it is capped there (``clip=True``), as
  the published code does silently.
- ``zero``: "doing nothing costs nothing": dense vs ToMe r=0 vs POMT R=0 on deit_small,
  deit_tiny and the base model, many interleaved rounds; target within 1 %.
- ``matched``: POMT vs ToMe at matched accuracy on the base model: the configurations notebook 03
  chose (read from ``data/results/03_latency_curve_profiling.json``), re-timed with more rounds.

All latency comes from ``measure.measure_latency`` (interleaved, shuffled rounds); ratios are
medians of per-round ratios, with their interquartile range. Results go to
``data/benchmarks/tome_bench.json``.
"""
from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
import torch

from vitprune_lite import measure, models, paths, tokens
from vitprune_lite.benchmarks import save
from vitprune_lite.experiments import latency_curve

#: Batch-1 latency / dense of the published ToMe timm patch on this kind of machine (at
#: ``PUBLISHED_TOME_THREADS`` threads, random weights), from the project's notes on the
#: published implementations.
PUBLISHED_TOME_THREADS = 2
PUBLISHED_TOME_B1 = {
    "deit_tiny_patch16_224": {4: 1.44, 8: 1.25, 13: 1.07, 16: 1.06},
    "deit_small_patch16_224": {4: 0.98, 8: 0.90, 13: 0.70, 16: 0.67},
}
#: ... and at batch 16: deit_small r=13.
PUBLISHED_TOME_B16 = {"deit_small_patch16_224": {13: 0.61}}
TIMM = ("deit_tiny_patch16_224", "deit_small_patch16_224")


def ratios(res: dict, key: str, ref: str) -> dict[str, Any]:
    """Median and interquartile range of the per-round latency ratio key / ref."""
    per_round = np.asarray(res[key].round_medians_ms) / np.asarray(res[ref].round_medians_ms)
    q25, q75 = np.percentile(per_round, [25, 75])
    return {"ratio": measure.latency_ratio(res, key, ref), "iqr": [float(q25), float(q75)],
            "median_ms": res[key].median_ms}


def image(model, batch: int) -> torch.Tensor:
    size = model.patch_embed.img_size
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))


def bench_tome(args) -> list[dict]:
    rows = []
    for name in TIMM:
        dense = models.create_timm_model(name)
        variants = {"dense": dense}
        variants.update({f"r={r}": tokens.patch_tome(copy.deepcopy(dense), r, clip=True) for r in args.r})
        for b in args.batch:
            res = measure.measure_latency(variants, image(dense, b), threads=args.threads, rounds=args.rounds,
                                          min_run_time=args.min_run_time)
            for r in args.r:
                # the published figures were taken at PUBLISHED_TOME_THREADS threads: compared only at that count
                published = ((PUBLISHED_TOME_B1 if b == 1 else PUBLISHED_TOME_B16 if b == 16 else {}).get(name, {})
                             if args.threads == PUBLISHED_TOME_THREADS else {})
                row = {"model": name, "batch": b, "r": r, **ratios(res, f"r={r}", "dense"),
                       "dense_ms": res["dense"].median_ms, "published_ratio": published.get(r),
                       "schedule": tokens.schedule_of(variants[f"r={r}"])["schedule"],
                       "load_avg": measure.environment()["load_avg_1min"]}
                rows.append(row)
                pub = "" if row["published_ratio"] is None else f"   published {row['published_ratio']:.2f}x"
                print(f"{name:24s} b{b:<3d} r={r:<3d} {row['ratio']:.3f}x dense "
                      f"(IQR {row['iqr'][0]:.3f}-{row['iqr'][1]:.3f}; dense {row['dense_ms']:.1f} ms){pub}", flush=True)
    return rows


def bench_zero(args) -> list[dict]:
    rows = []
    base, _ = models.load_base_model()
    for name in ("base_vit",) + TIMM:
        dense = base if name == "base_vit" else models.create_timm_model(name)
        variants = {"dense": dense, "tome r=0": tokens.patch_tome(copy.deepcopy(dense), 0),
                    "pomt R=0": tokens.patch_pomt(copy.deepcopy(dense), 0)}
        x = image(dense, 1)
        with torch.inference_mode():
            ref = dense(x)
            exact = {k: bool(torch.equal(m(x), ref)) for k, m in variants.items()}
        res = measure.measure_latency(variants, x, threads=args.threads, rounds=args.zero_rounds,
                                      min_run_time=args.min_run_time)
        for k in ("tome r=0", "pomt R=0"):
            row = {"model": name, "variant": k, "exact": exact[k], **ratios(res, k, "dense"),
                   "load_avg": measure.environment()["load_avg_1min"]}
            rows.append(row)
            print(f"{name:24s} {k:9s} exact={row['exact']}  {row['ratio']:.4f}x dense "
                  f"(IQR {row['iqr'][0]:.4f}-{row['iqr'][1]:.4f})", flush=True)
    return rows


def bench_matched(args) -> dict:
    path = paths.results_dir() / "03_latency_curve_profiling.json"
    if not path.exists():
        print(f"skipping 'matched': {path} is missing; run notebook 03 first")
        return {}
    nb = paths.read_json(path)
    latency_curve.check_result_benchmark(nb, path, "v1")  # the variants below are built on the v1 base model
    rows = {r["config"]: r for r in nb["final_rows"]}
    pomt = next(r for r in nb["final_rows"] if r["row"] == "POMT (chosen R)")
    tome = next((r for r in nb["final_rows"] if r["row"] == "matched accuracy" and r["method"] == "tome"), None)
    base, _ = models.load_base_model()
    layer = nb["pomt_choice"]["layer"]
    variants = {"dense": base, pomt["config"]: tokens.reduced_copy(base, "pomt", nb["pomt_choice"]["R"], layer=layer)}
    if tome is not None:
        r = int(tome["config"][len("tome("):-1])
        variants[tome["config"]] = tokens.reduced_copy(base, "tome", r)
    res = measure.measure_latency(variants, image(base, 1), threads=args.threads, rounds=args.zero_rounds,
                                  min_run_time=args.min_run_time)
    out = {"pomt": pomt["config"], "tome": None if tome is None else tome["config"],
           "val_acc": {k: rows[k]["val_acc"] for k in variants if k in rows},
           "test_acc": {k: rows[k]["test_acc"] for k in variants if k in rows},
           "pomt_vs_dense": ratios(res, pomt["config"], "dense"),
           "load_avg": measure.environment()["load_avg_1min"]}
    if tome is not None:
        out["tome_vs_dense"] = ratios(res, tome["config"], "dense")
        out["pomt_vs_tome"] = ratios(res, pomt["config"], tome["config"])
        print(f"base model b1: {pomt['config']} {out['pomt_vs_dense']['ratio']:.3f}x dense, {tome['config']} "
              f"{out['tome_vs_dense']['ratio']:.3f}x dense; POMT / ToMe = {out['pomt_vs_tome']['ratio']:.3f} "
              f"(IQR {out['pomt_vs_tome']['iqr'][0]:.3f}-{out['pomt_vs_tome']['iqr'][1]:.3f})")
    else:
        print(f"base model b1: {pomt['config']} {out['pomt_vs_dense']['ratio']:.3f}x dense; "
              "no ToMe setting reached POMT's validation accuracy in notebook 03")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["tome", "zero", "matched"], choices=["tome", "zero", "matched"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--r", nargs="+", type=int, default=[0, 4, 8, 13, 16])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--zero-rounds", type=int, default=30)
    p.add_argument("--min-run-time", type=float, default=0.2)
    p.add_argument("--out", default=None, help="JSON path (default data/benchmarks/tome_bench.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"args": vars(args), "environment_start": measure.environment()}
    if "tome" in args.parts:
        out["tome"] = bench_tome(args)
    if "zero" in args.parts:
        out["zero"] = bench_zero(args)
    if "matched" in args.parts:
        out["matched"] = bench_matched(args)
    out["environment"] = measure.environment()
    save(out, "tome_bench", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
