"""Spherical interpolation between embeddings: SLERP and vSLERP.

Levi & Gilboa, "The Double-Ellipsoid Geometry of CLIP", Sec. 7.2: because
CLIP embeddings lie on a shell around an offset mean m, interpolating on the
sphere around the origin (SLERP) cuts through the inside of the shell;
vSLERP shifts the centre of rotation to alpha * m.
"""

from __future__ import annotations

import numpy as np

from . import validate
from .errors import InputError

# Below this angle (radians) between a and b, SLERP falls back to normalised
# linear interpolation of the directions (sin(omega) would lose precision).
PARALLEL_TOL = 1e-6


def _vec(v, name: str) -> np.ndarray:
    arr = np.asarray(v)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InputError(f"{name}: expected one embedding vector, got shape {arr.shape}.")
    return validate.embeddings(arr[None, :], name, min_rows=1, dtype=np.float64)[0]


def _thetas(theta):
    t = np.asarray(theta, dtype=np.float64)
    if t.ndim > 1:
        raise InputError(f"theta must be a number or a 1-D array of numbers, got shape {t.shape}.")
    if not np.isfinite(t).all() or np.any(t < 0) or np.any(t > 1):
        raise InputError("theta must be between 0 and 1 (0 gives a, 1 gives b).")
    return t


