"""Linear transforms of embedding spaces and their evaluation.

Implements:

* centring, whitening-k, orthogonal Procrustes and least-squares text->image
  alignment, fitted on a train split and evaluated on a test split by the
  CLIP loss and retrieval accuracy (Tyshchuk et al., "On Isotropy of
  Multimodal Embeddings", Sec. 3.1.3, 4.2-4.4, Eq. 4-5, Table 2, Figs. 9-13);
* positive vs random pair cosines (isotropy paper Figs. 9-11);
* the PCA<- back-projection onto class-name text axes and the recovery of
  intra-modal similarities from the inter-modal matrix (Intra-modal
  misalignment supplement, Eq. 4-12).

All functions take raw float arrays, compute in float64 and return float64
arrays or frozen dataclasses; randomness comes only from an explicit ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.linalg import orthogonal_procrustes

from . import validate
from ._chunks import column_mean, row_chunks
from .errors import InputError

METHODS = ("none", "center", "whiten", "procrustes", "lstsq")

# recover_intra_similarity builds an N x d(d+1)/2 design matrix; above these
# limits the problem does not fit comfortably in memory.
MAX_RECOVERY_RANK = 128
MAX_RECOVERY_BYTES = 2 * 1024 ** 3


# --------------------------------------------------------------------------
# small helpers


def _as64(x, name: str, **kw) -> np.ndarray:
    return validate.embeddings(x, name, dtype=np.float64, **kw)


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows (float64); rows are already checked to be non-zero."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _vector(v, d: int, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != (d,):
        raise InputError(f"{name}: expected a vector of length {d}, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: contains NaN or Inf values.")
    return arr


# --------------------------------------------------------------------------
# centring and whitening (isotropy paper Sec. 3.1.3, Table 1-2, Fig. 3-4)


def center(x, mean=None) -> np.ndarray:
    """Subtract a mean vector from every row (isotropy paper Sec. 3.1.3, Fig. 3).

    ``mean`` defaults to the per-feature mean of ``x`` itself (accumulated in
    float64, chunked so memory-mapped input is fine). Pass a mean fitted on a
    train split to centre held-out rows with train statistics. Returns float64.
    """
    x = validate.embeddings(x, "embeddings", min_rows=1 if mean is not None else 2,
                            allow_zero=True)
    if mean is None:
        mu = column_mean(x)
    else:
        mu = _vector(mean, x.shape[1], "mean")
    return np.asarray(x, dtype=np.float64) - mu


@dataclass(frozen=True, eq=False)
class Whitening:
    """A fitted whitening-k transform (isotropy paper Sec. 3.1.3; Su et al. 2021).

    ``apply(x) = ((x - mean) @ components.T) * scale``: centre, rotate onto the
    top-k principal axes, and divide each axis by its standard deviation
    (sample covariance, ddof = 1), so the training rows come out with identity
    k x k covariance.

    Fields: ``mean`` [d], ``components`` [k, d] (orthonormal rows, sorted by
    variance, descending), ``scale`` [k] = 1 / sqrt(variance along each axis),
    ``explained_variance`` [k] (those variances).
    """

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray
    explained_variance: np.ndarray

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x) -> np.ndarray:
        """Whiten rows of ``x`` with the fitted statistics; returns float64 [N, k]."""
        x = validate.embeddings(x, "embeddings to whiten", min_rows=1, allow_zero=True)
        if x.shape[1] != self.mean.shape[0]:
            raise InputError(
                f"embeddings to whiten have {x.shape[1]} features but the whitening was "
                f"fitted on {self.mean.shape[0]}; use embeddings from the same model."
            )
        out = np.empty((x.shape[0], self.k), dtype=np.float64)
        for sl in row_chunks(x.shape[0]):
            out[sl] = ((np.asarray(x[sl], dtype=np.float64) - self.mean)
                       @ self.components.T) * self.scale
        return out


def _variance_tol(x: np.ndarray) -> float:
    """Variance below which a principal direction counts as absent (whitening
    would divide by ~0): 1e-12 of the total variance."""
    total = float(np.sum(np.var(x, axis=0, ddof=1)))
    return max(total, np.finfo(np.float64).tiny) * 1e-12


def whitening_rank(image, text, train_fraction: float = 0.8, seed: int = 0) -> int:
    """The largest k that ``evaluate_alignment(..., "whiten", k)`` (shared basis)
    accepts for these pairs: the number of directions in which the pooled,
    per-modality-centred train rows vary (isotropy paper Sec. 3.1.3). Below
    2 (n_train - 1) when rows repeat (e.g. identical captions)."""
    img = _as64(image, "image embeddings", allow_zero=True)
    txt = _as64(text, "text embeddings", allow_zero=True)
    tr, _ = split_indices(img.shape[0], train_fraction, seed)
    pooled = np.vstack([img[tr] - img[tr].mean(axis=0), txt[tr] - txt[tr].mean(axis=0)])
    c = np.cov(pooled, rowvar=False) if pooled.shape[1] <= pooled.shape[0] else \
        (pooled - pooled.mean(0)) @ (pooled - pooled.mean(0)).T / (pooled.shape[0] - 1)
    ev = np.linalg.eigvalsh(np.atleast_2d(c))
    return int(min(np.sum(ev > _variance_tol(pooled)), pooled.shape[0] - 1, pooled.shape[1]))


def fit_whitening(x, k: Optional[int] = None) -> Whitening:
    """Fit whitening-k on rows ``x`` (isotropy paper Sec. 3.1.3, Table 1-3, Fig. 4).

    PCA (``sklearn.decomposition.PCA``, covariance eigh, float64) keeps the top ``k``
    components; each is rescaled to unit variance. ``k`` defaults to the
    largest possible, min(d, N - 1). Raises InputError when ``k`` is out of
    range or the data has fewer than ``k`` directions with non-zero variance
    (whitening would divide by zero).
    """
    from sklearn.decomposition import PCA

    x = _as64(x, "embeddings to whiten", allow_zero=True)
    n, d = x.shape
    kmax = min(d, n - 1)
    if k is None:
        k = kmax
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"whitening k must be a whole number, got {k!r}.")
    k = int(k)
    if not 1 <= k <= kmax:
        raise InputError(
            f"whitening k must be between 1 and {kmax} (the smaller of the {d} features "
            f"and rows - 1 = {n - 1}), got {k}."
        )
    # Eigen-decomposition of the d x d covariance: exact PCA, and much faster
    # than a full SVD of the N x d matrix when N >> d.
    pca = PCA(n_components=k, svd_solver="covariance_eigh").fit(x)
    var = np.asarray(pca.explained_variance_, dtype=np.float64)
    tol = _variance_tol(x)
    if var[-1] <= tol:
        r = int(np.sum(var > tol))
        raise InputError(
            f"cannot whiten to k={k}: the embeddings only vary in {r} independent "
            f"direction{'s' if r != 1 else ''}; choose k <= {r}."
        )
    return Whitening(mean=np.asarray(pca.mean_, dtype=np.float64),
                     components=np.asarray(pca.components_, dtype=np.float64),
                     scale=1.0 / np.sqrt(var),
                     explained_variance=var)


# --------------------------------------------------------------------------
# Procrustes and least squares (isotropy paper Sec. 3.1.3, Eq. 4-5)


def fit_procrustes(source, target, *, normalize: bool = True) -> np.ndarray:
    """Orthogonal R (d x d) minimising ||source R - target||_F (isotropy paper Eq. 4-5).

    Rows are L2-normalised first (as in the paper, where A and B hold unit
    text and image rows), so the fit maximises the summed cosine of the pairs;
    pass ``normalize=False`` to fit raw rows. Uses
    ``scipy.linalg.orthogonal_procrustes``. Apply as ``source @ R``.
    """
    s = _as64(source, "source embeddings", allow_zero=not normalize)
    t = _as64(target, "target embeddings", allow_zero=not normalize)
    validate.paired(s, t, "source embeddings", "target embeddings")
    if normalize:
        s, t = _normalize_rows(s), _normalize_rows(t)
    r, _ = orthogonal_procrustes(s, t)
    return r


def fit_lstsq(source, target, *, normalize: bool = True) -> np.ndarray:
    """Linear W (d x d) minimising ||source W - target||_F (isotropy paper Sec. 3.1.3).

    The unconstrained ("LSTSQ") counterpart of :func:`fit_procrustes`, solved
    with ``np.linalg.lstsq`` (minimum-norm solution when rank-deficient).
    Rows are L2-normalised first by default, as in the paper; apply the result
    to L2-normalised source rows. ``normalize=False`` fits the raw rows.
    """
    s = _as64(source, "source embeddings", allow_zero=not normalize)
    t = _as64(target, "target embeddings", allow_zero=not normalize)
    validate.paired(s, t, "source embeddings", "target embeddings")
    if normalize:
        s, t = _normalize_rows(s), _normalize_rows(t)
    w, *_ = np.linalg.lstsq(s, t, rcond=None)
    return w


# --------------------------------------------------------------------------
# cosine distributions (isotropy paper Figs. 9-11)


def positive_random_cosines(image, text, *, n_random: Optional[int] = None,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of paired rows and of random mismatched pairs (isotropy paper Figs. 9-11).

    Returns ``(pos, rand)``: ``pos[i] = cos(image_i, text_i)`` for every pair,
    and ``rand`` holds ``n_random`` (default N) cosines ``cos(image_i, text_j)``
    with i drawn uniformly and j != i drawn uniformly among the other rows
    (seeded). Both float64.
    """
    img = _as64(image, "image embeddings")
    txt = _as64(text, "text embeddings")
    validate.paired(img, txt, "image embeddings", "text embeddings")
    n = img.shape[0]
    if n_random is None:
        n_random = n
    if isinstance(n_random, bool) or not isinstance(n_random, (int, np.integer)) or n_random < 1:
        raise InputError(f"n_random must be a positive whole number, got {n_random!r}.")
    img, txt = _normalize_rows(img), _normalize_rows(txt)
    pos = np.einsum("ij,ij->i", img, txt)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=int(n_random))
    j = (i + rng.integers(1, n, size=int(n_random))) % n  # never equal to i
    rand = np.einsum("ij,ij->i", img[i], txt[j])
    return pos, rand


