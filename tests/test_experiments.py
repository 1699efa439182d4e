"""The experiments layer: parameters validated once, results that round-trip, values that hang together."""
from __future__ import annotations

import dataclasses

import json

import numpy as np
import pytest

from vitprune_lite.errors import InvalidFileError, InvalidValueError
from vitprune_lite.experiments import device_specificity as ds


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("field,value", [("benchmark", "v3"), ("budget_index", 5), ("seeds", ()),
                                         ("seeds", (0, -1)), ("ft_steps", -1), ("threads", 0), ("ft_lr", 0.0),
                                         ("val_fraction", 1.0), ("n_boot", True)])
def test_params_refuse_bad_values(field, value):
    with pytest.raises(InvalidValueError, match=field):
        ds.Params(**{field: value})


def test_presets():
    assert ds.Params.preset("full") == ds.Params()
    lab = ds.Params.preset("lab", threads=1)
    assert lab.seeds == (0,) and lab.threads == 1
    with pytest.raises(InvalidValueError, match="'nope'"):
        ds.Params.preset("nope")


# ----------------------------------------------------------------------------- the paired gap

def test_paired_gap_extremes_and_sign():
    a = {"x": np.ones((2, 50), bool), "y": np.ones((2, 30), bool)}
    b = {"x": np.zeros((2, 50), bool), "y": np.ones((2, 30), bool)}
    g = ds.paired_gap(a, b, n_boot=200)
    assert g["by_device"]["x"] == {"mean": 1.0, "lo": 1.0, "hi": 1.0}
    assert g["by_device"]["y"]["mean"] == 0.0
    assert g["mean"] == pytest.approx(0.5) and g["lo"] == g["hi"] == pytest.approx(0.5)
    assert ds.paired_gap(b, a, n_boot=200)["mean"] == pytest.approx(-0.5)


def test_paired_gap_interval_covers_a_null_difference():
    rng = np.random.default_rng(0)
    a = {d: rng.random((3, 400)) < 0.8 for d in "abcd"}
    b = {d: rng.random((3, 400)) < 0.8 for d in "abcd"}
    g = ds.paired_gap(a, b, n_boot=500)
    assert g["lo"] < 0 < g["hi"] and g["hi"] - g["lo"] < 0.1
    # Pairing: the same images for both models make a near-identical pair's interval narrow.
    c = {d: v.copy() for d, v in a.items()}
    c["a"][0, :4] = ~c["a"][0, :4]
    g2 = ds.paired_gap(a, c, n_boot=500)
    assert g2["hi"] - g2["lo"] < (g["hi"] - g["lo"]) / 4


def test_paired_gap_refuses_mismatched_seeds():
    with pytest.raises(InvalidValueError, match="same number of seeds"):
        ds.paired_gap({"x": np.ones((2, 5)), "y": np.ones((3, 5))}, {"x": np.ones((2, 5)), "y": np.ones((3, 5))})


# ----------------------------------------------------------------------------- a smoke run

@pytest.fixture(scope="module")
def smoke_result(small_bench):
    from vitprune_lite import models

    model, _ = models.load_base_model()  # v1's shipped model on a small v1 benchmark
    params = ds.Params.preset("smoke", benchmark="v1", devices=("night_cam", "phone"), seeds=(0, 1))
    return ds.run(params, bench=small_bench, model=model, progress=False)


def test_smoke_run_shapes_and_consistency(smoke_result):
    r = smoke_result
    assert r.rows == ["dense", "one_size_fits_all", "oracle:night_cam", "oracle:phone"]
    acc = np.asarray(r.acc)
    assert acc.shape == (2, 4, 2) and ((acc >= 0) & (acc <= 1)).all()
    assert (acc[0, 0] == acc[1, 0]).all()  # the dense model does not depend on the recovery seed
    m = r.matrix()
    diag = np.array([m[r.rows.index(f"oracle:{d}"), j] for j, d in enumerate(r.devices)])
    assert r.gap["mean"] == pytest.approx(float((diag - m[1]).mean()))
    assert r.gap["lo"] <= r.gap["mean"] <= r.gap["hi"]
    for name in r.rows[1:]:  # pruned to TAP's 50 % budget: fewer FLOPs than the dense model
        assert 0.3 < r.sizes[name]["flops_share"] < 0.9
        assert r.sizes[name]["block_param_share"] == pytest.approx(0.5, abs=0.02)


