"""FLOPs, parameters, peak memory, latency, accuracy, environment: the one measurement module.

Every notebook and benchmark measures through these functions, so that numbers from different
methods are comparable and recorded the same way.

- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: FLOPs = 2 x MACs, matrix
  multiplies and convolutions only (softmax, LayerNorm, GELU, additions are not counted).
  Fused attention is counted like the explicit ``q @ k^T`` and ``attn @ v`` it replaces.
- Latency is interleaved: every round times each model once, in a freshly shuffled order, with
  ``torch.utils.benchmark``; the result is the median of the round medians, their spread, and
  the thread count, batch size and device it was measured under. Never assert a latency.
- Accuracy is top-1 per sample, in fixed data order; :func:`batch_dependence` checks whether a
  model's predictions depend on how its batches are composed (a leak, not a measurement).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from . import vit
from .errors import InvalidValueError

# Fused attention kernels that torch's FLOP registry does not know (it covers the CUDA flash,
# memory-efficient and cuDNN kernels). Without these, a fused ViT on CPU counts zero attention
# FLOPs and looks cheaper than the same model with hand-written attention.
_SDPA_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # q: [..., N, Dqk], k: [..., M, Dqk], v: [..., M, Dv]. Each product uses its own width:
    # pruned models may keep fewer query/key dimensions than value dimensions.
    *lead, n, d_qk = query_shape
    m, d_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(lead) * n * m * d_qk + 2 * math.prod(lead) * n * m * d_v


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the CPU fused-attention kernel."""
    mapping = {}
    for name in _SDPA_OPS:
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry:
            mapping[op] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _as_args(inputs: Tensor | tuple | list, what: str = "inputs") -> tuple:
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    raise TypeError(
        f"{what} must be a Tensor or a tuple of forward arguments, got {type(inputs).__name__}"
    )


def check_device(device: Any) -> torch.device:
    """A ``torch.device`` this machine can use, from ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or a device.

    Raises:
        InvalidValueError: an unknown device string, or CUDA that this machine does not have.
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise InvalidValueError(f"device {device!r} is not a device name; accepted 'cpu', 'cuda' or "
                                    f"'cuda:<index>'") from None
    else:
        raise InvalidValueError(f"device {device!r}: accepted a string such as 'cpu' or 'cuda:0', or a torch.device")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise InvalidValueError(f"device {device!r} is not available here ({count} CUDA device(s)); use 'cpu'"
                                    + (f" or 'cuda:0'..'cuda:{count - 1}'" if count else ""))
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InvalidValueError(f"device {device!r} is not available here; use 'cpu'")
    elif dev.type != "cpu":
        raise InvalidValueError(f"device {device!r} is not supported; accepted 'cpu', 'cuda[:<index>]' "
                                f"(or 'mps' where available)")
    return dev


def _check_images_fit(model: nn.Module, x: Any) -> None:
    """Refuse images whose size the model's patch embedding cannot take (timm asserts deep inside)."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if not isinstance(x, Tensor) or size is None or getattr(pe, "dynamic_img_size", False) \
            or not getattr(pe, "strict_img_size", True):
        return
    if x.dim() != 4 or tuple(x.shape[-2:]) != tuple(size) or x.shape[1] != getattr(pe.proj, "in_channels", x.shape[1]):
        raise InvalidValueError(f"images of shape {tuple(x.shape)} do not fit the model, which takes "
                                f"[N, {getattr(pe.proj, 'in_channels', 3)}, {size[0]}, {size[1]}]; resize them "
                                f"(e.g. data.load_image_folder(..., size={size[0]}))")


