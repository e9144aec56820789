"""Datasets on disk: the only code that reads or writes their files.

Layout of one dataset (see docs / DESIGN "A dataset on disk")::

    <home>/datasets/<name>/
      manifest.json    schema_version, name, created, model, dim, counts,
                       normalized_input, source, arrays (sha256/shape/dtype),
                       fingerprint, skipped, plus importer extras
      image_emb.npy    float32 [n_images, d], raw encoder output
      text_emb.npy     float32 [n_texts, d], raw
      images.parquet   image_id, source, thumbnail (+ label / metadata)
      texts.parquet    text_id, caption, image_id (pairing, may be null) (+ label)
      thumbs/ index/ cache/

Writes go to ``<home>/datasets/.tmp-<name>-<random>`` and are renamed into
place when complete, so a crash leaves the old dataset or the new one, never
half of one. Arrays open memory-mapped and are never unpickled.

Bundled datasets under ``assets/`` (next to the package) are listed and
openable but read-only: their caches and indexes live under
``<home>/cache`` and ``<home>/index`` instead.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import validate
from .captions import read_captions, read_image_list, read_labels
from .errors import DatasetError, InputError

SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Folder whose dataset children are bundled, read-only datasets.
# Bundled read-only datasets (the demo). CLIPGEOM_ASSETS points elsewhere
# (tests use an empty folder so results do not depend on what is bundled).
ASSETS_DIR = Path(os.environ.get("CLIPGEOM_ASSETS")
                  or Path(__file__).resolve().parent.parent / "assets")

MANIFEST = "manifest.json"
IMAGE_EMB = "image_emb.npy"
TEXT_EMB = "text_emb.npy"
IMAGES = "images.parquet"
TEXTS = "texts.parquet"
ARRAY_FILES = (IMAGE_EMB, TEXT_EMB)
TABLE_FILES = (IMAGES, TEXTS)
NORM_TOL = 1e-3

_STRING_COLS = {
    IMAGES: ("image_id", "source", "thumbnail"),
    TEXTS: ("text_id", "caption", "image_id"),
}
_CORE_KEYS = ("schema_version", "name", "created", "model", "dim", "n_images",
              "n_texts", "n_pairs", "normalized_input", "source", "arrays",
              "fingerprint", "tables", "extra_arrays")


# --------------------------------------------------------------------------
# Locations and names
# --------------------------------------------------------------------------

def home() -> Path:
    """``$CLIPGEOM_HOME`` or ``./data`` (relative to the current folder)."""
    env = os.environ.get("CLIPGEOM_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path.cwd() / "data"


def _home(h) -> Path:
    return Path(h).expanduser().absolute() if h is not None else home()


def datasets_dir(h=None) -> Path:
    return _home(h) / "datasets"


def read_only_roots() -> list[Path]:
    """Dataset folders bundled under ``assets/`` (children with a manifest)."""
    root = Path(ASSETS_DIR)
    if not root.is_dir():
        return []
    out = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and (child / MANIFEST).is_file() \
                and NAME_RE.match(child.name):
            out.append(child)
    return out


def _read_only_map() -> dict[str, Path]:
    return {p.name: p for p in read_only_roots()}


def check_name(name) -> str:
    """Return ``name`` if it is a valid dataset name, else InputError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(
            f"Invalid dataset name {name!r}: use 1-64 characters, letters, "
            "digits, '_', '.' or '-', starting with a letter or digit "
            "(no slashes or spaces)."
        )
    return name


def _user_names(h: Path) -> list[str]:
    d = h / "datasets"
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir()
                  if p.is_dir() and NAME_RE.match(p.name))


def _available(h: Path) -> str:
    names = sorted(set(_user_names(h)) | set(_read_only_map()))
    if not names:
        return ("No datasets exist yet; import one first "
                "(see `python -m clipgeom --help`).")
    return "Available: " + ", ".join(names) + "."


# --------------------------------------------------------------------------
# Small file helpers
# --------------------------------------------------------------------------

