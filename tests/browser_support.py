"""Shared by the browser tests: a Streamlit server on 127.0.0.1, headless
Chromium (Debian's, never a downloaded one), and waiting for a script run."""

from __future__ import annotations

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


def need_browser():
    if CHROMIUM:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must run the browser tests: install Debian's chromium package")
    pytest.skip("no Chromium found (apt-get install chromium, or set CLIPGEOM_CHROMIUM)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(home: Path):
    """Start ``streamlit run app.py`` on a free port with CLIPGEOM_HOME=home;
    yields its URL, stops it after."""
    port = free_port()
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


def launch():
    """A headless Chromium (context manager yielding the browser)."""
    from playwright.sync_api import sync_playwright

    class _Browser:
        def __enter__(self):
            self._p = sync_playwright().start()
            self.browser = self._p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS)
            return self.browser

        def __exit__(self, *exc):
            self.browser.close()
            self._p.stop()

    return _Browser()


def wait_for_run(page, timeout_s=240):
    """Wait until Streamlit has finished: no running indicator and no skeleton
    placeholders, twice in a row half a second apart."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_s * 1000)
    deadline = time.time() + timeout_s
    quiet = 0
    time.sleep(0.6)
    while time.time() < deadline:
        busy = (page.locator('[data-testid="stStatusWidget"]').count()
                + page.locator('[data-testid="stSkeleton"]').count())
        quiet = quiet + 1 if busy == 0 else 0
        if quiet >= 2:
            return
        time.sleep(0.3)
    raise AssertionError("the app was still running after the timeout")


def error_texts(page) -> list[str]:
    """Every exception box, error box or traceback on the page."""
    out = [e.inner_text() for e in page.locator('[data-testid="stException"]').all()]
    out += [e.inner_text() for e in page.locator('[data-testid="stAlertContentError"]').all()]
    if "Traceback (most recent call last)" in page.content():
        out.append("a traceback is on the page")
    if page.get_by_text("Page not found").count():
        out.append("Page not found")
    return out


def assert_no_errors(page, where: str = "") -> None:
    errs = error_texts(page)
    assert not errs, f"{where}: {errs[0][:2000]}"
