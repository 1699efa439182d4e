"""experiments.head_channel_importance in-process at the smoke preset, on benchmarks v1 and v2."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vitprune_lite.errors import InvalidFileError, InvalidValueError
from vitprune_lite.experiments import head_channel_importance as hci

pytestmark = pytest.mark.slow


def _sets(benchmark: str, devices) -> dict:
    """Index sets with notebook 01's keys, for a benchmark without a committed file: a device's
    "gmm" sets are public images of its classes, the random ones a seeded draw (plumbing only)."""
    from vitprune_lite import data

    bench = data.benchmark_module(benchmark).load_benchmark(0)
    labels = bench.public["train"].labels
    rng = np.random.default_rng(0)
    sets = {"default_feature_space": np.array("combined"), "benchmark": np.array(benchmark)}
    for d in devices:
        mine = np.flatnonzero(np.isin(labels, bench.specs[d].classes))
        sets[f"{d}/combined/metric"] = mine[:64]
        sets[f"{d}/combined/finetune"] = mine[64:64 + 320]
        sets[f"{d}/random/metric"] = rng.choice(len(labels), 64, replace=False)
        sets[f"{d}/random/finetune"] = rng.choice(len(labels), 320, replace=False)
    return sets


def _committed_sets() -> dict:
    from vitprune_lite import gmm, paths

    return gmm.load_selected_sets(paths.data_dir() / "results" / gmm.SELECTED_SETS)


@pytest.fixture(scope="module", params=["v1", "v2"])
def steps(request, tmp_path_factory):
    """Steps 1-8 at smoke (the faithfulness step is run once, by the notebook test)."""
    import os

    out = tmp_path_factory.mktemp(f"out_{request.param}")
    old = os.environ.get("VITPRUNE_OUT")
    os.environ["VITPRUNE_OUT"] = str(out)
    params = hci.Params.preset("smoke", benchmark=request.param)
    sets = _committed_sets() if request.param == "v2" else _sets("v1", params.devices)  # committed: notebook 01's (v2)
    inp = hci.load(params, sets=sets)
    src = hci.metric_sets(params, inp)
    scores = hci.score(params, inp, src, progress=False)
    corr = hci.rank_correlations(inp, scores)
    pruned = hci.prune_all(params, inp, src, scores, progress=False)
    ft = hci.recovery(params, inp, src, pruned, progress=False)
    audit = hci.tcs_audit(params, inp, src)
    speed = hci.timing(params, inp, pruned)
    yield dict(params=params, inp=inp, src=src, scores=scores, corr=corr, pruned=pruned, ft=ft, audit=audit,
               speed=speed, out=out)
    if old is None:
        os.environ.pop("VITPRUNE_OUT", None)
    else:
        os.environ["VITPRUNE_OUT"] = old


def test_inputs_follow_the_benchmark(steps):
    params, inp, src = steps["params"], steps["inp"], steps["src"]
    size = 32 if params.benchmark == "v1" else 48
    assert inp.image_size == size and tuple(inp.x1().shape) == (1, 3, size, size)
    assert inp.devices == list(params.devices) and inp.labels == ["90", "80", "70", "60", "50"]
    for (d, s), (x, y) in src.sets.items():
        assert x.shape[1:] == (3, size, size) and len(x) == len(y) == params.metric_images
    assert all(0 <= c["gmm_in_class"] <= 1 for c in src.coverage.values())


def test_scores_and_correlations(steps):
    inp, scores, corr = steps["inp"], steps["scores"], steps["corr"]
    depth = len(inp.model.blocks)
    for (d, s), kl in scores.sens.items():
        assert kl["mlp"].shape == (depth,) and bool((kl["mlp"] >= 0).all()) and bool((kl["attn"] >= 0).all())
    m = np.asarray(corr["criteria"]["mlp"])
    assert m.shape == (7, 7) and np.allclose(np.diag(m), 1.0)
    assert np.all(np.abs(m) <= 1 + 1e-9)
    for pairs in corr["sources"].values():
        assert set(pairs) == {"gmm~oracle", "random~oracle", "gmm~random"}


def test_pruning_shrinks_as_budgets_tighten(steps):
    params, inp, pruned = steps["params"], steps["inp"], steps["pruned"]
    dense = pruned.dense
    n_classes = len(inp.bench.classes)
    for d in inp.devices:
        assert dense["acc"][d] > 1.0 / n_classes  # the dense model is well above chance
        for crit in params.criteria:
            flops = [pruned.results[d][lab][crit]["flops"] for lab in inp.labels]
            params_ = [pruned.results[d][lab][crit]["params"] for lab in inp.labels]
            assert all(a > b for a, b in zip(flops, flops[1:])) and flops[0] < dense["flops"], (crit, flops)
            assert all(a >= b for a, b in zip(params_, params_[1:])) and params_[0] < dense["params"]
            assert all(0 <= pruned.results[d][lab][crit]["acc"] <= 1 for lab in inp.labels)
        r50 = pruned.results[d]["50"]
        assert r50["toast_tcs"]["params"] == r50["toast"]["params"] and r50["toast_tcs"]["flops"] < r50["toast"]["flops"]
    # data-free criteria build one model for every device
    assert ("toast", None, "50") in pruned.models and ("tap_vits", inp.devices[0], "50") in pruned.models


def test_recovery_is_the_standard_one(steps):
    from vitprune_lite import pipelines

    params, inp, pruned, ft = steps["params"], steps["inp"], steps["pruned"], steps["ft"]
    assert ft["criteria"][0] == "tap_vits" and len(ft["criteria"]) == 1 + params.ft_top
    idx = np.asarray(inp.sets[f"{inp.devices[0]}/{inp.space}/finetune"])[:params.ft_images]
    train, val = pipelines.split_validation(np.arange(len(idx)), params.val_fraction, params.seed)
    for key, run in ft["runs"].items():
        d, crit = key.split("/")
        assert run["n_train"] == len(train) and run["n_val"] == len(val)
        assert run["kept"] in ("pruned", "finetuned")
        assert (run["kept"] == "pruned") == (run["val_acc_finetuned"] < run["val_acc_pruned"])
        assert pruned.results[d]["50"][crit]["acc_recovered"] == run["test_acc"]
        if run["kept"] == "pruned":  # recover returned the pruned model: same test accuracy
            assert run["test_acc"] == pruned.results[d]["50"][crit]["acc"]


def test_tcs_audit_and_timing(steps):
    params, inp, audit, speed = steps["params"], steps["inp"], steps["audit"], steps["speed"]
    assert set(audit["audit"]) == set(inp.devices) | {"public"}
    for rep in audit["audit"].values():
        s = rep["sample"]
        assert s["acc_batch1"] == s["acc_shuffled"] == s["acc_sorted"] and s["changed_sorted"] == 0
    assert audit["tcs_flops"]["tcs"] < audit["tcs_flops"]["dense"]
    assert {lab for (_, _, lab) in speed} == {"50"}  # smoke times the smallest budget only
    for rec in speed.values():
        assert set(rec) == {1, 32} and all(v["flop_speedup"] > 1 for v in rec.values())


def test_result_round_trip_and_benchmark_check(steps):
    s = steps
    res = hci.Result.collect(s["params"], s["inp"], s["scores"], s["corr"], s["pruned"], s["ft"], s["audit"],
                             s["speed"], None, False, s["out"] / "none.json", 1.0, smoke=True)
    path = res.to_json(s["out"] / "r.json")
    back = hci.Result.from_json(path, benchmark=s["params"].benchmark)
    assert back == res and back.params == s["params"]
    assert res.summary_50["tap_acc"].keys() == set(s["inp"].devices)
    assert "gmm_minus_random_mean" in res.summary_50
    other = "v2" if s["params"].benchmark == "v1" else "v1"
    with pytest.raises(InvalidFileError, match=f"benchmark '{s['params'].benchmark}'.*'{other}' was asked"):
        hci.Result.from_json(path, benchmark=other)
    path.write_text(path.read_text().replace('"schema": 1', '"schema": 99'))
    with pytest.raises(InvalidFileError, match="schema"):
        hci.Result.from_json(path)


def test_report_reads_the_result(steps):
    from vitprune_lite import report

    s = steps
    res = hci.Result.collect(s["params"], s["inp"], s["scores"], s["corr"], s["pruned"], s["ft"], s["audit"],
                             s["speed"], None, False, s["out"] / "none.json", 1.0, smoke=True)
    back = hci.Result.from_json(res.to_json(s["out"] / "02_head_channel_importance.json"))
    text = report.section_importance(back)
    assert "### 02 Head and channel importance" in text and "| ToaSt + TCS |" in text
    assert report._m_toast_flops_split({"02": back})[1] in (report.HELD, report.NOT_HELD)  # exact FLOP counts
    text, verdict = report._m_tap_vs_peers({"02": back})
    assert verdict == report.NOT_RESOLVED and "no interval" in text  # notebook 02 holds point accuracies only
    assert {row[3] for row in report.claims_rows({"02": back}, [c for c in report.CLAIMS if c.get("uses") == ("02",)])} \
        == {report.NO_VERDICT}  # a smoke run


def test_sets_of_another_benchmark_are_refused():
    sets = {"default_feature_space": np.array("combined"), "benchmark": np.array("v2")}
    with pytest.raises(InvalidFileError, match="benchmark 'v2'.*'v1' was asked"):
        hci.check_sets(sets, "v1", "01_selected_sets.npz")
    assert "benchmark" not in hci.check_sets(sets, "v2")
    # files written before the benchmark was recorded were made on v1
    with pytest.raises(InvalidFileError, match="benchmark 'v1'"):
        hci.check_sets({"default_feature_space": np.array("combined")}, "v2")


def test_faithfulness_file_per_benchmark():
    v1 = hci.faithfulness_file(hci.Params())  # the default reads the stored v1 run, also on v2
    v2 = hci.faithfulness_file(hci.Params(faithfulness_benchmark=""))  # the run's own benchmark: v2
    assert v1.name == "tap_faithfulness.json" and v1.parent.name == "benchmarks"
    assert v2.name == "tap_faithfulness_v2.json" and v2.parent == v1.parent
    assert hci.faithfulness_file(hci.Params.preset("smoke")).parent.name == "results"


@pytest.mark.parametrize("field, value", [
    ("benchmark", "v3"), ("criteria", ("toast",)), ("criteria", ("tap_vits", "nope")), ("criteria", ("tap_gmm",)),
    ("ft_lr", 2.0),
    ("val_fraction", 0.0), ("probes", (1.5,)), ("tcs_fc2", (0.5, 1.0)), ("faithfulness", "quick"), ("faithfulness_benchmark", "v3"),
    ("devices", ("",)), ("metric_images", 1), ("lat_all_budgets", 1), ("tokens", True)])
def test_bad_params_are_refused(field, value):
    with pytest.raises(InvalidValueError, match=f"Params.{field}"):
        hci.Params(**{field: value})


def test_presets():
    assert hci.Params.preset("full") == hci.Params()
    assert hci.Params.preset("smoke", benchmark="v2").benchmark == "v2"
    assert hci.Params.preset("lab", ft_steps=10).ft_steps == 10
    with pytest.raises(InvalidValueError, match=r"\['ft_step'\].*accepted \[.*'ft_steps'"):
        hci.Params.preset("lab", ft_step=10)
    with pytest.raises(InvalidValueError, match="preset 'fast'"):
        hci.Params.preset("fast")
    # the full run's defaults are the notebook's previous full-run values
    p = hci.Params()
    assert (p.metric_images, p.sens_images, p.tokens, p.hsic_batch, p.alpha, p.ft_top, p.ft_steps, p.ft_batch,
            p.ft_lr, p.val_fraction, p.audit_batch, p.lat_rounds) == (640, 64, 32, 64, 1.1, 2, 30, 64, 3e-4, 0.1,
                                                                     128, 2)
    assert p.criteria == hci.CORE_CRITERIA and len(p.criteria) == 10 and p.test_images == 500
    assert dataclasses.replace(p, devices=("drone",)).devices == ("drone",)
    # extended: every criterion and test image, the rest as the full run
    ext = hci.Params.preset("extended")
    assert ext.criteria == hci.ALL_CRITERIA and ext.test_images == 0 and ext.lat_rounds == 3
    assert (ext.metric_images, ext.ft_top, ext.devices) == (p.metric_images, p.ft_top, p.devices)


def test_token_count_must_fit_the_model():
    with pytest.raises(InvalidValueError, match="Params.tokens = 146: accepted at most the model's 145 tokens"):
        hci.load(hci.Params.preset("smoke", tokens=146), sets=_committed_sets())


def test_devices_must_belong_to_the_benchmark():
    with pytest.raises(InvalidValueError, match="not devices of benchmark v2"):
        hci.load(hci.Params.preset("smoke", devices=("toaster",)), sets=_committed_sets())


def test_faithfulness_cli_default_keeps_v1_file(monkeypatch):
    """The command line's default output follows the benchmark, so a v2 run never overwrites v1's file."""
    from vitprune_lite.experiments import tap_faithfulness as tf

    seen = {}

    class Stop(Exception):
        pass

    def record(params, out, rerun):
        seen["out"] = out
        raise Stop  # nothing is run or written

    monkeypatch.setattr(tf, "load_or_run", record)
    with pytest.raises(Stop):
        tf.main(["--preset", "smoke", "--benchmark", "v2"])
    assert seen["out"] == tf.stored_path("v2") and seen["out"].name == "tap_faithfulness_v2.json"


def test_accuracy_figure_from_the_committed_result():
    """The stored run redrawn: TAP-ViTs' sources above, the other criteria below, a column per device and
    one for the mean, y-limits fitted to each row, one legend per row outside the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitprune_lite import methods, paths

    r = hci.Result.from_json(paths.data_dir() / "results" / "02_head_channel_importance.json")
    fig = hci.plot_accuracy_curves(r.params.criteria, r.budgets, r.results, r.dense["acc"], r.devices)
    try:
        fig.canvas.draw()
        n = len(r.devices)
        assert len(fig.axes) == 2 * (n + 1)
        axes = np.array(fig.axes).reshape(2, n + 1)
        assert [ax.get_title() for ax in axes[0]] == [*r.devices, "mean over devices"]
        top = [c for c in r.params.criteria if c in hci.TAP_SOURCE]
        bottom = ["tap_vits"] + [c for c in r.params.criteria if c not in hci.TAP_SOURCE]
        for row, crits in zip(axes, (top, bottom)):
            texts = [t.get_text() for t in row[-1].get_legend().get_texts()]
            assert texts == [*map(methods.label, crits), "dense model"]
            assert all(ax.get_legend() is None for ax in row[:-1])
            assert row[-1].get_legend().get_window_extent().x0 >= row[-1].get_window_extent().x1  # outside, right
            labels = [b["label"] for b in r.budgets]
            ys = [r.results[d][lab][c]["acc"] for d in r.devices for lab in labels for c in crits]
            ys += list(r.dense["acc"].values())
            lo, hi = row[0].get_ylim()
            assert all(ax.get_ylim() == (lo, hi) for ax in row)  # shared within the row
            assert lo <= min(ys) and hi >= max(ys) and hi - lo <= 1.3 * (max(ys) - min(ys)) + 0.03  # fitted
            mean = next(ln for ln in row[-1].lines if ln.get_label() == methods.label("tap_vits"))
            want = [np.mean([r.results[d][lab]["tap_vits"]["acc"] for d in r.devices]) for lab in labels]
            assert np.allclose(mean.get_ydata(), want)
        left, right = axes[0, 0].get_xlim()
        assert left > right  # from the largest share kept down to the smallest
        assert axes[1, 0].get_xlabel() == "share of block parameters kept"
        assert "private test accuracy" in axes[0, 0].get_ylabel()
    finally:
        plt.close(fig)
