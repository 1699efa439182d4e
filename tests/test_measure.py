"""Tests for vitprune_lite.measure: exact FLOP and parameter counts, behaviour, clear errors.

No test asserts a timing value; latency tests check structure, bookkeeping and restoration only.
"""
import json
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vitprune_lite  # noqa: F401  (before timm: installs the torchvision work-around)
from vitprune_lite import measure

import timm  # noqa: E402,I001

IMG, PATCH, DIM, DEPTH, HEADS, CLASSES = 32, 8, 48, 2, 4, 10


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
        num_classes=CLASSES,
    ).eval()


def vit_flops_closed_form(batch: int) -> tuple[int, int, int, int]:
    """(total, patch_embed, per block, head) FLOPs = 2 x MACs of the tiny ViT at ``batch``."""
    p = (IMG // PATCH) ** 2  # patches
    n = p + 1  # tokens, class token included
    hd = DIM // HEADS
    patch_embed = 2 * p * DIM * (3 * PATCH * PATCH)  # conv as a [p, 3*8*8] x [3*8*8, DIM] matmul
    qkv = 2 * n * DIM * 3 * DIM
    attn = 2 * HEADS * n * n * hd + 2 * HEADS * n * n * hd  # q @ k^T, then attn @ v
    proj = 2 * n * DIM * DIM
    mlp = 2 * n * DIM * 4 * DIM + 2 * n * 4 * DIM * DIM  # fc1, fc2
    head = 2 * DIM * CLASSES  # class token only
    block = batch * (qkv + attn + proj + mlp)
    total = batch * patch_embed + DEPTH * block + batch * head
    return total, batch * patch_embed, block, batch * head


def set_fused(model: nn.Module, fused: bool) -> None:
    for blk in model.blocks:
        blk.attn.fused_attn = fused


# ---------------------------------------------------------------- FLOPs


def test_linear_flops_exact():
    assert measure.count_flops(nn.Linear(8, 16), torch.randn(4, 8)) == 2 * 4 * 8 * 16


def test_vit_flops_closed_form_fused_and_unfused():
    model = tiny_vit()
    x = torch.randn(2, 3, IMG, IMG)
    expected = vit_flops_closed_form(2)[0]
    set_fused(model, True)
    fused = measure.count_flops(model, x)
    set_fused(model, False)
    unfused = measure.count_flops(model, x)
    assert fused == unfused == expected


def test_timm_global_fused_switch_counts_the_same():
    from timm.layers import set_fused_attn, use_fused_attn

    x = torch.randn(1, 3, IMG, IMG)
    counts = []
    previous = use_fused_attn()
    try:
        for fused in (True, False):
            set_fused_attn(fused)
            model = tiny_vit()
            assert model.blocks[0].attn.fused_attn is fused
            counts.append(measure.count_flops(model, x))
    finally:
        set_fused_attn(previous)
    assert counts[0] == counts[1] == vit_flops_closed_form(1)[0]


class SDPA(nn.Module):
    """Projects to q/k of width ``dqk`` and v of width ``dv`` per head, then attends."""

    def __init__(self, dim: int, heads: int, dqk: int, dv: int, fused: bool = True):
        super().__init__()
        self.heads, self.dqk, self.dv, self.fused = heads, dqk, dv, fused
        self.q = nn.Linear(dim, heads * dqk, bias=False)
        self.k = nn.Linear(dim, heads * dqk, bias=False)
        self.v = nn.Linear(dim, heads * dv, bias=False)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.dqk).transpose(1, 2)
        k = self.k(x).view(b, n, self.heads, self.dqk).transpose(1, 2)
        v = self.v(x).view(b, n, self.heads, self.dv).transpose(1, 2)
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v)
        return (q @ k.transpose(-2, -1) * self.dqk**-0.5).softmax(-1) @ v


@pytest.mark.parametrize("dqk,dv", [(8, 8), (8, 6), (4, 12)])
def test_sdpa_flops_use_each_width(dqk, dv):
    b, n, dim, h = 3, 10, 16, 2
    x = torch.randn(b, n, dim)
    projections = 2 * b * n * dim * h * (dqk + dqk + dv)
    attention = 2 * b * h * n * n * dqk + 2 * b * h * n * n * dv
    for fused in (True, False):
        assert measure.count_flops(SDPA(dim, h, dqk, dv, fused), x) == projections + attention


