"""Work done once: pages read the stored report and the FAISS index instead of
recomputing. Every number is checked against the old code path (the
computation the page did before), and the old path is made to fail to show
it is no longer taken."""

import numpy as np
import pandas as pd
import pytest
import streamlit as st

from brute import unit
from clipgeom import geometry, index, interpolate, projection, report, store, synthetic
from dashboard import data, proj, searchinterp, shape


@pytest.fixture(autouse=True)
def _fresh_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    index.clear_cache()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
    index.clear_cache()


def _dataset(name="reuse", n=400, d=24, seed=2):
    """n pairs (text row k describes image row k) plus 30 extra captions of
    image 0, from two offset shells."""
    syn = synthetic.two_shells(n, d, seed=seed)
    img = np.asarray(syn.image, np.float32)
    txt = np.vstack([np.asarray(syn.text, np.float32),
                     np.asarray(syn.text[:30], np.float32) * 1.01])
    ids = [f"im{k}" for k in range(n)]
    images = pd.DataFrame({"image_id": ids})
    texts = pd.DataFrame({"text_id": [f"t{k}" for k in range(len(txt))],
                          "caption": [f"caption {k}" for k in range(len(txt))],
                          "image_id": ids + [ids[0]] * 30})
    store.create_dataset(name, img, txt, images, texts)
    return data.open_dataset(name), img, txt


def _store_report(loaded):
    """What `clipgeom report` / Home leave behind: the stored report at the
    dataset's default parameters; the process memo forgotten (a new process)."""
    ds = store.open_dataset(loaded.name)
    report.stored_report(ds, temperature=loaded.default_temperature,
                         max_pairs=report.DEFAULT_MAX_PAIRS)
    data._report_memo().clear()


def _fail(*_a, **_k):
    raise AssertionError("recomputed instead of read from the stored report")


def test_isotropy_is_the_reports_numbers(clipgeom_home, monkeypatch):
    loaded, img, txt = _dataset()
    old = {"image": projection.isotropy(img), "text": projection.isotropy(txt)}  # old path
    _store_report(loaded)
    monkeypatch.setattr(projection, "isotropy", _fail)
    monkeypatch.setattr(report, "build_report", _fail)
    got = proj.isotropy(loaded)
    # the report computes I1, I2 in one streaming pass (clipgeom.moments) with
    # float32 products of unit rows and eigenvectors (|<u, e>| <= 1): float64's
    # numbers to ~1e-8
    for m in ("image", "text"):
        for k in ("I1", "I2"):
            assert got[m][k] == pytest.approx(old[m][k], rel=1e-7)


def test_separability_is_the_reports_first_stage(clipgeom_home, monkeypatch):
    loaded, img, txt = _dataset()
    # the old path: the page's own computation
    si, stx = geometry.summarize(img), geometry.summarize(txt)
    sep = geometry.separability(si, stx)
    order = [t["feature"] for t in geometry.top_features(sep, k=sep.shape[0])]
    svm = geometry.svm_top2(img, txt, order[:2])
    lin = geometry.linear_separability(img, txt)
    _store_report(loaded)
    for fn in ("summarize", "svm_top2", "linear_separability", "separability"):
        monkeypatch.setattr(geometry, fn, _fail)
    monkeypatch.setattr(report, "build_report", _fail)
    got = shape.separability(loaded)
    np.testing.assert_allclose(got["sep"], sep, rtol=1e-12)     # streamed moments
    assert got["order"] == order and got["top2"] == order[:2]
    assert got["n_above_1"] == int(np.sum(sep > 1))
    np.testing.assert_allclose(got["sorted"], np.sort(sep)[::-1], rtol=1e-12)
    assert got["svm"].accuracy == svm.accuracy and got["svm"].n_used == svm.n_used
    np.testing.assert_array_equal(got["svm"].weights, svm.weights)
    assert got["svm"].bias == svm.bias and got["svm"].features == svm.features
    assert got["linear"] == lin


def test_offsets_equal_the_summary_path(clipgeom_home):
    loaded, img, txt = _dataset()
    for name, x in (("image", img), ("text", txt)):
        want = geometry.offset_features(geometry.summarize(x), 15)
        got = shape.offsets(loaded.fingerprint, loaded, name, 15)
        assert [g["feature"] for g in got] == [w["feature"] for w in want]
        for g, w in zip(got, want):
            for key in ("mean", "std", "mean_over_std"):
                assert g[key] == pytest.approx(w[key], rel=1e-12, abs=1e-15)


