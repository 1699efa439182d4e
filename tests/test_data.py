"""The embedded benchmark: determinism, separation of public and private data, loaders."""
from __future__ import annotations

import numpy as np
import pytest

from vitprune_lite import data


def test_same_seed_identical_bytes(small_bench):
    again = data.make_benchmark(seed=3, public={"train": 240, "val": 60, "test": 60},
                                devices=list(small_bench.specs.values()))
    assert again.fingerprint == small_bench.fingerprint
    for split in small_bench.public:
        assert again.public[split].images.tobytes() == small_bench.public[split].images.tobytes()


def test_other_seed_differs(small_bench):
    other = data.make_benchmark(seed=4, public={"train": 240, "val": 60, "test": 60},
                                devices=list(small_bench.specs.values()))
    assert other.fingerprint != small_bench.fingerprint


def test_split_streams_are_independent_of_other_sizes(small_bench):
    bigger = data.make_benchmark(seed=3, public={"train": 500, "val": 60, "test": 60},
                                 devices=list(small_bench.specs.values()))
    assert bigger.public["test"].images.tobytes() == small_bench.public["test"].images.tobytes()
    assert bigger.devices["drone"]["train"].images.tobytes() == small_bench.devices["drone"]["train"].images.tobytes()


def test_shapes_and_label_ranges(small_bench):
    train = small_bench.public["train"]
    assert train.images.shape == (240, 32, 32, 3) and train.images.dtype == np.uint8
    assert set(np.unique(train.labels)) == set(range(len(data.CLASSES)))
    assert set(np.unique(train.styles)) == set(range(len(data.STYLES)))
    x, y = train.tensors()
    assert tuple(x.shape) == (240, 3, 32, 32) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_devices_see_only_their_classes_and_styles(small_bench):
    for name, spec in small_bench.specs.items():
        for split in ("train", "test"):
            s = small_bench.devices[name][split]
            assert set(np.unique(s.labels)) <= set(spec.classes)
            assert {data.STYLES[i] for i in np.unique(s.styles)} <= set(spec.style_mix)


def test_devices_differ_from_each_other():
    specs = data.DEVICES
    assert len(specs) >= 4
    for i, a in enumerate(specs):
        for b in specs[i + 1:]:
            assert set(a.classes) != set(b.classes) or dict(a.style_mix) != dict(b.style_mix)


def test_private_images_never_in_public_pool(small_bench):
    public = {img.tobytes() for s in small_bench.public.values() for img in s.images}
    for splits in small_bench.devices.values():
        for s in splits.values():
            assert not any(img.tobytes() in public for img in s.images)


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("VITPRUNE_ROOT", str(tmp_path))
    devices = [data.DeviceSpec("a", (0, 1), {"clean": 1.0}, 10, 10)]
    first = data.load_benchmark(seed=1, public={"train": 20, "test": 10}, devices=devices)
    files = list((tmp_path / "data" / "cache").glob("*.npz"))
    assert len(files) == 1
    second = data.load_benchmark(seed=1, public={"train": 20, "test": 10}, devices=devices)
    assert second.fingerprint == first.fingerprint
    files[0].write_bytes(b"damaged")
    with pytest.warns(data.CacheWarning, match=files[0].name):
        third = data.load_benchmark(seed=1, public={"train": 20, "test": 10}, devices=devices)
    assert third.fingerprint == first.fingerprint


@pytest.mark.parametrize("spec, match", [
    (data.DeviceSpec("bad", (0, 99), {"clean": 1.0}), "classes"),
    (data.DeviceSpec("bad", (0,), {"sepia": 1.0}), "style_mix"),
    (data.DeviceSpec("bad", (), {"clean": 1.0}), "classes"),
])
def test_bad_device_spec_is_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        data.make_benchmark(seed=0, public={"train": 5}, devices=[spec])


def test_unknown_device_name(small_bench):
    with pytest.raises(KeyError, match="known devices"):
        small_bench.device("toaster")


def test_image_folder_loader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.txt"):
        s = data.load_image_folder(tmp_path, size=32)
    assert s.images.shape == (6, 32, 32, 3)
    assert s.classes == ("cat", "dog") and s.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class subfolders"):
        data.load_image_folder(tmp_path)


def test_digits_loader():
    s = data.load_digits(size=16)
    assert s.images.shape == (1797, 16, 16, 3) and s.classes[0] == "0"
    assert set(np.unique(s.labels)) == set(range(10))
