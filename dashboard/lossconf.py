"""Cached computations for the "Alpha shift & loss" and "Conformity" pages.

Every function is a thin, cached call into clipgeom (``st.cache_data`` keyed
by the dataset fingerprint + parameters; the Loaded arrays travel as an
unhashed ``_loaded`` argument). Pages draw what these return.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from clipgeom import conformity, embed, loss, search, store, upload

from .data import Loaded

SEED = 0
DEFAULT_MAX_PAIRS = 5000


# ---------------------------------------------------------------- selection
def alpha_grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    """The alphas lo, lo + step, ..., hi (inclusive), rounded to avoid 0.30000000004."""
    if step <= 0 or hi < lo:
        return (round(float(lo), 10),)
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return tuple(float(round(lo + k * step, 10)) for k in range(n))


def has_pairs(loaded: Loaded) -> bool:
    return len(loaded.pair_image_rows) >= 2


def paired_sample(loaded: Loaded, max_pairs: int, seed: int = SEED):
    """(image rows, text rows, n_pairs_total) of the seeded pair sample, as report.py does."""
    n = len(loaded.pair_image_rows)
    pick = np.arange(n)
    if n > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(n, max_pairs, replace=False))
    vi = np.asarray(loaded.image[np.asarray(loaded.pair_image_rows)[pick]], dtype=np.float32)
    vt = np.asarray(loaded.text[np.asarray(loaded.pair_text_rows)[pick]], dtype=np.float32)
    return vi, vt, n


def scatter_sample(n: int, limit: int, seed: int = SEED) -> np.ndarray:
    """Row indices to draw: all of them up to ``limit``, else a seeded sample."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


