"""The README's results section, generated from ``data/results/*.json``.

Nothing in the README's results section is typed by hand: :func:`load_results` reads each
notebook's file with its experiment module's ``Result.from_json``, :func:`render` turns the
typed results into markdown tables, and :func:`update_readme` writes them between the
``<!-- results:begin -->`` and ``<!-- results:end -->`` markers. ``python -m vitprune_lite
report`` rewrites the section; ``--check`` only says whether it is stale (the test suite does
the same, so a README that disagrees with the committed JSON fails ``make test``).

A notebook without a results file gets a "no results yet" section; a file that ``from_json``
refuses (another schema, malformed, not JSON) gets a section that quotes the reason.

The "claimed vs measured" table reads the papers' headline claims from :data:`CLAIMS` (quoted
from the abstracts and from docs/methods.md) and matches each to a measurement in
:data:`MEASURES`. A verdict follows the measured effect's 95 % interval (:func:`interval_verdict`):
"held" when it lies wholly on the claimed side, "did not hold" when wholly on the other,
"not resolved" when it straddles; where the results hold no interval the row says what the
verdict rests on, and a difference of point estimates alone is never a win. Smoke and lab
runs get no verdict.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median
from types import ModuleType
from typing import Any, Callable, Mapping, Optional, Sequence

from . import methods, paths, reproduce
from .errors import InvalidFileError
from .experiments import base_model, final_comparisons, gmm_approximation, head_channel_importance, latency_curve

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"

# Verdict wording is shared so the table reads consistently.
HELD, NOT_RESOLVED, NOT_HELD = "held", "not resolved", "did not hold"
NOT_YET, NO_VERDICT, NOT_COMPARABLE = "not measured yet", "no verdict (smoke or lab run)", "not comparable"


@dataclass(frozen=True)
class Notebook:
    """A notebook whose results the README shows: its number, results file, heading and module."""

    number: str
    file: str
    title: str
    module: ModuleType


NOTEBOOKS: dict[str, Notebook] = {n.number: n for n in (
    Notebook("00", "00_base_model.json", "00 Base model", base_model),
    Notebook("01", "01_gmm_data_approximation.json", "01 GMM data approximation", gmm_approximation),
    Notebook("02", "02_head_channel_importance.json", "02 Head and channel importance", head_channel_importance),
    Notebook("03", "03_latency_curve_profiling.json", "03 Latency curve and token methods", latency_curve),
    Notebook("04", "04_final_comparisons.json", "04 Final comparisons", final_comparisons),
)}


@dataclass(frozen=True)
class Refused:
    """A results file that its ``Result.from_json`` refused.

    Attributes:
        file: the file's name in ``data/results``.
        reason: the refusal's message.
    """

    file: str
    reason: str


#: Notebook number -> its typed ``Result`` or :class:`Refused`; notebooks without a file are absent.
Results = Mapping[str, Any]

def label(name: str) -> str:
    """A method's display name from the registry; a setting such as ``pomt(8)`` keeps its name."""
    return methods.label(name) if name in methods.REGISTRY else name


# --------------------------------------------------------------------------- loading
def load_results(results_dir: Optional[Path] = None) -> dict[str, Any]:
    """Read each notebook's results file with its module's ``Result.from_json``.

    Args:
        results_dir: folder to read (default :func:`paths.results_dir`).

    Returns:
        ``{"00": base_model.Result, "02": Refused, ...}`` keyed by notebook number: a
        :class:`Refused` where ``from_json`` refused the file (its message names the file relative
        to the repository); notebooks without a results file are absent.
    """
    folder = Path(results_dir) if results_dir is not None else paths.results_dir()
    out: dict[str, Any] = {}
    for nb, info in NOTEBOOKS.items():
        path = folder / info.file
        if not path.exists():
            continue
        try:
            out[nb] = info.module.Result.from_json(path)
        except InvalidFileError as err:
            out[nb] = Refused(info.file, str(err).replace(str(path), f"data/results/{info.file}"))
    return out


def _module_of(result: Any):
    """The experiment module whose ``Result`` ``result`` is."""
    return next(n.module for n in NOTEBOOKS.values() if isinstance(result, n.module.Result))


def reduced(result: Any) -> bool:
    """Whether a result comes from another run than the full one: its ``smoke`` flag, or any
    parameter that one of its module's other presets changes differs from the full run on the same
    benchmark."""
    module = _module_of(result)
    full = module.Params(benchmark=result.params.benchmark)
    keys = set().union(*(p for name, p in module.PRESETS.items() if name != "full")) - {"benchmark"}
    return bool(result.smoke) or any(getattr(result.params, k) != getattr(full, k) for k in keys)


