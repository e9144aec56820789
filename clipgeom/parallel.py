"""The local engine on every core: row blocks in a pool of worker processes.

:class:`PoolEngine` runs the same map + merge as
:class:`clipgeom.moments.LocalEngine` (each block's partial, folded in block
order, so the numbers are the sequential engine's), with the blocks spread
over one single-threaded worker process per usable core.

Why processes and not BLAS threads: the report is bound by float64 d x d
products per row, and on a machine where another process holds a core, BLAS
threads spin at every barrier waiting for the late one (three times the CPU
for the same work; ``clipgeom.threads``). Worker processes take blocks as
they free up, so a busy core only means fewer blocks done there, never a
stall; on an idle machine every core works.

Workers open the store's memory-mapped arrays themselves (file, offset,
shape: nothing is copied to them). A small in-memory array (e.g. the pair
indexes) is written once to a temporary ``.npy`` they map; a large one that
is not a memory map makes the engine run the pass in this process instead,
as :class:`~clipgeom.moments.LocalEngine` does.

The workers are joblib's reusable loky executor (spawned processes that do
not re-run the caller's main script, kept between reports and stopped after
:data:`IDLE_TIMEOUT_S` idle), so a server that computes several reports
starts them once. ``CLIPGEOM_WORKERS`` sets their number (1: no pool); by
default it is the number of cores this process may use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Optional

from concurrent.futures.process import BrokenProcessPool

import numpy as np
from joblib.externals.loky import get_reusable_executor

from . import moments
from .errors import InputError

#: In-memory arrays up to this size travel to the workers through a temporary
#: file; above it the pass runs in this process (no copy of a large array).
SPILL_LIMIT_BYTES = 256 * 2**20
#: Idle workers exit after this many seconds.
IDLE_TIMEOUT_S = 300


def default_workers() -> int:
    """Worker processes for the local engine: ``CLIPGEOM_WORKERS`` or the
    cores this process may run on."""
    env = os.environ.get("CLIPGEOM_WORKERS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise InputError(f"CLIPGEOM_WORKERS must be a whole number, got {env!r}.") from None
        if n < 1:
            raise InputError(f"CLIPGEOM_WORKERS must be at least 1, got {n}.")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                      # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _worker_init(parent: int) -> None:
    """A worker's start: ``parent`` is the pid of the process that made the
    pool (given, not read here: a worker still starting when its caller is
    killed would read init's pid and watch the wrong process forever)."""
    # One BLAS thread per worker: the parallelism is the processes.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """End this worker when ``parent`` (the process that started it) is gone:
    killed with SIGKILL, it cannot stop its workers, which would otherwise
    stay idle, holding memory and the arrays' maps. Already gone (the worker
    was still starting): end now."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="clipgeom-parent-watch", daemon=True).start()


class PoolEngine(moments.LocalEngine):
    """Row blocks on ``workers`` processes (started at the first pass that has
    more than one block); partials folded in block order in this process."""

    name = "local"

    def __init__(self, block_rows: int = moments.BLOCK_ROWS, workers: Optional[int] = None):
        super().__init__(block_rows)
        self.workers = int(workers or default_workers())
        if self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}.")
        self._spill_dir: Optional[str] = None
        self.passes_on_workers = 0           # passes the workers ran
        self.fallbacks = 0                   # passes redone here after a worker died

    def _descriptors(self, sources: dict) -> Optional[dict]:
        """How each source reaches a worker, or None when one cannot travel
        cheaply (a large array that is not a whole-file memory map)."""
        descs = {}
        for key, arr in sources.items():
            d = moments.source_descriptor(arr)
            if d[0] != "mmap":
                value = d[1]
                if value.nbytes > SPILL_LIMIT_BYTES:
                    return None
                if self._spill_dir is None:
                    self._spill_dir = tempfile.mkdtemp(prefix="clipgeom-pool-")
                path = os.path.join(self._spill_dir, f"{len(os.listdir(self._spill_dir))}.npy")
                np.save(path, value)
                d = moments.source_descriptor(np.load(path, mmap_mode="r"))
            descs[key] = d
        return descs

    def reduce(self, fn: moments.Pass, n: int, sources: dict, consts=None):
        blocks = self.blocks(n)
        if self.workers < 2 or len(blocks) < 2:
            return super().reduce(fn, n, sources, consts)
        descs = self._descriptors(sources)
        if descs is None:
            return super().reduce(fn, n, sources, consts)
        try:
            acc = self._fold_on_workers(fn, blocks, descs, consts)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): the pass is redone here,
            # block by block, to the same numbers; the next pass starts new workers.
            self.fallbacks += 1
            return super().reduce(fn, n, sources, consts)
        self.passes_on_workers += 1
        return acc.finalize()

    def _fold_on_workers(self, fn, blocks, descs, consts):
        # spawned, not forked (the caller may be a threaded server); the same
        # executor as the last pass unless it has died or changed size
        pool = get_reusable_executor(max_workers=self.workers, timeout=IDLE_TIMEOUT_S,
                                     initializer=_worker_init, initargs=(os.getpid(),))
        window = 2 * self.workers            # blocks submitted ahead of the fold
        pending, acc, nxt = [], None, 0
        try:
            while nxt < len(blocks) or pending:
                while nxt < len(blocks) and len(pending) < window:
                    start, stop = blocks[nxt]
                    pending.append(pool.submit(moments.run_block, fn, descs, start, stop, consts))
                    nxt += 1
                part = pending.pop(0).result()          # strictly in block order
                acc = part if acc is None else acc.merge(part)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        return acc

    def close(self) -> None:
        """Remove this engine's temporary files (the workers stay for the next
        engine until they are idle for :data:`IDLE_TIMEOUT_S`)."""
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None
