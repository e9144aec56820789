"""Mergeable statistics of embedding rows: one code path for streaming and for Ray.

A pass over a (memory-mapped) array is a map over row blocks and a merge:
each block gives a partial result, ``a.merge(b)`` combines two partials of
consecutive blocks (associative; means and scatter matrices use the pairwise
update of Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm
for computing sample variances", 1979, so merging is as stable as one pass),
and ``finalize()`` turns the merged partial into statistics. An engine runs
the map: :class:`LocalEngine` block after block in this process (memory: one
block), :class:`clipgeom.parallel.PoolEngine` (the default "local" engine) on
one worker process per core, :class:`RayEngine` as Ray tasks (``python -m clipgeom report NAME
--engine ray``). Both fold the partials in block order, so they give the same
numbers.

The report's statistics over all rows take four kinds of pass per modality:

1. :func:`first_pass` (:class:`FirstPartial`): count, mean and d x d scatter
   (float64), per-feature min/max, norm moments of ||v||, the sum of unit rows
   s = sum_k v_k / ||v_k|| (exact conformity, Double-Ellipsoid Def. 1:
   C(v_j) = (u_j . s - 1) / (N - 1); the Liang et al. centroid; RMG's intra
   terms) and the Gram matrix of the unit rows (isotropy's eigenvectors).
2. :func:`second_pass` (:class:`SecondPartial`), given the first pass's
   results: moments of ||v - m|| (the thin shell, Eq. 1-4), exact conformity
   and cos(m, v) (Def. 1-2, their least-squares fit), the whitened
   log-likelihood (Betser et al. 2025), isotropy's log Z (merged by
   log-add-exp), X^T W of the alpha-shifted conformity (Eq. 9-10), and
   histograms of chosen features on fixed bins.
3. :func:`shift_range_pass` and :func:`shift_histogram_pass`: the range, then
   the histograms on fixed bins, of the alpha-shifted conformity (Fig. 11).
4. :func:`pairs_pass`: cosines of image-caption pairs (instance gap, RMG).

Per-row values a statistic needs whole (ranks for a Spearman correlation)
travel as ``kept`` arrays of one float per row, never as rows of the matrix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np

from ._chunks import row_chunks
from .errors import InputError

BLOCK_ROWS = 16384            # rows per block: ~64 MB of float64 at d = 512


# --------------------------------------------------------------------------
# Building blocks: co-moments and histograms on fixed bins


@dataclass(frozen=True)
class Comoments:
    """Count, mean and scatter sum_k (x_k - mean)(x_k - mean)^T of k columns.

    ``scatter`` is None when only means are kept. :meth:`merge` is Chan et
    al.'s pairwise update: with delta = mean_b - mean_a and n = n_a + n_b,
    mean = mean_a + delta n_b / n and
    scatter = scatter_a + scatter_b + delta delta^T n_a n_b / n.
    """

    n: int
    mean: np.ndarray
    scatter: Optional[np.ndarray]

    @classmethod
    def of(cls, block: np.ndarray, *, scatter: bool = True) -> "Comoments":
        """The co-moments of the rows of ``block`` ([rows, k], float64)."""
        block = np.asarray(block, dtype=np.float64)
        if block.ndim == 1:
            block = block[:, None]
        n, k = block.shape
        if n == 0:
            return cls.empty(k, scatter=scatter)
        mean = block.mean(axis=0)
        sc = None
        if scatter:
            c = block - mean
            sc = c.T @ c
        return cls(n=int(n), mean=mean, scatter=sc)

    @classmethod
    def empty(cls, k: int, *, scatter: bool = True) -> "Comoments":
        return cls(n=0, mean=np.zeros(k), scatter=np.zeros((k, k)) if scatter else None)

    def merge(self, other: "Comoments") -> "Comoments":
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        sc = None
        if self.scatter is not None and other.scatter is not None:
            sc = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        return Comoments(n=n, mean=mean, scatter=sc)

    def finalize(self) -> "Comoments":
        return self

    @property
    def cov(self) -> np.ndarray:
        """Population covariance (divisor n)."""
        return self.scatter / self.n

    @property
    def var(self) -> np.ndarray:
        return np.diag(self.scatter) / self.n


@dataclass(frozen=True)
class FixedHistogram:
    """Counts of values on fixed bin edges (``np.histogram`` semantics: the
    last bin includes its right edge). Merging adds counts."""

    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, values, edges) -> "FixedHistogram":
        edges = np.asarray(edges, dtype=np.float64)
        counts = np.histogram(np.asarray(values, np.float64), edges)[0].astype(np.int64)
        return cls(edges=edges, counts=counts)

    def merge(self, other: "FixedHistogram") -> "FixedHistogram":
        return FixedHistogram(edges=self.edges, counts=self.counts + other.counts)


def pooled_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """``bins`` equal-width bins over [lo, hi] (a single value: [lo, lo + 1]),
    the binning of :func:`clipgeom.geometry.histogram_kl`."""
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, bins + 1)


def _merge_kept(a: dict, b: dict) -> dict:
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, []).extend(v)
    return out


def _kept_arrays(kept: dict) -> dict:
    return {k: (np.concatenate(v) if v else np.empty(0)) for k, v in kept.items()}


# --------------------------------------------------------------------------
# Pass 1: moments, norms, unit rows


@dataclass(frozen=True)
class FirstPartial:
    """Pass-1 partial result of one modality over a range of rows."""

    vec: Comoments                 # rows v: mean and d x d scatter (float64)
    norm: Comoments                # ||v||
    col_min: np.ndarray
    col_max: np.ndarray
    unit_sum: np.ndarray           # sum of v / ||v|| (zero rows add nothing)
    unit_gram: Optional[np.ndarray]  # sum of u u^T
    zero_rows: int

    def merge(self, other: "FirstPartial") -> "FirstPartial":
        gram = None
        if self.unit_gram is not None and other.unit_gram is not None:
            gram = self.unit_gram + other.unit_gram
        return FirstPartial(vec=self.vec.merge(other.vec), norm=self.norm.merge(other.norm),
                            col_min=np.minimum(self.col_min, other.col_min),
                            col_max=np.maximum(self.col_max, other.col_max),
                            unit_sum=self.unit_sum + other.unit_sum, unit_gram=gram,
                            zero_rows=self.zero_rows + other.zero_rows)

    def finalize(self) -> "FirstMoments":
        if self.vec.n == 0:
            raise InputError("no rows to summarise.")
        cov = self.vec.cov if self.vec.scatter is not None else None
        return FirstMoments(n=self.vec.n, mean=self.vec.mean, cov=cov,
                            norm_mean=float(self.norm.mean[0]),
                            norm_var=float(self.norm.var[0]),
                            col_min=self.col_min, col_max=self.col_max,
                            unit_sum=self.unit_sum, unit_gram=self.unit_gram,
                            zero_rows=self.zero_rows)


@dataclass(frozen=True)
class FirstMoments:
    """Finalised pass-1 statistics of one modality.

    Duck-types :class:`clipgeom.geometry.ModalitySummary`'s ``mean``,
    ``std``, ``variance``, ``cov`` and ``n``, so separability (Eq. 5),
    offsets, ODD (Eq. 6) and the Fréchet terms take it directly.
    """

    n: int
    mean: np.ndarray
    cov: Optional[np.ndarray]      # population covariance (None: not computed)
    norm_mean: float               # E||v||
    norm_var: float                # var ||v|| (population)
    col_min: np.ndarray
    col_max: np.ndarray
    unit_sum: np.ndarray
    unit_gram: Optional[np.ndarray]
    zero_rows: int

    @property
    def variance(self) -> np.ndarray:
        return np.clip(np.diag(self.cov), 0.0, None)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)

    @property
    def mean_sq_norm(self) -> float:
        """E||v||^2."""
        return self.norm_var + self.norm_mean ** 2

    @property
    def unit_mean(self) -> np.ndarray:
        """Mean of the L2-normalised rows (Liang et al. 2022's centroid)."""
        self.require_directions("the mean of the normalised rows")
        return self.unit_sum / self.n

    @property
    def mean_offdiag_cos(self) -> float:
        """Mean over i != j of cos(v_i, v_j) = (||s||^2 - N) / (N (N - 1))."""
        self.require_directions("the mean pairwise cosine")
        s = self.unit_sum
        return float((s @ s - self.n) / (self.n * (self.n - 1)))

    def require_directions(self, what: str) -> None:
        if self.zero_rows:
            raise InputError(f"{self.zero_rows} all-zero row(s): a zero vector has no "
                             f"direction, so {what} is undefined. Remove those rows.")


def first_pass(sources: dict, start: int, stop: int, opts: dict) -> FirstPartial:
    """Pass 1 over rows [start, stop) of ``sources["x"]``.

    ``opts``: ``scatter`` (the d x d scatter, default True), ``gram`` (the
    Gram matrix of unit rows, default False).
    """
    block = np.asarray(sources["x"][start:stop], dtype=np.float64)
    d = block.shape[1]
    if block.shape[0] == 0:
        return FirstPartial(vec=Comoments.empty(d, scatter=opts.get("scatter", True)),
                            norm=Comoments.empty(1), col_min=np.full(d, np.inf),
                            col_max=np.full(d, -np.inf), unit_sum=np.zeros(d),
                            unit_gram=np.zeros((d, d)) if opts.get("gram") else None,
                            zero_rows=0)
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    zero = norms == 0
    inv = 1.0 / np.where(zero, 1.0, norms)
    inv[zero] = 0.0
    unit = block * inv[:, None]
    gram = unit.T @ unit if opts.get("gram") else None
    return FirstPartial(vec=Comoments.of(block, scatter=opts.get("scatter", True)),
                        norm=Comoments.of(norms), col_min=block.min(axis=0),
                        col_max=block.max(axis=0), unit_sum=unit.sum(axis=0),
                        unit_gram=gram, zero_rows=int(zero.sum()))


# --------------------------------------------------------------------------
# Pass 2: quantities that need pass 1's mean and sum of unit rows


# Per-row quantities of pass 2, in the column order of SecondPartial.rows.
ROW_COLUMNS = ("centred_norm", "norm", "conformity", "cos_mean", "log_likelihood")


@dataclass(frozen=True)
class SecondConstants:
    """What pass 2 needs from pass 1 (and from the caller)."""

    mean: np.ndarray
    unit_sum: Optional[np.ndarray] = None        # exact conformity needs it
    n_total: int = 0
    whitening: Optional[np.ndarray] = None       # d x d: eigvecs / sqrt(eigvals)
    iso_vecs: Optional[np.ndarray] = None        # oriented eigenvectors of sum u u^T
    alphas: Optional[np.ndarray] = None          # alpha shifts (Eq. 9)
    feature_edges: dict = field(default_factory=dict)   # feature -> bin edges
    keep: tuple = ()                             # names in ROW_COLUMNS kept per row


@dataclass(frozen=True)
class SecondPartial:
    """Pass-2 partial result of one modality."""

    rows: Comoments                  # co-moments of the ROW_COLUMNS computed
    columns: tuple                   # which of ROW_COLUMNS ``rows`` holds
    log_z: Optional[np.ndarray]      # isotropy: log sum_j exp(<u_j, e_i>) per eigvec
    xtw: Optional[np.ndarray]        # [d, A]: sum_j v_j w_j(alpha)
    wsum: Optional[np.ndarray]       # [A]: sum_j w_j(alpha)
    features: dict                   # feature -> FixedHistogram
    kept: dict                       # name -> list of per-row arrays, in row order

    def merge(self, other: "SecondPartial") -> "SecondPartial":
        return SecondPartial(
            rows=self.rows.merge(other.rows), columns=self.columns,
            log_z=None if self.log_z is None else np.logaddexp(self.log_z, other.log_z),
            xtw=None if self.xtw is None else self.xtw + other.xtw,
            wsum=None if self.wsum is None else self.wsum + other.wsum,
            features={f: h.merge(other.features[f]) for f, h in self.features.items()},
            kept=_merge_kept(self.kept, other.kept))

    def finalize(self) -> "SecondMoments":
        return SecondMoments(rows=self.rows, columns=self.columns, log_z=self.log_z,
                             xtw=self.xtw, wsum=self.wsum, features=self.features,
                             kept=_kept_arrays(self.kept))


@dataclass(frozen=True)
class SecondMoments:
    """Finalised pass-2 statistics (see :class:`SecondPartial`)."""

    rows: Comoments
    columns: tuple
    log_z: Optional[np.ndarray]
    xtw: Optional[np.ndarray]
    wsum: Optional[np.ndarray]
    features: dict
    kept: dict

    def mean(self, column: str) -> float:
        return float(self.rows.mean[self.columns.index(column)])

    def var(self, column: str) -> float:
        return float(self.rows.var[self.columns.index(column)])

    def cov(self, a: str, b: str) -> float:
        i, j = self.columns.index(a), self.columns.index(b)
        return float(self.rows.scatter[i, j] / self.rows.n)


def _shift_weights(nn: np.ndarray, vm: np.ndarray, mm: float, alphas: np.ndarray,
                   start: int) -> np.ndarray:
    """w_j(alpha) = 1 / ||v_j - alpha m|| from ||v||^2, v.m and ||m||^2 (Eq. 9)."""
    n2 = nn[:, None] - 2 * alphas[None, :] * vm[:, None] + alphas[None, :] ** 2 * mm
    if np.any(n2 <= 1e-24):
        row, col = np.argwhere(n2 <= 1e-24)[0]
        raise InputError(f"alpha={alphas[col]} maps row {start + int(row)} to the zero vector.")
    return 1.0 / np.sqrt(n2)


# Rows per float32 product call, on a grid of absolute row numbers (see product32).
F32_GRID = 256
# Whitened directions with an eigenvalue at least this fraction of the mean
# eigenvalue take float32 products (see whitened_sq_norms).
F32_MIN_EIGEN_FRACTION = 1e-2


def product32(rows: np.ndarray, mat: np.ndarray, start: int) -> np.ndarray:
    """``rows @ mat`` in float32 (2.4x faster than float64 here), the same bit
    for bit however the rows are split into blocks.

    OpenBLAS's sgemm rounds a row differently depending on where it falls in
    the call (1e-6 relative between two block splits), so the products are
    taken on a fixed grid: calls of F32_GRID rows aligned to absolute row
    numbers (``start`` is the first row's), each through the same buffer,
    rows outside this block zero. A row's result then depends only on the
    row, and merged partials equal one pass (the mergeable-statistics
    contract) whatever the blocks.
    """
    n, d = rows.shape
    m = np.ascontiguousarray(mat, dtype=np.float32)
    out = np.empty((n, m.shape[1]), np.float32)
    buf = np.zeros((F32_GRID, d), np.float32)
    prod = np.empty((F32_GRID, m.shape[1]), np.float32)
    stop = start + n
    for cs in range(start - start % F32_GRID, stop, F32_GRID):
        lo, hi = max(cs, start), min(cs + F32_GRID, stop)
        if hi - lo < F32_GRID:
            buf[:] = 0.0
        buf[lo - cs:hi - cs] = rows[lo - start:hi - start]
        np.matmul(buf, m, out=prod)
        out[lo - start:hi - start] = prod[lo - cs:hi - cs]
    return out


def whitened_sq_norms(centred: np.ndarray, whitening: np.ndarray, start: int) -> np.ndarray:
    """||W^T (v - m)||^2 per row (the whitened likelihood's Mahalanobis term).

    W's columns are e_k / sqrt(lambda_k). Directions with lambda_k at least
    F32_MIN_EIGEN_FRACTION of the mean eigenvalue use float32 products
    (:func:`product32`): there float32's rounding of (v - m) is amplified by
    at most sqrt(mean lambda / lambda_k) <= 10 in a whitened coordinate, and
    the squared norm is off by < 1e-6 relative (measured: ~4e-7 at d = 24
    with eigenvalues spanning 1e-12 .. 1; 4e-10 on the mean log-likelihood
    at 1,000,000 x 512). Directions of smaller variance (near-singular
    covariances, the ridge) stay float64: in float32 their rounding would be
    amplified 1000x and more (tests/test_moments.py).
    """
    lam = 1.0 / np.einsum("ij,ij->j", whitening, whitening)
    fast = lam >= F32_MIN_EIGEN_FRACTION * lam.mean()
    total = np.zeros(centred.shape[0])
    if fast.any():
        z32 = product32(centred, whitening[:, fast], start).astype(np.float64)
        total += np.einsum("ij,ij->i", z32, z32)
    if not fast.all():
        z = centred @ whitening[:, ~fast]
        total += np.einsum("ij,ij->i", z, z)
    return total


def second_pass(sources: dict, start: int, stop: int, c: SecondConstants) -> SecondPartial:
    """Pass 2 over rows [start, stop) of ``sources["x"]`` (see the module doc)."""
    from .projection import _logsumexp_cols

    block = np.asarray(sources["x"][start:stop], dtype=np.float64)
    nn = np.einsum("ij,ij->i", block, block)
    norms = np.sqrt(nn)
    cols: dict[str, np.ndarray] = {"norm": norms}
    centred = block - c.mean
    cols["centred_norm"] = np.sqrt(np.einsum("ij,ij->i", centred, centred))
    vm = block @ c.mean
    if c.unit_sum is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["conformity"] = (block @ c.unit_sum / norms - 1.0) / (c.n_total - 1)
        mn = float(np.linalg.norm(c.mean))
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["cos_mean"] = vm / mn / norms if mn > 0 else np.full(len(norms), np.nan)
    if c.whitening is not None:
        d = block.shape[1]
        cols["log_likelihood"] = -0.5 * (d * math.log(2 * math.pi)
                                         + whitened_sq_norms(centred, c.whitening, start))
    del centred
    log_z = None
    if c.iso_vecs is not None:
        unit = block / norms[:, None]
        # |<u, e>| <= 1 for unit rows and eigenvectors: float32 products are
        # accurate to ~1e-7 absolute, far below what I1 and I2 resolve
        log_z = _logsumexp_cols(product32(unit, c.iso_vecs, start).astype(np.float64))
        del unit
    xtw = wsum = None
    if c.alphas is not None:
        w = _shift_weights(nn, vm, float(c.mean @ c.mean), c.alphas, start)
        xtw = block.T @ w
        wsum = w.sum(axis=0)
    feats = {f: FixedHistogram.of(block[:, f], e) for f, e in c.feature_edges.items()}
    columns = tuple(k for k in ROW_COLUMNS if k in cols)
    rows = Comoments.of(np.column_stack([cols[k] for k in columns]))
    kept = {k: [cols[k]] for k in c.keep}
    return SecondPartial(rows=rows, columns=columns, log_z=log_z, xtw=xtw, wsum=wsum,
                         features=feats, kept=kept)


# --------------------------------------------------------------------------
# Pass 3: alpha-shifted conformity, its range and its histograms (Fig. 11)


@dataclass(frozen=True)
class ShiftConstants:
    """The alpha-shifted conformity of Eq. 9-10, computed row by row:
    C_j(alpha) = (w_j (v_j . s(alpha) - alpha m . s(alpha)) - 1) / (N - 1),
    s(alpha) = X^T w(alpha) - alpha m sum(w(alpha)).

    For the histogram pass: histogram k bins column ``columns[k]`` on
    ``edges[k]``.
    """

    mean: np.ndarray
    alphas: np.ndarray
    s: np.ndarray                  # [d, A]
    n_total: int
    columns: tuple = ()
    edges: Optional[np.ndarray] = None   # [len(columns), bins + 1]

    @classmethod
    def from_pass(cls, mean, alphas, xtw, wsum, n_total) -> "ShiftConstants":
        alphas = np.asarray(alphas, np.float64)
        s = xtw - mean[:, None] * (alphas * wsum)[None, :]
        return cls(mean=mean, alphas=alphas, s=s, n_total=int(n_total))


def shifted_block(block: np.ndarray, c: ShiftConstants, start: int = 0) -> np.ndarray:
    """[rows, A] shifted conformity of one float64 block."""
    nn = np.einsum("ij,ij->i", block, block)
    w = _shift_weights(nn, block @ c.mean, float(c.mean @ c.mean), c.alphas, start)
    dots = block @ c.s
    dots -= (c.alphas * (c.mean @ c.s))[None, :]
    return (dots * w - 1.0) / (c.n_total - 1)


@dataclass(frozen=True)
class Extremes:
    """Column-wise min and max (merge: min of mins, max of maxes)."""

    lo: np.ndarray
    hi: np.ndarray

    def merge(self, other: "Extremes") -> "Extremes":
        return Extremes(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def finalize(self) -> "Extremes":
        return self


@dataclass(frozen=True)
class Histograms:
    """One histogram per column on fixed edges [A, bins + 1] (merge: add)."""

    counts: np.ndarray             # [A, bins] int64

    def merge(self, other: "Histograms") -> "Histograms":
        return Histograms(self.counts + other.counts)

    def finalize(self) -> "Histograms":
        return self


def shift_range_pass(sources: dict, start: int, stop: int, c: ShiftConstants) -> Extremes:
    conf = shifted_block(np.asarray(sources["x"][start:stop], np.float64), c, start)
    return Extremes(conf.min(axis=0), conf.max(axis=0))


def shift_histogram_pass(sources: dict, start: int, stop: int, c: ShiftConstants
                         ) -> Histograms:
    conf = shifted_block(np.asarray(sources["x"][start:stop], np.float64), c, start)
    counts = np.stack([np.histogram(conf[:, col], c.edges[k])[0]
                       for k, col in enumerate(c.columns)])
    return Histograms(counts.astype(np.int64))


# --------------------------------------------------------------------------
# Pairs: cosines of image-caption pairs (Liang et al. 2022; Schrodi et al. 2025)


def pairs_pass(sources: dict, start: int, stop: int, opts: dict) -> Comoments:
    """Means of ||x_k - y_k|| (unit rows, the instance gap) and of
    (1 - cos(x_k, y_k)) / 2 (RMG's matching term) over pairs [start, stop)."""
    ii = np.asarray(sources["pair_image_rows"][start:stop], dtype=np.int64)
    tt = np.asarray(sources["pair_text_rows"][start:stop], dtype=np.int64)
    a = np.asarray(sources["image"][ii], dtype=np.float64)
    b = np.asarray(sources["text"][tt], dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    cos = np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)
    vals = np.column_stack([np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None)), (1.0 - cos) / 2.0])
    return Comoments.of(vals, scatter=False)


