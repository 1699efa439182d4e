"""Notebook 03 at smoke parameters: latency curves, POMT's choice of R, the method comparison."""
from __future__ import annotations

import pytest

from conftest import run_smoke
from vitprune_lite import data_v2
from vitprune_lite.errors import InvalidFileError
from vitprune_lite.experiments import latency_curve

pytestmark = [pytest.mark.slow, pytest.mark.notebook]


def test_03_latency_curve_profiling(nb_out):
    res = run_smoke("03_", nb_out)
    assert res["smoke"] is True and res["environment"]["threads"] == res["threads"]
    assert res["benchmark"] == "v2" == res["params"]["benchmark"] and res["params"]["n_step"] == 8
    # the file reads back as the experiment's result, and only for the benchmark it holds
    path = nb_out / "data" / "results" / "03_latency_curve_profiling.json"
    assert latency_curve.read_result(path, "v2").pomt_choice == {**res["pomt_choice"], "layer_val_acc": {
        int(k): v for k, v in res["pomt_choice"]["layer_val_acc"].items()}}
    with pytest.raises(InvalidFileError, match="asked for 'v1'"):
        latency_curve.read_result(path, "v1")
    n_tokens = res["n_tokens"]

    # the curve measured here: one point per asked token count, strictly increasing, positive
    here = [c for c in res["curves"] if c["measured_here"]]
    (base,) = [c for c in here if c["model"] == "base_vit_v2" and c["batch"] == 1 and c["part"] == "network"]
    (block,) = [c for c in here if c["part"] == "block0"]
    assert block["n"] == base["n"]
    assert base["n"] == sorted(set(range(2, n_tokens + 1, 8)) | {n_tokens})
    assert all(a < b for a, b in zip(base["n"], base["n"][1:]))
    assert len(base["median_ms"]) == 2 and all(len(m) == len(base["n"]) for m in base["median_ms"])
    assert min(min(m) for m in base["median_ms"]) > 0
    assert isinstance(base["verdict"], str) and base["verdict"]
    assert (nb_out / "data" / "latency").is_dir()  # written under VITPRUNE_OUT, not the repository

    # POMT's choice: R consistent with n*, and n* read off the profiled token counts
    choice = res["pomt_choice"]
    assert choice["R"] == n_tokens - choice["n_star"] and 0 <= choice["R"] <= n_tokens - 2
    assert choice["n_star"] in res["accuracy_proxy"]["n"] and res["accuracy_proxy"]["n"] == base["n"]
    assert len(choice["utility"]) == len(base["n"])

    # every method's token counts only fall; POMT runs at exactly n* = N - R after its block
    for row in res["methods"]:
        t = row["tokens"]
        assert all(a >= b for a, b in zip(t, t[1:])) and len(t) == res["depth"]
        if row["method"] == "pomt":
            layer = choice["layer"]
            assert t[layer:] == [n_tokens - row["setting"]] * (res["depth"] - layer)
            assert t[:layer] == [n_tokens] * layer
        assert 0 <= row["val_acc"] <= 1 and row["latency_ms"] > 0

    # doing nothing reproduces the model exactly
    assert res["zero_overhead"]["tome(0)"]["exact"] is True
    assert res["zero_overhead"]["pomt(0)"]["exact"] is True

    rows = {r["row"] for r in res["final_rows"]}
    assert {"dense", "POMT (chosen R)"} <= rows
    for r in res["final_rows"]:
        assert 0 <= r["test_acc"] <= 1 and set(r["device_acc"]) == {d.name for d in data_v2.DEVICES}
    for fig in ("03_naive_vs_interleaved", "03_curves", "03_utility", "03_staircase", "03_methods",
                "03_token_maps"):
        assert (nb_out / "figures" / f"{fig}.png").stat().st_size > 1000
