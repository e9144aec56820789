"""Contrastive loss on a whole set as one batch, alpha shifts, logit geometries.

Double-Ellipsoid Sec. 5: the NT-Xent (CLIP) loss, split into alignment and
uniformity (Eq. 7-8), evaluated while the image and/or text ellipsoid is
shifted along its mean, v' = v - alpha * m (Eq. 9, 14, 15); and the EuCLIP
paper's alternative logits (dot product, negative distance, negative squared
distance) beside the cosine.

One kernel serves all of these. Every logit we need has the form

    L[k, j] = p_k * q_j * (G~[k, j] + a_k + b_j)      (optionally -sqrt(-L))

where G~ = (V - m_i)(T - m_t)^T is computed ONCE per row chunk (rows are
images k, columns texts j) and p, q, a, b are per-row / per-column vectors
that depend on the shift or the geometry. Working on centred rows keeps
float32 precise when a shift of alpha = 1 cancels the means. The N x N
logit matrix is never held: rows are processed in chunks, the image->text
log-sum-exp is exact per row, and the text->image log-sum-exp is merged
across chunks (online log-sum-exp). So N = 25,000 pairs needs a few MB of
working memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from . import validate
from .errors import InputError

CLIP_TEMPERATURE = 0.01  # CLIP's learned logit scale is 100
LOGIT_KINDS = ("cosine", "dot", "neg_distance", "neg_sq_distance")
# Retrieval counts a tie as retrieved. Logits are float32 products, so two
# identical rows (duplicate captions) can come out a few ulps apart, and which
# copy "wins" would depend on the CPU's kernels (AVX2 vs AVX-512) and threads.
# Logits within TIE_REL of the largest logit magnitude are therefore ties:
# 1e-5 is ~100 float32 ulps, far above the kernels' rounding, far below any
# real difference between items (a cosine difference of 1e-5).
TIE_REL = 1e-5
Modality = Literal["image", "text", "both"]


@dataclass(frozen=True)
class LossResult:
    """NT-Xent on N pairs as one batch (Double-Ellipsoid Eq. 7-8).

    alignment = -E_k[L_kk]; uniformity = E_k[1/2 LSE_j L_kj + 1/2 LSE_j L_jk];
    total = alignment + uniformity (= the mean of the image->text and
    text->image cross-entropies). A pair counts as *correct* when the image's
    best caption is its own AND the caption's best image is its own.
    """

    total: float
    alignment: float
    uniformity: float
    accuracy_i2t: float
    accuracy_t2i: float
    loss_correct: float          # mean per-pair loss over correct pairs (nan if none)
    loss_misclassified: float    # likewise over the others
    per_pair: np.ndarray = field(repr=False)   # per-pair loss
    correct: np.ndarray = field(repr=False)    # bool per pair
    n_pairs: int = 0
    temperature: float = CLIP_TEMPERATURE
    logit: str = "cosine"


@dataclass(frozen=True)
class _Spec:
    """One logit matrix to evaluate: L = p_k q_j (G~ + a_k + b_j), see module doc."""

    p: np.ndarray
    q: np.ndarray
    a: np.ndarray
    b: np.ndarray
    neg_sqrt: bool = False    # L = -sqrt(max(-L_affine, 0)) / temperature
    post_scale: float = 1.0   # applied after neg_sqrt
    logit: str = "cosine"


@dataclass
class _Moments:
    """Means and the raw dot products with them, shared by every spec."""

    m_i: np.ndarray
    m_t: np.ndarray
    vi_mt: np.ndarray    # v~_k . m_t (centred image rows with the text mean)
    mi_tt: np.ndarray    # m_i . t~_j
    mi_mt: float
    vi_mi: np.ndarray    # v~_k . m_i
    tt_mt: np.ndarray    # t~_j . m_t
    vv: np.ndarray       # ||v~_k||^2
    tt: np.ndarray       # ||t~_j||^2


def _moments(v: np.ndarray, t: np.ndarray) -> tuple[_Moments, np.ndarray, np.ndarray]:
    v64 = np.asarray(v, dtype=np.float64)
    t64 = np.asarray(t, dtype=np.float64)
    m_i, m_t = v64.mean(0), t64.mean(0)
    vc, tc = v64 - m_i, t64 - m_t
    mom = _Moments(m_i=m_i, m_t=m_t, vi_mt=vc @ m_t, mi_tt=tc @ m_i,
                   mi_mt=float(m_i @ m_t), vi_mi=vc @ m_i, tt_mt=tc @ m_t,
                   vv=np.einsum("ij,ij->i", vc, vc), tt=np.einsum("ij,ij->i", tc, tc))
    return mom, vc.astype(np.float32), tc.astype(np.float32)


def _shift_spec(mom: _Moments, alpha_image: float, alpha_text: float,
                temperature: float) -> _Spec:
    """Cosine logits after v' = v - alpha_i m_i, t' = t - alpha_t m_t (Eq. 9, 14, 15).

    With v = m_i + v~: v' = v~ + (1 - alpha_i) m_i, so
    v'.t' = G~ + (1-alpha_t) v~.m_t + (1-alpha_i) m_i.t~ + (1-alpha_i)(1-alpha_t) m_i.m_t
    and ||v'||^2 = ||v~||^2 + 2 (1-alpha_i) v~.m_i + (1-alpha_i)^2 ||m_i||^2.
    """
    bi, bt = 1.0 - alpha_image, 1.0 - alpha_text
    a = bt * mom.vi_mt + bi * bt * mom.mi_mt
    b = bi * mom.mi_tt
    nv2 = mom.vv + 2 * bi * mom.vi_mi + bi * bi * float(mom.m_i @ mom.m_i)
    nt2 = mom.tt + 2 * bt * mom.tt_mt + bt * bt * float(mom.m_t @ mom.m_t)
    bad_v = np.flatnonzero(nv2 <= 1e-24)
    bad_t = np.flatnonzero(nt2 <= 1e-24)
    if bad_v.size or bad_t.size:
        which = (f"image pair {int(bad_v[0])}" if bad_v.size else f"text pair {int(bad_t[0])}")
        raise InputError(f"the shift alpha=({alpha_image}, {alpha_text}) maps {which} "
                         "to the zero vector, where the cosine is undefined.")
    return _Spec(p=1.0 / (np.sqrt(nv2) * temperature), q=1.0 / np.sqrt(nt2), a=a, b=b)


def _geometry_spec(mom: _Moments, kind: str, temperature: float) -> _Spec:
    """EuCLIP-paper logits on raw embeddings, each modality scaled to unit RMS norm.

    cosine: cos(v, t)/tau; dot: (v.t)/tau; neg_sq_distance: -||v - t||^2/tau;
    neg_distance: -||v - t||/tau, with v, t divided by their modality's RMS
    norm so the temperature means the same for every geometry while the
    relative norms (which carry information before normalisation) are kept.
    """
    if kind == "cosine":
        return _shift_spec(mom, 0.0, 0.0, temperature)
    nv2 = mom.vv + 2 * mom.vi_mi + float(mom.m_i @ mom.m_i)    # ||v||^2
    nt2 = mom.tt + 2 * mom.tt_mt + float(mom.m_t @ mom.m_t)
    ri, rt = float(np.sqrt(nv2.mean())), float(np.sqrt(nt2.mean()))
    a = mom.vi_mt + mom.mi_mt          # raw v.t = G~ + a_k + b_j
    b = mom.mi_tt
    n = len(nv2)
    if kind == "dot":
        return _Spec(p=np.full(n, 1.0 / (ri * rt * temperature)), q=np.ones(n),
                     a=a, b=b, logit=kind)
    # -||v/ri - t/rt||^2 = (2/(ri rt)) (v.t - ||v||^2 rt/(2 ri) - ||t||^2 ri/(2 rt))
    a_d = a - nv2 * rt / (2 * ri)
    b_d = b - nt2 * ri / (2 * rt)
    if kind == "neg_sq_distance":
        return _Spec(p=np.full(n, 2.0 / (ri * rt * temperature)), q=np.ones(n),
                     a=a_d, b=b_d, logit=kind)
    if kind == "neg_distance":
        return _Spec(p=np.full(n, 2.0 / (ri * rt)), q=np.ones(n), a=a_d, b=b_d,
                     neg_sqrt=True, post_scale=1.0 / temperature, logit=kind)
    raise InputError(f"unknown logit kind {kind!r}; choose one of {', '.join(LOGIT_KINDS)}.")


# exp() of a float32 underflows below about -87. The column sums reuse the
# row-shifted exponentials, so a column's chunk entries sitting more than
# this far below the chunk's largest row maximum could vanish. That matters
# only when the chunk still carries weight for the column, i.e. its entries
# are within _NEGLIGIBLE of the column's own diagonal logit (a lower bound on
# the column's log-sum-exp); such columns are summed exactly instead. Rare in
# practice (cosines spread over > 0.6 at tau 0.01).
_SAFE_LOG_GAP = 60.0
_NEGLIGIBLE = 40.0


def _diagonal(vc: np.ndarray, tc: np.ndarray, spec: _Spec) -> torch.Tensor:
    """The pair logits L_kk of one spec, float64 (a lower bound on each column's LSE)."""
    g = np.einsum("ij,ij->i", vc.astype(np.float64), tc.astype(np.float64))
    d = spec.p * spec.q * (g + spec.a + spec.b)
    if spec.neg_sqrt:
        d = -np.sqrt(np.maximum(-d, 0.0)) * spec.post_scale
    return torch.from_numpy(d.astype(np.float32))


def _evaluate(vc: np.ndarray, tc: np.ndarray, specs: Sequence[_Spec],
              temperature: float, chunk: int = 128) -> list[LossResult]:
    """Run every spec over the implicit N x N logit matrix, chunk by chunk."""
    n = vc.shape[0]
    V = torch.from_numpy(np.ascontiguousarray(vc))
    T = torch.from_numpy(np.ascontiguousarray(tc))
    ts = []
    for s in specs:
        ts.append(tuple(torch.from_numpy(np.asarray(x, dtype=np.float32))
                        for x in (s.p, s.q, s.a, s.b)))
    diags = [_diagonal(vc, tc, s) for s in specs]
    acc = [dict(diag=torch.empty(n), row_lse=torch.empty(n), row_max=torch.empty(n),
                col_lse=torch.full((n,), -torch.inf, dtype=torch.float64),
                col_max=torch.full((n,), -torch.inf))
           for _ in specs]
    buf = torch.empty((min(chunk, n), n))
    arange = torch.arange(n)
    with torch.inference_mode():
        for s0 in range(0, n, chunk):
            s1 = min(s0 + chunk, n)
            rows = arange[s0:s1]
            g = V[s0:s1] @ T.T
            L = buf[: s1 - s0]
            for spec, (p, q, a, b), st, dg in zip(specs, ts, acc, diags):
                torch.add(g, b, out=L)
                L.add_(a[s0:s1, None])
                L.mul_(p[s0:s1, None])
                L.mul_(q)
                if spec.neg_sqrt:
                    L.neg_().clamp_(min=0).sqrt_().mul_(-spec.post_scale)
                st["diag"][s0:s1] = L[rows - s0, rows]
                # A pair is retrieved when its logit is its row's (column's)
                # maximum: compare values, no argmax needed.
                rmax = L.amax(dim=1)
                cmax = L.amax(dim=0)
                torch.maximum(st["col_max"], cmax, out=st["col_max"])
                R = float(rmax.max())
                # Columns whose chunk maximum is far below R would underflow
                # in the shared exp below: handle them exactly.
                risky = torch.nonzero((cmax < R - _SAFE_LOG_GAP)
                                      & (cmax > dg - _NEGLIGIBLE)).flatten()
                if risky.numel():
                    sub = L[:, risky]
                    exact = torch.logsumexp(sub.double(), dim=0)
                L.sub_(rmax[:, None]).exp_()
                st["row_max"][s0:s1] = rmax
                st["row_lse"][s0:s1] = rmax + torch.log(L.sum(dim=1))
                w = torch.exp(rmax - R)
                csum = (w @ L).double()
                chunk_lse = R + torch.log(csum)
                if risky.numel():
                    chunk_lse[risky] = exact
                st["col_lse"] = torch.logaddexp(st["col_lse"], chunk_lse)
    out = []
    for spec, st in zip(specs, acc):
        diag = st["diag"].double().numpy()
        # Retrieved when the own logit is the maximum; ties count as retrieved,
        # to float32 precision (see TIE_REL: duplicate captions tie exactly in
        # exact arithmetic, and float32 kernels may round two copies apart).
        own = st["diag"].numpy().astype(np.float64)
        tie = TIE_REL * max(float(np.abs(own).max()),
                            float(np.abs(st["row_max"].numpy()).max()), 1e-30)
        i2t = st["row_max"].numpy() <= own + tie
        t2i = st["col_max"].numpy() <= own + tie
        row_lse = st["row_lse"].double().numpy()
        col_lse = st["col_lse"].numpy()
        per_pair = -diag + 0.5 * row_lse + 0.5 * col_lse
        correct = i2t & t2i
        out.append(LossResult(
            total=float(per_pair.mean()), alignment=float(-diag.mean()),
            uniformity=float((0.5 * row_lse + 0.5 * col_lse).mean()),
            accuracy_i2t=float(i2t.mean()), accuracy_t2i=float(t2i.mean()),
            loss_correct=float(per_pair[correct].mean()) if correct.any() else float("nan"),
            loss_misclassified=(float(per_pair[~correct].mean())
                                if (~correct).any() else float("nan")),
            per_pair=per_pair, correct=correct, n_pairs=n,
            temperature=temperature, logit=spec.logit))
    return out


def _prepare(image, text, temperature):
    v = validate.embeddings(image, "paired image embeddings")
    t = validate.embeddings(text, "paired text embeddings")
    validate.paired(v, t, "paired image embeddings", "paired text embeddings")
    if not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}.")
    return _moments(v, t)


