"""Projections for plots and the isotropy measures.

Tyshchuk et al., "On Isotropy of Multimodal Embeddings": SVD projections
uncentred (the cone, Fig. 2) and centred (the shape, Fig. 3), joint image+text
projections (Fig. 8, 12-13), the singular spectrum, the I1 / I2 isotropy
measures (Eq. 1-2, Table 1) and UMAP (Figs. 14-15), cached on disk.

Everything reads its input in row chunks, so memory-mapped million-row
arrays work with O(d^2) extra memory (plus the output).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from scipy.special import logsumexp

from ._atomic import replacing
from . import validate
from ._chunks import row_chunks
from .errors import InputError

Progress = Callable[[float, str], None]

UMAP_CACHE_FORMAT = 2   # 2: exact cosine neighbours computed here below 4,096 rows


# --------------------------------------------------------------------------
# SVD projections (isotropy paper Figs. 2-4, 8)


@dataclass(frozen=True, eq=False)
class Projection:
    """An SVD projection of one set of rows (isotropy paper Figs. 2-4).

    ``coords`` [N, k]: (x - mean) @ components.T; ``components`` [k, d]: the
    top-k right singular vectors; ``singular_values``: all min(N, d) singular
    values of (x - mean), descending; ``explained_variance_ratio``: their
    squares over the sum of squares (for the uncentred SVD this is the share
    of the second moment, the first component being the offset);
    ``mean``: the vector subtracted (zeros when uncentred).
    """

    coords: np.ndarray
    components: np.ndarray
    singular_values: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray


@dataclass(frozen=True, eq=False)
class JointProjection:
    """One SVD fitted on image and text rows stacked (isotropy paper Fig. 8, 12-13).

    ``image_coords`` [N_i, k] and ``text_coords`` [N_t, k] live in the same
    plane, so paired rows can be joined by lines; other fields as in
    :class:`Projection`, for the stacked matrix.
    """

    image_coords: np.ndarray
    text_coords: np.ndarray
    components: np.ndarray
    singular_values: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray


def _check_k(k, d: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= d:
        raise InputError(f"number of projection components k must be between 1 and {d}, got {k!r}.")
    return int(k)


def _blocks(arrays, normalize: bool):
    """Yield float64 row blocks of the arrays in order (optionally L2-normalised)."""
    for a in arrays:
        for sl in row_chunks(a.shape[0]):
            b = np.asarray(a[sl], dtype=np.float64)
            if normalize:
                b = b / np.linalg.norm(b, axis=1, keepdims=True)
            yield b


def _fit_svd(arrays, k: int, center: bool, normalize: bool):
    """Right singular vectors and singular values of the stacked, shifted rows.

    Uses the eigen-decomposition of the d x d scatter matrix (accumulated
    in float64 over row chunks): its eigenvalues are the squared singular
    values and its eigenvectors the right singular vectors. Component signs
    are fixed so the largest-magnitude loading is positive (sklearn's
    ``svd_flip`` convention for components).
    """
    d = arrays[0].shape[1]
    n = sum(a.shape[0] for a in arrays)
    mean = np.zeros(d)
    if center:
        for b in _blocks(arrays, normalize):
            mean += b.sum(axis=0)
        mean /= n
    scatter = np.zeros((d, d))
    for b in _blocks(arrays, normalize):
        b = b - mean
        scatter += b.T @ b
    evals, evecs = np.linalg.eigh(scatter)
    order = np.argsort(evals)[::-1][:min(n, d)]
    evals = np.clip(evals[order], 0.0, None)
    comps = evecs[:, order[:k]].T.copy()
    signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    sv = np.sqrt(evals)
    total = evals.sum()
    ratio = evals / total if total > 0 else np.zeros_like(evals)
    return mean, comps, sv, ratio


def _coords(a: np.ndarray, mean: np.ndarray, comps: np.ndarray, normalize: bool) -> np.ndarray:
    out = np.empty((a.shape[0], comps.shape[0]))
    start = 0
    for b in _blocks([a], normalize):
        out[start:start + b.shape[0]] = (b - mean) @ comps.T
        start += b.shape[0]
    return out


def svd_projection(x, k: int = 2, *, center: bool = False, normalize: bool = False) -> Projection:
    """Project rows onto their top-k SVD components (isotropy paper Figs. 2-3).

    ``center=False`` keeps the origin: embeddings in a cone show the offset
    as the first component (Fig. 2). ``center=True`` subtracts the mean first
    and equals PCA (Fig. 3). ``normalize=True`` L2-normalises rows first, as
    the paper does before plotting. Singular values are those of the
    (shifted) data matrix; the singular spectrum plot uses all of them.
    """
    x = validate.embeddings(x, "embeddings", allow_zero=not normalize)
    k = _check_k(k, x.shape[1])
    mean, comps, sv, ratio = _fit_svd([x], k, center, normalize)
    return Projection(coords=_coords(x, mean, comps, normalize), components=comps,
                      singular_values=sv, explained_variance_ratio=ratio, mean=mean)


def joint_svd_projection(image, text, k: int = 2, *, center: bool = False,
                         normalize: bool = False) -> JointProjection:
    """One SVD fitted on image and text rows stacked (isotropy paper Fig. 8, 12-13).

    Both modalities are projected on the same components so they share one
    plot; with row-paired inputs, row i of each can be joined by a line.
    Options as in :func:`svd_projection` (the centred variant subtracts the
    mean of the stacked rows).
    """
    img = validate.embeddings(image, "image embeddings", min_rows=1, allow_zero=not normalize)
    txt = validate.embeddings(text, "text embeddings", min_rows=1, allow_zero=not normalize)
    validate.same_width(img, txt, "image embeddings", "text embeddings")
    k = _check_k(k, img.shape[1])
    mean, comps, sv, ratio = _fit_svd([img, txt], k, center, normalize)
    return JointProjection(image_coords=_coords(img, mean, comps, normalize),
                           text_coords=_coords(txt, mean, comps, normalize),
                           components=comps, singular_values=sv,
                           explained_variance_ratio=ratio, mean=mean)


# --------------------------------------------------------------------------
# isotropy measures (isotropy paper Eq. 1-2, Table 1)


def isotropy(w) -> dict:
    """Isotropy measures I1 and I2 (isotropy paper Eq. 1-2, Table 1).

    Rows are L2-normalised first (as the paper does). E = eigenvectors of
    W^T W; Z(v) = sum_i exp(<v, w_i>); I1 = min Z / max Z (Eq. 1) and
    I2 = std(Z) / mean(Z) over E (Eq. 2, population std). Z for all
    eigenvectors comes from one matmul per row chunk (W @ V), accumulated as
    log Z with log-sum-exp and shifted by max log Z before exponentiating
    (I1, I2 do not change under a common scale of Z).

    An eigenvector's sign is not defined by W^T W but changes Z(v); each is
    oriented so that <v, sum_i w_i> >= 0 (ties: largest-magnitude entry
    positive), i.e. towards the side the cloud leans to.

    Returns ``{"I1": float, "I2": float}``.
    """
    w = validate.embeddings(w, "embeddings", min_rows=1)
    d = w.shape[1]
    gram = np.zeros((d, d))
    total = np.zeros(d)
    for b in _blocks([w], normalize=True):
        gram += b.T @ b
        total += b.sum(axis=0)
    _, vecs = np.linalg.eigh(gram)
    lean = total @ vecs
    scale = np.sqrt(np.sum(total ** 2)) * 1e-12
    big = vecs[np.argmax(np.abs(vecs), axis=0), np.arange(d)]
    sign = np.where(np.abs(lean) > scale, np.sign(lean), np.sign(big))
    vecs = vecs * sign
    log_z = np.full(d, -np.inf)
    for b in _blocks([w], normalize=True):
        log_z = np.logaddexp(log_z, _logsumexp_cols(b @ vecs))
    z = np.exp(log_z - log_z.max())
    return {"I1": float(z.min() / z.max()), "I2": float(z.std() / z.mean())}


def _logsumexp_cols(s: np.ndarray) -> np.ndarray:
    """``scipy.special.logsumexp(s, axis=0)`` of a real 2-D array, overwriting ``s``.

    The same arithmetic as scipy's (each column's maximum split off, the
    rest summed as exp(s - max), log1p(sum / ties) + log(ties) + max), so
    the result is bit-for-bit scipy's, but done in place: scipy also
    exponentiates the unshifted array (for its overflow fallback) and makes
    several full-size temporaries, which made it most of isotropy's time.
    Non-finite input goes to scipy itself.
    """
    a_max = s.max(axis=0, keepdims=True)
    if not np.isfinite(a_max).all():
        return logsumexp(s, axis=0)
    mask = s == a_max
    ties = np.count_nonzero(mask, axis=0).astype(s.dtype)[None, :]
    np.subtract(s, a_max, out=s)
    s[mask] = -np.inf
    np.exp(s, out=s)
    tot = s.sum(axis=0, keepdims=True, dtype=s.dtype)
    tot = np.where(tot == 0, tot, tot / ties)
    return (np.log1p(tot) + np.log(ties) + a_max)[0]


# --------------------------------------------------------------------------
# UMAP (isotropy paper Figs. 14-15), cached


def sample_rows(n: int, sample: Optional[int], seed: int = 0) -> np.ndarray:
    """Sorted, seeded choice of ``sample`` of ``n`` row indices (all rows if None or >= n)."""
    if sample is None:
        return np.arange(n)
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 2:
        raise InputError(f"sample must be a whole number of at least 2 rows, got {sample!r}.")
    if sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(sample), replace=False))


def array_digest(x: np.ndarray, chunk_rows: int = 65536) -> str:
    """sha256 of an array's shape, dtype and bytes, read in row chunks (memmap-safe)."""
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(x.shape), "dtype": str(x.dtype)}).encode())
    for sl in row_chunks(x.shape[0], chunk_rows):
        h.update(np.ascontiguousarray(x[sl]).tobytes())
    return h.hexdigest()


