"""Comparative measures of the 2022-25 literature on multimodal embedding spaces.

Each function cites the paper and equation it implements; all run in
O(N d^2) or better with memory bounded by one chunk of rows, except the
k-nearest-neighbour measures (hubness, mutual-kNN), which are exact but
quadratic in the rows and therefore run on a seeded sample above a cap (the
result says so).

* Modality gap (Liang et al., "Mind the Gap", NeurIPS 2022, Sec. 4.1):
  :func:`normalized_centroid_distance`, :func:`instance_gap`.
* Relative modality gap (Schrodi et al., "Two Effects, One Trigger",
  ICLR 2025): :func:`relative_modality_gap`.
* Fréchet distance between two Gaussians (Dowson & Landau 1982; the FID of
  Heusel et al. 2017, Eq. 6), split into its mean and covariance terms:
  :func:`frechet_distance`.
* Effective rank (RankMe, Garrido et al., ICML 2023, Eq. 1; Roy & Vetterli
  2007) and participation ratio: :func:`effective_rank`,
  :func:`participation_ratio`.
* Hubness (Radovanović et al., JMLR 2010, Sec. 3: skewness of the
  k-occurrence N_k): :func:`hubness`, :func:`modality_hubness`.
* Cross-space similarity of row-aligned sets: linear CKA (Kornblith et al.,
  ICML 2019, Eq. 5 with the linear kernel), mutual-kNN (Huh et al., "The
  Platonic Representation Hypothesis", ICML 2024, Sec. 2 / App. A), Spearman
  correlation of conformity: :func:`linear_cka`, :func:`mutual_knn`,
  :func:`cross_space_similarity`.
* Whitened likelihood (Betser, Levi & Gilboa, "Whitened CLIP as a Likelihood
  Surrogate of Images and Captions", ICML 2025): :func:`whitened_log_likelihood`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.stats import rankdata

from . import validate
from ._chunks import row_chunks
from .errors import InputError

DEFAULT_K = 10
HUBNESS_SAMPLE = 5000         # exact kNN is O(n^2 d): above this, a seeded sample
CROSS_SAMPLE = 5000           # pairs used for the cross-modal CKA / mutual-kNN
TOP_HUBS = 10
_KNN_BLOCK = 8_000_000        # similarity entries per kNN chunk (~64 MB float64)
_CHUNK = 8192                 # rows per float64 pass (~34 MB at d = 512)
MUTUAL_KNN_NOTE = "mutual-kNN falls as the sample grows: compare it only at equal n_used"


# --------------------------------------------------------------------------
# helpers


def _unit_block(x, sl) -> np.ndarray:
    b = np.asarray(x[sl], dtype=np.float64)
    n = np.linalg.norm(b, axis=1, keepdims=True)
    if np.any(n == 0):
        raise InputError("an all-zero vector has no direction; normalised measures "
                         "are undefined for it. Remove those rows.")
    return b / n


def unit_rows(x, chunk: int = _CHUNK, dtype=np.float32) -> np.ndarray:
    """Rows of ``x`` divided by their L2 norm, float32 unless told (one copy)."""
    x = validate.embeddings(x, "embeddings", min_rows=1)
    out = np.empty(x.shape, dtype=dtype)
    for sl in row_chunks(x.shape[0], chunk):
        out[sl] = _unit_block(x, sl)
    return out


def unit_mean(x, chunk: int = _CHUNK) -> np.ndarray:
    """Mean of the L2-normalised rows (float64, chunked): the centroid of
    Liang et al. (2022) Sec. 4.1."""
    x = validate.embeddings(x, "embeddings", min_rows=1)
    total = np.zeros(x.shape[1], dtype=np.float64)
    for sl in row_chunks(x.shape[0], chunk):
        total += _unit_block(x, sl).sum(axis=0)
    return total / x.shape[0]


def checked_pairs(image, text, pair_image_rows, pair_text_rows):
    """The pair index arrays as flat int64, refused (InputError) when their
    lengths differ or an index is outside the image or text rows."""
    ii = np.asarray(pair_image_rows, dtype=np.int64).ravel()
    tt = np.asarray(pair_text_rows, dtype=np.int64).ravel()
    if ii.shape != tt.shape:
        raise InputError(f"pair index arrays differ in length ({len(ii)} vs {len(tt)}).")
    if ii.size and (ii.min() < 0 or ii.max() >= image.shape[0]
                    or tt.min() < 0 or tt.max() >= text.shape[0]):
        raise InputError("a pair index is outside the image or text rows.")
    return ii, tt


def _paired_cosines(image, text, ii, tt, chunk: int = _CHUNK) -> np.ndarray:
    cos = np.empty(len(ii), dtype=np.float64)
    for sl in row_chunks(len(ii), chunk):
        a = _unit_block(image, ii[sl])
        b = _unit_block(text, tt[sl])
        cos[sl] = np.einsum("ij,ij->i", a, b)
    return np.clip(cos, -1.0, 1.0)


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson of average ranks; NaN when either
    side is constant)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size != b.size:
        raise InputError(f"Spearman needs equal lengths ({a.size} vs {b.size}).")
    if a.size < 3:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / den) if den > 0 else float("nan")


# --------------------------------------------------------------------------
# Modality gap (Liang et al. 2022) and relative modality gap (Schrodi et al. 2025)


def normalized_centroid_distance(image, text, chunk: int = _CHUNK) -> float:
    """The modality gap of Liang et al., "Mind the Gap" (NeurIPS 2022),
    Sec. 4.1: ||(1/n) sum_i x_i - (1/m) sum_j y_j|| with x_i, y_j the
    L2-normalised image and text embeddings (all rows of each modality)."""
    return float(np.linalg.norm(unit_mean(image, chunk) - unit_mean(text, chunk)))


def instance_gap(image, text, pair_image_rows, pair_text_rows,
                 chunk: int = _CHUNK) -> float:
    """Instance-wise gap: mean over pairs of ||x_k - y_k|| between the
    L2-normalised paired rows (the "L2I" of Schrodi et al. 2025, Sec. 3; the
    per-pair version of Liang et al.'s gap). NaN without pairs."""
    ii, tt = checked_pairs(image, text, pair_image_rows, pair_text_rows)
    if ii.size == 0:
        return float("nan")
    cos = _paired_cosines(image, text, ii, tt, chunk)
    return float(np.mean(np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None))))


