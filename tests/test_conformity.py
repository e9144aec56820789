"""Conformity against brute-force N x N cosine matrices."""

import numpy as np
import pytest

from clipgeom import conformity
from clipgeom.errors import InputError

from brute import conformity as brute_conformity


def _cloud(rng, n=400, d=32, offset=2.0):
    return (rng.standard_normal((n, d)) + offset * rng.standard_normal(d)).astype(np.float32)


def test_exact_conformity_equals_brute_force(rng):
    x = _cloud(rng)
    np.testing.assert_allclose(conformity.exact_conformity(x, chunk=37),
                               brute_conformity(x), atol=1e-6)


def test_conformity_against_a_reference_set(rng):
    x, ref = _cloud(rng, 100), _cloud(rng, 250)
    np.testing.assert_allclose(conformity.exact_conformity(x, ref),
                               brute_conformity(x, ref), atol=1e-6)


def test_shifted_conformity_equals_brute_force_on_shifted_rows(rng):
    x = _cloud(rng, 300).astype(np.float64)
    for alpha in (-1.0, 0.4, 1.0):
        shifted = (x - alpha * x.mean(0)).astype(np.float32)
        np.testing.assert_allclose(conformity.shifted_conformity(x.astype(np.float32), alpha),
                                   brute_conformity(shifted), atol=2e-6)


def test_fit_matches_least_squares_and_prop1(rng):
    x = _cloud(rng, 2000, 256, offset=1.0)
    fit = conformity.fit_conformity(x)
    exact = brute_conformity(x)
    m = x.astype(np.float64).mean(0)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ (m / np.linalg.norm(m))
    A = np.c_[cos, np.ones_like(cos)]
    (a, b), *_ = np.linalg.lstsq(A, exact, rcond=None)
    assert fit.a == pytest.approx(a, rel=1e-5)
    assert fit.b == pytest.approx(b, abs=1e-6)
    assert fit.pearson == pytest.approx(np.corrcoef(cos, exact)[0, 1], abs=1e-9)
    np.testing.assert_allclose(fit.estimated, a * cos + b, atol=1e-6)
    # a thin-shell cloud: near-perfect correlation, as the paper reports
    assert fit.pearson > 0.99
    # Prop. 1: a ~ ||m|| / sqrt(R^2 + ||m||^2), R^2 = E||v - m||^2
    R2 = np.mean(np.sum((x - m) ** 2, axis=1))
    assert fit.theory_a == pytest.approx(np.linalg.norm(m) / np.sqrt(R2 + m @ m), rel=1e-6)
    assert fit.a == pytest.approx(fit.theory_a, rel=0.05)
    assert fit.a_paper == pytest.approx(1 / fit.a, rel=0.02)   # reversed regression


def test_conformity_kl_sweep_matches_brute_force(rng):
    img = _cloud(rng, 300, 16, 2.0)
    txt = _cloud(rng, 200, 16, 3.0)
    from clipgeom.geometry import histogram_kl
    sw = conformity.conformity_kl_sweep(img, txt, [-0.5, 0.0, 0.5], modality="both", bins=20)
    for a, kl in zip(sw.alpha, sw.kl):
        si = img - a * img.astype(np.float64).mean(0)
        st = txt - a * txt.astype(np.float64).mean(0)
        ref = histogram_kl(brute_conformity(si), brute_conformity(st), bins=20).kl
        assert kl == pytest.approx(ref, rel=1e-6, abs=1e-9)
    assert sw.at_zero == pytest.approx(sw.kl[1])


def test_errors(rng):
    with pytest.raises(InputError, match="zero vector"):
        conformity.exact_conformity(np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(InputError, match="features"):
        conformity.exact_conformity(_cloud(rng, 10, 4), _cloud(rng, 10, 5))
    with pytest.raises(InputError, match="modality"):
        conformity.conformity_kl_sweep(_cloud(rng, 10), _cloud(rng, 10), [0.0], modality="x")


def test_frequency_correlation_against_rank_formula(rng):
    c = rng.standard_normal(200)
    f = c * 2 + 0.5 * rng.standard_normal(200)
    f[5] = np.nan
    res = conformity.frequency_correlation(c, f)
    ok = np.isfinite(f)
    rc = np.argsort(np.argsort(c[ok])).astype(float)
    rf = np.argsort(np.argsort(f[ok])).astype(float)
    assert res["rho"] == pytest.approx(np.corrcoef(rc, rf)[0, 1], abs=1e-12)
    assert res["n"] == 199
    with pytest.raises(InputError, match="frequencies"):
        conformity.frequency_correlation(c, f[:10])
