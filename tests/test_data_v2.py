"""Benchmark v2: determinism, the class and device design, separation of public and private data."""
from __future__ import annotations

import numpy as np
import pytest

from vitprune_lite import data, data_v2

SMALL = {"train": 192, "val": 48, "test": 48}


@pytest.fixture(scope="module")
def small_devices():
    return [data.DeviceSpec(d.name, d.classes, d.style_mix, n_train=40, n_test=40) for d in data_v2.DEVICES]


@pytest.fixture(scope="module")
def bench(small_devices):
    return data_v2.make_benchmark(seed=5, public=SMALL, devices=small_devices)


def test_design_sizes():
    assert len(data_v2.CLASSES) == len(set(data_v2.CLASSES)) >= 40
    assert len(data_v2.STYLES) >= 8 and len(data_v2.DEVICES) >= 8
    for spec in data_v2.DEVICES:
        assert len(spec.classes) == len(set(spec.classes)) == 10, spec.name
        assert spec.n_test >= 1000
        assert abs(sum(spec.style_mix.values()) - 1) < 1e-9


def test_devices_differ_in_classes():
    sets = [frozenset(d.classes) for d in data_v2.DEVICES]
    assert len(set(sets)) == len(sets)
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert len(a & b) <= 5  # partial overlap at most: each task is its own


def test_label_encoding():
    assert data_v2.CLASSES[data_v2.label("star", "hollow")] == "star/hollow"
    assert data_v2.label("disk", "solid") == 0


def test_same_seed_identical_bytes(bench, small_devices):
    again = data_v2.make_benchmark(seed=5, public=SMALL, devices=small_devices)
    assert again.fingerprint == bench.fingerprint
    assert again.public["train"].images.tobytes() == bench.public["train"].images.tobytes()
    other = data_v2.make_benchmark(seed=6, public=SMALL, devices=small_devices)
    assert other.fingerprint != bench.fingerprint


def test_chunking_is_part_of_the_recipe_but_streams_are_per_split(bench, small_devices):
    bigger = data_v2.make_benchmark(seed=5, public={**SMALL, "train": 400}, devices=small_devices)
    assert bigger.public["test"].images.tobytes() == bench.public["test"].images.tobytes()
    assert bigger.devices["drone"]["test"].images.tobytes() == bench.devices["drone"]["test"].images.tobytes()


def test_shapes_labels_styles(bench):
    train = bench.public["train"]
    assert train.images.shape == (192, 48, 48, 3) and train.images.dtype == np.uint8
    assert train.classes == data_v2.CLASSES and bench.version == data_v2.GENERATOR_VERSION
    assert set(np.unique(train.styles)) == set(range(len(data_v2.STYLES)))
    for name, spec in bench.specs.items():
        for split in bench.devices[name].values():
            assert set(np.unique(split.labels)) <= set(spec.classes)
            assert {data_v2.STYLES[i] for i in np.unique(split.styles)} <= set(spec.style_mix)


def test_private_images_never_in_public_pool(bench):
    public = {img.tobytes() for s in bench.public.values() for img in s.images}
    for splits in bench.devices.values():
        for s in splits.values():
            assert not any(img.tobytes() in public for img in s.images)


def test_fills_are_visible():
    """Each fill leaves its mark: on clean renders of one family, the fills differ in how many
    pixels are lit, in the expected order (hollow and textured fills light fewer pixels)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([data_v2.label("square", f) for f in data_v2.FILLS], 64)
    imgs = data_v2.render(labels, np.zeros(len(labels), dtype=int), rng).astype(float).mean(axis=(1, 2, 3))
    solid, striped, checkered, hollow = (imgs[i * 64:(i + 1) * 64].mean() for i in range(4))
    assert solid > striped and solid > checkered and solid > hollow


def test_every_style_changes_pixels():
    labels = np.full(8, data_v2.label("disk", "solid"))
    clean = data_v2.render(labels, np.zeros(8, dtype=int), np.random.default_rng(1))
    for k, style in enumerate(data_v2.STYLES[1:], start=1):
        styled = data_v2.render(labels, np.full(8, k), np.random.default_rng(1))
        assert np.abs(styled.astype(int) - clean.astype(int)).mean() > 1.0, style


def test_cache_round_trip_and_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("VITPRUNE_ROOT", str(tmp_path))
    devices = [data.DeviceSpec("a", (0, 5), {"haze": 1.0}, 10, 10)]
    first = data_v2.load_benchmark(seed=1, public={"train": 20, "test": 10}, devices=devices)
    (cached,) = (tmp_path / "data" / "cache").glob(f"benchmark-v{data_v2.GENERATOR_VERSION}-*.npz")
    second = data_v2.load_benchmark(seed=1, public={"train": 20, "test": 10}, devices=devices)
    assert second.fingerprint == first.fingerprint and second.classes == data_v2.CLASSES
    cached.write_bytes(b"damaged")
    with pytest.warns(data.CacheWarning, match=f"benchmark-v{data_v2.GENERATOR_VERSION}-"):
        third = data_v2.load_benchmark(seed=1, public={"train": 20, "test": 10}, devices=devices)
    assert third.fingerprint == first.fingerprint


@pytest.mark.parametrize("spec, match", [
    (data.DeviceSpec("bad", (0, 48), {"clean": 1.0}), "classes"),
    (data.DeviceSpec("bad", (0,), {"sepia": 1.0}), "style_mix"),
])
def test_bad_device_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        data_v2.make_benchmark(public={"train": 4}, devices=[spec])
