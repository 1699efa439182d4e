"""README results section: generated from the JSON, never stale, rendering and claims logic."""
from __future__ import annotations

import copy

import pytest

from vitprune_lite import paths, report
from vitprune_lite.__main__ import main

ENV = {"git_rev": "abc1234", "git_dirty": False, "threads": 2, "load_avg_1min": 1.25}

def _acc(a: float, n: int = 400) -> dict:
    return {"acc": a, "lo": a - 0.01, "hi": min(1.0, a + 0.01), "n": n}


R00 = {"params": {"benchmark": "v1", "seed": 0, "retrain": False, "train_epochs": 0, "public": [], "device_images": 0,
                  "threads": 2, "cross_device": "lab", "cross_device_rerun": False},
       "benchmark": {"generator_version": "1", "fingerprint": "x", "public": {"test": 2000}, "devices": {}},
       "model": {"params": 1000, "flops": 2_000_000, "tokens": 65},
       "accuracy": {"public_test": _acc(0.9, 2000), "by_style": {"clean": _acc(0.95)}, "by_class": {},
                    "devices": {"cam": _acc(0.875)}},
       "val_curve": [], "cross_device": None, "seconds": 1.0, "smoke": False, "environment": ENV, "schema": 1}


def _space(k, auc, cls, rnd):
    return {"k": k, "upload_bytes": 100, "raw_bytes": 10_000, "membership_auc": auc,
            "precision": {"metric": {"class": cls, "style": 0.5}},
            "random_precision": {"metric": {"class": rnd, "style": 0.25}}}


R01 = {"smoke": False, "parameters": {"default_feature_space": "combined", "n_metric": 64},
       "devices": {"cam": {"spaces": {"combined": _space(3, 0.52, 1.0, 0.25)}},
                   "bot": {"spaces": {"combined": _space(4, 0.58, 0.5, 0.25)}}},
       "environment": ENV}


def _cell(acc, flops):
    return {"acc": acc, "flops": flops, "params": 10}


R02 = {"smoke": False, "budgets": [{"label": "90"}, {"label": "50"}],
       "dense": {"params": 20, "flops": 100, "acc": {"cam": 0.9, "bot": 0.9}},
       "results": {d: {"90": {"tap_gmm": _cell(0.85, 80), "toast": _cell(0.80, 70), "random": _cell(0.5, 80)},
                       "50": {"tap_gmm": _cell(0.60, 50), "toast": _cell(0.70, 60), "random": _cell(0.3, 50)}}
                   for d in ("cam", "bot")},
       "summary_50": {"gmm_minus_random_mean": 0.02, "oracle_minus_gmm_mean": 0.01},
       "tcs_flops": {"dense": 100, "tcs": 95}, "environment": ENV}


def _r03(ratio):
    return {"smoke": False, "environment": ENV,
            "final_rows": [{"row": "dense", "config": "-", "test_acc": 0.9, "device_acc_mean": 0.9,
                            "flops_ratio": 1.0, "ratio_vs_dense": 1.0},
                           {"row": "POMT (chosen R)", "config": "R=8", "test_acc": 0.88, "device_acc_mean": 0.87,
                            "flops_ratio": 0.8, "ratio_vs_dense": ratio}],
            "slower_than_dense_batch1": [{"config": "ToMe r=4"}],
            "pomt_vs_tome_latency_at_matched_accuracy": 0.9}


def _verdicts(results):
    return {row[1]: row[3] for row in report.claims_rows(results)}


def _verdict(results, measure):
    (claim,) = [c for c in report.CLAIMS if c.get("measure") == measure]
    (row,) = report.claims_rows(results, [claim])
    return row[3]


# --------------------------------------------------------------------------- the committed README
def test_readme_section_matches_committed_results():
    root = paths.root()
    assert "00" in report.load_results(root / "data" / "results")
    expected = report.render_repo(root)
    assert "![00_base_model](figures/00_base_model.png)" in expected
    assert report.readme_section(root / "README.md") == expected, (
        "README.md's results section is stale: run `python -m vitprune_lite report` (or `make report`)")
    assert report.update_readme(root / "README.md", write=False) is False


