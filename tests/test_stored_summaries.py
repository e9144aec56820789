"""Each modality's summary kept beside the stored report
(clipgeom.stored_summaries): equal to geometry.summarize, computed by the
report's passes (on worker processes or not), read by the Thin shell page
without a pass over the rows; damaged, mismatched or unwritable files are
never trusted nor fatal."""

from pathlib import Path

import numpy as np
import pytest
import streamlit as st

from clipgeom import geometry, moments, parallel, report, store, stored_summaries, synthetic
from dashboard import data, shape

from test_shared_results import _dataset, _fail

FIELDS = stored_summaries.FIELDS


@pytest.fixture(autouse=True)
def _fresh_caches():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _assert_equal(got: geometry.ModalitySummary, ref: geometry.ModalitySummary):
    for f in FIELDS:
        a, b = getattr(got, f), getattr(ref, f)
        scale = float(np.max(np.abs(b)))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * scale, err_msg=f)


@pytest.mark.parametrize("engine", ["sequential", "workers"])
def test_the_report_keeps_what_summarize_computes(clipgeom_home, engine):
    d = synthetic.two_shells(2600, 40, seed=8)
    store.create_dataset("kept", d.image, d.text)
    ds = store.open_dataset("kept")
    eng = (moments.LocalEngine(300) if engine == "sequential"
           else parallel.PoolEngine(300, workers=2))
    try:
        report.stored_report(ds, max_pairs=300, engine=eng)
    finally:
        eng.close()
    if engine == "workers":
        assert eng.passes_on_workers > 0
    kept = stored_summaries.load(store.open_dataset("kept"))
    assert kept is not None
    for got, x in zip(kept, (d.image, d.text)):
        ref = geometry.summarize(x)                        # the page's old path
        _assert_equal(got, ref)
        # and against numpy float64 directly
        v = np.asarray(x, np.float64)
        np.testing.assert_allclose(got.norms, np.linalg.norm(v, axis=1), rtol=1e-12)
        np.testing.assert_allclose(got.centered_norms,
                                   np.linalg.norm(v - v.mean(0), axis=1), rtol=1e-10)
        np.testing.assert_allclose(got.cov, np.cov(v, rowvar=False, bias=True),
                                   rtol=1e-9, atol=1e-12 * np.abs(got.cov).max())


def test_a_replaced_dataset_does_not_read_the_old_summaries(clipgeom_home):
    d = synthetic.two_shells(500, 16, seed=1)
    store.create_dataset("v", d.image, d.text)
    report.stored_report(store.open_dataset("v"), max_pairs=100)
    assert stored_summaries.load(store.open_dataset("v")) is not None
    e = synthetic.two_shells(500, 16, seed=2)                  # same shape, new rows
    store.create_dataset("v", e.image, e.text, overwrite=True)
    assert stored_summaries.load(store.open_dataset("v")) is None


def test_damaged_or_mismatched_files_are_not_trusted(clipgeom_home):
    d = synthetic.two_shells(300, 12, seed=3)
    store.create_dataset("bad", d.image, d.text)
    ds = store.open_dataset("bad")
    p = stored_summaries.path(ds)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"PK\x03\x04 not a zip")
    assert stored_summaries.load(ds) is None
    s = geometry.summarize(d.image)
    short = geometry.ModalitySummary(mean=s.mean, std=s.std, cov=s.cov,
                                     norms=s.norms[:-1], centered_norms=s.centered_norms[:-1])
    assert stored_summaries.save(ds, short, geometry.summarize(d.text))
    assert stored_summaries.load(ds) is None                 # one row short of the dataset
    assert stored_summaries.save(ds, s, geometry.summarize(d.text))
    assert stored_summaries.load(ds) is not None


def test_an_unwritable_cache_folder_is_not_fatal(clipgeom_home):
    d = synthetic.two_shells(300, 12, seed=4)
    store.create_dataset("ro", d.image, d.text)
    ds = store.open_dataset("ro")
    cache = stored_summaries.path(ds).parent
    if cache.exists():
        cache.rmdir()
    cache.write_text("a file where the folder should be")   # fails even for root
    s = geometry.summarize(d.image)
    assert stored_summaries.save(ds, s, s) is False
    assert stored_summaries.load(ds) is None


