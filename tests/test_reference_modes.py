"""The ``variant="reference"`` settings (the authors' code) against small hand-computed cases,
and the ``"project"`` defaults they must leave unchanged."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from vitprune_lite import importance as imp
from vitprune_lite import tcs, tokens, variants


@pytest.fixture()
def images():
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _np_minmax(v):
    return (v - v.min()) / (v.max() - v.min())


def _np_rbf_sum(x, sigmas=(1, 2, 4, 8, 16)):
    """Sum over bandwidths of exp(-|xi - xj|^2 / (2 s^2)), x: [n, d] (no division by d)."""
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return sum(np.exp(-d2 / (2 * s * s)) for s in sigmas)


def _np_centre(k):
    n = len(k)
    h = np.eye(n) - 1.0 / n
    return h @ k @ h


# ----------------------------------------------------------------------------- the option itself

def test_variant_is_validated_where_it_enters(tiny_vit, images):
    assert variants.check("reference") == "reference"
    for bad in ("paper", None, "Reference"):
        with pytest.raises(ValueError, match="variant must be one of"):
            variants.check(bad)
    with pytest.raises(ValueError, match="variant"):
        imp.toast_scores(tiny_vit, variant="authors")
    with pytest.raises(ValueError, match="variant"):
        tcs.patch(copy.deepcopy(tiny_vit), 0.0, 0.5, variant="authors")
    with pytest.raises(ValueError, match="variant"):
        tokens.patch_tome(copy.deepcopy(tiny_vit), 2, variant="authors")
    with pytest.raises(ValueError, match="every token"):
        imp.tap_importance(tiny_vit, images, tokens=8, variant="reference")


# ----------------------------------------------------------------------------- TAP-ViTs

def test_hsic_without_feature_scaling_and_rbf_target_match_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 4, generator=g, dtype=torch.float64)
    z = torch.randn(10, 5, generator=g, dtype=torch.float64)
    gram = imp.rbf_gram(z)
    np.testing.assert_allclose(gram.numpy(), _np_centre(_np_rbf_sum(z.numpy())), rtol=1e-5, atol=1e-5)
    got = imp.hsic_rbf(x, gram[None].double(), scale_by_dim=False)[:, 0]
    want = [np.trace(_np_rbf_sum(x[c].numpy()) @ _np_centre(_np_rbf_sum(z.numpy()))) / 81 for c in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4)
    # the project's default divides by the feature count: a different number
    assert not torch.allclose(imp.hsic_rbf(x, gram[None].double())[:, 0], got)


def test_tap_reference_composite_matches_independent_computation(tiny_vit, images):
    """One batch: per-layer min-max of (rel, red, act) over all tokens, unscaled RBF, RBF target."""
    acts = {}
    h = tiny_vit.blocks[1].mlp.fc2.register_forward_pre_hook(lambda m, a: acts.setdefault("a", a[0].detach()))
    with torch.no_grad():
        prob = tiny_vit(images).softmax(-1).double().numpy()
    h.remove()
    a = acts["a"].double().numpy()  # [n, tokens, M]
    out_gram = _np_centre(prob @ prob.T)
    red_gram = _np_centre(_np_rbf_sum(a.mean(-1)))
    rel = np.array([np.trace(_np_rbf_sum(a[:, :, c]) @ out_gram) for c in range(a.shape[-1])])
    red = np.array([np.trace(_np_rbf_sum(a[:, :, c]) @ red_gram) for c in range(a.shape[-1])])
    act = np.abs(a).sum((0, 1))
    w_rel, w_red, w_act = imp.TAP_WEIGHTS["mlp"]
    want = w_rel * _np_minmax(rel) + w_red * (1 - _np_minmax(red)) + w_act * _np_minmax(act)
    got = imp.tap_importance(tiny_vit, images, batch_size=len(images), variant="reference")
    assert got.info["tokens"] == 17 and got.info["variant"] == "reference"
    np.testing.assert_allclose(got[1]["mlp"].numpy(), want, atol=2e-4)


def test_tap_reference_sums_per_batch_composites(tiny_vit, images):
    """Two batches: the reference score is the sum of the two one-batch scores."""
    both = imp.tap_importance(tiny_vit, images, batch_size=6, variant="reference")
    parts = [imp.tap_importance(tiny_vit, images[s:s + 6], batch_size=6, variant="reference") for s in (0, 6)]
    for kind in ("mlp", "attn"):
        torch.testing.assert_close(both[0][kind], parts[0][0][kind] + parts[1][0][kind], atol=1e-5, rtol=1e-5)


def test_reference_layer_sensitivity_is_batch_normalised_kl_pruned_dense(tiny_vit, images):
    scores = imp.random_scores(tiny_vit, seed=3)
    s = 0.5
    sens = imp.layer_sensitivity(tiny_vit, images, scores, sparsities=(s,), batch_size=5, variant="reference")
    # independent: block 1's MLP keeps int(M * (1 - s)) channels (the rest zeroed in fc2's columns)
    probe = copy.deepcopy(tiny_vit)
    M = probe.blocks[1].mlp.fc2.in_features
    keep = scores[1]["mlp"].topk(int(M * (1 - s))).indices
    drop = torch.ones(M, dtype=torch.bool)
    drop[keep] = False
    with torch.no_grad():
        probe.blocks[1].mlp.fc2.weight[:, drop] = 0
        want = 0.0
        for b0 in range(0, len(images), 5):
            p = tiny_vit(images[b0:b0 + 5]).softmax(-1).double()
            q = probe(images[b0:b0 + 5]).softmax(-1).double()
            want += (q * (q.log() - p.log())).sum().item() / len(p) ** 2
    assert sens["mlp"][1].item() == pytest.approx(want, rel=1e-4)


def test_reference_attention_probe_keeps_best_channels_of_whole_layer(tiny_vit):
    block = tiny_vit.blocks[0]
    H, D = block.attn.num_heads, block.attn.head_dim
    score = torch.zeros(H, D)
    score[0] = torch.arange(D, dtype=torch.float32) + 100  # head 0 holds the best channels
    score[1, :2] = 50
    probe = imp._masked_attn_probe(block, {"attn": score}, sparsity=0.75)  # keeps int(48 * .25) = 12
    zero = (probe.attn.qkv.weight == 0).all(1)  # [3 * H * D] rows
    kept = ~zero[:H * D].reshape(H, D)
    assert kept[0].all() and not kept[1:].any()  # all 12 from head 0, none per head elsewhere
    assert torch.equal(zero[:H * D], zero[H * D:2 * H * D]) and torch.equal(zero[:H * D], zero[2 * H * D:])
    assert (probe.attn.qkv.bias[zero] == 0).all()
    assert torch.equal(block.attn.qkv.weight, tiny_vit.blocks[0].attn.qkv.weight)  # original untouched


def test_reference_ratios_are_unclipped_softmax_without_redistribution():
    kl = torch.tensor([0.0, math.log(2), math.log(4)])
    r = imp.adaptive_ratios({"mlp": kl, "attn": kl}, (0.5, 0.9), alpha=1.0, variant="reference")
    np.testing.assert_allclose(r["mlp"].numpy(), [1.5 / 7, 3 / 7, 6 / 7], rtol=1e-6)
    np.testing.assert_allclose(r["attn"].numpy(), [2.7 / 7, 5.4 / 7, 1.0], rtol=1e-6)  # 10.8/7 clipped
    assert r["attn"].mean() < 0.9  # nothing handed on
    p = imp.adaptive_ratios({"mlp": kl, "attn": kl}, (0.5, 0.9), alpha=1.0)  # project: water-filled
    np.testing.assert_allclose(p["attn"].numpy(), [0.7, 1.0, 1.0], rtol=1e-6)  # clipped twice
    assert p["attn"].mean().item() == pytest.approx(0.9)


def test_probe_sparsity_pairs_each_budget_with_one_probe():
    assert [imp.probe_sparsity(b) for b in imp.TAP_BUDGETS] == [0.9, 0.8, 0.7, 0.6, 0.5]
    with pytest.raises(ValueError, match="TAP_BUDGETS"):
        imp.probe_sparsity((0.5, 0.5))


def test_reference_plan_floors_each_layer(tiny_vit):
    scores = imp.random_scores(tiny_vit)
    ratios = {"mlp": [0.3, 0.999], "attn": [0.55, 0.26]}
    plan = imp.make_plan(tiny_vit, scores, (0.5, 0.5), layer_ratios=ratios, variant="reference")
    assert [len(plan[i]["mlp"]) for i in (0, 1)] == [57, 191]  # floor(57.6), floor(191.8)
    assert [plan[i]["qk"].shape[1] for i in (0, 1)] == [6, 3]  # floor(6.6), floor(3.12) per head
    proj = imp.make_plan(tiny_vit, scores, (0.5, 0.5), layer_ratios=ratios)
    kept = sum(len(proj[i]["mlp"]) if "mlp" in proj.get(i, {}) else 192 for i in (0, 1))
    assert kept == round(0.3 * 192 + 0.999 * 192)  # project: the exact total, shared out


# ----------------------------------------------------------------------------- ToaSt scores and counts

def test_median_variants_hand_case():
    rows = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert imp._median_distance(rows, lower=True).tolist() == [1.0, 0.0, 1.0, 9.0]  # median 1
    assert imp._median_distance(rows).tolist() == [1.5, 0.5, 0.5, 8.5]  # median 1.5


def test_toast_reference_scores_weights_without_bias(tiny_vit):
    attn = tiny_vit.blocks[1].attn
    H, D, C = attn.num_heads, attn.head_dim, 48
    w = attn.qkv.weight.detach().numpy()
    o = attn.proj.weight.detach().numpy()
    h = 2
    qk = np.concatenate([w[h * D:(h + 1) * D], w[C + h * D:C + (h + 1) * D]], 1)  # [D, 2C]
    vo = np.concatenate([w[2 * C + h * D:2 * C + (h + 1) * D], o[:, h * D:(h + 1) * D].T], 1)
    want_qk = np.linalg.norm(qk - np.sort(qk, 0)[D // 2 - 1], axis=1)  # lower middle of 12 rows
    want_vo = np.linalg.norm(vo - np.sort(vo, 0)[D // 2 - 1], axis=1)
    got = imp.toast_scores(tiny_vit, variant="reference")
    np.testing.assert_allclose(got[1]["qk"][h].numpy(), want_qk, rtol=1e-5)
    np.testing.assert_allclose(got[1]["vo"][h].numpy(), want_vo, rtol=1e-5)
    assert not torch.allclose(imp.toast_scores(tiny_vit)[1]["qk"][h], got[1]["qk"][h])


def test_toast_reference_counts_per_block_with_block0_dense(tiny_vit):
    s = imp.toast_scores(tiny_vit, variant="reference")
    plan = imp.make_plan(tiny_vit, s, (0.5, 0.6), variant="reference")
    assert 0 not in plan or "qk" not in plan[0]
    assert plan[1]["qk"].shape == (4, 7)  # floor(12 * 0.6) = 7 per head: no compensation
    proj = imp.make_plan(tiny_vit, s, (0.5, 0.6))  # project: block 1 pays for dense block 0
    assert proj[1]["qk"].shape == (4, round(2 * 12 * 0.6) - 12)


def test_dense_block_is_never_cut_at_extreme_budgets(tiny_vit):
    s = imp.toast_scores(tiny_vit)
    plan = imp.make_plan(tiny_vit, s, (0.5, 0.55))  # 13.2 dims in all, 12 of them block 0's
    assert "qk" not in plan.get(0, {}) and plan[1]["qk"].shape == (4, 1)
    with pytest.raises(ValueError, match="dense blocks"):
        imp.make_plan(tiny_vit, s, (0.5, 0.52))  # 12.48 rounds to 12: nothing left for block 1


# ----------------------------------------------------------------------------- ToaSt TCS

def _cls_attn(block, x):
    """Class-token attention to the patches, mean over heads, [B, P] (independent of tcs.py)."""
    attn = block.attn
    B, N, C = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    a = ((qkv[0] * attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)
    return a.mean(1)[:, 0, 1:]


def test_tcs_reference_fc1_zeroes_the_residual(tiny_vit):
    x = torch.randn(3, 17, 48, generator=torch.Generator().manual_seed(2))
    block = copy.deepcopy(tiny_vit.blocks[1])
    with torch.no_grad():
        r = x + block.attn(block.norm1(x))
        a = _cls_attn(block, x)
        P = 16
        score = 2 / (1 + P) * r[:, 0].abs() + P / (1 + P) * (r[:, 1:].abs() * a[..., None]).mean(1)
        k = int(48 * (1 - 0.3))  # 33 (rounding would give 34)
        mask = torch.zeros(3, 48).scatter_(1, score.topk(k).indices, 1.0)[:, None]
        r = r * mask
        want = r + block.mlp(block.norm2(r))
        model = tcs.patch(copy.deepcopy(tiny_vit), [0.0, 0.3], 0.0, patch_fraction=1.0, variant="reference")
        got = model.blocks[1](x)
    assert tcs.settings(model)[1]["fc1_keep"] == 33
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    tcs.unpatch(model)
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[1](x), tiny_vit.blocks[1](x))


def test_tcs_reference_batch_mode_averages_attention_first(tiny_vit):
    x = torch.randn(4, 17, 48, generator=torch.Generator().manual_seed(4))
    block = copy.deepcopy(tiny_vit.blocks[1])
    with torch.no_grad():
        r = x + block.attn(block.norm1(x))
        a = _cls_attn(block, x).mean(0)  # [P]: batch-mean attention
        hid = block.mlp.act(block.mlp.fc1(block.norm2(r)))
        P = 16
        score = (2 / (1 + P) * hid[:, 0].abs().mean(0)
                 + P / (1 + P) * (hid[:, 1:].abs() * a[None, :, None]).mean((0, 1)))
        k = int(192 * 0.5)
        mask = torch.zeros(192).scatter_(0, score.topk(k).indices, 1.0)
        want = r + block.mlp.fc2(hid * mask)
        model = tcs.patch(copy.deepcopy(tiny_vit), 0.0, 0.5, mode="batch", patch_fraction=1.0,
                          variant="reference")
        got = model.blocks[1](x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_tcs_reference_defaults_block0_and_patch_sampling(tiny_vit):
    model = tcs.patch(copy.deepcopy(tiny_vit), 0.5, 0.5, variant="reference")
    st = tcs.settings(model)
    assert st[0]["fc2_keep"] is None and st[0]["fc1_keep"] is None  # block 0 forced dense
    assert st[1]["fc2_keep"] == 96 and st[1]["variant"] == "reference"
    assert model.blocks[1].mlp.tcs_patches.shape == (1,)  # max(1, int(16 * 0.02)), with replacement
    proj = tcs.patch(copy.deepcopy(tiny_vit), 0.5, 0.5)  # project: every block, every patch
    assert tcs.settings(proj)[0]["fc2_keep"] == 96 and proj.blocks[1].mlp.tcs_patches is None


def test_tcs_project_rounds_reference_floors(tiny_vit):
    assert tcs._keep(0.3, 128, "fc1") == 90 and tcs._keep(0.3, 128, "fc1", floor=True) == 89


# ----------------------------------------------------------------------------- POMT

def test_pomt_value_term_order_of_operations():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 2, 4, 3, generator=g)  # [B, H, N, D], CLS at 0
    probs = torch.full((1, 2, 4, 4), 0.25)
    vn = v[0].numpy()
    e_ref = vn.max(0).sum(-1)  # max over heads, then sum over features: [N]
    e_ref = (np.exp(e_ref) / np.exp(e_ref).sum())[1:]  # softmax over all tokens, CLS dropped last
    s = vn[:, 1:].sum(-1)  # project: per head sum, softmax over patches, then max over heads
    e_proj = (np.exp(s) / np.exp(s).sum(-1, keepdims=True)).max(0)
    received = 1.0  # uniform attention: every patch receives the same, normalised to 1
    np.testing.assert_allclose(tokens.pomt_scores(probs, v, variant="reference")[0].numpy(), received + e_ref,
                               rtol=1e-5)
    np.testing.assert_allclose(tokens.pomt_scores(probs, v)[0].numpy(), received + e_proj, rtol=1e-5)


def test_pomt_reference_runs_at_n_minus_R_tokens(tiny_vit):
    m = tokens.reduced_copy(tiny_vit, "pomt", 5, layer=1, variant="reference")
    assert tokens.tokens_per_block(m, torch.randn(2, 3, 32, 32)) == [17, 12]


# ----------------------------------------------------------------------------- ToMe

def _np_tome_reference(x, metric, r):
    """ToMe's partition on the whole sequence, class token in A (never a source)."""
    m = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    a_idx, b_idx = np.arange(0, len(x), 2), np.arange(1, len(x), 2)
    sim = m[a_idx] @ m[b_idx].T
    sim[0] = -np.inf
    best, match = sim.max(1), sim.argmax(1)
    order = np.argsort(-best, kind="stable")
    src, unm = order[:r], np.sort(order[r:])
    out_b = x[b_idx].copy()
    size_b = np.ones(len(b_idx))
    for s_ in src:
        out_b[match[s_]] += x[a_idx[s_]]
        size_b[match[s_]] += 1
    return np.concatenate([x[a_idx[unm]], out_b / size_b[:, None]]), np.concatenate([np.ones(len(unm)), size_b])