# The page's (and the shipped demo's) UMAP parameters.
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "seed": 0,
                 "n_epochs": 200}
# Below this many rows umap-learn builds the exact distance matrix; it does so by
# calling its numba metric once per pair from Python (a minute for 4,000 rows), so
# umap_coords finds the exact cosine neighbours itself, vectorised (~0.2 s), and
# passes them as precomputed_knn (metric "precomputed" would be as fast but its
# layout of disconnected components is not deterministic).
EXACT_KNN_ROWS = 4096


def umap_sample(image, text, per_modality: int) -> tuple[np.ndarray, dict]:
    """The joint UMAP's input (isotropy paper Figs. 14-15): seeded samples of at most
    ``per_modality`` image rows (seed 0) and text rows (seed 1), stacked as float32.
    Returns ``(x, {"image": rows, "text": rows})``; the dashboard and the demo's
    shipped UMAP (``clipgeom.demo.ship_umap``) both build it here."""
    rows = {"image": sample_rows(image.shape[0], per_modality, 0),
            "text": sample_rows(text.shape[0], per_modality, 1)}
    x = np.vstack([np.asarray(image[rows["image"]], dtype=np.float32),
                   np.asarray(text[rows["text"]], dtype=np.float32)])
    return x, rows


def umap_params_for(n_rows: int) -> dict:
    """:data:`UMAP_DEFAULTS` with fewer neighbours when there are fewer rows."""
    p = dict(UMAP_DEFAULTS)
    p["n_neighbors"] = max(2, min(p["n_neighbors"], int(n_rows) - 1))
    return p


