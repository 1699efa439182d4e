"""Benchmark v2: 48 fine-grained classes at 48 x 48 px, cluttered scenes, eight devices.

v1 (:mod:`vitprune_lite.data`) is too easy to separate pruning methods: a 12-class shape task
that a 1.2 M-parameter ViT solves at 96-99 %. v2 keeps v1's design ideas - shapes rendered in
camera styles, a public pool beside private device tasks, one random stream per split, the same
seed giving the same bytes - and makes the task need more than a glance:

- **Classes** (48) are a shape family x a fill. Six families with clearly different
  silhouettes (disk, square, triangle, plus, star, crescent), each drawn in one of eight fills:
  ``solid``, ``hollow`` (an outline), ``h_stripes``, ``v_stripes``, ``diagonal`` (stripes at
  45 degrees), ``checkered``, ``dotted`` and ``rings`` (concentric), at a period of 5-7 px.
  Telling diagonal stripes from a checkerboard, or dots from rings, is the kind of fine attribute
  that blur, pixelation, motion and noise destroy first - so which attributes survive depends on
  the device's camera.
- **Scenes** are harder than v1's: a textured background (smooth colour noise), up to two
  small solid distractor shapes behind the object, and a thin bar that occludes part of it in
  30 % of the images; position, size, colours and a rotation of up to +-20 degrees vary per
  image (small enough that horizontal, vertical and diagonal stripes stay different classes).
- **Styles** (8): v1's ``clean``, ``lowlight``, ``noise``, ``blur`` and ``colorshift``, plus
  ``haze`` (low contrast, lifted blacks), ``motion`` (a horizontal or vertical smear) and
  ``pixelate`` (2 x 2 blocks).
- **Devices** (8), each owning 10 of the 48 classes in its own style mix, chosen so that what
  matters differs: one device separates fills on one shape, another shapes drawn solid or
  hollow, another stripe directions under motion blur. The TAP-ViTs authors' code gives each
  device 20 of 200 classes; 10 of 48 keeps a similar share. Private train and test splits
  (1,000 images each, so that a device's accuracy carries a 95 % interval of about +-1.9
  points at 90 %, and the mean over eight devices about +-0.7) come from their own random
  streams and never enter the public pool.

The design was tuned by how fast a small proxy ViT learns it (``python -m
vitprune_lite.benchmarks.benchmark_v2 --only-difficulty``): a first version with twelve
families that differ in subtle details (hexagon against disk, square against diamond under full
rotation) stayed near chance after 300 steps, while v1's classes reached 91 %.

Labels are global (``family * 8 + fill``), so one 48-way model serves every task. The containers
(:class:`~vitprune_lite.data.ImageSet`, :class:`~vitprune_lite.data.Benchmark`), the per-split
streams and the cache format are shared with v1.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .data import Benchmark, DeviceSpec, ImageSet, _check_specs, _device_key, _draw, _fingerprint, _stream, cached

#: Bumped whenever the rendered bytes for a given seed change; recorded with every checkpoint
#: ("2.1": the redesigned families and fills; "2", the first design, was never shipped).
GENERATOR_VERSION = "2.1"

FAMILIES: tuple[str, ...] = ("disk", "square", "triangle", "plus", "star", "crescent")
FILLS: tuple[str, ...] = ("solid", "hollow", "h_stripes", "v_stripes", "diagonal", "checkered", "dotted", "rings")
CLASSES: tuple[str, ...] = tuple(f"{f}/{t}" for f in FAMILIES for t in FILLS)
STYLES: tuple[str, ...] = ("clean", "lowlight", "noise", "blur", "colorshift", "haze", "motion", "pixelate")

IMAGE_SIZE = 48


def label(family: str, fill: str) -> int:
    """The global class index of ``family/fill``."""
    return FAMILIES.index(family) * len(FILLS) + FILLS.index(fill)


def _classes(pairs: str) -> tuple[int, ...]:
    """``"disk:solid,striped; star:hollow"`` -> class indices (a compact way to write a task)."""
    out = []
    for group in pairs.split(";"):
        family, fills = group.strip().split(":")
        out += [label(family.strip(), f.strip()) for f in fills.split(",")]
    return tuple(out)


DEVICES: tuple[DeviceSpec, ...] = (
    # round shapes in the dark: low light and noise bury fine textures
    DeviceSpec("night_cam", _classes("disk:solid,hollow,h_stripes,checkered,dotted; "
                                     "crescent:solid,hollow,h_stripes,checkered,dotted"),
               {"lowlight": 0.6, "noise": 0.4}, n_train=1000, n_test=1000),
    # stripes through blur and motion: stripes along the smear survive, across it they vanish
    DeviceSpec("drone", _classes("square:h_stripes,v_stripes,diagonal,checkered,solid; "
                                 "triangle:h_stripes,v_stripes,diagonal,checkered,solid"),
               {"blur": 0.4, "motion": 0.4, "clean": 0.2}, n_train=1000, n_test=1000),
    # every fill on one shape, with swapped colours and noise: a texture task
    DeviceSpec("factory", _classes("plus:solid,hollow,h_stripes,v_stripes,diagonal,checkered,dotted,rings; "
                                   "star:solid,hollow"),
               {"colorshift": 0.6, "noise": 0.4}, n_train=1000, n_test=1000),
    # solid and hollow shapes, mostly clean: a shape task, textures never matter
    DeviceSpec("phone", _classes("disk:solid,hollow; square:solid,hollow; triangle:solid,hollow; "
                                 "plus:solid,hollow; star:solid; crescent:solid"),
               {"clean": 0.5, "blur": 0.25, "colorshift": 0.25}, n_train=1000, n_test=1000),
    # dots against rings and checks through haze and motion
    DeviceSpec("dashcam", _classes("disk:dotted,rings,checkered; square:dotted,rings,checkered; "
                                   "star:dotted,rings,checkered,diagonal"),
               {"motion": 0.5, "haze": 0.5}, n_train=1000, n_test=1000),
    # a low-resolution sensor at night
    DeviceSpec("doorbell", _classes("star:solid,hollow,h_stripes,v_stripes,checkered; "
                                    "triangle:solid,hollow,dotted,rings,diagonal"),
               {"pixelate": 0.6, "lowlight": 0.4}, n_train=1000, n_test=1000),
    # fine textures in haze and blur
    DeviceSpec("microscope", _classes("disk:v_stripes,diagonal,rings; crescent:v_stripes,diagonal,rings; "
                                      "plus:dotted,rings; square:diagonal,h_stripes"),
               {"haze": 0.6, "blur": 0.4}, n_train=1000, n_test=1000),
    # outlines and stripes on a noisy, pixelated camera
    DeviceSpec("warehouse", _classes("square:solid,hollow,v_stripes; triangle:hollow,checkered; "
                                     "crescent:hollow,diagonal,dotted; star:v_stripes,checkered"),
               {"noise": 0.5, "pixelate": 0.5}, n_train=1000, n_test=1000),
)

PUBLIC_SPLITS = {"train": 40_000, "val": 2_000, "test": 4_000}


# ----------------------------------------------------------------------------- rendering

def _family_mask(family: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean silhouettes ``[n, S, S]`` of one shape family in shape coordinates (unit radius)."""
    name = FAMILIES[family]
    if name == "disk":
        return u**2 + v**2 < 0.85**2
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if name == "triangle":
        return (v < 0.7) & (np.abs(u) < 0.65 * (v + 0.95))
    if name == "plus":
        return ((np.abs(u) < 0.32) & (np.abs(v) < 0.9)) | ((np.abs(v) < 0.32) & (np.abs(u) < 0.9))
    if name == "star":
        return np.sqrt(u**2 + v**2) < 0.6 + 0.3 * np.cos(5 * np.arctan2(u, -v))
    if name == "crescent":
        return (u**2 + v**2 < 0.9**2) & ((u - 0.45) ** 2 + (v + 0.1) ** 2 > 0.6**2)
    raise ValueError(f"unknown shape family {family}; families are 0..{len(FAMILIES) - 1}")


