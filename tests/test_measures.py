"""The issue-11 measures (clipgeom.measures) and their report keys, each
against a brute-force (full N x N, float64) or closed-form reference written
here without clipgeom's code."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from clipgeom import measures, report, store, synthetic
from clipgeom.errors import InputError

from brute import conformity as brute_conformity, unit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "modality-gap"


# ---------------------------------------------------------------- references


def ref_rmg(x, y):
    """Schrodi et al.'s RMG the way the authors' compute_rmg does it: full
    N x N similarity matrices with the diagonal zeroed, d = 1 - (cos + 1) / 2."""
    u, v = unit(x), unit(y)
    match = 1 - (np.mean(np.sum(u * v, 1)) + 1) / 2
    sims = []
    for a in (u, v):
        g = a @ a.T
        np.fill_diagonal(g, 0)
        sims.append(1 - (g.sum() / (g.size - len(g)) + 1) / 2)
    return match / (match + (sims[0] + sims[1]) / 2)


def ref_knn_sets(q, t, k, same=False):
    s = unit(q) @ unit(t).T
    if same:
        np.fill_diagonal(s, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in s]


def ref_cka(x, y):
    """Kornblith et al. 2019 via centred Gram matrices (HSIC form, N x N)."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k = h @ (x @ x.T) @ h
    l_ = h @ (y @ y.T) @ h
    return np.sum(k * l_) / math.sqrt(np.sum(k * k) * np.sum(l_ * l_))


def ref_frechet_sqrtm(m1, c1, m2, c2):
    cs = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((m1 - m2) ** 2)), float(np.trace(c1 + c2 - 2 * cs.real))


def centred_orthonormal(n, r, rng):
    a = rng.standard_normal((n, r))
    a -= a.mean(0)
    q, _ = np.linalg.qr(a)
    return q


# ---------------------------------------------------------------- modality gap


def test_normalized_centroid_distance_hand_built_and_brute(rng):
    e = np.eye(4)
    img = np.repeat(e[[0]], 5, 0) * rng.uniform(0.5, 3, (5, 1))      # all along e1, any norm
    txt = np.repeat(e[[1]], 7, 0) * rng.uniform(0.5, 3, (7, 1))      # all along e2
    assert measures.normalized_centroid_distance(img, txt) == pytest.approx(math.sqrt(2))
    x = rng.standard_normal((60, 8)) + 2
    y = rng.standard_normal((45, 8)) - 1
    ref = np.linalg.norm(unit(x).mean(0) - unit(y).mean(0))
    got = measures.normalized_centroid_distance(x * rng.uniform(0.1, 10, (60, 1)), y)
    assert got == pytest.approx(ref, rel=1e-6)                        # norms do not matter


def test_instance_gap_hand_built_and_brute(rng):
    theta = 0.7
    n = 10
    img = np.tile([1.0, 0.0, 0.0], (n, 1)) * 3
    txt = np.tile([math.cos(theta), math.sin(theta), 0.0], (n, 1)) * 0.2
    rows = np.arange(n)
    assert measures.instance_gap(img, txt, rows, rows) == pytest.approx(2 * math.sin(theta / 2))
    x = rng.standard_normal((30, 6))
    y = rng.standard_normal((20, 6))
    ii = rng.integers(0, 30, 25)
    tt = rng.integers(0, 20, 25)
    ref = np.mean(np.linalg.norm(unit(x)[ii] - unit(y)[tt], axis=1))
    assert measures.instance_gap(x, y, ii, tt) == pytest.approx(ref, rel=1e-6)
    assert math.isnan(measures.instance_gap(x, y, [], []))


