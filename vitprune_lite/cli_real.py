"""Command line of the real path: ``prune``, ``upload`` and ``recover`` (see README "Real models and data").

Only argparse lives here (cheap to import); the work is in :mod:`vitprune_lite.realscale` and
:mod:`vitprune_lite.recover`, imported when a command runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import methods

COMMANDS = ("prune", "upload", "recover")

# Kept in step with realscale.METHODS (tests check): listing them here keeps --help cheap. Names,
# labels and summaries are the registry's (vitprune_lite.methods), checked at import.
METHOD_NAMES = tuple(methods.check(n) for n in (
    "tap_vits", "one_size_fits_all", "toast", "torch_pruning", "torch_pruning_taylor", "taylor",
    "magnitude_l1", "magnitude_l2", "random"))


def _method_help() -> str:
    return "one of: " + "; ".join(f"{n} ({methods.get(n).summary})" for n in METHOD_NAMES)


def _pool_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool-size", type=int, default=20_000, help="public DIR/train images the feature space is fitted on")
    p.add_argument("--feature-size", type=int, default=64, help="pixels per side for the upload's pixel statistics")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``prune``, ``upload`` and ``recover`` on the main parser's subcommands."""
    pr = sub.add_parser("prune", help="score and prune a model on an image folder; save it with its structure")
    pr.add_argument("--model", default=None, help="base_vit or a timm ViT name (e.g. deit_small_patch16_224)")
    pr.add_argument("--checkpoint", default=None, help="weights for --model, or a model file saved by prune/recover")
    pr.add_argument("--pretrained", action="store_true", help="timm hub weights (cached, or hub reachable)")
    pr.add_argument("--data", required=True, help="root with train/<class>/* and val/<class>/*")
    pr.add_argument("--method", required=True, help=_method_help())
    pr.add_argument("--budget", type=float, required=True, help="fraction of block parameters kept, in (0, 1]")
    pr.add_argument("--upload", default=None, help="device upload (tap_vits): JSON written by `upload`")
    pr.add_argument("--out", required=True, help="output folder: pruned.safetensors, report.json")
    pr.add_argument("--image-size", type=int, default=None, help="pixels per side (default: the model's)")
    pr.add_argument("--n-metric", type=int, default=640, help="images scored on (paper: 640)")
    pr.add_argument("--n-finetune", type=int, default=6400, help="tap_vits: fine-tune set size written to finetune.txt")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    pr.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    pr.add_argument("--latency-rounds", type=int, default=5, help="interleaved latency rounds (0: skip latency)")
    _pool_args(pr)

    up = sub.add_parser("upload", help="device side of TAP-ViTs: a GMM summary of private images")
    up.add_argument("--data", required=True, help="the public root the cloud prunes with (its train/ is the pool)")
    up.add_argument("--private", required=True, help="folder of the device's private images (any layout)")
    up.add_argument("--out", required=True, help="upload file (JSON)")
    up.add_argument("--seed", type=int, default=0)
    _pool_args(up)

    rc = sub.add_parser("recover", help="recovery fine-tune; under torchrun on many processes (DDP)")
    rc.add_argument("--checkpoint", default=None, help="prune's pruned.safetensors (or weights for --model)")
    rc.add_argument("--model", default=None, help="base_vit or a timm name (not needed for prune's output)")
    rc.add_argument("--data", required=True, help="root with train/<class>/* and val/<class>/*")
    rc.add_argument("--out", required=True, help="run folder: state.pt, best/final .safetensors, recover_report.json")
    rc.add_argument("--train-list", default=None, help="train on these DIR-relative files (e.g. prune's finetune.txt)")
    rc.add_argument("--steps", type=int, default=1000)
    rc.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch, split over processes")
    rc.add_argument("--lr", type=float, default=1e-4)
    rc.add_argument("--weight-decay", type=float, default=0.05)
    rc.add_argument("--warmup-steps", type=int, default=0)
    rc.add_argument("--label-smoothing", type=float, default=0.0)
    rc.add_argument("--no-augment", action="store_true", help="no flip/shift augmentation")
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--holdout", type=float, default=0.02, help="share of train held out to pick the best step")
    rc.add_argument("--eval-every", type=int, default=200)
    rc.add_argument("--save-every", type=int, default=200, help="steps between resumable checkpoints")
    rc.add_argument("--stop-after-steps", type=int, default=None, help="save and exit at this step (resume later)")
    rc.add_argument("--workers", type=int, default=4, help="data-loader workers per process")
    rc.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (autocast on GPU)")
    rc.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    rc.add_argument("--no-progress", action="store_true")


def _summary(report: dict) -> str:
    keys = ("params", "flops_per_image", "val_accuracy", "best", "steps", "stopped_at", "world_size")
    return json.dumps({k: report[k] for k in keys if k in report})


def main(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; errors in the arguments print one line and return 2."""
    try:
        if args.cmd == "prune":
            from .realscale import prune

            report = prune(model=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, data=args.data,
                           method=args.method, budget=args.budget, upload_path=args.upload, out=args.out,
                           image_size=args.image_size, n_metric=args.n_metric, n_finetune=args.n_finetune,
                           seed=args.seed, device=args.device, workers=args.workers,
                           latency_rounds=args.latency_rounds, pool_size=args.pool_size,
                           feature_size=args.feature_size)
            print(f"wrote {args.out}/pruned.safetensors and report.json: {_summary(report)}")
            return 0
        if args.cmd == "upload":
            from .realscale import upload

            print(json.dumps(upload(args.data, args.private, args.out, pool_size=args.pool_size,
                                    feature_size=args.feature_size, seed=args.seed)))
            return 0
        from .recover import RecoverConfig, recover

        cfg = RecoverConfig(
            data=args.data, out=args.out, checkpoint=args.checkpoint, model=args.model, train_list=args.train_list,
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps, label_smoothing=args.label_smoothing, augment=not args.no_augment,
            seed=args.seed, holdout=args.holdout, eval_every=args.eval_every, save_every=args.save_every,
            stop_after_steps=args.stop_after_steps, workers=args.workers, precision=args.precision,
            device=args.device, progress=not args.no_progress)
        report = recover(cfg)
        if int(os.environ.get("RANK", 0)) != 0:
            return 0
        if "stopped_at" in report:
            print(f"stopped after step {report['stopped_at']}; run the same command again to resume")
        else:
            print(f"wrote {args.out}/best.safetensors, final.safetensors, recover_report.json: {_summary(report)}")
        return 0
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
