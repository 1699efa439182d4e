"""Notebook 04's experiment in-process at its smoke preset, on v1 and v2: every method, the
combined planner, the intervals, the result file and the report that reads it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitprune_lite.errors import InvalidFileError, InvalidValueError
from vitprune_lite.experiments import final_comparisons as fc

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("field,value", [
    ("benchmark", "v3"), ("seeds", ()), ("seeds", (0, -1)), ("seeds", [0]), ("devices", "phone"), ("threads", 0),
    ("max_devices", -1), ("budgets", (0.55,)), ("budgets", (1.5,)), ("budgets", ()), ("n_metric", 0),
    ("ft_steps", -1), ("ft_lr", 0.0), ("val_fraction", 0.0), ("pomt_r", (0,)), ("pomt_r", (16.0,)),
    ("tome_r", (True,)), ("topk_keep", (0.0,)), ("latency_budgets", (1.2,)), ("combined_tokens", (("topk", 2),)),
    ("combined_tokens", (("pomt", 0),)), ("planner_profile_s", 0), ("planner_holdout", 0),
    ("planner_margin_q", 1.0), ("planner_anchor", 1), ("planner_rounds", 0), ("lat_rounds", 0),
    ("lat_min_run", 0.0), ("n_boot", 5), ("selected_sets", None),
])
def test_params_refuse_bad_values(field, value):
    with pytest.raises(InvalidValueError, match=f"Params.{field}"):
        fc.Params(**{field: value})


def test_presets():
    full = fc.Params.preset("full")
    assert full == fc.Params() and full.benchmark == "v2" and full.is_full()
    assert full.pomt_r == (36, 72, 108) and full.seeds == (0,) and full.max_devices == 4 and full.budgets == (0.5,)
    assert full.test_images == 0 and fc.Params.preset("extended") == full  # every test image: the claims' intervals
    smoke = fc.Params.preset("smoke", benchmark="v2")
    assert smoke.benchmark == "v2" and smoke.max_devices == 1 and not smoke.is_full()
    assert fc.Params.preset("full", benchmark="v2").is_full()
    assert fc.Params(selected_sets="/elsewhere/sets.npz").is_full() and not fc.Params(seeds=(0, 1)).is_full()
    lab = fc.Params.preset("lab")
    assert lab.seeds == (0,) and lab.max_devices == 2 and lab.devices == () and not lab.is_full()
    assert lab.ft_steps < full.ft_steps and 0 < lab.test_images and lab.n_finetune < full.n_finetune  # a shorter run
    with pytest.raises(InvalidValueError, match="'nope'"):
        fc.Params.preset("nope")
    with pytest.raises(InvalidValueError, match="Params.pomt_r"):  # overrides are validated too
        fc.Params.preset("smoke", pomt_r=(-1,))


#: v1's token settings (64 patches): the v2 defaults remove up to 108.
V1_TOKENS = {"benchmark": "v1", "pomt_r": (16, 32, 48), "tome_r": (2, 4, 8),
             "combined_tokens": (("pomt", 16), ("pomt", 32), ("tome", 2), ("tome", 4))}


def test_token_settings_must_fit_the_model():
    from vitprune_lite import models

    v2, _ = models.load_base_model("v2")  # 145 tokens: the defaults fit
    fc.check_token_settings(fc.Params(), v2)
    model, _ = models.load_base_model("v1")  # 65 tokens, 6 blocks
    with pytest.raises(InvalidValueError, match=r"Params.pomt_r: pomt 72 .*65 tokens"):
        fc.check_token_settings(fc.Params(benchmark="v1"), model)  # v2's defaults do not fit v1
    fc.check_token_settings(fc.Params(**V1_TOKENS), model)
    with pytest.raises(InvalidValueError, match=r"Params.pomt_r: pomt 64 .*65 tokens.*R in 1..63"):
        fc.check_token_settings(fc.Params(**{**V1_TOKENS, "pomt_r": (16, 64)}), model)
    with pytest.raises(InvalidValueError, match=r"Params.tome_r: tome 20 .*65 tokens"):
        fc.check_token_settings(fc.Params(**{**V1_TOKENS, "tome_r": (20,)}), model)  # 64 -> 44 -> 24: 20 > 12 at block 2
    with pytest.raises(InvalidValueError, match=r"Params.combined_tokens: pomt 70"):
        fc.check_token_settings(fc.Params(**{**V1_TOKENS, "combined_tokens": (("pomt", 70),)}), model)
    with pytest.raises(InvalidValueError, match="Params.pomt_r"):  # refused before anything is built
        fc.load_inputs(fc.Params(**{**V1_TOKENS, "pomt_r": (64,)}), model=model, bench=object())


# ----------------------------------------------------------------------------- selected sets

def _write_sets(path, bench, n_devices=1, top=None, benchmark="v1", space="random"):
    from vitprune_lite import gmm

    idx = np.arange(len(bench.public["train"]))
    sets = {}
    for d in list(bench.specs)[:n_devices]:
        s = gmm.random_selection(idx, 32, 160, seed=gmm.device_seed(0, d))
        fine = s.finetune.copy()
        if top is not None:
            fine[-1] = top
        for sp in {"random", space}:  # the default space's sets stand in for notebook 01's selection
            sets[f"{d}/{sp}/metric"], sets[f"{d}/{sp}/finetune"] = s.metric, fine
    gmm.save_selected_sets(sets, space, path, benchmark=benchmark, seed=0)
    return path


@pytest.fixture(scope="module")
def v1_bench():
    from vitprune_lite import data

    return data.load_benchmark(0)


def test_selected_sets_of_another_pool_or_without_the_devices_are_refused(tmp_path, v1_bench):
    n = len(v1_bench.public["train"])
    bad = _write_sets(tmp_path / "other.npz", v1_bench, top=n)  # an index past v1's pool: written for v2
    with pytest.raises(InvalidFileError, match=rf"other.npz.*index public image {n}.*holds {n}.*BENCHMARK = 'v1'"):
        fc.load_inputs(fc.Params.preset("smoke", benchmark="v1", selected_sets=str(bad)), bench=v1_bench)
    ok = _write_sets(tmp_path / "ok.npz", v1_bench)
    with pytest.raises(InvalidFileError, match="no 'random' sets for any of"):
        fc.load_inputs(fc.Params.preset("smoke", benchmark="v1", selected_sets=str(ok), devices=("phone",)), bench=v1_bench)
    with pytest.raises(InvalidValueError, match="Params.devices.*'tablet'"):
        fc.load_inputs(fc.Params.preset("smoke", benchmark="v1", selected_sets=str(ok), devices=("tablet",)), bench=v1_bench)
    inp = fc.load_inputs(fc.Params.preset("smoke", benchmark="v1", selected_sets=str(ok)), bench=v1_bench)
    assert inp.devices == ["night_cam"] and inp.space == "random" and inp.x1.shape == (1, 3, 32, 32)
    assert set(inp.budgets) == {"50%"}
    assert len(inp.tests["night_cam"][0]) == 32


# ----------------------------------------------------------------------------- smoke runs, v1 and v2

@pytest.fixture(scope="module")
def v1_steps(v1_bench, tmp_path_factory):
    """The notebook's steps one by one on v1, with written sets (v2 below goes through :func:`fc.run`
    with notebook 01's committed selection)."""
    from types import SimpleNamespace

    sets = _write_sets(tmp_path_factory.mktemp("v1") / "01_selected_sets.npz", v1_bench, space="combined")
    params = fc.Params.preset("smoke", benchmark="v1", selected_sets=str(sets))
    inp = fc.load_inputs(params, bench=v1_bench)
    built = fc.build_models(params, inp, progress=False)
    ev = fc.evaluate(params, inp, built)
    lat = fc.measure_latencies(params, inp, built, ev)
    cal = fc.calibrate_planner(params, inp)
    combined = fc.combined_plans(params, inp, built, ev, cal, lat["dense_ms"][1], progress=False)
    summary = fc.summarise(params, inp, ev, lat, combined)
    result = fc.Result.collect(params, inp, built, lat, combined, summary, cal, seconds=1.0)
    return SimpleNamespace(params=params, inp=inp, built=built, ev=ev, lat=lat, cal=cal, result=result)


