"""The ground module: head geometry, the one supported-model check, forward stages that equal
timm's forward bit for bit, and eval mode that restores every submodule's flag."""
import vitprune_lite  # noqa: F401  (before timm: installs the torchvision work-around)

import copy

import pytest
import torch
from torch import nn

from timm.layers import GluMlp, Mlp
from timm.models.vision_transformer import VisionTransformer

from vitprune_lite import importance, peers, surgery, tcs, tokens, vit
from vitprune_lite.errors import InvalidValueError, UnsupportedModelError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest)


def make_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=5)
    model = VisionTransformer(**{**args, **kw}).eval()
    with torch.no_grad():  # O(1) weights: timm's tiny init would hide a wrong stage order
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    return model


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def pruned_vit() -> VisionTransformer:
    """A model cut by surgery: residual width, whole heads, uneven q/k and v widths, MLP channels."""
    model = make_vit()
    surgery.prune_embed(model, list(range(0, 48, 2)) + [1, 3])
    surgery.apply_plan(model, {0: {"heads": [0, 2, 3]},
                               1: {"qk": [[0, 2, 5]] * 4, "vo": [[1, 2, 3, 4, 6]] * 4, "mlp": list(range(0, 96, 3))},
                               2: {"heads": [1], "mlp": [5, 7]}})
    return model.eval()


CONFIGS = {
    "class token": lambda: make_vit(),
    "average pool, no class token": lambda: make_vit(class_token=False, global_pool="avg"),
    "register tokens, pre-norm, layer scale, fc_norm": lambda: make_vit(reg_tokens=2, pre_norm=True, init_values=0.1,
                                                                        fc_norm=True, global_pool="avg"),
    "unfused attention": lambda: _unfused(make_vit()),
    "pruned by surgery": pruned_vit,
}


def _unfused(model: nn.Module) -> nn.Module:
    for b in model.blocks:
        b.attn.fused_attn = False
    return model


# ----------------------------------------------------------------------------- forward stages

@pytest.mark.parametrize("name", list(CONFIGS))
def test_stages_equal_timm_forward_exactly(name):
    model, x = CONFIGS[name](), images()
    with torch.no_grad():
        want = model(x)
        assert torch.equal(vit.forward(model, x), want)
        tokens_in = vit.embed(model, x)
        assert tokens_in.shape[:2] == (3, model.num_prefix_tokens + model.patch_embed.num_patches)
        for k in range(len(model.blocks) + 1):  # split anywhere: the same numbers
            h = vit.run_blocks(model, vit.run_blocks(model, tokens_in, 0, k), k)
            assert torch.equal(vit.head(model, h), want), f"split at block {k}"


def test_stages_equal_timm_forward_on_a_module_list_of_blocks():
    model, x = make_vit(), images()
    with torch.no_grad():
        want = model(x)
        model.blocks = nn.ModuleList(list(model.blocks))
        assert torch.equal(vit.forward(model, x), want)


def test_stages_in_train_mode_follow_the_same_path():
    model, x = make_vit(), images()
    model.train()
    torch.manual_seed(3)
    want = model(x)
    torch.manual_seed(3)
    assert torch.equal(vit.forward(model, x), want)


# ----------------------------------------------------------------------------- geometry

def test_head_geometry_dense_and_pruned():
    dense, cut = make_vit(), pruned_vit()
    assert vit.head_geometry(dense.blocks[0].attn) == (4, 12, 12)
    assert [vit.head_geometry(b.attn) for b in cut.blocks] == [(3, 12, 12), (4, 3, 5), (1, 12, 12)]
    assert [(w["heads"], w["qk_dim"], w["v_dim"]) for w in surgery.block_widths(cut)] == \
        [vit.head_geometry(b.attn) for b in cut.blocks]


# ----------------------------------------------------------------------------- the supported-model check

def test_require_vit_accepts_timm_and_pruned_models():
    for model in (make_vit(), pruned_vit()):
        assert vit.require_vit(model, "test") is model.blocks
    bare = nn.Module()
    bare.blocks = nn.ModuleList([copy.deepcopy(make_vit().blocks[0])])
    assert len(vit.require_vit(bare, "test", stages=False)) == 1