# --------------------------------------------------------------------------- formatting
def pct(x: Optional[float], digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage string; ``None`` as an en dash."""
    return "–" if x is None else f"{100 * float(x):.{digits}f} %"


def points(g: Mapping[str, float]) -> str:
    """A difference ``{"mean", "lo", "hi"}`` (fractions) as ``+1.2 [+0.3, +2.1]`` percentage points."""
    return f"{100 * g['mean']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table.

    Raises:
        ValueError: a row's length differs from the header's.
    """
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ValueError(f"row {i} has {len(r)} cells, the header has {len(header)}")
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def _provenance(res: Any, name: str) -> str:
    env = res.environment
    bits = [f"`data/results/{name}`"]
    if env["git_rev"]:
        bits.append(f"git {env['git_rev']}" + (" (dirty tree)" if env["git_dirty"] else ""))
    if env["threads"] is not None:
        bits.append(f"{env['threads']} thread{'' if env['threads'] == 1 else 's'}")
    if env["load_avg_1min"] is not None:
        bits.append(f"load average {float(env['load_avg_1min']):.1f}")
    note = "Source: " + ", ".join(bits) + "."
    kind = run_kind(res)
    if kind != "full":
        note += {"smoke": " **Smoke run: the tests' sizes, not the full results.**",
                 "lab": " **Lab run: reduced sizes, not the full results.**",
                 "extended": " Extended run: larger sizes than the full run's.",
                 "reduced": " **Reduced run: parameters differ from the full run's; not the full results.**"}[kind]
    return note


def run_kind(result: Any) -> str:
    """``"full"``, ``"extended"``, ``"lab"`` or ``"smoke"`` when the result's parameters are that
    preset's (on its benchmark); ``"reduced"`` for any other run that :func:`reduced` flags."""
    if not reduced(result):
        return "full"
    module = _module_of(result)
    for name in ("smoke", "lab", "extended"):
        want = module.Params.preset(name, benchmark=result.params.benchmark)
        if all(getattr(result.params, k) == getattr(want, k) for k in module.PRESETS[name]):
            return name
    return "reduced"


# --------------------------------------------------------------------------- sections
def section_base(res: base_model.Result) -> str:
    """Notebook 00: the benchmark, the dense base model's size and accuracies (95 % intervals), and
    the cross-device gap when it was measured."""
    m, acc = res.model, res.accuracy
    lines = ["### 00 Base model", "",
             f"Benchmark {res.params.benchmark} (generator {res.benchmark['generator_version']}): "
             f"{m['params']:,} parameters, {m['tokens']} tokens, {m['flops'] / 1e6:.1f} MFLOPs per image "
             "(2 x MACs, batch 1).", ""]

    def cell(a: Mapping[str, Any]) -> str:
        return f"{pct(a['acc'])} [{pct(a['lo'])}, {pct(a['hi'])}] (n = {a['n']:,})"

    rows = [["public test", cell(acc["public_test"])]]
    rows += [[f"public test, {s}", cell(v)] for s, v in acc["by_style"].items()]
    rows += [[f"device {d}, private test", cell(v)] for d, v in acc["devices"].items()]
    lines += [md_table(["split", "accuracy [95 % interval]"], rows)]
    if res.cross_device:
        g = res.cross_device["gap"]
        lines += ["", f"Cross-device check ({len(res.cross_device['devices'])} devices, "
                  f"{len(res.cross_device['seeds'])} recovery seed(s), "
                  f"{pct(res.cross_device['block_param_share'], 0)} of block parameters, after recovery): pruning "
                  f"on a device's own data minus one model pruned for every device: {100 * g['mean']:+.1f} "
                  f"points [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]."]
    return "\n".join(lines)


def section_gmm(r: gmm_approximation.Result) -> str:
    """Notebook 01: chosen K, metric-set precision vs random and membership AUC, per device and space."""
    default = r.parameters["default_feature_space"]
    rows = []
    for d, dev in r.devices.items():
        for space, s in dev["spaces"].items():
            p, q = s["precision"]["metric"], s["random_precision"]["metric"]
            rows.append([d, space + (" (default)" if space == default else ""), s["k"],
                         f"{s['upload_bytes']:,} / {s['raw_bytes']:,}",
                         f"{pct(p['class'])} vs {pct(q['class'])}", f"{pct(p['style'])} vs {pct(q['style'])}",
                         f"{s['membership_auc']:.3f}"])
    lines = ["### 01 GMM data approximation", "",
             f"Metric set ({r.parameters['n_metric']} public images) (benchmark {r.benchmark}) selected by the "
             "device's uploaded GMM, against as many random public images. Precision = share of the selected "
             "images whose class (style) belongs to the device's task. Membership AUC: 0.5 means the "
             "upload does not tell the device's own images from unseen ones.", "",
             md_table(["device", "feature space", "K (BIC)", "upload / raw bytes", "class precision vs random",
                       "style precision vs random", "membership AUC"], rows)]
    return "\n".join(lines)


def _criteria_means(r: head_channel_importance.Result, lab: str) -> dict[str, dict[str, float]]:
    """Notebook 02 at budget ``lab``: criterion -> mean over devices of ``params``, ``flops``, ``acc``."""
    crits = list(r.results[r.devices[0]][lab])
    return {c: {k: mean(r.results[d][lab][c][k] for d in r.devices) for k in ("params", "flops", "acc")}
            for c in crits}


def section_importance(r: head_channel_importance.Result) -> str:
    """Notebook 02: zero-shot accuracy per criterion at the smallest budget, mean over devices."""
    lab = r.budgets[-1]["label"]
    dense = r.dense
    rows = [["dense", f"{dense['params']:,}", "1.00", pct(mean(dense["acc"][d] for d in r.devices))]]
    for c, m in _criteria_means(r, lab).items():
        rows.append([label(c), f"{round(m['params']):,}", f"{m['flops'] / dense['flops']:.2f}", pct(m["acc"])])
    n = len(r.devices)
    lines = ["### 02 Head and channel importance", "",
             f"Structured pruning to {lab} % of the block parameters, no recovery fine-tune; accuracy "
             f"on the devices' private test splits, mean over {n} device{'' if n == 1 else 's'} of benchmark "
             f"{r.benchmark}.", "",
             md_table(["criterion", "params", "FLOPs / dense", "accuracy"], rows)]
    flops_line = flops_not_latency(r)
    if flops_line:
        lines += ["", flops_line]
    gap = r.summary_50
    if "gmm_minus_random_mean" in gap:  # present when all three metric sets were scored
        lines += ["", f"TAP scored on GMM-selected vs random public images: "
                      f"{100 * gap['gmm_minus_random_mean']:+.1f} points; oracle (device data) vs GMM: "
                      f"{100 * gap['oracle_minus_gmm_mean']:+.1f} points (point estimates, no interval)."]
    return "\n".join(lines)


def flops_not_latency(r: head_channel_importance.Result, batch: str = "batch1") -> str:
    """"FLOPs are not latency", from notebook 02's timings: how many pruned models were not faster
    than the dense model at ``batch`` although they had fewer FLOPs, and the one with the fewest
    FLOPs among them ("" when no model was timed at that batch size)."""
    timed = [(d, lab, c, v) for d, per in r.results.items() for lab, crits in per.items()
             for c, v in crits.items() if batch in (v.get("latency") or {})]
    if not timed:
        return ""
    slow = [t for t in timed if t[3]["latency"][batch]["speedup"] <= 1.0 and t[3]["flops"] < r.dense["flops"]]
    speed = median(t[3]["latency"][batch]["speedup"] for t in timed)
    flop_speed = median(t[3]["latency"][batch]["flop_speedup"] for t in timed)
    head = (f"**FLOPs are not latency.** At batch {batch.removeprefix('batch')} on this CPU the {len(timed)} timed "
            f"pruned models ran a median {speed:.2f}x faster than the dense model where their FLOPs promised "
            f"{flop_speed:.2f}x; {len(slow)} of them had fewer FLOPs and were not faster at all")
    if not slow:
        return head + "."
    d, lab, c, v = min(slow, key=lambda t: t[3]["flops"])
    return (head + f"; the leanest of them, {label(c)} at {lab} % for {d}, has {v['flops'] / r.dense['flops']:.2f} "
            f"of the dense FLOPs and runs at {1 / v['latency'][batch]['speedup']:.2f} of its latency "
            "(medians of interleaved rounds, no interval).")


def section_latency(r: latency_curve.Result) -> str:
    """Notebook 03: POMT's chosen schedule against dense and token-method peers (batch 1)."""
    rows = [[x["row"], x["config"], pct(x["test_acc"]), pct(x["device_acc_mean"]), f"{x['flops_ratio']:.2f}",
             f"{x['ratio_vs_dense']:.3f}"] for x in r.final_rows]
    lines = ["### 03 Latency curve and token methods", "",
             f"On the {r.benchmark} benchmark's base model ({r.n_tokens} tokens).", "",
             md_table(["row", "config", "public test", "devices (mean)", "FLOPs / dense",
                       "batch-1 latency / dense"], rows)]
    if r.pomt_vs_tome_latency_at_matched_accuracy is not None:
        lines += ["", "POMT / ToMe batch-1 latency at matched accuracy: "
                      f"{r.pomt_vs_tome_latency_at_matched_accuracy:.3f}."]
    return "\n".join(lines)


#: Notebook 04's columns: the deployable structured methods and the oracle.
_FINAL_METHODS = ("tap_vits", "one_size_fits_all", "toast_tcs", "torch_pruning", "oracle")


def section_final(r: final_comparisons.Result) -> str:
    """Notebook 04: every method after identical recovery, per device; the combined plan."""
    main, n_seeds = r.main_budget, len(r.seeds)
    rows = [[s["device"], s["budget"], label(s["best"]), *[pct(s[m]) for m in _FINAL_METHODS], pct(s["dense"])]
            for s in r.summary if s["budget"].endswith("params")]
    lines = ["### 04 Final comparisons", "",
             f"Private test accuracy per device after pruning to {main} of the block parameters and an "
             f"identical recovery fine-tune, mean over {n_seeds} seed{'' if n_seeds == 1 else 's'}; "
             "best = best mean among the deployable methods (the oracle reads the device's private data).", "",
             md_table(["device", "budget", "best", *[label(m) for m in _FINAL_METHODS], "dense"], rows)]
    if main in r.differences:
        lines += ["", "TAP-ViTs minus each method, mean over devices with its 95 % paired bootstrap interval "
                      "(seeds and test images resampled): "
                  + "; ".join(f"{label(m)} {points(g)} points" for m, g in r.differences[main].items()) + "."]
    lat = [s for s in r.summary if s["budget"].endswith("latency")]
    if lat:
        def cell(s: Mapping[str, Any], kind: str) -> str:
            return f"{pct(s[kind])}, {s[kind + ' ms']:.2f} ms, met {100 * s[kind + ' met']:.0f} %"

        check = r.predictor["validation"]["ratio"]
        lines += ["", "Combined plan (structure + tokens chosen together with this machine's latency predictor, "
                      f"a margin of {100 * r.predictor['margin']:.1f} %: its held-out plans were predicted within "
                      f"10 % of their measured latency relative to dense for {100 * check['within_10']:.0f} % of "
                      f"{check['n']}) against each ingredient alone, under batch-1 latency budgets "
                      f"(dense: {r.dense['ms_b1']:.2f} ms here). Each cell: test accuracy, "
                      "measured latency, share of seeds whose measured latency met the budget; best = the most "
                      "accurate among those that met it in at least half of the seeds.", "",
                  md_table(["device", "budget", "best", "combined", "structure only", "tokens only", "combined plan"],
                           [[s["device"], f"{s['budget']} ({s['budget_ms']:.2f} ms)", s["best"], cell(s, "combined"),
                             cell(s, "structure only"), cell(s, "tokens only"), s["combined_plan"]] for s in lat])]
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[Any], str]] = {
    "00": section_base, "01": section_gmm, "02": section_importance, "03": section_latency, "04": section_final,
}


