"""The manifest of a dataset version: its schema, checked on every open, and
the file stats that make a changed array noticed.

A manifest whose fields have the wrong type never reaches the code that uses
them: :func:`read_manifest` raises a DatasetError naming the field, and the
catalogue lists that dataset as CORRUPT with the reason.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from ..errors import DatasetError
from .files import sha256_file
from .layout import ARRAY_FILES, MANIFEST, SCHEMA_VERSION, TABLE_FILES

_INT = (int,)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_shape(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 0 for x in v)


def _is_sha(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _is_stat(v) -> bool:
    return isinstance(v, dict) and all(_is_int(v.get(k)) for k in ("size", "mtime_ns", "ino"))


# field: (check, what it must be); optional fields may also be null or absent.
_REQUIRED = {
    "schema_version": (_is_int, "an integer"),
    "dim": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "n_images": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "n_texts": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "arrays": (lambda v: isinstance(v, dict), "an object"),
    "fingerprint": (lambda v: isinstance(v, str) and v != "", "a string"),
}
_OPTIONAL = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "created": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, dict), "an object (name, pretrained, ...)"),
    "n_pairs": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "normalized_input": (lambda v: isinstance(v, dict)
                         and all(isinstance(v.get(k, False), bool) for k in ("image", "text")),
                         "an object of booleans {image, text}"),
    "source": (lambda v: isinstance(v, dict), "an object"),
    "tables": (lambda v: isinstance(v, dict), "an object"),
    "extra_arrays": (lambda v: isinstance(v, dict), "an object"),
    "skipped": (lambda v: isinstance(v, list), "a list"),
}


def schema_problems(m) -> list[str]:
    """Every way ``m`` breaks the manifest schema (empty when it is valid)."""
    if not isinstance(m, dict):
        return ["the manifest is not a JSON object"]
    out = []
    for k, (ok, what) in _REQUIRED.items():
        if k not in m:
            out.append(f"'{k}' is missing")
        elif not ok(m[k]):
            out.append(f"'{k}' must be {what}, got {m[k]!r:.60}")
    for k, (ok, what) in _OPTIONAL.items():
        if m.get(k) is not None and not ok(m[k]):
            out.append(f"'{k}' must be {what}, got {m[k]!r:.60}")
    arrays = m.get("arrays")
    if isinstance(arrays, dict):
        for f in ARRAY_FILES:
            a = arrays.get(f)
            if not isinstance(a, dict):
                out.append(f"'arrays.{f}' is missing")
                continue
            if not _is_shape(a.get("shape")):
                out.append(f"'arrays.{f}.shape' must be [rows, dim], got {a.get('shape')!r:.60}")
            if a.get("dtype") != "float32":
                out.append(f"'arrays.{f}.dtype' must be \"float32\", got {a.get('dtype')!r:.60}")
            if a.get("sha256") is not None and not _is_sha(a["sha256"]):
                out.append(f"'arrays.{f}.sha256' must be a sha256 hex digest")
            if a.get("stat") is not None and not _is_stat(a["stat"]):
                out.append(f"'arrays.{f}.stat' must be {{size, mtime_ns, ino}}")
    tables = m.get("tables")
    if isinstance(tables, dict):
        for f in TABLE_FILES:
            t = tables.get(f)
            if t is not None and (not isinstance(t, dict)
                                  or (t.get("sha256") is not None and not _is_sha(t["sha256"]))
                                  or (t.get("stat") is not None and not _is_stat(t["stat"]))):
                out.append(f"'tables.{f}' must be {{sha256, stat}}")
    extra = m.get("extra_arrays")
    if isinstance(extra, dict):
        for k, e in extra.items():
            if not isinstance(e, dict) or not isinstance(e.get("shape"), list) \
                    or not all(_is_int(x) for x in e["shape"]):
                out.append(f"'extra_arrays.{k}' must have a shape list")
    return out


def read_manifest(folder: Path, name: str) -> dict:
    """The manifest of a version folder, schema-checked; DatasetError otherwise."""
    mp = folder / MANIFEST
    redo = f"Re-import the dataset {name!r} (with --overwrite) or delete it."
    if not mp.is_file():
        raise DatasetError(f"{mp}: manifest missing; the dataset is incomplete. {redo}")
    try:
        manifest = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DatasetError(f"{mp}: manifest is corrupt ({exc}). {redo}") from None
    problems = schema_problems(manifest)
    if problems:
        raise DatasetError(f"{mp}: manifest is corrupt: {'; '.join(problems[:4])}"
                           f"{' ...' if len(problems) > 4 else ''}. {redo}")
    v = manifest["schema_version"]
    if v > SCHEMA_VERSION:
        raise DatasetError(
            f"{mp}: written by a newer clipgeom (schema {v}, this one reads "
            f"{SCHEMA_VERSION}); upgrade clipgeom."
        )
    return manifest


# ---------------------------------------------------------------- file stats
def file_stat(path: Path) -> dict:
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "ino": int(st.st_ino)}


# (path, size, mtime_ns, ino) -> sha256 found by this process: a file whose
# stat changed since import is hashed once per process, not on every open.
_VERIFIED: dict[tuple, str] = {}
_VERIFIED_LOCK = threading.Lock()


def check_unchanged(folder: Path, manifest: dict, name: str) -> None:
    """Notice an array or table altered after import (cheap on every open).

    The stat recorded at import (size, mtime, inode) is compared with the
    file's; where it differs (or none was recorded: older datasets, bundled
    copies) the file's sha256 is computed once per process and compared with
    the manifest's. A mismatch is a DatasetError, never silent use.
    """
    entries = [(f, manifest["arrays"].get(f) or {}) for f in ARRAY_FILES]
    entries += [(f, (manifest.get("tables") or {}).get(f) or {}) for f in TABLE_FILES]
    for fname, meta in entries:
        want = meta.get("sha256")
        p = folder / fname
        try:
            now = file_stat(p)
        except OSError:
            continue                        # missing files are reported by the opener
        if meta.get("stat") is not None and now["size"] != meta["stat"]["size"]:
            raise _changed(p, name)
        if want is None or meta.get("stat") == now:
            continue
        key = (str(p), now["size"], now["mtime_ns"], now["ino"])
        with _VERIFIED_LOCK:
            seen = _VERIFIED.get(key)
        if seen is None:
            seen = sha256_file(p)
            with _VERIFIED_LOCK:
                _VERIFIED[key] = seen
        if seen != want:
            raise _changed(p, name)


def _changed(p: Path, name: str) -> DatasetError:
    return DatasetError(
        f"{p}: changed since it was imported (its content no longer matches the "
        f"manifest's sha256). Results from it would be wrong; re-import {name!r} "
        "(with --overwrite), or run `python -m clipgeom verify` for details.")