def test_rmg_hand_built_configurations():
    n = 6
    e = np.eye(2 * n)
    x = e[:n]                          # orthonormal images: intra d = 1/2
    rows = np.arange(n)
    # identical pairs: no gap
    assert measures.relative_modality_gap(x, x.copy(), rows, rows).value == pytest.approx(0.0)
    # antipodal pairs: d = 1 over intra 1/2: RMG = 1 / (1 + 1/2) = 2/3 (the
    # other public convention, (1 - cos) in the numerator, would give 8/9 here)
    r = measures.relative_modality_gap(x, -x, rows, rows)
    assert (r.matching, r.intra_image, r.intra_text) == pytest.approx((1.0, 0.5, 0.5))
    assert r.value == pytest.approx(2 / 3)
    # orthogonal pairs, orthonormal sets: 1/2 / (1/2 + 1/2)
    assert measures.relative_modality_gap(x, e[n:], rows, rows).value == pytest.approx(0.5)
    # every image identical, every caption identical: no spread, RMG = 1
    img = np.tile([1.0, 0.0], (4, 1))
    txt = np.tile([0.0, 1.0], (4, 1))
    assert measures.relative_modality_gap(img, txt, np.arange(4), np.arange(4)).value == \
        pytest.approx(1.0)
    assert "(1 - cos(x,y))/2" in measures.RMG_CONVENTION


def test_rmg_matches_the_authors_full_matrix_computation(rng):
    x = rng.standard_normal((70, 12)) + 0.5
    y = x + 0.8 * rng.standard_normal((70, 12)) - 0.3
    rows = np.arange(70)
    assert measures.relative_modality_gap(x, y, rows, rows).value == pytest.approx(
        ref_rmg(x, y), rel=1e-9)
    with pytest.raises(InputError, match="pair"):
        measures.relative_modality_gap(x, y, [], [])


# ---------------------------------------------------------------- Fréchet


def test_frechet_terms_of_diagonal_gaussians_closed_form(rng):
    d = 7
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    fr = measures.frechet_distance(m1, np.diag(a), m2, np.diag(b))
    assert fr.mean_term == pytest.approx(np.sum((m1 - m2) ** 2))
    assert fr.cov_term == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-10)
    assert fr.total == pytest.approx(fr.mean_term + fr.cov_term)
    # the same Gaussians rotated together: the distance is unchanged
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rot = measures.frechet_distance(q @ m1, q @ np.diag(a) @ q.T, q @ m2, q @ np.diag(b) @ q.T)
    assert (rot.mean_term, rot.cov_term) == pytest.approx((fr.mean_term, fr.cov_term), rel=1e-9)
    # equal Gaussians: zero
    same = measures.frechet_distance(m1, np.diag(a), m1, np.diag(a))
    assert same.total == pytest.approx(0.0, abs=1e-10)


def test_frechet_non_commuting_and_rank_deficient_vs_scipy_sqrtm(rng):
    d = 9
    a = rng.standard_normal((d, d))
    b = rng.standard_normal((d, 3))                  # rank 3: eigenvalues ~0 (and < 0 by rounding)
    c1, c2 = a @ a.T / d, b @ b.T
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    fr = measures.frechet_distance(m1, c1, m2, c2)
    mean_ref, cov_ref = ref_frechet_sqrtm(m1, c1, m2, c2)
    assert fr.mean_term == pytest.approx(mean_ref)
    assert fr.cov_term == pytest.approx(cov_ref, rel=1e-6)
    assert fr.cov_term >= 0


def test_frechet_from_summaries_uses_raw_population_moments(rng):
    from clipgeom import geometry

    x = rng.standard_normal((200, 5)) * [1, 2, 3, 1, 1] + 3
    y = rng.standard_normal((150, 5)) @ rng.standard_normal((5, 5)) - 1
    fr = measures.frechet_from_summaries(geometry.summarize(x), geometry.summarize(y))
    mean_ref, cov_ref = ref_frechet_sqrtm(x.mean(0), np.cov(x.T, bias=True),
                                          y.mean(0), np.cov(y.T, bias=True))
    assert (fr.mean_term, fr.cov_term) == pytest.approx((mean_ref, cov_ref), rel=1e-5)


# ---------------------------------------------------------------- rank


