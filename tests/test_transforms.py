"""Tests for clipgeom.transforms against independently computed ground truth."""


import numpy as np
import pytest
from scipy.stats import ortho_group
from sklearn.decomposition import PCA

from clipgeom.errors import InputError
from clipgeom import transforms as T



def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- centring


def test_center_gives_zero_mean_and_uses_given_mean():
    x = _rng().normal(3.0, 2.0, size=(500, 12)).astype(np.float32)
    c = T.center(x)
    assert c.dtype == np.float64
    np.testing.assert_allclose(c.mean(axis=0), 0.0, atol=1e-12)
    mu = np.arange(12, dtype=np.float64)
    np.testing.assert_allclose(T.center(x, mu), x.astype(np.float64) - mu)
    with pytest.raises(InputError, match="mean"):
        T.center(x, np.zeros(5))


# ---------------------------------------------------------------- whitening


def test_whitening_identity_covariance_on_train():
    rng = _rng(1)
    a = rng.normal(size=(16, 16))
    x = (rng.normal(size=(800, 16)) @ a + 5.0).astype(np.float32)
    for k in (16, 6):
        w = T.fit_whitening(x, k)
        z = w.apply(x)
        assert z.shape == (800, k) and w.components.shape == (k, 16)
        np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(k), atol=1e-6)
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)


def test_whitening_rejects_bad_k_and_degenerate_data():
    x = _rng(2).normal(size=(50, 8))
    with pytest.raises(InputError, match="between 1 and 8"):
        T.fit_whitening(x, 9)
    flat = np.column_stack([x[:, :3], np.zeros((50, 5))])
    with pytest.raises(InputError, match="only vary in 3"):
        T.fit_whitening(flat, 5)
    with pytest.raises(InputError, match="features"):
        T.fit_whitening(x, 4).apply(np.ones((3, 7)))


# ---------------------------------------------------------------- Procrustes / lstsq


def test_procrustes_recovers_known_rotation():
    rng = _rng(3)
    r_true = ortho_group.rvs(24, random_state=3)
    image = rng.normal(size=(300, 24)) + 2.0
    text = image @ r_true.T          # text R_true = image
    r = T.fit_procrustes(text, image)
    np.testing.assert_allclose(r, r_true, atol=1e-10)
    np.testing.assert_allclose(r @ r.T, np.eye(24), atol=1e-10)


def test_lstsq_recovers_known_linear_map():
    rng = _rng(4)
    w_true = rng.normal(size=(10, 10))
    src = rng.normal(size=(200, 10))
    np.testing.assert_allclose(T.fit_lstsq(src, src @ w_true, normalize=False), w_true, atol=1e-10)
    # Normalised variant: the normal equations on unit rows hold.
    tgt = rng.normal(size=(200, 10))
    w = T.fit_lstsq(src, tgt)
    a = src / np.linalg.norm(src, axis=1, keepdims=True)
    b = tgt / np.linalg.norm(tgt, axis=1, keepdims=True)
    np.testing.assert_allclose(a.T @ a @ w, a.T @ b, atol=1e-10)


# ---------------------------------------------------------------- cosines


def test_positive_random_cosines_on_orthonormal_rows():
    rng = _rng(5)
    q = ortho_group.rvs(30, random_state=5)
    scales = rng.uniform(0.5, 3.0, size=(30, 1))
    pos, rand = T.positive_random_cosines(q * scales, q, n_random=500, seed=1)
    np.testing.assert_allclose(pos, 1.0, atol=1e-12)
    assert rand.shape == (500,)
    np.testing.assert_allclose(rand, 0.0, atol=1e-12)   # every random pair is mismatched
    a = rng.normal(size=(40, 6))
    b = rng.normal(size=(40, 6))
    pos, _ = T.positive_random_cosines(a, b)
    brute = [a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]) for i in range(40)]
    np.testing.assert_allclose(pos, brute, atol=1e-6)


# ---------------------------------------------------------------- alignment evaluation


def test_split_indices_partition_and_determinism():
    tr, te = T.split_indices(100, 0.8, seed=3)
    assert len(tr) == 80 and len(te) == 20
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(100))
    tr2, _ = T.split_indices(100, 0.8, seed=3)
    np.testing.assert_array_equal(tr, tr2)
    with pytest.raises(InputError):
        T.split_indices(100, 1.0)


def test_evaluate_alignment_rejects_unknown_method():
    x = _rng().normal(size=(20, 4))
    with pytest.raises(InputError, match="unknown alignment method"):
        T.evaluate_alignment(x, x, "rotate")


def _rotated_pairs(seed=6, n=300, d=16):
    rng = _rng(seed)
    r_true = ortho_group.rvs(d, random_state=seed)
    image = rng.normal(size=(n, d)) + 3.0
    text = (image + 0.05 * rng.normal(size=(n, d))) @ r_true.T + 1.0
    return image.astype(np.float32), text.astype(np.float32)


