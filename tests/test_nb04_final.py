"""Notebook 04 at its smoke preset: every pipeline end to end, the combined plan, the summary."""
from __future__ import annotations

import shutil

import pytest

from conftest import run_smoke

pytestmark = [pytest.mark.slow, pytest.mark.notebook]


def test_04_final_comparisons(nb_out):
    from vitprune_lite import gmm, paths

    sets = nb_out / "data" / "results" / gmm.SELECTED_SETS
    if not sets.exists():  # run alone: use the committed selection instead of notebook 01's smoke output
        sets.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths.data_dir() / "results" / gmm.SELECTED_SETS, sets)
    res = run_smoke("04_", nb_out)
    assert res["smoke"] is True and res["environment"]["threads"] >= 1
    assert res["schema"] == 1 and res["params"]["benchmark"] == "v2" and res["params"]["max_devices"] == 1
    (d,) = res["parameters"]["devices"]
    methods = {r["method"] for r in res["rows"]}
    assert methods == {"dense", "tap_vits", "one_size_fits_all", "toast_tcs", "torch_pruning", "oracle",
                       "pomt", "tome", "topk"}
    dense = res["dense"]
    for r in res["rows"]:
        assert 0 <= r["acc"] <= 1 and r["ms_b1"] > 0 and r["ms_b32"] > 0
        if r["method"] != "dense":
            assert r["flops"] < dense["flops"]  # every method removes work
    # structured methods meet the same parameter budget (within rounding of heads for torch-pruning)
    struct = [r for r in res["rows"] if r["method"] in ("tap_vits", "one_size_fits_all", "toast_tcs", "oracle")]
    assert len({r["params"] for r in struct if r["method"] != "toast_tcs"}) >= 1
    for r in struct:
        assert r["params"] < dense["params"]
    # recovery was chosen on validation, never on test: every structured report says what it kept
    for key, rep in res["reports"].items():
        if key.split("|")[0] in ("tap_vits", "one_size_fits_all", "toast_tcs", "torch_pruning", "oracle"):
            assert rep["kept"] in ("pruned", "finetuned") and rep["n_val"] > 0
    # the combined plan: one row per kind and latency budget; it is never worse on validation
    kinds = {}
    for c in res["combined"]:
        kinds.setdefault(c["budget_share"], {})[c["kind"]] = c
    assert set(kinds) == set(res["parameters"]["latency_budgets"])
    for per in kinds.values():
        assert set(per) == {"combined", "structure only", "tokens only"}
        if per["combined"]["predicted_met"]:
            assert per["combined"]["val_acc"] >= max(per["structure only"]["val_acc"] if per["structure only"]["predicted_met"] else 0,
                                                     per["tokens only"]["val_acc"] if per["tokens only"]["predicted_met"] else 0)
    # the summary names a best method per device and budget
    assert {s["budget"] for s in res["summary"]} == {"50% params", *(f"{round(100 * b)}% latency"
                                                                      for b in res["parameters"]["latency_budgets"])}
    for s in res["summary"]:
        if s["budget"].endswith("latency"):  # the winner met the budget (measured) in most seeds
            assert s["best"] == "none met the budget" or s[f"{s['best']} met"] >= 0.5
    assert set(res["combined_overall"]) == {"combined", "structure only", "tokens only"}
    # the planner's predictor: checked on held-out plans (the smoke count), its margin a quantile of their errors
    pred = res["predictor"]
    errors = sorted(abs(r["ratio_err"]) for r in pred["validation"]["rows"])
    assert pred["validation"]["ratio"]["n"] == len(errors) == 4
    assert errors[0] <= pred["margin"] <= errors[-1]
    for c in res["combined"]:
        assert c["measured_ratio"] > 0 and c["predicted_ratio"] > 0
        # stated in the dense milliseconds of the latency section: the budget's unit
        assert c["measured_ms"] == pytest.approx(c["measured_ratio"] * dense["ms_b1"])
        assert c["budget_ms"] == pytest.approx(c["budget_share"] * dense["ms_b1"])
        assert c["measured_met"] == (c["measured_ratio"] <= c["budget_share"])
        if c["predicted_met"]:  # chosen with the margin: predicted within the budget less the margin
            assert c["predicted_ratio"] <= c["budget_share"] * (1 - pred["margin"]) + 1e-9
    # TAP-ViTs against every structured method, with intervals that bracket the difference of the means
    accs = {p["method"]: p["acc"] for p in res["aggregate"] if p["setting"] == "50%"}
    for other, g in res["differences"]["50%"].items():
        assert g["lo"] <= g["mean"] <= g["hi"]
        assert g["mean"] == pytest.approx(accs["tap_vits"] - accs[other])
    for fig in ("04_pareto", "04_predicted_vs_measured"):
        assert (nb_out / "figures" / f"{fig}.png").stat().st_size > 1000