RMG_CONVENTION = ("Schrodi et al. 2025 (authors' code lmb-freiburg/two-effects-one-trigger, "
                  "compute_rmg): d(x,y) = (1 - cos(x,y))/2 in [0,1] in numerator AND "
                  "denominator; RMG = mean_k d(x_k,y_k) / (mean_k d(x_k,y_k) + "
                  "(mean_{i!=j} d(x_i,x_j) + mean_{i!=j} d(y_i,y_j)) / 2); intra terms "
                  "over all rows of each modality, one caption per image")


@dataclass(frozen=True)
class RelativeModalityGap:
    """RMG and its parts (all in the cosine dissimilarity d = (1 - cos) / 2)."""

    value: float
    matching: float          # mean_k d(x_k, y_k) over pairs
    intra_image: float       # mean_{i != j} d(x_i, x_j)
    intra_text: float        # mean_{i != j} d(y_i, y_j)
    n_pairs: int
    convention: str = RMG_CONVENTION


def _mean_offdiag_cos(x, chunk: int) -> float:
    """mean over i != j of cos(x_i, x_j) in O(N d): (||s||^2 - N) / (N (N-1)),
    s the sum of the unit rows."""
    n = x.shape[0]
    s = np.zeros(x.shape[1], dtype=np.float64)
    for sl in row_chunks(n, chunk):
        s += _unit_block(x, sl).sum(axis=0)
    return float((s @ s - n) / (n * (n - 1)))


