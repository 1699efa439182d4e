"""The README's results section, generated from ``data/results/*.json``.

Nothing in the README's results section is typed by hand: :func:`render` turns whichever
results files exist into markdown tables, and :func:`update_readme` writes them between the
``<!-- results:begin -->`` and ``<!-- results:end -->`` markers. ``python -m vitprune_lite
report`` rewrites the section; ``--check`` only says whether it is stale (the test suite does
the same, so a README that disagrees with the committed JSON fails ``make test``).

Notebooks 02-04 are still evolving, so their sections read the JSON defensively: a missing
file is skipped, and a file whose layout is not recognised yields a one-line note naming the
missing key instead of an exception.

The "claimed vs measured" table reads the papers' headline claims from :data:`CLAIMS` (quoted
from the abstracts in the seeds and from METHODS.md) and matches each to a measurement
extractor; a claim whose measurement is not in the results yet says "not measured yet".
"""
from __future__ import annotations

import re
from pathlib import Path
from statistics import mean
from typing import Any, Callable, Mapping, Optional, Sequence

from . import paths

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"

# Verdict wording is shared so the table reads consistently.
HELD, NOT_HELD, PARTLY, NOT_YET = "held", "did not hold", "partly", "not measured yet"

Results = Mapping[str, Mapping[str, Any]]


# --------------------------------------------------------------------------- loading
def load_results(results_dir: Optional[Path] = None) -> dict[str, dict]:
    """Read every ``NN_*.json`` results file.

    Args:
        results_dir: folder to read (default :func:`paths.results_dir`).

    Returns:
        ``{"00": {...}, "01": {...}, ...}`` keyed by the two-digit notebook number; notebooks
        without a results file are absent.
    """
    folder = Path(results_dir) if results_dir is not None else paths.results_dir()
    out: dict[str, dict] = {}
    for f in sorted(folder.glob("[0-9][0-9]_*.json")):
        out[f.name[:2]] = paths.read_json(f)
    return out


