import numpy as np
import pytest

from clipgeom import loss
from clipgeom.errors import InputError

from brute import clip_loss


def _pairs(rng, n=240, d=24, noise=0.6, shift=3.0):
    z = rng.standard_normal((n, d))
    v = z + noise * rng.standard_normal((n, d)) + shift
    t = z + noise * rng.standard_normal((n, d)) - shift / 2 + np.arange(d) / 10
    return v.astype(np.float32), t.astype(np.float32)


@pytest.mark.parametrize("kind", loss.LOGIT_KINDS)
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_loss_matches_full_matrix(rng, kind, chunk):
    v, t = _pairs(rng)
    got = loss.contrastive_loss(v, t, 0.05, logit=kind, chunk=chunk)
    ref = clip_loss(v, t, 0.05, kind=kind)
    assert got.total == pytest.approx(ref["total"], rel=1e-5)
    assert got.alignment == pytest.approx(ref["alignment"], rel=1e-5)
    assert got.uniformity == pytest.approx(ref["uniformity"], rel=1e-5)
    assert got.total == pytest.approx(got.alignment + got.uniformity, rel=1e-9)
    assert got.accuracy_i2t == ref["acc_i2t"]
    assert got.accuracy_t2i == ref["acc_t2i"]
    np.testing.assert_allclose(got.per_pair, ref["per_pair"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got.correct, ref["correct"])


def test_correct_and_misclassified_split(rng):
    v, t = _pairs(rng, noise=1.2)
    got = loss.contrastive_loss(v, t, 0.01)
    ref = clip_loss(v, t, 0.01)
    assert 0 < ref["correct"].sum() < len(v)      # both groups non-empty
    # per-pair losses near 0 are differences of ~1/tau-sized float32 numbers
    assert got.loss_correct == pytest.approx(ref["per_pair"][ref["correct"]].mean(), rel=1e-5,
                                             abs=2e-5)
    assert got.loss_misclassified == pytest.approx(
        ref["per_pair"][~ref["correct"]].mean(), rel=1e-5)


@pytest.mark.parametrize("modality", ["image", "text", "both"])
def test_alpha_sweep_matches_shifted_full_matrix(rng, modality):
    v, t = _pairs(rng, n=150)
    alphas = [-1.0, -0.3, 0.0, 0.5, 1.0]
    sw = loss.alpha_sweep(v, t, alphas, modality, 0.01, chunk=40)
    for a, total, al in zip(alphas, sw.total, sw.alignment):
        ai = a if modality in ("image", "both") else 0.0
        at = a if modality in ("text", "both") else 0.0
        ref = clip_loss(v, t, 0.01, ai=ai, at=at)
        assert total == pytest.approx(ref["total"], rel=1e-5)
        assert al == pytest.approx(ref["alignment"], rel=1e-5)
    assert sw.argmin == alphas[int(np.argmin(sw.total))]


def test_progress_batches_give_same_sweep(rng):
    v, t = _pairs(rng, n=120)
    calls = []
    a = loss.alpha_sweep(v, t, None, "image", progress=lambda d, n: calls.append((d, n)))
    b = loss.alpha_sweep(v, t, None, "image")
    np.testing.assert_allclose(a.total, b.total, rtol=1e-12)
    assert calls[-1] == (21, 21) and len(calls) == 3
    np.testing.assert_allclose(a.alpha, np.round(np.arange(-10, 11) / 10, 10))


def _wide_case(rng):
    # Images in a narrow cone around e_1; half of the captions sit in the
    # opposite cone. At tau = 0.01 those captions' best logits are ~200 below
    # the row maxima of every chunk, so their columns need the exact path.
    n, d = 200, 8
    v = 0.1 * rng.standard_normal((n, d))
    v[:, 0] += 1.0
    t = v + 0.02 * rng.standard_normal((n, d))
    t[::2] *= -1
    return v.astype(np.float32), t.astype(np.float32)


def test_wide_logit_range_falls_back_exactly(rng):
    v, t = _wide_case(rng)
    got = loss.contrastive_loss(v, t, 0.01, chunk=16)
    ref = clip_loss(v, t, 0.01)
    assert got.total == pytest.approx(ref["total"], rel=1e-5)
    # logits reach 1/tau = 100: float32 per-pair values carry ~1e-5 absolute error
    np.testing.assert_allclose(got.per_pair, ref["per_pair"], rtol=1e-5, atol=1e-4)


def test_without_the_exact_fallback_this_case_would_be_wrong(rng, monkeypatch):
    # Guards the guard: the case above really needs the exact column path.
    v, t = _wide_case(rng)
    monkeypatch.setattr(loss, "_SAFE_LOG_GAP", np.inf)
    with np.errstate(all="ignore"):
        got = loss.contrastive_loss(v, t, 0.01, chunk=16)
    ref = clip_loss(v, t, 0.01)
    assert not np.isclose(got.total, ref["total"], rtol=1e-3)


def test_loss_of_perfect_orthogonal_pairs_is_analytic():
    # Image k = text k = e_k: diag logit 1/tau, off-diagonal 0, so each
    # cross-entropy is log(e^{1/tau} + (n-1)) - 1/tau.
    n, tau = 16, 0.1
    e = np.eye(n, dtype=np.float32)
    got = loss.contrastive_loss(e, e, tau)
    expected = np.log(np.exp(1 / tau) + n - 1) - 1 / tau
    assert got.total == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert got.accuracy_i2t == 1.0 and got.accuracy_t2i == 1.0


def test_bad_inputs(rng):
    v, t = _pairs(rng, n=20)
    with pytest.raises(InputError, match="rows"):
        loss.contrastive_loss(v, t[:10])
    with pytest.raises(InputError, match="features"):
        loss.contrastive_loss(v, t[:, :5])
    bad = v.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="row 3"):
        loss.contrastive_loss(bad, t)
    with pytest.raises(InputError, match="temperature"):
        loss.contrastive_loss(v, t, 0.0)
    with pytest.raises(InputError, match="logit"):
        loss.contrastive_loss(v, t, logit="hyperbolic")
    with pytest.raises(InputError, match="modality"):
        loss.alpha_sweep(v, t, [0.0], "audio")
    # alpha = 1 on two identical rows shifts both to zero: undefined cosine
    same = np.ones((4, 3), np.float32)
    with pytest.raises(InputError, match="zero vector"):
        loss.alpha_sweep(same, same + 0.5, [1.0], "image")