def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _fingerprint(hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for fname in ARRAY_FILES + TABLE_FILES:
        h.update(f"{fname}:{hashes[fname]}\n".encode())
    return h.hexdigest()


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _save_array(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _write_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def _write_manifest(path: Path, manifest: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _npy_header(path: Path):
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


def _load_npy(path: Path):
    """Memory-map a .npy file without unpickling. Returns (array, problem).

    ``problem`` is "pickled", "corrupt: ..." or None.
    """
    try:
        shape, _, dtype = _npy_header(path)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
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


def _is_normalized(arr: np.ndarray, chunk: int = 65536) -> bool:
    """True when every row's L2 norm is within NORM_TOL of 1."""
    for s in range(0, arr.shape[0], chunk):
        block = np.asarray(arr[s:s + chunk], dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        if np.any(np.abs(norms - 1.0) > NORM_TOL):
            return False
    return arr.shape[0] > 0


def _pair_rows(image_ids, text_image_ids) -> tuple[np.ndarray, np.ndarray]:
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


def _to_none(series: pd.Series) -> pd.Series:
    s = series.astype(object)
    return s.where(s.notna(), None)


# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------

class Dataset:
    """An opened dataset: memory-mapped arrays, lazily loaded tables."""

    def __init__(self, name: str, path: Path, manifest: dict, read_only: bool,
                 image_emb: np.ndarray, text_emb: np.ndarray, home: Path):
        self.name = name
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
        for col in _STRING_COLS[fname]:
            if col not in df.columns:
                raise DatasetError(
                    f"{p}: column {col!r} missing; re-import {self.name!r}."
                )
        # Nullable text columns come back as NaN in pandas; give None.
        for col in ("thumbnail", "image_id", "label"):
            if col == "image_id" and fname == IMAGES:
                continue
            if col in df.columns and not pd.api.types.is_numeric_dtype(df[col]):
                df[col] = _to_none(df[col])
        return df

    @property
    def images(self) -> pd.DataFrame:
        if self._images is None:
            self._images = self._load_table(IMAGES, self.n_images)
        return self._images

    @property
    def texts(self) -> pd.DataFrame:
        if self._texts is None:
            self._texts = self._load_table(TEXTS, self.n_texts)
        return self._texts

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(image_rows, text_rows): per image, the first caption pointing at
        it, in image order; images without a caption are left out.

        DESIGN: "Paired analyses use one caption per image (the first)".
        """
        if self._pairs is None:
            self._pairs = _pair_rows(self.images["image_id"],
                                     self.texts["image_id"])
        return self._pairs[0].copy(), self._pairs[1].copy()

    # folders ------------------------------------------------------------------
    def _derived_dir(self, kind: str) -> Path:
        if self.read_only:
            d = self.home / kind / f"{self.name}-{self.fingerprint[:12]}"
        else:
            d = self.path / kind
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(
                f"Cannot create {d} ({exc.strerror or exc}); set CLIPGEOM_HOME "
                "to a writable folder."
            ) from None
        return d

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
        p = self.path / "thumbs" / str(t)
        return p if p.is_file() else None


# --------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------

def _locate(name: str, h: Path) -> tuple[Path, bool]:
    user = h / "datasets" / name
    if user.is_dir():
        return user, False
    ro = _read_only_map().get(name)
    if ro is not None:
        return ro, True
    raise DatasetError(
        f"No dataset named {name!r} in {h / 'datasets'}. {_available(h)}"
    )


def _read_manifest(path: Path, name: str) -> dict:
    mp = path / MANIFEST
    redo = f"Re-import the dataset {name!r} (with --overwrite) or delete it."
    if not mp.is_file():
        raise DatasetError(f"{mp}: manifest missing; the dataset is incomplete. {redo}")
    try:
        manifest = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{mp}: manifest is corrupt ({exc}). {redo}") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{mp}: manifest is not a JSON object. {redo}")
    missing = [k for k in ("schema_version", "dim", "n_images", "n_texts",
                           "arrays", "fingerprint") if k not in manifest]
    if missing:
        raise DatasetError(
            f"{mp}: manifest lacks {', '.join(missing)}; it is corrupt. {redo}"
        )
    v = manifest["schema_version"]
    if not isinstance(v, int):
        raise DatasetError(f"{mp}: schema_version {v!r} is not a number. {redo}")
    if v > SCHEMA_VERSION:
        raise DatasetError(
            f"{mp}: written by a newer clipgeom (schema {v}, this one reads "
            f"{SCHEMA_VERSION}); upgrade clipgeom."
        )
    arrays = manifest["arrays"]
    if not isinstance(arrays, dict) or any(
            not isinstance(arrays.get(f), dict)
            or not {"shape", "dtype"} <= set(arrays[f]) for f in ARRAY_FILES):
        raise DatasetError(f"{mp}: manifest 'arrays' entry is corrupt. {redo}")
    return manifest


def _open_array(path: Path, fname: str, manifest: dict, name: str) -> np.ndarray:
    p = path / fname
    redo = f"Re-import the dataset {name!r} (with --overwrite)."
    if not p.is_file():
        raise DatasetError(f"{p}: array file missing; the dataset is incomplete. {redo}")
    arr, problem = _load_npy(p)
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


def _open_at(path: Path, name: str, read_only: bool, h: Path) -> Dataset:
    manifest = _read_manifest(path, name)
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
    return Dataset(name, path, manifest, read_only, img, txt, h)


def open_dataset(name: str, home=None) -> Dataset:
    """Open a dataset by name: the user's home first, then bundled assets.

    Arrays are memory-mapped (instant for millions of rows) and not re-hashed;
    use :func:`verify_dataset` for a full integrity check.
    """
    check_name(name)
    h = _home(home)
    path, ro = _locate(name, h)
    return _open_at(path, name, ro, h)


def verify_dataset(name: str, home=None) -> Dataset:
    """Open a dataset and re-hash every file against its manifest.

    Raises DatasetError naming the first file whose content changed.
    """
    ds = open_dataset(name, home=home)
    hashes = {}
    for fname in ARRAY_FILES + TABLE_FILES:
        p = ds.path / fname
        if not p.is_file():
            raise DatasetError(f"{p}: file missing. Re-import {name!r}.")
        hashes[fname] = sha256_file(p)
    for fname in ARRAY_FILES:
        want = ds.manifest["arrays"][fname].get("sha256")
        if hashes[fname] != want:
            raise DatasetError(
                f"{ds.path / fname}: content changed since import (sha256 "
                f"{hashes[fname][:12]}... != manifest {str(want)[:12]}...). "
                f"Re-import {name!r} (with --overwrite)."
            )
    tables = ds.manifest.get("tables") or {}
    for fname in TABLE_FILES:
        want = (tables.get(fname) or {}).get("sha256")
        if want is not None and hashes[fname] != want:
            raise DatasetError(
                f"{ds.path / fname}: content changed since import. "
                f"Re-import {name!r} (with --overwrite)."
            )
    if _fingerprint(hashes) != ds.fingerprint:
        raise DatasetError(
            f"{ds.path / MANIFEST}: fingerprint does not match the files; the "
            f"dataset was modified. Re-import {name!r} (with --overwrite)."
        )
    ds.images  # parse the tables too
    ds.texts
    return ds


def list_datasets(home=None) -> list[dict]:
    """All datasets (user and bundled), sorted by name.

    Each entry: name, n_images, n_texts, dim, read_only, model, created,
    path. Broken folders are listed with an "error" message instead of
    raising; temporary folders are skipped.
    """
    h = _home(home)
    found: dict[str, tuple[Path, bool]] = {}
    d = h / "datasets"
    if d.is_dir():
        for p in d.iterdir():
            if p.is_dir() and not p.name.startswith("."):
                found[p.name] = (p, False)
    for p in read_only_roots():
        found.setdefault(p.name, (p, True))
    out = []
    for name in sorted(found):
        path, ro = found[name]
        entry = {"name": name, "n_images": None, "n_texts": None, "dim": None,
                 "read_only": ro, "model": None, "created": None,
                 "path": str(path)}
        try:
            if not NAME_RE.match(name):
                raise DatasetError(
                    f"{path}: {name!r} is not a valid dataset name; rename the folder."
                )
            ds = _open_at(path, name, ro, h)
        except DatasetError as exc:
            entry["error"] = str(exc)
        else:
            m = ds.manifest
            entry.update(n_images=ds.n_images, n_texts=ds.n_texts, dim=ds.dim,
                         model=m.get("model"), created=m.get("created"))
        out.append(entry)
    return out


def delete_dataset(name: str, home=None) -> None:
    """Delete a user dataset. Bundled (read-only) datasets cannot be deleted."""
    check_name(name)
    h = _home(home)
    path = h / "datasets" / name
    if not path.is_dir():
        if name in _read_only_map():
            raise DatasetError(
                f"Dataset {name!r} is bundled with clipgeom and read-only; it "
                "cannot be deleted."
            )
        raise DatasetError(
            f"No dataset named {name!r} in {h / 'datasets'}. {_available(h)}"
        )
    trash = path.parent / f".del-{name}-{secrets.token_hex(4)}"
    try:
        os.replace(path, trash)
    except OSError as exc:
        raise DatasetError(
            f"Cannot delete {path} ({exc.strerror or exc})."
        ) from None
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------
# Creating
# --------------------------------------------------------------------------

def _ids(series: pd.Series, what: str, first_col: str) -> list[str]:
    vals = []
    for i, v in enumerate(series.tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)) or \
                (not isinstance(v, str) and pd.isna(v)):
            raise InputError(f"{what}: {first_col} is empty in row {i} (0-based).")
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        vals.append(str(v))
    seen: dict[str, int] = {}
    for i, v in enumerate(vals):
        if v in seen:
            raise InputError(
                f"{what}: duplicate {first_col} {v!r} in rows {seen[v]} and {i} "
                f"(0-based); every {first_col} must be unique."
            )
        seen[v] = i
    return vals


def _opt_str(v):
    if v is None:
        return None
    if not isinstance(v, str):
        try:
            if pd.isna(v):
                return None
        except (TypeError, ValueError):
            pass
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
    return str(v)


def _check_thumb(v: str, row: int) -> None:
    pp, pw = PurePosixPath(v), PureWindowsPath(v)
    if pp.is_absolute() or pw.is_absolute() or pw.drive or ".." in pp.parts \
            or ".." in pw.parts:
        raise InputError(
            f"images table: thumbnail {v!r} in row {row} (0-based) must be a "
            "path relative to the thumbnails folder, without '..'."
        )


def _prepare_images(images, n: int) -> pd.DataFrame:
    if images is None:
        df = pd.DataFrame(index=range(n))
    else:
        if not isinstance(images, pd.DataFrame):
            raise InputError("images must be a pandas DataFrame or None.")
        if len(images) != n:
            raise InputError(
                f"images table has {len(images)} rows but image embeddings "
                f"have {n} rows; they must match row for row."
            )
        df = images.reset_index(drop=True).copy()
    if "image_id" in df.columns:
        ids = _ids(df["image_id"], "images table", "image_id")
    else:
        ids = [f"img{i:05d}" for i in range(n)]
    src = ([_opt_str(v) or "" for v in df["source"].tolist()]
           if "source" in df.columns else [""] * n)
    thumbs = ([_opt_str(v) for v in df["thumbnail"].tolist()]
              if "thumbnail" in df.columns else [None] * n)
    for i, t in enumerate(thumbs):
        if t is not None:
            _check_thumb(t, i)
    out = pd.DataFrame({"image_id": pd.Series(ids, dtype=object),
                        "source": pd.Series(src, dtype=object),
                        "thumbnail": pd.Series(thumbs, dtype=object)})
    for col in df.columns:
        if col not in out.columns:
            out[col] = df[col].to_numpy()
    return out


def _prepare_texts(texts, n: int, image_ids: list[str]) -> pd.DataFrame:
    n_img = len(image_ids)
    if texts is None:
        df = pd.DataFrame(index=range(n))
    else:
        if not isinstance(texts, pd.DataFrame):
            raise InputError("texts must be a pandas DataFrame or None.")
        if len(texts) != n:
            raise InputError(
                f"texts table has {len(texts)} rows but text embeddings have "
                f"{n} rows; they must match row for row."
            )
        df = texts.reset_index(drop=True).copy()
    if "text_id" in df.columns:
        ids = _ids(df["text_id"], "texts table", "text_id")
    else:
        ids = [f"txt{i:05d}" for i in range(n)]
    caps = ([_opt_str(v) or "" for v in df["caption"].tolist()]
            if "caption" in df.columns else [""] * n)
    if "image_id" in df.columns:
        pairing = [_opt_str(v) for v in df["image_id"].tolist()]
        known = set(image_ids)
        for i, v in enumerate(pairing):
            if v is not None and v not in known:
                raise InputError(
                    f"texts table row {i} (0-based): image_id {v!r} is not an "
                    "image_id in the images table. Fix the pairing or leave it "
                    "empty for an unpaired caption."
                )
    elif n == n_img:
        pairing = list(image_ids)
    else:
        pairing = [None] * n
    out = pd.DataFrame({"text_id": pd.Series(ids, dtype=object),
                        "caption": pd.Series(caps, dtype=object),
                        "image_id": pd.Series(pairing, dtype=object)})
    for col in df.columns:
        if col not in out.columns:
            out[col] = df[col].to_numpy()
    return out


def _to_arrow(df: pd.DataFrame, fname: str, what: str) -> pa.Table:
    cols, names = [], []
    for col in df.columns:
        if not isinstance(col, str):
            raise InputError(f"{what}: column names must be strings, got {col!r}.")
        values = df[col]
        try:
            if col in _STRING_COLS[fname]:
                arr = pa.array(values.tolist(), type=pa.string())
            else:
                arr = pa.Array.from_pandas(values)
                if pa.types.is_null(arr.type):
                    arr = arr.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise InputError(
                f"{what}: column {col!r} cannot be stored ({exc}); make all its "
                "values one type (for example all strings)."
            ) from None
        cols.append(arr)
        names.append(col)
    return pa.Table.from_arrays(cols, names=names)


def _norm_model(model):
    if model is None:
        return None
    if isinstance(model, str):
        return {"name": model}
    if isinstance(model, dict):
        return dict(model)
    raise InputError("model must be a dict (e.g. {'name': ..., 'pretrained': ...}), "
                     "a string or None.")


def create_dataset(name: str, image_emb, text_emb, images=None, texts=None, *,
                   model=None, source=None, extra_manifest=None,
                   overwrite: bool = False, home=None, thumbs_dir=None,
                   extra_arrays=None) -> Dataset:
    """Validate and write a dataset atomically; return it opened.

    ``images``/``texts`` DataFrames are optional (ids ``img00000...`` /
    ``txt00000...``; text row i paired with image row i when the counts are
    equal, otherwise unpaired). ``thumbs_dir`` is copied into ``thumbs/``;
    the images' ``thumbnail`` column holds paths relative to it.
    ``extra_arrays`` ({name: array}) are stored as ``extra/<name>.npy`` with
    their sha256 in the manifest (e.g. the demo's training snapshots) and
    opened memory-mapped by :meth:`Dataset.extra_array`.
    """
    return _create(name, image_emb, text_emb, images, texts, model=model,
                   source=source, extra_manifest=extra_manifest,
                   overwrite=overwrite, home=home, thumbs_dir=thumbs_dir,
                   extra_arrays=extra_arrays)


_EXTRA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _check_extra_arrays(extra_arrays) -> dict:
    out = {}
    for k, v in (extra_arrays or {}).items():
        if not _EXTRA_NAME.match(str(k)):
            raise InputError(f"extra array name {k!r}: use letters, digits, '.', '_' or '-'.")
        arr = np.asarray(v)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"extra array {k!r} must be numeric, got {arr.dtype}.")
        out[str(k)] = np.ascontiguousarray(arr)
    return out


def _create(name, image_emb, text_emb, images, texts, *, model, source,
            extra_manifest, overwrite, home, thumbs_dir, extra_arrays=None,
            image_name="image embeddings", text_name="text embeddings") -> Dataset:
    check_name(name)
    h = _home(home)
    if name in _read_only_map():
        raise DatasetError(
            f"{name!r} is the name of a bundled read-only dataset; choose "
            "another name."
        )
    final = h / "datasets" / name
    if final.exists() and not overwrite:
        raise DatasetError(
            f"Dataset {name!r} already exists in {h / 'datasets'}; pass "
            "overwrite=True / --overwrite or choose another name."
        )
    img = validate.embeddings(image_emb, image_name, min_rows=1, allow_zero=False)
    txt = validate.embeddings(text_emb, text_name, min_rows=1, allow_zero=False)
    if img.shape[0] < 2 and txt.shape[0] < 2:
        raise InputError(
            f"{image_name} and {text_name} have {img.shape[0]} and "
            f"{txt.shape[0]} rows; at least one of them needs 2 or more rows."
        )
    validate.same_width(img, txt, image_name, text_name)
    img_df = _prepare_images(images, img.shape[0])
    txt_df = _prepare_texts(texts, txt.shape[0], img_df["image_id"].tolist())
    img_tab = _to_arrow(img_df, IMAGES, "images table")
    txt_tab = _to_arrow(txt_df, TEXTS, "texts table")
    model = _norm_model(model)
    source = dict(source) if source is not None else {"kind": "python"}
    extra = dict(extra_manifest or {})
    clash = [k for k in extra if k in _CORE_KEYS]
    if clash:
        raise InputError(
            f"extra_manifest may not set {', '.join(clash)}; those are written "
            "by the store."
        )
    try:
        json.dumps({"model": model, "source": source, "extra": extra},
                   default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InputError(f"model/source/extra_manifest must be JSON-like ({exc}).") from None
    if thumbs_dir is not None and not Path(thumbs_dir).is_dir():
        raise InputError(f"{thumbs_dir}: thumbnails folder not found.")
    n_pairs = int(len(_pair_rows(img_df["image_id"], txt_df["image_id"])[0]))
    extras = _check_extra_arrays(extra_arrays)

    root = h / "datasets"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"Cannot create {root} ({exc.strerror or exc}); set CLIPGEOM_HOME "
            "to a writable folder."
        ) from None
    _sweep_stale(root)
    tmp = root / f".tmp-{name}-{secrets.token_hex(6)}"
    try:
        tmp.mkdir()
        for sub in ("thumbs", "index", "cache"):
            (tmp / sub).mkdir()
        if thumbs_dir is not None:
            shutil.copytree(thumbs_dir, tmp / "thumbs", dirs_exist_ok=True)
            for i, t in enumerate(img_df["thumbnail"].tolist()):
                if t is not None and not (tmp / "thumbs" / t).is_file():
                    raise InputError(
                        f"images table row {i} (0-based): thumbnail {t!r} is "
                        f"not in the thumbnails folder {thumbs_dir}."
                    )
        _save_array(tmp / IMAGE_EMB, np.ascontiguousarray(img, dtype=np.float32))
        _save_array(tmp / TEXT_EMB, np.ascontiguousarray(txt, dtype=np.float32))
        _write_table(img_tab, tmp / IMAGES)
        _write_table(txt_tab, tmp / TEXTS)
        extra_meta = {}
        if extras:
            (tmp / "extra").mkdir()
            for k, arr in extras.items():
                _save_array(tmp / "extra" / f"{k}.npy", arr)
                extra_meta[k] = {"sha256": sha256_file(tmp / "extra" / f"{k}.npy"),
                                 "shape": list(arr.shape), "dtype": str(arr.dtype)}
        hashes = {f: sha256_file(tmp / f) for f in ARRAY_FILES + TABLE_FILES}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "created": _dt.datetime.now(_dt.timezone.utc)
                          .isoformat(timespec="seconds").replace("+00:00", "Z"),
            "model": model,
            "dim": int(img.shape[1]),
            "n_images": int(img.shape[0]),
            "n_texts": int(txt.shape[0]),
            "n_pairs": n_pairs,
            "normalized_input": {"image": _is_normalized(img),
                                 "text": _is_normalized(txt)},
            "source": source,
            "arrays": {
                IMAGE_EMB: {"sha256": hashes[IMAGE_EMB],
                            "shape": list(img.shape), "dtype": "float32"},
                TEXT_EMB: {"sha256": hashes[TEXT_EMB],
                           "shape": list(txt.shape), "dtype": "float32"},
            },
            "tables": {IMAGES: {"sha256": hashes[IMAGES]},
                       TEXTS: {"sha256": hashes[TEXTS]}},
            "fingerprint": _fingerprint(hashes),
            "skipped": [],
            "extra_arrays": extra_meta,
        }
        manifest.update(extra)
        _write_manifest(tmp / MANIFEST, manifest)
        _commit(tmp, final, name, overwrite)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise DatasetError(
                f"Writing dataset {name!r} under {root} failed "
                f"({exc.strerror or exc}); nothing was changed. Check free "
                "space and permissions."
            ) from exc
        raise
    return open_dataset(name, home=h)


STALE_SECONDS = 24 * 3600


def _sweep_stale(root: Path) -> None:
    """Remove temp/trash folders left by a killed process (older than a day).

    ``.old-*`` folders are kept: after a crash mid-swap one may hold the only
    copy of a dataset.
    """
    now = _dt.datetime.now().timestamp()
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith((".tmp-", ".del-")):
            try:
                if now - p.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def _commit(tmp: Path, final: Path, name: str, overwrite: bool) -> None:
    """Rename the finished tmp folder into place (swapping out the old one)."""
    if final.exists():
        if not overwrite:
            raise DatasetError(
                f"Dataset {name!r} already exists; pass overwrite=True / "
                "--overwrite or choose another name."
            )
        aside = final.parent / f".old-{name}-{secrets.token_hex(6)}"
        os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(aside, final)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        try:
            os.rename(tmp, final)
        except OSError:
            if final.exists():
                raise DatasetError(
                    f"Dataset {name!r} was created by someone else meanwhile; "
                    "pass overwrite=True / --overwrite or choose another name."
                ) from None
            raise


# --------------------------------------------------------------------------
# Importing .npy arrays
# --------------------------------------------------------------------------

def _load_user_npy(path, what: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: {what} file not found.")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; expected a .npy file of {what}.")
    if p.suffix.lower() != ".npy":
        raise InputError(
            f"{p}: {what} must be a .npy file (saved with np.save); got "
            f"{p.suffix or 'no extension'!r}."
        )
    arr, problem = _load_npy(p)
    if problem == "pickled":
        raise InputError(
            f"{p}: contains pickled objects; clipgeom never unpickles user "
            "files; save a plain float array with np.save."
        )
    if problem:
        raise InputError(
            f"{p}: not a valid .npy file ({problem[9:]}); save the {what} "
            "with np.save."
        )
    return arr


def _resolve_images(caps: pd.DataFrame, sources, n_img: int, image_ids,
                    cap_path, list_path) -> list:
    lines = caps.attrs.get("lines") or list(range(1, len(caps) + 1))
    by_source: dict[str, int] = {}
    dup: set[str] = set()
    if sources is not None:
        for i, s in enumerate(sources):
            if s in by_source:
                dup.add(s)
            else:
                by_source[s] = i
    out = []
    for k, v in enumerate(caps["image"].tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
            continue
        where = f"{cap_path}, line {lines[k]} (text row {k})"
        row = None
        if isinstance(v, str):
            s = v.strip()
            if s in by_source:
                if s in dup:
                    raise InputError(
                        f"{where}: image {s!r} appears more than once in the "
                        f"image list {list_path}; refer to it by image row number."
                    )
                row = by_source[s]
            elif re.fullmatch(r"[0-9]+", s):
                row = int(s)
            else:
                hint = (f"a source in the image list {list_path}"
                        if sources is not None else
                        "an image row number (no image list was given)")
                raise InputError(
                    f"{where}: image {v!r} is not {hint} nor a 0-based image "
                    f"row 0..{n_img - 1}."
                )
        else:
            row = int(v)
        if not 0 <= row < n_img:
            raise InputError(
                f"{where}: image row {row} is out of range; there are {n_img} "
                f"images (rows 0..{n_img - 1}, 0-based)."
            )
        out.append(image_ids[row])
    return out


def import_arrays(name: str, image_emb, text_emb, *, captions=None,
                  image_list=None, labels=None, overwrite: bool = False,
                  home=None) -> Dataset:
    """Import precomputed embeddings from two ``.npy`` files.

    Text row i is paired with image row i (when the counts match) unless the
    captions file has an ``image`` column. ``captions``: .txt/.csv/.tsv/.jsonl
    (see :mod:`clipgeom.captions`); ``image_list``: one image path per line;
    ``labels``: one label per image row (text file, or csv with ``label``).
    """
    check_name(name)
    h = _home(home)
    img_path, txt_path = Path(image_emb), Path(text_emb)
    img = _load_user_npy(img_path, "image embeddings")
    txt = _load_user_npy(txt_path, "text embeddings")
    img_name = f"image embeddings ({img_path})"
    txt_name = f"text embeddings ({txt_path})"
    n_img = int(img.shape[0]) if img.ndim >= 1 else 0
    n_txt = int(txt.shape[0]) if txt.ndim >= 1 else 0
    if img.ndim != 2 or txt.ndim != 2:
        # Let validate give the standard message (names the file).
        validate.embeddings(img, img_name, min_rows=1)
        validate.embeddings(txt, txt_name, min_rows=1)

    image_ids = [f"img{i:05d}" for i in range(n_img)]
    images = pd.DataFrame({"image_id": image_ids})
    sources = None
    if image_list is not None:
        sources = read_image_list(image_list)
        if len(sources) != n_img:
            raise InputError(
                f"{image_list}: has {len(sources)} image lines but {img_name} "
                f"has {n_img} rows; they must match line for row."
            )
        images["source"] = sources
    if labels is not None:
        labs = read_labels(labels)
        if len(labs) != n_img:
            raise InputError(
                f"{labels}: has {len(labs)} labels but {img_name} has {n_img} "
                "rows; give one label per image row."
            )
        images["label"] = pd.Series(labs, dtype=object)

    texts = pd.DataFrame({"text_id": [f"txt{i:05d}" for i in range(n_txt)]})
    if captions is not None:
        caps = read_captions(captions)
        if len(caps) != n_txt:
            raise InputError(
                f"{captions}: has {len(caps)} captions but {txt_name} has "
                f"{n_txt} rows; give exactly one caption per text row."
            )
        texts["caption"] = caps["caption"].to_numpy()
        if "image" in caps.columns:
            texts["image_id"] = pd.Series(
                _resolve_images(caps, sources, n_img, image_ids, captions,
                                image_list), dtype=object)
        for col in caps.columns:
            if col not in ("caption", "image"):
                texts[col] = caps[col].to_numpy()

    source = {"kind": "arrays", "image_emb": str(img_path),
              "text_emb": str(txt_path),
              "captions": None if captions is None else str(captions),
              "image_list": None if image_list is None else str(image_list),
              "labels": None if labels is None else str(labels)}
    return _create(name, img, txt, images, texts, model=None, source=source,
                   extra_manifest=None, overwrite=overwrite, home=h,
                   thumbs_dir=None, image_name=img_name, text_name=txt_name)