# --------------------------------------------------------------------------- formatting
def pct(x: Optional[float], digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage string; ``None`` as an en dash."""
    return "–" if x is None else f"{100 * float(x):.{digits}f} %"


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


def _provenance(res: Mapping[str, Any], name: str) -> str:
    env = res.get("environment", {}) or {}
    bits = [f"`data/results/{name}`"]
    if env.get("git_rev"):
        bits.append(f"git {env['git_rev']}" + (" (dirty tree)" if env.get("git_dirty") else ""))
    if env.get("threads") is not None:
        bits.append(f"{env['threads']} thread{'' if env['threads'] == 1 else 's'}")
    if env.get("load_avg_1min") is not None:
        bits.append(f"load average {float(env['load_avg_1min']):.1f}")
    note = "Source: " + ", ".join(bits) + "."
    if res.get("smoke"):
        note += " **Smoke run: small sizes, not the full results.**"
    return note


# --------------------------------------------------------------------------- sections
def section_base(r: Mapping[str, Any]) -> str:
    """Notebook 00: the benchmark, the dense base model's size and accuracies (95 % intervals), and
    the cross-device gap when it was measured."""
    from .experiments import base_model

    res = base_model.Result.from_dict(dict(r), "data/results/00_base_model.json")
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


def section_gmm(r: Mapping[str, Any]) -> str:
    """Notebook 01: chosen K, metric-set precision vs random and membership AUC, per device and space."""
    default = r.get("parameters", {}).get("default_feature_space")
    rows = []
    for d, dev in r["devices"].items():
        for space, s in dev["spaces"].items():
            p, q = s["precision"]["metric"], s["random_precision"]["metric"]
            rows.append([d, space + (" (default)" if space == default else ""), s["k"],
                         f"{s['upload_bytes']:,} / {s['raw_bytes']:,}",
                         f"{pct(p['class'])} vs {pct(q['class'])}", f"{pct(p['style'])} vs {pct(q['style'])}",
                         f"{s['membership_auc']:.3f}"])
    n_metric = r.get("parameters", {}).get("n_metric")
    bench = f" (benchmark {r['benchmark']})" if r.get("benchmark") else ""
    lines = ["### 01 GMM data approximation", "",
             f"Metric set{f' ({n_metric} public images)' if n_metric else ''}{bench} selected by the device's "
             "uploaded GMM, against as many random public images. Precision = share of the selected "
             "images whose class (style) belongs to the device's task. Membership AUC: 0.5 means the "
             "upload does not tell the device's own images from unseen ones.", "",
             md_table(["device", "feature space", "K (BIC)", "upload / raw bytes", "class precision vs random",
                       "style precision vs random", "membership AUC"], rows)]
    return "\n".join(lines)


def _labels(r: Mapping[str, Any]) -> list[str]:
    return [b["label"] for b in r["budgets"]]


def section_importance(r: Mapping[str, Any]) -> str:
    """Notebook 02: zero-shot accuracy per criterion at the smallest budget, mean over devices."""
    lab = _labels(r)[-1]
    devices = list(r["results"])
    crits = list(r["results"][devices[0]][lab])
    dense = r["dense"]
    rows = [["dense", f"{dense['params']:,}", "1.00", pct(mean(dense["acc"][d] for d in devices))]]
    for c in crits:
        cells = [r["results"][d][lab][c] for d in devices]
        rows.append([c, f"{round(mean(x['params'] for x in cells)):,}",
                     f"{mean(x['flops'] for x in cells) / dense['flops']:.2f}",
                     pct(mean(x["acc"] for x in cells))])
    bench = f" of benchmark {r['benchmark']}" if r.get("benchmark") else ""
    lines = ["### 02 Head and channel importance", "",
             f"Structured pruning to {lab} % of the block parameters, no recovery fine-tune; accuracy "
             f"on the devices' private test splits, mean over {len(devices)} device{'' if len(devices) == 1 else 's'}"
             f"{bench}.", "",
             md_table(["criterion", "params", "FLOPs / dense", "accuracy"], rows)]
    gap = r.get("summary_50", {})
    if "gmm_minus_random_mean" in gap:
        lines += ["", f"TAP scored on GMM-selected vs random public images: "
                      f"{100 * gap['gmm_minus_random_mean']:+.1f} points; oracle (device data) vs GMM: "
                      f"{100 * gap['oracle_minus_gmm_mean']:+.1f} points."]
    return "\n".join(lines)


def section_latency(r: Mapping[str, Any]) -> str:
    """Notebook 03: POMT's chosen schedule against dense and token-method peers (batch 1)."""
    rows = [[x["row"], x["config"], pct(x["test_acc"]), pct(x["device_acc_mean"]), f"{x['flops_ratio']:.2f}",
             f"{x['ratio_vs_dense']:.3f}"] for x in r["final_rows"]]
    lines = ["### 03 Latency curve and token methods", ""]
    bench = r.get("benchmark", "v1")  # files written before the benchmark was recorded are v1 runs
    if bench != "v1":
        lines += [f"On the {bench} benchmark's base model ({r.get('n_tokens', '?')} tokens).", ""]
    lines.append(md_table(["row", "config", "public test", "devices (mean)", "FLOPs / dense",
                           "batch-1 latency / dense"], rows))
    ratio = r.get("pomt_vs_tome_latency_at_matched_accuracy")
    if ratio is not None:
        lines += ["", f"POMT / ToMe batch-1 latency at matched accuracy: {ratio:.3f}."]
    return "\n".join(lines)


def section_final(r: Mapping[str, Any]) -> str:
    """Notebook 04: every method after identical recovery, per device; the combined plan."""
    seeds = r.get("seeds") or []
    main = r.get("main_budget")
    rows = []
    for s in r["summary"]:
        if s["budget"].endswith("params"):
            rows.append([s["device"], s["budget"], s["best"], pct(s["tap_vits"]), pct(s["one_size_fits_all"]),
                         pct(s["toast"]), pct(s["torch_pruning"]), pct(s["oracle"]), pct(s["dense"])])
    lines = ["### 04 Final comparisons", "",
             f"Private test accuracy per device after pruning to {main} of the block parameters and an "
             f"identical recovery fine-tune, mean over {len(seeds)} seed{'' if len(seeds) == 1 else 's'}; "
             "best = best mean among the deployable methods (the oracle reads the device's private data).", "",
             md_table(["device", "budget", "best", "TAP-ViTs", "one-size-fits-all", "ToaSt + TCS",
                       "torch-pruning", "oracle", "dense"], rows)]
    diffs = (r.get("differences") or {}).get(main)
    if diffs:
        names = {"one_size_fits_all": "one-size-fits-all", "toast": "ToaSt + TCS", "torch_pruning": "torch-pruning",
                 "oracle": "oracle"}
        lines += ["", "TAP-ViTs minus each method, mean over devices with its 95 % paired bootstrap interval "
                      "(seeds and test images resampled): "
                  + "; ".join(f"{names.get(m, m)} {100 * g['mean']:+.1f} [{100 * g['lo']:+.1f}, "
                              f"{100 * g['hi']:+.1f}] points" for m, g in diffs.items()) + "."]
    lat = [s for s in r["summary"] if s["budget"].endswith("latency")]
    if lat:
        dense_ms = r.get("dense", {}).get("ms_b1")

        def cell(s: Mapping[str, Any], kind: str) -> str:
            return f"{pct(s[kind])}, {s[kind + ' ms']:.2f} ms, met {100 * s[kind + ' met']:.0f} %"

        check = r["predictor"]["validation"]["ratio"]
        lines += ["", "Combined plan (structure + tokens chosen together with this machine's latency predictor, "
                      f"a margin of {100 * r['predictor']['margin']:.1f} %: its held-out plans were predicted within "
                      f"10 % of their measured latency relative to dense for {100 * check['within_10']:.0f} % of "
                      f"{check['n']}) against each ingredient alone, under batch-1 latency budgets"
                      + (f" (dense: {dense_ms:.2f} ms here)" if dense_ms else "") + ". Each cell: test accuracy, "
                      "measured latency, share of seeds whose measured latency met the budget; best = the most "
                      "accurate among those that met it in at least half of the seeds.", "",
                  md_table(["device", "budget", "best", "combined", "structure only", "tokens only", "combined plan"],
                           [[s["device"], f"{s['budget']} ({s['budget_ms']:.2f} ms)", s["best"], cell(s, "combined"),
                             cell(s, "structure only"), cell(s, "tokens only"), s["combined_plan"]] for s in lat])]
    return "\n".join(lines)


SECTIONS: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "00": ("00_base_model.json", section_base),
    "01": ("01_gmm_data_approximation.json", section_gmm),
    "02": ("02_head_channel_importance.json", section_importance),
    "03": ("03_latency_curve_profiling.json", section_latency),
    "04": ("04_final_comparisons.json", section_final),
}


