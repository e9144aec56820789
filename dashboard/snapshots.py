"""Cached computations for the "Training timeline" page (clipgeom.timeline)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from clipgeom import conformity, geometry, projection, store, timeline


@st.cache_data(show_spinner=False, max_entries=16)
def steps(fingerprint: str, name: str) -> list[int]:
    return timeline.snapshot_steps(store.open_dataset(name))


@st.cache_resource(show_spinner=False, max_entries=64)
def snapshot(fingerprint: str, name: str, step: int) -> timeline.Snapshot:
    return timeline.load_snapshot(store.open_dataset(name), step)


@st.cache_data(show_spinner="measuring every snapshot…", max_entries=8)
def table(fingerprint: str, name: str):
    snaps = [snapshot(fingerprint, name, s) for s in steps(fingerprint, name)]
    return timeline.timeline_table(snaps)


@st.cache_data(show_spinner=False, max_entries=8)
def quality(fingerprint: str, name: str) -> dict:
    """{step: held-out quality} recorded at build time (the demo's training log)."""
    demo = store.open_dataset(name).manifest.get("demo") or {}
    return {int(q["step"]): q["eval"] for q in demo.get("snapshot_quality", [])}


@st.cache_data(show_spinner=False, max_entries=8)
def captions(fingerprint: str, name: str) -> list[str] | None:
    return timeline.snapshot_captions(store.open_dataset(name))


@st.cache_data(show_spinner=False, max_entries=64)
def views(fingerprint: str, name: str, step: int) -> dict:
    """Everything drawn for one step: joint SVD, norms, Sep(l), conformity."""
    snap = snapshot(fingerprint, name, step)
    proj = projection.joint_svd_projection(snap.image, snap.text, 2, normalize=True)
    si = geometry.summarize(snap.image, "image")
    st_ = geometry.summarize(snap.text, "text")
    return {"proj": proj, "norms": {"image": si.norms, "text": st_.norms},
            "sep": np.sort(geometry.separability(si, st_))[::-1],
            "conformity": {"image": conformity.exact_conformity(snap.image),
                           "text": conformity.exact_conformity(snap.text)}}
