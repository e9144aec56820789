"""Thread policy of the hot kernels: how many threads each may use.

On a small machine that also runs other work (a second process, a second
dashboard session, a training job), a kernel made of many short parallel
operations loses badly when its thread pool is as large as the machine: at
every operation each thread waits at a barrier for the others, and a thread
whose core is busy arrives a scheduler time slice late (OpenMP workers spin
while they wait, burning the CPU the late thread needs). One thread never
waits. ``bench/threads_under_load.py`` times every hot kernel with 1 and 2
threads, as the machine is and next to a process spinning one core, and
:data:`POLICY` records the choice (figures: docs/benchmarks.md, "thread
policy of the hot kernels").

Use::

    with threads.policy("alpha_sweep"):
        loss.alpha_sweep(...)

What a limit sets, for the duration of the block:

* torch's intra-op threads (``torch.set_num_threads``; only when torch is
  already imported: numpy-only work never loads it);
* the BLAS thread pools (numpy's OpenBLAS, faiss's), through threadpoolctl;
* faiss's OpenMP threads in the calling thread (``faiss.omp_set_num_threads``
  sets a per-thread OpenMP value; only when faiss is already imported).

torch's and BLAS's settings are process-wide: nested and concurrent blocks
(two dashboard sessions are two threads) share one count, the smallest
active limit applies, and the settings found before the first block are put
back when the last one ends. ``$CLIPGEOM_KERNEL_THREADS`` overrides every
kernel's policy (a number of threads; 0: the libraries' defaults).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import Counter
from typing import Iterator

#: Threads per hot kernel; None leaves the libraries' defaults (every core).
#: Chosen by bench/threads_under_load.py on this project's 2-core machine
#: (median wall, 1 vs 2 threads, machine busy / plus a process spinning a
#: core; docs/benchmarks.md): 1 thread was as fast or faster for every kernel.
POLICY: dict[str, int | None] = {
    "alpha_sweep": 1,       # loss.alpha_sweep, 3,000 pairs: 4.4 vs 7.6 s; 8.5 vs 9.2 s
    "loss": 1,              # loss.logit_comparison: 2.5 vs 3.1 s; 3.8 vs 3.4 s (best 2.1 vs 3.1)
    "exact_conformity": 1,  # two mat-vec passes, 200k x 512: 1.5 vs 1.6 s; 1.8 vs 2.2 s
    "summary": 1,           # geometry.summarize (float64 GEMM), 100k x 512: 9.1 vs 20 s; 14 vs 26 s
    "faiss_search": 1,      # ivf_batch_search, 500 queries: 1.4 vs 53 s; 1.6 vs 69 s
    "projection_lab": 1,    # Projections' joint SVD, transform lab (5 fits, 5,000 pairs),
                            # intra-modal recovery: 3.7 vs 43 s, machine busy (issue 12)
}
KERNELS = tuple(POLICY)

_lock = threading.Lock()
_active: Counter = Counter()          # limit -> how many blocks hold it
_applied: int | None = None           # the limit in force (None: originals)
_saved: dict = {}                     # the settings found before the first block
_limiter = None                       # threadpoolctl's limiter, to restore BLAS


def threads_for(kernel: str) -> int | None:
    """The number of threads ``kernel`` runs with (None: library defaults)."""
    if kernel not in POLICY:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
    env = os.environ.get("CLIPGEOM_KERNEL_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"CLIPGEOM_KERNEL_THREADS must be a whole number, got {env!r}"
                             ) from None
        return n if n > 0 else None
    return POLICY[kernel]


@contextlib.contextmanager
def policy(kernel: str) -> Iterator[int | None]:
    """Run the block with ``kernel``'s thread policy (:data:`POLICY`)."""
    with limit(threads_for(kernel)) as n:
        yield n


@contextlib.contextmanager
def limit(n: int | None) -> Iterator[int | None]:
    """Run the block with at most ``n`` threads in torch, BLAS and faiss
    (None: no limit). See the module docstring for what is process-wide."""
    if n is None:
        yield None
        return
    n = max(1, int(n))
    with _lock:
        _active[n] += 1
        _apply(min(_active))
    faiss = sys.modules.get("faiss")
    omp_saved = faiss.omp_get_max_threads() if faiss is not None else None
    if faiss is not None:
        faiss.omp_set_num_threads(min(n, omp_saved))
    try:
        yield n
    finally:
        if faiss is not None:
            faiss.omp_set_num_threads(omp_saved)
        with _lock:
            _active[n] -= 1
            if _active[n] <= 0:
                del _active[n]
            _apply(min(_active) if _active else None)


def _apply(n: int | None) -> None:
    """Put limit ``n`` in force process-wide (None: restore). Holds _lock."""
    global _applied, _limiter
    if n == _applied:
        return
    torch = sys.modules.get("torch")
    if _applied is None:                       # first block: remember the originals
        _saved.clear()
        if torch is not None:
            _saved["torch"] = torch.get_num_threads()
    if _limiter is not None:                   # BLAS back to the originals first
        _limiter.restore_original_limits()
        _limiter = None
    if n is None:
        if torch is not None and "torch" in _saved:
            torch.set_num_threads(_saved["torch"])
        _saved.clear()
    else:
        if torch is not None:
            _saved.setdefault("torch", torch.get_num_threads())
            torch.set_num_threads(n)
        try:
            _limiter = _controller().limit(limits=n, user_api="blas")
        except Exception:                      # pragma: no cover - no threadpoolctl
            _limiter = None
    _applied = n


# Libraries that bring their own BLAS: the controller is rebuilt when one of
# them has been imported since (finding the loaded libraries takes ms).
_BLAS_OWNERS = ("numpy", "scipy", "sklearn", "torch", "faiss")
_ctl = None
_ctl_key = None


def _controller():
    """threadpoolctl's controller of the BLAS libraries loaded now (cached)."""
    global _ctl, _ctl_key
    key = tuple(m in sys.modules for m in _BLAS_OWNERS)
    if _ctl is None or key != _ctl_key:
        from threadpoolctl import ThreadpoolController

        _ctl, _ctl_key = ThreadpoolController(), key
    return _ctl


def current() -> dict:
    """What is in force now (for tests and benchmarks): torch threads, BLAS
    pools' threads, this thread's faiss OpenMP threads."""
    out: dict = {"limit": _applied}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_info

        out["blas"] = sorted({int(i["num_threads"]) for i in threadpool_info()
                              if i.get("user_api") == "blas"})
    except Exception:                          # pragma: no cover
        out["blas"] = []
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        out["faiss"] = faiss.omp_get_max_threads()
    return out
