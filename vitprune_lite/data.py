"""The embedded benchmark: a public image pool and private device tasks, generated, never downloaded.

Why synthetic: pretrained weights and public datasets cannot be fetched on the reference
machines, yet the three papers need a *public* labelled pool (the cloud's data) and several
*devices* whose private tasks differ from it and from each other. This module renders such a
world from a seed, in a couple of seconds, as small RGB images (32 x 32 by default).

Design:

- **Classes** (12) are shapes - disk, ring, square, triangle, plus, cross, horizontal and
  vertical stripes, checkerboard, diamond, two dots, half-disk - drawn at a random position,
  scale and slight rotation, bright on a dark background in random hues, so colour is never a
  cue and the class lives in the shape.
- **Styles** (5) are the "domains" a camera adds: ``clean``, ``lowlight`` (dark and grainy),
  ``noise`` (strong sensor noise), ``blur`` (defocus) and ``colorshift`` (swapped, tinted
  channels).
- The **public pool** holds every class in every style, uniformly, with train/val/test splits.
- Each **device** owns 4 of the 12 classes and its own mix of styles, e.g. a night camera sees
  round shapes in low light and noise, a drone sees stripes and grids through blur. Devices
  overlap only partly in classes and styles, so the units that matter differ from device to
  device: a model pruned for one device should not be the best for another. Private train and
  test splits are drawn from their own random streams and never enter the public pool.

Labels are global (0..11) for every split, so one 12-way model serves all tasks.

Loaders for real data keep the other path working: :func:`load_image_folder` reads a
class-per-subfolder image tree, :func:`load_digits` scikit-learn's bundled handwritten digits.
"""
from __future__ import annotations

import hashlib
import io
import sys
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import paths
from .errors import InputTooLargeError, InvalidFileError, InvalidValueError

#: Bumped whenever the rendered bytes for a given seed change; recorded with every checkpoint.
GENERATOR_VERSION = "1"

CLASSES: tuple[str, ...] = (
    "disk", "ring", "square", "triangle", "plus", "cross",
    "h_stripes", "v_stripes", "checker", "diamond", "two_dots", "half_disk",
)
STYLES: tuple[str, ...] = ("clean", "lowlight", "noise", "blur", "colorshift")
#: Image side in pixels.
IMAGE_SIZE = 32

#: Normalisation used by the models: pixel/255 mapped to [-1, 1].
MEAN, STD = 0.5, 0.5


@dataclass(frozen=True)
class DeviceSpec:
    """One device's private task: which classes it sees, in which styles, how many images."""

    name: str
    classes: tuple[int, ...]
    style_mix: Mapping[str, float]  # style name -> probability (sums to 1)
    n_train: int = 800
    n_test: int = 400


DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec("night_cam", (0, 1, 2, 9), {"lowlight": 0.6, "noise": 0.4}),
    DeviceSpec("drone", (4, 6, 7, 8), {"blur": 0.7, "clean": 0.3}),
    DeviceSpec("factory", (3, 5, 10, 11), {"colorshift": 0.6, "noise": 0.4}),
    DeviceSpec("phone", (0, 3, 6, 10), {"clean": 0.5, "blur": 0.25, "colorshift": 0.25}),
)

PUBLIC_SPLITS = {"train": 12_000, "val": 2_000, "test": 2_000}


