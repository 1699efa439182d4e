"""Shared fixtures: small models and a small benchmark, built once per session."""
from __future__ import annotations

import pytest

import vitprune_lite  # noqa: F401  (torchvision compat before timm)
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests: on a shared 2-core machine, two
    threads mostly wait for each other on such small matmuls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_bench():
    """A small benchmark (not cached): 12 classes, 5 styles, 4 devices, few images."""
    from vitprune_lite import data

    devices = [data.DeviceSpec(d.name, d.classes, d.style_mix, n_train=60, n_test=40) for d in data.DEVICES]
    return data.make_benchmark(seed=3, public={"train": 240, "val": 60, "test": 60}, devices=devices)


@pytest.fixture()
def tiny_vit():
    """A tiny timm ViT with the base model's layout (CLS token, 32 px), random weights."""
    from vitprune_lite import models

    cfg = models.ViTConfig(embed_dim=48, depth=2, num_heads=4, patch_size=8)
    return models.create_base_model(cfg, seed=0).eval()


@pytest.fixture(scope="session")
def nb_out(tmp_path_factory):
    """A temporary output root (``VITPRUNE_OUT``) shared by every notebook test of the session.

    Notebooks talk through files, so later notebooks' smoke runs read what earlier ones wrote
    here; the committed ``data/results`` and ``figures`` are never touched.
    """
    import os

    path = tmp_path_factory.mktemp("out")
    old = os.environ.get("VITPRUNE_OUT")
    os.environ["VITPRUNE_OUT"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VITPRUNE_OUT", None)
    else:
        os.environ["VITPRUNE_OUT"] = old


def run_smoke(prefix: str, out, cwd=None, **params):
    """Execute notebook ``prefix*`` at its smoke preset (plus ``params``); return its results JSON."""
    import json

    from vitprune_lite import reproduce

    (nb,) = [p for p in reproduce.notebooks() if p.name.startswith(prefix)]
    own = reproduce.check_parameters([nb], {**reproduce.smoke_parameters([nb]), **params})[nb]
    executed = reproduce.run_notebook(nb, own, cwd=cwd)
    assert executed.exists() and executed.parent == out / "build" / "notebooks"
    return json.loads((out / "data" / "results" / f"{nb.stem}.json").read_text())
