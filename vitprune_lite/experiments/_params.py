"""What the experiments share: the checks of their ``Params`` (each raises
:class:`~vitprune_lite.errors.InvalidValueError` naming the field, the value and what is accepted),
the preset lookup, the cache of a run, and :class:`ResultFile`, the JSON file every ``Result`` writes and reads."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional, TypeVar

import numpy as np

from ..errors import InvalidFileError, InvalidValueError


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def plain(obj: Any) -> Any:
    """``obj`` as JSON gives it back: mappings as dicts with str keys, tuples and arrays as lists,
    numpy scalars as Python numbers (what a ``Result`` holds after a ``to_json`` / ``from_json`` round trip)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def check_benchmark(params: Any) -> None:
    """``params.benchmark`` is ``"v1"`` or ``"v2"``."""
    from ..data import BENCHMARK_NAMES

    if params.benchmark not in BENCHMARK_NAMES:
        raise InvalidValueError(f"Params.benchmark = {params.benchmark!r}: accepted {BENCHMARK_NAMES}")


def check_ints(params: Any, bounds: Iterable[tuple[str, int]]) -> None:
    """Each named field is an integer (not a bool) at least its bound."""
    for name, lo in bounds:
        v = getattr(params, name)
        if not _is_int(v) or v < lo:
            raise InvalidValueError(f"Params.{name} = {v!r}: accepted an integer >= {lo}")


def check_pruning(params: Any) -> None:
    """The fields every pruning experiment has: ``budget_index``, ``seeds``, ``devices``, ``ft_lr``, ``val_fraction``."""
    if not _is_int(params.budget_index) or not 0 <= params.budget_index <= 4:
        raise InvalidValueError(f"Params.budget_index = {params.budget_index!r}: accepted 0..4 (TAP-ViTs' budgets)")
    if not isinstance(params.seeds, tuple) or not params.seeds or any(not _is_int(s) or s < 0 for s in params.seeds):
        raise InvalidValueError(f"Params.seeds = {params.seeds!r}: accepted a non-empty tuple of integers >= 0")
    if not isinstance(params.devices, tuple) or any(not isinstance(d, str) or not d for d in params.devices):
        raise InvalidValueError(f"Params.devices = {params.devices!r}: accepted a tuple of device names "
                                "(empty: every device)")
    if not (0 < params.ft_lr < 1):
        raise InvalidValueError(f"Params.ft_lr = {params.ft_lr!r}: accepted a learning rate in (0, 1)")
    if not (0 <= params.val_fraction < 1):
        raise InvalidValueError(f"Params.val_fraction = {params.val_fraction!r}: accepted a share in [0, 1)")


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and bool(np.isfinite(v))


@dataclass(frozen=True)
class RecoveryParams:
    """The standard recovery (:func:`vitprune_lite.pipelines.recover`) of notebooks 02 and 04: fields
    their ``Params`` inherit, defined and checked once.

    Attributes:
        ft_steps: optimiser steps (0: no fine-tuning).
        ft_batch: images per step.
        ft_lr: learning rate.
        val_fraction: share of the fine-tune set held out as validation; the recovery's
            keep-if-better rule and every choice the experiment makes on validation use it.
    """

    ft_steps: int = 30
    ft_batch: int = 64
    ft_lr: float = 3e-4
    val_fraction: float = 0.1

    def check_recovery(self) -> None:
        """Refuse a bad recovery field (:class:`~vitprune_lite.errors.InvalidValueError` naming it)."""
        check_ints(self, (("ft_steps", 0), ("ft_batch", 1)))
        if not _number(self.ft_lr) or not 0 < self.ft_lr < 1:
            raise InvalidValueError(f"Params.ft_lr = {self.ft_lr!r}: accepted a learning rate in (0, 1)")
        if not _number(self.val_fraction) or not 0 < self.val_fraction < 1:
            raise InvalidValueError(f"Params.val_fraction = {self.val_fraction!r}: accepted a share in (0, 1) "
                                    "(choices are made on that validation split)")

    def recovery(self) -> dict[str, Any]:
        """The keyword arguments of :func:`vitprune_lite.pipelines.recover` these fields set."""
        return {"ft_steps": self.ft_steps, "ft_batch": self.ft_batch, "ft_lr": self.ft_lr,
                "val_fraction": self.val_fraction}


def preset(cls: type, presets: Mapping[str, Mapping[str, Any]], name: str, overrides: Mapping[str, Any]) -> Any:
    """``cls`` built from the named preset, with ``overrides`` on top.

    Raises:
        InvalidValueError: an unknown preset name, or an override that is not a field of ``cls``
            (the message lists the accepted fields).
    """
    if name not in presets:
        raise InvalidValueError(f"preset {name!r}: accepted {sorted(presets)}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise InvalidValueError(f"override{'s' if len(unknown) > 1 else ''} {unknown} of preset {name!r}: "
                                f"not fields of {cls.__name__}; accepted {fields}")
    return dataclasses.replace(cls(**presets[name]), **overrides)


