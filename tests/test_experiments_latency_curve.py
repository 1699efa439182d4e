"""Notebook 03's experiment in-process at its smoke preset, on v1 and v2: the curves, POMT's choice,
the method comparison and the result file (values, not timings: no latency figure is asserted)."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from vitprune_lite.errors import InvalidFileError, InvalidValueError
from vitprune_lite.experiments import latency_curve as lc


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    """Curves and results of this module go to a temporary output root, never the repository's."""
    path = tmp_path_factory.mktemp("nb03")
    old = os.environ.get("VITPRUNE_OUT")
    os.environ["VITPRUNE_OUT"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VITPRUNE_OUT", None)
    else:
        os.environ["VITPRUNE_OUT"] = old


#: v2 with its smoke token grids scaled to its 145 tokens.
V2_OVERRIDES = {"pomt_r_grid": (72,), "tome_r": (8, 16)}
#: v1's token grids (65 tokens): the v2 defaults do not fit it.
V1_GRIDS = {"pomt_r_grid": (8, 16, 24, 32, 40, 48), "tome_r": (1, 2, 3, 4, 5, 6, 7, 8, 9)}


@pytest.fixture(scope="module")
def results(out_root):
    return {"v1": lc.run(lc.Params.preset("smoke", benchmark="v1")),
            "v2": lc.run(lc.Params.preset("smoke", benchmark="v2", **V2_OVERRIDES))}


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("field,value", [("benchmark", "v3"), ("rounds", 1), ("max_rounds", 3), ("n_step", 0),
                                         ("target_ci", 0.0), ("alpha", 1.5), ("match_tol", 1.0),
                                         ("keep_rates", (0.5, 1.2)), ("keep_rates", (True,)), ("tome_r", (0,)),
                                         ("pomt_r_grid", [8]), ("pomt_layers", ()), ("batch_sizes", (0,)),
                                         ("timm_curves", "sometimes"), ("lat_min_run_time", 0),
                                         ("public", (("val", 10),)), ("threads", True)])
def test_params_refuse_bad_values(field, value):
    kw = {field: value}
    if field == "max_rounds":
        kw["rounds"] = 5  # max_rounds below rounds
    with pytest.raises(InvalidValueError, match=f"Params.{field}"):
        lc.Params(**kw)


def test_presets():
    assert lc.Params.preset("full") == lc.Params() and lc.Params().benchmark == "v2"
    assert lc.Params.preset("smoke").n_step == 8 and lc.Params.preset("lab", benchmark="v2").benchmark == "v2"
    full, ext = lc.Params(), lc.Params.preset("extended")  # extended: denser, longer, larger than full
    assert ext.n_step < full.n_step and ext.sweep_budget_s > full.sweep_budget_s
    assert ext.test_subset > full.test_subset and ext.lat_rounds > full.lat_rounds
    with pytest.raises(InvalidValueError, match="'nope'"):
        lc.Params.preset("nope")


def test_base_model_names_keep_benchmarks_apart():
    assert lc.base_model_name("v1") == "base_vit" and lc.base_model_name("v2") == "base_vit_v2"
    with pytest.raises(InvalidValueError, match="'v3'"):
        lc.base_model_name("v3")


@pytest.mark.parametrize("field,value,says", [("pomt_r_grid", (8, 64), "R = 64"), ("pomt_layers", (1, 6), "block 6"),
                                              ("tome_r", (40,), "r = 40")])
def test_token_grids_checked_against_the_model(field, value, says):
    from vitprune_lite import models

    base, _ = models.load_base_model("v1")
    lc.check_token_grids(lc.Params(benchmark="v1", **V1_GRIDS), base)  # v1's grids fit v1
    with pytest.raises(InvalidValueError, match=f"Params.{field}") as err:
        lc.check_token_grids(lc.Params(**{**V1_GRIDS, field: value}), base)
    assert says in str(err.value) and ("65 tokens" in str(err.value) or "6 blocks" in str(err.value))


def test_defaults_fit_v2_and_not_v1():
    from vitprune_lite import models

    base, _ = models.load_base_model("v2")
    lc.check_token_grids(lc.Params(), base)
    lc.check_token_grids(lc.Params(**V1_GRIDS), base)  # v1's grids fit v2 as well
    with pytest.raises(InvalidValueError, match="145 tokens"):
        lc.check_token_grids(lc.Params(pomt_r_grid=(144,)), base)
    v1, _ = models.load_base_model("v1")
    with pytest.raises(InvalidValueError, match="65 tokens"):  # v2's defaults remove up to 108 of 64 patches
        lc.check_token_grids(lc.Params(benchmark="v1"), v1)


# ----------------------------------------------------------------------------- the runs

@pytest.mark.slow
@pytest.mark.parametrize("bench,n_tokens,devices", [("v1", 65, 4), ("v2", 145, 8)])
def test_smoke_run_values(results, bench, n_tokens, devices):
    res = results[bench]
    assert res.benchmark == bench and res.smoke is True and res.n_tokens == n_tokens and res.depth == 6
    name = lc.base_model_name(bench)
    here = [c for c in res.curves if c["measured_here"]]
    assert {(c["model"], c["part"], c["batch"]) for c in here} == {(name, "network", 1), (name, "block0", 1)}
    other = lc.base_model_name("v2" if bench == "v1" else "v1")
    assert all(c["model"] != other for c in res.curves)  # the other benchmark's curves are not mixed in
    (b1,) = [c for c in here if c["part"] == "network"]
    assert b1["n"] == sorted(set(range(2, n_tokens + 1, 8)) | {n_tokens})
    assert len(b1["median_ms"]) == 2 and min(min(m) for m in b1["median_ms"]) > 0

    pc = res.pomt_choice
    assert pc["R"] == n_tokens - pc["n_star"] and pc["n_star"] in res.accuracy_proxy["n"]
    assert len(pc["utility"]) == len(b1["n"]) and pc["layer"] == 2 == pc["default_layer"]
    acc = res.accuracy_proxy["acc"]
    assert all(0 <= a <= 1 for a in acc) and acc[-1] >= acc[0]  # all tokens beat 1 random patch

    rows = {r["key"]: r for r in res.methods}
    classes = 12 if bench == "v1" else 48
    assert rows["dense"]["val_acc"] > 3 / classes and rows["dense"]["flops_ratio"] == 1.0
    for r in res.methods:
        t = r["tokens"]
        assert all(a >= b for a, b in zip(t, t[1:])) and len(t) == 6 and 0 <= r["val_acc"] <= 1
        if r["method"] == "pomt":
            assert t[2:] == [n_tokens - r["setting"]] * 4 and t[:2] == [n_tokens] * 2
        if r["method"] != "dense":
            assert r["flops_ratio"] < 1  # every reduction removes work
    tome = sorted((r for r in res.methods if r["method"] == "tome"), key=lambda r: r["setting"])
    assert tome[0]["flops"] > tome[-1]["flops"] and tome[0]["mean_tokens"] > tome[-1]["mean_tokens"]

    assert res.zero_overhead["tome(0)"]["exact"] is True and res.zero_overhead["pomt(0)"]["exact"] is True
    for z in res.zero_overhead.values():  # its own run: more rounds than the comparison's
        assert z["rounds"] == lc.ZERO_ROUNDS_FACTOR * res.params.lat_rounds
        assert z["ratio_iqr"][0] <= z["ratio_vs_dense"] <= z["ratio_iqr"][1]
    final = {r["row"] for r in res.final_rows}
    assert {"dense", "POMT (chosen R)"} <= final
    for r in res.final_rows:
        assert 0 <= r["test_acc"] <= 1 and len(r["device_acc"]) == devices
    assert res.timm_tome_batch1 == [] and "POMT's choice" in lc.summary_markdown(res)


@pytest.mark.slow
def test_result_round_trip_and_refusals(results, out_root):
    res = results["v2"]
    path = res.to_json(out_root / "r_v2.json")
    back = lc.Result.from_json(path)
    assert back == res and back.params == res.params
    assert lc.read_result(path, "v2") == res
    with pytest.raises(InvalidFileError, match="'v2'.*asked for 'v1'"):
        lc.read_result(path, "v1")
    raw = json.loads(path.read_text())
    (out_root / "other.json").write_text(json.dumps({**raw, "schema": 99}))
    with pytest.raises(InvalidFileError, match="schema"):
        lc.Result.from_json(out_root / "other.json")
    del raw["final_rows"]
    (out_root / "broken.json").write_text(json.dumps(raw))
    with pytest.raises(InvalidFileError, match="malformed"):
        lc.Result.from_json(out_root / "broken.json")


@pytest.mark.slow
def test_saved_curves_are_per_benchmark(results, out_root):
    from vitprune_lite import latency

    names = {p.name for p in (out_root / "data" / "latency").glob("*.json")}
    assert any("__base_vit__b1" in n for n in names) and any("__base_vit_v2__b1" in n for n in names)
    v2 = lc.load_base_curve("v2")
    assert v2.model == "base_vit_v2" and v2.environment["benchmark"] == "v2"
    assert lc.load_base_curve("v1").environment["benchmark"] == "v1"
    # a v2 curve filed under the v1 name is refused, naming what it holds and what was asked
    (path,) = [p for p in latency.find_curves("base_vit", 1) if p.parent == out_root / "data" / "latency"]
    latency.save_curve(dataclasses.replace(v2, model="base_vit"))
    with pytest.raises(InvalidFileError, match="benchmark 'v2'.*asked for benchmark 'v1'"):
        lc.load_base_curve("v1", device=path.name.split("__")[0])


def test_result_files_checked_for_their_benchmark(tmp_path):
    # a file from before the benchmark was recorded holds a v1 run; a v2 file is refused for v1 readers
    lc.check_result_benchmark({"final_rows": []}, tmp_path / "old.json", "v1")
    with pytest.raises(InvalidFileError, match="old.json.*benchmark 'v1'; asked for 'v2'"):
        lc.check_result_benchmark({"final_rows": []}, tmp_path / "old.json", "v2")
    with pytest.raises(InvalidFileError, match="new.json.*benchmark 'v2'; asked for 'v1'"):
        lc.check_result_benchmark({"benchmark": "v2"}, tmp_path / "new.json", "v1")


def test_setup_refuses_a_grid_that_does_not_fit_before_any_work():
    with pytest.raises(InvalidValueError, match=r"Params.pomt_r_grid holds R = 100: .*65 tokens"):
        lc.setup(lc.Params.preset("smoke", benchmark="v1", pomt_r_grid=(100,)))


# ----------------------------------------------------------------------------- figures (fake inputs, no timing)

def _fake_choice(n_tokens: int = 145, alpha: float = 0.5):
    """A smooth measured-like curve and a monotone A(n) on notebook 03's token grid (every 2nd count, N)."""
    import numpy as np

    from vitprune_lite import tokens

    n = np.array(sorted(set(range(2, n_tokens + 1, 2)) | {n_tokens}))
    med = 2.0 + 0.05 * n
    acc = 0.8 * (1 - np.exp(-n / 30))
    pooled = {"n": n, "median_ms": med, "ci_low_ms": 0.98 * med, "ci_high_ms": 1.02 * med}
    return lc.Choice(pooled, acc, tokens.choose_prune_count(n, med, acc, n_tokens, alpha=alpha), [140, 140])


def test_staircase_generator():
    import numpy as np

    assert lc.staircase_ms(1) == lc.staircase_ms(16) == 10.0 and lc.staircase_ms(17) == pytest.approx(10.8)
    got = lc.staircase_ms(np.arange(1, 50), tile=8, base_ms=2.0, step=0.5)
    assert got.tolist() == [2.0 * (1 + 0.5 * ((k - 1) // 8)) for k in range(1, 50)]
    for bad in ({"n": 0}, {"n": 2.5}, {"n": 5, "tile": 0}, {"n": 5, "base_ms": 0.0}, {"n": 5, "step": -0.1}):
        with pytest.raises(InvalidValueError, match="staircase"):
            lc.staircase_ms(**bad)


def test_staircase_figure_shows_steps_and_marks_the_count_just_below_one():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    params, choice = lc.Params(), _fake_choice()
    fig = lc.plot_staircase(params, choice)
    measured, synthetic = fig.axes[:2]
    assert "synthetic (not measured)" in synthetic.get_title()
    (syn,) = [ln for ln in synthetic.get_lines() if "synthetic (not measured)" in ln.get_label()]
    n, y = np.asarray(syn.get_xdata()), np.asarray(syn.get_ydata())
    jumps = np.flatnonzero(np.diff(y) != 0)  # equal latency within a tile, a rise only at its last count
    assert n[jumps].tolist() == list(range(16, 145, 16)) and (np.diff(y)[jumps] > 0).all()
    (mark,) = [ln for ln in synthetic.get_lines() if ln.get_label().startswith("POMT's n*")]
    n_star = int(mark.get_xdata()[0])
    assert n_star % 16 == 0 and lc.staircase_ms(n_star + 1) > lc.staircase_ms(n_star)  # just below a step
    assert n_star == lc.staircase_choice(choice.pooled["n"], choice.acc_n, 145, alpha=params.alpha)["n_star"]
    (left,) = [ln for ln in measured.get_lines() if ln.get_label().startswith("POMT's n*")]
    assert int(left.get_xdata()[0]) == choice.choice["n_star"]  # the measured panel marks the notebook's choice
    assert all(ax.get_xlabel().startswith("tokens") for ax in (measured, synthetic))
    plt.close(fig)


def test_methods_figure_draws_one_interquartile_bar_per_setting():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from vitprune_lite import methods

    rows = [{"key": "dense", "method": "dense", "setting": None, "val_acc": 0.8, "latency_ms": 10.0,
             "ratio_vs_dense": 1.0, "ratio_iqr": [1.0, 1.0], "flops_ratio": 1.0}]
    for method, settings in (("pomt", (36, 72)), ("tome", (4, 8, 12)), ("topk", (0.7,)), ("evit", (0.7, 0.5))):
        for i, s in enumerate(settings):
            ratio = 0.95 - 0.1 * i + 0.01 * len(rows)
            rows.append({"key": f"{method}({s})", "method": method, "setting": s, "val_acc": 0.79 - 0.01 * i,
                         "latency_ms": 10.0 * ratio, "ratio_vs_dense": ratio,
                         "ratio_iqr": [ratio - 0.02, ratio + 0.05], "flops_ratio": 0.9 - 0.15 * i})
    fig = lc.plot_methods(lc.Params(), lc.Comparison({}, rows, {}, 0.0, 2, 36))
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert sorted(c.get_label() for c in bars) == sorted(methods.label(m) for m in ("pomt", "tome", "topk", "evit"))
    spans = sorted((round(seg[0][0], 6), round(seg[1][0], 6)) for c in bars for seg in c.lines[2][0].get_segments())
    assert spans == sorted((round(r["ratio_iqr"][0], 6), round(r["ratio_iqr"][1], 6)) for r in rows[1:])
    for c in bars:  # points, not lines, in each method's own colour
        method = next(m for m in ("pomt", "tome", "topk", "evit") if methods.label(m) == c.get_label())
        assert c.lines[0].get_linestyle() == "None" and c.lines[0].get_color() == methods.style(method).color
    assert any(list(ln.get_xdata()) == [1.0, 1.0] and ln.get_linestyle() == "--" for ln in ax.get_lines())  # dense
    assert len(fig.legends) == 1 and not ax.get_legend()  # one legend, outside the axes
    texts = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
    assert texts.count("thread") == 1 and "ms" in texts
    plt.close(fig)
