"""Run the notebooks in order with papermill: the whole reproduction, headless.

Executed copies go to ``build/notebooks/`` (git-ignored); the notebooks themselves write their
results to ``data/results/`` and figures to ``figures/``. A notebook's executed copy appears only
once it has run to the end; a failure stops the run and names the notebook and the cell.
"""
from __future__ import annotations

import ast
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import paths
from .data import DEFAULT_BENCHMARK
from .errors import InvalidFileError, ParameterError

KERNEL = "vitprune-lite"
#: Wall time of each notebook per benchmark and preset, written by :func:`reproduce` (committed).
RUN_TIMES_FILE = "run_times.json"


def notebooks() -> list[Path]:
    """The numbered notebooks (``notebooks/NN_*.ipynb``) in reading order."""
    return sorted((paths.root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def parse_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` -> ``(NAME, value)``; VALUE is a Python literal, else kept as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"parameter {text!r} must look like NAME=VALUE, e.g. SEED=1 or DEVICE=cpu")
    try:
        return name, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return name, raw


def notebook_parameters(nb: Path) -> dict[str, Any]:
    """Names and default values of a notebook's cell tagged ``parameters`` (flat literals).

    Raises:
        InvalidFileError: the notebook is not JSON, has no such cell, or the cell holds anything
            but ``NAME = literal`` lines.
    """
    doc = paths.read_json(nb, what="notebook")
    cells = [c for c in doc.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])] \
        if isinstance(doc, dict) else []
    if len(cells) != 1:
        raise InvalidFileError(f"notebook {nb} has {len(cells)} cells tagged 'parameters'; expected exactly one")
    src = cells[0]["source"]
    src = "".join(src) if isinstance(src, list) else str(src)
    out: dict[str, Any] = {}
    try:
        for node in ast.parse(src).body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                raise ValueError(ast.unparse(node))
            out[node.targets[0].id] = ast.literal_eval(node.value)
    except (SyntaxError, ValueError) as err:
        raise InvalidFileError(f"notebook {nb}: the parameters cell must hold only NAME = literal lines; "
                               f"cannot read {err}") from None
    return out


def _kind(default: Any) -> tuple[type, ...]:
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, (list, tuple)):
        return (list, tuple)
    return (type(default),)


def _accepts(default: Any, value: Any) -> bool:
    """Does ``value`` have the type of the parameters cell's literal ``default``?"""
    if default is None:
        return True
    if isinstance(value, bool) and not isinstance(default, bool):
        return False
    if not isinstance(value, _kind(default)):
        return False
    if isinstance(default, (list, tuple)) and default and not isinstance(default[0], (list, tuple, dict)):
        return all(_accepts(default[0], v) for v in value)
    return True


def smoke_parameters(todo: Sequence[Path]) -> dict[str, Any]:
    """The overrides that put the notebooks ``todo`` at their smoke sizes: ``PRESET="smoke"`` and,
    for a notebook that declares it, ``SMOKE=True``."""
    names = {k for nb in todo for k in notebook_parameters(nb)}
    return {k: v for k, v in (("PRESET", "smoke"), ("SMOKE", True)) if k in names}


def check_parameters(todo: Sequence[Path], parameters: Mapping[str, Any]) -> dict[Path, dict[str, Any]]:
    """Check overrides against the notebooks' parameters cells; return each notebook's own share.

    A name must be a parameter of at least one notebook in ``todo``; its value must have the type
    of that notebook's literal (an int is accepted where the literal is a float; a list's items
    must match the literal's first item).

    Raises:
        ParameterError: an unknown name (the accepted names are listed) or a value of the wrong type.
    """
    declared = {nb: notebook_parameters(nb) for nb in todo}
    known = sorted({k for d in declared.values() for k in d})
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ParameterError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
                             f"notebook(s) {', '.join(nb.name[:2] for nb in todo)}; accepted: {', '.join(known)}")
    for nb, d in declared.items():
        for name, value in parameters.items():
            if name in d and not _accepts(d[name], value):
                raise ParameterError(f"parameter {name}={value!r} ({type(value).__name__}) does not match "
                                     f"{nb.name}, whose parameters cell sets {name} = {d[name]!r}; give a value "
                                     f"of that type (True/False, 1, 0.5, 'text' or [1, 2] as Python literals)")
    own = {nb: {k: v for k, v in parameters.items() if k in d} for nb, d in declared.items()}
    for nb, d in declared.items():
        check_experiment_params(nb, {**d, **own[nb]})
    return own


#: The experiment module (under :mod:`vitprune_lite.experiments`) whose ``Params`` each notebook builds
#: from its ``PRESET``, ``BENCHMARK`` and ``OVERRIDES``.
NOTEBOOK_EXPERIMENTS = {"00": "base_model", "01": "gmm_approximation", "02": "head_channel_importance",
                        "03": "latency_curve", "04": "final_comparisons"}


def check_experiment_params(nb: Path, values: Mapping[str, Any]) -> None:
    """Build notebook ``nb``'s ``Params`` from its parameter values, as the notebook will, so that a
    bad preset name, benchmark or ``OVERRIDES`` entry stops the run before any notebook starts.

    Raises:
        ParameterError: naming the notebook and what its ``Params`` refused.
    """
    import importlib

    name = NOTEBOOK_EXPERIMENTS.get(nb.name[:2])
    if name is None or "PRESET" not in values:
        return
    module = importlib.import_module(f"vitprune_lite.experiments.{name}")
    overrides = values.get("OVERRIDES") or {}
    if not isinstance(overrides, dict):
        raise ParameterError(f"{nb.name}: OVERRIDES={overrides!r} is not a dict of Params fields")
    try:
        module.Params.preset(values["PRESET"], benchmark=values.get("BENCHMARK", DEFAULT_BENCHMARK), **overrides)
    except (ValueError, TypeError) as err:
        raise ParameterError(f"{nb.name}: PRESET={values['PRESET']!r}, BENCHMARK={values.get('BENCHMARK')!r}, "
                             f"OVERRIDES={overrides!r} refused by {module.__name__}.Params: {err}") from None


def _kernel_config():
    """Kernel connections over local (IPC) sockets where the platform has them.

    Over TCP the kernel prints a warning about unencrypted traffic once per notebook; IPC
    sockets are files in a private temporary folder, so there is nothing to warn about.
    """
    import tempfile

    from traitlets.config import Config

    if os.name != "posix":
        return Config()
    folder = tempfile.mkdtemp(prefix="vitprune-kernel-")
    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(folder, "k")}})


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the failing cell."""


def run_notebook(nb: Path, parameters: Mapping[str, Any] | None = None, cwd: Path | None = None,
                 out_dir: Path | None = None, kernel: str = KERNEL) -> Path:
    """Execute one notebook with papermill; return the executed copy's path.

    Args:
        nb: the notebook.
        parameters: overrides injected after the cell tagged ``parameters``.
        cwd: working directory of the kernel (default: the repository root).
        out_dir: where the executed copy goes (default ``build/notebooks``).
    """
    import papermill as pm

    out_dir = Path(out_dir or paths.build_dir() / "notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / nb.name
    partial = out_dir / f".{nb.stem}.partial.ipynb"
    config = _kernel_config()
    try:
        pm.execute_notebook(str(nb), str(partial), parameters=dict(parameters or {}), kernel_name=kernel,
                            cwd=str(cwd or paths.root()), progress_bar=False, log_output=False, config=config)
    except pm.PapermillExecutionError as err:
        failed = out_dir / f"{nb.stem}.failed.ipynb"
        os.replace(partial, failed)
        raise NotebookFailed(f"{nb.name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); "
                             f"the executed copy up to the failure is {failed}") from None
    finally:
        ip = config.get("KernelManager", {}).get("ip")
        if ip:
            import shutil

            shutil.rmtree(os.path.dirname(ip), ignore_errors=True)
    os.replace(partial, final)
    return final


def reproduce(only: Sequence[str] = (), smoke: bool = False, parameters: Mapping[str, Any] | None = None,
              kernel: str = KERNEL) -> list[Path]:
    """Run the numbered notebooks in order (or those whose number is in ``only``).

    Args:
        only: notebook numbers to run, e.g. ``["00", "03"]``; empty runs all.
        smoke: run every notebook at its ``smoke`` preset (small sizes, for tests): ``PRESET="smoke"``
            (``SMOKE=True`` for a notebook that still declares that name).
        parameters: further overrides; each notebook gets those its parameters cell declares.

    Raises:
        ValueError: an unknown notebook number.
        ParameterError: an unknown parameter name or a value of the wrong type (checked for
            every notebook before the first one starts).
    """
    todo = notebooks()
    if only:
        wanted = {o.zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in todo}
        if unknown:
            raise ValueError(f"no notebook numbered {sorted(unknown)}; have {[p.name[:2] for p in todo]}")
        todo = [p for p in todo if p.name[:2] in wanted]
    params = dict(parameters or {})
    if smoke:
        params.update(smoke_parameters(todo))
    own = check_parameters(todo, params)
    done, t_all = [], time.perf_counter()
    for i, nb in enumerate(todo, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(todo)}] {nb.name} ...", flush=True)
        done.append(run_notebook(nb, own[nb], kernel=kernel))
        seconds = time.perf_counter() - t0
        executed = done[-1] if isinstance(done[-1], (str, Path)) and Path(done[-1]).is_file() else None
        steps = slowest_cells(executed) if executed else []  # no executed copy: no breakdown, the run still counts
        print(f"[{i}/{len(todo)}] {nb.name} done in {seconds:.0f} s "
              f"(elapsed {time.perf_counter() - t_all:.0f} s); slowest steps: "
              + ("; ".join(f"{s['code'][:60]} {s['seconds']:.0f} s" for s in steps[:3]) or "none"), flush=True)
        ran = {**notebook_parameters(nb), **own[nb]}  # the values this run used
        if not smoke and ran.get("PRESET", "full") != "smoke":
            record_run_time(nb.stem, str(ran.get("BENCHMARK", DEFAULT_BENCHMARK)), str(ran.get("PRESET", "full")), seconds,
                            sorted(ran.get("OVERRIDES") or {}), steps=steps)
    return done


def _run_times_path(path: Path | None) -> Path:
    return Path(path) if path is not None else paths.data_dir() / RUN_TIMES_FILE


def run_times(path: Path | None = None) -> dict[str, Any]:
    """The recorded run times: ``{benchmark: {preset: {notebook stem: entry}}}`` (empty if none).

    Each entry holds ``seconds`` (wall time of the notebook under papermill), ``overrides`` (the
    ``OVERRIDES`` keys it ran with; empty for the plain preset) and :func:`measure.environment`'s
    ``utc``, ``cpu_model``, ``cpu_usable``, ``load_avg_1min`` (at the end of the notebook) and
    ``git_rev``.

    Raises:
        InvalidFileError: the file exists but is not such a mapping.
    """
    path = _run_times_path(path)
    if not path.exists():
        return {}
    raw = paths.read_json(path, what="run-times file")
    ok = isinstance(raw, dict) and all(
        isinstance(v, dict) and all(isinstance(e, dict) and all(isinstance(x, dict) and "seconds" in x
                                                                  for x in e.values()) for e in v.values())
        for v in raw.values())
    if not ok:
        raise InvalidFileError(f"{path}: not a run-times file ({{benchmark: {{preset: {{notebook: "
                               f"{{'seconds': ...}}}}}}}}); delete it and rerun `make reproduce`")
    return raw


def slowest_cells(executed: Path, top: int = 5, min_seconds: float = 1.0) -> list[dict[str, Any]]:
    """Where an executed notebook spent its time: its ``top`` slowest code cells (papermill's
    per-cell durations), each ``{"cell": index, "code": first line, "seconds"}``, slowest first."""
    import json

    cells = json.loads(Path(executed).read_text()).get("cells", [])
    rows = []
    for i, cell in enumerate(cells):
        seconds = (cell.get("metadata", {}).get("papermill", {}) or {}).get("duration")
        if cell.get("cell_type") == "code" and isinstance(seconds, (int, float)) and seconds >= min_seconds:
            src = "".join(cell.get("source", "")).strip().splitlines()
            rows.append({"cell": i, "code": src[0][:100] if src else "", "seconds": round(float(seconds), 1)})
    return sorted(rows, key=lambda r: -r["seconds"])[:top]


def record_run_time(stem: str, benchmark: str, preset: str, seconds: float, overrides: Sequence[str] = (),
                    path: Path | None = None, steps: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Add one notebook's wall time to ``data/run_times.json`` (atomically; other entries kept).

    The file lives under the repository's ``data/`` (not ``$VITPRUNE_OUT``), so a ``lab`` run
    written to a scratch folder still records its time beside the full run's. ``steps``: its
    slowest cells (:func:`slowest_cells`), kept as ``"steps"``.
    """
    from . import measure

    path = _run_times_path(path)
    times = run_times(path)
    env = measure.environment()
    times.setdefault(benchmark, {}).setdefault(preset, {})[stem] = {
        "seconds": round(float(seconds), 1), "overrides": list(overrides),
        **{k: env[k] for k in ("utc", "cpu_model", "cpu_usable", "load_avg_1min", "git_rev")},
        "steps": [dict(s) for s in steps]}
    return paths.write_json_atomic(path, times)


def export_html(executed: Sequence[Path] | None = None, out_dir: Path | None = None) -> Path:
    """Export executed notebooks to HTML for teaching, plus an ``index.html`` a teacher can hand out.

    The index has one section per notebook: a link to its page, its recorded run times, its key
    numbers (the README's generated section for it, rendered from the results files) and its
    figures inline; then the claims table. Everything is regenerated from files, never edited.

    Args:
        executed: executed notebooks (default: every ``build/notebooks/NN_*.ipynb``).
        out_dir: where the pages go (default ``build/html``).

    Returns:
        The path of ``index.html``.
    """
    import html
    import shutil

    import mistune
    import nbformat
    from nbconvert import HTMLExporter

    from . import report

    executed = sorted(executed or (paths.build_dir() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        raise FileNotFoundError("no executed notebooks in build/notebooks; run `make reproduce` first")
    out_dir = Path(out_dir or paths.build_dir() / "html")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    md = mistune.create_markdown(plugins=["table"])
    exporter = HTMLExporter()
    times, results = run_times(), report.load_results()
    figures = sorted(paths.figures_dir().glob("*.png"))
    for fig in figures:
        shutil.copyfile(fig, out_dir / "figures" / fig.name)
    sections = []
    for nb_path in executed:
        body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
        page = out_dir / f"{nb_path.stem}.html"
        paths.write_bytes_atomic(page, body.encode())
        took = [f"{p} ({b}) {e['seconds'] / 60:.1f} min"
                for b in sorted(times, reverse=True) for p in sorted(times[b]) if (e := times[b][p].get(nb_path.stem))]
        when = f"<p class=when>Run time on 2 CPU cores: {html.escape(', '.join(took))}</p>" if took else ""
        nb = nb_path.stem[:2]
        # The section's own heading is replaced by the link; its figure links by the figures below.
        key = report.render_section(nb, results).split("\n", 1)[-1] if nb in report.NOTEBOOKS else ""
        figs = "".join(f'<figure><img src="figures/{f.name}" alt="{f.stem}"><figcaption>{f.stem}</figcaption></figure>'
                       for f in figures if f.name.startswith(f"{nb}_"))
        sections.append(f'<section><h2><a href="{page.name}">{html.escape(nb_path.stem)}</a></h2>{when}'
                        f'<div class=key>{md(key)}</div>{figs}</section>')
    claims = md(report.section_claims(results)) if results else ""
    index = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vitprune_lite notebooks</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}}
figure{{display:inline-block;margin:.5em;vertical-align:top}} img{{max-width:520px;border:1px solid #ddd}}
figcaption{{font-size:.8em;color:#555}} .when{{color:#555;font-size:.9em}}
table{{border-collapse:collapse;font-size:.85em;margin:.5em 0}} td,th{{border:1px solid #ccc;padding:2px 6px}}
section{{border-top:2px solid #eee;margin-top:1.5em}}</style></head>
<body><h1>vitprune_lite: executed notebooks</h1>
<p>Pruning Vision Transformers for edge devices: TAP-ViTs, ToaSt and Pruning One More Token,
reproduced on an embedded benchmark. Each section links the executed notebook and shows its key
numbers (with 95 % intervals where the notebook computes them) and its figures.</p>
{''.join(sections)}
<section>{claims}</section>
</body></html>
"""
    return paths.write_bytes_atomic(out_dir / "index.html", index.encode())


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 1600, timeout: float = 60) -> Path:
    """Render ``page`` in headless Chromium and save a PNG screenshot (to check the HTML as a reader would).

    Raises:
        FileNotFoundError: no Chromium on PATH (Debian: ``apt-get install chromium``).
    """
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise FileNotFoundError("no Chromium found on PATH; install it (Debian: apt-get install chromium)")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={png}", Path(page).resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
    return png
