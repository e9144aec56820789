"""Tests for clipgeom.projection against independently computed ground truth."""

import os

import numpy as np
import pytest
from sklearn.decomposition import PCA

from clipgeom import projection as P
from clipgeom.errors import InputError


def _data(seed=0, n=300, d=10, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(4, 0.5, d) + offset).astype(np.float32)


def _match_up_to_sign(a, b, atol):
    for j in range(a.shape[1]):
        s = np.sign(a[:, j] @ b[:, j])
        np.testing.assert_allclose(a[:, j], s * b[:, j], atol=atol)


def test_centred_svd_equals_sklearn_pca():
    x = _data(offset=2.0)
    p = P.svd_projection(x, k=3, center=True)
    ref = PCA(n_components=3, svd_solver="full").fit(x.astype(np.float64))
    _match_up_to_sign(p.coords, ref.transform(x.astype(np.float64)), atol=1e-8)
    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    np.testing.assert_allclose(p.singular_values, np.linalg.svd(xc, compute_uv=False),
                               rtol=1e-9)
    np.testing.assert_allclose(p.explained_variance_ratio[:3], ref.explained_variance_ratio_,
                               rtol=1e-9)
    np.testing.assert_allclose(p.mean, xc.mean(0) + x.astype(np.float64).mean(0), atol=1e-12)


def test_uncentred_svd_shows_the_cone_offset():
    x = _data(seed=1, offset=5.0)
    p = P.svd_projection(x, k=2)
    x64 = x.astype(np.float64)
    u, s, vt = np.linalg.svd(x64, full_matrices=False)
    np.testing.assert_allclose(p.singular_values, s, rtol=1e-9)
    _match_up_to_sign(p.coords, u[:, :2] * s[:2], atol=1e-8)
    np.testing.assert_array_equal(p.mean, 0.0)
    # First component ~ the mean direction; all points on one side of the origin.
    mean_dir = x64.mean(0) / np.linalg.norm(x64.mean(0))
    assert abs(p.components[0] @ mean_dir) > 0.95
    assert np.all(np.sign(p.coords[:, 0]) == np.sign(p.coords[0, 0]))


def test_joint_projection_equals_projection_of_stack():
    img, txt = _data(seed=2, n=120, offset=1.0), _data(seed=3, n=80, offset=-1.0)
    j = P.joint_svd_projection(img, txt, k=2, center=True)
    s = P.svd_projection(np.vstack([img, txt]), k=2, center=True)
    np.testing.assert_allclose(j.image_coords, s.coords[:120], atol=1e-10)
    np.testing.assert_allclose(j.text_coords, s.coords[120:], atol=1e-10)
    with pytest.raises(InputError, match="features"):
        P.joint_svd_projection(img, txt[:, :5])
    with pytest.raises(InputError, match="between 1 and 10"):
        P.svd_projection(img, k=11)


def test_normalized_projection_uses_unit_rows():
    x = _data(seed=4, offset=3.0)
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    a = P.svd_projection(x, k=2, normalize=True)
    b = P.svd_projection(unit, k=2)
    np.testing.assert_allclose(a.coords, b.coords, atol=1e-6)


# ---------------------------------------------------------------- isotropy (Eq. 1-2)


def test_isotropy_symmetric_configuration_is_perfect():
    d = 6
    w = np.vstack([np.eye(d), -np.eye(d)]) * 3.0   # +-e_1..+-e_d, any scale
    iso = P.isotropy(w)
    assert iso["I1"] == pytest.approx(1.0, abs=1e-14)
    assert iso["I2"] == pytest.approx(0.0, abs=1e-14)


