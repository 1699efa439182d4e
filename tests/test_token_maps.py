"""Token sources: tracking follows each reduction exactly (partitions, counts, the same tokens an
independent recomputation picks) and never changes the outputs; notebook 03's token maps."""
import vitprune_lite  # noqa: F401  (before timm: installs the torchvision work-around)

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from timm.models.vision_transformer import VisionTransformer

from vitprune_lite import tokens
from vitprune_lite.experiments import latency_curve as lc

C, H, DEPTH, GRID = 48, 4, 4, 8
N = 1 + GRID * GRID  # CLS + 64 patches
P = N - 1

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest)


def make_vit(seed: int = 1) -> VisionTransformer:
    """A tiny ViT with O(1) random weights, so that scores and similarities are far from ties."""
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=C, depth=DEPTH, num_heads=H, mlp_ratio=2.0,
                              num_classes=5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(r / math.sqrt(p[0].numel()) if p.dim() >= 2 and "pos_embed" not in name else 0.5 * r)
    return model.eval()


def images(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def patched(method: str, amount, **kw):
    return tokens.reduced_copy(make_vit(), method, amount, **kw)


def one_block(d: int, at: int) -> list[int]:
    return [d if i == at else 0 for i in range(DEPTH)]


def block_io(model, at: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens entering block ``at`` ``[B, N, C]`` and those reaching its MLP ``[B, N', C]``."""
    seen = {}
    blk = model.blocks[at]
    hooks = [blk.register_forward_pre_hook(lambda m, a: seen.update(t=a[0])),
             blk.norm2.register_forward_pre_hook(lambda m, a: seen.update(y=a[0]))]
    with torch.no_grad():  # not inference mode: the captured tensors are reused below
        model(x)
    for h in hooks:
        h.remove()
    return seen["t"], seen["y"]


def attention(blk, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities ``[B, H, N, N]`` and values ``[B, H, N, D]`` of a timm block, recomputed by hand."""
    B, n, _ = t.shape
    with torch.no_grad():
        q, k, v = blk.attn.qkv(blk.norm1(t)).reshape(B, n, 3, H, C // H).permute(2, 0, 3, 1, 4)
        return (q * blk.attn.scale @ k.transpose(-2, -1)).softmax(-1), v


SETTINGS = [("tome", 6, {}), ("tome", 6, {"variant": "reference"}), ("topk", [0, 20, 0, 10], {}),
            ("evit", [0, 20, 0, 10], {}), ("pomt", 30, {"layer": 1}), ("pomt", 30, {"layer": 2, "variant": "reference"})]


# ----------------------------------------------------------------------------- tracking changes nothing

@pytest.mark.parametrize("method,amount,kw", SETTINGS)
def test_tracking_leaves_outputs_unchanged_and_switches_off(method, amount, kw):
    model, x = patched(method, amount, **kw), images()
    with torch.inference_mode():
        plain = model(x)
    logits, src = tokens.token_sources(model, x)
    assert torch.equal(logits, plain)
    assert model._tr_state.track is False and model._tr_state.source is None
    with torch.inference_mode():
        assert torch.equal(model(x), plain)  # and the next forward is untracked again
    # every final token holds at least one input token, no input token is held twice
    assert src.dtype == torch.bool and src.shape == (len(x), tokens.schedule_of(model)["tokens"][-1], N)
    assert src.any(-1).all() and (src.sum(1) <= 1).all()
    assert src[:, 0, 0].all() and (src[:, 0].sum(-1) == 1).all()  # CLS stays first and alone


def test_nothing_removed_gives_identity_and_unpatched_is_refused():
    x = images(2)
    logits, src = tokens.token_sources(patched("pomt", 0), x)
    assert torch.equal(src, torch.eye(N, dtype=torch.bool).expand(2, N, N))
    with pytest.raises(ValueError, match="patch it first"):
        tokens.token_sources(make_vit(), x)


# ----------------------------------------------------------------------------- partitions and counts

@pytest.mark.parametrize("R,layer", [(1, 0), (30, 1), (P - 1, 3)])
def test_pomt_sources_kept_plus_fused_are_all_patches(R, layer):
    _, src = tokens.token_sources(patched("pomt", R, layer=layer), images())
    assert src.shape[1] == N - R
    per_token = src[:, 1:, 1:].sum(-1)  # [B, N - R - 1] patches per non-CLS token
    assert (per_token[:, :-1] == 1).all() and (per_token[:, -1] == R + 1).all()  # kept alone, fused last
    assert (src[:, :, 1:].sum(1) == 1).all()  # each patch kept or fused, exactly once


def test_topk_sources_keep_single_patches_and_drop_the_rest():
    drop = [0, 20, 0, 10]
    _, src = tokens.token_sources(patched("topk", drop), images())
    assert src.shape[1] == N - sum(drop)
    assert (src[:, 1:, 1:].sum(-1) == 1).all()
    assert (src[:, :, 1:].any(1).sum(-1) == P - sum(drop)).all()


@pytest.mark.parametrize("variant", ["project", "reference"])
def test_tome_sources_partition_patches_and_match_token_sizes(variant):
    model = patched("tome", 6, variant=variant)
    sizes = []
    hook = model.blocks[-1].norm2.register_forward_pre_hook(
        lambda m, a: sizes.append((model._tr_state.size[..., 0].clone(), model._tr_state.source.clone())))
    _, src = tokens.token_sources(model, images())
    hook.remove()
    assert src.shape[1] == N - 6 * DEPTH
    assert (src.sum(1) == 1).all()  # every input token in exactly one final token
    size, source = sizes[0]  # ToMe's own sizes (the merge), against the replayed map
    assert torch.equal(source.sum(-1), size) and torch.equal(source > 0, src)


# ----------------------------------------------------------------------------- against independent recomputation

@pytest.mark.parametrize("method,amount,at", [("pomt", 30, 1), ("topk", one_block(20, 2), 2),
                                              ("tome", one_block(12, 0), 0)])
def test_tokens_are_the_mean_of_their_sources(method, amount, at):
    """One reduction, at one block: each token reaching its MLP is the mean of its sources'
    post-attention tokens (POMT's fused token, ToMe's pairs; kept tokens are themselves)."""
    model, x = patched(method, amount, **({"layer": at} if method == "pomt" else {})), images()
    t, y = block_io(model, at, x)
    with torch.no_grad():
        post = t + model.blocks[at].attn(model.blocks[at].norm1(t))  # after the attention residual
    _, src = tokens.token_sources(model, x)
    s = src.float()
    torch.testing.assert_close(y, (s @ post) / s.sum(-1, keepdim=True))


def test_pomt_keeps_the_patches_of_an_independent_score():
    R, at = 30, 1
    model, x = patched("pomt", R, layer=at), images()
    t, _ = block_io(model, at, x)
    probs, v = attention(model.blocks[at], t)
    recv = probs[:, :, 1:, 1:].amax(1).sum(1)
    score = recv / recv.amax(-1, keepdim=True) + v[:, :, 1:].sum(-1).softmax(-1).amax(1)  # [B, P]
    _, src = tokens.token_sources(model, x)
    kept = src[:, 1:-1, 1:].float().argmax(-1)  # patch index of each kept token, best first
    assert torch.equal(kept, score.argsort(-1, descending=True)[:, :N - R - 2])


def test_topk_keeps_the_patches_the_cls_attends_to_most():
    d, at = 20, 2
    model, x = patched("topk", one_block(d, at)), images()
    t, _ = block_io(model, at, x)
    probs, _ = attention(model.blocks[at], t)
    cls = probs[:, :, 0, 1:].mean(1)  # [B, P] class-token attention, mean over heads
    _, src = tokens.token_sources(model, x)
    kept = src[:, 1:, 1:].float().argmax(-1)
    assert torch.equal(kept, cls.argsort(-1, descending=True)[:, :P - d])


# ----------------------------------------------------------------------------- notebook 03's token maps

def tiny_setup(n: int = 8) -> SimpleNamespace:
    y = torch.tensor([2, 2, 0, 1, 0, 3, 1, 4][:n])
    return SimpleNamespace(base=make_vit(), x_test=images(n), y_test=y, n_tokens=N,
                           bench=SimpleNamespace(classes=("a", "b", "c", "d", "e")))


def test_comparable_tome_r():
    assert lc.comparable_tome_r(N, 1, DEPTH, 20) == 5  # 4 blocks x 5 = 20 removed
    assert lc.comparable_tome_r(N, 1, DEPTH, 22) == 5  # 20 and 24 are equally close: the smaller r
    assert lc.comparable_tome_r(N, 1, DEPTH, 0) == 0
    assert lc.comparable_tome_r(N, 1, DEPTH, P - 1) == 12  # the most ToMe can merge: 12 of the 28 patches left in block 3


def test_token_maps_data_and_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params, st, R, layer = lc.Params.preset("smoke"), tiny_setup(), 24, 1
    maps = lc.token_maps(params, st, R, layer, n_images=3)
    assert maps.labels == ["c", "a", "b"]  # the first image of each class, in order of appearance
    assert maps.images.shape == (3, 32, 32, 3) and maps.images.dtype == np.uint8
    assert maps.grid == (GRID, GRID) and maps.patch == (4, 4) and maps.layer == layer
    pomt, topk, tome = (maps.methods[k] for k in ("pomt", "topk", "tome"))
    assert pomt["tokens"] == topk["tokens"] == N - R and tome["amount"] == lc.comparable_tome_r(N, 1, DEPTH, R)
    assert tome["tokens"] == N - DEPTH * tome["amount"]
    for o in pomt["owner"]:  # one token holds R + 1 patches, every other exactly one
        counts = np.bincount(o)
        assert o.min() >= 1 and sorted(counts[counts > 0])[-2:] == [1, R + 1] and (counts > 0).sum() == N - R - 1
    for o in topk["owner"]:
        assert (o == -1).sum() == R and len(set(o[o >= 0])) == P - R
    for o in tome["owner"]:
        assert o.min() >= 1 and len(set(o)) == tome["tokens"] - 1
    fig = lc.plot_token_maps(maps)
    try:
        axes = fig.get_axes()
        assert len(axes) == 3 * 4
        assert f"{N - R} tokens" in axes[1].get_title() and f"{N - R} tokens" in axes[2].get_title()
        assert f"block {layer}" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_token_maps_refuses_bad_requests():
    params, st = lc.Params.preset("smoke"), tiny_setup(2)
    with pytest.raises(ValueError, match="n_images"):
        lc.token_maps(params, st, 10, 1, n_images=0)
    with pytest.raises(ValueError, match="only 2"):
        lc.token_maps(params, st, 10, 1, n_images=3)
    with pytest.raises(ValueError, match="R must be in"):
        lc.token_maps(params, st, N, 1, n_images=2)
