"""Independent brute-force references (full N x N matrices, float64).

Deliberately written the obvious way, sharing no code with clipgeom, so the
tests compare the package's chunked O(N d) paths against ground truth.
"""

import numpy as np
from scipy.special import logsumexp


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def conformity(x, reference=None):
    u = unit(x)
    if reference is None:
        c = u @ u.T
        n = len(u)
        return (c.sum(1) - np.diag(c)) / (n - 1)
    return (u @ unit(reference).T).mean(1)


def logits(v, t, tau, ai=0.0, at=0.0, kind="cosine"):
    """The full N x N float64 logit matrix of image rows v against text rows t
    after v - ai m_v, t - at m_t (cosine), or of the EuCLIP geometries on rows
    scaled to unit RMS norm."""
    v = np.asarray(v, np.float64)
    t = np.asarray(t, np.float64)
    v = v - ai * v.mean(0)
    t = t - at * t.mean(0)
    if kind == "cosine":
        return unit(v) @ unit(t).T / tau
    vs = v / np.sqrt(np.mean(np.sum(v ** 2, 1)))
    ts = t / np.sqrt(np.mean(np.sum(t ** 2, 1)))
    if kind == "dot":
        return vs @ ts.T / tau
    d2 = np.maximum((vs ** 2).sum(1)[:, None] + (ts ** 2).sum(1)[None, :] - 2 * vs @ ts.T, 0)
    return -d2 / tau if kind == "neg_sq_distance" else -np.sqrt(d2) / tau


def clip_loss(v, t, tau, ai=0.0, at=0.0, kind="cosine"):
    """(total, alignment, uniformity, acc_i2t, acc_t2i, per_pair) by the N x N matrix."""
    L = logits(v, t, tau, ai, at, kind)
    n = len(L)
    diag = np.diag(L)
    r = logsumexp(L, axis=1)
    c = logsumexp(L, axis=0)
    per = -diag + 0.5 * r + 0.5 * c
    i2t = L.argmax(1) == np.arange(n)
    t2i = L.argmax(0) == np.arange(n)
    return dict(total=per.mean(), alignment=-diag.mean(), uniformity=(0.5 * r + 0.5 * c).mean(),
                acc_i2t=i2t.mean(), acc_t2i=t2i.mean(), per_pair=per, correct=i2t & t2i)
