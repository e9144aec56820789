"""The running dashboard in a real browser (headless Chromium via Playwright).

Skips with a reason where Chromium is absent (a user's laptop); in CI
(CI=true) a missing browser is a failure. Screenshots land in
test-artifacts/ for a person to look at.
"""

from pathlib import Path

import pytest

from tests.tiny_data import world_zip
from tests.browser_support import (ARTIFACTS, ROOT, assert_no_errors, launch, need_browser,
                                   serve, wait_for_run)

pytestmark = pytest.mark.browser
_wait_for_run = wait_for_run


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    need_browser()
    # A fresh home beside the bundled demo: the pages open on the demo, as for a
    # user's first start.
    yield from serve(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def browser():
    need_browser()
    with launch() as b:
        yield b


def _assert_no_errors(page):
    assert_no_errors(page)


def test_home_page_renders_charts_without_errors(app_url, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(app_url)
    _wait_for_run(page)
    page.wait_for_selector(".js-plotly-plot", timeout=120_000)
    _assert_no_errors(page)
    assert page.get_by_text("SYNTHETIC DATA").count() == 0      # the demo opens first
    assert page.get_by_text("demo-clip").count() >= 1
    assert page.locator(".js-plotly-plot").count() == 2
    assert page.get_by_text("Separable features").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
    page.close()


def _page_paths():
    import re
    for p in sorted((ROOT / "pages").glob("*.py")):
        if p.stem != "0_Home":          # the default page, served at "/" (test above)
            yield p.stem, re.sub(r"^\d+_", "", p.stem)


@pytest.mark.parametrize("stem,url_path", list(_page_paths()))
def test_every_page_renders_without_errors(app_url, browser, stem, url_path):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{app_url}/{url_path}")
    _wait_for_run(page)
    if stem != "8_Upload":                     # the upload form has no figure
        page.wait_for_selector(".js-plotly-plot", timeout=180_000)
        _wait_for_run(page)
        assert page.locator(".js-plotly-plot").count() >= 1
    _assert_no_errors(page)
    page.screenshot(path=str(ARTIFACTS / f"{stem}.png"), full_page=True)
    page.close()


def _demo_zip(path: Path) -> Path:
    """Six generated scenes and their captions, in the pipeline's zip layout."""
    path.write_bytes(world_zip(6, seed=42, folder="scenes"))
    return path


def test_upload_a_zip_then_search_it(app_url, browser, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{app_url}/Upload")
    _wait_for_run(page)
    page.get_by_text("One zip (images + captions.csv)").click()
    _wait_for_run(page)
    page.get_by_placeholder("my-photos").fill("browser-upload")   # a form: sent on submit
    page.locator('input[type="file"]').first.set_input_files(str(_demo_zip(tmp_path / "s.zip")))
    _wait_for_run(page)
    page.get_by_role("button", name="Create dataset").click()
    page.get_by_text("Created dataset 'browser-upload'").wait_for(timeout=180_000)
    _wait_for_run(page)
    _assert_no_errors(page)
    assert page.get_by_text("6 images, 6 captions").count() == 1
    page.screenshot(path=str(ARTIFACTS / "upload-done.png"), full_page=True)
    # the new dataset is selected on every page: search it by text, in this session
    page.get_by_role("link", name="Search and interpolation").click()
    page.get_by_role("heading", name="Search & interpolation").wait_for(timeout=60_000)
    _wait_for_run(page)
    page.screenshot(path=str(ARTIFACTS / "search-page-after-upload.png"), full_page=True)
    picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
    assert picker.input_value() == "browser-upload"
    query_box = page.get_by_placeholder("a small red circle at the top left")
    query_box.fill("a red circle")
    query_box.press("Enter")
    _wait_for_run(page)
    page.get_by_text("text 'a red circle' → 6 nearest images").wait_for(timeout=120_000)
    _assert_no_errors(page)
    assert page.locator('[data-testid="stImage"]').count() >= 6
    page.screenshot(path=str(ARTIFACTS / "search-results.png"), full_page=True)
    page.close()


def test_moving_the_alpha_slider_redraws_the_loss_curves(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{app_url}/Alpha_shift_and_loss")
    _wait_for_run(page)
    page.wait_for_selector(".js-plotly-plot", timeout=180_000)
    first_x = "() => document.querySelector('.js-plotly-plot')._fullData[0].x[0]"
    before = page.evaluate(first_x)
    thumb = page.locator('[data-testid="stSlider"]').first.get_by_role("slider").first
    thumb.focus()
    for _ in range(10):
        thumb.press("ArrowRight")
    _wait_for_run(page)
    page.wait_for_function(f"() => ({first_x})() !== {before}", timeout=180_000)
    _assert_no_errors(page)
    assert page.evaluate(first_x) > before
    page.close()


def test_a_shared_link_opened_first_on_a_fresh_server_uses_the_app_navigation(
        browser, tmp_path):
    """A fresh server whose first visitor follows a deep link (a talk's shared
    URL after a restart): the page opens with its URL parameters under the
    app's own navigation, not Streamlit's file list of pages/ (with "app")."""
    (tmp_path / "home").mkdir()
    for url in serve(tmp_path / "home"):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/Compare?compare=gap-clasp,gap-clasp-init")
        wait_for_run(page)
        assert_no_errors(page, "deep link")
        nav = [a.inner_text().strip() for a in
               page.locator('[data-testid="stSidebarNav"] a').all()]
        assert "app" not in nav and "Home" in nav and "Compare" in nav, nav
        assert nav.index("Compare") < nav.index("Upload")       # app.py's order
        chosen = page.locator('[data-testid="stMultiSelect"]').first.inner_text()
        assert "gap-clasp" in chosen and "gap-clasp-init" in chosen
        page.close()
