"""Training snapshots (clipgeom.timeline) and the Training timeline page."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import brute
from apptest_helpers import (IMAGE_BLUE, TEXT_RED, arr, change_every_control, figures,
                             open_page)
from clipgeom import store, timeline
from clipgeom.errors import DatasetError

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "7_Training_timeline.py")


def _snapshots(rng, n=120, d=12):
    """Step 0: a cone around the origin; step 50: two offset shells with paired rows."""
    base = rng.standard_normal((n, d))
    snaps = {0: (base + 0.1, base + 0.1 + 0.05 * rng.standard_normal((n, d)))}
    off = np.zeros(d)
    off[:3] = [6.0, -4.0, 3.0]
    snaps[50] = (base + off, base - off + 0.3 * rng.standard_normal((n, d)))
    return {s: (a.astype(np.float32), b.astype(np.float32)) for s, (a, b) in snaps.items()}


def _dataset(snaps, name="snappy"):
    n, d = snaps[0][0].shape
    images = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)]})
    texts = pd.DataFrame({"text_id": [f"t{k}" for k in range(n)],
                          "caption": [f"c{k}" for k in range(n)],
                          "image_id": [f"i{k}" for k in range(n)]})
    extras = {"snapshot_steps": np.array(sorted(snaps))}
    for s, (a, b) in snaps.items():
        extras[f"snapshot_image_{s}"] = a
        extras[f"snapshot_text_{s}"] = b
    last = snaps[max(snaps)]
    return store.create_dataset(name, last[0], last[1], images, texts, extra_arrays=extras,
                                extra_manifest={"demo": {"snapshot_quality": [
                                    {"step": 50, "eval": {"caption_true_i2t": 0.5,
                                                          "image_true_t2i": 0.6}}],
                                    "snapshot_captions": [f"pair caption {k}"
                                                          for k in range(n)]}})


def test_step_measures_match_direct_formulas(clipgeom_home, rng):
    snaps = _snapshots(rng)
    ds = _dataset(snaps)
    assert timeline.snapshot_steps(ds) == [0, 50]
    tab = timeline.timeline_table([timeline.load_snapshot(ds, s) for s in (50, 0)])
    assert tab["step"].tolist() == [0, 50]
    for k, step in enumerate((0, 50)):
        a, b = (x.astype(np.float64) for x in snaps[step])
        sep = np.abs(a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) + b.var(0))
        row = tab.iloc[k]
        assert row["separable features (Sep > 1)"] == int(np.sum(sep > 1))
        assert row["max Sep"] == pytest.approx(sep.max(), rel=1e-6)
        ma, mb = a.mean(0), b.mean(0)
        assert row["cos(m_image, m_text)"] == pytest.approx(
            ma @ mb / np.linalg.norm(ma) / np.linalg.norm(mb), rel=1e-6)
        sim = brute.unit(a) @ brute.unit(b).T
        assert row["paired retrieval i2t"] == pytest.approx(
            np.mean(sim.argmax(1) == np.arange(len(a))))
        assert row["paired retrieval t2i"] == pytest.approx(
            np.mean(sim.argmax(0) == np.arange(len(a))))
        c = np.linalg.norm(a - ma, axis=1)
        assert row["image shell std / radius"] == pytest.approx(c.std() / c.mean(), rel=1e-6)
        assert row["image ||m||/||sigma||"] == pytest.approx(
            np.linalg.norm(ma) / np.linalg.norm(a.std(0)), rel=1e-6)
    # the offset step separates the modalities, the cone does not
    assert tab.iloc[1]["separable features (Sep > 1)"] >= 3
    assert tab.iloc[0]["separable features (Sep > 1)"] == 0


def test_missing_or_malformed_snapshots_are_named(clipgeom_home, rng):
    snaps = _snapshots(rng)
    ds = _dataset(snaps)
    with pytest.raises(DatasetError, match="no training snapshot at step 7"):
        timeline.load_snapshot(ds, 7)
    n, d = snaps[0][0].shape
    plain = store.create_dataset("plain", snaps[0][0], snaps[0][1],
                                 pd.DataFrame({"image_id": [f"i{k}" for k in range(n)]}),
                                 pd.DataFrame({"text_id": [f"t{k}" for k in range(n)],
                                               "caption": ["x"] * n,
                                               "image_id": [f"i{k}" for k in range(n)]}))
    assert timeline.snapshot_steps(plain) == []
    bad = dict(snaps)
    bad[0] = (snaps[0][0], snaps[0][1][:10])
    with pytest.raises(DatasetError, match="shapes"):
        timeline.load_snapshot(_dataset(bad, "bad"), 0)


def test_timeline_page(clipgeom_home, rng):
    snaps = _snapshots(rng)
    _dataset(snaps)
    at = open_page(PAGE, "snappy", timeout=120)
    assert not at.exception and not at.error
    charts = figures(at)
    assert len(charts) == 5
    tab = at.dataframe[0].value
    assert tab["step"].tolist() == [0, 50]
    assert tab["held-out i2t caption true"].tolist()[1] == 0.5
    svd_text = charts[1]["data"][2]                      # text points of the SVD plot
    assert svd_text["name"] == "text" and svd_text["text"][7] == "text of pair 7: pair caption 7"
    norms = arr(charts[2]["data"][0]["x"])
    np.testing.assert_allclose(sorted(norms), sorted(np.linalg.norm(snaps[50][0], axis=1)),
                               rtol=1e-5)
    at.select_slider(key="timeline_step").set_value(0).run()
    assert not at.exception
    norms0 = arr(figures(at)[2]["data"][0]["x"])
    np.testing.assert_allclose(sorted(norms0), sorted(np.linalg.norm(snaps[0][0], axis=1)),
                               rtol=1e-5)


def test_timeline_page_without_snapshots(clipgeom_home):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and not at.error
    assert any("no training snapshots" in i.value for i in at.info)


# ---- colours, selection hooks, isolated sections, small data, every control ----------

from apptest_helpers import markup_leaks  # noqa: E402
from tiny_data import MARKUP, USER_MARKUP, tiny_dataset  # noqa: E402


def test_timeline_colours_and_customdata(clipgeom_home, rng):
    """Image series blue, text series red, every other series in neither; the
    item scatters carry each point's row (pair index) in customdata."""
    snaps = _snapshots(rng)
    _dataset(snaps)
    at = open_page(PAGE, "snappy", timeout=120)
    assert not at.exception and not at.error
    summary, svd, norms, sep, conf = figures(at)
    for tr in summary["data"]:
        colour = tr["line"]["color"]
        if tr["name"].startswith("image"):
            assert colour == IMAGE_BLUE, tr["name"]
        elif tr["name"].startswith("text"):
            assert colour == TEXT_RED, tr["name"]
        else:
            assert colour not in (IMAGE_BLUE, TEXT_RED), tr["name"]
    points = {tr["name"]: tr for tr in svd["data"] if tr.get("mode") == "markers"}
    assert points["image"]["marker"]["color"] == IMAGE_BLUE
    assert points["text"]["marker"]["color"] == TEXT_RED
    for tr in points.values():
        assert arr(tr["customdata"]).astype(int).tolist() == list(range(120))
    for fig in (norms, conf):
        cols = {tr["name"]: tr["marker"]["color"] for tr in fig["data"]}
        assert cols == {"image": IMAGE_BLUE, "text": TEXT_RED}
    assert sep["data"][0]["line"]["color"] not in (IMAGE_BLUE, TEXT_RED)