# --------------------------------------------------------------------------- verdicts
def interval_verdict(lo: float, hi: float, threshold: float = 0.0, above: bool = True) -> str:
    """The verdict of a claim from its measured effect's interval ``[lo, hi]``.

    Args:
        lo, hi: the interval's ends (a 95 % interval, or an interquartile range where that is all
            the results hold; the row says which).
        threshold: the boundary of the claimed side (0: no difference).
        above: the claim is that the effect lies above ``threshold`` (False: below).

    Returns:
        :data:`HELD` when the whole interval lies on the claimed side, :data:`NOT_HELD` when it lies
        wholly on the other side, :data:`NOT_RESOLVED` when it touches or straddles ``threshold``.
    """
    if not above:
        lo, hi, threshold = -hi, -lo, -threshold
    return HELD if lo > threshold else NOT_HELD if hi < threshold else NOT_RESOLVED


def _no_interval(what: str) -> str:
    return f"; {what} hold no interval, so no difference of point estimates counts: not resolved"


# --------------------------------------------------------------------------- claims: notebook 01
def _default_spaces(r: gmm_approximation.Result) -> tuple[str, list[Mapping[str, Any]]]:
    space = r.parameters["default_feature_space"]
    return space, [dev["spaces"][space] for dev in r.devices.values()]