def test_result_round_trip_and_refusals(smoke_result, tmp_path):
    path = smoke_result.to_json(tmp_path / "r.json")
    back = ds.Result.from_json(path)
    assert back.params == smoke_result.params and back.acc == smoke_result.acc and back.gap == smoke_result.gap
    raw = json.loads(path.read_text())
    raw["schema"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(InvalidFileError, match="bad.json"):
        ds.Result.from_json(tmp_path / "bad.json")
    raw["schema"] = ds.SCHEMA_VERSION
    raw["acc"] = [[[0.5]]]
    (tmp_path / "shape.json").write_text(json.dumps(raw))
    with pytest.raises(InvalidFileError, match="shape"):
        ds.Result.from_json(tmp_path / "shape.json")


def test_plot_matrix(smoke_result):
    import matplotlib

    matplotlib.use("Agg")
    fig = ds.plot_matrix(smoke_result)
    assert len(fig.axes[0].texts) == smoke_result.matrix().size


# ----------------------------------------------------------------------------- notebook 00

from vitprune_lite.experiments import base_model as bm  # noqa: E402


@pytest.mark.parametrize("field,value", [("benchmark", "v0"), ("seed", -1), ("threads", 0), ("retrain", 1),
                                         ("public", (("train", 10),)), ("device_images", 1.5),
                                         ("cross_device", "huge"), ("cross_device_rerun", "no")])
def test_base_model_params_refuse_bad_values(field, value):
    with pytest.raises(InvalidValueError, match=field):
        bm.Params(**{field: value})


def test_wilson_interval():
    assert bm.wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert bm.wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    lo, hi = bm.wilson_interval(900, 1000)
    assert lo < 0.9 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.09 / 1000) ** 0.5, rel=0.05)
    assert np.diff(bm.wilson_interval(90, 100)) > np.diff(bm.wilson_interval(900, 1000))


@pytest.fixture(scope="module")
def nb00_v1():
    params = bm.Params.preset("smoke", benchmark="v1")
    bench = bm.load_benchmark(params)
    model, meta = bm.load_model(params, bench)
    return params, bench, model, meta


def test_base_model_smoke_v1(nb00_v1, tmp_path):
    params, bench, model, meta = nb00_v1
    assert len(bench.public["test"]) == 192 and all(len(s["test"]) == 48 for s in bench.devices.values())
    acc = bm.evaluate(params, bench, model)
    # The shipped v1 model is at 96-99 % on the full splits; a broken evaluation would be far off.
    assert acc["public_test"]["acc"] > 0.85 and acc["public_test"]["n"] == 192
    assert acc["public_test"]["lo"] <= acc["public_test"]["acc"] <= acc["public_test"]["hi"]
    assert sum(v["n"] for v in acc["by_class"].values()) == 192
    g = bm.galleries(params, bench)
    assert g["classes"]["images"].shape == (12, 32, 32, 3) and g["styles"]["images"].shape == (60, 32, 32, 3)
    assert len(g["devices"]["images"]) == 10 * len(bench.specs)
    result = bm.Result.collect(params, bench, model, meta, acc)
    assert result.model["tokens"] == 65 and result.benchmark["generator_version"] == "1"
    back = bm.Result.from_json(result.to_json(tmp_path / "r.json"))
    assert back.params == params and back.accuracy == result.accuracy


def test_cross_device_cached_by_params_and_checkpoint(nb00_v1, tmp_path, monkeypatch):
    params, bench, model, meta = nb00_v1
    monkeypatch.setenv("VITPRUNE_OUT", str(tmp_path))
    first, loaded = bm.cross_device(params, bench, model, progress=False)
    path = tmp_path / "data" / "results" / "00_cross_device.json"
    assert not loaded and path.exists() and len(first.inputs["checkpoint_sha256"]) == 64
    again, loaded = bm.cross_device(params, bench, model, progress=False)
    assert loaded and again.acc == first.acc and again.gap == first.gap
    # another parameter set is not served from the file: it runs (and replaces it)
    other = dataclasses.replace(params, cross_device_rerun=True)
    _, loaded = bm.cross_device(other, bench, model, progress=False)
    assert not loaded
    assert bm.cross_device(dataclasses.replace(params, cross_device=""), bench, model) is None
    result = bm.Result.collect(params, bench, model, meta, bm.evaluate(params, bench, model), first)
    assert result.cross_device["gap"] == first.gap and result.cross_device["block_param_share"] == pytest.approx(0.5, abs=0.02)
    from vitprune_lite import report

    text = report.section_base(bm.Result.from_json(result.to_json(tmp_path / "r.json")))
    assert "Cross-device check (4 devices" in text and "public test" in text


def test_base_model_v2_checkpoint():
    from vitprune_lite import data_v2, models, paths

    if not (paths.data_dir() / models.V2_CHECKPOINT).exists():
        pytest.skip("benchmark v2's checkpoint is not built (make train)")
    params = bm.Params.preset("smoke")
    bench = bm.load_benchmark(params)
    model, meta = bm.load_model(params, bench)
    assert meta["tokens"] == 145 and meta["data"]["generator_version"] == data_v2.GENERATOR_VERSION
    acc = bm.evaluate(params, bench, model)
    assert 0.6 < acc["public_test"]["acc"] <= 1.0  # far above chance (1/48) on fresh small splits
    g = bm.galleries(params, bench)
    assert g["classes"]["images"].shape == (48, 48, 48, 3) and g["styles"]["images"].shape == (48, 48, 48, 3)
