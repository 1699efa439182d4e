"""The registry of methods: one name per method in code, result files, figures and tables.

Every method the project runs or reports is one :class:`Method` here: its ``name`` (the key used
in results JSON, ``PrunedModel.method``, ``criteria`` tuples and command-line options), the
``label`` figures and tables show, the paper (or ``"baseline"``) it comes from, its ``kind``
and one plot :class:`Style` (colour + marker), so a method looks the same in every figure.

Kinds (:data:`KINDS`):

- ``"structured"``: removes heads, head dimensions or MLP channels to a parameter budget;
- ``"token"``: reduces the tokens of the dense model at run time (no parameter budget);
- ``"combined"``: a structure and a token setting chosen together for a latency budget;
- ``"reference"``: a point of comparison no deployment can be: the dense model, and the
  oracle (TAP-ViTs given the device's private data).

Colours are matplotlib's ``tab10`` palette (distinguishable for the common colour-vision
deficiencies when paired with the markers); one paper's variants share a colour and differ by
marker. Importing this module is cheap (no torch, no matplotlib).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .errors import InvalidValueError

__all__ = ["Style", "Method", "KINDS", "FAMILIES", "REGISTRY", "get", "label", "style", "names", "check"]

#: The kinds of method (see the module docstring).
KINDS = ("structured", "token", "combined", "reference")
#: The papers (or ``"baseline"``) a method comes from.
FAMILIES = ("TAP-ViTs", "ToaSt", "POMT", "baseline")

# matplotlib's tab10, by name, so this module needs no matplotlib.
_BLUE, _ORANGE, _GREEN, _RED, _PURPLE = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"
_BROWN, _PINK, _GRAY, _OLIVE, _CYAN = "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"
_BLACK = "#000000"


@dataclass(frozen=True)
class Style:
    """How a method is drawn.

    Attributes:
        color: hex colour (a ``tab10`` entry, black for the dense model).
        marker: matplotlib marker.
        linestyle: matplotlib line style.
        linewidth: line width in points.
    """

    color: str
    marker: str
    linestyle: str = "-"
    linewidth: float = 1.5

    def line(self) -> dict[str, Any]:
        """Keyword arguments for ``ax.plot`` / ``ax.errorbar``."""
        return {"color": self.color, "marker": self.marker, "ls": self.linestyle, "lw": self.linewidth}

    def point(self) -> dict[str, Any]:
        """Keyword arguments for ``ax.scatter``."""
        return {"color": self.color, "marker": self.marker}


@dataclass(frozen=True)
class Method:
    """One method.

    Attributes:
        name: the one identifier (results keys, ``criteria``, ``--method``).
        label: display text for figures and tables.
        family: the paper it comes from (:data:`FAMILIES`).
        kind: one of :data:`KINDS`.
        summary: one line: what the method does.
        style: its plot :class:`Style`.
    """

    name: str
    label: str
    family: str
    kind: str
    summary: str
    style: Style


def _m(name: str, label: str, family: str, kind: str, summary: str, color: str, marker: str,
       linestyle: str = "-", linewidth: float = 1.5) -> Method:
    return Method(name, label, family, kind, summary, Style(color, marker, linestyle, linewidth))


#: name -> method, in the order legends and tables list them.
REGISTRY: dict[str, Method] = {m.name: m for m in (
    _m("dense", "dense", "baseline", "reference", "the unpruned base model", _BLACK, "*"),
    _m("tap_vits", "TAP-ViTs", "TAP-ViTs", "structured",
       "TAP-ViTs: HSIC composite importance + KL layer ratios on public images picked by the device's GMM upload",
       _RED, "o", linewidth=2.5),
    _m("tap_vits_uniform", "TAP-ViTs (uniform ratios)", "TAP-ViTs", "structured",
       "TAP-ViTs' composite importance on the upload-picked images, the same keep ratio in every layer",
       _RED, "v", ":"),
    _m("one_size_fits_all", "one-size-fits-all", "TAP-ViTs", "structured",
       "TAP-ViTs' scoring and layer ratios on a random public subset (no upload): the baseline TAP-ViTs argues against",
       _ORANGE, "o"),
    _m("oracle", "oracle (private data)", "TAP-ViTs", "reference",
       "TAP-ViTs' scoring and layer ratios on the device's private training images: an upper bound", _GRAY, "X", "--"),
    _m("taylor", "Taylor", "baseline", "structured",
       "first-order Taylor estimate of the loss change per unit, uniform layer ratios", _BROWN, "o"),
    _m("magnitude_l1", "magnitude (L1)", "baseline", "structured",
       "L1 norm of the weights a unit owns, uniform layer ratios", _OLIVE, "o"),
    _m("magnitude_l2", "magnitude (L2)", "baseline", "structured",
       "L2 norm of the weights a unit owns, uniform layer ratios", _OLIVE, "s"),
    _m("random", "random", "baseline", "structured",
       "seeded random unit scores, uniform layer ratios: the floor", _GRAY, "d", ":"),
    _m("toast", "ToaSt", "ToaSt", "structured",
       "ToaSt: coupled QK/VO head dimensions by geometric-median distance, from weights, block 0 dense", _GREEN, "o"),
    _m("toast_tcs", "ToaSt + TCS", "ToaSt", "structured",
       "ToaSt's coupled QK/VO pruning plus Token Channel Selection in the feed-forward network", _GREEN, "s"),
    _m("toast_heads", "ToaSt (whole heads)", "ToaSt", "structured",
       "ToaSt's geometric-median criterion on whole heads, which are removed", _GREEN, "^", "--"),
    _m("torch_pruning", "torch-pruning (magnitude)", "baseline", "structured",
       "the torch-pruning library: whole heads and MLP channels by weight magnitude", _PURPLE, "o"),
    _m("torch_pruning_taylor", "torch-pruning (Taylor)", "baseline", "structured",
       "the torch-pruning library: whole heads and MLP channels by first-order Taylor importance", _PURPLE, "s"),
    _m("pomt", "POMT", "POMT", "token",
       "Pruning One More Token: at one block, keep the best tokens and fuse the rest into one", _BLUE, "o"),
    _m("tome", "ToMe", "baseline", "token",
       "Token Merging: merge the r most similar token pairs in every block", _CYAN, "o"),
    _m("topk", "Top-K", "baseline", "token",
       "keep the tokens the class token attends to most, drop the rest", _PINK, "o"),
    _m("evit", "EViT", "baseline", "token",
       "keep the tokens the class token attends to most, fuse the rest into one", _PINK, "s"),
    _m("combined", "combined plan", "TAP-ViTs", "combined",
       "a TAP-ViTs structure and a token setting chosen together for a latency budget", _BLUE, "D"),
)}


def check(name: Any, accepted: Optional[tuple[str, ...]] = None, what: str = "method") -> str:
    """``name`` if it is registered (and among ``accepted`` when given), else a clear error.

    Raises:
        InvalidValueError: ``name`` is not a registered method name (or not one of ``accepted``);
            the message names it and lists the accepted names.
    """
    ok = tuple(REGISTRY) if accepted is None else tuple(accepted)
    if not isinstance(name, str) or name not in REGISTRY or name not in ok:
        raise InvalidValueError(f"unknown {what} {name!r}; accepted: {', '.join(ok)}")
    return name


def get(name: str) -> Method:
    """The registered :class:`Method` called ``name`` (an :class:`InvalidValueError` otherwise)."""
    return REGISTRY[check(name)]


def label(name: str) -> str:
    """Display text of ``name`` for figures and tables."""
    return get(name).label


def style(name: str) -> Style:
    """Plot :class:`Style` of ``name``."""
    return get(name).style


def names(kind: Optional[str] = None) -> tuple[str, ...]:
    """Every registered name, or those of one ``kind`` (:data:`KINDS`), in registry order."""
    if kind is None:
        return tuple(REGISTRY)
    if kind not in KINDS:
        raise InvalidValueError(f"unknown method kind {kind!r}; accepted: {', '.join(KINDS)}")
    return tuple(n for n, m in REGISTRY.items() if m.kind == kind)
