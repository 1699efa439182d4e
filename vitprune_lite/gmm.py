"""TAP-ViTs' data side: a device summarises its private images as a Gaussian mixture; the cloud
uses the mixture to pick matching public images.

The exchange, in three steps (docs/methods.md, "TAP-ViTs": device side and cloud side):

1. **Device** (:func:`fit_upload`, :func:`device_upload`): embed the private *training* images
   with a frozen extractor (:mod:`vitprune_lite.features`), fit a ``GaussianMixture`` for every
   K in a range (default 2..10) and keep the K with the lowest BIC. A capacity guard refuses
   mixtures with too many free parameters for the number of private images (such a mixture
   memorises them; :mod:`vitprune_lite.privacy` measures how much). What leaves the device is an
   :class:`Upload`: weights, means, covariances, covariance type and the feature space's name
   and version, serialised as JSON or ``.npz`` (never pickle), plus two bookkeeping numbers
   (how many images it summarises and their raw size in bytes). Nothing else.
2. **Cloud** (:func:`select`): embed the public pool with the same extractor
   (:func:`embed_pool` -> :class:`CloudFeatures`), score every image by its log-likelihood under
   the upload, min-max normalise, rank. The top 640 form the *metric set* (used to score units
   for pruning), the top 6,400 the *fine-tune set* (capped by the pool size). Real public images
   are selected and keep their public labels. Cloud-side functions accept an :class:`Upload`,
   never an array, so raw private data cannot be passed to them by mistake.
3. **Evaluation** (:func:`precision`, :func:`mmd2`, :func:`frechet_distance`): how well the
   selected images match the device's task, against a random public subset of the same size.
   Evaluation uses the device's private *test* images; the mixture never saw them (the authors'
   code fitted and evaluated on the same images).

Index sets for later notebooks are written by :func:`save_selected_sets` and read by
:func:`load_selected_sets`.
"""
from __future__ import annotations

import io
import json
import math
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from . import paths
from .errors import InputTooLargeError, InvalidFileError, InvalidValueError
from .features import FeatureSpace

COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
DEFAULT_K_RANGE = tuple(range(2, 11))

#: Capacity guard. A mixture with more free parameters than ``MAX_PARAM_RATIO`` x (number of
#: private images) is refused: past one parameter per image a mixture can spend components on
#: single images, and membership inference climbs steeply (notebook 01 measures AUC against
#: this ratio for every device, feature space and covariance type).
MAX_PARAM_RATIO = 1.0
#: From half that ratio on, fitting goes ahead with a :class:`CapacityWarning`.
WARN_PARAM_RATIO = 0.5

#: Fewest private images a device may summarise; below this a mixture says little and a single
#: image weighs on it heavily.
MIN_PRIVATE_SAMPLES = 20

#: Caps on what an upload may hold, checked before anything is decompressed or allocated: bytes
#: of the serialised upload (JSON text or ``.npz``), mixture components, feature dimensions and
#: numbers in all. Real uploads are kilobytes (K <= 10 components in 16 dimensions).
MAX_UPLOAD_BYTES = 16 << 20
MAX_COMPONENTS = 256
MAX_DIM = 4096
MAX_UPLOAD_VALUES = 4 << 20

UPLOAD_FORMAT = "vitprune-gmm-upload"
UPLOAD_FORMAT_VERSION = 1
SELECTED_SETS = "01_selected_sets.npz"


class CapacityError(ValueError):
    """The requested mixture has too many free parameters for the number of private images."""


class CapacityWarning(UserWarning):
    """A mixture was skipped or fitted close to the capacity guard."""


# ----------------------------------------------------------------------------- capacity guard

def _check_covariance_type(covariance_type: str) -> None:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"unknown covariance_type {covariance_type!r}; accepted: {COVARIANCE_TYPES}")