# --------------------------------------------------------------------------- rendering
def test_md_table_shape_escaping_and_errors():
    out = report.md_table(["a", "b"], [[1, "x|y"]])
    assert out.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header has 2"):
        report.md_table(["a", "b"], [[1]])


def test_render_synthetic_00_01_is_deterministic_and_complete():
    res = {"00": R00, "01": R01}
    out = report.render(res)
    assert out == report.render(copy.deepcopy(res))
    assert "| public test | 90.0 % [89.0 %, 91.0 %] (n = 2,000) |" in out
    assert "| device cam, private test | 87.5 % [86.5 %, 88.5 %] (n = 400) |" in out
    assert "| cam | combined (default) | 3 | 100 / 10,000 | 100.0 % vs 25.0 % | 50.0 % vs 25.0 % | 0.520 |" in out
    assert "Source: `data/results/00_base_model.json`, git abc1234, 2 threads, load average 1.2." in out
    assert "### 02" not in out and "### 03" not in out  # missing files are skipped
    assert "Smoke run" not in out


def test_render_marks_smoke_and_survives_unknown_layout():
    out = report.render({"00": {**R00, "smoke": True}, "02": {"something": "else"}})
    assert "**Smoke run: small sizes, not the full results.**" in out
    assert "layout not recognised" in out and "02_head_channel_importance.json" in out
    assert "### 07\n\nA results file exists" in report.render({"07": {}})


def test_render_with_no_results():
    out = report.render({})
    assert out.startswith("No results yet")
    rows = report.claims_rows({})
    assert {r[3] for r in rows} == {report.NOT_YET, "not comparable"}


def test_render_02_and_03_sections():
    out = report.render({"02": R02, "03": _r03(0.8)})
    assert "| tap_gmm | 10 | 0.50 | 60.0 % |" in out
    assert "| dense | 20 | 1.00 | 90.0 % |" in out
    assert "| POMT (chosen R) | R=8 | 88.0 % | 87.0 % | 0.80 | 0.800 |" in out
    assert "+2.0 points" in out
    assert "benchmark's base model" not in out  # a v1 run (or a file from before the field) says nothing
    assert "benchmark" not in report.section_importance(R02)  # files from before the benchmark was recorded
    assert "mean over 2 devices of benchmark v2." in report.section_importance({**R02, "benchmark": "v2"})


def test_03_section_names_a_v2_run():
    out = report.section_latency({**_r03(0.8), "benchmark": "v2", "n_tokens": 145})
    assert "On the v2 benchmark's base model (145 tokens)." in out
    assert "| POMT (chosen R) | R=8 | 88.0 % | 87.0 % | 0.80 | 0.800 |" in out


# --------------------------------------------------------------------------- claims
def test_claims_name_known_measures_and_quote_real_text():
    for c in report.CLAIMS:
        assert c["measure"] is None or c["measure"] in report.MEASURES
        assert c["measure"] is not None or c.get("note")
    with pytest.raises(ValueError, match="names measurement 'nope'"):
        report.claims_rows({}, [{"paper": "X", "source": "abstract", "claim": "c", "measure": "nope"}])


@pytest.mark.parametrize("ratio, verdict", [(0.8, report.HELD), (0.97, report.PARTLY), (1.05, report.NOT_HELD)])
def test_pomt_latency_verdict_follows_the_measurement(ratio, verdict):
    assert _verdict({"03": _r03(ratio)}, "pomt_latency") == verdict


