"""Does surgery turn FLOPs into time? Prune 50 % of heads and MLP channels, time it.

For the base model and ``deit_small_patch16_224`` (random weights: latency does not depend on
the values), every block keeps half its heads and half its MLP hidden units (the largest by L1
weight norm; which ones does not matter for speed). Dense and pruned models are timed
interleaved in one run at batch 1 and 32. The figure of merit is

    (measured speed-up) / (FLOP speed-up) = (t_dense / t_pruned) / (F_dense / F_pruned)

1.0 means every FLOP removed was time saved; the target is >= 0.8 at batch 32.

    python -m vitprune_lite.benchmarks.surgery_speedup [--threads 2] [--rounds 7]
"""
from __future__ import annotations

import argparse
import copy

import torch

from vitprune_lite import measure, models, surgery, vit
from vitprune_lite.benchmarks import save, speedups


def half_plan(model: torch.nn.Module) -> dict:
    """Keep the top half of heads (by q/k/v/proj L1 norm) and MLP channels (fc1 row + fc2 col L1)."""
    plan = {}
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        (h, _, d), c = vit.head_geometry(a), a.qkv.in_features  # dense: q/k and v widths equal
        w = a.qkv.weight.detach().abs().reshape(3, h, d, c).sum(dim=(0, 2, 3))
        w += a.proj.weight.detach().abs().reshape(c, h, d).sum(dim=(0, 2))
        m = blk.mlp.fc1.weight.detach().abs().sum(1) + blk.mlp.fc2.weight.detach().abs().sum(0)
        plan[i] = {"heads": surgery.keep_top(w, 0.5), "mlp": surgery.keep_top(m, 0.5)}
    return plan


def run(threads: int = 2, rounds: int = 7, min_run_time: float = 0.3, batches=(1, 32)) -> dict:
    cases = {
        "base_vit": (models.create_base_model(), 32),
        "deit_small_patch16_224": (models.create_timm_model("deit_small_patch16_224"), 224),
    }
    out = {"environment": measure.environment(), "threads": threads, "rounds": rounds, "models": {}}
    torch.set_num_threads(threads)
    for name, (dense, size) in cases.items():
        dense.eval()
        pruned = surgery.apply_plan(copy.deepcopy(dense), half_plan(dense))
        rec = {"params_dense": measure.count_params(dense), "params_pruned": measure.count_params(pruned)}
        rec.update(speedups(dense, pruned, size, threads=threads, rounds=rounds, min_run_time=min_run_time,
                            batches=batches))
        out["models"][name] = rec
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    res = run(args.threads, args.rounds)
    print(f"threads {args.threads}, load avg {res['environment']['load_avg_1min']:.2f}, "
          f"torch {res['environment']['torch']}")
    print(f"{'model':24s} {'batch':>5s} {'dense ms':>9s} {'pruned ms':>9s} {'speed-up':>8s} "
          f"{'FLOP x':>7s} {'ratio':>6s}")
    for name, rec in res["models"].items():
        for key in (k for k in rec if k.startswith("batch")):
            r = rec[key]
            print(f"{name:24s} {key[5:]:>5s} {r['dense']['median_ms']:9.2f} {r['pruned']['median_ms']:9.2f} "
                  f"{r['speedup']:8.2f} {rec['flop_speedup']:7.2f} {r['speedup_over_flop_speedup']:6.2f}")
    save(res, "surgery_speedup")


if __name__ == "__main__":
    main()
