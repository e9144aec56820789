"""Small file helpers of the store: hashing, .npy headers without unpickling,
durable writes (fsync), the pairing of captions to images."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .layout import ARRAY_FILES, NORM_TOL, TABLE_FILES


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fingerprint_of(hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for fname in ARRAY_FILES + TABLE_FILES:
        h.update(f"{fname}:{hashes[fname]}\n".encode())
    return h.hexdigest()


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def save_array(path: Path, arr):
    """Write ``arr`` as a ``.npy`` file, fsync'd. A row source
    (:class:`ArrayRows`, :class:`NpyRows`) is streamed as float32 by
    :func:`write_float32_rows`, whose :class:`Written` is returned."""
    if isinstance(arr, (ArrayRows, NpyRows)):
        return write_float32_rows(path, arr)
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def write_manifest(path: Path, manifest: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def npy_header(path: Path):
    """(shape, fortran_order, dtype) of a .npy file; raises ValueError/OSError."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
        # (3, 0) and later: let the private reader handle it if present.
        reader = getattr(np.lib.format, "_read_array_header", None)
        if reader is None:  # pragma: no cover
            raise ValueError(f"unsupported .npy version {version}")
        return reader(f, version)


# What reading a .npy header can raise (numpy parses the header as Python).
HEADER_ERRORS = (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError,
                 MemoryError, RecursionError)


def load_npy(path: Path):
    """Memory-map a .npy file without unpickling. Returns (array, problem).

    ``problem`` is "pickled", "corrupt: ..." or None.
    """
    try:
        shape, _, dtype = npy_header(path)
    except HEADER_ERRORS as exc:
        return None, f"corrupt: {exc}"
    if dtype.hasobject:
        return None, "pickled"
    try:
        if int(np.prod(shape)) == 0:
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return None, f"corrupt: {exc}"
    return arr, None


# --------------------------------------------------------------------------
# Streaming arrays into the store: read, convert, check, hash and write each
# row block once, so memory is one block whatever the array's length.

STREAM_ROWS = 16384


class ArrayRows:
    """Row blocks of an array in memory or memory-mapped (any real dtype)."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr
        self.shape = tuple(arr.shape)
        self.dtype = arr.dtype

    def blocks(self, rows: int):
        for s in range(0, self.shape[0], rows):
            yield s, np.asarray(self.arr[s:s + rows])

    def __getitem__(self, idx):
        return np.asarray(self.arr[idx])


class NpyRows:
    """Row blocks of a ``.npy`` file, read with plain reads (never unpickled,
    never memory-mapped whole): memory is one block whatever the file's size.

    Raises ValueError/OSError (as :func:`npy_header`) for an unreadable
    header or a file shorter than its header says.
    """

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:                         # (3, 0) and later: numpy's private reader
                reader = getattr(np.lib.format, "_read_array_header", None)
                if reader is None:  # pragma: no cover
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = reader(f, version)
            self.offset = f.tell()
        self.shape, self.fortran, self.dtype = tuple(shape), bool(fortran), dtype
        if dtype.hasobject:
            return                     # the caller refuses pickled arrays by dtype
        need = self.offset + int(np.prod(self.shape, dtype=np.int64)) * dtype.itemsize
        size = self.path.stat().st_size
        if size < need:
            raise ValueError(f"the file is truncated: {size} bytes, its header "
                             f"describes {need}")

    def _map(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def blocks(self, rows: int):
        n = self.shape[0]
        if self.fortran or len(self.shape) != 2:
            arr = self._map()                   # column-major: no contiguous row blocks
            for s in range(0, n, rows):
                yield s, np.ascontiguousarray(arr[s:s + rows])
            return
        row_bytes = self.shape[1] * self.dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for s in range(0, n, rows):
                k = min(rows, n - s)
                buf = np.empty(k * row_bytes, dtype=np.uint8)
                if f.readinto(memoryview(buf)) != buf.size:
                    raise OSError(f"{self.path}: ended early (was it changed while reading?)")
                yield s, buf.view(self.dtype).reshape(k, self.shape[1])

    def __getitem__(self, idx):
        return np.asarray(self._map()[idx])


def npy_header_bytes(shape, dtype=np.float32) -> bytes:
    """The header ``np.save`` writes for a C-order array of ``shape`` and ``dtype``."""
    bio = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        bio, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
              "fortran_order": False, "shape": tuple(int(k) for k in shape)})
    return bio.getvalue()


@dataclass(frozen=True)
class Written:
    """What :func:`write_float32_rows` wrote and found."""

    sha256: str
    shape: tuple
    normalized: bool
    check: "validate.RowCheck"


def write_float32_rows(dest: Path, source, rows: int | None = None) -> Written:
    """Write ``source`` (:class:`ArrayRows` / :class:`NpyRows`, 2-D) as a
    float32 ``.npy`` file, byte for byte what ``np.save`` writes, in one pass
    over row blocks: each block is converted, scanned for NaN/Inf and zero
    rows (see :meth:`Written.check`; the caller decides what is an error),
    tested for unit norms, hashed and written; fsync'd at the end."""
    from .. import validate

    n, d = source.shape
    rows = int(rows or STREAM_ROWS)
    header = npy_header_bytes((n, d))
    h = hashlib.sha256(header)
    scan = validate.RowScan()
    normalized = n > 0
    with open(dest, "wb") as f:
        f.write(header)
        for start, block in source.blocks(rows):
            with np.errstate(over="ignore", invalid="ignore"):
                b32 = np.ascontiguousarray(block, dtype=np.float32)
            scan.add(b32, start)
            if normalized:
                normalized = _unit_rows(b32)
            view = memoryview(b32).cast("B")
            h.update(view)
            f.write(view)
        f.flush()
        os.fsync(f.fileno())
    return Written(sha256=h.hexdigest(), shape=(n, d), normalized=bool(normalized),
                   check=scan.result())


