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


def embeddings(x, name: str = "embeddings", *, min_rows: int = 2,
               allow_zero: bool = False, dtype=np.float32) -> np.ndarray:
    """Check a 2-D finite embedding matrix and return it as ``dtype``.

    Raises InputError naming ``name`` for: non-numeric or non-2-D input,
    fewer than ``min_rows`` rows, zero width, NaN/Inf values (with the rows),
    and all-zero rows unless ``allow_zero`` (their direction is undefined, so
    cosines and conformity are meaningless for them).
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise InputError(f"{name}: cannot be read as an array ({exc}).") from None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}.")
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
    arr = np.asarray(arr, dtype=dtype)
    bad = _nonfinite_rows(arr)
    if bad.size:
        raise InputError(
            f"{name}: NaN or Inf values in {_rows(bad)} (0-based). "
            "Remove or re-embed those items."
        )
    if not allow_zero:
        zero = _zero_rows(arr)
        if zero.size:
            raise InputError(
                f"{name}: all-zero vector in {_rows(zero)} (0-based); a zero "
                "vector has no direction, so cosine measures are undefined. "
                "Remove those items."
            )
    return arr


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