def contrastive_loss(image, text, temperature: float = CLIP_TEMPERATURE, *,
                     logit: str = "cosine", chunk: int = 128) -> LossResult:
    """CLIP loss of N row-paired embeddings as one batch (Double-Ellipsoid Eq. 7-8).

    ``image[k]`` and ``text[k]`` form pair k. Raw inputs; the cosine logit
    L_kj = cos(v_k, t_j) / temperature normalises internally. ``logit`` picks
    another geometry from the EuCLIP paper (see :func:`_geometry_spec`).
    """
    mom, vc, tc = _prepare(image, text, temperature)
    return _evaluate(vc, tc, [_geometry_spec(mom, logit, temperature)],
                     temperature, chunk)[0]


def logit_comparison(image, text, temperature: float = CLIP_TEMPERATURE,
                     kinds: Sequence[str] = LOGIT_KINDS, *, chunk: int = 128
                     ) -> dict[str, LossResult]:
    """The loss under each EuCLIP-paper logit, sharing one pass over the pairs."""
    mom, vc, tc = _prepare(image, text, temperature)
    res = _evaluate(vc, tc, [_geometry_spec(mom, k, temperature) for k in kinds],
                    temperature, chunk)
    return dict(zip(kinds, res))


@dataclass(frozen=True)
class AlphaSweep:
    """Loss curves while shifting one or both ellipsoids (Eq. 9, 14, 15; Fig. 6)."""

    modality: str
    alpha: np.ndarray
    total: np.ndarray
    alignment: np.ndarray
    uniformity: np.ndarray
    loss_correct: np.ndarray
    loss_misclassified: np.ndarray
    accuracy_i2t: np.ndarray
    accuracy_t2i: np.ndarray
    temperature: float

    @property
    def argmin(self) -> float:
        """The alpha with the lowest total loss (the paper finds it near 0)."""
        return float(self.alpha[int(np.argmin(self.total))])


