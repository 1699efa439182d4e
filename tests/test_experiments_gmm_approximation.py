"""Notebook 01's experiment in-process at the smoke preset, on benchmarks v1 and v2."""
from __future__ import annotations

import json
import time

import matplotlib
import numpy as np
import pytest

from vitprune_lite import gmm
from vitprune_lite.errors import InvalidFileError, InvalidValueError
from vitprune_lite.experiments import gmm_approximation as ga

matplotlib.use("Agg")
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("field,value", [
    ("benchmark", "v3"), ("seed", -1), ("threads", 0), ("feature_spaces", ("vit_cls", "hog")),
    ("feature_spaces", ()), ("feature_spaces", ["vit_cls"]), ("default_feature_space", "hog"),
    ("combined_keep", 17), ("k_min", 0), ("k_max", 1), ("n_metric", 0), ("n_finetune", 10),
    ("covariance", "banded"), ("sample", 1), ("sample_temperature", 0.0), ("sample_temperatures", (1.0, -2.0)),
    ("audit_ks", (0, 2)), ("audit_ks", (2.5,)), ("audit_covariances", ("diag", "round")), ("pool_images", -1),
    ("private_train", True)])
def test_params_refuse_bad_values(field, value):
    kwargs = {field: value}
    if field == "k_max":
        kwargs["k_min"] = 2
    with pytest.raises(InvalidValueError, match=field):
        ga.Params(**kwargs)


def test_presets_and_reduced_runs():
    assert ga.Params.preset("full") == ga.Params() and not ga.Params().is_reduced()
    smoke = ga.Params.preset("smoke", benchmark="v2")
    assert smoke.benchmark == "v2" and smoke.pool_images == 1000 and smoke.n_metric == 64 and smoke.is_reduced()
    lab = ga.Params.preset("lab")
    assert lab.is_reduced() and lab.n_finetune <= lab.pool_images
    with pytest.raises(InvalidValueError, match="'nope'"):
        ga.Params.preset("nope")
    # OVERRIDES arrive from JSON / papermill with lists where the fields hold tuples
    assert ga.Params.preset("smoke", audit_ks=[2, 5], feature_spaces=["combined"]).audit_ks == (2, 5)


def test_load_refuses_a_pool_larger_than_the_benchmark(small_bench):
    with pytest.raises(InvalidValueError, match="pool_images = 241.*240"):
        ga.load(ga.Params(pool_images=241), bench=small_bench, model=object())
    setup = ga.load(ga.Params(pool_images=100, private_train=30, private_test=500), bench=small_bench, model=object())
    assert len(setup.pool_index) == 100 and set(setup.devices) == set(small_bench.specs)
    assert all(len(s["train"]) == 30 and len(s["test"]) == 40 for s in setup.private.values())


# ----------------------------------------------------------------------------- the experiment

@pytest.fixture(scope="module")
def v1_steps(tmp_path_factory):
    """Notebook 01's steps one by one at the smoke preset on v1, as the notebook calls them."""
    p = ga.Params.preset("smoke", benchmark="v1")
    t0 = time.perf_counter()
    setup = ga.load(p)
    emb = ga.embed(p, setup)
    fits = ga.fit_mixtures(p, setup, emb)
    sels = ga.select_sets(p, setup, emb, fits)
    quality = ga.selection_quality(p, setup, emb, sels)
    temps = ga.sampling_temperatures(p, setup, emb, fits, sels)
    audit = ga.privacy_audit(p, setup, emb, fits)
    sweep = ga.membership_sweep(p, setup, emb)
    sets_path = ga.save_sets(p, setup, sels, tmp_path_factory.mktemp("v1") / "sets.npz")
    result = ga.collect(p, setup, emb, fits, quality, temps, audit, sweep, time.perf_counter() - t0)
    return {"params": p, "setup": setup, "emb": emb, "fits": fits, "sels": sels, "quality": quality,
            "temps": temps, "audit": audit, "sweep": sweep, "sets_path": sets_path, "result": result}


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("v2") / "sets.npz"
    return ga.run(ga.Params.preset("smoke", benchmark="v2"), sets_path=path), path


def _check_result(r: ga.Result, image_bytes: int, n_devices: int) -> None:
    p = r.params
    assert r.smoke is True and r.benchmark == p.benchmark and r.pool["n"] == p.pool_images
    assert len(r.devices) == n_devices
    default = p.default_feature_space
    for d, dev in r.devices.items():
        assert dev["n_train"] == p.private_train and dev["n_test"] == p.private_test
        assert set(dev["spaces"]) == set(p.feature_spaces)
        for name, e in dev["spaces"].items():
            assert p.k_min <= e["k"] <= p.k_max and min(e["bic"].values()) == e["bic"][str(e["k"])]
            assert e["capacity_ratio"] <= gmm.MAX_PARAM_RATIO
            assert e["raw_bytes"] == dev["n_train"] * image_bytes
            assert 0 < e["upload_bytes"] < e["raw_bytes"] / 10
            for group in ("precision", "random_precision"):
                for s in ("metric", "finetune"):
                    assert all(0 <= v <= 1 for v in e[group][s].values()), (d, name, group, s)
                    assert e[group][s]["both"] <= min(e[group][s]["class"], e[group][s]["style"])
            assert 0 <= e["membership_auc"] <= 1 and 0 <= e["class_balance"]["metric"]["min_share"] <= 1
            assert {row["covariance_type"] for row in e["membership_sweep"]} == set(p.audit_covariances)
        # the uploaded mixture finds the device's classes better than a random public subset
        for name in ("vit_cls", default):
            e = dev["spaces"][name]
            assert e["precision"]["metric"]["class"] > e["random_precision"]["metric"]["class"] + 0.15, (d, name)
        e = dev["spaces"][default]  # and the default space its camera styles
        assert e["precision"]["metric"]["style"] > e["random_precision"]["metric"]["style"], d
        assert e["distance"][default]["mmd2"]["oracle"] < e["distance"][default]["mmd2"]["random"], d
    # at the smoke preset's few components the upload leaks little: AUC well below the guard's region
    aucs = [dev["spaces"][default]["membership_auc"] for dev in r.devices.values()]
    assert max(aucs) < 0.75 and np.mean(aucs) < 0.65


