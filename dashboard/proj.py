"""Cached computations for the "Projections & isotropy" page.

Every function is keyed by the dataset fingerprint plus its parameters (the
``_loaded`` argument is not hashed); the maths is in ``clipgeom.projection``,
``clipgeom.transforms`` and ``clipgeom.conformity``, this module only picks
rows and packs results as plain arrays / dicts for drawing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from clipgeom import conformity, projection, store, transforms
from clipgeom._chunks import row_norms

from . import data

# Paired analyses (transform lab) use a seeded sample of at most this many pairs.
MAX_LAB_PAIRS = 5000
METHOD_LABELS = {"none": "none (CLIP as is)", "center": "center", "whiten": "whiten (k)",
                 "procrustes": "Procrustes", "lstsq": "lstsq"}


def _paired(loaded: data.Loaded, max_pairs: int, seed: int = 0):
    """Row-paired (image, text) float32 arrays, a seeded sample of at most max_pairs."""
    ii, tt = loaded.pair_image_rows, loaded.pair_text_rows
    keep = projection.sample_rows(ii.shape[0], max_pairs, seed) if ii.shape[0] > 1 \
        else np.arange(ii.shape[0])
    return np.asarray(loaded.image[ii[keep]]), np.asarray(loaded.text[tt[keep]]), keep


@st.cache_data(show_spinner="computing the joint SVD projection…", max_entries=16)
def joint(fingerprint: str, _loaded: data.Loaded, center: bool, normalize: bool) -> dict:
    """Joint 2-D SVD projection of all image and text rows (isotropy paper Fig. 8)."""
    p = projection.joint_svd_projection(_loaded.image, _loaded.text, 2, center=center,
                                        normalize=normalize)
    return {"image": p.image_coords, "text": p.text_coords,
            "singular_values": p.singular_values, "ratio": p.explained_variance_ratio}


@st.cache_data(show_spinner="computing I1 / I2…", max_entries=16)
def isotropy(fingerprint: str, _loaded: data.Loaded) -> dict:
    """I1, I2 per modality (isotropy paper Eq. 1-2, Table 1)."""
    return {"image": projection.isotropy(_loaded.image), "text": projection.isotropy(_loaded.text)}


@st.cache_data(show_spinner="computing colours…", max_entries=16)
def colour_values(fingerprint: str, _loaded: data.Loaded, kind: str) -> dict:
    """Per-row values to colour by: exact conformity (Double-Ellipsoid Eq. 10) or norm."""
    if kind == "conformity":
        return {"image": conformity.exact_conformity(_loaded.image),
                "text": conformity.exact_conformity(_loaded.text)}
    return {"image": row_norms(_loaded.image), "text": row_norms(_loaded.text)}


@st.cache_data(show_spinner=False, max_entries=16)
def item_text(fingerprint: str, _loaded: data.Loaded) -> dict:
    """Hover text per row: image ids / labels and captions (stored datasets only)."""
    out = {"image_ids": None, "captions": None, "labels": None}
    if _loaded.name == data.SYNTHETIC:
        return out
    ds = store.open_dataset(_loaded.name)
    imgs, txts = ds.images, ds.texts
    if "image_id" in imgs.columns:
        out["image_ids"] = imgs["image_id"].astype(str).to_numpy()
    if "caption" in txts.columns:
        out["captions"] = txts["caption"].astype(str).to_numpy()
    if "label" in imgs.columns and imgs["label"].notna().any():
        out["labels"] = imgs["label"].astype(str).to_numpy()
    return out


def umap_cache_dir(loaded: data.Loaded) -> Path:
    if loaded.name == data.SYNTHETIC:
        d = store.home() / "cache" / "synthetic" / loaded.fingerprint
        d.mkdir(parents=True, exist_ok=True)
        return d
    return store.open_dataset(loaded.name).cache_dir


def umap_rows(loaded: data.Loaded, per_modality: int) -> dict:
    """The seeded rows of each modality the UMAP plot shows."""
    return {"image": projection.sample_rows(loaded.image.shape[0], per_modality, 0),
            "text": projection.sample_rows(loaded.text.shape[0], per_modality, 1)}


@st.cache_data(show_spinner=False, max_entries=8)
def umap(fingerprint: str, _loaded: data.Loaded, per_modality: int, _progress=None) -> dict:
    """Joint 2-D UMAP (cosine) of sampled image and text rows (isotropy paper Figs. 14-15),
    cached on disk by ``projection.umap_coords``."""
    rows = umap_rows(_loaded, per_modality)
    x = np.vstack([np.asarray(_loaded.image[rows["image"]], dtype=np.float32),
                   np.asarray(_loaded.text[rows["text"]], dtype=np.float32)])
    xy = projection.umap_coords(x, cache_dir=umap_cache_dir(_loaded), progress=_progress,
                                n_neighbors=min(15, x.shape[0] - 1))
    ni = rows["image"].shape[0]
    return {"image": xy[:ni], "text": xy[ni:], "image_rows": rows["image"],
            "text_rows": rows["text"]}


@st.cache_data(show_spinner="fitting the transform…", max_entries=32)
def alignment(fingerprint: str, _loaded: data.Loaded, method: str, k: int,
              train_fraction: float, temperature: float, max_pairs: int = MAX_LAB_PAIRS) -> dict:
    """``transforms.evaluate_alignment`` for one method (isotropy paper Sec. 4.2-4.3)."""
    img, txt, keep = _paired(_loaded, max_pairs)
    r = transforms.evaluate_alignment(img, txt, method, k=k if method == "whiten" else None,
                                      train_fraction=train_fraction, temperature=temperature)
    return {"method": method, "k": r.k, "train": r.train.__dict__, "test": r.test.__dict__,
            "test_index": r.test_index,
            "test_image_rows": _loaded.pair_image_rows[keep[r.test_index]], "image_test": r.image_test, "text_test": r.text_test,
            "image_raw": img[r.test_index], "text_raw": txt[r.test_index],
            "pos": r.positive_cosines, "rand": r.random_cosines}


def alignment_table(loaded: data.Loaded, selected: str, k: int, train_fraction: float,
                    temperature: float) -> pd.DataFrame:
    """Table 2: train/test loss and retrieval of every method (cached per method)."""
    rows = []
    for m in transforms.METHODS:
        r = alignment(loaded.fingerprint, loaded, m, k, train_fraction, temperature)
        rows.append({"method": METHOD_LABELS[m] + (f", k={r['k']}" if m == "whiten" else ""),
                     "selected": "◀" if m == selected else "",
                     "train loss": r["train"]["loss"], "test loss": r["test"]["loss"],
                     "train acc i→t": r["train"]["accuracy_i2t"],
                     "train acc t→i": r["train"]["accuracy_t2i"],
                     "test acc i→t": r["test"]["accuracy_i2t"],
                     "test acc t→i": r["test"]["accuracy_t2i"],
                     "test pairs": r["test"]["n"]})
    return pd.DataFrame(rows)


@st.cache_data(show_spinner=False, max_entries=16)
def joint_of(fingerprint: str, tag: str, _image: np.ndarray, _text: np.ndarray) -> dict:
    """Joint uncentred SVD projection of unit rows (for the before/after views, Figs. 12-13)."""
    p = projection.joint_svd_projection(_image, _text, 2, normalize=True)
    return {"image": p.image_coords, "text": p.text_coords}


@st.cache_data(show_spinner="recovering intra-modal similarities…", max_entries=16)
def intra(fingerprint: str, _loaded: data.Loaded, n_pairs: int, k: int, seed: int) -> dict:
    """Intra-modal similarity recovery on a sample (intra-modal supplement Eq. 4-10)."""
    img, txt, keep = _paired(_loaded, n_pairs, seed)
    out = projection.intra_recovery_experiment(img, txt, n_pairs=n_pairs, k=k, seed=seed)
    out["image_rows"] = _loaded.pair_image_rows[keep[out["rows"]]]
    return out