@pytest.mark.parametrize("s", [[3.0, 3.0, 3.0, 3.0], [4.0, 2.0, 1.0, 0.5, 0.25]])
def test_effective_rank_and_participation_ratio_of_known_singular_values(s, rng):
    s = np.asarray(s)
    n, d = 40, 10
    u = centred_orthonormal(n, len(s), rng)          # columns sum to 0: centring keeps X
    v, _ = np.linalg.qr(rng.standard_normal((d, len(s))))
    x = u @ np.diag(s) @ v.T + rng.standard_normal(d)   # plus a constant offset
    p = s / s.sum()
    assert measures.effective_rank(x) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-8)
    lam = s ** 2
    assert measures.participation_ratio(x) == pytest.approx(lam.sum() ** 2 / np.sum(lam ** 2),
                                                            rel=1e-8)
    if np.all(s == s[0]):
        assert measures.effective_rank(x) == pytest.approx(len(s))
        assert measures.participation_ratio(x) == pytest.approx(len(s))


def test_effective_rank_vs_svd_of_centred_rows(rng):
    x = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16)) + 5
    sv = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = sv / sv.sum()
    assert measures.effective_rank(x) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-8)
    # the spectrum the Compare page overlays is that distribution, descending
    np.testing.assert_allclose(measures.singular_spectrum(x), p, rtol=1e-6)   # via the covariance


def test_singular_spectrum_of_known_singular_values(rng):
    s = np.array([5.0, 3.0, 1.0, 0.0])               # rank 3 in 6 dimensions
    u = centred_orthonormal(50, 4, rng)
    v, _ = np.linalg.qr(rng.standard_normal((6, 4)))
    x = u @ np.diag(s) @ v.T + 7.0
    got = measures.singular_spectrum(x)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, [5 / 9, 3 / 9, 1 / 9, 0, 0, 0], atol=1e-9)


# ---------------------------------------------------------------- hubness


def test_skewness_of_known_count_vectors():
    assert measures.skewness([0, 0, 0, 3]) == pytest.approx(2 / math.sqrt(3))
    assert measures.skewness([5, 5, 5]) == 0.0
    c = [0, 1, 1, 2, 9, 3, 0, 4]
    assert measures.skewness(c) == pytest.approx(scipy.stats.skew(c, bias=True))


def test_knn_and_hubness_against_the_full_similarity_matrix(rng):
    x = rng.standard_normal((90, 6)) + 0.3
    y = rng.standard_normal((70, 6))
    k = 5
    ref = ref_knn_sets(x, x, k, same=True)
    got = measures.knn_indices(x, x, k, exclude_self=True)
    assert [set(r.tolist()) for r in got] == ref
    counts = np.zeros(90, int)
    for s in ref:
        for j in s:
            counts[j] += 1
    h = measures.hubness(x, k)
    np.testing.assert_array_equal(h.counts, counts)
    assert h.skew == pytest.approx(scipy.stats.skew(counts, bias=True))
    assert not h.sampled and h.k == k
    top = h.top(3)
    order = sorted(range(90), key=lambda j: (-counts[j], j))[:3]
    assert top == [{"row": j, "count": int(counts[j])} for j in order]
    # across: text queries -> image targets
    cross = np.zeros(90, int)
    for s in ref_knn_sets(y, x, k):
        for j in s:
            cross[j] += 1
    hc = measures.hubness(x, k, queries=y)
    np.testing.assert_array_equal(hc.counts, cross)
    assert hc.n_queries == 70


@pytest.mark.parametrize("block", [10 ** 7, 7 * 50])     # one block; many, last one < k
def test_knn_both_ways_one_pass_equals_two_brute_force_searches(rng, monkeypatch, block):
    monkeypatch.setattr(measures, "_KNN_BLOCK", block)    # 350 entries: 7-row blocks of 50
    a = rng.standard_normal((64, 5))
    b = rng.standard_normal((50, 5)) + 0.2
    a2b, b2a = measures.knn_both_ways(a, b, 8)
    assert [set(r.tolist()) for r in a2b] == ref_knn_sets(a, b, 8)
    assert [set(r.tolist()) for r in b2a] == ref_knn_sets(b, a, 8)