# --------------------------------------------------------------------------- claims
def _get(results: Results, nb: str, *keys: Any) -> Any:
    """``results[nb][k0][k1]...`` or ``None`` when any step is missing."""
    cur: Any = results.get(nb)
    for k in keys:
        if cur is None:
            return None
        try:
            cur = cur[k]
        except (KeyError, IndexError, TypeError):
            return None
    return cur


def _m_private_upload(results: Results) -> Optional[tuple[str, str]]:
    devs = _get(results, "01", "devices")
    space = _get(results, "01", "parameters", "default_feature_space") or "combined"
    if not devs:
        return None
    aucs = [d["spaces"][space]["membership_auc"] for d in devs.values()]
    up = max(d["spaces"][space]["upload_bytes"] for d in devs.values())
    raw = min(d["spaces"][space]["raw_bytes"] for d in devs.values())
    bench = _get(results, "01", "benchmark")
    text = (f"upload ≤ {up:,} B vs {raw:,} B of raw images; membership AUC {min(aucs):.3f}-{max(aucs):.3f} "
            f"({space} features{f', benchmark {bench}' if bench else ''}; 0.5 = no leak, held if ≤ 0.60)")
    return text, HELD if max(aucs) <= 0.6 else NOT_HELD


def _m_selection(results: Results) -> Optional[tuple[str, str]]:
    devs = _get(results, "01", "devices")
    space = _get(results, "01", "parameters", "default_feature_space") or "combined"
    if not devs:
        return None
    sel = mean(d["spaces"][space]["precision"]["metric"]["class"] for d in devs.values())
    rnd = mean(d["spaces"][space]["random_precision"]["metric"]["class"] for d in devs.values())
    bench = _get(results, "01", "benchmark")
    text = (f"metric-set class precision {pct(sel)} vs {pct(rnd)} random "
            f"(mean over devices{f' of benchmark {bench}' if bench else ''})")
    gap = _get(results, "02", "summary_50", "gmm_minus_random_mean")
    if gap is None:
        return text + "; effect on pruned accuracy not measured yet", PARTLY if sel > rnd else NOT_HELD
    text += f"; pruned accuracy GMM vs random metric set {100 * gap:+.1f} points"
    return text, (HELD if sel > rnd and gap > 0 else PARTLY if sel > rnd else NOT_HELD)