def _umap_version() -> str:
    """umap-learn's version without importing it (the import takes seconds)."""
    try:
        from importlib.metadata import version

        return version("umap-learn")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


def _umap_params(n_neighbors, min_dist, metric, seed, n_epochs,
                 fitted_rows: Optional[int]) -> dict:
    return {"n_neighbors": int(n_neighbors), "min_dist": float(min_dist), "metric": metric,
            "seed": int(seed), "n_epochs": int(n_epochs),
            "sample": None if fitted_rows is None else int(fitted_rows)}


def umap_file_name(digest: str, params: dict, *, versioned: bool = True) -> str:
    """File name of a stored UMAP result: ``umap-<sha256>.npy`` over the input's
    :func:`array_digest`, every parameter and (``versioned``) umap-learn's version.
    Results shipped with a bundled dataset are unversioned: a picture computed
    once at build time stays valid under another umap-learn release."""
    payload = {"format": UMAP_CACHE_FORMAT, "x": digest, "params": params}
    if versioned:
        payload["umap"] = _umap_version()
    return f"umap-{hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()}.npy"


def _read_umap_file(path: Path, n: int) -> Optional[np.ndarray]:
    """A stored [n, 2] finite float array as float32, or None when missing or damaged."""
    try:
        if not path.is_file():
            return None
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.shape != (n, 2) or arr.dtype.kind != "f" or not np.isfinite(arr).all():
        return None
    return arr.astype(np.float32, copy=False)


