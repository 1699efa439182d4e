"""Latency predictor bookkeeping: plans, features, the fit, hit rates, JSON, the planner hook.

Measurements here are synthetic (a known generating formula), so every assertion is about
arithmetic and structure, never about how fast anything ran.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vitprune_lite import models, pipelines, predictor as P, surgery, tokens

GEO = P.Geometry(tokens=65, prefix=1, embed_dim=128, depth=6, heads=4, head_dim=32, mlp_hidden=512, batch_size=1)
#: The generating coefficients: the frame and the block shares sum as a dense model must.
TRUE = {"frame": 1.0, "attn_w": 0.25, "attn_0": 0.15, "mlp_w": 0.45, "mlp_0": 0.15,
        "tome_calls": 0.04, "tome_tokens": 0.9, "tome_work": 0.3, "tome_bias": 0.2,
        "topk_calls": 0.05, "topk_tokens": 1.5, "evit_calls": 0.07, "evit_tokens": 2.0,
        "pomt_calls": 0.12, "pomt_work": 0.6}


def _curve(geo=GEO, frame=0.8):
    n = np.arange(geo.prefix + 1, geo.tokens + 1)
    per_block = 0.02 + 0.004 * n + 3e-5 * n ** 2 + 0.01 * (n > 40)  # a step, as CPUs rarely show
    return n, frame + geo.depth * per_block, frame


def _synthetic(plans, geo=GEO, coef=TRUE):
    n, L, F = _curve(geo)
    recs = []
    for p in plans:
        f = P.features(p, geo, n, L, F)
        recs.append({"plan": p.to_dict(), "median_ms": sum(coef[k] * v for k, v in f.items())})
    return {"format": P.MEAS_FORMAT, "geometry": vars(geo).copy(), "backend": "eager", "device": "cpu1t-test",
            "threads": 1, "curve": {"n": n.tolist(), "median_ms": L.tolist()}, "frame_ms": F, "plans": recs}


@pytest.fixture(scope="module")
def vit():
    cfg = models.ViTConfig(embed_dim=48, depth=3, num_heads=4, patch_size=8)
    return models.create_base_model(cfg, seed=0).eval()


# ----------------------------------------------------------------------------- plans

def test_plan_spec_validates_and_round_trips():
    dense = ((4, 32, 32, 512),) * 6
    p = P.PlanSpec(dense, "pomt", (0, 0, 16, 0, 0, 0))
    assert P.PlanSpec.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert P.PlanSpec(dense, "tome", (0,) * 6).method is None  # nothing removed: no method
    assert P.PlanSpec(dense, "topk", (0, 3, 0, 0, 0, 0), proportional=False).proportional  # only ToMe's flag
    with pytest.raises(ValueError, match="one count >= 0 per block"):
        P.PlanSpec(dense, "tome", (1, 1))
    with pytest.raises(ValueError, match="needs a method"):
        P.PlanSpec(dense, None, (1,) * 6)
    with pytest.raises(ValueError, match="one block"):
        P.PlanSpec(dense, "pomt", (1, 1, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="method must be"):
        P.PlanSpec(dense, "prune", (1,) * 6)
    with pytest.raises(ValueError, match="widths"):
        P.PlanSpec(((4, 0, 32, 512),))


def test_build_model_realises_every_plan_and_of_model_reads_it_back(vit):
    geo = P.Geometry.of_model(vit, 1)
    plans = P.calibration_plans(geo) + P.random_plans(geo, 12, seed=4)
    for p in plans:
        m = P.build_model(vit, p)
        assert P.PlanSpec.of_model(m) == p, p.label()
        widths = [(w["heads"], w["qk_dim"], w["v_dim"], w["mlp_hidden"]) for w in surgery.block_widths(m)]
        assert tuple(widths) == p.widths
        if p.method:
            # The flow the features assume is the flow the model runs.
            n_a, n_m = P._flow(p, geo)
            assert tokens.tokens_per_block(m, torch.randn(1, 3, 32, 32)) == n_m
    assert not tokens.is_patched(vit) and surgery.block_widths(vit)[0]["heads"] == 4
    with pytest.raises(ValueError, match="exceed"):
        P.build_model(vit, P.PlanSpec(((8, 12, 12, 192),) * 3))


def test_calibration_covers_every_method_and_random_plans_are_seeded():
    cal = P.calibration_plans(GEO)
    assert {p.method for p in cal} == {None, "tome", "topk", "evit", "pomt"}
    assert any(len(set(p.widths)) > 1 for p in cal)  # uneven widths are calibrated
    a, b = P.random_plans(GEO, 20, seed=1), P.random_plans(GEO, 20, seed=1)
    assert a == b and a != P.random_plans(GEO, 20, seed=2) and len(a) == 20
    assert not set(a) & set(cal)


# ----------------------------------------------------------------------------- features and fit

def test_dense_features_are_the_curve():
    n, L, F = _curve()
    f = P.features(GEO.dense_plan(), GEO, n, L, F)
    for k in ("attn_w", "attn_0", "mlp_w", "mlp_0"):
        assert f[k] == pytest.approx(L[-1] - F)
    assert f["frame"] == F and all(v == 0 for k, v in f.items() if k.startswith(("tome", "topk", "evit", "pomt")))
    # POMT at block 2 with R = 25: blocks 0-2 attend at 65 tokens, the MLP of 2 and everything after at 40.
    p = P.PlanSpec(GEO.dense_plan().widths, "pomt", (0, 0, 25, 0, 0, 0))
    f = P.features(p, GEO, n, L, F)
    b = lambda k: (np.interp(k, n, L) - F) / GEO.depth  # noqa: E731
    assert f["attn_0"] == pytest.approx(3 * b(65) + 3 * b(40))
    assert f["mlp_0"] == pytest.approx(2 * b(65) + 4 * b(40))
    assert f["pomt_calls"] == 1 and f["pomt_work"] == pytest.approx(4 * 65 * 65 * 1e-6)
    with pytest.raises(ValueError, match="outside the curve"):
        P.features(p, GEO, n[n >= 50], L[n >= 50], F)


def test_fit_recovers_the_generating_formula():
    meas = _synthetic(P.calibration_plans(GEO))
    pred = P.fit(meas)
    assert set(pred.fitted) == set(P.FEATURES) and pred.report["rank"] == len(P.FEATURES)
    for k, v in TRUE.items():
        assert pred.coef[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    held = _synthetic(P.random_plans(GEO, 30, seed=7))
    v = P.validate(pred, held)
    assert v["n"] == 30 and v["within_10"] == v["within_5"] == 1.0 and v["rel_err_max"] < 1e-6


def test_fit_tracks_a_changed_device():
    # The same plans on a "device" whose MLP is cheaper and whose ToMe matching costs more.
    other = dict(TRUE, mlp_w=0.3, mlp_0=0.3, tome_work=1.1)
    pred = P.fit(_synthetic(P.calibration_plans(GEO), coef=other))
    assert pred.coef["mlp_w"] == pytest.approx(0.3, rel=1e-6) and pred.coef["tome_work"] == pytest.approx(1.1, rel=1e-6)


def test_fit_refuses_bad_measurements_and_unprofiled_methods():
    meas = _synthetic([p for p in P.calibration_plans(GEO) if p.method != "tome"])
    pred = P.fit(meas)
    assert not any(k.startswith("tome") for k in pred.fitted)
    tome = P.PlanSpec(GEO.dense_plan().widths, "tome", (2,) * 6)
    with pytest.raises(ValueError, match="did not measure"):
        pred.predict(tome)
    with pytest.raises(ValueError, match="format"):
        P.fit({"plans": []})
    bad = dict(meas, plans=[dict(meas["plans"][0], median_ms=0.0)])
    with pytest.raises(ValueError, match="> 0"):
        P.fit(bad)


def test_validate_hit_rate_arithmetic():
    pred = P.fit(_synthetic(P.calibration_plans(GEO)))
    plans = P.random_plans(GEO, 5, seed=3)
    errors = [0.0, 0.04, -0.06, 0.12, -0.2]  # predicted / measured - 1
    held = [{"plan": p.to_dict(), "median_ms": pred.predict(p) / (1 + e)} for p, e in zip(plans, errors)]
    v = P.validate(pred, held)
    assert v["within_5"] == pytest.approx(2 / 5) and v["within_10"] == pytest.approx(3 / 5)
    assert [r["rel_err"] for r in v["rows"]] == pytest.approx(errors)
    assert v["rel_err_median"] == pytest.approx(0.06) and v["rel_err_max"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no measured plans"):
        P.validate(pred, [])
    # A measurements dict is checked against the predictor: another batch size is refused.
    other = _synthetic(plans, geo=P.Geometry(**dict(vars(GEO), batch_size=32)))
    with pytest.raises(ValueError, match="do not match"):
        P.validate(pred, other)
    assert P.validate(pred, _synthetic(plans))["within_5"] == 1.0


def test_validate_relative_to_dense_removes_a_uniform_drift():
    # Held-out plans timed in a session that runs uniformly 8 % faster than the profiling one:
    # every absolute prediction is 8.7 % high, but ratios to the dense model (timed in the same
    # rounds, equally faster) are exact.
    pred = P.fit(_synthetic(P.calibration_plans(GEO)))
    plans = P.random_plans(GEO, 6, seed=4)
    held = [{"plan": p.to_dict(), "median_ms": pred.predict(p) * 0.92} for p in plans]
    dense_now = pred.predict(GEO.dense_plan()) * 0.92
    v = P.validate(pred, held, reference_ms=dense_now)
    assert v["within_5"] == 0.0 and v["rel_err_median"] == pytest.approx(1 / 0.92 - 1)
    assert v["ratio"]["within_5"] == 1.0 and v["ratio"]["rel_err_max"] < 1e-9
    assert v["rows"][0]["predicted_ratio"] == pytest.approx(v["rows"][0]["measured_ratio"])
    # A plan-specific error stays visible in the ratio.
    held[0]["median_ms"] *= 1.2
    assert P.validate(pred, held, reference_ms=dense_now)["ratio"]["within_10"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="reference_ms"):
        P.validate(pred, held, reference_ms=0.0)


def test_predictor_json_round_trip(tmp_path):
    pred = P.fit(_synthetic(P.calibration_plans(GEO)))
    back = P.Predictor.from_json(pred.to_json())
    assert back.to_dict() == pred.to_dict()
    for p in P.random_plans(GEO, 10, seed=5):
        assert back.predict(p) == pred.predict(p)
    path = pred.save(tmp_path / "p.json")
    assert P.Predictor.load(path).to_dict() == pred.to_dict()
    d = pred.to_dict()
    with pytest.raises(ValueError, match="format"):
        P.Predictor.from_dict(dict(d, format="other"))
    with pytest.raises(ValueError, match="unknown coefficients"):
        P.Predictor.from_dict(dict(d, coef=dict(d["coef"], warp=1.0)))


# ----------------------------------------------------------------------------- driver and planner

def test_profile_device_smoke_collects_what_fit_needs(vit, one_thread):
    meas = P.profile_device(vit, threads=1, time_budget_s=2.0, curve_points=5, min_run_time=0.001)
    geo = P.Geometry.of_model(vit, 1)
    assert meas["format"] == P.MEAS_FORMAT and meas["geometry"] == vars(geo)
    assert meas["curve"]["n"][0] == 2 and meas["curve"]["n"][-1] == geo.tokens and len(meas["curve"]["n"]) == 5
    assert len(meas["plans"]) == len(P.calibration_plans(geo)) and meas["frame_ms"] > 0
    assert all(r["rounds"] >= 3 and r["ci_ms"][0] <= r["median_ms"] <= r["ci_ms"][1] for r in meas["plans"])
    assert set(meas["seconds"]) == {"curve", "curve_build", "curve_timing", "plans", "plans_build", "plans_timing",
                                    "total", "timing"}
    pred = P.fit(json.loads(json.dumps(meas)))  # what was measured is plain JSON
    assert pred.backend == "eager" and pred.threads == 1 and math.isfinite(pred.predict(geo.dense_plan()))


def test_measure_plans_onnxruntime_smoke(vit, one_thread):
    pytest.importorskip("onnxruntime")
    geo = P.Geometry.of_model(vit, 2)
    plans = [geo.dense_plan(), P.PlanSpec(geo.dense_plan().widths, "pomt", (0, 6, 0))]
    recs, extra, spent = P.measure_plans(vit, plans, backend="onnxruntime", batch_size=2, threads=1, time_budget_s=0.5,
                                  min_rounds=2, max_rounds=2, min_run_time=0.001)
    assert [r["rounds"] for r in recs] == [2, 2] and extra == {} and set(spent) == {"build", "timing"}
    assert [P.PlanSpec.from_dict(r["plan"]) for r in recs] == plans


def test_planner_uses_the_predictor(vit):
    geo = P.Geometry.of_model(vit, 1)
    pred = P.fit(_synthetic(P.calibration_plans(geo), geo=geo))
    pruned = P.build_model(vit, P.PlanSpec(((2, 12, 12, 96),) * 3))
    g = torch.Generator().manual_seed(0)
    val = (torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
    cands = pipelines.plan_candidates(vit, {"dense": vit, "half": pruned}, val, predictor=pred,
                                      token_grid=[("pomt", 4), ("tome", 2)])
    assert len(cands) == 6
    for c in cands:
        assert c["predicted_ms"] == pred.predict(P.PlanSpec.of_model(c["model"]))
        assert c["structure_ms"] == pred.predict(vit if c["structure"] == "dense" else pruned)
    anchored = pipelines.plan_candidates(vit, {"dense": vit, "half": pruned}, val, predictor=pred, threads=1,
                                         rounds=3, min_run_time=0.001, anchor_structures=True,
                                         token_grid=[("pomt", 4), ("tome", 2)])
    dense_pred = pred.predict(geo.dense_plan())
    for a, c in zip(anchored, cands):  # the same candidates; the structure's latency measured, tokens' share predicted
        assert (a["structure"], a["tokens"], a["amount"], a["val_acc"]) == (c["structure"], c["tokens"], c["amount"],
                                                                         c["val_acc"])
        assert a["structure_ms"] > 0 and a["predicted_ms"] == pytest.approx(
            a["structure_ms"] * c["predicted_ms"] / c["structure_ms"], rel=1e-9)
        if a["structure"] == "dense":  # the reference itself: exactly the predicted dense latency
            assert a["structure_ms"] == pytest.approx(dense_pred, rel=1e-9)
    both = pipelines.plan_candidates(vit, {"dense": vit, "half": pruned}, val, predictor=pred, threads=1,
                                     rounds=3, min_run_time=0.001, anchor_structures=True, anchor_tokens=True,
                                     token_grid=[("pomt", 4), ("tome", 2)])
    alone = {b["structure"]: b["predicted_ms"] for b in both if b["tokens"] == "none"}
    assert alone["dense"] == pytest.approx(dense_pred, rel=1e-9)
    factors: dict = {}  # each token setting's measured/predicted factor, the same on every structure
    for b, c in zip(both, cands):
        assert b["structure_ms"] == alone[b["structure"]] and b["val_acc"] == c["val_acc"]
        f = b["predicted_ms"] / b["structure_ms"] / (c["predicted_ms"] / c["structure_ms"])
        assert f > 0 and f == pytest.approx(factors.setdefault(b["tokens"], f), rel=1e-9)
    assert factors["none"] == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="anchor_tokens applies with anchor_structures"):
        pipelines.plan_candidates(vit, {"dense": vit}, val, predictor=pred, anchor_tokens=True)
    with pytest.raises(ValueError, match="anchor_structures applies to a predictor"):
        pipelines.plan_candidates(vit, {"dense": vit}, val, anchor_structures=True)
    with pytest.raises(ValueError, match="exactly one of"):
        pipelines.plan_candidates(vit, {"dense": vit}, val)
    other = P.fit(_synthetic(P.calibration_plans(GEO)))  # fitted for another model
    with pytest.raises(ValueError, match="not for this model"):
        pipelines.plan_candidates(vit, {"dense": vit}, val, predictor=other)
    req = pipelines.DeviceRequest("drone", (0.5, 0.5), latency_ms=cands[0]["predicted_ms"])
    out = pipelines.combined_plan(vit, req, None, predictor=pred, structures={"dense": vit, "half": pruned},
                                  val=val, token_grid=[("pomt", 4)])
    assert out.report["budget_predicted_met"] and out.report["predictor"]["backend"] == "eager"
    assert out.report["choice"]["predicted_ms"] <= req.latency_ms


def test_planner_summary_arithmetic():
    def case(seed, kind, met, acc):
        return {"device": "drone", "seed": seed, "budget_share": 0.9, "kind": kind, "measured_met": met, "val_acc": acc}

    cases = [case(0, "combined", True, 0.8), case(0, "structure only", True, 0.7), case(0, "tokens only", False, 0.9),
             case(1, "combined", True, 0.6), case(1, "structure only", True, 0.7), case(1, "tokens only", True, 0.5),
             case(2, "combined", False, 0.9), case(2, "structure only", False, 0.7), case(2, "tokens only", False, 0.5),
             case(3, "combined", True, 0.5), case(3, "structure only", False, 0.9), case(3, "tokens only", False, 0.9)]
    s = pipelines.summarise_checks(cases)
    # met: seeds 0, 1, 3; as accurate as the best single ingredient that met: seed 0 (0.8 >= 0.7) and
    # seed 3 (no single ingredient met); not seed 1 (0.6 < 0.7) nor seed 2 (combined missed).
    assert s == {"n_cases": 4, "combined_met_share": 0.75, "combined_at_least_as_accurate_share": 0.5}


def test_repredict_and_check_plans(vit, one_thread):
    geo = P.Geometry.of_model(vit, 1)
    pred = P.fit(_synthetic(P.calibration_plans(geo), geo=geo))
    slower = P.fit(_synthetic(P.calibration_plans(geo), geo=geo, coef={**TRUE, "pomt_calls": 5.0}))
    pruned = P.build_model(vit, P.PlanSpec(((2, 12, 12, 96),) * 3))
    g = torch.Generator().manual_seed(0)
    val = (torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
    cands = pipelines.plan_candidates(vit, {"dense": vit, "half": pruned}, val, predictor=pred,
                                      token_grid=[("pomt", 4), ("tome", 2)])
    again = pipelines.repredict(cands, slower)
    for a, c in zip(again, cands):  # same models and accuracies, the other predictor's latencies
        assert a["model"] is c["model"] and a["val_acc"] == c["val_acc"]
        assert a["predicted_ms"] == slower.predict(c["model"])
        assert a["structure_ms"] == slower.predict(vit if c["structure"] == "dense" else pruned)
        if c["tokens"] == "pomt":
            assert a["predicted_ms"] > c["predicted_ms"] + 1
        else:
            assert a["predicted_ms"] == pytest.approx(c["predicted_ms"], rel=1e-6)
    cases = pipelines.check_plans(vit, cands, [0.9, 0.6], predictor=pred, margin=0.05, rounds=2,
                                  min_run_time=0.001)
    assert [(c["budget_share"], c["kind"]) for c in cases] == [(s, k) for s in (0.9, 0.6) for k in pipelines.PLAN_KINDS]
    dense_pred = pred.predict(geo.dense_plan())
    by_model: dict = {}
    for c in cases:
        # a model chosen under several budgets or kinds is timed once: one measured ratio
        assert c["measured_ratio"] == by_model.setdefault(id(c["model"]), c["measured_ratio"])
        assert c["predicted_ratio"] == pytest.approx(c["predicted_ms"] / dense_pred)
        assert c["predicted_met"] == (c["predicted_ratio"] <= c["budget_share"] * 0.95)
        assert c["measured_met"] == (c["measured_ratio"] <= c["budget_share"]) and c["measured_ratio"] > 0
        if c["kind"] == "structure only":
            assert "+" not in c["plan"]
        if c["kind"] == "tokens only":
            assert c["plan"].startswith("dense")
    with pytest.raises(ValueError, match="shares"):
        pipelines.check_plans(vit, cands, [1.2], predictor=pred)


def test_calibrate_smoke(vit, one_thread):
    cal = P.calibrate(vit, threads=1, time_budget_s=1.0, curve_points=4, holdout=5, holdout_budget_s=0.2,
                      margin_quantile=0.5, min_run_time=0.001)
    errs = sorted(abs(r["ratio_err"]) for r in cal.validation["rows"])
    assert len(errs) == 5 and cal.validation["ratio"]["n"] == 5
    assert cal.margin == pytest.approx(float(np.quantile(errs, 0.5)))
    assert cal.predictor.geometry == P.Geometry.of_model(vit, 1) and cal.seconds["timing"] > 0
    assert P.calibrate(vit, threads=1, time_budget_s=1.0, curve_points=4, holdout=2, holdout_budget_s=0.1,
                       margin_quantile=0.0, min_run_time=0.001).margin == 0.0
    for bad in ({"margin_quantile": 1.0}, {"holdout": 0}, {"holdout": True}):
        with pytest.raises(ValueError):
            P.calibrate(vit, **bad)


def test_align_curve_puts_the_curve_on_the_plans_level():
    n, L, F = _curve()
    meas = _synthetic(P.calibration_plans(GEO))
    meas["curve"]["median_ms"] = (np.asarray(L) * 1.2).tolist()  # the curve's phase ran 20 % slow
    plain, aligned = P.fit(meas, align_curve=False), P.fit(meas)  # aligned by default
    assert plain.report["curve_scale"] == 1.0
    assert aligned.report["curve_scale"] == pytest.approx(1 / 1.2)
    assert aligned.curve_ms[-1] == pytest.approx(L[-1])
    dense = GEO.dense_plan()
    truth = next(p["median_ms"] for p in meas["plans"] if P.PlanSpec.from_dict(p["plan"]) == dense)
    assert abs(aligned.predict(dense) / truth - 1) < 1e-6  # the generating formula again
