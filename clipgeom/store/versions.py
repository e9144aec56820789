"""Immutable versions and the atomic commit, and the sweep of leftovers.

The write protocol (the writer holds the name's lock throughout)::

    1. write the whole version into datasets/.tmp-<name>-<rand>/ (fsync'd)
    2. rename it to datasets/<name>/v-<id>/            (not yet visible)
    3. write CURRENT.tmp, fsync, os.replace -> CURRENT  (one atomic switch)
    4. remove older versions that no reader holds

The read protocol: read CURRENT, open that version (holding a shared lock on
its ``.readers``), and read only inside it until the dataset is reopened. A
crash at any step leaves the old version current (or no dataset), and the
next store operation sweeps what is left.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import shutil
from pathlib import Path

from ..errors import DatasetError
from . import locks
from .files import fsync_dir
from .layout import CURRENT, MANIFEST, VERSION_PREFIX, valid_name

# Leftovers of the pre-version layout's two-rename commit and delete.
OLD_PREFIX, DEL_PREFIX, TMP_PREFIX = ".old-", ".del-", ".tmp-"


def new_version_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{VERSION_PREFIX}{stamp}-{secrets.token_hex(4)}"


def current_folder(ds_dir: Path) -> Path | None:
    """The committed version folder of a dataset folder, or None.

    ``CURRENT`` names it; a folder without one but with a manifest is the
    pre-version layout (and the bundled datasets'): the folder itself.
    """
    cur = ds_dir / CURRENT
    try:
        vid = cur.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ds_dir if (ds_dir / MANIFEST).is_file() else None
    except OSError as exc:
        raise DatasetError(f"{cur}: cannot be read ({exc.strerror or exc}).") from None
    if not vid.startswith(VERSION_PREFIX) or "/" in vid or "\\" in vid:
        raise DatasetError(f"{cur}: does not name a version ({vid[:40]!r}); delete the "
                           f"dataset folder {ds_dir} or re-import it.")
    folder = ds_dir / vid
    if not folder.is_dir():
        raise DatasetError(f"{cur}: names {vid}, which is missing; the dataset folder "
                           f"{ds_dir} was altered. Re-import it (with --overwrite).")
    return folder


def publish(tmp: Path, ds_dir: Path) -> Path:
    """Steps 2-4 of the protocol: move the finished ``tmp`` into ``ds_dir`` as
    a new version and make it current. Returns the version folder."""
    legacy = (ds_dir / MANIFEST).is_file() and not (ds_dir / CURRENT).exists()
    if legacy:
        # A dataset of the old layout: move it aside whole, then publish into a
        # fresh folder (the one commit that still takes two renames; recovery
        # restores ".old-<name>-*" if we die between them).
        aside = ds_dir.parent / f"{OLD_PREFIX}{ds_dir.name}-{secrets.token_hex(4)}"
        os.replace(ds_dir, aside)
    ds_dir.mkdir(parents=True, exist_ok=True)
    vid = new_version_id()
    (tmp / locks.READERS).touch()
    os.rename(tmp, ds_dir / vid)
    fsync_dir(ds_dir)
    pointer = ds_dir / f"{CURRENT}.tmp-{secrets.token_hex(4)}"
    with open(pointer, "w", encoding="utf-8") as f:
        f.write(vid + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, ds_dir / CURRENT)
    fsync_dir(ds_dir)
    if legacy:
        shutil.rmtree(aside, ignore_errors=True)
    remove_unread_versions(ds_dir)
    return ds_dir / vid


def remove_unread_versions(ds_dir: Path) -> list[str]:
    """Delete versions other than the current one that nobody reads; returns them."""
    try:
        vid = (ds_dir / CURRENT).read_text(encoding="utf-8").strip()
    except OSError:
        return []
    gone = []
    for p in ds_dir.iterdir():
        if p.name.startswith(f"{CURRENT}.tmp-"):
            p.unlink(missing_ok=True)
        elif p.is_dir() and p.name.startswith(VERSION_PREFIX) and p.name != vid \
                and locks.unread(p):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return gone


def sweep(h: Path) -> list[str]:
    """Remove what killed writers left, where no live lock owns it; restore a
    dataset stranded in ``.old-<name>-*`` by a crash mid-commit of the old
    layout. Returns a line per action (for logs and tests)."""
    root = Path(h) / "datasets"
    actions = [f"removed uploads/{n}" for n in locks.sweep_owned(Path(h) / "uploads", "upload-")]
    if not root.is_dir():
        return actions
    try:
        entries = list(root.iterdir())
    except OSError:
        return actions
    for p in entries:
        name = _owner(p.name)
        if name is None or locks.is_write_locked(h, name):
            continue
        try:
            if p.name.startswith(OLD_PREFIX):
                final = root / name
                if current_folder_or_none(final) is None:
                    if final.exists():
                        shutil.rmtree(final, ignore_errors=True)
                    os.replace(p, final)
                    actions.append(f"restored {name} from {p.name}")
                else:
                    shutil.rmtree(p, ignore_errors=True)
                    actions.append(f"removed {p.name}")
            elif p.name.startswith((TMP_PREFIX, DEL_PREFIX)):
                shutil.rmtree(p, ignore_errors=True)
                actions.append(f"removed {p.name}")
            elif p.is_dir() and valid_name(p.name):
                if current_folder_or_none(p) is None and not any(
                        c.name == CURRENT for c in p.iterdir()):
                    # a new dataset whose commit never switched CURRENT
                    shutil.rmtree(p, ignore_errors=True)
                    actions.append(f"removed uncommitted {p.name}")
                else:
                    actions += [f"removed {name}/{v}" for v in remove_unread_versions(p)]
        except OSError:
            continue
    return actions


def current_folder_or_none(ds_dir: Path) -> Path | None:
    try:
        return current_folder(ds_dir) if ds_dir.is_dir() else None
    except DatasetError:
        return None


def _owner(entry: str) -> str | None:
    """The dataset name a datasets/ entry belongs to."""
    for prefix in (OLD_PREFIX, DEL_PREFIX, TMP_PREFIX):
        if entry.startswith(prefix):
            rest = entry[len(prefix):]
            name = rest.rsplit("-", 1)[0] if "-" in rest else rest
            return name if valid_name(name) else None
    return entry if valid_name(entry) else None
