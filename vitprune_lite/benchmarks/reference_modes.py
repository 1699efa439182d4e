"""Reference vs project: what following the authors' code to the letter changes here.

Every method has a ``variant="reference"`` (the authors' public code) beside the project's
default (``docs/deviations.md`` lists each difference). This benchmark runs both on the shipped
base model and the embedded benchmark's four devices, with notebook 04's small settings:

- **TAP-ViTs** at the 50 % budget (``TAP_BUDGETS[4]``), scored on each device's GMM metric set
  (notebook 01's ``combined`` selection, 640 images; layer sensitivity on its first 64), then
  the standard recovery (:func:`vitprune_lite.pipelines.recover`, 30 steps on the fine-tune
  set); private-test accuracy zero-shot and recovered.
- **ToaSt** at the same budget: coupled pruning + Token Channel Selection (the pipeline's
  schedule), one model for every device (random public fine-tune set); zero-shot and recovered,
  with and without TCS.
- **POMT** and **ToMe** at notebook 04's token settings, zero-shot (they are not trained).
- **TAP-ViTs layer keep ratios** under both variants for three metric sets per device: GMM,
  random public images, and the device's own private training images (oracle), with each
  set's class coverage.

Accuracies carry 95 % Wilson intervals over the 1,600 private test images (400 per device);
reference - project differences are paired on the same images (normal interval of the mean
per-image difference). One seed: the recovery's seed is fixed, so the intervals cover the
test images, not training noise. Accuracy only, no timing: it may run beside other work.

    python -m vitprune_lite.benchmarks.reference_modes [--threads 2] [--ft-steps 30]
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from vitprune_lite import data, gmm, importance, measure, models, pipelines, tcs, tokens, variants
from vitprune_lite.benchmarks import save

#: Notebook 04's settings (its ``parameters``), so the numbers sit beside its table.
SETTINGS = {"budget": importance.TAP_BUDGETS[4], "n_metric": 640, "sens_images": 64, "score_tokens": 32,
            "feature_space": "combined", "n_finetune": 6400, "ft_steps": 30, "ft_batch": 64, "ft_lr": 3e-4,
            "val_fraction": 0.1, "seed": 0, "pomt_r": (16, 32, 48), "tome_r": (2, 4, 8)}
Z = 1.959963984540054  # two-sided 95 %


def wilson(correct: np.ndarray) -> dict[str, float]:
    """Accuracy of a 0/1 vector ``[n]`` with its 95 % Wilson interval."""
    n, k = len(correct), float(np.sum(correct))
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return {"acc": p, "lo": centre - half, "hi": centre + half, "n": n}


def paired(ref: np.ndarray, proj: np.ndarray) -> dict[str, float]:
    """Mean of ``ref - proj`` per image (0/1 vectors on the same images) with a 95 % interval."""
    d = np.asarray(ref, dtype=float) - np.asarray(proj, dtype=float)
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "lo": float(d.mean() - Z * se), "hi": float(d.mean() + Z * se),
            "changed": float(np.mean(d != 0))}


def _correct(model: torch.nn.Module, tests: dict[str, tuple], devices: Sequence[str]) -> dict[str, np.ndarray]:
    return {d: measure.correct(model, *tests[d]).numpy().astype(bool) for d in devices}


def _summary(per_device: dict[str, np.ndarray]) -> dict[str, Any]:
    pooled = np.concatenate(list(per_device.values()))
    return {"pooled": wilson(pooled), "per_device": {d: wilson(c)["acc"] for d, c in per_device.items()}}


def _tap_ratios(base, x: torch.Tensor, budget, variant: str, sens_images: int, tokens_: int) -> dict[str, Any]:
    opts = {"tokens": tokens_} if variant == "project" else {}
    scores = importance.tap_importance(base, x, variant=variant, **opts)
    sparsities = (importance.probe_sparsity(budget),) if variant == "reference" else importance.PROBE_SPARSITIES
    sens = importance.layer_sensitivity(base, x, scores, sparsities=sparsities, max_images=sens_images,
                                        variant=variant)
    r = importance.adaptive_ratios(sens, budget, variant=variant)
    return {"mlp": r["mlp"].tolist(), "attn": r["attn"].tolist(),
            "kl_mlp": sens["mlp"].tolist(), "kl_attn": sens["attn"].tolist()}


def _coverage(labels: np.ndarray, spec: data.DeviceSpec) -> dict[str, Any]:
    """Images of each device class in a metric set, and the share of the set in the device's classes."""
    counts = {data.CLASSES[c]: int((labels == c).sum()) for c in spec.classes}
    return {"counts": counts, "in_class": float(np.isin(labels, list(spec.classes)).mean()),
            "min_count": min(counts.values())}


