"""Notebook 00 at smoke parameters: from the repository root and from notebooks/."""
from __future__ import annotations

import pytest

from conftest import run_smoke
from vitprune_lite import reproduce

pytestmark = [pytest.mark.slow, pytest.mark.notebook]


def test_00_from_repo_root(nb_out):
    res = run_smoke("00_", nb_out)
    assert res["smoke"] is True
    assert 0.9 <= res["accuracy"]["public_test"] <= 1.0
    assert set(res["accuracy"]["device_test"]) == {"night_cam", "drone", "factory", "phone"}
    assert min(res["accuracy"]["device_test"].values()) >= 0.85
    assert res["model"]["params"] > 1_000_000 and res["model"]["flops"] > 0
    assert res["environment"]["threads"] >= 1
    for fig in ("00_classes_styles", "00_devices", "00_base_model"):
        assert (nb_out / "figures" / f"{fig}.png").stat().st_size > 1000


def test_00_from_notebooks_folder(nb_out):
    # As when stepping through in JupyterLab: the kernel's working directory is notebooks/.
    res = run_smoke("00_", nb_out, cwd=reproduce.notebooks()[0].parent)
    assert res["accuracy"]["public_test"] >= 0.9
