"""Journeys: every page as users meet it, in headless Chromium.

For each page, on the bundled demo, on a 20-pair dataset uploaded through the
product's own upload path, and on the synthetic set: first render; then
every control changed once (demo and 20 pairs); a rerun; a revisit from
another page; presentation mode at 1280x720 and 1920x1080; a second browser
session. Any error box, exception or traceback fails. On the demo, UMAP is
computed and the page rerun, and a box dragged on the joint SVD scatter
opens the selection panel. A screenshot per step lands in test-artifacts/journeys/.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest

from tests.tiny_data import world_zip
from tests.browser_support import (ARTIFACTS, ROOT, assert_no_errors, launch, need_browser,
                                   serve, wait_for_run)

pytestmark = pytest.mark.browser
SHOTS = ARTIFACTS / "journeys"
PAGES = [("0_Home", "")] + [(p.stem, re.sub(r"^\d+_", "", p.stem))
                            for p in sorted((ROOT / "pages").glob("*.py")) if p.stem != "0_Home"]
SYNTHETIC = "synthetic (generated two-shell data)"
TINY = "tiny20"
DATASETS = ["demo", TINY, SYNTHETIC]
# Controls a journey leaves alone: the dataset (set by the URL), presentation
# (its own step), and buttons that start long work (UMAP has its own step).
SKIP_LABELS = ("Dataset", "Presentation mode", "Rows per modality for UMAP")
# The browser changes the first few controls of each page (each a real click,
# 2-5 s); AppTest changes every control of every page (tests/test_page_*.py,
# test_talk_presentation.py), which is where "each control once" is checked.
MAX_CONTROLS = 5


def _tiny_zip(n: int = 20) -> bytes:
    """n generated scenes and their captions, as a user's zip."""
    return world_zip(n, seed=7)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    need_browser()
    home = tmp_path_factory.mktemp("journey-home")
    import os

    from clipgeom import embed, store, upload

    old = os.environ.get("CLIPGEOM_HOME")
    os.environ["CLIPGEOM_HOME"] = str(home)
    try:   # the 20-pair set goes through the Upload page's own code path
        demo = store.open_dataset("demo")
        spec = embed.spec_from_manifest(demo.manifest.get("model"), "demo")
        upload.embed_zip(TINY, ("tiny.zip", _tiny_zip()), spec)
    finally:
        if old is None:
            os.environ.pop("CLIPGEOM_HOME", None)
        else:
            os.environ["CLIPGEOM_HOME"] = old
    yield from serve(home)


@pytest.fixture(scope="module")
def browser():
    need_browser()
    with launch() as b:
        yield b


def _url(base: str, path: str, dataset: str, **params) -> str:
    if path == "Compare" and dataset != "demo":      # Compare picks its own: the set vs demo
        params.setdefault("compare", f"{dataset},demo")
    q = urllib.parse.urlencode({"dataset": dataset, **params})
    return f"{base}/{path}?{q}"


