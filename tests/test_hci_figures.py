"""Notebook 02's figures on small synthetic inputs: the layer keep-ratio figure, the importance
heatmaps' colour bars, and the 95 % intervals on the accuracy-vs-budget curves."""
from __future__ import annotations

import dataclasses
import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from vitprune_lite import importance, methods  # noqa: E402
from vitprune_lite.errors import InvalidFileError, InvalidValueError  # noqa: E402
from vitprune_lite.experiments import head_channel_importance as hci  # noqa: E402

L, H, D, M = 4, 3, 4, 16  # blocks, heads, dims per head, MLP hidden channels
DEVICES = ["cam", "drone"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _unit_scores(name: str, seed: int) -> importance.UnitScores:
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(L):
        attn = torch.rand(H, D, generator=g)
        blocks.append({"mlp": torch.rand(M, generator=g), "attn": attn, "heads": attn.mean(1)})
    return importance.UnitScores(name, blocks)


@pytest.fixture
def synthetic():
    """Inputs and Scores of a 4-block model with hand-made KL sensitivities (no model, no data)."""
    params = hci.Params.preset("smoke")
    budgets = [tuple(b) for b in importance.TAP_BUDGETS]
    labels = [f"{round(100 * importance.block_param_fraction(*b))}" for b in budgets]
    inp = hci.Inputs(None, None, None, {}, {}, "combined", list(DEVICES), 8, budgets, labels)
    tap, sens = {}, {}
    for i, d in enumerate(DEVICES):
        for j, s in enumerate(hci.SOURCES):
            tap[(d, s)] = _unit_scores("tap_vits", 10 * i + j)
            k = 1 + i + j
            sens[(d, s)] = {"mlp": torch.tensor([2.0 * k, 0.5, 0.05, 0.01 * k]),
                            "attn": torch.tensor([4.0, 1.0 * k, 0.2, 0.1])}
    weight = {c: _unit_scores(c, 100 + n) for n, c in enumerate(("magnitude_l2", "toast", "random"))}
    return params, inp, hci.Scores(tap, sens, {}, weight, {})


def _by_colour(artists, get_colour):
    out: dict[str, list] = {}
    for a in artists:
        out.setdefault(to_hex(get_colour(a)), []).append(a)
    return out


def test_layer_ratio_figure_plots_the_ratios_build_prunes_to(synthetic, monkeypatch):
    params, inp, scores = synthetic
    label = "70"
    budget = inp.budgets[inp.labels.index(label)]
    fig = hci.plot_layer_ratios(params, inp, scores, label=label)
    axes = np.array(fig.axes).reshape(4, len(DEVICES))
    captured = {}

    def fake_plan(model, sc, b, layer_ratios=None, **kw):
        captured["ratios"] = layer_ratios
        return {}

    monkeypatch.setattr(importance, "make_plan", fake_plan)
    monkeypatch.setattr(importance, "prune_copy", lambda model, plan: model)
    for c, d in enumerate(DEVICES):
        assert axes[0, c].get_title().startswith(d) and axes[1, c].get_title().startswith(d)
        for r, kind in ((0, "mlp"), (2, "attn")):
            bars = _by_colour(axes[r, c].patches, lambda p: p.get_facecolor())
            for s in hci.SOURCES:
                heights = [p.get_height() for p in sorted(bars[methods.style(hci._SOURCE_CRIT[s]).color],
                                                          key=lambda p: p.get_x())]
                np.testing.assert_allclose(heights, scores.sens[(d, s)][kind].numpy(), rtol=1e-6)
        for r, kind in ((1, "mlp"), (3, "attn")):
            lines = _by_colour([ln for ln in axes[r, c].lines if len(ln.get_ydata()) == L], lambda ln: ln.get_color())
            for s in hci.SOURCES:
                (line,) = lines[methods.style(hci._SOURCE_CRIT[s]).color]
                expected = importance.adaptive_ratios(scores.sens[(d, s)], budget, params.alpha)[kind].numpy()
                np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-9)
                crit = {v: k for k, v in hci.TAP_SOURCE.items() if k != "tap_vits_uniform"}[s]
                hci.build(params, inp, None, scores, crit, d, budget)  # what pruning receives
                np.testing.assert_allclose(captured["ratios"][kind].numpy(), expected, rtol=1e-12)
            target = [ln for ln in axes[r, c].lines if len(ln.get_ydata()) == 2]
            assert target and np.allclose(target[0].get_ydata(), budget[0 if kind == "mlp" else 1])
    assert axes[0, 0].get_yscale() == "log" and "KL divergence" in axes[0, 0].get_ylabel()
    assert "nats" in axes[0, 0].get_ylabel() and "keep ratio" in axes[1, 0].get_ylabel()
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= set(hci._SOURCE_LABEL.values())