def relative_modality_gap(image, text, pair_image_rows, pair_text_rows,
                          chunk: int = _CHUNK) -> RelativeModalityGap:
    """Relative modality gap (RMG), Schrodi et al., "Two Effects, One
    Trigger" (ICLR 2025), Sec. 3 "Measuring the modality gap".

    With d(x, y) = 1 - (cos(x, y) + 1) / 2 = (1 - cos) / 2 in [0, 1] (the
    "cosine dissimilarity"),

        RMG = M / (M + (D_img + D_txt) / 2),
        M = (1/N) sum_k d(x_k, y_k)                        (matching pairs),
        D_img = 1/(N(N-1)) sum_{i != j} d(x_i, x_j)        (within images),

    i.e. the denominator is 1/(2N(N-1)) sum_{i != j} [d(x_i,x_j) + d(y_i,y_j)]
    + M. RMG is 0 when pairs coincide and approaches 1 when pairs are far
    apart relative to the spread within each modality.

    Convention (``RMG_CONVENTION``): the numerator uses the same (1 - cos)/2
    as the denominator, as in the authors' own code (compute_rmg in
    lmb-freiburg/two-effects-one-trigger, analysis/gap_precompute.py). Another
    public implementation uses (1 - cos) without the 1/2 in the numerator
    only (and halves the intra term by summing i < j), which inflates RMG. The
    paper's own text was not retrievable when this was written, so the
    authors' code is the reference. The official code also floors M at 1e-3;
    this one does not (RMG = 0 for identical pairs). Intra-modality means run
    over all rows of each modality in O(N d), like the authors' (all images,
    all captions).
    """
    image = validate.embeddings(image, "image embeddings")
    text = validate.embeddings(text, "text embeddings")
    validate.same_width(image, text, "image embeddings", "text embeddings")
    ii, tt = checked_pairs(image, text, pair_image_rows, pair_text_rows)
    if ii.size == 0:
        raise InputError("the relative modality gap needs at least one image-caption pair.")
    matching = float(np.mean((1.0 - _paired_cosines(image, text, ii, tt, chunk)) / 2.0))
    intra_i = (1.0 - _mean_offdiag_cos(image, chunk)) / 2.0
    intra_t = (1.0 - _mean_offdiag_cos(text, chunk)) / 2.0
    den = matching + (intra_i + intra_t) / 2.0
    value = matching / den if den > 0 else float("nan")
    return RelativeModalityGap(value=float(value), matching=matching, intra_image=float(intra_i),
                               intra_text=float(intra_t), n_pairs=int(ii.size))


# --------------------------------------------------------------------------
# Fréchet distance between the modalities' Gaussians


@dataclass(frozen=True)
class Frechet:
    """Fréchet (2-Wasserstein^2) distance of N(mu1, C1) and N(mu2, C2)."""

    total: float
    mean_term: float     # ||mu1 - mu2||^2: what a mean shift can close
    cov_term: float      # tr(C1 + C2 - 2 (C1 C2)^{1/2}): what remains after centring


def _sym_eig(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lam, vec = np.linalg.eigh((c + c.T) / 2.0)
    return np.clip(lam, 0.0, None), vec          # tiny negative rounding -> 0


def trace_sqrt_product(c1: np.ndarray, c2: np.ndarray) -> float:
    """tr((C1 C2)^{1/2}) for symmetric PSD C1, C2, by the symmetric form
    tr((C1^{1/2} C2 C1^{1/2})^{1/2}) (same eigenvalues as C1 C2), with tiny
    negative eigenvalues from rounding clipped to 0."""
    lam, vec = _sym_eig(np.asarray(c1, np.float64))
    s1 = (vec * np.sqrt(lam)) @ vec.T
    m = s1 @ np.asarray(c2, np.float64) @ s1
    mu = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sum(np.sqrt(np.clip(mu, 0.0, None))))


