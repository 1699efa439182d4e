"""Surgery: pruned models equal their zero-masked references, are really smaller, and refuse
bad requests before touching anything."""
import vitprune_lite  # noqa: F401  (before timm: installs the torchvision work-around)

import math

import pytest
import torch
from torch import nn

import timm
from timm.layers import GluMlp
from timm.models.vision_transformer import VisionTransformer

from vitprune_lite.surgery import (
    SlimAttention, apply_plan, block_widths, keep_top, mask_model, prune_embed,
    prune_head_dims, prune_heads, prune_mlp,
)

C, H, D, M, DEPTH, CLASSES = 48, 4, 12, 96, 3, 5  # embed, heads, head dim, MLP hidden
TOKENS = 1 + (32 // 8) ** 2                        # cls + 16 patches
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest)


def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """O(1) weights everywhere. timm's init (std 0.02, LayerScale 1e-5) makes each block's
    contribution so small that a wrong surgery would still pass a 1e-5 tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith(("cls_token", "reg_token", "dist_token", "pos_embed")):
                p.copy_(0.5 * r)
            elif p.dim() >= 2:  # Linear / Conv weight: keep activations O(1)
                p.copy_(r / math.sqrt(p[0].numel()))
            elif name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.3 * r)
            else:  # biases
                p.copy_(0.1 * r)
    return model


def make_vit(fused: bool = True, layerscale: bool = False, **kw) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=C, depth=DEPTH, num_heads=H, mlp_ratio=M / C,
                num_classes=CLASSES, init_values=1e-5 if layerscale else None)
    model = randomize(VisionTransformer(**{**args, **kw})).eval()
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def vit_params(embed=C, widths=None, qkv_bias=True, layerscale=False) -> int:
    """Exact parameter count of the test ViT for given per-block (H, dq, dv, M)."""
    widths = widths or [(H, D, D, M)] * DEPTH
    total = 3 * 8 * 8 * embed + embed           # patch embedding conv
    total += embed + TOKENS * embed             # cls token, pos_embed
    total += 2 * embed + embed * CLASSES + CLASSES  # final norm, head
    for h, dq, dv, m in widths:
        qkv_rows = h * (2 * dq + dv)
        total += 4 * embed                       # norm1, norm2
        total += embed * qkv_rows + (qkv_rows if qkv_bias else 0)
        total += h * dv * embed + embed          # proj
        total += embed * m + m + m * embed + embed  # fc1, fc2
        total += 2 * embed if layerscale else 0
    return total


def ranks(rows: int, n: int, k: int, seed: int) -> torch.Tensor:
    """Random (but reproducible) keep indices: [rows, k] of range(n)."""
    return keep_top(torch.rand(rows, n, generator=torch.Generator().manual_seed(seed)), k)


PLANS = {
    "heads": {1: {"heads": [0, 2, 3]}},
    "qk": {1: {"qk": ranks(H, D, 5, 0)}},
    "vo": {1: {"vo": ranks(H, D, 7, 1)}},
    "mlp": {2: {"mlp": ranks(1, M, 40, 2)[0]}},
    "mixed": {
        0: {"heads": [1, 3], "qk": ranks(2, D, 4, 3), "vo": ranks(2, D, 9, 4)},
        1: {"mlp": ranks(1, M, 17, 5)[0].tolist()},
        2: {"heads": [0, 1, 2], "vo": ranks(3, D, 3, 6).numpy(), "mlp": ranks(1, M, 60, 7)[0]},
    },
}
WIDTHS = {  # per block (heads, qk_dim, v_dim, mlp_hidden) after each plan
    "heads": [(H, D, D, M), (3, D, D, M), (H, D, D, M)],
    "qk": [(H, D, D, M), (H, 5, D, M), (H, D, D, M)],
    "vo": [(H, D, D, M), (H, D, 7, M), (H, D, D, M)],
    "mlp": [(H, D, D, M), (H, D, D, M), (H, D, D, 40)],
    "mixed": [(2, 4, 9, M), (H, D, D, 17), (3, D, 3, 60)],
}


def assert_matches_mask(model: nn.Module, plan: dict, x: torch.Tensor) -> nn.Module:
    dense = model(x)
    masked = mask_model(model, plan)(x)
    pruned = apply_plan(model, plan)(x)
    assert (dense - masked).abs().max() > 1e-3, "plan had no effect: the check would be vacuous"
    assert (pruned - masked).abs().max() <= TOL
    return model


@pytest.mark.parametrize("layerscale", [False, True], ids=["no-ls", "ls"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("kind", list(PLANS))
def test_pruned_equals_masked_and_is_smaller(kind, fused, layerscale):
    model = make_vit(fused, layerscale)
    assert n_params(model) == vit_params(layerscale=layerscale)
    assert_matches_mask(model, PLANS[kind], images())
    widths = WIDTHS[kind]
    assert n_params(model) == vit_params(widths=widths, layerscale=layerscale)
    assert [tuple(w.values()) for w in block_widths(model)] == widths
    for block, (h, dq, dv, _) in zip(model.blocks, widths):
        assert block.attn.qkv.weight.shape == (h * (2 * dq + dv), C)
        assert block.attn.proj.weight.shape == (C, h * dv)
        assert block.attn.fused_attn is fused


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_prune_again(fused):
    model, x = make_vit(fused, layerscale=True), images()
    prune_heads(model, 1, [0, 1, 3])
    assert isinstance(model.blocks[1].attn, SlimAttention)
    steps = [  # each refers to the block as it is after the previous step
        {1: {"qk": ranks(3, D, 6, 8), "vo": ranks(3, D, 4, 9)}, 2: {"mlp": ranks(1, M, 50, 10)[0]}},
        {1: {"heads": [0, 2]}, 2: {"mlp": [0, 7, 49]}},
        {1: {"qk": ranks(2, 6, 2, 11)}},
    ]
    for plan in steps:
        assert_matches_mask(model, plan, x)
    assert block_widths(model)[1:] == [{"heads": 2, "qk_dim": 2, "v_dim": 4, "mlp_hidden": M},
                                       {"heads": H, "qk_dim": D, "v_dim": D, "mlp_hidden": 3}]
    assert n_params(model) == vit_params(widths=[(H, D, D, M), (2, 2, 4, M), (H, D, D, 3)],
                                         layerscale=True)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_keep_everything_reproduces_dense(fused):
    model, x = make_vit(fused), images()
    dense = model(x)
    everything = {i: {"heads": range(H), "qk": [list(range(D))] * H, "vo": [list(range(D))] * H,
                      "mlp": range(M)} for i in range(DEPTH)}
    assert torch.equal(apply_plan(model, everything)(x), dense)  # bit-exact, like ToMe's r=0


def test_no_qkv_bias():
    model = make_vit(qkv_bias=False)
    assert_matches_mask(model, PLANS["mixed"], images())
    assert n_params(model) == vit_params(widths=WIDTHS["mixed"], qkv_bias=False)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_attention_mask_passes_through(fused):
    model = make_vit(fused)
    plan = {0: {"heads": [1, 2], "qk": ranks(2, D, 3, 12), "vo": ranks(2, D, 5, 13)}}
    ref = mask_model(model, plan).blocks[0].attn
    slim = apply_plan(model, plan).blocks[0].attn
    x = torch.randn(2, TOKENS, C, generator=torch.Generator().manual_seed(3))
    mask = torch.rand(TOKENS, TOKENS, generator=torch.Generator().manual_seed(4)) > 0.3
    mask |= torch.eye(TOKENS, dtype=torch.bool)  # every query sees at least itself
    assert (slim(x, attn_mask=mask) - ref(x, attn_mask=mask)).abs().max() <= TOL
    assert (slim(x, attn_mask=mask) - slim(x)).abs().max() > 1e-3


def test_qk_norm_heads_ok_dims_refused():
    model = make_vit(qk_norm=True)
    assert_matches_mask(model, {1: {"heads": [1, 3], "vo": ranks(2, D, 5, 14)}}, images())
    with pytest.raises(ValueError, match="q_norm"):
        prune_head_dims(model, 0, qk_keep=ranks(H, D, 4, 15))


def test_scale_norms():
    model = make_vit(scale_attn_norm=True, scale_mlp_norm=True)
    with pytest.raises(ValueError, match="attn.norm"):
        prune_heads(model, 0, [0, 1])
    prune_mlp(model, 0, range(0, M, 2))  # mlp.norm sliced too; not mask-equivalent, so shapes only
    assert model.blocks[0].mlp.norm.weight.shape == (M // 2,)
    assert model(images()).shape == (2, CLASSES)


@pytest.mark.parametrize("layerscale", [False, True], ids=["no-ls", "ls"])
def test_prune_embed(layerscale):
    model = make_vit(layerscale=layerscale)
    keep = ranks(1, C, 32, 16)[0]
    prune_embed(model, keep)
    assert model.embed_dim == model.num_features == model.head_hidden_size == 32
    assert model(images()).shape == (2, CLASSES)
    assert n_params(model) == vit_params(embed=32, layerscale=layerscale)
    prune_heads(model, 0, [0, 3])  # block surgery still works at the new width
    assert n_params(model) == vit_params(embed=32, layerscale=layerscale,
                                         widths=[(2, D, D, M), (H, D, D, M), (H, D, D, M)])
    assert model(images()).shape == (2, CLASSES)


BAD = [
    ("all heads", {0: {"heads": []}}, "keeps nothing"),
    ("all qk dims", {0: {"qk": torch.empty(H, 0, dtype=torch.long)}}, "keeps nothing"),
    ("all vo dims", {0: {"vo": [[]] * H}}, "keeps nothing"),
    ("all mlp", {0: {"mlp": []}}, "keeps nothing"),
    ("head out of range", {0: {"heads": [0, H]}}, "out of range"),
    ("negative index", {0: {"mlp": [-1, 3]}}, "out of range"),
    ("dim out of range", {0: {"vo": [[0, D]] * H}}, "out of range"),
    ("duplicate heads", {0: {"heads": [1, 1]}}, "duplicated"),
    ("duplicate dims", {0: {"qk": [[2, 2]] * H}}, "duplicated"),
    ("float indices", {0: {"mlp": [0.0, 1.0]}}, "integers"),
    ("non-uniform", {0: {"qk": [[0, 1], [0], [1, 2], [3, 4]]}}, "same number"),
    ("wrong head rows", {0: {"qk": ranks(H - 1, D, 4, 0)}}, r"expected \[4, k\]"),
    ("rows after head pruning", {0: {"heads": [0, 1], "vo": ranks(H, D, 4, 0)}},
     r"expected \[2, k\]"),
    ("block too large", {DEPTH: {"heads": [0]}}, "out of range"),
    ("negative block", {-1: {"heads": [0]}}, "out of range"),
    ("block not int", {"1": {"heads": [0]}}, "must be an int"),
    ("unknown key", {0: {"neurons": [0]}}, "keys among"),
]


@pytest.mark.parametrize("name,bad,message", BAD, ids=[b[0] for b in BAD])
def test_bad_plan_refused_and_model_unchanged(name, bad, message):
    model = make_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = {1: {"heads": [0, 1], "mlp": range(10)}, **bad}  # a valid entry comes first
    with pytest.raises(ValueError, match=message):
        apply_plan(model, plan)
    with pytest.raises(ValueError, match=message):
        mask_model(model, plan)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.blocks[1].attn).__name__ == "Attention"


def test_bad_embed_refused():
    model = make_vit()
    for keep, message in [([], "keeps nothing"), ([0, C], "out of range"), ([3, 3], "duplicated")]:
        with pytest.raises(ValueError, match=message):
            prune_embed(model, keep)
    assert model.embed_dim == C and n_params(model) == vit_params()


def test_non_vit_refused():
    for fn in (lambda m: prune_heads(m, 0, [0]), lambda m: prune_embed(m, [0]), block_widths,
               lambda m: mask_model(m, {})):
        with pytest.raises(TypeError, match="VisionTransformer"):
            fn(nn.Sequential(nn.Linear(4, 4)))


def test_glu_mlp_refused():
    model = make_vit(mlp_layer=GluMlp)
    with pytest.raises(TypeError, match="GLU"):
        prune_mlp(model, 0, [0, 1])
    prune_heads(model, 0, [0, 1])  # attention surgery does not need a plain Mlp


def test_keep_top():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.0], [3.0, 2.0, 1.0, 0.0, -1.0]])
    assert keep_top(scores, 2).tolist() == [[1, 3], [0, 1]]
    assert keep_top(scores, 0.5).tolist() == [[1, 2, 3], [0, 1, 2]]  # 2.5 rounds up to 3
    assert keep_top(scores, 0.01).tolist() == [[1], [0]]  # at least one
    ties = torch.zeros(6)
    assert keep_top(ties, 3).tolist() == [0, 1, 2]  # ties go to the lower index
    assert keep_top(scores, 1, dim=0).tolist() == [[1, 1, 1, 0, 0]]
    for bad in (0, 6, 0.0, 1.5, True):
        with pytest.raises(ValueError, match="keep"):
            keep_top(scores, bad)


def test_deit_tiny_one_block():
    model = randomize(timm.create_model("deit_tiny_patch16_224", pretrained=False), seed=5).eval()
    heads, dim, hidden = 3, 64, 768
    plan = {5: {"heads": [0, 2], "qk": ranks(2, dim, 16, 17), "vo": ranks(2, dim, 24, 18),
                "mlp": ranks(1, hidden, 300, 19)[0]}}
    before = n_params(model)
    assert_matches_mask(model, plan, images(batch=1, size=224))
    qkv_removed = (heads * 3 * dim - 2 * (16 + 16 + 24)) * (192 + 1)  # weight rows + bias
    proj_removed = (heads * dim - 2 * 24) * 192                       # input columns
    mlp_removed = (hidden - 300) * (192 + 1 + 192)                    # fc1 row + bias, fc2 column
    assert before - n_params(model) == qkv_removed + proj_removed + mlp_removed