@pytest.fixture(scope="module")
def v1_result(v1_steps):
    return v1_steps.result


@pytest.fixture(scope="module")
def v2_result():
    from vitprune_lite import data

    bench = data.benchmark_module("v2").load_benchmark(0)
    return fc.run(fc.Params.preset("smoke"), bench=bench, progress=False)  # notebook 01's committed (v2) sets


def _check_result(r: fc.Result, n_classes: int) -> None:
    dense = r.dense
    (d,) = r.parameters["devices"]
    assert r.smoke is True and r.seeds == [0] and r.main_budget == "50%"
    assert {x["method"] for x in r.rows} == {"dense", "tap_vits", "one_size_fits_all", "toast_tcs", "torch_pruning",
                                            "oracle", "pomt", "tome", "topk"}
    assert dense["acc"][d] > 1.5 / n_classes  # the dense model is well above chance on its device
    for row in r.rows:
        assert 0 <= row["acc"] <= 1 and row["ms_b1"] > 0 and row["ms_b32"] > 0
        if row["method"] != "dense":
            assert row["flops"] < dense["flops"]  # every method removes work
        if row["method"] in (*fc.STRUCTURED, "oracle"):
            assert row["params"] < dense["params"]
    for p in r.aggregate:  # the interval (seeds x test images) brackets the mean
        assert p["acc_lo"] - 1e-9 <= p["acc"] <= p["acc_hi"] + 1e-9
    tap = {p["method"]: p["acc"] for p in r.aggregate if p["setting"] == "50%"}
    for other, g in r.differences["50%"].items():
        assert g["mean"] == pytest.approx(tap["tap_vits"] - tap[other])
        assert g["lo"] <= g["mean"] <= g["hi"] and set(g["by_device"]) == {d}
    assert set(r.toast_differences["50%"]) == {"one_size_fits_all", "torch_pruning"}
    for other, g in r.toast_differences["50%"].items():
        assert g["mean"] == pytest.approx(tap["toast_tcs"] - tap[other]) and g["lo"] <= g["mean"] <= g["hi"]
    # the planner: budgets and measured latencies in the notebook's dense milliseconds
    margin = r.predictor["margin"]
    assert r.predictor["validation"]["ratio"]["n"] == 4
    assert {(c["budget_share"], c["kind"]) for c in r.combined} == {
        (s, k) for s in r.parameters["latency_budgets"] for k in ("combined", "structure only", "tokens only")}
    for c in r.combined:
        assert c["measured_ms"] == pytest.approx(c["measured_ratio"] * dense["ms_b1"])
        assert c["budget_ms"] == pytest.approx(c["budget_share"] * dense["ms_b1"])
        assert c["measured_met"] == (c["measured_ratio"] <= c["budget_share"]) and 0 <= c["acc"] <= 1
        if c["predicted_met"]:
            assert c["predicted_ratio"] <= c["budget_share"] * (1 - margin) + 1e-9
    by = {(c["budget_share"], c["kind"]): c for c in r.combined}
    for share in r.parameters["latency_budgets"]:  # never worse on validation among plans predicted to fit
        fits = [by[(share, k)]["val_acc"] for k in ("structure only", "tokens only") if by[(share, k)]["predicted_met"]]
        if by[(share, "combined")]["predicted_met"]:
            assert by[(share, "combined")]["val_acc"] >= max(fits, default=0)
    assert r.planner_check["n_cases"] == len(r.parameters["latency_budgets"])
    assert {s["budget"] for s in r.summary} == {"50% params", "90% latency", "80% latency"}
    for s in r.summary:
        if s["budget"].endswith("params"):
            assert s["best"] in fc.STRUCTURED and s["best_acc"] == max(s[m] for m in fc.STRUCTURED)
        else:
            assert s["best"] == "none met the budget" or s[f"{s['best']} met"] >= 0.5
    for key, rep in r.reports.items():
        if key.split("|")[0] in (*fc.STRUCTURED, "oracle"):
            assert rep["kept"] in ("pruned", "finetuned") and rep["n_val"] > 0


