"""Atomic file replacement: the one mechanism every writer of a single file uses.

(Whole datasets are made atomic one level up, by the store: written into a
temporary folder and renamed.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(dest, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest``.

    If the block raises (or the process dies), ``dest`` keeps its old content
    and the temporary file is removed (or left as a hidden ``.*.tmp`` file
    after a hard kill). ``fsync`` flushes the data to disk before the rename.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
