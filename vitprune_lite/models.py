"""The base model: a small timm ViT for the embedded benchmark, its training, and its checkpoint.

The base model is a plain timm ``VisionTransformer`` (so every timm-aware tool, ToMe-style
patches included, applies unchanged), sized for a 2-core CPU: 32 x 32 images, 4 x 4 patches
(64 patch tokens + CLS), width 128, 6 blocks of 4 heads (head width 32), MLP ratio 4
(1.2 M parameters; it trains in about 20 minutes on 2 cores).

Checkpoints are safetensors (no pickle) with a JSON metadata file beside them: model config,
seed, data generator version, accuracies, training time and the weights' sha256. Loading checks
the hash and refuses a file that does not match.

``python -m vitprune_lite train`` (or ``make train``) rebuilds the default benchmark v2's
``data/base_vit_v2.safetensors``; ``--benchmark v1`` (``make train-v1``) rebuilds ``data/base_vit.safetensors``.
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
from .errors import InputTooLargeError, InvalidFileError, InvalidValueError, OverwriteRefusedError, VitpruneError

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

    def __post_init__(self) -> None:
        ints = {"img_size": (8, 1024), "patch_size": (1, 256), "embed_dim": (8, 4096), "depth": (1, 64),
                "num_heads": (1, 256), "num_classes": (1, 100_000)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise InvalidValueError(f"ViTConfig.{name} = {v!r}: accepted an integer in {lo}..{hi}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) \
                or not 0 < self.mlp_ratio <= 16:
            raise InvalidValueError(f"ViTConfig.mlp_ratio = {self.mlp_ratio!r}: accepted a number in (0, 16]")
        if self.img_size % self.patch_size:
            raise InvalidValueError(f"ViTConfig: patch_size {self.patch_size} does not divide img_size {self.img_size}")
        if self.embed_dim % self.num_heads:
            raise InvalidValueError(f"ViTConfig: num_heads {self.num_heads} does not divide embed_dim {self.embed_dim}")
        if not isinstance(self.qkv_bias, bool):
            raise InvalidValueError(f"ViTConfig.qkv_bias = {self.qkv_bias!r}: accepted true or false")
        if self.global_pool not in ("token", "avg"):
            raise InvalidValueError(f"ViTConfig.global_pool = {self.global_pool!r}: accepted 'token' or 'avg'")

    def n_params(self) -> int:
        """Parameters the config builds (exact for timm's ``VisionTransformer``), before building it."""
        c, p, depth = self.embed_dim, self.patch_size, self.depth
        hidden = int(c * self.mlp_ratio)
        tokens = (self.img_size // p) ** 2 + 1
        block = 2 * 2 * c + 3 * c * c + (3 * c if self.qkv_bias else 0) + c * c + c + c * hidden + hidden + hidden * c + c
        return int(3 * p * p * c + c + c + tokens * c + depth * block + 2 * c + c * self.num_classes + self.num_classes)


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

    def __post_init__(self) -> None:
        for name, lo in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("threads", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise InvalidValueError(f"TrainConfig.{name} = {v!r}: accepted an integer >= {lo}")
        for name, lo, hi in (("lr", 0.0, 1.0), ("weight_decay", 0.0, 1.0), ("label_smoothing", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v < hi or (name == "lr" and v == 0):
                raise InvalidValueError(f"TrainConfig.{name} = {v!r}: accepted a number in "
                                        f"{'(' if name == 'lr' else '['}{lo}, {hi})")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, (int, float)) \
                or not 0 <= self.warmup_epochs <= self.epochs:
            raise InvalidValueError(f"TrainConfig.warmup_epochs = {self.warmup_epochs!r}: accepted a number "
                                    f"in [0, epochs = {self.epochs}]")


#: Benchmark v2's base model (:mod:`vitprune_lite.data_v2`): 48 px, 4 px patches (144 patch
#: tokens + CLS, in the range of real ViTs), width 192 in 3 heads of 64 (DeiT's head width),
#: 6 blocks, 48 classes; 2.7 M parameters. Trained in float32 for 4 epochs of the 40,000-image
#: public pool (bfloat16 autocast was not reliably faster here: data/benchmarks/benchmark_v2.json).
V2_CONFIG = ViTConfig(img_size=48, patch_size=4, embed_dim=192, depth=6, num_heads=3, num_classes=48)
V2_TRAIN = TrainConfig(epochs=4)
V2_CHECKPOINT = "base_vit_v2.safetensors"


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
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise InvalidValueError(f"steps = {steps!r}: accepted an integer >= 1 (or None to use epochs)")
    if steps is None and (isinstance(epochs, bool) or not isinstance(epochs, (int, float))
                          or not math.isfinite(epochs) or epochs <= 0):
        raise InvalidValueError(f"epochs = {epochs!r}: accepted a number > 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidValueError(f"batch_size = {batch_size!r}: accepted an integer >= 1")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InvalidValueError(f"lr = {lr!r}: accepted a finite number > 0")
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
                     progress: bool = True, fixed_cost: bool = False) -> tuple[VisionTransformer, dict[str, Any]]:
    """Train the base model on the public pool's train split; evaluate on every test split.

    Args:
        cfg, tcfg: architecture and training recipe.
        bench: the benchmark to train on (default: v1 for ``tcfg.seed``).
        progress: show a progress bar.
        fixed_cost: also measure the trained model's fixed-cost share ``L(2) / L(N)`` at batch 1
            and 1 thread (:func:`latency.fixed_cost_share`, about a minute) into the metadata.

    Returns:
        ``(model, metadata)``; metadata holds configs, history, accuracies, token count and seconds.
    """
    from . import data, latency
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
        "tokens": (cfg.img_size // cfg.patch_size) ** 2 + 1,
        "val_curve": hist["val_acc"],
        "final_loss": float(np.mean(hist["loss"][-20:])),
        "environment": environment(),
    }
    if fixed_cost:
        meta["fixed_cost"] = latency.fixed_cost_share(model, threads=1, rounds=7, max_rounds=15)
    return model, meta


# ----------------------------------------------------------------------------- checkpoints

class ChecksumError(VitpruneError, RuntimeError):
    """A checkpoint's bytes do not match the sha256 recorded in its metadata."""


#: Largest checkpoint metadata file read (the shipped one is a few kB).
MAX_METADATA_BYTES = 1 << 20
#: Largest model a checkpoint's metadata may ask for, in parameters (ViT-L has ~300 M).
MAX_MODEL_PARAMS = 1_000_000_000
CHECKPOINT_SUFFIX = ".safetensors"


def _meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def shipped_checkpoint(benchmark: str = "v1") -> Path:
    """The shipped base-model checkpoint of ``benchmark``: ``data/base_vit.safetensors`` (v1) or
    ``data/base_vit_v2.safetensors`` (v2)."""
    return paths.data_dir() / (V2_CHECKPOINT if benchmark == "v2" else BASE_CHECKPOINT)


def check_checkpoint_path(path: str | Path, overwrite_shipped: bool = False) -> Path:
    """Where a checkpoint may be written: a ``.safetensors`` file path, not the shipped one unless asked.

    Raises:
        InvalidValueError: another suffix (e.g. ``.json``, the metadata's own name) or a directory.
        OverwriteRefusedError: ``path`` is a shipped checkpoint (v1's or v2's) and ``overwrite_shipped``
            is False.
    """
    path = Path(path)
    if path.suffix != CHECKPOINT_SUFFIX:
        raise InvalidValueError(f"checkpoint path {path} must end in {CHECKPOINT_SUFFIX} (its metadata is "
                                f"written beside it as {path.with_suffix('.json').name})")
    if path.is_dir():
        raise InvalidValueError(f"checkpoint path {path} is a directory; give a file name ending in {CHECKPOINT_SUFFIX}")
    shipped = {(paths.data_dir() / name).resolve() for name in (BASE_CHECKPOINT, V2_CHECKPOINT)}
    if not overwrite_shipped and path.resolve() in shipped:
        raise OverwriteRefusedError(f"{path} is a shipped base-model checkpoint; refusing to overwrite it. Write "
                                    f"elsewhere (--out other{CHECKPOINT_SUFFIX}) or pass --overwrite-shipped "
                                    f"(overwrite_shipped=True) to replace it on purpose")
    return path


def save_checkpoint(model: nn.Module, path: str | Path, meta: Mapping[str, Any],
                    overwrite_shipped: bool = False) -> Path:
    """Write ``model``'s weights as safetensors and ``meta`` (+ sha256) as JSON beside it, as a pair.

    Both files are replaced together (:func:`vitprune_lite.paths.write_pair_atomic`): after an
    interruption at any point the folder holds either the old pair or the new one.

    Raises:
        InvalidValueError: ``path`` does not end in ``.safetensors``.
        OverwriteRefusedError: ``path`` is the shipped checkpoint and ``overwrite_shipped`` is False.
    """
    from safetensors.torch import save

    path = check_checkpoint_path(path, overwrite_shipped)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "pt"})
    full = dict(meta, sha256=hashlib.sha256(blob).hexdigest(), file=path.name, bytes=len(blob))
    text = json.dumps(full, indent=2, allow_nan=False, default=paths._to_builtin) + "\n"
    paths.write_pair_atomic(path, blob, _meta_path(path), text.encode())
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored beside a checkpoint (an interrupted pair write is settled first).

    Raises:
        FileNotFoundError: no metadata file.
        InvalidFileError: the metadata is not a JSON object with a valid ``model_config``.
    """
    path = Path(path)
    paths.recover_pair(path)
    mpath = _meta_path(path)
    if not mpath.exists():
        raise FileNotFoundError(f"metadata {mpath} is missing; a checkpoint needs its .json beside it")
    meta = paths.read_json(mpath, max_bytes=MAX_METADATA_BYTES, what="checkpoint metadata")
    if not isinstance(meta, dict):
        raise InvalidFileError(f"checkpoint metadata {mpath} holds a JSON {type(meta).__name__}; expected an "
                               f"object with model_config and sha256")
    return meta


def _config_from_meta(meta: Mapping[str, Any], mpath: Path) -> ViTConfig:
    cfg = meta.get("model_config")
    if not isinstance(cfg, dict):
        raise InvalidFileError(f"checkpoint metadata {mpath}: model_config is {type(cfg).__name__}; expected an "
                               f"object with the fields {sorted(ViTConfig.__dataclass_fields__)}")
    unknown = sorted(set(cfg) - set(ViTConfig.__dataclass_fields__))
    if unknown:
        raise InvalidFileError(f"checkpoint metadata {mpath}: model_config has unknown fields {unknown}; "
                               f"accepted {sorted(ViTConfig.__dataclass_fields__)}")
    try:
        return ViTConfig(**cfg)
    except InvalidValueError as err:
        raise InvalidFileError(f"checkpoint metadata {mpath}: {err}") from None


def load_checkpoint(path: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """Load a base-model checkpoint after checking its sha256 against the metadata.

    Before anything is allocated, the metadata's model config is validated and its size is
    compared with the weights file (a config may not ask for more parameters than the file
    holds, nor more than :data:`MAX_MODEL_PARAMS`); every tensor's name and shape is checked
    against the model the config builds.

    Raises:
        FileNotFoundError: the checkpoint or its metadata is missing (``make train`` rebuilds it).
        InvalidFileError: malformed metadata, or weights whose names or shapes do not match the config.
        InputTooLargeError: the metadata asks for a model larger than the caps.
        ChecksumError: the file's bytes differ from what the metadata recorded.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    paths.recover_pair(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; rebuild it with `make train`")
    if path.suffix != CHECKPOINT_SUFFIX:
        raise InvalidValueError(f"checkpoint path {path} must end in {CHECKPOINT_SUFFIX}")
    meta = read_metadata(path)
    mpath = _meta_path(path)
    cfg = _config_from_meta(meta, mpath)
    size = path.stat().st_size
    n = cfg.n_params()
    if n > MAX_MODEL_PARAMS or 2 * n > size:  # at least 2 bytes (fp16) per parameter must be in the file
        raise InputTooLargeError(f"checkpoint metadata {mpath} asks for a model of {n:,} parameters, but the "
                                 f"weights file {path} holds {size:,} bytes (cap {MAX_MODEL_PARAMS:,} parameters); "
                                 f"the metadata does not belong to these weights")
    digest = paths.sha256_file(path)
    if digest != meta.get("sha256"):
        raise ChecksumError(f"checkpoint {path} has sha256 {digest[:12]}..., but its metadata records "
                            f"{str(meta.get('sha256'))[:12]}...: the file is corrupted or does not belong to "
                            f"this metadata. Restore it from git or rebuild it with `make train`.")
    model = create_base_model(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InvalidFileError(f"checkpoint {path} is not a readable safetensors file ({err})") from None
    bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if bad:
        detail = "; ".join(f"{k}: file {have.get(k)}, config {want.get(k)}" for k in bad[:4])
        raise InvalidFileError(f"checkpoint {path} does not match the model_config in {mpath} "
                               f"({len(bad)} tensors differ: {detail}{'; ...' if len(bad) > 4 else ''})")
    model.load_state_dict(state)
    return model.eval(), meta


def load_base_model(benchmark: str = "v1") -> tuple[VisionTransformer, dict[str, Any]]:
    """The shipped base model of ``benchmark`` and its metadata.

    ``"v1"``: ``data/base_vit.safetensors``; ``"v2"``: ``data/base_vit_v2.safetensors``. The
    checkpoint must have been trained on that benchmark's current generator version.

    Raises:
        InvalidValueError: an unknown benchmark name.
        InvalidFileError: the checkpoint was trained on another generator version (retrain it).
    """
    from . import data

    module = data.benchmark_module(benchmark)
    path = shipped_checkpoint(benchmark)
    model, meta = load_checkpoint(path)
    version = meta.get("data", {}).get("generator_version") if isinstance(meta.get("data"), dict) else None
    if version != module.GENERATOR_VERSION:
        raise InvalidFileError(f"{path}: trained on benchmark generator version {version!r}, but benchmark "
                               f"{benchmark} is now version {module.GENERATOR_VERSION!r}; retrain it "
                               f"({'make train' if benchmark == 'v2' else 'make train-v1'})")
    return model, meta


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