def test_v1_values(v1_steps):
    setup = v1_steps["setup"]
    h, w = setup.bench.public["test"].images.shape[1:3]
    _check_result(v1_steps["result"], h * w * 3, len(setup.bench.specs))
    # the sweep's risk grows with capacity: full covariances at the largest K leak more than diag at the smallest
    for (name, d), rows in v1_steps["sweep"].items():
        auc = {(r["covariance_type"], r["k"]): r["auc"] for r in rows}
        assert auc[("full", 10)] > auc[("diag", 2)], (name, d)


def test_v2_values(v2_run):
    result, _ = v2_run
    from vitprune_lite import data_v2

    assert result.benchmark == "v2"
    _check_result(result, data_v2.IMAGE_SIZE ** 2 * 3, len(data_v2.DEVICES))


def test_selected_sets_record_the_benchmark(v1_steps, v2_run):
    p = v1_steps["params"]
    for path, bench in ((v1_steps["sets_path"], "v1"), (v2_run[1], "v2")):
        sets = gmm.load_selected_sets(path, benchmark=bench, seed=0)
        assert str(sets["benchmark"]) == bench and str(sets["default_feature_space"]) == "combined"
        other = "v2" if bench == "v1" else "v1"
        with pytest.raises(InvalidFileError, match=f"benchmark '{bench}'.*'{other}' was asked"):
            gmm.load_selected_sets(path, benchmark=other)
    sets = gmm.load_selected_sets(v1_steps["sets_path"], benchmark="v1")
    for d in v1_steps["setup"].devices:
        for source in (*p.feature_spaces, "random"):
            metric, finetune = sets[f"{d}/{source}/metric"], sets[f"{d}/{source}/finetune"]
            assert len(metric) == p.n_metric and len(finetune) == min(p.n_finetune, p.pool_images)
            np.testing.assert_array_equal(finetune[:p.n_metric], metric)
            assert len(np.unique(finetune)) == len(finetune) and finetune.max() < p.pool_images


def test_result_round_trip_and_refusals(v1_steps, v2_run, tmp_path):
    r = v1_steps["result"]
    back = ga.Result.from_json(r.to_json(tmp_path / "r.json"), benchmark="v1")
    assert back.params == r.params and back.devices == r.devices and back == ga.Result.from_json(tmp_path / "r.json")
    v2_path = v2_run[0].to_json(tmp_path / "v2.json")
    with pytest.raises(InvalidFileError, match=r"v2\.json holds a run on benchmark 'v2', but 'v1' was asked"):
        ga.Result.from_json(v2_path, benchmark="v1")
    raw = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps({**raw, "schema": 0}))
    with pytest.raises(InvalidFileError, match="schema"):
        ga.Result.from_json(tmp_path / "old.json")
    del raw["devices"]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(InvalidFileError, match="malformed"):
        ga.Result.from_json(tmp_path / "bad.json")


def test_tables_and_plots(v1_steps):
    s = v1_steps
    p, setup = s["params"], s["setup"]
    assert len(ga.device_table(setup)) == 4 and ga.device_table(setup)[0]["classes"][0] in setup.bench.classes
    assert len(ga.upload_table(p, s["fits"])) == 4 * len(p.feature_spaces)
    assert len(ga.quality_table(s["quality"])) == 2 + 4 * len(p.feature_spaces)
    assert len(ga.temperature_lines(s["temps"])) == 1 + 4 * (2 + len(p.sample_temperatures))
    assert len(ga.audit_lines(s["audit"], s["fits"])) == 4 * len(p.feature_spaces)
    assert len(ga.summary_lines(s["result"])) == 1 + 4 * len(p.feature_spaces)
    import matplotlib.pyplot as plt

    figs = [ga.plot_bic(p, s["fits"]), ga.plot_samples(p, setup, s["emb"], s["fits"]),
            ga.plot_top_bottom(p, setup, s["sels"]), ga.plot_selection_quality(p, setup, s["quality"]),
            ga.plot_membership(p, setup, s["sweep"])]
    assert [len(f.axes) for f in figs[:1] + figs[3:]] == [len(p.feature_spaces), 3, 2]
    # image titles: v1 names as they are (7 letters), v2's family/fill shortened to both parts
    assert ga._short_class("diamond") == "diamond" and ga._short_class("triangle/h_stripes") == "tri.h_st"
    for f in figs:
        plt.close(f)


def test_command_line_refuses_a_bad_output_name(tmp_path):
    with pytest.raises(InvalidValueError, match=r"r\.txt.*\.json"):
        ga.main(["--preset", "smoke", "--out", str(tmp_path / "r.txt")])
    with pytest.raises(SystemExit):
        ga.main(["--preset", "nope"])
