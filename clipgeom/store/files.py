"""Small file helpers of the store: hashing, .npy headers without unpickling,
durable writes (fsync), the pairing of captions to images."""

from __future__ import annotations

import hashlib
import json
import os
import tokenize
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


def save_array(path: Path, arr: np.ndarray) -> None:
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


def load_npy(path: Path):
    """Memory-map a .npy file without unpickling. Returns (array, problem).

    ``problem`` is "pickled", "corrupt: ..." or None.
    """
    try:
        shape, _, dtype = npy_header(path)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError,
            MemoryError, RecursionError) as exc:   # numpy parses the header as Python
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
    idx = pd.Index(pd.Series(list(image_ids), dtype=object))
    tids = pd.Series(list(text_image_ids), dtype=object)
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
