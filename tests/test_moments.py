"""Mergeable statistics (clipgeom.moments): partials merged over any split of
the rows equal one pass over all of them and a plain numpy float64 brute
force; the report built from them equals the report of the code before them
(tests/golden/, written by the previous implementation) and a float64 brute
force where the old code carried float32 rounding; stored arrays are checked
once per dataset, not once per analysis function."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

from clipgeom import conformity, moments, report, store, synthetic, validate
from clipgeom.errors import InputError

from brute import conformity as brute_conformity
import precision

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="clipgeom-hypothesis-"))

GOLDEN = Path(__file__).parent / "golden"
# Stated precisions, one place: tests/precision.py (float64 statistics to 1e-9;
# sections of float32 products to 1e-7; one row's log-likelihood to 1e-6).
# Merged over any split the float32 sections still equal one pass to the bit.
REL = precision.F64_REL
F32_REL = precision.F32_REL
F32_ROW_REL = precision.F32_ROW_REL


def prop(n: int):
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _cloud(seed: int, n: int, d: int, offset: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.2, 2.0, d)
    return (rng.standard_normal((n, d)) * scale + offset * rng.standard_normal(d)
            ).astype(np.float32)


def _splits(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    pts = sorted({0, n, *[c % (n + 1) for c in cuts]})
    return list(zip(pts[:-1], pts[1:]))


def _fold(fn, sources, consts, blocks):
    return moments.fold([fn(sources, a, b, consts) for a, b in blocks]).finalize()


def _close(a, b, rel=REL, atol=0.0):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rel, atol=atol)


# --------------------------------------------------------------------------
# Pass 1: merged over random splits = one pass = numpy float64


@prop(25)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 300), d=st.integers(1, 12),
       cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_first_pass_merged_over_any_split_equals_one_pass_and_numpy(seed, n, d, cuts):
    x = _cloud(seed, n, d)
    opts = {"scatter": True, "gram": True}
    one = _fold(moments.first_pass, {"x": x}, opts, [(0, n)])
    merged = _fold(moments.first_pass, {"x": x}, opts, _splits(n, cuts))
    v = x.astype(np.float64)
    norms = np.linalg.norm(v, axis=1)
    u = v / norms[:, None]
    brute = {"mean": v.mean(0), "cov": np.cov(v, rowvar=False, bias=True).reshape(d, d),
             "norm_mean": norms.mean(), "norm_var": norms.var(), "unit_sum": u.sum(0),
             "unit_gram": u.T @ u, "col_min": v.min(0), "col_max": v.max(0)}
    for got in (one, merged):
        assert got.n == n and got.zero_rows == 0
        for k, ref in brute.items():
            # the covariance's scale is its diagonal: compare entries relative to it
            atol = 1e-12 * float(np.max(np.abs(ref))) if k in ("cov", "unit_gram", "unit_sum",
                                                                 "mean") else 0.0
            _close(getattr(got, k), ref, rel=REL, atol=atol)
    for k in brute:
        _close(getattr(merged, k), getattr(one, k), rel=REL,
               atol=1e-13 * float(np.max(np.abs(getattr(one, k)))))


def test_chan_merge_is_stable_far_from_the_origin():
    """Rows at 1e6 with unit spread: naive sums of squares lose the variance,
    the pairwise update keeps it (the reason for Chan et al.)."""
    rng = np.random.default_rng(0)
    x = 1e6 + rng.standard_normal((20_000, 3))
    blocks = [(a, min(a + 997, len(x))) for a in range(0, len(x), 997)]
    got = _fold(moments.first_pass, {"x": x}, {"scatter": True}, blocks)
    _close(np.diag(got.cov), x.var(axis=0), rel=1e-9)


def test_zero_rows_are_counted_and_refused_for_directions():
    x = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]])
    f = moments.first_moments(x)
    assert f.zero_rows == 1
    _close(f.mean, x.mean(0))
    with pytest.raises(InputError, match="all-zero"):
        f.unit_mean


# --------------------------------------------------------------------------
# Pass 2 and the shifted-conformity passes


@prop(15)
@given(seed=st.integers(0, 10_000), n=st.integers(40, 200), d=st.integers(2, 10),
       cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_second_pass_merged_over_any_split_equals_one_pass_and_brute_force(seed, n, d, cuts):
    x = _cloud(seed, n, d)
    v = x.astype(np.float64)
    first = moments.first_moments(x, gram=True)
    alphas = np.array([-0.5, 0.0, 0.7])
    lam, vec = np.linalg.eigh(np.cov(v, rowvar=False, bias=True))
    white = vec / np.sqrt(lam)
    iso = moments.isotropy_vectors(first)
    lo, hi = float(v[:, 1].min()), float(v[:, 1].max())
    edges = moments.pooled_edges(lo, hi, 7)
    consts = conformity.conformity_constants(
        first, whitening=white, iso_vecs=iso, alphas=alphas, feature_edges={1: edges},
        keep=("conformity", "log_likelihood", "centred_norm"))
    one = _fold(moments.second_pass, {"x": x}, consts, [(0, n)])
    merged = _fold(moments.second_pass, {"x": x}, consts, _splits(n, cuts))

    m = v.mean(0)
    norms = np.linalg.norm(v, axis=1)
    conf = brute_conformity(v)
    cos = v @ m / norms / np.linalg.norm(m)
    z = (v - m) @ white
    ll = -0.5 * (d * np.log(2 * np.pi) + np.sum(z * z, axis=1))
    cn = np.linalg.norm(v - m, axis=1)
    cols = {"centred_norm": cn, "norm": norms, "conformity": conf, "cos_mean": cos,
            "log_likelihood": ll}
    unit = v / norms[:, None]
    n2 = norms[:, None] ** 2 - 2 * alphas * (v @ m)[:, None] + alphas ** 2 * (m @ m)
    w = 1 / np.sqrt(n2)
    for got in (one, merged):
        for k, ref in cols.items():
            rel = F32_ROW_REL if k == "log_likelihood" else REL
            assert got.mean(k) == pytest.approx(ref.mean(), rel=rel, abs=1e-12)
            assert got.var(k) == pytest.approx(ref.var(), rel=1e-6 if k == "log_likelihood"
                                               else 1e-7, abs=1e-14)
        assert got.cov("cos_mean", "conformity") == pytest.approx(
            np.mean((cos - cos.mean()) * (conf - conf.mean())), rel=1e-7, abs=1e-15)
        _close(got.log_z, logsumexp(unit @ iso, axis=0), rel=F32_REL)
        _close(got.xtw, v.T @ w, atol=1e-12 * np.abs(v.T @ w).max())
        _close(got.wsum, w.sum(0))
        assert got.features[1].counts.tolist() == np.histogram(v[:, 1], edges)[0].tolist()
        _close(got.kept["conformity"], conf, rel=1e-9, atol=1e-12)
        _close(got.kept["log_likelihood"], ll, rel=F32_ROW_REL)
        _close(got.kept["centred_norm"], cn, rel=1e-12)
    for k in ("conformity", "log_likelihood"):                     # row order kept
        _close(merged.kept[k], one.kept[k], rel=1e-12, atol=1e-15)
    _close(merged.log_z, one.log_z, rel=1e-12)          # float32 products: split-free
    _close(merged.rows.scatter, one.rows.scatter, rel=1e-9, atol=1e-13 * np.abs(
        one.rows.scatter).max())


@prop(15)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 400), d=st.integers(1, 40),
       k=st.integers(1, 9), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_float32_products_do_not_depend_on_the_split(seed, n, d, k, cuts):
    """product32 over any split of the rows is one call's result to the bit
    (a small grid, so a split crosses many grid cells), and float64's to
    float32 accuracy."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) + 3.0
    mat = rng.standard_normal((d, k))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(moments, "F32_GRID", 16)
        one = moments.product32(x, mat, 0)
        parts = np.vstack([moments.product32(x[a:b], mat, a) for a, b in _splits(n, cuts)])
    assert parts.dtype == np.float32 and parts.tobytes() == one.tobytes()
    ref = x @ mat
    assert np.abs(one - ref).max() <= 1e-5 * (np.abs(x) @ np.abs(mat)).max()