def n_parameters(k: int, dim: int, covariance_type: str) -> int:
    """Free parameters of a K-component mixture in ``dim`` dimensions.

    Means ``k * dim``, weights ``k - 1``, covariances: full ``k * dim (dim + 1) / 2``, diag
    ``k * dim``, tied ``dim (dim + 1) / 2``, spherical ``k`` (as sklearn's BIC counts them).
    """
    _check_covariance_type(covariance_type)
    if k < 1 or dim < 1:
        raise ValueError(f"k and dim must be >= 1, got k={k}, dim={dim}")
    cov = {"full": k * dim * (dim + 1) // 2, "diag": k * dim,
           "tied": dim * (dim + 1) // 2, "spherical": k}[covariance_type]
    return int(k * dim + (k - 1) + cov)


def capacity_ratio(k: int, dim: int, covariance_type: str, n_samples: int) -> float:
    """Free parameters per private image: :func:`n_parameters` / ``n_samples``."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return n_parameters(k, dim, covariance_type) / n_samples


def check_capacity(k: int, dim: int, covariance_type: str, n_samples: int,
                   max_ratio: float | None = MAX_PARAM_RATIO, warn_ratio: float | None = WARN_PARAM_RATIO) -> float:
    """Apply the capacity guard; return the ratio.

    Raises:
        CapacityError: ratio above ``max_ratio`` (``None`` turns the guard off, for audits only).

    Warns:
        CapacityWarning: ratio above ``warn_ratio`` but within the guard.
    """
    ratio = capacity_ratio(k, dim, covariance_type, n_samples)
    if max_ratio is not None and ratio > max_ratio:
        raise CapacityError(
            f"K={k} {covariance_type} components in {dim} dimensions have "
            f"{n_parameters(k, dim, covariance_type)} free parameters for {n_samples} private images "
            f"(ratio {ratio:.2f} > {max_ratio}): such a mixture can memorise individual images. Use fewer "
            f"components, covariance_type='diag', fewer feature dimensions, or more private images.")
    if warn_ratio is not None and ratio > warn_ratio:
        warnings.warn(f"K={k} {covariance_type}: {ratio:.2f} free parameters per private image "
                      f"(guard at {max_ratio})", CapacityWarning, stacklevel=2)
    return ratio


# ----------------------------------------------------------------------------- the upload

def _cov_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    return {"full": (k, d, d), "diag": (k, d), "tied": (d, d), "spherical": (k,)}[covariance_type]


@dataclass(frozen=True, eq=False)
class Upload:
    """What a device sends to the cloud: a Gaussian mixture in a named feature space.

    Attributes:
        weights: float64 ``[K]``, summing to 1.
        means: float64 ``[K, D]``.
        covariances: float64; ``full [K, D, D]``, ``diag [K, D]``, ``tied [D, D]``, ``spherical [K]``.
        covariance_type: one of :data:`COVARIANCE_TYPES`.
        feature_space: name of the feature space (e.g. ``"vit_cls"``).
        feature_version: version of the fitted extractor; the cloud must match it.
        n_samples: how many private images the mixture summarises.
        raw_bytes: size of those images in bytes (what uploading them would have cost).

    ``n_samples`` and ``raw_bytes`` are bookkeeping: they reveal the size of the private set,
    nothing about its content.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    covariance_type: str
    feature_space: str
    feature_version: str
    n_samples: int
    raw_bytes: int

    def __post_init__(self) -> None:
        if not isinstance(self.covariance_type, str):
            raise InvalidValueError(f"upload covariance_type = {self.covariance_type!r}: accepted one of {COVARIANCE_TYPES}")
        _check_covariance_type(self.covariance_type)
        for name in ("n_samples", "raw_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InvalidValueError(f"upload {name} = {v!r}: accepted an integer (a count, never truncated)")
        for name in ("feature_space", "feature_version"):
            if not isinstance(getattr(self, name), str):
                raise InvalidValueError(f"upload {name} = {getattr(self, name)!r}: accepted a non-empty string")
        for name in ("weights", "means", "covariances"):
            raw = getattr(self, name)
            if isinstance(raw, np.ndarray) and raw.size > MAX_UPLOAD_VALUES:
                raise InputTooLargeError(f"upload {name} holds {raw.size} values; at most {MAX_UPLOAD_VALUES} accepted")
            try:
                arr = np.array(raw, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise InvalidValueError(f"upload {name} must be an array of numbers ({err})") from None
            if not np.isfinite(arr).all():
                raise ValueError(f"upload {name} contain NaN or inf")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if self.weights.ndim != 1 or self.means.ndim != 2 or len(self.weights) != len(self.means):
            raise ValueError(f"upload weights must be [K] and means [K, D], got {self.weights.shape} "
                             f"and {self.means.shape}")
        k, d = self.means.shape
        if not 1 <= k <= MAX_COMPONENTS or not 1 <= d <= MAX_DIM:
            raise InputTooLargeError(f"upload has K={k} components in D={d} dimensions; accepted 1..{MAX_COMPONENTS} "
                                     f"components in 1..{MAX_DIM} dimensions")
        want = _cov_shape(self.covariance_type, k, d)
        if self.covariances.shape != want:
            raise ValueError(f"{self.covariance_type} covariances must have shape {want} for K={k}, D={d}, "
                             f"got {self.covariances.shape}")
        if (self.weights < 0).any() or abs(self.weights.sum() - 1) > 1e-6:
            raise ValueError(f"upload weights must be >= 0 and sum to 1, got sum {self.weights.sum():.6f}")
        if not self.feature_space or not self.feature_version:
            raise ValueError("upload must name its feature space and version")
        if int(self.n_samples) < 1 or int(self.raw_bytes) < 0:
            raise ValueError(f"n_samples must be >= 1 and raw_bytes >= 0, got {self.n_samples}, {self.raw_bytes}")
        object.__setattr__(self, "n_samples", int(self.n_samples))
        object.__setattr__(self, "raw_bytes", int(self.raw_bytes))
        self._cholesky()  # refuse covariances that are not positive definite, now

    @property
    def n_components(self) -> int:
        return int(len(self.weights))

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def nbytes(self) -> int:
        """Size of the serialised upload (:meth:`to_bytes`), in bytes."""
        return len(self.to_bytes())

    @property
    def n_parameters(self) -> int:
        return n_parameters(self.n_components, self.dim, self.covariance_type)

    def _meta(self) -> dict:
        return {"format": UPLOAD_FORMAT, "format_version": UPLOAD_FORMAT_VERSION,
                "covariance_type": self.covariance_type, "feature_space": self.feature_space,
                "feature_version": self.feature_version, "n_samples": self.n_samples,
                "raw_bytes": self.raw_bytes}

    # -- serialisation (JSON or npz; never pickle)
    def to_json(self) -> str:
        """JSON text holding every field (floats written exactly: repr round-trips)."""
        return json.dumps({**self._meta(), "weights": self.weights.tolist(), "means": self.means.tolist(),
                           "covariances": self.covariances.tolist()})

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "upload JSON") -> "Upload":
        """Parse :meth:`to_json` output (validated like any upload; size capped before parsing).

        Raises:
            InputTooLargeError: more than :data:`MAX_UPLOAD_BYTES`, or too many components/dimensions.
            InvalidFileError: not JSON, or not an upload (``source`` names where it came from).
        """
        if not isinstance(text, (str, bytes)):
            raise InvalidValueError(f"{source} must be str or bytes, got {type(text).__name__}")
        if len(text) > MAX_UPLOAD_BYTES:
            raise InputTooLargeError(f"{source} is {len(text)} bytes; uploads are accepted up to {MAX_UPLOAD_BYTES}")
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidFileError(f"{source} is not valid JSON ({err}); expected the output of Upload.to_json") from None
        return _build(cls, obj, source)

    def to_bytes(self) -> bytes:
        """``.npz`` bytes: three float64 arrays and a JSON metadata string."""
        buf = io.BytesIO()
        np.savez(buf, weights=self.weights, means=self.means, covariances=self.covariances,
                 meta=np.array(json.dumps(self._meta())))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, source: str = "upload .npz") -> "Upload":
        """Parse :meth:`to_bytes` output (``allow_pickle=False``).

        The zip directory is checked first: exactly the four expected members, their inflated
        sizes within :data:`MAX_UPLOAD_BYTES`; each array's header (dtype, shape) is read and
        checked before its data is inflated.

        Raises:
            InputTooLargeError: the blob or a member inflates past the caps.
            InvalidFileError: not an upload ``.npz`` (``source`` names where it came from).
        """
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise InvalidValueError(f"{source} must be bytes, got {type(blob).__name__}")
        if len(blob) > MAX_UPLOAD_BYTES:
            raise InputTooLargeError(f"{source} is {len(blob)} bytes; uploads are accepted up to {MAX_UPLOAD_BYTES}")
        try:
            obj = _read_npz(bytes(blob), source)
        except (InvalidFileError, InvalidValueError):
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as err:
            raise InvalidFileError(f"{source} is not a readable upload .npz ({type(err).__name__}: {err}); "
                                   f"expected the output of Upload.to_bytes") from None
        return _build(cls, obj, source)

    # -- the density
    def _cholesky(self) -> np.ndarray:
        """Lower Cholesky factors ``[K, D, D]`` (full/tied) or standard deviations ``[K, D]``."""
        k, d = self.means.shape
        c = self.covariances
        try:
            if self.covariance_type == "full":
                return np.linalg.cholesky(c)
            if self.covariance_type == "tied":
                return np.broadcast_to(np.linalg.cholesky(c), (k, d, d))
        except np.linalg.LinAlgError:
            raise ValueError("upload covariances are not positive definite") from None
        var = c if self.covariance_type == "diag" else np.repeat(c[:, None], d, 1)
        if (var <= 0).any():
            raise ValueError("upload variances must be > 0")
        return np.sqrt(var)

    def component_log_prob(self, x: np.ndarray) -> np.ndarray:
        """``log(pi_k) + log N(x | mu_k, Sigma_k)`` for features ``x [N, D]`` -> ``[N, K]``."""
        from scipy.linalg import solve_triangular

        x = np.asarray(x, dtype=np.float64)
        k, d = self.means.shape
        chol = self._cholesky()
        out = np.empty((len(x), k))
        for j in range(k):
            diff = x - self.means[j]
            if chol.ndim == 3:
                z = solve_triangular(chol[j], diff.T, lower=True).T
                logdet = 2 * np.log(np.diag(chol[j])).sum()
            else:
                z = diff / chol[j]
                logdet = 2 * np.log(chol[j]).sum()
            out[:, j] = -0.5 * (d * np.log(2 * np.pi) + logdet + (z * z).sum(1))
        with np.errstate(divide="ignore"):  # a zero weight is a component that never fires
            return out + np.log(self.weights)

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """Per-sample log-likelihood ``[N]`` of features ``x [N, D]`` (natural log)."""
        lp = self.component_log_prob(x)
        m = lp.max(1, keepdims=True)
        return (m + np.log(np.exp(lp - m).sum(1, keepdims=True)))[:, 0]


_NPZ_MEMBERS = ("weights.npy", "means.npy", "covariances.npy", "meta.npy")


def _read_npz(blob: bytes, source: str) -> dict:
    """The arrays and metadata of an upload ``.npz``, with every size checked before inflating."""
    from numpy.lib import format as npformat

    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        infos = zf.infolist()
        names = sorted(i.filename for i in infos)
        if names != sorted(_NPZ_MEMBERS):
            raise InvalidFileError(f"{source} holds members {names[:10]}; an upload holds exactly {list(_NPZ_MEMBERS)}")
        total = sum(i.file_size for i in infos)
        if total > MAX_UPLOAD_BYTES:
            raise InputTooLargeError(f"{source} would inflate to {total} bytes; uploads are accepted up to "
                                     f"{MAX_UPLOAD_BYTES} (refused before decompressing)")
        out: dict = {}
        for name in _NPZ_MEMBERS:
            with zf.open(name) as fh:
                version = npformat.read_magic(fh)
                readers = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
                if version not in readers:
                    raise InvalidFileError(f"{source}: {name} is .npy format {version}; accepted 1.0 and 2.0")
                shape, fortran, dtype = readers[version](fh)
                n = math.prod(int(v) for v in shape)  # Python ints: a forged shape cannot overflow
                if dtype.hasobject:
                    raise InvalidFileError(f"{source}: {name} holds Python objects; uploads hold numbers only (no pickle)")
                if n > MAX_UPLOAD_VALUES or n * dtype.itemsize > MAX_UPLOAD_BYTES:
                    raise InputTooLargeError(f"{source}: {name} declares shape {shape}; at most {MAX_UPLOAD_VALUES} "
                                             f"values are accepted")
            with zf.open(name) as fh:
                out[name[:-4]] = npformat.read_array(fh, allow_pickle=False)
    meta = out.pop("meta")
    if meta.shape != () or meta.dtype.kind != "U":
        raise InvalidFileError(f"{source}: meta must be one JSON string, got {meta.dtype} {meta.shape}")
    try:
        obj = json.loads(str(meta))
    except json.JSONDecodeError as err:
        raise InvalidFileError(f"{source}: meta is not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise InvalidFileError(f"{source}: meta must be a JSON object, got {type(obj).__name__}")
    obj.update(out)
    return obj


def _build(cls, obj, source: str) -> "Upload":
    """An :class:`Upload` from parsed fields; any problem is reported against ``source``."""
    if not isinstance(obj, dict):
        raise InvalidFileError(f"{source} holds a JSON {type(obj).__name__}; expected an object with the fields "
                               f"of Upload.to_json")
    try:
        fields = _from_fields(obj)
        for name in ("weights", "means"):  # refuse oversized nested lists before converting them
            v = fields[name]
            if isinstance(v, list) and len(v) > MAX_COMPONENTS:
                raise InputTooLargeError(f"upload {name} has {len(v)} components; at most {MAX_COMPONENTS} accepted")
        return cls(**fields)
    except InputTooLargeError as err:
        raise InputTooLargeError(f"{source}: {err}") from None
    except ValueError as err:
        raise InvalidFileError(f"{source}: {err}") from None


def read_upload(path: str | Path) -> "Upload":
    """Read an upload file: ``.json`` (:meth:`Upload.to_json`) or ``.npz`` (:meth:`Upload.to_bytes`).

    The file's size on disk is checked against :data:`MAX_UPLOAD_BYTES` before it is read.

    Raises:
        FileNotFoundError: no such file.
        InvalidValueError: another suffix.
        InputTooLargeError, InvalidFileError: see :meth:`Upload.from_json` / :meth:`Upload.from_bytes`.
    """
    path = Path(path)
    if path.suffix not in (".json", ".npz"):
        raise InvalidValueError(f"upload file {path} must end in .json or .npz")
    if not path.is_file():
        raise FileNotFoundError(f"upload file {path} not found")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise InputTooLargeError(f"upload file {path} is {size} bytes; uploads are accepted up to {MAX_UPLOAD_BYTES}")
    blob = path.read_bytes()
    if path.suffix == ".json":
        return Upload.from_json(blob, source=f"upload file {path}")
    return Upload.from_bytes(blob, source=f"upload file {path}")


def write_upload(upload: "Upload", path: str | Path) -> Path:
    """Write an upload atomically as ``.json`` or ``.npz`` (by suffix)."""
    path = Path(path)
    if path.suffix not in (".json", ".npz"):
        raise InvalidValueError(f"upload file {path} must end in .json or .npz")
    if not isinstance(upload, Upload):
        raise InvalidValueError(f"write_upload takes an Upload, got {type(upload).__name__}")
    blob = upload.to_json().encode() if path.suffix == ".json" else upload.to_bytes()
    return paths.write_bytes_atomic(path, blob)


def _from_fields(obj: Mapping) -> dict:
    if obj.get("format") != UPLOAD_FORMAT:
        raise ValueError(f"not a GMM upload (format {obj.get('format')!r}, expected {UPLOAD_FORMAT!r})")
    if obj.get("format_version") != UPLOAD_FORMAT_VERSION:
        raise ValueError(f"upload format version {obj.get('format_version')} is not supported "
                         f"(this code reads version {UPLOAD_FORMAT_VERSION})")
    keys = ("weights", "means", "covariances", "covariance_type", "feature_space", "feature_version",
            "n_samples", "raw_bytes")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"upload is missing {missing}")
    return {k: obj[k] for k in keys}


def sample(upload: Upload, n: int, seed: int = 0) -> np.ndarray:
    """Draw ``n`` feature vectors ``[n, D]`` from the uploaded mixture.

    Unlike ``GaussianMixture.sample`` (rows grouped by component, the same draws on every call
    with an integer ``random_state``), rows come in random component order, and each ``seed``
    gives its own, reproducible draw.
    """
    if not isinstance(upload, Upload):
        raise TypeError(f"sample() takes an Upload, got {type(upload).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidValueError(f"n = {n!r}: accepted an integer >= 1 (samples to draw)")
    rng = np.random.default_rng(seed)
    comp = rng.choice(upload.n_components, size=n, p=upload.weights / upload.weights.sum())
    z = rng.standard_normal((n, upload.dim))
    chol = upload._cholesky()
    if chol.ndim == 3:
        noise = np.einsum("nij,nj->ni", chol[comp], z)
    else:
        noise = chol[comp] * z
    return upload.means[comp] + noise


# ----------------------------------------------------------------------------- device side

@dataclass
class DeviceFit:
    """Result of the device-side fit. Only :attr:`upload` leaves the device.

    Attributes:
        upload: the chosen mixture.
        bic: K -> BIC (lower is better) for every K that was fitted.
        skipped: K -> capacity ratio, for every K the capacity guard refused.
        chosen_k: the K with the lowest BIC.
        capacity_ratio: free parameters per private image of the chosen mixture.
    """

    upload: Upload
    bic: dict[int, float]
    skipped: dict[int, float] = field(default_factory=dict)
    chosen_k: int = 0
    capacity_ratio: float = 0.0


def _check_features(features: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(features)
    if arr.ndim != 2 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be a numeric 2-D array [N, D], got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(1).sum())
        raise ValueError(f"{what} contain NaN or inf in {bad} of {len(arr)} rows; "
                         f"check the extractor and the images")
    return arr


def fit_upload(features: np.ndarray, space: FeatureSpace, *, raw_bytes: int | None = None,
               k_range: Iterable[int] = DEFAULT_K_RANGE, covariance_type: str = "diag", seed: int = 0,
               max_param_ratio: float | None = MAX_PARAM_RATIO, warn_param_ratio: float | None = WARN_PARAM_RATIO,
               reg_covar: float = 1e-6, n_init: int = 1, max_iter: int = 200) -> DeviceFit:
    """Device side: fit a mixture per K, keep the lowest BIC, package it as an :class:`Upload`.

    Every input is checked before any fitting.

    Args:
        features: float ``[N, D]`` features of the device's private TRAINING images.
        space: the extractor's :class:`~vitprune_lite.features.FeatureSpace` (``extractor.space``).
        raw_bytes: size of the raw images summarised (default ``N * 32 * 32 * 3``).
        k_range: candidate numbers of components (default 2..10).
        covariance_type: ``"diag"`` (default; suits high dimensions), ``"full"``, ``"tied"`` or ``"spherical"``.
        seed: ``random_state`` of every fit (same inputs and seed -> same upload).
        max_param_ratio: capacity guard; K above it are skipped (``None``: off, for audits only).
        warn_param_ratio: a :class:`CapacityWarning` is issued above this ratio.
        reg_covar, n_init, max_iter: passed to ``sklearn.mixture.GaussianMixture``.

    Raises:
        ValueError: empty/tiny sets, NaN features, wrong dimension, unknown covariance type, K
            larger than the number of samples.
        CapacityError: the guard refuses every K in ``k_range``.
    """
    from sklearn.mixture import GaussianMixture

    x = _check_features(features, "private features")
    n, d = x.shape
    if not isinstance(space, FeatureSpace):
        raise TypeError(f"space must be a FeatureSpace (extractor.space), got {type(space).__name__}")
    if space.dim != d:
        raise ValueError(f"features have {d} dimensions but feature space {space.name!r} has {space.dim}")
    if n < MIN_PRIVATE_SAMPLES:
        raise ValueError(f"{n} private samples are too few to summarise; need at least {MIN_PRIVATE_SAMPLES}")
    _check_covariance_type(covariance_type)
    k_list = list(k_range)
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) for k in k_list):
        raise InvalidValueError(f"k_range = {k_list!r}: accepted integers >= 1 (numbers of components)")
    ks = sorted({int(k) for k in k_list})
    if not ks or ks[0] < 1:
        raise ValueError(f"k_range must hold integers >= 1, got {list(k_range)}")
    if ks[-1] > n:
        raise ValueError(f"K={ks[-1]} components is more than the {n} private samples; use K <= {n}")
    if reg_covar < 0:
        raise ValueError(f"reg_covar must be >= 0, got {reg_covar}")

    allowed, skipped = [], {}
    for k in ks:
        ratio = capacity_ratio(k, d, covariance_type, n)
        if max_param_ratio is not None and ratio > max_param_ratio:
            skipped[k] = ratio
        else:
            allowed.append(k)
    if not allowed:
        check_capacity(ks[0], d, covariance_type, n, max_param_ratio, None)  # raises, naming the fix
    if skipped:
        warnings.warn(f"capacity guard skipped K={sorted(skipped)} ({covariance_type}, D={d}, N={n}): more than "
                      f"{max_param_ratio} free parameters per private image", CapacityWarning, stacklevel=2)

    bic, fits = {}, {}
    for k in allowed:
        gm = GaussianMixture(k, covariance_type=covariance_type, random_state=seed, reg_covar=reg_covar,
                             n_init=n_init, max_iter=max_iter)
        with warnings.catch_warnings():
            # A fit that stops at max_iter is still a valid mixture; BIC judges it like the rest.
            warnings.filterwarnings("ignore", message=".*did not converge.*")
            gm.fit(x)
        bic[k], fits[k] = float(gm.bic(x)), gm
    best = min(bic, key=lambda k: (bic[k], k))
    ratio = check_capacity(best, d, covariance_type, n, max_param_ratio, warn_param_ratio)
    gm = fits[best]
    upload = Upload(gm.weights_, gm.means_, gm.covariances_, covariance_type, space.name, space.version,
                    n, n * 32 * 32 * 3 if raw_bytes is None else raw_bytes)
    return DeviceFit(upload, bic, skipped, best, ratio)


