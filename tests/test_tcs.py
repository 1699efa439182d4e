"""Token Channel Selection: exactness, batch independence, FLOPs, determinism, errors."""
from __future__ import annotations

import copy

import pytest
import torch

from vitprune_lite import measure, surgery, tcs


@pytest.fixture()
def images():
    return torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _out(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_gathered_equals_masked_reference(tiny_vit, images, mode):
    tcs.patch(tiny_vit, fc1=[0.3, 0.5], fc2=0.75, mode=mode, impl="mask")
    masked = _out(tiny_vit, images)
    tcs.patch(tiny_vit, fc1=[0.3, 0.5], fc2=0.75, mode=mode, impl="gather")
    torch.testing.assert_close(_out(tiny_vit, images), masked, atol=1e-5, rtol=1e-5)


def test_zero_ratios_and_unpatch_reproduce_the_model_exactly(tiny_vit, images):
    ref = _out(tiny_vit, images)
    keys = list(tiny_vit.state_dict())
    tcs.patch(tiny_vit, fc1=0.0, fc2=0.0)
    assert not tcs.is_patched(tiny_vit) and torch.equal(_out(tiny_vit, images), ref)
    tcs.patch(tiny_vit, fc1=0.5, fc2=0.5)
    assert tcs.is_patched(tiny_vit) and list(tiny_vit.state_dict()) == keys
    assert not torch.allclose(_out(tiny_vit, images), ref)
    tcs.unpatch(tiny_vit)
    assert not tcs.is_patched(tiny_vit) and torch.equal(_out(tiny_vit, images), ref)
    assert all(len(b.attn.qkv._forward_hooks) == 0 for b in tiny_vit.blocks)


def test_sample_mode_is_batch_independent(tiny_vit, images):
    tcs.patch(tiny_vit, fc1=0.5, fc2=0.75, mode="sample")
    full = _out(tiny_vit, images)
    single = torch.cat([_out(tiny_vit, images[i:i + 1]) for i in range(len(images))])
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    shuffled = torch.empty_like(full)
    shuffled[perm] = _out(tiny_vit, images[perm])
    torch.testing.assert_close(single, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled, full, atol=1e-5, rtol=1e-5)
    rep = measure.batch_dependence(tiny_vit, images, batch_size=4)
    assert not rep["batch_dependent"]


def test_batch_mode_depends_on_batch_mates(tiny_vit, images):
    tcs.patch(tiny_vit, fc1=0.5, fc2=0.75, mode="batch")
    full = _out(tiny_vit, images)
    single = torch.cat([_out(tiny_vit, images[i:i + 1]) for i in range(len(images))])
    assert (full - single).abs().max() > 1e-3


def test_channel_scores_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g)  # B=2, CLS + 4 patches, 3 channels
    a = torch.rand(2, 4, generator=g)
    s = tcs.channel_scores(x, a)
    b, c, P = 1, 2, 4
    want = 2 / (1 + P) * x[b, 0, c].abs() + P / (1 + P) * sum(
        x[b, 1 + p, c].abs() * a[b, p] for p in range(P)) / P
    assert s[b, c].item() == pytest.approx(want.item(), rel=1e-6)
    sub = tcs.channel_scores(x, a, torch.tensor([1, 3]))
    want = 2 / 5 * x[b, 0, c].abs() + 4 / 5 * (x[b, 2, c].abs() * a[b, 1] + x[b, 4, c].abs() * a[b, 3]) / 2
    assert sub[b, c].item() == pytest.approx(want.item(), rel=1e-6)


def test_captured_class_attention_matches_explicit_attention(tiny_vit, images):
    tcs.patch(tiny_vit, fc2=0.5)
    mlp = tiny_vit.blocks[1].mlp
    seen = {}
    orig = mlp._tcs_scores
    mlp._tcs_scores = lambda x, a: seen.setdefault("a", a) is not None and orig(x, a)
    with torch.no_grad():
        h = tiny_vit.blocks[0](tiny_vit._pos_embed(tiny_vit.patch_embed(images)))
        tiny_vit.blocks[1](h)
        attn = tiny_vit.blocks[1].attn
        q, k, _ = attn.qkv(tiny_vit.blocks[1].norm1(h)).reshape(10, 17, 3, 4, 12).permute(2, 0, 3, 1, 4)
        full = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # [B, H, N, N]
    torch.testing.assert_close(seen["a"], full[:, :, 0, 1:].mean(1))