def _m_private_upload(results: Results) -> tuple[str, str]:
    r = results["01"]
    space, cells = _default_spaces(r)
    aucs = [c["membership_auc"] for c in cells]
    up, raw = max(c["upload_bytes"] for c in cells), min(c["raw_bytes"] for c in cells)
    text = (f"upload ≤ {up:,} B vs {raw:,} B of raw images; membership AUC {min(aucs):.3f}-{max(aucs):.3f} "
            f"({space} features, benchmark {r.benchmark}; 0.5 = no leak, held if ≤ 0.60); the results hold no "
            "interval of the AUC: the verdict rests on the largest device's AUC against 0.60")
    return text, HELD if max(aucs) <= 0.6 else NOT_HELD


def precision_gap(r: gmm_approximation.Result) -> dict[str, float]:
    """Metric-set class precision minus random's, mean over devices, with a 95 % interval.

    Each device's two precisions are shares of ``n_metric`` images; the interval is the normal
    approximation of the difference of two proportions, combined over devices.

    Returns:
        ``{"mean", "lo", "hi", "selected", "random"}`` (fractions).
    """
    _, cells = _default_spaces(r)
    n = r.parameters["n_metric"]
    sel = [c["precision"]["metric"]["class"] for c in cells]
    rnd = [c["random_precision"]["metric"]["class"] for c in cells]
    var = sum(p * (1 - p) / n + q * (1 - q) / n for p, q in zip(sel, rnd)) / len(cells) ** 2
    gap = mean(sel) - mean(rnd)
    half = 1.96 * math.sqrt(var)
    return {"mean": gap, "lo": gap - half, "hi": gap + half, "selected": mean(sel), "random": mean(rnd)}


def _m_selection(results: Results) -> tuple[str, str]:
    r = results["01"]
    g = precision_gap(r)
    text = (f"metric-set class precision {pct(g['selected'])} vs {pct(g['random'])} random (mean over devices of "
            f"benchmark {r.benchmark}): {points(g)} points (95 % interval over the {r.parameters['n_metric']} "
            "images of each set)")
    r02 = results.get("02")
    if isinstance(r02, head_channel_importance.Result) and "gmm_minus_random_mean" in r02.summary_50:
        text += (f"; pruned accuracy GMM vs random metric set {100 * r02.summary_50['gmm_minus_random_mean']:+.1f} "
                 "points (notebook 02, no interval: not part of the verdict)")
    return text, interval_verdict(g["lo"], g["hi"])


# --------------------------------------------------------------------------- claims: notebook 02
#: Notebook 02's criteria that are TAP-ViTs itself or its variants (other metric sets, uniform ratios).
_TAP_VARIANTS = frozenset({"tap_vits", "tap_vits_uniform", "one_size_fits_all", "oracle"})
#: Notebook 02's weight-only baselines that ToaSt's coupled scores are compared with.
_WEIGHT_BASELINES = ("magnitude_l1", "magnitude_l2", "random", "torch_pruning")


def _wins(r: head_channel_importance.Result, crit: str, others: Sequence[str]) -> tuple[int, int]:
    """At how many of notebook 02's budgets ``crit``'s mean accuracy is at least the best of ``others``."""
    labs = [b["label"] for b in r.budgets]
    means = {lab: _criteria_means(r, lab) for lab in labs}
    return sum(means[lab][crit]["acc"] >= max(means[lab][c]["acc"] for c in others) for lab in labs), len(labs)


def _m_tap_vs_peers(results: Results) -> tuple[str, str]:
    r = results["02"]
    peers = [c for c in r.results[r.devices[0]][r.budgets[0]["label"]] if c not in _TAP_VARIANTS]
    wins, n = _wins(r, "tap_vits", peers)
    text = (f"TAP-ViTs ≥ best other criterion at {wins} of {n} budgets (zero-shot point accuracies, mean over "
            "devices)" + _no_interval("notebook 02's results"))
    return text, NOT_RESOLVED


def _m_toast_vs_baselines(results: Results) -> tuple[str, str]:
    r = results["02"]
    base = [c for c in _WEIGHT_BASELINES if c in r.results[r.devices[0]][r.budgets[0]["label"]]]
    wins, n = _wins(r, "toast", base)
    text = (f"ToaSt (coupled QK/VO) ≥ best weight-only baseline ({', '.join(label(c) for c in base)}) at {wins} "
            f"of {n} budgets (zero-shot point accuracies)" + _no_interval("notebook 02's results"))
    return text, NOT_RESOLVED


