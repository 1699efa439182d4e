"""Which implementation of a method to run: the authors' published code, or this project's.

Every method here exists in two variants, chosen by one option, ``variant``, wherever a method
is configured (:mod:`vitprune_lite.importance`, :mod:`vitprune_lite.tcs`,
:mod:`vitprune_lite.tokens`, :mod:`vitprune_lite.pipelines`):

- ``"project"`` (the default): the project's implementation - the method as the paper describes
  it, with the improvements documented in ``docs/deviations.md`` (e.g. clipped layer ratios
  handed to the other layers, per-image channel selection, subsampled HSIC tokens);
- ``"reference"``: what the authors' public code computes - its formulas, defaults, probe
  schedules, rounding and sites - except for the few faults the project refuses to copy
  (each named in ``docs/deviations.md``).
"""
from __future__ import annotations

__all__ = ["VARIANTS", "check"]

VARIANTS = ("project", "reference")


def check(variant: object) -> str:
    """``variant`` if it is one of :data:`VARIANTS`, else a ValueError naming the accepted values."""
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} ('project': this project's "
                         f"implementation, 'reference': the authors' code), got {variant!r}")
    return variant
