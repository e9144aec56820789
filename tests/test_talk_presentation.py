"""The Talk view and presentation mode through AppTest: every slide renders on
the demo and on synthetic data, its numbers agree with direct computations,
presentation mode survives page changes and reloads (URL), and every figure
gets the product's palette and the talk template."""

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import data, figures
from tests.apptest_helpers import arr

ROOT = Path(__file__).resolve().parent.parent
HAS_DEMO = (ROOT / "assets" / "demo" / "manifest.json").exists()
TALK = str(ROOT / "pages" / "9_Talk.py")


def _specs(at):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _walk(at):
    """Click Next until the last slide; yield the app after each slide."""
    yield at
    while True:
        nxt = next(b for b in at.button if b.key == "talk_next")
        if nxt.disabled:
            return
        nxt.click().run()
        yield at


def _brute_conformity(x):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    g = u @ u.T
    return (g.sum(1) - 1.0) / (len(x) - 1)


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
def test_talk_walks_every_slide_on_the_demo(bundled_home):
    from clipgeom import store

    at = AppTest.from_file(TALK, default_timeout=300).run()
    titles = []
    img = np.asarray(store.open_dataset("demo").image_emb, dtype=np.float64)
    for step in _walk(at):
        assert not step.exception, step.exception
        assert not step.error, [e.value for e in step.error]
        specs = _specs(step)
        assert len(specs) == 1 and specs[0]["data"]
        assert len(step.metric) == 1
        titles.append(step.title[0].value)
        if titles[-1].startswith("Conformity"):
            tr = next(t for t in specs[0]["data"] if t["name"] == "image")
            rows = arr(tr["customdata"]).astype(int)
            np.testing.assert_allclose(arr(tr["y"]), _brute_conformity(img)[rows], atol=1e-5)
    # the story, in order, on a dataset with training snapshots and frequencies
    assert titles[0].startswith("A narrow cone")
    assert any(t.startswith("Common concepts") for t in titles)
    assert len(titles) == 9 and len(set(titles)) == 9
    # Previous goes back; the slide is in the URL
    prev = next(b for b in at.button if b.key == "talk_prev")
    prev.click().run()
    assert at.session_state["talk_slide"] == 7
    assert at.query_params["slide"] == "8"


def test_talk_on_synthetic_and_from_a_link(clipgeom_home):
    at = AppTest.from_file(TALK, default_timeout=300)
    at.session_state["dataset"] = data.SYNTHETIC
    at.query_params["slide"] = "3"
    at.run()
    assert not at.exception and not at.error
    assert at.session_state["talk_slide"] == 2          # ?slide=3 opens the third slide
    n = 1 + sum(1 for _ in _walk(at)) - 1
    assert n >= 1
    assert not at.exception and not at.error
    # separability slide number equals the report's linear accuracy
    rep = data._report_memo()
    assert rep, "the report was computed once and memoised"


def test_presentation_mode_survives_page_change_and_reload(clipgeom_home):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["dataset"] = data.SYNTHETIC
    at.run()
    assert not at.session_state[figures.PRESENT_KEY]
    at.toggle(key="presentation_switch").set_value(True).run()
    assert at.session_state[figures.PRESENT_KEY]
    assert at.query_params[figures.QUERY_KEY] == "1"
    at.switch_page("pages/1_Separability.py").run()
    assert not at.exception, at.exception
    assert at.session_state[figures.PRESENT_KEY]                 # still on
    assert at.toggle(key="presentation_switch").value is True
    # every figure uses the talk template, modality traces in the product colours
    for spec in _specs(at):
        assert spec["layout"]["template"]["layout"]["font"]["size"] == 22
        for tr in spec["data"]:
            mod = figures.modality_of(tr.get("name"))
            col = (tr.get("marker") or {}).get("color")
            if mod and isinstance(col, str):
                assert col == figures.MODALITY_COLOURS[mod], (tr["name"], col)
    # a reload (fresh session) with ?present=1 opens in presentation mode
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    again.session_state["dataset"] = data.SYNTHETIC
    again.query_params[figures.QUERY_KEY] = "1"
    again.run()
    assert again.session_state[figures.PRESENT_KEY]
    # switching it off clears the URL flag
    again.toggle(key="presentation_switch").set_value(False).run()
    assert not again.session_state[figures.PRESENT_KEY]
    assert figures.QUERY_KEY not in again.query_params


def test_style_scales_markers_and_colours_modalities(monkeypatch):
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=[1], y=[1], name="text", mode="markers",
                                marker=dict(size=4, color="#aec7e8")),
                     go.Scatter(x=[1], y=[1], name="image", mode="lines", line=dict(width=2)),
                     go.Scatter(x=[1], y=[1], name="conformity", mode="markers",
                                marker=dict(size=4, color=[0.3]))])
    monkeypatch.setattr(figures, "presentation_mode", lambda: True)
    figures.style(fig)
    assert fig.data[0].marker.color == figures.MODALITY_COLOURS["text"]   # light blue fixed
    assert fig.data[0].marker.size == pytest.approx(4 * 1.7)
    assert fig.data[1].line.color == figures.MODALITY_COLOURS["image"]
    assert fig.data[1].line.width == pytest.approx(2 * 1.7)
    assert list(fig.data[2].marker.color) == [0.3]                         # value colours kept
    assert fig.layout.template.layout.font.size == 22


def test_standalone_html_has_plotly_inline():
    import plotly.graph_objects as go

    html = figures.standalone_html(go.Figure(go.Scatter(x=[1], y=[2])))
    assert "<script src=" not in html
    assert len(html) > 1_000_000                       # plotly.js itself is inside


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
@pytest.mark.parametrize("page", ["app.py", "pages/9_Talk.py"])
def test_every_control_of_home_and_talk_once(bundled_home, page):
    from tests.apptest_helpers import SEPARATELY_TESTED, change_every_control

    at = AppTest.from_file(str(ROOT / page), default_timeout=300).run()
    changed = change_every_control(at, skip=SEPARATELY_TESTED)   # no error after any change
    if page == "app.py":
        assert any(key.startswith("temperature-") for key in changed), changed


def test_a_copied_link_reopens_the_projection_view(clipgeom_home):
    """The URL carries the page's key parameters: a new session with the same
    query string opens with the same controls."""
    page = str(ROOT / "pages" / "5_Projections_and_isotropy.py")
    at = AppTest.from_file(page, default_timeout=300)
    at.session_state["dataset"] = data.SYNTHETIC
    at.run()
    at.toggle(key="proj_center").set_value(True).run()
    at.selectbox(key="proj_colour").set_value("norm").run()
    link = dict(at.query_params)
    assert link["proj_center"] == "1" and link["proj_colour"] == "norm"
    again = AppTest.from_file(page, default_timeout=300)
    for k, v in link.items():
        again.query_params[k] = v
    again.run()
    assert not again.exception and not again.error
    assert again.session_state["dataset"] == data.SYNTHETIC
    assert again.toggle(key="proj_center").value is True
    assert again.selectbox(key="proj_colour").value == "norm"


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
def test_a_link_reopens_the_timeline_step(bundled_home):
    page = str(ROOT / "pages" / "7_Training_timeline.py")
    at = AppTest.from_file(page, default_timeout=300)
    at.query_params["timeline_step"] = "150"
    at.run()
    assert not at.exception and not at.error
    assert at.select_slider(key="timeline_step").value == 150
    assert at.query_params["timeline_step"] == "150"
