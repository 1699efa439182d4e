"""A corpus of bad inputs across every public entry point, each answered with a clear error.

Every case feeds one bad input (a command-line option, a damaged or hostile file, a function
argument) and states what a clear answer is: the exception type (or warning type, where the
right answer is to go on and say so) and a piece of text the message must contain - the
offending value or file. Cases run in a fresh temporary folder; the committed ``data/`` files
are never written (``VITPRUNE_ROOT``/``VITPRUNE_OUT`` point at the temporary folder where a
case writes).

Run as a script (``python tests/test_bad_input.py``), the corpus classifies each case as
``clear``, ``unclear`` (an exception that does not name the value or file, or a traceback out
of the command line), ``silent`` (accepted without a word) or ``unbounded`` (a size cap case
refused only after allocating), and prints the counts: run it against another checkout of the
package (``PYTHONPATH``) to compare. Expected types are looked up by name, so the corpus
imports nothing that older versions lack.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import vitprune_lite  # noqa: F401  (torchvision compat before timm)
import torch

from vitprune_lite import data, gmm, latency, measure, models, paths, tokens

REPO = Path(vitprune_lite.__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- harness

class CliFailed(Exception):
    """The command line exited non-zero; the message is what it printed."""


class CliCrashed(Exception):
    """An exception escaped the command line (the user would see a traceback)."""


@contextlib.contextmanager
def env(**values: str | None):
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class Ctx:
    """A fresh temporary folder per case, and small ready-made inputs built on demand."""

    CFG = dict(embed_dim=48, depth=2, num_heads=4, patch_size=8)

    def __init__(self, tmp: Path) -> None:
        self.tmp = Path(tmp)

    def tiny(self):
        return models.create_base_model(models.ViTConfig(**self.CFG), seed=0).eval()

    def ckpt(self) -> Path:
        """A valid tiny checkpoint pair ``m.safetensors`` + ``m.json`` in the temporary folder."""
        path = self.tmp / "ckpt" / "m.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        models.save_checkpoint(self.tiny(), path, {"model_config": dict(models.ViTConfig(**self.CFG).__dict__)})
        return path

    def edit_meta(self, path: Path, fn: Callable[[dict], Any]) -> None:
        mpath = path.with_suffix(".json")
        meta = json.loads(mpath.read_text())
        fn(meta)
        mpath.write_text(json.dumps(meta))

    def forge(self, path: Path, blob: bytes | None = None, **config: Any) -> None:
        """Rewrite a checkpoint with ``blob`` and/or a changed config, with a MATCHING sha256 (a
        forged or confused pair: the checksum cannot catch it)."""
        import hashlib

        if blob is not None:
            path.write_bytes(blob)

        def fix(meta: dict) -> None:
            meta["model_config"].update(config)
            meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        self.edit_meta(path, fix)

    def upload_dict(self, k: int = 2, d: int = 3, cov: str = "diag") -> dict:
        shape = {"full": (k, d, d), "diag": (k, d), "tied": (d, d), "spherical": (k,)}[cov]
        covs = np.ones(shape) if cov != "full" else np.stack([np.eye(d)] * k)
        if cov == "tied":
            covs = np.eye(d)
        up = gmm.Upload(np.full(k, 1 / k), np.arange(k * d, dtype=float).reshape(k, d), covs, cov,
                        "pixel_stats", "1-abc", 40, 40 * 3072)
        return json.loads(up.to_json())

    def upload(self):
        return gmm.Upload.from_json(json.dumps(self.upload_dict()))

    def npz(self, members: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, **members)
        return buf.getvalue()

    def upload_npz_members(self) -> dict[str, Any]:
        up = self.upload()
        return {"weights": up.weights, "means": up.means, "covariances": up.covariances,
                "meta": np.array(json.dumps(up._meta()))}

    def curve_dict(self) -> dict:
        n = list(range(2, 16))
        med = [1.0 + 0.1 * i for i in range(len(n))]
        sw = {"n": n, "median_ms": med, "ci_low_ms": [m * 0.98 for m in med],
              "ci_high_ms": [m * 1.02 for m in med], "samples_ms": [[m, m * 1.01] for m in med],
              "order": "interleaved", "seed": 0, "seconds": 1.0, "load_avg": [None, None],
              "round_ids": [[0, 1] for _ in n], "round_factors": [1.0, 1.0]}
        return {"format": "vitprune_lite.latency_curve/1", "model": "tiny", "device": "cpu1t-test",
                "batch_size": 1, "threads": 1, "part": "network", "fingerprint": {}, "sweeps": [sw, copy.deepcopy(sw)],
                "analysis": {}, "environment": {}}

    def curve_file(self, edit: Callable[[dict], Any] | None = None, text: str | None = None) -> Path:
        d = self.curve_dict()
        if edit is not None:
            edit(d)
        p = self.tmp / "curves" / "cpu1t-test__tiny__b1.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text if text is not None else json.dumps(d))
        return p

    def curve(self):
        return latency.Curve.from_dict(self.curve_dict())

    def image_root(self, n: int = 2, size: int = 12) -> Path:
        from PIL import Image

        root = self.tmp / "images"
        for c in ("a", "b"):
            (root / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(root / c / f"{i}.png")
        return root

    def bench_kwargs(self) -> dict:
        devices = [data.DeviceSpec(d.name, d.classes, d.style_mix, n_train=4, n_test=4) for d in data.DEVICES]
        return {"seed": 5, "public": {"train": 12, "val": 12, "test": 12}, "devices": devices, "size": 16}

    def cache_file(self) -> Path:
        """Build (and cache) a small benchmark under a temporary root; return its cache file."""
        with env(VITPRUNE_ROOT=str(self.tmp)):
            data.load_benchmark(**self.bench_kwargs())
        (f,) = (self.tmp / "data" / "cache").glob("benchmark-*.npz")
        return f

    def load_cached(self):
        with env(VITPRUNE_ROOT=str(self.tmp)):
            return data.load_benchmark(**self.bench_kwargs())

    def cli(self, *argv: str, root: Path | None = None, out: Path | None = None) -> str:
        """Run the command line in-process; raise CliFailed (non-zero exit) or CliCrashed (traceback)."""
        from vitprune_lite import __main__ as cli

        err, outbuf = io.StringIO(), io.StringIO()
        with env(VITPRUNE_ROOT=str(root) if root else os.environ.get("VITPRUNE_ROOT"),
                 VITPRUNE_OUT=str(out or self.tmp / "out")), \
                contextlib.redirect_stderr(err), contextlib.redirect_stdout(outbuf):
            try:
                rc = cli.main(list(argv))
            except SystemExit as e:
                rc = e.code
            except Exception as e:  # noqa: BLE001 - what the user would see as a traceback
                raise CliCrashed(f"{type(e).__name__}: {e}") from None
        if rc:
            raise CliFailed(err.getvalue() + outbuf.getvalue())
        return outbuf.getvalue()

    def train_stub(self):
        """Stands in for the 20-minute training: a tiny model and its metadata."""
        def stub(cfg=None, tcfg=None, bench=None, progress=True):
            return self.tiny(), {"model_config": dict(models.ViTConfig(**self.CFG).__dict__),
                                 "accuracy": {"public/test": 0.5}}
        return patched(models, "train_base_model", stub)

    def shipped_root(self) -> Path:
        """A temporary root whose data/base_vit.safetensors plays the shipped checkpoint."""
        root = self.tmp / "root"
        (root / "data").mkdir(parents=True, exist_ok=True)
        return root

    def reproduce_stub(self):
        from vitprune_lite import reproduce

        def stub(nb, parameters=None, **kw):  # a run that "succeeds" without running anything
            return nb
        return patched(reproduce, "run_notebook", stub)


@dataclass
class Case:
    id: str
    fn: Callable[[Ctx], Any]
    expect: str   # exception or warning type name (see resolve())
    needle: str   # text the message must contain: the offending value or file
    cap: bool = False        # a size cap: checked before allocating
    skip_before: str = ""    # why the case is not run against an older version (and what it would do)


def resolve(name: str) -> type:
    import builtins
    import importlib

    try:
        errors = importlib.import_module("vitprune_lite.errors")
    except ImportError:  # an older version of the package, run by main()
        errors = None
    for where in (errors, models, data, gmm, builtins):
        if hasattr(where, name):
            return getattr(where, name)
    return {"CliFailed": CliFailed}[name]


CASES: list[Case] = []


def case(id: str, expect: str, needle: str, **kw):
    def deco(fn):
        CASES.append(Case(id, fn, expect, needle, **kw))
        return fn
    return deco


# ----------------------------------------------------------------------------- command line

@case("cli/train --epochs 0", "CliFailed", "epochs")
def _(c):
    with c.train_stub():
        c.cli("train", "--epochs", "0", "--out", str(c.tmp / "m.safetensors"))


@case("cli/train --epochs -1", "CliFailed", "epochs")
def _(c):
    with c.train_stub():
        c.cli("train", "--epochs", "-1", "--out", str(c.tmp / "m.safetensors"))


@case("cli/train --epochs abc", "CliFailed", "abc")
def _(c):
    with c.train_stub():
        c.cli("train", "--epochs", "abc", "--out", str(c.tmp / "m.safetensors"))


@case("cli/train --out x.json", "CliFailed", "x.json")
def _(c):
    with c.train_stub():
        c.cli("train", "--epochs", "1", "--out", str(c.tmp / "x.json"))


@case("cli/train --out x.pt", "CliFailed", "x.pt")
def _(c):
    with c.train_stub():
        c.cli("train", "--epochs", "1", "--out", str(c.tmp / "x.pt"))


@case("cli/train overwrites the shipped checkpoint", "CliFailed", "base_vit_v2.safetensors")
def _(c):
    root = c.shipped_root()
    with c.train_stub():
        c.cli("train", "--epochs", "1", root=root)  # the default benchmark, v2


@case("cli/train --benchmark v1 overwrites the shipped v1 checkpoint", "CliFailed", "base_vit.safetensors")
def _(c):
    root = c.shipped_root()
    with c.train_stub():
        c.cli("train", "--epochs", "1", "--benchmark", "v1", root=root)


@case("cli/train --out <shipped path>", "CliFailed", "base_vit.safetensors")
def _(c):
    root = c.shipped_root()
    with c.train_stub():
        c.cli("train", "--epochs", "1", "--out", str(root / "data" / "base_vit.safetensors"), root=root)


@case("cli/train --out <directory>", "CliFailed", "adir")
def _(c):
    (c.tmp / "adir.safetensors").mkdir()
    with c.train_stub():
        c.cli("train", "--epochs", "1", "--out", str(c.tmp / "adir.safetensors"))


for _name, _args, _needle in [
    ("typo SEEED=1", ["-p", "SEEED=1"], "SEEED"),
    ("SEED=1.5 (float for an int)", ["-p", "SEED=1.5"], "SEED"),
    ("SMOKE=true (string for a bool)", ["-p", "SMOKE=true"], "SMOKE"),
    ("BUDGETS=['a'] (list of str for floats)", ["-p", "BUDGETS=['a']"], "BUDGETS"),
    ("TIMM_MODELS=x (str for a list)", ["-p", "TIMM_MODELS=x"], "TIMM_MODELS"),
    ("THREADS=two", ["-p", "THREADS=two"], "THREADS"),
    ("unknown name for the chosen notebook", ["--only", "00", "-p", "K_MAX=3"], "K_MAX"),
    ("no '=' in -p", ["-p", "SEED"], "SEED"),
    ("empty name in -p", ["-p", "=1"], "=1"),
    ("--only 7 (no such notebook)", ["--only", "7"], "07"),
]:
    def _make(args):
        def fn(c):
            with c.reproduce_stub():
                c.cli("reproduce", "--no-html", *args, root=REPO)
        return fn
    CASES.append(Case(f"cli/reproduce {_name}", _make(_args), "CliFailed", _needle))


@case("cli/html with no executed notebooks", "CliFailed", "build/notebooks")
def _(c):
    c.cli("html")


@case("cli/report --check with a truncated results file", "CliFailed", "00_base_model.json")
def _(c):
    root = c.tmp / "root"
    (root / "data" / "results").mkdir(parents=True)
    shutil.copy(REPO / "README.md", root / "README.md")
    text = (REPO / "data" / "results" / "00_base_model.json").read_text()
    (root / "data" / "results" / "00_base_model.json").write_text(text[: len(text) // 2])
    c.cli("report", "--check", root=root)


@case("cli/unknown subcommand", "CliFailed", "prune-everything")
def _(c):
    c.cli("prune-everything")


# ----------------------------------------------------------------------------- checkpoints

@case("ckpt/save to x.json (would overwrite the weights with the metadata)", "InvalidValueError", "x.json")
def _(c):
    models.save_checkpoint(c.tiny(), c.tmp / "x.json", {"model_config": {}})


@case("ckpt/save to x.pt", "InvalidValueError", "x.pt")
def _(c):
    models.save_checkpoint(c.tiny(), c.tmp / "x.pt", {"model_config": {}})


@case("ckpt/save over the shipped checkpoint", "OverwriteRefusedError", "base_vit.safetensors")
def _(c):
    root = c.shipped_root()
    with env(VITPRUNE_ROOT=str(root)):
        models.save_checkpoint(c.tiny(), root / "data" / "base_vit.safetensors", {"model_config": {}})


@case("ckpt/save over the shipped v2 checkpoint", "OverwriteRefusedError", "base_vit_v2.safetensors")
def _(c):
    root = c.shipped_root()
    with env(VITPRUNE_ROOT=str(root)):
        models.save_checkpoint(c.tiny(), root / "data" / "base_vit_v2.safetensors", {"model_config": {}})


@case("ckpt/load_base_model of an unknown benchmark", "InvalidValueError", "'v9'")
def _(c):
    models.load_base_model("v9")


@case("ckpt/shipped checkpoint trained on another generator version", "InvalidFileError", "base_vit_v2.safetensors")
def _(c):
    root = c.shipped_root()
    models.save_checkpoint(c.tiny(), root / "data" / "base_vit_v2.safetensors",
                           {"model_config": dict(models.ViTConfig(**c.CFG).__dict__), "data": {"generator_version": "0"}})
    with env(VITPRUNE_ROOT=str(root)):
        models.load_base_model("v2")


@case("ckpt/metadata not JSON", "InvalidFileError", "m.json")
def _(c):
    p = c.ckpt()
    p.with_suffix(".json").write_text("this is not json")
    models.load_checkpoint(p)


@case("ckpt/metadata truncated", "InvalidFileError", "m.json")
def _(c):
    p = c.ckpt()
    t = p.with_suffix(".json").read_text()
    p.with_suffix(".json").write_text(t[: len(t) // 2])
    models.load_checkpoint(p)


@case("ckpt/metadata empty file", "InvalidFileError", "m.json")
def _(c):
    p = c.ckpt()
    p.with_suffix(".json").write_text("")
    models.load_checkpoint(p)


@case("ckpt/metadata a JSON list", "InvalidFileError", "m.json")
def _(c):
    p = c.ckpt()
    p.with_suffix(".json").write_text("[1, 2]")
    models.load_checkpoint(p)


@case("ckpt/metadata without model_config", "InvalidFileError", "model_config")
def _(c):
    p = c.ckpt()
    c.edit_meta(p, lambda m: m.pop("model_config"))
    models.load_checkpoint(p)


@case("ckpt/model_config with an unknown field", "InvalidFileError", "wings")
def _(c):
    p = c.ckpt()
    c.forge(p, wings=2)
    models.load_checkpoint(p)


@case("ckpt/model_config embed_dim a string", "InvalidFileError", "embed_dim")
def _(c):
    p = c.ckpt()
    c.forge(p, embed_dim="wide")
    models.load_checkpoint(p)


@case("ckpt/model_config depth negative", "InvalidFileError", "depth")
def _(c):
    p = c.ckpt()
    c.forge(p, depth=-2)
    models.load_checkpoint(p)


@case("ckpt/model_config heads do not divide width", "InvalidFileError", "num_heads")
def _(c):
    p = c.ckpt()
    c.forge(p, num_heads=5)
    models.load_checkpoint(p)


@case("ckpt/model_config patch does not divide image", "InvalidFileError", "patch_size")
def _(c):
    p = c.ckpt()
    c.forge(p, patch_size=5)
    models.load_checkpoint(p)


@case("ckpt/model_config mlp_ratio a string", "InvalidFileError", "mlp_ratio")
def _(c):
    p = c.ckpt()
    c.forge(p, mlp_ratio="4")
    models.load_checkpoint(p)


@case("ckpt/shapes do not match the config (depth 3 vs 2 blocks)", "InvalidFileError", "m.safetensors")
def _(c):
    p = c.ckpt()
    c.forge(p, depth=3)
    models.load_checkpoint(p)


@case("ckpt/shapes do not match the config (width 64 vs 48)", "InvalidFileError", "m.safetensors")
def _(c):
    p = c.ckpt()
    c.forge(p, embed_dim=64)
    models.load_checkpoint(p)


@case("ckpt/metadata asks for a huge model", "InputTooLargeError", "m.json", cap=True,
      skip_before="not run against the old code: it builds the model before any check (about 12 billion "
                  "parameters, ~48 GB) - unbounded by code reading")
def _(c):
    p = c.ckpt()
    c.forge(p, embed_dim=4096, depth=64, num_heads=32)
    models.load_checkpoint(p)


@case("ckpt/metadata asks for a model larger than the weights file", "InputTooLargeError", "m.json", cap=True)
def _(c):
    p = c.ckpt()
    c.forge(p, embed_dim=1024, depth=8, num_heads=16)
    models.load_checkpoint(p)


@case("ckpt/weights truncated (checksum forged to match)", "InvalidFileError", "m.safetensors")
def _(c):
    p = c.ckpt()
    c.forge(p, blob=p.read_bytes()[:-100])
    models.load_checkpoint(p)


@case("ckpt/weights not safetensors (checksum forged to match)", "InvalidFileError", "m.safetensors")
def _(c):
    p = c.ckpt()
    c.forge(p, blob=b"\x80\x04\x95 a pickle, or anything else")
    models.load_checkpoint(p)


@case("ckpt/weights corrupted", "ChecksumError", "m.safetensors")
def _(c):
    p = c.ckpt()
    b = bytearray(p.read_bytes())
    b[-3] ^= 0xFF
    p.write_bytes(bytes(b))
    models.load_checkpoint(p)


@case("ckpt/metadata missing", "FileNotFoundError", "m.json")
def _(c):
    p = c.ckpt()
    p.with_suffix(".json").unlink()
    models.load_checkpoint(p)


@case("ckpt/checkpoint missing", "FileNotFoundError", "none.safetensors")
def _(c):
    models.load_checkpoint(c.tmp / "none.safetensors")


@case("ckpt/metadata over 1 MiB", "InputTooLargeError", "m.json", cap=True)
def _(c):
    p = c.ckpt()
    c.edit_meta(p, lambda m: m.update(padding="x" * (2 << 20)))
    models.load_checkpoint(p)


# ----------------------------------------------------------------------------- training options

for _field, _value in [("epochs", 0), ("epochs", -1), ("epochs", 2.5), ("batch_size", 0), ("lr", -1e-3),
                       ("lr", 0.0), ("warmup_epochs", -1.0), ("label_smoothing", 1.5), ("threads", 0)]:
    CASES.append(Case(f"train/TrainConfig({_field}={_value!r})",
                      (lambda f, v: lambda c: models.TrainConfig(**{f: v}))(_field, _value),
                      "InvalidValueError", _field))

for _kw, _needle in [({"epochs": 0}, "epochs"), ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"),
                     ({"steps": 1, "batch_size": 0}, "batch_size"), ({"steps": 1, "lr": float("nan")}, "lr")]:
    def _fit(kw):
        def fn(c):
            models.fit(c.tiny(), torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), progress=False, **kw)
        return fn
    CASES.append(Case(f"train/fit({_kw})", _fit(_kw), "InvalidValueError", _needle))

for _kw, _needle in [({"patch_size": 5}, "patch_size"), ({"embed_dim": 130}, "num_heads"),
                     ({"depth": 0}, "depth"), ({"num_classes": 0}, "num_classes"), ({"img_size": 32.0}, "img_size")]:
    CASES.append(Case(f"model/ViTConfig({_kw})",
                      (lambda kw: lambda c: models.create_base_model(models.ViTConfig(**kw)))(_kw),
                      "InvalidValueError", _needle))


# ----------------------------------------------------------------------------- benchmark data

@case("data/cache truncated is rebuilt", "CacheWarning", "benchmark-")
def _(c):
    f = c.cache_file()
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    c.load_cached()


@case("data/cache empty is rebuilt", "CacheWarning", "benchmark-")
def _(c):
    f = c.cache_file()
    f.write_bytes(b"")
    c.load_cached()


@case("data/cache corrupted bytes are rebuilt", "CacheWarning", "benchmark-")
def _(c):
    f = c.cache_file()
    b = bytearray(f.read_bytes())
    for i in range(200, len(b) - 200, 997):
        b[i] ^= 0x5A
    f.write_bytes(bytes(b))
    c.load_cached()


@case("data/cache replaced by a text file is rebuilt", "CacheWarning", "benchmark-")
def _(c):
    f = c.cache_file()
    f.write_text("hello")
    c.load_cached()


for _kw, _needle in [({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"size": 7}, "size"),
                     ({"size": 16.5}, "size"), ({"public": {"train": 2.5}}, "2.5"), ({"public": {"train": 0}}, "train")]:
    CASES.append(Case(f"data/make_benchmark({_kw})",
                      (lambda kw: lambda c: data.make_benchmark(**{**c.bench_kwargs(), **kw}))(_kw),
                      "InvalidValueError" if "public" not in _kw and _kw.get("size") != 7 else "ValueError", _needle))

for _spec, _needle in [(dict(classes=(99,)), "night_cam"), (dict(style_mix={"fog": 1.0}), "night_cam"),
                       (dict(n_train=0), "night_cam"), (dict(n_test=1.5), "night_cam")]:
    def _spec_case(spec):
        def fn(c):
            d = data.DEVICES[0]
            fields = {"name": d.name, "classes": d.classes, "style_mix": d.style_mix, "n_train": 4, "n_test": 4, **spec}
            data.make_benchmark(seed=0, public={"train": 4}, devices=[data.DeviceSpec(**fields)], size=16)
        return fn
    CASES.append(Case(f"data/DeviceSpec({_spec})", _spec_case(_spec), "ValueError", _needle))


@case("data/two devices with one name", "ValueError", "night_cam")
def _(c):
    d = data.DeviceSpec("night_cam", (0,), {"clean": 1.0}, 4, 4)
    data.make_benchmark(seed=0, public={"train": 4}, devices=[d, d], size=16)


@case("data/unknown device name", "KeyError", "nowhere")
def _(c):
    data.make_benchmark(**c.bench_kwargs()).device("nowhere")


@case("data/ImageSet of float images", "ValueError", "float64")
def _(c):
    data.ImageSet(np.zeros((2, 8, 8, 3)), np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64), "x")


@case("folder/max_per_class=-1", "InvalidValueError", "max_per_class")
def _(c):
    data.load_image_folder(c.image_root(), max_per_class=-1)


@case("folder/max_per_class=0", "InvalidValueError", "max_per_class")
def _(c):
    data.load_image_folder(c.image_root(), max_per_class=0)


@case("folder/max_per_class=1.5", "InvalidValueError", "max_per_class")
def _(c):
    data.load_image_folder(c.image_root(), max_per_class=1.5)


@case("folder/size=0", "InvalidValueError", "size")
def _(c):
    data.load_image_folder(c.image_root(), size=0)


@case("folder/a .png that is not an image", "InvalidFileError", "broken.png")
def _(c):
    root = c.image_root()
    (root / "a" / "broken.png").write_text("not an image")
    data.load_image_folder(root)


@case("folder/a truncated .png", "InvalidFileError", "0.png")
def _(c):
    root = c.image_root(size=64)
    f = root / "a" / "0.png"
    f.write_bytes(f.read_bytes()[:60])
    data.load_image_folder(root)


@case("folder/a non-image file is skipped with a warning", "UserWarning", "notes.txt")
def _(c):
    root = c.image_root()
    (root / "a" / "notes.txt").write_text("labels were checked by hand")
    data.load_image_folder(root)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels but holds almost no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@case("folder/a .png whose header claims 10000 x 7000 pixels", "InputTooLargeError", "big.png", cap=True)
def _(c):
    root = c.image_root()
    (root / "a" / "big.png").write_bytes(_png_header(10_000, 7_000))
    data.load_image_folder(root)


@case("folder/a .png whose header claims 100000 x 100000 pixels", "InvalidFileError", "huge.png")
def _(c):
    root = c.image_root()
    (root / "a" / "huge.png").write_bytes(_png_header(100_000, 100_000))
    data.load_image_folder(root)


@case("folder/missing folder", "FileNotFoundError", "nowhere")
def _(c):
    data.load_image_folder(c.tmp / "nowhere")


@case("folder/no class subfolders", "ValueError", "flat")
def _(c):
    (c.tmp / "flat").mkdir()
    (c.tmp / "flat" / "x.png").write_bytes(b"")
    data.load_image_folder(c.tmp / "flat")


@case("folder/class folders without images", "ValueError", "empty")
def _(c):
    (c.tmp / "empty" / "a").mkdir(parents=True)
    data.load_image_folder(c.tmp / "empty")


# ----------------------------------------------------------------------------- GMM uploads

def _json_case(edit: Callable[[dict], Any] | None = None, text: str | None = None):
    def fn(c):
        d = c.upload_dict()
        if edit is not None:
            edit(d)
        gmm.Upload.from_json(text if text is not None else json.dumps(d))
    return fn


for _name, _fn, _expect, _needle in [
    ("not JSON", _json_case(text="weights: 1"), "InvalidFileError", "upload"),
    ("truncated JSON", _json_case(text='{"format": "vitprune-gmm-upload", "weights": [0.5, '), "InvalidFileError", "upload"),
    ("a JSON list", _json_case(text="[1, 2, 3]"), "InvalidFileError", "upload"),
    ("wrong format", _json_case(lambda d: d.update(format="pickle")), "ValueError", "pickle"),
    ("format version 2", _json_case(lambda d: d.update(format_version=2)), "ValueError", "version 2"),
    ("missing means", _json_case(lambda d: d.pop("means")), "ValueError", "means"),
    ("n_samples 1.9", _json_case(lambda d: d.update(n_samples=1.9)), "InvalidFileError", "1.9"),
    ("n_samples '40' (a string)", _json_case(lambda d: d.update(n_samples="40")), "InvalidFileError", "n_samples"),
    ("n_samples true", _json_case(lambda d: d.update(n_samples=True)), "InvalidFileError", "n_samples"),
    ("raw_bytes -1", _json_case(lambda d: d.update(raw_bytes=-1)), "ValueError", "raw_bytes"),
    ("raw_bytes 1e3 (a float)", _json_case(lambda d: d.update(raw_bytes=1e3)), "InvalidFileError", "raw_bytes"),
    ("weights sum 0.8", _json_case(lambda d: d.update(weights=[0.4, 0.4])), "ValueError", "sum"),
    ("weights negative", _json_case(lambda d: d.update(weights=[1.5, -0.5])), "ValueError", "weights"),
    ("weights NaN", _json_case(text=None, edit=lambda d: d.update(weights=[float("nan"), 1.0])), "ValueError", "NaN"),
    ("weights strings", _json_case(lambda d: d.update(weights=["a", "b"])), "InvalidFileError", "weights"),
    ("means ragged", _json_case(lambda d: d.update(means=[[0, 1, 2], [0]])), "InvalidFileError", "means"),
    ("covariance_type banana", _json_case(lambda d: d.update(covariance_type="banana")), "ValueError", "banana"),
    ("covariance_type a list", _json_case(lambda d: d.update(covariance_type=["full"])), "ValueError", "full"),
    ("covariances wrong shape", _json_case(lambda d: d.update(covariances=[[1, 1], [1, 1]])), "ValueError", "shape"),
    ("variance zero", _json_case(lambda d: d.update(covariances=[[1, 0, 1], [1, 1, 1]])), "ValueError", "variances"),
    ("feature_space 5 (a number)", _json_case(lambda d: d.update(feature_space=5)), "InvalidFileError", "feature_space"),
    ("feature_space empty", _json_case(lambda d: d.update(feature_space="")), "ValueError", "feature space"),
]:
    CASES.append(Case(f"upload/json {_name}", _fn, _expect, _needle))


@case("upload/json full covariance not positive definite", "ValueError", "positive definite")
def _(c):
    d = c.upload_dict(cov="full")
    d["covariances"][0] = [[1, 2, 0], [2, 1, 0], [0, 0, 1]]
    gmm.Upload.from_json(json.dumps(d))


@case("upload/json 300 components", "InputTooLargeError", "300", cap=True)
def _(c):
    k = 300
    d = c.upload_dict()
    d.update(weights=[1 / k] * k, means=[[0.0, 0.0, 0.0]] * k, covariances=[[1.0, 1.0, 1.0]] * k)
    gmm.Upload.from_json(json.dumps(d))


@case("upload/json 5000 dimensions", "InputTooLargeError", "5000", cap=True)
def _(c):
    d = c.upload_dict()
    d.update(weights=[1.0], means=[[0.0] * 5000], covariances=[[1.0] * 5000])
    gmm.Upload.from_json(json.dumps(d))


@case("upload/json text over 16 MiB", "InputTooLargeError", "bytes", cap=True)
def _(c):
    gmm.Upload.from_json(" " * (17 << 20) + json.dumps(c.upload_dict()))


@case("upload/npz garbage bytes", "InvalidFileError", "upload")
def _(c):
    gmm.Upload.from_bytes(b"definitely not a zip file")


@case("upload/npz empty", "InvalidFileError", "upload")
def _(c):
    gmm.Upload.from_bytes(b"")


@case("upload/npz truncated", "InvalidFileError", "upload")
def _(c):
    blob = c.upload().to_bytes()
    gmm.Upload.from_bytes(blob[: len(blob) // 2])


@case("upload/npz with an extra member", "InvalidFileError", "evil")
def _(c):
    gmm.Upload.from_bytes(c.npz({**c.upload_npz_members(), "evil": np.zeros(3)}))


@case("upload/npz without meta", "InvalidFileError", "meta")
def _(c):
    m = c.upload_npz_members()
    m.pop("meta")
    gmm.Upload.from_bytes(c.npz(m))


@case("upload/npz meta not JSON", "InvalidFileError", "meta")
def _(c):
    gmm.Upload.from_bytes(c.npz({**c.upload_npz_members(), "meta": np.array("{oops")}))


@case("upload/npz pickled object array", "InvalidFileError", "pickle")
def _(c):
    gmm.Upload.from_bytes(c.npz({**c.upload_npz_members(), "weights": np.array([0.5, {"x": 1}], dtype=object)}))


@case("upload/npz n_samples 1.9 in meta", "InvalidFileError", "1.9")
def _(c):
    m = c.upload_npz_members()
    meta = json.loads(str(m["meta"]))
    meta["n_samples"] = 1.9
    gmm.Upload.from_bytes(c.npz({**m, "meta": np.array(json.dumps(meta))}))


@case("upload/npz that inflates to 64 MB (a zip bomb)", "InputTooLargeError", "inflate", cap=True)
def _(c):
    m = c.upload_npz_members()
    m["covariances"] = np.zeros((1000, 8000))  # 64 MB of zeros, ~60 kB compressed
    gmm.Upload.from_bytes(c.npz(m))


@case("upload/npz member whose header declares 2**40 x 2**40 values", "InputTooLargeError", "covariances")
def _(c):
    from numpy.lib import format as npformat

    head = io.BytesIO()
    npformat.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (2**40, 2**40)})
    members = {name: io.BytesIO() for name in ("weights", "means", "meta")}
    m = c.upload_npz_members()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in ("weights", "means", "meta"):
            np.save(members[name], m[name])
            z.writestr(f"{name}.npy", members[name].getvalue())
        z.writestr("covariances.npy", head.getvalue() + b"\0" * 64)
    gmm.Upload.from_bytes(buf.getvalue())


@case("upload/npz blob over 16 MiB", "InputTooLargeError", "bytes")
def _(c):
    gmm.Upload.from_bytes(c.upload().to_bytes() + b"\0" * (17 << 20))


@case("upload/sample n=1.5", "InvalidValueError", "1.5")
def _(c):
    gmm.sample(c.upload(), 1.5)


@case("upload/fit_upload k_range [2.5]", "InvalidValueError", "2.5")
def _(c):
    from vitprune_lite.features import FeatureSpace

    x = np.random.default_rng(0).normal(size=(60, 3))
    gmm.fit_upload(x, FeatureSpace("s", "1", 3), k_range=[2.5])


@case("upload/select n_metric 0", "ValueError", "n_metric")
def _(c):
    from vitprune_lite.features import FeatureSpace

    up = c.upload()
    cloud = gmm.CloudFeatures(np.zeros((5, 3)), FeatureSpace("pixel_stats", "1-abc", 3), np.arange(5))
    gmm.select(up, cloud, n_metric=0)


@case("upload/select from another feature space", "ValueError", "vit_cls")
def _(c):
    from vitprune_lite.features import FeatureSpace

    cloud = gmm.CloudFeatures(np.zeros((5, 3)), FeatureSpace("vit_cls", "1-abc", 3), np.arange(5))
    gmm.select(c.upload(), cloud)


@case("upload/selected sets file is garbage", "InvalidFileError", "sets.npz")
def _(c):
    (c.tmp / "sets.npz").write_bytes(b"garbage")
    gmm.load_selected_sets(c.tmp / "sets.npz")


@case("upload/selected sets with negative indices", "InvalidFileError", "sets.npz")
def _(c):
    np.savez(c.tmp / "sets.npz", **{"night_cam/random/metric": np.array([-1, 2]),
                                   "default_feature_space": np.array("random")})
    gmm.load_selected_sets(c.tmp / "sets.npz")


@case("privacy/membership_sweep ks [1.5]", "InvalidValueError", "1.5")
def _(c):
    from vitprune_lite import privacy
    from vitprune_lite.features import FeatureSpace

    x = np.random.default_rng(0).normal(size=(40, 3))
    privacy.membership_sweep(x, x, FeatureSpace("s", "1", 3), ks=[1.5], covariance_types=["diag"])


# ----------------------------------------------------------------------------- latency curves

def _curve_case(edit=None, text=None):
    def fn(c):
        latency.load_curve(c.curve_file(edit, text))
    return fn


def _set_point(key: str, value: Any, sweep: int = 0, i: int = 5):
    def edit(d):
        d["sweeps"][sweep][key][i] = value
    return edit


for _name, _fn, _needle in [
    ("NaN median", _curve_case(_set_point("median_ms", float("nan"))), "n=7"),
    ("inf median", _curve_case(_set_point("median_ms", float("inf"))), "n=7"),
    ("negative median", _curve_case(_set_point("median_ms", -1.0)), "n=7"),
    ("zero median", _curve_case(_set_point("median_ms", 0.0)), "n=7"),
    ("NaN interval bound in sweep 1", _curve_case(_set_point("ci_low_ms", float("nan"), sweep=1)), "sweep 1"),
    ("NaN raw sample", _curve_case(_set_point("samples_ms", [float("nan"), 1.0])), "n=7"),
    ("token counts not increasing", _curve_case(_set_point("n", 3)), "increasing"),
    ("token count a string", _curve_case(_set_point("n", "7")), "token counts"),
    ("medians shorter than n", _curve_case(lambda d: d["sweeps"][0]["median_ms"].pop()), "median_ms"),
    ("batch_size a string", _curve_case(lambda d: d.update(batch_size="1")), "batch_size"),
    ("part 'head'", _curve_case(lambda d: d.update(part="head")), "head"),
    ("model name with a path", _curve_case(lambda d: d.update(model="../../etc/x")), "../../etc/x"),
    ("no sweeps", _curve_case(lambda d: d.pop("sweeps")), "sweeps"),
    ("an unknown field", _curve_case(lambda d: d.update(colour="red")), "colour"),
    ("sweep with an unknown field", _curve_case(lambda d: d["sweeps"][0].update(speed=1)), "speed"),
    ("truncated file", _curve_case(text=json.dumps({"format": "vitprune_lite.latency_curve/1", "model": "t"})[:40]),
     "cpu1t-test__tiny__b1.json"),
    ("a JSON list", _curve_case(text="[1, 2]"), "cpu1t-test__tiny__b1.json"),
    ("another format", _curve_case(lambda d: d.update(format="csv")), "cpu1t-test__tiny__b1.json"),
]:
    CASES.append(Case(f"curve/load {_name}", _fn, "InvalidFileError" if "format" not in _name else "ValueError", _needle))


@case("curve/save with model '../../evil' (path traversal)", "InvalidValueError", "../../evil")
def _(c):
    cv = c.curve()
    cv.model = "../../evil"
    latency.save_curve(cv, directory=c.tmp / "curves")


@case("curve/save with device 'a/b'", "InvalidValueError", "a/b")
def _(c):
    cv = c.curve()
    cv.device = "a/b"
    latency.save_curve(cv, directory=c.tmp / "curves")


@case("curve/save with model 'x__y' (breaks file names)", "InvalidValueError", "x__y")
def _(c):
    cv = c.curve()
    cv.model = "x__y"
    latency.save_curve(cv, directory=c.tmp / "curves")


@case("curve/save with batch_size 0", "InvalidValueError", "batch_size")
def _(c):
    cv = c.curve()
    cv.batch_size = 0
    latency.save_curve(cv, directory=c.tmp / "curves")


@case("curve/a stray file in the curves folder is skipped with a warning", "UserWarning", "a__b__c__b1.json")
def _(c):
    d = c.tmp / "out" / "data" / "latency"
    d.mkdir(parents=True)
    (d / "a__b__c__b1.json").write_text("{}")
    with env(VITPRUNE_OUT=str(c.tmp / "out")):
        latency.find_curves()


@case("curve/predict_ms with a NaN point", "InvalidValueError", "n=4")
def _(c):
    latency.predict_ms([2, 3, 4, 5], [1.0, 1.1, float("nan"), 1.3], [3, 4], 2.0)


@case("curve/detect_steps with a NaN point", "InvalidValueError", "n=10")
def _(c):
    n = list(range(2, 30))
    med = [1.0 + 0.01 * i for i in range(len(n))]
    med[8] = float("nan")
    latency.detect_steps(n, med, [m * 0.99 for m in med], [m * 1.01 for m in med])


@case("curve/sweep batch_size 0", "ValueError", "batch_size")
def _(c):
    latency.sweep(c.tiny(), batch_size=0)


@case("curve/profile model_name 'a/b'", "ValueError", "a/b")
def _(c):
    latency.profile(c.tiny(), "a/b")


@case("curve/sweep device 'cuda' on a machine without it", "InvalidValueError", "cuda", )
def _(c):
    if torch.cuda.is_available():
        latency.sweep(c.tiny(), device="cuda:99")
    latency.sweep(c.tiny(), device="cuda")


@case("curve/sweep device 'gpu'", "InvalidValueError", "gpu")
def _(c):
    latency.sweep(c.tiny(), device="gpu")


# ----------------------------------------------------------------------------- measurement

@case("measure/latency of a batch of 0", "InvalidValueError", "batch size 0")
def _(c):
    measure.measure_latency({"m": c.tiny()}, torch.zeros(0, 3, 32, 32), rounds=1, min_run_time=0.001, warmup=0)


@case("measure/latency rounds 2.5", "InvalidValueError", "2.5")
def _(c):
    measure.measure_latency({"m": torch.nn.Linear(2, 2)}, torch.zeros(1, 2), rounds=2.5, min_run_time=0.001)


@case("measure/latency min_run_time NaN", "InvalidValueError", "min_run_time")
def _(c):
    measure.measure_latency({"m": torch.nn.Linear(2, 2)}, torch.zeros(1, 2), min_run_time=float("nan"))


@case("measure/latency device 'tpu'", "InvalidValueError", "tpu")
def _(c):
    measure.measure_latency({"m": torch.nn.Linear(2, 2)}, torch.zeros(1, 2), device="tpu")


@case("measure/latency device 'cuda' here", "InvalidValueError", "cuda:7")
def _(c):
    measure.measure_latency({"m": torch.nn.Linear(2, 2)}, torch.zeros(1, 2), device="cuda:7")


@case("measure/latency device 5", "InvalidValueError", "5")
def _(c):
    measure.measure_latency({"m": torch.nn.Linear(2, 2)}, torch.zeros(1, 2), device=5)


@case("measure/peak_memory device 'gpu'", "InvalidValueError", "gpu")
def _(c):
    measure.peak_memory(lambda: None, device="gpu")


@case("measure/accuracy on 64 px images for a 32 px model", "InvalidValueError", "64")
def _(c):
    measure.accuracy(c.tiny(), torch.zeros(2, 3, 64, 64), torch.zeros(2, dtype=torch.long))


@case("measure/accuracy on 1-channel images", "InvalidValueError", "(2, 1, 32, 32)")
def _(c):
    measure.accuracy(c.tiny(), torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))


@case("measure/accuracy with batch_size 0", "ValueError", "batch_size")
def _(c):
    measure.accuracy(c.tiny(), torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), batch_size=0)


@case("features/ViTCls on 48 px images for a 32 px model", "InvalidValueError", "48x48")
def _(c):
    from vitprune_lite import features

    ext = features.ViTCls(c.tiny(), dim=2)
    ext.raw(np.zeros((3, 48, 48, 3), dtype=np.uint8))


@case("features/pixel statistics of float images", "ValueError", "float64")
def _(c):
    from vitprune_lite import features

    features.pixel_statistics(np.zeros((2, 8, 8, 3)))


# ----------------------------------------------------------------------------- token methods

@case("tokens/EViT amount 1 (int: a drop count, or keep all?)", "InvalidValueError", "1")
def _(c):
    tokens.reduced_copy(c.tiny(), "evit", 1)


@case("tokens/Top-K amount True", "InvalidValueError", "True")
def _(c):
    tokens.reduced_copy(c.tiny(), "topk", True)


@case("tokens/keep_rate True", "ValueError", "True")
def _(c):
    tokens.keep_rate_schedule(c.tiny(), True)


@case("tokens/keep_rate 1.5", "ValueError", "1.5")
def _(c):
    tokens.reduced_copy(c.tiny(), "evit", 1.5)


@case("tokens/utility with a NaN accuracy", "InvalidValueError", "nan")
def _(c):
    tokens.utility([1.0, 2.0, 3.0], [0.5, float("nan"), 0.7])


@case("tokens/choose_prune_count with a NaN accuracy", "InvalidValueError", "nan")
def _(c):
    tokens.choose_prune_count([10, 20, 30], [1.0, 2.0, 3.0], [0.5, float("nan"), 0.7], 30)


@case("tokens/utility with accuracies in percent (60, 70, 80)", "InvalidValueError", "60.0")
def _(c):
    tokens.utility([1.0, 2.0, 3.0], [60.0, 70.0, 80.0])


@case("tokens/POMT R 16.0 (a float)", "ValueError", "16.0")
def _(c):
    tokens.patch_pomt(c.tiny(), 16.0)


@case("tokens/ToMe r -1", "ValueError", "-1")
def _(c):
    tokens.patch_tome(c.tiny(), -1)


@case("tokens/Top-K schedule of the wrong length", "ValueError", "3 entries")
def _(c):
    tokens.patch_topk(c.tiny(), [1, 1, 1])


@case("tcs/fc1 ratio 1.0", "ValueError", "1.0")
def _(c):
    from vitprune_lite import tcs

    tcs.patch(c.tiny(), fc1=1.0)


@case("tcs/fc2 ratio NaN", "ValueError", "nan")
def _(c):
    from vitprune_lite import tcs

    tcs.patch(c.tiny(), fc2=float("nan"))


@case("tcs/mode 'fast'", "ValueError", "fast")
def _(c):
    from vitprune_lite import tcs

    tcs.patch(c.tiny(), fc1=0.5, mode="fast")


@case("importance/unknown criterion", "ValueError", "hsic2")
def _(c):
    from vitprune_lite import importance

    importance.score(c.tiny(), "hsic2")


@case("importance/budget keep 1.5", "ValueError", "1.5")
def _(c):
    from vitprune_lite import importance

    importance.block_param_fraction(1.5, 0.5)


@case("pipelines/token_reduction method 'prune'", "ValueError", "prune")
def _(c):
    from vitprune_lite import pipelines

    pipelines.token_reduction(c.tiny(), None, method="prune")


@case("pipelines/choose_plan latency -1 ms", "ValueError", "-1")
def _(c):
    from vitprune_lite import pipelines

    pipelines.choose_plan([{"predicted_ms": 1.0, "val_acc": 0.5}], -1)


# ----------------------------------------------------------------------------- results files

@case("results/read_json of a truncated file", "InvalidFileError", "r.json")
def _(c):
    (c.tmp / "r.json").write_text('{"accuracy": {"public/test": 0.9')
    paths.read_json(c.tmp / "r.json")


@case("results/read_json of a binary file", "InvalidFileError", "r.json")
def _(c):
    (c.tmp / "r.json").write_bytes(b"\xff\xfe\x00\x01")
    paths.read_json(c.tmp / "r.json")


@case("results/a notebook's Result.from_json with a truncated file", "InvalidFileError",
      "03_latency_curve_profiling.json")
def _(c):
    from vitprune_lite.experiments import latency_curve

    (c.tmp / "03_latency_curve_profiling.json").write_text('{"a": [1, 2')
    latency_curve.Result.from_json(c.tmp / "03_latency_curve_profiling.json")


@case("results/write to a folder's path", "InvalidValueError", "adir")
def _(c):
    (c.tmp / "adir").mkdir()
    paths.write_json_atomic(c.tmp / "adir", {"a": 1})


# ----------------------------------------------------------------------------- running the corpus

def run_case(k: Case, tmp: Path) -> tuple[BaseException | None, list[warnings.WarningMessage]]:
    ctx = Ctx(tmp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            k.fn(ctx)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:  # noqa: BLE001 - classified below
            return err, list(caught)
    return None, list(caught)


def classify(k: Case, err: BaseException | None, caught) -> str:
    """``clear``, ``unclear``, ``silent`` or ``unbounded`` (see the module docstring)."""
    try:
        expected = resolve(k.expect)
    except (KeyError, AttributeError):
        expected = None
    if k.expect.endswith("Warning"):
        if err is not None:
            return "unclear"
        return "clear" if any(k.needle in str(w.message) for w in caught) else "silent"
    if err is None:
        return "silent"
    if k.cap and not (expected is not None and isinstance(err, expected)):
        return "unbounded"
    if isinstance(err, CliCrashed):
        return "unclear"
    return "clear" if k.needle in str(err) else "unclear"


@pytest.mark.parametrize("k", CASES, ids=[k.id for k in CASES])
def test_bad_input_is_refused_clearly(k: Case, tmp_path, one_thread):
    err, caught = run_case(k, tmp_path)
    expected = resolve(k.expect)
    if issubclass(expected, Warning):
        assert err is None, f"raised {type(err).__name__}: {err}"
        msgs = [str(w.message) for w in caught if issubclass(w.category, expected)]
        assert any(k.needle in m for m in msgs), f"no {k.expect} naming {k.needle!r}; got {msgs}"
        return
    assert err is not None, "accepted silently"
    assert isinstance(err, expected), f"raised {type(err).__name__}: {err}"
    assert k.needle in str(err), f"the message does not name {k.needle!r}: {err}"


def test_corpus_is_large_and_covers_every_entry_point():
    assert len(CASES) >= 100
    areas = {k.id.split("/")[0] for k in CASES}
    assert {"cli", "ckpt", "train", "data", "folder", "upload", "curve", "measure", "tokens", "results"} <= areas
    assert len({k.id for k in CASES}) == len(CASES)


def main() -> None:  # pragma: no cover - a report, not a test
    import collections

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    rows = []
    for k in CASES:
        area = k.id.split("/")[0]
        if k.skip_before and os.environ.get("CORPUS_SKIP_UNSAFE"):
            verdict, detail = "unbounded", k.skip_before
        else:
            with tempfile.TemporaryDirectory() as tmp:
                err, caught = run_case(k, Path(tmp))
            verdict = classify(k, err, caught)
            detail = f"{type(err).__name__}: {str(err)[:150]}" if err else \
                "; ".join(str(w.message)[:100] for w in caught[:2]) or "no error, no warning"
        counts[area][verdict] += 1
        counts["ALL"][verdict] += 1
        rows.append({"id": k.id, "verdict": verdict, "detail": detail.replace("\n", " ")})
    json.dump({"cases": rows, "counts": {a: dict(c) for a, c in counts.items()}}, sys.stdout, indent=1)


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(1)
    main()


# ----------------------------------------------------------------------------- nothing lost

def _tiny_ckpt(tmp_path: Path, seed: int):
    cfg = models.ViTConfig(**Ctx.CFG)
    model = models.create_base_model(cfg, seed=seed).eval()
    return model, {"model_config": dict(cfg.__dict__), "seed": seed}


class _Crash(BaseException):
    """Stands for the process dying (power cut, kill -9): no cleanup code runs after it."""


def _crash_on_rename(monkeypatch, n: int) -> None:
    """Let the first ``n`` renames of temp files over their targets happen, then 'crash'."""
    real, seen = os.replace, []

    def replace(src, dst):
        if str(src).endswith(".tmp") and not Path(dst).name.endswith(".pair.json"):
            seen.append(dst)
            if len(seen) > n:
                raise _Crash(f"interrupted before renaming {src} -> {dst}")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("renames_done", [0, 1])
def test_checkpoint_pair_survives_an_interruption_after_the_commit(tmp_path, monkeypatch, renames_done):
    """Crash after the pair was committed, with 0 or 1 of the two files renamed: the next load
    finishes the write, so weights and metadata are both the new ones."""
    path = tmp_path / "m.safetensors"
    old, old_meta = _tiny_ckpt(tmp_path, 0)
    models.save_checkpoint(old, path, old_meta)
    new, new_meta = _tiny_ckpt(tmp_path, 1)
    _crash_on_rename(monkeypatch, renames_done)
    with pytest.raises(_Crash):
        models.save_checkpoint(new, path, new_meta)
    monkeypatch.undo()
    loaded, meta = models.load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert meta["seed"] == 1 and torch.equal(loaded(x), new(x))
    assert not list(tmp_path.glob(".*")), "temporary files or the pair manifest were left behind"


def test_checkpoint_pair_survives_an_interruption_before_the_commit(tmp_path, monkeypatch):
    """Crash while the new files are still being written: the old pair stays, intact and loadable,
    and the next write removes the dead process's temporary files."""
    path = tmp_path / "m.safetensors"
    old, old_meta = _tiny_ckpt(tmp_path, 0)
    models.save_checkpoint(old, path, old_meta)
    new, new_meta = _tiny_ckpt(tmp_path, 1)
    real_write = paths.write_bytes_atomic

    def crash(p, blob):  # the manifest is the commit point: die just before writing it
        raise _Crash("interrupted before the commit")
    monkeypatch.setattr(paths, "write_bytes_atomic", crash)
    with pytest.raises(_Crash):
        models.save_checkpoint(new, path, new_meta)
    monkeypatch.setattr(paths, "write_bytes_atomic", real_write)
    loaded, meta = models.load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert meta["seed"] == 0 and torch.equal(loaded(x), old(x))
    # A real crash leaves the temporary files of the dead writer; plant one and write again.
    stale = tmp_path / ".m.safetensors.999999999.abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    models.save_checkpoint(new, path, new_meta)
    assert not stale.exists()
    assert models.load_checkpoint(path)[1]["seed"] == 1