@pytest.mark.parametrize("block", [10 ** 7, 9 * 60])
def test_knn_both_ways_gives_ties_to_the_lowest_index(rng, monkeypatch, block):
    """Duplicate captions tie exactly: both directions take the lowest rows,
    as a stable sort of the full matrix does (an arbitrary partition choice
    made the demo's cross-modal hubness differ between CPUs)."""
    monkeypatch.setattr(measures, "_KNN_BLOCK", block)
    a = rng.standard_normal((80, 6)) + 0.3
    b = rng.standard_normal((12, 6))[rng.integers(0, 12, 60)]     # 60 rows, many repeated
    a2b, b2a = measures.knn_both_ways(a, b, 7)
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = ua @ ub.T
    assert [sorted(r.tolist()) for r in a2b] == \
        [sorted(r.tolist()) for r in np.argsort(-s, axis=1, kind="stable")[:, :7]]
    assert [sorted(r.tolist()) for r in b2a] == \
        [sorted(r.tolist()) for r in np.argsort(-s.T, axis=1, kind="stable")[:, :7]]


def test_modality_hubness_within_and_across(rng):
    img = rng.standard_normal((70, 6)) + 0.5
    txt = rng.standard_normal((55, 6))
    hub = measures.modality_hubness(img, txt, 6)
    for name, x, other in (("image", img, txt), ("text", txt, img)):
        within = np.zeros(len(x), int)
        for s in ref_knn_sets(x, x, 6, same=True):
            within[list(s)] += 1
        across = np.zeros(len(x), int)
        for s in ref_knn_sets(other, x, 6):
            across[list(s)] += 1
        h = hub[name]
        assert h["skew"] == pytest.approx(scipy.stats.skew(within, bias=True))
        assert h["cross"]["skew"] == pytest.approx(scipy.stats.skew(across, bias=True))
        assert [t["count"] for t in h["top"]] == sorted(within, reverse=True)[:10]
        assert h["cross"]["top"][0] == {"row": int(np.argmax(across)), "count": int(across.max())}
        assert h["cross"]["n_queries"] == len(other) and not h["sampled"]


def test_hubness_on_a_sample_says_so_and_counts_within_it(rng):
    x = rng.standard_normal((80, 5))
    h = measures.hubness(x, 4, sample=50, seed=7)
    assert h.sampled and len(h.rows) == 50 and "sample" in h.note
    sub = x[h.rows]
    ref = np.zeros(50, int)
    for s in ref_knn_sets(sub, sub, 4, same=True):
        for j in s:
            ref[j] += 1
    np.testing.assert_array_equal(h.counts, ref)
    assert {t["row"] for t in h.top()} <= set(h.rows.tolist())


def test_hubness_k_adapts_to_tiny_sets(rng):
    h = measures.hubness(rng.standard_normal((4, 3)), 10)
    assert h.k == 3 and "lowered" in h.note
    np.testing.assert_array_equal(h.counts, [3, 3, 3, 3])
    assert h.skew == 0.0


# ---------------------------------------------------------------- cross-space


def test_cka_is_one_under_rotation_and_isotropic_scaling(rng):
    x = rng.standard_normal((120, 10)) @ rng.standard_normal((10, 10)) + 4
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    assert measures.linear_cka(x, 3.7 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-6)
    y = rng.standard_normal((120, 7))                   # another width
    assert measures.linear_cka(x, y) == pytest.approx(ref_cka(x, y), rel=1e-6)   # float32 input
    assert measures.linear_cka(x, y) < 0.5
    # anisotropic scaling is not an invariance of linear CKA
    assert measures.linear_cka(x, x * np.linspace(0.1, 5, 10)) < 0.999


