"""Tests for clipgeom.projection against independently computed ground truth."""

import os
from pathlib import Path

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


# ---------------------------------------------------------------- UMAP: speed, sharing, shipping


def test_exact_cosine_knn_matches_a_full_sort(rng):
    x = rng.normal(size=(130, 9)).astype(np.float32) + 0.5
    x[7] = x[3]                                       # a duplicate: distance 0, ties
    idx, dist = P.exact_cosine_knn(x, 6, chunk_rows=32)
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    full = np.array([[1.0 - float(a @ b) for b in u] for a in u])
    np.fill_diagonal(full, 0.0)
    full = np.clip(full, 0.0, 2.0)
    want = np.array([np.lexsort((np.arange(len(r)), r))[:6] for r in full])
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), atol=1e-6)
    assert idx.dtype == np.int32 and (idx[:, 0] == np.where(
        np.arange(130) == 7, 3, np.arange(130))).all()    # itself first (tie: lower row)
    assert set(idx[3, :2]) == {3, 7} and set(idx[7, :2]) == {3, 7}


def test_umap_gives_identical_rows_one_point_and_is_repeatable(tmp_path):
    """Many copies of a row (repeated captions) once formed cliques whose spectral
    start ARPACK resolved differently on every call: the result was not repeatable."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(120, 12)).astype(np.float32) + 1.0
    x = np.vstack([base, np.repeat(base[:3], 25, axis=0)])   # 3 rows x 25 extra copies
    a = P.umap_coords(x, n_neighbors=10, seed=0)
    b = P.umap_coords(x, n_neighbors=10, seed=0)
    np.testing.assert_array_equal(a, b)
    for r in range(3):
        copies = np.flatnonzero((x == base[r]).all(axis=1))
        assert len(copies) == 26
        assert (a[copies] == a[copies[0]]).all()
    assert len({tuple(p) for p in a[:120].tolist()}) == 120   # distinct rows, distinct points


def test_shipped_umap_is_read_first_and_never_recomputed(tmp_path, monkeypatch):
    x = _data(seed=11, n=90, d=8, offset=1.0)
    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    coords = np.random.default_rng(0).normal(size=(90, 2)).astype(np.float32)
    assert P.read_shipped_umap(shipped, x, n_neighbors=10) is None       # nothing yet
    path = P.write_shipped_umap(shipped, x, coords, n_neighbors=10)
    assert path.parent == shipped and path.stat().st_size < 90 * 2 * 4 + 200

    def boom(*a, **k):
        raise AssertionError("umap must not be imported or run for a stored result")

    monkeypatch.setattr(P, "import_umap", boom)
    np.testing.assert_array_equal(P.read_shipped_umap(shipped, x, n_neighbors=10), coords)
    got = P.umap_coords(x, n_neighbors=10, cache_dir=cache, shipped_dir=shipped)
    np.testing.assert_array_equal(got, coords)
    assert not cache.exists() or not list(cache.iterdir())   # nothing written
    # other parameters or other rows: not that file
    assert P.stored_umap(x, shipped_dir=shipped, n_neighbors=11) is None
    assert P.stored_umap(x[:-1], shipped_dir=shipped, n_neighbors=10) is None
    # a damaged file is ignored, not trusted
    path.write_bytes(b"garbage")
    assert P.stored_umap(x, shipped_dir=shipped, n_neighbors=10) is None


def test_import_umap_keeps_compiled_code_under_clipgeom_home(tmp_path):
    """umap-learn marks its numba functions without cache=True: import_umap sets
    NUMBA_CACHE_DIR (when unset) under CLIPGEOM_HOME and enables caching on them."""
    import subprocess
    import sys

    code = ("import os, sys; sys.path.insert(0, %r)\n"
            "from clipgeom import projection as P\n"
            "umap = P.import_umap()\n"
            "import numba, umap.umap_ as u, umap.layouts as l\n"
            "from numba.core.caching import NullCache\n"
            "print(os.environ['NUMBA_CACHE_DIR'])\n"
            "print(numba.config.CACHE_DIR)\n"
            "print(all(not isinstance(f._cache, NullCache) for f in (u.smooth_knn_dist, "
            "u.compute_membership_strengths, l._nb_optimize_layout_euclidean_single_epoch)))\n"
            ) % str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["CLIPGEOM_HOME"] = str(tmp_path / "home")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    want = str(tmp_path / "home" / "cache" / "numba")
    assert lines[:3] == [want, want, "True"]
    assert (tmp_path / "home" / "cache" / "numba").is_dir()


# ---------------------------------------------------------------- intra-modal recovery experiment


def _brute_recovery(xi, xt, k):
    """Supplement Eq. 4-10 the way the text writes it: numpy SVD of S_inter, the
    N x k^2 system A x = 1 with A[i, j k + l] = V_ij V_il (no symmetry folding),
    minimum-norm solution by the pseudo-inverse."""
    s = xt @ xi.T
    _, _, vt = np.linalg.svd(s)
    v = vt[:k].T
    a = np.einsum("ij,il->ijl", v, v).reshape(len(v), k * k)
    q = (np.linalg.pinv(a) @ np.ones(len(v))).reshape(k, k)
    return v @ q @ v.T


def _brute_cosines(x):
    n = len(x)
    out = np.empty((n, n))
    for a in range(n):
        for b in range(n):
            out[a, b] = float(x[a] @ x[b]) / (np.linalg.norm(x[a]) * np.linalg.norm(x[b]))
    return out


def test_intra_recovery_is_checked_against_the_true_cosines(rng):
    from scipy.stats import pearsonr

    n, d = 80, 8                    # d(d+1)/2 = 36 <= 80: rank d is reachable
    img = rng.normal(size=(n, d)) + 1.5
    txt = img @ rng.normal(size=(d, d)) * 0.4 + rng.normal(size=(n, d))
    out = P.intra_recovery_experiment(img, txt, n_pairs=n, k=5, ks=[2, 5, 8])
    truth = _brute_cosines(img.astype(np.float32).astype(np.float64))
    iu = np.triu_indices(n, 1)
    np.testing.assert_allclose(out["true"], truth[iu], atol=1e-6)   # the data's own cosines
    xi = img.astype(np.float32).astype(np.float64)
    xt = txt.astype(np.float32).astype(np.float64)
    xi /= np.linalg.norm(xi, axis=1, keepdims=True)
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    assert out["curve"]["k"] == [2, 5, 8]
    for j, k in enumerate([2, 5, 8]):
        rec = _brute_recovery(xi, xt, k)[iu]
        diff = rec - truth[iu]
        assert out["curve"]["rms"][j] == pytest.approx(np.sqrt(np.mean(diff ** 2)), abs=1e-7)
        assert out["curve"]["max_abs"][j] == pytest.approx(np.abs(diff).max(), abs=1e-6)
        assert out["curve"]["pearson"][j] == pytest.approx(pearsonr(truth[iu], rec)[0],
                                                           abs=1e-7)
        if k == 5:
            np.testing.assert_allclose(out["recovered"], rec, atol=1e-7)
    # k < d loses something (the old test compared with the rank-k projection
    # itself and was exact by construction); k = d with enough pairs is exact
    assert out["rms"] > 1e-3 and out["curve"]["rms"][0] > out["rms"]
    assert out["curve"]["rms"][-1] < 1e-7 and out["curve"]["pearson"][-1] > 1 - 1e-9
    assert out["k"] == 5 and out["k_max"] == 8 and out["n"] == n and out["d"] == d
    s = xt @ xi.T
    sv = np.linalg.svd(s, compute_uv=False)
    assert out["energy"] == pytest.approx((sv[:5] ** 2).sum() / (sv ** 2).sum(), rel=1e-9)


def test_recovery_rank_limits_follow_the_count_of_unknowns():
    for n in range(0, 400, 7):
        for d in (4, 16, 64, 512):
            brute = max([k for k in range(0, min(d, 128) + 1)
                         if k * (k + 1) // 2 <= n and k <= n] or [0])
            assert P.max_recovery_rank(n, d) == brute, (n, d)
            dflt = P.default_recovery_rank(n, d)
            assert 1 <= dflt <= max(brute, 1)
            if brute < d:
                assert dflt * (dflt + 1) <= max(n, 2)      # twice as many pairs as unknowns
    assert P.default_recovery_rank(300, 64) == 16
    assert P.default_recovery_rank(2080, 64) == 64          # the exact case


def test_intra_recovery_refuses_ranks_the_pairs_cannot_determine(rng):
    x = rng.standard_normal((40, 16))
    with pytest.raises(InputError, match="k\\(k\\+1\\)/2"):
        P.intra_recovery_experiment(x, x + 1.0, n_pairs=30, k=16)
    with pytest.raises(InputError, match="between 1 and 7"):
        P.intra_recovery_experiment(x, x + 1.0, n_pairs=30, k=3, ks=[2, 9])