def test_v1_smoke(v1_result):
    _check_result(v1_result, 12)
    prior = v1_result.class_prior["50%"]
    for d, a in prior["acc"].items():  # the true class is always among the device's: restricting only helps
        for m in fc.CLASS_PRIOR_METHODS:
            assert a[f"{m} restricted"] >= a[m]
    gap = prior["restricted minus plain one_size_fits_all"]
    assert gap["lo"] <= gap["mean"] <= gap["hi"] and gap["mean"] >= 0
    first = prior["tap_vits minus restricted one_size_fits_all"]
    assert first["mean"] == pytest.approx(np.mean([a["tap_vits"] - a["one_size_fits_all restricted"]
                                                   for a in prior["acc"].values()]))
    accs, gaps = fc.class_prior_table(v1_result.class_prior)
    assert accs[-1]["device"] == "mean" and len(gaps) == 3
    assert v1_result.parameters["benchmark"] == "v1" and v1_result.parameters["feature_space"] == "combined"
    assert v1_result.inputs["selected_sets"] == "01_selected_sets.npz"
    assert len(v1_result.inputs["selected_sets_sha256"]) == 64


def test_a_margin_of_100_percent_promises_no_budget(v1_steps):
    from types import SimpleNamespace

    s = v1_steps
    cal = SimpleNamespace(predictor=s.cal.predictor, margin=1.2)  # held-out errors that large: nothing can be promised
    with pytest.warns(UserWarning, match="margin is 120 %"):
        combined = fc.combined_plans(s.params, s.inp, s.built, s.ev, cal, s.lat["dense_ms"][1], progress=False)
    assert len(combined) == 3 * len(s.params.latency_budgets)
    fastest = {}
    for c in combined:
        assert c["predicted_met"] is False
        fastest.setdefault(c["kind"], set()).add(c["predicted_ms"])
    for kind, ms in fastest.items():  # whatever the budget, the fastest predicted plan of its kind
        assert len(ms) == 1
    assert min(fastest["combined"]) <= min(min(fastest["structure only"]), min(fastest["tokens only"])) + 1e-12


