"""The running dashboard in a real browser (headless Chromium via Playwright).

Skips with a reason where Chromium is absent (a user's laptop); in CI
(CI=true) a missing browser is a failure. Screenshots land in
test-artifacts/ for a person to look at.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CLIPGEOM_CHROMIUM") or shutil.which("chromium") \
    or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.browser


def _need_browser():
    if CHROMIUM:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must run the browser test: install Debian's chromium package")
    pytest.skip("no Chromium found (apt-get install chromium, or set CLIPGEOM_CHROMIUM)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    _need_browser()
    home = tmp_path_factory.mktemp("home")
    port = _free_port()
    # A fresh home beside the bundled demo: the pages open on the demo, as for a
    # user's first start.
    env = dict(os.environ, CLIPGEOM_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("CLIPGEOM_ASSETS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    pytest.fail(f"streamlit did not start:\n{out[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _wait_for_run(page, timeout_s=240):
    """Wait until Streamlit has finished: no running indicator and no skeleton
    placeholders, twice in a row half a second apart."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_s * 1000)
    deadline = time.time() + timeout_s
    quiet = 0
    time.sleep(1.0)
    while time.time() < deadline:
        busy = (page.locator('[data-testid="stStatusWidget"]').count()
                + page.locator('[data-testid="stSkeleton"]').count())
        quiet = quiet + 1 if busy == 0 else 0
        if quiet >= 2:
            return
        time.sleep(0.5)
    raise AssertionError("the app was still running after the timeout")


def _assert_no_errors(page):
    assert page.locator('[data-testid="stException"]').count() == 0, \
        page.locator('[data-testid="stException"]').first.inner_text()
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.first.inner_text()
    assert "Traceback" not in page.content()
    assert page.get_by_text("Page not found").count() == 0


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
    import zipfile

    from clipgeom.demo import world as W

    w = W.generate(6, seed=42)
    with zipfile.ZipFile(path, "w") as zf:
        rows = ["image,caption"]
        for i in range(len(w)):
            import io
            buf = io.BytesIO()
            w.image(i).save(buf, format="PNG")
            zf.writestr(f"scenes/scene{i}.png", buf.getvalue())
            rows.append(f"scene{i}.png,{w.captions[i]}")
        zf.writestr("scenes/captions.csv", "\n".join(rows) + "\n")
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
