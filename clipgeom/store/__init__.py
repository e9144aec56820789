"""Datasets on disk: the only code that reads or writes their files.

A small package, one concern per module:

* ``layout``   where datasets live, names, the bundled read-only ones
* ``manifest`` the manifest schema (checked on every open) and file stats
* ``locks``    the writer lock of a name, reader holds on versions
* ``versions`` immutable versions, the atomic commit, the sweep of leftovers
* ``dataset``  the ``Dataset`` reader of one version
* ``catalog``  open / verify / list / delete by name
* ``tables``   the images and texts tables
* ``writer``   creating a dataset
* ``importer`` importing user ``.npy`` arrays

docs/architecture.md shows the write and read protocol in a few lines.
"""

import os  # noqa: F401  (tests patch store.os.replace)

from .catalog import delete_dataset, list_datasets, open_dataset, verify_dataset
from .dataset import Dataset
from .files import sha256_file
from .importer import import_arrays
from .layout import (ARRAY_FILES, IMAGE_EMB, IMAGES, MANIFEST, NAME_RE, SCHEMA_VERSION,
                     TABLE_FILES, TEXT_EMB, TEXTS, check_name, datasets_dir,
                     default_assets_dir, home, read_only_roots)
from .locks import writer_lock as _writer_lock
from .layout import resolve_home as _resolve_home
from .versions import sweep as _sweep
from .writer import create_dataset

#: Folder whose dataset children are bundled, read-only datasets (tests patch it).
ASSETS_DIR = default_assets_dir()


def writer_lock(name: str, purpose: str, home=None, timeout=None):
    """The writer lock of dataset ``name`` (a context manager; see ``store.locks``):
    jobs hold it from their first chunk to the commit."""
    check_name(name)
    return _writer_lock(_resolve_home(home), name, purpose, timeout)


def sweep(home=None) -> list[str]:
    """Remove leftovers of killed writers that no live lock owns (see ``store.versions``)."""
    return _sweep(_resolve_home(home))


__all__ = ["ASSETS_DIR", "Dataset", "create_dataset", "delete_dataset", "import_arrays",
           "list_datasets", "open_dataset", "verify_dataset", "home", "datasets_dir",
           "check_name", "read_only_roots", "sha256_file", "writer_lock", "sweep",
           "ARRAY_FILES", "IMAGE_EMB", "IMAGES", "MANIFEST", "NAME_RE", "SCHEMA_VERSION",
           "TABLE_FILES", "TEXT_EMB", "TEXTS"]