def test_v2_smoke(v2_result):
    from vitprune_lite import data_v2

    _check_result(v2_result, len(data_v2.CLASSES))
    assert v2_result.parameters["benchmark"] == "v2" and v2_result.params.pomt_r == (16,)


def test_result_round_trip_and_refusals(v1_result, tmp_path):
    path = v1_result.to_json(tmp_path / "r.json")
    back = fc.Result.from_json(path)
    assert back.params == v1_result.params and back.summary == v1_result.summary
    assert back.to_json(tmp_path / "again.json").read_text() == path.read_text()
    raw = json.loads(path.read_text())
    for key in ("smoke", "seeds", "parameters", "dense", "rows", "aggregate", "per_budget", "main_budget", "combined",
                "combined_overall", "predictor", "summary", "reports", "seconds", "environment"):
        assert key in raw  # what report.py and the notebook test read
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "schema"}))
    with pytest.raises(InvalidFileError, match="old.json.*schema 1.*found schema None"):
        fc.Result.from_json(tmp_path / "old.json")
    raw["params"]["pomt_r"] = [0]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(InvalidFileError, match="bad.json: malformed notebook 04 result"):
        fc.Result.from_json(tmp_path / "bad.json")


def test_report_reads_the_result(v1_result, tmp_path):
    import dataclasses

    from vitprune_lite import report

    back = fc.Result.from_json(v1_result.to_json(tmp_path / "04_final_comparisons.json"))
    text = report.section_final(back)
    assert "### 04 Final comparisons" in text and "night_cam" in text and "95 %" in text
    text, verdict = report._m_tap_vs_one_size({"04": back})
    g = back.differences["50%"]["one_size_fits_all"]
    assert f"{100 * g['lo']:+.1f}" in text and f"{100 * g['hi']:+.1f}" in text
    assert verdict == (report.HELD if g["lo"] > 0 else report.NOT_HELD if g["hi"] < 0 else report.NOT_RESOLVED)
    text, verdict = report._m_tap_vs_all({"04": back})
    assert "TAP-ViTs minus one-size-fits-all" in text and "(95 %)" in text
    diffs = [back.differences["50%"][m] for m in ("one_size_fits_all", "toast_tcs", "torch_pruning")]
    if any(d["hi"] < 0 for d in diffs):
        assert verdict == report.NOT_HELD
    elif all(d["lo"] > 0 for d in diffs):
        assert verdict == report.HELD
    else:
        assert verdict == report.NOT_RESOLVED
    text, verdict = report._m_toast_recovered({"04": back})
    assert "ToaSt + TCS minus one-size-fits-all" in text and "torch-pruning" in text
    # without the intervals the per-device tally is no verdict
    text, verdict = report._m_tap_vs_one_size({"04": dataclasses.replace(back, differences={})})
    assert "hold no interval" in text and verdict == report.NOT_RESOLVED


def test_figures(v1_result):
    import matplotlib.pyplot as plt

    r = v1_result
    fig = fc.plot_predicted_vs_measured(r.predictor["validation"]["rows"], r.combined, r.parameters["latency_budgets"],
                                        r.parameters["lat_threads"])
    assert len(fig.axes[0].collections) >= 4  # held-out plans, three kinds, the ±10 % band
    plt.close(fig)
    fig = fc.plot_pareto(r.aggregate, r.parameters["devices"], len(r.seeds), r.parameters["lat_threads"])
    assert len(fig.axes) == 3
    plt.close(fig)
    fig = fc.plot_pareto(r.aggregate, r.parameters["devices"], len(r.seeds), r.parameters["lat_threads"],
                         combined=r.combined)
    stars = _planner_stars(fig.axes[0])
    assert len(stars) == len({c["budget_share"] for c in r.combined if c["kind"] == "combined"})
    plt.close(fig)