# --------------------------------------------------------------------------
# Engines: where the map runs


Pass = Callable[[dict, int, int, object], object]


# A block is computed in pieces of at most this many bytes of float64 rows.
# glibc returns allocations above 32 MB (its largest mmap threshold) to the
# system at every free, so a 64 MB block's temporaries were fresh pages,
# faulted in and zeroed each time: a third of pass 2's CPU was system time.
PIECE_BYTES = 16 << 20


def piece_rows(sources: dict) -> int:
    """Rows per piece: PIECE_BYTES of float64 at the widest source's width."""
    width = max((a.shape[1] for a in sources.values() if getattr(a, "ndim", 0) == 2),
                default=1)
    return max(256, PIECE_BYTES // (8 * max(int(width), 1)))


def block_partial(fn: Pass, sources: dict, start: int, stop: int, consts):
    """``fn`` over rows [start, stop), in pieces of :func:`piece_rows` rows
    folded in order: what every engine computes for one block (so they agree
    to the bit), with temporaries small enough to be reused."""
    step = piece_rows(sources)
    acc = None
    for s in range(start, max(stop, start + 1), step):
        part = fn(sources, s, min(s + step, stop), consts)
        acc = part if acc is None else acc.merge(part)
    return acc


class LocalEngine:
    """Blocks one after another in this process; partials folded as they come
    (memory: one block and one partial)."""

    name = "local"

    def __init__(self, block_rows: int = BLOCK_ROWS):
        if block_rows < 1:
            raise InputError(f"block_rows must be at least 1, got {block_rows}.")
        self.block_rows = int(block_rows)

    def blocks(self, n: int) -> list[tuple[int, int]]:
        return [(sl.start, sl.stop) for sl in row_chunks(int(n), self.block_rows)]

    def reduce(self, fn: Pass, n: int, sources: dict, consts=None):
        """fn(sources, start, stop, consts) over the row blocks of [0, n), merged."""
        acc = None
        for start, stop in self.blocks(n):
            part = block_partial(fn, sources, start, stop, consts)
            acc = part if acc is None else acc.merge(part)
        if acc is None:
            raise InputError("no rows to process.")
        return acc.finalize()

    def close(self) -> None:
        pass


def engine_for(engine) -> "LocalEngine":
    """An engine from a name ("local", "ray"), an engine, or None (local: the
    blocks on a pool of worker processes, one per core, :mod:`clipgeom.parallel`)."""
    if engine is None or engine == "local":
        from .parallel import PoolEngine

        return PoolEngine()
    if engine == "ray":
        return RayEngine()
    if isinstance(engine, LocalEngine):
        return engine
    raise InputError(f"engine must be 'local' or 'ray', got {engine!r}.")


# Workers (Ray tasks, local worker processes) ---------------------------------

_OPENED: dict = {}               # in a worker: memory maps opened, by descriptor


def source_descriptor(arr):
    """How a worker gets an array: a file it can memory-map (a whole-file
    memory map, as the store opens its arrays), or the array itself."""
    if isinstance(arr, np.memmap) and getattr(arr, "filename", None) \
            and arr.flags.c_contiguous:
        try:
            st = os.stat(arr.filename)
            whole = st.st_size == int(arr.offset) + arr.nbytes
        except OSError:
            whole = False
        if whole:          # (a slice of a memmap keeps its parent's offset: not whole)
            # The file's identity is part of the key: workers outlive a pass and
            # keep maps open, and the store replaces files (same path, new inode).
            return ("mmap", str(arr.filename), int(arr.offset), tuple(arr.shape),
                    arr.dtype.str, (st.st_ino, st.st_mtime_ns))
    return ("array", np.ascontiguousarray(arr))


def resolve(desc):
    """The array a :func:`source_descriptor` describes (maps opened once per worker)."""
    if desc[0] == "mmap":
        arr = _OPENED.get(desc)
        if arr is None:
            _, path, offset, shape, dtype, _identity = desc
            arr = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
            if len(_OPENED) > 16:
                _OPENED.clear()
            _OPENED[desc] = arr
        return arr
    val = desc[1]
    if not isinstance(val, np.ndarray):          # a Ray ObjectRef inside the dict
        import ray
        val = ray.get(val)
    return val


def run_block(fn, descs: dict, start: int, stop: int, consts):
    """A worker's task (Ray or a local worker process): ``fn`` over rows
    [start, stop) of the sources ``descs`` describe (:func:`source_descriptor`)."""
    return block_partial(fn, {k: resolve(v) for k, v in descs.items()}, start, stop, consts)


class RayEngine(LocalEngine):
    """Row blocks as Ray tasks; partials folded in block order on the driver.

    Connects to ``address`` (an existing cluster, e.g. ``ray://host:10001`` or
    ``auto``) or starts a local Ray with ``num_cpus`` CPUs. Memory-mapped
    arrays travel as (file, offset, shape): every worker must see the same
    path (one machine, or a shared file system); other arrays are put in
    Ray's object store once per pass.
    """

    name = "ray"

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = 2,
                 block_rows: int = BLOCK_ROWS, max_in_flight: Optional[int] = None):
        super().__init__(block_rows)
        ray = _import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": num_cpus}
            ray.init(include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **kwargs)
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1) or 1)
        self.max_in_flight = int(max_in_flight or max(2, 2 * cpus))
        self._task = ray.remote(num_cpus=1)(run_block)

    def reduce(self, fn: Pass, n: int, sources: dict, consts=None):
        ray = self._ray
        descs = {}
        for k, v in sources.items():
            d = source_descriptor(v)
            descs[k] = d if d[0] == "mmap" else ("array", ray.put(d[1]))
        consts_ref = ray.put(consts)
        blocks = self.blocks(n)
        if not blocks:
            raise InputError("no rows to process.")
        pending: list = []
        acc = None
        nxt = 0
        try:
            while nxt < len(blocks) or pending:
                while nxt < len(blocks) and len(pending) < self.max_in_flight:
                    start, stop = blocks[nxt]
                    pending.append(self._task.remote(fn, descs, start, stop, consts_ref))
                    nxt += 1
                part = ray.get(pending.pop(0))        # in block order: a left fold
                acc = part if acc is None else acc.merge(part)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        return acc.finalize()

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("the Ray engine needs the 'ray' package, which is not installed: "
                         "pip install 'clipgeom[ray]' (or 'ray[data]'), or use "
                         "--engine local.") from None
    return ray


