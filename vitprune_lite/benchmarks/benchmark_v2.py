"""Benchmark (not a test): can benchmark v2 and its base model be afforded on this machine?

    python -m vitprune_lite.benchmarks.benchmark_v2                  # generation, training rate, fixed cost
    python -m vitprune_lite.benchmarks.benchmark_v2 --probe-minutes 8   # plus a short training probe

Measured side by side, on an otherwise idle machine:

- **generation**: seconds to render the full v2 benchmark (no cache), and images per second;
- **training rate**: images per second of AdamW steps at batch 128 on 2 threads, float32 and
  bfloat16 autocast, for v1's base model and the v2 candidate; the projected time of a full
  training run follows from it;
- **fixed-cost share** ``L(2) / L(N)`` at batch 1 and 1 thread (``latency.fixed_cost_share``):
  the part of a forward pass that token pruning cannot remove (target for v2: <= 0.30);
- optionally a **training probe**: the v2 candidate trained for a few minutes on the public
  pool, validation accuracy per checkpoint, to see how hard the task is;
- optionally a **difficulty probe** (``--difficulty-steps``): a small, fast proxy ViT (48 px,
  6 px patches, width 128, 4 blocks) trained for the same number of steps on variants of the
  task - all 48 classes, the same without clutter or with full rotation, the 6 shape families
  alone and the 8 fills alone (same scenes, coarser labels), the families all solid, and v1's
  12 classes rendered at 48 px (to calibrate what the proxy learns in that many steps on an easy
  task) - to see which part of the task makes it hard. The files in
  ``data/benchmarks/v2_first_design/`` measured the first design, before generator version 2.1
  (twelve families, four fills, full rotation).

Writes ``data/benchmarks/benchmark_v2.json``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from vitprune_lite import data, data_v2, latency, measure, models
from vitprune_lite.benchmarks import save

CONFIGS = {"v1": models.ViTConfig(), "v2": models.V2_CONFIG}


def train_rate(cfg: models.ViTConfig, bf16: bool, steps: int = 5, batch: int = 128) -> float:
    """Images per second of AdamW training steps (median over ``steps`` after one warm-up step)."""
    model = models.create_base_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, cfg.img_size, cfg.img_size)
    y = torch.randint(0, cfg.num_classes, (batch,))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times[1:]))


def probe(minutes: float, bf16: bool) -> dict:
    """Train the v2 candidate for ``minutes`` on the public pool; validation accuracy as it goes."""
    bench = data_v2.load_benchmark(0)
    x, y = bench.public["train"].tensors()
    xv, yv = bench.public["val"].tensors()
    model = models.create_base_model(models.V2_CONFIG)
    rate = train_rate(models.V2_CONFIG, bf16)
    steps = max(1, int(minutes * 60 * rate / 128))
    hist = models.fit(model, x, y, steps=steps, lr=1e-3, warmup_steps=steps // 10, label_smoothing=0.1,
                      val=(xv, yv), eval_every=max(1, steps // 6), bf16=bf16, desc="v2 probe")
    return {"steps": steps, "images_seen": steps * 128, "epochs": steps * 128 / len(x),
            "seconds": hist["seconds"], "val_acc": hist["val_acc"], "bf16": bf16}


PROXY = models.ViTConfig(img_size=48, patch_size=6, embed_dim=128, depth=4, num_heads=4, num_classes=48)


#: Difficulty-probe variants: labels ("all" 48 classes, "family", "fill", "solid" = families drawn
#: solid, "v1" = v1's renderer), styles ("all" 8, or "v1": v1's five) and render options.
VARIANTS: dict[str, dict] = {
    "48 classes": {},
    "48 classes, no clutter": {"clutter": False},
    "48 classes, full rotation": {"max_rotation": float(np.pi)},
    "6 families": {"labels": "family"},
    "6 families, solid fill only": {"labels": "solid"},
    "8 fills": {"labels": "fill"},
    "v1's 12 classes at 48 px": {"labels": "v1", "styles": "v1"},
}


def difficulty(steps: int, n_train: int = 20_000, n_val: int = 2_000, only: tuple[str, ...] = ()) -> dict:
    """Validation accuracy of the proxy ViT after ``steps`` AdamW steps on each of :data:`VARIANTS` (``only``: these)."""
    import dataclasses

    rng_labels = np.random.default_rng(0)
    n_classes = {"all": len(data_v2.CLASSES), "family": len(data_v2.FAMILIES), "solid": len(data_v2.FAMILIES),
                 "fill": len(data_v2.FILLS), "v1": len(data.CLASSES)}
    out = {}
    for name, spec in VARIANTS.items():
        if only and name not in only:
            continue
        kind, opts = spec.get("labels", "all"), {k: v for k, v in spec.items() if k not in ("labels", "styles")}
        n_styles = len(data.STYLES) if spec.get("styles") == "v1" else len(data_v2.STYLES)  # v1's are v2's first five
        sets = []
        for split, n in (("train", n_train), ("val", n_val)):
            labels = rng_labels.integers(0, len(data_v2.CLASSES), n)
            styles = rng_labels.integers(0, len(data_v2.STYLES), n) % n_styles
            rng = np.random.default_rng(1 if split == "train" else 2)
            if kind == "v1":  # calibration: the same proxy and steps on v1's easy task
                labels = labels % len(data.CLASSES)
                imgs = data.render(labels, styles, rng, size=data_v2.IMAGE_SIZE)
            else:
                if kind == "solid":  # every object solid: is it the fills that hide the shape?
                    labels = labels - labels % len(data_v2.FILLS)
                imgs = data_v2.render(labels, styles, rng, **opts)
            y = {"family": labels // len(data_v2.FILLS), "solid": labels // len(data_v2.FILLS),
                 "fill": labels % len(data_v2.FILLS)}.get(kind, labels)
            sets.append((data_v2.ImageSet(imgs, y, styles, split).tensors()))
        classes = n_classes[kind]
        model = models.create_base_model(dataclasses.replace(PROXY, num_classes=classes))
        hist = models.fit(model, *sets[0], steps=steps, lr=1e-3, warmup_steps=steps // 10, label_smoothing=0.1,
                          val=sets[1], eval_every=max(1, steps // 4), desc=name)
        out[name] = {"classes": classes, "chance": 1 / classes, "val_acc": hist["val_acc"], "seconds": hist["seconds"]}
        print(f"{name:24s} val accuracy after {steps} steps: {hist['val_acc'][-1][1]:.3f} (chance {1 / classes:.3f})")
    return {"proxy": asdict(PROXY), "steps": steps, "batch": 128, "n_train": n_train, "variants": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe-minutes", type=float, default=0.0, help="also train the v2 candidate this long")
    p.add_argument("--epochs", type=float, default=float(models.V2_TRAIN.epochs),
                   help="epochs of 40,000 images for the projection (default: the v2 recipe)")
    p.add_argument("--difficulty-steps", type=int, default=0, help="also run the difficulty probe for this many steps")
    p.add_argument("--only-difficulty", action="store_true", help="run only the difficulty probe")
    p.add_argument("--variants", nargs="+", default=(), help="difficulty variants to run (default all)")
    p.add_argument("--out", default=None, help="JSON path (default data/benchmarks/benchmark_v2[_difficulty].json)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    res: dict = {"environment_start": measure.environment(), "configs": {k: asdict(v) for k, v in CONFIGS.items()}}
    if args.only_difficulty:
        res["difficulty"] = difficulty(args.difficulty_steps, only=tuple(args.variants))
        res["environment_end"] = measure.environment()
        save(res, "benchmark_v2_difficulty", args.out)
        return 0

    t0 = time.perf_counter()
    bench = data_v2.make_benchmark(0)
    gen_s = time.perf_counter() - t0
    n_images = sum(len(s) for s in bench.public.values()) + sum(len(s) for d in bench.devices.values() for s in d.values())
    res["generation"] = {"images": n_images, "seconds": gen_s, "seconds_per_50k": gen_s * 50_000 / n_images,
                         "fingerprint": bench.fingerprint}
    print(f"generation: {n_images:,} images in {gen_s:.1f} s ({gen_s * 50_000 / n_images:.1f} s per 50,000)")
    del bench

    res["train_rate"] = {}
    for name, cfg in CONFIGS.items():
        for bf16 in (False, True):
            rate = train_rate(cfg, bf16)
            key = f"{name}_{'bf16' if bf16 else 'fp32'}"
            res["train_rate"][key] = {"images_per_s": rate,
                                      "projected_minutes": args.epochs * 40_000 / rate / 60}
            print(f"train rate {key}: {rate:.0f} img/s -> {args.epochs:g} epochs of 40,000 in "
                  f"{args.epochs * 40_000 / rate / 60:.0f} min")

    res["fixed_cost"] = {}
    for name, cfg in CONFIGS.items():
        model = models.create_base_model(cfg)
        fc = latency.fixed_cost_share(model, threads=1, rounds=7, max_rounds=15)
        fc["params"] = measure.count_params(model)
        res["fixed_cost"][name] = fc
        print(f"fixed-cost share {name}: L(2)/L({fc['tokens']}) = {fc['L2_ms']:.2f} / {fc['LN_ms']:.2f} ms "
              f"= {fc['share']:.3f} ({fc['params']:,} parameters)")

    if args.difficulty_steps > 0:
        res["difficulty"] = difficulty(args.difficulty_steps, only=tuple(args.variants))
    if args.probe_minutes > 0:
        res["probe"] = probe(args.probe_minutes, bf16=True)
        print("probe:", res["probe"]["val_acc"])
    res["environment_end"] = measure.environment()
    save(res, "benchmark_v2", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
