"""Cached clipgeom computations for the Separability and Thin-shell pages.

Every function is keyed by the dataset fingerprint (the ``_loaded`` argument
is not hashed); the numbers all come from :mod:`clipgeom.geometry`.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import streamlit as st

from clipgeom import geometry, store, stored_summaries, threads
from clipgeom._chunks import column_mean, row_chunks

from . import data

# Rows per float64 block of the per-feature moments (8,192 x 512 x 8 B = 32 MiB).
MOMENT_ROWS = 8192


@st.cache_data(show_spinner="summarising both modalities…", max_entries=8)
def summaries(fingerprint: str, _loaded: data.Loaded):
    """(image, text) ModalitySummary: the ones kept beside the dataset's stored
    report (``clipgeom.stored_summaries``: the report's passes computed them),
    else ``geometry.summarize`` (under the "summary" thread policy), kept
    there for the next process."""
    ds = data.stored_version(_loaded)
    kept = stored_summaries.load(ds) if ds is not None else None
    if kept is not None:
        return kept
    with threads.policy("summary"):
        out = (geometry.summarize(_loaded.image, "image embeddings"),
               geometry.summarize(_loaded.text, "text embeddings"))
    if ds is not None:
        stored_summaries.save(ds, *out)
    return out


def separability(loaded: data.Loaded) -> dict:
    """Sep(l) (Eq. 5), the features by Sep, the SVM on the top two (Fig. 2) and
    the all-feature linear separability: the first stage of the dataset's
    report (``report["separability"]``, computed on every row by
    ``geometry.summarize`` / ``separability`` / ``svm_top2`` /
    ``linear_separability`` with seed 0), read rather than recomputed (23 s at
    1,000,000 pairs). Not cached: ``data.shared_report`` is a memo, and may draw
    a progress bar the one time it computes the report."""
    sec = data.shared_report(loaded)["separability"]
    # JSON has no inf: the report writes null for Sep = inf (a feature constant
    # in both modalities at different values); NaN cannot occur (Eq. 5's
    # 0 / 0 is defined as 0).
    sep = np.array([data.report_number(v, np.inf) for v in sec["per_feature"]],
                   dtype=np.float64)
    top = geometry.top_features(sep, k=sep.shape[0])
    order = [t["feature"] for t in top]
    svm = None
    s2 = sec.get("svm_top2") or {}
    if len(order) >= 2 and s2.get("accuracy") is not None:
        svm = geometry.LinearBoundary(
            features=[int(f) for f in s2["features"]], accuracy=float(s2["accuracy"]),
            weights=np.asarray(s2["weights"], dtype=np.float64), bias=float(s2["bias"]),
            n_used=int(s2["n_used"]))
    return {
        "sep": sep,
        "sorted": np.sort(sep)[::-1],
        "order": order,
        "n_above_1": int(sec["n_above_1"]),
        "top2": list(svm.features) if svm is not None else order[:2],
        "svm": svm,
        "linear": data.report_number(sec.get("linear_accuracy")),
    }


@st.cache_data(show_spinner="per-feature means and spreads…", max_entries=8)
def feature_moments(fingerprint: str, _loaded: data.Loaded) -> dict:
    """{modality: (mean, std)} per feature, float64, population std (as
    ``geometry.summarize``): one chunked pass each, without the d x d
    covariance the Separability page does not need."""
    out = {}
    for name, x in (("image", _loaded.image), ("text", _loaded.text)):
        mean = column_mean(x, MOMENT_ROWS)
        sq = np.zeros(x.shape[1], dtype=np.float64)
        for sl in row_chunks(x.shape[0], MOMENT_ROWS):
            block = np.asarray(x[sl], dtype=np.float64)
            block -= mean
            sq += np.einsum("ij,ij->j", block, block)
        out[name] = (mean, np.sqrt(np.clip(sq / x.shape[0], 0.0, None)))
    return out


def bins_range(n_items: int, *, lo: int = 10, hi: int = 200, default: int = 50,
               step: int = 10) -> tuple[int, int, int, int]:
    """(min, max, default, step) of a histogram-bins slider for ``n_items`` values:
    never more bins than items (a 20-pair dataset gets at most 20 bins)."""
    top = int(max(2, min(hi, n_items)))
    bottom = int(min(lo, max(1, top // 2)))
    st_ = int(step if (top - bottom) >= 2 * step and (top - bottom) % step == 0 else 1)
    return bottom, top, int(min(max(default, bottom), top)), st_


def clamp_state(key: str, lo, hi) -> None:
    """Keep a slider's remembered value inside its current range (the range
    follows the dataset's size, so another dataset's choice may fall outside)."""
    v = st.session_state.get(key)
    if isinstance(v, (int, float)) and not lo <= v <= hi:
        st.session_state[key] = min(max(v, lo), hi)


@st.cache_data(show_spinner=False, max_entries=32)
def offsets(fingerprint: str, _loaded: data.Loaded, modality: str, k: int) -> list[dict]:
    """The ``k`` features with the largest |mean| / std of one modality (Fig. 3):
    ``geometry.offset_features`` on :func:`feature_moments`."""
    mean, std = feature_moments(fingerprint, _loaded)[modality]
    return geometry.offset_features(SimpleNamespace(mean=mean, std=std), int(k))


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
    """Thin shell (Eq. 1-4), variance spectrum and ODD (Eq. 6), offset.

    Never more bins than values: the norm histograms have one value per row,
    the variance and ODD histograms one per feature (``feature_bins``).
    """
    out = {}
    for name, s in zip(("image", "text"), summaries(fingerprint, _loaded)):
        odd = geometry.off_diagonal_dominance(s.cov)
        var = geometry.variance_spectrum(s)
        finite_odd = odd[np.isfinite(odd)]
        fbins = int(max(1, min(bins, var.size)))
        out[name] = {
            "shell": geometry.thin_shell(s),
            "norm_hist": geometry.norm_histograms(s, int(max(1, min(bins, s.n)))),
            "variance": var,
            "variance_hist": geometry.histogram(var, fbins),
            "feature_bins": fbins,
            "odd": odd,
            "odd_hist": geometry.histogram(finite_odd, int(max(1, min(fbins,
                                                                    finite_odd.size)))),
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


@st.cache_data(show_spinner=False, max_entries=16)
def caption_extremes(fingerprint: str, _loaded: data.Loaded, which: str, k: int) -> dict:
    """Distinct captions with the largest / smallest raw or centred norm (Fig. 14).

    Many rows may share one caption (the demo world repeats "a shape"); they
    have the same embedding, so ranking rows would fill a list with copies.
    Captions are ranked by their most extreme row; returns {"largest": df,
    "smallest": df}, columns rank, row (the most extreme row), norm, caption,
    rows (how many rows carry that caption).
    """
    s = summaries(fingerprint, _loaded)[1]
    norms = s.norms if which == "raw" else s.centered_norms
    captions = item_labels(fingerprint, _loaded)["captions"]
    return distinct_extremes(norms, captions, k)


def distinct_extremes(norms, labels: list[str], k: int) -> dict[str, pd.DataFrame]:
    """The ``k`` distinct labels whose most extreme row has the largest (smallest)
    norm, with that row, its norm and how many rows share the label. Ties keep
    row order."""
    v = np.asarray(norms, dtype=np.float64).ravel()
    df = pd.DataFrame({"row": np.arange(v.size), "norm": v,
                       "caption": pd.Series(labels, dtype=object).astype(str).to_numpy()})
    counts = df["caption"].value_counts()
    out = {}
    for end, ascending in (("largest", False), ("smallest", True)):
        best = (df.sort_values(["norm", "row"], ascending=[ascending, True], kind="stable")
                  .drop_duplicates("caption", keep="first").head(int(max(k, 0))))
        out[end] = pd.DataFrame({"rank": np.arange(1, len(best) + 1),
                                 "row": best["row"].to_numpy(),
                                 "norm": best["norm"].to_numpy(),
                                 "caption": best["caption"].to_numpy(),
                                 "rows": counts.loc[best["caption"]].to_numpy()})
    return out


def extremes_table(items: list[dict], labels: list[str], label_name: str) -> pd.DataFrame:
    """A display table of extreme-norm rows (no computation: a join with labels)."""
    return pd.DataFrame({"rank": range(1, len(items) + 1),
                         "row": [it["row"] for it in items],
                         "norm": [it["norm"] for it in items],
                         label_name: [labels[it["row"]] for it in items]})