def test_mutual_knn_self_is_one_and_brute_force(rng):
    x = rng.standard_normal((60, 8))
    assert measures.mutual_knn(x, x.copy(), 5) == 1.0
    y = x + 0.7 * rng.standard_normal((60, 8))
    a, b = ref_knn_sets(x, x, 5, same=True), ref_knn_sets(y, y, 5, same=True)
    ref = np.mean([len(s & t) / 5 for s, t in zip(a, b)])
    assert measures.mutual_knn(x, y, 5) == pytest.approx(ref)
    z = rng.standard_normal((60, 3))
    assert measures.mutual_knn(x, z, 5) < 0.5


def test_cross_space_similarity_on_a_sample(rng):
    x = rng.standard_normal((400, 6)) + 1
    y = x @ rng.standard_normal((6, 9)) + 0.5 * rng.standard_normal((400, 9))
    cs = measures.cross_space_similarity(x, y, 10, max_rows=150, seed=3)
    pick = np.sort(np.random.default_rng(3).choice(400, 150, replace=False))
    xs, ys = x[pick], y[pick]
    assert cs.n_used == 150 and cs.sampled and "sample" in cs.note
    assert cs.cka == pytest.approx(ref_cka(xs, ys), rel=1e-6)
    a, b = ref_knn_sets(xs, xs, 10, same=True), ref_knn_sets(ys, ys, 10, same=True)
    assert cs.mutual_knn == pytest.approx(np.mean([len(s & t) / 10 for s, t in zip(a, b)]))
    rho = scipy.stats.spearmanr(brute_conformity(xs), brute_conformity(ys)).statistic
    assert cs.conformity_spearman == pytest.approx(rho, abs=1e-6)
    with pytest.raises(InputError, match="row-aligned"):
        measures.cross_space_similarity(x, y[:300])


# ---------------------------------------------------------------- likelihood


def test_whitened_likelihood_against_the_gaussian_log_density(rng):
    a = rng.standard_normal((6, 6))
    x = rng.standard_normal((500, 6)) @ a.T + rng.standard_normal(6)
    wl = measures.whitened_log_likelihood(x)
    m, c = x.mean(0), np.cov(x.T, bias=True)
    w = np.linalg.inv(scipy.linalg.sqrtm(c).real)
    z = (x - m) @ w.T
    ref = -0.5 * (6 * math.log(2 * math.pi) + np.sum(z ** 2, 1))
    np.testing.assert_allclose(wl.log_likelihood, ref, rtol=1e-6)
    # = the Gaussian log-density plus 1/2 log det C (whitening removes the volume)
    logpdf = scipy.stats.multivariate_normal(m, c).logpdf(x)
    np.testing.assert_allclose(wl.log_likelihood, logpdf + 0.5 * np.linalg.slogdet(c)[1],
                               rtol=1e-6)
    # with the population covariance the mean squared whitened norm is exactly d
    assert wl.log_likelihood.mean() == pytest.approx(-0.5 * 6 * (math.log(2 * math.pi) + 1))
    assert wl.ridge == 0 and wl.rank == 6


def test_whitened_likelihood_rank_deficient_uses_a_ridge(rng):
    x = rng.standard_normal((5, 12))                   # n < d: rank 4
    wl = measures.whitened_log_likelihood(x)
    assert wl.rank == 4 and wl.ridge > 0 and "ridge" in wl.note
    assert np.all(np.isfinite(wl.log_likelihood))
    # in-sample rows lie in the span: their whitened norms are those of the
    # pseudo-inverse (sum over rows = n * rank)
    z2 = -2 * wl.log_likelihood - 12 * math.log(2 * math.pi)
    assert z2.sum() == pytest.approx(5 * 4, rel=1e-4)