# --------------------------------------------------------------------------
# train/test alignment evaluation (isotropy paper Sec. 4.2-4.3, Table 2)


@dataclass(frozen=True)
class SplitScores:
    """CLIP loss terms and retrieval accuracy on one split (isotropy paper Table 2).

    ``loss`` = alignment + uniformity (Double-Ellipsoid Eq. 7-8, via
    ``clipgeom.loss.contrastive_loss``); accuracies are the top-1 retrieval
    rates image->text and text->image within the split.
    """

    loss: float
    alignment: float
    uniformity: float
    accuracy_i2t: float
    accuracy_t2i: float
    n: int


@dataclass(frozen=True, eq=False)
class AlignmentResult:
    """Outcome of :func:`evaluate_alignment`.

    ``k`` / ``whiten_basis``: as used by "whiten" (else None);
    ``train`` / ``test``: :class:`SplitScores` after the transform;
    ``train_index`` / ``test_index``: the rows of the input in each split;
    ``image_test`` / ``text_test``: the transformed test rows (the untouched
    ones are ``image[test_index]``); ``positive_cosines`` /
    ``random_cosines``: :func:`positive_random_cosines` on the transformed
    test rows; ``transform``: the fitted parameters (``None`` for "none";
    dict of per-modality means for "center"; dict of :class:`Whitening` for
    "whiten"; the d x d matrix for "procrustes" / "lstsq").
    """

    method: str
    k: Optional[int]
    whiten_basis: Optional[str]
    temperature: float
    seed: int
    train: SplitScores
    test: SplitScores
    train_index: np.ndarray
    test_index: np.ndarray
    image_test: np.ndarray
    text_test: np.ndarray
    positive_cosines: np.ndarray
    random_cosines: np.ndarray
    transform: object


