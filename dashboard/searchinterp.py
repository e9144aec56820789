"""Cached computations for the "Search & interpolation" page.

Thin cached calls into clipgeom.search (FAISS), clipgeom.interpolate
(SLERP/vSLERP, Sec. 7.2) and clipgeom.geometry.blur_experiment (Fig. 7).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from clipgeom import geometry, index, interpolate, search, store, stored_summaries, upload
from clipgeom._chunks import column_mean, row_chunks

from . import data, lossconf
from .data import SYNTHETIC, Loaded

# The paper's blur-experiment centre (Fig. 7 bottom) before scaling.
BLUR_DIRECTION = (10.0, 5.0, 5.0)


@st.cache_data(show_spinner="searching…", max_entries=64)
def text_query(fingerprint: str, name: str, text: str, target: str, k: int) -> dict:
    """search.run_query by typed text (embedded with the dataset's model)."""
    ds = store.open_dataset(name)
    lossconf.query_model(lossconf.model_spec(name))
    return search.run_query(ds, text=text, target=target, k=k)


@st.cache_data(show_spinner="searching…", max_entries=32)
def image_query(fingerprint: str, name: str, filename: str, data: bytes, target: str,
                k: int) -> dict:
    """search.run_query by an uploaded image."""
    ds = store.open_dataset(name)
    lossconf.query_model(lossconf.model_spec(name))
    with upload.as_file(filename, data) as path:
        res = search.run_query(ds, image=str(path), target=target, k=k)
    res["query"] = f"image {filename!r}"
    return res


@st.cache_data(show_spinner="searching…", max_entries=64)
def item_query(fingerprint: str, name: str, modality: str, row: int, target: str,
               k: int) -> dict:
    ds = store.open_dataset(name)
    return search.run_query(ds, item=row, item_modality=modality, target=target, k=k)


@st.cache_data(show_spinner=False, max_entries=8)
def modality_mean(fingerprint: str, _loaded: Loaded, modality: str) -> np.ndarray:
    """The modality's mean vector: the one kept with the dataset's summaries
    (``clipgeom.stored_summaries``, from the report's passes), else one float64
    pass over the rows."""
    ds = data.stored_version(_loaded)
    kept = stored_summaries.load(ds) if ds is not None else None
    if kept is not None:
        return kept[0 if modality == "image" else 1].mean
    return column_mean(_loaded.image if modality == "image" else _loaded.text)


def _paired(fingerprint: str, _loaded: Loaded, modality: str, rows) -> list[int]:
    """The rows of the other modality linked to ``rows`` of ``modality``: every
    caption of those images (or the image of those captions) in a stored
    dataset; the pairing for the in-memory generator."""
    rows = np.asarray(list(rows), dtype=np.int64)
    if _loaded.name != SYNTHETIC:
        images, texts = lossconf.tables(fingerprint, _loaded.name)
        if modality == "image":
            ids = set(images["image_id"].iloc[rows])
            return np.flatnonzero(texts["image_id"].isin(ids).to_numpy()).tolist()
        ids = set(texts["image_id"].iloc[rows].dropna())
        return np.flatnonzero(images["image_id"].isin(ids).to_numpy()).tolist()
    src, dst = ((_loaded.pair_image_rows, _loaded.pair_text_rows) if modality == "image"
                else (_loaded.pair_text_rows, _loaded.pair_image_rows))
    hit = np.isin(np.asarray(src), rows)
    return sorted({int(d) for d in np.asarray(dst)[hit]})


def nearest_targets(loaded: Loaded) -> tuple[dict, dict]:
    """What the interpolation searches for the nearest image and caption:
    ({modality: nearest-rows function of its FAISS index, or the array to
    scan}, {modality: how, in words}). A stored dataset whose index exists
    (shipped, built at import or by a search) is searched through it; an index
    is never built here, and the in-memory generator has none: their rows
    are scanned (``interpolate.nearest_cosine``)."""
    targets = {"image": loaded.image, "text": loaded.text}
    how = {m: "exact scan of every row" for m in targets}
    if loaded.name == SYNTHETIC:
        return targets, how
    ds = store.open_dataset(loaded.name)
    if ds.fingerprint != loaded.fingerprint:
        return targets, how
    for m in targets:
        if index.stored_info(ds, m) is not None:
            targets[m] = interpolate.index_nearest(ds, m)
            how[m] = ("FAISS exact index" if targets[m].kind == "flat"
                      else "FAISS approximate (IVF) index")
    return targets, how


@st.cache_data(show_spinner="interpolating…", max_entries=32)
def paths(fingerprint: str, _loaded: Loaded, modality: str, row_a: int, row_b: int,
          alpha: float, steps: int, leave_out_ends: bool = True) -> dict:
    """interpolate.compare_paths between two rows of one modality, with the
    nearest image and caption at every point (Sec. 7.2, Fig. 12), found with
    the dataset's FAISS indexes when they exist (:func:`nearest_targets`:
    one index search per path and modality instead of four scans of every
    row); ``out["nearest_by"]`` says how.

    ``leave_out_ends``: the two endpoints, and the items paired with them,
    are left out of the nearest-item search, so the galleries show what lies
    along the path instead of the endpoints again."""
    x = _loaded.image if modality == "image" else _loaded.text
    a = np.asarray(x[row_a], dtype=np.float64)
    b = np.asarray(x[row_b], dtype=np.float64)
    other = "text" if modality == "image" else "image"
    ends = [row_a, row_b]
    exclude = ({modality: ends, other: _paired(fingerprint, _loaded, modality, ends)}
               if leave_out_ends else None)
    targets, how = nearest_targets(_loaded)
    out = interpolate.compare_paths(a, b, modality_mean(fingerprint, _loaded, modality),
                                    np.linspace(0.0, 1.0, steps), alpha, targets,
                                    exclude=exclude)
    out["shell_radius"] = shell_radius(fingerprint, _loaded, modality)
    out["nearest_by"] = how
    return out


def _report_shell_radius(loaded: Loaded, modality: str) -> float | None:
    """The report's shell radius E||v - m|| when a report of this dataset version
    exists (never computes one)."""
    rep = data.peek_report(loaded)
    try:
        v = rep[modality]["shell_radius"] if rep is not None else None
    except (KeyError, TypeError):
        v = None
    return None if v is None else float(v)


@st.cache_data(show_spinner=False, max_entries=8)
def shell_radius(fingerprint: str, _loaded: Loaded, modality: str) -> float:
    """Mean ||v - m|| of the modality: the shell radius (Double-Ellipsoid Eq. 1-4),
    the report's when one exists, else one chunked pass."""
    stored = _report_shell_radius(_loaded, modality)
    if stored is not None:
        return stored
    x = _loaded.image if modality == "image" else _loaded.text
    m = modality_mean(fingerprint, _loaded, modality)
    total = 0.0
    for sl in row_chunks(x.shape[0]):
        total += float(np.linalg.norm(np.asarray(x[sl], dtype=np.float64) - m, axis=1).sum())
    return total / max(1, x.shape[0])


@st.cache_data(show_spinner=False, max_entries=32)
def blur(scale: float, n: int, dim: int, seed: int) -> geometry.BlurResult:
    """geometry.blur_experiment with centre scale * (10, 5, 5, 0, ...)."""
    return geometry.blur_experiment([scale * c for c in BLUR_DIRECTION], n=n, dim=dim,
                                    seed=seed)
