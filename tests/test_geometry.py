"""Geometry against analytic Gaussian cases and direct formulas."""

import numpy as np
import pytest

from clipgeom import geometry
from clipgeom.errors import InputError


def test_separability_matches_definition_and_analytic_value(rng):
    n, d = 200_000, 4
    mi, mt = np.array([3.0, 0, 0, 1]), np.array([-1.0, 0, 0.5, 1])
    si, st = np.array([1.0, 2, 1, 1]), np.array([1.0, 1, 0.5, 3])
    img = (mi + si * rng.standard_normal((n, d))).astype(np.float32)
    txt = (mt + st * rng.standard_normal((n, d))).astype(np.float32)
    sep = geometry.separability(geometry.summarize(img), geometry.summarize(txt))
    analytic = np.abs(mi - mt) / np.sqrt(si ** 2 + st ** 2)
    np.testing.assert_allclose(sep, analytic, atol=0.01)
    # and exactly the sample formula of Eq. 5
    direct = np.abs(img.mean(0, dtype=np.float64) - txt.mean(0, dtype=np.float64)) / np.sqrt(
        img.astype(np.float64).var(0) + txt.astype(np.float64).var(0))
    np.testing.assert_allclose(sep, direct, rtol=1e-9)
    assert geometry.top_features(sep, 2)[0]["feature"] == 0


def test_thin_shell_of_standard_gaussian_is_analytic(rng):
    # x ~ N(0, I_d): ||x|| ~ chi_d, E||x||^2 = d, var(||x||) -> 1/2.
    n, d = 20_000, 400
    x = rng.standard_normal((n, d)).astype(np.float32) + 5.0
    sh = geometry.thin_shell(geometry.summarize(x))
    assert sh.rms_norm == pytest.approx(np.sqrt(d), rel=0.005)
    assert sh.norm_var == pytest.approx(0.5, abs=0.03)
    assert sh.mean_norm ** 2 + sh.norm_var == pytest.approx(sh.rms_norm ** 2, rel=1e-9)  # Eq. 2
    assert sh.rms_rel_error == pytest.approx(0.5 / (2 * d), rel=0.1)   # ~ var(y) / (2 mu^2)
    assert sh.raw_mean_norm == pytest.approx(np.sqrt(d + 25 * d), rel=0.005)


def test_offset_and_ellipsoid_shape_against_known_covariance(rng):
    d, n = 6, 300_000
    a = rng.standard_normal((d, d))
    cov = a @ a.T
    m = np.arange(1, d + 1, dtype=float)
    x = rng.multivariate_normal(m, cov, size=n).astype(np.float32)
    s = geometry.summarize(x)
    np.testing.assert_allclose(s.cov, cov, atol=0.05 * np.abs(cov).max())
    true_odd = (np.abs(cov).sum(1) - np.diag(cov)) / np.diag(cov)
    np.testing.assert_allclose(geometry.off_diagonal_dominance(s.cov), true_odd, rtol=0.05)
    assert geometry.mean_over_sigma(s) == pytest.approx(
        np.linalg.norm(m) / np.sqrt(np.trace(cov)), rel=0.01)
    top = geometry.offset_features(s, 1)[0]
    ratio = m / np.sqrt(np.diag(cov))
    assert top["feature"] == int(np.argmax(ratio))


def test_odd_of_diagonal_covariance_is_zero():
    assert np.all(geometry.off_diagonal_dominance(np.diag([1.0, 2.0, 3.0])) == 0)
    c = np.array([[2.0, -1.0], [-1.0, 4.0]])
    np.testing.assert_allclose(geometry.off_diagonal_dominance(c), [0.5, 0.25])


def test_histogram_kl_against_hand_computation():
    same = np.linspace(0, 1, 1000)
    assert geometry.histogram_kl(same, same, bins=10).kl == pytest.approx(0.0, abs=1e-12)
    # a: 3 values in bin 0, 1 in bin 1; b: 1 in bin 0, 3 in bin 1 (2 bins on [0, 1])
    a = np.array([0.1, 0.2, 0.3, 0.9])
    b = np.array([0.0, 0.6, 0.7, 1.0])
    got = geometry.histogram_kl(a, b, bins=2, floor=0.0).kl
    assert got == pytest.approx(0.75 * np.log(3) + 0.25 * np.log(1 / 3))
    # disjoint support: finite thanks to the floor
    assert np.isfinite(geometry.histogram_kl([0.0, 0.1], [0.9, 1.0], bins=4).kl)


def test_svm_and_logistic_separate_offset_modalities(rng):
    img = rng.standard_normal((500, 8)).astype(np.float32)
    txt = rng.standard_normal((500, 8)).astype(np.float32)
    txt[:, 2] += 8.0                                   # one tag feature
    res = geometry.svm_top2(img, txt, [2, 5])
    assert res.accuracy == 1.0
    # the boundary w.x + b = 0 separates the two means
    side = lambda p: np.sign(res.weights @ p + res.bias)  # noqa: E731
    assert side(np.array([0.0, 0.0])) != side(np.array([8.0, 0.0]))
    assert geometry.linear_separability(img, txt) == 1.0
    same = geometry.linear_separability(img, rng.standard_normal((500, 8)).astype(np.float32))
    assert 0.35 < same < 0.65                          # chance when nothing differs


def test_blur_experiment_reproduces_fig7():
    origin = geometry.blur_experiment([0.0])
    offset = geometry.blur_experiment([10.0, 5.0, 5.0])
    # origin-centred: mean and extreme vector look alike (both ~0 on average)
    assert abs(origin.cos_to_mean.mean() - origin.cos_to_extreme.mean()) < 0.1
    # offset sphere: the mean vector is far more similar to the set
    assert offset.cos_to_mean.mean() > offset.cos_to_extreme.mean() + 0.1
    assert offset.cos_to_extreme.size == 999
    # analytic: cos(m, v) ~ ||c|| / sqrt(||c||^2 + d) for the offset sphere
    c2 = 100 + 25 + 25
    assert offset.cos_to_mean.mean() == pytest.approx(np.sqrt(c2 / (c2 + 512)), rel=0.05)


def test_summarize_rejects_bad_arrays():
    with pytest.raises(InputError, match="2-D"):
        geometry.summarize(np.zeros(5))
    with pytest.raises(InputError, match="at least 2 rows"):
        geometry.summarize(np.ones((1, 3)))
    x = np.ones((4, 3))
    x[2, 0] = np.inf
    with pytest.raises(InputError, match="row 2"):
        geometry.summarize(x, "image embeddings")


def test_norm_histograms_and_variance_spectrum(rng):
    x = (rng.standard_normal((3000, 50)) * np.linspace(0.5, 3, 50) + 4).astype(np.float32)
    s = geometry.summarize(x)
    h = geometry.norm_histograms(s, bins=30)
    assert h["centered"].counts.sum() == 3000 and h["raw"].counts.sum() == 3000
    assert h["centered"].edges[0] == 0.0
    # thin shell: nothing near the mean
    cn = np.linalg.norm(x - x.astype(np.float64).mean(0), axis=1)
    assert h["centered"].counts[: int(30 * cn.min() / h["centered"].edges[-1])].sum() == 0
    spec = geometry.variance_spectrum(s)
    np.testing.assert_allclose(spec, np.sort(x.astype(np.float64).var(0))[::-1], rtol=1e-6)