def device_upload(images: np.ndarray, extractor, **kwargs) -> DeviceFit:
    """Device side, end to end: embed private TRAINING images ``[N, H, W, 3]`` uint8 and fit.

    Args:
        images: the device's private training images.
        extractor: a fitted extractor from :mod:`vitprune_lite.features`.
        **kwargs: passed to :func:`fit_upload`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or len(images) < MIN_PRIVATE_SAMPLES:
        raise ValueError(f"need at least {MIN_PRIVATE_SAMPLES} private images [N, H, W, 3], got shape {images.shape}")
    return fit_upload(extractor(images), extractor.space, raw_bytes=int(images.nbytes), **kwargs)


# ----------------------------------------------------------------------------- cloud side

@dataclass(frozen=True, eq=False)
class CloudFeatures:
    """The public pool as the cloud sees it: features, their space, and where each image lives.

    Attributes:
        features: float64 ``[M, D]``.
        space: the extractor's :class:`~vitprune_lite.features.FeatureSpace`.
        index: int64 ``[M]``, each row's index into the public pool (``bench.public["train"]``).
    """

    features: np.ndarray
    space: FeatureSpace
    index: np.ndarray

    def __post_init__(self) -> None:
        f = _check_features(self.features, "public features")
        idx = np.asarray(self.index)
        if idx.ndim != 1 or len(idx) != len(f) or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"index must be integer [M] with M = {len(f)} rows, got {idx.dtype} {idx.shape}")
        if len(np.unique(idx)) != len(idx) or (idx < 0).any():
            raise ValueError("index must hold distinct non-negative pool positions")
        if f.shape[1] != self.space.dim:
            raise ValueError(f"features have {f.shape[1]} dimensions, space {self.space.name!r} has {self.space.dim}")
        object.__setattr__(self, "features", f)
        object.__setattr__(self, "index", idx.astype(np.int64))

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Features ``[n, D]`` of the public images at pool indices ``idx [n]`` (all must be in :attr:`index`)."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(self.index)
        pos = np.searchsorted(self.index, idx, sorter=order)
        pos = order[np.minimum(pos, len(order) - 1)]
        if len(idx) and not np.array_equal(self.index[pos], idx):
            raise ValueError("some indices are not in this pool")
        return self.features[pos]

    def nearest(self, queries: np.ndarray) -> np.ndarray:
        """Pool index ``[Q]`` of the public image nearest (Euclidean) to each query ``[Q, D]``.

        A feature vector cannot be turned back into an image; to *picture* a sample drawn from
        an upload, show the public image that lies closest to it.
        """
        q = _check_features(queries, "queries")
        return self.index[np.concatenate([_sqdist(q[i:i + 1024], self.features).argmin(1)
                                          for i in range(0, len(q), 1024)])]


def embed_pool(extractor, images: np.ndarray, index: np.ndarray | None = None) -> CloudFeatures:
    """Embed public images ``[M, H, W, 3]`` with a fitted extractor.

    Args:
        index: the images' positions in the public pool (default ``arange(M)``).
    """
    feats = extractor(images)
    return CloudFeatures(feats, extractor.space, np.arange(len(feats)) if index is None else np.asarray(index))


@dataclass
class Selection:
    """Public images chosen for one device.

    Attributes:
        metric: int64 ``[n_metric]`` public-pool indices, best first.
        finetune: int64 ``[n_finetune]`` public-pool indices, best first (``metric`` is its prefix).
        scores: float64 ``[M]`` min-max normalised log-likelihood of every pool row (pool order),
            or ``None`` for a random selection.
        ranking: int64 ``[M]`` public-pool indices of the whole pool, best first (``None`` for random).
    """

    metric: np.ndarray
    finetune: np.ndarray
    scores: np.ndarray | None = None
    ranking: np.ndarray | None = None


def _require_upload(upload, fn: str) -> None:
    if not isinstance(upload, Upload):
        raise TypeError(f"{fn}() is cloud-side and accepts only an Upload (weights, means, covariances), "
                        f"got {type(upload).__name__}; raw private data never leaves the device - "
                        f"fit it there with gmm.fit_upload/device_upload")


def _check_match(upload: Upload, cloud: CloudFeatures) -> None:
    if not isinstance(cloud, CloudFeatures):
        raise TypeError(f"cloud features must be CloudFeatures (gmm.embed_pool), got {type(cloud).__name__}")
    if (upload.feature_space, upload.feature_version) != (cloud.space.name, cloud.space.version):
        raise ValueError(f"feature spaces differ: upload is {upload.feature_space!r} version "
                         f"{upload.feature_version!r}, public features are {cloud.space.name!r} version "
                         f"{cloud.space.version!r}; embed the pool with the extractor the device used")
    if upload.dim != cloud.space.dim:
        raise ValueError(f"upload has {upload.dim} dimensions, public features {cloud.space.dim}")


def score(upload: Upload, cloud: CloudFeatures) -> np.ndarray:
    """Cloud side: log-likelihood ``[M]`` of every public image under the upload (pool order)."""
    _require_upload(upload, "score")
    _check_match(upload, cloud)
    return upload.log_likelihood(cloud.features)


def _sizes(n_metric: int, n_finetune: int, m: int) -> tuple[int, int]:
    for name, v in (("n_metric", n_metric), ("n_finetune", n_finetune)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return min(int(n_metric), m), min(int(n_finetune), m)


def select(upload: Upload, cloud: CloudFeatures, n_metric: int = 640, n_finetune: int = 6400, seed: int = 0,
           sample: bool = False, temperature: float = 1.0) -> Selection:
    """Cloud side: pick the public images that best match the upload.

    Scores are log-likelihoods, min-max normalised to [0, 1]. By default the ranking is
    deterministic (ties broken by pool order; ``seed`` unused). With ``sample=True`` images are
    drawn without replacement with probability proportional to ``likelihood ** (1/temperature)``
    (Gumbel top-k over the log-likelihood), reproducibly for ``seed``. Both set sizes are capped
    by the pool size; the metric set is the first ``n_metric`` of the fine-tune ranking.

    Args:
        upload: what the device sent.
        cloud: the public pool's features in the upload's space (:func:`embed_pool`).
        n_metric: size of the metric set (default 640).
        n_finetune: size of the fine-tune set (default 6,400).
        seed: random stream for ``sample=True``.
        sample: sample instead of taking the top.
        temperature: > 0; higher flattens the sampling distribution.

    Returns:
        A :class:`Selection` with public-pool indices.
    """
    _require_upload(upload, "select")
    _check_match(upload, cloud)
    n_metric, n_finetune = _sizes(n_metric, n_finetune, len(cloud.index))
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ll = upload.log_likelihood(cloud.features)
    lo, hi = ll.min(), ll.max()
    scores = (ll - lo) / (hi - lo) if hi > lo else np.zeros_like(ll)
    key = ll / temperature if sample else ll
    if sample:
        key = key + np.random.default_rng(seed).gumbel(size=len(ll))
    order = np.argsort(-key, kind="stable")
    ranking = cloud.index[order]
    return Selection(ranking[:n_metric].copy(), ranking[:n_finetune].copy(), scores, ranking)


def random_selection(index: np.ndarray, n_metric: int = 640, n_finetune: int = 6400, seed: int = 0) -> Selection:
    """The baseline: a uniformly random ordering of the pool ``index [M]``; same sizes as :func:`select`."""
    index = np.asarray(index, dtype=np.int64)
    if index.ndim != 1 or len(index) == 0:
        raise ValueError(f"index must be a non-empty 1-D array of pool positions, got shape {index.shape}")
    n_metric, n_finetune = _sizes(n_metric, n_finetune, len(index))
    perm = index[np.random.default_rng(seed).permutation(len(index))]
    return Selection(perm[:n_metric].copy(), perm[:n_finetune].copy())


def device_seed(seed: int, device: str) -> int:
    """A per-device seed derived from ``seed`` and the device name (independent random baselines)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(device.encode())]).generate_state(1)[0])


