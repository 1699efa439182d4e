"""End-to-end pipelines on a tiny model: composition, budgets, determinism, privacy boundary."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprune_lite import features, gmm, importance, measure, pipelines

BUDGET = (0.5, 0.75)
FAST = dict(score_options={"tokens": 4, "batch_size": 8}, sens_images=8, ft_batch=8, val_fraction=0.25)


@pytest.fixture(scope="module")
def setup(small_bench):
    pub = small_bench.public["train"]
    x, y = pub.tensors()
    ext = features.PixelStats(dim=4).fit(pub.images)
    public = pipelines.PublicData(x, y, gmm.embed_pool(ext, pub.images))
    upload = gmm.device_upload(small_bench.devices["drone"]["train"].images, ext, k_range=(2, 3)).upload
    return public, pipelines.DeviceRequest("drone", BUDGET, upload)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_tap_vits_is_select_score_ratios_plan_surgery(setup, tiny_vit):
    public, request = setup
    before = _state(tiny_vit)
    out = pipelines.tap_vits(tiny_vit, request, public, n_metric=16, n_finetune=40, ft_steps=0, **FAST)
    # the base model is untouched
    assert all(torch.equal(v, tiny_vit.state_dict()[k]) for k, v in before.items())
    # the same steps by hand give the same model
    sel = gmm.select(request.upload, public.features, n_metric=16, n_finetune=40)
    xm = public.x[sel.metric]
    s = importance.score(tiny_vit, "tap_vits", xm, **FAST["score_options"])
    ratios = importance.adaptive_ratios(importance.layer_sensitivity(tiny_vit, xm, s, max_images=8), BUDGET)
    ref = importance.prune_copy(tiny_vit, importance.make_plan(tiny_vit, s, BUDGET, layer_ratios=ratios))
    assert torch.equal(out.model(public.x[:8]), ref(public.x[:8]))
    r = out.report
    assert (out.method, out.device, r["selection"], r["kept"]) == ("tap_vits", "drone", "gmm", "pruned")
    assert (r["n_metric"], r["n_train"], r["n_val"]) == (16, 30, 10)
    assert r["params"] == measure.count_params(ref) < r["dense_params"]
    total_mlp = sum(b.mlp.fc1.out_features for b in tiny_vit.blocks)
    assert sum(w["mlp_hidden"] for w in r["widths"]) == round(BUDGET[0] * total_mlp)


def test_tap_vits_recovery_is_deterministic_and_selected_on_validation(setup, tiny_vit):
    public, request = setup
    a = pipelines.tap_vits(tiny_vit, request, public, n_metric=16, n_finetune=40, ft_steps=3, seed=1, **FAST)
    b = pipelines.tap_vits(tiny_vit, request, public, n_metric=16, n_finetune=40, ft_steps=3, seed=1, **FAST)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    r = a.report
    assert r["finetune"]["steps"] == 3 and r["kept"] in ("pruned", "finetuned")
    # whichever was kept is never worse on validation than the other
    assert r["val_acc_finetuned"] is not None
    kept_acc = r["val_acc_finetuned"] if r["kept"] == "finetuned" else r["val_acc_pruned"]
    assert kept_acc == max(r["val_acc_pruned"], r["val_acc_finetuned"])


def test_one_size_fits_all_ignores_the_device(setup, tiny_vit):
    public, request = setup
    other = pipelines.DeviceRequest("factory", BUDGET)
    kw = dict(n_metric=16, n_finetune=40, ft_steps=0, adaptive=False, **FAST)
    a = pipelines.one_size_fits_all(tiny_vit, request, public, **kw)
    b = pipelines.one_size_fits_all(tiny_vit, other, public, **kw)
    assert a.device == b.device == "*" and a.report["selection"] == "random"
    assert torch.equal(a.model(public.x[:8]), b.model(public.x[:8]))


def test_evaluate_on_device_records_private_accuracy(setup, tiny_vit, small_bench):
    public, request = setup
    out = pipelines.tap_vits(tiny_vit, request, public, n_metric=16, n_finetune=40, ft_steps=0, adaptive=False, **FAST)
    assert out.report["layer_keep"] is None
    assert "device_test_acc" not in out.report  # the cloud never sees the private test split
    x, y = small_bench.devices["drone"]["test"].tensors()
    acc = pipelines.evaluate_on_device(out, x, y)
    assert acc == out.report["device_test_acc"] == measure.accuracy(out.model, x, y)


def test_bad_requests_are_refused_before_work(setup, tiny_vit):
    public, request = setup
    with pytest.raises(ValueError, match="needs the device's GMM upload"):
        pipelines.tap_vits(tiny_vit, pipelines.DeviceRequest("drone", BUDGET), public)
    with pytest.raises(ValueError, match=r"budget keeps must each be in \(0, 1\]"):
        pipelines.tap_vits(tiny_vit, pipelines.DeviceRequest("drone", (1.5, 0.5), request.upload), public)
    with pytest.raises(ValueError, match="needs PublicData.features"):
        pipelines.tap_vits(tiny_vit, request, pipelines.PublicData(public.x, public.y))
    with pytest.raises(ValueError, match="val_fraction must be in"):
        pipelines.split_validation(np.arange(10), 1.0)
    with pytest.raises(ValueError, match="public y must be"):
        pipelines.PublicData(public.x, public.y[:-1])


def test_split_validation_is_a_seeded_partition():
    tr, va = pipelines.split_validation(np.arange(20), 0.25, seed=3)
    assert len(va) == 5 and sorted(np.concatenate([tr, va]).tolist()) == list(range(20))
    tr2, va2 = pipelines.split_validation(np.arange(20), 0.25, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)


# ----------------------------------------------------------------------------- the other methods

REC = dict(ft_batch=8, val_fraction=0.25)


def test_given_selection_skips_the_upload(setup, tiny_vit):
    public, request = setup
    sel = gmm.select(request.upload, public.features, n_metric=16, n_finetune=40)
    bare = pipelines.DeviceRequest("drone", BUDGET)  # no upload: the selection stands in for it
    a = pipelines.tap_vits(tiny_vit, bare, pipelines.PublicData(public.x, public.y), selection=sel,
                           n_metric=16, n_finetune=40, ft_steps=0, **FAST)
    b = pipelines.tap_vits(tiny_vit, request, public, n_metric=16, n_finetune=40, ft_steps=0, **FAST)
    assert torch.equal(a.model(public.x[:8]), b.model(public.x[:8]))


def test_score_cache_reuses_scores_across_budgets_and_seeds(setup, tiny_vit):
    public, request = setup
    cache: dict = {}
    kw = dict(n_metric=16, n_finetune=40, ft_steps=0, cache=cache, **FAST)
    a = pipelines.tap_vits(tiny_vit, request, public, **kw)
    assert len(cache) == 1 and not a.report["seconds"]["scores_cached"]
    other = pipelines.DeviceRequest("drone", (0.75, 0.75), request.upload)
    b = pipelines.tap_vits(tiny_vit, other, public, **kw)
    assert len(cache) == 1 and b.report["seconds"]["scores_cached"]
    ref = pipelines.tap_vits(tiny_vit, other, public, n_metric=16, n_finetune=40, ft_steps=0, **FAST)
    assert torch.equal(b.model(public.x[:8]), ref.model(public.x[:8]))


def test_toast_pipeline_is_coupled_pruning_plus_sample_mode_tcs(setup, tiny_vit):
    public, request = setup
    out = pipelines.toast(tiny_vit, request, public, n_finetune=40, ft_steps=0, tcs_fc1=0.0, tcs_fc2=0.5, **REC)
    r = out.report
    assert out.device == "*" and r["criterion"] == "toast" and r["tcs"]["mode"] == "sample"
    assert out.method == "toast_tcs"  # ToaSt with TCS, under its registry name
    assert r["flops"] < r["flops_without_tcs"] < r["dense_flops"]
    assert [s["fc2_keep"] for s in __import__("vitprune_lite.tcs").tcs.settings(out.model)]
    # block 0's attention stays dense, the others are re-packed per head
    w = r["widths"]
    assert w[0]["qk_dim"] == tiny_vit.blocks[0].attn.head_dim > w[1]["qk_dim"]
    # per-image TCS: the same prediction alone and in a batch
    x = public.x[:16]
    assert torch.equal(measure.predict(out.model, x, batch_size=1), measure.predict(out.model, x, batch_size=16))


def test_torch_pruning_pipeline_meets_the_budget_and_recovers(setup, tiny_vit):
    public, request = setup
    out = pipelines.torch_pruning(tiny_vit, request, public, n_finetune=40, ft_steps=2, **REC)
    r = out.report
    assert r["finetune"]["steps"] == 2 and r["n_val"] == 10 and r["params"] < r["dense_params"]
    assert r["torch_pruning"]["heads_kept"] == [b.attn.num_heads for b in out.model.blocks]
    assert out.method == r["criterion"] == "torch_pruning"
    out.model(public.x[:4])  # the repaired attention runs


def test_token_reduction_pipeline(setup, tiny_vit):
    public, request = setup
    out = pipelines.token_reduction(tiny_vit, request, public, method="pomt", amount=6)
    assert out.report["schedule"]["method"] == "pomt" and out.report["flops"] < out.report["dense_flops"]
    assert not hasattr(tiny_vit, "_tr_method")  # the dense model is not patched
    with pytest.raises(ValueError, match="method must be one of"):
        pipelines.token_reduction(tiny_vit, request, public, method="merge")


def test_oracle_reads_only_the_private_split_it_is_given(setup, tiny_vit, small_bench):
    public, request = setup
    x, y = small_bench.devices["drone"]["train"].tensors()
    out = pipelines.oracle(tiny_vit, request, public, private=(x, y), n_metric=16, ft_steps=0, **FAST)
    assert out.report["selection"] == "private" and out.report["n_metric"] == 16
    assert out.report["n_train"] + out.report["n_val"] == len(x)


@pytest.fixture(scope="module")
def tiny_curve():
    """A latency curve of the tiny model's shape, with made-up linear latencies (1 + 0.5 n ms):
    these tests check the plan's logic, not this machine's timings."""
    from vitprune_lite import latency, models

    cfg = models.ViTConfig(embed_dim=48, depth=2, num_heads=4, patch_size=8)
    m = models.create_base_model(cfg, seed=0).eval()
    n = list(range(2, 18))
    ms = [1 + 0.5 * v for v in n]
    sweep = latency.Sweep(n, ms, ms, ms, [[v, v] for v in ms])
    return latency.Curve("tiny", "test", 1, 1, "network", latency.model_fingerprint(m), [sweep])


def test_combined_plan_picks_the_most_accurate_candidate_under_the_budget(setup, tiny_vit, tiny_curve):
    public, _ = setup
    structures = {"dense": tiny_vit,
                  "half": importance.prune_copy(tiny_vit, importance.make_plan(
                      tiny_vit, importance.score(tiny_vit, "magnitude_l2"), BUDGET))}
    val = (public.x[:32], public.y[:32])
    grid = [("pomt", 4), ("tome", 2)]
    loose = pipelines.DeviceRequest("drone", BUDGET, latency_ms=1e6)
    out = pipelines.combined_plan(tiny_vit, loose, public, curve=tiny_curve, structures=structures,
                                  val=val, token_grid=grid, rounds=1)
    cands = out.report["candidates"]
    assert len(cands) == 2 * 3 and out.report["budget_predicted_met"]
    best = max(c["val_acc"] for c in cands)
    assert out.report["choice"]["val_acc"] == best
    # token settings are predicted cheaper than the same structure without them
    for name in structures:
        own = {c["tokens"]: c["predicted_ms"] for c in cands if c["structure"] == name}
        assert own["pomt"] < own["none"] and own["tome"] < own["none"]
    # an impossible budget: the fastest predicted candidate, flagged
    tight = pipelines.DeviceRequest("drone", BUDGET, latency_ms=1e-9)
    out = pipelines.combined_plan(tiny_vit, tight, public, curve=tiny_curve, structures=structures,
                                  val=val, token_grid=grid, rounds=1)
    assert not out.report["budget_predicted_met"]
    assert out.report["choice"]["predicted_ms"] == min(c["predicted_ms"] for c in out.report["candidates"])
    assert not hasattr(tiny_vit, "_tr_method") and structures["dense"] is tiny_vit


def test_combined_plan_refuses_bad_requests(setup, tiny_vit, tiny_curve):
    public, _ = setup
    val = (public.x[:8], public.y[:8])
    with pytest.raises(ValueError, match="needs request.latency_ms"):
        pipelines.combined_plan(tiny_vit, pipelines.DeviceRequest("drone", BUDGET), public, curve=tiny_curve,
                                structures={"dense": tiny_vit}, val=val)
    req = pipelines.DeviceRequest("drone", BUDGET, latency_ms=5.0)
    with pytest.raises(ValueError, match="token_grid method"):
        pipelines.combined_plan(tiny_vit, req, public, curve=tiny_curve, structures={"dense": tiny_vit},
                                val=val, token_grid=[("prune", 3)])
    with pytest.raises(ValueError, match="structures must name"):
        pipelines.combined_plan(tiny_vit, req, public, curve=tiny_curve, structures={}, val=val)


def test_predict_ms_reads_the_curve():
    from vitprune_lite import latency

    n, y = [2, 5, 9], [4.0, 6.0, 10.0]
    assert latency.predict_ms(n, y, [9, 9], 20.0) == pytest.approx(20.0)
    assert latency.predict_ms(n, y, [9, 5], 20.0) == pytest.approx(20.0 * 8.0 / 10.0)
    with pytest.raises(ValueError, match="leaves the curve's range"):
        latency.predict_ms(n, y, [1, 9], 20.0)


def test_choose_plan_filters_and_falls_back_to_the_fastest():
    cands = [{"structure": "dense", "tokens": "none", "predicted_ms": 10.0, "val_acc": 0.9},
             {"structure": "dense", "tokens": "pomt", "predicted_ms": 8.0, "val_acc": 0.85},
             {"structure": "tap_vits 50%", "tokens": "none", "predicted_ms": 7.0, "val_acc": 0.8},
             {"structure": "tap_vits 50%", "tokens": "pomt", "predicted_ms": 6.0, "val_acc": 0.8}]
    c, met = pipelines.choose_plan(cands, 8.5)
    assert met and c is cands[1]
    c, met = pipelines.choose_plan(cands, 7.5)  # tie on accuracy: the faster
    assert met and c is cands[3]
    c, met = pipelines.choose_plan(cands, 7.5, where=lambda c: c["structure"] == "dense")
    assert not met and c is cands[1]  # nothing fits: the fastest of the allowed
    with pytest.raises(ValueError, match="latency budget must be > 0"):
        pipelines.choose_plan(cands, 0)
    # A 10 % margin: 8.0 ms no longer fits a budget of 8.5 ms (8.5 * 0.9 = 7.65); 7.0 and 6.0 do.
    c, met = pipelines.choose_plan(cands, 8.5, margin=0.1)
    assert met and c is cands[3]
    with pytest.raises(ValueError, match="margin"):
        pipelines.choose_plan(cands, 8.5, margin=1.0)


def test_score_cache_tells_different_images_apart(setup, tiny_vit, small_bench):
    # two devices' private pools share index ranges; the cache must not confuse them
    public, request = setup
    cache: dict = {}
    outs = {}
    for d in ("drone", "factory"):
        x, y = small_bench.devices[d]["train"].tensors()
        outs[d] = pipelines.oracle(tiny_vit, pipelines.DeviceRequest(d, BUDGET), public, private=(x, y),
                                   n_metric=16, ft_steps=0, cache=cache, **FAST)
    assert len(cache) == 2
    assert not any(o.report["seconds"]["scores_cached"] for o in outs.values())
