"""torch-pruning peer: budget, attention attributes, equivalence with masking."""
from __future__ import annotations

import pytest
import torch

from vitprune_lite import importance as imp
from vitprune_lite import measure, models, peers, surgery


@pytest.fixture()
def vit():
    """Like tiny_vit but with 6 heads, so head counts can follow the budgets."""
    cfg = models.ViTConfig(embed_dim=48, depth=2, num_heads=6, patch_size=8)
    return models.create_base_model(cfg, seed=0).eval()


@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 12, (16,), generator=g)


def _block_params(model):
    return sum(p.numel() for p in model.blocks.parameters())


def _kept_rows(small: torch.Tensor, big: torch.Tensor) -> list[int]:
    """Indices of the rows of ``big`` that ``small`` kept (rows are matched exactly)."""
    return [int((big == r).all(1).nonzero()[0, 0]) for r in small]


@pytest.mark.parametrize("budget", [imp.TAP_BUDGETS[0], imp.TAP_BUDGETS[-1]])
@pytest.mark.parametrize("kind", ["magnitude", "taylor"])
def test_prunes_to_budget_and_sets_attention_attrs(vit, data, budget, kind):
    x, y = data
    ref = vit(x).detach()
    pruned, info = peers.torch_pruning_prune(vit, budget, importance_kind=kind, x=x, y=y)
    frac = _block_params(pruned) / _block_params(vit)
    assert frac == pytest.approx(imp.block_param_fraction(*budget), abs=0.01)
    for b, h in zip(pruned.blocks, info["heads_kept"]):
        attn = b.attn
        assert attn.num_heads == h == round(budget[1] * 6)
        assert attn.head_dim == 8 and attn.attn_dim == h * 8
        assert attn.qkv.out_features == 3 * attn.attn_dim and attn.proj.in_features == attn.attn_dim
    assert pruned(x).shape == (16, 12)
    assert torch.equal(vit(x), ref)  # the original is untouched
    assert measure.count_flops(pruned, x) < measure.count_flops(vit, x)


def test_pruned_model_equals_masking_the_removed_units(vit, data):
    x, _ = data
    pruned, _ = peers.torch_pruning_prune(vit, imp.TAP_BUDGETS[-1])
    plan = {}
    for i, (b, p) in enumerate(zip(vit.blocks, pruned.blocks)):
        q_rows = _kept_rows(p.attn.qkv.weight[:p.attn.attn_dim], b.attn.qkv.weight[:48])
        heads = sorted({r // 8 for r in q_rows})
        mlp = _kept_rows(p.mlp.fc1.weight, b.mlp.fc1.weight)
        assert len(heads) == p.attn.num_heads and len(mlp) == p.mlp.fc1.out_features
        plan[i] = {"heads": heads, "mlp": mlp}
    torch.testing.assert_close(pruned(x), surgery.mask_model(vit, plan)(x), atol=1e-5, rtol=1e-4)


def test_stale_attrs_break_timm_and_fix_repairs_them(vit, data):
    x, _ = data
    pruned, _ = peers.torch_pruning_prune(vit, imp.TAP_BUDGETS[-1])
    for b in pruned.blocks:  # what torch-pruning alone leaves behind
        b.attn.num_heads, b.attn.attn_dim = 6, 48
    with pytest.raises(RuntimeError):
        pruned(x)
    peers.fix_attention_attrs(pruned, {b.attn.qkv: 4 for b in pruned.blocks})
    assert pruned(x).shape == (16, 12)


def test_errors(vit, data):
    x, y = data
    with pytest.raises(ValueError, match="taylor"):
        peers.torch_pruning_prune(vit, (0.5, 0.5), importance_kind="taylor")
    with pytest.raises(ValueError, match="importance_kind"):
        peers.torch_pruning_prune(vit, (0.5, 0.5), importance_kind="hessian")
    with pytest.raises(ValueError, match="out of range"):
        peers.torch_pruning_prune(vit, (0.5, 0.0))
    with pytest.raises(ValueError, match="unsupported model"):
        peers.torch_pruning_prune(torch.nn.Linear(2, 2), (0.5, 0.5))
    surgery.prune_heads(vit, 0, [0, 1, 2])
    with pytest.raises(ValueError, match="unpruned"):
        peers.torch_pruning_prune(vit, (0.5, 0.5))
