"""Benchmark (not a test): does the latency predictor earn its name, in eager PyTorch and ONNX Runtime?

    python -m vitprune_lite.benchmarks.latency_predictor                 # the full run (idle machine!)
    python -m vitprune_lite.benchmarks.latency_predictor --smoke --out /tmp/lp.json   # seconds, numbers meaningless

For every model (default the v2 base model; timm names such as deit_small_patch16_224 with
``--models``) x thread count (``--threads``, default 1: the planner's) x backend (eager,
onnxruntime) x batch size (1, 32), on this machine (ONNX Runtime's ``intra_op_num_threads`` =
torch's thread count):

1. **Profile** (:func:`vitprune_lite.predictor.profile_device`): the dense curve ``L(n)``, the
   frame and the calibration plans, interleaved, within ``--budget`` seconds of timing (model
   building and ONNX export are reported apart: with onnxruntime every curve point and plan is
   one export, seconds each, which can exceed the timing itself).
2. **Fit** (:func:`vitprune_lite.predictor.fit`) and **validate** on ``--holdout`` random plans
   (random uneven widths x a random token method and setting) that the fit never saw, measured
   interleaved in their own rounds together with the dense model: the share predicted within
   +-10 % and +-5 %, in milliseconds and as a ratio to the dense model timed in those rounds
   (what the planner's budgets are expressed in).
3. **Backends compared**: the fixed-cost share of each curve (``L(2) / L(N)`` and frame / ``L(N)``)
   and the token methods' latency relative to dense at the calibration settings, ranked.

Then, for the project's base model with its shipped checkpoint (``--benchmark``, default v2),
the **combined planner** (:func:`vitprune_lite.pipelines.plan_candidates` with the batch-1
predictor of each backend) chooses structure x tokens under budgets of 90 % and 80 % of the
dense model's batch-1 latency, per device (its validation split of notebook 01's fine-tune set,
or a random public subset if notebook 01 has not run) and seed; every choice (combined,
structure only, tokens only) is timed against the dense model, interleaved, in the same
backend, for ``--check-rounds`` rounds. A case meets its budget if the measured latency ratio
to dense is at most the budget share. Structures are magnitude-pruned copies at TAP-ViTs'
budgets (no recovery: quick to build, the same for every device). In eager PyTorch the planner
is anchored as notebook 04's is (each structure and each token setting on the dense model
timed once, ``anchor_structures`` and ``anchor_tokens``); the ONNX Runtime planner takes the
predictor alone (the anchors are eager timings).

Before all that (``--parts exactness``), every model kind is exported at each batch size and its
ONNX Runtime output compared with PyTorch's (max abs difference, bound 1e-4).

Writes ``data/benchmarks/latency_predictor.json`` (``--out`` elsewhere): per run the predictor,
its validation rows, the curve, profiling seconds and load average; the planner's cases and
met shares; the environment, thread count and library versions. Run it on an idle machine:
every figure in it is a timing. Memory: with onnxruntime every curve point and calibration plan
is its own session holding its own weights (deit_small: about 90 MB per export, twice over for
the serialised graph and the session), so one deit_small profile holds several GB at once.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from vitprune_lite import importance, measure, models, pipelines, predictor, runtime
from vitprune_lite.benchmarks import save

#: The planner's token settings per benchmark: POMT at a quarter and a half of the patches
#: (v1: 64, v2: 144), ToMe at notebook 04's two smaller r, Top-K and EViT keeping 70 %.
TOKEN_GRIDS = {"v1": [["pomt", 16], ["pomt", 32], ["tome", 2], ["tome", 4], ["topk", 0.7], ["evit", 0.7]],
               "v2": [["pomt", 36], ["pomt", 72], ["tome", 4], ["tome", 9], ["topk", 0.7], ["evit", 0.7]]}


def load_model(name: str, benchmark: str = "v2") -> torch.nn.Module:
    """``base_vit`` (the shipped checkpoint of ``benchmark``) or a timm name (random weights: latency only)."""
    if name == "base_vit":
        return models.load_base_model(benchmark)[0].eval()
    return models.create_timm_model(name).eval()


def exactness(model, name: str, batches: list[int], seed: int = 0) -> list[dict[str, Any]]:
    """Export every model kind and compare ONNX Runtime's output with PyTorch's on the same inputs.

    Kinds: dense; magnitude-pruned with TAP-ViTs' adaptive-looking uneven per-block keep ratios;
    POMT, Top-K, EViT and ToMe (with and without proportional attention) at fixed settings; and
    POMT and ToMe on the pruned structure. Inputs: two seeded random batches per batch size.
    """
    import copy as _copy

    from vitprune_lite import tokens

    depth, n = len(model.blocks), tokens.token_count(model)
    ratios = {"mlp": [0.9 - 0.6 * i / max(1, depth - 1) for i in range(depth)],
              "attn": [0.5 + 0.4 * (i % 2) for i in range(depth)]}
    scores = importance.score(model, "magnitude_l2")
    pruned = importance.prune_copy(model, importance.make_plan(model, scores, (0.6, 0.7), layer_ratios=ratios))
    r_tome = max(1, (n - 1) // (3 * depth))
    kinds = {"dense": model, "structured_uneven": pruned,
             "pomt": tokens.reduced_copy(model, "pomt", n // 4), "topk": tokens.reduced_copy(model, "topk", 0.7),
             "evit": tokens.reduced_copy(model, "evit", 0.7), "tome": tokens.reduced_copy(model, "tome", r_tome),
             "tome_not_proportional": tokens.patch_tome(_copy.deepcopy(model).eval(), r_tome, proportional=False),
             "structured_pomt": tokens.reduced_copy(pruned, "pomt", n // 4),
             "structured_tome": tokens.reduced_copy(pruned, "tome", r_tome)}
    rows = []
    for b in batches:
        g = torch.Generator().manual_seed(seed)
        xs = [torch.randn(b, 3, *model.patch_embed.img_size, generator=g) for _ in range(2)]
        for kind, m in kinds.items():
            t0 = time.perf_counter()
            try:
                om, diff = runtime.export_checked(m, xs[0], check_inputs=xs[1:])
                row = {"model": name, "batch": b, "kind": kind, "exported": True, "max_abs_diff": diff,
                       "notes": om.meta["notes"], "export_seconds": time.perf_counter() - t0,
                       "onnx_mb": len(om.onnx_bytes) / 1e6}
            except Exception as e:  # recorded, not hidden: where a kind does not export and why
                row = {"model": name, "batch": b, "kind": kind, "exported": False, "error": f"{type(e).__name__}: {e}"[:500]}
            rows.append(row)
            print(f"{name:24s} b{b:<3d} {kind:22s} " + (f"max |ORT - PyTorch| {row['max_abs_diff']:.2e}"
                                                        if row["exported"] else row["error"][:120]), flush=True)
    return rows


def backend_comparison(meas: dict[str, Any]) -> dict[str, Any]:
    """Fixed-cost shares of the curve and the token methods' latency / dense at calibration settings."""
    curve = meas["curve"]
    full = curve["median_ms"][-1]
    dense_w = predictor.Geometry(**meas["geometry"]).dense_plan().widths
    dense = next(r for r in meas["plans"] if predictor.PlanSpec.from_dict(r["plan"]) == predictor.PlanSpec(dense_w))
    methods = []
    for r in meas["plans"]:
        p = predictor.PlanSpec.from_dict(r["plan"])
        if p.method and p.widths == dense_w:
            methods.append({"plan": r["label"], "method": p.method, "ratio_to_dense": r["median_ms"] / dense["median_ms"]})
    methods.sort(key=lambda m: m["ratio_to_dense"])
    return {"fixed_cost_share": curve["median_ms"][0] / full, "frame_share": meas["frame_ms"] / full,
            "L_N_ms": full, "methods_ranked": methods}


