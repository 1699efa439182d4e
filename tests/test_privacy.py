"""Privacy audits of an upload: membership inference and nearest-record distance."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from vitprune_lite import features, gmm, privacy

SPACE = features.FeatureSpace("test_space", "1-abc", 4)


def task(n_members: int, n_non: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Members and non-members drawn from one 4-D distribution (a single task)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_members, 4)), rng.normal(size=(n_non, 4))


def fit(x: np.ndarray, k: int, cov: str) -> gmm.Upload:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gmm.CapacityWarning)
        return gmm.fit_upload(x, SPACE, k_range=[k], covariance_type=cov, max_param_ratio=None).upload


def test_low_capacity_mixture_reveals_little():
    members, non = task(2000, 1000)
    auc = privacy.membership_auc(fit(members, 2, "diag"), members, non)
    assert 0.45 < auc < 0.55


def test_memorising_mixture_is_caught():
    members, non = task(60, 60)
    up = fit(members, 30, "full")  # 30 x 14 + 29 parameters for 60 images
    assert privacy.membership_auc(up, members, non) > 0.9
    audit = privacy.nearest_record_audit(up, members, non, n_samples=500)
    assert audit["closer_to_members"] > 0.8 and audit["ratio"] < 0.7 and audit["n_records"] == 60


def test_identical_sets_give_chance_auc():
    members, _ = task(100, 1)
    assert privacy.membership_auc(fit(members, 2, "diag"), members, members) == 0.5


def test_membership_errors():
    members, non = task(100, 50)
    up = fit(members, 2, "diag")
    with pytest.raises(TypeError, match="Upload"):
        privacy.membership_auc(members, members, non)
    with pytest.raises(ValueError, match="dimensions"):
        privacy.membership_auc(up, members[:, :3], non)
    with pytest.raises(ValueError, match="ks must lie"):
        privacy.membership_sweep(members, non, SPACE, ks=[101])


def test_sweep_rows_and_growth():
    members, non = task(80, 80)
    rows = privacy.membership_sweep(members, non, SPACE, ks=(1, 20), covariance_types=("diag", "full"))
    assert [(r["covariance_type"], r["k"]) for r in rows] == [("diag", 1), ("diag", 20), ("full", 1), ("full", 20)]
    by = {(r["covariance_type"], r["k"]): r for r in rows}
    assert by[("diag", 1)]["n_params"] == gmm.n_parameters(1, 4, "diag") == 8
    assert by[("diag", 1)]["guard"] == "ok" and by[("full", 20)]["guard"] == "refuse"
    assert by[("full", 20)]["auc"] > by[("diag", 1)]["auc"] + 0.2
    assert by[("full", 20)]["ll_gap"] > by[("diag", 1)]["ll_gap"]


def test_nearest_record_exact():
    q = np.array([[0.0, 0.0], [3.0, 4.0]])
    r = np.array([[1.0, 0.0], [3.0, 0.0], [10.0, 10.0]])
    np.testing.assert_allclose(privacy.nearest_record(q, r), [1.0, 4.0])