def test_whitened_norms_keep_near_singular_directions_in_float64(monkeypatch):
    """A covariance spanning 12 orders of magnitude: the squared whitened
    norms equal float64's to F32_ROW_REL; with every direction in float32
    (the guard off) they miss by far more, so the guard is what holds it."""
    rng = np.random.default_rng(3)
    n, d = 3000, 24
    scales = np.logspace(0, -6, d)                     # eigenvalues 1 .. 1e-12
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    x = (rng.standard_normal((n, d)) * scales) @ basis.T + 5.0 * rng.standard_normal(d)
    centred = x - x.mean(0)
    lam, vec = np.linalg.eigh(np.cov(centred, rowvar=False, bias=True))
    white = vec / np.sqrt(lam)
    truth = np.einsum("ij,ij->i", centred @ white, centred @ white)
    got = moments.whitened_sq_norms(centred, white, 0)
    assert np.abs(got / truth - 1).max() < F32_ROW_REL
    monkeypatch.setattr(moments, "F32_MIN_EIGEN_FRACTION", 0.0)
    all32 = moments.whitened_sq_norms(centred, white, 0)
    assert np.abs(all32 / truth - 1).max() > 1e-3


def test_shift_passes_against_brute_force_on_shifted_rows():
    x = _cloud(3, 150, 6)
    t = _cloud(4, 120, 6, offset=2.0)
    alphas = np.array([-1.0, 0.0, 0.4, 1.0])
    kl = conformity.conformity_kl_sweep(x, t, alphas, bins=15, chunk=37)
    from clipgeom.geometry import histogram_kl
    v, u = x.astype(np.float64), t.astype(np.float64)
    for a, got in zip(alphas, kl.kl):
        ref = histogram_kl(brute_conformity(v - a * v.mean(0)),
                           brute_conformity(u - a * u.mean(0)), bins=15).kl
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # one modality shifted only: the other's single column is binned on every edge
    img_only = conformity.conformity_kl_sweep(x, t, alphas, modality="image", bins=15)
    for a, got in zip(alphas, img_only.kl):
        ref = histogram_kl(brute_conformity(v - a * v.mean(0)), brute_conformity(u),
                           bins=15).kl
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_pairs_pass_merged_equals_numpy():
    x, t = _cloud(5, 90, 5), _cloud(6, 70, 5)
    ii = np.random.default_rng(1).integers(0, 90, 60)
    tt = np.arange(60)
    src = {"image": x, "text": t, "pair_image_rows": ii, "pair_text_rows": tt}
    got = _fold(moments.pairs_pass, src, None, _splits(60, [7, 8, 33]))
    a = x[ii].astype(np.float64)
    b = t[tt].astype(np.float64)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    _close(got.mean, [np.mean(np.sqrt(2 - 2 * cos)), np.mean((1 - cos) / 2)])


