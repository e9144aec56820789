"""Validation at the edge: every analysis function calls these on its inputs.

They turn arrays that would give silently wrong numbers (NaN rows, zero
vectors, wrong shapes) into :class:`~clipgeom.errors.InputError` with a
message that names the array and the first offending rows.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

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


def shape(shape, dtype, name: str = "embeddings", *, min_rows: int = 2) -> tuple[int, int]:
    """The structural checks of :func:`embeddings` from a shape and dtype alone
    (a ``.npy`` header, say): real numbers, 2-D, some features, enough rows.
    Returns (rows, features)."""
    check_dtype(dtype, name)
    shape = tuple(int(k) for k in shape)
    if len(shape) != 2:
        raise InputError(
            f"{name}: expected a 2-D array [rows, features], got shape {shape}."
        )
    n, d = shape
    if d == 0:
        raise InputError(f"{name}: has zero features (shape {shape}).")
    if n < min_rows:
        raise InputError(
            f"{name}: needs at least {min_rows} rows, got {n}."
        )
    return n, d


def embeddings(x, name: str = "embeddings", *, min_rows: int = 2,
               allow_zero: bool = False, dtype=np.float32) -> np.ndarray:
    """Check a 2-D finite embedding matrix and return it as ``dtype``.

    Raises InputError naming ``name`` for: non-numeric, complex or non-2-D
    input, fewer than ``min_rows`` rows, zero width, NaN/Inf values (with the
    rows), values too large for ``dtype`` (a float64 1e300 would become Inf in
    float32; with the rows), and all-zero rows unless ``allow_zero`` (their
    direction is undefined, so cosines and conformity are meaningless for them).

    An array the store checked when its dataset was opened (see
    :func:`mark_checked`) is not scanned again: only its shape is checked, and
    the recorded bad rows, if any, raise the same errors.
    """
    known = _checked(x, dtype)
    if known is not None:
        shape(x.shape, x.dtype, name, min_rows=min_rows)
        known.raise_for(x, name, allow_zero)
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise InputError(f"{name}: cannot be read as an array ({exc}).") from None
    shape(arr.shape, arr.dtype, name, min_rows=min_rows)
    src = arr
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.asarray(arr, dtype=dtype)
    scan = RowScan()
    for s in range(0, arr.shape[0], _SCAN_ROWS):
        scan.add(arr[s:s + _SCAN_ROWS], s)
    scan.result().raise_for(src, name, allow_zero, np.dtype(dtype))
    return arr


# --------------------------------------------------------------------------
# One scan of the rows (finite values, zero rows), in blocks, reusable:
# validate.embeddings, the store's streaming import and its check on open.

_SCAN_ROWS = 65536


@dataclass(frozen=True)
class RowCheck:
    """What a scan found: the rows with a non-finite value and the all-zero rows."""

    rows: int
    nonfinite: np.ndarray
    zero: np.ndarray

    def raise_for(self, src, name: str, allow_zero: bool,
                  dtype: np.dtype = np.dtype(np.float32)) -> None:
        """Raise :func:`embeddings`'s InputError for what was found, if anything.
        ``src``: the rows before conversion (tells NaN/Inf from overflow)."""
        if self.nonfinite.size:
            _raise_nonfinite(src, self.nonfinite, name, np.dtype(dtype))
        if not allow_zero and self.zero.size:
            raise InputError(
                f"{name}: all-zero vector in {_rows(self.zero)} (0-based); a zero "
                "vector has no direction, so cosine measures are undefined. "
                "Remove those items."
            )


class RowScan:
    """Accumulates :class:`RowCheck` over converted row blocks, in row order."""

    def __init__(self):
        self._bad: list[np.ndarray] = []
        self._zero: list[np.ndarray] = []
        self._rows = 0

    def add(self, block: np.ndarray, start: int) -> None:
        finite = np.isfinite(block)
        if not finite.all():
            self._bad.append(start + np.flatnonzero(~finite.all(axis=1)))
        z = ~np.any(block != 0, axis=1)
        if z.any():
            self._zero.append(start + np.flatnonzero(z))
        self._rows = max(self._rows, start + block.shape[0])

    def result(self) -> RowCheck:
        def cat(parts):
            return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return RowCheck(rows=self._rows, nonfinite=cat(self._bad), zero=cat(self._zero))


# Arrays checked once (the store's memory maps, read-only): id -> (weakref, check).
_CHECKED: dict[int, tuple] = {}
_CHECKED_LOCK = threading.Lock()


def mark_checked(x: np.ndarray, check) -> None:
    """Record that the read-only array ``x`` was checked: later
    :func:`embeddings` calls on this same object skip the scan.

    ``check``: a :class:`RowCheck`, or a callable ``check(x)`` returning one,
    run at the first :func:`embeddings` call (so opening a dataset costs
    nothing until an analysis reads it). Only read-only float32 arrays are
    recorded: nothing in this process can change their values afterwards.
    """
    if not isinstance(x, np.ndarray) or x.flags.writeable or x.dtype != np.float32:
        return
    key = id(x)

    def forget(_ref, key=key):
        with _CHECKED_LOCK:
            entry = _CHECKED.get(key)
            if entry is not None and entry[0] is _ref:
                del _CHECKED[key]

    with _CHECKED_LOCK:
        _CHECKED[key] = (weakref.ref(x, forget), check)


def _checked(x, dtype) -> "RowCheck | None":
    if not isinstance(x, np.ndarray) or np.dtype(dtype) != x.dtype:
        return None
    entry = _CHECKED.get(id(x))
    if entry is None or entry[0]() is not x or x.flags.writeable:
        return None
    check = entry[1]
    if not isinstance(check, RowCheck):
        check = check(x)
        with _CHECKED_LOCK:
            if _CHECKED.get(id(x), (None,))[0] is entry[0]:
                _CHECKED[id(x)] = (entry[0], check)
    return check


def checked(x, name: str = "embeddings", *, min_rows: int = 2) -> np.ndarray:
    """:func:`embeddings` (no zero rows), returned as a read-only float32 view
    recorded as checked, so the analysis functions it is passed to next do not
    scan it again. For one computation on an array nobody changes meanwhile
    (``build_report`` on in-memory arrays); store arrays are already recorded."""
    arr = embeddings(x, name, min_rows=min_rows)
    if _checked(arr, np.float32) is not None:
        return arr
    view = arr.view()
    view.flags.writeable = False
    empty = np.empty(0, dtype=np.int64)
    mark_checked(view, RowCheck(rows=int(view.shape[0]), nonfinite=empty, zero=empty))
    return view


def scan_rows(x: np.ndarray, rows: int = _SCAN_ROWS) -> RowCheck:
    """One blocked scan of a float32 array for non-finite values and zero rows."""
    scan = RowScan()
    for s in range(0, x.shape[0], rows):
        scan.add(np.asarray(x[s:s + rows]), s)
    return scan.result()


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