# --------------------------------------------------------------------------
# Whole-array helpers (one modality, any engine)


def first_moments(x, *, engine=None, scatter: bool = True, gram: bool = False
                  ) -> FirstMoments:
    """Pass 1 over all rows of ``x`` (already validated)."""
    eng = engine_for(engine)
    return eng.reduce(first_pass, x.shape[0], {"x": x}, {"scatter": scatter, "gram": gram})


def second_moments(x, consts: SecondConstants, *, engine=None) -> SecondMoments:
    """Pass 2 over all rows of ``x`` with the constants from pass 1."""
    eng = engine_for(engine)
    return eng.reduce(second_pass, x.shape[0], {"x": x}, consts)


def isotropy_vectors(first: FirstMoments) -> np.ndarray:
    """Eigenvectors of W^T W (unit rows), each oriented so that <e, sum_i w_i> >= 0
    (ties: largest-magnitude entry positive), as :func:`clipgeom.projection.isotropy`."""
    d = first.unit_sum.shape[0]
    _, vecs = np.linalg.eigh(first.unit_gram)
    total = first.unit_sum
    lean = total @ vecs
    scale = np.sqrt(np.sum(total ** 2)) * 1e-12
    big = vecs[np.argmax(np.abs(vecs), axis=0), np.arange(d)]
    sign = np.where(np.abs(lean) > scale, np.sign(lean), np.sign(big))
    return vecs * sign