def _fill_mask(fill: int, u: np.ndarray, v: np.ndarray, freq: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Where a textured fill is lit, ``[n, S, S]``, in shape coordinates (``freq``, ``phase``: ``[n, 1, 1]``).

    ``solid`` and ``hollow`` are lit everywhere (hollow's hole is cut by the caller)."""
    name = FILLS[fill]
    if name in ("solid", "hollow"):
        return np.ones(u.shape, dtype=bool)
    if name == "h_stripes":
        return np.sin(freq * v + phase) > 0
    if name == "v_stripes":
        return np.sin(freq * u + phase) > 0
    if name == "diagonal":
        return np.sin(freq * (u + v) / np.sqrt(2) + phase) > 0
    if name == "checkered":
        return (np.sin(freq * u + phase) > 0) ^ (np.sin(freq * v) > 0)
    if name == "dotted":
        return np.cos(freq * u + phase) + np.cos(freq * v) > 0.8
    if name == "rings":
        return np.sin(freq * np.sqrt(u**2 + v**2) + phase) > 0
    raise ValueError(f"unknown fill {fill}; fills are 0..{len(FILLS) - 1}")


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int, channels: int) -> np.ndarray:
    """Smooth random fields ``[n, size, size, channels]`` in about [-1, 1]: a coarse grid, bilinearly upsampled."""
    coarse = rng.standard_normal((n, cells, cells, channels)).astype(np.float32)
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.minimum(pos.astype(int), cells - 2)
    w = (pos - lo).astype(np.float32)
    interp = np.zeros((size, cells), dtype=np.float32)
    interp[np.arange(size), lo] = 1 - w
    interp[np.arange(size), lo + 1] = w
    rows = np.matmul(interp, coarse.reshape(n, cells, cells * channels)).reshape(n, size, cells, channels)
    return np.matmul(interp, rows.transpose(0, 3, 2, 1)).transpose(0, 3, 2, 1)  # [n, c, x, y] -> [n, y, x, c]


def _box_blur(img: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Mean over ``length`` pixels along ``axis`` (edge padding), via a cumulative sum."""
    pad = [(0, 0)] * img.ndim
    pad[axis] = (length // 2 + 1, length - 1 - length // 2)
    c = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis)
    n = img.shape[axis]
    hi = np.take(c, np.arange(length, length + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / length


def _apply_style(img: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """One camera style on float images ``[n, S, S, 3]`` in [0, 1]."""
    n = len(img)
    if style == "clean":
        return img
    if style == "lowlight":
        gain = rng.uniform(0.15, 0.35, size=(n, 1, 1, 1)).astype(np.float32)
        return img * gain + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.03)
    if style == "noise":
        sigma = rng.uniform(0.10, 0.22, size=(n, 1, 1, 1)).astype(np.float32)
        return img + rng.standard_normal(img.shape, dtype=np.float32) * sigma
    if style == "blur":  # two box passes per axis approximate a Gaussian of sigma ~1.2 px
        for axis in (1, 2):
            img = _box_blur(_box_blur(img, 3, axis), 3, axis)
        return img
    if style == "colorshift":
        perm = np.argsort(rng.random((n, 3)), axis=1)
        shifted = np.take_along_axis(img, perm[:, None, None, :], axis=3)
        return shifted * rng.uniform(0.6, 1.4, size=(n, 1, 1, 3)).astype(np.float32)
    if style == "haze":
        k = rng.uniform(0.35, 0.55, size=(n, 1, 1, 1)).astype(np.float32)
        return img * k + (1 - k) * rng.uniform(0.45, 0.75, size=(n, 1, 1, 1)).astype(np.float32)
    if style == "motion":
        out = np.empty_like(img)
        vertical = rng.random(n) < 0.5
        for axis, sel in ((1, vertical), (2, ~vertical)):
            if sel.any():
                out[sel] = _box_blur(img[sel], 5, axis)
        return out
    if style == "pixelate":
        s = img.shape[1] // 2 * 2
        small = img[:, :s, :s].reshape(n, s // 2, 2, s // 2, 2, 3).mean(axis=(2, 4))
        out = img.copy()
        out[:, :s, :s] = small.repeat(2, axis=1).repeat(2, axis=2)
        return out
    raise ValueError(f"unknown style {style!r}; styles are {STYLES}")


def render(labels: np.ndarray, styles: np.ndarray, rng: np.random.Generator, size: int = IMAGE_SIZE,
           clutter: bool = True, max_rotation: float = 0.35) -> np.ndarray:
    """Render one scene per (label, style) pair.

    Args:
        labels: int ``[n]`` class indices into :data:`CLASSES`.
        styles: int ``[n]`` style indices into :data:`STYLES`.
        rng: the random stream; the same stream state gives the same bytes.
        size: image side in pixels.
        clutter: False leaves out the background texture, the distractors and the occluding bar
            (the same random draws are made, so the objects and styles are unchanged); for
            measuring how much of the task's difficulty the clutter makes.
        max_rotation: objects turn by a uniform angle in [-max_rotation, max_rotation] radians
            (the same draw scaled, so other draws are unchanged).

    Returns:
        uint8 ``[n, size, size, 3]``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    f32 = np.float32
    grid = ((np.arange(size) + 0.5) / size * 2 - 1).astype(f32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    # Every random draw is made for all images up front, so an image's pixels do not depend on
    # how the others are grouped below.
    cx, cy = rng.uniform(-0.2, 0.2, size=(2, n)).astype(f32)
    scale = rng.uniform(0.6, 0.85, size=n).astype(f32)
    theta = (rng.uniform(-1, 1, size=n) * max_rotation).astype(f32)
    period = rng.uniform(5.0, 7.0, size=n).astype(f32) / (size / 2)  # in grid units
    phase = rng.uniform(0, 2 * np.pi, size=n).astype(f32)
    bg = rng.uniform(0.0, 0.35, size=(n, 3)).astype(f32)
    fg = rng.uniform(0.6, 1.0, size=(n, 3)).astype(f32)
    bg_texture = rng.uniform(0.03, 0.15, size=(n, 1, 1, 1)).astype(f32) * clutter
    n_distract = rng.integers(0, 3, size=n) * clutter
    d_family = rng.integers(0, 3, size=(3, n))  # disk, square, triangle
    d_pos = rng.uniform(-0.75, 0.75, size=(3, 2, n)).astype(f32)
    d_scale = rng.uniform(0.12, 0.2, size=(3, n)).astype(f32)
    d_color = rng.uniform(0.3, 0.8, size=(3, n, 3)).astype(f32)
    occlude = (rng.random(n) < 0.3) & clutter
    occ_angle = rng.uniform(0, np.pi, size=n).astype(f32)
    occ_offset = rng.uniform(-0.45, 0.45, size=n).astype(f32)
    occ_width = rng.uniform(0.04, 0.08, size=n).astype(f32)
    occ_color = rng.uniform(0.0, 0.3, size=(n, 3)).astype(f32)

    out = bg[:, None, None, :] + bg_texture * _smooth_noise(rng, n, size, 6, 3)
    for k in range(3):  # distractors sit behind the object
        for fam in range(3):  # disk, square, triangle
            i = np.flatnonzero((k < n_distract) & (d_family[k] == fam))
            dx = (xx[None] - d_pos[k, 0, i, None, None]) / d_scale[k, i, None, None]
            dy = (yy[None] - d_pos[k, 1, i, None, None]) / d_scale[k, i, None, None]
            _paint(out, i, _family_mask(fam, dx, dy), d_color[k, i])

    family, fill = labels // len(FILLS), labels % len(FILLS)
    dim = 0.45 * fg + 0.55 * bg  # the unlit part of a textured fill keeps the silhouette visible
    for fam in np.unique(family):
        i = np.flatnonzero(family == fam)
        c, s = np.cos(theta[i])[:, None, None], np.sin(theta[i])[:, None, None]
        dx = (xx[None] - cx[i, None, None]) / scale[i, None, None]
        dy = (yy[None] - cy[i, None, None]) / scale[i, None, None]
        u, v = c * dx + s * dy, -s * dx + c * dy  # textures live in shape coordinates: they turn with it
        inside = _family_mask(int(fam), u, v)
        lit = inside.copy()
        freq = (2 * np.pi / period[i] * scale[i])[:, None, None]
        for k in np.unique(fill[i]):
            j = fill[i] == k
            lit[j] &= _fill_mask(int(k), u[j], v[j], freq[j], phase[i][j, None, None])
            if FILLS[k] == "hollow":  # the same shape, shrunk, cut out
                hole = _family_mask(int(fam), u[j] / 0.6, v[j] / 0.6)
                inside[j] &= ~hole
                lit[j] &= ~hole
        _paint(out, i, inside & ~lit, dim[i])
        _paint(out, i, lit, fg[i])

    i = np.flatnonzero(occlude)
    ox, oy = np.cos(occ_angle[i])[:, None, None], np.sin(occ_angle[i])[:, None, None]
    dist = (xx[None] - cx[i, None, None]) * ox + (yy[None] - cy[i, None, None]) * oy - occ_offset[i, None, None]
    _paint(out, i, np.abs(dist) < occ_width[i, None, None], occ_color[i])

    for idx, style in enumerate(STYLES):
        i = np.flatnonzero(styles == idx)
        if len(i):
            out[i] = _apply_style(out[i], style, rng)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _paint(out: np.ndarray, idx: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    """Set ``out[idx[b], y, x] = color[b]`` wherever ``mask[b, y, x]`` (``out``: ``[n, S, S, 3]``)."""
    b, y, x = np.nonzero(mask)
    out[idx[b], y, x] = color[b]


def make_benchmark(seed: int = 0, public: Mapping[str, int] | None = None,
                   devices: Sequence[DeviceSpec] = DEVICES, size: int = IMAGE_SIZE,
                   chunk: int = 4096) -> Benchmark:
    """Generate benchmark v2 from a seed (no cache); the same seed gives identical bytes.

    Args:
        seed: the master seed.
        public: split name -> size for the public pool (default :data:`PUBLIC_SPLITS`).
        devices: the device tasks (default :data:`DEVICES`).
        size: image side in pixels (>= 16).
        chunk: images rendered per call (bounds memory; part of the byte-exact recipe).
    """
    public = dict(PUBLIC_SPLITS if public is None else public)
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if not public or min(public.values()) < 1:
        raise ValueError(f"public split sizes must be >= 1, got {public}")
    _check_specs(devices, CLASSES, STYLES)

    def split(name: str, n: int, classes, mix) -> ImageSet:
        rng = _stream(seed, f"v2/{name}")
        parts = [_draw(rng, min(chunk, n - i), classes, mix, size, name, render, STYLES, CLASSES)
                 for i in range(0, n, chunk)]
        return ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                        np.concatenate([p.styles for p in parts]), name, CLASSES)

    uniform = {s: 1.0 for s in STYLES}
    pub = {s: split(f"public/{s}", n, range(len(CLASSES)), uniform) for s, n in public.items()}
    devs = {d.name: {s: split(f"{d.name}/{s}", n, d.classes, d.style_mix)
                     for s, n in (("train", d.n_train), ("test", d.n_test))}
            for d in devices}
    bench = Benchmark(pub, devs, {d.name: d for d in devices}, seed, GENERATOR_VERSION, CLASSES, STYLES)
    bench.fingerprint = _fingerprint(bench)
    return bench


def load_benchmark(seed: int = 0, public: Mapping[str, int] | None = None,
                   devices: Sequence[DeviceSpec] = DEVICES, size: int = IMAGE_SIZE, cache: bool = True) -> Benchmark:
    """Benchmark v2 for ``seed``, from ``data/cache/`` if it was generated before (else generated and cached;
    a damaged cache file is rebuilt with a warning)."""
    key = (seed, sorted((public or PUBLIC_SPLITS).items()), _device_key(devices), size)
    return cached(GENERATOR_VERSION, key, lambda: make_benchmark(seed, public, devices, size), devices, seed,
                  CLASSES, STYLES, cache)