def _check_umap_args(x, n_neighbors, min_dist, metric, sample, seed, n_epochs=200):
    x = validate.embeddings(x, "embeddings", allow_zero=metric != "cosine")
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, (int, np.integer)) \
            or n_epochs < 1:
        raise InputError(f"n_epochs must be a positive whole number, got {n_epochs!r}.")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) \
            or n_neighbors < 2:
        raise InputError(f"n_neighbors must be a whole number of at least 2, got {n_neighbors!r}.")
    validate.in_range(min_dist, 0.0, 1.0, "min_dist")
    if not isinstance(metric, str):
        raise InputError(f"metric must be a name such as 'cosine', got {metric!r}.")
    idx = sample_rows(x.shape[0], sample, seed)
    return x, idx


def stored_umap(x, *, cache_dir=None, shipped_dir=None,
                n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
                seed: int = 0, n_epochs: int = 200,
                sample: Optional[int] = None) -> Optional[np.ndarray]:
    """The UMAP result :func:`umap_coords` would return, if it is already stored:
    first in ``shipped_dir`` (a bundled dataset's own ``cache/``, unversioned
    name), then in ``cache_dir``; else None. Never imports umap-learn, so it
    costs one hash of ``x`` and one small file read (milliseconds)."""
    x, idx = _check_umap_args(x, n_neighbors, min_dist, metric, sample, seed, n_epochs)
    n, m = x.shape[0], idx.shape[0]
    params = _umap_params(n_neighbors, min_dist, metric, seed, n_epochs, None if m == n else m)
    return _lookup(array_digest(x), n, params, cache_dir, shipped_dir)


def _lookup(digest: str, n: int, params: dict, cache_dir, shipped_dir) -> Optional[np.ndarray]:
    for folder, versioned in ((shipped_dir, False), (cache_dir, True)):
        if folder is not None:
            got = _read_umap_file(Path(folder) / umap_file_name(digest, params,
                                                               versioned=versioned), n)
            if got is not None:
                return got
    return None


def read_shipped_umap(folder, x, **params) -> Optional[np.ndarray]:
    """A UMAP shipped with a bundled dataset (``Dataset.shipped_dir("cache")``)
    for rows ``x`` and the :func:`umap_coords` parameters, or None."""
    return stored_umap(x, shipped_dir=folder, **params)