def _check_module(model: Any, what: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")


def _counted(model: nn.Module, inputs: Tensor | tuple) -> FlopCounterMode:
    _check_module(model)
    args = _as_args(inputs)
    with vit.eval_mode(model), torch.no_grad(), flop_counter() as counter:
        model(*args)
    return counter


def count_flops(model: nn.Module, inputs: Tensor | tuple) -> int:
    """FLOPs (2 x MACs; matmuls and convolutions only) of one forward of the whole batch.

    ``inputs`` is the forward's argument (e.g. images ``[B, 3, H, W]``) or a tuple of them. Runs
    in eval mode under ``torch.no_grad()``; each submodule's mode is restored afterwards.
    """
    return _counted(model, inputs).get_total_flops()


def flops_by_module(model: nn.Module, inputs: Tensor | tuple) -> dict[str, int]:
    """FLOPs per top-level child, with ``ModuleList``/``Sequential`` children split per item.

    Returns:
        ``{"patch_embed": ..., "blocks.0": ..., ..., "head": ..., "(other)": ...}``; "(other)"
        holds FLOPs done outside every listed child (e.g. in the model's own ``forward``).
    """
    counter = _counted(model, inputs)
    root = type(model).__name__  # how the counter's module tracker names the outermost module
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    out: dict[str, int] = {}
    for name, child in model.named_children():
        split = isinstance(child, (nn.ModuleList, nn.Sequential))
        for sub in [f"{name}.{s}" for s, _ in child.named_children()] if split else [name]:
            out[sub] = counts.get(f"{root}.{sub}", 0)
    out["(other)"] = counter.get_total_flops() - sum(out.values())
    return out


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once); only ``requires_grad`` ones if asked."""
    _check_module(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated by torch while ``fn()`` runs, above what was allocated when it began.

    Counts tensor storage from torch's allocator (activations, outputs, temporaries freed inside
    ``fn``), in bytes. Not counted: memory held before the call (e.g. weights), Python objects,
    scratch space that libraries allocate outside torch's allocator. ``device`` is where ``fn``
    allocates. CUDA: ``torch.cuda.max_memory_allocated``. CPU: the allocation events of the
    torch profiler (``profile_memory=True``), which costs about a second on first use.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    device = check_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"peak_memory supports 'cpu' and 'cuda' devices, got {device}")

    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:  # allocations sit at any depth of the op tree; gather them all
        ev = stack.pop()
        stack.extend(ev.children)
        if ev.tag == _EventType.Allocation and ev.extra_fields.device.type == "cpu":
            events.append((ev.start_time_ns, ev.extra_fields.alloc_size))
    # Frees of tensors made before fn are negative steps; the running sum is relative to start.
    running = peak = 0
    for _, size in sorted(events):
        running += size
        peak = max(peak, running)
    return peak


@dataclass(frozen=True)
class Latency:
    """One model's latency from :func:`measure_latency`: milliseconds per forward of a batch."""

    median_ms: float  # median of the per-round medians
    iqr_ms: tuple[float, float]  # 25th and 75th percentile of the per-round medians
    n_samples: int  # timed blocks over all rounds (each block averages several forwards)
    round_medians_ms: tuple[float, ...]  # median of each round, in round order
    batch_size: int  # first dimension of the first input tensor
    threads: int  # torch intra-op threads while timed
    device: str  # where the inputs lived, e.g. "cpu"
    backend: str = "eager"  # what ran the model: "eager" PyTorch or "onnxruntime" (runtime.py)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for results JSON."""
        return asdict(self)