def test_isotropy_of_offset_cone_is_low():
    rng = np.random.default_rng(5)
    # Unit rows bound Z to [N/e, N e]. For a tight cone along e_1, Z(e_1) ~ N e
    # and Z ~ N for every other axis, so I1 -> 1/e (the paper's CLIP: 0.84).
    cone = rng.normal(size=(2000, 16)) * 0.01 + np.r_[5.0, np.zeros(15)]
    iso = P.isotropy(cone)
    assert iso["I1"] == pytest.approx(np.exp(-1), rel=1e-3)
    assert iso["I2"] > 0.3
    centred = rng.normal(size=(2000, 16))
    assert P.isotropy(centred)["I1"] > 0.9


def _brute_isotropy(w):
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    vals, vecs = np.linalg.eig(w.T @ w)          # general solver, not eigh
    zs = []
    for j in range(vecs.shape[1]):
        v = np.real(vecs[:, j])
        v /= np.linalg.norm(v)
        if v @ w.sum(0) < 0:                      # the documented sign convention
            v = -v
        zs.append(sum(np.exp(v @ wi) for wi in w))
    zs = np.array(zs)
    return zs.min() / zs.max(), np.sqrt(np.mean((zs - zs.mean()) ** 2)) / zs.mean()


def test_isotropy_matches_brute_force_loop():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(9, 4)) + np.r_[1.0, 0.5, 0.0, 0.0]
    i1, i2 = _brute_isotropy(w)
    iso = P.isotropy(w.astype(np.float32))
    assert iso["I1"] == pytest.approx(i1, rel=1e-6)
    assert iso["I2"] == pytest.approx(i2, rel=1e-5)


def test_isotropy_is_stable_for_huge_logits():
    # Scale does not matter after normalisation; chunks are combined exactly.
    rng = np.random.default_rng(7)
    w = rng.normal(size=(70000, 3)) + 1.0
    a = P.isotropy(w)
    b = P.isotropy(w * 1e6)
    assert np.isfinite(a["I1"]) and a["I1"] == pytest.approx(b["I1"], rel=1e-9)


# ---------------------------------------------------------------- UMAP


def test_umap_coords_deterministic_and_cached(tmp_path, monkeypatch):
    import umap

    x = _data(seed=8, n=200, d=16, offset=1.0)
    calls = []
    first = P.umap_coords(x, n_neighbors=10, seed=3, cache_dir=tmp_path,
                          progress=lambda f, t: calls.append((f, t)))
    assert first.shape == (200, 2) and first.dtype == np.float32
    assert np.isfinite(first).all()
    assert calls and calls[-1][0] == 1.0
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("umap-") and files[0].endswith(".npy")
    second = P.umap_coords(x, n_neighbors=10, seed=3)          # recomputed, no cache
    np.testing.assert_array_equal(first, second)

    def boom(*a, **k):
        raise AssertionError("UMAP must not run when the cache has the result")

    monkeypatch.setattr(umap, "UMAP", boom)
    mm_path = tmp_path / "x.npy"
    np.save(mm_path, x)
    mm = np.load(mm_path, mmap_mode="r")
    third = P.umap_coords(mm, n_neighbors=10, seed=3, cache_dir=tmp_path)
    np.testing.assert_array_equal(first, third)
    with pytest.raises(AssertionError):                          # other parameters -> new key
        P.umap_coords(x, n_neighbors=11, seed=3, cache_dir=tmp_path)


def test_umap_input_checks_and_sampling_helpers():
    x = _data(n=20)
    with pytest.raises(InputError, match="n_neighbors"):
        P.umap_coords(x, n_neighbors=20)
    idx = P.sample_rows(1000, 50, seed=1)
    assert len(idx) == 50 and len(set(idx.tolist())) == 50 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, P.sample_rows(1000, 50, seed=1))
    np.testing.assert_array_equal(P.sample_rows(10, None), np.arange(10))
    # The digest covers bytes, shape and dtype, and agrees for chunked reads.
    assert P.array_digest(x) == P.array_digest(x, chunk_rows=3)
    assert P.array_digest(x) != P.array_digest(x.astype(np.float64))
    y = x.copy()
    y[7, 3] += 1
    assert P.array_digest(x) != P.array_digest(y)