def test_cpu_fused_kernel_is_counted_by_custom_formula():
    # Equal widths take the fused CPU kernel, which torch's registry leaves at zero FLOPs.
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    with torch.no_grad(), measure.flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v)
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert any("flash_attention_for_cpu" in op for op in ops), ops
    assert counter.get_total_flops() == 2 * 2 * 3 * 5 * 7 * 8 * 2
    # q/k and v widths enter separately.
    flops = measure._sdpa_flops((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6))
    assert flops == 2 * 2 * 3 * 5 * 7 * (8 + 6)


def test_flops_by_module_sums_to_total():
    model = tiny_vit()
    x = torch.randn(1, 3, IMG, IMG)
    total, patch_embed, block, head = vit_flops_closed_form(1)
    parts = measure.flops_by_module(model, x)
    assert parts["patch_embed"] == patch_embed
    assert parts["blocks.0"] == parts["blocks.1"] == block
    assert parts["head"] == head
    assert parts["(other)"] == 0
    assert sum(parts.values()) == total


def test_count_flops_restores_each_module_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    model[1].eval()  # a deliberate mix must survive
    measure.count_flops(model, torch.randn(3, 4))
    assert [m.training for m in model] == [True, False, True]


def test_count_flops_rejects_bad_input():
    with pytest.raises(TypeError, match="Tensor or a tuple"):
        measure.count_flops(nn.Linear(2, 2), 1.0)
    with pytest.raises(TypeError, match="nn.Module"):
        measure.count_flops(lambda x: x, torch.randn(1, 2))


# ---------------------------------------------------------------- parameters, memory


def test_count_params_exact():
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3, bias=False))
    assert measure.count_params(model) == (8 * 16 + 16) + (16 + 16) + 16 * 3
    model[0].requires_grad_(False)
    assert measure.count_params(model, trainable_only=True) == (16 + 16) + 16 * 3


def test_model_report_tiny_vit():
    model = tiny_vit()
    report = measure.model_report(model, (1, 3, IMG, IMG))
    assert report["params"] == measure.count_params(model)
    assert report["flops"] == vit_flops_closed_form(1)[0]
    assert len(report["blocks"]) == DEPTH
    assert report["blocks"][0] == {
        "num_heads": HEADS, "qk_dim": DIM // HEADS, "v_dim": DIM // HEADS,
        "qkv_out": 3 * DIM, "proj_in": DIM, "mlp_hidden": 4 * DIM,
    }
    json.dumps(report)


def test_peak_memory_counts_peak_not_sum():
    size = 1000 * 1000 * 4  # one float32 tensor of 1e6 elements

    def fn():
        a = torch.ones(1000, 1000)
        del a
        b = torch.ones(1000, 1000)
        return float(b.sum())

    peak = measure.peak_memory(fn)
    assert size <= peak < 1.5 * size


def test_peak_memory_rejects_bad_input():
    with pytest.raises(TypeError, match="callable"):
        measure.peak_memory(42)
    with pytest.raises(ValueError, match="cpu"):
        measure.peak_memory(lambda: None, device="meta")


# ---------------------------------------------------------------- latency


def test_measure_latency_structure_and_threads_restored():
    models = {"small": nn.Linear(16, 16),
              "large": nn.Sequential(nn.Linear(16, 64), nn.Linear(64, 16))}
    models["small"].train()
    before = torch.get_num_threads()
    res = measure.measure_latency(models, torch.randn(4, 16), threads=1, rounds=3,
                                  min_run_time=0.01, warmup=1)
    assert torch.get_num_threads() == before
    assert models["small"].training  # mode restored
    assert list(res) == ["small", "large"]
    for lat in res.values():
        assert lat.median_ms > 0
        assert lat.iqr_ms[0] <= lat.median_ms <= lat.iqr_ms[1]
        assert len(lat.round_medians_ms) == 3 and lat.n_samples >= 3
        assert (lat.threads, lat.batch_size, lat.device) == (1, 4, "cpu")
        json.dumps(lat.to_dict())
    assert measure.latency_ratio(res, "small", "small") == 1.0


def test_measure_latency_per_model_inputs():
    models = {"a": nn.Linear(8, 2), "b": nn.Linear(4, 2)}
    inputs = {"a": torch.randn(2, 8), "b": torch.randn(5, 4)}
    res = measure.measure_latency(models, inputs, rounds=1, min_run_time=0.01, warmup=0)
    assert (res["a"].batch_size, res["b"].batch_size) == (2, 5)
    assert res["a"].threads == torch.get_num_threads()


