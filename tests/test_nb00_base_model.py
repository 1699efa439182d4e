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


def test_html_export_links_notebooks_and_figures(nb_out):
    run_smoke("00_", nb_out)
    index = reproduce.export_html()
    text = index.read_text()
    assert index.parent == nb_out / "build" / "html"
    assert 'href="00_base_model.html"' in text and "figures/00_devices.png" in text
    page = (index.parent / "00_base_model.html").read_text()
    assert "public test top-1" in page  # the executed output made it into the page


def test_html_renders_in_headless_chromium(nb_out, tmp_path):
    import shutil

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    run_smoke("00_", nb_out)
    png = reproduce.screenshot(reproduce.export_html(), tmp_path / "index.png", height=900)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1200, 900)
        assert len(set(im.convert("L").getdata())) > 10  # not a blank page
