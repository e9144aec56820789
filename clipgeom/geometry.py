"""Modality statistics, separability, thin shell and ellipsoid shape.

Implements Sections 3-4 of Levi & Gilboa, "The Double-Ellipsoid Geometry of
CLIP" (ICML 2025): separability (Eq. 5), the thin shell (Eq. 1-4), the
feature-variance spectrum and off-diagonal dominance (Eq. 6), the offset
||m|| / ||sigma||, and the blur experiment of Fig. 7. All functions take raw
(un-normalised) embedding rows and return plain dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import moments, validate
from .moments import BLOCK_ROWS

# Supervised fits (SVM, logistic regression) are quadratic-ish in N; above
# this many rows per modality they run on a seeded sample (stated in results).
FIT_SAMPLE = 20000


@dataclass(frozen=True)
class ModalitySummary:
    """First and second moments of one modality, from one chunked pass each.

    ``norms`` are ||v|| (raw) and ``centered_norms`` are ||v - m||; ``cov`` is
    the (population) feature covariance C used by Eq. 6.
    """

    mean: np.ndarray
    std: np.ndarray
    cov: np.ndarray
    norms: np.ndarray
    centered_norms: np.ndarray

    @property
    def n(self) -> int:
        return int(self.norms.shape[0])

    @property
    def variance(self) -> np.ndarray:
        return self.std ** 2


def summarize(x: np.ndarray, name: str = "embeddings", chunk: int = BLOCK_ROWS
              ) -> ModalitySummary:
    """Mean, std, covariance, raw and centred norms of one modality.

    Two passes over row blocks (:mod:`clipgeom.moments`: the mergeable mean
    and scatter, then the norms given the mean), float64 accumulation, so a
    memory-mapped array of any length is read without being copied whole.
    """
    x = validate.embeddings(x, name, allow_zero=True)
    eng = moments.LocalEngine(chunk)
    first = moments.first_moments(x, engine=eng)
    sec = moments.second_moments(
        x, moments.SecondConstants(mean=first.mean, keep=("norm", "centred_norm")), engine=eng)
    return ModalitySummary(mean=first.mean, std=first.std, cov=first.cov,
                           norms=sec.kept["norm"], centered_norms=sec.kept["centred_norm"])


# --------------------------------------------------------------------------
# Separability (Section 4, Eq. 5; Fig. 2-3)


def separability(image: ModalitySummary, text: ModalitySummary) -> np.ndarray:
    """Per-feature separability, Double-Ellipsoid Eq. 5.

    Sep(l) = |m_i(l) - m_t(l)| / sqrt(var(v_i(l)) + var(v_t(l))). Features
    with Sep > 1 act as modality "tags".
    """
    denom = np.sqrt(image.variance + text.variance)
    diff = np.abs(image.mean - text.mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        sep = np.where(denom > 0, diff / np.where(denom > 0, denom, 1.0),
                       np.where(diff > 0, np.inf, 0.0))
    return sep


def top_features(score: np.ndarray, k: int = 10) -> list[dict]:
    """The k features with the largest score, best first, as {feature, value}."""
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")[:k]
    return [{"feature": int(i), "value": float(score[i])} for i in order]


def offset_features(summary: ModalitySummary, k: int = 10) -> list[dict]:
    """Features with the largest |mean| / std (Double-Ellipsoid Fig. 3 middle/right)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(summary.mean) / np.where(summary.std > 0, summary.std, np.nan)
    order = np.argsort(-np.nan_to_num(ratio, nan=-np.inf), kind="stable")[:k]
    return [{"feature": int(i), "mean_over_std": float(ratio[i]),
             "mean": float(summary.mean[i]), "std": float(summary.std[i])}
            for i in order]


@dataclass(frozen=True)
class HistogramPair:
    """Two normalised histograms on shared bins and KL(first || second)."""

    edges: np.ndarray
    first: np.ndarray   # probability per bin (sums to 1)
    second: np.ndarray
    kl: float


