"""Device/cloud exchange (gmm) and feature extractors: equivalences, determinism, clear errors."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from vitprune_lite import data, features, gmm
from vitprune_lite.errors import InvalidFileError, InvalidValueError

SPACE = features.FeatureSpace("test_space", "1-abc", 2)


def blobs(n_per: int = 100, centres=((0, 0), (6, 0), (0, 6)), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated 2-D Gaussian clusters ``[n_per * C, 2]`` and their cluster labels."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 0.5, size=(n_per, 2)) for c in centres])
    return x, np.repeat(np.arange(len(centres)), n_per)


# ----------------------------------------------------------------------------- features

def test_pixel_stats_shape_determinism_and_whitening(small_bench):
    pub = small_bench.public["train"].images
    ex = features.PixelStats(dim=8)
    f = ex.fit_transform(pub)
    assert f.shape == (len(pub), 8) and f.dtype == np.float64
    np.testing.assert_allclose(f.mean(0), 0, atol=1e-8)
    np.testing.assert_allclose(f.std(0), 1, rtol=1e-6)  # whitened on the data it was fitted on
    np.testing.assert_array_equal(ex(pub), f)
    again = features.PixelStats(dim=8).fit(pub)
    assert again.version == ex.version and again.space == features.FeatureSpace("pixel_stats", ex.version, 8)
    other = features.PixelStats(dim=8).fit(small_bench.public["val"].images)
    assert other.version != ex.version  # a different fit is a different space


def test_pixel_stats_shape_part_ignores_colour_inversion():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    a, b = features.pixel_statistics(img), features.pixel_statistics(255 - img)
    # Unsigned gradient orientations and autocorrelations of the standardised image (first 40
    # columns) do not depend on which side of an edge is bright.
    np.testing.assert_allclose(a[:, :40], b[:, :40], atol=1e-6)
    assert not np.allclose(a[:, 40:], b[:, 40:])


def test_orientation_histogram_sees_stripe_direction():
    rows = (np.arange(32) // 4 % 2 * 255).astype(np.uint8)
    h_stripes = np.broadcast_to(rows[:, None, None], (32, 32, 3))[None].copy()
    hist_h = features.pixel_statistics(h_stripes)[0, :32].reshape(4, 8).sum(0)
    hist_v = features.pixel_statistics(h_stripes.transpose(0, 2, 1, 3).copy())[0, :32].reshape(4, 8).sum(0)
    assert hist_h.argmax() == 4  # vertical gradient (pi/2) for horizontal stripes
    assert hist_v.argmax() == 0


def test_extractor_errors(small_bench):
    ex = features.PixelStats(dim=4)
    with pytest.raises(RuntimeError, match="not fitted"):
        ex(small_bench.public["train"].images[:3])
    with pytest.raises(ValueError, match="uint8"):
        ex.fit(small_bench.public["train"].images.astype(np.float32))
    with pytest.raises(ValueError, match="empty"):
        ex.fit(small_bench.public["train"].images[:0])
    with pytest.raises(ValueError, match="more samples than components"):
        features.PixelStats(dim=8).fit(small_bench.public["train"].images[:5])
    with pytest.raises(ValueError, match="dim"):
        features.PixelStats(dim=0)


def test_vit_cls_extractor(small_bench, tiny_vit):
    pub = small_bench.public["train"].images[:80]
    ex = features.ViTCls(tiny_vit, dim=6, batch_size=32)
    f = ex.fit_transform(pub)
    assert f.shape == (80, 6)
    small_batches = features.ViTCls(tiny_vit, dim=6, batch_size=7)
    np.testing.assert_allclose(small_batches.raw(pub[:20]), ex.raw(pub[:20]), atol=1e-5)
    assert ex.space.name == "vit_cls" and features.model_digest(tiny_vit) in ex.version
    with pytest.raises(ValueError, match="class token"):
        features.ViTCls(object())


# ----------------------------------------------------------------------------- the upload

def upload_from_sklearn(gm: GaussianMixture, cov: str, n: int) -> gmm.Upload:
    return gmm.Upload(gm.weights_, gm.means_, gm.covariances_, cov, "test_space", "1-abc", n, n * 3072)


@pytest.mark.parametrize("cov", gmm.COVARIANCE_TYPES)
def test_upload_log_likelihood_equals_sklearn(cov):
    x, _ = blobs()
    gm = GaussianMixture(3, covariance_type=cov, random_state=0).fit(x)
    up = upload_from_sklearn(gm, cov, len(x))
    q = np.random.default_rng(1).normal(2, 4, size=(50, 2))
    np.testing.assert_allclose(up.log_likelihood(q), gm.score_samples(q), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cov", gmm.COVARIANCE_TYPES)
def test_n_parameters_matches_sklearn_bic(cov):
    x, _ = blobs()
    gm = GaussianMixture(3, covariance_type=cov, random_state=0).fit(x)
    # sklearn: bic = -2 * log-likelihood + p * log(n); solve for p.
    p = (gm.bic(x) + 2 * gm.score(x) * len(x)) / np.log(len(x))
    assert gmm.n_parameters(3, 2, cov) == round(p)


@pytest.mark.parametrize("cov", gmm.COVARIANCE_TYPES)
def test_upload_round_trips_exactly(cov):
    x, _ = blobs()
    up = gmm.fit_upload(x, SPACE, k_range=[3], covariance_type=cov).upload
    for back in (gmm.Upload.from_json(up.to_json()), gmm.Upload.from_bytes(up.to_bytes())):
        for name in ("weights", "means", "covariances"):
            np.testing.assert_array_equal(getattr(back, name), getattr(up, name))
        assert (back.covariance_type, back.feature_space, back.feature_version, back.n_samples, back.raw_bytes) == \
               (up.covariance_type, up.feature_space, up.feature_version, up.n_samples, up.raw_bytes)
    assert up.nbytes == len(up.to_bytes()) < up.raw_bytes
    assert json.loads(up.to_json())["format"] == gmm.UPLOAD_FORMAT


def test_upload_refuses_bad_fields():
    w, m, c = np.array([0.5, 0.5]), np.zeros((2, 3)), np.ones((2, 3))
    ok = dict(weights=w, means=m, covariances=c, covariance_type="diag", feature_space="s",
              feature_version="v", n_samples=10, raw_bytes=100)
    gmm.Upload(**ok)
    bad = [({"weights": np.array([0.5, 0.6])}, "sum to 1"),
           ({"covariances": np.ones((2, 2))}, "shape"),
           ({"covariance_type": "banana"}, "covariance_type"),
           ({"means": np.full((2, 3), np.nan)}, "NaN"),
           ({"covariances": -np.ones((2, 3))}, "> 0"),
           ({"covariances": np.stack([-np.eye(3)] * 2), "covariance_type": "full"}, "positive definite"),
           ({"feature_space": ""}, "feature space")]
    for change, msg in bad:
        with pytest.raises(ValueError, match=msg):
            gmm.Upload(**{**ok, **change})
    text = json.loads(gmm.Upload(**ok).to_json())
    with pytest.raises(ValueError, match="not a GMM upload"):
        gmm.Upload.from_json(json.dumps({**text, "format": "other"}))


def test_sample_is_shuffled_seeded_and_faithful():
    x, _ = blobs(n_per=200, centres=((0, 0), (50, 0)))
    up = gmm.fit_upload(x, SPACE, k_range=[2], covariance_type="full").upload
    s = gmm.sample(up, 400, seed=0)
    comp = (s[:, 0] > 25).astype(int)
    assert 0 < comp[:200].sum() < 200  # rows are not grouped by component
    np.testing.assert_array_equal(s, gmm.sample(up, 400, seed=0))
    assert not np.array_equal(s, gmm.sample(up, 400, seed=1))
    big = gmm.sample(up, 20000, seed=2)
    np.testing.assert_allclose(big.mean(0), x.mean(0), atol=0.6)


# ----------------------------------------------------------------------------- device side

def test_fit_picks_lowest_bic_and_finds_three_clusters():
    x, _ = blobs()
    fit = gmm.fit_upload(x, SPACE, k_range=range(1, 7), covariance_type="full")
    assert set(fit.bic) == set(range(1, 7))
    assert fit.chosen_k == min(fit.bic, key=fit.bic.get) == 3 == fit.upload.n_components
    assert fit.upload.n_samples == len(x) and fit.upload.raw_bytes == len(x) * 32 * 32 * 3
    again = gmm.fit_upload(x, SPACE, k_range=range(1, 7), covariance_type="full")
    assert again.upload.to_bytes() == fit.upload.to_bytes()


def test_bad_device_input_fails_before_fitting(monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("fit() must not run on bad input")

    monkeypatch.setattr(GaussianMixture, "fit", no_fit)
    x, _ = blobs()
    nan = x.copy()
    nan[3, 1] = np.nan
    cases = [((x[:0], SPACE), {}, "numeric 2-D|too few"),
             ((x[:10], SPACE), {}, "too few"),
             ((nan, SPACE), {}, "NaN"),
             ((x[:, :1], SPACE), {}, "dimensions"),
             ((x, SPACE), {"k_range": [2, 301]}, "more than the 300"),
             ((x, SPACE), {"k_range": []}, "k_range"),
             ((x, SPACE), {"covariance_type": "banana"}, "covariance_type"),
             ((np.array(["a", "b"]), SPACE), {}, "numeric")]
    for args, kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            gmm.fit_upload(*args, **kwargs)
    with pytest.raises(TypeError, match="FeatureSpace"):
        gmm.fit_upload(x, "test_space")
    with pytest.raises(gmm.CapacityError, match="free parameters"):
        gmm.fit_upload(x[:40], SPACE, k_range=[20], covariance_type="full")


def test_capacity_guard_skips_large_k_and_can_be_turned_off():
    x, _ = blobs(n_per=10)  # 30 samples, 2-D full: 6 parameters per component (+ weight)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = gmm.fit_upload(x, SPACE, k_range=range(1, 9), covariance_type="full")
    assert any(issubclass(w.category, gmm.CapacityWarning) and "skipped" in str(w.message) for w in caught)
    assert max(fit.bic) == 5 and set(fit.skipped) == {6, 7, 8}  # 5 x 6 + 4 = 34 > 30
    assert all(r > gmm.MAX_PARAM_RATIO for r in fit.skipped.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gmm.CapacityWarning)
        free = gmm.fit_upload(x, SPACE, k_range=[8], covariance_type="full", max_param_ratio=None)
    assert free.chosen_k == 8 and free.capacity_ratio > 1
    assert gmm.capacity_ratio(2, 16, "diag", 800) == gmm.n_parameters(2, 16, "diag") / 800 == 65 / 800


def test_device_upload_from_images(small_bench):
    ex = features.PixelStats(dim=4).fit(small_bench.public["train"].images)
    imgs = small_bench.devices["drone"]["train"].images
    fit = gmm.device_upload(imgs, ex, k_range=[2, 3])
    assert fit.upload.raw_bytes == imgs.nbytes and fit.upload.feature_version == ex.version
    with pytest.raises(ValueError, match="at least"):
        gmm.device_upload(imgs[:5], ex)


# ----------------------------------------------------------------------------- cloud side

def pool_and_device(seed: int = 0):
    """A pool of two far-apart populations (labels 0/1) and a device holding population 1."""
    pool, labels = blobs(n_per=500, centres=((0, 0), (8, 8)), seed=seed)
    device, _ = blobs(n_per=100, centres=((8, 8),), seed=seed + 1)
    return pool, labels, device


def test_select_ranks_by_likelihood_and_beats_random():
    pool, labels, device = pool_and_device()
    up = gmm.fit_upload(device, SPACE, k_range=[1, 2]).upload
    cloud = gmm.CloudFeatures(pool, SPACE, np.arange(1000) + 5)  # pool positions need not start at 0
    sel = gmm.select(up, cloud, n_metric=50, n_finetune=400)
    assert sel.metric.dtype == np.int64 and len(sel.metric) == 50 and len(sel.finetune) == 400
    np.testing.assert_array_equal(sel.finetune[:50], sel.metric)
    assert (labels[sel.finetune - 5] == 1).all()
    ll = up.log_likelihood(pool)
    assert (np.diff(ll[sel.ranking - 5]) <= 0).all()
    assert sel.scores.min() == 0 and sel.scores.max() == 1
    rnd = gmm.random_selection(cloud.index, 50, 400, seed=0)
    assert (labels[rnd.finetune - 5] == 1).mean() < 0.7
    assert len(np.unique(rnd.finetune)) == 400 and set(rnd.finetune) <= set(cloud.index)
    np.testing.assert_array_equal(rnd.finetune, gmm.random_selection(cloud.index, 50, 400, seed=0).finetune)


def test_select_caps_sizes_and_samples_reproducibly():
    pool, _, device = pool_and_device()
    up = gmm.fit_upload(device, SPACE, k_range=[1]).upload
    cloud = gmm.CloudFeatures(pool[:300], SPACE, np.arange(300))
    sel = gmm.select(up, cloud, n_metric=640, n_finetune=6400)
    assert len(sel.metric) == len(sel.finetune) == 300  # capped by the pool
    a = gmm.select(up, cloud, 20, 100, seed=0, sample=True, temperature=50.0)
    b = gmm.select(up, cloud, 20, 100, seed=0, sample=True, temperature=50.0)
    c = gmm.select(up, cloud, 20, 100, seed=1, sample=True, temperature=50.0)
    np.testing.assert_array_equal(a.finetune, b.finetune)
    assert not np.array_equal(a.finetune, c.finetune)
    cold = gmm.select(up, cloud, 20, 100, seed=3, sample=True, temperature=1e-9)
    np.testing.assert_array_equal(cold.finetune, gmm.select(up, cloud, 20, 100).finetune)
    with pytest.raises(ValueError, match="temperature"):
        gmm.select(up, cloud, sample=True, temperature=0)
    with pytest.raises(ValueError, match="n_metric"):
        gmm.select(up, cloud, n_metric=0)


def test_cloud_accepts_only_uploads_in_the_same_space():
    pool, _, device = pool_and_device()
    up = gmm.fit_upload(device, SPACE, k_range=[1]).upload
    with pytest.raises(TypeError, match="only an Upload"):
        gmm.select(device, gmm.CloudFeatures(pool, SPACE, np.arange(1000)))
    with pytest.raises(TypeError, match="CloudFeatures"):
        gmm.select(up, pool)
    for other in (features.FeatureSpace("test_space", "1-other", 2), features.FeatureSpace("pixel_stats", "1-abc", 2)):
        with pytest.raises(ValueError, match="feature spaces differ"):
            gmm.score(up, gmm.CloudFeatures(pool, other, np.arange(1000)))
    with pytest.raises(ValueError, match="distinct"):
        gmm.CloudFeatures(pool[:3], SPACE, np.array([0, 0, 1]))


def test_cloud_features_take_and_nearest():
    pool, _, _ = pool_and_device()
    cloud = gmm.CloudFeatures(pool[:10], SPACE, np.array([9, 3, 7, 0, 1, 2, 4, 5, 6, 8]) + 100)
    np.testing.assert_array_equal(cloud.take([103, 109]), pool[[1, 0]])
    np.testing.assert_array_equal(cloud.nearest(pool[[4, 2]] + 1e-9), [101, 107])
    with pytest.raises(ValueError, match="not in this pool"):
        cloud.take([5])


# ----------------------------------------------------------------------------- quality measures

def test_precision_counts_exactly(small_bench):
    pub = small_bench.public["train"]
    spec = small_bench.specs["drone"]  # classes 4, 6, 7, 8; styles blur, clean
    idx = np.arange(60)
    styles = {data.STYLES.index("blur"), data.STYLES.index("clean")}
    c = np.isin(pub.labels[idx], spec.classes)
    s = np.isin(pub.styles[idx], list(styles))
    assert gmm.precision(idx, pub, spec, styles=small_bench.styles) == {"class": c.mean(), "style": s.mean(),
                                                                        "both": (c & s).mean()}
    with pytest.raises(ValueError, match="indices"):
        gmm.precision(np.array([len(pub)]), pub, spec, styles=small_bench.styles)
    with pytest.raises(InvalidValueError, match="blur"):  # another benchmark's style names
        gmm.precision(idx, pub, spec, styles=("clean", "noise"))


def test_class_balance_counts_device_classes(small_bench):
    pub = small_bench.public["train"]
    spec = small_bench.specs["night_cam"]  # disk, ring, square, diamond
    disks = np.flatnonzero(pub.labels == 0)[:3]
    rings = np.flatnonzero(pub.labels == 1)[:1]
    other = np.flatnonzero(pub.labels == 4)[:5]
    bal = gmm.class_balance(np.concatenate([disks, rings, other]), pub, spec)
    assert bal["counts"] == {"disk": 3, "ring": 1, "square": 0, "diamond": 0} and bal["min_share"] == 0
    even = np.concatenate([np.flatnonzero(pub.labels == c)[:2] for c in spec.classes])
    assert gmm.class_balance(even, pub, spec)["min_share"] == 1.0
    renamed = gmm.class_balance(even, pub, spec, classes=[f"c{i}" for i in range(12)])
    assert renamed["counts"] == {"c0": 2, "c1": 2, "c2": 2, "c9": 2}
    with pytest.raises(InvalidValueError, match="night_cam"):
        gmm.class_balance(even, pub, spec, classes=["a", "b"])


def test_mmd_and_frechet_behave():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 3)), rng.normal(size=(400, 3))
    bw = gmm.median_bandwidth(x)
    same, shifted = gmm.mmd2(x, y, bw), gmm.mmd2(x, y + 1.0, bw)
    assert abs(same) < 0.01 < shifted
    assert gmm.frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    assert gmm.frechet_distance(x, x + [1.0, 2.0, 0.0]) == pytest.approx(5.0, rel=1e-6)
    with pytest.raises(ValueError, match="bandwidth"):
        gmm.mmd2(x, y, 0.0)


# ----------------------------------------------------------------------------- files

def test_selected_sets_round_trip(tmp_path):
    sets = {"drone/vit_cls/metric": np.arange(5), "drone/vit_cls/finetune": np.arange(9),
            "drone/random/metric": np.array([7, 3])}
    path = gmm.save_selected_sets(sets, "vit_cls", tmp_path / "s.npz", benchmark="v2", seed=3)
    back = gmm.load_selected_sets(path, benchmark="v2", seed=3)
    assert str(back["default_feature_space"]) == "vit_cls" and back["default_feature_space"].shape == ()
    assert str(back["benchmark"]) == "v2" and int(back["seed"]) == 3
    for k, v in sets.items():
        assert back[k].dtype == np.int64
        np.testing.assert_array_equal(back[k], v)
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert set(z.files) == set(sets) | {"default_feature_space", "benchmark", "seed"}
    with pytest.raises(InvalidFileError, match=r"s\.npz.*'v2'.*'v1' was asked"):
        gmm.load_selected_sets(path, benchmark="v1")
    with pytest.raises(InvalidFileError, match="seed 0 was asked"):
        gmm.load_selected_sets(path, seed=0)
    with pytest.raises(ValueError, match="device/source"):
        gmm.save_selected_sets({"drone/metric": np.arange(3)}, "vit_cls", tmp_path / "t.npz", benchmark="v1", seed=0)
    with pytest.raises(ValueError, match="not among the sources"):
        gmm.save_selected_sets(sets, "pixel_stats", tmp_path / "t.npz", benchmark="v1", seed=0)
    with pytest.raises(InvalidValueError, match="v3"):
        gmm.save_selected_sets(sets, "vit_cls", tmp_path / "t.npz", benchmark="v3", seed=0)
    np.savez(tmp_path / "old.npz", **{k: np.asarray(v) for k, v in sets.items()},
             default_feature_space=np.array("vit_cls"))  # written before files recorded their benchmark
    assert set(gmm.load_selected_sets(tmp_path / "old.npz")) == set(sets) | {"default_feature_space"}
    with pytest.raises(InvalidFileError, match="record no benchmark"):
        gmm.load_selected_sets(tmp_path / "old.npz", benchmark="v1")
    with pytest.raises(FileNotFoundError, match="reproduce --only 01"):
        gmm.load_selected_sets(tmp_path / "missing.npz")


def test_distance_report_shares_one_bandwidth():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(300, 2))
    rep = gmm.distance_report({"same": target, "far": target + 3.0}, target)
    assert rep["bandwidth"]["target"] == pytest.approx(gmm.median_bandwidth(target))
    assert rep["frechet"]["same"] == pytest.approx(0, abs=1e-6) and rep["frechet"]["far"] == pytest.approx(18.0)
    assert rep["mmd2"]["far"] > rep["mmd2"]["same"] + 0.1


def test_concat_takes_leading_components_of_each_part(small_bench):
    pub = small_bench.public["train"].images
    a, b = features.PixelStats(dim=6).fit(pub), features.PixelStats(dim=3).fit(pub)
    combo = features.Concat([a, b], keep=3)
    f = combo(pub[:20])
    np.testing.assert_array_equal(f, np.hstack([a(pub[:20])[:, :3], b(pub[:20])]))
    # The leading components of a wider projection are the narrower projection itself.
    np.testing.assert_allclose(a(pub[:20])[:, :3], b(pub[:20]), atol=1e-8)
    assert combo.space.dim == 6 and combo.space.name == "combined"
    assert features.Concat([a, b], keep=2).version != combo.version
    with pytest.raises(ValueError, match="keep"):
        features.Concat([a, b], keep=4)
    with pytest.raises(ValueError, match="part"):
        combo.combine([a(pub[:4])])