# ----------------------------------------------------------------------------- selection quality

def precision(idx: np.ndarray, pool, spec, *, styles: Sequence[str]) -> dict[str, float]:
    """Fraction of selected images that fit the device's task.

    Args:
        idx: int ``[n]`` indices into ``pool``.
        pool: the public :class:`~vitprune_lite.data.ImageSet` the indices point into.
        spec: the device's :class:`~vitprune_lite.data.DeviceSpec`.
        styles: the benchmark's style names, indexed like ``pool.styles`` (``bench.styles``).

    Returns:
        ``{"class": share with a device class, "style": share in a device style (probability > 0),
        "both": share with both}``, each in [0, 1].
    """
    idx = _check_idx(idx, pool)
    styles = tuple(styles)
    unknown = [s for s in spec.style_mix if s not in styles]
    if unknown:
        raise InvalidValueError(f"device {spec.name!r} has styles {unknown} that are not among the benchmark's "
                                f"styles {list(styles)}; pass the styles of the benchmark the device belongs to "
                                "(bench.styles)")
    wanted = [styles.index(s) for s, p in spec.style_mix.items() if p > 0]
    c = np.isin(pool.labels[idx], list(spec.classes))
    s = np.isin(pool.styles[idx], wanted)
    return {"class": float(c.mean()), "style": float(s.mean()), "both": float((c & s).mean())}