def test_flops_count_only_the_kept_channels(tiny_vit, images):
    B, N, P, C, M, H, D = 10, 17, 16, 48, 192, 4, 12
    dense = measure.count_flops(tiny_vit, images)
    k1, k2 = 24, 48  # fc1 ratio 0.5 on block 1; fc2 ratio 0.75 on both blocks
    tcs.patch(tiny_vit, fc1=[0.0, 0.5], fc2=0.75)
    saved = 2 * B * N * (C - k1) * M + 2 * 2 * B * N * (M - k2) * C
    overhead = 2 * (2 * B * H * N * D) + 2 * B * P * C + 2 * (2 * B * P * M)
    assert measure.count_flops(tiny_vit, images) == dense - saved + overhead
    one = measure.count_flops(tiny_vit, images[:1])  # batch 1 takes the plain-matmul path
    assert one * B == measure.count_flops(tiny_vit, images)


def test_deterministic_and_seeded_patch_sampling(tiny_vit, images):
    with pytest.raises(ValueError, match="seed"):
        tcs.patch(tiny_vit, fc2=0.5, patch_fraction=0.25)
    tcs.patch(tiny_vit, fc2=0.5)
    assert torch.equal(_out(tiny_vit, images), _out(tiny_vit, images))
    tcs.patch(tiny_vit, fc2=0.5, patch_fraction=0.25, seed=3)
    a = _out(tiny_vit, images)
    assert torch.equal(a, _out(tiny_vit, images))  # same every call, whatever came before
    single = torch.cat([_out(tiny_vit, images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(single, a, atol=1e-5, rtol=1e-5)
    assert tiny_vit.blocks[0].mlp.tcs_patches.tolist() != tiny_vit.blocks[1].mlp.tcs_patches.tolist() \
        or len(tiny_vit.blocks[0].mlp.tcs_patches) == 4
    tcs.patch(tiny_vit, fc2=0.5, patch_fraction=0.25, seed=4)
    assert not torch.equal(a, _out(tiny_vit, images))


def test_deepcopy_of_patched_model(tiny_vit, images):
    tcs.patch(tiny_vit, fc1=0.3, fc2=0.5)
    ref = _out(tiny_vit, images)
    twin = copy.deepcopy(tiny_vit)
    torch.testing.assert_close(_out(twin, images), ref)
    tcs.unpatch(twin)
    assert tcs.is_patched(tiny_vit) and torch.equal(_out(tiny_vit, images), ref)


def test_works_on_a_surgery_pruned_model(tiny_vit, images):
    plan = {1: {"qk": [[0, 1, 2]] * 4, "vo": [[3, 4, 5, 6, 7]] * 4, "mlp": list(range(100))}}
    surgery.apply_plan(tiny_vit, plan)
    tcs.patch(tiny_vit, fc1=0.5, fc2=0.5, impl="mask")
    masked = _out(tiny_vit, images)
    tcs.patch(tiny_vit, fc1=0.5, fc2=0.5)
    torch.testing.assert_close(_out(tiny_vit, images), masked, atol=1e-5, rtol=1e-5)
    assert tcs.settings(tiny_vit)[1] == {"fc1_keep": 24, "fc2_keep": 50, "mode": "sample",
                                         "variant": "project"}


def test_schedule_and_errors(tiny_vit):
    assert tcs.schedule(4, 0.9, 2) == [0.0, 0.0, 0.9, 0.9]
    with pytest.raises(ValueError, match="3 entries"):
        tcs.patch(tiny_vit, fc2=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="out of range"):
        tcs.patch(tiny_vit, fc1=1.0)
    with pytest.raises(ValueError, match="remove all"):
        tcs.patch(tiny_vit, fc1=0.995)
    with pytest.raises(ValueError, match="mode"):
        tcs.patch(tiny_vit, fc2=0.5, mode="per_batch")
    with pytest.raises(ValueError, match="unsupported model"):
        tcs.patch(torch.nn.Linear(3, 3), fc2=0.5)
    tiny_vit.global_pool = "avg"  # still has a class token: fine
    tiny_vit.cls_token = None
    with pytest.raises(ValueError, match="class token"):
        tcs.patch(tiny_vit, fc2=0.5)
    assert not tcs.is_patched(tiny_vit)


def test_audit_sample_mode_changes_nothing(tiny_vit, images):
    y = torch.tensor([0, 1] * 5)
    rep = tcs.audit(tiny_vit, images, y, fc1=0.5, fc2=0.75, batch_size=4)
    assert rep["sample"]["changed_shuffled"] == 0 and rep["sample"]["changed_sorted"] == 0
    assert rep["sample"]["acc_batch1"] == rep["sample"]["acc_sorted"] == rep["sample"]["acc_shuffled"]
    assert set(rep["batch"]) == set(rep["sample"])
    assert not tcs.is_patched(tiny_vit)
    with pytest.raises(ValueError, match="labels"):
        tcs.audit(tiny_vit, images, y[:3])