def test_layer_ratio_figure_refuses_an_unknown_budget(synthetic):
    params, inp, scores = synthetic
    with pytest.raises(InvalidValueError, match="accepted one of"):
        hci.plot_layer_ratios(params, inp, scores, label="55")
    with pytest.raises(InvalidValueError, match="no KL sensitivity"):
        hci.layer_ratios(params, scores, "nowhere", "gmm", inp.budgets[0])


def test_layer_ratio_figure_default_budget_is_50(synthetic):
    params, inp, scores = synthetic
    fig = hci.plot_layer_ratios(params, inp, scores)
    assert "at 50 %" in fig.axes[len(DEVICES)].get_title()  # row 1 (MLP keep ratio), first device
    assert "(MLP keep 0.429" in fig.get_suptitle()


def test_head_heatmaps_have_labelled_colour_bars(synthetic):
    _, inp, scores = synthetic
    fig = hci.plot_head_importance(inp, scores)
    n = len(DEVICES) + 1
    panels, bars = fig.axes[:3 * n], fig.axes[3 * n:]
    assert len(bars) == n  # one colour bar per row
    assert all("TAP composite score" in b.get_ylabel() for b in bars[:-1])
    assert "row-normalised" in bars[-1].get_ylabel() and "head score" in bars[-1].get_ylabel()
    rnd = scores.weight["random"].matrix("heads")
    shown = np.asarray(panels[3 * n - 1].collections[0].get_array()).reshape(L, H)
    np.testing.assert_allclose(shown, rnd / rnd.max(1, keepdims=True), rtol=1e-6)
    assert [t.get_text() for t in panels[0].get_yticklabels()] == [str(i) for i in range(L)]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == [str(i) for i in range(H)]
    # a device row shares one colour scale across its three sources
    lims = {panels[i].collections[0].get_clim() for i in range(3)}
    assert len(lims) == 1


def test_mlp_heatmaps_have_one_labelled_colour_bar(synthetic):
    _, inp, scores = synthetic
    fig = hci.plot_mlp_channels(inp, scores, device="drone")
    panels, bars = fig.axes[:5], fig.axes[5:]
    assert len(bars) == 1 and "min-max scaled per block" in bars[0].get_ylabel()
    first = np.asarray(panels[0].collections[0].get_array()).reshape(L, M)  # TAP on gmm, sorted by itself
    assert np.all(np.diff(first, axis=1) <= 1e-12)
    np.testing.assert_allclose(first[:, 0], 1.0, atol=1e-9)
    np.testing.assert_allclose(first[:, -1], 0.0, atol=1e-9)
    assert fig.get_suptitle().startswith("drone")
    with pytest.raises(InvalidValueError, match="accepted one of"):
        hci.plot_mlp_channels(inp, scores, device="nowhere")


def test_wilson_interval_by_hand():
    lo, hi = hci.accuracy_interval(0.9, 100)
    z, p, n = 1.96, 0.9, 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert lo == pytest.approx(centre - half, abs=1e-12) and hi == pytest.approx(centre + half, abs=1e-12)
    assert lo == pytest.approx(0.8256, abs=1e-4) and hi == pytest.approx(0.9448, abs=1e-4)
    acc = np.array([[0.0, 0.25, 0.5], [0.75, 0.99, 1.0]])
    lo, hi = hci.accuracy_interval(acc, 100)
    assert lo.shape == acc.shape and np.all(lo <= acc) and np.all(acc <= hi)
    assert lo[0, 0] == pytest.approx(0.0, abs=1e-12) and hi[1, 2] == pytest.approx(1.0, abs=1e-12)
    # float32 accuracies, as the result file stores them, are counts out of n
    lo32, hi32 = hci.accuracy_interval(np.float32(0.77), 1000)
    assert (lo32, hi32) == pytest.approx(hci.accuracy_interval(0.77, 1000))
    with pytest.raises(InvalidValueError, match="not counts out of"):
        hci.accuracy_interval(0.505, 100)
    with pytest.raises(InvalidValueError, match="integers >= 1"):
        hci.accuracy_interval(0.5, 0)


def test_mean_interval_by_hand():
    mean, lo, hi = hci.mean_accuracy_interval(np.array([[0.8], [0.6]]), np.array([100, 400]))
    se = math.sqrt(0.8 * 0.2 / 100 + 0.6 * 0.4 / 400) / 2
    assert mean[0] == pytest.approx(0.7) and lo[0] == pytest.approx(0.7 - 1.96 * se)
    assert hi[0] == pytest.approx(0.7 + 1.96 * se)
    with pytest.raises(InvalidValueError, match="one integer >= 1 per device"):
        hci.mean_accuracy_interval(np.array([[0.8], [0.6]]), np.array([100]))