def write_shipped_umap(folder, x, coords, **params) -> Path:
    """Store ``coords`` (from :func:`umap_coords` on ``x`` with ``params``) under
    the unversioned name :func:`read_shipped_umap` looks for, as float32 .npy."""
    x, idx = _check_umap_args(x, params.get("n_neighbors", 15), params.get("min_dist", 0.1),
                              params.get("metric", "cosine"), params.get("sample"),
                              params.get("seed", 0), params.get("n_epochs", 200))
    coords = np.asarray(coords, dtype=np.float32)
    if coords.shape != (x.shape[0], 2) or not np.isfinite(coords).all():
        raise InputError(f"UMAP coordinates must be finite, shape ({x.shape[0]}, 2); "
                         f"got {coords.shape}.")
    m = idx.shape[0]
    p = _umap_params(params.get("n_neighbors", 15), params.get("min_dist", 0.1),
                     params.get("metric", "cosine"), params.get("seed", 0),
                     params.get("n_epochs", 200), None if m == x.shape[0] else m)
    path = Path(folder) / umap_file_name(array_digest(x), p, versioned=False)
    _save_atomic(path, coords)
    return path


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    with replacing(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def numba_cache_dir() -> Optional[Path]:
    """Where numba keeps compiled code between processes: ``$NUMBA_CACHE_DIR``, else
    ``$CLIPGEOM_HOME/cache/numba`` (created). None when it cannot be created."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return Path(env)
    from .store import home

    d = home() / "cache" / "numba"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return d


_UMAP_CACHING_ENABLED = False


def import_umap():
    """``import umap`` with numba's on-disk cache of compiled code switched on.

    umap-learn compiles its numba functions at first use in every process
    (tens of seconds) and marks almost none ``cache=True`` (pynndescent does).
    Here ``NUMBA_CACHE_DIR`` is set first when unset (:func:`numba_cache_dir`,
    a writable folder that persists with ``CLIPGEOM_HOME``; numba's default is
    ``__pycache__`` beside the installed sources, often read-only), and caching
    is enabled on umap's own dispatchers before they first compile, so later
    processes load the machine code instead of compiling it again.
    """
    global _UMAP_CACHING_ENABLED
    folder = numba_cache_dir()
    if folder is not None and not os.environ.get("NUMBA_CACHE_DIR"):
        os.environ["NUMBA_CACHE_DIR"] = str(folder)
    if folder is not None and "numba" in sys.modules:   # numba read its config already
        from numba.core import config as numba_config

        if not numba_config.CACHE_DIR:
            numba_config.CACHE_DIR = str(folder)
    import umap

    if not _UMAP_CACHING_ENABLED:
        _UMAP_CACHING_ENABLED = True
        _enable_numba_caching(("umap.umap_", "umap.layouts", "umap.utils", "umap.distances",
                               "umap.spectral", "umap.sparse"))
    return umap


def _enable_numba_caching(module_names) -> int:
    """``enable_caching()`` on every not-yet-compiled numba dispatcher of the modules
    (what ``@njit(cache=True)`` does at decoration). Returns how many."""
    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover - numba's internals moved
        return 0
    count = 0
    for name in module_names:
        mod = sys.modules.get(name)
        for obj in vars(mod).values() if mod is not None else ():
            if isinstance(obj, Dispatcher) and isinstance(getattr(obj, "_cache", None), NullCache) \
                    and not obj.signatures:
                try:
                    obj.enable_caching()
                    count += 1
                except Exception:  # pragma: no cover - a function numba cannot cache
                    pass
    return count


def exact_cosine_knn(x: np.ndarray, k: int, chunk_rows: int = 1024
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest rows of every row by cosine distance 1 - cos (the row
    itself included, as UMAP expects), from chunked matrix products.
    Returns (indices int32 [N, k], distances float32 [N, k]), nearest first
    (ties: lower row first)."""
    u = np.asarray(x, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    n = u.shape[0]
    k = int(min(k, n))
    idx = np.empty((n, k), dtype=np.int32)
    dist = np.empty((n, k), dtype=np.float32)
    for sl in row_chunks(n, chunk_rows):
        d = 1.0 - u[sl] @ u.T
        rows = np.arange(sl.start, sl.stop)
        d[rows - sl.start, rows] = 0.0
        np.clip(d, 0.0, 2.0, out=d)
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < n else \
            np.tile(np.arange(n), (d.shape[0], 1))
        vals = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, vals), axis=1)
        idx[sl] = np.take_along_axis(part, order, axis=1)
        dist[sl] = np.take_along_axis(vals, order, axis=1)
    return idx, dist


