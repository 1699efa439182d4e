"""Latency profiling: step detection finds real steps and not noise, test-retest keeps only
repeated steps, sweeps cover exactly the asked token counts, curves survive a file round trip,
and curves from another model or batch size are refused. No timing is asserted."""
import vitprune_lite  # noqa: F401  (before timm)

import json

import numpy as np
import pytest
import torch

from vitprune_lite import latency, measure, models, tokens
from vitprune_lite.errors import InvalidValueError
from vitprune_lite.experiments.latency_curve import staircase_ms


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest)


def synthetic(level_fn, noise: float, seed: int, n=np.arange(2, 198), rounds: int = 7) -> latency.Sweep:
    """A sweep with per-round values level(n) * (1 + noise * N(0, 1))."""
    rng = np.random.default_rng(seed)
    samples = [list(level_fn(k) * (1 + noise * rng.standard_normal(rounds))) for k in n]
    cis = [latency.bootstrap_median_ci(s, n_boot=300, rng=rng) for s in samples]
    return latency.Sweep(n=[int(k) for k in n], median_ms=[float(np.median(s)) for s in samples],
                         ci_low_ms=[c[0] for c in cis], ci_high_ms=[c[1] for c in cis], samples_ms=samples)


def staircase(k):  # a GPU-like staircase: flat within 16-token tiles, +8 % per tile (notebook 03 draws the same)
    return staircase_ms(k, tile=16, base_ms=10.0, step=0.08)


def linear(k):  # a CPU-like line
    return 2.0 + 0.05 * k


def steps_of(s: latency.Sweep):
    return latency.detect_steps(s.n, s.median_ms, s.ci_low_ms, s.ci_high_ms)


# ----------------------------------------------------------------------------- statistics

def test_bootstrap_ci_brackets_median_and_is_deterministic():
    x = [5.0, 5.2, 4.9, 5.1, 5.05, 4.95, 5.15, 5.0, 9.0]
    lo, hi = latency.bootstrap_median_ci(x, rng=np.random.default_rng(1))
    assert lo <= np.median(x) <= hi and hi < 9.0
    assert (lo, hi) == latency.bootstrap_median_ci(x, rng=np.random.default_rng(1))
    assert latency.bootstrap_median_ci([3.0]) == (3.0, 3.0)
    with pytest.raises(ValueError):
        latency.bootstrap_median_ci([])


def test_detects_a_staircase_at_the_right_places():
    found = steps_of(synthetic(staircase, 0.01, seed=0))
    expected = [16 * j for j in range(1, 13)]  # the jumps: 16 -> 17, 32 -> 33, ..., 192 -> 193
    assert [s["n_before"] for s in found] == [e for e in expected if 8 <= e <= 188]
    assert all(s["n_after"] == s["n_before"] + 1 and 0.5 < s["jump_ms"] < 1.1 for s in found)  # true: 0.8


@pytest.mark.parametrize("noise", [0.01, 0.04])
def test_no_steps_in_a_noisy_line(noise):
    for seed in range(3):
        assert steps_of(synthetic(linear, noise, seed=seed)) == []