def test_a_broken_snapshot_fails_only_its_section(clipgeom_home, rng):
    """Step 0's arrays disagree in shape: the across-training section shows the
    error, the one-step section (at step 50) still draws its four figures."""
    snaps = _snapshots(rng)
    snaps[0] = (snaps[0][0], snaps[0][1][:10])
    _dataset(snaps, "halfbad")
    at = open_page(PAGE, "halfbad", timeout=120)
    assert not at.exception
    assert len(at.error) == 1 and "Across training" in at.error[0].value
    assert "shapes" in at.error[0].value
    assert len(figures(at)) == 4


def test_timeline_every_control_on_20_pairs(clipgeom_home):
    tiny_dataset(d=16, snapshots=True)                  # 20 pairs, d = 16
    at = open_page(PAGE, "tiny20", timeout=120)
    assert len(figures(at)) == 5
    assert any("Only 20 snapshot pairs" in c.value for c in at.caption)
    assert not markup_leaks(at, USER_MARKUP), markup_leaks(at, USER_MARKUP)
    keys = change_every_control(at)
    assert "timeline_step" in keys
    # captions in hover text are escaped, not markup
    at.run()
    svd = [f for f in figures(at) if any(tr.get("name") == "text" and tr.get("mode") ==
                                         "markers" for tr in f["data"])][0]
    text = [tr for tr in svd["data"] if tr.get("name") == "text"][0]["text"][0]
    assert text.startswith("text of pair 0: ") and MARKUP in text


@pytest.mark.skipif(not (ROOT / "assets" / "demo" / "manifest.json").exists(),
                    reason="the bundled demo is not built")
def test_timeline_every_control_on_the_demo(bundled_home):
    at = AppTest.from_file(PAGE, default_timeout=300).run()
    assert at.session_state["dataset"] == "demo"
    assert len(figures(at)) == 5
    keys = change_every_control(at)
    assert "timeline_step" in keys