def _m_toast_above_dense(results: Results) -> tuple[str, str]:
    r = results["02"]
    dense_acc = mean(r.dense["acc"][d] for d in r.devices)
    red = {b["label"]: 1 - _criteria_means(r, b["label"])["toast_tcs"]["flops"] / r.dense["flops"]
           for b in r.budgets}
    lab = min(red, key=lambda k: abs(red[k] - 0.394))
    delta = _criteria_means(r, lab)["toast_tcs"]["acc"] - dense_acc
    text = (f"ToaSt + TCS at {100 * red[lab]:.1f} % FLOPs reduction: {100 * delta:+.1f} points vs dense "
            "(per-sample evaluation, zero-shot)" + _no_interval("notebook 02's results"))
    return text, NOT_RESOLVED


def _m_toast_flops_split(results: Results) -> tuple[str, str]:
    r = results["02"]
    tcs_cut = 1 - r.tcs_flops["tcs"] / r.tcs_flops["dense"]
    lab = r.budgets[-1]["label"]
    attn_cut = 1 - _criteria_means(r, lab)["toast"]["flops"] / r.dense["flops"]
    text = (f"coupled QK/VO pruning at {lab} % of block parameters removes {100 * attn_cut:.1f} % of FLOPs; "
            f"TCS alone on the dense model {100 * tcs_cut:.1f} % (FLOP counts are exact: the verdict rests on them)")
    return text, HELD if attn_cut > tcs_cut else NOT_HELD


# --------------------------------------------------------------------------- claims: notebook 03
def _iqr(r: latency_curve.Result, key: str) -> tuple[float, float]:
    """Interquartile range of a setting's per-round batch-1 latency / dense."""
    (row,) = [m for m in r.methods if m["key"] == key]
    return row["ratio_iqr"][0], row["ratio_iqr"][1]


def _pomt_row(r: latency_curve.Result) -> Mapping[str, Any]:
    (row,) = [x for x in r.final_rows if x["row"] == "POMT (chosen R)"]
    return row


def _m_pomt_latency(results: Results) -> tuple[str, str]:
    r = results["03"]
    row = _pomt_row(r)
    cut = 1 - row["ratio_vs_dense"]
    lo, hi = _iqr(r, row["config"])
    text = (f"batch-1 latency {100 * cut:.1f} % lower than dense" if cut >= 0
            else f"batch-1 latency {-100 * cut:.1f} % higher than dense (slower)")
    text += (f" ({row['config']}; interquartile range of the per-round ratios {lo:.3f}-{hi:.3f} of dense; "
             "held when the whole range is at least 9 % below dense)")
    return text, interval_verdict(lo, hi, threshold=0.91, above=False)


def _m_others_slower(results: Results) -> tuple[str, str]:
    r = results["03"]
    others = [m for m in r.methods if m["method"] not in ("dense", "pomt")]  # the claim is about the *other* methods
    slower = [m["key"] for m in others if m["ratio_iqr"][0] > 1]
    faster = [m["key"] for m in others if m["ratio_iqr"][1] < 1]
    text = (f"{len(slower)} of {len(others)} token-method settings slower than dense at batch 1 over their whole "
            "interquartile range of per-round ratios"
            + (f": {', '.join(slower[:4])}{' ...' if len(slower) > 4 else ''}" if slower else ""))
    if slower:
        return text, HELD
    return text, NOT_HELD if len(faster) == len(others) else NOT_RESOLVED


def _m_pomt_vs_tome(results: Results) -> tuple[str, str]:
    r = results["03"]
    ratio = r.pomt_vs_tome_latency_at_matched_accuracy
    tome = [x for x in r.final_rows if x["row"] == "matched accuracy" and x["method"] == "tome"]
    if ratio is None or not tome:
        return "no ToMe setting reached POMT's validation accuracy: no matched comparison", NOT_RESOLVED
    pomt_key = _pomt_row(r)["config"]
    p, t = _iqr(r, pomt_key), _iqr(r, tome[0]["config"])
    text = (f"POMT / ToMe batch-1 latency at matched accuracy {ratio:.3f} ({pomt_key} vs {tome[0]['config']}; "
            f"interquartile ranges of latency / dense {p[0]:.3f}-{p[1]:.3f} vs {t[0]:.3f}-{t[1]:.3f}: held when "
            "POMT's lies wholly below ToMe's)")
    verdict = HELD if p[1] < t[0] else NOT_HELD if p[0] > t[1] else NOT_RESOLVED
    return text, verdict


# --------------------------------------------------------------------------- claims: notebook 04
def _final_accs(r: final_comparisons.Result) -> dict[str, dict[str, float]]:
    """Notebook 04 at its main budget: ``{method: {device: mean accuracy over seeds}}``."""
    accs: dict[str, dict[str, float]] = {}
    for p in r.aggregate:
        if p["setting"] == r.main_budget:
            accs.setdefault(p["method"], {})[p["device"]] = p["acc"]
    return accs


def _m_tap_vs_one_size(results: Results) -> tuple[str, str]:
    r = results["04"]
    accs, devices, main = _final_accs(r), r.parameters["devices"], r.main_budget
    wins = sum(accs["tap_vits"][d] > accs["one_size_fits_all"][d] for d in devices)
    text = (f"device-specific TAP-ViTs vs one shared model, after identical recovery at {main} parameters")
    if main not in r.differences:
        diff = mean(accs["tap_vits"][d] - accs["one_size_fits_all"][d] for d in devices)
        return (text + f": {100 * diff:+.1f} points (mean over devices, {len(r.seeds)} seeds); better on {wins} of "
                f"{len(devices)} devices" + _no_interval("the results")), NOT_RESOLVED
    g = r.differences[main]["one_size_fits_all"]
    text += (f": {100 * g['mean']:+.1f} points [95 % interval {100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}] "
             f"(mean over devices, {len(r.seeds)} seeds); better on {wins} of {len(devices)} devices")
    prior = r.class_prior.get(main, {}).get("restricted tap_vits minus restricted one_size_fits_all")
    if prior:  # files written before the class-prior analysis hold none
        text += (f". With both models' predictions restricted to each device's classes (a class prior, not part "
                 f"of the verdict): {100 * prior['mean']:+.1f} [{100 * prior['lo']:+.1f}, {100 * prior['hi']:+.1f}]")
    return text, interval_verdict(g["lo"], g["hi"])