def _check_idx(idx: np.ndarray, pool) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        raise ValueError("idx is empty; nothing to measure")
    if idx.min() < 0 or idx.max() >= len(pool):
        raise ValueError(f"indices must lie in [0, {len(pool)}), got [{idx.min()}, {idx.max()}]")
    return idx


def class_balance(idx: np.ndarray, pool, spec, *, classes: Sequence[str] | None = None) -> dict:
    """How evenly the selected in-class images cover the device's classes.

    The top of a likelihood ranking can be in-class and still favour one class heavily; a metric
    set that nearly misses a class scores units without it.

    Args:
        idx: int ``[n]`` indices into ``pool``; pool: public ImageSet; spec: the DeviceSpec.
        classes: the benchmark's class names, indexed by label (``bench.classes``; default
            ``pool.classes``, which the benchmark sets).

    Returns:
        ``{"counts": {class name: selected images of that class}, "min_share": smallest count /
        (in-class images / number of device classes)}``; ``min_share`` is 1 for a perfectly even
        cover and 0 when a class is missing.
    """
    idx = _check_idx(idx, pool)
    names = tuple(pool.classes if classes is None else classes)
    bad = [c for c in spec.classes if not 0 <= c < len(names)]
    if bad:
        raise InvalidValueError(f"device {spec.name!r} has class indices {bad} outside the {len(names)} class "
                                "names given; pass the classes of the benchmark the device belongs to (bench.classes)")
    labels = pool.labels[idx]
    counts = {names[c]: int((labels == c).sum()) for c in spec.classes}
    total = sum(counts.values())
    share = min(counts.values()) / (total / len(counts)) if total else 0.0
    return {"counts": counts, "min_share": float(share)}


