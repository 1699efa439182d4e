"""Recovery fine-tuning of a pruned model on an image folder, on one process or many (torchrun).

``python -m vitprune_lite recover --checkpoint OUT/pruned.safetensors --data DIR --out RUN`` trains
on one process; ``torchrun --nproc_per_node=N -m vitprune_lite recover ...`` (or
``python -m torch.distributed.run ...``) runs the same code on N processes with
``DistributedDataParallel``: ``gloo`` on CPU, ``nccl`` on GPUs (one GPU per process,
``LOCAL_RANK``), bf16 autocast on GPUs that support it (fp16 with a gradient scaler otherwise).

What makes N processes compute what one does:

- the global batch ``--batch-size`` is split evenly (``batch / N`` per process);
- a ``DistributedSampler`` (seeded, ``drop_last``) deals each epoch's permutation round-robin, so
  step ``s`` of every process together covers ``perm[s*B : (s+1)*B]``, the very batch one
  process would take; each epoch has ``len(train) // B`` steps whatever N is;
- augmentation is drawn per ``(seed, epoch, image)`` (:class:`vitprune_lite.folder_data.FolderDataset`);
- DDP averages the gradients of equal-sized local batches = the gradient of the global mean loss.
What remains is float summation order: on 2 CPU processes the weights differed from one
process's by about 1e-5 after 16-30 AdamW steps (tests/test_realscale.py checks < 1e-4).

Checkpoints (``RUN/state.pt``, written atomically by rank 0 every ``--save-every`` steps) hold the
model, optimiser, scheduler and gradient-scaler states, the step (hence epoch and position in it),
the best-so-far record and every process's RNG states. Rerunning the same command resumes from
it exactly: the sampler restarts at the same position of the same epoch permutation, and a
data loader's worker seeds come from a generator seeded per epoch, not from the global RNG.

Model selection: a seeded ``--holdout`` share of the training images is held out; the best
checkpoint (``RUN/best.safetensors``) is the one with the highest accuracy there (step 0, the
pruned model itself, included). ``DIR/val`` is only reported, never used to choose.
"""
from __future__ import annotations

import io
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from . import folder_data, paths, structure, vit

STATE = "state.pt"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RecoverConfig:
    """Everything a recovery run depends on (defaults: a short run; every value is a CLI flag)."""

    data: str                           # ImageNet-style root: train/<class>/*, val/<class>/*
    out: str                            # run folder: state.pt, best/final .safetensors, report
    checkpoint: Optional[str] = None    # model file (prune's output), or weights for --model
    model: Optional[str] = None         # base_vit or a timm name (not needed for prune's output)
    train_list: Optional[str] = None    # train on these files only (e.g. prune's finetune.txt)
    steps: int = 1000                   # optimiser steps in total
    batch_size: int = 128               # GLOBAL batch (split over processes)
    lr: float = 1e-4                    # AdamW peak learning rate
    weight_decay: float = 0.05
    warmup_steps: int = 0               # linear warm-up, then cosine decay to 0
    label_smoothing: float = 0.0
    augment: bool = True                # flip + shift, seeded per (seed, epoch, image)
    seed: int = 0
    holdout: float = 0.02               # share of train held out for model selection
    eval_every: int = 200               # steps between holdout evaluations
    save_every: int = 200               # steps between resumable checkpoints
    stop_after_steps: Optional[int] = None  # save and exit at this step (a planned interruption)
    workers: int = 4                    # data-loader worker processes per training process
    precision: str = "auto"             # auto: bf16 (or fp16) autocast on GPU, fp32 on CPU
    device: Optional[str] = None        # cpu / cuda (default: cuda if available)
    progress: bool = True               # tqdm bar (rank 0 only)


#: Fields that must match to resume a run (the rest may change, e.g. workers or process count).
_RESUME_KEYS = ("data", "checkpoint", "model", "train_list", "steps", "batch_size", "lr", "weight_decay",
                "warmup_steps", "label_smoothing", "augment", "seed", "holdout")


# ----------------------------------------------------------------------------- processes