def measure_latency(
    models: Mapping[str, nn.Module],
    inputs: Tensor | tuple | Mapping[str, Tensor | tuple],
    *,
    threads: int | None = None,
    rounds: int = 5,
    min_run_time: float = 0.2,
    seed: int = 0,
    warmup: int = 2,
    device: str | torch.device | None = None,
    backend: str = "eager",
    calls: int | None = None,
) -> dict[str, Latency]:
    """Time several models against each other, interleaved, under ``torch.inference_mode``.

    Every round shuffles the model order (seeded) and times each model once with
    ``Timer.blocked_autorange(min_run_time)``, so slow drifts in machine load hit all models
    alike instead of whichever happened to run last.

    Args:
        models: name -> module, at least one. Put in eval mode while timed, then restored.
        inputs: one input (``[B, ...]`` tensor or tuple of arguments) shared by all models, or a
            mapping name -> input with one entry per model.
        threads: intra-op threads during timing (default: the current count); restored after.
        rounds: interleaved rounds, >= 1.
        min_run_time: seconds per model per round, > 0.
        seed: seed of the order shuffle.
        warmup: untimed forwards per model before the first round, >= 0.
        device: if given, inputs are moved there; models must already live there.
        backend: ``"eager"`` (PyTorch) or ``"onnxruntime"``: each model runs as an ONNX Runtime
            CPU session with ``threads`` intra-op threads (:mod:`vitprune_lite.runtime`; plain
            modules are exported at their input's shapes first, ``runtime.OrtModule`` is used as
            is). Same rounds, shuffles and timer either way.
        calls: ``None`` (default): each sample is ``Timer.blocked_autorange(min_run_time)``,
            which first sizes its block with untimed calls - for a model slower than
            ``min_run_time`` that is one untimed call per timed one, every round. An integer:
            each sample is the mean of exactly ``calls`` timed calls, nothing untimed, and
            ``min_run_time`` is not used. For many slow points timed once each (a latency
            curve) this halves the cost; on deit_small at batch 1 (2 threads, AMD EPYC, 20
            token counts, 55 s each) it also reduced the per-round spread: median 95 % interval
            half-width 0.6-1.4 % in 55-69 rounds against 2.2-3.1 % in 29-30 rounds.

    Returns:
        name -> :class:`Latency`, in the order of ``models``.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of name -> nn.Module")
    for name, model in models.items():
        _check_module(model, f"models[{name!r}]")
    for name, v, lo in (("rounds", rounds, 1), ("warmup", warmup, 0), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int):  # the range is checked below
            raise InvalidValueError(f"{name} = {v!r}: accepted an integer >= {lo}")
    if isinstance(min_run_time, bool) or not isinstance(min_run_time, (int, float)) or not math.isfinite(min_run_time):
        raise InvalidValueError(f"min_run_time = {min_run_time!r}: accepted a finite number of seconds > 0")
    if rounds < 1 or warmup < 0 or not min_run_time > 0:
        raise ValueError(
            "need rounds >= 1, warmup >= 0 and min_run_time > 0 (seconds); "
            f"got rounds={rounds}, warmup={warmup}, min_run_time={min_run_time}"
        )
    if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int) or calls < 1):
        raise InvalidValueError(f"calls = {calls!r}: accepted None (Timer.blocked_autorange) or an integer >= 1")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1 or None (keep current), got {threads!r}")
    if isinstance(inputs, Mapping):
        if set(inputs) != set(models):
            raise ValueError(
                f"inputs mapping must have exactly the keys of models {sorted(models)}, "
                f"got {sorted(inputs)}; or pass one input shared by all models"
            )
        args = {name: _as_args(inputs[name], f"inputs[{name!r}]") for name in models}
    else:
        args = dict.fromkeys(models, _as_args(inputs))
    for name, a in args.items():
        first = next((t for t in a if isinstance(t, Tensor)), None)
        if first is not None and first.dim() and first.shape[0] == 0:
            raise InvalidValueError(f"inputs for models[{name!r}] have batch size 0 (shape {tuple(first.shape)}); "
                                    f"a latency needs at least one sample per forward")
    if device is not None:
        device = check_device(device)
        args = {n: tuple(a.to(device) if isinstance(a, Tensor) else a for a in v)
                for n, v in args.items()}
        for name, model in models.items():
            if any(p.device != device for p in model.parameters()):
                raise ValueError(
                    f"models[{name!r}] is not on {device}; move it with .to({str(device)!r}) first"
                )

    if backend != "eager":
        from . import runtime

        runtime.check_backend(backend)
        if any(isinstance(a, Tensor) and a.device.type != "cpu" for v in args.values() for a in v):
            raise ValueError(f"backend {backend!r} runs on the CPU; pass CPU inputs or use backend='eager'")

    previous = torch.get_num_threads()
    used = threads or previous
    times: dict[str, list[float]] = {name: [] for name in models}
    blocks = dict.fromkeys(models, 0)
    order, rng = list(models), random.Random(seed)
    run = {name: (lambda m=model, a=args[name]: m(*a)) for name, model in models.items()}
    if backend != "eager":  # a session run on arguments converted once: no PyTorch in the call
        run = {name: runtime.timing_callable(m, args[name], used) for name, m in models.items()}
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(vit.eval_mode(model))
        stack.enter_context(torch.inference_mode())
        stack.callback(torch.set_num_threads, previous)
        torch.set_num_threads(used)
        for name in models:
            for _ in range(warmup):
                run[name]()
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                if calls is not None:  # exactly `calls` timed calls (Timer.timeit would warm up first)
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        run[name]()
                    times[name].append((time.perf_counter() - t0) / calls * 1e3)
                    blocks[name] += 1
                    continue
                # Timer defaults to ONE thread; pass the count explicitly or it silently differs.
                timer = (Timer("model(*args)", num_threads=used,
                               globals={"model": models[name], "args": args[name]})
                         if backend == "eager" else
                         Timer("run()", num_threads=used, globals={"run": run[name]}))
                m = timer.blocked_autorange(min_run_time=min_run_time)
                times[name].append(m.median * 1e3)
                blocks[name] += len(m.times)

    out = {}
    for name, t in times.items():
        first = next((a for a in args[name] if isinstance(a, Tensor)), None)
        q25, q50, q75 = np.percentile(t, [25, 50, 75])
        batch = int(first.shape[0]) if first is not None and first.dim() else 1
        out[name] = Latency(
            median_ms=float(q50), iqr_ms=(float(q25), float(q75)), n_samples=blocks[name],
            round_medians_ms=tuple(t), batch_size=batch, threads=used,
            device=str(first.device) if first is not None else "cpu", backend=backend,
        )
    return out


def latency_ratio(results: Mapping[str, Latency], a: str, b: str) -> float:
    """Latency of ``a`` over ``b`` (> 1: ``a`` is slower), the median of the per-round ratios.

    Rounds pair the two models in time, so per-round ratios cancel load that changes between
    rounds.
    """
    for key in (a, b):
        if key not in results:
            raise KeyError(f"{key!r} not in results; available: {sorted(results)}")
    ra, rb = results[a].round_medians_ms, results[b].round_medians_ms
    if len(ra) != len(rb):
        raise ValueError(f"{a!r} and {b!r} come from different runs; compare one run's results")
    return float(np.median(np.asarray(ra) / np.asarray(rb)))


#: Images per forward when evaluating (accuracy, predictions, features). Small batches keep a
#: ViT's activations in the CPU's caches: on the v2 base model (2 threads, Intel Xeon) batch 32 ran
#: 1.3-1.5x faster per image than batch 256 for the dense, structure-pruned and token-reduced
#: models alike. Predictions are per sample, so the batch size does not change what is measured.
EVAL_BATCH = 32


def _batches(x: Any, y: Tensor | None, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(inputs, labels) batches in data order, from tensors, a map-style dataset or batches."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(x, Tensor):
        if y is not None and (not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1]):
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be a tensor [N] matching x {tuple(x.shape)}, got y {got}")
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], None if y is None else y[i:i + batch_size]
        return
    if y is not None:
        raise ValueError("pass y only with a tensor x; a dataset or loader yields (x, y) itself")
    if hasattr(x, "__getitem__") and hasattr(x, "__len__"):  # map-style dataset of single samples
        for i in range(0, len(x), batch_size):
            items = [x[j] for j in range(i, min(i + batch_size, len(x)))]
            labels = torch.as_tensor([int(it[1]) for it in items])
            yield torch.stack([it[0] for it in items]), labels
        return
    if hasattr(x, "__iter__"):  # DataLoader-like: already batched
        for xb, yb in x:
            yield xb, torch.as_tensor(yb)
        return
    raise TypeError(
        "x must be a Tensor [N, ...], a Dataset of (x, y) or an iterable of (x, y) batches, "
        f"got {type(x).__name__}"
    )


def _logits_and_labels(
    model: nn.Module, x: Any, y: Tensor | None, batch_size: int
) -> tuple[Tensor, Tensor | None]:
    _check_module(model)
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    logits, labels = [], []
    _check_images_fit(model, x)
    with vit.eval_mode(model), torch.inference_mode():
        for xb, yb in _batches(x, y, batch_size):
            logits.append(model(xb.to(dev)).float().cpu())
            if yb is not None:
                labels.append(yb.cpu())
    if not logits:
        raise ValueError("no samples to evaluate: x is empty")
    return torch.cat(logits), (torch.cat(labels).long() if labels else None)


def logits(model: nn.Module, x: Any, batch_size: int = EVAL_BATCH) -> Tensor:
    """The model's outputs ``[N, classes]`` (float32, CPU), in data order; ``x`` as for :func:`predict`."""
    return _logits_and_labels(model, x, None, batch_size)[0]