def checkpoint_digest(params: Any) -> str:
    """sha256 of the base checkpoint a run of ``params`` reads (``params.checkpoint``, or the benchmark's
    shipped one): part of what a cached result must match."""
    import hashlib
    from pathlib import Path

    from .. import models

    path = Path(params.checkpoint) if params.checkpoint else models.shipped_checkpoint(params.benchmark)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_or_run(params: Any, path: Any, run: Callable[[Any], Any], from_json: Callable[[Any], Any], *,
                rerun: bool = False) -> tuple[Any, bool]:
    """A result for ``params``: read from ``path`` when it holds a run of exactly these parameters on
    the same base checkpoint, otherwise ``run(params)``, written to ``path`` (atomically).

    The result type must carry ``params`` and an ``inputs`` dict; ``inputs["checkpoint_sha256"]``
    is set here. ``rerun=True`` always runs. Returns ``(result, loaded)``.
    """
    from pathlib import Path

    path = Path(path)
    digest = checkpoint_digest(params)
    if path.exists() and not rerun:
        cached = from_json(path)
        if cached.params == params and cached.inputs.get("checkpoint_sha256") == digest:
            return cached, True
    result = run(params)
    result.inputs["checkpoint_sha256"] = digest
    result.to_json(path)
    return result, False


def _tuples(value: Any) -> Any:
    """JSON lists back to (nested) tuples: a ``Params`` holds tuples, never lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


R = TypeVar("R", bound="ResultFile")


class ResultFile:
    """What every experiment's ``Result`` dataclass shares: its JSON file.

    A subclass (a ``@dataclass`` with a ``params`` field and a ``schema`` field defaulting to its
    module's ``SCHEMA_VERSION``) sets the class attributes below. :meth:`to_json` writes the
    dataclass as JSON atomically; :meth:`from_json` reads it back with the ``Params`` rebuilt
    (JSON lists as tuples) and refuses, with :class:`~vitprune_lite.errors.InvalidFileError`
    naming the file, what was wrong and what to rerun, another schema, a malformed file, an
    inconsistent one (:meth:`_check`) or a run on another benchmark than asked for.

    Attributes:
        SCHEMA_VERSION: the schema this class reads and writes.
        PARAMS: the experiment's ``Params`` class.
        KIND: what the file holds, for messages (``"notebook 04 result"``).
        RERUN: what writes the file again (``"notebook 04"``).
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    PARAMS: ClassVar[type]
    KIND: ClassVar[str]
    RERUN: ClassVar[str]

    def to_json(self, path: str | Path) -> Path:
        """Write the result atomically (the file is either the old one or the whole new one)."""
        from .. import paths

        return paths.write_json_atomic(Path(path), plain(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls: type[R], path: str | Path, benchmark: Optional[str] = None) -> R:
        """Read a file written by :meth:`to_json`.

        Args:
            path: the JSON file.
            benchmark: when given, a run on another benchmark is refused.

        Raises:
            FileNotFoundError: no such file.
            InvalidFileError: not JSON, another schema, malformed, inconsistent, or another benchmark.
        """
        from .. import paths

        return cls.from_dict(paths.read_json(Path(path), what=cls.KIND), str(path), benchmark)

    @classmethod
    def from_dict(cls: type[R], raw: Any, source: str, benchmark: Optional[str] = None) -> R:
        """The result from :meth:`to_json`'s content (``source`` names it in errors); see :meth:`from_json`."""
        rerun = f"rerun {cls.RERUN}"
        if not isinstance(raw, dict) or raw.get("schema") != cls.SCHEMA_VERSION:
            found = raw.get("schema") if isinstance(raw, dict) else None
            raise InvalidFileError(f"{source}: not a {cls.KIND} of schema {cls.SCHEMA_VERSION} (found schema "
                                   f"{found!r}; files written before the experiment modules have none): {rerun}")
        try:
            params = cls.PARAMS(**{k: _tuples(v) for k, v in dict(raw["params"]).items()})
            out = cls(**cls._restore({**raw, "params": params}))
            problem = out._check()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise InvalidFileError(f"{source}: malformed {cls.KIND} ({type(err).__name__}: {err}): {rerun}") from None
        if problem:
            raise InvalidFileError(f"{source}: inconsistent {cls.KIND}: {problem}: {rerun}")
        held = out.params.benchmark
        if benchmark is not None and held != benchmark:
            raise InvalidFileError(f"{source} holds a run on benchmark {held!r}, but {benchmark!r} was asked for; "
                                   f"{rerun} with BENCHMARK = {benchmark!r}")
        return out

    @classmethod
    def _restore(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """The dataclass's fields from the file's (``params`` already rebuilt): where a subclass
        turns back what JSON cannot hold (integer keys, say). The default changes nothing."""
        return fields

    def _check(self) -> str:
        """What does not fit together in a result just read (``""``: nothing); subclasses add checks."""
        return ""
