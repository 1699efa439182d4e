"""Notebook 02 at smoke parameters (runs after notebook 01's smoke test, which writes the sets)."""
from __future__ import annotations

import pytest

from conftest import run_smoke

pytestmark = [pytest.mark.slow, pytest.mark.notebook]


def test_02_head_channel_importance(nb_out):
    if not (nb_out / "data" / "results" / "01_selected_sets.npz").exists():
        run_smoke("01_", nb_out)  # run alone: make notebook 01's selected sets first
    res = run_smoke("02_", nb_out)
    from vitprune_lite.experiments import head_channel_importance as hci

    saved = hci.Result.from_json(nb_out / "data" / "results" / "02_head_channel_importance.json", benchmark="v2")
    assert saved.params == hci.Params.preset("smoke")
    assert res["smoke"] is True and res["benchmark"] == "v2" and res["params"]["benchmark"] == "v2"
    labels = [b["label"] for b in res["budgets"]]
    assert labels == ["90", "80", "70", "60", "50"]
    for d, per_budget in res["results"].items():
        for crit in res["params"]["criteria"]:
            flops = [per_budget[lab][crit]["flops"] for lab in labels]
            params = [per_budget[lab][crit]["params"] for lab in labels]
            assert all(a > b for a, b in zip(flops, flops[1:])), (d, crit, flops)  # tighter -> fewer
            assert flops[0] < res["dense"]["flops"] and all(a >= b for a, b in zip(params, params[1:]))
            assert all(0 <= per_budget[lab][crit]["acc"] <= 1 for lab in labels)
        # toast_tcs has toast's parameters but computes fewer channels
        assert per_budget["50"]["toast_tcs"]["params"] == per_budget["50"]["toast"]["params"]
        assert per_budget["50"]["toast_tcs"]["flops"] < per_budget["50"]["toast"]["flops"]
    for where, rep in res["tcs_audit"].items():
        s = rep["sample"]
        assert s["acc_batch1"] == s["acc_shuffled"] == s["acc_sorted"], where
        assert s["changed_shuffled"] == 0 and s["changed_sorted"] == 0, where
        assert set(rep["batch"]) == set(s)
    assert res["tcs_flops"]["tcs"] < res["tcs_flops"]["dense"]
    assert "tap_vits" in res["finetune"]["criteria"]
    for key, run in res["finetune"]["runs"].items():  # the standard recovery: keeps the better on validation
        d, crit = key.split("/")
        assert run["kept"] in ("pruned", "finetuned") and 0 <= run["test_acc"] <= 1
        assert res["results"][d]["50"][crit]["acc_recovered"] == run["test_acc"]
        if run["kept"] == "pruned":
            assert run["val_acc_finetuned"] < run["val_acc_pruned"]
    assert res["environment"]["threads"] >= 1
    # the faithfulness experiment ran at smoke (nothing to read in a fresh output folder): both variants
    # on every metric set, accuracies in [0, 1] with intervals around them
    faith = res["tap_faithfulness"]  # on v1 by default (its stored run), also when the notebook runs on v2
    assert faith["loaded"] is False and faith["params"]["benchmark"] == "v1"
    rows = faith["table"]
    assert {(r["set"], r["variant"]) for r in rows} == {(s, v) for s in ("gmm", "gmm_T4", "random", "oracle")
                                                         for v in ("reference", "project")}
    for r in rows:
        for stage in ("zero_shot", "recovered"):
            assert r[f"{stage}_lo"] <= r[stage] <= r[f"{stage}_hi"] and 0 <= r[stage] <= 1
            assert r[f"gap_{stage}_lo"] <= r[f"gap_{stage}"] <= r[f"gap_{stage}_hi"]
        assert r["in_class"] == 1.0 if r["set"] == "oracle" else 0 <= r["in_class"] <= 1
    for fig in ("02_head_importance", "02_mlp_channel_importance", "02_rank_correlation",
                "02_accuracy_vs_budget", "02_speedup_vs_flops", "02_tap_faithfulness_ratios",
                "02_tap_faithfulness_accuracy", "02_qk_vo_coupling", "02_layer_ratios"):
        assert (nb_out / "figures" / f"{fig}.png").stat().st_size > 1000