def test_a_page_computes_the_report_once_and_stores_it(clipgeom_home, monkeypatch):
    loaded, img, txt = _dataset()
    ds = store.open_dataset(loaded.name)
    assert data.peek_report(loaded) is None               # nothing stored yet
    calls = []
    real = report.build_report
    monkeypatch.setattr(report, "build_report",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    shape.separability(loaded)                            # the first page computes it ...
    assert len(calls) == 1
    path = data._stored_report_path(ds, loaded.default_temperature,
                                    report.DEFAULT_MAX_PAIRS)
    assert path is not None and path.parent == ds.cache_dir   # ... and stores it
    data._report_memo().clear()                           # a new process
    proj.isotropy(loaded)                                 # reads it
    assert len(calls) == 1
    # what Home asks for (same parameters) is the same stored report
    assert data.cached_report(loaded.fingerprint, loaded, loaded.default_temperature,
                              report.DEFAULT_MAX_PAIRS) is data.peek_report(loaded)
    assert len(calls) == 1


def _assert_same_items(pts, x, got_rows, want_rows, atol=1e-6):
    """The same rows, or rows tied at the same cosine (the extra captions of
    image 0 repeat directions): the row found has the cosine the scan found at
    that rank, and wherever that cosine is not tied the very same row."""
    got_rows, want_rows = np.atleast_2d(got_rows), np.atleast_2d(want_rows)
    assert got_rows.shape == want_rows.shape
    u = unit(np.atleast_2d(pts))
    ux = unit(x)
    for i in range(got_rows.shape[0]):
        all_cos = ux @ u[i]
        for g, w in zip(got_rows[i], want_rows[i]):
            assert (g < 0) == (w < 0)
            if w < 0:
                continue
            assert abs(all_cos[g] - all_cos[w]) <= atol
            if np.sum(np.abs(all_cos - all_cos[w]) <= atol) == 1:
                assert g == w


def test_index_nearest_equals_the_scan(clipgeom_home, rng):
    loaded, img, txt = _dataset()
    ds = store.open_dataset(loaded.name)
    for m in ("image", "text"):
        index.build_index(ds, m)
    pts = rng.normal(size=(9, 24)) + img.mean(0)
    for m, x in (("image", img), ("text", txt)):
        nearest = interpolate.index_nearest(ds, m)
        assert nearest.kind == "flat"
        for excl in ((), (0, 1, 2), tuple(range(0, 60, 3))):
            r1, c1 = interpolate.nearest_cosine(pts, x, 3, exclude=excl)
            r2, c2 = nearest(pts, 3, excl)
            _assert_same_items(pts, x, r2, r1)
            np.testing.assert_allclose(c2, c1, atol=1e-6)
            assert not set(excl) & set(r2.ravel().tolist())
    # more rows excluded than exist: padded like the scan
    small = interpolate.index_nearest(ds, "image")
    rows, cos = small(pts[:2], 2, range(img.shape[0] - 1))
    assert rows[:, 0].tolist() == [img.shape[0] - 1] * 2
    assert (rows[:, 1] == -1).all() and np.isneginf(cos[:, 1]).all()


@pytest.mark.parametrize("modality", ["image", "text"])
def test_interpolation_searches_the_index_when_it_exists(clipgeom_home, monkeypatch, modality):
    loaded, img, txt = _dataset()
    ds = store.open_dataset(loaded.name)
    args = (loaded.fingerprint, loaded, modality, 3, 41, 1.0, 7, True)
    # without an index: the old path (a scan of every row), and no index is built
    before = searchinterp.paths(*args)
    assert before["nearest_by"] == {"image": "exact scan of every row",
                                    "text": "exact scan of every row"}
    assert index.stored_info(ds, "image") is None and index.stored_info(ds, "text") is None
    # with the indexes: the same items, and no scan
    for m in ("image", "text"):
        index.build_index(ds, m)
    st.cache_data.clear()
    monkeypatch.setattr(interpolate, "nearest_cosine", _fail)
    after = searchinterp.paths(*args)
    assert after["nearest_by"] == {"image": "FAISS exact index", "text": "FAISS exact index"}
    for path in ("slerp", "vslerp"):
        pts = before[path]["points"]
        for t, xt in (("image", img), ("text", txt)):
            _assert_same_items(pts, xt, after[path][f"nearest_{t}"][:, None],
                               before[path][f"nearest_{t}"][:, None])
            np.testing.assert_allclose(after[path][f"nearest_{t}_cos"],
                                       before[path][f"nearest_{t}_cos"], atol=1e-6)
        np.testing.assert_array_equal(after[path]["points"], pts)
        for key in ("cos_to_mean", "dist_to_mean", "norm"):
            np.testing.assert_array_equal(after[path][key], before[path][key])
    # the endpoints and their paired items stay left out
    ends = {3, 41}
    for path in ("slerp", "vslerp"):
        assert not ends & set(after[path][f"nearest_{modality}"].tolist())


def test_interpolation_on_an_approximate_index_finds_near_items(clipgeom_home, monkeypatch):
    loaded, img, txt = _dataset()
    ds = store.open_dataset(loaded.name)
    for m in ("image", "text"):
        index.build_index(ds, m, kind="ivf")
    got = searchinterp.paths(loaded.fingerprint, loaded, "image", 5, 77, 1.0, 9, False)
    assert got["nearest_by"]["image"] == "FAISS approximate (IVF) index"
    for path in ("slerp", "vslerp"):
        pts = got[path]["points"]
        rows, cos = interpolate.nearest_cosine(pts, img, 1)
        # what the index found is a real item at its true cosine, near the best one
        found = got[path]["nearest_image"]
        true_cos = (unit(pts) * unit(img[found])).sum(1)
        np.testing.assert_allclose(got[path]["nearest_image_cos"], true_cos, atol=1e-5)
        assert np.mean(found == rows[:, 0]) >= 0.7
        assert np.all(true_cos >= cos[:, 0] - 0.05)


def test_shell_radius_is_the_reports_when_stored(clipgeom_home, monkeypatch):
    loaded, img, txt = _dataset()
    m = img.astype(np.float64).mean(0)
    want = float(np.linalg.norm(img - m, axis=1).mean())
    assert searchinterp.shell_radius(loaded.fingerprint, loaded, "image") == \
        pytest.approx(want, rel=1e-12)
    _store_report(loaded)
    st.cache_data.clear()
    monkeypatch.setattr(searchinterp, "row_chunks", _fail)   # no pass over the rows
    assert searchinterp.shell_radius(loaded.fingerprint, loaded, "image") == \
        pytest.approx(want, rel=1e-12)