def test_likelihood_conformity_spearman(rng):
    from clipgeom import geometry

    x = rng.standard_normal((300, 8)) * np.linspace(0.5, 2, 8) + 1.5
    sec = measures.likelihood_section(x, geometry.summarize(x))
    m, c = x.mean(0), np.cov(x.T, bias=True)
    ll = -0.5 * np.einsum("ij,jk,ik->i", x - m, np.linalg.inv(c), x - m)
    rho = scipy.stats.spearmanr(ll, brute_conformity(x)).statistic
    assert sec["conformity_spearman"] == pytest.approx(rho, abs=1e-9)


# ---------------------------------------------------------------- the report


NEW_CONTRACT = {
    "modality_gap": ["centroid_distance", "mean_cosine", "normalized_centroid_distance",
                     "instance_gap", "rmg", "rmg_convention", "frechet"],
    "frechet": ["total", "mean_term", "cov_term"],
    "modality": ["effective_rank", "participation_ratio", "hubness", "likelihood"],
    "hubness": ["k", "skew", "top"],
    "cross_modal": ["cka", "mutual_knn", "n_used"],
}


def _strip(rep):
    return json.loads(json.dumps(rep))


@pytest.fixture(scope="module")
def synth_report():
    d = synthetic.two_shells(400, 20, seed=5)
    rows = np.arange(400)
    return d, report.build_report(d.image, d.text, rows, rows, temperature=0.02, max_pairs=300)


def test_report_has_every_new_contract_key_with_values(synth_report):
    d, rep = synth_report
    rep = _strip(rep)
    for k in NEW_CONTRACT["modality_gap"]:
        assert k in rep["modality_gap"], k
    for k in NEW_CONTRACT["frechet"]:
        assert isinstance(rep["modality_gap"]["frechet"][k], float)
    for mod in ("image", "text"):
        for k in NEW_CONTRACT["modality"]:
            assert k in rep[mod], (mod, k)
        for k in NEW_CONTRACT["hubness"]:
            assert k in rep[mod]["hubness"]
        top = rep[mod]["hubness"]["top"]
        assert len(top) == 10 and all(set(t) == {"row", "count"} for t in top)
        assert isinstance(rep[mod]["likelihood"]["conformity_spearman"], float)
    cm = rep["cross_modal"]
    for k in NEW_CONTRACT["cross_modal"]:
        assert k in cm
    assert set(cm["mutual_knn"]) >= {"k", "value"} and cm["n_used"] == 300
    assert isinstance(rep["modality_gap"]["rmg_convention"], str)

    img, txt = d.image.astype(np.float64), d.text.astype(np.float64)
    g = rep["modality_gap"]
    assert g["normalized_centroid_distance"] == pytest.approx(
        np.linalg.norm(unit(img).mean(0) - unit(txt).mean(0)), rel=1e-6)
    assert g["instance_gap"] == pytest.approx(
        np.mean(np.linalg.norm(unit(img) - unit(txt), axis=1)), rel=1e-6)
    assert g["rmg"] == pytest.approx(ref_rmg(img, txt), rel=1e-6)
    mean_ref, cov_ref = ref_frechet_sqrtm(img.mean(0), np.cov(img.T, bias=True),
                                          txt.mean(0), np.cov(txt.T, bias=True))
    assert g["frechet"]["mean_term"] == pytest.approx(mean_ref, rel=1e-6)
    assert g["frechet"]["cov_term"] == pytest.approx(cov_ref, rel=1e-4)
    sv = np.linalg.svd(img - img.mean(0), compute_uv=False)
    p = sv / sv.sum()
    assert rep["image"]["effective_rank"] == pytest.approx(np.exp(-np.sum(p * np.log(p))),
                                                           rel=1e-6)
    counts = np.zeros(400, int)
    for s in ref_knn_sets(txt, txt, 10, same=True):
        for j in s:
            counts[j] += 1
    assert rep["text"]["hubness"]["skew"] == pytest.approx(scipy.stats.skew(counts, bias=True),
                                                           rel=1e-6)
    assert rep["text"]["hubness"]["top"][0]["count"] == counts.max()
    pick = np.sort(np.random.default_rng(0).choice(400, 300, replace=False))
    assert cm["cka"] == pytest.approx(ref_cka(img[pick], txt[pick]), rel=1e-5)