@pytest.mark.parametrize("bad, problem", [
    (nn.Linear(3, 3), "no .blocks"),
    ("a model", "not a torch.nn.Module"),
    (nn.Sequential(), "no .blocks"),
])
def test_require_vit_refuses_with_one_type_and_a_clear_message(bad, problem):
    with pytest.raises(UnsupportedModelError, match="where_it_was") as err:
        vit.require_vit(bad, "where_it_was")
    message = str(err.value)
    assert problem in message and type(bad).__name__ in message and "accepted: a timm VisionTransformer" in message
    # callers that catch the built-in types keep working
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)


def test_require_vit_names_the_part_that_is_missing_or_wrong():
    model = make_vit()
    bare = nn.Module()
    bare.blocks = model.blocks
    with pytest.raises(UnsupportedModelError, match=r"no \.patch_embed, \._pos_embed"):
        vit.require_vit(bare, "test")
    empty = make_vit()
    empty.blocks = nn.Sequential()
    with pytest.raises(UnsupportedModelError, match="no blocks"):
        vit.require_vit(empty, "test")
    glu = make_vit(mlp_layer=GluMlp)
    assert vit.require_vit(glu, "test")  # any MLP unless a caller narrows it
    with pytest.raises(UnsupportedModelError, match="block 0 MLP is GluMlp; accepted here: Mlp"):
        vit.require_vit(glu, "test", mlp=(Mlp,))
    odd = make_vit()
    odd.blocks[1].attn = nn.Identity()
    with pytest.raises(UnsupportedModelError, match="block 1 attention is Identity"):
        vit.require_vit(odd, "test")


@pytest.mark.parametrize("call, where", [
    (lambda m: surgery.prune_heads(m, 0, [0]), "surgery.apply_plan"),
    (lambda m: surgery.block_widths(m), "surgery.block_widths"),
    (lambda m: importance.score(m, "magnitude_l2"), "importance.magnitude_scores"),
    (lambda m: importance.make_plan(m, None, (0.5, 0.5)), "importance.make_plan"),
    (lambda m: tcs.patch(m, fc2=0.5), "tcs.patch"),
    (lambda m: tokens.patch_tome(m, 1), "tokens.patch_tome"),
    (lambda m: tokens.token_count(m), "tokens.token_count"),
    (lambda m: peers.torch_pruning_prune(m, (0.5, 0.5)), "peers.torch_pruning_prune"),
])
def test_every_module_refuses_a_non_vit_the_same_way(call, where):
    with pytest.raises(UnsupportedModelError, match=rf"^{where}: unsupported model Linear"):
        call(nn.Linear(3, 3))


# ----------------------------------------------------------------------------- eval mode

def test_eval_mode_restores_each_submodules_flag():
    model = make_vit().train()
    model.blocks[1].eval()  # a deliberate mix
    before = [m.training for m in model.modules()]
    with vit.eval_mode(model) as m:
        assert m is model and not any(x.training for x in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError, match="inside"):
        with vit.eval_mode(model):
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == before


# ----------------------------------------------------------------------------- budgets, checked once

def test_budget_is_checked_once_and_behaves_as_the_pair():
    b = importance.check_budget((0.5, 1))
    assert isinstance(b, importance.Budget) and importance.check_budget(b) is b
    assert b == (0.5, 1.0) and list(b) == [0.5, 1.0] and repr(b) == "(0.5, 1.0)"
    assert (b.mlp_keep, b.attn_keep) == (0.5, 1.0)
    assert b.block_param_fraction == importance.block_param_fraction(0.5, 1.0) == (8 * 0.5 + 4 * 1.0) / 12
    assert copy.deepcopy(b) == b and type(copy.deepcopy(b)) is importance.Budget
    for bad, text in [((1.5, 0.5), "1.5"), ((0.5, 0.0), "out of range"), ((0.5,), "pair"), ("ab", "pair"),
                      (None, "pair")]:
        with pytest.raises(InvalidValueError, match=text):
            importance.check_budget(bad)
    with pytest.raises(InvalidValueError, match=r"budget keeps must each be in \(0, 1\]"):
        importance.Budget(0.5, float("nan"))