def median_bandwidth(x: np.ndarray, max_n: int = 1000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of ``x [N, D]`` (on at most ``max_n`` rows): an RBF bandwidth."""
    x = _subsample(_check_features(x, "x"), max_n, seed)
    d2 = _sqdist(x, x)
    iu = np.triu_indices(len(x), 1)
    return float(np.sqrt(np.median(d2[iu]))) if len(iu[0]) else 1.0


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0)


def _subsample(x: np.ndarray, max_n: int, seed: int) -> np.ndarray:
    if len(x) <= max_n:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), max_n, replace=False))]


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float, max_n: int = 1000, seed: int = 0) -> float:
    """Unbiased squared maximum mean discrepancy with an RBF kernel.

    ``k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2))``. Sets larger than ``max_n`` are subsampled
    (seeded). Zero in expectation when ``x`` and ``y`` come from one distribution (it can then be
    slightly negative); larger means further apart.

    Args:
        x: ``[N, D]``; y: ``[M, D]`` (N, M >= 2).
        bandwidth: kernel width (> 0), e.g. :func:`median_bandwidth` of the reference set.
    """
    x = _subsample(_check_features(x, "x"), max_n, seed)
    y = _subsample(_check_features(y, "y"), max_n, seed + 1)
    if len(x) < 2 or len(y) < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y need >= 2 rows and equal dimensions, got {x.shape} and {y.shape}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    g = -0.5 / bandwidth**2
    kxx, kyy, kxy = (np.exp(g * _sqdist(a, b)) for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to ``x [N, D]`` and ``y [M, D]`` (as in FID).

    ``|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2))``, in squared feature units.
    """
    from scipy.linalg import sqrtm

    x, y = _check_features(x, "x"), _check_features(y, "y")
    if len(x) < 2 or len(y) < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y need >= 2 rows and equal dimensions, got {x.shape} and {y.shape}")
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    covmean = sqrtm(sx @ sy)
    covmean = np.real(covmean)  # rounding can leave a tiny imaginary part
    return float(max(((mx - my) ** 2).sum() + np.trace(sx + sy - 2 * covmean), 0.0))