def default_alphas() -> np.ndarray:
    """-1.0 to 1.0 in steps of 0.1 (21 values), the report's default grid."""
    return np.round(np.linspace(-1.0, 1.0, 21), 10)


def alpha_sweep(image, text, alphas=None, modality: Modality = "image",
                temperature: float = CLIP_TEMPERATURE, *, chunk: int = 128,
                progress=None) -> AlphaSweep:
    """Loss as a function of alpha for v' = v - alpha m (Double-Ellipsoid Eq. 9).

    ``modality`` "image" shifts the image set (Eq. 9), "text" the text set
    (Eq. 14), "both" each by its own mean (Eq. 15). All alphas share one
    matrix product per row chunk. ``progress(done, total)`` is called per
    batch of alphas.
    """
    if modality not in ("image", "text", "both"):
        raise InputError(f"modality must be image, text or both, got {modality!r}.")
    alphas = default_alphas() if alphas is None else np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(np.isfinite(alphas)):
        raise InputError("alphas must be a non-empty list of finite numbers.")
    mom, vc, tc = _prepare(image, text, temperature)
    specs = [_shift_spec(mom, a if modality in ("image", "both") else 0.0,
                         a if modality in ("text", "both") else 0.0, temperature)
             for a in alphas]
    # Batches of alphas keep progress visible; each batch re-does the product.
    batch = len(specs) if progress is None else max(1, min(len(specs), 7))
    res: list[LossResult] = []
    for s in range(0, len(specs), batch):
        res += _evaluate(vc, tc, specs[s:s + batch], temperature, chunk)
        if progress is not None:
            progress(len(res), len(specs))
    col = lambda f: np.array([getattr(r, f) for r in res])  # noqa: E731
    return AlphaSweep(modality=modality, alpha=alphas, total=col("total"),
                      alignment=col("alignment"), uniformity=col("uniformity"),
                      loss_correct=col("loss_correct"),
                      loss_misclassified=col("loss_misclassified"),
                      accuracy_i2t=col("accuracy_i2t"), accuracy_t2i=col("accuracy_t2i"),
                      temperature=temperature)


