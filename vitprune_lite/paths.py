"""Where the project's files live, and how results are written (atomically).

Paths resolve from the package's location, never from the working directory, so a notebook
behaves the same when stepped through from ``notebooks/`` in JupyterLab and when papermill runs
it from the repository root. ``VITPRUNE_ROOT`` overrides the root (for an installed, non-editable
copy). ``VITPRUNE_OUT`` sends what the notebooks *write* (results, figures, executed copies)
elsewhere while inputs (checkpoint, data cache) still come from the root: the tests use it so a
smoke run never overwrites the committed results.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import InputTooLargeError, InvalidFileError, InvalidValueError


def root() -> Path:
    """The repository root: ``$VITPRUNE_ROOT`` if set, else the folder holding the package."""
    env = os.environ.get("VITPRUNE_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def out_root() -> Path:
    """Root of everything the notebooks write: ``$VITPRUNE_OUT`` if set, else :func:`root`."""
    env = os.environ.get("VITPRUNE_OUT")
    return Path(env).resolve() if env else root()


def data_dir() -> Path:
    """``data/``: shipped checkpoint, generated-data cache, results and latency curves."""
    return root() / "data"


def cache_dir() -> Path:
    """``data/cache/``: generated benchmark images (git-ignored, rebuilt on demand)."""
    return data_dir() / "cache"


def results_dir() -> Path:
    """``data/results/``: one JSON file per notebook (under :func:`out_root`)."""
    return out_root() / "data" / "results"


def figures_dir() -> Path:
    """``figures/``: PNG figures written by the notebooks (under :func:`out_root`)."""
    return out_root() / "figures"


def build_dir() -> Path:
    """``build/``: executed notebooks and HTML exports (git-ignored; under :func:`out_root`)."""
    return out_root() / "build"


#: Temporary files of an atomic write: ``.<name>.<pid>.<random>.tmp`` beside the target.
_TMP_SUFFIX = ".tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists but is someone else's, or cannot tell: leave its files alone
    return True


def _clean_stale_temps(path: Path) -> list[Path]:
    """Remove temporary files that an interrupted write to ``path`` left behind.

    A temp file carries its writer's process id; it is stale once that process is gone (a
    write still in progress in a live process is never touched). Returns what was removed.
    """
    removed = []
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*{_TMP_SUFFIX}"):
        parts = tmp.name[len(path.name) + 2:].split(".")
        if len(parts) < 3 or not parts[0].isdigit():
            continue  # not one of ours
        pid = int(parts[0])
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, write) -> str:
    """Write through ``write(fh)`` into a fresh, fsynced temp file beside ``path``; return its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; results are meant to be read by anyone the umask allows.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _atomic_replace(path: Path, write) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InvalidValueError(f"cannot write {path}: it is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _pair_manifest(first: Path) -> Path:
    return first.parent / f".{first.name}.pair.json"


def write_pair_atomic(first: Path, first_bytes: bytes, second: Path, second_bytes: bytes) -> tuple[Path, Path]:
    """Write two files as a pair: after a crash at any point, both are new or both are old.

    Protocol: both new contents go to temp files (fsynced); a small manifest naming the temp
    files and their sha256 is then written atomically - the commit point; then both temps are
    renamed over their targets and the manifest is removed. :func:`recover_pair` (run first by
    every pair write and by readers of the pair) finishes a committed pair and discards an
    uncommitted one, so nothing already written is lost.
    """
    import hashlib

    first, second = Path(first), Path(second)
    if first.parent != second.parent:
        raise InvalidValueError(f"a file pair must share one folder, got {first} and {second}")
    if first.name == second.name:
        raise InvalidValueError(f"a file pair needs two different names, got {first.name} twice")
    for p in (first, second):
        if p.is_dir():
            raise InvalidValueError(f"cannot write {p}: it is a directory; give a file path")
    first.parent.mkdir(parents=True, exist_ok=True)
    recover_pair(first)
    for p in (first, second):
        _clean_stale_temps(p)
    manifest = _pair_manifest(first)
    tmp1 = tmp2 = None
    try:
        tmp1 = _write_temp(first, lambda fh: fh.write(first_bytes))
        tmp2 = _write_temp(second, lambda fh: fh.write(second_bytes))
        _fsync_dir(first.parent)
        record = {"files": [[Path(tmp1).name, first.name, hashlib.sha256(first_bytes).hexdigest()],
                            [Path(tmp2).name, second.name, hashlib.sha256(second_bytes).hexdigest()]]}
        write_bytes_atomic(manifest, json.dumps(record).encode())  # the commit point
    except BaseException:
        for t in (tmp1, tmp2):
            if t is not None:
                with contextlib.suppress(OSError):
                    os.unlink(t)
        raise
    _finish_pair(manifest, record)
    return first, second


def _finish_pair(manifest: Path, record: dict) -> None:
    # Tolerates a concurrent reader finishing the same pair: a rename already done is skipped.
    for tmp, target, _ in record["files"]:
        with contextlib.suppress(FileNotFoundError):
            os.replace(manifest.parent / tmp, manifest.parent / target)
    _fsync_dir(manifest.parent)
    with contextlib.suppress(FileNotFoundError):
        manifest.unlink()
    _fsync_dir(manifest.parent)


def recover_pair(first: Path) -> str:
    """Bring a file pair written by :func:`write_pair_atomic` to a consistent state.

    Returns ``"clean"`` (nothing to do), ``"completed"`` (a committed write was interrupted
    and has now been finished: both files are new) or ``"discarded"`` (an uncommitted write's
    leftovers were removed: both files are old).
    """
    first = Path(first)
    manifest = _pair_manifest(first)
    if not manifest.exists():
        return "clean"
    try:
        record = json.loads(manifest.read_text())
        files = record["files"]
        ok = all((manifest.parent / t).exists() or sha256_file(manifest.parent / target) == digest
                 for t, target, digest in files)
        ok = ok and all(sha256_file(manifest.parent / t) == digest
                        for t, target, digest in files if (manifest.parent / t).exists())
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:  # a manifest that cannot be honoured: leave the targets as they are
        with contextlib.suppress(OSError):
            manifest.unlink()
        return "discarded"
    _finish_pair(manifest, record)
    return "completed"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written."""
    return _atomic_replace(path, lambda fh: fh.write(data))


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically. NaN/inf are refused (not valid JSON)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_to_builtin)
    return write_bytes_atomic(path, (text + "\n").encode())


def save_figure(fig, name: str, dpi: int = 120) -> Path:
    """Save a matplotlib figure as ``figures/<name>.png`` atomically and return the path."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return write_bytes_atomic(figures_dir() / f"{name}.png", buf.getvalue())


#: Largest JSON file :func:`read_json` reads (results, curves, metadata are far smaller).
MAX_JSON_BYTES = 64 << 20


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
    """Read a JSON file written by :func:`write_json_atomic`.

    Raises:
        FileNotFoundError: no such file.
        InputTooLargeError: the file is larger than ``max_bytes`` (checked before reading).
        InvalidFileError: not UTF-8 JSON (e.g. truncated by an interrupted copy), naming the
            file and the position.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    if path.is_dir():
        raise InvalidFileError(f"{what} {path} is a directory; expected a .json file")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputTooLargeError(f"{what} {path} is {size} bytes; at most {max_bytes} are read")
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InvalidFileError(f"{what} {path} is not UTF-8 text (byte {err.start}); expected JSON") from None
    except json.JSONDecodeError as err:
        hint = " - it ends early: truncated?" if err.pos >= len(raw.rstrip()) else ""
        raise InvalidFileError(f"{what} {path} is not valid JSON: {err.msg} at line {err.lineno}, "
                               f"column {err.colno}{hint}; regenerate it (rerun what writes it)") from None


def _to_builtin(obj: Any) -> Any:
    # numpy scalars / arrays and Paths appear in results dicts; turn them into JSON types.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