def frechet_distance(mu1, c1, mu2, c2) -> Frechet:
    """Fréchet distance between two Gaussians (Dowson & Landau 1982; the FID
    of Heusel et al., NeurIPS 2017, Eq. 6):

        d^2 = ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}),

    returned with the two terms apart: the mean term is the part of the gap a
    shift of one modality's centroid closes; the covariance term is what
    remains (different shapes). O(d^3)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1, c2 = np.asarray(c1, np.float64), np.asarray(c2, np.float64)
    if mu1.shape != mu2.shape or c1.shape != c2.shape or c1.shape != (mu1.size, mu1.size):
        raise InputError(f"Fréchet distance: shapes differ (means {mu1.shape}, {mu2.shape}; "
                         f"covariances {c1.shape}, {c2.shape}).")
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    cov_term = float(np.trace(c1) + np.trace(c2) - 2.0 * trace_sqrt_product(c1, c2))
    cov_term = max(cov_term, 0.0)
    return Frechet(total=mean_term + cov_term, mean_term=mean_term, cov_term=cov_term)


def frechet_from_summaries(image, text) -> Frechet:
    """:func:`frechet_distance` of two :class:`clipgeom.geometry.ModalitySummary`
    (raw, un-normalised embeddings; population covariance, divisor N)."""
    return frechet_distance(image.mean, image.cov, text.mean, text.cov)


# --------------------------------------------------------------------------
# Effective rank and participation ratio


def covariance_eigenvalues(cov) -> np.ndarray:
    """Eigenvalues of a covariance, descending, rounding negatives clipped to 0."""
    lam = np.linalg.eigvalsh((np.asarray(cov, np.float64) + np.asarray(cov, np.float64).T) / 2)
    return np.clip(lam, 0.0, None)[::-1]


def _drop_rounding(lam: np.ndarray) -> np.ndarray:
    lam = np.asarray(lam, np.float64)
    top = lam.max() if lam.size else 0.0
    return np.where(lam > top * lam.size * 1e-14, lam, 0.0)


def effective_rank_from_eigenvalues(lam) -> float:
    """RankMe (Garrido et al., ICML 2023, Eq. 1; Roy & Vetterli 2007):
    exp(-sum_k p_k log p_k), p_k = s_k / sum s, s the singular values of the
    centred rows. With covariance eigenvalues lam_k = s_k^2 / N, s_k is
    proportional to sqrt(lam_k); eigenvalues at rounding level count as 0.
    (RankMe's epsilon inside the log is not added: 0 log 0 = 0.)"""
    s = np.sqrt(_drop_rounding(lam))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio_from_eigenvalues(lam) -> float:
    """Participation ratio (sum lam)^2 / sum lam^2 of the covariance
    eigenvalues (Gao et al. 2017; Recanatesi et al. 2022): between 1 and d."""
    lam = _drop_rounding(lam)
    den = float(np.sum(lam ** 2))
    return float(np.sum(lam) ** 2 / den) if den > 0 else 0.0


def _centred_covariance(x, chunk: int = _CHUNK) -> np.ndarray:
    x = validate.embeddings(x, "embeddings", allow_zero=True)
    n, d = x.shape
    mean = np.zeros(d)
    for sl in row_chunks(n, chunk):
        mean += np.asarray(x[sl], np.float64).sum(axis=0)
    mean /= n
    scatter = np.zeros((d, d))
    for sl in row_chunks(n, chunk):
        b = np.asarray(x[sl], np.float64) - mean
        scatter += b.T @ b
    return scatter / n


def singular_spectrum(x, chunk: int = _CHUNK) -> np.ndarray:
    """The distribution RankMe takes the entropy of (Garrido et al. 2023, Eq. 1):
    p_k = s_k / sum s of the singular values s_k of the centred rows,
    descending (from the covariance eigenvalues, s_k proportional to sqrt(lam_k);
    eigenvalues at rounding level count as 0). O(N d^2), chunked."""
    s = np.sqrt(_drop_rounding(covariance_eigenvalues(_centred_covariance(x, chunk))))
    total = s.sum()
    return s / total if total > 0 else s


def effective_rank(x, chunk: int = _CHUNK) -> float:
    """RankMe effective rank of the rows of ``x`` (centred), in O(N d^2)."""
    return effective_rank_from_eigenvalues(covariance_eigenvalues(_centred_covariance(x, chunk)))


def participation_ratio(x, chunk: int = _CHUNK) -> float:
    """Participation ratio of the covariance of the rows of ``x``."""
    return participation_ratio_from_eigenvalues(
        covariance_eigenvalues(_centred_covariance(x, chunk)))


# --------------------------------------------------------------------------
# Exact cosine kNN (chunked matrix products) and hubness


def knn_indices(queries: np.ndarray, targets: np.ndarray, k: int, *,
                exclude_self: bool = False) -> np.ndarray:
    """The ``k`` nearest target rows of every query row by cosine, exact,
    from chunked products of the unit rows (memory: one block of about
    8M similarities). Rows of the result are sets (unordered).
    ``exclude_self``: queries and targets are the same set; row i is not its
    own neighbour.

    In float64: at random initialisation a model's embeddings lie in a cone so
    narrow that float32 products cannot order the neighbours (the demo at step
    0: cosines 0.9995-1.0; only 37 % of float32's 10 nearest were float64's)."""
    uq = unit_rows(queries, dtype=np.float64)
    ut = uq if (exclude_self and targets is queries) else unit_rows(targets, dtype=np.float64)
    nq, nt = uq.shape[0], ut.shape[0]
    avail = nt - 1 if exclude_self else nt
    if not 1 <= k <= avail:
        raise InputError(f"k = {k} nearest neighbours needs 1 <= k <= {avail}.")
    block = max(1, min(nq, _KNN_BLOCK // max(nt, 1)))
    out = np.empty((nq, k), dtype=np.int64)
    for sl in row_chunks(nq, block):
        s = uq[sl] @ ut.T
        if exclude_self:
            r = np.arange(sl.start, sl.stop)
            s[r - sl.start, r] = -np.inf
        out[sl] = _top_k_lowest_index_ties(s, k)
    return out


def _top_k_lowest_index_ties(s: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest entries of every row of ``s``, ties
    at the k-th value going to the lowest index (as a stable sort would):
    duplicate items (the same caption twice) make exact ties, and an arbitrary
    choice among them would make mutual-kNN and hubness depend on the order
    of a partition."""
    n = s.shape[1]
    if k >= n:
        return np.broadcast_to(np.arange(n), (s.shape[0], n)).copy()
    kth = np.partition(s, n - k, axis=1)[:, n - k][:, None]
    above = s > kth
    tied = s == kth
    need = k - above.sum(axis=1)
    chosen = above | tied
    # only rows with more ties at the k-th value than places need the count
    over = np.nonzero(tied.sum(axis=1) > need)[0]
    if over.size:
        t = tied[over]
        chosen[over] = above[over] | (t & (np.cumsum(t, axis=1) <= need[over, None]))
    return np.nonzero(chosen)[1].reshape(s.shape[0], k)


def knn_both_ways(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_indices` of ``a`` -> ``b`` and of ``b`` -> ``a`` from one
    pass of chunked products: each block of ``a`` rows gives the row-wise
    top k, and its column-wise top k is merged into a running top k of every
    ``b`` row (exact; half the products of two calls). Float64, and ties at
    the k-th value go to the lowest index both ways, as in
    :func:`knn_indices`: with duplicate captions, a partition's arbitrary
    choice made the cross-modal hubness differ between CPUs (numpy's
    AVX-512 partition orders ties otherwise than its AVX2 one)."""
    ua, ub = unit_rows(a, dtype=np.float64), unit_rows(b, dtype=np.float64)
    na, nb = ua.shape[0], ub.shape[0]
    if not (1 <= k <= nb and k <= na):
        raise InputError(f"k = {k} nearest neighbours needs 1 <= k <= {min(na, nb)}.")
    block = max(k, min(na, _KNN_BLOCK // max(nb, 1)))
    a2b = np.empty((na, k), dtype=np.int64)
    # Running top k of every b row over the a rows seen so far, [nb, k], kept
    # in increasing a-row order, so that candidates stay in index order below.
    best_val = np.empty((nb, 0))
    best_idx = np.empty((nb, 0), dtype=np.int64)
    for sl in row_chunks(na, block):
        s = ua[sl] @ ub.T
        a2b[sl] = _top_k_lowest_index_ties(s, k)
        vals = np.concatenate([best_val, s.T], axis=1)
        idx = np.concatenate([best_idx, np.broadcast_to(
            np.arange(sl.start, sl.stop), (nb, sl.stop - sl.start))], axis=1)
        pick = _top_k_lowest_index_ties(vals, min(k, vals.shape[1]))
        best_val = np.take_along_axis(vals, pick, axis=1)
        best_idx = np.take_along_axis(idx, pick, axis=1)
    return a2b, np.ascontiguousarray(best_idx)


def k_occurrence(knn: np.ndarray, n_targets: int) -> np.ndarray:
    """N_k(j): how many queries have target j among their k nearest
    (Radovanović et al. 2010, Sec. 3)."""
    return np.bincount(np.asarray(knn).ravel(), minlength=n_targets)


def skewness(counts) -> float:
    """Sample skewness E[(N - mu)^3] / sigma^3 (population moments, as the
    hubness measure S_{N_k} of Radovanović et al. 2010, Eq. 1). A constant
    vector (no hubs at all) has skewness 0."""
    c = np.asarray(counts, np.float64)
    dev = c - c.mean()
    var = float(np.mean(dev ** 2))
    if var <= 0:
        return 0.0
    return float(np.mean(dev ** 3) / var ** 1.5)


@dataclass(frozen=True)
class Hubness:
    """Hubness of one target set under k-nearest-neighbour queries."""

    k: int
    skew: float
    counts: np.ndarray          # N_k of each target in ``rows`` order
    rows: np.ndarray            # dataset row of each target
    n_queries: int
    sampled: bool
    note: str = ""

    def top(self, m: int = TOP_HUBS) -> list[dict]:
        """The ``m`` most frequent neighbours, largest count first (ties: lower row)."""
        order = np.lexsort((self.rows, -self.counts))[:m]
        return [{"row": int(self.rows[i]), "count": int(self.counts[i])} for i in order]


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def _adapt_k(k: int, avail: int) -> int:
    if avail < 1:
        raise InputError("hubness needs at least 2 rows.")
    return int(max(1, min(k, avail)))


def hubness(x, k: int = DEFAULT_K, *, queries=None, sample: int = HUBNESS_SAMPLE,
            seed: int = 0) -> Hubness:
    """Hubness (Radovanović et al., "Hubs in Space", JMLR 2010): skewness of
    the k-occurrence N_k over the rows of ``x`` by cosine similarity.

    Without ``queries``: each row's k nearest other rows of ``x``
    (within-modality). With ``queries`` (another modality): each query's k
    nearest rows of ``x`` (cross-modal: queries -> targets ``x``). Exact kNN
    by chunked matrix products; when a set has more than ``sample`` rows a
    seeded sample of ``sample`` rows is used (``sampled``; counts then refer to
    the sample). ``k`` is lowered to the rows available. The skewness grows
    with the number of rows (Radovanović et al. Sec. 4), so compare values at
    equal ``len(rows)``."""
    x = validate.embeddings(x, "embeddings")
    tr = _sample(x.shape[0], sample, seed)
    xt = np.asarray(x[tr], dtype=np.float32)
    notes = []
    if queries is None:
        kk = _adapt_k(k, len(tr) - 1)
        idx = knn_indices(xt, xt, kk, exclude_self=True)
        nq = len(tr)
        sampled = len(tr) < x.shape[0]
    else:
        q = validate.embeddings(queries, "query embeddings")
        validate.same_width(q, x, "query embeddings", "embeddings")
        qr = _sample(q.shape[0], sample, seed)
        kk = _adapt_k(k, len(tr))
        idx = knn_indices(np.asarray(q[qr], dtype=np.float32), xt, kk)
        nq = len(qr)
        sampled = len(tr) < x.shape[0] or len(qr) < q.shape[0]
    if kk != k:
        notes.append(f"k lowered from {k} to {kk} (only {len(tr)} rows)")
    if sampled:
        notes.append(f"exact kNN on a seeded sample (seed {seed}) of at most {sample} rows "
                     "per modality")
    counts = k_occurrence(idx, len(tr))
    return Hubness(k=kk, skew=skewness(counts), counts=counts, rows=tr, n_queries=nq,
                   sampled=sampled, note="; ".join(notes))


def modality_hubness(image, text, k: int = DEFAULT_K, *, sample: int = HUBNESS_SAMPLE,
                     seed: int = 0) -> dict:
    """Within- and cross-modal hubness of both modalities (report sections).

    ``image`` / ``text``: {k, skew, top, n_used, sampled, note, cross}, where
    ``cross`` is the hubness of that modality's rows as targets of the other
    modality's queries (text -> image for the image entry, image -> text for
    the text entry)."""
    image = validate.embeddings(image, "image embeddings")
    text = validate.embeddings(text, "text embeddings")
    validate.same_width(image, text, "image embeddings", "text embeddings")
    ri, rt = _sample(image.shape[0], sample, seed), _sample(text.shape[0], sample, seed)
    xi, xt = np.asarray(image[ri], np.float32), np.asarray(text[rt], np.float32)
    kc = _adapt_k(k, min(len(ri), len(rt)))
    i2t, t2i = knn_both_ways(xi, xt, kc)
    sampled = len(ri) < image.shape[0] or len(rt) < text.shape[0]
    out = {}
    for name, x, rows, n_all, to_me, queries in (
            ("image", xi, ri, image.shape[0], t2i, "text"),
            ("text", xt, rt, text.shape[0], i2t, "image")):
        kw = _adapt_k(k, len(rows) - 1)
        within = k_occurrence(knn_indices(x, x, kw, exclude_self=True), len(rows))
        w = Hubness(k=kw, skew=skewness(within), counts=within, rows=rows,
                    n_queries=len(rows), sampled=sampled)
        cross = k_occurrence(to_me, len(rows))
        c = Hubness(k=kc, skew=skewness(cross), counts=cross, rows=rows,
                    n_queries=len(to_me), sampled=sampled)
        notes = [f"k lowered from {k} to {kw} within, {kc} across (few rows)"
                 if kw != k or kc != k else "",
                 f"exact kNN on a seeded sample (seed {seed}) of at most {sample} rows per "
                 "modality; the skewness grows with the rows used, so compare it at equal "
                 "n_used" if sampled else ""]
        out[name] = {"k": w.k, "skew": w.skew, "top": w.top(), "n_used": int(len(rows)),
                     "n_rows": int(n_all), "sampled": sampled,
                     "note": "; ".join(n for n in notes if n),
                     "cross": {"queries": queries, "k": c.k, "skew": c.skew, "top": c.top(),
                               "n_queries": c.n_queries}}
    return out


# --------------------------------------------------------------------------
# Cross-space similarity of row-aligned sets


def linear_cka(x, y, chunk: int = _CHUNK) -> float:
    """Linear CKA (Kornblith et al., ICML 2019, Eq. 5 with linear kernels):

        CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),

    Xc, Yc the column-centred row-aligned matrices (widths may differ). Its
    feature-space form costs O(N (dx + dy)^2) with two chunked passes (means,
    then centred cross-products), never an N x N Gram matrix. Invariant to
    orthogonal transforms and isotropic scaling of either side."""
    x = validate.embeddings(x, "first embeddings", allow_zero=True)
    y = validate.embeddings(y, "second embeddings", allow_zero=True)
    if x.shape[0] != y.shape[0]:
        raise InputError(f"CKA needs row-aligned sets (rows {x.shape[0]} vs {y.shape[0]}).")
    n = x.shape[0]
    mx = np.zeros(x.shape[1])
    my = np.zeros(y.shape[1])
    for sl in row_chunks(n, chunk):
        mx += np.asarray(x[sl], np.float64).sum(0)
        my += np.asarray(y[sl], np.float64).sum(0)
    mx /= n
    my /= n
    xx = np.zeros((x.shape[1], x.shape[1]))
    yy = np.zeros((y.shape[1], y.shape[1]))
    xy = np.zeros((x.shape[1], y.shape[1]))
    for sl in row_chunks(n, chunk):
        a = np.asarray(x[sl], np.float64) - mx
        b = np.asarray(y[sl], np.float64) - my
        xx += a.T @ a
        yy += b.T @ b
        xy += a.T @ b
    den = np.linalg.norm(xx) * np.linalg.norm(yy)
    return float(np.sum(xy ** 2) / den) if den > 0 else float("nan")


def mutual_knn(x, y, k: int = DEFAULT_K) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al., "The Platonic
    Representation Hypothesis", ICML 2024, Sec. 2 and App. A): for each item
    i, the fraction of its k nearest neighbours (cosine, itself excluded) in
    space ``x`` that are also among its k nearest in space ``y``; averaged
    over items. Exact, O(n^2 (dx + dy)) by chunked products: use a sample.

    The value depends on n: with more items the k neighbours are a smaller
    fraction of the set and the overlap falls (Huh et al. report it on fixed
    sample sizes), so compare values only at equal n."""
    x = validate.embeddings(x, "first embeddings")
    y = validate.embeddings(y, "second embeddings")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"mutual-kNN needs row-aligned sets (rows {x.shape[0]} vs "
                         f"{y.shape[0]}).")
    n = x.shape[0]
    k = _adapt_k(k, n - 1)
    a = knn_indices(x, x, k, exclude_self=True)
    b = knn_indices(y, y, k, exclude_self=True)
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    shared = np.sum(both[:, 1:] == both[:, :-1], axis=1)     # each set has distinct rows
    return float(np.mean(shared / k))


@dataclass(frozen=True)
class CrossSpace:
    cka: float
    mutual_knn: float
    k: int
    conformity_spearman: float
    n_used: int
    sampled: bool
    note: str = field(default="")


def cross_space_similarity(x, y, k: int = DEFAULT_K, *, max_rows: int = CROSS_SAMPLE,
                           seed: int = 0) -> CrossSpace:
    """Linear CKA, mutual-kNN@k and the Spearman correlation of the items'
    conformity (Double-Ellipsoid Def. 1) under the two spaces, for row-aligned
    ``x`` and ``y`` (row i is the same item: an image and its caption, or one
    modality under two models). Runs on a seeded sample of at most
    ``max_rows`` rows (all three on the same rows); mutual-kNN falls with the
    sample size, so it is comparable only at equal ``n_used``."""
    from .conformity import exact_conformity

    x = validate.embeddings(x, "first embeddings")
    y = validate.embeddings(y, "second embeddings")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"cross-space measures need row-aligned sets (rows {x.shape[0]} "
                         f"vs {y.shape[0]}).")
    if x.shape[0] < 3:
        raise InputError("cross-space measures need at least 3 aligned rows.")
    pick = _sample(x.shape[0], max_rows, seed)
    xs = np.asarray(x[pick], np.float32)
    ys = np.asarray(y[pick], np.float32)
    kk = _adapt_k(k, len(pick) - 1)
    notes = []
    if len(pick) < x.shape[0]:
        notes.append(f"seeded sample (seed {seed}) of {len(pick)} of {x.shape[0]} rows")
    if kk != k:
        notes.append(f"k lowered from {k} to {kk}")
    notes.append(MUTUAL_KNN_NOTE)
    return CrossSpace(cka=linear_cka(xs, ys), mutual_knn=mutual_knn(xs, ys, kk), k=kk,
                      conformity_spearman=spearman(exact_conformity(xs), exact_conformity(ys)),
                      n_used=int(len(pick)), sampled=len(pick) < x.shape[0],
                      note="; ".join(notes))


# --------------------------------------------------------------------------
# Whitened likelihood (Betser, Levi & Gilboa 2025)


@dataclass(frozen=True)
class WhitenedLikelihood:
    log_likelihood: np.ndarray    # per row
    rank: int                     # numerical rank of the covariance
    ridge: float                  # epsilon added to every eigenvalue (0 if full rank)
    note: str = ""


def whitening_eigh(cov) -> tuple[np.ndarray, np.ndarray, int, float]:
    """(eigenvalues + ridge, eigenvectors, rank, ridge) of a covariance.

    Full rank: W = C^{-1/2} exactly (ridge 0). Rank-deficient (an eigenvalue
    below 1e-10 of the largest, e.g. n <= d): W = (C + eps I)^{-1/2} with
    eps = 1e-6 * mean eigenvalue, a small ridge instead of dropping the null
    space (a regularised pseudo-inverse square root)."""
    lam, vec = _sym_eig(np.asarray(cov, np.float64))
    top = float(lam.max()) if lam.size else 0.0
    if top <= 0:
        raise InputError("the covariance is zero: every row is the same vector, "
                         "so whitening is undefined.")
    rank = int(np.sum(lam > top * 1e-10))
    ridge = 0.0 if rank == lam.size else 1e-6 * float(lam.mean())
    return lam + ridge, vec, rank, ridge


def whitened_log_likelihood(x, mean=None, cov=None, *, chunk: int = _CHUNK
                            ) -> WhitenedLikelihood:
    """Whitened log-likelihood of Betser, Levi & Gilboa, "Whitened CLIP as a
    Likelihood Surrogate of Images and Captions" (ICML 2025), Sec. 3:

        l(x) = -1/2 (d log 2 pi + ||W (x - m)||^2),  W = C^{-1/2},

    m, C the mean and (population) covariance of the modality (defaults: of
    ``x`` itself), so W x is standard normal under the Gaussian model. When C
    is rank-deficient W = (C + eps I)^{-1/2}, see :func:`whitening_eigh`.
    O(N d^2), chunked."""
    x = validate.embeddings(x, "embeddings", allow_zero=True)
    if mean is None or cov is None:
        from .geometry import summarize
        s = summarize(x)
        mean, cov = s.mean, s.cov
    lam, vec, rank, ridge = whitening_eigh(cov)
    proj = vec / np.sqrt(lam)                      # columns: eigvecs / sqrt(lam)
    mean = np.asarray(mean, np.float64)
    d = x.shape[1]
    out = np.empty(x.shape[0])
    for sl in row_chunks(x.shape[0], chunk):
        z = (np.asarray(x[sl], np.float64) - mean) @ proj
        out[sl] = -0.5 * (d * math.log(2 * math.pi) + np.einsum("ij,ij->i", z, z))
    note = "" if ridge == 0 else (f"covariance rank {rank} < {d} (n = {x.shape[0]}): "
                                  f"whitened with a ridge of {ridge:.3g}")
    return WhitenedLikelihood(log_likelihood=out, rank=rank, ridge=ridge, note=note)


def likelihood_section(x, summary, conformity_exact: Optional[np.ndarray] = None) -> dict:
    """Report block: whitened log-likelihood statistics and their Spearman
    correlation with exact conformity (Betser et al. 2025 relate the
    likelihood to how typical an item is)."""
    from .conformity import exact_conformity

    wl = whitened_log_likelihood(x, summary.mean, summary.cov)
    conf = exact_conformity(x) if conformity_exact is None else conformity_exact
    ll = wl.log_likelihood
    return {"conformity_spearman": spearman(ll, conf), "mean": float(ll.mean()),
            "std": float(ll.std()), "rank": wl.rank, "ridge": wl.ridge, "note": wl.note}