def isotropy_from_log_z(log_z: np.ndarray) -> dict:
    """I1 = min Z / max Z and I2 = std(Z) / mean(Z) (isotropy paper Eq. 1-2)."""
    z = np.exp(log_z - log_z.max())
    return {"I1": float(z.min() / z.max()), "I2": float(z.std() / z.mean())}


def kl_from_counts(pa, pb, floor: float = 1e-6) -> float:
    """KL(a || b) of two histograms on shared bins, each floored at ``floor``
    and renormalised (:func:`clipgeom.geometry.histogram_kl`)."""
    pa = np.asarray(pa, np.float64)
    pb = np.asarray(pb, np.float64)
    pa = np.maximum(pa / pa.sum(), floor)
    pb = np.maximum(pb / pb.sum(), floor)
    pa /= pa.sum()
    pb /= pb.sum()
    return float(np.sum(pa * np.log(pa / pb)))


def ols_from_moments(sec: SecondMoments, x: str, y: str) -> tuple[float, float]:
    """Least squares y ~ a x + b from co-moments: a = cov(x, y) / var(x)."""
    vx = sec.var(x)
    if not vx > 0:
        return float("nan"), sec.mean(y)
    a = sec.cov(x, y) / vx
    return float(a), float(sec.mean(y) - a * sec.mean(x))


