"""Where the project's files live, and how results are written (atomically).

Paths resolve from the package's location, never from the working directory, so a notebook
behaves the same when stepped through from ``notebooks/`` in JupyterLab and when papermill runs
it from the repository root. ``VITPRUNE_ROOT`` overrides the root (for an installed, non-editable
copy). ``VITPRUNE_OUT`` sends what the notebooks *write* (results, figures, executed copies)
elsewhere while inputs (checkpoint, data cache) still come from the root: the tests use it so a
smoke run never overwrites the committed results.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def _atomic_replace(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; results are meant to be read by anyone the umask allows.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json_atomic`."""
    with open(path) as fh:
        return json.load(fh)


def _to_builtin(obj: Any) -> Any:
    # numpy scalars / arrays and Paths appear in results dicts; turn them into JSON types.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