# --------------------------------------------------------------------------
# The report: any block size, the previous implementation, float64 truth


def assert_reports_equal(a, b, rel=REL, skip=(), f32_rel=None):
    """Every leaf equal (floats to ``rel``; with ``f32_rel``, the sections of
    float32 products, precision.F32_PATHS, to that instead)."""
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
    for k in skip:
        a.pop(k, None), b.pop(k, None)
    bad = precision.mismatches(b, a, rel=rel, f32_rel=f32_rel or rel)
    assert not bad, "\n".join(bad)


CONFORMITY_KEYS = ("mean", "a", "b", "pearson", "a_paper", "b_paper")


def _check_hubness_by_brute_force(rep: dict, arrays: dict, k: int = 10):
    """Within- and cross-modal hubness skewness and top hub of a report (all
    rows: the arrays are below the hubness sample) against the full float64
    similarity matrices, ties to the lowest index (a stable sort)."""
    from scipy.stats import skew
    unit = {m: (lambda v: v / np.linalg.norm(v, axis=1, keepdims=True))(
        np.asarray(x, np.float64)) for m, x in arrays.items()}
    for mod, other in (("image", "text"), ("text", "image")):
        within = unit[mod] @ unit[mod].T
        np.fill_diagonal(within, -np.inf)
        cross = unit[other] @ unit[mod].T                  # other's rows query mine
        for section, sim in ((rep[mod]["hubness"], within),
                             (rep[mod]["hubness"]["cross"], cross)):
            counts = np.bincount(np.argsort(-sim, axis=1, kind="stable")[:, :k].ravel(),
                                 minlength=sim.shape[1])
            assert section["skew"] == pytest.approx(skew(counts.astype(float)), rel=1e-12)
            assert section["top"][0] == {"row": int(np.argmax(counts)),
                                         "count": int(counts.max())}


