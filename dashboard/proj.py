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

from clipgeom import conformity, projection, store, threads, transforms, validate
from clipgeom._chunks import row_chunks, row_norms
from clipgeom.errors import DatasetError, InputError

from . import data

# Paired analyses (transform lab) use a seeded sample of at most this many pairs.
MAX_LAB_PAIRS = 5000
# The page's kernels (the joint SVD, the transform lab's fits and CLIP losses,
# the intra-modal recovery) are many short BLAS / torch operations: they run
# under ``clipgeom.threads``' "projection_lab" policy (one thread). With the
# libraries' two threads on this 2-core machine while another process was
# busy, the five transform-lab fits on 5,000 pairs took 43 s; on one thread
# 3.7 s, with bit-identical numbers (issue 12; tests/test_page_speed.py checks
# the numbers against clipgeom.transforms called directly).
LAB_KERNEL = "projection_lab"
METHOD_LABELS = {"none": "none (CLIP as is)", "center": "center", "whiten": "whiten (k)",
                 "procrustes": "Procrustes", "lstsq": "lstsq"}


def _paired(loaded: data.Loaded, max_pairs: int, seed: int = 0):
    """Row-paired (image, text) float32 arrays, a seeded sample of at most max_pairs."""
    ii, tt = loaded.pair_image_rows, loaded.pair_text_rows
    keep = projection.sample_rows(ii.shape[0], max_pairs, seed) if ii.shape[0] > 1 \
        else np.arange(ii.shape[0])
    return np.asarray(loaded.image[ii[keep]]), np.asarray(loaded.text[tt[keep]]), keep


# The joint SVD is fitted on at most this many stacked rows (a seeded sample
# of the same fraction of each modality; every row below it). At 1,000,000
# pairs the fit on all rows (a 2,000,000 x 512 float64 scatter) took a minute.
JOINT_FIT_ROWS = 50_000