def histogram_kl(a: np.ndarray, b: np.ndarray, bins: int = 50,
                 floor: float = 1e-6) -> HistogramPair:
    """KL(a || b) between two samples, from histograms on shared bins.

    Binning (used for per-feature KL, Double-Ellipsoid Sec. 4, and for the
    conformity distributions of Fig. 11): ``bins`` equal-width bins spanning
    the pooled range [min(a, b), max(a, b)]; each histogram is turned into
    probabilities, every bin is floored at ``floor`` and renormalised, so an
    empty bin in ``b`` gives a large but finite KL instead of infinity.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        validate.in_range(min(a.size, b.size), 1, np.inf, "sample size")
    lo = min(a.min(), b.min())
    hi = max(a.max(), b.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    return histogram_pair(edges, np.histogram(a, edges)[0], np.histogram(b, edges)[0], floor)


def histogram_pair(edges, counts_a, counts_b, floor: float = 1e-6) -> HistogramPair:
    """:class:`HistogramPair` from two histograms' counts on shared ``edges``
    (as :func:`histogram_kl` makes them: floored at ``floor``, renormalised)."""
    pa = np.maximum(np.asarray(counts_a, np.float64) / np.sum(counts_a), floor)
    pb = np.maximum(np.asarray(counts_b, np.float64) / np.sum(counts_b), floor)
    pa /= pa.sum()
    pb /= pb.sum()
    return HistogramPair(edges=np.asarray(edges, np.float64), first=pa, second=pb,
                         kl=float(np.sum(pa * np.log(pa / pb))))


def feature_kl(image: np.ndarray, text: np.ndarray, feature: int,
               bins: int = 50) -> HistogramPair:
    """KL(image || text) of one feature's histograms (Double-Ellipsoid Fig. 2)."""
    return histogram_kl(np.asarray(image[:, feature]), np.asarray(text[:, feature]),
                        bins=bins)


def _sample_rows(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, cap, replace=False))


@dataclass(frozen=True)
class LinearBoundary:
    """A linear classifier image (0) vs text (1) on chosen features."""

    features: list[int]
    accuracy: float
    weights: np.ndarray   # w in w . x + b = 0
    bias: float
    n_used: int           # rows per modality actually fitted (sampled above FIT_SAMPLE)


def svm_top2(image: np.ndarray, text: np.ndarray, features: list[int], *,
             seed: int = 0) -> LinearBoundary:
    """Linear SVM on two features, image vs text (Double-Ellipsoid Fig. 2 right).

    Accuracy is on the fitted rows, as in the paper's figure (two features
    cannot overfit). Standardises features internally; the returned boundary
    is in raw feature units.
    """
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(seed)
    ii = _sample_rows(image.shape[0], FIT_SAMPLE, rng)
    tt = _sample_rows(text.shape[0], FIT_SAMPLE, rng)
    xa = np.asarray(image[ii][:, features], dtype=np.float64)
    xb = np.asarray(text[tt][:, features], dtype=np.float64)
    x = np.vstack([xa, xb])
    y = np.r_[np.zeros(len(xa)), np.ones(len(xb))]
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    clf = LinearSVC(C=1.0, dual="auto", max_iter=20000, random_state=seed)
    clf.fit((x - mu) / sd, y)
    acc = float(clf.score((x - mu) / sd, y))
    w_std = clf.coef_[0]
    w = w_std / sd
    b = float(clf.intercept_[0] - np.sum(w_std * mu / sd))
    return LinearBoundary(features=[int(f) for f in features], accuracy=acc,
                          weights=w, bias=b, n_used=int(min(len(xa), len(xb))))


