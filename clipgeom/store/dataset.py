"""An opened dataset version: memory-mapped arrays, lazily read tables, its
derived-results folders, all inside the one version it was opened at."""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .. import validate
from ..errors import DatasetError, InputError
from . import locks
from .files import load_npy, pair_rows, to_none
from .layout import IMAGE_EMB, IMAGES, MANIFEST, TEXT_EMB, TEXTS, VERSION_PREFIX, make_dir
from .manifest import check_unchanged, read_manifest
from .tables import STRING_COLS


class Dataset:
    """An opened dataset: memory-mapped arrays, lazily loaded tables."""

    def __init__(self, name: str, path: Path, manifest: dict, read_only: bool,
                 image_emb: np.ndarray, text_emb: np.ndarray, home: Path,
                 hold: "locks.ReaderHold | None" = None):
        self.name = name
        # The version folder this object reads, and the shared lock that keeps
        # a concurrent overwrite from deleting it while this object lives.
        self._hold = hold
        self.path = Path(path)
        self.manifest = manifest
        self.read_only = read_only
        self.image_emb = image_emb
        self.text_emb = text_emb
        self.home = Path(home)
        self._images: pd.DataFrame | None = None
        self._texts: pd.DataFrame | None = None
        self._pairs: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        ro = ", read-only" if self.read_only else ""
        return (f"Dataset({self.name!r}, {self.n_images} images, "
                f"{self.n_texts} texts, dim {self.dim}{ro})")

    # counts ---------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return int(self.image_emb.shape[0])

    @property
    def n_texts(self) -> int:
        return int(self.text_emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.image_emb.shape[1])

    @property
    def version(self) -> str:
        """The version folder's name (``v-...``), or "" for the pre-version layout."""
        return self.path.name if self.path.name.startswith(VERSION_PREFIX) else ""

    def close(self) -> None:
        """Release the version (it may then be deleted once replaced)."""
        if self._hold is not None:
            self._hold.close()

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def model(self):
        return self.manifest.get("model")

    @property
    def normalized_input(self) -> dict:
        """{"image": bool, "text": bool}: were the stored rows unit-norm?"""
        return dict(self.manifest.get("normalized_input") or {})

    # tables -----------------------------------------------------------------
    def _load_table(self, fname: str, expected: int) -> pd.DataFrame:
        p = self.path / fname
        if not p.is_file():
            raise DatasetError(
                f"{p}: file missing; the dataset {self.name!r} is incomplete. "
                "Re-import it (with --overwrite)."
            )
        try:
            df = pq.read_table(p).to_pandas()
        except Exception as exc:
            raise DatasetError(
                f"{p}: cannot be read ({exc}); the file is corrupt. Re-import "
                f"the dataset {self.name!r} (with --overwrite)."
            ) from None
        if len(df) != expected:
            raise DatasetError(
                f"{p}: has {len(df)} rows but the manifest says {expected}; "
                f"the dataset is inconsistent. Re-import {self.name!r}."
            )
        for col in STRING_COLS[fname]:
            if col not in df.columns:
                raise DatasetError(
                    f"{p}: column {col!r} missing; re-import {self.name!r}."
                )
        # Nullable text columns come back as NaN in pandas; give None.
        for col in ("thumbnail", "image_id", "label"):
            if col == "image_id" and fname == IMAGES:
                continue
            if col in df.columns and not pd.api.types.is_numeric_dtype(df[col]):
                df[col] = to_none(df[col])
        return df

    def _table_key(self, *fnames: str) -> tuple | None:
        """The key of this version's tables in the process-wide cache: the
        version folder, the fingerprint and each file's stat (a file replaced
        or altered in place is read afresh). None when a file cannot be stat'ed
        (the reader then reports it)."""
        try:
            stats = tuple((f, st.st_ino, st.st_size, st.st_mtime_ns)
                          for f in fnames for st in [os.stat(self.path / f)])
        except OSError:
            return None
        return (str(self.path), self.fingerprint, stats)

    def _shared_table(self, fname: str, expected: int) -> pd.DataFrame:
        key = self._table_key(fname)
        df = _shared_get(key)
        if df is None:
            df = self._load_table(fname, expected)
            _shared_put(key, df)
        # a shallow copy: under pandas' copy-on-write, a caller that changes
        # its frame never changes the shared one (nor another caller's)
        return df.copy(deep=False)

    @property
    def images(self) -> pd.DataFrame:
        """The images table (read once per version and process: see :data:`_SHARED`)."""
        if self._images is None:
            self._images = self._shared_table(IMAGES, self.n_images)
        return self._images

    @property
    def texts(self) -> pd.DataFrame:
        """The texts table (read once per version and process: see :data:`_SHARED`)."""
        if self._texts is None:
            self._texts = self._shared_table(TEXTS, self.n_texts)
        return self._texts

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(image_rows, text_rows): per image, the first caption pointing at
        it, in image order; images without a caption are left out. Computed
        once per version and process (:data:`_SHARED`).

        DESIGN: "Paired analyses use one caption per image (the first)".
        """
        if self._pairs is None:
            key = self._table_key(IMAGES, TEXTS)
            key = None if key is None else key + ("pairs",)
            found = _shared_get(key)
            if found is None:
                found = pair_rows(self.images["image_id"], self.texts["image_id"])
                _shared_put(key, found)
            self._pairs = found
        return self._pairs[0].copy(), self._pairs[1].copy()

    # folders ------------------------------------------------------------------
    def _derived_dir(self, kind: str) -> Path:
        if self.read_only:
            d = self.home / kind / f"{self.name}-{self.fingerprint[:12]}"
        else:
            d = self.path / kind
        return make_dir(d)

    def shipped_dir(self, kind: str) -> "Path | None":
        """``<dataset>/<kind>`` of a read-only (bundled) dataset, when it ships
        one: derived results precomputed at build time, read in place."""
        d = self.path / kind
        return d if self.read_only and d.is_dir() else None

    @property
    def cache_dir(self) -> Path:
        """Folder for derived results; outside assets/ for read-only data."""
        return self._derived_dir("cache")

    @property
    def index_dir(self) -> Path:
        """Folder for search indexes; outside assets/ for read-only data."""
        return self._derived_dir("index")

    @property
    def extra_array_names(self) -> list[str]:
        return sorted((self.manifest.get("extra_arrays") or {}).keys())

    def extra_array(self, name: str) -> np.ndarray:
        """An extra array stored with the dataset, memory-mapped (read-only)."""
        meta = (self.manifest.get("extra_arrays") or {}).get(name)
        if meta is None:
            raise DatasetError(f"dataset {self.name!r} has no extra array {name!r} "
                               f"(it has: {', '.join(self.extra_array_names) or 'none'}).")
        path = self.path / "extra" / f"{name}.npy"
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot be read ({exc}); re-create the dataset.") \
                from None
        if list(arr.shape) != list(meta["shape"]):
            raise DatasetError(f"{path}: shape {arr.shape} differs from the manifest's "
                               f"{tuple(meta['shape'])}; re-create the dataset.")
        return arr

    def thumb_path(self, image_row: int) -> Path | None:
        """Path of image row's thumbnail, or None if it has none (or it is gone)."""
        row = int(image_row)
        if not 0 <= row < self.n_images:
            raise InputError(
                f"Image row {row} is out of range; dataset {self.name!r} has "
                f"{self.n_images} images (rows 0..{self.n_images - 1})."
            )
        t = self.images["thumbnail"].iloc[row]
        if t is None or (isinstance(t, float) and np.isnan(t)) or t == "":
            return None
        p = self.thumbs_dir / str(t)
        return p if p.is_file() else None

    @property
    def thumbs_dir(self) -> Path:
        """``thumbs/``; a bundled dataset of the same images as another bundled
        one (the demo's comparison models) names that one in its manifest
        (``thumbs_from``) and shares its thumbnails instead of shipping copies."""
        other = self.manifest.get("thumbs_from")
        if self.read_only and isinstance(other, str) and _PLAIN_NAME.fullmatch(other):
            return self.path.parent / other / "thumbs"
        return self.path / "thumbs"