def pearson_from_moments(sec: SecondMoments, x: str, y: str) -> float:
    vx, vy = sec.var(x), sec.var(y)
    if not (vx > 0 and vy > 0):
        return float("nan")
    return float(sec.cov(x, y) / math.sqrt(vx * vy))


def shifted_conformity_kl(image, text, first_image: FirstMoments, first_text: FirstMoments,
                          sec_image: SecondMoments, sec_text: SecondMoments,
                          alphas_image, alphas_text, n_alphas: int, bins: int, *,
                          engine=None) -> np.ndarray:
    """KL(image || text) of the alpha-shifted conformity distributions, one per
    sweep point (Double-Ellipsoid Fig. 11), from two more passes per modality:
    the range (pooled over both modalities per sweep point), then histograms
    on those bins (:func:`clipgeom.geometry.histogram_kl`'s binning).

    ``sec_*`` hold X^T W and sum(w) for ``alphas_*``; sweep point k uses
    column min(k, len(alphas_*) - 1) of each (a single column: unshifted).
    """
    eng = engine_for(engine)
    ci = ShiftConstants.from_pass(first_image.mean, alphas_image, sec_image.xtw,
                                  sec_image.wsum, first_image.n)
    ct = ShiftConstants.from_pass(first_text.mean, alphas_text, sec_text.xtw,
                                  sec_text.wsum, first_text.n)
    ri = eng.reduce(shift_range_pass, image.shape[0], {"x": image}, ci)
    rt = eng.reduce(shift_range_pass, text.shape[0], {"x": text}, ct)
    ki = tuple(min(k, len(ci.alphas) - 1) for k in range(n_alphas))
    kt = tuple(min(k, len(ct.alphas) - 1) for k in range(n_alphas))
    edges = np.stack([pooled_edges(min(ri.lo[a], rt.lo[b]), max(ri.hi[a], rt.hi[b]), bins)
                      for a, b in zip(ki, kt)])
    hi_ = eng.reduce(shift_histogram_pass, image.shape[0], {"x": image},
                     replace(ci, columns=ki, edges=edges))
    ht = eng.reduce(shift_histogram_pass, text.shape[0], {"x": text},
                    replace(ct, columns=kt, edges=edges))
    return np.array([kl_from_counts(hi_.counts[k], ht.counts[k]) for k in range(n_alphas)])


def pair_gaps(image, text, pair_image_rows, pair_text_rows, *, engine=None) -> Comoments:
    """Means over pairs of the unit-row distance and (1 - cos) / 2 (see :func:`pairs_pass`)."""
    eng = engine_for(engine)
    ii = np.asarray(pair_image_rows, dtype=np.int64)
    tt = np.asarray(pair_text_rows, dtype=np.int64)
    return eng.reduce(pairs_pass, len(ii), {"image": image, "text": text,
                                            "pair_image_rows": ii, "pair_text_rows": tt})


def fold(parts: Sequence):
    """Merge partials left to right (what every engine does)."""
    acc = parts[0]
    for p in parts[1:]:
        acc = acc.merge(p)
    return acc
