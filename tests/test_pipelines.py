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
    s = importance.score(tiny_vit, "tap", xm, **FAST["score_options"])
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
