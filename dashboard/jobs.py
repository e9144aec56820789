"""The Jobs panel: background jobs (:mod:`clipgeom.background`) as the Upload
page shows them.

Jobs live on disk, not in the session, so the panel lists every job of this
server's home: after a page switch, a closed tab or a server restart it finds
them all again (a job whose process died is "interrupted (resumable)"). Each
job's line names the engine its embedding ran on (the server's
``CLIPGEOM_JOB_ENGINE``: local or Ray). It polls with
``st.fragment(run_every=POLL_S)`` only while a job is queued or running, and
reruns the whole page when that changes (a job started, ended or was
resumed), so the page's own result area catches up and polling stops.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Optional

import streamlit as st

from clipgeom import background, store, upload
from clipgeom.errors import ClipgeomError
from clipgeom.safety import plain_markdown

POLL_S = 1.5            # seconds between two redraws while a job runs
SHOWN = 10              # newest jobs drawn; older ones: python -m clipgeom jobs list
NOTE = "jobs_note"      # the latest button's outcome, shown once
BADGES = {"queued": ":gray[**queued**]", "running": ":blue[**running**]",
          "finished": ":green[**finished**]", "failed": ":red[**failed**]",
          "cancelled": ":gray[**cancelled**]",
          background.INTERRUPTED: ":orange[**interrupted (resumable)**]"}
# Where a job's embedding ran (the server's CLIPGEOM_JOB_ENGINE, per attempt).
ENGINES = {"local": "local", "ray": "Ray"}


def status(job_id: str) -> Optional[background.JobInfo]:
    """The job's state, or None when it was removed from the list."""
    try:
        return background.job_status(job_id)
    except ClipgeomError:
        return None


def select_finished(result_key: str) -> None:
    """Call before the dataset picker is drawn: when this session's latest
    upload job has finished, its dataset becomes the selected one (once)."""
    res = st.session_state.get(result_key) or {}
    if "job" not in res or res.get("selected"):
        return
    info = status(res["job"])
    if info is not None and info.state == "finished" and info.result:
        st.session_state["dataset_request"] = info.result
        st.session_state[result_key] = dict(res, selected=True)


def _when(t: Optional[float]) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "?"


def _duration(s: Optional[float]) -> str:
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min"


def progress_text(info: background.JobInfo) -> str:
    """``stage: done of total, about N s left`` from the job's progress file."""
    p = info.progress
    if not p.get("stage"):
        return "starting (loading the model and reading the files)…" \
            if info.state == "running" else "waiting to start…"
    done, total = int(p.get("done") or 0), int(p.get("total") or 0)
    text = p["stage"] if total <= 1 else f"{p['stage']}: {done:,} of {total:,}"
    t0, t1 = p.get("stage_started"), p.get("updated")
    if info.active and 0 < done < total and t0 and t1 and t1 > t0:
        text += f", about {(t1 - t0) / done * (total - done):.0f} s left"
    return text


def _cancel(job_id: str) -> None:
    try:
        info = background.cancel(job_id)
        st.session_state[NOTE] = ("ok", f"Job {job_id} is {info.label}.")
    except ClipgeomError as exc:
        st.session_state[NOTE] = ("error", str(exc))


def _resume(job_id: str) -> None:
    try:
        background.resume(job_id)
        st.session_state[NOTE] = ("ok", f"Job {job_id} resumed: it continues from its "
                                        "finished chunks.")
    except ClipgeomError as exc:
        st.session_state[NOTE] = ("error", str(exc))


def _forget(job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            background.forget(job_id)
        except ClipgeomError:
            pass                     # resumed or removed meanwhile: leave it


def _open(name: str) -> None:
    """Select the dataset on every page and go to Home (the page alone, as in
    tests, has no Home to go to: it only reruns)."""
    st.session_state["dataset_request"] = name
    try:
        st.switch_page("pages/0_Home.py")
    except st.errors.StreamlitAPIException:
        st.rerun()


def _job(info: background.JobInfo, datasets: set[str]) -> None:
    """One job: state, title, times, progress or outcome, buttons, log."""
    with st.container(border=True):
        left, right = st.columns([4, 1])
        left.markdown(f"{BADGES.get(info.state, plain_markdown(info.state))} "
                      f"{plain_markdown(info.title)}")
        took = _duration(info.seconds())
        left.caption(f"job {info.id} · started {_when(info.started or info.created)}"
                     + (f" · {took}" if took else "")
                     + (f" · engine {plain_markdown(ENGINES.get(info.engine, info.engine))}"
                        if info.engine else "")
                     + (f" · attempt {info.attempt}" if info.attempt > 1 else ""))
        if info.active:
            left.progress(info.fraction, text=plain_markdown(progress_text(info)))
        elif info.resumable:
            left.caption("Its process stopped (killed, or the machine restarted) at "
                         f"{plain_markdown(progress_text(info))}. Resume continues from the "
                         "chunks it had finished.")
        elif info.state in ("failed", "cancelled") and info.error:
            left.caption(plain_markdown(upload.user_message(info.error)))
        elif info.state == "finished":
            gone = info.result not in datasets
            left.caption(f"Dataset {plain_markdown(repr(info.result))}"
                         + (" (since deleted)." if gone else " is ready."))
        if info.active or info.resumable:
            right.button("Cancel", key=f"job_cancel_{info.id}", on_click=_cancel,
                         args=(info.id,), help="Stop the job; nothing is kept.")
        if info.resumable:
            right.button("Resume", key=f"job_resume_{info.id}", type="primary",
                         on_click=_resume, args=(info.id,))
        if info.state == "finished" and info.result in datasets:
            if right.button("Open dataset", key=f"job_open_{info.id}"):
                _open(info.result)
        if info.state in background.TERMINAL:
            right.button("Remove", key=f"job_forget_{info.id}", on_click=_forget,
                         args=([info.id],), help="Remove the job from this list (the "
                                                 "dataset stays).")
        with st.expander("Log"):
            st.code(upload.user_message(background.log_tail(info.id, 40)) or "(empty)",
                    language=None)


def _draw(polling: bool) -> None:
    jobs = background.list_jobs()
    if any(j.active for j in jobs) != polling:
        st.rerun()                   # a job started or ended: the page follows, polling too
    note = st.session_state.pop(NOTE, None)
    if note:
        (st.caption if note[0] == "ok" else st.warning)(plain_markdown(note[1]))
    if not jobs:
        st.caption("No jobs yet. An upload runs as a background job: you can switch "
                   "pages or close the tab while it embeds.")
        return
    st.caption("Uploads run in their own process: switching pages, closing the tab or "
               "restarting the server does not stop them. Updated "
               f"{time.strftime('%H:%M:%S')}" + (f", every {POLL_S:g} s while a job runs."
                                                  if polling else "."))
    datasets = {d["name"] for d in store.list_datasets()}
    for info in jobs[:SHOWN]:
        _job(info, datasets)
    if len(jobs) > SHOWN:
        st.caption(f"{len(jobs) - SHOWN} older job(s) not shown (`python -m clipgeom jobs "
                   "list`).")
    ended = [j.id for j in jobs if j.state in background.TERMINAL]
    if ended:
        st.button(f"Remove the {len(ended)} ended job(s) from the list", key="jobs_forget_all",
                  on_click=_forget, args=(ended,))


def panel() -> None:
    """The Jobs panel, polling only while a job is queued or running."""
    polling = any(j.active for j in background.list_jobs())
    st.fragment(_draw, run_every=POLL_S if polling else None)(polling)
