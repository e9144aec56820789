"""Who may write a dataset name, and which versions are still being read.

The locking rule, in one place:

* **Writers** of a name (import, embed/coco/demo build, upload, subset save,
  delete) hold ``<home>/locks/<name>.lock`` (the well-kept ``filelock``
  package, an OS lock released when the process dies) for the whole of their
  work. A second writer waits at most ``CLIPGEOM_LOCK_TIMEOUT`` seconds
  (default 5) and is then refused with a message naming the holder (command,
  pid, start time, from ``<name>.holder.json``). Re-entrant within one
  thread; two threads (two Streamlit sessions) exclude each other.
* **Readers** hold a shared ``fcntl`` lock on ``<version>/.readers`` while a
  :class:`Dataset` object is alive, so its version is never deleted under
  it; old versions are removed only when an exclusive lock on that file can
  be taken (nobody reads them).
* **Leftovers** (``.tmp-*`` of killed writers, ``.del-*``, ``.old-*`` of the
  old layout, staging folders of killed uploads) are swept by any store
  operation once no live lock owns them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import threading
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import DatasetError

try:                      # POSIX; on Windows versions are simply never shared-locked
    import fcntl
except ImportError:       # pragma: no cover
    fcntl = None

READERS = ".readers"


def lock_timeout() -> float:
    try:
        return float(os.environ.get("CLIPGEOM_LOCK_TIMEOUT", "5"))
    except ValueError:
        return 5.0


def locks_dir(h: Path) -> Path:
    d = Path(h) / "locks"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"Cannot write to {d} ({exc.strerror or exc}): the clipgeom home "
            f"{h} is read-only or full. Set CLIPGEOM_HOME to a writable folder."
        ) from None
    return d


_LOCAL = threading.local()


def _held() -> dict:
    if not hasattr(_LOCAL, "held"):
        _LOCAL.held = {}
    return _LOCAL.held


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"{info.get('purpose', 'a writer')} (pid {info.get('pid')}, "
                f"`{info.get('command', '?')}`, since {info.get('started', '?')})")
    except (OSError, ValueError, AttributeError):
        return "another clipgeom process"


@contextlib.contextmanager
def writer_lock(h: Path, name: str, purpose: str, timeout: float | None = None):
    """Hold the writer lock of ``name`` (see the module docstring)."""
    d = locks_dir(h)
    lock_path, holder = d / f"{name}.lock", d / f"{name}.holder.json"
    held = _held()
    key = str(lock_path)
    if key in held:                                  # re-entrant in this thread
        held[key][1] += 1
        try:
            yield
        finally:
            held[key][1] -= 1
        return
    lock = FileLock(str(lock_path), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=lock_timeout() if timeout is None else timeout)
    except Timeout:
        raise DatasetError(
            f"Dataset {name!r} is being written by {_holder_text(holder)}; try again "
            f"when it has finished (waited {lock_timeout() if timeout is None else timeout:g} s)."
        ) from None
    except OSError as exc:
        raise DatasetError(f"Cannot lock {lock_path} ({exc.strerror or exc}).") from None
    held[key] = [lock, 1]
    try:
        try:
            holder.write_text(json.dumps({
                "purpose": purpose, "pid": os.getpid(),
                "command": " ".join(os.path.basename(a) if i == 0 else a
                                    for i, a in enumerate(sys.argv))[:300],
                "started": _dt.datetime.now().isoformat(timespec="seconds")}),
                encoding="utf-8")
        except OSError:
            pass                                     # the lock itself is what matters
        yield
    finally:
        del held[key]
        lock.release()


def is_write_locked(h: Path, name: str) -> bool:
    """True when some live process (or another thread here) holds ``name``'s writer lock."""
    lock_path = Path(h) / "locks" / f"{name}.lock"
    if str(lock_path) in _held():
        return True
    if not lock_path.exists():
        return False
    lock = FileLock(str(lock_path), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return True                                  # cannot tell: treat as owned
    lock.release()
    return False


# ---------------------------------------------------------------- readers
class ReaderHold:
    """A shared lock on a version folder, held while a Dataset reads it."""

    def __init__(self, version_dir: Path):
        self.fd = None
        if fcntl is None:
            return
        try:
            self.fd = os.open(version_dir / READERS, os.O_RDONLY)
            fcntl.flock(self.fd, fcntl.LOCK_SH)
        except OSError:              # read-only copy without the file: nothing deletes it
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)    # closing releases the flock
            except OSError:
                pass
            self.fd = None

    def __del__(self):
        self.close()


def unread(version_dir: Path) -> bool:
    """True when no process reads ``version_dir`` (so it may be deleted)."""
    if fcntl is None:
        return True
    try:
        fd = os.open(version_dir / READERS, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------- owned folders
OWNER = ".owner"


@contextlib.contextmanager
def owned_folder(root: Path, prefix: str):
    """A private folder ``root/<prefix><random>`` held (flock on its ``.owner``)
    while the block runs and removed after, success or not. A folder whose
    process was killed is left unlocked, and :func:`sweep_owned` removes it."""
    import shutil
    import tempfile

    root = Path(root)
    fd, path = None, None
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Locked under a name the sweep ignores, then renamed: a sweeper can
        # never see the folder between its creation and its lock.
        hidden = Path(tempfile.mkdtemp(prefix=f".creating-{prefix}", dir=root))
        if fcntl is not None:
            fd = os.open(hidden / OWNER, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        path = root / hidden.name[len(".creating-"):]
        os.rename(hidden, path)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        raise DatasetError(f"Cannot create a working folder in {root} "
                           f"({exc.strerror or exc}); check free space and permissions "
                           "(or set CLIPGEOM_HOME to a writable folder).") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def sweep_owned(root: Path, prefix: str, grace_s: float = 3600) -> list[str]:
    """Remove ``root/<prefix>*`` folders no live process holds (folders without
    an owner file, from older versions, once older than ``grace_s``)."""
    import shutil
    import time

    gone = []
    try:
        entries = [p for p in Path(root).iterdir() if p.is_dir() and p.name.startswith(prefix)]
        creating = [p for p in Path(root).iterdir()
                    if p.is_dir() and p.name.startswith(f".creating-{prefix}")]
    except OSError:
        return gone
    for p in creating:                       # killed between mkdtemp and rename
        try:
            if time.time() - p.stat().st_mtime > 60:
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
        except OSError:
            pass
    for p in entries:
        owner = p / OWNER
        if fcntl is None:
            continue
        try:
            fd = os.open(owner, os.O_RDWR)
        except FileNotFoundError:
            try:
                if time.time() - p.stat().st_mtime > grace_s:
                    shutil.rmtree(p, ignore_errors=True)
                    gone.append(p.name)
            except OSError:
                pass
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue                                  # its process is alive
        try:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
        finally:
            os.close(fd)
    return gone