def joint_fit_rows(n_img: int, n_txt: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each modality the joint SVD is fitted on: all rows up to
    JOINT_FIT_ROWS stacked, else a seeded sample of the same fraction of each
    (so the sample mixes the modalities as the data does)."""
    f = min(1.0, JOINT_FIT_ROWS / (n_img + n_txt))
    return (projection.sample_rows(n_img, max(2, round(n_img * f)), 0),
            projection.sample_rows(n_txt, max(2, round(n_txt * f)), 1))


@st.cache_data(show_spinner="computing the joint SVD projection…", max_entries=16)
def joint(fingerprint: str, _loaded: data.Loaded, center: bool, normalize: bool) -> dict:
    """Joint 2-D SVD projection of all image and text rows (isotropy paper Fig. 8).

    The SVD (``projection.joint_svd_projection``) is fitted on
    :func:`joint_fit_rows`; every row is projected on its two components. A
    sample's singular values are scaled by sqrt(all rows / sampled rows), the
    estimate of the all-row values (the scatter is a sum over rows); the
    explained ratios need no scaling. ``n_fit`` / ``n_rows``: stacked rows
    fitted / in the data."""
    # checked as joint_svd_projection checks them (once per dataset open)
    x_i = validate.embeddings(_loaded.image, "image embeddings", min_rows=1,
                              allow_zero=not normalize)
    x_t = validate.embeddings(_loaded.text, "text embeddings", min_rows=1,
                              allow_zero=not normalize)
    ri, rt = joint_fit_rows(x_i.shape[0], x_t.shape[0])
    n_rows, n_fit = x_i.shape[0] + x_t.shape[0], ri.shape[0] + rt.shape[0]
    with threads.policy(LAB_KERNEL):
        if n_fit == n_rows:
            p = projection.joint_svd_projection(x_i, x_t, 2, center=center,
                                                normalize=normalize)
            return {"image": p.image_coords, "text": p.text_coords,
                    "singular_values": p.singular_values,
                    "ratio": p.explained_variance_ratio, "n_fit": n_fit, "n_rows": n_rows}
        p = projection.joint_svd_projection(np.asarray(x_i[ri]), np.asarray(x_t[rt]), 2,
                                            center=center, normalize=normalize)
        return {"image": _project(x_i, p.mean, p.components, normalize),
                "text": _project(x_t, p.mean, p.components, normalize),
                "singular_values": p.singular_values * np.sqrt(n_rows / n_fit),
                "ratio": p.explained_variance_ratio, "n_fit": n_fit, "n_rows": n_rows}


def _project(x: np.ndarray, mean: np.ndarray, comps: np.ndarray, normalize: bool
             ) -> np.ndarray:
    """(v / ||v|| - mean) @ comps.T (or v - mean when not normalising) of every
    row, in row blocks: ((v @ comps.T) / ||v||) - mean @ comps.T, the products
    in float32 (a plot's precision; a float64 copy of each block took 3 s per
    million rows)."""
    out = np.empty((x.shape[0], comps.shape[0]))
    c32 = np.asarray(comps.T, dtype=np.float32)
    for sl in row_chunks(x.shape[0]):
        b = np.asarray(x[sl], dtype=np.float32)
        out[sl] = b @ c32
        if normalize:
            out[sl] /= np.sqrt(np.einsum("ij,ij->i", b, b))[:, None]
    return out - mean @ comps.T


def isotropy(loaded: data.Loaded) -> dict:
    """I1, I2 per modality (isotropy paper Eq. 1-2, Table 1), as the dataset's
    report holds them (``report.build_report`` runs ``projection.isotropy`` on
    every row of each modality): read, never recomputed (at 1,000,000 rows
    recomputing took 58 s). Not cached: ``data.shared_report`` is a memo, and
    may draw a progress bar the one time it computes the report."""
    rep = data.shared_report(loaded)
    return {m: {k: data.report_number(rep[m]["isotropy"][k]) for k in ("I1", "I2")}
            for m in ("image", "text")}


# Columns of the images / texts tables that identify rows rather than describe them.
_ID_COLUMNS = {"image_id", "text_id", "source", "thumbnail", "caption"}
BUILTIN_COLOURS = {"modality": "modality", "conformity": "numeric", "norm": "numeric"}
MAX_CATEGORIES = 10          # one palette; more categories: the 9 most frequent + "other"


def _tables(loaded: data.Loaded):
    if loaded.name == data.SYNTHETIC:
        return None, None
    ds = store.open_dataset(loaded.name)
    return ds.images, ds.texts


def _metadata_columns(images: pd.DataFrame | None, texts: pd.DataFrame | None) -> dict:
    """{option label: (table, column)} for every metadata column of both tables.
    A column in both tables is offered twice, labelled with its table."""
    cols = {}
    for table, df in (("images", images), ("texts", texts)):
        if df is not None:
            for c in df.columns:
                if c not in _ID_COLUMNS:
                    cols.setdefault(str(c), []).append(table)
    out = {}
    for c, where in cols.items():
        for table in where:
            out[c if len(where) == 1 else f"{c} ({table})"] = (table, c)
    return out


@st.cache_data(show_spinner=False, max_entries=16)
def colour_options(fingerprint: str, _loaded: data.Loaded) -> dict:
    """{"Colour by" option: "modality" | "numeric" | "categorical"}: modality,
    conformity, norm, then every metadata column of the images and texts tables."""
    images, texts = _tables(_loaded)
    out = dict(BUILTIN_COLOURS)
    for label, (table, col) in _metadata_columns(images, texts).items():
        s = (images if table == "images" else texts)[col]
        numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        out.setdefault(label, "numeric" if numeric else "categorical")
    return out


def _text_to_image_rows(images: pd.DataFrame, texts: pd.DataFrame) -> np.ndarray:
    """Per text row, the row of the image it describes (-1: none)."""
    pos = {v: i for i, v in enumerate(images["image_id"].astype(str))}
    return np.array([pos.get(str(v), -1) if v is not None else -1
                     for v in texts["image_id"]], dtype=np.int64)


def _spread(values: np.ndarray, rows: np.ndarray, missing):
    """values[rows] with ``missing`` where rows == -1."""
    out = np.full(rows.shape[0], missing, dtype=values.dtype)
    ok = rows >= 0
    out[ok] = values[rows[ok]]
    return out


@st.cache_data(show_spinner="computing colours…", max_entries=16)
def colour_values(fingerprint: str, _loaded: data.Loaded, option: str) -> dict:
    """Per-row colour values of both modalities for one "Colour by" option.

    conformity: exact conformity (Double-Ellipsoid Eq. 10) per modality; norm:
    raw row norms; a metadata column: its value for rows of its own table, and
    for the other modality the value of the paired row (a caption takes its
    image's value; an image its first caption's). Returns {"kind": "numeric"
    | "categorical" | "modality", "title", "image", "text"}: numeric ->
    float arrays with NaN for no value; categorical -> int codes into
    ``categories`` (-1: no value), at most MAX_CATEGORIES (the most frequent,
    then "other").
    """
    if option == "modality":
        return {"kind": "modality", "title": "modality", "image": None, "text": None}
    if option == "conformity":
        with threads.policy("exact_conformity"):
            return {"kind": "numeric", "title": "conformity",
                    "image": conformity.exact_conformity(_loaded.image).astype(np.float64),
                    "text": conformity.exact_conformity(_loaded.text).astype(np.float64)}
    if option == "norm":
        return {"kind": "numeric", "title": "norm",
                "image": row_norms(_loaded.image).astype(np.float64),
                "text": row_norms(_loaded.text).astype(np.float64)}
    images, texts = _tables(_loaded)
    cols = _metadata_columns(images, texts)
    if option not in cols:
        raise InputError(f"this dataset has no column {option!r} to colour by; choose one of "
                         f"{', '.join(colour_options(fingerprint, _loaded))}.")
    table, col = cols[option]
    n_img, n_txt = _loaded.image.shape[0], _loaded.text.shape[0]
    if table == "images":
        own = images[col]
        img_rows = np.arange(n_img)
        txt_rows = _text_to_image_rows(images, texts)
    else:
        own = texts[col]
        txt_rows = np.arange(n_txt)
        img_rows = np.full(n_img, -1, dtype=np.int64)
        img_rows[_loaded.pair_image_rows] = _loaded.pair_text_rows
    numeric = pd.api.types.is_numeric_dtype(own) and not pd.api.types.is_bool_dtype(own)
    if numeric:
        v = pd.to_numeric(own, errors="coerce").to_numpy(dtype=np.float64)
        return {"kind": "numeric", "title": option,
                "image": _spread(v, img_rows, np.nan), "text": _spread(v, txt_rows, np.nan)}
    labels = own.map(lambda x: None if x is None or (isinstance(x, float) and np.isnan(x))
                     else str(x))
    counts = labels.value_counts(dropna=True)
    order = sorted(counts.index, key=lambda c: (-counts[c], c))
    if len(order) > MAX_CATEGORIES:
        keep = order[:MAX_CATEGORIES - 1]
        categories = keep + [f"other ({len(order) - len(keep)} values)"]
        code_of = {c: i for i, c in enumerate(keep)}
        other = len(keep)
    else:
        categories, code_of, other = order, {c: i for i, c in enumerate(order)}, -1
    codes = np.array([-1 if c is None else code_of.get(c, other) for c in labels],
                     dtype=np.int64)
    return {"kind": "categorical", "title": option, "categories": categories,
            "image": _spread(codes, img_rows, -1), "text": _spread(codes, txt_rows, -1)}


@st.cache_resource(show_spinner=False, max_entries=8)
def item_text(fingerprint: str, _loaded: data.Loaded) -> dict:
    """Hover text per row: image ids and captions (stored datasets only).

    One read-only pair of arrays per dataset version, shared by every call
    (``st.cache_resource``: ``st.cache_data`` unpickled a fresh copy of
    2,000,000 strings at each of the page's six calls, 1.8 s at 1,000,000
    pairs)."""
    out = {"image_ids": None, "captions": None}
    images, texts = _tables(_loaded)
    if images is not None and "image_id" in images.columns:
        out["image_ids"] = images["image_id"].astype(str).to_numpy(dtype=object)
    if texts is not None and "caption" in texts.columns:
        out["captions"] = texts["caption"].astype(str).to_numpy(dtype=object)
    for v in out.values():
        if v is not None:
            v.flags.writeable = False
    return out


# ---------------------------------------------------------------- UMAP


def umap_dirs(loaded: data.Loaded) -> tuple[Path | None, Path | None]:
    """(cache folder, shipped folder) for this dataset's UMAP results (either may be
    None: nothing shipped; no writable CLIPGEOM_HOME)."""
    if loaded.name == data.SYNTHETIC:
        d = store.home() / "cache" / "synthetic" / loaded.fingerprint
        d.mkdir(parents=True, exist_ok=True)
        return d, None
    ds = store.open_dataset(loaded.name)
    shipped = ds.shipped_dir("cache")
    try:
        cache = ds.cache_dir
    except DatasetError:
        if shipped is None:
            raise
        cache = None                 # no writable home: the shipped results still show
    return cache, shipped


def umap_input(loaded: data.Loaded, per_modality: int) -> tuple[np.ndarray, dict]:
    """The rows the UMAP plot shows and their stacked embeddings (``projection.umap_sample``)."""
    return projection.umap_sample(loaded.image, loaded.text, int(per_modality))


def _pack_umap(xy: np.ndarray, rows: dict) -> dict:
    ni = rows["image"].shape[0]
    return {"image": xy[:ni], "text": xy[ni:], "image_rows": rows["image"],
            "text_rows": rows["text"]}


class _NotStored(Exception):
    """Raised inside the cached lookup so that a miss is not cached."""


@st.cache_data(show_spinner=False, max_entries=8)
def _umap_stored(fingerprint: str, _loaded: data.Loaded, per_modality: int) -> dict:
    x, rows = umap_input(_loaded, per_modality)
    cache_dir, shipped = umap_dirs(_loaded)
    xy = projection.stored_umap(x, cache_dir=cache_dir, shipped_dir=shipped,
                                **projection.umap_params_for(x.shape[0]))
    if xy is None:
        raise _NotStored
    return _pack_umap(xy, rows)


def umap_stored(loaded: data.Loaded, per_modality: int) -> dict | None:
    """The joint UMAP (isotropy paper Figs. 14-15) when it is already stored (shipped
    with a bundled dataset or computed before), else None. Never computes and never
    draws; a hit is kept in memory (``st.cache_data``), a miss is not."""
    try:
        return _umap_stored(loaded.fingerprint, loaded, int(per_modality))
    except _NotStored:
        return None


def umap_compute(loaded: data.Loaded, per_modality: int, progress=None) -> dict:
    """Compute the joint 2-D UMAP (cosine) of sampled image and text rows
    (isotropy paper Figs. 14-15) and store it on disk (``projection.umap_coords``).

    NOT cached in memory on purpose: ``progress(fraction, text)`` may draw (a
    progress bar made by the caller), and a ``st.cache_data`` function must not
    draw into outer elements (replaying it raised CacheReplayClosureError on
    every later rerun). :func:`umap_stored` reads the result afterwards."""
    x, rows = umap_input(loaded, per_modality)
    cache_dir, shipped = umap_dirs(loaded)
    xy = projection.umap_coords(x, cache_dir=cache_dir, shipped_dir=shipped, progress=progress,
                                **projection.umap_params_for(x.shape[0]))
    return _pack_umap(xy, rows)


@st.cache_data(show_spinner="fitting the transform…", max_entries=32)
def alignment(fingerprint: str, _loaded: data.Loaded, method: str, k: int,
              train_fraction: float, temperature: float, max_pairs: int = MAX_LAB_PAIRS) -> dict:
    """``transforms.evaluate_alignment`` for one method (isotropy paper Sec. 4.2-4.3)."""
    img, txt, keep = _paired(_loaded, max_pairs)
    with threads.policy(LAB_KERNEL):
        r = transforms.evaluate_alignment(img, txt, method,
                                          k=k if method == "whiten" else None,
                                          train_fraction=train_fraction,
                                          temperature=temperature)
    return {"method": method, "k": r.k, "train": r.train.__dict__, "test": r.test.__dict__,
            "test_index": r.test_index,
            "test_image_rows": _loaded.pair_image_rows[keep[r.test_index]],
            "test_text_rows": _loaded.pair_text_rows[keep[r.test_index]],
            "image_test": r.image_test, "text_test": r.text_test,
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
    with threads.policy(LAB_KERNEL):
        p = projection.joint_svd_projection(_image, _text, 2, normalize=True)
    return {"image": p.image_coords, "text": p.text_coords}


def lab_sizes(loaded: data.Loaded, train_fraction: float) -> dict:
    """Pairs the transform lab uses, its train/test split sizes and the largest
    whitening k: whitening is fitted on the train rows of both modalities, each
    centred by its own mean, i.e. 2 n_train rows of rank <= 2 (n_train - 1), and
    lower when rows repeat: k_max is that numerical rank (``transforms.whitening_rank``)."""
    n = int(min(loaded.pair_image_rows.shape[0], MAX_LAB_PAIRS))
    d = int(loaded.image.shape[1])
    if n < 4:
        return {"pairs": n, "train": 0, "test": 0, "k_max": 0, "d": d}
    tr, te = transforms.split_indices(n, train_fraction)
    return {"pairs": n, "train": int(tr.shape[0]), "test": int(te.shape[0]), "d": d,
            "k_max": max(1, _whitening_rank(loaded.fingerprint, loaded, float(train_fraction)))}


@st.cache_data(show_spinner=False, max_entries=32)
def _whitening_rank(fingerprint: str, _loaded: data.Loaded, train_fraction: float) -> int:
    """The numerical rank whitening sees (repeated rows, such as identical
    captions, lower it below 2 (n_train - 1))."""
    img, txt, _ = _paired(_loaded, MAX_LAB_PAIRS)
    with threads.policy(LAB_KERNEL):
        return transforms.whitening_rank(img, txt, train_fraction)


@st.cache_data(show_spinner="recovering intra-modal similarities…", max_entries=16)
def intra(fingerprint: str, _loaded: data.Loaded, n_pairs: int, k: int, seed: int) -> dict:
    """Intra-modal similarity recovery on a sample, against the data's true
    image-image cosines, with its error-vs-rank curve (intra-modal supplement Eq. 4-10)."""
    img, txt, keep = _paired(_loaded, n_pairs, seed)
    with threads.policy(LAB_KERNEL):
        out = projection.intra_recovery_experiment(img, txt, n_pairs=n_pairs, k=k, seed=seed)
    out["image_rows"] = _loaded.pair_image_rows[keep[out["rows"]]]
    return out