def _compare_with_golden(new: dict, gold: dict, arrays: dict, pairs: tuple,
                         temperature: float):
    """Every section at its stated precision (tests/precision.py); discrete
    float32-derived values (accuracies, argmins, Spearman of log-likelihoods)
    to a tolerance counted from near-ties in float64 truth; conformity (the
    old code summed unit rows in float32) against a float64 brute force to
    1e-8 and the old values to their float32 accuracy; hubness against a
    stable-sort brute force (the golden broke exact kNN ties arbitrarily)."""
    old = json.loads(json.dumps(gold["report"]))
    new = json.loads(json.dumps(new))
    new.pop("computation")
    _check_hubness_by_brute_force(new, arrays)
    bad = []
    for mod in arrays:
        new[mod].pop("hubness"), old[mod].pop("hubness")
    for mod, x in arrays.items():
        n_c, o_c = new[mod].pop("conformity"), old[mod].pop("conformity")
        for k in ("theory_a", "theory_a_paper"):
            assert n_c[k] == pytest.approx(o_c[k], rel=REL)
        v = x.astype(np.float64)
        exact = brute_conformity(v)
        m = v.mean(0)
        cos = v @ m / np.linalg.norm(v, axis=1) / np.linalg.norm(m)
        a, b = np.polyfit(cos, exact, 1)
        a_rev, b_rev = np.polyfit(exact, cos, 1)
        truth = {"mean": exact.mean(), "a": a, "b": b, "a_paper": a_rev, "b_paper": b_rev,
                 "pearson": np.corrcoef(cos, exact)[0, 1]}
        for k in CONFORMITY_KEYS:
            assert n_c[k] == pytest.approx(truth[k], rel=1e-8, abs=1e-12), (mod, k)
            assert n_c[k] == pytest.approx(o_c[k], rel=1e-6, abs=1e-7), (mod, k)
    # discrete float32 leaves (accuracies, the loss split by them, argmins,
    # Spearman of log-likelihoods) against float64 truth; the stored values
    # of those broke exact ties by float32 rounding
    derived = precision.derived_truths(new, pairs, arrays, temperature)
    bad += precision.check_derived(new, derived)
    bad += precision.mismatches(new, old, skip=derived)
    assert not bad, precision.explain(bad, gold["recorded"])


