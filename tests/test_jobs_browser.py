"""Background upload jobs in headless Chromium against a real Streamlit server:
reloading the tab mid-job finds the job still running and then finished (and
opens its dataset); a server killed with SIGKILL leaves its worker running,
and once the worker is killed too (the machine went down), the restarted
server shows the job interrupted (resumable) and its Resume button finishes
it without recomputing a finished chunk.

Jobs are slowed by the chunk hook of tests/test_background_jobs.py (a
``sitecustomize`` on the server's PYTHONPATH, inherited by its workers), so
the tests act between chunks; the model is the tests' tiny open_clip config.
Screenshots land in test-artifacts/jobs/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clipgeom import background, store
from tests.browser_support import (ARTIFACTS, ROOT, assert_no_errors, free_port, launch,
                                   need_browser, wait_for_run)
from tests.conftest import TINY_CONFIG
from tests.test_background_jobs import chunk_log, install_slow_hook, wait_until
from tests.tiny_data import world_zip

pytestmark = pytest.mark.browser
SHOTS = ARTIFACTS / "jobs"


class Server:
    """``streamlit run app.py`` on a port, with its own environment; killable."""

    def __init__(self, env: dict):
        self.env, self.port, self.proc = env, free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
             "--server.headless", "true", "--server.address", "127.0.0.1",
             "--server.port", str(self.port), "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(self.url + "/_stcore/health", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    pytest.fail("streamlit did not start")
                time.sleep(0.5)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()                       # SIGKILL: no shutdown of any kind
            self.proc.wait(10)


@pytest.fixture
def setup(tmp_path):
    """A home, the slow-chunk hook and the tiny model config; every job still
    running at the end is cancelled."""
    need_browser()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CLIPGEOM_ASSETS"}
    log = install_slow_hook(tmp_path / "hook", env, delay=2.0)
    env.update(PYTHONPATH=os.pathsep.join([env["PYTHONPATH"], str(ROOT)]),
               CLIPGEOM_HOME=str(home), CLIPGEOM_UPLOAD_CHUNK_ROWS="2")
    model = tmp_path / "tiny-clip.json"
    model.write_text(json.dumps(TINY_CONFIG))
    zip_path = tmp_path / "scenes.zip"
    zip_path.write_bytes(world_zip(12, seed=9, folder="scenes"))
    servers: list[Server] = []
    yield dict(home=home, env=env, log=log, model=model, zip=zip_path, servers=servers)
    for s in servers:
        s.kill()
    for j in background.list_jobs(home):
        if j.active:
            background.cancel(j.id, home)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _start_upload(page, url: str, name: str, s: dict) -> None:
    """The user's way: the Upload page, a zip, an open_clip model config, submit."""
    page.goto(f"{url}/Upload")
    wait_for_run(page)
    page.get_by_text("One zip (images + captions.csv)").click()
    wait_for_run(page)
    page.get_by_text("open_clip model", exact=True).click()
    wait_for_run(page)
    arch = page.get_by_role("textbox", name="open_clip architecture")
    arch.fill(str(s["model"]))
    arch.press("Enter")
    wait_for_run(page)
    tag = page.get_by_role("textbox", name="pretrained tag")
    tag.fill("")
    tag.press("Enter")
    wait_for_run(page)
    page.get_by_placeholder("my-photos").fill(name)
    page.locator('input[type="file"]').first.set_input_files(str(s["zip"]))
    wait_for_run(page)
    page.get_by_role("button", name="Create dataset").click()
    page.get_by_text(f"Embedding '{name}' in the background").wait_for(timeout=120_000)
    assert_no_errors(page, "after submit")


def _the_job(home: Path) -> background.JobInfo:
    [job] = background.list_jobs(home)
    return job


def _progress_text(page) -> str:
    bars = page.locator('[data-testid="stProgress"]')
    return bars.first.inner_text() if bars.count() else ""


def test_reloading_the_tab_mid_job_keeps_the_job(setup, tmp_path):
    server = Server(setup["env"]).start()
    setup["servers"].append(server)
    with launch() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        _start_upload(page, server.url, "reloaded", setup)
        wait_until(lambda: chunk_log(setup["log"]), timeout=180, what="a first chunk")
        assert _the_job(setup["home"]).state == "running"
        _shot(page, "1-running")
        page.reload()                                   # a new session: nothing in it
        wait_for_run(page)
        page.get_by_text("Jobs", exact=True).first.wait_for(timeout=60_000)
        assert page.get_by_text("reloaded: scenes.zip").count() == 1
        _shot(page, "2-after-reload")
        # the panel polls: its bar moves (and then the job ends) with no click
        first = _progress_text(page)
        running = _the_job(setup["home"]).state == "running"
        print(f"after the reload: running={running}, bar={first!r}")
        assert first or not running, "no progress bar after the reload"
        deadline = time.time() + 120
        while first and _progress_text(page) == first and time.time() < deadline:
            time.sleep(0.5)
        assert not first or _progress_text(page) != first, "the progress did not move"
        page.get_by_role("button", name="Open dataset").wait_for(timeout=240_000)
        job = _the_job(setup["home"])
        assert job.state == "finished" and job.attempt == 1
        assert_no_errors(page, "finished")
        _shot(page, "3-finished")
        page.get_by_role("button", name="Open dataset").click()
        wait_for_run(page)
        picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input')
        wait_until(lambda: picker.first.input_value() == "reloaded", timeout=120,
                   what="the dataset to be selected")
        assert "/Upload" not in page.url                # went to Home
        assert_no_errors(page, "home after open")
    ds = store.open_dataset("reloaded", setup["home"])
    assert ds.n_images == 12 and ds.dim == TINY_CONFIG["embed_dim"]


def test_a_killed_server_leaves_the_job_resumable(setup):
    server = Server(setup["env"]).start()
    setup["servers"].append(server)
    home, log = setup["home"], setup["log"]
    with launch() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        _start_upload(page, server.url, "survivor", setup)
        wait_until(lambda: len(chunk_log(log)) >= 2, timeout=180, what="two chunks")
        worker = _the_job(home)
        server.kill()
        time.sleep(1.5)
        assert background._alive(worker.pid, worker.id)   # the worker outlived the server
        done = len(chunk_log(log))
        wait_until(lambda: len(chunk_log(log)) > done, timeout=60,
                   what="a chunk written after the server died")
        os.killpg(worker.pid, signal.SIGKILL)             # now the machine goes down too
        wait_until(lambda: not background._alive(worker.pid, worker.id), timeout=30,
                   what="the worker to die")
        before = sorted(p.name for p in (home / "jobs" / "survivor").glob("*.npz"))

        restarted = Server(setup["env"]).start()
        setup["servers"].append(restarted)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{restarted.url}/Upload")
        wait_for_run(page)
        page.get_by_text("interrupted (resumable)").wait_for(timeout=60_000)
        assert _the_job(home).resumable
        _shot(page, "4-interrupted")
        page.get_by_role("button", name="Resume").click()
        page.get_by_role("button", name="Open dataset").wait_for(timeout=240_000)
        assert_no_errors(page, "resumed")
        _shot(page, "5-resumed-finished")
    job = _the_job(home)
    assert job.state == "finished" and job.attempt == 2
    resumed = {n for pid, n in chunk_log(log) if pid == job.pid}
    assert resumed and resumed.isdisjoint(before) and len(before) >= 2
    assert store.open_dataset("survivor", home).n_images == 12
