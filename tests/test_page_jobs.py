"""The Upload page's background jobs through AppTest (the whole app, real
worker processes): a job started on the page survives a widget change and a
page switch and is shown finished on return; a new session (a closed tab)
finds it and opens its dataset; an interrupted job is resumed and a running
one cancelled with the panel's buttons."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clipgeom import background, embed, store, upload
from test_background_jobs import chunk_log, install_slow_hook, wait_until
from tiny_data import tiny_dataset, world_zip

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
UPLOAD = "pages/8_Upload.py"
HOME = "pages/0_Home.py"
ZIP_KIND = "One zip (images + captions.csv)"


@pytest.fixture(autouse=True)
def _app_mode(monkeypatch):
    """AppTest resets Streamlit's process-wide "pages directory" flag before
    every run, and ``ui.page_header`` answers that flag (meant for a fresh
    server's deep links) with a rerun, which drops a click made in the app's
    navigation mode. The real server clears the flag once; so does this."""
    from dashboard import ui

    monkeypatch.setattr(ui, "_leave_pages_directory_mode", lambda: None)


def _texts(at) -> list[str]:
    return [m.value for m in at.markdown] + [c.value for c in at.caption]


def _start_on_the_page(at, name: str, data: bytes, model_config: Path) -> str:
    at.radio(key="upload_kind").set_value(ZIP_KIND).run()
    at.radio(key="upload_model").set_value("open_clip model").run()
    at.text_input(key="upload_arch").set_value(str(model_config))   # a config: offline
    at.text_input(key="upload_tag").set_value("")
    at.text_input(key="upload_name").set_value(name)
    at.file_uploader(key="upload_zip").set_value(("my scenes.zip", data, "application/zip"))
    [go] = [b for b in at.button if b.label == "Create dataset"]
    go.click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at.session_state["upload_result"]["job"]


def test_a_job_survives_a_widget_change_and_a_page_switch(clipgeom_home, tiny_model_config):
    tiny_dataset()                       # Home has a small dataset to draw meanwhile
    at = AppTest.from_file(APP, default_timeout=300).switch_page(UPLOAD).run()
    assert any("No jobs yet" in c.value for c in at.caption)
    job_id = _start_on_the_page(at, "paged", world_zip(6, seed=3), tiny_model_config)
    assert any("Embedding 'paged' in the background" in i.value for i in at.info)
    assert any(job_id in t for t in _texts(at))              # listed in the Jobs panel
    info = background.job_status(job_id)
    if info.active:
        assert at.get("progress")                            # its bar, while it runs
    # touching a widget and leaving the page do not stop it
    at.radio(key="upload_kind").set_value("Images + captions file").run()
    at.switch_page(HOME).run()
    assert not at.exception
    assert background.job_status(job_id).state in ("queued", "running", "finished")
    info = background.wait(job_id, timeout=300)
    assert info.state == "finished", (info.error, background.log_tail(job_id))
    at.switch_page(UPLOAD).run()
    assert not at.exception and not at.error
    assert any("Created dataset 'paged': 6 images, 6 captions" in s.value for s in at.success)
    assert any(":green[**finished**]" in m for m in _texts(at))
    assert at.session_state["dataset"] == "paged"            # selected on every page
    assert not at.get("progress")                            # nothing runs: no bar, no poll

    # a new session (the tab was closed) finds the job and opens its dataset
    other = AppTest.from_file(APP, default_timeout=300).switch_page(UPLOAD).run()
    assert not other.success                                 # not this session's attempt
    assert any(job_id in t for t in _texts(other))
    other.button(key=f"job_open_{job_id}").click().run()
    assert not other.exception
    assert other.session_state["dataset"] == "paged"
    assert other.selectbox(key="dataset_select").value == "paged"
    # removing the ended job from the list keeps the dataset
    other.switch_page(UPLOAD).run()
    other.button(key=f"job_forget_{job_id}").click().run()
    assert background.list_jobs() == [] and "paged" in upload.user_datasets()


def _slow_job(home, model_config, tmp_path, monkeypatch, name: str) -> tuple[str, Path]:
    monkeypatch.setenv("CLIPGEOM_UPLOAD_CHUNK_ROWS", "2")
    log = install_slow_hook(tmp_path / "hook", monkeypatch, delay=0.8)
    job_id = upload.start_embed_zip(name, ("scenes.zip", world_zip(8, seed=4)),
                                    embed.ModelSpec(str(model_config)))
    wait_until(lambda: chunk_log(log), what="a first chunk")
    return job_id, log


def test_resume_and_cancel_buttons(clipgeom_home, tiny_model_config, tmp_path, monkeypatch):
    job_id, log = _slow_job(clipgeom_home, tiny_model_config, tmp_path, monkeypatch, "resumed")
    first = background.job_status(job_id)
    os.killpg(first.pid, signal.SIGKILL)                    # the machine went down
    wait_until(lambda: background.job_status(job_id).resumable, timeout=30,
               what="the interrupted state")
    at = AppTest.from_file(APP, default_timeout=300).switch_page(UPLOAD).run()
    assert any("interrupted (resumable)" in t for t in _texts(at))
    at.button(key=f"job_resume_{job_id}").click().run()
    assert not at.exception and not at.error
    assert any("resumed" in c.value for c in at.caption)
    info = background.wait(job_id, timeout=300)
    assert info.state == "finished" and info.attempt == 2, background.log_tail(job_id)
    pids = {pid for pid, _ in chunk_log(log)}
    assert pids == {first.pid, info.pid}
    assert store.open_dataset("resumed").n_images == 8

    # a running job, cancelled from the panel
    job2, _ = _slow_job(clipgeom_home, tiny_model_config, tmp_path, monkeypatch, "stopped")
    at.run()
    assert at.get("progress")
    at.button(key=f"job_cancel_{job2}").click().run()
    assert not at.exception
    assert background.job_status(job2).state == "cancelled"
    assert any(":gray[**cancelled**]" in t for t in _texts(at))
    assert "stopped" not in upload.user_datasets()
    assert not (background.folder(job2) / "input").exists()


def test_a_jobs_line_names_its_engine(clipgeom_home):
    """A running job on Ray (its pid a live process naming the job, as a
    worker's does) is shown "on Ray" by the page and "engine Ray" in its
    line; a finished local one "engine local"."""
    import json
    import subprocess
    import sys

    ran = background.create("upload", {}, dataset="old", title="old: set.zip")
    job_id = background.create("upload", {}, dataset="x", title="x: set.zip")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", job_id])
    try:
        for jid, changes in ((ran, dict(state="finished", result="old", engine="local")),
                             (job_id, dict(state="running", pid=proc.pid, engine="ray"))):
            path = background.folder(jid) / "state.json"
            st = json.loads(path.read_text())
            st.update(attempt=1, started=st["queued_at"], **changes)
            path.write_text(json.dumps(st))
        assert background.job_status(job_id).state == "running"
        at = AppTest.from_file(str(ROOT / UPLOAD), default_timeout=120)
        at.session_state["upload_result"] = {"job": job_id}
        at.run()
        assert not at.exception
        assert any("Embedding 'x' on Ray in the background" in i.value for i in at.info)
        lines = [c.value for c in at.caption if c.value.startswith("job ")]
        assert any(job_id in c and "· engine Ray" in c for c in lines), lines
        assert any(ran in c and "· engine local" in c for c in lines), lines
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_the_latest_attempt_shows_the_jobs_outcome(clipgeom_home, state):
    """A session whose latest upload job failed (or was cancelled) shows that
    outcome once, as the old synchronous page did."""
    job_id = background.create("upload", {}, dataset="x", title="x: set.zip")
    st_path = background.folder(job_id) / "state.json"
    import json
    st = json.loads(st_path.read_text())
    st.update(state=state, attempt=1, error="set/bad.png: not an image")
    st_path.write_text(json.dumps(st))
    at = AppTest.from_file(str(ROOT / UPLOAD), default_timeout=120)
    at.session_state["upload_result"] = {"job": job_id}
    at.run()
    assert not at.exception
    if state == "failed":
        [err] = at.error
        assert "set/bad.png: not an image" in err.value.replace("\\", "")
    else:
        assert not at.error and any("was cancelled" in i.value for i in at.info)
