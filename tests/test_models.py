"""Base model: training loop, safetensors checkpoints with hash check, timm names offline."""
from __future__ import annotations

import json

import pytest
import torch

from vitprune_lite import measure, models


def test_fit_is_deterministic_and_learns(small_bench):
    x, y = small_bench.public["train"].tensors()
    cfg = models.ViTConfig(embed_dim=32, depth=1, num_heads=2, patch_size=8)
    runs = []
    for _ in range(2):
        m = models.create_base_model(cfg, seed=1)
        hist = models.fit(m, x, y, steps=6, batch_size=32, lr=3e-3, seed=5, progress=False, val=(x[:40], y[:40]))
        runs.append((m, hist))
    (m1, h1), (m2, h2) = runs
    assert h1["loss"] == h2["loss"]
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert h1["steps"] == 6 and len(h1["val_acc"]) == 1


def test_fit_fits_a_fixed_batch(small_bench):
    x, y = small_bench.public["train"].tensors()
    m = models.create_base_model(models.ViTConfig(embed_dim=32, depth=1, num_heads=2, patch_size=8), seed=1)
    hist = models.fit(m, x[:32], y[:32], steps=30, batch_size=32, lr=3e-3, augment=False, progress=False)
    assert sum(hist["loss"][-3:]) < 0.8 * sum(hist["loss"][:3])


def test_fit_refuses_mismatched_data(tiny_vit):
    with pytest.raises(ValueError, match="equally long"):
        models.fit(tiny_vit, torch.zeros(4, 3, 32, 32), torch.zeros(3, dtype=torch.long), steps=1, progress=False)


def test_checkpoint_round_trip(tmp_path, tiny_vit):
    cfg = models.ViTConfig(embed_dim=48, depth=2, num_heads=4, patch_size=8)
    path = models.save_checkpoint(tiny_vit, tmp_path / "m.safetensors", {"model_config": cfg.__dict__, "note": "x"})
    loaded, meta = models.load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), tiny_vit(x))
    assert meta["note"] == "x" and len(meta["sha256"]) == 64
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


def test_corrupted_checkpoint_is_refused(tmp_path, tiny_vit):
    cfg = models.ViTConfig(embed_dim=48, depth=2, num_heads=4, patch_size=8)
    path = models.save_checkpoint(tiny_vit, tmp_path / "m.safetensors", {"model_config": cfg.__dict__})
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(models.ChecksumError, match="corrupted"):
        models.load_checkpoint(path)


def test_mismatched_metadata_is_refused(tmp_path, tiny_vit):
    cfg = models.ViTConfig(embed_dim=48, depth=2, num_heads=4, patch_size=8)
    path = models.save_checkpoint(tiny_vit, tmp_path / "m.safetensors", {"model_config": cfg.__dict__})
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sha256"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(models.ChecksumError):
        models.load_checkpoint(path)


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make train"):
        models.load_checkpoint(tmp_path / "nothing.safetensors")


def test_shipped_base_model_loads_and_matches_metadata():
    model, meta = models.load_base_model()
    assert measure.count_params(model) > 1_000_000
    for key in ("model_config", "train_config", "seed", "data", "sha256", "accuracy", "train_seconds"):
        assert key in meta
    assert meta["data"]["generator_version"] == __import__("vitprune_lite.data").data.GENERATOR_VERSION
    assert meta["accuracy"]["public/test"] >= 0.90
    assert min(v for k, v in meta["accuracy"].items() if not k.startswith("public")) >= 0.85


def test_timm_name_random_weights():
    m = models.create_timm_model("deit_tiny_patch16_224")
    assert measure.count_params(m) > 5_000_000


def test_unknown_timm_name():
    with pytest.raises(ValueError, match="unknown timm model"):
        models.create_timm_model("deit_nonexistent")


def test_pretrained_offline_fails_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RuntimeError, match="unreachable"):
        models.create_timm_model("deit_tiny_patch16_224", pretrained=True)
