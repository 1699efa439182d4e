"""TAP-ViTs reference vs project on GMM / sampled / random / oracle metric sets: parameters,
coverage, layer ratios, accuracies and their intervals, the result file, the figures."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitprune_lite.errors import InvalidFileError, InvalidValueError
from vitprune_lite.experiments import tap_faithfulness as tf

DEVICES = ("night_cam", "phone")


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("field,value", [
    ("benchmark", "v3"), ("budget_index", 5), ("budget_index", True), ("seeds", ()), ("seeds", (0, -1)),
    ("devices", "phone"), ("n_metric", 1), ("ft_steps", -1), ("threads", 0), ("ft_lr", 0.0), ("val_fraction", 1.0),
    ("n_boot", True), ("feature_space", "sift"), ("combined_keep", 17), ("covariance", "banded"), ("k_max", 1),
    ("temperatures", (0.0,)), ("temperatures", (float("inf"),)), ("temperatures", (1.0, 1)),
])
def test_params_refuse_bad_values(field, value):
    with pytest.raises(InvalidValueError, match=f"Params.{field}"):
        tf.Params(**{field: value})


def test_presets_and_set_names():
    assert tf.Params.preset("full") == tf.Params()
    smoke = tf.Params.preset("smoke", benchmark="v1")
    assert smoke.benchmark == "v1" and smoke.seeds == (0,) and smoke.threads == 1
    with pytest.raises(InvalidValueError, match="'nope'"):
        tf.Params.preset("nope")
    with pytest.raises(InvalidValueError, match="Params.k_max"):  # overrides are validated too
        tf.Params.preset("smoke", k_min=5)
    assert tf.set_names(tf.Params()) == ["gmm", "gmm_T1", "gmm_T4", "gmm_T16", "random", "oracle"]
    assert tf.set_names(tf.Params(temperatures=())) == ["gmm", "random", "oracle"]
    assert tf.set_names(tf.Params(temperatures=(0.5,))) == ["gmm", "gmm_T0.5", "random", "oracle"]


def test_coverage_counts():
    labels = np.array([0, 0, 0, 1, 5, 7, 7, 2])
    c = tf.coverage(labels, (0, 1, 2, 3), ("a", "b", "c", "d", "e", "f", "g", "h"))
    assert c["n"] == 8 and c["counts"] == {"a": 3, "b": 1, "c": 1, "d": 0}
    assert c["in_class"] == pytest.approx(5 / 8) and c["min_count"] == 0 and c["min_share"] == 0.0
    even = tf.coverage(np.array([0, 1, 1, 0]), (0, 1), ("a", "b"))
    assert even["in_class"] == 1.0 and even["min_count"] == 2 and even["min_share"] == 1.0
    with pytest.raises(InvalidValueError, match="non-empty"):
        tf.coverage(np.array([], dtype=int), (0,), ("a",))


# ----------------------------------------------------------------------------- a smoke run

@pytest.fixture(scope="module")
def smoke(small_bench):
    from vitprune_lite import models

    model, _ = models.load_base_model()  # v1's shipped model on the small v1 benchmark
    params = tf.Params.preset("smoke", benchmark="v1", devices=DEVICES)
    return tf.run(params, bench=small_bench, model=model, progress=False), small_bench


def test_unknown_device_refused_before_any_work(small_bench):
    with pytest.raises(InvalidValueError, match="Params.devices"):
        tf.run(tf.Params.preset("smoke", devices=("toaster",)), bench=small_bench, model=object(), progress=False)


def test_metric_sets_and_their_coverage(smoke):
    r, bench = smoke
    n_metric = r.params.n_metric
    assert r.devices == list(DEVICES) and r.sets == ["gmm", "gmm_T4", "random", "oracle"]
    for d in r.devices:
        assert 2 <= r.uploads[d]["k"] <= r.params.k_max and r.uploads[d]["capacity_ratio"] <= 1.0
        for name in r.sets:
            for part in ("metric", "finetune"):
                c = r.coverage[d][name][part]
                assert 0 <= c["in_class"] <= 1 and 0 <= c["min_share"] <= 1
                assert set(c["counts"]) == {bench.classes[k] for k in bench.specs[d].classes}
                assert c["min_count"] == min(c["counts"].values())
                assert sum(c["counts"].values()) == round(c["in_class"] * c["n"])
            assert r.coverage[d][name]["metric"]["n"] == n_metric
        # The oracle is the device's own data: every image is of one of its classes.
        assert r.coverage[d]["oracle"]["metric"]["in_class"] == 1.0
        assert r.coverage[d]["oracle"]["finetune"]["in_class"] == 1.0
        assert r.coverage[d]["oracle"]["finetune"]["n"] == len(bench.devices[d]["train"])
        assert r.coverage[d]["oracle"]["overlap_with_top"] is None
        assert r.coverage[d]["gmm"]["overlap_with_top"] == 1.0
        assert 0 <= r.coverage[d]["random"]["overlap_with_top"] <= 1
        # Sampling at T = 4 draws a different metric set than the top of the ranking.
        assert r.coverage[d]["gmm_T4"]["overlap_with_top"] < 1.0


def test_layer_ratios(smoke):
    r, _ = smoke
    target = {"mlp": r.budget["mlp_keep"], "attn": r.budget["attn_keep"]}
    differs = False
    for d in r.devices:
        for name in r.sets:
            ref, proj = r.ratios[d][name]["reference"], r.ratios[d][name]["project"]
            for kind in ("mlp", "attn"):
                for v in (ref, proj):
                    assert len(v[kind]) == 6 and all(0 <= x <= 1 for x in v[kind])
                    assert all(k >= 0 for k in v[f"kl_{kind}"])
                # The project meets the budget exactly; the reference clips without redistributing,
                # so its mean can only fall below it.
                assert np.mean(proj[kind]) == pytest.approx(target[kind], abs=1e-9)
                assert np.mean(ref[kind]) <= target[kind] + 1e-9
                differs |= not np.allclose(ref[kind], proj[kind], atol=1e-3)
    assert differs, "reference and project ratios agree on every block of every set"


def test_accuracies_intervals_and_sizes(smoke):
    r, _ = smoke
    share = r.budget["block_param_share"]
    for s in tf.STAGES:
        for name in r.sets:
            by_variant = {}
            for v in tf.VARIANTS:
                per_dev = [r.acc[s][name][v][d] for d in r.devices]
                assert all(len(a) == 1 and 0 <= a[0] <= 1 for a in per_dev)
                by_variant[v] = np.array([np.mean(a) for a in per_dev])
                i = r.interval[s][name][v]
                assert i["mean"] == pytest.approx(by_variant[v].mean())
                assert 0 <= i["lo"] <= i["mean"] <= i["hi"] <= 1
            g = r.gap[s][name]
            assert g["mean"] == pytest.approx(float((by_variant["reference"] - by_variant["project"]).mean()))
            assert g["lo"] <= g["mean"] <= g["hi"]
            for d in r.devices:
                assert g["by_device"][d]["mean"] == pytest.approx(
                    r.acc[s][name]["reference"][d][0] - r.acc[s][name]["project"][d][0])
    for name in r.sets:
        for d in r.devices:
            proj, ref = r.sizes[name]["project"][d], r.sizes[name]["reference"][d]
            # Allocated counts meet the share of block weights (norms and biases aside); floor counts
            # of ratios that average at most the target can only keep fewer.
            assert proj["block_param_share"] == pytest.approx(share, abs=0.02)
            assert ref["block_param_share"] <= proj["block_param_share"] + 1e-9
            assert 0.2 < ref["flops_share"] < 0.9 and 0.2 < proj["flops_share"] < 0.9
            assert all(k in ("finetuned", "pruned") for k in r.kept[name]["project"][d])
    assert all(0 <= a <= 1 for a in r.dense.values())
    rows = r.table()
    assert len(rows) == len(r.sets) * len(tf.VARIANTS)
    assert rows[0]["set"] == "gmm" and rows[0]["variant"] == "reference"
    assert rows[0]["recovered"] == r.interval["recovered"]["gmm"]["reference"]["mean"]


def test_result_round_trip_and_refusals(smoke, tmp_path):
    r, _ = smoke
    path = r.to_json(tmp_path / "r.json")
    back = tf.Result.from_json(path)
    assert back == r
    raw = json.loads(path.read_text())
    raw["schema"] = 99
    (tmp_path / "schema.json").write_text(json.dumps(raw))
    with pytest.raises(InvalidFileError, match="schema.json"):
        tf.Result.from_json(tmp_path / "schema.json")
    raw["schema"] = tf.SCHEMA_VERSION
    raw["acc"]["recovered"]["gmm"]["project"]["phone"] = [0.5, 0.5]  # two seeds where the run had one
    (tmp_path / "seeds.json").write_text(json.dumps(raw))
    with pytest.raises(InvalidFileError, match="seeds.json.*acc\\[recovered\\]\\[gmm\\]\\[project\\]\\[phone\\]"):
        tf.Result.from_json(tmp_path / "seeds.json")
    del raw["ratios"]
    (tmp_path / "missing.json").write_text(json.dumps(raw))
    with pytest.raises(InvalidFileError, match="missing.json"):
        tf.Result.from_json(tmp_path / "missing.json")


def test_figures(smoke):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, _ = smoke
    fig = tf.plot_ratios(r, "phone")
    assert len(fig.axes) == 2 * len(r.sets)
    assert len(fig.axes[0].lines) == len(tf.VARIANTS) + 1  # two variants and the budget line
    with pytest.raises(InvalidValueError, match="'toaster'"):
        tf.plot_ratios(r, "toaster")
    fig2 = tf.plot_accuracy(r)
    assert len(fig2.axes) == 2
    plt.close("all")


def test_cli_refuses_a_non_json_out(tmp_path):
    with pytest.raises(InvalidValueError, match="--out"):
        tf.main(["--preset", "smoke", "--out", str(tmp_path / "r.txt")])


def test_load_or_run_reads_only_a_run_of_the_same_parameters_and_checkpoint(smoke, tmp_path):
    import dataclasses

    from vitprune_lite.experiments import _params

    r, _ = smoke
    calls = []

    def fake_run(p):
        calls.append(p)
        return dataclasses.replace(r, params=p, inputs={})

    path = tmp_path / "cache.json"
    first, loaded = _params.load_or_run(r.params, path, fake_run, tf.Result.from_json)
    assert not loaded and len(calls) == 1 and path.exists()
    assert first.inputs["checkpoint_sha256"] == _params.checkpoint_digest(r.params)
    again, loaded = _params.load_or_run(r.params, path, fake_run, tf.Result.from_json)
    assert loaded and len(calls) == 1 and again == first
    other = dataclasses.replace(r.params, n_boot=r.params.n_boot + 1)  # other parameters: runs
    _, loaded = _params.load_or_run(other, path, fake_run, tf.Result.from_json)
    assert not loaded and len(calls) == 2 and tf.Result.from_json(path).params == other
    raw = json.loads(path.read_text())
    raw["inputs"]["checkpoint_sha256"] = "0" * 64  # made from another checkpoint: runs
    path.write_text(json.dumps(raw))
    _, loaded = _params.load_or_run(other, path, fake_run, tf.Result.from_json)
    assert not loaded and len(calls) == 3
    _, loaded = _params.load_or_run(other, path, fake_run, tf.Result.from_json, rerun=True)
    assert not loaded and len(calls) == 4


def test_summary_markdown_follows_the_intervals(smoke):
    r, _ = smoke
    text = tf.summary_markdown(r)
    for n in r.sets:
        line = next(l for l in text.splitlines() if l.startswith(f"- **{n}**"))
        zero, recovered = line.split("zero-shot")[1].split("; after recovery")
        for part, g in ((zero, r.gap["zero_shot"][n]), (recovered, r.gap["recovered"][n])):
            want = "reference better" if g["lo"] > 0 else "project better" if g["hi"] < 0 else "not resolved"
            assert part.rstrip(".").endswith(want)
    assert tf._compare({"lo": 0.6, "hi": 0.7}, {"lo": 0.4, "hi": 0.5}) == "above"
    assert tf._compare({"lo": 0.2, "hi": 0.3}, {"lo": 0.4, "hi": 0.5}) == "below"
    assert tf._compare({"lo": 0.45, "hi": 0.7}, {"lo": 0.4, "hi": 0.5}).startswith("not resolved")
