"""Validation at the edge: every analysis function calls these on its inputs.

They turn arrays that would give silently wrong numbers (NaN rows, zero
vectors, wrong shapes) into :class:`~clipgeom.errors.InputError` with a
message that names the array and the first offending rows.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def _rows(idx: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"row{'s' if len(idx) > 1 else ''} {shown}{more}"


def check_dtype(dtype, name: str = "embeddings") -> np.dtype:
    """Raise InputError unless ``dtype`` holds real numbers.

    Refuses object/string/bool dtypes and complex numbers: converting a
    complex array to float would silently drop its imaginary part. Cheap: a
    ``.npy`` importer can call it on the header's dtype before reading data.
    """
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.complexfloating):
        raise InputError(
            f"{name}: complex values (dtype {dt}); embeddings must be real numbers, "
            "and converting would silently drop the imaginary part. Save the real "
            "array (for example np.save(path, x.real) if the imaginary part is "
            "meant to be zero)."
        )
    if dt.hasobject or not np.issubdtype(dt, np.number):
        raise InputError(f"{name}: expected numbers, got dtype {dt}.")
    return dt


def embeddings(x, name: str = "embeddings", *, min_rows: int = 2,
               allow_zero: bool = False, dtype=np.float32) -> np.ndarray:
    """Check a 2-D finite embedding matrix and return it as ``dtype``.

    Raises InputError naming ``name`` for: non-numeric, complex or non-2-D
    input, fewer than ``min_rows`` rows, zero width, NaN/Inf values (with the
    rows), values too large for ``dtype`` (a float64 1e300 would become Inf in
    float32; with the rows), and all-zero rows unless ``allow_zero`` (their
    direction is undefined, so cosines and conformity are meaningless for them).
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise InputError(f"{name}: cannot be read as an array ({exc}).") from None
    check_dtype(arr.dtype, name)
    if arr.ndim != 2:
        raise InputError(
            f"{name}: expected a 2-D array [rows, features], got shape {arr.shape}."
        )
    n, d = arr.shape
    if d == 0:
        raise InputError(f"{name}: has zero features (shape {arr.shape}).")
    if n < min_rows:
        raise InputError(
            f"{name}: needs at least {min_rows} rows, got {n}."
        )
    src = arr
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.asarray(arr, dtype=dtype)
    bad = _nonfinite_rows(arr)
    if bad.size:
        _raise_nonfinite(src, bad, name, np.dtype(dtype))
    if not allow_zero:
        zero = _zero_rows(arr)
        if zero.size:
            raise InputError(
                f"{name}: all-zero vector in {_rows(zero)} (0-based); a zero "
                "vector has no direction, so cosine measures are undefined. "
                "Remove those items."
            )
    return arr


def _raise_nonfinite(src: np.ndarray, bad: np.ndarray, name: str,
                     dtype: np.dtype) -> None:
    """Rows non-finite after conversion: NaN/Inf in the input, or finite input
    values beyond the range of ``dtype`` (overflow to Inf)."""
    own = np.concatenate([~np.isfinite(np.asarray(src[bad[s:s + 4096]])).all(axis=1)
                          for s in range(0, bad.size, 4096)])
    nan_rows, big_rows = bad[own], bad[~own]
    parts = []
    if nan_rows.size:
        parts.append(f"NaN or Inf values in {_rows(nan_rows)} (0-based)")
    if big_rows.size:
        first = np.asarray(src[big_rows[0]])
        big = float(np.max(np.abs(first.astype(np.float64, copy=False))))
        parts.append(
            f"values too large for {dtype.name} in {_rows(big_rows)} (0-based; the "
            f"first, row {int(big_rows[0])}, holds {big:.4g}, and {dtype.name} holds "
            f"at most {float(np.finfo(dtype).max):.4g} in magnitude)")
    raise InputError(
        f"{name}: {'; '.join(parts)}. Remove or re-embed those items"
        + (", or rescale the array." if big_rows.size else ".")
    )


def _nonfinite_rows(arr: np.ndarray, chunk: int = 65536) -> np.ndarray:
    # Chunked so a memory-mapped million-row array is scanned without a copy.
    out = []
    for s in range(0, arr.shape[0], chunk):
        block = arr[s:s + chunk]
        if not np.isfinite(block).all():
            out.append(s + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def _zero_rows(arr: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = []
    for s in range(0, arr.shape[0], chunk):
        block = arr[s:s + chunk]
        z = ~np.any(block != 0, axis=1)
        if z.any():
            out.append(s + np.flatnonzero(z))
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def same_width(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise InputError when two embedding matrices have different widths."""
    if a.shape[1] != b.shape[1]:
        raise InputError(
            f"{name_a} has {a.shape[1]} features but {name_b} has {b.shape[1]}; "
            "both modalities must come from the same model."
        )


def paired(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise InputError unless two matrices are row-paired (same rows and width)."""
    same_width(a, b, name_a, name_b)
    if a.shape[0] != b.shape[0]:
        raise InputError(
            f"{name_a} has {a.shape[0]} rows but {name_b} has {b.shape[0]}; "
            "paired measures need one row of each per pair."
        )


def in_range(value, lo, hi, name: str) -> None:
    if not (lo <= value <= hi):
        raise InputError(f"{name} must be between {lo} and {hi}, got {value}.")
