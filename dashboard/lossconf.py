"""Cached computations for the "Alpha shift & loss" and "Conformity" pages.

Every function is a thin, cached call into clipgeom (``st.cache_data`` keyed
by the dataset fingerprint + parameters; the Loaded arrays travel as an
unhashed ``_loaded`` argument). Pages draw what these return; nothing here
draws (no st.* element, no progress bar): a page shows progress between
calls, e.g. between the batches of :func:`sweep_batches`.

Speed of the alpha page:
- the dataset's stored report (``clipgeom.report.stored_report``; the demo
  ships its own) already holds the alpha sweeps of image, text and both at
  the model's own tau on the report's default grid: :func:`stored_results`
  reads them (never computes a report);
- any other sweep is computed in batches, a coarse subset of the grid first
  (:func:`sweep_batches`), each batch cached, so a page can draw the coarse
  curve at once and refine it;
- the loss kernel runs under its thread policy (``clipgeom.threads.policy``,
  one thread): on a 2-core machine busy with other work, two OpenMP threads
  made the kernel 5-20x slower (3,000 pairs, 16 alphas: 4-5 s on two
  threads, 0.5-1 s on one; bench/threads_under_load.py).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from clipgeom import (conformity, embed, geometry, loss, report, search, store, stored_summaries,
                      threads, upload)
from clipgeom._chunks import column_mean, matvec, row_norms

from . import data
from .data import SYNTHETIC, Loaded

SEED = 0
DEFAULT_MAX_PAIRS = report.DEFAULT_MAX_PAIRS
DEFAULT_BINS = 50
MAX_ALPHAS = 201            # more values of alpha than this: ask for a larger step
COARSE_VALUES = 5           # the first pass of a progressive sweep
REFINE_BATCH = 8            # values of alpha per later pass
MIN_CONFORMITY_ROWS = 3     # conformity.fit_conformity needs 3 rows per modality


# ---------------------------------------------------------------- selection
def alpha_grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    """The alphas lo, lo + step, ..., hi (inclusive), rounded to avoid 0.30000000004."""
    if step <= 0 or hi < lo:
        return (round(float(lo), 10),)
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return tuple(float(round(lo + k * step, 10)) for k in range(n))


def default_bins(n_items: int, default: int = DEFAULT_BINS) -> int:
    """Histogram bins for ``n_items`` values: the default, never more bins than items."""
    return int(max(1, min(default, n_items)))


def has_pairs(loaded: Loaded) -> bool:
    return len(loaded.pair_image_rows) >= 2


def pairs_used(loaded: Loaded, max_pairs: int) -> int:
    """How many pairs the loss uses: all of them up to ``max_pairs``."""
    return int(min(int(max_pairs), len(loaded.pair_image_rows)))


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


def min_on_edge(alpha, values) -> bool:
    """True when the smallest finite value sits on the first or last alpha of the
    grid: the true minimum may lie outside the range (the page says so)."""
    v = np.asarray(values, np.float64)
    if v.size < 2 or not np.any(np.isfinite(v)):
        return False
    k = int(np.nanargmin(v))
    return k in (0, v.size - 1)


# ---------------------------------------------------------------- stored report
@st.cache_data(show_spinner=False, max_entries=16)
def _read_report(path: str, mtime_ns: int) -> dict | None:
    """The parts of a stored report this page uses (re-read when the file changes)."""
    try:
        with open(path, encoding="utf-8") as fh:
            rep = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(rep, dict):
        return None
    return {k: rep.get(k) for k in ("temperature", "loss", "logits", "alpha_sweep",
                                    "conformity_kl", "image", "text")}


def stored_results(loaded: Loaded, temperature: float, max_pairs: int) -> dict | None:
    """The dataset's stored report when one exists for these parameters, else None.

    Never computes a report. The report runs the loss on a seeded sample of
    ``report.DEFAULT_MAX_PAIRS`` pairs (seed 0, as :func:`paired_sample`), so
    it matches when both use the same number of pairs and the same tau.
    """
    if loaded.name == SYNTHETIC or not has_pairs(loaded):
        return None
    n_used = pairs_used(loaded, max_pairs)
    if pairs_used(loaded, report.DEFAULT_MAX_PAIRS) != n_used:
        return None
    try:
        ds = store.open_dataset(loaded.name)
        if ds.fingerprint != loaded.fingerprint:
            return None
        # report._cache_name is report.stored_report's own file naming.
        name = report._cache_name(ds, {"temperature": float(temperature),
                                       "max_pairs": int(report.DEFAULT_MAX_PAIRS),
                                       "seed": SEED})
        folders = [ds.shipped_dir("cache"), ds.cache_dir]
    except Exception:                       # no readable cache: compute instead
        return None
    for folder in folders:
        path = folder / name if folder is not None else None
        if path is None or not path.is_file():
            continue
        rep = _read_report(str(path), path.stat().st_mtime_ns)
        try:
            ok = (rep is not None and abs(float(rep["temperature"]) - float(temperature)) < 1e-12
                  and int(rep["loss"]["n_pairs_used"]) == n_used)
        except (KeyError, TypeError, ValueError):
            ok = False
        if ok:
            return rep
    return None


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def sweep_from_report(rep: dict | None, modality: str, alphas) -> loss.AlphaSweep | None:
    """The report's alpha sweep of ``modality`` when it covers exactly ``alphas``.

    The report does not keep text->image accuracy per alpha: it is NaN here.
    """
    try:
        d = rep["alpha_sweep"][modality]
        a = _floats(d["alpha"])
        want = np.asarray(alphas, np.float64)
        if a.shape != want.shape or not np.allclose(a, want, atol=1e-9):
            return None
        return loss.AlphaSweep(
            modality=modality, alpha=want, total=_floats(d["total"]),
            alignment=_floats(d["alignment"]), uniformity=_floats(d["uniformity"]),
            loss_correct=_floats(d["loss_correct"]),
            loss_misclassified=_floats(d["loss_misclassified"]),
            accuracy_i2t=_floats(d["accuracy_i2t"]),
            accuracy_t2i=np.full(want.shape, np.nan),
            temperature=float(rep["temperature"]))
    except (KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------- loss page
def sweep_batches(alphas, coarse: int = COARSE_VALUES,
                  batch: int = REFINE_BATCH) -> list[tuple[float, ...]]:
    """The grid split into passes: first a coarse subset spread over the whole
    range (both ends included), then the remaining values in batches. Every
    value appears exactly once; a short grid is one pass."""
    a = [float(x) for x in alphas]
    if len(a) <= coarse + 1:
        return [tuple(a)]
    first = sorted(set(np.round(np.linspace(0, len(a) - 1, coarse)).astype(int).tolist()))
    rest = [k for k in range(len(a)) if k not in first]
    out = [tuple(a[k] for k in first)]
    for s in range(0, len(rest), batch):
        out.append(tuple(a[k] for k in rest[s:s + batch]))
    return out


@st.cache_data(show_spinner=False, max_entries=256)
def alpha_sweep_part(fingerprint: str, _loaded: Loaded, alphas: tuple, modality: str,
                     temperature: float, n_pairs: int) -> loss.AlphaSweep:
    """loss.alpha_sweep of some alphas on the seeded sample of ``n_pairs`` pairs
    (Eq. 9, 14, 15; Fig. 6). Computes only: the page draws progress."""
    vi, vt, _ = paired_sample(_loaded, n_pairs)
    with threads.policy("alpha_sweep"):
        return loss.alpha_sweep(vi, vt, np.asarray(alphas, float), modality, temperature)


def merge(parts) -> loss.AlphaSweep:
    """The passes of a progressive sweep as one sweep, ordered by alpha."""
    return loss.merge_alpha_sweeps(parts)


def alpha_sweep(fingerprint: str, _loaded: Loaded, alphas: tuple, modality: str,
                temperature: float, max_pairs: int) -> loss.AlphaSweep:
    """The whole sweep at once (stored report, else every pass of :func:`sweep_batches`)."""
    sw = sweep_from_report(stored_results(_loaded, temperature, max_pairs), modality, alphas)
    if sw is not None:
        return sw
    n = pairs_used(_loaded, max_pairs)
    return merge([alpha_sweep_part(fingerprint, _loaded, b, modality, float(temperature), n)
                  for b in sweep_batches(alphas)])


def kl_from_report(rep: dict | None, alphas, modality: str,
                   bins: int) -> conformity.ConformityKLSweep | None:
    """The report's conformity KL sweep (Fig. 11) when it is the one asked for:
    the same alphas, shifted modality and bins. The report computes it with
    ``moments.shifted_conformity_kl`` on every row, as
    ``conformity.conformity_kl_sweep`` does."""
    try:
        d = rep["conformity_kl"]
        a = _floats(d["alpha"])
        want = np.asarray(alphas, np.float64)
        if (d["modality"] != modality or int(d["bins"]) != int(bins)
                or a.shape != want.shape or not np.allclose(a, want, atol=1e-9)):
            return None
        return conformity.ConformityKLSweep(alpha=want, kl=_floats(d["kl"]),
                                            modality=modality, bins=int(bins))
    except (KeyError, TypeError, ValueError):
        return None


def kl_sweep(fingerprint: str, _loaded: Loaded, alphas: tuple, modality: str,
             bins: int = DEFAULT_BINS) -> conformity.ConformityKLSweep:
    """The conformity KL sweep on the full image and text sets (Fig. 11): read
    from the dataset's stored report (any of its tau and pair counts: the
    sweep depends on neither) when it holds this one, else computed."""
    sw = kl_from_report(data.peek_report(_loaded), alphas, modality, bins)
    if sw is not None:
        return sw
    return _kl_sweep(fingerprint, _loaded, tuple(alphas), modality, int(bins))


@st.cache_data(show_spinner=False, max_entries=32)
def _kl_sweep(fingerprint: str, _loaded: Loaded, alphas: tuple, modality: str,
              bins: int) -> conformity.ConformityKLSweep:
    """conformity.conformity_kl_sweep on the full image and text sets (Fig. 11)."""
    with threads.policy("exact_conformity"):
        return conformity.conformity_kl_sweep(_loaded.image, _loaded.text,
                                              np.asarray(alphas, float), modality=modality,
                                              bins=int(bins))


LOGIT_FIELDS = ("total", "alignment", "uniformity", "accuracy_i2t", "accuracy_t2i")


@st.cache_data(show_spinner=False, max_entries=16)
def _logits(fingerprint: str, _loaded: Loaded, temperature: float, n_pairs: int) -> dict:
    vi, vt, _ = paired_sample(_loaded, n_pairs)
    with threads.policy("loss"):
        res = loss.logit_comparison(vi, vt, temperature)
    return {k: {f: float(getattr(r, f)) for f in LOGIT_FIELDS} for k, r in res.items()}


def logits(fingerprint: str, _loaded: Loaded, temperature: float, max_pairs: int) -> dict:
    """{logit kind: {total, alignment, uniformity, accuracy_i2t, accuracy_t2i}}
    (EuCLIP logits, loss.logit_comparison) on the seeded pair sample; read from
    the stored report when it has them."""
    rep = stored_results(_loaded, temperature, max_pairs)
    try:
        got = {k: {f: float(v[f]) if v[f] is not None else float("nan")
                   for f in LOGIT_FIELDS} for k, v in rep["logits"].items()}
        if set(got) == set(loss.LOGIT_KINDS):
            return got
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return _logits(fingerprint, _loaded, float(temperature), pairs_used(_loaded, max_pairs))


# ---------------------------------------------------------------- conformity page
def conformity_note(loaded: Loaded) -> str | None:
    """Why conformity cannot be fitted on this dataset (too few rows), or None."""
    n = min(loaded.image.shape[0], loaded.text.shape[0])
    if n < MIN_CONFORMITY_ROWS:
        return (f"Conformity fits need at least {MIN_CONFORMITY_ROWS} images and "
                f"{MIN_CONFORMITY_ROWS} captions; this dataset has "
                f"{loaded.image.shape[0]} and {loaded.text.shape[0]}.")
    return None


# ConformityFit's numbers the report keeps per modality (report[m]["conformity"]).
FIT_KEYS = ("a", "b", "pearson", "a_paper", "b_paper", "theory_a", "theory_a_paper", "mean")


def fits(fingerprint: str, _loaded: Loaded) -> dict:
    """{"image": ConformityFit, "text": ConformityFit} (Def. 1-2, Prop. 1; Fig. 9).

    With the dataset's stored report, its all-row fit (``FIT_KEYS``, computed
    by ``conformity.fit_from_moments`` on every row) is read and only the
    per-row values are computed; else ``conformity.fit_conformity``. Never
    draws (reads the report file, never computes one)."""
    rep = stored_results(_loaded, _loaded.default_temperature, DEFAULT_MAX_PAIRS)
    try:
        scalars = tuple(tuple(float(rep[m]["conformity"][k]) for k in FIT_KEYS)
                        for m in ("image", "text"))
    except (KeyError, TypeError, ValueError):
        scalars = None
    return _fits(fingerprint, _loaded, scalars)


@st.cache_data(show_spinner=False, max_entries=16)
def _fits(fingerprint: str, _loaded: Loaded, scalars: tuple | None) -> dict:
    """:func:`fits`: per-row exact conformity (Def. 1) and cos(m, v) with m the
    raw mean, kept beside the stored report (``clipgeom.stored_summaries``),
    else ``exact_conformity``'s two float32 passes and two more; the estimate
    a·cos(m, v) + b with the report's all-row ``scalars``; at 1,000,000 pairs
    the float64 moments of ``fit_conformity`` took 14 s."""
    ds = data.stored_version(_loaded) if scalars is not None else None
    kept = stored_summaries.load_rows(ds) if ds is not None else None
    with threads.policy("exact_conformity"):
        if scalars is None:
            return {"image": conformity.fit_conformity(_loaded.image),
                    "text": conformity.fit_conformity(_loaded.text)}
        out = {}
        for (mod, x), values in zip((("image", _loaded.image), ("text", _loaded.text)),
                                    scalars):
            f = dict(zip(FIT_KEYS, values))
            if kept is not None:          # the report's own per-row values (float64)
                exact, cos = kept[mod]["conformity"], kept[mod]["cos_mean"]
            else:
                exact = conformity.exact_conformity(x)
                mean = column_mean(x)
                cos = matvec(x, mean) / row_norms(x) / np.linalg.norm(mean)
            out[mod] = conformity.ConformityFit(
                exact=exact, cos_mean=cos, estimated=f["a"] * cos + f["b"], a=f["a"],
                b=f["b"], pearson=f["pearson"], a_paper=f["a_paper"], b_paper=f["b_paper"],
                theory_a=f["theory_a"], theory_a_paper=f["theory_a_paper"],
                mean_exact=f["mean"])
        return out


@st.cache_data(show_spinner=False, max_entries=16)
def distributions(fingerprint: str, _loaded: Loaded, bins: int):
    """Both conformity histograms on shared bins and their KL (Fig. 10), as
    ``conformity.conformity_kl`` (``geometry.histogram_kl`` of the exact
    conformity of each set), from the exact conformity :func:`fits` already
    holds rather than two more passes over every row."""
    f = fits(fingerprint, _loaded)
    return geometry.histogram_kl(f["image"].exact, f["text"].exact, bins=bins)


@st.cache_data(show_spinner=False, max_entries=32)
def ranking(fingerprint: str, _loaded: Loaded, modality: str, most: bool) -> np.ndarray:
    """Rows ordered by exact conformity, most (or least) conforming first."""
    fit = fits(fingerprint, _loaded)[modality]
    return conformity.conformity_ranking(fit.exact, most=most)


def tables(fingerprint: str, name: str):
    """(images, texts) DataFrames of a stored dataset.

    The store reads a version's tables once per process and hands every
    opener a shallow copy (``clipgeom.store.dataset``'s shared tables: a
    caller changing its frame never changes another's), so this is not under
    ``st.cache_data``, whose every hit unpickled a fresh copy of both tables
    (at 1,000,000 rows, seconds per page)."""
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
    # the first caption (in text-row order) of each image id, looked up per
    # image row (vectorised: a dict built row by row took 2.5 s per million)
    first = pd.Series(caps, index=texts["image_id"].to_numpy(), dtype=object)
    first = first[first.index.notna() & ~first.index.duplicated(keep="first")]
    by_image = dict(enumerate(images["image_id"].map(first).fillna("").tolist()))
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
    n_known = int(np.sum(np.isfinite(freq) & np.isfinite(exact)))
    if n_known < 3:                     # Spearman needs 3 items: a note, not an error
        return {"frequency": freq, "conformity": exact, "n": n_known, "rho": None,
                "note": f"only {n_known} image(s) have a known concept frequency; the "
                        "rank correlation needs at least 3."}
    return {"frequency": freq, "conformity": exact, "note": None,
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


@st.cache_data(show_spinner=False, max_entries=16)
def exact_rows(fingerprint: str, _loaded: Loaded, modality: str) -> np.ndarray:
    """Exact conformity (Def. 1) of every row of one modality, float64: the
    per-row values kept beside the dataset's stored report
    (``clipgeom.stored_summaries.load_rows``, what :func:`fits` reads too)
    when this dataset version has them, else ``conformity.exact_conformity``."""
    ds = data.stored_version(_loaded)
    kept = stored_summaries.load_rows(ds) if ds is not None else None
    if kept is not None:
        return kept[modality]["conformity"]
    with threads.policy("exact_conformity"):
        return conformity.exact_conformity(_loaded.image if modality == "image"
                                           else _loaded.text)


@st.cache_data(show_spinner="comparing conformity distributions…", max_entries=16)
def compare_datasets(fp_a: str, _a: Loaded, fp_b: str, _b: Loaded, modality: str,
                     bins: int):
    """Conformity (each set against itself, Def. 1) of one modality in two
    datasets, on shared bins, with KL(a || b) (Sec. 7.1: real vs generated):
    ``conformity.conformity_kl``'s histograms of :func:`exact_rows` (the
    stored report's per-row values where kept: at 1,000,000 rows the two
    passes over the array took 2 s)."""
    return geometry.histogram_kl(exact_rows(fp_a, _a, modality),
                                 exact_rows(fp_b, _b, modality), bins=bins)