@pytest.fixture
def one_torch_thread():
    """The paired stages' torch kernels on one thread (as the dashboard runs
    them): on a shared 2-core machine more threads spin for minutes."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_report_equals_the_previous_implementation_on_generated_data(one_torch_thread):
    gold = precision.load_golden(GOLDEN / "report_two_shells.json")
    d = synthetic.two_shells(2000, 64, seed=7)
    ii, tt = np.arange(0, 2000, 2), np.arange(1000)
    text = d.text[:1000]
    new = report.build_report(d.image, text, ii, tt, dataset="golden", temperature=0.03,
                              max_pairs=500, seed=0, engine=moments.LocalEngine(333))
    pick = np.sort(np.random.default_rng(0).choice(1000, 500, replace=False))  # the seeded sample
    _compare_with_golden(new, gold, {"image": d.image, "text": text},
                         (d.image[ii[pick]], text[tt[pick]]), 0.03)
    assert new["computation"]["engine"] == "local"
    assert "isotropy" in new["computation"]["all_rows"]
    assert "seeded sample" in new["computation"]["sampled"]["loss"]   # 500 of 1000 pairs
    assert new["computation"]["sampled"]["svm_top2"] == "all rows"


def test_report_equals_the_previous_implementation_on_the_demo(bundled_home,
                                                              one_torch_thread):
    gold = precision.load_golden(GOLDEN / "report_demo.json")
    ds = store.open_dataset("demo")
    if ds.fingerprint != gold["fingerprint"]:
        pytest.skip("the bundled demo was rebuilt since tests/golden/report_demo.json "
                    "was written; regenerate it with the previous report code")
    new = report.report_for_dataset(ds, temperature=gold["temperature"])
    image, text = np.asarray(ds.image_emb), np.asarray(ds.text_emb)
    ii, tt = ds.pairs()
    assert len(ii) == new["loss"]["n_pairs_used"]                # all pairs, one batch
    _compare_with_golden(new, gold, {"image": image, "text": text},
                         (image[ii], text[tt]), gold["temperature"])


def test_report_does_not_depend_on_the_block_size(one_torch_thread):
    d = synthetic.two_shells(700, 24, seed=11)
    rows = np.arange(700)
    a = report.build_report(d.image, d.text, rows, rows, max_pairs=100,
                            engine=moments.LocalEngine(700))
    b = report.build_report(d.image, d.text, rows, rows, max_pairs=100,
                            engine=moments.LocalEngine(53))
    assert_reports_equal(a, b)


# --------------------------------------------------------------------------
# Validation once per dataset


def test_a_stored_array_is_scanned_once_across_a_whole_report(clipgeom_home, monkeypatch):
    d = synthetic.two_shells(400, 16, seed=2)
    store.create_dataset("once", d.image, d.text)
    scans = []
    real_add = validate.RowScan.add
    monkeypatch.setattr(validate.RowScan, "add",
                        lambda self, block, start: scans.append(block) or
                        real_add(self, block, start))

    def stored_scans(ds):
        """Scans that read the stored arrays themselves (not a sample copied out)."""
        return [(k, b.shape[0]) for b in scans for k, a in
                (("image", ds.image_emb), ("text", ds.text_emb)) if np.may_share_memory(b, a)]

    ds = store.open_dataset("once")
    assert scans == []                                   # opening costs nothing
    report.report_for_dataset(ds, max_pairs=100)
    assert sorted(stored_scans(ds)) == [("image", 400), ("text", 400)]   # once each
    scans.clear()
    again = store.open_dataset("once")                   # same content: cached
    conformity.exact_conformity(again.image_emb)
    conformity.fit_conformity(again.text_emb)
    from clipgeom import geometry, measures
    geometry.summarize(again.image_emb)
    measures.normalized_centroid_distance(again.image_emb, again.text_emb)
    assert stored_scans(again) == []


def test_arrays_not_from_the_store_are_still_checked_at_the_edge():
    x = _cloud(1, 50, 4)
    x[17, 2] = np.nan
    with pytest.raises(InputError, match="row 17"):
        conformity.exact_conformity(x)
    with pytest.raises(InputError, match="row 17"):
        report.build_report(x, _cloud(2, 50, 4), np.arange(50), np.arange(50))
    x[17, 2] = 0.0
    x.flags.writeable = False
    validate.mark_checked(x, validate.scan_rows(x))
    y = x.copy()                                         # a new object: scanned again
    y[3] = 0
    with pytest.raises(InputError, match="all-zero vector in row 3"):
        conformity.exact_conformity(y)


def test_a_checked_array_with_bad_rows_still_raises_the_same_error():
    x = _cloud(1, 30, 4)
    x[5] = np.inf
    x.flags.writeable = False
    validate.mark_checked(x, lambda arr: validate.scan_rows(arr))
    with pytest.raises(InputError, match="NaN or Inf values in row 5"):
        conformity.exact_conformity(x)
    writable = _cloud(1, 30, 4)
    validate.mark_checked(writable, validate.RowCheck(30, np.array([1]), np.empty(0, int)))
    conformity.exact_conformity(writable)      # writable arrays are never trusted


def test_an_in_memory_array_is_scanned_once_per_report(monkeypatch):
    d = synthetic.two_shells(300, 8, seed=4)
    image, text = d.image.copy(), d.text.copy()
    scans = []
    real_add = validate.RowScan.add
    monkeypatch.setattr(validate.RowScan, "add",
                        lambda self, block, start: scans.append(block) or
                        real_add(self, block, start))
    rows = np.arange(300)
    report.build_report(image, text, rows, rows, max_pairs=50)
    whole = [k for b in scans for k, a in (("image", image), ("text", text))
             if np.may_share_memory(b, a)]
    assert sorted(whole) == ["image", "text"]
    assert image.flags.writeable                       # the caller's arrays are untouched


@pytest.mark.parametrize("scale", [1e-25, 1.0, 1e20])
def test_exact_conformity_holds_at_extreme_scales(scale):
    """Squared norms are summed in float32 where that cannot under- or
    overflow, in float64 where it would."""
    x = (_cloud(8, 60, 8).astype(np.float64) * scale).astype(np.float32)
    np.testing.assert_allclose(conformity.exact_conformity(x, chunk=17),
                               brute_conformity(x.astype(np.float64)), atol=1e-6)


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                    reason="OpenBLAS core types named here are x86-64's")
@pytest.mark.parametrize("coretype,threads,workers", [("SandyBridge", "2", "1"),
                                                      ("SkylakeX", "1", "")])
def test_golden_reports_hold_under_other_kernel_families(coretype, threads, workers):
    """The golden comparisons again in a fresh process whose OpenBLAS runs
    another kernel family (AVX-only SandyBridge; AVX-512 SkylakeX, which
    OpenBLAS drops to the best this CPU has) and thread count, in-process or
    on the worker pool: what a contributor's other laptop would run."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype, "OPENBLAS_NUM_THREADS": threads,
           "CLIPGEOM_WORKERS": workers}
    if not workers:
        env.pop("CLIPGEOM_WORKERS")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"{__file__}::test_report_equals_the_previous_implementation_on_generated_data",
                          f"{__file__}::test_report_equals_the_previous_implementation_on_the_demo"],
                         env=env, capture_output=True, text=True, timeout=900,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0 and "2 passed" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]