def _world() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment (1 process without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def check_config(cfg: RecoverConfig, world: int) -> tuple[str, ...]:
    """Refuse bad settings before any work; returns the data's classes."""
    from .realscale import check_model_arg

    for name in ("steps", "batch_size", "eval_every", "save_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) is not divisible by the {world} processes; "
                         f"use a multiple of {world}")
    if not 0 <= cfg.holdout < 1:
        raise ValueError(f"--holdout {cfg.holdout} is the share of train held out for selection; accepted [0, 1)")
    if cfg.lr <= 0 or cfg.warmup_steps < 0 or cfg.workers < 0:
        raise ValueError(f"need --lr > 0, --warmup-steps >= 0, --workers >= 0; got {cfg.lr}, "
                         f"{cfg.warmup_steps}, {cfg.workers}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"--precision {cfg.precision!r} unknown; accepted: {', '.join(PRECISIONS)}")
    if cfg.stop_after_steps is not None and not 1 <= cfg.stop_after_steps <= cfg.steps:
        raise ValueError(f"--stop-after-steps {cfg.stop_after_steps} must be in 1..{cfg.steps}")
    if cfg.device is not None and cfg.device not in ("cpu", "cuda"):
        raise ValueError(f"--device {cfg.device!r}; accepted: cpu, cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no GPU here")
    if cfg.checkpoint is None and cfg.model is None:
        raise ValueError("recover needs --checkpoint (prune's pruned.safetensors) or --model")
    check_model_arg(cfg.model, cfg.checkpoint)
    classes = folder_data.classes_of(cfg.data)
    folder_data.scan(cfg.data, "val", classes)
    if cfg.train_list is not None and not Path(cfg.train_list).is_file():
        raise FileNotFoundError(f"--train-list {cfg.train_list} not found")
    return classes


# ----------------------------------------------------------------------------- pieces

class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` that can start part-way through its epoch (after ``start`` of its
    own indices), for an exact resume without reading the skipped images."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _splits(cfg: RecoverConfig, classes: tuple[str, ...]):
    train = (folder_data.read_list(cfg.data, cfg.train_list, classes) if cfg.train_list
             else folder_data.scan(cfg.data, "train", classes))
    perm = np.random.default_rng(cfg.seed).permutation(len(train))
    n_hold = int(round(cfg.holdout * len(train)))
    if len(train) - n_hold < cfg.batch_size:
        raise ValueError(f"{len(train) - n_hold} training images (after holding out {n_hold}) are fewer than one "
                         f"global batch of {cfg.batch_size}; lower --batch-size or --holdout")
    hold = train.subset(np.sort(perm[:n_hold])) if n_hold else None
    return train.subset(np.sort(perm[n_hold:])), hold, folder_data.scan(cfg.data, "val", classes)


def _lr_factor(cfg: RecoverConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _autocast_dtype(cfg: RecoverConfig, device: torch.device) -> Optional[torch.dtype]:
    if device.type != "cuda" or cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@torch.no_grad()
def evaluate(model: nn.Module, split: folder_data.Split, size: int, mean, std, *, batch_size: int, workers: int,
             device: torch.device, amp: Optional[torch.dtype], rank: int, world: int) -> float:
    """Top-1 accuracy on ``split``, each process taking every ``world``-th image (no padding, no
    image counted twice), the counts summed over processes."""
    ds = folder_data.FolderDataset(split, size, mean, std)
    mine = Subset(ds, list(range(rank, len(ds), world)))
    hits = total = 0
    # Its own generator: evaluating must not advance the global RNG a resumed run restores.
    loader = DataLoader(mine, batch_size=batch_size, num_workers=workers, generator=torch.Generator().manual_seed(0))
    with vit.eval_mode(model):
        for x, y in loader:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                pred = model(x.to(device, non_blocking=True)).argmax(-1).cpu()
            hits += int((pred == y).sum())
            total += len(y)
    hits, total = _all_sum([hits, total], device)
    return hits / max(total, 1)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _gather(obj: Any, world: int) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _save_state(path: Path, obj: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    paths.write_bytes_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- the run

def recover(cfg: RecoverConfig) -> dict[str, Any]:
    """Run (or resume) a recovery fine-tune; returns the report rank 0 writes to ``out/recover_report.json``.

    If ``cfg.stop_after_steps`` is reached first, the state is saved and ``{"stopped_at": step}``
    returned; running again with the same settings continues from there.
    """
    from tqdm.auto import tqdm

    from . import measure
    from .realscale import image_size_of, load_model

    rank, local_rank, world = _world()
    classes = check_config(cfg, world)
    use_cuda = cfg.device == "cuda" or (cfg.device is None and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        return _run(cfg, classes, rank, world, device, tqdm, measure, image_size_of, load_model)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg, classes, rank, world, device, tqdm, measure, image_size_of, load_model) -> dict[str, Any]:
    out = Path(cfg.out)
    state_path = out / STATE
    torch.manual_seed(cfg.seed + rank)  # dropout and the like: own stream per process
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)

    model, src = load_model(cfg.model, cfg.checkpoint, classes=classes)
    size = image_size_of(model)
    mean, std = src["mean"], src["std"]
    train, hold, val = _splits(cfg, classes)
    local_batch = cfg.batch_size // world
    steps_per_epoch = len(train) // cfg.batch_size
    amp = _autocast_dtype(cfg, device)

    model = model.to(device).train()
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    step, history = 0, []
    best = {"step": None, "holdout_acc": -1.0}
    seconds_before = 0.0
    run_cfg = asdict(cfg)
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        changed = {k: (state["config"][k], run_cfg[k]) for k in _RESUME_KEYS if state["config"].get(k) != run_cfg[k]}
        if changed:
            raise ValueError(f"{state_path} belongs to a run with other settings {changed} (saved, now); "
                             f"resume with the same settings or use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, history, best = state["step"], state["history"], state["best"]
        seconds_before = state["seconds"]
        rngs = state["rng"]
        if len(rngs) == world:
            _set_rng_state(rngs[rank])
        elif rank == 0:
            print(f"resuming with {world} processes (saved with {len(rngs)}): RNG streams reseeded; "
                  f"batches and augmentation are unaffected")
        if rank == 0:
            print(f"resumed from {state_path} at step {step}")

    def holdout_acc() -> Optional[float]:
        if hold is None:
            return None
        return evaluate(model, hold, size, mean, std, batch_size=local_batch, workers=cfg.workers, device=device,
                        amp=amp, rank=rank, world=world)

    def consider(acc: Optional[float]) -> None:
        # Every process sees the same summed accuracy, so all take the same decision. Without a
        # holdout there is nothing to select on: the latest weights stand.
        if acc is None or best["step"] is None or acc > best["holdout_acc"]:
            best.update(step=step, holdout_acc=acc if acc is not None else -1.0)
            if rank == 0:
                structure.save(model, out / "best.safetensors", src, {"step": step, "holdout_acc": acc})

    def save_state() -> None:
        rngs = _gather(_rng_state(), world)
        if rank == 0:
            _save_state(state_path, {
                "config": run_cfg, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "history": history,
                "best": best, "rng": rngs, "seconds": seconds_before + time.perf_counter() - t0,
                "world_size": world})
        _barrier()

    t0 = time.perf_counter()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    _barrier()
    if step == 0:
        acc = holdout_acc()
        history.append({"step": 0, "loss": None, "holdout_acc": acc})
        consider(acc)

    ds = folder_data.FolderDataset(train, size, mean, std, augment=cfg.augment, seed=cfg.seed)
    sampler = ResumableSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    bar = tqdm(total=cfg.steps, initial=step, desc="recover", disable=rank != 0 or not cfg.progress,
               mininterval=2.0)
    losses: list[float] = []
    while step < cfg.steps:
        epoch, pos = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        sampler.start = pos * local_batch
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=local_batch, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(net(x), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            pos += 1
            losses.append(loss.item())
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                acc = holdout_acc()
                history.append({"step": step, "loss": float(np.mean(losses)), "holdout_acc": acc})
                losses = []
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", holdout=acc)
                consider(acc)
            stop = cfg.stop_after_steps is not None and step == cfg.stop_after_steps and step < cfg.steps
            if step % cfg.save_every == 0 or step == cfg.steps or stop:
                save_state()
            if stop:
                bar.close()
                return {"stopped_at": step, "state": str(state_path)}
            if pos == steps_per_epoch or step == cfg.steps:
                break
    bar.close()
    seconds = seconds_before + time.perf_counter() - t0

    if rank == 0:
        structure.save(model, out / "final.safetensors", src, {"step": step})
    _barrier()
    best_model, _, _ = structure.load(out / "best.safetensors", device=device)
    kw = dict(batch_size=local_batch, workers=cfg.workers, device=device, amp=amp, rank=rank, world=world)
    report = {
        "config": run_cfg, "world_size": world, "device": str(device.type),
        "autocast": str(amp).replace("torch.", "") if amp else "fp32",
        "n_train": len(train), "n_holdout": len(hold) if hold is not None else 0, "n_val": len(val),
        "steps_per_epoch": steps_per_epoch, "steps": step, "params": measure.count_params(model),
        "history": history, "best": best,
        "val_accuracy": {"final": evaluate(model, val, size, mean, std, **kw),
                         "best": evaluate(best_model, val, size, mean, std, **kw)},
        "seconds": seconds, "images_per_second": step * cfg.batch_size / max(seconds, 1e-9),
        "environment": measure.environment(),
    }
    if rank == 0:
        paths.write_json_atomic(out / "recover_report.json", report)
    return report
