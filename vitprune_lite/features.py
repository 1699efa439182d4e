"""Frozen feature extractors: the spaces in which a device summarises its private images.

TAP-ViTs has each device embed its private images with a small frozen extractor and fit a
Gaussian mixture in that space; the cloud embeds its public pool with the *same* extractor and
scores it under the mixture. Two extractors and their combination are offered here:

- :class:`ViTCls` - the base model's class token after the final LayerNorm (one vector of the
  model's width), projected to a few whitened principal components. Strong on classes (the
  model was trained to separate them) and nearly blind to camera style (it was trained to
  ignore it); the device must run the whole base model.
- :class:`PixelStats` - hand-made statistics a small device computes in well under a
  millisecond per image: oriented gradient histograms over a 2 x 2 grid and lagged
  autocorrelations (shape), brightness, contrast, noise, sharpness and colour statistics
  (camera style), projected the same way.
- :class:`Concat` - the leading components of several extractors side by side.

Both projections (standardisation + PCA with whitening) are fitted on **public** images only,
so the extractor itself carries nothing private. Every extractor has a ``name`` (the feature
space, e.g. ``"vit_cls"``) and a ``version`` that hashes its fitted state (and the model's
weights for :class:`ViTCls`): an upload records both, and the cloud refuses to score an upload
against features from another space or another fit.

All extractors map uint8 images ``[N, H, W, 3]`` to float64 features ``[N, dim]``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

#: Bumped when the feature definitions change (part of every extractor's version string).
FEATURES_VERSION = "1"


@dataclass(frozen=True)
class FeatureSpace:
    """Identity of a fitted feature space: what an upload records and the cloud checks.

    Attributes:
        name: the space, e.g. ``"vit_cls"`` or ``"pixel_stats"``.
        version: ``"<FEATURES_VERSION>-<hash of the fitted state>"``; differs between fits.
        dim: feature dimension.
    """

    name: str
    version: str
    dim: int


def _check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{what} is empty; need at least one image")
    return images


class Projection:
    """Standardise, then project onto the leading principal components, whitened.

    Fitted with a deterministic SVD; each component's sign is fixed so that its largest-magnitude
    loading is positive, so the same data always gives the same projection.
    """

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        self.dim = int(dim)
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.components: np.ndarray | None = None  # [dim, raw_dim]
        self.sdev: np.ndarray | None = None         # [dim], std of each component on the fit data

    def fit(self, raw: np.ndarray) -> "Projection":
        """Fit on raw features ``[N, R]`` (N > dim, R >= dim, all finite)."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or not np.isfinite(raw).all():
            raise ValueError(f"raw features must be a finite 2-D array, got shape {raw.shape}")
        if raw.shape[1] < self.dim or raw.shape[0] <= self.dim:
            raise ValueError(f"cannot keep {self.dim} components from {raw.shape[0]} samples of "
                             f"{raw.shape[1]} features; need more samples than components and "
                             f"at least as many features")
        self.mean = raw.mean(0)
        self.scale = raw.std(0) + 1e-8  # constant features stay finite (and carry no weight)
        z = (raw - self.mean) / self.scale
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        vt = vt[: self.dim]
        signs = np.sign(vt[np.arange(self.dim), np.abs(vt).argmax(1)])
        self.components = vt * signs[:, None]
        self.sdev = s[: self.dim] / np.sqrt(len(raw)) + 1e-12
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Raw features ``[N, R]`` -> whitened components ``[N, dim]`` (unit variance on the fit data)."""
        if self.components is None:
            raise RuntimeError("projection is not fitted; call fit() on public features first")
        z = (np.asarray(raw, dtype=np.float64) - self.mean) / self.scale
        return z @ self.components.T / self.sdev

    def digest(self) -> str:
        """Short hash of the fitted state."""
        h = hashlib.sha256()
        for a in (self.mean, self.scale, self.components, self.sdev):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()[:10]


class _Extractor:
    """Common part: raw features -> fitted projection; identity as a :class:`FeatureSpace`."""

    name = "?"

    def __init__(self, dim: int) -> None:
        self.projection = Projection(dim)
        self._tag = ""

    @property
    def dim(self) -> int:
        return self.projection.dim

    @property
    def fitted(self) -> bool:
        return self.projection.components is not None

    @property
    def space(self) -> FeatureSpace:
        """The fitted space's identity (name, version, dim)."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: not fitted; call fit(public_images) first")
        return FeatureSpace(self.name, f"{FEATURES_VERSION}-{self._tag}{self.projection.digest()}", self.dim)

    @property
    def version(self) -> str:
        return self.space.version

    def raw(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def fit(self, public_images: np.ndarray) -> "_Extractor":
        """Fit the projection on PUBLIC images ``[N, H, W, 3]`` uint8; returns self."""
        self.fit_transform(public_images)
        return self

    def fit_transform(self, public_images: np.ndarray) -> np.ndarray:
        """Fit on PUBLIC images and return their features ``[N, dim]`` (one pass over them)."""
        raw = self.raw(_check_images(public_images, "public_images"))
        self.projection.fit(raw)
        return self.projection.transform(raw)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of uint8 images ``[N, H, W, 3]`` -> float64 ``[N, dim]``."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: not fitted; call fit(public_images) first")
        return self.projection.transform(self.raw(_check_images(images)))


