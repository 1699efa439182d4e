"""ONNX Runtime backend: every model kind exports faithfully; timing plumbing (never a timing)."""
from __future__ import annotations

import copy

import pytest
import torch

from vitprune_lite import latency, measure, models, runtime, surgery, tokens

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4  # the bound on |ONNX Runtime - PyTorch|


@pytest.fixture(scope="module")
def vit():
    cfg = models.ViTConfig(embed_dim=48, depth=3, num_heads=4, patch_size=8)
    return models.create_base_model(cfg, seed=0).eval()


def _uneven(vit):
    """Every block pruned differently: heads, q/k and v dims apart, MLP channels."""
    plan = {0: {"heads": [0, 2, 3], "mlp": list(range(0, 192, 3))},
            1: {"qk": [[0, 1, 2, 5]] * 4, "vo": [list(range(9))] * 4},
            2: {"heads": [1], "mlp": list(range(100))}}
    return surgery.apply_plan(copy.deepcopy(vit), plan).eval()


def _kinds(vit):
    pruned = _uneven(vit)
    return {
        "dense": vit,
        "structured_uneven": pruned,
        "pomt": tokens.reduced_copy(vit, "pomt", 6),
        "topk": tokens.reduced_copy(vit, "topk", 0.6),
        "evit": tokens.reduced_copy(vit, "evit", 0.6),
        "tome": tokens.reduced_copy(vit, "tome", 3),
        "tome_not_proportional": tokens.patch_tome(copy.deepcopy(vit), 3, proportional=False),
        "structured_pomt": tokens.reduced_copy(pruned, "pomt", 6),
        "structured_tome": tokens.reduced_copy(pruned, "tome", 2),
    }


KINDS = ["dense", "structured_uneven", "pomt", "topk", "evit", "tome", "tome_not_proportional",
         "structured_pomt", "structured_tome"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_exports_and_matches_pytorch(vit, kind, one_thread):
    model = _kinds(vit)[kind]
    g = torch.Generator().manual_seed(1)
    x, x2 = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    om, diff = runtime.export_checked(model, x, check_inputs=[x2], atol=ATOL)
    assert diff <= ATOL and om.meta["max_abs_diff"] == diff
    # The wrapper is a drop-in module: same logits through forward, batch size fixed in the graph.
    with torch.inference_mode():
        assert torch.allclose(om(x2), model(x2), atol=ATOL)
    assert om.meta["shapes"] == [[2, 3, 32, 32]]
    # ToMe's proportional attention is exported unfused (and says so); the model is not changed.
    notes = " ".join(om.meta["notes"])
    assert ("unfused" in notes) == (kind in ("tome", "structured_tome"))
    assert all(b.attn.fused_attn == vit.blocks[0].attn.fused_attn for b in model.blocks)


def test_export_checked_refuses_outputs_that_differ(vit, one_thread):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="differs from PyTorch"):
        runtime.export_checked(vit, x, atol=-1.0)  # no export can meet a negative bound


def test_sessions_take_their_thread_count(vit, one_thread):
    om = runtime.export(vit, torch.randn(1, 3, 32, 32))
    s1, s2 = om.session(1), om.session(2)
    assert s1 is not s2 and om.session(1) is s1
    assert s1.get_session_options().intra_op_num_threads == 1
    assert s2.get_session_options().intra_op_num_threads == 2
    assert s1.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="threads"):
        om.session(0)
    twin = copy.deepcopy(om)  # copies the graph, not the native sessions
    x = torch.randn(1, 3, 32, 32)
    assert twin._sessions == {} and torch.equal(twin(x), om(x))