# Parsed tables and pairings of dataset versions, shared by every ``Dataset``
# this process opens on the same version: a dashboard opens a dataset many
# times per page (and a server renders many pages), and at 1,000,000 rows
# reading both parquet tables and pairing them took 3.4 s each time. A version
# folder never changes once committed; the key also holds each table file's
# stat, so a file altered or replaced in place is read afresh, and a dataset
# re-imported under the same name is a new folder and fingerprint. Bounded,
# the least recently used entries going first: at most 24 entries (images,
# texts and their pairing of 8 versions, as many datasets as the dashboard's
# own per-dataset caches keep) holding at most 4,000,000 table rows in all
# (a version of 1,000,000 pairs held 370 MB). A smaller bound made a server
# cycling through a few datasets read every table again at each page, and
# which tables came from memory depended on the order pages were visited in.
_SHARED: "OrderedDict[tuple, object]" = OrderedDict()
_SHARED_MAX = 24
_SHARED_MAX_ROWS = 4_000_000
_SHARED_LOCK = threading.Lock()


def _rows(value) -> int:
    return len(value) if isinstance(value, pd.DataFrame) else 0


def _shared_get(key):
    if key is None:
        return None
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is not None:
            _SHARED.move_to_end(key)
        return found


def _shared_put(key, value) -> None:
    if key is None or _rows(value) > _SHARED_MAX_ROWS:
        return
    with _SHARED_LOCK:
        _SHARED[key] = value
        _SHARED.move_to_end(key)
        while (len(_SHARED) > _SHARED_MAX
               or sum(_rows(v) for v in _SHARED.values()) > _SHARED_MAX_ROWS):
            _SHARED.popitem(last=False)