def test_claim_verdicts_from_synthetic_02():
    res = {"01": R01, "02": R02}
    # tap_gmm beats every other criterion at 90 % but not at 50 %.
    assert _verdict(res, "tap_vs_peers") == report.PARTLY
    # toast (0.80, 0.70) vs random (0.5, 0.3): better at both budgets.
    assert _verdict(res, "toast_vs_baselines") == report.HELD
    # nearest budget to 39.4 % FLOP reduction is "50" (60 FLOPs): 0.70 < dense 0.90.
    assert _verdict(res, "toast_above_dense") == report.NOT_HELD
    assert _verdict(res, "toast_flops_split") == report.HELD  # 40 % vs 5 %
    assert _verdict(res, "selection") == report.HELD
    assert _verdict({"01": R01}, "selection") == report.PARTLY  # accuracy effect not measured yet
    leaky = copy.deepcopy(R01)
    leaky["devices"]["bot"]["spaces"]["combined"]["membership_auc"] = 0.7
    assert _verdict({"01": leaky}, "private_upload") == report.NOT_HELD
    assert _verdict({"01": R01}, "private_upload") == report.HELD


def test_smoke_results_get_no_verdict():
    assert _verdict({"03": {**_r03(0.8), "smoke": True}}, "pomt_latency") == "no verdict (smoke)"
    # a smoke run of an unrelated notebook does not withhold the verdict
    assert _verdict({"00": {**R00, "smoke": True}, "03": _r03(0.8)}, "pomt_latency") == report.HELD


# --------------------------------------------------------------------------- README update + CLI
README = "# t\n\nintro\n\n## Results\n\n{begin}\nold text\n{end}\n\n## Installing elsewhere\n\nend\n"


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README.format(begin=report.BEGIN, end=report.END))
    res = {"00": R00}
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
    paths.write_json_atomic(tmp_path / "data" / "results" / "00_base_model.json", R00)
    (tmp_path / "README.md").write_text(README.format(begin=report.BEGIN, end=report.END))
    assert main(["report", "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["report"]) == 0
    assert main(["report", "--check"]) == 0
    assert "| public test | 90.0 % [89.0 %, 91.0 %] (n = 2,000) |" in (tmp_path / "README.md").read_text()


def test_toast_tie_with_dense_is_not_a_gain_and_pomt_is_not_an_other_method():
    tie = copy.deepcopy(R02)
    for d in tie["results"]:
        tie["results"][d]["50"]["toast"]["acc"] = 0.9
    assert _verdict({"02": tie}, "toast_above_dense") == report.NOT_HELD
    only_pomt = {**_r03(0.8), "slower_than_dense_batch1": [{"config": "pomt(23)"}]}
    assert _verdict({"03": only_pomt}, "others_slower") == report.NOT_HELD
    assert _verdict({"03": _r03(0.8)}, "others_slower") == report.HELD
    row = report.claims_rows({"03": _r03(1.1)}, [c for c in report.CLAIMS if c["measure"] == "pomt_latency"])[0]
    assert "10.0 % higher than dense (slower)" in row[2]


def test_figures_main_inline_others_linked_unknown_ignored():
    out = report.render({"00": R00}, ["00_base_model.png", "00_devices.png", "01_bic.png", "notes.txt"])
    assert "![00_base_model](figures/00_base_model.png)\n\nOther figures: [00_devices](figures/00_devices.png)." in out
    assert "01_bic" not in out  # no 01 results, no 01 section
    only_links = report.render({"00": R00}, ["00_devices.png"])
    assert "Figures: [00_devices](figures/00_devices.png)." in only_links and "![" not in only_links


def test_01_names_its_benchmark_when_the_results_record_it():
    assert "benchmark" not in report.section_gmm(R01)  # older results record none
    v2 = {**R01, "benchmark": "v2"}
    assert "Metric set (64 public images) (benchmark v2) selected" in report.section_gmm(v2)
    assert "combined features, benchmark v2;" in report._m_private_upload({"01": v2})[0]
    assert "(mean over devices of benchmark v2)" in report._m_selection({"01": v2})[0]
    assert _verdict({"01": v2}, "private_upload") == report.HELD
