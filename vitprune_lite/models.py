"""The base model: a small timm ViT for the embedded benchmark, its training, and its checkpoint.

The base model is a plain timm ``VisionTransformer`` (so every timm-aware tool, ToMe-style
patches included, applies unchanged), sized for a 2-core CPU: 32 x 32 images, 4 x 4 patches
(64 patch tokens + CLS), width 128, 6 blocks of 4 heads (head width 32), MLP ratio 4
(1.2 M parameters; it trains in about 20 minutes on 2 cores).

Checkpoints are safetensors (no pickle) with a JSON metadata file beside them: model config,
seed, data generator version, accuracies, training time and the weights' sha256. Loading checks
the hash and refuses a file that does not match.

``python -m vitprune_lite train`` (or ``make train``) rebuilds ``data/base_vit.safetensors``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import paths

import timm  # noqa: E402  (after the package's compat shim, which ``from . import paths`` loads)
from timm.models.vision_transformer import VisionTransformer

BASE_CHECKPOINT = "base_vit.safetensors"


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of the embedded base model (all timm ``VisionTransformer`` arguments)."""

    img_size: int = 32       # pixels per side
    patch_size: int = 4      # 8 x 8 = 64 patch tokens, plus CLS
    embed_dim: int = 128     # token width
    depth: int = 6           # transformer blocks
    num_heads: int = 4       # head width 32
    mlp_ratio: float = 4.0   # MLP hidden width 512
    num_classes: int = 12    # the benchmark's classes
    qkv_bias: bool = True
    global_pool: str = "token"  # classify from CLS: the token methods rely on it


@dataclass(frozen=True)
class TrainConfig:
    """How the base model is trained (defaults: the shipped checkpoint)."""

    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3            # AdamW peak learning rate
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5  # linear warm-up, then cosine decay to 0
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 2            # torch CPU threads (the reference machine has 2 cores)
    bf16: bool = False          # bfloat16 autocast for forward and loss (float32 weights)


def create_base_model(cfg: ViTConfig = ViTConfig(), seed: int = 0) -> VisionTransformer:
    """A freshly initialised base ViT (deterministic for ``seed``)."""
    with _seeded(seed):
        return VisionTransformer(**asdict(cfg))


@contextlib.contextmanager
def _seeded(seed: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


# ----------------------------------------------------------------------------- training

def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 3) -> torch.Tensor:
    """Random translation (pad + crop) and horizontal flip of a batch ``[B, 3, H, W]``.

    Horizontal flips keep every benchmark class; vertical flips would not (triangle, half-disk).
    """
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    out = xp[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(b, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: float = 1.0,
        steps: int | None = None, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.05,
        warmup_steps: int = 0, label_smoothing: float = 0.0, augment: bool = True, seed: int = 0,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, eval_every: int | None = None,
        progress: bool = True, desc: str = "train", bf16: bool = False) -> dict[str, Any]:
    """Train ``model`` in place with AdamW and a warm-up + cosine schedule.

    The same loop serves the base model and every recovery fine-tune, so pruning methods are
    compared under identical training.

    Args:
        model: any classifier ``[B, 3, H, W] -> [B, classes]``.
        x: float ``[N, 3, H, W]`` training images (normalised); y: int64 ``[N]``.
        epochs: passes over ``x`` (ignored if ``steps`` is given).
        steps: optimiser steps in total.
        val: optional ``(x, y)`` for validation accuracy, recorded every ``eval_every`` steps and at
            the end (never used to pick weights here; the last weights are returned).
        progress: show a tqdm progress bar.
        bf16: run forward and loss under bfloat16 autocast (on CPUs with bf16 matrix units it
            trains faster; weights and optimiser state stay float32).

    Returns:
        History: ``{"steps", "seconds", "loss" (per step), "val_acc" ([(step, acc)])}``.
    """
    from tqdm.auto import tqdm

    from .measure import accuracy

    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and equally long, got {len(x)} and {len(y)}")
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = steps if steps is not None else max(1, round(epochs * steps_per_epoch))
    g = torch.Generator().manual_seed(seed)
    with _seeded(seed):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * lr * (1 + math.cos(math.pi * t))

    hist: dict[str, Any] = {"loss": [], "val_acc": []}
    model.train()
    t0 = time.perf_counter()
    order = torch.randperm(len(x), generator=g)
    pos = 0
    bar = tqdm(range(total), desc=desc, disable=not progress, mininterval=2.0)
    for step in bar:
        if pos + batch_size > len(order):  # new epoch: reshuffle, drop the ragged tail
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos:pos + batch_size] if len(x) >= batch_size else order
        pos += batch_size
        xb, yb = x[idx], y[idx]
        if augment:
            xb = _augment(xb, g)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist["loss"].append(loss.item())
        if val is not None and eval_every and (step + 1) % eval_every == 0 and step + 1 < total:
            hist["val_acc"].append((step + 1, accuracy(model, *val)))
            model.train()
            bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{hist['val_acc'][-1][1]:.3f}")
    if val is not None:
        hist["val_acc"].append((total, accuracy(model, *val)))
    model.eval()
    hist["steps"] = total
    hist["seconds"] = time.perf_counter() - t0
    return hist


