"""Where datasets live, and what they may be called.

    <home>/datasets/<name>/CURRENT        the committed version's folder name
    <home>/datasets/<name>/v-<id>/        one immutable version (manifest, arrays,
                                          tables, thumbs/, extra/, index/, cache/)
    <home>/datasets/.tmp-<name>-<rand>/   a version being written
    <home>/locks/<name>.lock, .holder.json  the writer lock of a name and who holds it

A dataset folder without ``CURRENT`` but with a ``manifest.json`` is the
layout of clipgeom before versions (and of the bundled datasets under
``assets/``): the folder itself is its one version.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DatasetError, InputError

SCHEMA_VERSION = 1
# A full match: "abc\n" is not a name ($ would accept a trailing newline).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

MANIFEST = "manifest.json"
IMAGE_EMB = "image_emb.npy"
TEXT_EMB = "text_emb.npy"
IMAGES = "images.parquet"
TEXTS = "texts.parquet"
ARRAY_FILES = (IMAGE_EMB, TEXT_EMB)
TABLE_FILES = (IMAGES, TEXTS)
CURRENT = "CURRENT"
VERSION_PREFIX = "v-"
NORM_TOL = 1e-3


def default_assets_dir() -> Path:
    """Bundled read-only datasets (the demo); CLIPGEOM_ASSETS points elsewhere
    (tests use an empty folder so results do not depend on what is bundled)."""
    return Path(os.environ.get("CLIPGEOM_ASSETS")
                or Path(__file__).resolve().parent.parent.parent / "assets")


def assets_dir() -> Path:
    # Read through the package so ``monkeypatch.setattr(store, "ASSETS_DIR", ...)`` works.
    from .. import store
    return Path(store.ASSETS_DIR)


def home() -> Path:
    """``$CLIPGEOM_HOME`` or ``./data`` (relative to the current folder)."""
    env = os.environ.get("CLIPGEOM_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path.cwd() / "data"


def resolve_home(h) -> Path:
    return Path(h).expanduser().absolute() if h is not None else home()


def datasets_dir(h=None) -> Path:
    return resolve_home(h) / "datasets"


def valid_name(name) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check_name(name) -> str:
    """Return ``name`` if it is a valid dataset name, else InputError."""
    if not valid_name(name):
        raise InputError(
            f"Invalid dataset name {name!r}: use 1-64 characters, letters, "
            "digits, '_', '.' or '-', starting with a letter or digit "
            "(no slashes, spaces or line breaks)."
        )
    return name


def read_only_roots() -> list[Path]:
    """Dataset folders bundled under ``assets/`` (children with a manifest)."""
    root = assets_dir()
    if not root.is_dir():
        return []
    return [child for child in sorted(root.iterdir())
            if child.is_dir() and (child / MANIFEST).is_file() and valid_name(child.name)]


def read_only_map() -> dict[str, Path]:
    return {p.name: p for p in read_only_roots()}


def user_names(h: Path) -> list[str]:
    d = h / "datasets"
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and valid_name(p.name))


def available(h: Path) -> str:
    names = sorted(set(user_names(h)) | set(read_only_map()))
    if not names:
        return ("No datasets exist yet; import one first "
                "(see `python -m clipgeom --help`).")
    return "Available: " + ", ".join(names) + "."


def make_dir(path: Path) -> Path:
    """``mkdir -p path``, or a DatasetError saying the home is not writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"Cannot create {path} ({exc.strerror or exc}); set CLIPGEOM_HOME "
            "to a writable folder."
        ) from None
    return path