def test_detect_steps_refuses_bad_input():
    with pytest.raises(ValueError, match="increasing"):
        latency.detect_steps([3, 2, 4], [1, 1, 1], [1, 1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="window"):
        latency.detect_steps([1, 2, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], window=2)
    assert latency.detect_steps([1, 2, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1]) == []  # too short


def test_test_retest_keeps_only_repeated_steps():
    a, b = synthetic(staircase, 0.01, seed=1), synthetic(staircase, 0.01, seed=2)
    rt = latency.test_retest(a, b)
    assert len(rt["reliable"]) == len(steps_of(a)) >= 10
    # two sweeps with one artefact each, in different places: nothing is reliable
    def bump_at(k0):
        return lambda k: linear(k) * (1.25 if k >= k0 and k < k0 + 12 else 1.0)
    c, d = synthetic(bump_at(60), 0.01, seed=3), synthetic(bump_at(130), 0.01, seed=4)
    assert steps_of(c) and steps_of(d)
    rt = latency.test_retest(c, d)
    assert rt["reliable"] == []
    out = latency.analyse([c, d])
    assert out["verdict"].startswith("no reliable steps")


def test_analyse_verdicts_and_agreement():
    a, b = synthetic(linear, 0.02, seed=5), synthetic(linear, 0.02, seed=6)
    out = latency.analyse([a, b])
    assert out["verdict"].startswith("no steps") and out["reliable_steps"] == []
    assert abs(out["retest"]["residual_corr"]) < 0.5  # independent noise does not repeat
    assert out["linear_fit"][0]["slope_ms_per_token"] == pytest.approx(0.05, rel=0.1)
    assert latency.analyse([a])["verdict"].startswith("one sweep only")
    stairs = latency.analyse([synthetic(staircase, 0.01, seed=7), synthetic(staircase, 0.01, seed=8)])
    assert "step(s) found by both sweeps" in stairs["verdict"]
    assert stairs["retest"]["residual_corr"] > 0.9  # the staircase repeats


# ----------------------------------------------------------------------------- measuring

@pytest.mark.parametrize("order", ["interleaved", "sequential"])
def test_sweep_covers_the_asked_token_counts(tiny_vit, order):
    s = latency.sweep(tiny_vit, n_values=[17, 2, 9], rounds=2, max_rounds=3, threads=1,
                      min_run_time=1e-4, order=order)
    assert s.n == [2, 9, 17] and s.order == order
    assert all(len(v) >= 2 for v in s.samples_ms)
    assert all(lo <= m <= hi for lo, m, hi in zip(s.ci_low_ms, s.median_ms, s.ci_high_ms))
    assert s.seconds > 0 and len(s.load_avg) == 2


def test_adaptive_sweep_times_mini_rounds(tiny_vit):
    # 16 token counts < one mini-round: one round id per pass; every point timed every pass
    s = latency.sweep(tiny_vit, rounds=3, max_rounds=3, threads=1, protocol="adaptive")
    assert s.n == list(range(2, 18)) and all(ids == [0, 1, 2] for ids in s.round_ids)
    assert len(s.round_factors) == 3
    # each point's reported interval is the one its stopping rule checked: the same bootstrap
    for i, (v, lo, hi) in enumerate(zip(s.normalised_samples(), s.ci_low_ms, s.ci_high_ms)):
        assert (lo, hi) == latency.bootstrap_median_ci(v, rng=np.random.default_rng((s.seed, i)))
        assert latency._rel_hw(v, (s.seed, i)) == pytest.approx((hi - lo) / 2 / np.median(v), rel=1e-9)


def test_mini_rounds_partition_the_active_points():
    rng = np.random.default_rng(0)
    for n in (5, latency.ROUND_POINTS, 2 * latency.ROUND_POINTS + 3, 2 * latency.ROUND_POINTS + 20):
        names = [f"n{i}" for i in range(n)]
        chunks = latency._mini_rounds(names, rng)
        assert sorted(k for c in chunks for k in c) == sorted(names)
        assert len(chunks) == 1 or min(len(c) for c in chunks) >= latency.ROUND_POINTS // 2
        assert max(len(c) for c in chunks) < max(n, latency.ROUND_POINTS) + latency.ROUND_POINTS // 2


def test_measure_latency_fixed_calls(tiny_vit):
    x = torch.zeros(1, 3, 32, 32)
    out = measure.measure_latency({"a": tiny_vit}, x, rounds=3, threads=1, calls=2, warmup=0)
    assert out["a"].n_samples == 3 and len(out["a"].round_medians_ms) == 3
    with pytest.raises(InvalidValueError, match="calls"):
        measure.measure_latency({"a": tiny_vit}, x, calls=0)


def test_sweep_of_one_block(tiny_vit):
    s = latency.sweep(tiny_vit, n_values=[3, 17], part="block1", rounds=2, max_rounds=2,
                      threads=1, min_run_time=1e-4, batch_size=2)
    assert s.n == [3, 17] and all(len(v) == 2 for v in s.samples_ms)


def test_sweep_refuses_bad_input(tiny_vit):
    for kw, msg in [({"n_values": [1, 5]}, "n values must lie in 2..17"),
                    ({"n_values": [18]}, "n values must lie in 2..17"),
                    ({"order": "random"}, "order"), ({"batch_size": 0}, "batch_size"),
                    ({"rounds": 1}, "rounds"), ({"part": "block2"}, "part"),
                    ({"target_rel_ci": 0}, "target_rel_ci"), ({"protocol": "fast"}, "protocol"),
                    ({"protocol": "adaptive", "order": "sequential"}, "adaptive")]:
        with pytest.raises(ValueError, match=msg):
            latency.sweep(tiny_vit, **kw)
    tokens.patch_tome(tiny_vit, 1)
    with pytest.raises(ValueError, match="unpatched"):
        latency.sweep(tiny_vit)


def test_profile_save_load_find_and_check(tiny_vit, tmp_path, monkeypatch):
    monkeypatch.setenv("VITPRUNE_OUT", str(tmp_path))
    curve = latency.profile(tiny_vit, "tiny", sweeps=2, n_values=range(2, 18, 3), rounds=2,
                            max_rounds=2, threads=1, min_run_time=1e-4, batch_size=2)
    assert len(curve.sweeps) == 2 and curve.sweeps[0].seed != curve.sweeps[1].seed
    assert "verdict" in curve.analysis and curve.environment["threads"] == 1
    path = latency.save_curve(curve)
    assert path == tmp_path / "data" / "latency" / f"{curve.device}__tiny__b2.json"
    assert curve.device.startswith("cpu1t-")
    back = latency.load_curve(path)
    assert back.to_dict() == json.loads(path.read_text())
    assert back.sweeps[1].median_ms == curve.sweeps[1].median_ms
    pooled = back.pooled()
    assert list(pooled["n"]) == [2, 5, 8, 11, 14, 17]
    assert latency.find_curves("tiny", 2) == [path] and latency.find_curves("tiny", 1) == []
    latency.check_curve(back, tiny_vit, 2)
    with pytest.raises(ValueError, match="batch 2"):
        latency.check_curve(back, tiny_vit, 1)
    other = models.create_base_model(models.ViTConfig(embed_dim=48, depth=3, num_heads=4, patch_size=8))
    with pytest.raises(ValueError, match="different model.*depth: curve 2 vs model 3"):
        latency.check_curve(back, other, 2)
    with pytest.raises(ValueError, match="model_name"):
        latency.profile(tiny_vit, "a__b")


def test_load_curve_refuses_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a latency curve"):
        latency.load_curve(p)


def test_round_factors_remove_load_that_lasts_a_round():
    rng = np.random.default_rng(0)
    n = np.arange(2, 66)
    level = 1.0 + 0.1 * n
    load = np.array([1.0, 2.5, 1.0, 1.2, 0.9, 3.0, 1.0])  # rounds 1 and 5 ran on a busy machine
    samples = [list(lv * load * (1 + 0.01 * rng.standard_normal(load.size))) for lv in level]
    ids = [list(range(load.size))] * len(n)
    fd = latency.round_factors(samples, ids)
    f = np.array([fd[i] for i in range(load.size)])
    np.testing.assert_allclose(f / f[0], load / load[0], rtol=0.02)
    s = latency.Sweep(n=list(n), median_ms=[0.0] * len(n), ci_low_ms=[0.0] * len(n), ci_high_ms=[0.0] * len(n),
                      samples_ms=samples, round_ids=ids, round_factors=list(f))
    corrected = np.array(s.normalised_samples())
    assert (corrected.std(axis=1) / corrected.mean(axis=1)).max() < 0.03  # raw spread: > 40 %
    # rounds with few points keep factor 1: their own noise must not be erased
    few = latency.round_factors([[1.0, 5.0]] * 3, [[0, 1]] * 3)
    assert few == {0: 1.0, 1: 1.0}


def test_pooled_puts_sweeps_at_different_load_levels_together():
    rng = np.random.default_rng(1)
    n = np.arange(2, 66)
    level = 1.0 + 0.1 * n

    def one(scale):
        samples = [list(scale * lv * (1 + 0.01 * rng.standard_normal(7))) for lv in level]
        return latency.Sweep(n=list(n), median_ms=[0.0] * len(n), ci_low_ms=[0.0] * len(n),
                             ci_high_ms=[0.0] * len(n), samples_ms=samples,
                             round_ids=[list(range(7))] * len(n), round_factors=[1.0] * 7)
    curve = latency.Curve(model="m", device="d", batch_size=1, threads=1, part="network",
                          fingerprint={}, sweeps=[one(1.0), one(1.6)])
    p = curve.pooled(n_boot=300)
    shape = p["median_ms"] / level
    assert shape.std() / shape.mean() < 0.01  # one level, not a mixture of two
    assert np.max((p["ci_high_ms"] - p["ci_low_ms"]) / 2 / p["median_ms"]) < 0.03
