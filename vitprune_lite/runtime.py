"""ONNX Runtime (CPU) beside eager PyTorch: export, run and check a model; a latency backend.

Edge users deploy with a runtime, not eager PyTorch, and eager PyTorch's per-operator overhead is
part of what a latency curve measures. This module turns any model the project builds into an
ONNX Runtime session so that :func:`vitprune_lite.measure.measure_latency` and
:func:`vitprune_lite.latency.sweep` can time it with the same interleaved protocol
(``backend="onnxruntime"``).

- **Export**: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export`` based exporter, which
  needs ``onnxscript``), opset 18, at a fixed batch size per exported file. It exports the dense
  model, structured-pruned models with uneven per-block widths (:mod:`vitprune_lite.surgery`) and
  the token-reduced models of :mod:`vitprune_lite.tokens` at a fixed setting (POMT, Top-K, EViT,
  ToMe; a token schedule is a constant of the graph).
- **Where ToMe does not export as it runs**: with proportional attention, ToMe passes
  ``log(size)`` as an additive float mask to ``scaled_dot_product_attention``; torch 2.13's
  exporter fails to decompose that call ("Cannot view a tensor with shape [B, N, H, D] and
  strides ... as a tensor with shape [B, N, H*D]"). The exported copy therefore computes those
  blocks' attention explicitly (``attn.fused_attn = False``: the same softmax(q k^T * scale +
  bias) v, written as matmuls); opset 18 has no attention operator, so the exporter writes fused
  attention as matmuls and a softmax anyway and the graph is the same in kind. ToMe without
  proportional attention exports as is.
  The legacy TorchScript exporter (``dynamo=False``) is not used: it cannot export ToMe at all
  (``aten::index_fill_`` with a boolean value has no alias-analysis entry).
- **Check**: :func:`max_abs_diff` runs the session and the PyTorch model on the same inputs;
  :func:`export_checked` refuses an export whose outputs differ by more than ``atol`` (1e-4).
- **Sessions**: CPU execution provider only, all graph optimisations, sequential execution, one
  inter-op thread and ``intra_op_num_threads`` set per session (one session per thread count,
  built on first use), so timings can be taken at 1 and 2 threads.
- **Curves** (:func:`curve_models`): by default every token count is its own fixed-shape export
  of the eager curve's module (:class:`vitprune_lite.tokens.SubsetViT`), as a deployed model
  would be; that costs one export and one copy of the weights per point. ``shapes="dynamic"``
  exports :class:`IndexedViT` once, with the token count free (one session for every point):
  cheaper to build, but ONNX Runtime then cannot specialise the graph on a fixed shape, and its
  timings need not match those of the fixed-shape models that are deployed (in a quick check they
  did not, in either direction); an idle-machine comparison is still to be made.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import vit

__all__ = [
    "BACKENDS", "check_backend", "OrtModule", "export", "export_checked", "max_abs_diff",
    "IndexedViT", "curve_models", "to_backend", "timing_callable", "versions",
]

#: Latency backends: eager PyTorch (the default everywhere) and ONNX Runtime on the CPU.
BACKENDS = ("eager", "onnxruntime")
OPSET = 18


def check_backend(backend: Any) -> str:
    """Return ``backend`` if it is one of :data:`BACKENDS`, else raise naming the accepted ones."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise ImportError("backend 'onnxruntime' needs the onnxruntime package "
                          "(pip install -c constraints.txt onnxruntime onnx onnxscript)") from e
    return onnxruntime