_SWEEP_ARRAYS = ("total", "alignment", "uniformity", "loss_correct", "loss_misclassified",
                 "accuracy_i2t", "accuracy_t2i")


def merge_alpha_sweeps(parts: Sequence[AlphaSweep]) -> AlphaSweep:
    """One :class:`AlphaSweep` (Eq. 9, 14, 15; Fig. 6) from sweeps over parts of
    an alpha grid, ordered by alpha.

    Each alpha's loss depends only on that alpha, so a grid swept in pieces
    (a coarse pass first, refined after) equals the grid swept at once. The
    parts must share modality and temperature; an alpha present in several
    parts is kept once (its first occurrence).
    """
    if not parts:
        raise InputError("no alpha sweeps to merge.")
    first = parts[0]
    for p in parts[1:]:
        if p.modality != first.modality or p.temperature != first.temperature:
            raise InputError("alpha sweeps of different modalities or temperatures "
                             "cannot be merged.")
    alpha = np.concatenate([np.asarray(p.alpha, np.float64) for p in parts])
    cols = {f: np.concatenate([np.asarray(getattr(p, f), np.float64) for p in parts])
            for f in _SWEEP_ARRAYS}
    _, keep = np.unique(alpha, return_index=True)     # first occurrences, by alpha
    return AlphaSweep(modality=first.modality, alpha=alpha[keep],
                      temperature=first.temperature,
                      **{f: v[keep] for f, v in cols.items()})
