"""Token reduction: "do nothing" reproduces the model exactly, token counts are exact, the
methods keep what they claim to keep, attention stays fused, and bad requests are refused."""
import vitprune_lite  # noqa: F401  (before timm: installs the torchvision work-around)

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timm.models.vision_transformer import Block, VisionTransformer

from vitprune_lite import measure, surgery, tokens

C, H, DEPTH, CLASSES = 48, 4, 4, 5
N = 1 + (32 // 4) ** 2  # CLS + 64 patches, as in the base model
METHODS = ("tome", "topk", "evit", "pomt")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest)


def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """O(1) weights: timm's init (std 0.02, LayerScale 1e-5) would hide a wrong block behind tiny residuals."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith(("cls_token", "pos_embed")):
                p.copy_(0.5 * r)
            elif p.dim() >= 2:
                p.copy_(r / math.sqrt(p[0].numel()))
            elif name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.3 * r)
            else:
                p.copy_(0.1 * r)
    return model


def make_vit(layerscale: bool = False, **kw) -> VisionTransformer:
    args = dict(img_size=32, patch_size=4, embed_dim=C, depth=DEPTH, num_heads=H, mlp_ratio=2.0,
                num_classes=CLASSES, init_values=1e-5 if layerscale else None)
    return randomize(VisionTransformer(**{**args, **kw})).eval()


def images(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def apply(model, method: str, amount):
    if method == "tome":
        return tokens.patch_tome(model, amount)
    if method == "pomt":
        return tokens.patch_pomt(model, amount)
    return getattr(tokens, f"patch_{method}")(model, amount)


SETTINGS = {"tome": 6, "topk": [0, 20, 0, 10], "evit": [0, 20, 0, 10], "pomt": 30}


class SdpaCounter:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = F.scaled_dot_product_attention

        def counting(*a, **k):
            self.calls += 1
            return real(*a, **k)
        monkeypatch.setattr(F, "scaled_dot_product_attention", counting)


# ----------------------------------------------------------------------------- do nothing

@pytest.mark.parametrize("layerscale", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_zero_reduction_is_exact_and_fused(method, layerscale, monkeypatch):
    model = make_vit(layerscale=layerscale, qk_norm=True)
    x = images()
    with torch.no_grad():
        ref = model(x)
    counter = SdpaCounter(monkeypatch)
    apply(model, method, 0)
    assert tokens.is_patched(model)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out, ref)  # bit for bit, LayerScale and q/k norms included
    assert counter.calls == DEPTH  # the fused kernel, once per block
    assert all(b.attn.fused_attn for b in model.blocks)
    tokens.restore(model)
    assert type(model) is VisionTransformer and all(type(b) is Block for b in model.blocks)
    assert not any(hasattr(b, "_tr_plan") for b in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_restore_and_repatch(tiny_vit):
    x = images(2)
    with torch.no_grad():
        ref = tiny_vit(x)
    tokens.patch_tome(tiny_vit, 2)
    tokens.patch_pomt(tiny_vit, 3, layer=1)  # replaces the previous patch
    assert tokens.schedule_of(tiny_vit)["method"] == "pomt"
    assert tokens.restore(tokens.restore(tiny_vit)) is tiny_vit
    with torch.no_grad():
        assert torch.equal(tiny_vit(x), ref)
    assert tokens.schedule_of(tiny_vit) == {"method": None, "schedule": [0, 0], "tokens": [17, 17]}


# ----------------------------------------------------------------------------- ToMe

def test_bipartite_merge_preserves_mass_and_prefix():
    g = torch.Generator().manual_seed(0)
    x, k = torch.randn(2, 11, 6, generator=g), torch.randn(2, 11, 4, generator=g)
    size = 1 + torch.rand(2, 11, 1, generator=g)
    out, new = tokens.bipartite_merge(x, k, 3, prefix=1, size=size)
    assert out.shape == (2, 8, 6) and new.shape == (2, 8, 1)
    torch.testing.assert_close((out * new).sum(1), (x * size).sum(1))
    torch.testing.assert_close(new.sum(1), size.sum(1))
    torch.testing.assert_close(out[:, 0], x[:, 0])
    assert torch.equal(new[:, 0], size[:, 0])
    with pytest.raises(ValueError, match="r must be in 0..5"):
        tokens.bipartite_merge(x, k, 6, prefix=1)


def test_bipartite_merge_merges_the_most_similar_pair():
    # Tokens 1..4 (after CLS): A = {1, 3}, B = {2, 4}. Key of 3 equals key of 4: they must merge.
    keys = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [0, 0, 1]]])
    x = torch.arange(15, dtype=torch.float).view(1, 5, 3)
    out, size = tokens.bipartite_merge(x, keys, 1, prefix=1)
    assert size.flatten().tolist() == [1, 1, 1, 2]  # tokens 0, 1, 2 and 4 (+3), in place
    torch.testing.assert_close(out[0, -1], (x[0, 3] + x[0, 4]) / 2)


@pytest.mark.parametrize("r, kind", [(3, "constant"), (3, "decreasing"), ([10, 0, 5, 1], None)])
def test_tome_token_counts(r, kind):
    model = make_vit()
    tokens.patch_tome(model, r, **({"kind": kind} if kind else {}))
    sched = r if isinstance(r, list) else tokens.tome_schedule(r, DEPTH, kind)
    expect = list(N - np.cumsum(sched))
    assert tokens.tokens_per_block(model, images(2)) == expect == tokens.schedule_of(model)["tokens"]


def test_tome_schedules():
    assert tokens.tome_schedule(4, 6) == [4] * 6
    dec = tokens.tome_schedule(4, 6, "decreasing")
    assert dec[0] == 8 and dec[-1] == 0 and all(a >= b for a, b in zip(dec, dec[1:]))
    assert abs(sum(dec) - 24) <= 1
    with pytest.raises(ValueError, match="kind"):
        tokens.tome_schedule(4, 6, "cosine")


def test_tome_proportional_attention_fused_equals_explicit(monkeypatch):
    fused = make_vit(layerscale=True)
    explicit = make_vit(layerscale=True)
    for blk in explicit.blocks:
        blk.attn.fused_attn = False  # the hand-written path: softmax(qk^T * scale + log(size)) v
    x = images()
    counter = SdpaCounter(monkeypatch)
    tokens.patch_tome(fused, 8)
    tokens.patch_tome(explicit, 8)
    with torch.no_grad():
        a = fused(x)
        calls = counter.calls
        b = explicit(x)
    assert calls == DEPTH and counter.calls == DEPTH  # explicit model never called SDPA
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_tome_proportional_attention_changes_output():
    a, b = make_vit(), make_vit()
    tokens.patch_tome(a, 8)
    tokens.patch_tome(b, 8, proportional=False)
    with torch.no_grad():
        assert not torch.allclose(a(images()), b(images()))


def test_tome_refuses_too_large_r_unless_clipped():
    model = make_vit()
    with pytest.raises(ValueError, match="at most 32"):
        tokens.patch_tome(model, [33, 0, 0, 0])
    with pytest.raises(ValueError, match="block 3"):
        tokens.patch_tome(model, 14)  # 65 -> 51 -> 37 -> 23: block 3 may merge only 11
    assert not tokens.is_patched(model)  # refused before touching the model
    tokens.patch_tome(model, 14, clip=True)  # what the published ToMe does silently
    assert tokens.schedule_of(model)["schedule"] == [14, 14, 14, 11]
    assert tokens.tokens_per_block(model, images(1)) == [51, 37, 23, 12]
    with pytest.raises(ValueError, match=">= 0"):
        tokens.patch_tome(model, -1)


# ----------------------------------------------------------------------------- POMT

@pytest.mark.parametrize("R, layer", [(1, 0), (30, 2), (63, 1), (17, None)])
def test_pomt_runs_at_exactly_n_star(R, layer):
    model = make_vit()
    tokens.patch_pomt(model, R, layer=layer)
    where = tokens.default_pomt_layer(DEPTH) if layer is None else layer
    n_star = N - R
    got = tokens.tokens_per_block(model, images(2))
    assert got == [N] * where + [n_star] * (DEPTH - where)
    # the head sees n* tokens too
    seen = []
    h = model.norm.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    with torch.no_grad():
        model(images(1))
    h.remove()
    assert seen == [n_star]


@pytest.mark.parametrize("R", [-1, 64, 200, 2.0, True])
def test_pomt_refuses_bad_R(R):
    model = make_vit()
    with pytest.raises(ValueError, match="R must be"):
        tokens.patch_pomt(model, R)
    assert not tokens.is_patched(model)


def test_pomt_refuses_bad_layer():
    with pytest.raises(ValueError, match="layer must be a block index in 0..3"):
        tokens.patch_pomt(make_vit(), 5, layer=4)


def test_pomt_scores_rank_received_attention_and_value_energy():
    B, Hh, n, d = 1, 2, 5, 3
    probs = torch.full((B, Hh, n, n), 1.0 / n)
    probs[0, 1, 1:, 3] = 0.9  # every patch query attends to token 3 in head 1
    v = torch.zeros(B, Hh, n, d)
    s = tokens.pomt_scores(probs, v, prefix=1)
    assert s.shape == (1, 4) and s.argmax().item() == 2  # token 3 = patch index 2
    assert s.max().item() == pytest.approx(1.0 + 0.25)  # normalised attention + uniform softmax of V
    v[0, 0, 4] = 10.0  # token 4's values dominate head 0: its value energy -> 1, the others' -> 0
    # received: 4 queries x 0.2 over token 3's 4 x 0.9; energy: max over heads (head 1 stays uniform)
    expect = [0.8 / 3.6 + 0.25, 0.8 / 3.6 + 0.25, 1.0 + 0.25, 0.8 / 3.6 + 1.0]
    assert tokens.pomt_scores(probs, v, prefix=1)[0].tolist() == pytest.approx(expect, abs=1e-4)


def test_keep_and_fuse_keeps_the_top_and_averages_the_rest():
    x = torch.arange(6 * 2, dtype=torch.float).view(1, 6, 2)
    score = torch.tensor([[0.1, 0.9, 0.5, 0.2, 0.8]])  # patches 1..5
    out = tokens._keep_and_fuse(x, score, remove=2, prefix=1, weights=None)
    assert out.shape == (1, 4, 2)
    assert torch.equal(out[0, :3], x[0, [0, 2, 5]])  # CLS, then the best two (0.9, 0.8)
    torch.testing.assert_close(out[0, 3], x[0, [1, 3, 4]].mean(0))
    top = tokens._keep_and_fuse(x, score, remove=2, prefix=1, weights=None, drop_only=True)
    assert torch.equal(top[0], x[0, [0, 2, 5, 3]])  # Top-K: best three kept, nothing fused
    w = torch.tensor([[1.0, 0, 0, 3.0, 0]])
    ev = tokens._keep_and_fuse(x, score, remove=2, prefix=1, weights=w)
    torch.testing.assert_close(ev[0, 3], (1 * x[0, 1] + 3 * x[0, 4] + 0 * x[0, 3]) / 4)


# ----------------------------------------------------------------------------- Top-K, EViT

def test_topk_and_evit_counts_and_difference():
    drop = tokens.keep_rate_schedule(make_vit(), 0.7, locations=[1, 2])
    assert drop == [0, 19, 13, 0]  # 64 -> 45 -> 32 patches
    a, b = tokens.patch_topk(make_vit(), drop), tokens.patch_evit(make_vit(), drop)
    x = images(2)
    assert tokens.tokens_per_block(a, x) == tokens.tokens_per_block(b, x) == [65, 46, 33, 33]
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))  # EViT's fused token carries the dropped tokens


def test_topk_keeps_tokens_the_cls_attends_to(monkeypatch):
    model = make_vit()
    tokens.patch_topk(model, [0, 60, 0, 0])  # keep 4 patches in block 1
    captured = {}
    real = tokens._keep_and_fuse

    def spy(x, score, remove, prefix, weights, drop_only=False):
        out = real(x, score, remove, prefix, weights, drop_only)
        captured.update(x=x, score=score, out=out)
        return out
    monkeypatch.setattr(tokens, "_keep_and_fuse", spy)
    with torch.no_grad():
        model(images(1))
    best = captured["score"][0].topk(4).indices + 1
    assert torch.equal(captured["out"][0, 1:], captured["x"][0, best])


def test_defaults_for_locations_and_layer():
    assert tokens.evit_locations(12) == [3, 6, 9]
    assert tokens.evit_locations(6) == [1, 3, 4]
    assert tokens.default_pomt_layer(12) == 3 and tokens.default_pomt_layer(6) == 2
    with pytest.raises(ValueError, match="keep_rate"):
        tokens.keep_rate_schedule(make_vit(), 1.5)
    with pytest.raises(ValueError, match="one per block"):
        tokens.patch_topk(make_vit(), [1, 2])
    with pytest.raises(ValueError, match="at most 63"):
        tokens.patch_evit(make_vit(), [64, 0, 0, 0])


# ----------------------------------------------------------------------------- all methods

@pytest.mark.parametrize("method", METHODS)
def test_per_sample_and_deterministic(method):
    model = apply(make_vit(layerscale=True), method, SETTINGS[method])
    x = images(4)
    with torch.no_grad():
        batch = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(4)])
        again = model(x)
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch, again)


@pytest.mark.parametrize("method", METHODS)
def test_works_on_surgically_pruned_attention(method):
    model = make_vit()
    surgery.prune_head_dims(model, 1, qk_keep=[[0, 1, 2, 3, 4]] * H, vo_keep=[[5, 6, 7]] * H)
    assert isinstance(model.blocks[1].attn, surgery.SlimAttention)
    x = images(2)
    with torch.no_grad():
        ref = model(x)
        apply(model, method, 0)
        assert torch.equal(model(x), ref)
        apply(model, method, SETTINGS[method])
        out = model(x)
    assert out.shape == (2, CLASSES) and torch.isfinite(out).all()


def test_timm_deit_tome_counts():
    model = vitprune_lite.models.create_timm_model("deit_tiny_patch16_224")
    tokens.patch_tome(model, 8)
    x = torch.randn(1, 3, 224, 224)
    assert tokens.tokens_per_block(model, x) == [197 - 8 * (i + 1) for i in range(12)]


def test_refuses_unsupported_models_and_masks():
    with pytest.raises(TypeError, match="VisionTransformer"):
        tokens.patch_tome(nn.Linear(3, 3), 1)
    model = tokens.patch_tome(make_vit(), 2)
    with pytest.raises(ValueError, match="attn_mask"):
        model.forward_features(images(1), attn_mask=torch.zeros(1, 1, N, N))
    no_cls = make_vit(class_token=False, global_pool="avg")
    with pytest.raises(TypeError, match="CLS"):
        tokens.patch_tome(no_cls, 1)


# ----------------------------------------------------------------------------- random pruning, choice of R

def test_subset_vit_full_equals_model_and_refuses_bad_n():
    model = make_vit()
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(tokens.SubsetViT(model, N)(x), model(x), rtol=0, atol=1e-6)
        assert tokens.SubsetViT(model, 2)(x).shape == (2, CLASSES)
    for bad in (1, N + 1, 0):
        with pytest.raises(ValueError, match=f"n must be an int in 2..{N}"):
            tokens.SubsetViT(model, bad)


def test_random_token_accuracy_matches_full_model_and_ignores_batching():
    model = make_vit()
    x = images(24, seed=3)
    with torch.no_grad():
        y = model(x).argmax(-1)
    y[::3] = (y[::3] + 1) % CLASSES  # 2/3 correct at full tokens
    acc = tokens.random_token_accuracy(model, x, y, [N, 10, 2], batch_size=5)
    assert acc[0] == pytest.approx(measure.accuracy(model, x, y))
    again = tokens.random_token_accuracy(model, x, y, [N, 10, 2], batch_size=24)
    assert np.array_equal(acc, again)
    with pytest.raises(ValueError, match="n_values"):
        tokens.random_token_accuracy(model, x, y, [1])


def test_choose_prune_count():
    ns = np.arange(2, N + 1)
    lat = 1.0 + ns / N  # linear latency
    acc = np.where(ns >= 40, 0.9, 0.3)  # accuracy collapses below 40 tokens
    out = tokens.choose_prune_count(ns, lat, acc, N, alpha=0.5)
    assert out["n_star"] == 40 and out["R"] == N - 40
    assert tokens.choose_prune_count(ns, lat, acc, N, alpha=0.0)["n_star"] == N  # ties -> fewer pruned
    assert tokens.choose_prune_count(ns, lat, acc, N, alpha=1.0)["n_star"] == 2
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="alpha"):
            tokens.choose_prune_count(ns, lat, acc, N, alpha=bad)
    with pytest.raises(ValueError, match="n_values must lie in 2..65"):
        tokens.choose_prune_count(np.arange(1, 66), np.ones(65), np.ones(65), N)
