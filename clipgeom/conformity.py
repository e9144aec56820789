"""Conformity: how close an item sits to all others (Double-Ellipsoid Sec. 6).

Exact conformity (Def. 1, Eq. 10) in O(N d) without an N x N matrix, the
estimate from the cosine to the raw mean (Def. 2, Eq. 11) with its least-
squares fit, Proposition 1's predicted slope, and the conformity-distribution
KL between modalities over an alpha shift (Fig. 10-11).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import moments, validate
from ._chunks import DEFAULT_CHUNK, column_mean, matvec, row_chunks, row_norms
from .errors import InputError
from .moments import BLOCK_ROWS
from .geometry import HistogramPair, histogram_kl


def exact_conformity(x, reference=None, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Exact conformity, Double-Ellipsoid Def. 1 (Eq. 10), in O(N d).

    C(v_j) = mean over k != j in S of cos(v_j, v_k). With u = v / ||v|| and
    s = sum_k u_k, C(v_j) = (u_j . s - 1) / (N - 1); never builds the N x N
    matrix. With ``reference`` (another set S), C(v_j) = u_j . s_S / |S|:
    the mean cosine of each row of ``x`` to every member of S.

    Two passes over row blocks (norms and s together, then u_j . s), float32
    products with float64 sums; an array checked when its dataset was opened
    is not scanned again (:func:`clipgeom.validate.mark_checked`).
    """
    x = validate.embeddings(x, "embeddings")
    if reference is None:
        s, norms = _unit_sum(x, chunk, keep_norms=True)
        return (matvec(x, s, chunk) / norms - 1.0) / (x.shape[0] - 1)
    ref = validate.embeddings(reference, "reference embeddings", min_rows=1)
    validate.same_width(x, ref, "embeddings", "reference embeddings")
    s, _ = _unit_sum(ref, chunk, keep_norms=False)
    return matvec(x, s, chunk) / row_norms(x, chunk) / ref.shape[0]


def _unit_sum(x, chunk: int, keep_norms: bool):
    """(sum of the unit rows, the row norms or None) in one pass over blocks.

    Squared norms are summed in float32 (einsum's vector lanes: 3-4x faster
    than a float64 cast, relative error ~1e-7, the precision of the float32
    products that follow)."""
    norms = np.empty(x.shape[0], dtype=np.float64) if keep_norms else None
    s = np.zeros(x.shape[1], dtype=np.float64)
    for sl in row_chunks(x.shape[0], chunk):
        block = np.asarray(x[sl], dtype=np.float32)
        sq = np.einsum("ij,ij->i", block, block)
        if not (np.all(sq > 0) and np.all(np.isfinite(sq))):   # float32 under/overflow
            sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        nb = np.sqrt(sq.astype(np.float64))
        if keep_norms:
            norms[sl] = nb
        s += ((1.0 / nb).astype(np.float32) @ block).astype(np.float64)
    return s, norms