def train_base_model(cfg: ViTConfig = ViTConfig(), tcfg: TrainConfig = TrainConfig(), bench=None,
                     progress: bool = True) -> tuple[VisionTransformer, dict[str, Any]]:
    """Train the base model on the public pool's train split; evaluate on every test split.

    Returns:
        ``(model, metadata)``; metadata holds configs, history, accuracies and seconds.
    """
    from . import data
    from .measure import accuracy, environment

    threads = torch.get_num_threads()
    torch.set_num_threads(tcfg.threads)
    try:
        bench = bench or data.load_benchmark(tcfg.seed)
        model = create_base_model(cfg, tcfg.seed)
        x, y = bench.public["train"].tensors()
        steps_per_epoch = math.ceil(len(x) / tcfg.batch_size)
        hist = fit(model, x, y, epochs=tcfg.epochs, batch_size=tcfg.batch_size, lr=tcfg.lr,
                   weight_decay=tcfg.weight_decay, warmup_steps=round(tcfg.warmup_epochs * steps_per_epoch),
                   label_smoothing=tcfg.label_smoothing, seed=tcfg.seed, val=bench.public["val"].tensors(),
                   eval_every=steps_per_epoch, progress=progress, desc="base model", bf16=tcfg.bf16)
        acc = {"public/" + s: accuracy(model, *bench.public[s].tensors()) for s in ("val", "test")}
        for name, splits in bench.devices.items():
            acc[f"{name}/test"] = accuracy(model, *splits["test"].tensors())
    finally:
        torch.set_num_threads(threads)
    meta = {
        "model_config": asdict(cfg),
        "train_config": asdict(tcfg),
        "seed": tcfg.seed,
        "data": {"generator_version": bench.version, "seed": bench.seed, "fingerprint": bench.fingerprint},
        "accuracy": acc,
        "train_seconds": round(hist["seconds"], 1),
        "val_curve": hist["val_acc"],
        "final_loss": float(np.mean(hist["loss"][-20:])),
        "environment": environment(),
    }
    return model, meta


# ----------------------------------------------------------------------------- checkpoints

class ChecksumError(RuntimeError):
    """A checkpoint's bytes do not match the sha256 recorded in its metadata."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(model: nn.Module, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights as safetensors and ``meta`` (+ sha256) as JSON beside it, atomically."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "pt"})
    paths.write_bytes_atomic(path, blob)
    full = dict(meta, sha256=hashlib.sha256(blob).hexdigest(), file=path.name, bytes=len(blob))
    paths.write_json_atomic(_meta_path(path), full)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored beside a checkpoint."""
    mpath = _meta_path(Path(path))
    if not mpath.exists():
        raise FileNotFoundError(f"metadata {mpath} is missing; a checkpoint needs its .json beside it")
    return json.loads(mpath.read_text())


def load_checkpoint(path: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """Load a base-model checkpoint after checking its sha256 against the metadata.

    Raises:
        FileNotFoundError: the checkpoint or its metadata is missing (``make train`` rebuilds it).
        ChecksumError: the file's bytes differ from what the metadata recorded.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; rebuild it with `make train`")
    meta = read_metadata(path)
    digest = _sha256(path)
    if digest != meta.get("sha256"):
        raise ChecksumError(f"checkpoint {path} has sha256 {digest[:12]}..., but its metadata records "
                            f"{str(meta.get('sha256'))[:12]}...: the file is corrupted or does not belong to "
                            f"this metadata. Restore it from git or rebuild it with `make train`.")
    model = create_base_model(ViTConfig(**meta["model_config"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), meta


def load_base_model() -> tuple[VisionTransformer, dict[str, Any]]:
    """The shipped base model (``data/base_vit.safetensors``) and its metadata."""
    return load_checkpoint(paths.data_dir() / BASE_CHECKPOINT)


# ----------------------------------------------------------------------------- timm names

def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """True if a TCP connection to the weights hub opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def create_timm_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Any timm ViT by name; with ``pretrained=True`` it loads weights from the hub or its cache.

    Offline, weights already in the local Hugging Face cache still load; otherwise this fails in
    seconds with a message saying so, instead of a minute of download retries.
    """
    if name not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models('vit*') or ('deit*')")
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    if hub_reachable():
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # cache only: no retries against an unreachable host
    try:
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    except Exception as err:  # noqa: BLE001 - any failure here means "weights not available"
        raise RuntimeError(
            f"pretrained weights for {name!r} are not in the local cache and the weights hub is "
            f"unreachable (offline machine). Use pretrained=False (random weights, fine for latency), "
            f"the embedded base model (vitprune_lite.models.load_base_model()), or copy the weights "
            f"into the Hugging Face cache. Cause: {type(err).__name__}") from None
    finally:
        constants.HF_HUB_OFFLINE = previous

