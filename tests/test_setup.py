"""Set-up: one dependency list, the torchvision work-around, paths independent of the cwd."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vitprune_lite import paths, reproduce

ROOT = Path(__file__).resolve().parent.parent
# Conda spells a few packages differently from PyPI.
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        py |= {_name(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            conda |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        else:
            name = _name(dep)
            if name not in ("python", "pip"):
                conda.add(CONDA_TO_PYPI.get(name, name))
    assert conda == py


def test_constraints_pin_torch():
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, re.M)


def test_bare_import_timm_works_in_a_fresh_interpreter():
    # What a user types first in the project's kernel; the .pth file installs the work-around.
    out = subprocess.run([sys.executable, "-c", "import timm, torchvision; print(timm.__version__)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_compat_stubs_only_when_ops_are_missing():
    code = ("import vitprune_lite, torchvision, torch\n"
            "from vitprune_lite import compat\n"
            "print(compat.torchvision_was_stubbed(), compat.torchvision_ops_available())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    stubbed, ops = out.stdout.split()
    # Either torchvision's ops loaded and nothing was replaced, or they are missing and were.
    assert (stubbed, ops) in {("False", "True"), ("True", "False")}


def test_paths_do_not_depend_on_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("VITPRUNE_OUT", raising=False)
    monkeypatch.delenv("VITPRUNE_ROOT", raising=False)
    before = paths.results_dir()
    monkeypatch.chdir(tmp_path)
    assert paths.results_dir() == before == ROOT / "data" / "results"
    monkeypatch.setenv("VITPRUNE_ROOT", str(tmp_path))
    assert paths.figures_dir() == tmp_path / "figures"


def test_atomic_json_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "r.json"
    paths.write_json_atomic(target, {"a": 1})
    with pytest.raises(ValueError):
        paths.write_json_atomic(target, {"a": float("nan")})
    assert paths.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_notebooks_are_numbered_and_clean():
    import json

    nbs = reproduce.notebooks()
    assert nbs and nbs[0].name.startswith("00_")
    for nb in nbs:
        cells = json.loads(nb.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert "parameters" in code[0].get("metadata", {}).get("tags", []), f"{nb.name}: first code cell must be tagged parameters"
        assert all(not c.get("outputs") and not c.get("execution_count") for c in code), f"{nb.name} carries outputs"


@pytest.mark.parametrize("text, expected", [("SEED=1", ("SEED", 1)), ("SMOKE=True", ("SMOKE", True)),
                                            ("DEVICE=cpu", ("DEVICE", "cpu")), ("B=[1, 32]", ("B", [1, 32]))])
def test_parse_param(text, expected):
    assert reproduce.parse_param(text) == expected


def test_parse_param_refuses_garbage():
    with pytest.raises(ValueError, match="NAME=VALUE"):
        reproduce.parse_param("no-equals-sign")


def test_cli_refuses_unknown_notebook(capsys):
    from vitprune_lite.__main__ import main

    assert main(["reproduce", "--only", "99"]) == 1
    assert "no notebook numbered" in capsys.readouterr().err


def _notebook_sources(nb: Path) -> list[tuple[str, str]]:
    import json

    return [(c["cell_type"], "".join(c["source"])) for c in json.loads(nb.read_text())["cells"]]


def _user_facing_texts() -> dict[str, str]:
    """README (its generated results section left out), docs/*.md and the notebooks' sources."""
    readme = (ROOT / "README.md").read_text()
    begin, end = readme.index("<!-- results:begin -->"), readme.index("<!-- results:end -->")
    texts = {"README.md": readme[:begin] + readme[end:]}
    texts |= {f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
    texts |= {f"notebooks/{nb.name}": "\n".join(s for _, s in _notebook_sources(nb)) for nb in reproduce.notebooks()}
    return texts


def test_docs_and_notebooks_stand_on_their_own():
    # A user has only the project: no pointers to notes kept outside it.
    texts = _user_facing_texts()
    assert "docs/methods.md" in texts and len(texts) > 5
    bad = {name: s for name, text in texts.items() for s in ("METHODS.md", "../shared") if s in text}
    assert not bad, f"files pointing outside the project (write it into docs/methods.md instead): {bad}"


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_into_docs_methods_resolve():
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", (ROOT / "docs" / "methods.md").read_text(), re.M)}
    links = [(name, a) for name, text in _user_facing_texts().items()
             for a in re.findall(r"methods\.md#([\w\-]+)", text)]
    links += [("docs/methods.md", a) for a in re.findall(r"\]\(#([\w\-]+)\)", (ROOT / "docs" / "methods.md").read_text())]
    assert len(links) >= 4
    missing = [(name, a) for name, a in links if a not in anchors]
    assert not missing, f"links to headings that docs/methods.md does not have: {missing}; headings: {sorted(anchors)}"


@pytest.mark.parametrize("prefix, n_mechanisms", [("02_", 3), ("03_", 2)])
def test_from_scratch_cells_are_short_and_checked(prefix, n_mechanisms):
    nb = next(p for p in reproduce.notebooks() if p.name.startswith(prefix))
    cells = _notebook_sources(nb)
    start = next(i for i, (t, s) in enumerate(cells) if t == "markdown" and s.startswith("## From scratch"))
    section = cells[start:]
    code = [s for t, s in section if t == "code"]
    assert all(len(s.splitlines()) <= 15 for s in code), f"{nb.name}: a From-scratch code cell is over 15 lines"
    found = 0
    for i, (t, s) in enumerate(section[:-2]):
        if t == "markdown" and "from scratch.**" in s:
            (t1, scratch), (t2, check) = section[i + 1], section[i + 2]
            assert t1 == t2 == "code", f"{nb.name}: '{s[:40]}' must be followed by a from-scratch and a check cell"
            assert "vitprune_lite" not in scratch, f"{nb.name}: the from-scratch cell after '{s[:40]}' uses the package"
            assert "vitprune_lite" in check and "assert" in check, f"{nb.name}: the check after '{s[:40]}' checks nothing"
            found += 1
    assert found == n_mechanisms


EXPERIMENT_OF = {"00_": "base_model", "01_": "gmm_approximation", "02_": "head_channel_importance",
                 "03_": "latency_curve", "04_": "final_comparisons"}


@pytest.mark.parametrize("prefix", sorted(EXPERIMENT_OF))
def test_exercises_name_real_parameters(prefix):
    import dataclasses
    import importlib

    nb = next(p for p in reproduce.notebooks() if p.name.startswith(prefix))
    fields = {f.name for f in dataclasses.fields(importlib.import_module(
        f"vitprune_lite.experiments.{EXPERIMENT_OF[prefix]}").Params)}
    exercises = [s for t, s in _notebook_sources(nb) if t == "markdown" and s.startswith("**Exercise")]
    named = []
    for text in exercises:
        assert "Predict" in text, f"{nb.name}: an exercise must ask for a prediction first: {text[:60]!r}"
        keys = re.findall(r"[{,] *\"(\w+)\":", text) + [b.lower() for b in re.findall(r"`(BENCHMARK) =", text)]
        unknown = [k for k in keys if k not in fields]
        assert not unknown, f"{nb.name}: exercise {text[:40]!r} names {unknown}, not fields of its Params"
        named += keys
    assert len(exercises) >= 2 and len(named) >= 2, f"{nb.name}: needs two exercises naming a Params field"


def test_every_notebook_states_its_run_time_per_preset_at_the_top():
    for nb in reproduce.notebooks():
        first = _notebook_sources(nb)[0][1]
        line = next((ln for ln in first.splitlines() if ln.startswith("Run time on 2 CPU threads:")), "")
        assert all(f"{p} about" in line for p in ("full", "lab", "smoke")), f"{nb.name}: no run-time line per preset at the top"