def _slerp(a: np.ndarray, b: np.ndarray, theta, name_a: str, name_b: str) -> np.ndarray:
    if a.shape != b.shape:
        raise InputError(f"{name_a} has {a.shape[0]} features but {name_b} has {b.shape[0]}.")
    t = _thetas(theta)
    scalar = t.ndim == 0
    t = np.atleast_1d(t)[:, None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua, ub = a / na, b / nb
    # Angle via atan2 of |a x b| and a.b: accurate for tiny and near-pi angles.
    cos = float(np.dot(ua, ub))
    sin = float(np.linalg.norm(ub - cos * ua))
    omega = float(np.arctan2(sin, cos))
    if np.pi - omega < PARALLEL_TOL:
        raise InputError(
            f"{name_a} and {name_b} point in opposite directions; the arc between them is "
            "not unique, so spherical interpolation is undefined."
        )
    if omega < PARALLEL_TOL:
        u = (1 - t) * ua + t * ub
        u /= np.linalg.norm(u, axis=1, keepdims=True)
    else:
        u = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / np.sin(omega)
    out = u * ((1 - t) * na + t * nb)
    return out[0] if scalar else out


def slerp(a, b, theta) -> np.ndarray:
    """Spherical linear interpolation from ``a`` (theta=0) to ``b`` (theta=1).

    Double-Ellipsoid Sec. 7.2 (SLERP, Shoemake 1985). The direction moves
    along the great-circle arc between a/|a| and b/|b| at constant angular
    speed: u(theta) = [sin((1-theta) W) a^ + sin(theta W) b^] / sin W with
    W the angle between them. Choice for vectors of different norms: the
    norm is interpolated linearly, |x(theta)| = (1-theta)|a| + theta|b|, so
    the path keeps the constant angular speed and ends exactly at a and b.
    Nearly parallel vectors (W < 1e-6 rad) use normalised linear
    interpolation of the directions; exactly opposite vectors raise
    InputError (the arc is not unique).

    ``theta`` is a number in [0, 1] (returns [d]) or a 1-D array of them
    (returns [T, d], one row per theta). float64.
    """
    return _slerp(_vec(a, "vector a"), _vec(b, "vector b"), theta, "vector a", "vector b")


def vslerp(a, b, theta, alpha: float, mean) -> np.ndarray:
    """vSLERP: SLERP around the shifted centre alpha * m (Double-Ellipsoid Sec. 7.2).

    vSLERP(a, b, theta, alpha) = SLERP(a - alpha m, b - alpha m, theta) + alpha m,
    with ``mean`` = m (the modality mean of the raw embeddings). alpha = 0 is
    plain SLERP; alpha = 1 rotates around the mean itself, staying on the
    shell of the ellipsoid. Shapes and theta as in :func:`slerp`.
    """
    a = _vec(a, "vector a")
    b = _vec(b, "vector b")
    m = np.asarray(mean, dtype=np.float64)
    if m.shape != a.shape:
        raise InputError(f"mean: expected a vector of length {a.shape[0]}, got shape {m.shape}.")
    if not np.isfinite(m).all():
        raise InputError("mean: contains NaN or Inf values.")
    alpha = float(alpha)
    if not np.isfinite(alpha):
        raise InputError(f"alpha must be a finite number, got {alpha}.")
    shift = alpha * m
    sa = _vec(a - shift, "vector a - alpha * mean")
    sb = _vec(b - shift, "vector b - alpha * mean")
    return _slerp(sa, sb, theta, "vector a - alpha * mean", "vector b - alpha * mean") + shift


def nearest_cosine(queries, targets, k: int = 1, *, chunk: int = 65536, exclude=()
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours of each query row among ``targets`` rows.

    Returns (rows [Q, k], cosines [Q, k]), best first. Targets are read in row
    chunks (a memory-mapped array is never copied whole); zero target rows and
    the rows listed in ``exclude`` never match (when fewer rows can match than
    k, the missing places hold row -1 and cosine -inf). Used to show which
    items lie nearest a SLERP/vSLERP path.
    """
    q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    x = validate.embeddings(targets, "targets", min_rows=1, allow_zero=True)
    validate.same_width(q, x, "queries", "targets")
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(qn == 0) or not np.isfinite(q).all():
        raise InputError("a query vector is zero or not finite; its cosine is undefined.")
    q = q / qn
    k = int(min(max(1, k), x.shape[0]))
    excl = np.unique(np.asarray(list(exclude), dtype=np.int64))
    best_rows = np.zeros((q.shape[0], 0), dtype=np.int64)
    best_cos = np.zeros((q.shape[0], 0))
    for start in range(0, x.shape[0], chunk):
        block = np.asarray(x[start:start + chunk], dtype=np.float64)
        norms = np.linalg.norm(block, axis=1)
        cos = (block @ q.T).T / np.where(norms > 0, norms, np.inf)
        cos[:, norms == 0] = -np.inf
        hit = excl[(excl >= start) & (excl < start + len(block))] - start
        cos[:, hit] = -np.inf
        rows = np.concatenate([best_rows, np.broadcast_to(
            np.arange(start, start + len(block)), cos.shape)], axis=1)
        vals = np.concatenate([best_cos, cos], axis=1)
        top = np.argsort(-vals, axis=1, kind="stable")[:, :k]
        best_rows = np.take_along_axis(rows, top, 1)
        best_cos = np.take_along_axis(vals, top, 1)
    best_rows = np.where(np.isneginf(best_cos), -1, best_rows)
    return best_rows, best_cos


def index_nearest(ds, modality: str):
    """A nearest-rows function over the FAISS index of ``modality`` of ``ds``
    (:mod:`clipgeom.index`), for :func:`compare_paths`'s ``targets``: it
    replaces a scan of every row per path point with one index search.

    ``nearest(points [T, d], k, exclude) -> (rows [T, k], cosines [T, k])``,
    like :func:`nearest_cosine`: best first, the rows in ``exclude`` left
    out, row -1 / cosine -inf where fewer rows can match. On an exact (flat)
    index these are :func:`nearest_cosine`'s rows (cosines equal to float32
    rounding: the index holds normalised float32 rows); on an approximate
    (IVF) index, those its calibrated ``nprobe`` finds (recall@10 >= 0.95).
    The function's ``kind`` attribute names the index ("flat" / "ivf").
    """
    from . import index

    info = index.stored_info(ds, modality) or index.load_index(ds, modality)[1]

    def nearest(points, k: int = 1, exclude=()) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if not np.isfinite(q).all() or np.any(np.linalg.norm(q, axis=1) == 0):
            raise InputError("a query vector is zero or not finite; its cosine is undefined.")
        excl = set(int(r) for r in exclude)
        k = int(min(max(1, k), info.n))
        # the points of a path probe mostly the same IVF lists: list by list
        res = index.search(ds, modality, q, k + len(excl), batch=len(q) > 1)
        rows = np.full((q.shape[0], k), -1, dtype=np.int64)
        cos = np.full((q.shape[0], k), -np.inf)
        for i, (rr, ss) in enumerate(zip(res.rows, res.scores)):
            keep = [(r, c) for r, c in zip(rr.tolist(), ss.tolist())
                    if r >= 0 and r not in excl][:k]
            for j, (r, c) in enumerate(keep):
                rows[i, j], cos[i, j] = r, c
        return rows, cos

    nearest.kind = info.kind
    return nearest


def repeats(rows) -> np.ndarray:
    """True where an item equals the one just before it along a path (the
    same nearest item at consecutive thetas), so a gallery shows it once."""
    r = np.asarray(rows).ravel()
    out = np.zeros(len(r), dtype=bool)
    out[1:] = r[1:] == r[:-1]
    return out


def compare_paths(a, b, mean, thetas, alpha: float, targets: dict, *,
                  exclude: dict | None = None) -> dict:
    """SLERP vs vSLERP between ``a`` and ``b`` and what lies nearest each point
    (Double-Ellipsoid Sec. 7.2, Fig. 12).

    For ``path`` in ("slerp", "vslerp") returns the points [T, d], their
    cos(m, x) (the conformity proxy of Def. 2), ||x - m|| (the distance to the
    modality mean: the shell radius of Eq. 1-4 on the shell), their norms, and
    for each name in ``targets`` ({name: [N, d] array}) the nearest row and its
    cosine at every theta (``nearest_<name>``, ``nearest_<name>_cos``) and
    whether it repeats the previous theta's (``nearest_<name>_repeat``).
    ``exclude`` ({name: rows}) leaves rows out of the search, e.g. the two
    endpoints themselves, so the galleries show what lies ALONG the path
    rather than the endpoints again. vSLERP around the mean (alpha = 1) keeps
    ||x - m|| between the endpoints' values, i.e. on the shell; SLERP around
    the origin does not.

    A ``targets`` value is an array (its rows are scanned by
    :func:`nearest_cosine`) or a nearest-rows function such as
    :func:`index_nearest` (a FAISS index: no scan of every row).
    """
    thetas = np.asarray(thetas, dtype=np.float64).ravel()
    m = np.asarray(mean, dtype=np.float64)
    mn = np.linalg.norm(m)
    exclude = exclude or {}
    out = {"thetas": thetas}
    paths = {"slerp": slerp(a, b, thetas), "vslerp": vslerp(a, b, thetas, alpha, m)}
    for name, pts in paths.items():
        norms = np.linalg.norm(pts, axis=1)
        out[name] = {"points": pts, "norm": norms,
                     "dist_to_mean": np.linalg.norm(pts - m, axis=1),
                     "cos_to_mean": ((pts @ m) / (norms * mn) if mn > 0
                                     else np.full(len(pts), np.nan))}
    # Both paths' points in ONE search per target (one index search, or one
    # scan of every row, instead of one per path): each point's nearest row
    # does not depend on the other points searched with it.
    stacked = np.vstack(list(paths.values()))
    for tname, x in targets.items():
        if callable(x):
            rows, cos = x(stacked, 1, exclude.get(tname, ()))
        else:
            rows, cos = nearest_cosine(stacked, x, 1, exclude=exclude.get(tname, ()))
        start = 0
        for name, pts in paths.items():
            r, c = rows[start:start + len(pts), 0], cos[start:start + len(pts), 0]
            start += len(pts)
            out[name][f"nearest_{tname}"] = r
            out[name][f"nearest_{tname}_cos"] = c
            out[name][f"nearest_{tname}_repeat"] = repeats(r)
    return out
