"""A report for another temperature reuses the temperature-free sections of an
earlier one: the result equals a report computed from scratch. Stored report
files that are valid JSON but not reports are ignored and recomputed."""

import json

import numpy as np
import pytest

from clipgeom import report, store, synthetic


def _strip(rep):
    return json.loads(json.dumps(rep))


def test_reuse_equals_a_fresh_report():
    d = synthetic.two_shells(300, 16, seed=3)
    rows = np.arange(300)
    first = report.build_report(d.image, d.text, rows, rows, temperature=0.01)
    fresh = report.build_report(d.image, d.text, rows, rows, temperature=0.05, max_pairs=200)
    calls = []
    reused = report.build_report(d.image, d.text, rows, rows, temperature=0.05,
                                 max_pairs=200, reuse=first, progress=calls.append)
    assert _strip(reused) == _strip(fresh)
    assert calls[0].endswith("(reused)")
    assert reused["loss"]["total"] != pytest.approx(first["loss"]["total"])


def test_reuse_refused_for_other_arrays_or_seed():
    d = synthetic.two_shells(200, 16, seed=3)
    e = synthetic.two_shells(150, 16, seed=4)
    rows = np.arange(200)
    first = report.build_report(d.image, d.text, rows, rows)
    calls = []
    other = report.build_report(e.image, e.text, np.arange(150), np.arange(150), reuse=first,
                                progress=calls.append)
    assert not any("reused" in c for c in calls)
    assert other["n_images"] == 150
    calls.clear()
    report.build_report(d.image, d.text, rows, rows, seed=1, reuse=first, progress=calls.append)
    assert not any("reused" in c for c in calls)


@pytest.mark.parametrize("junk", ["null", "[1, 2]", "{}", "{\"schema\": \"clipgeom.report/1\"}"])
def test_stored_report_ignores_json_that_is_not_a_report(clipgeom_home, junk):
    d = synthetic.two_shells(120, 8, seed=1)
    store.create_dataset("s", d.image, d.text)
    ds = store.open_dataset("s")
    good = report.stored_report(ds)
    files = list(ds.cache_dir.glob("report-*.json"))
    assert len(files) == 1
    files[0].write_text(junk)
    again = report.stored_report(store.open_dataset("s"))
    assert _strip(again) == _strip(good)
    assert json.loads(files[0].read_text())["schema"] == report.SCHEMA   # replaced


def test_stored_report_still_returned_when_the_cache_cannot_be_written(clipgeom_home,
                                                                       monkeypatch):
    import contextlib

    d = synthetic.two_shells(100, 8, seed=2)
    store.create_dataset("full", d.image, d.text)

    @contextlib.contextmanager
    def disk_full(path):
        raise OSError(28, "No space left on device")
        yield

    monkeypatch.setattr(report, "replacing", disk_full)
    rep = report.stored_report(store.open_dataset("full"))
    rows = np.arange(100)
    fresh = report.build_report(d.image, d.text, rows, rows, dataset="full")
    assert _strip(rep) == _strip(fresh)
    assert not list(store.open_dataset("full").cache_dir.glob("report-*.json"))