def _tally(wins: int, n: int) -> str:
    """Verdict for "better in ``wins`` of ``n`` comparisons": all held, none did not, else partly."""
    return HELD if wins == n else NOT_HELD if wins == 0 else PARTLY


def _budget_accs(r: Mapping[str, Any], crit: str) -> Optional[dict[str, float]]:
    """Mean accuracy over devices per budget label for one criterion, or None if absent."""
    out = {}
    for lab in _labels(r):
        vals = [r["results"][d][lab][crit]["acc"] for d in r["results"] if crit in r["results"][d][lab]]
        if not vals:
            return None
        out[lab] = mean(vals)
    return out


def _m_tap_vs_peers(results: Results) -> Optional[tuple[str, str]]:
    r = results.get("02")
    if not r or "results" not in r:
        return None
    tap = _budget_accs(r, "tap_gmm")
    if tap is None:
        return None
    d0 = next(iter(r["results"]))
    peers = [c for c in r["results"][d0][_labels(r)[0]] if not c.startswith("tap_")]
    if not peers:
        return None
    best = {lab: max((_budget_accs(r, c) or {}).get(lab, 0.0) for c in peers) for lab in tap}
    wins = sum(tap[lab] >= best[lab] for lab in tap)
    text = f"TAP (GMM) ≥ best other criterion at {wins} of {len(tap)} budgets (zero-shot, mean over devices)"
    return text, _tally(wins, len(tap))


def _m_toast_vs_baselines(results: Results) -> Optional[tuple[str, str]]:
    r = results.get("02")
    if not r or "results" not in r:
        return None
    toast = _budget_accs(r, "toast")
    if toast is None:
        return None
    d0 = next(iter(r["results"]))
    base = [c for c in ("magnitude_l1", "magnitude_l2", "random", "tp_magnitude")
            if c in r["results"][d0][_labels(r)[0]]]
    if not base:
        return None
    best = {lab: max(_budget_accs(r, c)[lab] for c in base) for lab in toast}
    wins = sum(toast[lab] >= best[lab] for lab in toast)
    text = (f"ToaSt (coupled QK/VO) ≥ best weight-only baseline ({', '.join(base)}) at {wins} of "
            f"{len(toast)} budgets (zero-shot)")
    return text, _tally(wins, len(toast))


def _m_toast_above_dense(results: Results) -> Optional[tuple[str, str]]:
    r = results.get("02")
    if not r or "results" not in r or "dense" not in r:
        return None
    crit = "toast_tcs" if _budget_accs(r, "toast_tcs") is not None else "toast"
    accs = _budget_accs(r, crit)
    if accs is None:
        return None
    devices = list(r["results"])
    dense = mean(r["dense"]["acc"][d] for d in devices)
    red = {lab: 1 - mean(r["results"][d][lab][crit]["flops"] for d in devices) / r["dense"]["flops"]
           for lab in accs}
    lab = min(red, key=lambda k: abs(red[k] - 0.394))
    delta = accs[lab] - dense
    text = (f"{crit} at {100 * red[lab]:.1f} % FLOPs reduction: {100 * delta:+.1f} points vs dense "
            "(per-sample evaluation, zero-shot)")
    return text, HELD if delta > 0 else NOT_HELD  # the claim is a gain over dense, not a tie


def _m_toast_flops_split(results: Results) -> Optional[tuple[str, str]]:
    r = results.get("02")
    if not r or "tcs_flops" not in r or "results" not in r:
        return None
    dense = r["dense"]["flops"]
    tcs_cut = 1 - r["tcs_flops"]["tcs"] / r["tcs_flops"]["dense"]
    lab = _labels(r)[-1]
    devices = list(r["results"])
    attn_cut = 1 - mean(r["results"][d][lab]["toast"]["flops"] for d in devices) / dense
    text = (f"coupled QK/VO pruning at {lab} % of block parameters removes {100 * attn_cut:.1f} % of FLOPs; "
            f"TCS alone on the dense model {100 * tcs_cut:.1f} %")
    return text, HELD if attn_cut > tcs_cut else NOT_HELD