@pytest.mark.parametrize("shapes", ["static", "dynamic"])
def test_curve_exports_match_the_eager_curve_points(vit, shapes, one_thread):
    ns = [2, 9, 17]
    mods, inputs = runtime.curve_models(vit, ns, None, 2, seed=3, shapes=shapes)
    # static: one fixed-shape export per token count; dynamic: one export serves them all
    assert len({id(m) for m in mods.values()}) == (3 if shapes == "static" else 1)
    with torch.inference_mode():
        for n in ns:
            eager = tokens.SubsetViT(vit, n, seed=3)(inputs[f"n={n}"][0])
            assert torch.allclose(mods[f"n={n}"](*inputs[f"n={n}"]), eager, atol=ATOL)
    bmods, binputs = runtime.curve_models(vit, [3, 17], 1, 2, seed=0, shapes=shapes)
    with torch.inference_mode():
        for n in (3, 17):
            (xb,) = binputs[f"n={n}"]
            assert xb.shape == (2, n, 48)
            assert torch.allclose(bmods[f"n={n}"](xb), vit.blocks[1](xb), atol=ATOL)
    with pytest.raises(ValueError, match="shapes must be one of"):
        runtime.curve_models(vit, ns, None, 1, 0, shapes="ragged")


def test_measure_latency_backend_plumbing(vit, one_thread):
    x = torch.randn(2, 3, 32, 32)
    pomt = tokens.reduced_copy(vit, "pomt", 6)
    res = measure.measure_latency({"dense": vit, "pomt": pomt}, x, threads=1, rounds=2, min_run_time=0.002,
                                  warmup=1, backend="onnxruntime")
    assert list(res) == ["dense", "pomt"]
    for lat in res.values():
        assert lat.backend == "onnxruntime" and lat.batch_size == 2 and lat.threads == 1
        assert len(lat.round_medians_ms) == 2 and lat.to_dict()["backend"] == "onnxruntime"
    eager = measure.measure_latency({"dense": vit}, x, threads=1, rounds=1, min_run_time=0.002, warmup=0)
    assert eager["dense"].backend == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        measure.measure_latency({"dense": vit}, x, rounds=1, min_run_time=0.002, backend="tensorrt")
    # An already exported model is timed as it is (no second export).
    om = runtime.export(vit, x)
    res = measure.measure_latency({"ort": om}, x, threads=1, rounds=1, min_run_time=0.002, warmup=0,
                                  backend="onnxruntime")
    assert res["ort"].backend == "onnxruntime"


def test_onnxruntime_curve_is_stored_apart_from_the_eager_one(vit, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("VITPRUNE_OUT", str(tmp_path))
    kw = dict(sweeps=1, n_values=[2, 9, 17], rounds=2, max_rounds=2, threads=1, min_run_time=0.002)
    ort_curve = latency.profile(vit, "tinyrt", backend="onnxruntime", **kw)
    assert ort_curve.backend == "onnxruntime" and ort_curve.sweeps[0].n == [2, 9, 17]
    assert all(len(v) == 2 for v in ort_curve.sweeps[0].samples_ms)
    eager_curve = latency.profile(vit, "tinyrt", **kw)
    p_ort, p_eager = latency.save_curve(ort_curve), latency.save_curve(eager_curve)
    assert p_ort != p_eager and p_ort.name.endswith("__b1__onnxruntime.json")
    assert p_eager.name == f"{eager_curve.device}__tinyrt__b1.json"
    assert latency.find_curves("tinyrt") == [p_eager]
    assert latency.find_curves("tinyrt", backend="onnxruntime") == [p_ort]
    assert latency.load_curve(p_ort).backend == "onnxruntime"
    # Curves written before backends existed load as eager ones.
    d = eager_curve.to_dict()
    d.pop("backend")
    assert latency.Curve.from_dict(d).backend == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        latency.sweep(vit, n_values=[2, 17], rounds=2, max_rounds=2, backend="nope")


def test_check_backend_names_the_accepted_ones():
    assert runtime.check_backend("eager") == "eager"
    with pytest.raises(ValueError, match="'eager', 'onnxruntime'"):
        runtime.check_backend("ort")