def _planner_stars(ax) -> dict:
    """The planner's choices drawn on a panel: legend label -> the marker's line."""
    return {c.get_label(): c.lines[0] for c in ax.containers if str(c.get_label()).startswith("planner's choice")}


def _pareto_panels(fig, n_devices: int) -> np.ndarray:
    assert len(fig.axes) == 3 * n_devices  # the legend is the figure's, not a panel of its own
    return np.array(fig.axes).reshape(n_devices, 3)


def test_pareto_figure_from_the_committed_result():
    """The stored run redrawn: FLOPs in MFLOPs with no offset, the planner's choices and budgets on the
    batch-1 panels, one legend outside the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitprune_lite import paths

    r = fc.Result.from_json(paths.data_dir() / "results" / fc.RESULT_FILE)
    devices = r.parameters["devices"]
    fig = fc.plot_pareto(r.aggregate, devices, len(r.seeds), r.parameters["lat_threads"], combined=r.combined)
    try:
        fig.canvas.draw()
        axes = _pareto_panels(fig, len(devices))
        assert r.dense["flops"] > 1e7  # a model of ~1e8 FLOPs: MFLOPs put it below 1e4
        for d, ax in zip(devices, axes[:, 2]):
            assert ax.get_xlabel() == "MFLOPs per image"
            xs = np.concatenate([np.asarray(ln.get_xdata(), dtype=float) for ln in ax.lines])
            flops = [p["flops"] for p in r.aggregate if p["device"] == d and p.get("flops") is not None]
            assert xs.max() < 1e4 and xs.max() == pytest.approx(max(flops) / 1e6)
        for ax in axes.flat:
            assert ax.xaxis.get_offset_text().get_text() == "" and ax.yaxis.get_offset_text().get_text() == ""
        for d, row in zip(devices, axes):
            mine = [c for c in r.combined if c["device"] == d and c["kind"] == "combined"]
            shares = {c["budget_share"] for c in mine}
            stars = _planner_stars(row[0])
            assert len(stars) == len(shares) > 0 and all(ln.get_marker() == "*" for ln in stars.values())
            share_of = {f"planner's choice (budget {round(100 * s)} %)": s for s in shares}
            for lab, ln in stars.items():
                want = [c for c in mine if c["budget_share"] == share_of[lab]]
                assert ln.get_xdata()[0] == pytest.approx(float(np.median([c["measured_ms"] for c in want])))
                assert ln.get_ydata()[0] == pytest.approx(float(np.mean([c["acc"] for c in want])))
            budgets = sorted(ln.get_xdata()[0] for ln in row[0].lines if ln.get_label() == "planner's latency budget")
            assert budgets == pytest.approx(sorted({c["budget_ms"] for c in mine}))
            assert not any(lab.startswith("planner") for ax in row[1:] for lab in ax.get_legend_handles_labels()[1])
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in axes.flat)
        texts = [t.get_text() for t in fig.legends[0].get_texts()]
        assert len(texts) == len(set(texts)) and "planner's latency budget" in texts
        assert {f"planner's choice (budget {round(100 * s)} %)" for s in r.parameters["latency_budgets"]} <= set(texts)
        right = max(ax.get_window_extent().x1 for ax in axes.flat)
        assert fig.legends[0].get_window_extent().x0 >= right  # outside the grid, covering no point
    finally:
        plt.close(fig)


def test_differences_table(v1_result):
    rows = fc.differences_table(v1_result.differences)
    others = set(v1_result.differences["50%"])
    assert {r["tap_vits minus"] for r in rows} == others == {"one_size_fits_all", "toast_tcs", "torch_pruning", "oracle"}
    assert len(rows) == len(others) * 2  # one device and the mean
    for r in rows:
        g = v1_result.differences[r["budget"]][r["tap_vits minus"]]
        want = g if r["device"] == "mean" else g["by_device"][r["device"]]
        assert (r["mean"], r["lo"], r["hi"]) == (want["mean"], want["lo"], want["hi"])


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "3 ms"])
def test_check_plans_refuses_a_bad_reference_latency(bad):
    from vitprune_lite import pipelines

    with pytest.raises(ValueError, match="reference_ms must be a dense latency in milliseconds > 0"):
        pipelines.check_plans(None, [], [0.5], predictor=None, reference_ms=bad)


def test_command_line_refuses_a_bad_out_before_running(tmp_path):
    with pytest.raises(InvalidValueError, match=r"--out .*r\.txt: accepted a path ending in \.json"):
        fc.main(["--preset", "smoke", "--out", str(tmp_path / "r.txt")])
    with pytest.raises(SystemExit):
        fc.main(["--preset", "nope"])