def _pomt_row(results: Results) -> Optional[Mapping[str, Any]]:
    rows = _get(results, "03", "final_rows") or []
    return next((x for x in rows if str(x.get("row", "")).startswith("POMT")), None)


def _m_pomt_latency(results: Results) -> Optional[tuple[str, str]]:
    row = _pomt_row(results)
    if row is None:
        return None
    cut = 1 - row["ratio_vs_dense"]
    text = (f"batch-1 latency {100 * cut:.1f} % lower than dense" if cut >= 0
            else f"batch-1 latency {-100 * cut:.1f} % higher than dense (slower)")
    return text, HELD if cut >= 0.09 else PARTLY if cut > 0 else NOT_HELD


def _m_others_slower(results: Results) -> Optional[tuple[str, str]]:
    slower = _get(results, "03", "slower_than_dense_batch1")
    if slower is None:
        return None
    names = [s.get("config", str(s)) if isinstance(s, Mapping) else str(s) for s in slower]
    names = [n for n in names if not n.lower().startswith("pomt")]  # the claim is about the *other* methods
    text = f"{len(names)} token-method settings slower than dense at batch 1" + (
        f": {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}" if names else "")
    return text, HELD if names else NOT_HELD


def _m_pomt_vs_tome(results: Results) -> Optional[tuple[str, str]]:
    if "03" not in results or "pomt_vs_tome_latency_at_matched_accuracy" not in results["03"]:
        return None
    ratio = results["03"]["pomt_vs_tome_latency_at_matched_accuracy"]
    if ratio is None:
        return "no ToMe setting reached POMT's accuracy", PARTLY
    return f"POMT / ToMe batch-1 latency at matched accuracy {ratio:.3f}", HELD if ratio < 1 else NOT_HELD


def _final_accs(results: Results) -> Optional[tuple[Mapping[str, Any], list[str], dict[str, dict[str, float]]]]:
    """Notebook 04 at its main budget: ``(results, devices, {method: {device: mean acc}})``."""
    r = results.get("04")
    if not r or "aggregate" not in r:
        return None
    main = r["main_budget"]
    devices = list(r["parameters"]["devices"])
    accs: dict[str, dict[str, float]] = {}
    for p in r["aggregate"]:
        if p["setting"] == main:
            accs.setdefault(p["method"], {})[p["device"]] = p["acc"]
    return r, devices, accs


def _m_tap_vs_one_size(results: Results) -> Optional[tuple[str, str]]:
    got = _final_accs(results)
    if got is None:
        return None
    r, devices, accs = got
    diff = [accs["tap_vits"][d] - accs["one_size_fits_all"][d] for d in devices]
    wins = sum(x > 0 for x in diff)
    g = _get(results, "04", "differences", r["main_budget"], "one_size_fits_all")
    if g is None:  # results written before the intervals: the per-device tally
        text = (f"device-specific TAP-ViTs vs one shared model, after identical recovery at {r['main_budget']} "
                f"parameters: {100 * mean(diff):+.1f} points (mean over devices, {len(r['seeds'])} seeds); "
                f"better on {wins} of {len(devices)} devices")
        return text, _tally(wins, len(devices))
    text = (f"device-specific TAP-ViTs vs one shared model, after identical recovery at {r['main_budget']} "
            f"parameters: {100 * g['mean']:+.1f} points [95 % interval {100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}] "
            f"(mean over devices, {len(r['seeds'])} seeds); better on {wins} of {len(devices)} devices")
    # the verdict follows the interval: held only where it excludes no gain
    return text, HELD if g["lo"] > 0 else NOT_HELD if g["mean"] <= 0 else PARTLY