def cos_to_mean(x, mean=None, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """cos(m, v_j) for every row, m the raw mean of ``x`` unless given (Eq. 11)."""
    x = validate.embeddings(x, "embeddings")
    m = column_mean(x, chunk) if mean is None else np.asarray(mean, np.float64)
    mn = np.linalg.norm(m)
    if mn == 0:
        raise InputError("the mean vector is zero, so the cosine to it is undefined.")
    return matvec(x, m / mn, chunk) / row_norms(x, chunk)


@dataclass(frozen=True)
class ConformityFit:
    """Exact vs estimated conformity of one set (Def. 1-2, Prop. 1; Fig. 9).

    Convention: ``a``, ``b`` fit C ~ a cos(m, v) + b (Def. 2 as written, so
    ``estimated`` is on the conformity scale). The paper's reported slopes
    (1.461 images, 1.411 text) are of the reverse regression, cos on C (its
    appendix: "the correlation is reversed in the main paper"); they are
    ``a_paper``. Prop. 1 predicts a = ||m|| / sqrt(R^2 + ||m||^2) with R the
    shell radius; with R^2 = E||v - m||^2 this is exactly ||m|| / sqrt(E||v||^2)
    (``theory_a``), and ``theory_a_paper`` = 1 / theory_a (paper: 1.414).
    """

    exact: np.ndarray
    cos_mean: np.ndarray
    estimated: np.ndarray
    a: float
    b: float
    pearson: float
    a_paper: float
    b_paper: float
    theory_a: float
    theory_a_paper: float
    mean_exact: float | None = None     # from the moments (the arrays may be absent)

    @property
    def mean(self) -> float:
        return float(self.exact.mean()) if self.mean_exact is None else float(self.mean_exact)


def fit_conformity(x, *, chunk: int = BLOCK_ROWS) -> ConformityFit:
    """Exact conformity, its estimate a cos(m, v) + b, and Prop. 1's slope.

    Two mergeable passes (:mod:`clipgeom.moments`, float64): the mean, norms
    and sum of unit rows, then per row C(v_j) and cos(m, v_j) with their
    co-moments, from which the least-squares fits and Pearson's r follow.
    """
    x = validate.embeddings(x, "embeddings")
    if x.shape[0] < 3:
        raise InputError("conformity fits need at least 3 rows.")
    eng = moments.LocalEngine(chunk)
    first = moments.first_moments(x, engine=eng, scatter=False)
    sec = moments.second_moments(x, conformity_constants(first, keep=("conformity", "cos_mean")),
                                 engine=eng)
    return fit_from_moments(first, sec)


def conformity_constants(first: "moments.FirstMoments", **kw) -> "moments.SecondConstants":
    """Pass-2 constants for exact conformity and cos(m, v) (Def. 1-2)."""
    if not np.linalg.norm(first.mean) > 0:
        raise InputError("the mean vector is zero, so the cosine to it is undefined.")
    first.require_directions("conformity")
    return moments.SecondConstants(mean=first.mean, unit_sum=first.unit_sum,
                                   n_total=first.n, **kw)


def fit_from_moments(first: "moments.FirstMoments", sec: "moments.SecondMoments"
                     ) -> ConformityFit:
    """:class:`ConformityFit` from pass 1 and pass 2 (per-row arrays where kept)."""
    a, b = moments.ols_from_moments(sec, "cos_mean", "conformity")
    a_rev, b_rev = moments.ols_from_moments(sec, "conformity", "cos_mean")
    r = moments.pearson_from_moments(sec, "cos_mean", "conformity")
    theory = float(np.linalg.norm(first.mean) / np.sqrt(first.mean_sq_norm))
    exact = sec.kept.get("conformity")
    cos = sec.kept.get("cos_mean")
    return ConformityFit(exact=exact, cos_mean=cos,
                         estimated=None if cos is None else a * cos + b,
                         a=a, b=b, pearson=r, a_paper=a_rev, b_paper=b_rev,
                         theory_a=theory,
                         theory_a_paper=1.0 / theory if theory > 0 else float("inf"),
                         mean_exact=sec.mean("conformity"))


def shifted_conformity(x, alpha: float, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Exact conformity of v' = v - alpha m (the shift of Eq. 9), still O(N d).

    ||v'||^2 = ||v||^2 - 2 alpha v.m + alpha^2 ||m||^2 and
    s' = sum_k v'_k / ||v'_k|| = X^T w - alpha m sum(w), w = 1 / ||v'||.
    """
    return shifted_conformity_many(x, [alpha], chunk=chunk)[:, 0]


def shifted_conformity_many(x, alphas, *, chunk: int = BLOCK_ROWS) -> np.ndarray:
    """:func:`shifted_conformity` for several alphas at once: [N, len(alphas)].

    The alpha-independent parts (mean, v.m, ||v||) are computed once, and all
    alphas share one pass for X^T W and one for X S
    (:class:`clipgeom.moments.ShiftConstants`).
    """
    x = validate.embeddings(x, "embeddings")
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    eng = moments.LocalEngine(chunk)
    first = moments.first_moments(x, engine=eng, scatter=False)
    sec = moments.second_moments(x, moments.SecondConstants(mean=first.mean, alphas=alphas),
                                 engine=eng)
    c = moments.ShiftConstants.from_pass(first.mean, alphas, sec.xtw, sec.wsum, first.n)
    out = np.empty((x.shape[0], len(alphas)))
    for start, stop in eng.blocks(x.shape[0]):
        out[start:stop] = moments.shifted_block(np.asarray(x[start:stop], np.float64), c, start)
    return out


@dataclass(frozen=True)
class ConformityKLSweep:
    """KL(image || text) of conformity distributions vs alpha (Fig. 11)."""

    alpha: np.ndarray
    kl: np.ndarray
    modality: str
    bins: int

    @property
    def at_zero(self) -> float | None:
        hit = np.flatnonzero(np.isclose(self.alpha, 0.0, atol=1e-9))
        return float(self.kl[hit[0]]) if hit.size else None

    @property
    def argmin(self) -> float:
        return float(self.alpha[int(np.argmin(self.kl))])


def conformity_kl(image, text, *, bins: int = 50) -> HistogramPair:
    """KL(image || text) between the two conformity distributions (Fig. 10).

    Histograms on ``bins`` shared equal-width bins over the pooled range,
    floored at 1e-6 and renormalised (see geometry.histogram_kl).
    """
    return histogram_kl(exact_conformity(image), exact_conformity(text), bins=bins)


def conformity_kl_sweep(image, text, alphas, *, modality: str = "both",
                        bins: int = 50, chunk: int = BLOCK_ROWS, engine=None
                        ) -> ConformityKLSweep:
    """KL(image || text) of conformity while shifting by alpha m (Double-Ellipsoid Fig. 11).

    ``modality`` says which set is shifted (each by its own mean): "both"
    (the default, as in the figure), "image" or "text". Paper: smallest near
    alpha = 0, KL ~ 0.14 there on MS-COCO. Histograms as in
    :func:`clipgeom.geometry.histogram_kl` (pooled range per alpha); computed
    in mergeable passes over row blocks (:mod:`clipgeom.moments`), never
    holding N x len(alphas) values.
    """
    if modality not in ("image", "text", "both"):
        raise InputError(f"modality must be image, text or both, got {modality!r}.")
    image = validate.embeddings(image, "image embeddings")
    text = validate.embeddings(text, "text embeddings")
    validate.same_width(image, text, "image embeddings", "text embeddings")
    alphas = np.asarray(alphas, dtype=np.float64)
    eng = engine if isinstance(engine, moments.LocalEngine) else moments.LocalEngine(chunk)
    ai, at = sweep_alphas(alphas, modality)
    fi = moments.first_moments(image, engine=eng, scatter=False)
    ft = moments.first_moments(text, engine=eng, scatter=False)
    si = moments.second_moments(image, moments.SecondConstants(mean=fi.mean, alphas=ai), engine=eng)
    st = moments.second_moments(text, moments.SecondConstants(mean=ft.mean, alphas=at), engine=eng)
    kls = moments.shifted_conformity_kl(image, text, fi, ft, si, st, ai, at, len(alphas), bins,
                                        engine=eng)
    return ConformityKLSweep(alpha=alphas, kl=kls, modality=modality, bins=bins)


def sweep_alphas(alphas, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The shifts applied to (image, text) for a sweep that shifts ``modality``
    ("both", "image" or "text"); the other modality gets the single shift 0."""
    alphas = np.asarray(alphas, dtype=np.float64)
    zero = np.zeros(1)
    return (alphas if modality in ("image", "both") else zero,
            alphas if modality in ("text", "both") else zero)


def frequency_correlation(conformity_values, frequency) -> dict:
    """Spearman rho between conformity and a concept frequency (Prediction 1).

    The Double-Ellipsoid paper predicts that common concepts sit closer to
    the modality mean, i.e. have higher conformity; with a generated world
    the frequencies are known exactly. Rows with a missing (NaN) frequency
    are left out. Returns {rho, p_value, n}.
    """
    from scipy.stats import spearmanr

    c = np.asarray(conformity_values, np.float64)
    f = np.asarray(frequency, np.float64)
    if c.shape != f.shape:
        raise InputError(f"{c.shape[0]} conformity values but {f.shape[0]} frequencies.")
    ok = np.isfinite(c) & np.isfinite(f)
    if ok.sum() < 3:
        raise InputError("need at least 3 items with a known frequency.")
    res = spearmanr(c[ok], f[ok])
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": int(ok.sum())}


def query_conformity(query, reference, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Conformity of new vectors to a set S, Double-Ellipsoid Def. 1 (Eq. 10).

    C(q) = mean over v in S of cos(q, v) = (q / ||q||) . s / |S| with
    s = sum_v v / ||v||, O(|S| d). Unlike :func:`exact_conformity` with
    ``reference`` this accepts a single vector (1-D, or one row): the
    conformity of a newly embedded caption against the dataset's captions.
    """
    q = np.asarray(query)
    if q.ndim == 1:
        q = q[None, :]
    q = validate.embeddings(q, "query embedding", min_rows=1)
    ref = validate.embeddings(reference, "reference embeddings", min_rows=1)
    validate.same_width(q, ref, "query embedding", "reference embeddings")
    s, _ = _unit_sum(ref, chunk, keep_norms=False)
    q64 = q.astype(np.float64)
    return (q64 @ s) / np.linalg.norm(q64, axis=1) / ref.shape[0]


def conformity_ranking(values, *, most: bool = True) -> np.ndarray:
    """Row indices ordered by conformity (Def. 1 values), for the ranked galleries.

    ``most=True``: highest conformity first (the most "typical" items, Sec. 6
    Fig. 8); ``most=False``: lowest first. Ties keep row order (stable);
    NaN values go last in both orders.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise InputError(f"conformity values must be 1-D, got shape {v.shape}.")
    key = np.where(np.isnan(v), np.inf, -v if most else v)
    return np.argsort(key, kind="stable")
