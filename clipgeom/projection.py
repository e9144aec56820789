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

UMAP_CACHE_FORMAT = 1


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


def _umap_key(x: np.ndarray, params: dict) -> str:
    import umap

    payload = {"format": UMAP_CACHE_FORMAT, "x": array_digest(x), "params": params,
               "umap": getattr(umap, "__version__", "unknown")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    with replacing(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def umap_coords(x, *, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
                seed: int = 0, cache_dir=None, sample: Optional[int] = None,
                progress: Optional[Progress] = None) -> np.ndarray:
    """2-D UMAP coordinates of the rows of ``x`` (isotropy paper Sec. 4.7, Figs. 14-15).

    umap-learn with ``random_state=seed`` (deterministic; single-threaded).
    Returns float32 [N, 2], row i for row i of ``x``.

    ``sample``: fit UMAP on a seeded subset of that many rows
    (:func:`sample_rows`) and place the remaining rows with
    ``UMAP.transform``; the result still has one row per input row. For a
    plot of a subset only, pass ``x[sample_rows(n, m, seed)]`` instead.

    ``cache_dir``: results are stored there as ``umap-<sha256>.npy``, the key
    hashing the array bytes (chunked, so memmaps are fine) and every
    parameter (and the umap-learn version); files are written to a temporary
    name and renamed, and the next call with the same input loads the file.

    ``progress(fraction, text)`` is called at each stage (compatible with
    Streamlit's ``progress_bar.progress``).
    """
    x = validate.embeddings(x, "embeddings", allow_zero=metric != "cosine")
    n = x.shape[0]
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) \
            or n_neighbors < 2:
        raise InputError(f"n_neighbors must be a whole number of at least 2, got {n_neighbors!r}.")
    validate.in_range(min_dist, 0.0, 1.0, "min_dist")
    if not isinstance(metric, str):
        raise InputError(f"metric must be a name such as 'cosine', got {metric!r}.")
    idx = sample_rows(n, sample, seed)
    m = idx.shape[0]
    if n_neighbors >= m:
        raise InputError(
            f"n_neighbors ({n_neighbors}) must be smaller than the number of rows UMAP is "
            f"fitted on ({m}); lower n_neighbors or use more rows."
        )

    def report(frac: float, text: str) -> None:
        if progress is not None:
            progress(float(frac), text)

    path = None
    if cache_dir is not None:
        params = {"n_neighbors": int(n_neighbors), "min_dist": float(min_dist),
                  "metric": metric, "seed": int(seed),
                  "sample": None if m == n else int(m)}
        report(0.0, "Hashing embeddings for the UMAP cache")
        cache = Path(cache_dir)
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the UMAP cache folder {cache}: {exc}.") from None
        path = cache / f"umap-{_umap_key(x, params)}.npy"
        if path.exists():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape == (n, 2) and np.isfinite(cached).all():
                    report(1.0, "Loaded UMAP from cache")
                    return cached.astype(np.float32, copy=False)
            except (OSError, ValueError):
                pass  # unreadable cache file: recompute and overwrite

    import umap

    report(0.05, f"Fitting UMAP on {m} rows")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        reducer = umap.UMAP(n_components=2, n_neighbors=int(n_neighbors),
                            min_dist=float(min_dist), metric=metric, random_state=int(seed))
        fit_rows = np.asarray(x[idx], dtype=np.float32)
        try:
            emb = reducer.fit_transform(fit_rows)
        except ValueError as exc:
            raise InputError(f"UMAP could not run with metric={metric!r}: {exc}") from None
        out = np.empty((n, 2), dtype=np.float32)
        out[idx] = emb
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


def intra_recovery_experiment(image, text, *, n_pairs: int = 300, k: int = 16,
                              seed: int = 0) -> dict:
    """Recover image-image similarities from image-text ones on a sample
    (intra-modal misalignment supplement, Eq. 4-10; the recovery itself is
    ``clipgeom.transforms.recover_intra_similarity``).

    ``image`` and ``text`` are row-paired raw embeddings. A seeded sample of
    ``n_pairs`` pairs (:func:`sample_rows`) is L2-normalised; both modalities
    are projected on the top-``k`` right singular vectors of the stacked
    unit rows (uncentred SVD, :func:`joint_svd_projection`) and
    re-normalised, so the rows are unit vectors of rank k as the recovery
    assumes (it caps the rank at 128 and needs N >= k(k+1)/2 rows). Then
    S_inter = X_T X_I^T, the truth S_intra = X_I X_I^T, and the recovered
    S_intra comes from S_inter alone.

    Returns a dict: ``rows`` (sampled pair positions), ``k``, ``true`` and
    ``recovered`` (the off-diagonal upper-triangle values, float64),
    ``max_abs`` / ``rms`` (over the full matrices,
    ``transforms.intra_recovery_error``), ``pearson`` (of the off-diagonal
    values), ``residual`` (RMS of diag(V Q V^T) - 1), ``pca_energy`` (share
    of the unit rows' second moment kept by the k components).
    """
    from .transforms import intra_recovery_error, recover_intra_similarity

    img = validate.embeddings(image, "image embeddings")
    txt = validate.embeddings(text, "text embeddings")
    validate.paired(img, txt, "image embeddings", "text embeddings")
    n, d = img.shape
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 2:
        raise InputError(f"n_pairs must be a whole number of at least 2, got {n_pairs!r}.")
    k = _check_k(k, d)
    rows = sample_rows(n, int(n_pairs), seed)
    m = rows.shape[0]
    need = k * (k + 1) // 2
    if m < need:
        raise InputError(
            f"recovering rank-{k} similarities needs at least k(k+1)/2 = {need} pairs, "
            f"but only {m} are used; lower k or use more pairs."
        )
    ui = np.asarray(img[rows], dtype=np.float64)
    ut = np.asarray(txt[rows], dtype=np.float64)
    ui /= np.linalg.norm(ui, axis=1, keepdims=True)
    ut /= np.linalg.norm(ut, axis=1, keepdims=True)
    proj = joint_svd_projection(ui, ut, k, center=False, normalize=False)
    xi, xt = proj.image_coords, proj.text_coords
    for x, name in ((xi, "image"), (xt, "text")):
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        if not np.all(nrm > 0):
            raise InputError(f"some sampled {name} rows vanish in the top-{k} components; "
                             "raise k.")
        x /= nrm
    truth = xi @ xi.T
    rec = recover_intra_similarity(xt @ xi.T, rank=k)
    err = intra_recovery_error(rec, truth)
    iu = np.triu_indices(m, 1)
    t_vals, r_vals = truth[iu], rec.s_intra[iu]
    pearson = float(np.corrcoef(t_vals, r_vals)[0, 1]) if t_vals.std() > 0 and r_vals.std() > 0 \
        else float("nan")
    return {"rows": rows, "k": k, "true": t_vals, "recovered": r_vals,
            "max_abs": err["max_abs"], "rms": err["rms"], "pearson": pearson,
            "residual": rec.residual,
            "pca_energy": float(proj.explained_variance_ratio[:k].sum())}