def test_recover_pair_discards_a_manifest_that_does_not_match(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.json"
    paths.write_pair_atomic(a, b"old a", b, b"old b")
    (tmp_path / ".a.bin.pair.json").write_text(json.dumps({"files": [[".gone.tmp", "a.bin", "0" * 64]]}))
    assert paths.recover_pair(a) == "discarded"
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b"
    assert paths.recover_pair(a) == "clean"


def test_atomic_write_removes_only_dead_writers_temps(tmp_path):
    target = tmp_path / "r.json"
    dead = tmp_path / ".r.json.999999999.x1.tmp"
    alive = tmp_path / f".r.json.{os.getppid()}.x2.tmp"  # a live process: maybe mid-write
    foreign = tmp_path / ".r.json.notes.tmp"
    for f in (dead, alive, foreign):
        f.write_text("partial")
    paths.write_json_atomic(target, {"a": 1})
    assert not dead.exists() and alive.exists() and foreign.exists()
    assert paths.read_json(target) == {"a": 1}


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip", "text", "fingerprint"])
def test_damaged_benchmark_cache_is_rebuilt(tmp_path, damage):
    ctx = Ctx(tmp_path)
    f = ctx.cache_file()
    good = f.read_bytes()
    fresh = data.make_benchmark(**ctx.bench_kwargs())
    if damage == "truncate":
        f.write_bytes(good[: len(good) // 3])
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "flip":
        b = bytearray(good)
        for i in range(100, len(b) - 100, 501):
            b[i] ^= 0xA5
        f.write_bytes(bytes(b))
    elif damage == "text":
        f.write_text("not a cache")
    else:  # a valid cache file whose images do not match its fingerprint
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["fingerprint"] = np.array("0" * 16)
        np.savez(f, **arrays)
    with pytest.warns(data.CacheWarning, match=f.name):
        bench = ctx.load_cached()
    assert bench.fingerprint == fresh.fingerprint
    assert f.read_bytes() == good  # rewritten, and read back without a warning next time
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ctx.load_cached().fingerprint == fresh.fingerprint


def test_unwritable_cache_still_returns_the_benchmark(tmp_path, monkeypatch):
    ctx = Ctx(tmp_path)

    def refuse(path, blob):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(paths, "write_bytes_atomic", refuse)
    with pytest.warns(data.CacheWarning, match="could not write the benchmark cache"):
        bench = ctx.load_cached()
    assert bench.fingerprint == data.make_benchmark(**ctx.bench_kwargs()).fingerprint


def test_reproduce_passes_each_notebook_only_its_own_parameters(monkeypatch):
    from vitprune_lite import reproduce

    seen = {}
    monkeypatch.setattr(reproduce, "run_notebook", lambda nb, params, **kw: seen.setdefault(nb.name[:2], params))
    # parameters cells of two kinds (the notebooks themselves change), so that each has a name the other lacks
    cells = {"00": {"SEED": 0, "SMOKE": False}, "01": {"PRESET": "full", "BENCHMARK": "v1", "OVERRIDES": {}}}
    monkeypatch.setattr(reproduce, "notebook_parameters", lambda nb: dict(cells[nb.name[:2]]))
    reproduce.reproduce(only=["00", "01"], smoke=True, parameters={"SEED": 2, "BENCHMARK": "v2"})
    assert seen == {"00": {"SEED": 2, "SMOKE": True}, "01": {"BENCHMARK": "v2", "PRESET": "smoke"}}


def test_kernel_runs_over_local_sockets():
    from vitprune_lite import reproduce

    cfg = reproduce._kernel_config()
    if os.name == "posix":
        assert cfg.KernelManager.transport == "ipc"
        shutil.rmtree(Path(cfg.KernelManager.ip).parent)


def test_read_write_upload_files(tmp_path):
    up = Ctx(tmp_path).upload()
    for name in ("u.json", "u.npz"):
        back = gmm.read_upload(gmm.write_upload(up, tmp_path / name))
        assert np.array_equal(back.means, up.means) and back.n_samples == up.n_samples
    big = tmp_path / "big.npz"
    big.write_bytes(b"\0" * (gmm.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(resolve("InputTooLargeError"), match="big.npz"):
        gmm.read_upload(big)
    with pytest.raises(resolve("InvalidValueError"), match="u.txt"):
        gmm.read_upload(tmp_path / "u.txt")
