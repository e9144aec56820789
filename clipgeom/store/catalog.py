"""Finding, opening, verifying, listing and deleting datasets by name."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from ..errors import DatasetError
from . import locks, versions
from .dataset import Dataset, open_version
from .files import fingerprint_of, sha256_file
from .layout import (ARRAY_FILES, MANIFEST, TABLE_FILES, available, check_name, read_only_map,
                     read_only_roots, resolve_home, valid_name)


def sweep_quietly(h: Path) -> None:
    """Sweep leftovers of killed writers (never fails a read because of it)."""
    try:
        versions.sweep(h)
    except (OSError, DatasetError):
        pass


def locate(name: str, h: Path) -> tuple[Path, bool]:
    """(version folder, read_only) of the dataset ``name``."""
    user = h / "datasets" / name
    for attempt in (1, 2):
        if user.is_dir():
            folder = versions.current_folder(user)
            if folder is not None:
                return folder, False
        stranded = any(p.name.startswith(f"{versions.OLD_PREFIX}{name}-")
                       for p in _entries(h / "datasets"))
        if attempt == 1 and (user.is_dir() or stranded):
            sweep_quietly(h)       # a crash mid-commit: restore ".old-", drop uncommitted
    ro = read_only_map().get(name)
    if ro is not None:
        return ro, True
    if user.is_dir():
        raise DatasetError(f"{user}: the dataset {name!r} is incomplete (no committed "
                           "version); a writer may be running or was killed. Try again, "
                           "or re-import it.")
    raise DatasetError(f"No dataset named {name!r} in {h / 'datasets'}. {available(h)}")


def _entries(d: Path) -> list[Path]:
    try:
        return list(d.iterdir()) if d.is_dir() else []
    except OSError:
        return []


def open_dataset(name: str, home=None) -> Dataset:
    """Open a dataset by name: the user's home first, then bundled assets.

    The object reads one version until it is reopened (a concurrent
    overwrite does not change what it sees). Arrays are memory-mapped;
    files altered since import are noticed (``manifest.check_unchanged``).
    """
    check_name(name)
    h = resolve_home(home)
    path, ro = locate(name, h)
    return open_version(path, name, ro, h)


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
    if fingerprint_of(hashes) != ds.fingerprint:
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
    path, version. A dataset that cannot be opened is listed with
    ``error`` (the reason) and ``status`` "CORRUPT"; leftovers of killed
    writers are swept first.
    """
    h = resolve_home(home)
    sweep_quietly(h)
    found: dict[str, tuple[Path, bool]] = {}
    for p in _entries(h / "datasets"):
        if p.is_dir() and not p.name.startswith("."):
            found[p.name] = (p, False)
    for p in read_only_roots():
        found.setdefault(p.name, (p, True))
    out = []
    for name in sorted(found):
        path, ro = found[name]
        entry = {"name": name, "n_images": None, "n_texts": None, "dim": None,
                 "read_only": ro, "model": None, "created": None,
                 "path": str(path), "version": "", "status": "ok"}
        try:
            if not valid_name(name):
                raise DatasetError(
                    f"{path}: {name!r} is not a valid dataset name; rename the folder."
                )
            folder = path if ro else versions.current_folder(path)
            if folder is None:
                if locks.is_write_locked(h, name):
                    continue                 # being created right now
                raise DatasetError(f"{path}: no committed version; re-import {name!r}.")
            ds = open_version(folder, name, ro, h)
        except DatasetError as exc:
            entry["error"] = str(exc)
            entry["status"] = "CORRUPT"
        else:
            m = ds.manifest
            entry.update(n_images=ds.n_images, n_texts=ds.n_texts, dim=ds.dim,
                         model=m.get("model"), created=m.get("created"),
                         path=str(ds.path), version=ds.version)
            ds.close()
        out.append(entry)
    return out


def delete_dataset(name: str, home=None) -> None:
    """Delete a user dataset (under its writer lock). Bundled (read-only)
    datasets cannot be deleted. A process still reading a version keeps
    reading it: its memory maps stay valid until it closes them."""
    check_name(name)
    h = resolve_home(home)
    path = h / "datasets" / name
    if not path.is_dir():
        if name in read_only_map():
            raise DatasetError(
                f"Dataset {name!r} is bundled with clipgeom and read-only; it "
                "cannot be deleted."
            )
        raise DatasetError(f"No dataset named {name!r} in {h / 'datasets'}. {available(h)}")
    with locks.writer_lock(h, name, f"deleting {name}"):
        trash = path.parent / f"{versions.DEL_PREFIX}{name}-{secrets.token_hex(4)}"
        try:
            os.replace(path, trash)
        except OSError as exc:
            raise DatasetError(f"Cannot delete {path} ({exc.strerror or exc}).") from None
        shutil.rmtree(trash, ignore_errors=True)