def linear_separability(image: np.ndarray, text: np.ndarray, *,
                        test_fraction: float = 0.25, seed: int = 0) -> float:
    """Held-out accuracy of logistic regression image vs text on all features.

    Isotropy paper Sec. 4.1 ("linearly separated"): a seeded stratified split,
    standardised features, L-BFGS logistic regression.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    ii = _sample_rows(image.shape[0], FIT_SAMPLE, rng)
    tt = _sample_rows(text.shape[0], FIT_SAMPLE, rng)
    x = np.vstack([np.asarray(image[ii], np.float64), np.asarray(text[tt], np.float64)])
    y = np.r_[np.zeros(len(ii)), np.ones(len(tt))]
    if min(len(ii), len(tt)) < 4:
        return float("nan")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction,
                                          random_state=seed, stratify=y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(xtr, ytr)
    return float(clf.score(xte, yte))


# --------------------------------------------------------------------------
# Thin shell (Section 3.2, Eq. 1-4; Fig. 4) and ellipsoid (Section 4; Fig. 5)


@dataclass(frozen=True)
class ThinShell:
    """Thin-shell statistics of ||x|| with x = v - m (Double-Ellipsoid Eq. 1-4).

    ||x|| = mu_norm + y, E||x||^2 = mu_norm^2 + var(y), so when
    mu_norm^2 >> var(y), mu_norm ~ sqrt(E||x||^2) (Eq. 3-4). ``rms_rel_error``
    is (sqrt(E||x||^2) - mu_norm) / mu_norm (paper, ViT-B/32 images: 0.18%).
    """

    mean_norm: float      # mu_norm = E||v - m||   (also the shell radius R)
    norm_var: float       # var(y) = var(||v - m||)
    rms_norm: float       # sqrt(E||v - m||^2) = sqrt(tr C)
    rms_rel_error: float
    shell_std: float      # sqrt(var(y)): the shell's thickness
    raw_mean_norm: float  # E||v||, the raw norm (distance from the origin)
    raw_norm_std: float


def thin_shell(summary: ModalitySummary) -> ThinShell:
    """Thin-shell statistics of one modality (Double-Ellipsoid Eq. 1-4)."""
    c = summary.centered_norms
    return _shell(float(c.mean()), float(c.var()), float(summary.norms.mean()),
                  float(summary.norms.var()))


def thin_shell_from_moments(first: "moments.FirstMoments",
                            second: "moments.SecondMoments") -> ThinShell:
    """:func:`thin_shell` from mergeable moments (pass 1: ||v||; pass 2:
    ||v - m||), the report's streaming form."""
    return _shell(second.mean("centred_norm"), second.var("centred_norm"),
                  first.norm_mean, first.norm_var)


def _shell(mu: float, var: float, raw_mean: float, raw_var: float) -> ThinShell:
    var = max(var, 0.0)
    rms = float(np.sqrt(var + mu * mu))          # sqrt(E||x||^2) = sqrt(mu^2 + var(y))
    # (rms - mu) / mu without cancellation: rms - mu = var / (rms + mu)
    return ThinShell(mean_norm=mu, norm_var=var, rms_norm=rms,
                     rms_rel_error=var / (rms + mu) / mu if mu > 0 else float("nan"),
                     shell_std=float(np.sqrt(var)), raw_mean_norm=raw_mean,
                     raw_norm_std=float(np.sqrt(max(raw_var, 0.0))))


def off_diagonal_dominance(cov: np.ndarray) -> np.ndarray:
    """ODD(l) = sum_{k != l} |C_lk| / C_ll, Double-Ellipsoid Eq. 6 (tilt)."""
    c = np.abs(np.asarray(cov, dtype=np.float64))
    diag = np.diag(c).copy()
    off = c.sum(axis=1) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diag > 0, off / np.where(diag > 0, diag, 1.0), np.inf)


def mean_over_sigma(summary: ModalitySummary) -> float:
    """||m|| / ||sigma||, the ellipsoid's offset from the origin (Sec. 4, Property 5).

    Paper, MS-COCO ViT-B/32: 0.94 for images, 1.03 for text.
    """
    return float(np.linalg.norm(summary.mean) / np.linalg.norm(summary.std))


def mean_cosine(image: ModalitySummary, text: ModalitySummary) -> float:
    """cos(m_i, m_t): the modality gap as the angle between the two means
    (NaN when a mean is zero)."""
    ni, nt = np.linalg.norm(image.mean), np.linalg.norm(text.mean)
    if ni == 0 or nt == 0:
        return float("nan")
    return float(image.mean @ text.mean / (ni * nt))


def centroid_distance(image: ModalitySummary, text: ModalitySummary) -> float:
    """||m_i - m_t||: the modality gap as the distance between the two means."""
    return float(np.linalg.norm(image.mean - text.mean))


# --------------------------------------------------------------------------
# The blur experiment (Section 5, Fig. 7 bottom)


@dataclass(frozen=True)
class BlurResult:
    """cos to the empirical mean and to the farthest vector, for one sphere."""

    center: np.ndarray
    cos_to_mean: np.ndarray      # cos(m, v_j), j = 1..n
    cos_to_extreme: np.ndarray   # cos(v_far, v_j), v_far excluded
    extreme_index: int


