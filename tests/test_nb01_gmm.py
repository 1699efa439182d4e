"""Notebook 01 at smoke parameters: results JSON, selected index sets, figures."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import run_smoke
from vitprune_lite import data_v2, gmm
from vitprune_lite.errors import InvalidFileError
from vitprune_lite.experiments import gmm_approximation as ga

pytestmark = [pytest.mark.slow, pytest.mark.notebook]

DEVICES = {d.name for d in data_v2.DEVICES}  # the notebooks' default benchmark
SPACES = {"vit_cls", "pixel_stats", "combined"}


@pytest.fixture(scope="module")
def nb01(nb_out):
    return run_smoke("01_", nb_out)


def test_01_results(nb01):
    res = nb01
    assert res["smoke"] is True and res["seed"] == 0 and res["benchmark"] == "v2"
    assert res["params"] == {**res["params"], "pool_images": 1000, "private_train": 160, "private_test": 80}
    assert res["environment"]["threads"] >= 1
    params = res["parameters"]
    assert set(params["feature_spaces"]) == SPACES and params["default_feature_space"] == "combined"
    assert set(res["devices"]) == DEVICES
    for d, dev in res["devices"].items():
        assert set(dev["spaces"]) == SPACES
        for name, e in dev["spaces"].items():
            assert 2 <= e["k"] <= 10 and str(e["k"]) in e["bic"]
            assert min(e["bic"].values()) == e["bic"][str(e["k"])]
            assert e["capacity_ratio"] <= gmm.MAX_PARAM_RATIO
            assert 0 < e["upload_bytes"] < e["raw_bytes"] / 10
            assert e["raw_bytes"] == dev["n_train"] * data_v2.IMAGE_SIZE ** 2 * 3
            for group in ("precision", "random_precision"):
                for s in ("metric", "finetune"):
                    assert set(e[group][s]) == {"class", "style", "both"}
                    assert all(0 <= v <= 1 for v in e[group][s].values())
            assert 0 <= e["membership_auc"] <= 1
            assert 0 <= e["nearest_record"]["closer_to_members"] <= 1
            for ev in SPACES:
                for metric in ("mmd2", "frechet"):
                    assert set(e["distance"][ev][metric]) == {"selected", "selected_finetune", "random", "oracle"}
                    assert all(math.isfinite(v) for v in e["distance"][ev][metric].values())
            assert 0 <= e["class_balance"]["metric"]["min_share"] <= 1
            covs = {r["covariance_type"] for r in e["membership_sweep"]}
            assert covs == {"diag", "full"}


#: What each feature space describes: the ViT's CLS features the class, pixel statistics the
#: camera style (on v2, at the smoke sizes, pixel statistics alone pick classes no better than
#: random: 19 % against 28 % on drone), the default combination both.
CAPTURES = {"vit_cls": ("class", "both"), "pixel_stats": ("style",), "combined": ("class", "style", "both")}


def test_01_selection_beats_random(nb01):
    assert nb01["parameters"]["default_feature_space"] == "combined"
    for d, dev in nb01["devices"].items():
        for name, e in dev["spaces"].items():
            for s in ("metric", "finetune"):
                for what in CAPTURES[name]:
                    if s == "finetune" and what == "style":
                        continue  # 640 of a 1,000-image pool: close to the pool's own style mix
                    assert e["precision"][s][what] > e["random_precision"][s][what], (d, name, s, what)


def test_01_selected_sets_file(nb01, nb_out):
    path = nb_out / "data" / "results" / gmm.SELECTED_SETS
    sets = gmm.load_selected_sets(path, benchmark="v2", seed=0)
    with pytest.raises(InvalidFileError, match="'v1' was asked"):
        gmm.load_selected_sets(path, benchmark="v1")
    assert str(sets["default_feature_space"]) == "combined"
    n_metric, n_finetune = nb01["parameters"]["n_metric"], nb01["parameters"]["n_finetune"]
    pool_n = nb01["pool"]["n"]
    for d in DEVICES:
        for source in SPACES | {"random"}:
            metric, finetune = sets[f"{d}/{source}/metric"], sets[f"{d}/{source}/finetune"]
            assert metric.dtype == np.int64 and len(metric) == n_metric and len(finetune) == min(n_finetune, pool_n)
            np.testing.assert_array_equal(finetune[:n_metric], metric)
            assert len(np.unique(finetune)) == len(finetune) and 0 <= finetune.min() and finetune.max() < pool_n
    assert len(sets) == 3 + len(DEVICES) * len(SPACES | {"random"}) * 2


def test_01_result_reads_back(nb01, nb_out):
    result = ga.Result.from_json(nb_out / "data" / "results" / "01_gmm_data_approximation.json", benchmark="v2")
    assert result.params == ga.Params.preset("smoke") and result.seconds > 0
    assert result.devices == nb01["devices"]


def test_01_figures(nb01, nb_out):
    for fig in ("01_bic", "01_samples_vs_private", "01_top_bottom", "01_selection_quality", "01_membership",
                "01_device_cloud_flow"):
        assert (nb_out / "figures" / f"{fig}.png").stat().st_size > 1000