def run(threads: int = 2, devices: Optional[Sequence[str]] = None, ft_steps: Optional[int] = None,
        ratio_devices: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Everything above; ``ratio_devices``: devices whose random and oracle metric sets are also
    scored for the layer ratios (default: all; each costs two TAP scorings per variant)."""
    torch.set_num_threads(threads)
    S = dict(SETTINGS)
    if ft_steps is not None:
        S["ft_steps"] = ft_steps
    t_start = time.perf_counter()
    base, _ = models.load_base_model()
    base.eval()
    bench = data.load_benchmark()
    devices = list(devices or [d.name for d in data.DEVICES])
    ratio_devices = devices if ratio_devices is None else list(ratio_devices)
    pool = bench.public["train"]
    public = pipelines.PublicData(*pool.tensors())
    tests = {d: bench.device(d)["test"].tensors() for d in devices}
    sets = gmm.load_selected_sets(benchmark="v1")
    budget = S["budget"]
    rec = {"ft_steps": S["ft_steps"], "ft_batch": S["ft_batch"], "ft_lr": S["ft_lr"],
           "val_fraction": S["val_fraction"], "seed": S["seed"]}
    out: dict[str, Any] = {"settings": {**S, "devices": devices, "ratio_devices": ratio_devices,
                                        "threads": threads},
                           "environment": measure.environment(), "methods": {}, "ratios": {}}
    correct: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    extra: dict[tuple[str, str], dict[str, Any]] = {}

    # ---- TAP-ViTs on the GMM metric set, per device
    for d in devices:
        metric = sets[f"{d}/{S['feature_space']}/metric"][:S["n_metric"]]
        finetune = sets[f"{d}/{S['feature_space']}/finetune"][:S["n_finetune"]]
        for v in variants.VARIANTS:
            opts = {"tokens": S["score_tokens"]} if v == "project" else {}
            pruned, rep = pipelines.prune_and_recover(
                base, public, metric, finetune, budget, criterion="tap_vits", sens_images=S["sens_images"],
                score_options=opts, variant=v, **{**rec, "ft_steps": 0})
            tuned, info = pipelines.recover(pruned, public, finetune, **rec)
            correct.setdefault(("tap_vits", v, "zero_shot"), {})[d] = _correct(pruned, tests, [d])[d]
            correct.setdefault(("tap_vits", v, "recovered"), {})[d] = _correct(tuned, tests, [d])[d]
            e = extra.setdefault(("tap_vits", v), {"params": {}, "kept": {}})
            e["params"][d] = rep["params"] / rep["dense_params"]
            e["kept"][d] = info["kept"]
            out["ratios"].setdefault(d, {}).setdefault("gmm", {})[v] = {
                "mlp": rep["layer_keep"]["mlp"], "attn": rep["layer_keep"]["attn"]}
        print(f"tap_vits {d}: done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    # ---- ToaSt: one model for every device, random public recovery set
    sel = gmm.random_selection(np.arange(len(public.x)), n_metric=2, n_finetune=S["n_finetune"], seed=S["seed"])
    for v in variants.VARIANTS:
        pruned, rep = pipelines.prune_and_recover(base, public, sel.metric, sel.finetune, budget, criterion="toast",
                                                  adaptive=False, variant=v, **{**rec, "ft_steps": 0})
        tuned, info = pipelines.recover(pruned, public, sel.finetune, **rec)
        for stage, m in (("zero_shot", pruned), ("recovered", tuned)):
            correct[("toast", v, stage)] = _correct(m, tests, devices)  # names of vitprune_lite.methods
            with_tcs = tcs.patch(copy.deepcopy(m), pipelines.TCS_FC1, pipelines.TCS_FC2, mode="sample", variant=v)
            correct[("toast_tcs", v, stage)] = _correct(with_tcs, tests, devices)
        for name in ("toast", "toast_tcs"):
            extra[(name, v)] = {"params": rep["params"] / rep["dense_params"], "kept": info["kept"],
                                "widths": rep["widths"]}
    print(f"toast: done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    # ---- token methods, zero-shot
    for method, amounts in (("pomt", S["pomt_r"]), ("tome", S["tome_r"])):
        for a in amounts:
            for v in variants.VARIANTS:
                m = tokens.reduced_copy(base, method, int(a), variant=v)
                correct[(f"{method}_{a}", v, "zero_shot")] = _correct(m, tests, devices)
    dense = _correct(base, tests, devices)
    out["dense"] = _summary(dense)

    # ---- tables
    for (method, v, stage), per in correct.items():
        entry = out["methods"].setdefault(method, {}).setdefault(stage, {})
        entry[v] = _summary(per)
        if (method, v) in extra:
            out["methods"][method].setdefault("model", {})[v] = extra[(method, v)]
    for method, stages in out["methods"].items():
        for stage, entry in stages.items():
            if stage == "model":
                continue
            ref = np.concatenate(list(correct[(method, "reference", stage)].values()))
            proj = np.concatenate(list(correct[(method, "project", stage)].values()))
            entry["reference_minus_project"] = paired(ref, proj)

    # ---- TAP-ViTs ratios on random and oracle metric sets, and every set's class coverage
    for d in devices:
        spec = bench.specs[d]
        metric_sets = {"gmm": sets[f"{d}/{S['feature_space']}/metric"][:S["n_metric"]],
                       "random": sets[f"{d}/random/metric"][:S["n_metric"]]}
        private_x, private_y = bench.device(d)["train"].tensors()
        cov = out.setdefault("coverage", {}).setdefault(d, {})
        for name, idx in metric_sets.items():
            cov[name] = _coverage(pool.labels[idx], spec)
        cov["oracle"] = _coverage(private_y[:S["n_metric"]].numpy(), spec)
        for name in ("random", "oracle") if d in ratio_devices else ():  # gmm: from the runs above
            x = public.x[metric_sets[name]] if name != "oracle" else private_x[:S["n_metric"]]
            for v in variants.VARIANTS:
                out["ratios"][d].setdefault(name, {})[v] = _tap_ratios(
                    base, x, budget, v, S["sens_images"], S["score_tokens"])
        print(f"ratios {d}: done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    out["seconds"] = time.perf_counter() - t_start
    out["environment_end"] = measure.environment()
    return out


def _fmt(s: dict[str, float]) -> str:
    return f"{s['acc']:.1%} [{s['lo']:.1%}, {s['hi']:.1%}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ft-steps", type=int, default=None, help="recovery steps (default: notebook 04's 30)")
    p.add_argument("--devices", nargs="*", default=None)
    p.add_argument("--ratio-devices", nargs="*", default=None,
                   help="devices whose random and oracle metric sets are scored too (default: all)")
    p.add_argument("--out", default=None, help="JSON path (default data/benchmarks/reference_modes.json)")
    args = p.parse_args()
    res = run(args.threads, args.devices, args.ft_steps, args.ratio_devices)
    print(f"dense: {_fmt(res['dense']['pooled'])}")
    print(f"{'method':16s} {'stage':10s} {'project':>24s} {'reference':>24s} {'ref - proj':>24s}")
    for method, stages in res["methods"].items():
        for stage, e in stages.items():
            if stage == "model":
                continue
            dd = e["reference_minus_project"]
            print(f"{method:16s} {stage:10s} {_fmt(e['project']['pooled']):>24s} "
                  f"{_fmt(e['reference']['pooled']):>24s} "
                  f"{dd['diff']:+.1%} [{dd['lo']:+.1%}, {dd['hi']:+.1%}]")
    print(f"{res['seconds']:.0f} s")
    save(res, "reference_modes", args.out)


if __name__ == "__main__":
    main()
