"""Unit importance: HSIC maths, TAP composite, layer budgets, ToaSt, baselines, plans."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitprune_lite import importance as imp
from vitprune_lite import measure, surgery
from vitprune_lite.errors import InvalidValueError


@pytest.fixture()
def images():
    return torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _naive_hsic(x: torch.Tensor, z: torch.Tensor, sigmas) -> float:
    """Textbook biased HSIC, tr(K H L H) / (n-1)^2, summed over RBF bandwidths."""
    n, d = x.shape
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    L = z @ z.t()
    dist = torch.cdist(x, x).square()
    return sum(torch.trace(torch.exp(-dist / (2 * s * s * d)) @ H @ L @ H).item()
               for s in sigmas) / (n - 1) ** 2


# ----------------------------------------------------------------------------- HSIC

@pytest.mark.parametrize("d", [1, 3])
def test_hsic_matches_textbook_formula(d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 20, d, generator=g, dtype=torch.float64) * 2
    z = torch.randn(20, 4, generator=g, dtype=torch.float64)
    sig = (1, 2, 4, 8, 16)
    got = imp.hsic_rbf(x, imp.centred_gram(z)[None], sig, max_elements=800)  # several chunks
    want = [_naive_hsic(x[c], z, sig) for c in range(5)]
    np.testing.assert_allclose(got[:, 0].numpy(), want, rtol=1e-4, atol=1e-7)


def test_hsic_ranks_dependent_channel_above_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, 1, generator=g)
    dependent = y[:, 0] * 2 + 0.1 * torch.randn(64, generator=g)
    noise = torch.randn(64, generator=g)
    hs = imp.hsic_rbf(torch.stack([dependent, noise]), imp.centred_gram(y)[None])
    assert hs[0, 0] > 5 * hs[1, 0]


def test_hsic_rejects_bad_shapes():
    with pytest.raises(ValueError, match="grams"):
        imp.hsic_rbf(torch.randn(3, 10, 2), torch.randn(1, 9, 9))
    with pytest.raises(ValueError, match="bandwidths"):
        imp.hsic_rbf(torch.randn(3, 10), torch.randn(1, 10, 10), bandwidths=(1, 0))


# ----------------------------------------------------------------------------- TAP composite

def test_tap_scores_shapes_ranges_and_determinism(tiny_vit, images):
    a = imp.tap_importance(tiny_vit, images, tokens=8, batch_size=8)
    b = imp.tap_importance(tiny_vit, images, tokens=8, batch_size=8)
    assert len(a) == 2 and a.info["batches"] == 3 and a.info["tokens"] == 8
    for blk_a, blk_b, comp in zip(a.blocks, b.blocks, a.components):
        assert blk_a["mlp"].shape == (192,) and blk_a["attn"].shape == (4, 12)
        assert blk_a["heads"].shape == (4,)
        for key in blk_a:
            assert torch.equal(blk_a[key], blk_b[key])
        for name, v in comp.items():  # each term min-max normalised within its layer
            assert v.min() == 0 and v.max() == 1, name
        w = imp.TAP_WEIGHTS["mlp"]
        want = w[0] * comp["mlp_rel"] + w[1] * (1 - comp["mlp_red"]) + w[2] * comp["mlp_act"]
        torch.testing.assert_close(blk_a["mlp"], want)


def test_tap_activation_term_is_sum_of_abs_activation(tiny_vit, images):
    s = imp.tap_importance(tiny_vit, images, tokens=4, batch_size=8,
                           weights={"mlp": (0, 0, 1), "attn": (0, 0, 1)})
    acts = {}

    def hook(mod, args):
        acts.setdefault(mod, []).append(args[0].abs().sum((0, 1)))

    fc2 = tiny_vit.blocks[1].mlp.fc2
    h = fc2.register_forward_pre_hook(hook)
    with torch.no_grad():
        tiny_vit(images)
    h.remove()
    torch.testing.assert_close(s[1]["mlp"], imp._minmax(sum(acts[fc2])))


def test_tap_token_subsample_includes_cls_and_is_seeded():
    a = imp._token_positions(65, 8, seed=0)
    assert a[0] == 0 and len(a) == 8 and len(set(a.tolist())) == 8
    assert torch.equal(a, imp._token_positions(65, 8, seed=0))
    assert not torch.equal(a, imp._token_positions(65, 8, seed=1))
    assert torch.equal(imp._token_positions(65, None, 0), torch.arange(65))


# ----------------------------------------------------------------------------- other criteria

def test_magnitude_scores_sum_owned_weights(tiny_vit):
    s1, s2 = imp.magnitude_scores(tiny_vit, 1), imp.magnitude_scores(tiny_vit, 2)
    mlp = tiny_vit.blocks[0].mlp
    c = 5
    l1 = mlp.fc1.weight[c].abs().sum() + mlp.fc1.bias[c].abs() + mlp.fc2.weight[:, c].abs().sum()
    torch.testing.assert_close(s1[0]["mlp"][c], l1.detach())
    attn = tiny_vit.blocks[0].attn
    h, d, D, C = 2, 3, 12, 48
    rows = [h * D + d, C + h * D + d, 2 * C + h * D + d]
    sq = sum(attn.qkv.weight[r].square().sum() + attn.qkv.bias[r].square() for r in rows)
    sq = sq + attn.proj.weight[:, h * D + d].square().sum()
    torch.testing.assert_close(s2[0]["attn"][h, d], sq.sqrt().detach())


def test_toast_scores_are_distance_to_column_median(tiny_vit):
    s = imp.toast_scores(tiny_vit)
    attn = tiny_vit.blocks[1].attn
    D, C = 12, 48
    w = torch.cat([attn.qkv.weight, attn.qkv.bias[:, None]], 1).detach().numpy()
    h = 3
    stack = np.concatenate([w[h * D:(h + 1) * D], w[C + h * D:C + (h + 1) * D]], 1)  # [D, 2C+2]
    want = np.linalg.norm(stack - np.median(stack, axis=0), axis=1)
    np.testing.assert_allclose(s[1]["qk"][h].numpy(), want, rtol=1e-5)
    vo = np.concatenate([w[2 * C + h * D:2 * C + (h + 1) * D],
                         attn.proj.weight.detach().numpy()[:, h * D:(h + 1) * D].T], 1)
    np.testing.assert_allclose(s[1]["vo"][h].numpy(),
                               np.linalg.norm(vo - np.median(vo, axis=0), axis=1), rtol=1e-5)


def test_toast_keeps_rows_far_from_the_median(tiny_vit):
    attn = tiny_vit.blocks[0].attn
    g = torch.Generator().manual_seed(0)
    vq, vk = torch.randn(48, generator=g), torch.randn(48, generator=g)
    with torch.no_grad():  # head 0's q/k rows on a line: row d = d * v, median at d = 5.5
        for d in range(12):
            attn.qkv.weight[d], attn.qkv.weight[48 + d] = d * vq, d * vk
            attn.qkv.bias[d] = attn.qkv.bias[48 + d] = 0.0
    s = imp.toast_scores(tiny_vit)[0]["qk"][0]
    assert set(s.argsort()[:2].tolist()) == {5, 6} and s.argmax().item() in (0, 11)
    plan = imp.make_plan(tiny_vit, imp.toast_scores(tiny_vit), (1.0, 2 / 12 + 1e-9),
                         attn_dense_blocks=())
    assert plan[0]["qk"][0].tolist() == [0, 11]


def test_random_scores_are_seeded(tiny_vit):
    a, b, c = imp.random_scores(tiny_vit, 0), imp.random_scores(tiny_vit, 0), imp.random_scores(tiny_vit, 1)
    assert torch.equal(a[1]["mlp"], b[1]["mlp"]) and not torch.equal(a[1]["mlp"], c[1]["mlp"])


def test_taylor_is_zero_for_a_unit_without_effect(tiny_vit, images):
    with torch.no_grad():
        tiny_vit.blocks[1].mlp.fc2.weight[:, 7] = 0  # channel 7 cannot change the loss
    s = imp.taylor_scores(tiny_vit, images, torch.randint(0, 12, (len(images),)), batch_size=10)
    assert s[1]["mlp"][7] == 0 and (s[1]["mlp"] > 0).sum() == 191
    assert s[0]["attn"].shape == (4, 12) and (s[0]["heads"] > 0).all()


def test_score_interface_and_errors(tiny_vit, images):
    for c in imp.CRITERIA:
        s = imp.score(tiny_vit, c, images[:8], tokens=4, batch_size=4) if c == "tap_vits" \
            else imp.score(tiny_vit, c, images[:8])
        assert s.criterion == c and len(s) == 2 and s[0]["mlp"].shape == (192,)
    with pytest.raises(ValueError, match="unknown criterion"):
        imp.score(tiny_vit, "snip", images)
    with pytest.raises(InvalidValueError, match=r"unknown criterion 'tap'; accepted: tap_vits, taylor"):
        imp.score(tiny_vit, "tap", images)  # the old name is refused, the accepted ones listed
    with pytest.raises(ValueError, match="needs images"):
        imp.score(tiny_vit, "tap_vits")
    with pytest.raises(ValueError, match="empty"):
        imp.score(tiny_vit, "tap_vits", images[:0])
    with pytest.raises(ValueError, match="unsupported model"):
        imp.score(torch.nn.Linear(3, 3), "magnitude_l2")
    with pytest.raises(ValueError, match="at least 2"):
        imp.tap_importance(tiny_vit, images[:1])


# ----------------------------------------------------------------------------- layer importance

def test_layer_sensitivity_matches_masked_model(tiny_vit, images):
    s = imp.random_scores(tiny_vit, 0)
    sens = imp.layer_sensitivity(tiny_vit, images, s, sparsities=(0.5,), batch_size=7)
    logp = F.log_softmax(tiny_vit(images), -1)
    for i in range(2):
        plans = {"mlp": {i: {"mlp": surgery.keep_top(s[i]["mlp"], 96)}},
                 "attn": {i: {"qk": surgery.keep_top(s[i]["attn"], 6),
                              "vo": surgery.keep_top(s[i]["attn"], 6)}}}
        for kind, plan in plans.items():
            lq = F.log_softmax(surgery.mask_model(tiny_vit, plan)(images), -1)
            want = F.kl_div(lq, logp, log_target=True, reduction="batchmean").item()
            assert sens[kind][i].item() == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_layer_sensitivity_is_zero_for_a_dead_layer(tiny_vit, images):
    with torch.no_grad():
        tiny_vit.blocks[0].mlp.fc2.weight.zero_()  # block 0's MLP output no longer depends on it
    sens = imp.layer_sensitivity(tiny_vit, images[:8], imp.random_scores(tiny_vit))
    assert sens["mlp"][0] == pytest.approx(0, abs=1e-6)
    assert sens["mlp"][1] > 0 and (sens["attn"] > 0).all()


def test_keep_ratios_meet_budget_exactly_after_clipping():
    w = torch.softmax(1.1 * torch.tensor([5.0, 4.0, 0.1, 0.2, 0.3, 0.1]), 0)
    r = imp.keep_ratios(w, 0.6)
    assert r.mean().item() == pytest.approx(0.6, abs=1e-12)
    assert (r <= 1).all() and r[0] == 1 and r[1] == 1  # clipped ...
    free = r[2:]  # ... and what they freed went to the others, in proportion to their weights
    torch.testing.assert_close(free / free.sum(), (w[2:] / w[2:].sum()).double())
    assert free.sum() == pytest.approx(6 * 0.6 - 2, abs=1e-12)


def test_keep_ratios_fixed_layers_and_errors():
    r = imp.keep_ratios(torch.ones(4), 0.5, fixed={0: 1.0})
    assert r[0] == 1 and r.mean().item() == pytest.approx(0.5) and torch.allclose(r[1:], r[1].expand(3))
    with pytest.raises(ValueError, match="out of range"):
        imp.keep_ratios(torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="out of range"):
        imp.keep_ratios(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="cannot be met"):
        imp.keep_ratios(torch.ones(2), 0.2, fixed={0: 1.0})


def test_adaptive_ratios_follow_sensitivity():
    sens = {"mlp": torch.tensor([3.0, 0.0, 1.0, 0.5]), "attn": torch.zeros(4)}
    r = imp.adaptive_ratios(sens, (0.429, 0.642))
    assert r["mlp"].argmax() == 0 and r["mlp"].argmin() == 1
    assert r["mlp"].mean().item() == pytest.approx(0.429) and r["attn"].mean().item() == pytest.approx(0.642)
    torch.testing.assert_close(r["attn"], torch.full((4,), 0.642, dtype=torch.float64))
    big = imp.adaptive_ratios({"mlp": torch.tensor([9.0, 0, 0, 0]), "attn": torch.zeros(4)}, (0.5, 0.5))
    assert big["mlp"][0] == 1 and big["mlp"].mean().item() == pytest.approx(0.5)


def test_allocate_counts_hits_total_exactly():
    r = torch.tensor([0.33, 0.77, 0.5, 0.01])
    c = imp.allocate_counts(r, [10, 10, 10, 10])
    assert c.sum() == round(float((r * 10).sum())) and (c >= 1).all() and (c <= 10).all()
    assert imp.allocate_counts([1.0, 1.0], [7, 5]).tolist() == [7, 5]


# ----------------------------------------------------------------------------- plans

@pytest.mark.parametrize("budget", imp.TAP_BUDGETS)
def test_make_plan_meets_budget_and_prunes_like_masking(tiny_vit, images, budget):
    s = imp.magnitude_scores(tiny_vit, 2)
    plan = imp.make_plan(tiny_vit, s, budget)
    kept_mlp = sum(len(plan.get(i, {}).get("mlp", range(192))) for i in range(2))
    assert kept_mlp == int(np.floor(budget[0] * 384 + 0.5))
    kept_dims = sum(plan[i]["qk"].shape[1] if "qk" in plan.get(i, {}) else 12 for i in range(2))
    assert kept_dims == int(np.floor(budget[1] * 24 + 0.5))
    pruned = imp.prune_copy(tiny_vit, plan)
    torch.testing.assert_close(pruned(images), surgery.mask_model(tiny_vit, plan)(images),
                               atol=1e-5, rtol=1e-4)
    assert measure.count_params(pruned) < measure.count_params(tiny_vit)


def test_make_plan_uses_qk_and_vo_scores_separately(tiny_vit):
    s = imp.toast_scores(tiny_vit)
    plan = imp.make_plan(tiny_vit, s, (1.0, 0.5), attn_dense_blocks=())
    assert torch.equal(plan[1]["qk"], surgery.keep_top(s[1]["qk"], 6))
    assert torch.equal(plan[1]["vo"], surgery.keep_top(s[1]["vo"], 6))


def test_make_plan_dense_block_and_heads(tiny_vit):
    s = imp.toast_scores(tiny_vit)
    plan = imp.make_plan(tiny_vit, s, (1.0, 0.75))  # ToaSt default: block 0 dense
    assert 0 not in plan and plan[1]["qk"].shape == (4, 6)  # block 1 prunes for both
    same = imp.make_plan(tiny_vit, imp.magnitude_scores(tiny_vit), (1.0, 0.75), attn_dense_blocks=(0,))
    assert 0 not in same and same[1]["qk"].shape == (4, 6)
    heads = imp.make_plan(tiny_vit, s, (1.0, 0.5), attn_unit="heads", attn_dense_blocks=())
    assert sum(len(heads[i]["heads"]) for i in heads) == 4
    pruned = imp.prune_copy(tiny_vit, heads)
    assert [b.attn.num_heads for b in pruned.blocks] == [len(heads[i]["heads"]) for i in range(2)]


def test_toast_heads_defaults_to_whole_heads(tiny_vit):
    s = imp.score(tiny_vit, "toast_heads")
    plan = imp.make_plan(tiny_vit, s, (1.0, 0.75))  # 6 of 8 heads; block 0 keeps its 4
    assert 0 not in plan and plan[1]["heads"].tolist() == surgery.keep_top(s[1]["heads"], 2).tolist()


def test_make_plan_adaptive_ratios_and_errors(tiny_vit):
    s = imp.random_scores(tiny_vit)
    plan = imp.make_plan(tiny_vit, s, (0.5, 0.5), layer_ratios={"mlp": [0.9, 0.1], "attn": [0.5, 0.5]})
    assert len(plan[0]["mlp"]) == 173 and len(plan[1]["mlp"]) == 19
    with pytest.raises(ValueError, match="out of range"):
        imp.make_plan(tiny_vit, s, (0.0, 0.5))
    with pytest.raises(ValueError, match="out of range"):
        imp.make_plan(tiny_vit, s, (0.5, 1.2))
    with pytest.raises(ValueError, match="3 entries"):
        imp.make_plan(tiny_vit, s, (0.5, 0.5), layer_ratios={"mlp": [0.5] * 3, "attn": [0.5] * 2})
    with pytest.raises(ValueError, match="attn_unit"):
        imp.make_plan(tiny_vit, s, (0.5, 0.5), attn_unit="channels")


def test_rank_correlation():
    assert imp.rank_correlation([1, 2, 3], [10, 20, 30]) == pytest.approx(1)
    assert imp.rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    with pytest.raises(ValueError):
        imp.rank_correlation([1, 2], [1, 2, 3])


def test_rank_correlation_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    g = np.random.default_rng(0)
    a, b = g.integers(0, 5, 50).astype(float), g.normal(size=50)
    assert imp.rank_correlation(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert imp.rank_correlation([1, 1, 1], [1, 2, 3]) == 0.0
