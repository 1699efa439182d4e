"""README results section: generated from the typed results, never stale; rendering and the claims' verdicts."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from vitprune_lite import paths, report
from vitprune_lite.__main__ import main
from vitprune_lite.experiments import base_model as bm
from vitprune_lite.experiments import final_comparisons as fc
from vitprune_lite.experiments import gmm_approximation as ga
from vitprune_lite.experiments import head_channel_importance as hci
from vitprune_lite.experiments import latency_curve as lc

ENV = {"git_rev": "abc1234", "git_dirty": False, "threads": 2, "load_avg_1min": 1.25}


def _acc(a: float, n: int = 400) -> dict:
    return {"acc": a, "lo": a - 0.01, "hi": min(1.0, a + 0.01), "n": n}


# Notebook 00 as its file holds it: read through Result.from_dict, like the file.
R00 = {"params": {"benchmark": "v1", "seed": 0, "retrain": False, "train_epochs": 0, "public": [], "device_images": 0,
                  "threads": 2, "cross_device": "lab", "cross_device_rerun": False},
       "benchmark": {"generator_version": "1", "fingerprint": "x", "public": {"test": 2000}, "devices": {}},
       "model": {"params": 1000, "flops": 2_000_000, "tokens": 65},
       "accuracy": {"public_test": _acc(0.9, 2000), "by_style": {"clean": _acc(0.95)}, "by_class": {},
                    "devices": {"cam": _acc(0.875)}},
       "val_curve": [], "cross_device": None, "seconds": 1.0, "smoke": False, "environment": ENV, "schema": 1}


def r00(**changes) -> bm.Result:
    return dataclasses.replace(bm.Result.from_dict(copy.deepcopy(R00), "R00"), **changes)


def _space(k, auc, cls, rnd):
    return {"k": k, "upload_bytes": 100, "raw_bytes": 10_000, "membership_auc": auc,
            "precision": {"metric": {"class": cls, "style": 0.5}},
            "random_precision": {"metric": {"class": rnd, "style": 0.25}}}


def r01(auc_bot: float = 0.58, cls=(1.0, 0.5), rnd=(0.25, 0.25), n_metric: int = 64) -> ga.Result:
    devices = {"cam": {"spaces": {"combined": _space(3, 0.52, cls[0], rnd[0])}},
               "bot": {"spaces": {"combined": _space(4, auc_bot, cls[1], rnd[1])}}}
    return ga.Result(params=ga.Params(benchmark="v1"), smoke=False, seed=0, benchmark="v1",
                     parameters={"default_feature_space": "combined", "n_metric": n_metric}, pool={},
                     base_model_sha256=None, embed_seconds={}, sampling_temperature={}, devices=devices, seconds=1.0,
                     environment=ENV)


def _cell(acc, flops):
    return {"acc": acc, "flops": flops, "params": 10}


def r02(tap=(0.85, 0.60), toast_tcs=(0.95, 0.70), params=None, smoke=False) -> hci.Result:
    """Two budgets (90, 50), two devices; ``tap_vits`` and ``toast_tcs`` accuracies per budget."""
    def crit(i):
        return {"tap_vits": _cell(tap[i], (80, 50)[i]), "toast": _cell((0.80, 0.70)[i], (70, 60)[i]),
                "toast_tcs": _cell(toast_tcs[i], (65, 55)[i]), "random": _cell((0.5, 0.3)[i], (80, 50)[i]),
                "magnitude_l2": _cell((0.6, 0.4)[i], (80, 50)[i])}
    return hci.Result(params=params or hci.Params(benchmark="v1"), smoke=smoke, benchmark="v1", devices=["cam", "bot"],
                      feature_space="combined", budgets=[{"label": "90"}, {"label": "50"}],
                      dense={"params": 20, "flops": 100, "acc": {"cam": 0.9, "bot": 0.9}},
                      results={d: {"90": crit(0), "50": crit(1)} for d in ("cam", "bot")},
                      summary_50={"gmm_minus_random_mean": 0.02, "oracle_minus_gmm_mean": 0.01}, scoring={},
                      rank_correlation={}, finetune={}, tcs_audit={}, tcs_flops={"dense": 100, "tcs": 95},
                      tap_faithfulness={}, speedup_ratio_min={}, speedup_ratio_median={}, seconds=1.0, environment=ENV)


def r03(ratio: float = 0.8, pomt_iqr=(0.78, 0.82), tome_iqr=(1.0, 1.1), others=None, smoke=False) -> lc.Result:
    """POMT ``pomt(8)`` at ``ratio`` of dense (its per-round IQR ``pomt_iqr``), ToMe ``tome(4)`` matched."""
    methods = [{"key": "dense", "method": "dense", "ratio_iqr": [1.0, 1.0]},
               {"key": "pomt(8)", "method": "pomt", "ratio_iqr": list(pomt_iqr)},
               {"key": "tome(4)", "method": "tome", "ratio_iqr": list(tome_iqr)}] + (others or [])
    rows = [{"row": "dense", "config": "dense", "method": "dense", "test_acc": 0.9, "device_acc_mean": 0.9,
             "flops_ratio": 1.0, "ratio_vs_dense": 1.0},
            {"row": "POMT (chosen R)", "config": "pomt(8)", "method": "pomt", "test_acc": 0.88, "device_acc_mean": 0.87,
             "flops_ratio": 0.8, "ratio_vs_dense": ratio},
            {"row": "matched accuracy", "config": "tome(4)", "method": "tome", "test_acc": 0.88,
             "device_acc_mean": 0.87, "flops_ratio": 0.6, "ratio_vs_dense": 1.05}]
    return lc.Result(params=lc.Params(benchmark="v1"), benchmark="v1", smoke=smoke, seed=0, threads=1, n_tokens=65,
                     depth=4, load_avg_start=None, naive_vs_interleaved={}, curves=[], accuracy_proxy={},
                     pomt_choice={}, final_rows=rows, matched_accuracy={},
                     pomt_vs_tome_latency_at_matched_accuracy=ratio / 1.05, pomt_grid_matched=[],
                     slower_than_dense_batch1=[], methods=methods, method_latency={}, zero_overhead={},
                     timm_tome_batch1=[], fixed_cost_fraction={}, environment=ENV)


METHODS04 = ("tap_vits", "one_size_fits_all", "toast_tcs", "torch_pruning", "oracle")


def _gap(lo: float, hi: float) -> dict:
    return {"mean": (lo + hi) / 2, "lo": lo, "hi": hi, "by_device": {}}


def r04(accs=None, gaps=None, toast_gaps=None, flops=None) -> fc.Result:
    """Notebook 04 at its main budget ``50%`` on devices cam and bot.

    Args:
        accs: method -> accuracy on both devices.
        gaps: method -> (lo, hi) of TAP-ViTs minus it (None: no intervals).
        toast_gaps: peer -> (lo, hi) of ToaSt + TCS minus it (None: no intervals).
        flops: method -> FLOPs (dense: 100).
    """
    accs = accs or {"tap_vits": 0.95, "one_size_fits_all": 0.93, "toast_tcs": 0.94, "torch_pruning": 0.92,
                    "oracle": 0.97}
    flops = flops or {m: 50 for m in METHODS04}
    devices = ["cam", "bot"]
    aggregate = [{"method": m, "setting": "50%", "device": d, "acc": a} for m, a in accs.items() for d in devices]
    summary = [{"device": d, "budget": "50% params", "best": "tap_vits", **accs, "dense": 0.98} for d in devices]
    summary += [{"device": d, "budget": "90% latency", "budget_ms": 2.7, "best": "combined", "combined_plan": "tap 50%",
                 **{k: 0.9 for k in ("combined", "structure only", "tokens only")},
                 **{f"{k} ms": 2.5 for k in ("combined", "structure only", "tokens only")},
                 **{f"{k} met": 1.0 for k in ("combined", "structure only", "tokens only")}} for d in devices]
    overall = {k: {"acc": 0.9, "measured_met": 1.0, "measured_over_predicted": 0.95}
               for k in ("combined", "structure only", "tokens only")}
    return fc.Result(params=fc.Params(benchmark="v1"), smoke=False, seeds=[0, 1, 2], parameters={"devices": devices},
                     dense={"acc": {d: 0.98 for d in devices}, "ms_b1": 3.0, "ms_b32": 40.0, "flops": 100,
                            "params": 1000},
                     rows=[], aggregate=aggregate, per_budget={"50%": {m: {"flops": f} for m, f in flops.items()}},
                     main_budget="50%", combined=[], combined_overall=overall, planner_check={},
                     differences={} if gaps is None else {"50%": {m: _gap(*g) for m, g in gaps.items()}},
                     predictor={"validation": {"ratio": {"within_10": 0.4, "n": 20}}, "margin": 0.285},
                     summary=summary, reports={},
                     toast_differences={} if toast_gaps is None else {"50%": {m: _gap(*g)
                                                                            for m, g in toast_gaps.items()}},
                     environment=ENV)


def _verdict(results, measure):
    (claim,) = [c for c in report.CLAIMS if c["measure"] == measure]
    (row,) = report.claims_rows(results, [claim])
    return row[3]


def _row(results, measure):
    (claim,) = [c for c in report.CLAIMS if c["measure"] == measure]
    return report.claims_rows(results, [claim])[0]


# --------------------------------------------------------------------------- the committed README
def test_readme_section_matches_committed_results():
    root = paths.root()
    assert isinstance(report.load_results(root / "data" / "results")["00"], bm.Result)
    expected = report.render_repo(root)
    assert "![00_base_model](figures/00_base_model.png)" in expected
    assert report.readme_section(root / "README.md") == expected, (
        "README.md's results section is stale: run `python -m vitprune_lite report` (or `make report`)")
    assert report.update_readme(root / "README.md", write=False) is False


# --------------------------------------------------------------------------- loading
def test_load_results_reads_typed_results_and_names_refused_files(tmp_path):
    r00().to_json(tmp_path / "00_base_model.json")
    r01().to_json(tmp_path / "01_gmm_data_approximation.json")
    (tmp_path / "02_head_channel_importance.json").write_text(json.dumps({"smoke": False, "results": {}}))  # old layout
    (tmp_path / "03_latency_curve_profiling.json").write_text('{"a": [1, 2')  # truncated
    got = report.load_results(tmp_path)
    assert set(got) == {"00", "01", "02", "03"}  # no 04 file: absent
    assert got["00"] == r00() and got["01"] == r01()
    assert got["02"].file == "02_head_channel_importance.json"
    assert "not a notebook 02 result of schema 1" in got["02"].reason and "rerun notebook 02" in got["02"].reason
    assert "data/results/03_latency_curve_profiling.json is not valid JSON" in got["03"].reason
    assert str(tmp_path) not in got["02"].reason + got["03"].reason  # the README names files in the repository
    out = report.render(got)
    assert ("### 02 Head and channel importance\n\nThe results file `data/results/02_head_channel_importance.json` "
            "was not read:") in out
    assert "### 04 Final comparisons\n\nNo results yet: run notebook 04" in out
    assert "| public test | 90.0 % [89.0 %, 91.0 %] (n = 2,000) |" in out
    rows = {r[1]: r for r in report.claims_rows(got)}
    row = rows[[k for k in rows if "Outperforms existing pruning" in k][0]]
    assert row[2].startswith("– (results file 02_head_channel_importance.json refused") and row[3] == report.NOT_YET


# --------------------------------------------------------------------------- rendering
def test_md_table_shape_escaping_and_errors():
    out = report.md_table(["a", "b"], [[1, "x|y"]])
    assert out.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header has 2"):
        report.md_table(["a", "b"], [[1]])


def test_render_synthetic_00_01_is_deterministic_and_complete():
    res = {"00": r00(), "01": r01()}
    out = report.render(res)
    assert out == report.render(copy.deepcopy(res))
    assert "| public test | 90.0 % [89.0 %, 91.0 %] (n = 2,000) |" in out
    assert "| device cam, private test | 87.5 % [86.5 %, 88.5 %] (n = 400) |" in out
    assert "| cam | combined (default) | 3 | 100 / 10,000 | 100.0 % vs 25.0 % | 50.0 % vs 25.0 % | 0.520 |" in out
    assert "Metric set (64 public images) (benchmark v1) selected" in out
    assert "Source: `data/results/00_base_model.json`, git abc1234, 2 threads, load average 1.2." in out
    for nb, title in (("02", "Head and channel importance"), ("03", "Latency curve"), ("04", "Final comparisons")):
        assert f"### {nb} {title}" in out and f"No results yet: run notebook {nb}" in out
    assert "Smoke run" not in out and "Lab run" not in out


def test_render_with_no_results():
    out = report.render({})
    assert out.count("No results yet") == 5
    assert {r[3] for r in report.claims_rows({})} == {report.NOT_YET, report.NOT_COMPARABLE}


def test_render_marks_smoke_lab_and_other_reduced_runs():
    smoke = r00(smoke=True, params=bm.Params.preset("smoke", benchmark="v1"))
    assert report.run_kind(smoke) == "smoke" and report.run_kind(r00()) == "full"
    assert "**Smoke run: the tests' sizes, not the full results.**" in report.render({"00": smoke})
    lab00 = r00(smoke=True, params=bm.Params.preset("lab", benchmark="v1"))  # 00 flags every non-full run smoke
    assert "**Lab run: reduced sizes, not the full results.**" in report.render({"00": lab00})
    lab = r02(params=hci.Params.preset("lab", benchmark="v1"))  # a lab run is not flagged smoke by notebook 02
    assert not lab.smoke and report.reduced(lab) and not report.reduced(r02())
    assert "**Lab run: reduced sizes, not the full results.**" in report.render({"02": lab})
    other = r02(params=hci.Params(benchmark="v1", test_images=123))
    assert report.run_kind(other) == "reduced" and "**Reduced run:" in report.render({"02": other})
    for nb in report.NOTEBOOKS.values():  # run_kind asks every notebook's module for these presets
        assert {"full", "extended", "lab", "smoke"} <= set(nb.module.PRESETS)
    extended = r02(params=hci.Params.preset("extended", benchmark="v1"))  # larger than full: flagged, verdicts kept
    assert report.run_kind(extended) == "extended" and "Extended run: larger sizes" in report.render({"02": extended})
    assert "(smoke or lab run)" not in " ".join(r[2] for r in report.claims_rows({"02": extended}))
    assert "(smoke or lab run)" in " ".join(r[2] for r in report.claims_rows({"02": lab}))


def test_render_02_03_04_sections_use_the_method_labels():
    out = report.render({"02": r02(), "03": r03(), "04": r04(gaps={m: (0.01, 0.03) for m in METHODS04[1:]})})
    assert "| dense | 20 | 1.00 | 90.0 % |" in out
    assert "| TAP-ViTs | 10 | 0.50 | 60.0 % |" in out and "| ToaSt + TCS | 10 | 0.55 | 70.0 % |" in out
    assert "mean over 2 devices of benchmark v1." in out and "+2.0 points" in out
    assert "On the v1 benchmark's base model (65 tokens)." in out
    assert "| POMT (chosen R) | pomt(8) | 88.0 % | 87.0 % | 0.80 | 0.800 |" in out
    assert ("| device | budget | best | TAP-ViTs | one-size-fits-all | ToaSt + TCS | torch-pruning (magnitude) | oracle (private data) | dense |"
            in out)
    assert "| cam | 50% params | TAP-ViTs | 95.0 % | 93.0 % | 94.0 % | 92.0 % | 97.0 % | 98.0 % |" in out
    assert "one-size-fits-all +2.0 [+1.0, +3.0] points" in out
    assert "| cam | 90% latency (2.70 ms) | combined | 90.0 %, 2.50 ms, met 100 % |" in out


def test_label_falls_back_to_the_name():
    assert report.label("toast_tcs") == "ToaSt + TCS" and report.label("pomt(8)") == "pomt(8)"


def test_figures_main_inline_others_linked_unknown_ignored():
    out = report.render({"00": r00()}, ["00_base_model.png", "00_devices.png", "01_bic.png", "notes.txt"])
    assert "![00_base_model](figures/00_base_model.png)\n\nOther figures: [00_devices](figures/00_devices.png)." in out
    assert "01_bic" not in out  # no 01 results, no figures under its "no results yet"
    only_links = report.render({"00": r00()}, ["00_devices.png"])
    assert "Figures: [00_devices](figures/00_devices.png)." in only_links and "![" not in only_links


# --------------------------------------------------------------------------- verdict rules
@pytest.mark.parametrize("lo, hi, verdict", [(0.01, 0.03, report.HELD), (-0.01, 0.03, report.NOT_RESOLVED),
                                             (0.0, 0.03, report.NOT_RESOLVED), (-0.03, -0.01, report.NOT_HELD)])
def test_interval_verdict(lo, hi, verdict):
    assert report.interval_verdict(lo, hi) == verdict
    mirrored = {report.HELD: report.NOT_HELD, report.NOT_HELD: report.HELD}.get(verdict, verdict)
    assert report.interval_verdict(lo, hi, above=False) == mirrored
    assert report.interval_verdict(lo + 0.5, hi + 0.5, threshold=0.5) == verdict


def test_claims_name_known_measures_and_quote_real_text():
    for c in report.CLAIMS:
        assert c["measure"] is None or c["measure"] in report.MEASURES
        assert c["measure"] is not None or c.get("note")
        assert "METHODS.md" not in c["source"]
    with pytest.raises(ValueError, match="names measurement 'nope'"):
        report.claims_rows({}, [{"paper": "X", "source": "abstract", "claim": "c", "measure": "nope", "uses": ()}])


def test_private_upload_verdict_on_the_auc_threshold():
    assert _verdict({"01": r01()}, "private_upload") == report.HELD
    assert _verdict({"01": r01(auc_bot=0.7)}, "private_upload") == report.NOT_HELD
    assert "rests on the largest device's AUC against 0.60" in _row({"01": r01()}, "private_upload")[2]


@pytest.mark.parametrize("cls, rnd, n, verdict", [
    ((1.0, 0.5), (0.25, 0.25), 64, report.HELD),  # +50 points
    ((0.52, 0.52), (0.5, 0.5), 64, report.NOT_RESOLVED),  # +2 points on 64 images: within the noise
    ((0.3, 0.3), (0.5, 0.5), 640, report.NOT_HELD)])
def test_selection_verdict_follows_its_interval(cls, rnd, n, verdict):
    r = r01(cls=cls, rnd=rnd, n_metric=n)
    g = report.precision_gap(r)
    assert g["lo"] < g["mean"] < g["hi"] and g["mean"] == pytest.approx(sum(cls) / 2 - sum(rnd) / 2)
    assert _verdict({"01": r}, "selection") == verdict
    text = _row({"01": r, "02": r02()}, "selection")[2]
    assert "95 % interval" in text and "+2.0 points (notebook 02, no interval: not part of the verdict)" in text


def test_02_comparisons_without_intervals_are_never_wins():
    # TAP-ViTs and ToaSt + TCS far ahead of every other criterion and of dense: still no interval
    big = r02(tap=(0.99, 0.99), toast_tcs=(0.99, 0.99))
    for measure in ("tap_vs_peers", "toast_above_dense"):
        row = _row({"02": big}, measure)
        assert row[3] == report.NOT_RESOLVED and "hold no interval" in row[2]
    assert "at 2 of 2 budgets" in _row({"02": big}, "tap_vs_peers")[2]
    assert "ToaSt + TCS at 35.0 % FLOPs reduction: +9.0 points vs dense" in _row({"02": big}, "toast_above_dense")[2]
    assert _verdict({"02": big}, "toast_vs_baselines") == report.NOT_RESOLVED


def test_02_flops_split_rests_on_exact_counts():
    r = r02()
    assert _verdict({"02": r}, "toast_flops_split") == report.HELD  # 40 % vs 5 %
    small = dataclasses.replace(r, tcs_flops={"dense": 100, "tcs": 50})
    assert _verdict({"02": small}, "toast_flops_split") == report.NOT_HELD  # 40 % vs 50 %
    assert "FLOP counts are exact" in _row({"02": r}, "toast_flops_split")[2]


@pytest.mark.parametrize("ratio, iqr, verdict", [
    (0.80, (0.78, 0.82), report.HELD),
    (0.85, (0.80, 0.95), report.NOT_RESOLVED),  # the median alone would say a 15 % cut
    (0.97, (0.95, 0.99), report.NOT_HELD),  # faster than dense, but by less than the claimed 9 %
    (1.05, (1.02, 1.08), report.NOT_HELD)])
def test_pomt_latency_verdict_uses_the_interquartile_range(ratio, iqr, verdict):
    row = _row({"03": r03(ratio, pomt_iqr=iqr)}, "pomt_latency")
    assert row[3] == verdict and f"interquartile range of the per-round ratios {iqr[0]:.3f}-{iqr[1]:.3f}" in row[2]
    if ratio > 1:
        assert f"{100 * (ratio - 1):.1f} % higher than dense (slower)" in row[2]


@pytest.mark.parametrize("tome_iqr, extra, verdict", [
    ((1.02, 1.10), [], report.HELD),
    ((0.98, 1.10), [], report.NOT_RESOLVED),
    ((0.90, 0.98), [], report.NOT_HELD),
    ((0.90, 0.98), [{"key": "topk(0.9)", "method": "topk", "ratio_iqr": [1.01, 1.05]}], report.HELD)])
def test_others_slower_verdict(tome_iqr, extra, verdict):
    assert _verdict({"03": r03(tome_iqr=tome_iqr, others=extra)}, "others_slower") == verdict


def test_pomt_itself_is_not_an_other_method():
    slow_pomt = r03(1.05, pomt_iqr=(1.02, 1.08), tome_iqr=(0.9, 0.98))
    assert _verdict({"03": slow_pomt}, "others_slower") == report.NOT_HELD


@pytest.mark.parametrize("pomt_iqr, tome_iqr, verdict", [
    ((0.78, 0.82), (1.0, 1.1), report.HELD),
    ((0.95, 1.05), (1.0, 1.1), report.NOT_RESOLVED),
    ((1.15, 1.2), (1.0, 1.1), report.NOT_HELD)])
def test_pomt_vs_tome_compares_interquartile_ranges(pomt_iqr, tome_iqr, verdict):
    assert _verdict({"03": r03(pomt_iqr=pomt_iqr, tome_iqr=tome_iqr)}, "pomt_vs_tome") == verdict


def test_pomt_vs_tome_without_a_matched_tome_is_not_resolved():
    r = r03()
    r = dataclasses.replace(r, pomt_vs_tome_latency_at_matched_accuracy=None, final_rows=r.final_rows[:2])
    row = _row({"03": r}, "pomt_vs_tome")
    assert row[3] == report.NOT_RESOLVED and "no ToMe setting reached" in row[2]


@pytest.mark.parametrize("gap, verdict", [((0.005, 0.02), report.HELD), ((-0.005, 0.02), report.NOT_RESOLVED),
                                          ((-0.02, -0.005), report.NOT_HELD)])
def test_tap_vs_one_size_follows_its_interval(gap, verdict):
    row = _row({"04": r04(gaps={m: gap for m in METHODS04[1:]})}, "tap_vs_one_size")
    assert row[3] == verdict and f"[95 % interval {100 * gap[0]:+.1f}, {100 * gap[1]:+.1f}]" in row[2]


def test_tap_vs_one_size_states_the_class_prior_beside_its_verdict():
    r = r04(gaps={m: (0.005, 0.02) for m in METHODS04[1:]})
    assert "restricted to each device's classes" not in _row({"04": r}, "tap_vs_one_size")[2]  # older files: none
    prior = {"50%": {"restricted tap_vits minus restricted one_size_fits_all": {"mean": 0.004, "lo": -0.003, "hi": 0.011}}}
    row = _row({"04": dataclasses.replace(r, class_prior=prior)}, "tap_vs_one_size")
    assert "restricted to each device's classes (a class prior, not part of the verdict): +0.4 [-0.3, +1.1]" in row[2]
    assert row[3] == report.HELD  # the verdict still rests on the unrestricted comparison


def test_a_win_without_an_interval_is_not_a_win():
    r = r04(accs={"tap_vits": 0.982, "one_size_fits_all": 0.981, "toast_tcs": 0.97, "torch_pruning": 0.96,
                  "oracle": 0.99})
    row = _row({"04": r}, "tap_vs_one_size")
    assert "better on 2 of 2 devices" in row[2] and "hold no interval" in row[2] and row[3] == report.NOT_RESOLVED
    assert _verdict({"04": r}, "tap_vs_all") == report.NOT_RESOLVED
    assert _verdict({"04": r}, "toast_recovered") == report.NOT_RESOLVED


@pytest.mark.parametrize("gaps, verdict", [
    ({"one_size_fits_all": (0.01, 0.02), "toast_tcs": (0.01, 0.02), "torch_pruning": (0.01, 0.02)}, report.HELD),
    ({"one_size_fits_all": (0.01, 0.02), "toast_tcs": (-0.01, 0.02), "torch_pruning": (0.01, 0.02)},
     report.NOT_RESOLVED),
    ({"one_size_fits_all": (0.01, 0.02), "toast_tcs": (-0.03, -0.01), "torch_pruning": (0.01, 0.02)},
     report.NOT_HELD)])
def test_tap_vs_all_needs_every_interval_above_zero(gaps, verdict):
    row = _row({"04": r04(gaps={**gaps, "oracle": (-0.05, -0.01)})}, "tap_vs_all")
    assert row[3] == verdict and "TAP-ViTs minus one-size-fits-all" in row[2]


@pytest.mark.parametrize("toast_gaps, toast_flops, verdict", [
    ((0.01, 0.02), 45, report.HELD),  # more accurate at fewer FLOPs
    ((-0.01, 0.02), 45, report.NOT_RESOLVED),
    ((0.01, 0.02), 55, report.NOT_RESOLVED),  # more accurate, but at more FLOPs
    ((-0.03, -0.01), 50, report.NOT_HELD)])  # a peer is more accurate at the same FLOPs
def test_toast_recovered_weighs_accuracy_interval_and_flops(toast_gaps, toast_flops, verdict):
    flops = {**{m: 50 for m in METHODS04}, "toast_tcs": toast_flops}
    r = r04(toast_gaps={"one_size_fits_all": toast_gaps, "torch_pruning": toast_gaps}, flops=flops)
    row = _row({"04": r}, "toast_recovered")
    assert row[3] == verdict and "ToaSt + TCS minus one-size-fits-all" in row[2]


def test_combined_plan_means_have_no_interval():
    row = _row({"04": r04()}, "combined")
    assert row[3] == report.NOT_RESOLVED and "combined: 90.0 %, budget met 100 %" in row[2]


def test_smoke_and_lab_results_get_no_verdict():
    assert _verdict({"03": r03(smoke=True)}, "pomt_latency") == report.NO_VERDICT
    lab = r02(params=hci.Params.preset("lab", benchmark="v1"))
    assert _verdict({"02": lab}, "toast_flops_split") == report.NO_VERDICT
    assert "(smoke or lab run)" in _row({"02": lab}, "toast_flops_split")[2]
    # a smoke run of an unrelated notebook does not withhold the verdict
    assert _verdict({"00": r00(smoke=True), "03": r03()}, "pomt_latency") == report.HELD


# --------------------------------------------------------------------------- README update + CLI
README = "# t\n\nintro\n\n## Results\n\n{begin}\nold text\n{end}\n\n## Installing elsewhere\n\nend\n"


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README.format(begin=report.BEGIN, end=report.END))
    res = {"00": r00()}
    assert report.update_readme(path, res, write=False) is True
    assert "old text" in path.read_text()  # a check never writes
    assert report.update_readme(path, res) is True
    text = path.read_text()
    assert text.startswith("# t\n\nintro\n\n## Results\n\n" + report.BEGIN + "\n")
    assert text.endswith(report.END + "\n\n## Installing elsewhere\n\nend\n")
    assert report.readme_section(path) == report.render(res)
    assert report.update_readme(path, res) is False


@pytest.mark.parametrize("text", ["no markers", f"{report.END}\n{report.BEGIN}",
                                  f"{report.BEGIN}\n{report.BEGIN}\n{report.END}"])
def test_update_readme_refuses_bad_markers(tmp_path, text):
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(ValueError, match="exactly one"):
        report.update_readme(path, {})


def test_cli_report_check_and_write(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITPRUNE_ROOT", str(tmp_path))
    monkeypatch.setenv("VITPRUNE_OUT", str(tmp_path / "elsewhere"))  # must not redirect the README's input
    (tmp_path / "data" / "results").mkdir(parents=True)
    r00().to_json(tmp_path / "data" / "results" / "00_base_model.json")
    (tmp_path / "README.md").write_text(README.format(begin=report.BEGIN, end=report.END))
    assert main(["report", "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["report"]) == 0
    assert main(["report", "--check"]) == 0
    assert "| public test | 90.0 % [89.0 %, 91.0 %] (n = 2,000) |" in (tmp_path / "README.md").read_text()


def test_cli_report_names_a_refused_file_and_still_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITPRUNE_ROOT", str(tmp_path))
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "data" / "results" / "02_head_channel_importance.json").write_text('{"schema": 1, "params"')
    (tmp_path / "README.md").write_text(README.format(begin=report.BEGIN, end=report.END))
    assert main(["report"]) == 0
    assert "warning: not read: notebook 02 result data/results/02_head_channel_importance.json is not valid JSON" \
        in capsys.readouterr().err
    assert "The results file `data/results/02_head_channel_importance.json` was not read" in \
        (tmp_path / "README.md").read_text()


def test_run_times_recorded_rendered_and_refused(tmp_path):
    from vitprune_lite import reproduce
    from vitprune_lite.errors import InvalidFileError

    f = tmp_path / "run_times.json"
    assert reproduce.run_times(f) == {}
    reproduce.record_run_time("00_base_model", "v1", "lab", 24.4, path=f)
    reproduce.record_run_time("01_gmm_data_approximation", "v1", "lab", 61, path=f)
    reproduce.record_run_time("00_base_model", "v1", "full", 125.0, ["ft_steps"], path=f)
    reproduce.record_run_time("00_base_model", "v1", "lab", 30.0, path=f)  # a rerun replaces its entry
    times = reproduce.run_times(f)
    assert times["v1"]["lab"]["00_base_model"]["seconds"] == 30.0 and len(times["v1"]["lab"]) == 2
    out = report.section_run_times(times)
    assert "| notebook | full (v1) | lab (v1) |" in out
    assert "| 00_base_model | 2 min 05 s | 30 s |" in out and "| 01_gmm_data_approximation | - | 1 min 01 s |" in out
    assert "| **total** | 2 min 05 s | 1 min 31 s |" in out and "full (v1): ft_steps" in out
    assert "Not recorded yet" in report.section_run_times({})
    nb = tmp_path / "00_x.ipynb"  # an executed notebook: papermill's per-cell durations name the slow steps
    nb.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": "# title", "metadata": {"papermill": {"duration": 9.0}}},
        {"cell_type": "code", "source": ["x = 1\n", "y = 2"], "metadata": {"papermill": {"duration": 2.25}}},
        {"cell_type": "code", "source": "fast()", "metadata": {"papermill": {"duration": 0.2}}},
        {"cell_type": "code", "source": "slow()", "metadata": {"papermill": {"duration": 40.04}}}]}))
    steps = reproduce.slowest_cells(nb)
    assert steps == [{"cell": 3, "code": "slow()", "seconds": 40.0}, {"cell": 1, "code": "x = 1", "seconds": 2.2}]
    reproduce.record_run_time("02_x", "v2", "full", 43.0, path=f, steps=steps)
    assert reproduce.run_times(f)["v2"]["full"]["02_x"]["steps"][0]["code"] == "slow()"
    f.write_text('{"v1": {"lab": {"00_base_model": 12}}}')
    with pytest.raises(InvalidFileError, match="run_times.json: not a run-times file"):
        reproduce.run_times(f)


def test_flops_not_latency_counts_the_pruned_models_that_were_not_faster():
    from types import SimpleNamespace

    def model(flops, speedup):
        return {"flops": flops, "latency": {"batch1": {"speedup": speedup, "flop_speedup": 100 / flops}}}

    r = SimpleNamespace(dense={"flops": 100}, results={"night_cam": {"90": {"toast": model(80, 0.95),
                                                                             "random": model(90, 1.0)},
                                                                      "50": {"toast": model(50, 1.6)}}})
    text = report.flops_not_latency(r)
    assert "3 timed pruned models ran a median 1.00x faster" in text and "promised 1.25x" in text
    assert "2 of them had fewer FLOPs and were not faster" in text
    assert "ToaSt at 90 % for night_cam, has 0.80 of the dense FLOPs and runs at 1.05 of its latency" in text
    assert report.flops_not_latency(r, "batch32") == ""
