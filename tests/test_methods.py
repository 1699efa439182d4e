"""The registry of methods: complete, one name per method, distinct styles, old names refused."""
from __future__ import annotations

import re

import pytest

from vitprune_lite import cli_real, importance, methods, realscale, tokens
from vitprune_lite.errors import InvalidValueError
from vitprune_lite.experiments import final_comparisons as fc
from vitprune_lite.experiments import head_channel_importance as hci

#: Spellings the project used before the registry; none may be registered or accepted.
OLD_NAMES = ("tap", "tap_gmm", "tap_random", "tap_oracle", "tap_gmm_uniform", "taylor_gmm", "tp_magnitude",
             "tp_taylor")


def test_every_name_the_project_uses_is_registered():
    used = {
        "importance.CRITERIA": importance.CRITERIA,
        "head_channel_importance.ALL_CRITERIA": hci.ALL_CRITERIA,
        "final_comparisons.STRUCTURED": fc.STRUCTURED,
        "tokens._METHODS": tokens._METHODS,
        "realscale.METHODS": tuple(realscale.METHODS),
        "cli_real.METHOD_NAMES": cli_real.METHOD_NAMES,
        "references and the combined plan": ("dense", "oracle", "combined"),
    }
    for where, names in used.items():
        missing = [n for n in names if n not in methods.REGISTRY]
        assert not missing, f"{where} uses unregistered names {missing}"
    assert set(tokens._METHODS) == set(methods.names("token"))
    assert set(methods.names("reference")) == {"dense", "oracle"}


def test_entries_are_well_formed_and_keyed_by_their_name():
    from matplotlib.markers import MarkerStyle

    for name, m in methods.REGISTRY.items():
        assert m.name == name and re.fullmatch(r"[a-z0-9_]+", name)
        assert m.kind in methods.KINDS and m.family in methods.FAMILIES and m.label and m.summary
        assert re.fullmatch(r"#[0-9a-f]{6}", m.style.color)
        MarkerStyle(m.style.marker)  # a marker matplotlib knows
    assert methods.label("toast_tcs") == "ToaSt + TCS" and methods.get("tap_vits").family == "TAP-ViTs"
    assert methods.names() == tuple(methods.REGISTRY)
    assert set().union(*(methods.names(k) for k in methods.KINDS)) == set(methods.REGISTRY)


def test_styles_and_labels_tell_every_method_apart():
    pairs = [(m.style.color, m.style.marker) for m in methods.REGISTRY.values()]
    assert len(set(pairs)) == len(pairs)
    labels = [m.label for m in methods.REGISTRY.values()]
    assert len(set(labels)) == len(labels)
    assert methods.style("tap_vits").line()["color"] == methods.style("tap_vits").point()["color"]


@pytest.mark.parametrize("old", OLD_NAMES)
def test_old_and_unknown_names_are_refused_naming_them(old):
    assert old not in methods.REGISTRY
    for call in (methods.get, methods.label, methods.style, methods.check):
        with pytest.raises(InvalidValueError, match=rf"unknown method '{old}'; accepted: dense, tap_vits"):
            call(old)


def test_old_names_are_refused_where_users_pass_them():
    with pytest.raises(InvalidValueError, match=r"unknown: \['tap_gmm', 'tp_magnitude'\].*'tap_vits'"):
        hci.Params(criteria=("tap_vits", "tap_gmm", "tp_magnitude"))
    with pytest.raises(InvalidValueError, match=r"unknown criterion 'tap'; accepted: tap_vits"):
        importance.score(None, "tap")  # the name is checked before the model
    with pytest.raises(InvalidValueError, match=r"unknown method 'tp_magnitude'; accepted: tap_vits, "):
        realscale.check_prune_args(model=None, checkpoint=None, data="nowhere", method="tp_magnitude",
                                   budget=0.5, upload_path=None, image_size=None, n_metric=640)
    with pytest.raises(InvalidValueError, match="unknown method kind 'tokens'"):
        methods.names("tokens")
    with pytest.raises(InvalidValueError, match="accepted: tap_vits, taylor"):
        methods.check("dense", importance.CRITERIA, "criterion")  # registered, but not a criterion


def test_cli_help_lists_the_registry_names_and_summaries():
    text = cli_real._method_help()
    for name in cli_real.METHOD_NAMES:
        assert f"{name} ({methods.get(name).summary})" in text


def test_a_figure_draws_a_method_with_its_registry_label_and_colour():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    pts = [{"method": m, "setting": "50%", "device": "d", "acc": a, "acc_std": 0.0, "ms_b1": t, "ms_b32": 2 * t,
            "flops": 3 * t} for m, a, t in (("tap_vits", 0.8, 1.0), ("toast_tcs", 0.7, 0.8), ("oracle", 0.9, 1.0))]
    fig = fc.plot_pareto(pts, ["d"], 1, 1)
    try:
        for ax in fig.axes:
            handles, labels = ax.get_legend_handles_labels()
            assert set(labels) == {"TAP-ViTs", "ToaSt + TCS", "oracle (private data)"}
            for h, lab in zip(handles, labels):
                name = next(n for n in ("tap_vits", "toast_tcs", "oracle") if methods.label(n) == lab)
                line = h[0] if isinstance(h, tuple) else h.lines[0]
                assert mcolors.to_hex(line.get_color()) == methods.style(name).color
                assert line.get_marker() == methods.style(name).marker
    finally:
        plt.close(fig)