def profile_fit_validate(model, name: str, backend: str, batch: int, threads: int, args):
    """:func:`vitprune_lite.predictor.calibrate` for one run, with its summary line printed."""
    cal = predictor.calibrate(model, backend=backend, batch_size=batch, threads=threads, time_budget_s=args.budget,
                              curve_points=args.curve_points, holdout=args.holdout,
                              holdout_budget_s=args.holdout_budget, margin_quantile=args.margin_quantile,
                              seed=args.seed, min_run_time=args.min_run_time, progress=args.progress)
    meas, pred, val = cal.measurements, cal.predictor, cal.validation
    run = {"model": name, "backend": backend, "batch": batch, "threads": threads,
           "profiling_seconds": {**meas["seconds"], "wall": cal.seconds["profile"]},
           "holdout_seconds": cal.seconds["holdout"], "margin": cal.margin,
           "load_avg": meas["load_avg"], "fit": pred.report, "validation": val,
           "curve": meas["curve"], "frame_ms": meas["frame_ms"], "calibration": meas["plans"],
           "backends": backend_comparison(meas), "predictor": pred.to_dict()}
    sec = meas["seconds"]
    print(f"{name:24s} {backend:11s} b{batch:<3d} {threads}t profiled in {sec['timing']:.0f} s of timing "
          f"(+{sec['curve_build'] + sec['plans_build']:.0f} s building/exporting): "
          f"within 10 % {100 * val['within_10']:.0f} %, "
          f"within 5 % {100 * val['within_5']:.0f} % of {val['n']} held-out plans; "
          f"median |err| {100 * val['rel_err_median']:.1f} %; relative to dense: within 10 % "
          f"{100 * val['ratio']['within_10']:.0f} %, within 5 % {100 * val['ratio']['within_5']:.0f} %", flush=True)
    return run, cal