def _unit_rows(block: np.ndarray) -> bool:
    b = np.asarray(block, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", b, b))
    return bool(np.all(np.abs(norms - 1.0) <= NORM_TOL))


def is_normalized(arr: np.ndarray, chunk: int = 65536) -> bool:
    """True when every row's L2 norm is within NORM_TOL of 1."""
    for s in range(0, arr.shape[0], chunk):
        block = np.asarray(arr[s:s + chunk], dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        if np.any(np.abs(norms - 1.0) > NORM_TOL):
            return False
    return arr.shape[0] > 0


def pair_rows(image_ids, text_image_ids) -> tuple[np.ndarray, np.ndarray]:
    """One caption per image: the first text row pointing at each image.

    Returns (image_rows, text_rows), in image order; images without a
    caption are left out.
    """
    ids = (image_ids if isinstance(image_ids, pd.Series)
           else pd.Series(list(image_ids), dtype=object))
    tids = (text_image_ids if isinstance(text_image_ids, pd.Series)
            else pd.Series(list(text_image_ids), dtype=object))
    if (pd.api.types.infer_dtype(ids, skipna=False) == "string"
            and pd.api.types.infer_dtype(tids, skipna=True) in ("string", "empty")):
        # Every id a string, as the store writes them (unique image ids: checked
        # at import): an Arrow hash lookup, 0.35 s instead of 1.6 s for
        # 1,000,000 rows; a missing text id (None, NaN) matches no image.
        import pyarrow as pa
        import pyarrow.compute as pc

        ia = pa.array(ids.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
        ta = pa.array(tids.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
        img = pc.index_in(ta, value_set=ia).fill_null(-1).to_numpy(zero_copy_only=False)
        img = img.astype(np.int64, copy=False)
    else:
        idx = pd.Index(ids.astype(object))
        tids = tids.astype(object)
        tids = tids.where(tids.notna(), None)
        img = idx.get_indexer(tids.to_numpy(dtype=object))
    text_rows = np.flatnonzero(img >= 0)
    uniq, first = np.unique(img[text_rows], return_index=True)
    return uniq.astype(np.int64), text_rows[first].astype(np.int64)


def to_none(series: pd.Series) -> pd.Series:
    s = series.astype(object)
    return s.where(s.notna(), None)



def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
