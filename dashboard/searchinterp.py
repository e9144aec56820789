"""Cached computations for the "Search & interpolation" page.

Thin cached calls into clipgeom.search (FAISS), clipgeom.interpolate
(SLERP/vSLERP, Sec. 7.2) and clipgeom.geometry.blur_experiment (Fig. 7).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from clipgeom import geometry, interpolate, search, store, upload
from clipgeom._chunks import column_mean

from . import lossconf
from .data import Loaded

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
    return column_mean(_loaded.image if modality == "image" else _loaded.text)


@st.cache_data(show_spinner="interpolating…", max_entries=32)
def paths(fingerprint: str, _loaded: Loaded, modality: str, row_a: int, row_b: int,
          alpha: float, steps: int) -> dict:
    """interpolate.compare_paths between two rows of one modality, with the
    nearest image and caption at every point."""
    x = _loaded.image if modality == "image" else _loaded.text
    a = np.asarray(x[row_a], dtype=np.float64)
    b = np.asarray(x[row_b], dtype=np.float64)
    return interpolate.compare_paths(a, b, modality_mean(fingerprint, _loaded, modality),
                                     np.linspace(0.0, 1.0, steps), alpha,
                                     {"image": _loaded.image, "text": _loaded.text})


@st.cache_data(show_spinner=False, max_entries=32)
def blur(scale: float, n: int, dim: int, seed: int) -> geometry.BlurResult:
    """geometry.blur_experiment with centre scale * (10, 5, 5, 0, ...)."""
    return geometry.blur_experiment([scale * c for c in BLUR_DIRECTION], n=n, dim=dim,
                                    seed=seed)