def clear_shared() -> None:
    """Forget every shared table and pairing (tests; memory)."""
    with _SHARED_LOCK:
        _SHARED.clear()


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")   # a sibling folder, never a path


def _open_array(path: Path, fname: str, manifest: dict, name: str) -> np.ndarray:
    p = path / fname
    redo = f"Re-import the dataset {name!r} (with --overwrite)."
    if not p.is_file():
        raise DatasetError(f"{p}: array file missing; the dataset is incomplete. {redo}")
    arr, problem = load_npy(p)
    if problem == "pickled":
        raise DatasetError(
            f"{p}: contains pickled Python objects, which clipgeom never "
            f"loads. {redo}"
        )
    if problem:
        raise DatasetError(f"{p}: cannot be read ({problem[9:]}). {redo}")
    meta = manifest["arrays"][fname]
    want_shape = tuple(int(x) for x in meta["shape"])
    want_dtype = str(meta["dtype"])
    if arr.dtype != np.dtype(want_dtype) or arr.dtype != np.float32:
        raise DatasetError(
            f"{p}: dtype {arr.dtype} does not match the manifest "
            f"({want_dtype}, expected float32). {redo}"
        )
    if tuple(arr.shape) != want_shape or arr.ndim != 2:
        raise DatasetError(
            f"{p}: shape {tuple(arr.shape)} does not match the manifest "
            f"{want_shape}. {redo}"
        )
    return arr


def open_version(path: Path, name: str, read_only: bool, h: Path) -> Dataset:
    """Open one version folder: schema-checked manifest, unchanged files,
    memory-mapped arrays of the recorded shape, a reader hold on the folder."""
    manifest = read_manifest(path, name)
    img = _open_array(path, IMAGE_EMB, manifest, name)
    txt = _open_array(path, TEXT_EMB, manifest, name)
    mp = path / MANIFEST
    if img.shape[1] != txt.shape[1] or img.shape[1] != manifest["dim"] \
            or img.shape[0] != manifest["n_images"] \
            or txt.shape[0] != manifest["n_texts"]:
        raise DatasetError(
            f"{mp}: counts/dim (n_images {manifest['n_images']}, n_texts "
            f"{manifest['n_texts']}, dim {manifest['dim']}) do not match the "
            f"arrays {img.shape} and {txt.shape}. Re-import {name!r}."
        )
    check_unchanged(path, manifest, name)     # after the structural checks above
    for fname, arr in ((IMAGE_EMB, img), (TEXT_EMB, txt)):
        validate.mark_checked(arr, _row_check(manifest["arrays"][fname]["sha256"]))
    hold = None if read_only else locks.ReaderHold(path)
    return Dataset(name, path, manifest, read_only, img, txt, h, hold)


# Row checks (NaN/Inf, zero rows) of stored arrays, by the array file's sha256:
# run once per process at the first analysis of an opened array, then reused
# by every later open of the same content (clipgeom.validate.mark_checked).
_ROW_CHECKS: dict[str, "validate.RowCheck"] = {}
_ROW_CHECKS_MAX = 64


def _row_check(sha256: str):
    def check(arr: np.ndarray) -> "validate.RowCheck":
        found = _ROW_CHECKS.get(sha256)
        if found is None or found.rows != arr.shape[0]:
            found = validate.scan_rows(arr)
            if len(_ROW_CHECKS) >= _ROW_CHECKS_MAX:
                _ROW_CHECKS.pop(next(iter(_ROW_CHECKS)))
            _ROW_CHECKS[sha256] = found
        return found
    return check