def _m_tap_vs_all(results: Results) -> Optional[tuple[str, str]]:
    got = _final_accs(results)
    if got is None:
        return None
    r, devices, accs = got
    others = [m for m in ("one_size_fits_all", "toast", "torch_pruning") if m in accs]
    best = {d: max(accs[m][d] for m in others) for d in devices}
    wins = sum(accs["tap_vits"][d] >= best[d] for d in devices)
    text = (f"TAP-ViTs ≥ best of {', '.join(others)} on {wins} of {len(devices)} devices after identical "
            f"recovery at {r['main_budget']} parameters (mean TAP {pct(mean(accs['tap_vits'].values()))} "
            f"vs best other {pct(mean(best.values()))})")
    diffs = _get(results, "04", "differences", r["main_budget"])
    if not diffs or any(m not in diffs for m in others):  # results written before the intervals
        return text, _tally(wins, len(devices))
    text += "; TAP-ViTs minus " + ", ".join(f"{m} {100 * diffs[m]['mean']:+.1f} [{100 * diffs[m]['lo']:+.1f}, "
                                             f"{100 * diffs[m]['hi']:+.1f}]" for m in others) + " points (95 %)"
    # the verdict follows the intervals: held if every one lies above zero; not held if one lies below
    # zero or no mean is a gain; otherwise partly
    if all(diffs[m]["lo"] > 0 for m in others):
        return text, HELD
    if any(diffs[m]["hi"] < 0 for m in others) or all(diffs[m]["mean"] <= 0 for m in others):
        return text, NOT_HELD
    return text, PARTLY


def _m_toast_recovered(results: Results) -> Optional[tuple[str, str]]:
    got = _final_accs(results)
    if got is None:
        return None
    r, devices, accs = got
    others = [m for m in ("one_size_fits_all", "torch_pruning") if m in accs]
    best = mean(max(accs[m][d] for m in others) for d in devices)
    toast = mean(accs["toast"].values())
    flops = {p["method"]: p["flops"] for p in r["aggregate"] if p["setting"] == r["main_budget"]}
    peer_flops = min(flops[m] for m in others)
    text = (f"after identical recovery at {r['main_budget']} parameters: ToaSt + TCS {pct(toast)} at "
            f"{flops['toast'] / r['dense']['flops']:.2f} of dense FLOPs vs best data-free peer {pct(best)} "
            f"at {peer_flops / r['dense']['flops']:.2f}")
    diffs = _get(results, "04", "toast_differences", r["main_budget"])
    if not diffs or any(m not in diffs for m in others):  # results written before the intervals
        return text, HELD if toast >= best and flops["toast"] <= peer_flops else (
            NOT_HELD if toast < best and flops["toast"] >= peer_flops else PARTLY)
    text += "; ToaSt minus " + ", ".join(f"{m} {100 * diffs[m]['mean']:+.1f} [{100 * diffs[m]['lo']:+.1f}, "
                                         f"{100 * diffs[m]['hi']:+.1f}]" for m in others) + " points (95 %)"
    # the accuracy side follows the intervals: worse only where one lies below zero
    worse = any(diffs[m]["hi"] < 0 for m in others)
    return text, HELD if not worse and flops["toast"] <= peer_flops else (
        NOT_HELD if worse and flops["toast"] >= peer_flops else PARTLY)


def _m_combined(results: Results) -> Optional[tuple[str, str]]:
    r = results.get("04")
    if not r or "combined_overall" not in r:
        return None
    a = r["combined_overall"]
    parts = [f"{k}: {pct(v['acc'])}, budget met {100 * v['measured_met']:.0f} % (measured / predicted "
             f"latency {v['measured_over_predicted']:.2f})" for k, v in a.items()]
    text = "; ".join(parts) + " (mean over devices, budgets, seeds)"
    c, others = a["combined"], [v for k, v in a.items() if k != "combined"]
    better_acc = all(c["acc"] >= o["acc"] for o in others)
    better_met = all(c["measured_met"] >= o["measured_met"] for o in others)
    return text, _tally(better_acc + better_met, 2)


