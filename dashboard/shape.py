"""Cached clipgeom computations for the Separability and Thin-shell pages.

Every function is keyed by the dataset fingerprint (the ``_loaded`` argument
is not hashed); the numbers all come from :mod:`clipgeom.geometry`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from clipgeom import geometry, store

from . import data


@st.cache_data(show_spinner="summarising both modalities…", max_entries=8)
def summaries(fingerprint: str, _loaded: data.Loaded):
    """(image, text) ModalitySummary."""
    return (geometry.summarize(_loaded.image, "image embeddings"),
            geometry.summarize(_loaded.text, "text embeddings"))


@st.cache_data(show_spinner="fitting separability…", max_entries=8)
def separability(fingerprint: str, _loaded: data.Loaded, k_offset: int = 10) -> dict:
    """Sep(l) (Eq. 5), the top features, the SVM on the top two, offsets."""
    si, stx = summaries(fingerprint, _loaded)
    sep = geometry.separability(si, stx)
    top = geometry.top_features(sep, k=sep.shape[0])
    top2 = [t["feature"] for t in top[:2]]
    svm = geometry.svm_top2(_loaded.image, _loaded.text, top2) if len(top2) == 2 else None
    return {
        "sep": sep,
        "sorted": np.sort(sep)[::-1],
        "order": [t["feature"] for t in top],
        "n_above_1": int(np.sum(sep > 1)),
        "top2": top2,
        "svm": svm,
        "offset_image": geometry.offset_features(si, k_offset),
        "offset_text": geometry.offset_features(stx, k_offset),
        "linear": geometry.linear_separability(_loaded.image, _loaded.text),
    }


@st.cache_data(show_spinner=False, max_entries=256)
def feature_hist(fingerprint: str, _loaded: data.Loaded, feature: int, bins: int):
    """Normalised image/text histograms of one feature and their KL."""
    return geometry.feature_kl(_loaded.image, _loaded.text, int(feature), bins=int(bins))


@st.cache_data(show_spinner=False, max_entries=16)
def scatter_points(fingerprint: str, _loaded: data.Loaded, features: tuple[int, int],
                   cap: int) -> dict:
    """Raw values of two features, each modality sampled to ``cap`` rows."""
    out = {}
    for name, x in (("image", _loaded.image), ("text", _loaded.text)):
        rows = geometry.sample_rows(x.shape[0], cap, seed=0)
        out[name] = {"rows": rows, "n_total": int(x.shape[0]),
                     "xy": np.asarray(np.asarray(x[rows])[:, list(features)], np.float64)}
    return out


@st.cache_data(show_spinner="measuring the shells…", max_entries=8)
def shell(fingerprint: str, _loaded: data.Loaded, bins: int = 60) -> dict:
    """Thin shell (Eq. 1-4), variance spectrum and ODD (Eq. 6), offset."""
    out = {}
    for name, s in zip(("image", "text"), summaries(fingerprint, _loaded)):
        odd = geometry.off_diagonal_dominance(s.cov)
        var = geometry.variance_spectrum(s)
        out[name] = {
            "shell": geometry.thin_shell(s),
            "norm_hist": geometry.norm_histograms(s, bins),
            "variance": var,
            "variance_hist": geometry.histogram(var, bins),
            "odd": odd,
            "odd_hist": geometry.histogram(odd[np.isfinite(odd)], bins),
            "mean_over_sigma": geometry.mean_over_sigma(s),
            "mean_norm": float(np.linalg.norm(s.mean)),
            "sigma_norm": float(np.linalg.norm(s.std)),
        }
    return out


@st.cache_data(show_spinner=False, max_entries=8)
def centered_first_features(fingerprint: str, _loaded: data.Loaded, k: int,
                            cap: int) -> dict:
    """v - m of the first ``k`` features per modality (Fig. 4 top), sampled."""
    out = {}
    for name, x, s in zip(("image", "text"), (_loaded.image, _loaded.text),
                          summaries(fingerprint, _loaded)):
        feats = list(range(min(k, x.shape[1])))
        rows = geometry.sample_rows(x.shape[0], cap, seed=0)
        out[name] = {"features": feats, "values": geometry.centered_columns(x, s, feats, rows),
                     "n_total": int(x.shape[0]), "n_shown": int(len(rows))}
    return out


@st.cache_data(show_spinner=False, max_entries=16)
def extremes(fingerprint: str, _loaded: data.Loaded, which: str, k: int) -> dict:
    """Rows with the largest/smallest raw or centred norm, per modality (Fig. 14)."""
    out = {}
    for name, s in zip(("image", "text"), summaries(fingerprint, _loaded)):
        norms = s.norms if which == "raw" else s.centered_norms
        out[name] = geometry.extreme_norms(norms, k)
    return out


@st.cache_data(show_spinner=False, max_entries=8)
def item_labels(fingerprint: str, _loaded: data.Loaded) -> dict:
    """Captions and image sources (for the extreme-norm tables)."""
    n_i, n_t = _loaded.image.shape[0], _loaded.text.shape[0]
    if _loaded.name == data.SYNTHETIC:
        return {"captions": [f"synthetic pair {k}" for k in range(n_t)],
                "sources": [f"synthetic image {k}" for k in range(n_i)]}
    ds = store.open_dataset(_loaded.name)
    caps = ds.texts["caption"].fillna("").astype(str).tolist()
    imgs = ds.images
    src = imgs["source"].fillna("").astype(str).tolist()
    src = [s or str(i) for s, i in zip(src, imgs["image_id"].astype(str))]
    return {"captions": caps, "sources": src}


def thumbnails(_loaded: data.Loaded, rows: list[int]) -> list[str | None]:
    """Thumbnail paths of image rows (None where absent; always for synthetic)."""
    if _loaded.name == data.SYNTHETIC:
        return [None] * len(rows)
    ds = store.open_dataset(_loaded.name)
    return [str(p) if (p := ds.thumb_path(r)) is not None else None for r in rows]


def extremes_table(items: list[dict], labels: list[str], label_name: str) -> pd.DataFrame:
    """A display table of extreme-norm rows (no computation: a join with labels)."""
    return pd.DataFrame({"rank": range(1, len(items) + 1),
                         "row": [it["row"] for it in items],
                         "norm": [it["norm"] for it in items],
                         label_name: [labels[it["row"]] for it in items]})
