"""How long does TAP-ViTs' importance take? Composite HSIC importance and KL layer sensitivity.

Same inputs as the published measurement: ``deit_small_patch16_224`` with random weights,
640 random images of 224 px, 2 threads. The published code took about 18 minutes for the
composite importance (a per-channel Python HSIC loop; peak 2.9 GB) and about 2.8 hours for the
layer sensitivity (5 sparsities x 24 layers x 10 batches). Target: both together <= 3 minutes.

The layer sensitivity costs one forward of the metric set through blocks ``i..L-1`` for every
(layer, sparsity) probe: its time is exactly linear in the number of images, so it is measured
on ``--sens-images`` images and scaled to 640 (reported as such) unless ``--sens-images 640``.
The embedded base model is also scored on a 640-image metric set (public images), composite and
sensitivity both measured in full (target: under 2 minutes).

Peak memory: the process's resident set size above its level at the start of each phase
(sampled every 20 ms); with ``--allocator-peak`` also torch's allocator peak of the composite
(``measure.peak_memory``, which runs the torch profiler).

    python -m vitprune_lite.benchmarks.importance_bench [--threads 2] [--sens-images 32]
"""
from __future__ import annotations

import argparse
import resource
import threading
import time
from typing import Any

import torch

from vitprune_lite import data, importance, measure, models
from vitprune_lite.benchmarks import save


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _timed(fn, allocator_peak: bool = False) -> tuple[Any, float, dict[str, int]]:
    """(result, seconds, memory) of one call; memory holds the peak resident set size above
    the start (sampled every 20 ms) and, if asked, torch's allocator peak (profiler)."""
    box: dict[str, Any] = {}
    base, stop, peak_rss = _rss_bytes(), threading.Event(), [0]

    def sample():
        while not stop.wait(0.02):
            peak_rss[0] = max(peak_rss[0], _rss_bytes() - base)

    def call():
        t0 = time.perf_counter()
        box["out"] = fn()
        box["s"] = time.perf_counter() - t0

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        mem = {"allocator_peak_bytes": measure.peak_memory(call)} if allocator_peak else {}
        if not allocator_peak:
            call()
    finally:
        stop.set()
        sampler.join()
    mem["rss_peak_bytes"] = max(peak_rss[0], _rss_bytes() - base)
    return box["out"], box["s"], mem


def bench_model(model: torch.nn.Module, x: torch.Tensor, sens_images: int, batch_size: int = 64,
                tokens: int = 32, allocator_peak: bool = True) -> dict[str, Any]:
    """Composite importance on all of ``x``, layer sensitivity on ``x[:sens_images]``.

    ``allocator_peak`` runs the composite under the torch profiler (``measure.peak_memory``),
    which adds a little time and a lot of resident memory for its event records; the RSS peak
    reported for the composite then includes them.
    """
    model.eval()
    scores, t_comp, m_comp = _timed(lambda: importance.tap_importance(
        model, x, tokens=tokens, batch_size=batch_size), allocator_peak=allocator_peak)
    _, t_sens, m_sens = _timed(lambda: importance.layer_sensitivity(
        model, x, scores, batch_size=batch_size, max_images=sens_images))
    scale = len(x) / sens_images
    return {
        "images": len(x), "tokens": tokens, "batch_size": batch_size,
        "composite_seconds": t_comp,
        "composite_forward_seconds": scores.info["forward_seconds"],
        "composite_memory": m_comp,
        "sensitivity_images": sens_images,
        "sensitivity_seconds_measured": t_sens,
        "sensitivity_seconds_at_all_images": t_sens * scale,
        "sensitivity_extrapolated": scale != 1,
        "sensitivity_memory": m_sens,
        "total_seconds_at_all_images": t_comp + t_sens * scale,
    }


def run(threads: int = 2, images: int = 640, sens_images: int = 32, deit: bool = True,
        base: bool = True, allocator_peak: bool = False) -> dict[str, Any]:
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "environment_start": measure.environment(),
                           "published": {"composite_seconds": 18 * 60, "composite_peak_gb": 2.9,
                                         "sensitivity_seconds": 2.8 * 3600},
                           "targets": {"deit_small_total_seconds": 180, "base_composite_seconds": 120}}
    if base:
        model, _ = models.load_base_model()
        x, _ = data.load_benchmark(0).public["train"].subset(range(images)).tensors()
        out["base_vit"] = bench_model(model, x, sens_images=images, allocator_peak=allocator_peak)
    if deit:
        model = models.create_timm_model("deit_small_patch16_224")
        x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        out["deit_small_patch16_224"] = bench_model(model, x, sens_images=min(sens_images, images),
                                                    allocator_peak=allocator_peak)
    out["environment_end"] = measure.environment()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--sens-images", type=int, default=32, help="deit_small sensitivity images")
    p.add_argument("--skip-deit", action="store_true")
    p.add_argument("--skip-base", action="store_true")
    p.add_argument("--allocator-peak", action="store_true",
                   help="also measure torch's allocator peak of the composite (profiler; slower)")
    p.add_argument("--out", default=None, help="JSON path (default data/benchmarks/importance_bench.json)")
    args = p.parse_args()
    res = run(args.threads, args.images, args.sens_images, deit=not args.skip_deit, base=not args.skip_base,
              allocator_peak=args.allocator_peak)
    env = res["environment_start"]
    print(f"threads {args.threads}, load avg {env['load_avg_1min']:.2f} -> "
          f"{res['environment_end']['load_avg_1min']:.2f}, torch {env['torch']}")
    for name in ("base_vit", "deit_small_patch16_224"):
        if name in res:
            r = res[name]
            alloc = r["composite_memory"].get("allocator_peak_bytes")
            print(f"{name:24s} composite {r['composite_seconds']:7.1f} s (forward "
                  f"{r['composite_forward_seconds']:.1f} s; peak RSS +{r['composite_memory']['rss_peak_bytes'] / 2**20:.0f} MiB"
                  + (f", allocator {alloc / 2**20:.0f} MiB" if alloc is not None else "") + ")"
                  f" | sensitivity {r['sensitivity_seconds_measured']:7.1f} s on {r['sensitivity_images']} images"
                  f" (peak RSS +{r['sensitivity_memory']['rss_peak_bytes'] / 2**20:.0f} MiB)"
                  f" -> {r['sensitivity_seconds_at_all_images']:.0f} s at {r['images']}"
                  f" | total {r['total_seconds_at_all_images']:.0f} s")
    save(res, "importance_bench", args.out)


if __name__ == "__main__":
    main()
