"""Seed averages, Pareto fronts and winners for the final comparison."""
from __future__ import annotations

import numpy as np
import pytest

from vitprune_lite import compare


def test_aggregate_means_and_spread_per_group():
    rows = [{"m": "a", "d": "x", "acc": 0.5, "ms": 1.0}, {"m": "a", "d": "x", "acc": 0.7, "ms": 3.0},
            {"m": "b", "d": "x", "acc": 0.9, "ms": None}]
    a, b = compare.aggregate(rows, ("m", "d"), ("acc", "ms"))
    assert (a["m"], a["n"]) == ("a", 2) and a["acc"] == pytest.approx(0.6)
    assert a["acc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1)) and (a["acc_min"], a["acc_max"]) == (0.5, 0.7)
    assert b["acc_std"] == 0.0 and b["ms"] is None  # one row: no spread; missing values skipped
    with pytest.raises(KeyError, match="lacks"):
        compare.aggregate([{"m": "a"}], ("m",), ("acc",))


def test_pareto_front_keeps_only_undominated_points():
    cost = [1.0, 2.0, 2.0, 3.0, 0.5, 4.0]
    acc = [0.8, 0.9, 0.85, 0.88, 0.5, 0.95]
    front = compare.pareto_front(cost, acc)
    assert front.tolist() == [4, 0, 1, 5]  # by cost; (2.0, 0.85) and (3.0, 0.88) are dominated
    with pytest.raises(ValueError, match="equally long"):
        compare.pareto_front([1.0], [0.5, 0.6])


def test_best_per_group_excludes_what_cannot_be_deployed():
    rows = [{"method": "tap_vits", "d": "x", "acc": 0.8}, {"method": "oracle", "d": "x", "acc": 0.9},
            {"method": "toast", "d": "x", "acc": 0.85}, {"method": "tap_vits", "d": "y", "acc": 0.7}]
    best = compare.best_per(rows, ("d",), "acc", exclude=("oracle",))
    assert best[("x",)]["method"] == "toast" and best[("y",)]["method"] == "tap_vits"