def test_evaluate_alignment_procrustes_fixes_rotation():
    image, text = _rotated_pairs()
    none = T.evaluate_alignment(image, text, "none", seed=2)
    pro = T.evaluate_alignment(image, text, "procrustes", seed=2)
    lsq = T.evaluate_alignment(image, text, "lstsq", seed=2)
    np.testing.assert_array_equal(none.test_index, pro.test_index)
    assert len(pro.test_index) == 60 and len(pro.train_index) == 240
    assert pro.test.loss < none.test.loss
    assert pro.test.accuracy_i2t > 0.95 and pro.test.accuracy_t2i > 0.95
    assert lsq.test.accuracy_i2t > 0.95
    assert pro.positive_cosines.mean() > 0.99
    assert pro.positive_cosines.mean() > pro.random_cosines.mean() + 0.05
    np.testing.assert_allclose(none.image_test, image[none.test_index].astype(np.float64))
    np.testing.assert_allclose(none.test.loss, none.test.alignment + none.test.uniformity,
                               rtol=1e-6)
    again = T.evaluate_alignment(image, text, "procrustes", seed=2)
    assert again.test.loss == pro.test.loss


def test_evaluate_alignment_center_and_whiten_use_train_statistics():
    image, text = _rotated_pairs(seed=7)
    cen = T.evaluate_alignment(image, text, "center", seed=1)
    tr, te = cen.train_index, cen.test_index
    np.testing.assert_allclose(cen.image_test, image[te] - image[tr].astype(np.float64).mean(0),
                               atol=1e-5)
    np.testing.assert_allclose(cen.text_test, text[te] - text[tr].astype(np.float64).mean(0),
                               atol=1e-5)
    wh = T.evaluate_alignment(image, text, "whiten", k=8, seed=1)
    assert wh.k == 8 and wh.whiten_basis == "shared"
    assert wh.image_test.shape == (len(te), 8) and wh.text_test.shape == (len(te), 8)
    wi, wt = wh.transform["image"], wh.transform["text"]
    np.testing.assert_array_equal(wi.components, wt.components)   # one shared basis
    np.testing.assert_allclose(wi.mean, image[tr].astype(np.float64).mean(0), atol=1e-5)
    np.testing.assert_allclose(wt.mean, text[tr].astype(np.float64).mean(0), atol=1e-5)
    pooled = np.vstack([wi.apply(image[tr]), wt.apply(text[tr])])
    np.testing.assert_allclose(np.cov(pooled, rowvar=False), np.eye(8), atol=1e-6)
    np.testing.assert_allclose(wh.image_test, wi.apply(image[te]), atol=1e-12)
    sep = T.evaluate_alignment(image, text, "whiten", k=8, seed=1, whiten_basis="separate")
    z = sep.transform["image"].apply(image[tr])
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(8), atol=1e-6)
    for s in (cen.train, cen.test, wh.train, wh.test, sep.test):
        assert np.isfinite(s.loss) and 0.0 <= s.accuracy_i2t <= 1.0


def test_shared_whitening_keeps_pairs_aligned():
    rng = _rng(11)
    a = rng.normal(size=(16, 16))
    image = rng.normal(size=(400, 16)) @ a + 4.0
    text = image + 0.1 * rng.normal(size=(400, 16)) - 2.0        # modality gap
    wh = T.evaluate_alignment(image, text, "whiten", seed=0)
    assert wh.k == 16
    assert wh.test.accuracy_i2t > 0.9 and wh.test.accuracy_t2i > 0.9


# ---------------------------------------------------------------- PCA<- (supplement Eq. 11-12)


def _classes_and_images(seed=8, c=20, d=12, n=50):
    rng = _rng(seed)
    class_text = rng.normal(size=(c, d)) * np.linspace(3, 0.5, d) + 1.0
    x = rng.normal(size=(n, d)) + 2.0
    return x, class_text


def test_pca_back_projection_identity_when_k_is_d():
    x, ct = _classes_and_images()
    np.testing.assert_allclose(T.pca_back_projection(x, ct, 12), x, atol=1e-12)
    np.testing.assert_allclose(T.pca_back_projection(x, ct, 12, mean_adjust=True), x, atol=1e-12)


def test_pca_back_projection_matches_sklearn_span():
    x, ct = _classes_and_images()
    k = 5
    comps = PCA(n_components=k).fit(ct).components_       # [k, d], orthonormal rows
    proj = comps.T @ comps
    np.testing.assert_allclose(T.pca_back_projection(x, ct, k), x @ proj, atol=1e-10)
    # Mean adjustment: x<- + delta == x - Q (I - Lambda) Q^T (x - mu)
    mu = x.mean(axis=0)
    cut = np.eye(12) - proj
    expected = x - (x - mu) @ cut
    np.testing.assert_allclose(T.pca_back_projection(x, ct, k, mean_adjust=True), expected,
                               atol=1e-10)


def test_pca_back_projection_rejects_k_beyond_class_rank():
    x, ct = _classes_and_images(c=4)          # 4 classes -> at most 3 varying axes
    T.pca_back_projection(x, ct, 3)
    with pytest.raises(InputError, match="k <= 3"):
        T.pca_back_projection(x, ct, 6)