def _m_tap_vs_all(results: Results) -> tuple[str, str]:
    r = results["04"]
    accs, devices, main = _final_accs(r), r.parameters["devices"], r.main_budget
    others = ("one_size_fits_all", "toast_tcs", "torch_pruning")
    best = {d: max(accs[m][d] for m in others) for d in devices}
    wins = sum(accs["tap_vits"][d] >= best[d] for d in devices)
    text = (f"TAP-ViTs ≥ best of {', '.join(label(m) for m in others)} on {wins} of {len(devices)} devices after "
            f"identical recovery at {main} parameters (mean TAP-ViTs {pct(mean(accs['tap_vits'].values()))} vs "
            f"best other {pct(mean(best.values()))})")
    if main not in r.differences:
        return text + _no_interval("the results"), NOT_RESOLVED
    diffs = r.differences[main]
    text += "; TAP-ViTs minus " + ", ".join(f"{label(m)} {points(diffs[m])}" for m in others) + " points (95 %)"
    # held when every interval lies above zero; did not hold when one lies below zero
    verdicts = [interval_verdict(diffs[m]["lo"], diffs[m]["hi"]) for m in others]
    return text, HELD if all(v == HELD for v in verdicts) else NOT_HELD if NOT_HELD in verdicts else NOT_RESOLVED


def _m_toast_recovered(results: Results) -> tuple[str, str]:
    r = results["04"]
    accs, main = _final_accs(r), r.main_budget
    peers = ("one_size_fits_all", "torch_pruning")
    flops = {m: r.per_budget[main][m]["flops"] / r.dense["flops"] for m in ("toast_tcs", *peers)}
    text = (f"after identical recovery at {main} parameters: ToaSt + TCS {pct(mean(accs['toast_tcs'].values()))} at "
            f"{flops['toast_tcs']:.2f} of dense FLOPs vs "
            + ", ".join(f"{label(m)} {pct(mean(accs[m].values()))} at {flops[m]:.2f}" for m in peers))
    if main not in r.toast_differences:
        return text + _no_interval("the results"), NOT_RESOLVED
    diffs = r.toast_differences[main]
    text += ("; ToaSt + TCS minus " + ", ".join(f"{label(m)} {points(diffs[m])}" for m in peers)
             + " points (95 %); FLOP counts are exact. Held when it is more accurate at no more FLOPs than each "
               "peer; did not hold when a peer is more accurate at no more FLOPs")
    acc = {m: interval_verdict(diffs[m]["lo"], diffs[m]["hi"]) for m in peers}
    if all(acc[m] == HELD and flops["toast_tcs"] <= flops[m] for m in peers):
        return text, HELD
    if any(acc[m] == NOT_HELD and flops["toast_tcs"] >= flops[m] for m in peers):
        return text, NOT_HELD
    return text, NOT_RESOLVED


def _m_combined(results: Results) -> tuple[str, str]:
    r = results["04"]
    parts = [f"{k}: {pct(v['acc'])}, budget met {100 * v['measured_met']:.0f} % (measured / predicted "
             f"latency {v['measured_over_predicted']:.2f})" for k, v in r.combined_overall.items()]
    return "; ".join(parts) + " (mean over devices, budgets, seeds)" + _no_interval("these means"), NOT_RESOLVED


# Each claim is quoted from its paper's abstract or from docs/methods.md; "measure" names the
# extractor (in MEASURES) that finds the matching figure in the results, None where no
# measurement at this scale can answer it (the reason goes in "note"); "uses" lists the
# notebooks it needs: a missing or refused file there means "not measured yet", and a smoke or
# lab run among them withholds the verdict.
CLAIMS: list[dict[str, Any]] = [
    {"paper": "TAP-ViTs", "source": "abstract", "uses": ("01",),
     "claim": "generates device-specific pruned ViT models without requiring access to any raw local data",
     "measure": "private_upload"},
    {"paper": "TAP-ViTs", "source": "contribution",
     "claim": "uses GMM-based privacy-preserving data approximation",
     "measure": "selection", "uses": ("01",)},
    {"paper": "TAP-ViTs", "source": "findings",
     "claim": "Outperforms existing pruning methods at similar compression levels",
     "measure": "tap_vs_peers", "uses": ("02",)},
    {"paper": "ToaSt", "source": "abstract",
     "claim": "achieves superior trade-offs between accuracy and efficiency, consistently outperforming existing baselines",
     "measure": "toast_vs_baselines", "uses": ("02",)},
    {"paper": "ToaSt", "source": "docs/methods.md",
     "claim": "Reported FLOP savings come mostly from the attention pruning, not from TCS",
     "measure": "toast_flops_split", "uses": ("02",)},
    {"paper": "ToaSt", "source": "abstract",
     "claim": "On ViT-MAE-Huge, ToaSt achieves 88.52% accuracy (+1.64 %) with 39.4% FLOPs reduction",
     "measure": "toast_above_dense", "uses": ("02",)},
    {"paper": "POMT", "source": "abstract",
     "claim": "other methods may increase latency by 2-30%",
     "measure": "others_slower", "uses": ("03",)},
    {"paper": "POMT", "source": "abstract",
     "claim": "we reduce latency by 9-26%",
     "measure": "pomt_latency", "uses": ("03",)},
    {"paper": "POMT", "source": "findings",
     "claim": "Outperforms Token Merging in efficiency and accuracy",
     "measure": "pomt_vs_tome", "uses": ("03",)},
    {"paper": "POMT", "source": "abstract",
     "claim": "For similar latency (within 5.2% or 7ms) across devices we achieve 78.6%-84.5% ImageNet1K accuracy",
     "measure": None, "note": "ImageNet-1K and Jetson devices: no counterpart on the embedded benchmark"},
    {"paper": "TAP-ViTs", "source": "abstract", "uses": ("04",),
     "claim": "existing approaches either (i) produce a single pruned model shared across all devices, ignoring device heterogeneity",
     "measure": "tap_vs_one_size"},
    {"paper": "TAP-ViTs", "source": "findings", "uses": ("04",),
     "claim": "Achieves better task accuracy and efficiency across multiple datasets and models",
     "measure": "tap_vs_all"},
    {"paper": "ToaSt", "source": "abstract", "uses": ("04",),
     "claim": "achieves superior trade-offs between accuracy and efficiency (after recovery, against data-free peers)",
     "measure": "toast_recovered"},
    {"paper": "this companion", "source": "notebook 04", "uses": ("04",),
     "claim": "choosing structure and token schedule together beats either alone under a latency budget",
     "measure": "combined"},
]