# Each claim is quoted from its paper's abstract (seeds/) or from METHODS.md; "measure" names
# the extractor (in MEASURES) that finds the matching figure in data/results, None where no
# measurement at this scale can answer it (the reason goes in "note"); "uses" lists the
# notebooks it reads, so a smoke run among them withholds the verdict.
CLAIMS: list[dict[str, Any]] = [
    {"paper": "TAP-ViTs", "source": "abstract", "uses": ("01",),
     "claim": "generates device-specific pruned ViT models without requiring access to any raw local data",
     "measure": "private_upload"},
    {"paper": "TAP-ViTs", "source": "contribution",
     "claim": "uses GMM-based privacy-preserving data approximation",
     "measure": "selection", "uses": ("01", "02")},
    {"paper": "TAP-ViTs", "source": "findings",
     "claim": "Outperforms existing pruning methods at similar compression levels",
     "measure": "tap_vs_peers", "uses": ("02",)},
    {"paper": "ToaSt", "source": "abstract",
     "claim": "achieves superior trade-offs between accuracy and efficiency, consistently outperforming existing baselines",
     "measure": "toast_vs_baselines", "uses": ("02",)},
    {"paper": "ToaSt", "source": "METHODS.md",
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
     "measure": None, "note": "ImageNet-1K and Jetson devices: no counterpart on the 12-class benchmark"},
    {"paper": "TAP-ViTs", "source": "abstract", "uses": ("04",),
     "claim": "existing approaches either (i) produce a single pruned model shared across all devices, ignoring device heterogeneity",
     "measure": "tap_vs_one_size"},
    {"paper": "TAP-ViTs", "source": "findings", "uses": ("04",),
     "claim": "Achieves better task accuracy and efficiency across multiple datasets and models",
     "measure": "tap_vs_all"},
    {"paper": "ToaSt", "source": "abstract", "uses": ("04",),
     "claim": "achieves superior trade-offs between accuracy and efficiency (after recovery, against data-free peers)",
     "measure": "toast_recovered"},
    {"paper": "this companion", "source": "notebook 04", "uses": ("03", "04"),
     "claim": "choosing structure and token schedule together beats either alone under a latency budget",
     "measure": "combined"},
]

MEASURES: dict[str, Callable[[Results], Optional[tuple[str, str]]]] = {
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

    A measurement whose results file is missing, or whose layout is not recognised, reads
    "not measured yet"; a smoke-run measurement is labelled so and gets no verdict.

    Raises:
        ValueError: a claim names an unknown measurement.
    """
    rows = []
    for c in claims:
        key = c.get("measure")
        if key is not None and key not in MEASURES:
            raise ValueError(f"claim {c['claim']!r} names measurement {key!r}; known: {sorted(MEASURES)}")
        got = None
        if key is not None:
            try:
                got = MEASURES[key](results)
            except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError):
                got = None  # a notebook changed its layout: say so rather than crash the README
        quote = f"“{c['claim']}” ({c['source']})"
        if key is None:
            rows.append([c["paper"], quote, c.get("note", "–"), "not comparable"])
        elif got is None:
            rows.append([c["paper"], quote, "–", NOT_YET])
        else:
            text, verdict = got
            if any((results.get(nb) or {}).get("smoke") for nb in c.get("uses", results)):
                text, verdict = text + " (smoke run)", "no verdict (smoke)"
            rows.append([c["paper"], quote, text, verdict])
    return rows


def section_claims(results: Results) -> str:
    """The "what the papers claimed vs what we measured" table."""
    return "\n".join(["### Claimed vs measured", "",
                      "Headline claims quoted from the papers' abstracts; the figure measured here at "
                      "this scale (a 1.2 M-parameter ViT on a 12-class, 32 px benchmark, CPU), and "
                      "whether the claim held.", "",
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


def render(results: Results, figures: Sequence[str] = ()) -> str:
    """The whole generated section (markdown, no markers) for the given results.

    Args:
        results: ``{"00": {...}, ...}`` as returned by :func:`load_results`.
        figures: file names in ``figures/`` (e.g. ``"01_bic.png"``) to show or link under
            their notebook's section (:data:`MAIN_FIGURES` inline, the rest as links).
    """
    parts = []
    for nb, (name, fn) in SECTIONS.items():
        if nb not in results:
            continue
        try:
            body = fn(results[nb])
        except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError) as err:
            body = f"### {name}\n\n(layout not recognised by `vitprune_lite.report`: {type(err).__name__} {err})"
        figs = _figures_line(nb, figures)
        parts.append(body + "\n\n" + _provenance(results[nb], name) + (f"\n\n{figs}" if figs else ""))
    for nb in sorted(set(results) - set(SECTIONS)):  # e.g. 04 before it has a renderer
        parts.append(f"### {nb}\n\nA results file exists; `vitprune_lite.report` has no section for it yet.")
    if not parts:
        parts.append("No results yet: run `make reproduce`.")
    parts.append(section_claims(results))
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
    return render(load_results(root / "data" / "results"), figures)


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
