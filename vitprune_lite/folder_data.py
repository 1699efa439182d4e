"""Image folders read from disk on demand: the real path's data, ImageNet-style.

Layout (class names are the sorted subfolder names of ``train/``; every split uses them)::

    root/train/<class>/*.png|jpg|...
    root/val/<class>/*

:class:`FolderDataset` is a map-style torch ``Dataset`` over a list of files: an image is opened,
resized and normalised only when its index is asked for, so a ``DataLoader`` with worker
processes streams a folder of any size with memory bounded by its batch and prefetch.

Augmentation (horizontal flip, pad-and-crop shift) is drawn from a generator seeded by
``(seed, epoch, index)``: the same image in the same epoch is always augmented the same way,
whichever process, worker or batch reads it. Distributed runs, different worker counts and a
run resumed half-way therefore see identical inputs, with no generator state to save.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .data import IMAGE_SUFFIXES

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Split:
    """The files of one split: paths and labels in sorted (deterministic) order.

    Attributes:
        root: the dataset root.
        name: ``"train"`` or ``"val"``.
        files: paths relative to ``root`` (``"train/<class>/<file>"``).
        labels: int64 ``[N]``, indices into ``classes``.
        classes: class names (the subfolders of ``root/train``), sorted.
    """

    root: Path
    name: str
    files: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Split":
        """The files at ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Split(self.root, self.name, tuple(self.files[i] for i in idx), self.labels[idx], self.classes)


def classes_of(root: str | Path) -> tuple[str, ...]:
    """Class names: the sorted subfolders of ``root/train``.

    Raises:
        FileNotFoundError: ``root`` or ``root/train`` is missing.
        ValueError: ``root/train`` has no class subfolders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; expected {root}/train/<class>/<image> "
                                f"and {root}/val/<class>/<image>")
    train = root / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{root} has no train/ split; expected {root}/train/<class>/<image> "
                                f"(ImageNet layout), found {sorted(p.name for p in root.iterdir())[:10]}")
    classes = tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))
    if not classes:
        raise ValueError(f"{train} has no class subfolders; expected {train}/<class>/<image>")
    return classes


def scan(root: str | Path, split: str, classes: Optional[Sequence[str]] = None) -> Split:
    """List the images of ``root/<split>/<class>/*`` (suffixes :data:`vitprune_lite.data.IMAGE_SUFFIXES`).

    Args:
        root: dataset root.
        split: subfolder name, e.g. ``"train"`` or ``"val"``.
        classes: class names (default: :func:`classes_of`); a class folder missing from this
            split is allowed (it has no images there), an extra one is refused.

    Raises:
        FileNotFoundError: the split folder is missing.
        ValueError: no images, or class folders that ``train/`` does not have.
    """
    root = Path(root)
    classes = tuple(classes) if classes is not None else classes_of(root)
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{root} has no {split}/ split; expected {folder}/<class>/<image> "
                                f"with the class folders of train/")
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise ValueError(f"{folder} has class folders that train/ lacks: {extra[:5]}; "
                         f"every split must use train/'s classes")
    files, labels = [], []
    for label, name in enumerate(classes):
        d = folder / name
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f"{split}/{name}/{f.name}")
                labels.append(label)
    if not files:
        raise ValueError(f"{folder} holds no images with suffixes {IMAGE_SUFFIXES}")
    return Split(root, split, tuple(files), np.asarray(labels, dtype=np.int64), classes)


def read_list(root: str | Path, list_file: str | Path, classes: Sequence[str]) -> Split:
    """A split given as a text file of paths relative to ``root``, one per line (e.g. the fine-tune
    set ``prune`` writes); the label is the path's class folder."""
    root, index = Path(root), {c: i for i, c in enumerate(classes)}
    lines = [ln.strip() for ln in Path(list_file).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{list_file} lists no images")
    labels = []
    for ln in lines:
        parts = Path(ln).parts
        if len(parts) != 3 or parts[1] not in index:
            raise ValueError(f"{list_file}: {ln!r} is not '<split>/<class>/<file>' with a class of train/")
        if not (root / ln).is_file():
            raise FileNotFoundError(f"{list_file}: {root / ln} does not exist")
        labels.append(index[parts[1]])
    return Split(root, Path(list_file).stem, tuple(lines), np.asarray(labels, dtype=np.int64), tuple(classes))


def load_image(path: str | Path, size: int) -> np.ndarray:
    """One image as uint8 ``[size, size, 3]``: RGB, shorter side resized to ``size`` (bilinear),
    centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.array(im.crop((left, top, left + size, top + size)))  # a writable copy


class FolderDataset(Dataset):
    """Images of a :class:`Split`, read from disk when indexed.

    Args:
        split: the files.
        size: output side in pixels (the model's image size).
        mean, std: per-channel normalisation of ``pixel / 255`` (3 values each).
        augment: random flip and shift (``pad`` pixels), seeded per ``(seed, epoch, index)``.
        seed: augmentation seed; :meth:`set_epoch` selects the epoch.

    Items: ``(x, y)``, float32 ``[3, size, size]`` and an int label.
    """

    def __init__(self, split: Split, size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), *, augment: bool = False, seed: int = 0,
                 pad: Optional[int] = None) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer (pixels), got {size!r}")
        self.split, self.size, self.augment, self.seed = split, size, augment, int(seed)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.pad = pad if pad is not None else max(1, size // 8)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws are used (call before each epoch's loader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = load_image(self.split.root / self.split.files[i], self.size)
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        if self.augment:
            seed = np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(1)[0]
            g = torch.Generator().manual_seed(int(seed))
            p = self.pad
            dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=g).tolist()
            x = F.pad(x[None], (p, p, p, p), mode="replicate")[0, :, dy:dy + self.size, dx:dx + self.size]
            if torch.rand(1, generator=g).item() < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, int(self.split.labels[i])


def load_tensors(split: Split, size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), workers: int = 0,
                 batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A (small) split in memory: ``(x [N, 3, size, size], y [N])``, for scoring sets."""
    from torch.utils.data import DataLoader

    ds = FolderDataset(split, size, mean, std)
    xs, ys = [], []
    for xb, yb in DataLoader(ds, batch_size=batch_size, num_workers=workers):
        xs.append(xb)
        ys.append(yb)
    return torch.cat(xs), torch.cat(ys).long()


def load_uint8(split: Split, size: int, workers: int = 0, batch_size: int = 256):
    """Yield uint8 ``[b, size, size, 3]`` chunks of a split in order (for feature extraction)."""
    from torch.utils.data import DataLoader

    class _Raw(Dataset):
        def __len__(self) -> int:
            return len(split)

        def __getitem__(self, i: int) -> np.ndarray:
            return load_image(split.root / split.files[i], size)

    for chunk in DataLoader(_Raw(), batch_size=batch_size, num_workers=workers):
        yield chunk.numpy()