MEASURES: dict[str, Callable[[Results], tuple[str, str]]] = {
    "private_upload": _m_private_upload,
    "selection": _m_selection,
    "tap_vs_peers": _m_tap_vs_peers,
    "toast_vs_baselines": _m_toast_vs_baselines,
    "toast_above_dense": _m_toast_above_dense,
    "toast_flops_split": _m_toast_flops_split,
    "pomt_latency": _m_pomt_latency,
    "others_slower": _m_others_slower,
    "pomt_vs_tome": _m_pomt_vs_tome,
    "tap_vs_one_size": _m_tap_vs_one_size,
    "tap_vs_all": _m_tap_vs_all,
    "toast_recovered": _m_toast_recovered,
    "combined": _m_combined,
}


def claims_rows(results: Results, claims: Sequence[Mapping[str, Any]] = CLAIMS) -> list[list[str]]:
    """One row per claim: paper, quoted claim, what was measured here, verdict.

    A claim whose notebooks' results are missing reads "not measured yet"; one whose file was
    refused names the file; a smoke or lab measurement is labelled so and gets no verdict.

    Raises:
        ValueError: a claim names an unknown measurement.
    """
    rows = []
    for c in claims:
        key = c["measure"]
        if key is not None and key not in MEASURES:
            raise ValueError(f"claim {c['claim']!r} names measurement {key!r}; known: {sorted(MEASURES)}")
        quote = f"“{c['claim']}” ({c['source']})"
        if key is None:
            rows.append([c["paper"], quote, c["note"], NOT_COMPARABLE])
            continue
        uses = [results.get(nb) for nb in c["uses"]]
        refused = [u.file for u in uses if isinstance(u, Refused)]
        if refused:
            rows.append([c["paper"], quote, f"– (results file {', '.join(refused)} refused: see its section)", NOT_YET])
        elif any(u is None for u in uses):
            rows.append([c["paper"], quote, "–", NOT_YET])
        else:
            text, verdict = MEASURES[key](results)
            if any(run_kind(u) not in ("full", "extended") for u in uses):
                text, verdict = text + " (smoke or lab run)", NO_VERDICT
            rows.append([c["paper"], quote, text, verdict])
    return rows


def _scale(results: Results) -> str:
    """The scale the results were measured at, from notebook 00's result (the base model and benchmark)."""
    from . import data

    res = results.get("00")
    if not isinstance(res, base_model.Result):  # missing, or refused (the section says why)
        return "the embedded benchmark's small ViT, CPU"
    module = data.benchmark_module(res.params.benchmark)
    return (f"a {res.model['params'] / 1e6:.1f} M-parameter ViT with {res.model['tokens']} tokens on benchmark "
            f"{res.params.benchmark}: {len(module.CLASSES)} classes at {module.IMAGE_SIZE} px, CPU")


def section_claims(results: Results) -> str:
    """The "what the papers claimed vs what we measured" table."""
    return "\n".join(["### Claimed vs measured", "",
                      "Headline claims quoted from the papers' abstracts; the figure measured here at "
                      f"this scale ({_scale(results)}), and "
                      "whether the claim held: held when the measured effect's 95 % interval lies wholly on "
                      "the claimed side, did not hold when it lies wholly on the other side, not resolved "
                      "when it straddles (or when the results hold no interval; each row says what its "
                      "verdict rests on). Smoke and lab runs get no verdict.", "",
                      md_table(["paper", "claim", "measured here", "verdict"], claims_rows(results))])


# --------------------------------------------------------------------------- README
# The one figure per notebook shown inline; the notebook's other figures are linked.
MAIN_FIGURES = {"00": "00_base_model.png", "01": "01_selection_quality.png",
                "02": "02_accuracy_vs_budget.png", "03": "03_curves.png",
                "04": "04_pareto.png"}


def _figures_line(nb: str, figures: Sequence[str]) -> str:
    mine = sorted(f for f in figures if f.startswith(f"{nb}_") and f.endswith(".png"))
    if not mine:
        return ""
    lines = []
    if MAIN_FIGURES.get(nb) in mine:
        lines.append(f"![{MAIN_FIGURES[nb][:-4]}](figures/{MAIN_FIGURES[nb]})")
    others = [f for f in mine if f != MAIN_FIGURES.get(nb)]
    if others:
        lines.append(("Other figures: " if lines else "Figures: ")
                     + ", ".join(f"[{f[:-4]}](figures/{f})" for f in others) + ".")
    return "\n\n".join(lines)