@dataclass
class ImageSet:
    """A labelled set of images.

    Attributes:
        images: uint8 ``[N, H, W, 3]``.
        labels: int64 ``[N]``, global class indices.
        styles: int64 ``[N]``, index into :data:`STYLES` (-1 for real data).
        name: where it came from, e.g. ``"public/train"`` or ``"night_cam/test"``.
        classes: class names, indexed by label.
    """

    images: np.ndarray
    labels: np.ndarray
    styles: np.ndarray
    name: str
    classes: tuple[str, ...] = CLASSES

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"{self.name}: images must be uint8 [N, H, W, 3], got "
                             f"{self.images.dtype} {self.images.shape}")
        if len(self.labels) != n or len(self.styles) != n:
            raise ValueError(f"{self.name}: {n} images but {len(self.labels)} labels and "
                             f"{len(self.styles)} styles")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: Sequence[int] | np.ndarray, name: str | None = None) -> "ImageSet":
        """The images at ``idx`` (in that order) as a new set."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(self.images[idx], self.labels[idx], self.styles[idx],
                        name or f"{self.name}[{len(idx)}]", self.classes)

    def tensors(self):
        """``(x, y)``: float32 ``[N, 3, H, W]`` normalised to [-1, 1], and int64 ``[N]``."""
        return to_tensor(self.images), _torch().from_numpy(self.labels.astype(np.int64))


@dataclass
class Benchmark:
    """The whole embedded world: the public pool and every device's private splits."""

    public: dict[str, ImageSet]
    devices: dict[str, dict[str, ImageSet]]
    specs: dict[str, DeviceSpec]
    seed: int
    version: str = GENERATOR_VERSION
    classes: tuple[str, ...] = CLASSES
    styles: tuple[str, ...] = STYLES
    fingerprint: str = field(default="")

    def device(self, name: str) -> dict[str, ImageSet]:
        """The private ``{"train", "test"}`` splits of one device (clear error if unknown)."""
        if name not in self.devices:
            raise KeyError(f"unknown device {name!r}; known devices: {sorted(self.devices)}")
        return self.devices[name]


def _torch():
    import torch

    return torch


def to_tensor(images: np.ndarray):
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, 3, H, W]`` normalised with :data:`MEAN`/:data:`STD`."""
    torch = _torch()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - MEAN) / STD


def to_images(x) -> np.ndarray:
    """Inverse of :func:`to_tensor`, for plotting: ``[N, 3, H, W]`` -> uint8 ``[N, H, W, 3]``."""
    arr = (x.detach().cpu().float() * STD + MEAN).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (arr * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- rendering

def _shape_masks(label: int, u: np.ndarray, v: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Boolean masks ``[n, S, S]`` of one class, in shape coordinates (u right, v down)."""
    r = np.sqrt(u**2 + v**2)
    box = (np.abs(u) < 0.9) & (np.abs(v) < 0.9)
    f = freq[:, None, None]
    if label == 0:
        return r < 0.85
    if label == 1:
        return (r > 0.5) & (r < 0.9)
    if label == 2:
        return np.maximum(np.abs(u), np.abs(v)) < 0.72
    if label == 3:
        return (v < 0.65) & (np.abs(u) < 0.55 * (v + 0.85))
    if label in (4, 5):
        if label == 5:  # the plus turned by 45 degrees
            u, v = (u + v) / np.sqrt(2), (v - u) / np.sqrt(2)
        bar = 0.22
        return ((np.abs(u) < bar) & (np.abs(v) < 0.85)) | ((np.abs(v) < bar) & (np.abs(u) < 0.85))
    if label == 6:
        return box & (np.sin(v * f) > 0)
    if label == 7:
        return box & (np.sin(u * f) > 0)
    if label == 8:
        return box & (np.sin(u * f) * np.sin(v * f) > 0)
    if label == 9:
        return np.abs(u) + np.abs(v) < 0.85
    if label == 10:
        return (np.sqrt((u - 0.45) ** 2 + v**2) < 0.33) | (np.sqrt((u + 0.45) ** 2 + v**2) < 0.33)
    if label == 11:
        return (r < 0.85) & (v > 0)
    raise ValueError(f"unknown class {label}; classes are 0..{len(CLASSES) - 1}")


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``[n, S, S, 3]`` float images (edge padding)."""
    radius = int(np.ceil(2.5 * sigma))
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return out


def _apply_style(img: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one camera style to float images ``[n, S, S, 3]`` in [0, 1]."""
    n = len(img)
    if style == "clean":
        return img
    if style == "lowlight":
        gain = rng.uniform(0.15, 0.35, size=(n, 1, 1, 1))
        return img * gain + rng.normal(0, 0.03, size=img.shape)
    if style == "noise":
        sigma = rng.uniform(0.10, 0.20, size=(n, 1, 1, 1))
        return img + rng.normal(0, 1, size=img.shape) * sigma
    if style == "blur":
        return _blur(img, 1.1)
    if style == "colorshift":
        perm = np.argsort(rng.random((n, 3)), axis=1)
        shifted = np.take_along_axis(img, perm[:, None, None, :], axis=3)
        return shifted * rng.uniform(0.6, 1.4, size=(n, 1, 1, 3))
    raise ValueError(f"unknown style {style!r}; styles are {STYLES}")