def _accuracy_inputs():
    criteria = ("tap_vits", "one_size_fits_all", "oracle", "magnitude_l2", "toast")
    budgets = [{"label": lab, "block_params_kept": f} for lab, f in (("90", 0.9), ("70", 0.7), ("50", 0.5))]
    rng = np.random.default_rng(0)
    n = {"cam": 200, "drone": 400}
    results = {d: {b["label"]: {c: {"acc": int(rng.integers(n[d] // 4, n[d])) / n[d]} for c in criteria}
                   for b in budgets} for d in DEVICES}
    return criteria, budgets, results, {"cam": 0.9, "drone": 0.85}, n


def test_accuracy_curves_draw_wilson_bands_and_mean_error_bars():
    criteria, budgets, results, dense, n = _accuracy_inputs()
    fig = hci.plot_accuracy_curves(criteria, budgets, results, dense, DEVICES, n_test=n)
    axes = np.array(fig.axes).reshape(2, len(DEVICES) + 1)
    frac = np.array([b["block_params_kept"] for b in budgets])
    labels = [b["label"] for b in budgets]
    top = [c for c in criteria if c in hci.TAP_SOURCE]
    for c, d in enumerate(DEVICES):
        assert axes[0, c].get_title() == f"{d} (n = {n[d]:,})"
        bands = axes[0, c].collections
        assert len(bands) == len(top) and not axes[1, c].collections  # no bands for the many other criteria
        for band, crit in zip(bands, top):
            assert to_hex(band.get_facecolor()[0]) == methods.style(crit).color
            assert band.get_alpha() <= 0.2
            acc = np.array([results[d][lab][crit]["acc"] for lab in labels])
            lo, hi = hci.accuracy_interval(acc, n[d])
            v = band.get_paths()[0].vertices
            for x, a, l_, h_ in zip(frac, acc, lo, hi):
                ys = v[np.isclose(v[:, 0], x), 1]
                assert ys.min() == pytest.approx(l_) and ys.max() == pytest.approx(h_) and l_ <= a <= h_
            ylo, yhi = axes[0, c].get_ylim()
            assert ylo <= lo.min() and yhi >= hi.max()
    # the mean column, bottom row: one error bar per budget and criterion, normal approximation
    bottom = ["tap_vits"] + [c for c in criteria if c not in hci.TAP_SOURCE]
    bars = axes[1, -1].collections
    assert len(bars) == len(bottom)
    for coll, crit in zip(bars, bottom):
        per = np.array([[results[d][lab][crit]["acc"] for lab in labels] for d in DEVICES])
        _, lo, hi = hci.mean_accuracy_interval(per, np.array([n[d] for d in DEVICES]))
        segs = sorted(coll.get_segments(), key=lambda s: -s[0][0])  # from the largest budget down
        np.testing.assert_allclose([[s[:, 1].min(), s[:, 1].max()] for s in segs], np.stack([lo, hi], 1))
    # intervals add no legend entries
    for row, crits in zip(axes, (top, bottom)):
        texts = [t.get_text() for t in row[-1].get_legend().get_texts()]
        assert texts == [*map(methods.label, crits), "dense model"]
    assert "95 %" in fig.get_suptitle()


def test_accuracy_curves_without_counts_draw_points_only():
    criteria, budgets, results, dense, _ = _accuracy_inputs()
    fig = hci.plot_accuracy_curves(criteria, budgets, results, dense, DEVICES)
    assert all(not ax.collections for ax in fig.axes) and not fig.get_suptitle()
    with pytest.raises(InvalidValueError, match="no test-image count"):
        hci.plot_accuracy_curves(criteria, budgets, results, dense, DEVICES, n_test={"cam": 10})
    with pytest.raises(InvalidValueError, match="not counts out of"):  # drone's were measured on 400 images
        hci.plot_accuracy_curves(criteria, budgets, results, dense, DEVICES, n_test=200)
    one = hci.plot_accuracy_curves(criteria, budgets, results, dense, DEVICES, n_test=400)  # one count for all
    assert one.axes[0].get_title() == "cam (n = 400)"


def test_result_carries_the_test_counts(tmp_path):
    from vitprune_lite import paths

    committed = paths.data_dir() / "results" / "02_head_channel_importance.json"
    res = hci.Result.from_json(committed)  # the full run: the first 500 private test images of each device
    assert res.params.test_images == 500 and res.n_test == {d: 500 for d in res.devices}
    raw = json.loads(committed.read_text())
    del raw["n_test"]  # a file written before the counts were recorded is still read, without them
    (tmp_path / "old.json").write_text(json.dumps(raw))
    old = hci.Result.from_json(tmp_path / "old.json")
    assert old.n_test == {} and old.results == res.results
    back = hci.Result.from_json(res.to_json(tmp_path / "r.json"))
    assert back.n_test == res.n_test
    dataclasses.replace(old, n_test={"elsewhere": 1000}).to_json(tmp_path / "bad.json")
    with pytest.raises(InvalidFileError, match="n_test"):
        hci.Result.from_json(tmp_path / "bad.json")
