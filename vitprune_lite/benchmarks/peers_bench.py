"""The torch-pruning peer on deit_small: how long it takes to prune, and whether FLOPs become time.

``deit_small_patch16_224`` (random weights), half of the heads (3 of 6 per block) and half of the
MLP hidden units removed by torch-pruning's group L2 magnitude importance, through
:func:`vitprune_lite.peers.torch_pruning_prune` (which sets ``num_heads``, ``head_dim`` and
``attn_dim`` afterwards; the library leaves them stale). Dense and pruned models are timed
interleaved in one run at batch 1 and 32; the figure of merit is (measured speed-up) / (FLOP
speed-up). Published, on this kind of machine: pruning in 0.9 s, 1.9-2.1x faster, 0.95-1.08 of
the FLOP ratio.

    python -m vitprune_lite.benchmarks.peers_bench [--threads 2] [--rounds 7]
"""
from __future__ import annotations

import argparse

import torch

from vitprune_lite import measure, models, peers
from vitprune_lite.benchmarks import save, speedups


def run(threads: int = 2, rounds: int = 7, min_run_time: float = 0.3, batches=(1, 32)) -> dict:
    torch.set_num_threads(threads)
    dense = models.create_timm_model("deit_small_patch16_224").eval()
    pruned, info = peers.torch_pruning_prune(dense, (0.5, 0.5))
    with torch.inference_mode():
        max_logit = float(pruned(torch.randn(1, 3, 224, 224)).abs().max())  # finite: the repaired attention runs
    out = {"environment": measure.environment(), "threads": threads, "rounds": rounds,
           "model": "deit_small_patch16_224", "budget": [0.5, 0.5], "prune": info, "max_abs_logit": max_logit}
    out.update(speedups(dense, pruned, 224, threads=threads, rounds=rounds, min_run_time=min_run_time,
                        batches=batches))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    res = run(args.threads, args.rounds)
    info = res["prune"]
    print(f"threads {args.threads}, load avg {res['environment']['load_avg_1min']:.2f}; pruned in "
          f"{info['seconds']:.2f} s: heads {info['heads_kept']}, params {info['params_before']:,} -> "
          f"{info['params_after']:,}; FLOP speed-up {res['flop_speedup']:.2f}")
    for b in (k for k in res if k.startswith("batch")):
        r = res[b]
        print(f"{b}: dense {r['dense']['median_ms']:.1f} ms, pruned {r['pruned']['median_ms']:.1f} ms, "
              f"speed-up {r['speedup']:.2f}, / FLOP speed-up {r['speedup_over_flop_speedup']:.2f}")
    save(res, "peers_bench")


if __name__ == "__main__":
    main()