# ---------------------------------------------------------------- intra recovery (Eq. 4-10)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_recover_intra_similarity_matches_truth():
    rng = _rng(9)
    n, d = 400, 8
    x_t = _unit(rng.normal(size=(n, d)) + 0.5)
    x_i = _unit(rng.normal(size=(n, d)) - 0.3)
    s_inter = x_t @ x_i.T
    truth = x_i @ x_i.T
    rec = T.recover_intra_similarity(s_inter)
    assert rec.rank == d and rec.residual < 1e-8
    err = T.intra_recovery_error(rec, truth)
    assert err["max_abs"] < 1e-6 and err["rms"] < 1e-6
    np.testing.assert_allclose(np.diag(rec.s_intra), 1.0, atol=1e-8)
    rec2 = T.recover_intra_similarity(s_inter, rank=d)
    assert T.intra_recovery_error(rec2.s_intra, truth)["max_abs"] < 1e-6


def test_recover_intra_similarity_input_checks():
    rng = _rng(10)
    x = _unit(rng.normal(size=(30, 8)))
    with pytest.raises(InputError, match="at least d\\(d\\+1\\)/2 = 36 rows"):
        T.recover_intra_similarity(x @ x.T, rank=8)
    with pytest.raises(InputError, match="square"):
        T.recover_intra_similarity(np.ones((5, 4)))
    with pytest.raises(InputError, match="rank <= 128"):
        T.recover_intra_similarity(np.eye(200))


def test_recover_intra_similarity_ranks_equals_one_solve_per_rank():
    rng = _rng(11)
    n, d = 120, 9
    x_i = _unit(rng.normal(size=(n, d)) + 0.4)
    x_t = _unit(x_i @ rng.normal(size=(d, d)) + 0.5 * rng.normal(size=(n, d)))
    s = x_t @ x_i.T
    ranks = [1, 4, 7, 9]
    recs = T.recover_intra_similarity_ranks(s, [9, 4, 1, 7, 4])     # any order, repeats
    assert [r.rank for r in recs] == ranks
    for r in recs:
        one = T.recover_intra_similarity(s, rank=r.rank)           # SVD + lstsq, per rank
        np.testing.assert_allclose(r.s_intra, one.s_intra, atol=1e-8)
        np.testing.assert_allclose(r.q.shape, (r.rank, r.rank))
        assert r.residual == pytest.approx(one.residual, abs=1e-9)
    np.testing.assert_allclose(recs[-1].s_intra, x_i @ x_i.T, atol=1e-8)   # rank d: exact


def test_recover_intra_similarity_ranks_on_repeated_rows(monkeypatch):
    """30 pairs made of 5 distinct ones: at rank 3 (6 unknowns) the design has only 5
    distinct rows, so it is singular and the minimum-norm lstsq answers, as the
    one-rank solver does."""
    rng = _rng(12)
    x_i = np.repeat(_unit(rng.normal(size=(5, 8)) + 0.3), 6, axis=0)
    x_t = np.repeat(_unit(rng.normal(size=(5, 8)) + 0.3), 6, axis=0)
    s = x_t @ x_i.T
    calls = []
    real = np.linalg.lstsq

    def spy(a, b, **kw):
        calls.append(a.shape)
        return real(a, b, **kw)

    monkeypatch.setattr(np.linalg, "lstsq", spy)
    rec = T.recover_intra_similarity_ranks(s, [3])[0]
    assert calls == [(30, 6)]                                  # the fallback ran
    np.testing.assert_allclose(rec.s_intra, T.recover_intra_similarity(s, rank=3).s_intra,
                               atol=1e-8)


def test_recover_intra_similarity_ranks_input_checks():
    x = _unit(_rng(13).normal(size=(30, 8)))
    with pytest.raises(InputError, match="at least d\\(d\\+1\\)/2 = 36 rows"):
        T.recover_intra_similarity_ranks(x @ x.T, [2, 8])
    with pytest.raises(InputError, match="between 1 and 30"):
        T.recover_intra_similarity_ranks(x @ x.T, [0, 2])
    with pytest.raises(InputError, match="square"):
        T.recover_intra_similarity_ranks(np.ones((5, 4)), [1])


def test_whitening_rank_is_the_largest_k_whitening_accepts(rng):
    img = rng.normal(size=(20, 64)) + 3
    txt = rng.normal(size=(20, 64)) - 1
    txt[5] = txt[3]                       # a repeated caption lowers the rank
    txt[7] = txt[3]
    r = T.whitening_rank(img, txt, 0.8)
    tr, _ = T.split_indices(20, 0.8)
    pooled = np.vstack([img[tr] - img[tr].mean(0), txt[tr] - txt[tr].mean(0)])
    assert r == np.linalg.matrix_rank(pooled)
    T.evaluate_alignment(img, txt, "whiten", k=r, train_fraction=0.8)
    with pytest.raises(InputError, match="independent"):
        T.evaluate_alignment(img, txt, "whiten", k=r + 1, train_fraction=0.8)