def test_tome_reference_partition_and_order_hand_case():
    metric = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.2], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    x = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    got, size = tokens.bipartite_merge(x[None], metric[None], 2, variant="reference")
    want, want_size = _np_tome_reference(x.numpy(), metric.numpy(), 2)
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(size[0, :, 0].numpy(), want_size)
    assert got[0, 0].tolist() == x[0].tolist()  # the class token stays first, unmerged
    # A = positions 0, 2, 4, 6: 2 -> 1 (cos 0.995) and 6 -> 1 or 5 merge; 0 and 4 stay; then B
    assert got.shape == (1, 5, 2) and got[0, 1].tolist() == x[4].tolist()


def test_tome_reference_model_runs_and_differs_from_project(tiny_vit):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tokens.reduced_copy(tiny_vit, "tome", 3, variant="reference")(x)
        proj = tokens.reduced_copy(tiny_vit, "tome", 3)(x)
        dense = tiny_vit(x)
        zero = tokens.reduced_copy(tiny_vit, "tome", 0, variant="reference")(x)
    torch.testing.assert_close(zero, dense)  # r = 0 is the dense model in both variants
    assert not torch.allclose(ref, proj)


# ----------------------------------------------------------------------------- pipelines

def test_pipeline_reference_variant(tiny_vit):
    from vitprune_lite import pipelines

    g = torch.Generator().manual_seed(0)
    public = pipelines.PublicData(torch.randn(40, 3, 32, 32, generator=g), torch.randint(0, 12, (40,), generator=g))
    idx = np.arange(40)
    with pytest.raises(ValueError, match="reference"):
        pipelines.prune_and_recover(tiny_vit, public, idx[:16], idx, imp.TAP_BUDGETS[4], criterion="taylor",
                                    variant="reference", ft_steps=0)
    with pytest.raises(ValueError, match="TAP_BUDGETS"):  # no probe sparsity for other budgets
        pipelines.prune_and_recover(tiny_vit, public, idx[:16], idx, (0.5, 0.5), variant="reference", ft_steps=0)
    model, rep = pipelines.prune_and_recover(tiny_vit, public, idx[:16], idx, imp.TAP_BUDGETS[4],
                                             variant="reference", ft_steps=0)
    assert rep["variant"] == "reference"
    assert max(rep["layer_keep"]["mlp"]) <= 1 and np.mean(rep["layer_keep"]["mlp"]) <= 0.429 + 1e-9
    assert [w["mlp_hidden"] for w in rep["widths"]] == [max(1, int(192 * r)) for r in rep["layer_keep"]["mlp"]]


def test_benchmark_interval_helpers():
    from vitprune_lite.benchmarks import reference_modes as rm

    w = rm.wilson(np.array([1] * 8 + [0] * 2))
    assert w["acc"] == 0.8 and w["lo"] == pytest.approx(0.4902, abs=1e-4) and w["hi"] == pytest.approx(0.9433, abs=1e-4)
    d = rm.paired(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 1]))
    half = rm.Z * math.sqrt(2 / 3) / 2
    assert d["diff"] == 0 and d["hi"] == pytest.approx(half) and d["lo"] == pytest.approx(-half) and d["changed"] == 0.5
