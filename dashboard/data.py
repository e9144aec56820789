"""Which dataset is open, loaded once per session and cached by fingerprint."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from clipgeom import report, store, synthetic

SYNTHETIC = "synthetic (generated two-shell data)"
SYNTHETIC_PARAMS = {"n": 2000, "dim": 64, "seed": 0}


@dataclass(frozen=True)
class Loaded:
    """Arrays and metadata of the dataset the user picked."""

    name: str
    image: np.ndarray
    text: np.ndarray
    pair_image_rows: np.ndarray
    pair_text_rows: np.ndarray
    fingerprint: str
    synthetic: bool
    model: str
    normalized_input: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    temperature: float | None = None      # the model's learned τ, when recorded

    @property
    def default_temperature(self) -> float:
        """The model's own τ where the dataset records it, else CLIP's 0.01."""
        return round(float(self.temperature), 4) if self.temperature else 0.01


def dataset_names() -> list[str]:
    """The bundled demo first (when present), other datasets, then the generator."""
    names = [r["name"] for r in store.list_datasets() if not r.get("error")]
    names.sort(key=lambda n: (n != "demo", n))
    return names + [SYNTHETIC]


@st.cache_resource(show_spinner=False)
def _open_synthetic(n: int, dim: int, seed: int) -> Loaded:
    data = synthetic.two_shells(n, dim, seed=seed)
    rows = np.arange(n)
    return Loaded(name=SYNTHETIC, image=data.image, text=data.text, pair_image_rows=rows,
                  pair_text_rows=rows, fingerprint=f"synthetic-{n}-{dim}-{seed}",
                  synthetic=True, model="none: synthetic Gaussian shells",
                  normalized_input={"image": False, "text": False},
                  source={"kind": "synthetic", **SYNTHETIC_PARAMS})


@st.cache_resource(show_spinner=False)
def _open_stored(name: str, fingerprint: str) -> Loaded:
    ds = store.open_dataset(name)
    ii, tt = ds.pairs()
    model = ds.model or {}
    desc = model.get("name") or model.get("checkpoint_sha256") or "unknown"
    if model.get("pretrained"):
        desc += f" ({model['pretrained']})"
    source = ds.manifest.get("source") or {}
    return Loaded(name=name, image=ds.image_emb, text=ds.text_emb, pair_image_rows=ii,
                  pair_text_rows=tt, fingerprint=ds.fingerprint,
                  synthetic=source.get("kind") == "synthetic", model=desc,
                  normalized_input=ds.normalized_input, source=source,
                  temperature=model.get("temperature"))


def open_dataset(name: str) -> Loaded:
    if name == SYNTHETIC:
        return _open_synthetic(**SYNTHETIC_PARAMS)
    # The fingerprint in the key makes a re-imported dataset load afresh.
    fp = store.open_dataset(name).fingerprint
    return _open_stored(name, fp)


@st.cache_resource(show_spinner=False)
def _report_memo() -> dict:
    """Reports already computed in this process, keyed by fingerprint + parameters
    (shared by sessions; reports are read-only dicts)."""
    return {}


_MEMO_SIZE = 16


def cached_report(fingerprint: str, _data: Loaded, temperature: float,
                  max_pairs: int) -> dict:
    """The report for one dataset and parameters, computed once per fingerprint.

    A stored dataset's report is read from (or written to) its cache on disk,
    so a restart does not recompute it. Not under ``st.cache_data``: computing
    draws a progress bar, and a cached function must never draw.
    """
    key = (fingerprint, round(float(temperature), 6), int(max_pairs))
    memo = _report_memo()
    if key in memo:
        return memo[key]
    # Another temperature or pair count of the same data: only the paired
    # measures are recomputed (report.build_report's ``reuse``).
    reuse = next((r for k, r in memo.items() if k[0] == fingerprint), None)
    bar = st.progress(0.0, text="computing the geometry report…")
    stages = iter(range(1, 100))

    def progress(msg: str) -> None:
        bar.progress(min(next(stages) / 10, 1.0), text=f"computing: {msg}…")

    try:
        if _data.name == SYNTHETIC:          # in memory: nowhere to keep it on disk
            rep = report.build_report(_data.image, _data.text, _data.pair_image_rows,
                                      _data.pair_text_rows, dataset=_data.name,
                                      temperature=temperature, max_pairs=max_pairs,
                                      normalized_input=_data.normalized_input,
                                      progress=progress, reuse=reuse)
        else:                                # on disk, so a restart does not recompute
            rep = report.stored_report(store.open_dataset(_data.name),
                                       temperature=temperature, max_pairs=max_pairs,
                                       progress=progress, reuse=reuse)
    finally:
        bar.empty()
    while len(memo) >= _MEMO_SIZE:
        memo.pop(next(iter(memo)))
    memo[key] = rep
    return rep


# ------------------------------------------------------------------ one report, read by all
def _stored_report_path(ds, temperature: float, max_pairs: int):
    """The file ``report.stored_report`` keeps for these parameters, when it exists."""
    try:
        name = report._cache_name(ds, {"temperature": float(temperature),
                                       "max_pairs": int(max_pairs), "seed": 0})
        folders = [ds.shipped_dir("cache"), ds.cache_dir]
    except Exception:                     # no readable cache folder
        return None
    for folder in folders:
        if folder is not None and (folder / name).is_file():
            return folder / name
    return None


def stored_version(loaded: Loaded):
    """The stored dataset (``store.Dataset``) whose version ``loaded`` shows,
    else None (the in-memory generator, a dataset gone or replaced since)."""
    if loaded.name == SYNTHETIC:
        return None
    try:
        ds = store.open_dataset(loaded.name)
    except Exception:                        # the page reports it where it opens the data
        return None
    return ds if ds.fingerprint == loaded.fingerprint else None


def peek_report(loaded: Loaded) -> dict | None:
    """A report of this dataset version that already exists, else None (never
    computes): any report of this fingerprint in this process, else the stored
    report at the dataset's default parameters (the model's τ as Home and
    ``clipgeom report`` use it, or CLIP's 0.01; ``report.DEFAULT_MAX_PAIRS``),
    read from disk. Its sections that depend on neither τ nor the pair sample
    (separability, each modality's shell, conformity fit and isotropy, the
    gap) are the same in all of them."""
    memo = _report_memo()
    for key, rep in list(memo.items()):
        if key[0] == loaded.fingerprint:
            return rep
    ds = stored_version(loaded)
    if ds is None:
        return None
    for t in dict.fromkeys([loaded.default_temperature, report.default_temperature(ds), 0.01]):
        if _stored_report_path(ds, t, report.DEFAULT_MAX_PAIRS) is not None:
            return cached_report(loaded.fingerprint, loaded, t, report.DEFAULT_MAX_PAIRS)
    return None


def shared_report(loaded: Loaded) -> dict:
    """The dataset's report: one stored result per dataset version and
    parameters, written by whichever of ``clipgeom report``, Home or a page
    computes it first, and read by all. :func:`peek_report` when one exists;
    else it is computed once at the dataset's default parameters, with a
    progress bar, and stored (:func:`cached_report`: it draws, so call this
    outside cached functions)."""
    rep = peek_report(loaded)
    if rep is not None:
        return rep
    return cached_report(loaded.fingerprint, loaded, loaded.default_temperature,
                         report.DEFAULT_MAX_PAIRS)


def report_number(value, missing=float("nan")) -> float:
    """A number of the JSON report as a float (the report writes NaN and ±inf as null)."""
    return missing if value is None else float(value)