# ----------------------------------------------------------------------------- pixel statistics

def _orientation_histograms(g: np.ndarray, bins: int = 8, grid: int = 2) -> np.ndarray:
    """Magnitude-weighted histograms of unsigned gradient orientation, per cell of a grid x grid split.

    Args:
        g: ``[N, H, W]`` grey images. Integer input (e.g. summed channels) keeps the gradients
            exact, so an image and its negative land in exactly the same bins; scale does not
            matter (each histogram is normalised).

    Returns:
        ``[N, grid * grid * bins]``, each image's histograms summing to 1.
    """
    g = np.asarray(g)
    gy = np.zeros(g.shape, dtype=np.int64 if np.issubdtype(g.dtype, np.integer) else np.float64)
    gx = np.zeros_like(gy)
    gy[:, 1:-1] = g[:, 2:].astype(gy.dtype) - g[:, :-2]
    gx[:, :, 1:-1] = g[:, :, 2:].astype(gy.dtype) - g[:, :, :-2]
    mag = np.hypot(gx, gy)
    # Unsigned orientation: a shape's edge has the same direction whichever side is brighter.
    # Flipping each vector into the upper half-plane (rather than taking the angle modulo pi)
    # keeps exact bin edges, common with integer pixels, in the same bin for both polarities.
    flip = (gy < 0) | ((gy == 0) & (gx < 0))
    ang = np.arctan2(np.where(flip, -gy, gy), np.where(flip, -gx, gx))
    idx = np.minimum((ang / np.pi * bins).astype(np.int64), bins - 1)
    n, h, w = g.shape
    cell_r = (np.arange(h) * grid // h)[:, None]
    cell_c = (np.arange(w) * grid // w)[None, :]
    cell = (cell_r * grid + cell_c)[None]  # [1, H, W]
    flat = (cell * bins + idx).reshape(n, -1) + (np.arange(n) * grid * grid * bins)[:, None]
    hist = np.bincount(flat.ravel(), weights=mag.reshape(n, -1).ravel(), minlength=n * grid * grid * bins)
    hist = hist.reshape(n, grid * grid * bins)
    return hist / (hist.sum(1, keepdims=True) + 1e-8)


def _autocorrelations(z: np.ndarray, lags: tuple[int, ...] = (1, 2, 3, 4)) -> np.ndarray:
    """Horizontal and vertical autocorrelation of zero-mean unit-variance images ``[N, H, W]``."""
    out = []
    for lag in lags:
        out.append((z[:, :, lag:] * z[:, :, :-lag]).mean((1, 2)))
        out.append((z[:, lag:, :] * z[:, :-lag, :]).mean((1, 2)))
    return np.stack(out, 1)


def pixel_statistics(images: np.ndarray) -> np.ndarray:
    """Raw hand-made statistics of uint8 images ``[N, H, W, 3]`` -> float64 ``[N, 58]``.

    Shape (colour- and contrast-invariant): 2 x 2 x 8 oriented-gradient histogram (32), lagged
    autocorrelations at lags 1-4 in both directions (8). Style: brightness mean/std and its
    5/50/95th percentiles (5), per-channel mean and std (6), saturation mean (1), noise (mean
    absolute Laplacian, raw and relative to contrast; 2), sharpness (mean gradient relative to
    contrast; 1), pairwise channel correlations (3).
    """
    images = _check_images(images)
    x = images.astype(np.float64) / 255.0
    g = x.mean(-1)
    mu = g.mean((1, 2), keepdims=True)
    sd = g.std((1, 2), keepdims=True)
    z = (g - mu) / (sd + 1e-3)
    hog = _orientation_histograms(images.sum(-1, dtype=np.int64))
    ac = _autocorrelations(z)
    flat = g.reshape(len(g), -1)
    pct = np.percentile(flat, [5, 50, 95], axis=1).T
    ch_mean = x.mean((1, 2))
    ch_std = x.std((1, 2))
    sat = (x.max(-1) - x.min(-1)).mean((1, 2))
    lap = np.abs(4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:])
    noise = lap.mean((1, 2))
    grad = np.abs(np.diff(g, axis=1)).mean((1, 2)) + np.abs(np.diff(g, axis=2)).mean((1, 2))
    s = sd[:, 0, 0] + 1e-3
    xc = (x - ch_mean[:, None, None, :]).reshape(len(x), -1, 3)
    cov = np.einsum("npi,npj->nij", xc, xc) / xc.shape[1]
    d = np.sqrt(np.einsum("nii->ni", cov)) + 1e-6
    corr = cov / (d[:, :, None] * d[:, None, :])
    style = np.column_stack([mu[:, 0, 0], sd[:, 0, 0], pct, ch_mean, ch_std, sat, noise, noise / s,
                             grad / s, corr[:, 0, 1], corr[:, 0, 2], corr[:, 1, 2]])
    return np.concatenate([hog, ac, style], 1)


class PixelStats(_Extractor):
    """The cheap device-side extractor: :func:`pixel_statistics` -> PCA (fitted on public images).

    Args:
        dim: number of whitened principal components kept (default 16).
        chunk: images per vectorised chunk (bounds memory, not results).
    """

    name = "pixel_stats"

    def __init__(self, dim: int = 16, chunk: int = 2048) -> None:
        super().__init__(dim)
        self.chunk = int(chunk)

    def raw(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([pixel_statistics(images[i:i + self.chunk])
                               for i in range(0, len(images), self.chunk)])


# ----------------------------------------------------------------------------- ViT class token

def model_digest(model) -> str:
    """Short sha256 of a torch module's state dict (names, shapes and bytes), for version strings."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:10]


class ViTCls(_Extractor):
    """The base model's class token (after the final norm) -> PCA (fitted on public images).

    Args:
        model: a timm ``VisionTransformer`` with a class token (the base model), kept frozen in
            eval mode; its weights' hash enters the version string.
        dim: number of whitened principal components kept (default 16).
        batch_size: images per forward pass (per-image results do not depend on it; default
            :data:`vitprune_lite.measure.EVAL_BATCH`).
    """

    name = "vit_cls"

    def __init__(self, model, dim: int = 16, batch_size: int | None = None) -> None:
        super().__init__(dim)
        from . import measure, vit  # torch only where a model is used: the device side may not need it
        from .errors import UnsupportedModelError

        batch_size = measure.EVAL_BATCH if batch_size is None else batch_size

        if getattr(model, "cls_token", None) is None:
            raise UnsupportedModelError(f"features.ViTCls: model {type(model).__name__} has no class token; "
                                        "accepted: a timm VisionTransformer with a class token "
                                        "(e.g. models.load_base_model()[0])")
        vit.require_vit(model, "features.ViTCls")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model = model.eval()
        self.batch_size = batch_size
        self._tag = model_digest(model) + "-"

    def raw(self, images: np.ndarray) -> np.ndarray:
        """Class-token features ``[N, embed_dim]`` of uint8 images ``[N, H, W, 3]``."""
        import torch

        from .data import to_tensor

        size = tuple(getattr(getattr(self.model, "patch_embed", None), "img_size", None) or ())
        if size and tuple(images.shape[1:3]) != size:
            from .errors import InvalidValueError

            raise InvalidValueError(f"images are {images.shape[1]}x{images.shape[2]} pixels but the model takes "
                                    f"{size[0]}x{size[1]}; resize them (e.g. data.load_image_folder(..., size={size[0]}))")
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                tokens = self.model.forward_features(to_tensor(images[i:i + self.batch_size]))
                out.append(tokens[:, 0].double().numpy())
        return np.concatenate(out)


# ----------------------------------------------------------------------------- combinations

class Concat:
    """Several fitted extractors side by side: the leading ``keep`` components of each.

    The class token knows the shape but is nearly blind to camera style (the base model was
    trained to ignore it); pixel statistics see style well and shape less well. A device task is
    both, so their concatenation is offered as a third space.

    Args:
        parts: fitted extractors (e.g. ``[ViTCls(...), PixelStats(...)]``).
        keep: leading principal components taken from each part (<= each part's ``dim``).
        name: the space's name (default ``"combined"``).
    """

    def __init__(self, parts, keep: int, name: str = "combined") -> None:
        parts = list(parts)
        if not parts or not all(isinstance(p, _Extractor) for p in parts):
            raise ValueError("parts must be a non-empty list of extractors from this module")
        if not isinstance(keep, (int, np.integer)) or not 1 <= keep <= min(p.dim for p in parts):
            raise ValueError(f"keep must be an integer in 1..{min(p.dim for p in parts)} (the smallest part's dim), got {keep!r}")
        self.parts, self.keep, self.name = parts, int(keep), name

    @property
    def dim(self) -> int:
        return self.keep * len(self.parts)

    @property
    def space(self) -> FeatureSpace:
        """Identity: the name, and a hash of the parts' versions and ``keep``."""
        tag = hashlib.sha256("|".join([str(self.keep)] + [p.version for p in self.parts]).encode()).hexdigest()[:10]
        return FeatureSpace(self.name, f"{FEATURES_VERSION}-{tag}", self.dim)

    @property
    def version(self) -> str:
        return self.space.version

    def combine(self, part_features) -> np.ndarray:
        """Join features already computed by each part (``[N, part.dim]`` each, in part order) -> ``[N, dim]``.

        Lets a caller that holds every part's features build the combined ones without a second
        pass over the images; :meth:`__call__` goes through here too.
        """
        part_features = list(part_features)
        if len(part_features) != len(self.parts):
            raise ValueError(f"need features from {len(self.parts)} parts, got {len(part_features)}")
        for p, f in zip(self.parts, part_features):
            if np.ndim(f) != 2 or np.shape(f)[1] != p.dim:
                raise ValueError(f"features of part {p.name!r} must be [N, {p.dim}], got {np.shape(f)}")
        if len({len(f) for f in part_features}) != 1:
            raise ValueError("every part's features must cover the same images")
        return np.concatenate([np.asarray(f, dtype=np.float64)[:, :self.keep] for f in part_features], 1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of uint8 images ``[N, H, W, 3]`` -> float64 ``[N, dim]``."""
        return self.combine([p(images) for p in self.parts])