def planner_cases(base, cals: dict[str, Any], args) -> dict[str, Any]:
    """The combined planner with each backend's batch-1 calibration, checked by measurement
    (:func:`vitprune_lite.pipelines.check_plans`, with the calibration's margin).

    Candidates and their validation accuracies are computed once per device x seed and shared by
    every backend (:func:`vitprune_lite.pipelines.repredict`); the eager planner's are anchored
    (each structure and token setting timed once against the dense model)."""
    from vitprune_lite import data, gmm

    bench = data.benchmark_module(args.benchmark).load_benchmark(0)
    public = pipelines.PublicData(*bench.public["train"].tensors())
    try:
        sets = gmm.load_selected_sets(benchmark=args.benchmark)
        space = str(sets["default_feature_space"])
        finetune = {d: sets[f"{d}/{space}/finetune"] for d in args.devices if f"{d}/{space}/finetune" in sets}
    except FileNotFoundError:
        finetune = {}
    if not finetune:  # notebook 01 has not run: one random public subset stands for a device
        finetune = {"random_public": np.random.default_rng(0).permutation(len(public.x))[:args.val_pool]}
    scores = importance.score(base, "magnitude_l2")
    structures = {"dense": base}
    for m, a in args.structures:
        structures[f"magnitude {m:g}/{a:g}"] = importance.prune_copy(base, importance.make_plan(base, scores, (m, a)))
    keys = list(cals)
    anchored_key = next((k for k in keys if cals[k].predictor.backend == "eager"), None)
    cases: dict[str, list] = {k: [] for k in keys}
    exported: dict[str, dict] = {k: {} for k in keys}  # one export per distinct plan and backend
    for d, idx in finetune.items():
        for seed in args.seeds:
            _, val_idx = pipelines.split_validation(np.asarray(idx)[:args.val_pool], 0.1, seed)
            val = (public.x[val_idx], public.y[val_idx])
            grid = [tuple(t) for t in TOKEN_GRIDS[args.benchmark]]
            # validation accuracy is computed once (here), the other backends repredict these candidates
            key0 = anchored_key or keys[0]
            pred0 = cals[key0].predictor
            first = pipelines.plan_candidates(base, structures, val, predictor=pred0, token_grid=grid,
                                              anchor_structures=anchored_key is not None,
                                              anchor_tokens=anchored_key is not None, threads=pred0.threads,
                                              rounds=args.check_rounds, min_run_time=args.check_min_run_time,
                                              seed=seed)
            for key in keys:
                cal = cals[key]
                cands = first if key == key0 else pipelines.repredict(first, cal.predictor)
                for c in pipelines.check_plans(base, cands, args.budgets, predictor=cal.predictor, margin=cal.margin,
                                               threads=cal.predictor.threads, rounds=args.check_rounds,
                                               min_run_time=args.check_min_run_time, seed=seed,
                                               backend=cal.predictor.backend, exported=exported[key]):
                    cases[key].append({"device": d, "seed": seed, **{k: v for k, v in c.items() if k != "model"}})
    out: dict[str, Any] = {}
    for key in keys:
        cal = cals[key]
        ratios = {kind: float(np.median([c["measured_ratio"] / c["predicted_ratio"] for c in cases[key]
                                         if c["kind"] == kind])) for kind in pipelines.PLAN_KINDS}
        out[key] = {"backend": cal.predictor.backend, "threads": cal.predictor.threads, "margin": cal.margin,
                    "anchored": key == anchored_key, "measured_over_predicted_median": ratios,
                    **pipelines.summarise_checks(cases[key]), "cases": cases[key]}
        print(f"planner ({key}, margin {100 * cal.margin:.1f} %): combined plan met the measured budget in "
              f"{100 * out[key]['combined_met_share']:.0f} % of {out[key]['n_cases']} cases; "
              f"at least as accurate as the best single ingredient that met it in "
              f"{100 * out[key]['combined_at_least_as_accurate_share']:.0f} %", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["base_vit"],
                   help="base_vit (the shipped checkpoint of --benchmark) and/or timm names, "
                        "e.g. deit_small_patch16_224")
    p.add_argument("--benchmark", default="v2", choices=sorted(TOKEN_GRIDS))
    p.add_argument("--backends", nargs="+", default=list(runtime.BACKENDS), choices=runtime.BACKENDS)
    p.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    p.add_argument("--threads", nargs="+", type=int, default=[1], help="intra-op thread counts")
    p.add_argument("--budget", type=float, default=60.0, help="profiling seconds per model x backend x batch")
    p.add_argument("--curve-points", type=int, default=33)
    p.add_argument("--holdout", type=int, default=30, help="held-out random plans per run")
    p.add_argument("--holdout-budget", type=float, default=60.0)
    p.add_argument("--min-run-time", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", nargs="+", default=["exactness", "predictor", "planner"],
                   choices=["exactness", "predictor", "planner"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.9, 0.8])
    p.add_argument("--margin-quantile", type=float, default=0.9,
                   help="the planner's safety margin: this quantile of the predictor's held-out |ratio error| "
                        "(0: no margin)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--devices", nargs="+", default=["night_cam", "drone", "factory", "phone"])
    p.add_argument("--structures", nargs="+", type=lambda s: tuple(float(v) for v in s.split("/")),
                   default=[(0.7, 0.7), (0.5, 0.5)],
                   help="magnitude-pruned structures as mlp_keep/attn_keep")
    p.add_argument("--val-pool", type=int, default=6400)
    p.add_argument("--check-rounds", type=int, default=15, help="rounds of the planner's anchors and checks")
    p.add_argument("--check-min-run-time", type=float, default=0.05)
    p.add_argument("--smoke", action="store_true", help="seconds-long end-to-end check; numbers meaningless")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=None, help="JSON path (default data/benchmarks/latency_predictor.json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batch, args.budget, args.curve_points = ["base_vit"], [1], 3.0, 6
        args.threads = args.threads[-1:]
        args.holdout, args.holdout_budget, args.min_run_time = 3, 1.0, 0.002
        args.seeds, args.devices, args.structures, args.val_pool = [0], args.devices[:1], [(0.5, 0.5)], 200
        args.check_rounds, args.check_min_run_time = 2, 0.005

    # every timing sets its own thread count; validation accuracy may use two
    torch.set_num_threads(max(args.threads + [min(2, os.cpu_count() or 1)]))
    out: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "versions": runtime.versions(), "runs": []}
    cals_b1: dict[str, Any] = {}
    base = None
    for name in args.models:
        model = load_model(name, args.benchmark)
        if "exactness" in args.parts:
            out.setdefault("exactness", []).extend(exactness(model, name, args.batch, args.seed))
        if "predictor" not in args.parts:
            continue
        for threads in args.threads:
            for backend in args.backends:
                for b in args.batch:
                    run, cal = profile_fit_validate(model, name, backend, b, threads, args)
                    out["runs"].append(run)
                    if name == "base_vit" and b == 1:
                        cals_b1[f"{backend}/{threads}t"], base = cal, model
    if "planner" in args.parts and base is not None:
        out["planner"] = planner_cases(base, cals_b1, args)
    out["summary"] = [{"model": r["model"], "backend": r["backend"], "batch": r["batch"], "threads": r["threads"],
                       "within_10": r["validation"]["within_10"], "within_5": r["validation"]["within_5"],
                       "ratio_within_10": r["validation"]["ratio"]["within_10"],
                       "ratio_within_5": r["validation"]["ratio"]["within_5"],
                       "profiling_seconds": r["profiling_seconds"]["timing"],
                       "profiling_build_seconds": r["profiling_seconds"]["curve_build"] + r["profiling_seconds"]["plans_build"],
                       "load_avg": r["load_avg"],
                       "fixed_cost_share": r["backends"]["fixed_cost_share"]} for r in out["runs"]]
    out["environment"] = measure.environment()
    save(out, "latency_predictor", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
