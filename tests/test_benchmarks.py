"""The benchmarks' shared helpers (the benchmarks themselves are run by `make bench`, not tests)."""
from __future__ import annotations

import json

import torch

from vitprune_lite import importance, measure, models
from vitprune_lite.benchmarks import save, speedups


def test_speedups_records_both_models_per_batch(one_thread):
    cfg = models.ViTConfig(embed_dim=48, depth=2, num_heads=4, patch_size=8)
    dense = models.create_base_model(cfg, seed=0).eval()
    pruned = importance.prune_copy(dense, importance.make_plan(dense, importance.score(dense, "magnitude_l2"), (0.5, 0.5)))
    rec = speedups(dense, pruned, 32, threads=1, rounds=2, min_run_time=0.001, batches=(1, 4))
    assert set(rec) == {"flops_dense", "flops_pruned", "flop_speedup", "batch1", "batch4"}
    x1 = torch.zeros(1, 3, 32, 32)
    assert (rec["flops_dense"], rec["flops_pruned"]) == (measure.count_flops(dense, x1), measure.count_flops(pruned, x1))
    assert rec["flop_speedup"] == rec["flops_dense"] / rec["flops_pruned"] > 1
    for r in (rec["batch1"], rec["batch4"]):
        assert r["dense"]["batch_size"] == r["pruned"]["batch_size"] and len(r["dense"]["round_medians_ms"]) == 2
        assert r["speedup_over_flop_speedup"] == r["speedup"] / rec["flop_speedup"] > 0


def test_save_writes_json_where_asked(tmp_path):
    path = save({"a": 1}, "x", tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"a": 1} and not list(tmp_path.glob(".*"))


def test_benchmark_v2_difficulty_probe_records_each_variant(one_thread):
    from vitprune_lite.benchmarks import benchmark_v2

    only = ("v1's 12 classes at 48 px", "6 families, solid fill only", "8 fills")
    res = benchmark_v2.difficulty(1, n_train=32, n_val=16, only=only)
    assert set(res["variants"]) == set(only)
    assert [res["variants"][k]["classes"] for k in only] == [12, 6, 8]
    for v in res["variants"].values():
        assert v["chance"] == 1 / v["classes"] and 0 <= v["val_acc"][-1][1] <= 1


def test_latency_predictor_benchmark_bookkeeping(tmp_path, one_thread):
    """The benchmark's smoke run (eager only): every part recorded, the planner anchored and
    summarised over its own cases; the figures themselves are timings and not checked."""
    from vitprune_lite import pipelines
    from vitprune_lite.benchmarks import latency_predictor

    out = tmp_path / "lp.json"
    assert latency_predictor.main(["--smoke", "--backends", "eager", "--parts", "predictor", "planner",
                                   "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(r["model"], r["backend"], r["batch"]) for r in res["runs"]] == [("base_vit", "eager", 1)]
    run = res["runs"][0]
    assert run["validation"]["n"] == 3 and len(run["curve"]["n"]) == 6 and 0 <= run["margin"]
    plan = res["planner"]["eager/1t"]
    assert plan["anchored"] and plan["backend"] == "eager"
    cases = plan["cases"]
    assert len(cases) == len(res["args"]["budgets"]) * len(pipelines.PLAN_KINDS)  # one device, one seed
    assert plan["n_cases"] == len(res["args"]["budgets"])
    assert plan["combined_met_share"] == sum(c["measured_met"] for c in cases if c["kind"] == "combined") / 2
    assert set(plan["measured_over_predicted_median"]) == set(pipelines.PLAN_KINDS)
    assert res["summary"][0]["within_10"] == run["validation"]["within_10"]