def umap_coords(x, *, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
                seed: int = 0, n_epochs: int = 200, cache_dir=None, shipped_dir=None,
                sample: Optional[int] = None, progress: Optional[Progress] = None) -> np.ndarray:
    """2-D UMAP coordinates of the rows of ``x`` (isotropy paper Sec. 4.7, Figs. 14-15).

    umap-learn with ``random_state=seed`` (deterministic; single-threaded),
    ``n_epochs`` optimisation epochs (umap-learn's own default is 500 below
    10,000 rows; 200, its default above, draws the same picture in 40% of the
    time). Returns float32 [N, 2], row i for row i of ``x``. With the cosine
    metric and fewer than 4,096 fitted rows the exact cosine neighbours are
    computed here (:func:`exact_cosine_knn`) and given to UMAP as
    ``precomputed_knn`` (umap-learn would build the distance matrix one Python
    call per pair: a minute for 4,000 rows). Identical rows are embedded once
    and share one point (``n_neighbors`` is capped at the distinct rows - 1).

    ``sample``: fit UMAP on a seeded subset of that many rows
    (:func:`sample_rows`) and place the remaining rows with
    ``UMAP.transform``; the result still has one row per input row. For a
    plot of a subset only, pass ``x[sample_rows(n, m, seed)]`` instead.

    ``cache_dir``: results are stored there as ``umap-<sha256>.npy``, the key
    hashing the array bytes (chunked, so memmaps are fine) and every
    parameter (and the umap-learn version); files are written to a temporary
    name and renamed, and the next call with the same input loads the file.
    ``shipped_dir``: a bundled dataset's own results (:func:`write_shipped_umap`),
    read first and never written. See :func:`stored_umap`.

    ``progress(fraction, text)`` is called at each stage (compatible with
    Streamlit's ``progress_bar.progress``; call this outside any cached
    function when it draws).
    """
    x, idx = _check_umap_args(x, n_neighbors, min_dist, metric, sample, seed, n_epochs)
    n, m = x.shape[0], idx.shape[0]
    if n_neighbors >= m:
        raise InputError(
            f"n_neighbors ({n_neighbors}) must be smaller than the number of rows UMAP is "
            f"fitted on ({m}); lower n_neighbors or use more rows."
        )

    def report(frac: float, text: str) -> None:
        if progress is not None:
            progress(float(frac), text)

    path = None
    params = _umap_params(n_neighbors, min_dist, metric, seed, n_epochs, None if m == n else m)
    if cache_dir is not None or shipped_dir is not None:
        report(0.0, "Looking for a stored UMAP")
        digest = array_digest(x)
        got = _lookup(digest, n, params, cache_dir, shipped_dir)
        if got is not None:
            report(1.0, "Loaded UMAP from cache")
            return got
        if cache_dir is not None:
            cache = Path(cache_dir)
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the UMAP cache folder {cache}: {exc}.") \
                    from None
            path = cache / umap_file_name(digest, params)

    report(0.02, "Loading UMAP (compiled code is cached after the first use)")
    umap = import_umap()
    fit_rows = np.asarray(x[idx], dtype=np.float32)
    # Identical rows (repeated captions, duplicate images) are embedded once and
    # share their point: more copies than n_neighbors would otherwise form
    # cliques cut off from the rest, whose degenerate spectral initialisation
    # ARPACK resolves differently on every call.
    fit_rows, back = np.unique(fit_rows, axis=0, return_inverse=True)
    back = back.reshape(-1)
    u = fit_rows.shape[0]
    if u < 3:
        raise InputError(f"UMAP needs at least 3 distinct rows; these {m} rows have {u}.")
    n_neighbors = min(int(n_neighbors), u - 1)
    exact = metric == "cosine" and m == n and u < EXACT_KNN_ROWS
    report(0.1, f"Fitting UMAP on {u} distinct of {m} rows")
    knn = exact_cosine_knn(fit_rows, n_neighbors) if exact else (None, None, None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        warnings.filterwarnings("ignore", message=".*(cache|cach).*")
        reducer = umap.UMAP(n_components=2, n_neighbors=int(n_neighbors),
                            min_dist=float(min_dist), metric=metric, random_state=int(seed),
                            n_epochs=int(n_epochs), precomputed_knn=knn)
        try:
            emb = reducer.fit_transform(fit_rows)
        except ValueError as exc:
            raise InputError(f"UMAP could not run with metric={metric!r}: {exc}") from None
        out = np.empty((n, 2), dtype=np.float32)
        out[idx] = emb[back]
        if m < n:
            rest = np.setdiff1d(np.arange(n), idx, assume_unique=True)
            slices = list(row_chunks(rest.shape[0]))
            for i, sl in enumerate(slices):
                report(0.6 + 0.4 * i / len(slices), f"Placing {rest.shape[0]} more rows")
                out[rest[sl]] = reducer.transform(np.asarray(x[rest[sl]], dtype=np.float32))
    if path is not None:
        _save_atomic(path, out)
    report(1.0, "UMAP done")
    return out


# --------------------------------------------------------------------------
# intra-modal similarity recovery on a sample (intra-modal supplement Eq. 4-10)


def max_recovery_rank(n_pairs: int, d: int) -> int:
    """The largest rank k the recovery can use with ``n_pairs`` pairs of width ``d``:
    k <= d, k <= n_pairs, k(k+1)/2 <= n_pairs (the unknowns of the symmetric Q,
    intra-modal supplement Eq. 9) and k <= 128 (``transforms.MAX_RECOVERY_RANK``)."""
    from .transforms import MAX_RECOVERY_RANK

    n = max(int(n_pairs), 0)
    k_eq = int((np.sqrt(8.0 * n + 1.0) - 1.0) // 2)
    while (k_eq + 1) * (k_eq + 2) // 2 <= n:       # guard the float square root
        k_eq += 1
    while k_eq > 0 and k_eq * (k_eq + 1) // 2 > n:
        k_eq -= 1
    return max(0, min(int(d), n, k_eq, MAX_RECOVERY_RANK))


def default_recovery_rank(n_pairs: int, d: int) -> int:
    """A sensible rank for the recovery: d when the pairs allow it (the exact case,
    intra-modal supplement Eq. 4-10), else the largest k with at least twice as many
    pairs as unknowns, k(k+1) <= N (at k(k+1)/2 ~ N the system is barely determined
    and the error grows again). At least 1; never above :func:`max_recovery_rank`."""
    k_max = max_recovery_rank(n_pairs, d)
    if k_max >= d:
        return k_max
    return max(1, min(k_max, max_recovery_rank(int(n_pairs) // 2, d)))


def _offdiag_errors(rec: np.ndarray, truth: np.ndarray, iu) -> dict:
    t, r = truth[iu], rec[iu]
    diff = r - t
    pearson = float(np.corrcoef(t, r)[0, 1]) if t.std() > 0 and r.std() > 0 else float("nan")
    return {"rms": float(np.sqrt(np.mean(diff ** 2))), "max_abs": float(np.max(np.abs(diff))),
            "pearson": pearson}


def intra_recovery_experiment(image, text, *, n_pairs: int = 300, k: Optional[int] = None,
                              ks=None, seed: int = 0) -> dict:
    """Recover image-image cosines from image-text cosines alone, and compare them
    with the TRUE image-image cosines of the data (intra-modal misalignment
    supplement, Eq. 4-10; the solver is ``clipgeom.transforms.recover_intra_similarity``).

    ``image`` and ``text`` are row-paired raw embeddings. A seeded sample of
    ``n_pairs`` pairs (:func:`sample_rows`) is L2-normalised to X_I, X_T. The
    input to the recovery is S_inter = X_T X_I^T (Eq. 4) only; it keeps the
    top-``k`` right singular vectors V of S_inter (Eq. 5) and solves
    diag(V Q V^T) = 1 (Eq. 8-9) for S_intra = V Q V^T (Eq. 10). The truth is
    X_I X_I^T of the original unit rows (not of any projection). The
    supplement's assumptions (unit rows of rank k, N >= k(k+1)/2) hold exactly
    only when k = d and there are at least d(d+1)/2 pairs; then the recovery
    is exact. For k < d the rank-k subspace only approximates the images' and
    the error measures what is lost.

    ``k`` defaults to :func:`default_recovery_rank`; ``ks`` (default: up to 12
    ranks from 1 to that maximum, plus ``k``) are the ranks of the error
    curve. One eigen-decomposition and one QR serve all of them
    (``transforms.recover_intra_similarity_ranks``).

    Returns a dict: ``rows`` (sampled pair positions), ``n``, ``d``, ``k``,
    ``k_max``; ``true`` and ``recovered`` (the off-diagonal upper-triangle
    values at rank ``k``, float64); ``rms``, ``max_abs``, ``pearson`` (of those
    off-diagonal values); ``residual`` (RMS of diag(V Q V^T) - 1);
    ``energy`` (share of S_inter's squared singular values in the top k);
    ``curve``: {"k", "rms", "max_abs", "pearson", "residual"} lists over ``ks``.
    """
    from .transforms import recover_intra_similarity_ranks

    img = validate.embeddings(image, "image embeddings")
    txt = validate.embeddings(text, "text embeddings")
    validate.paired(img, txt, "image embeddings", "text embeddings")
    n, d = img.shape
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 2:
        raise InputError(f"n_pairs must be a whole number of at least 2, got {n_pairs!r}.")
    rows = sample_rows(n, int(n_pairs), seed)
    m = rows.shape[0]
    k_max = max_recovery_rank(m, d)
    if k is None:
        k = default_recovery_rank(m, d)
    k = _check_k(k, d)
    need = k * (k + 1) // 2
    if m < need:
        raise InputError(
            f"recovering rank-{k} similarities needs at least k(k+1)/2 = {need} pairs, "
            f"but only {m} are used; lower k (at most {k_max} here) or use more pairs."
        )
    if ks is None:
        ks = np.unique(np.round(np.linspace(1, k_max, min(12, k_max))).astype(int))
    ks = sorted({int(v) for v in ks} | {k})
    for v in ks:
        if not 1 <= v <= k_max:
            raise InputError(f"curve ranks must be between 1 and {k_max}, got {v}.")
    xi = np.asarray(img[rows], dtype=np.float64)
    xt = np.asarray(txt[rows], dtype=np.float64)
    xi /= np.linalg.norm(xi, axis=1, keepdims=True)
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    truth = xi @ xi.T                                   # the data's own image-image cosines
    s_inter = xt @ xi.T                                 # all the recovery may use (Eq. 4)
    recs = recover_intra_similarity_ranks(s_inter, ks)
    iu = np.triu_indices(m, 1)
    curve = {"k": [], "rms": [], "max_abs": [], "pearson": [], "residual": []}
    chosen = None
    for rec in recs:
        e = _offdiag_errors(rec.s_intra, truth, iu)
        curve["k"].append(rec.rank)
        for key in ("rms", "max_abs", "pearson"):
            curve[key].append(e[key])
        curve["residual"].append(rec.residual)
        if rec.rank == k:
            chosen = (rec, e)
    rec, e = chosen
    total = float(np.sum(s_inter ** 2))                 # sum of all squared singular values
    energy = float(np.sum(rec.singular_values[:k] ** 2) / total) if total > 0 else float("nan")
    return {"rows": rows, "n": m, "d": d, "k": k, "k_max": k_max,
            "true": truth[iu], "recovered": rec.s_intra[iu],
            "rms": e["rms"], "max_abs": e["max_abs"], "pearson": e["pearson"],
            "residual": rec.residual, "energy": energy, "curve": curve}