def split_indices(n: int, train_fraction: float = 0.8, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train/test split of ``n`` rows (sorted indices).

    The train size is round(train_fraction * n), kept so both splits have at
    least two rows. Raises InputError when that is impossible.
    """
    if not 0.0 < float(train_fraction) < 1.0:
        raise InputError(f"train_fraction must be strictly between 0 and 1, got {train_fraction}.")
    if n < 4:
        raise InputError(f"a train/test split needs at least 4 pairs, got {n}.")
    n_train = int(round(float(train_fraction) * n))
    n_train = min(max(n_train, 2), n - 2)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def _scores(image: np.ndarray, text: np.ndarray, temperature: float) -> SplitScores:
    from .loss import contrastive_loss

    r = contrastive_loss(image, text, temperature=temperature)
    return SplitScores(loss=float(r.total), alignment=float(r.alignment),
                       uniformity=float(r.uniformity), accuracy_i2t=float(r.accuracy_i2t),
                       accuracy_t2i=float(r.accuracy_t2i), n=int(image.shape[0]))


def evaluate_alignment(image, text, method: str = "none", *, k: Optional[int] = None,
                       train_fraction: float = 0.8, seed: int = 0,
                       temperature: float = 0.01,
                       whiten_basis: str = "shared") -> AlignmentResult:
    """Fit a transform on a train split, report CLIP loss and retrieval on both splits.

    Isotropy paper Sec. 4.2-4.3 (Table 2, Figs. 9-13). ``image`` and ``text``
    are row-paired raw embeddings. Methods:

    * ``"none"``: the embeddings as they are (the "CLIP" row of Table 2);
    * ``"center"``: each modality minus its own train mean;
    * ``"whiten"``: whitening-k (``k`` defaults to the largest possible).
      Each modality is centred by its own train mean. With
      ``whiten_basis="shared"`` (default) the rotation and scales are one
      :class:`Whitening` fitted on the pooled, per-modality-centred train
      rows, so image and text land in the same k axes and cross-modal cosines
      stay meaningful (the pooled train rows have identity covariance). With
      ``"separate"`` each modality gets its own PCA axes and scales; the two
      sets of axes are unrelated (order and signs follow each modality's
      spectrum), which usually destroys cross-modal retrieval;
    * ``"procrustes"``: rows L2-normalised, text mapped onto image by the
      orthogonal R fitted on train (:func:`fit_procrustes`, text -> image);
    * ``"lstsq"``: rows L2-normalised, text mapped by the least-squares W
      fitted on train (:func:`fit_lstsq`, text -> image).

    ``k`` is only used by "whiten" and ignored otherwise. The loss is
    ``clipgeom.loss.contrastive_loss`` (whole split as one batch, temperature
    ``temperature``). Deterministic given ``seed``.
    """
    if method not in METHODS:
        raise InputError(f"unknown alignment method {method!r}; choose one of {', '.join(METHODS)}.")
    if whiten_basis not in ("shared", "separate"):
        raise InputError(f"whiten_basis must be 'shared' or 'separate', got {whiten_basis!r}.")
    if not (np.isfinite(temperature) and temperature > 0):
        raise InputError(f"temperature must be a positive number, got {temperature}.")
    img = _as64(image, "image embeddings")
    txt = _as64(text, "text embeddings")
    validate.paired(img, txt, "image embeddings", "text embeddings")
    tr, te = split_indices(img.shape[0], train_fraction, seed)

    transform: object = None
    used_k: Optional[int] = None
    if method == "none":
        def f_img(a):
            return a

        def f_txt(a):
            return a
    elif method == "center":
        mi, mt = img[tr].mean(axis=0), txt[tr].mean(axis=0)
        transform = {"image_mean": mi, "text_mean": mt}

        def f_img(a):
            return a - mi

        def f_txt(a):
            return a - mt
    elif method == "whiten":
        if whiten_basis == "separate":
            wi = fit_whitening(img[tr], k)
            wt = fit_whitening(txt[tr], wi.k)
        else:
            mi, mt = img[tr].mean(axis=0), txt[tr].mean(axis=0)
            pooled = fit_whitening(np.vstack([img[tr] - mi, txt[tr] - mt]), k)
            wi = Whitening(mean=mi + pooled.mean, components=pooled.components,
                           scale=pooled.scale, explained_variance=pooled.explained_variance)
            wt = Whitening(mean=mt + pooled.mean, components=pooled.components,
                           scale=pooled.scale, explained_variance=pooled.explained_variance)
        used_k = wi.k
        transform = {"image": wi, "text": wt}
        f_img, f_txt = wi.apply, wt.apply
    else:
        fit = fit_procrustes if method == "procrustes" else fit_lstsq
        m = fit(txt[tr], img[tr])
        transform = m

        def f_img(a):
            return _normalize_rows(a)

        def f_txt(a):
            return _normalize_rows(a) @ m

    img_tr, txt_tr = f_img(img[tr]), f_txt(txt[tr])
    img_te, txt_te = f_img(img[te]), f_txt(txt[te])
    train = _scores(img_tr, txt_tr, temperature)
    test = _scores(img_te, txt_te, temperature)
    pos, rand = positive_random_cosines(img_te, txt_te, seed=seed)
    return AlignmentResult(method=method, k=used_k,
                           whiten_basis=whiten_basis if method == "whiten" else None,
                           temperature=float(temperature), seed=int(seed),
                           train=train, test=test, train_index=tr, test_index=te,
                           image_test=img_te, text_test=txt_te,
                           positive_cosines=pos, random_cosines=rand, transform=transform)


# --------------------------------------------------------------------------
# PCA<- back-projection (intra-modal supplement Eq. 11-12)


def pca_back_projection(x, class_text, k: int, *, mean_adjust: bool = False) -> np.ndarray:
    """PCA<- projection onto class-name text axes (intra-modal supplement Eq. 11-12).

    Q holds the eigenvectors of the covariance of ``class_text`` (one row per
    class name; ``np.cov``, ddof = 1) sorted by eigenvalue, descending;
    Lambda = diag(1 x k, 0 x (d - k)). Each row becomes
    x<- = Q Lambda Q^T x (Eq. 11), i.e. its orthogonal projection onto the
    top-k class-name axes (through the origin). With ``mean_adjust`` the cut
    part of the mean of ``x`` is added back, delta = Q (I - Lambda) Q^T mu_x
    (Eq. 12), which leaves distances between projected rows unchanged.

    ``k`` ranges over 1..d; ``k = d`` is the identity. For k < d the top-k
    axes must have non-zero variance (at most #classes - 1 do), else the
    choice of axes is arbitrary and InputError is raised. Returns float64.
    """
    x = _as64(x, "image embeddings", min_rows=1)
    c = _as64(class_text, "class text embeddings")
    validate.same_width(x, c, "image embeddings", "class text embeddings")
    d = x.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= d:
        raise InputError(f"k must be a whole number between 1 and {d}, got {k!r}.")
    k = int(k)
    if k == d:
        return x.copy()
    evals, evecs = np.linalg.eigh(np.cov(c, rowvar=False))
    order = np.argsort(evals)[::-1]
    evals, q = evals[order], evecs[:, order]
    tol = max(float(evals[0]), np.finfo(np.float64).tiny) * d * np.finfo(np.float64).eps * 10
    if evals[k - 1] <= tol:
        r = int(np.sum(evals > tol))
        raise InputError(
            f"the {c.shape[0]} class text embeddings vary along only {r} axes, so the top "
            f"k={k} axes are not defined; choose k <= {r} or add class names."
        )
    qk = q[:, :k]
    out = (x @ qk) @ qk.T
    if mean_adjust:
        mu = x.mean(axis=0)
        out += mu - qk @ (qk.T @ mu)
    return out


# --------------------------------------------------------------------------
# intra-modal similarity recovery (intra-modal supplement Eq. 4-10)


@dataclass(frozen=True, eq=False)
class IntraRecovery:
    """Result of :func:`recover_intra_similarity` (intra-modal supplement Eq. 4-10).

    ``s_intra``: the recovered N x N matrix V Q V^T (Eq. 10); ``q``: the
    symmetric d x d solution of Eq. 8-9; ``rank``: the d used;
    ``singular_values``: all singular values of S_inter; ``residual``: RMS of
    diag(V Q V^T) - 1 over the N rows (near 0 when the rows really were unit
    vectors of rank d).
    """

    s_intra: np.ndarray
    q: np.ndarray
    rank: int
    singular_values: np.ndarray
    residual: float


def _square_similarity(s_inter) -> np.ndarray:
    """The inter-modal similarity matrix as float64, checked to be N x N."""
    s = validate.embeddings(s_inter, "inter-modal similarity matrix", allow_zero=True,
                            dtype=np.float64)
    if s.shape[1] != s.shape[0]:
        raise InputError(
            f"inter-modal similarity matrix must be square (text x image, N x N), "
            f"got shape {s.shape}."
        )
    return s


def recover_intra_similarity(s_inter, rank: Optional[int] = None, *,
                             rtol: float = 1e-6) -> IntraRecovery:
    """Recover S_intra = X_I X_I^T from S_inter = X_T X_I^T (intra-modal supplement Eq. 4-10).

    SVD S_inter = U Sigma V^T (Eq. 5) and keep the top ``rank`` right
    singular vectors V [N, d]; ``rank`` defaults to the number of singular
    values above ``rtol`` times the largest. Since X_I = V C (Eq. 6), the
    unit-norm rows give diag(V Q V^T) = 1 for symmetric Q = C C^T (Eq. 8),
    N linear equations (Eq. 9) in the d(d+1)/2 unknowns of Q's upper
    triangle, solved by ``np.linalg.lstsq``; then S_intra = V Q V^T (Eq. 10).

    Costs: the N x N SVD is O(N^3) time; the design matrix is N x d(d+1)/2
    floats (O(N d^2) memory). Needs N >= d(d+1)/2 rows for a unique solution.
    Raises InputError when the matrix is not square, N is too small for the
    rank, the rank exceeds 128 (MAX_RECOVERY_RANK), or the design matrix would
    exceed 2 GiB.
    """
    s = _square_similarity(s_inter)
    n = s.shape[0]
    _, sv, vt = np.linalg.svd(s, full_matrices=False)
    if rank is None:
        if not sv[0] > 0:
            raise InputError("inter-modal similarity matrix is all zeros; nothing to recover.")
        d = int(np.sum(sv > rtol * sv[0]))
    else:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= n:
            raise InputError(f"rank must be a whole number between 1 and {n}, got {rank!r}.")
        d = int(rank)
    if d > MAX_RECOVERY_RANK:
        raise InputError(
            f"recovering intra-modal similarities is limited to rank <= {MAX_RECOVERY_RANK} "
            f"(the linear system has d(d+1)/2 unknowns); this matrix has rank {d}. "
            "Pass a smaller rank or reduce the embedding dimension first."
        )
    m = d * (d + 1) // 2
    if n < m:
        raise InputError(
            f"recovering rank-{d} similarities needs at least d(d+1)/2 = {m} rows, got N = {n}; "
            "use more pairs or a lower rank."
        )
    if n * m * 8 > MAX_RECOVERY_BYTES:
        raise InputError(
            f"the linear system would need {n * m * 8 / 1024 ** 3:.1f} GiB "
            f"(N = {n} rows x {m} unknowns); use fewer rows or a lower rank."
        )
    v = vt[:d].T  # [N, d]
    iu, ju = np.triu_indices(d)
    a = v[:, iu] * v[:, ju]
    a[:, iu != ju] *= 2.0  # Q_jk and Q_kj share one unknown
    sol, *_ = np.linalg.lstsq(a, np.ones(n), rcond=None)
    q = np.zeros((d, d))
    q[iu, ju] = sol
    q[ju, iu] = sol
    residual = float(np.sqrt(np.mean((a @ sol - 1.0) ** 2)))
    s_intra = (v @ q) @ v.T
    return IntraRecovery(s_intra=s_intra, q=q, rank=d, singular_values=sv, residual=residual)


def recover_intra_similarity_ranks(s_inter, ranks) -> list[IntraRecovery]:
    """:func:`recover_intra_similarity` at several ranks at once (intra-modal
    supplement Eq. 4-10), e.g. for an error-vs-rank curve.

    Same equations, computed once for the largest rank K: the top-K right
    singular vectors of S_inter are the top-K eigenvectors of S_inter^T S_inter
    (``scipy.linalg.eigh`` on that subset only, instead of an N x N SVD); the
    unknowns of the symmetric Q (Eq. 9) are ordered by (max(j, k), min(j, k)),
    so the design matrix of every rank k <= K is a column prefix of rank K's,
    and one QR of it (``scipy.linalg.qr_multiply``) solves them all: the
    least-squares solution of a column prefix comes from the leading block of
    R. A rank whose design is (numerically) rank-deficient falls back to the
    minimum-norm ``np.linalg.lstsq``. ``singular_values`` of each result hold
    the top K only. Returns one :class:`IntraRecovery` per rank, in the order
    of ``sorted(set(ranks))``.
    """
    from scipy.linalg import eigh, qr_multiply, solve_triangular

    s = _square_similarity(s_inter)
    n = s.shape[0]
    try:
        ranks = sorted({int(r) for r in ranks})
    except (TypeError, ValueError):
        raise InputError(f"ranks must be whole numbers, got {ranks!r}.") from None
    if not ranks or ranks[0] < 1 or ranks[-1] > n:
        raise InputError(f"ranks must be whole numbers between 1 and {n}, got {ranks}.")
    big = ranks[-1]
    if big > MAX_RECOVERY_RANK:
        raise InputError(
            f"recovering intra-modal similarities is limited to rank <= {MAX_RECOVERY_RANK} "
            f"(the linear system has d(d+1)/2 unknowns), got {big}."
        )
    m = big * (big + 1) // 2
    if n < m:
        raise InputError(
            f"recovering rank-{big} similarities needs at least d(d+1)/2 = {m} rows, got "
            f"N = {n}; use more pairs or a lower rank."
        )
    if n * m * 8 > MAX_RECOVERY_BYTES:
        raise InputError(
            f"the linear system would need {n * m * 8 / 1024 ** 3:.1f} GiB "
            f"(N = {n} rows x {m} unknowns); use fewer rows or a lower rank."
        )
    w, vecs = eigh(s.T @ s, subset_by_index=[n - big, n - 1])
    order = np.argsort(w)[::-1]
    sv = np.sqrt(np.clip(w[order], 0.0, None))
    v = vecs[:, order]                                   # [N, K], Eq. 5
    hi = np.concatenate([np.full(b + 1, b) for b in range(big)])
    lo = np.concatenate([np.arange(b + 1) for b in range(big)])
    a = v[:, lo] * v[:, hi]
    a[:, lo != hi] *= 2.0                                # Q_jk and Q_kj share one unknown
    ones = np.ones(n)
    qtb, r = qr_multiply(a, ones, mode="right")
    out = []
    for k in ranks:
        mk = k * (k + 1) // 2
        rk = r[:mk, :mk]
        diag = np.abs(np.diag(rk))
        if diag.min() > 1e-10 * max(diag.max(), np.finfo(np.float64).tiny):
            sol = solve_triangular(rk, qtb[:mk])
        else:
            sol, *_ = np.linalg.lstsq(a[:, :mk], ones, rcond=None)
        q = np.zeros((k, k))
        q[lo[:mk], hi[:mk]] = sol
        q[hi[:mk], lo[:mk]] = sol
        residual = float(np.sqrt(np.mean((a[:, :mk] @ sol - 1.0) ** 2)))
        vk = v[:, :k]
        out.append(IntraRecovery(s_intra=(vk @ q) @ vk.T, q=q, rank=k, singular_values=sv,
                                 residual=residual))
    return out


def intra_recovery_error(recovered, truth) -> dict:
    """Max-abs and RMS difference between a recovered and a true similarity matrix.

    Companion to :func:`recover_intra_similarity` (intra-modal supplement
    Eq. 10). ``recovered`` may be an :class:`IntraRecovery` or an array.
    Returns ``{"max_abs": float, "rms": float}``.
    """
    if isinstance(recovered, IntraRecovery):
        recovered = recovered.s_intra
    r = validate.embeddings(recovered, "recovered similarities", allow_zero=True, dtype=np.float64)
    t = validate.embeddings(truth, "true similarities", allow_zero=True, dtype=np.float64)
    if r.shape != t.shape:
        raise InputError(f"recovered similarities have shape {r.shape} but the truth has {t.shape}.")
    diff = r - t
    return {"max_abs": float(np.max(np.abs(diff))), "rms": float(np.sqrt(np.mean(diff ** 2)))}