def test_report_reuse_still_equals_a_fresh_report(synth_report):
    d, first = synth_report
    rows = np.arange(400)
    fresh = report.build_report(d.image, d.text, rows, rows, temperature=0.05, max_pairs=200)
    calls = []
    reused = report.build_report(d.image, d.text, rows, rows, temperature=0.05, max_pairs=200,
                                 reuse=first, progress=calls.append)
    assert calls[0].endswith("(reused)")
    assert not any("hubness" in c for c in calls)           # unpaired sections not recomputed
    assert _strip(reused) == _strip(fresh)
    assert reused["cross_modal"]["n_used"] == 200
    # a report written before these measures is not reused
    old = _strip(first)
    for mod in ("image", "text"):
        del old[mod]["hubness"]
    calls.clear()
    report.build_report(d.image, d.text, rows, rows, reuse=old, progress=calls.append)
    assert not any("reused" in c for c in calls)


def test_stored_report_without_the_new_keys_is_recomputed(clipgeom_home):
    d = synthetic.two_shells(120, 8, seed=1)
    store.create_dataset("s", d.image, d.text)
    ds = store.open_dataset("s")
    good = report.stored_report(ds)
    [path] = list(ds.cache_dir.glob("report-*.json"))
    old = json.loads(path.read_text())
    del old["modality_gap"]["rmg"]
    path.write_text(json.dumps(old))
    again = report.stored_report(store.open_dataset("s"))
    assert _strip(again) == _strip(good)


def test_unpaired_and_tiny_datasets(rng):
    img = rng.standard_normal((30, 6)) + 1
    txt = rng.standard_normal((20, 6)) - 1
    rep = report.build_report(img, txt, np.array([], int), np.array([], int))
    assert rep["modality_gap"]["rmg"] is None and rep["modality_gap"]["instance_gap"] is None
    assert rep["cross_modal"] is None and "pair" in rep["unavailable"]["cross_modal"]
    assert "pair" in rep["unavailable"]["rmg"]
    assert rep["modality_gap"]["normalized_centroid_distance"] > 0
    assert rep["image"]["hubness"]["k"] == 10
    few = report.build_report(img[:6], txt[:6], np.arange(6), np.arange(6))
    assert few["cross_modal"]["mutual_knn"]["k"] == 5
    assert few["image"]["hubness"]["k"] == 5
    assert "rank is at most 5" in few["image"]["effective_rank_note"]
    assert few["image"]["likelihood"]["ridge"] > 0


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (Liang et al.'s embeddings) absent")
def test_convirt_trained_vs_random_init_real_embeddings():
    """Liang et al. (2022) Fig. 1: ConVIRT has a gap after training and at
    random initialisation. Numbers against independent numpy computations."""
    trained = np.load(SHARED / "features_convirt.npy").astype(np.float64)
    rand = np.load(SHARED / "features_convirt_random.npy").astype(np.float64)
    assert trained.shape == rand.shape == (2, 500, 512)
    rows = np.arange(500)
    for arr in (trained, rand):
        img, txt = arr
        ref_gap = np.linalg.norm(img.mean(0) - txt.mean(0))      # rows are unit already
        assert measures.normalized_centroid_distance(img, txt) == pytest.approx(ref_gap,
                                                                                rel=1e-6)
        assert measures.relative_modality_gap(img, txt, rows, rows).value == pytest.approx(
            ref_rmg(img, txt), rel=1e-6)
        assert ref_gap > 0.1                                      # a gap, trained or not
    # CKA between the trained and the random-init image spaces (same X-rays)
    cka = measures.linear_cka(trained[0], rand[0])
    assert cka == pytest.approx(ref_cka(trained[0], rand[0]), rel=1e-6)
    assert 0 < cka < 1
    assert measures.mutual_knn(trained[0], trained[0].copy()) == 1.0