# ---------------------------------------------------------------- loss page
@st.cache_data(show_spinner=False, max_entries=32)
def alpha_sweep(fingerprint: str, _loaded: Loaded, alphas: tuple, modality: str,
                temperature: float, max_pairs: int) -> loss.AlphaSweep:
    """loss.alpha_sweep on the seeded pair sample (Eq. 9, 14, 15; Fig. 6)."""
    vi, vt, _ = paired_sample(_loaded, max_pairs)
    bar = st.progress(0.0, text=f"α sweep ({modality}) on {len(vi):,} pairs…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"α sweep ({modality}): {done}/{total} values of α")

    sw = loss.alpha_sweep(vi, vt, np.asarray(alphas, float), modality, temperature,
                          progress=progress)
    bar.empty()
    return sw


@st.cache_data(show_spinner=False, max_entries=32)
def kl_sweep(fingerprint: str, _loaded: Loaded, alphas: tuple,
             modality: str) -> conformity.ConformityKLSweep:
    """conformity.conformity_kl_sweep on the full image and text sets (Fig. 11)."""
    return conformity.conformity_kl_sweep(_loaded.image, _loaded.text,
                                          np.asarray(alphas, float), modality=modality)


@st.cache_data(show_spinner=False, max_entries=16)
def logits(fingerprint: str, _loaded: Loaded, temperature: float,
           max_pairs: int) -> dict:
    """loss.logit_comparison (EuCLIP logits) on the seeded pair sample."""
    vi, vt, _ = paired_sample(_loaded, max_pairs)
    return loss.logit_comparison(vi, vt, temperature)


# ---------------------------------------------------------------- conformity page
@st.cache_data(show_spinner=False, max_entries=16)
def fits(fingerprint: str, _loaded: Loaded) -> dict:
    """{"image": ConformityFit, "text": ConformityFit} (Def. 1-2, Prop. 1; Fig. 9)."""
    return {"image": conformity.fit_conformity(_loaded.image),
            "text": conformity.fit_conformity(_loaded.text)}


@st.cache_data(show_spinner=False, max_entries=16)
def distributions(fingerprint: str, _loaded: Loaded, bins: int):
    """conformity.conformity_kl: both histograms on shared bins and KL (Fig. 10)."""
    return conformity.conformity_kl(_loaded.image, _loaded.text, bins=bins)


@st.cache_data(show_spinner=False, max_entries=32)
def ranking(fingerprint: str, _loaded: Loaded, modality: str, most: bool) -> np.ndarray:
    """Rows ordered by exact conformity, most (or least) conforming first."""
    fit = fits(fingerprint, _loaded)[modality]
    return conformity.conformity_ranking(fit.exact, most=most)


@st.cache_data(show_spinner=False, max_entries=16)
def tables(fingerprint: str, name: str):
    """(images, texts) DataFrames of a stored dataset; (None, None) for synthetic."""
    ds = store.open_dataset(name)
    return ds.images, ds.texts


@st.cache_resource(show_spinner=False, max_entries=8)   # read-only: no copy per rerun
def captions_by_row(fingerprint: str, name: str | None) -> tuple[list | None, dict | None]:
    """(caption per text row, first caption per image row) of a stored dataset;
    (None, None) for the in-memory generator."""
    if name is None:
        return None, None
    images, texts = tables(fingerprint, name)
    caps = texts["caption"].astype(str).tolist()
    first = {}
    for r, iid in enumerate(texts["image_id"]):
        if iid is not None and iid not in first:
            first[iid] = caps[r]
    by_image = {r: first.get(iid, "") for r, iid in enumerate(images["image_id"])}
    return caps, by_image


def thumb(name: str, row: int):
    """Thumbnail path of image row, or None."""
    return store.open_dataset(name).thumb_path(row)


@st.cache_data(show_spinner=False, max_entries=16)
def frequency(fingerprint: str, _loaded: Loaded, name: str) -> dict | None:
    """Spearman rho of image conformity vs the images' concept_frequency, or None."""
    images, _ = tables(fingerprint, name)
    if "concept_frequency" not in images.columns:
        return None
    freq = images["concept_frequency"].to_numpy(dtype=np.float64)
    exact = fits(fingerprint, _loaded)["image"].exact
    return {"frequency": freq, "conformity": exact,
            **conformity.frequency_correlation(exact, freq)}


def model_spec(name: str):
    """The dataset's open_clip ModelSpec; raises InputError if it records none."""
    ds = store.open_dataset(name)
    return embed.spec_from_manifest(ds.manifest.get("model"), ds.name)


@st.cache_resource(show_spinner="loading the dataset's CLIP model…")
def query_model(spec):
    """The model that embeds typed captions, held once per process.

    search.embed_query loads through search._model; holding the same object
    here keeps it alive across reruns.
    """
    return search._model(spec, None)


@st.cache_data(show_spinner=False, max_entries=64)
def caption_conformity(fingerprint: str, name: str, caption: str) -> float:
    """Conformity of a typed caption against the dataset's captions (Def. 1)."""
    ds = store.open_dataset(name)
    query_model(embed.spec_from_manifest(ds.manifest.get("model"), ds.name))
    vec = search.embed_query(ds, text=caption)
    return float(conformity.query_conformity(vec, ds.text_emb)[0])


@st.cache_data(show_spinner="embedding the image…", max_entries=32)
def image_conformity(fingerprint: str, name: str, filename: str, data: bytes) -> float:
    """Conformity of an uploaded image against the dataset's images (Def. 1)."""
    ds = store.open_dataset(name)
    query_model(embed.spec_from_manifest(ds.manifest.get("model"), ds.name))
    with upload.as_file(filename, data) as path:
        vec = search.embed_query(ds, image=str(path))
    return float(conformity.query_conformity(vec, ds.image_emb)[0])


@st.cache_data(show_spinner="comparing conformity distributions…", max_entries=16)
def compare_datasets(fp_a: str, _a: Loaded, fp_b: str, _b: Loaded, modality: str,
                     bins: int):
    """Conformity (each set against itself, Def. 1) of one modality in two
    datasets, on shared bins, with KL(a || b) (Sec. 7.1: real vs generated)."""
    x = (lambda d: d.image) if modality == "image" else (lambda d: d.text)
    return conformity.conformity_kl(x(_a), x(_b), bins=bins)