def _shot(page, name: str, full: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


def _label(widget) -> str:
    lab = widget.locator('[data-testid="stWidgetLabel"]')
    return lab.first.inner_text() if lab.count() else ""


def _controls(page):
    """(kind, locator) of every changeable control on the page, in page order."""
    found = []
    for kind, sel in (("toggle", '[data-testid="stCheckbox"]'),
                      ("select", '[data-testid="stSelectbox"]'),
                      ("radio", '[data-testid="stRadio"]'),
                      ("slider", '[data-testid="stSlider"]'),
                      ("number", '[data-testid="stNumberInput"]')):
        for k in range(page.locator(sel).count()):
            w = page.locator(sel).nth(k)
            if not w.is_visible() or any(s in _label(w) for s in SKIP_LABELS):
                continue
            found.append((kind, sel, k, _label(w)))
    return found[:MAX_CONTROLS]


def _change(page, kind: str, sel: str, k: int) -> None:
    """Change one control like a user; a control the browser cannot reach
    (covered, off screen) is left alone: AppTest changes every control."""
    from playwright.sync_api import TimeoutError as PwTimeout

    try:
        _change_now(page, kind, sel, k)
    except PwTimeout:
        page.keyboard.press("Escape")


def _change_now(page, kind: str, sel: str, k: int) -> None:
    w = page.locator(sel).nth(k)
    w.scroll_into_view_if_needed(timeout=5000)
    if kind == "toggle":
        w.locator("label").first.click(timeout=5000)
    elif kind == "select":
        w.click(timeout=5000)
        opts = page.locator('[role="option"]')
        try:
            opts.first.wait_for(timeout=5000)
        except Exception:          # no list opened (one option, or disabled): leave it
            page.keyboard.press("Escape")
            return
        if opts.count() < 2:
            page.keyboard.press("Escape")
            return
        opts.nth(1).click(timeout=5000)
    elif kind == "radio":
        opts = w.locator('label')
        opts.nth(opts.count() - 1).click(timeout=5000)
    elif kind == "slider":
        thumb = w.get_by_role("slider").first
        thumb.focus()
        thumb.press("ArrowRight")
    elif kind == "number":
        w.locator('[data-testid="stNumberInputStepUp"]').click(timeout=5000)


def _journey(page, base: str, stem: str, path: str, dataset: str, *, controls: bool) -> None:
    tag = f"{stem}--{re.sub(r'[^a-z0-9]+', '-', dataset.lower())[:12]}"
    page.goto(_url(base, path, dataset))
    wait_for_run(page)
    assert_no_errors(page, f"{tag} first render")
    _shot(page, f"{tag}-1-first", full=True)
    if controls:
        for n, (kind, sel, k, label) in enumerate(_controls(page)):
            _change(page, kind, sel, k)
            wait_for_run(page)
            assert_no_errors(page, f"{tag} after changing {kind} '{label}'")
        _shot(page, f"{tag}-2-controls", full=True)
    # a rerun (the "R" key reruns the script)
    page.locator("body").press("r")
    wait_for_run(page)
    assert_no_errors(page, f"{tag} rerun")
    # a revisit from another page, through the sidebar's navigation
    nav = page.locator('[data-testid="stSidebarNav"] a')
    other = 1 if stem == "0_Home" else 0
    if nav.count() > other:
        nav.nth(other).click()
        wait_for_run(page)
        assert_no_errors(page, f"{tag} on the other page")
        page.go_back()
        wait_for_run(page)
        assert_no_errors(page, f"{tag} revisit")
    # presentation mode, at both talk resolutions on the demo (720p elsewhere)
    for w, h in ((1280, 720), (1920, 1080)) if dataset == "demo" else ((1280, 720),):
        page.set_viewport_size({"width": w, "height": h})
        page.goto(_url(base, path, dataset, present="1"))
        wait_for_run(page)
        assert_no_errors(page, f"{tag} presentation {w}x{h}")
        assert page.locator('[data-testid="stSidebar"]').is_hidden()
        _shot(page, f"{tag}-3-present-{w}x{h}")


@pytest.mark.parametrize("dataset", DATASETS, ids=["demo", "tiny20", "synthetic"])
@pytest.mark.parametrize("stem,path", PAGES, ids=[s for s, _ in PAGES])
def test_journey(app_url, browser, stem, path, dataset):
    if dataset == SYNTHETIC and stem in ("8_Upload", "10_Compare"):
        pytest.skip("this page does not use the sidebar's dataset (run on the others)")
    ctx = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = ctx.new_page()
    try:
        _journey(page, app_url, stem, path, dataset, controls=dataset != SYNTHETIC)
    finally:
        ctx.close()


def test_umap_then_rerun_and_a_box_selection(app_url, browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1800})
    page = ctx.new_page()
    try:
        page.goto(_url(app_url, "Projections_and_isotropy", "demo"))
        wait_for_run(page)
        # the demo ships its UMAP for the default rows: drawn at once, no button
        assert page.get_by_role("button", name="Compute UMAP").count() == 0
        rows = page.locator('[data-testid="stNumberInput"]').filter(
            has_text="Rows per modality for UMAP")
        rows.locator('[data-testid="stNumberInputStepUp"]').click()
        wait_for_run(page)
        page.get_by_role("button", name="Compute UMAP").click()
        wait_for_run(page, timeout_s=400)
        assert_no_errors(page, "after Compute UMAP")
        # the defect: any rerun after UMAP raised CacheReplayClosureError
        page.locator('[data-testid="stSidebar"] [data-testid="stCheckbox"] label').first.click()
        wait_for_run(page)
        assert_no_errors(page, "a control change after UMAP")
        page.locator("body").press("r")
        wait_for_run(page)
        assert_no_errors(page, "a rerun after UMAP")
        assert page.get_by_role("heading", name=re.compile("Transform lab")).count() == 1
        _shot(page, "projections-umap-rerun", full=True)
        # drag a box over the middle of the joint SVD scatter
        plot = page.locator(".js-plotly-plot").first
        plot.scroll_into_view_if_needed()
        page.mouse.move(0, 0)
        plot.hover()
        page.locator('.js-plotly-plot .modebar-btn[data-val="select"]').first.click()
        box = plot.locator(".nsewdrag").first.bounding_box()
        x0, y0 = box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 + box["width"] * 0.8, y0 + box["height"] * 0.8, steps=12)
        page.mouse.up()
        page.get_by_text(re.compile(r"Selection: [\d,]+ image")).first.wait_for(timeout=120_000)
        wait_for_run(page)
        assert_no_errors(page, "after a box selection")
        _shot(page, "projections-selection", full=True)
    finally:
        ctx.close()


def test_two_sessions_keep_their_own_state(app_url, browser):
    """Presentation mode and the dataset of one browser session never leak into another."""
    a = browser.new_context(viewport={"width": 1280, "height": 720})
    b = browser.new_context(viewport={"width": 1400, "height": 1200})
    try:
        pa, pb = a.new_page(), b.new_page()
        pa.goto(_url(app_url, "Talk", TINY, present="1"))
        pb.goto(_url(app_url, "Conformity", "demo"))
        wait_for_run(pa)
        wait_for_run(pb)
        assert_no_errors(pa, "session A")
        assert_no_errors(pb, "session B")
        assert pa.locator('[data-testid="stSidebar"]').is_hidden()
        assert pb.locator('[data-testid="stSidebar"]').is_visible()
        pa.get_by_role("button", name=re.compile("Next")).click()
        wait_for_run(pa)
        pa.keyboard.press("ArrowRight")
        wait_for_run(pa)
        assert "slide=3" in pa.url
        picker = pb.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
        assert picker.input_value() == "demo"
        _shot(pa, "two-sessions-a")
        _shot(pb, "two-sessions-b")
    finally:
        a.close()
        b.close()