def distance_report(sets: Mapping[str, np.ndarray], target: np.ndarray, seed: int = 0) -> dict[str, dict[str, float]]:
    """Distances from each feature set to ``target`` (e.g. the device's private TEST features).

    Args:
        sets: name -> features ``[n, D]`` (selected, random, oracle, ...).
        target: ``[m, D]``.

    Returns:
        ``{"mmd2": {name: ...}, "frechet": {name: ...}, "bandwidth": {"target": ...}}``; the RBF
        bandwidth is the median pairwise distance within ``target``, shared by every set so
        their MMDs compare.
    """
    bw = median_bandwidth(target, seed=seed)
    return {"mmd2": {k: mmd2(v, target, bw, seed=seed) for k, v in sets.items()},
            "frechet": {k: frechet_distance(v, target) for k, v in sets.items()},
            "bandwidth": {"target": bw}}


# ----------------------------------------------------------------------------- selected sets on disk

_KEY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/(metric|finetune)$")


def save_selected_sets(sets: Mapping[str, np.ndarray], default_feature_space: str, path: Path | None = None, *,
                       benchmark: str, seed: int) -> Path:
    """Write index sets as ``.npz`` (no pickle): keys ``"{device}/{source}/{set}"``, int64 arrays.

    Args:
        sets: ``{"night_cam/vit_cls/metric": idx, ...}``; ``source`` is a feature-space name or
            ``"random"``, ``set`` is ``"metric"`` or ``"finetune"``.
        default_feature_space: the source later notebooks use by default; stored as a 0-d string.
        path: default ``results_dir()/01_selected_sets.npz``.
        benchmark: the benchmark the indices point into (``"v1"`` or ``"v2"``); stored as a 0-d
            string so that a reader can refuse sets of another benchmark.
        seed: the benchmark seed; stored as a 0-d int64.
    """
    if benchmark not in BENCHMARKS:
        raise InvalidValueError(f"benchmark {benchmark!r}: accepted {BENCHMARKS}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidValueError(f"seed {seed!r}: accepted an integer >= 0 (the benchmark seed)")
    arrays = {}
    for key, idx in sets.items():
        if not _KEY.match(key):
            raise ValueError(f"key {key!r} must look like 'device/source/metric' or 'device/source/finetune'")
        idx = np.asarray(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (idx < 0).any():
            raise ValueError(f"{key}: indices must be a 1-D array of non-negative integers")
        arrays[key] = idx.astype(np.int64)
    sources = {k.split("/")[1] for k in arrays}
    if default_feature_space not in sources:
        raise ValueError(f"default_feature_space {default_feature_space!r} is not among the sources {sorted(sources)}")
    arrays["default_feature_space"] = np.array(default_feature_space)
    arrays["benchmark"] = np.array(benchmark)
    arrays["seed"] = np.array(int(seed), dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return paths.write_bytes_atomic(Path(path or paths.results_dir() / SELECTED_SETS), buf.getvalue())


#: The benchmarks a selected-sets file may record (:data:`vitprune_lite.data.BENCHMARK_NAMES`).
BENCHMARKS = ("v1", "v2")
_META_KEYS = ("default_feature_space", "benchmark", "seed")


def load_selected_sets(path: Path | str | None = None, *, benchmark: str | None = None,
                       seed: int | None = None) -> dict[str, np.ndarray]:
    """Read the index sets written by notebook 01.

    Args:
        path: default ``results_dir()/01_selected_sets.npz``.
        benchmark: when given, the file must have been made from this benchmark (``"v1"`` or
            ``"v2"``); indices of one benchmark's pool mean nothing in another's.
        seed: when given, the file must have been made from this benchmark seed.

    Returns:
        ``{"{device}/{source}/{set}": int64 [n] indices into bench.public["train"], ...,
        "default_feature_space": 0-d str array}``, plus ``"benchmark"`` (0-d str) and ``"seed"``
        (0-d int64) when the file records them.

    Raises:
        FileNotFoundError: the file does not exist yet (run notebook 01 first).
        InvalidFileError: the file is damaged, or was made from another benchmark or seed than asked.
    """
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise InvalidValueError(f"benchmark {benchmark!r}: accepted {BENCHMARKS}")
    path = Path(path or paths.results_dir() / SELECTED_SETS)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebooks/01_gmm_data_approximation.ipynb first "
                                f"(or `python -m vitprune_lite reproduce --only 01`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            sets = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise InvalidFileError(f"selected sets {path} cannot be read ({type(err).__name__}: {err}); rerun "
                               f"notebook 01 to rewrite it") from None
    bad = [k for k, v in sets.items() if k not in _META_KEYS
           and (not _KEY.match(k) or v.ndim != 1 or not np.issubdtype(v.dtype, np.integer) or (v < 0).any())]
    if bad or "default_feature_space" not in sets:
        raise InvalidFileError(f"selected sets {path}: {'entries ' + str(bad[:5]) if bad else 'no default_feature_space'} "
                               f"do not hold 1-D non-negative integer index sets keyed 'device/source/metric|finetune'")
    held_bench = str(sets["benchmark"]) if "benchmark" in sets and sets["benchmark"].shape == () else None
    held_seed = int(sets["seed"]) if "seed" in sets and sets["seed"].shape == () else None
    if benchmark is not None and held_bench != benchmark:
        held = f"sets of benchmark {held_bench!r}" if held_bench else "sets that record no benchmark (an older file)"
        raise InvalidFileError(f"selected sets {path} hold {held}, but benchmark {benchmark!r} was asked for; "
                               f"rerun notebook 01 with BENCHMARK = {benchmark!r} to write them")
    if seed is not None and held_seed != seed:
        held = f"seed {held_seed}" if held_seed is not None else "no seed record (an older file)"
        raise InvalidFileError(f"selected sets {path} were made from benchmark {held_bench!r} with {held}, but "
                               f"seed {seed} was asked for; rerun notebook 01 with that seed to write them")
    return sets