def predict(model: nn.Module, x: Any, batch_size: int = EVAL_BATCH) -> Tensor:
    """Top-1 class per sample, in data order: LongTensor ``[N]``.

    Args:
        model: maps ``[B, 3, H, W]`` to logits ``[B, classes]``; run in eval mode.
        x: images ``[N, 3, H, W]``, a Dataset of (image, label) or an iterable of batches.
        batch_size: samples per forward (ignored for an already-batched iterable).
    """
    return _logits_and_labels(model, x, None, batch_size)[0].argmax(-1)


def correct(model: nn.Module, x: Any, y: Tensor | None = None, batch_size: int = EVAL_BATCH) -> Tensor:
    """Per-sample top-1 correctness, BoolTensor ``[N]``; labels ``y [N]`` with a tensor ``x``."""
    logits, labels = _logits_and_labels(model, x, y, batch_size)
    if labels is None:
        raise ValueError("labels needed: pass y [N] with a tensor x, or a dataset/loader of (x, y)")
    return logits.argmax(-1) == labels


def accuracy(model: nn.Module, x: Any, y: Tensor | None = None, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy in [0, 1], the mean of :func:`correct`.

    Per-sample predictions in fixed order make the result independent of batch composition only
    if the model is; check with :func:`batch_dependence`, and use ``batch_size=1`` if it is not.
    """
    return correct(model, x, y, batch_size).float().mean().item()


def batch_dependence(
    model: nn.Module, x: Tensor, batch_size: int = 128, seed: int = 0
) -> dict[str, Any]:
    """Do predictions change with batch composition? Compares three runs over the same images.

    Runs ``x [N, ...]`` in data order at ``batch_size``, one image at a time, and in a seeded
    random permutation at ``batch_size`` (mapped back to data order). A per-sample model changes
    no prediction (logits may differ by float rounding); one that shares statistics across a
    batch does. Costs N + 2 N / batch_size forwards: pass a subset.

    Returns:
        ``changed_single``/``changed_shuffled``: fraction of predictions that differ from the
        data-order run; ``max_logit_diff_*``: largest absolute logit change; ``batch_dependent``:
        True if any prediction changed; plus ``n``, ``batch_size`` and ``seed``.
    """
    if not isinstance(x, Tensor) or len(x) == 0:
        raise ValueError("x must be a non-empty tensor [N, ...]")
    ordered = _logits_and_labels(model, x, None, batch_size)[0]
    single = _logits_and_labels(model, x, None, 1)[0]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    shuffled = torch.empty_like(ordered)
    shuffled[perm] = _logits_and_labels(model, x[perm], None, batch_size)[0]
    base = ordered.argmax(-1)
    report: dict[str, Any] = {"n": len(x), "batch_size": batch_size, "seed": seed}
    for name, logits in (("single", single), ("shuffled", shuffled)):
        report[f"changed_{name}"] = (logits.argmax(-1) != base).float().mean().item()
        report[f"max_logit_diff_{name}"] = (logits - ordered).abs().max().item()
    report["batch_dependent"] = report["changed_single"] > 0 or report["changed_shuffled"] > 0
    return report


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


#: What a reproduction writes into the checkout itself (results, figures, curves, run times). Changes
#: there do not make a tree "dirty": a fresh clone's run has already rewritten some of them when a
#: later notebook records its environment.
RUN_OUTPUTS = ("data/results", "figures", "data/latency", "data/benchmarks", "data/run_times.json")


def environment() -> dict[str, Any]:
    """What a measurement ran on, to store beside it (no hostname, no user name).

    Returns:
        threads, cpu counts, CPU model, device name, versions (torch, timm, numpy, python),
        platform, 1-minute load average (a hint of other load), git revision (None outside a
        checkout) and whether the tree had uncommitted changes outside :data:`RUN_OUTPUTS`, UTC
        timestamp.
    """
    try:
        import timm
        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  *(f":(exclude){p}" for p in RUN_OUTPUTS))
    return {
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "timm": timm_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "git_rev": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def _block_widths(block: nn.Module) -> dict[str, int | None]:
    # Read widths off the layers themselves, so pruned blocks report what they really hold.
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
    fc1 = getattr(mlp, "fc1", None)
    if hasattr(attn, "num_heads") and hasattr(attn, "head_dim"):  # timm-style attention
        heads, qk_dim, v_dim = vit.head_geometry(attn)
    else:
        heads, qk_dim, v_dim = (getattr(attn, a, None) for a in ("num_heads", "qk_dim", "v_dim"))
    return {
        "num_heads": heads,
        "qk_dim": qk_dim,
        "v_dim": v_dim,
        "qkv_out": qkv.out_features if isinstance(qkv, nn.Linear) else None,
        "proj_in": proj.in_features if isinstance(proj, nn.Linear) else None,
        "mlp_hidden": fc1.out_features if isinstance(fc1, nn.Linear) else None,
    }


def model_report(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> dict[str, Any]:
    """Parameters, FLOPs for one input of ``input_shape`` and, for timm-style ``blocks``, widths.

    Returns:
        ``{"params", "flops", "input_shape", "blocks": [{num_heads, qk_dim, v_dim, qkv_out, proj_in,
        mlp_hidden}, ...]}`` ("blocks" only if the model has them).
    """
    _check_module(model)
    param = next(model.parameters(), None)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    report: dict[str, Any] = {
        "params": count_params(model),
        "flops": count_flops(model, x),
        "input_shape": list(input_shape),
    }
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        report["blocks"] = [_block_widths(b) for b in blocks]
    return report