@pytest.mark.parametrize(
    "models,kwargs,match",
    [
        ({}, {}, "non-empty"),
        ({"a": nn.Linear(2, 2)}, {"rounds": 0}, "rounds >= 1"),
        ({"a": nn.Linear(2, 2)}, {"threads": 0}, "threads"),
        ({"a": nn.Linear(2, 2)}, {"min_run_time": 0}, "min_run_time > 0"),
    ],
)
def test_measure_latency_rejects_bad_input(models, kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure.measure_latency(models, torch.randn(1, 2), **kwargs)


def test_measure_latency_rejects_mismatched_inputs_and_non_modules():
    with pytest.raises(ValueError, match="keys of models"):
        measure.measure_latency({"a": nn.Linear(2, 2)}, {"b": torch.randn(1, 2)})
    with pytest.raises(TypeError, match="models\\['a'\\]"):
        measure.measure_latency({"a": "not a module"}, torch.randn(1, 2))


# ---------------------------------------------------------------- accuracy


class Logits(nn.Module):
    """The input is the logits: predictions are known by construction."""

    def forward(self, x):
        return x.flatten(1)


class BatchCentred(nn.Module):
    """Subtracts the batch mean: the output depends on the other samples in the batch."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def test_predict_correct_accuracy_exact():
    x = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([1, 0, 2, 2])
    assert measure.predict(Logits(), x, batch_size=3).tolist() == [1, 0, 2, 1]
    assert measure.correct(Logits(), x, y, batch_size=3).tolist() == [True, True, True, False]
    assert measure.accuracy(Logits(), x, y, batch_size=3) == 0.75
    assert measure.accuracy(Logits(), TensorDataset(x, y), batch_size=3) == 0.75
    assert measure.accuracy(Logits(), DataLoader(TensorDataset(x, y), batch_size=2)) == 0.75


def test_accuracy_rejects_bad_input():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="matching x"):
        measure.accuracy(Logits(), x, y)
    with pytest.raises(ValueError, match="labels needed"):
        measure.accuracy(Logits(), x)
    with pytest.raises(ValueError, match="batch_size"):
        measure.predict(Logits(), x, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        measure.predict(Logits(), torch.randn(0, 3))


def test_batch_dependence_per_sample_model_is_clean():
    torch.manual_seed(0)
    report = measure.batch_dependence(nn.Linear(6, 4), torch.randn(40, 6), batch_size=16)
    assert report["changed_single"] == report["changed_shuffled"] == 0.0
    assert report["max_logit_diff_single"] < 1e-5
    assert report["batch_dependent"] is False


def test_batch_dependence_flags_batch_mean_model():
    torch.manual_seed(0)
    report = measure.batch_dependence(BatchCentred(), torch.randn(40, 6), batch_size=16)
    assert report["changed_single"] > 0  # alone, every logit is zero and the argmax collapses
    assert report["changed_shuffled"] > 0
    assert report["batch_dependent"] is True


# ---------------------------------------------------------------- environment


def test_environment_keys_and_no_hostname():
    env = measure.environment()
    expected = {"utc", "threads", "cpu_count", "cpu_model", "device", "torch", "timm", "numpy",
                "python", "platform", "load_avg_1min", "git_rev"}
    assert expected <= set(env)
    assert env["threads"] == torch.get_num_threads()
    assert env["torch"] == torch.__version__ and env["timm"] == timm.__version__
    host = socket.gethostname()
    text = json.dumps(env)
    if len(host) >= 6:  # a very short name could match by accident
        assert host not in text


def test_git_dirty_ignores_what_a_reproduction_writes(tmp_path, monkeypatch):
    """A fresh clone whose run has rewritten results and figures is clean; a changed source file is not."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    for rel in ("pkg/mod.py", "data/results/r.json", "figures/f.png", "data/run_times.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("a")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(measure, "_git", lambda *a: git(*a).strip())
    for rel in ("data/results/r.json", "figures/f.png", "data/run_times.json"):
        (tmp_path / rel).write_text("b")
    assert measure.environment()["git_dirty"] is False
    (tmp_path / "pkg/mod.py").write_text("b")
    assert measure.environment()["git_dirty"] is True