def versions() -> dict[str, Optional[str]]:
    """Versions of onnxruntime, onnx and onnxscript (None where not installed), for records."""
    out: dict[str, Optional[str]] = {}
    for name in ("onnxruntime", "onnx", "onnxscript"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def _check_threads(threads: Any) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1 (ONNX Runtime intra-op threads), got {threads!r}")
    return int(threads)


def _as_args(inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    args = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if not args or not all(isinstance(a, Tensor) for a in args):
        raise TypeError("inputs must be a Tensor or a tuple of Tensors (the forward's arguments), got "
                        f"{type(inputs).__name__}")
    return args


def _numpy(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


class OrtModule(nn.Module):
    """An exported model run by ONNX Runtime's CPU execution provider.

    Behaves like the module it came from (``forward`` takes and returns tensors), so accuracy
    code can use it; :meth:`runner` gives a call without any PyTorch in it, for timing.

    Args:
        onnx_bytes: the serialised ONNX model.
        input_names: graph input names, in forward-argument order.
        meta: what was exported and how (class, batch size, dynamic axes, notes).
        spinning: let the session's worker threads spin while they wait for work (ONNX
            Runtime's default; lower latency, more CPU burnt).
    """

    def __init__(self, onnx_bytes: bytes, input_names: Sequence[str], meta: Optional[dict[str, Any]] = None,
                 spinning: bool = True) -> None:
        super().__init__()
        self.onnx_bytes = bytes(onnx_bytes)
        self.input_names = list(input_names)
        self.meta = dict(meta or {})
        self.spinning = bool(spinning)
        self._sessions: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Sessions hold native state that cannot be copied or pickled; they are rebuilt on use.
        state = self.__dict__.copy()
        state["_sessions"] = {}
        return state

    def session(self, threads: int):
        """The ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads (built once)."""
        threads = _check_threads(threads)
        if threads not in self._sessions:
            ort = _ort()
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
            so.log_severity_level = 3
            self._sessions[threads] = ort.InferenceSession(self.onnx_bytes, sess_options=so,
                                                           providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def _feeds(self, args: Sequence[Tensor]) -> dict[str, np.ndarray]:
        if len(args) != len(self.input_names):
            raise ValueError(f"the exported graph takes {len(self.input_names)} input(s) {self.input_names}, "
                             f"got {len(args)}")
        return {name: _numpy(a) for name, a in zip(self.input_names, args)}

    def forward(self, *args: Tensor) -> Tensor:
        """Run the session (``torch.get_num_threads()`` intra-op threads); output as a tensor."""
        out = self.session(torch.get_num_threads()).run(None, self._feeds(args))[0]
        return torch.from_numpy(out)

    def runner(self, args: Sequence[Tensor], threads: int) -> Callable[[], Any]:
        """A zero-argument call running the session on ``args`` (converted once), for timing."""
        sess, feeds = self.session(threads), self._feeds(args)

        def run() -> Any:
            return sess.run(None, feeds)

        return run

    def save(self, path: str | Path) -> Path:
        """Write the ONNX file (e.g. to deploy it); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.onnx_bytes)
        return path

    def extra_repr(self) -> str:
        return f"inputs={self.input_names}, {len(self.onnx_bytes) / 1e6:.1f} MB, meta={self.meta}"


def _proportional_tome(model: nn.Module) -> bool:
    state = getattr(model, "_tr_state", None)
    return getattr(model, "_tr_method", None) == "tome" and bool(getattr(state, "proportional", False))


@torch.no_grad()
def export(model: nn.Module, inputs: Tensor | Sequence[Tensor], *,
           dynamic: Optional[Mapping[int, Mapping[int, str]]] = None, spinning: bool = True) -> OrtModule:
    """Export ``model`` at the shapes of ``inputs`` and wrap it for ONNX Runtime.

    Args:
        model: any module the project builds (dense, surgery-pruned, token-patched); not changed
            (exported in eval mode from a copy where the export needs a change).
        inputs: example forward arguments, e.g. images ``[B, 3, H, W]``; their shapes are fixed
            in the graph (the batch size included) unless named in ``dynamic``.
        dynamic: ``{argument position: {dim: name}}`` of dimensions left free, e.g.
            ``{1: {0: "n"}}`` for :class:`IndexedViT`'s token index.
        spinning: let ONNX Runtime's worker threads spin while waiting (its default).

    Returns:
        An :class:`OrtModule`; check it with :func:`max_abs_diff`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args = _as_args(inputs)
    meta: dict[str, Any] = {"class": type(model).__name__, "shapes": [list(a.shape) for a in args],
                            "opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)", "notes": []}
    src = model
    if _proportional_tome(model):
        src = copy.deepcopy(model)
        for blk in src.blocks:
            blk.attn.fused_attn = False
        meta["notes"].append("ToMe proportional attention exported unfused (explicit softmax): "
                             "the exporter cannot decompose SDPA with an additive float mask")
    dyn = None
    if dynamic:
        dyn = [None] * len(args)
        for pos, dims in dynamic.items():
            dyn[pos] = {d: torch.export.Dim(name, min=2, max=int(args[pos].shape[d])) for d, name in dims.items()}
        dyn = tuple(dyn)
        meta["dynamic"] = {str(k): dict(v) for k, v in dynamic.items()}
    names = [f"input{i}" for i in range(len(args))]
    with vit.eval_mode(src), _quiet():
        program = torch.onnx.export(src, args, dynamo=True, opset_version=OPSET, verbose=False,
                                    input_names=names, dynamic_shapes=dyn)
        with tempfile.TemporaryDirectory() as tmp:  # save() resolves file paths, not buffers
            path = os.path.join(tmp, "model.onnx")
            program.save(path)
            data = Path(path).read_bytes()
    return OrtModule(data, names, meta, spinning=spinning)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress lines and the ONNX IR's attribute notices."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@torch.no_grad()
def max_abs_diff(model: nn.Module, ort_module: OrtModule, inputs: Tensor | Sequence[Tensor]) -> float:
    """Largest absolute difference between the PyTorch model's and the session's output."""
    args = _as_args(inputs)
    with vit.eval_mode(model), torch.inference_mode():
        ref = model(*args)
    got = ort_module.session(max(1, torch.get_num_threads())).run(None, ort_module._feeds(args))[0]
    if tuple(got.shape) != tuple(ref.shape):
        raise ValueError(f"exported output has shape {tuple(got.shape)}, PyTorch's {tuple(ref.shape)}")
    return float(np.abs(got - _numpy(ref.float())).max())


def export_checked(model: nn.Module, inputs: Tensor | Sequence[Tensor], *, atol: float = 1e-4,
                   check_inputs: Sequence[Tensor | Sequence[Tensor]] = (), **export_kw: Any) -> tuple[OrtModule, float]:
    """:func:`export`, then compare outputs on ``inputs`` and every entry of ``check_inputs``.

    Returns:
        ``(ort_module, max_abs_diff)``; the difference is also stored in ``ort_module.meta``.

    Raises:
        ValueError: the outputs differ by more than ``atol``.
    """
    om = export(model, inputs, **export_kw)
    diff = max(max_abs_diff(model, om, x) for x in [inputs, *check_inputs])
    om.meta["max_abs_diff"] = diff
    if not diff <= atol:
        raise ValueError(f"ONNX Runtime output differs from PyTorch's by {diff:.3g} > atol {atol:g} "
                         f"for {om.meta['class']}; the export is not faithful")
    return om, diff


class IndexedViT(nn.Module):
    """A ViT run on the token positions given as an input: images ``[B, 3, H, W]``, index ``[n]``.

    The same cut as :class:`vitprune_lite.tokens.SubsetViT` (after the patch and position
    embedding), with the kept positions (prefix first) as the second argument, so that one
    export with a dynamic ``n`` times every token count.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        """``x [B, 3, H, W]``, ``index [n]`` (int64) -> logits ``[B, classes]``."""
        m = self.model
        return vit.head(m, vit.run_blocks(m, vit.embed(m, x).index_select(1, index)))


_SHAPES = ("static", "dynamic")


def curve_models(model: nn.Module, ns: Sequence[int], block: Optional[int], batch_size: int, seed: int,
                 shapes: str = "static") -> tuple[dict[str, nn.Module], dict[str, tuple[Tensor, ...]]]:
    """Exported modules and inputs for every curve point, by name ``"n=<n>"``.

    Args:
        model: an unpatched timm ``VisionTransformer``.
        ns: token counts (prefix included).
        block: ``None`` for the whole network, else the index of the block timed alone.
        batch_size: images (or token sequences) per forward.
        seed: the images and the kept patches, as in :class:`vitprune_lite.tokens.SubsetViT`.
        shapes: ``"static"`` (one fixed-shape export per point) or ``"dynamic"`` (one export
            with a free token count for all points); see the module docstring.
    """
    from . import tokens

    if shapes not in _SHAPES:
        raise ValueError(f"shapes must be one of {_SHAPES}, got {shapes!r}")
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    total = tokens.token_count(model)
    if block is None:
        x = torch.randn(batch_size, 3, *model.patch_embed.img_size, generator=g).to(dtype)
        subsets = {f"n={n}": tokens.SubsetViT(model, n, seed=seed) for n in ns}  # the eager curve's patches
        if shapes == "static":
            return {k: export(m, (x,)) for k, m in subsets.items()}, {k: (x,) for k in subsets}
        om = export(IndexedViT(model), (x, torch.arange(total)), dynamic={1: {0: "n"}})
        return dict.fromkeys(subsets, om), {k: (x, m.index.clone()) for k, m in subsets.items()}
    x = torch.randn(batch_size, total, model.embed_dim, generator=g).to(dtype)
    inputs = {f"n={n}": (x[:, :n].contiguous(),) for n in ns}
    if shapes == "static":
        return {k: export(model.blocks[block], v) for k, v in inputs.items()}, inputs
    om = export(model.blocks[block], (x,), dynamic={0: {1: "n"}})
    return dict.fromkeys(inputs, om), inputs


def to_backend(models: Mapping[str, nn.Module], inputs: Mapping[str, Tensor | Sequence[Tensor]],
               backend: str = "onnxruntime") -> dict[str, nn.Module]:
    """Models ready to time in ``backend``: eager -> unchanged; onnxruntime -> exported once each.

    Export each model once before a measurement loop that calls
    :func:`vitprune_lite.measure.measure_latency` many times: it exports any plain module it is
    given, on every call. Models that are already :class:`OrtModule` are kept.
    """
    check_backend(backend)
    if backend == "eager":
        return dict(models)
    return {k: m if isinstance(m, OrtModule) else export(m, inputs[k]) for k, m in models.items()}


def timing_callable(model: nn.Module, args: Sequence[Tensor], threads: int) -> Callable[[], Any]:
    """What :func:`vitprune_lite.measure.measure_latency` times for the onnxruntime backend.

    An :class:`OrtModule` is used as it is; any other module is exported at the shapes of
    ``args`` first (which costs seconds: see :func:`to_backend`).
    """
    om = model if isinstance(model, OrtModule) else export(model, tuple(args))
    return om.runner(tuple(args), threads)