def test_a_failing_write_leaves_nothing_half_written(clipgeom_home, monkeypatch):
    d = synthetic.two_shells(300, 12, seed=5)
    store.create_dataset("full", d.image, d.text)
    ds = store.open_dataset("full")

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    s = geometry.summarize(d.image)
    assert stored_summaries.save(ds, s, s) is False
    assert not stored_summaries.path(ds).exists()
    assert [p.name for p in stored_summaries.path(ds).parent.glob(".*.tmp")] == []


def test_the_thin_shell_page_reads_them_without_a_pass(clipgeom_home, monkeypatch):
    loaded, img, txt = _dataset("shellpage")
    ref = (geometry.summarize(img), geometry.summarize(txt))   # the old path
    ds = store.open_dataset(loaded.name)
    report.stored_report(ds, temperature=loaded.default_temperature,
                         max_pairs=report.DEFAULT_MAX_PAIRS)
    monkeypatch.setattr(geometry, "summarize", _fail)
    got = shape.summaries(loaded.fingerprint, loaded)
    for g, r in zip(got, ref):
        _assert_equal(g, r)
    sh = shape.shell(loaded.fingerprint, loaded, 40)
    assert sh["image"]["mean_norm"] == pytest.approx(float(np.linalg.norm(ref[0].mean)),
                                                     rel=1e-12)

    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    page = Path(__file__).resolve().parent.parent / "pages" / "2_Thin_shell_and_ellipsoid.py"
    at = AppTest.from_file(str(page), default_timeout=120)
    at.session_state["dataset"] = loaded.name
    at.run()
    assert not at.exception and not at.error


def test_a_page_that_summarises_keeps_them_for_the_next_process(clipgeom_home):
    loaded, img, txt = _dataset("pagefirst")
    ds = store.open_dataset(loaded.name)
    assert stored_summaries.load(ds) is None
    shape.summaries(loaded.fingerprint, loaded)                # no report yet: computed
    kept = stored_summaries.load(store.open_dataset(loaded.name))
    assert kept is not None
    _assert_equal(kept[0], geometry.summarize(img))
    assert data.peek_report(loaded) is None                    # and no report was made


def test_the_search_page_mean_is_the_kept_one(clipgeom_home, monkeypatch):
    from clipgeom._chunks import column_mean
    from dashboard import searchinterp

    loaded, img, txt = _dataset("meanpage")
    ref = {"image": column_mean(img), "text": column_mean(txt)}     # the old path
    report.stored_report(store.open_dataset(loaded.name), max_pairs=200)
    monkeypatch.setattr(searchinterp, "column_mean", _fail)
    for m in ("image", "text"):
        got = searchinterp.modality_mean(loaded.fingerprint, loaded, m)
        np.testing.assert_allclose(got, ref[m], rtol=1e-12, atol=1e-14)


def test_the_conformity_page_reads_the_reports_per_row_values(clipgeom_home, monkeypatch):
    from brute import conformity as brute_conformity
    from clipgeom import conformity
    from dashboard import lossconf

    loaded, img, txt = _dataset("confpage")
    ds = store.open_dataset(loaded.name)
    report.stored_report(ds, temperature=loaded.default_temperature,
                         max_pairs=report.DEFAULT_MAX_PAIRS)
    rows = stored_summaries.load_rows(store.open_dataset(loaded.name))
    assert rows is not None
    monkeypatch.setattr(conformity, "exact_conformity", _fail)
    monkeypatch.setattr(conformity, "fit_conformity", _fail)
    fits = lossconf.fits(loaded.fingerprint, loaded)
    for m, x in (("image", img), ("text", txt)):
        v = np.asarray(x, np.float64)
        np.testing.assert_allclose(fits[m].exact, brute_conformity(v), rtol=1e-9, atol=1e-12)
        mean = v.mean(0)
        cos = v @ mean / np.linalg.norm(v, axis=1) / np.linalg.norm(mean)
        np.testing.assert_allclose(fits[m].cos_mean, cos, rtol=1e-10)
        np.testing.assert_allclose(fits[m].estimated, fits[m].a * cos + fits[m].b, rtol=1e-9)
    # a damaged per-row entry (one row short) is not used
    s = stored_summaries.load(ds)
    short = {m: {k: v[:-1] for k, v in rows[m].items()} for m in rows}
    assert stored_summaries.save(ds, *s, rows=short)
    assert stored_summaries.load_rows(ds) is None
    assert stored_summaries.load(ds) is not None
