"""Do ToaSt's savings become time? Re-packed coupled pruning and gathered TCS on deit_small.

ToaSt's 2.9-GFLOP ``deit_small_patch16_224`` configuration (random weights): blocks 1-11 keep
6 of 64 query/key and 6 of 64 value/output dimensions per head (geometric-median scores;
block 0 dense), Token Channel Selection with fc2 ratio 0.9 on blocks 10-11 and fc1 ratio 0.3 on
block 11. Measured, interleaved in one run at batch 1 and 32:

- ``toast``: the re-packed coupled attention pruning alone (surgery, no masks);
- ``tcs_sample`` / ``tcs_batch``: gathered TCS alone, per-image and batch-shared selection;
- ``toast_tcs``: both (sample-mode TCS).

Figure of merit: (measured speed-up) / (FLOP speed-up); target >= 0.9. The published code,
measured on this kind of machine: 1.37x at batch 1 and 1.25x at batch 32 against a FLOP ratio
of 1.59 (0.87 / 0.79), its gathered TCS alone 0.95x at batch 1.

Batch-dependence audit (random inputs, as the published measurement): fraction of predictions
that change between batch 128 and batch 1, and between two shuffles of the same images in
batches of 32, for both TCS modes (published, batch mode: 31 % and 11 %). Sample mode must
change none.

    python -m vitprune_lite.benchmarks.toast_bench [--threads 2] [--rounds 7] [--audit-images 128]
"""
from __future__ import annotations

import argparse
import copy
from typing import Any

import torch

from vitprune_lite import importance, measure, models, surgery, tcs
from vitprune_lite.benchmarks import save

DIMS_KEPT = 6  # of 64 per head: ToaSt removes 90 % of the dimensions


def coupled_plan(model: torch.nn.Module, keep: int = DIMS_KEPT, dense_blocks=(0,)) -> dict:
    """Keep the top ``keep`` q/k and v/o dims per head (ToaSt scores) outside ``dense_blocks``."""
    s = importance.toast_scores(model)
    return {i: {"qk": surgery.keep_top(s[i]["qk"], keep), "vo": surgery.keep_top(s[i]["vo"], keep)}
            for i in range(len(model.blocks)) if i not in dense_blocks}


def tcs_schedule(depth: int) -> tuple[list[float], list[float]]:
    """(fc1, fc2) ratios of the published configuration: fc2 0.9 on the last 2 blocks, fc1 0.3
    on the last one."""
    return tcs.schedule(depth, 0.3, 1), tcs.schedule(depth, 0.9, 2)


def build(name: str = "deit_small_patch16_224") -> dict[str, torch.nn.Module]:
    dense = models.create_timm_model(name).eval()
    fc1, fc2 = tcs_schedule(len(dense.blocks))
    coupled = surgery.apply_plan(copy.deepcopy(dense), coupled_plan(dense)).eval()
    variants = {
        "dense": dense,
        "toast": coupled,  # method names of vitprune_lite.methods: ToaSt without / with TCS
        "tcs_sample": tcs.patch(copy.deepcopy(dense), fc1, fc2, mode="sample"),
        "tcs_batch": tcs.patch(copy.deepcopy(dense), fc1, fc2, mode="batch"),
        "toast_tcs": tcs.patch(copy.deepcopy(coupled), fc1, fc2, mode="sample"),
    }
    return variants


def audit_random(model: torch.nn.Module, n: int = 128, shuffle_batch: int = 32, seed: int = 7
                 ) -> dict[str, Any]:
    """Fraction of predictions on ``n`` random images that change with batch composition:
    batch ``n`` vs batch 1, and two random orders of the same images in batches of
    ``shuffle_batch`` (different batch-mates, same images)."""
    x = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    single = measure.predict(model, x, batch_size=1)
    whole = measure.predict(model, x, batch_size=n)
    shuffles = []
    for s in (0, 1):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(s))
        pred = torch.empty_like(single)
        pred[perm] = measure.predict(model, x[perm], batch_size=shuffle_batch)
        shuffles.append(pred)
    return {"images": n, "shuffle_batch": shuffle_batch,
            "changed_batch1_vs_batch_all": (single != whole).float().mean().item(),
            "changed_two_shuffles": (shuffles[0] != shuffles[1]).float().mean().item(),
            "changed_batch1_vs_shuffled": (single != shuffles[0]).float().mean().item()}


def run(threads: int = 2, rounds: int = 7, min_run_time: float = 0.5, batches=(1, 32),
        audit_images: int = 128, shuffle_batch: int = 32) -> dict[str, Any]:
    torch.set_num_threads(threads)
    variants = build()
    out: dict[str, Any] = {"threads": threads, "rounds": rounds, "environment": measure.environment(),
                           "published": {"flop_ratio": 1.59, "speedup_b1": 1.37, "speedup_b32": 1.25,
                                         "tcs_gathered_speedup_b1": 0.95, "tcs_batch_changed_b1_vs_b128": 0.31,
                                         "tcs_batch_changed_shuffles": 0.11},
                           "variants": {}}
    for b in batches:
        x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))
        flops = {k: measure.count_flops(m, x) for k, m in variants.items()}
        lat = measure.measure_latency(variants, x, threads=threads, rounds=rounds, min_run_time=min_run_time)
        for k in variants:
            rec = out["variants"].setdefault(k, {"params": measure.count_params(variants[k])})
            flop_speedup = flops["dense"] / flops[k]
            speedup = 1.0 / measure.latency_ratio(lat, k, "dense")
            rec[f"batch{b}"] = {"flops": flops[k], "flop_speedup": flop_speedup, "speedup": speedup,
                                "speedup_over_flop_speedup": speedup / flop_speedup,
                                "latency": lat[k].to_dict()}
    if audit_images:
        out["audit"] = {k: audit_random(variants[k], audit_images, shuffle_batch)
                        for k in ("tcs_sample", "tcs_batch")}
    out["environment_end"] = measure.environment()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-run-time", type=float, default=0.5)
    p.add_argument("--audit-images", type=int, default=128)
    p.add_argument("--out", default=None, help="JSON path (default data/benchmarks/toast_bench.json)")
    args = p.parse_args()
    res = run(args.threads, args.rounds, args.min_run_time, audit_images=args.audit_images)
    env = res["environment"]
    print(f"threads {args.threads}, load avg {env['load_avg_1min']:.2f} -> "
          f"{res['environment_end']['load_avg_1min']:.2f}, torch {env['torch']}")
    print(f"{'variant':12s} {'batch':>5s} {'GFLOPs/img':>10s} {'FLOP x':>7s} {'speed-up':>8s} {'ratio':>6s}")
    for k, rec in res["variants"].items():
        for key in (key for key in rec if key.startswith("batch")):
            r = rec[key]
            b = int(key[5:])
            print(f"{k:12s} {b:5d} {r['flops'] / b / 1e9:10.2f} {r['flop_speedup']:7.2f} "
                  f"{r['speedup']:8.2f} {r['speedup_over_flop_speedup']:6.2f}")
    for k, a in res.get("audit", {}).items():
        print(f"audit {k:11s}: predictions changed, batch {a['images']} vs batch 1: "
              f"{a['changed_batch1_vs_batch_all']:.1%}; two shuffles in batches of "
              f"{a['shuffle_batch']}: {a['changed_two_shuffles']:.1%}")
    save(res, "toast_bench", args.out)


if __name__ == "__main__":
    main()
