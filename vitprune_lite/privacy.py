"""What an upload reveals about the private images it summarises.

A Gaussian mixture is a lossy summary, but not a private one by construction: with enough
components and free covariances it can put a narrow Gaussian on each training image. Two audits
measure that, both from the attacker's position of holding only the :class:`~vitprune_lite.gmm.Upload`:

- **Membership inference** (:func:`membership_auc`): given a candidate image's features, guess
  whether it was one of the device's training images by its log-likelihood under the upload.
  Members are the device's private training images; non-members are held-out images of the same
  task (the private test split). ROC-AUC 0.5 means the upload tells them apart no better than a
  coin; 1.0 means it identifies every training image.
- **Nearest-record distance** (:func:`nearest_record_audit`): draw samples from the mixture and
  measure how close each lands to the nearest training image versus the nearest held-out image
  (equal-sized sets). A mixture that memorises produces samples that sit on training images.

:func:`membership_sweep` repeats the first audit over numbers of components and covariance
types with the capacity guard switched off, to show how the risk grows with capacity; the guard
itself lives in :mod:`vitprune_lite.gmm` (:func:`~vitprune_lite.gmm.check_capacity`).
"""
from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np

from . import gmm
from .errors import InvalidValueError
from .features import FeatureSpace


def membership_auc(upload: gmm.Upload, members: np.ndarray, non_members: np.ndarray) -> float:
    """ROC-AUC of the likelihood attack: members should score higher than non-members.

    Args:
        upload: what the attacker holds.
        members: features ``[N, D]`` of the images the upload was fitted on.
        non_members: features ``[M, D]`` of held-out images of the same task.

    Returns:
        AUC in [0, 1]; 0.5 = no information.
    """
    from sklearn.metrics import roc_auc_score

    if not isinstance(upload, gmm.Upload):
        raise TypeError(f"the attacker holds an Upload, got {type(upload).__name__}")
    a = gmm._check_features(members, "members")
    b = gmm._check_features(non_members, "non_members")
    if a.shape[1] != upload.dim or b.shape[1] != upload.dim:
        raise ValueError(f"features must have the upload's {upload.dim} dimensions, got {a.shape[1]} and {b.shape[1]}")
    ll = np.concatenate([upload.log_likelihood(a), upload.log_likelihood(b)])
    truth = np.r_[np.ones(len(a)), np.zeros(len(b))]
    return float(roc_auc_score(truth, ll))


def membership_sweep(members: np.ndarray, non_members: np.ndarray, space: FeatureSpace,
                     ks: Iterable[int] = (1, 2, 5, 10, 20, 40), covariance_types: Iterable[str] = ("diag", "full"),
                     seed: int = 0, reg_covar: float = 1e-6) -> list[dict]:
    """Membership AUC of mixtures of growing capacity, fitted with the capacity guard OFF.

    This deliberately fits the mixtures the guard would refuse, to show why it exists; it is an
    audit, not a way to build uploads.

    Args:
        members: features ``[N, D]`` of private training images (the mixture is fitted on them).
        non_members: features ``[M, D]`` of held-out private images.
        space: the features' space.
        ks: numbers of components (each <= N).
        covariance_types: from :data:`~vitprune_lite.gmm.COVARIANCE_TYPES`.

    Returns:
        One dict per (covariance type, K): ``covariance_type``, ``k``, ``n_params``,
        ``capacity_ratio`` (free parameters per private image), ``guard`` ("ok", "warn" or
        "refuse" under the default thresholds), ``auc``, ``ll_gap`` (mean log-likelihood of
        members minus non-members, nats).
    """
    members = gmm._check_features(members, "members")
    non_members = gmm._check_features(non_members, "non_members")
    covs = list(covariance_types)
    for c in covs:
        gmm._check_covariance_type(c)
    ks = list(ks)
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) for k in ks):
        raise InvalidValueError(f"ks = {ks!r}: accepted integers (numbers of components), never truncated")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > len(members):
        raise ValueError(f"ks must lie in 1..{len(members)} (the number of members), got {ks}")
    rows = []
    for cov in covs:
        for k in ks:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", gmm.CapacityWarning)
                fit = gmm.fit_upload(members, space, k_range=[k], covariance_type=cov, seed=seed,
                                     max_param_ratio=None, reg_covar=reg_covar)
            up = fit.upload
            ratio = gmm.capacity_ratio(k, members.shape[1], cov, len(members))
            guard = ("refuse" if ratio > gmm.MAX_PARAM_RATIO else "warn" if ratio > gmm.WARN_PARAM_RATIO else "ok")
            rows.append({"covariance_type": cov, "k": k, "n_params": up.n_parameters,
                         "capacity_ratio": ratio, "guard": guard,
                         "auc": membership_auc(up, members, non_members),
                         "ll_gap": float(up.log_likelihood(members).mean() - up.log_likelihood(non_members).mean())})
    return rows


def nearest_record(queries: np.ndarray, records: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Euclidean distance ``[Q]`` from each query ``[Q, D]`` to its nearest record ``[R, D]``."""
    q = gmm._check_features(queries, "queries")
    r = gmm._check_features(records, "records")
    if q.shape[1] != r.shape[1] or len(r) == 0:
        raise ValueError(f"queries and records need equal dimensions and >= 1 record, got {q.shape}, {r.shape}")
    out = [np.sqrt(gmm._sqdist(q[i:i + chunk], r).min(1)) for i in range(0, len(q), chunk)]
    return np.concatenate(out)


def nearest_record_audit(upload: gmm.Upload, members: np.ndarray, non_members: np.ndarray,
                         n_samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Do samples from the upload land on training images more than on held-out ones?

    The larger set is subsampled (seeded) to the smaller one's size, since the nearest of more
    records is nearer by chance alone.

    Args:
        upload: the mixture under audit.
        members: features of the images it was fitted on ``[N, D]``.
        non_members: features of held-out images of the same task ``[M, D]``.
        n_samples: how many samples to draw from the mixture.

    Returns:
        ``median_to_members`` and ``median_to_non_members`` (feature units), their ``ratio``
        (< 1: samples sit closer to training images), ``closer_to_members`` (share of samples whose
        nearest member is nearer than their nearest non-member; 0.5 = no preference), ``n_records``.
    """
    if not isinstance(upload, gmm.Upload):
        raise TypeError(f"the attacker holds an Upload, got {type(upload).__name__}")
    a = gmm._check_features(members, "members")
    b = gmm._check_features(non_members, "non_members")
    n = min(len(a), len(b))
    rng = np.random.default_rng(seed)
    a = a[np.sort(rng.choice(len(a), n, replace=False))]
    b = b[np.sort(rng.choice(len(b), n, replace=False))]
    s = gmm.sample(upload, n_samples, seed=seed)
    da, db = nearest_record(s, a), nearest_record(s, b)
    return {"median_to_members": float(np.median(da)), "median_to_non_members": float(np.median(db)),
            "ratio": float(np.median(da) / np.median(db)), "closer_to_members": float((da < db).mean()),
            "n_records": int(n)}