def blur_experiment(center, *, n: int = 1000, dim: int = 512, seed: int = 0
                    ) -> BlurResult:
    """Double-Ellipsoid Fig. 7 (bottom): Gaussian vectors around ``center``.

    Draws n vectors with i.i.d. N(0, 1) entries plus ``center`` (a vector, or
    a list of its leading entries, the rest 0; the paper uses the origin and
    (10, 5, 5, 0, ...)). m is the empirical mean, v_far = argmin_j cos(m, v_j).
    Returns cos(m, v_j) for all j and cos(v_far, v_j) for j != far.
    """
    c = np.zeros(dim, dtype=np.float64)
    head = np.asarray(center, dtype=np.float64).ravel()
    if head.size > dim:
        validate.in_range(head.size, 0, dim, "length of the centre vector")
    c[:head.size] = head
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)) + c
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    m = v.mean(axis=0)
    cos_m = u @ (m / np.linalg.norm(m))
    far = int(np.argmin(cos_m))
    cos_far = np.delete(u @ u[far], far)
    return BlurResult(center=c, cos_to_mean=cos_m, cos_to_extreme=cos_far,
                      extreme_index=far)


@dataclass(frozen=True)
class Histogram:
    """Counts on bin edges, ready to draw as bars."""

    edges: np.ndarray
    counts: np.ndarray


def histogram(values, bins: int = 60, range_=None) -> Histogram:
    """np.histogram of any 1-D sample (norms, variances, ODD, conformity)."""
    counts, edges = np.histogram(np.asarray(values, np.float64), bins=bins, range=range_)
    return Histogram(edges=edges, counts=counts)


def norm_histograms(summary: ModalitySummary, bins: int = 60) -> dict[str, Histogram]:
    """Histograms of ||v - m|| (Fig. 4 bottom, the thin shell) and of raw ||v||.

    The centred histogram starts at 0 so the empty region near the mean, the
    mark of a thin shell, is visible.
    """
    c = summary.centered_norms
    return {"centered": histogram(c, bins, (0.0, float(c.max()) * 1.05)),
            "raw": histogram(summary.norms, bins)}


def variance_spectrum(summary: ModalitySummary) -> np.ndarray:
    """Per-feature variances sorted high to low (Fig. 5 left: a long tail = ellipsoid)."""
    return np.sort(summary.variance)[::-1]


# --------------------------------------------------------------------------
# Helpers for the dashboard's separability and shape pages (Fig. 2, 4, 14)


def sample_rows(n: int, cap: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all of ``range(n)`` when n <= cap, else a seeded
    sample of ``cap`` rows without replacement (for drawing large scatters)."""
    validate.in_range(cap, 1, np.inf, "sample size")
    return _sample_rows(int(n), int(cap), np.random.default_rng(seed))


def centered_columns(x: np.ndarray, summary: ModalitySummary, features,
                     rows=None) -> np.ndarray:
    """Mean-subtracted feature values v~(l) = v(l) - m(l) of chosen features
    (Double-Ellipsoid Fig. 4 top: the first features of v~ are centred at 0).

    ``rows`` (indices) restricts to a sample; returns float64 [rows, features].
    """
    feats = np.asarray(features, dtype=np.int64)
    if feats.size and (feats.min() < 0 or feats.max() >= summary.mean.shape[0]):
        validate.in_range(int(feats.max()), 0, summary.mean.shape[0] - 1, "feature index")
    block = np.asarray(x[rows] if rows is not None else x)
    return np.asarray(block[:, feats], dtype=np.float64) - summary.mean[feats]


def extreme_norms(norms: np.ndarray, k: int = 10) -> dict[str, list[dict]]:
    """The k rows with the largest and the smallest norm (Double-Ellipsoid
    Fig. 14: the largest-norm captions are the unusual ones).

    Returns {"largest": [...], "smallest": [...]}, each a list of
    {"row", "norm"} ordered from the most extreme; ties by row order.
    """
    v = np.asarray(norms, dtype=np.float64).ravel()
    k = int(min(max(k, 0), v.size))
    hi = np.argsort(-v, kind="stable")[:k]
    lo = np.argsort(v, kind="stable")[:k]
    return {"largest": [{"row": int(i), "norm": float(v[i])} for i in hi],
            "smallest": [{"row": int(i), "norm": float(v[i])} for i in lo]}


def boundary_line(weights, bias: float, x_range, y_range) -> tuple[np.ndarray, np.ndarray]:
    """Two points of the line w . p + b = 0 (the SVM boundary of Fig. 2 right)
    spanning ``x_range`` (or ``y_range`` when the line is near vertical)."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    if abs(w[1]) >= abs(w[0]) * 1e-9 and w[1] != 0:
        xs = np.asarray(x_range, dtype=np.float64)
        return xs, -(w[0] * xs + bias) / w[1]
    ys = np.asarray(y_range, dtype=np.float64)
    return -(w[1] * ys + bias) / w[0], ys