def render(labels: np.ndarray, styles: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Render one image per (label, style) pair.

    Args:
        labels: int ``[n]`` class indices.
        styles: int ``[n]`` style indices into :data:`STYLES`.
        rng: the random stream; the same stream state gives the same bytes.
        size: image side in pixels.

    Returns:
        uint8 ``[n, size, size, 3]``.
    """
    n = len(labels)
    grid = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    # Geometry and colours are drawn for every image up front, so each image's draw does
    # not depend on how the others are grouped below.
    cx, cy = rng.uniform(-0.22, 0.22, size=(2, n))
    scale = rng.uniform(0.55, 0.85, size=n)
    theta = rng.uniform(-0.26, 0.26, size=n)  # +-15 degrees keeps square and diamond apart
    freq = rng.uniform(7.0, 11.0, size=n)
    # Dark background, bright foreground, random hues: colour says nothing about the class,
    # while the shape stays a clear light/dark pattern for the camera styles to degrade.
    bg = rng.uniform(0.0, 0.35, size=(n, 3))
    fg = rng.uniform(0.65, 1.0, size=(n, 3))
    texture = rng.normal(0, 0.04, size=(n, size, size, 1))

    out = np.empty((n, size, size, 3), dtype=np.float64)
    for label in np.unique(labels):
        i = np.flatnonzero(labels == label)
        c, s = np.cos(theta[i])[:, None, None], np.sin(theta[i])[:, None, None]
        dx = (xx[None] - cx[i, None, None]) / scale[i, None, None]
        dy = (yy[None] - cy[i, None, None]) / scale[i, None, None]
        u, v = c * dx + s * dy, -s * dx + c * dy
        m = _shape_masks(int(label), u, v, freq[i])[..., None]
        out[i] = np.where(m, fg[i, None, None, :], bg[i, None, None, :])
    out += texture
    for k, style in enumerate(STYLES):
        i = np.flatnonzero(styles == k)
        if len(i):
            out[i] = _apply_style(out[i], style, rng)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _draw(rng: np.random.Generator, n: int, classes: Sequence[int], style_mix: Mapping[str, float],
          size: int, name: str, renderer: Callable = None, styles: tuple[str, ...] = STYLES,
          class_names: tuple[str, ...] = CLASSES) -> ImageSet:
    """``n`` labelled images of ``classes`` in ``style_mix`` (``renderer``: a version's ``render``, default v1's)."""
    names = list(style_mix)
    probs = np.array([style_mix[s] for s in names], dtype=np.float64)
    style_idx = np.array([styles.index(s) for s in names])
    labels = rng.choice(np.asarray(classes), size=n)
    drawn = style_idx[rng.choice(len(names), size=n, p=probs / probs.sum())]
    return ImageSet((renderer or render)(labels, drawn, rng, size), labels.astype(np.int64), drawn.astype(np.int64),
                    name, class_names)


def _check_specs(devices: Sequence[DeviceSpec], classes: tuple[str, ...] = CLASSES,
                 styles: tuple[str, ...] = STYLES) -> None:
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ValueError(f"device names must be unique, got {names}")
    for d in devices:
        bad_c = [c for c in d.classes if not 0 <= c < len(classes)]
        bad_s = [s for s in d.style_mix if s not in styles]
        if not d.classes or bad_c:
            raise ValueError(f"device {d.name!r}: classes must be a non-empty subset of 0..{len(classes) - 1}, got {d.classes}")
        if not d.style_mix or bad_s or min(d.style_mix.values()) < 0:
            raise ValueError(f"device {d.name!r}: style_mix must map some of {styles} to probabilities >= 0, got {dict(d.style_mix)}")
        if d.n_train < 1 or d.n_test < 1:
            raise ValueError(f"device {d.name!r}: n_train and n_test must be >= 1")


def _stream(seed: int, name: str) -> np.random.Generator:
    # Each split's stream is keyed by its name, not by its position, so adding a device or
    # resizing a split leaves every other split's bytes unchanged.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),)))


def make_benchmark(seed: int = 0, public: Mapping[str, int] | None = None,
                   devices: Sequence[DeviceSpec] = DEVICES, size: int = 32) -> Benchmark:
    """Generate the benchmark from a seed (no cache).

    Every split draws from its own stream, keyed by the seed and the split's name, so changing
    one split's size never changes another split's images, and private splits never share a
    stream with the public pool.

    Args:
        seed: the master seed; the same seed gives identical bytes.
        public: split name -> size for the public pool (default :data:`PUBLIC_SPLITS`).
        devices: the device tasks (default :data:`DEVICES`).
        size: image side in pixels (>= 8).
    """
    public = _check_args(seed, public, devices, size)
    all_classes = range(len(CLASSES))
    uniform = {s: 1.0 for s in STYLES}
    pub = {split: _draw(_stream(seed, f"public/{split}"), n, all_classes, uniform, size, f"public/{split}")
           for split, n in public.items()}
    devs = {d.name: {split: _draw(_stream(seed, f"{d.name}/{split}"), n, d.classes, d.style_mix, size,
                                  f"{d.name}/{split}")
                     for split, n in (("train", d.n_train), ("test", d.n_test))}
            for d in devices}
    bench = Benchmark(pub, devs, {d.name: d for d in devices}, seed)
    bench.fingerprint = _fingerprint(bench)
    return bench


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _check_args(seed, public, devices, size) -> dict[str, int]:
    """Validate :func:`make_benchmark`'s arguments; return the public split sizes."""
    if not _is_int(seed) or seed < 0:
        raise InvalidValueError(f"seed = {seed!r}: accepted an integer >= 0")
    if not _is_int(size) or not 8 <= size <= 512:
        raise InvalidValueError(f"size = {size!r}: accepted an integer number of pixels in 8..512")
    public = dict(PUBLIC_SPLITS if public is None else public)
    if not public or any(not _is_int(n) or not 1 <= n <= 1_000_000 for n in public.values()):
        raise InvalidValueError(f"public split sizes must be integers in 1..1000000, got {public}")
    if isinstance(devices, DeviceSpec) or not all(isinstance(d, DeviceSpec) for d in devices):
        raise InvalidValueError(f"devices must be a sequence of DeviceSpec, got {devices!r}")
    for d in devices:
        if not _is_int(d.n_train) or not _is_int(d.n_test) or not (1 <= d.n_train <= 1_000_000 and 1 <= d.n_test <= 1_000_000):
            raise InvalidValueError(f"device {d.name!r}: n_train and n_test must be integers in 1..1000000, "
                                    f"got {d.n_train!r} and {d.n_test!r}")
    _check_specs(devices)
    return public


def _fingerprint(bench: Benchmark) -> str:
    h = hashlib.sha256()
    for s in [*bench.public.values(), *(x for d in bench.devices.values() for x in d.values())]:
        h.update(s.name.encode())
        h.update(s.images.tobytes())
        h.update(s.labels.tobytes())
    return h.hexdigest()[:16]


def load_benchmark(seed: int = 0, public: Mapping[str, int] | None = None,
                   devices: Sequence[DeviceSpec] = DEVICES, size: int = 32, cache: bool = True) -> Benchmark:
    """The benchmark for ``seed``, from ``data/cache/`` if it was generated before.

    The cache file name carries the generator version and a hash of every argument, so a stale
    or foreign cache is never read. A damaged cache file (truncated, empty, corrupted, or not
    matching its fingerprint) is regenerated and rewritten, with a warning naming it; if the
    rewrite fails (e.g. a read-only folder), the generated benchmark is still returned, with a
    warning saying why the cache could not be written.
    """
    _check_args(seed, public, devices, size)
    return cached(GENERATOR_VERSION, (seed, sorted((public or PUBLIC_SPLITS).items()), _device_key(devices), size),
                  lambda: make_benchmark(seed, public, devices, size), devices, seed, CLASSES, STYLES, cache)


#: The embedded benchmarks by name: ``"v1"`` (this module) and ``"v2"`` (:mod:`vitprune_lite.data_v2`).
BENCHMARK_NAMES = ("v1", "v2")
#: The benchmark every notebook, experiment and command uses unless told otherwise.
DEFAULT_BENCHMARK = "v2"


def benchmark_module(name: str):
    """The module that generates benchmark ``name`` (``"v1"``: this one, ``"v2"``: :mod:`~vitprune_lite.data_v2`).

    Both offer the same interface: ``load_benchmark``, ``make_benchmark``, ``render``, ``CLASSES``,
    ``STYLES``, ``DEVICES``, ``PUBLIC_SPLITS``, ``GENERATOR_VERSION`` and ``IMAGE_SIZE``.
    """
    if name == "v1":
        return sys.modules[__name__]
    if name == "v2":
        from . import data_v2

        return data_v2
    raise InvalidValueError(f"benchmark {name!r}: accepted {BENCHMARK_NAMES}")


def _device_key(devices: Sequence[DeviceSpec]) -> list:
    return [(d.name, d.classes, sorted(d.style_mix.items()), d.n_train, d.n_test) for d in devices]


def cached(version: str, key: Any, build: Callable[[], Benchmark], devices: Sequence[DeviceSpec], seed: int,
           classes: tuple[str, ...], styles: tuple[str, ...], cache: bool = True) -> Benchmark:
    """A benchmark from ``data/cache/``, or ``build()`` and cached there (shared by every generator version).

    The cache file name carries the generator ``version`` and a hash of ``key`` (every argument
    of the generator), so a stale or foreign cache is never read. A damaged file is rebuilt with
    a :class:`CacheWarning` naming it.
    """
    path = paths.cache_dir() / f"benchmark-v{version}-{hashlib.sha256(repr((version, *key)).encode()).hexdigest()[:12]}.npz"
    if cache and path.exists():
        try:
            return _load_npz(path, devices, seed, version, classes, styles)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            warnings.warn(f"benchmark cache {path} is damaged ({type(err).__name__}: {err}); rebuilding it",
                          CacheWarning, stacklevel=3)
    bench = build()
    if cache:
        try:
            _save_npz(path, bench)
        except OSError as err:
            warnings.warn(f"could not write the benchmark cache {path} ({err}); using the benchmark generated "
                          f"in memory. Check that {path.parent} is writable and has free space", CacheWarning,
                          stacklevel=3)
    return bench


class CacheWarning(UserWarning):
    """The benchmark cache was damaged (and is rebuilt) or could not be written."""


def _save_npz(path: Path, bench: Benchmark) -> None:
    arrays = {}
    for split in [*bench.public.values(), *(x for d in bench.devices.values() for x in d.values())]:
        arrays[f"{split.name}|images"] = split.images
        arrays[f"{split.name}|labels"] = split.labels
        arrays[f"{split.name}|styles"] = split.styles
    arrays["fingerprint"] = np.array(bench.fingerprint)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    paths.write_bytes_atomic(path, buf.getvalue())


def _load_npz(path: Path, devices: Sequence[DeviceSpec], seed: int, version: str = GENERATOR_VERSION,
              classes: tuple[str, ...] = CLASSES, styles: tuple[str, ...] = STYLES) -> Benchmark:
    if path.stat().st_size == 0:
        raise InvalidFileError(f"cache {path} is empty")
    with np.load(path, allow_pickle=False) as z:
        sets = {}
        for key in z.files:
            if key.endswith("|images"):
                name = key[: -len("|images")]
                sets[name] = ImageSet(z[key], z[f"{name}|labels"], z[f"{name}|styles"], name, classes)
        fp = str(z["fingerprint"])
    pub = {n.split("/", 1)[1]: s for n, s in sets.items() if n.startswith("public/")}
    devs = {d.name: {"train": sets[f"{d.name}/train"], "test": sets[f"{d.name}/test"]} for d in devices}
    bench = Benchmark(pub, devs, {d.name: d for d in devices}, seed, version, classes, styles, fingerprint=fp)
    if _fingerprint(bench) != fp:
        raise ValueError(f"cache {path} does not match its fingerprint")
    return bench


# ----------------------------------------------------------------------------- real data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
#: Largest image :func:`load_image_folder` decodes (checked from the file header first).
MAX_IMAGE_PIXELS = 1 << 26


def load_image_folder(root: str | Path, size: int = 32, max_per_class: int | None = None) -> ImageSet:
    """Read a class-per-subfolder image tree (``root/<class>/<image>``) into an :class:`ImageSet`.

    Images are converted to RGB and resized (bilinear) to ``size x size``; classes are the
    sorted subfolder names; files are read in sorted order, so the result is deterministic.
    Hidden files are ignored; other files without an image suffix are skipped with a warning
    naming them.

    Args:
        root: the folder.
        size: image side in pixels after resizing, 8..1024 (use the model's ``img_size``).
        max_per_class: read at most this many images per class (an integer >= 1), or None for all.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        InvalidValueError: ``size`` or ``max_per_class`` outside what is accepted.
        InvalidFileError: a file with an image suffix that cannot be decoded (named), no images at all.
    """
    from PIL import Image, UnidentifiedImageError

    if not _is_int(size) or not 8 <= size <= 1024:
        raise InvalidValueError(f"size = {size!r}: accepted an integer number of pixels in 8..1024")
    if max_per_class is not None and (not _is_int(max_per_class) or max_per_class < 1):
        raise InvalidValueError(f"max_per_class = {max_per_class!r}: accepted an integer >= 1, or None for all images")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected root/<class>/<image> files")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise ValueError(f"{root} has no class subfolders; expected root/<class>/<image> with {IMAGE_SUFFIXES}")
    images, labels, skipped = [], [], []
    for label, d in enumerate(class_dirs):
        entries = sorted(f for f in d.iterdir() if not f.name.startswith("."))
        skipped += [f for f in entries if f.is_file() and f.suffix.lower() not in IMAGE_SUFFIXES]
        files = [f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES][:max_per_class]
        for f in files:
            try:
                with Image.open(f) as im:  # reads the header only: the size is known before decoding
                    if im.width * im.height > MAX_IMAGE_PIXELS:
                        raise InputTooLargeError(f"image file {f} is {im.width}x{im.height} pixels; at most "
                                                 f"{MAX_IMAGE_PIXELS} pixels per image are decoded")
                    images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
            except InputTooLargeError:
                raise
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
                raise InvalidFileError(f"image file {f} cannot be read as an image ({type(err).__name__}: {err}); "
                                       f"remove it or replace it with a valid {'/'.join(IMAGE_SUFFIXES)} file") from None
            labels.append(label)
    if skipped:
        names = ", ".join(str(f) for f in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} file(s) without an image suffix {IMAGE_SUFFIXES}: {names}", stacklevel=2)
    if not images:
        raise InvalidFileError(f"{root} holds no images with suffixes {IMAGE_SUFFIXES}; expected root/<class>/<image>")
    return ImageSet(np.stack(images).astype(np.uint8), np.array(labels, dtype=np.int64),
                    np.full(len(labels), -1, dtype=np.int64), f"folder:{root.name}",
                    tuple(d.name for d in class_dirs))


def load_digits(size: int = 32) -> ImageSet:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), as RGB ``size x size``."""
    from PIL import Image
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    gray = (d.images / 16.0 * 255).round().astype(np.uint8)
    imgs = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in gray])
    rgb = np.repeat(imgs[..., None], 3, axis=-1)
    return ImageSet(rgb, d.target.astype(np.int64), np.full(len(rgb), -1, dtype=np.int64), "sklearn:digits",
                    tuple(str(i) for i in range(10)))