def render_section(nb: str, results: Results, figures: Sequence[str] = ()) -> str:
    """One notebook's section: its tables and provenance, "no results yet", or the refusal's reason."""
    info = NOTEBOOKS[nb]
    res = results.get(nb)
    if res is None:
        return f"### {info.title}\n\nNo results yet: run notebook {nb} (`make reproduce` runs them all)."
    if isinstance(res, Refused):
        return (f"### {info.title}\n\nThe results file `data/results/{res.file}` was not read: {res.reason}")
    figs = _figures_line(nb, figures)
    return SECTIONS[nb](res) + "\n\n" + _provenance(res, info.file) + (f"\n\n{figs}" if figs else "")


def _duration(seconds: float) -> str:
    m, sec = divmod(round(seconds), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def section_run_times(times: Mapping[str, Any]) -> str:
    """How long each notebook took, per benchmark and preset, from ``data/run_times.json``.

    Args:
        times: :func:`vitprune_lite.reproduce.run_times`'s mapping.
    """
    head = "### Run times"
    runs = [(b, p) for b in sorted(times, reverse=True) for p in sorted(times[b], key=lambda p: (p != "full", p))]  # v2 first
    if not runs:
        return f"{head}\n\nNot recorded yet: `make reproduce` records each notebook's wall time."
    stems = sorted({s for b, p in runs for s in times[b][p]})
    rows = [[s] + [_duration(times[b][p][s]["seconds"]) if s in times[b][p] else "-" for b, p in runs]
            for s in stems]
    rows.append(["**total**"] + [_duration(sum(e["seconds"] for e in times[b][p].values())) for b, p in runs])
    rows.append(["machine"] + [", ".join(sorted({str(e["cpu_model"]) for e in times[b][p].values()})) for b, p in runs])
    entries = [e for b, p in runs for e in times[b][p].values()]
    loads = [e["load_avg_1min"] for e in entries if e.get("load_avg_1min") is not None]
    changed = sorted({f"{p} ({b}): {', '.join(e['overrides'])}" for b, p in runs for e in times[b][p].values()
                      if e.get("overrides")})
    notes = [f"Wall time of each notebook under papermill (`make reproduce`; `extended` is "
             f"`make reproduce-extended`, `lab` is `make reproduce-lab`), on the machine each column names, "
             f"with {', '.join(sorted({str(e['cpu_usable']) for e in entries}))} usable cores"
             + (f"; 1-minute load average at the end of each notebook {min(loads):.1f}-{max(loads):.1f}" if loads else "")
             + f"; recorded {min(e['utc'] for e in entries)[:10]} to {max(e['utc'] for e in entries)[:10]}, "
             f"git {', '.join(sorted({str(e['git_rev']) for e in entries}))}."]
    if changed:
        notes.append("Runs with overrides: " + "; ".join(changed) + ".")
    return "\n\n".join([head, md_table(["notebook"] + [f"{p} ({b})" for b, p in runs], rows), *notes])


def render(results: Results, figures: Sequence[str] = (), run_times: Optional[Mapping[str, Any]] = None) -> str:
    """The whole generated section (markdown, no markers) for the given results.

    Args:
        results: ``{"00": base_model.Result, ...}`` as returned by :func:`load_results`.
        figures: file names in ``figures/`` (e.g. ``"01_bic.png"``) to show or link under
            their notebook's section (:data:`MAIN_FIGURES` inline, the rest as links).
        run_times: :func:`vitprune_lite.reproduce.run_times` (None: no run-times section).
    """
    parts = [render_section(nb, results, figures) for nb in NOTEBOOKS]
    parts.append(section_claims(results))
    if run_times is not None:
        parts.append(section_run_times(run_times))
    return "\n\n".join(parts)


_BLOCK = re.compile(re.escape(BEGIN) + r"\n?(.*?)\n?" + re.escape(END), re.S)


def _split(text: str, path: Path) -> re.Match:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{path} must contain exactly one {BEGIN} followed by one {END}")
    return _BLOCK.search(text)


def readme_section(path: Path) -> str:
    """The text currently between the markers of ``path`` (without the markers)."""
    return _split(Path(path).read_text(), Path(path)).group(1)


def render_repo(root: Optional[Path] = None) -> str:
    """:func:`render` of a checkout's own ``data/results/*.json`` and ``figures/*.png``.

    Args:
        root: repository root (default :func:`paths.root`); ``$VITPRUNE_OUT`` does not redirect it,
            because the README describes the committed results, never a scratch run.
    """
    root = Path(root) if root is not None else paths.root()
    figures = sorted(p.name for p in (root / "figures").glob("*.png"))
    return render(load_results(root / "data" / "results"), figures,
                  reproduce.run_times(root / "data" / reproduce.RUN_TIMES_FILE))


def update_readme(path: Optional[Path] = None, results: Optional[Results] = None, *, write: bool = True) -> bool:
    """Replace the README's generated section with :func:`render` of the results.

    Args:
        path: README to update (default ``README.md`` at the repository root).
        results: results to render without figures (default: :func:`render_repo` of the
            README's folder).
        write: False only checks.

    Returns:
        True when the section was stale (and, with ``write``, has been rewritten).

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    path = Path(path) if path is not None else paths.root() / "README.md"
    text = path.read_text()
    m = _split(text, path)
    body = render_repo(path.parent) if results is None else render(results)
    if m.group(1) == body:
        return False
    if write:
        new = text[:m.start()] + f"{BEGIN}\n{body}\n{END}" + text[m.end():]
        paths.write_bytes_atomic(path, new.encode())
    return True
