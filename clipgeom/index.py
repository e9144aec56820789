"""FAISS nearest-neighbour search per modality, by cosine similarity.

Each modality of a dataset (``image`` / ``text``) gets its own index over its
rows after L2 normalisation, so inner product = cosine:

* up to :data:`EXACT_LIMIT` rows: an exact ``faiss.IndexFlatIP``;
* above it: an approximate ``faiss.IndexIVFFlat`` (inner-product metric,
  spherical k-means coarse quantizer with ``nlist ~ 4 sqrt(N)`` lists, trained
  on a seeded sample of rows). ``nprobe`` (how many lists a query scans) is
  *calibrated at build time*: a seeded sample of rows of both modalities is
  searched exactly (during the same pass that adds the rows) and with
  increasing ``nprobe``; the smallest ``nprobe`` whose recall@10 reaches
  :data:`CALIBRATION_TARGET` (0.97, for a 0.95 goal) is kept. Data with
  structure (real CLIP embeddings) gets a small ``nprobe``; structureless data
  (an isotropic Gaussian) gets a large one, i.e. it stays accurate and gets
  slower rather than silently wrong.

Why IVF and not HNSW (measured on this project's shared 2-core machine,
offset Gaussian, d = 512): HNSW (M=32, efConstruction=80) took 81 s to build
100k rows with a CLIP-like spectrum (147 s isotropic), i.e. roughly 15-25 min
per million, and needed efSearch 128 for recall@10 0.97 at 100k (isotropic:
0.77 at efSearch 512). IVF built 1,000,000 x 512 in 197 s (k-means 137 s,
add 51 s, calibration 9 s) and reached recall@10 0.976 with nprobe 256 of
4000 lists; one query takes 15 ms against 391 ms for exact search, and 1000
queries 2.6 s against 15.6 s (list by list, :func:`ivf_batch_search`; faiss's
query-by-query ``index.search`` needs 13.9 s because re-scanning lists per
query is memory-bound). Figures: ``bench/index_recall.py``.

The approximate path can be forced for small data with ``kind="ivf"`` or by
lowering ``EXACT_LIMIT`` (module attribute, or the ``CLIPGEOM_EXACT_LIMIT``
environment variable).

Zero rows (a stored all-zero vector, which :mod:`clipgeom.store` refuses at
import) and non-finite rows are indexed as zero vectors: they score 0 against
every query, so they rank after every positively similar item but are never a
crash. Their count is recorded as ``params["zero_rows"]``.

On disk, in ``ds.index_dir`` (outside ``assets/`` for bundled datasets)::

    <modality>.faiss   faiss.write_index output (written to a temp file, then
                       os.replace'd into place)
    <modality>.json    {fingerprint, modality, n, dim, kind, params, built,
                        build_seconds, faiss_version, file_sha256, file_bytes}

An index is used only when its metadata names the dataset's current
fingerprint and the file's size and sha256 match; otherwise (missing, stale,
corrupt, unreadable) :func:`load_index` rebuilds it. Loaded indexes are kept
in an in-process cache keyed by (dataset path, modality, fingerprint).
"""

from __future__ import annotations

import os

# Threads. faiss-cpu ships an OpenMP build of OpenBLAS and its own libgomp;
# numpy has a separate (pthreads) OpenBLAS. With the default "active" OMP
# wait policy, idle OMP workers spin after every parallel region (batched
# queries, k-means, BLAS calls), and on a small shared machine that spinning
# thrashes against numpy's BLAS threads and everything else running. PASSIVE
# makes idle workers sleep. It must be in the environment before libgomp is
# loaded, i.e. before ``import faiss`` (setdefault keeps a user's choice).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import datetime as _dt  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from ._atomic import replacing
from . import validate  # noqa: E402
from ._chunks import row_chunks  # noqa: E402
from .errors import DatasetError, InputError  # noqa: E402

#: Up to this many rows a modality gets an exact IndexFlatIP; above it IVF.
EXACT_LIMIT = 200_000
#: Index kinds: "flat" (exact) and "ivf" (approximate).
KINDS = ("flat", "ivf")
MODALITIES = ("image", "text")
#: Recall@10 the approximate index must reach against exact search ...
RECALL_GOAL = 0.95
#: ... and the recall its nprobe is calibrated to (margin for sampling error).
CALIBRATION_TARGET = 0.97
#: Calibration queries drawn from each modality's rows.
CALIBRATION_QUERIES = 200
#: IVF: training rows per list (faiss asks for >= 39) and k-means iterations.
TRAIN_PER_LIST = 40
KMEANS_ITER = 10
SEED = 0
#: Rows per chunk read from a memory map (32768 x 512 float32 = 64 MiB).
CHUNK = 32768
_CAL_K = 10
#: Batches of at least this many queries on an IVF index are searched list by
#: list (:func:`ivf_batch_search`) rather than query by query.
IVF_BATCH_MIN = 64


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    n = min(cores, 8)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return max(1, n)


#: OpenMP threads faiss uses (min(cores, 8), or fewer if OMP_NUM_THREADS says so).
THREADS = _default_threads()
faiss.omp_set_num_threads(THREADS)
# Exact search switches from faiss's per-pair SIMD loop to BLAS when
# nq * d >= distance_compute_blas_threshold. faiss 1.15 defaults it to
# 128,000 (tuned for dozens of threads): at d = 512 a batch of 200 queries then
# takes the SIMD loop, measured 8x slower than BLAS on 2 cores. On few
# threads BLAS wins from nq * d ~ 800 per thread (faiss PR #5109's
# measurement; ours: 1 query SIMD 16 ms vs BLAS 39 ms, 5 queries 76 vs 59 ms
# over 50k x 512), so single queries keep the SIMD loop and batches use BLAS.
faiss.cvar.distance_compute_blas_threshold = 800 * THREADS

Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class IndexInfo:
    """Metadata of one stored index (the content of ``<modality>.json``)."""

    fingerprint: str
    modality: str
    n: int
    dim: int
    kind: str
    params: dict = field(default_factory=dict)
    built: str = ""
    build_seconds: float = 0.0
    faiss_version: str = ""
    file_sha256: str = ""
    file_bytes: int = 0

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    """Top-k neighbours of each query.

    ``scores[q, k]``: cosine similarity (float32), ``rows[q, k]``: row numbers
    into ``modality``'s embedding array (int64). Where fewer than k results
    exist (k > n) the tail is padded with row -1 and score -inf.
    """

    scores: np.ndarray
    rows: np.ndarray
    modality: str
    kind: str

    @property
    def exact(self) -> bool:
        return self.kind == "flat"


# --------------------------------------------------------------------------
# Lower level: build a faiss index from any 2-D array (memmap or in memory)
# --------------------------------------------------------------------------

def _progress(progress, done, total, label):
    if progress is not None:
        progress(int(done), int(total), label)


def _clean_block(block: np.ndarray) -> int:
    """Zero non-finite rows in place, L2-normalise; return #zero rows."""
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        block[~finite] = 0.0
    faiss.normalize_L2(block)  # leaves all-zero rows at zero
    return int(np.count_nonzero(~np.any(block != 0, axis=1)))


def _read_block(x, sl) -> np.ndarray:
    # np.array copies: normalisation must never write into the memmap.
    return np.array(x[sl], dtype=np.float32, order="C", copy=True)


def _gather_rows(x, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted) of a possibly memory-mapped array, normalised float32."""
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    for s in range(0, len(rows), CHUNK):
        out[s:s + CHUNK] = x[rows[s:s + CHUNK]]
    _clean_block(out)
    return out


def nlist_for(n: int) -> int:
    """IVF list count: ~4 sqrt(N), at most N / 39 (faiss's minimum training
    points per centroid), at least 1."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def sample_queries(x, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` seeded random rows of ``x``: (rows, normalised float32 rows);
    zero rows are left out."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(count, n), replace=False))
    q = _gather_rows(x, rows)
    keep = np.any(q != 0, axis=1)
    return rows[keep], q[keep]


def _recall(found: np.ndarray, truth: np.ndarray, self_rows: np.ndarray,
            k: int) -> float:
    """Mean recall@k of ``found`` against ``truth`` (both [q, >=k] row ids),
    leaving each query's own row (``self_rows``, -1: none) out of both."""
    total = 0.0
    for f, t, s in zip(found, truth, self_rows):
        t = [r for r in t if r >= 0 and r != s][:k]
        f = [r for r in f if r >= 0 and r != s][:k]
        total += len(set(f) & set(t)) / len(t) if t else 1.0
    return total / max(1, len(found))


def _calibrate(index, queries, truth, self_rows, target, k=_CAL_K):
    """Smallest nprobe with recall@k >= target: doubling, then bisection."""
    nlist = index.nlist

    def recall(p):
        index.nprobe = int(p)
        _, found = ivf_batch_search(index, queries, k + 1)
        return _recall(found, truth, self_rows, k)

    p, failed, r = 1, 0, 0.0
    while True:
        r = recall(p)
        if r >= target or p >= nlist:
            break
        failed, p = p, min(2 * p, nlist)
    best, best_r = p, r
    lo = failed
    while best - lo > max(1, best // 16):
        mid = (lo + best) // 2
        rm = recall(mid)
        if rm >= target:
            best, best_r = mid, rm
        else:
            lo = mid
    index.nprobe = int(best)
    return int(best), float(best_r)


def build_faiss_index(x, kind: str = "flat", *, queries: np.ndarray | None = None,
                      query_rows: np.ndarray | None = None, seed: int = SEED,
                      progress: Progress | None = None,
                      target: float = CALIBRATION_TARGET) -> tuple[faiss.Index, dict]:
    """Build an inner-product index over the L2-normalised rows of ``x``.

    ``x``: float array [n, d], typically a memory map; it is read in chunks of
    :data:`CHUNK` rows (each copied, cleaned, normalised with
    ``faiss.normalize_L2`` and added), so it is never held twice in memory.
    ``kind``: "flat" (exact) or "ivf". For "ivf", ``queries`` (normalised
    float32 [q, d]) calibrate nprobe; ``query_rows[i]`` is the row of ``x``
    query i is (left out of its own neighbours), or -1. Without them,
    :data:`CALIBRATION_QUERIES` seeded rows of ``x`` are used.

    Returns (index, params): params record everything needed to explain and
    reproduce the index (nlist, nprobe, training sample, calibration recall,
    stage timings, zero rows).
    """
    if kind not in KINDS:
        raise InputError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    n, d = int(x.shape[0]), int(x.shape[1])
    if n < 1 or d < 1:
        raise InputError(f"cannot index an array of shape {tuple(x.shape)}.")
    params: dict = {"metric": "inner_product", "normalized": True, "threads": THREADS}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        zero = 0
        for sl in row_chunks(n, CHUNK):
            block = _read_block(x, sl)
            zero += _clean_block(block)
            index.add(block)
            _progress(progress, sl.stop, n, "add")
        params["zero_rows"] = zero
        return index, params

    # ---- IVF ---------------------------------------------------------------
    nlist = nlist_for(n)
    train_n = min(n, TRAIN_PER_LIST * nlist)
    if queries is None:
        query_rows, queries = sample_queries(x, CALIBRATION_QUERIES, seed + 1)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    query_rows = (np.full(len(queries), -1, np.int64) if query_rows is None
                  else np.asarray(query_rows, dtype=np.int64))
    cal_k = _CAL_K + 1  # one extra: a query's own row is left out

    t0 = time.perf_counter()
    _progress(progress, 0, 1, "train")
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.choice(n, size=train_n, replace=False))
    train = _gather_rows(x, train_rows)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    index.cp.niter = KMEANS_ITER
    index.cp.spherical = True  # centroids on the unit sphere (cosine k-means)
    index.cp.verbose = False
    if train_n < 39 * nlist:  # only when n < 39 (then nlist = 1): no warning
        index.cp.min_points_per_centroid = 1
    index.train(train)
    del train
    t_train = time.perf_counter() - t0
    _progress(progress, 1, 1, "train")

    # One pass over the rows: add them, and search them exactly for the
    # calibration queries at the same time (faiss.knn per chunk, merged).
    t0 = time.perf_counter()
    heap = faiss.ResultHeap(len(queries), cal_k, keep_max=True) if len(queries) else None
    zero = 0
    for sl in row_chunks(n, CHUNK):
        block = _read_block(x, sl)
        zero += _clean_block(block)
        index.add(block)
        if heap is not None:
            kk = min(cal_k, block.shape[0])
            D, I = faiss.knn(queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(D, I + sl.start)
        _progress(progress, sl.stop, n, "add")
    t_add = time.perf_counter() - t0

    t0 = time.perf_counter()
    _progress(progress, 0, 1, "calibrate")
    if heap is not None:
        heap.finalize()
        nprobe, cal_recall = _calibrate(index, queries, heap.I, query_rows, target)
    else:  # pragma: no cover - no usable calibration rows
        nprobe, cal_recall = nlist, 1.0
        index.nprobe = nlist
    t_cal = time.perf_counter() - t0
    _progress(progress, 1, 1, "calibrate")
    params.update({
        "nlist": nlist, "nprobe": nprobe,
        "scan_fraction": round(nprobe / nlist, 4),
        "quantizer": "IndexFlatIP", "spherical_kmeans": True,
        "kmeans_iter": KMEANS_ITER, "train_points": int(train_n), "seed": int(seed),
        "recall_goal": RECALL_GOAL, "recall_target": float(target),
        "calibration_k": _CAL_K, "calibration_queries": int(len(queries)),
        "calibration_recall": round(cal_recall, 4),
        "zero_rows": zero,
        "stage_seconds": {"train": round(t_train, 3), "add": round(t_add, 3),
                          "calibrate": round(t_cal, 3)},
    })
    return index, params


def ivf_batch_search(index, queries: np.ndarray, k: int):
    """Search a batch on an IndexIVFFlat list by list instead of query by query.

    ``index.search`` scans, for every query, its ``nprobe`` lists from
    memory: a batch re-reads the same lists again and again, which is
    memory-bound (1000 queries over 1M x 512: ~28 s, as slow as exact BLAS
    search). Here each list is read once: the queries that probe it are
    gathered and scored with one ``faiss.knn`` call (BLAS), and the
    per-list top-k are merged in a ``faiss.ResultHeap``. Same lists probed,
    same candidates, so the same results as ``index.search`` (scores equal
    to float32 rounding). Returns (scores [q, k], rows [q, k]), -1 padded.
    """
    nq = len(queries)
    nprobe = max(1, min(int(index.nprobe), int(index.nlist)))
    _, assign = index.quantizer.search(queries, nprobe)
    lists = assign.ravel()
    qids = np.repeat(np.arange(nq, dtype=np.int64), nprobe)
    keep = lists >= 0
    order = np.argsort(lists[keep], kind="stable")
    lists, qids = lists[keep][order], qids[keep][order]
    bounds = np.searchsorted(lists, np.arange(index.nlist + 1))
    heap = faiss.ResultHeap(nq, k, keep_max=True)
    invlists, d = index.invlists, index.d
    for lst in np.flatnonzero(np.diff(bounds)):
        lst = int(lst)
        size = invlists.list_size(lst)
        if size == 0:
            continue
        sub = qids[bounds[lst]:bounds[lst + 1]]
        codes_ptr, ids_ptr = invlists.get_codes(lst), invlists.get_ids(lst)
        try:  # zero-copy views of the list's vectors and ids
            xb = faiss.rev_swig_ptr(codes_ptr, size * d * 4).view(np.float32)
            ids = faiss.rev_swig_ptr(ids_ptr, size)
            D, I = faiss.knn(queries[sub], xb.reshape(size, d), min(k, size),
                             metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result_subset(sub, D, ids[I])
        finally:
            invlists.release_codes(lst, codes_ptr)
            invlists.release_ids(lst, ids_ptr)
    heap.finalize()
    return heap.D, heap.I


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def _check_modality(modality, what="modality") -> str:
    if modality not in MODALITIES:
        raise InputError(f"{what} must be 'image' or 'text', got {modality!r}.")
    return modality


def _check_kind(kind):
    if kind is not None and kind not in KINDS:
        raise InputError(
            f"index kind must be None (automatic), 'flat' (exact) or 'ivf' "
            f"(approximate), got {kind!r}."
        )
    return kind


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a whole number >= 1, got {k!r}.")
    return int(k)


def exact_limit() -> int:
    """:data:`EXACT_LIMIT`, or ``$CLIPGEOM_EXACT_LIMIT`` when set."""
    env = os.environ.get("CLIPGEOM_EXACT_LIMIT", "").strip()
    if env:
        try:
            return int(env)
        except ValueError:
            raise InputError(
                f"CLIPGEOM_EXACT_LIMIT must be a whole number, got {env!r}."
            ) from None
    return int(EXACT_LIMIT)


def _array(ds, modality: str) -> np.ndarray:
    return ds.image_emb if modality == "image" else ds.text_emb


def _prepare_queries(queries, dim: int, name: str = "queries") -> np.ndarray:
    """Validate raw queries ([d] or [q, d]) and return them L2-normalised float32."""
    try:
        arr = np.asarray(queries)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise InputError(f"{name}: cannot be read as an array ({exc}).") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    elif arr.ndim != 2:
        raise InputError(
            f"{name}: expected a vector [{dim}] or a matrix [queries, {dim}], "
            f"got shape {arr.shape}."
        )
    if arr.ndim == 2 and arr.shape[1] != dim and arr.shape[0] > 0:
        raise InputError(
            f"{name}: {arr.shape[1]} features but the index has {dim}; embed "
            "the queries with the dataset's model."
        )
    arr = validate.embeddings(arr, name, min_rows=1, allow_zero=False,
                              dtype=np.float64)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

def _paths(ds, modality: str, d: Path | None = None) -> tuple[Path, Path]:
    d = ds.index_dir if d is None else d
    return d / f"{modality}.faiss", d / f"{modality}.json"


def _shipped_dir(ds) -> Path | None:
    """Indexes bundled inside a read-only dataset (the demo ships its own);
    they are read in place, and any rebuild goes to the writable index_dir."""
    return ds.shipped_dir("index")


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            size += len(b)
            h.update(b)
    return h.hexdigest(), size


def _read_info(ds, modality: str, d: Path | None = None) -> IndexInfo | None:
    """The stored metadata if it describes this dataset's current arrays."""
    _, meta = _paths(ds, modality, d)
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
        info = IndexInfo(**{k: raw[k] for k in IndexInfo.__dataclass_fields__
                            if k in raw})
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return None
    arr = _array(ds, modality)
    if (info.fingerprint != ds.fingerprint or info.modality != modality
            or info.n != arr.shape[0] or info.dim != arr.shape[1]
            or info.kind not in KINDS or not isinstance(info.params, dict)):
        return None
    return info


def _read_index(ds, modality: str, info: IndexInfo, d: Path | None = None):
    """faiss.read_index of the stored file, or None if missing/corrupt/stale.

    The file's size and sha256 are checked against the metadata first, so a
    damaged file is never handed to faiss's reader.
    """
    path, _ = _paths(ds, modality, d)
    try:
        if path.stat().st_size != info.file_bytes:
            return None
        if _sha256(path)[0] != info.file_sha256:
            return None
        index = faiss.read_index(str(path))
    except Exception:  # OSError, faiss RuntimeError, MemoryError
        return None
    if index.ntotal != info.n or index.d != info.dim \
            or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    if info.kind == "ivf":
        if not isinstance(index, faiss.IndexIVFFlat):
            return None
        _configure(index, info)
    elif not isinstance(index, faiss.IndexFlat):
        return None
    return index


def _configure(index, info: IndexInfo) -> None:
    if info.kind == "ivf":
        index.nprobe = int(info.params.get("nprobe", index.nlist))


def _write_atomic(path: Path, write) -> None:
    try:
        with replacing(path, fsync=True) as tmp:
            write(tmp)
    except (OSError, RuntimeError) as exc:
        raise DatasetError(
            f"Cannot write the search index {path} ({exc}); check free "
            "space and permissions (or set CLIPGEOM_HOME to a writable folder)."
        ) from None


# --------------------------------------------------------------------------
# In-process cache
# --------------------------------------------------------------------------

_CACHE: dict[tuple[str, str, str], tuple[faiss.Index, IndexInfo]] = {}
_CACHE_LOCK = threading.Lock()
_BUILD_LOCKS: dict[tuple[str, str], threading.RLock] = {}


def _ds_key(ds) -> str:
    return str(Path(ds.path).resolve())


def _build_lock(ds, modality: str) -> threading.RLock:
    with _CACHE_LOCK:
        return _BUILD_LOCKS.setdefault((_ds_key(ds), modality), threading.RLock())


def _cache_put(ds, modality: str, index, info: IndexInfo) -> None:
    path = _ds_key(ds)
    with _CACHE_LOCK:
        # One index per (dataset, modality): drop stale fingerprints' indexes.
        for key in [k for k in _CACHE if k[0] == path and k[1] == modality]:
            del _CACHE[key]
        _CACHE[(path, modality, info.fingerprint)] = (index, info)


def _cache_get(ds, modality: str):
    with _CACHE_LOCK:
        return _CACHE.get((_ds_key(ds), modality, ds.fingerprint))


def clear_cache() -> None:
    """Forget every loaded index (they are reloaded from disk on next use)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def build_index(ds, modality: str, *, force: bool = False, kind: str | None = None,
                progress: Progress | None = None) -> IndexInfo:
    """Build (or reuse) the search index of one modality of ``ds``.

    Skips building when a valid index for the dataset's current fingerprint
    is stored (and, if ``kind`` is given, is of that kind), unless ``force``.
    ``kind``: None (exact up to :func:`exact_limit` rows, IVF above), "flat"
    or "ivf". ``progress(done, total, label)`` is called per stage
    ("train", "add", "calibrate"). Returns the stored metadata.
    """
    _check_modality(modality)
    _check_kind(kind)
    with _build_lock(ds, modality):
        if not force:
            info = _read_info(ds, modality)
            if info is not None and (kind is None or info.kind == kind):
                path, _ = _paths(ds, modality)
                try:
                    ok = path.stat().st_size == info.file_bytes
                except OSError:
                    ok = False
                if ok:
                    return info
        arr = _array(ds, modality)
        n = int(arr.shape[0])
        if kind is None:
            kind = "flat" if n <= exact_limit() else "ivf"
        queries = query_rows = None
        if kind == "ivf":
            # Calibrate on rows of both modalities: same-modality queries
            # (their own row left out) and cross-modal ones (text -> image),
            # which sit across the modality gap.
            other = _array(ds, "text" if modality == "image" else "image")
            r_own, q_own = sample_queries(arr, CALIBRATION_QUERIES, SEED + 1)
            _, q_other = sample_queries(other, CALIBRATION_QUERIES, SEED + 2)
            queries = np.concatenate([q_own, q_other])
            query_rows = np.concatenate([r_own, np.full(len(q_other), -1, np.int64)])
        t0 = time.perf_counter()
        index, params = build_faiss_index(arr, kind, queries=queries,
                                          query_rows=query_rows, progress=progress)
        seconds = time.perf_counter() - t0
        path, meta = _paths(ds, modality)
        _write_atomic(path, lambda p: faiss.write_index(index, str(p)))
        sha, size = _sha256(path)
        info = IndexInfo(
            fingerprint=ds.fingerprint, modality=modality, n=n,
            dim=int(arr.shape[1]), kind=kind, params=params,
            built=_dt.datetime.now(_dt.timezone.utc)
                     .isoformat(timespec="seconds").replace("+00:00", "Z"),
            build_seconds=round(seconds, 3), faiss_version=faiss.__version__,
            file_sha256=sha, file_bytes=size,
        )

        def write_meta(p):
            with open(p, "w", encoding="utf-8") as f:
                json.dump(info.to_dict(), f, indent=2)
                f.write("\n")

        _write_atomic(meta, write_meta)
        _cache_put(ds, modality, index, info)
        return info


def load_index(ds, modality: str) -> tuple[faiss.Index, IndexInfo]:
    """The index of one modality, from the in-process cache or from disk.

    Rebuilds (with :func:`build_index`) when the files are missing, corrupt,
    or were built for another fingerprint (the dataset changed).
    """
    _check_modality(modality)
    hit = _cache_get(ds, modality)
    if hit is not None:
        return hit
    with _build_lock(ds, modality):
        hit = _cache_get(ds, modality)
        if hit is not None:
            return hit
        index = info = None
        stored_kind = None
        for where in (_shipped_dir, lambda x: x.index_dir):
            d = where(ds)
            if d is None:
                continue
            info = _read_info(ds, modality, d)
            if info is not None:
                stored_kind = stored_kind or info.kind
            index = _read_index(ds, modality, info, d) if info is not None else None
            if index is not None:
                break
        if index is None:
            # Keep a valid stored kind (e.g. an IVF forced on small data).
            build_index(ds, modality, force=True, kind=stored_kind)
            hit = _cache_get(ds, modality)
            assert hit is not None
            return hit
        _cache_put(ds, modality, index, info)
        return index, info


def search(ds, modality: str, queries, k: int = 10) -> SearchResult:
    """Top-k cosine neighbours of raw query vectors among ``modality``'s rows.

    ``queries``: float [q, d] or [d], raw (normalised here). Raises
    InputError for a wrong width, NaN/Inf values or an all-zero query.
    Rows are padded with -1 (score -inf) when k exceeds the row count.
    """
    _check_modality(modality)
    k = _check_k(k)
    q = _prepare_queries(queries, ds.dim)
    index, info = load_index(ds, modality)
    kk = min(k, info.n)
    if info.kind == "ivf" and len(q) >= IVF_BATCH_MIN:
        scores, rows = ivf_batch_search(index, q, kk)
    else:
        scores, rows = index.search(q, kk)
    scores = np.asarray(scores, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    if kk < k:
        scores = np.hstack([scores, np.full((len(q), k - kk), -np.inf, np.float32)])
        rows = np.hstack([rows, np.full((len(q), k - kk), -1, np.int64)])
    scores[rows < 0] = -np.inf
    return SearchResult(scores=scores, rows=rows, modality=modality, kind=info.kind)


def search_item(ds, modality: str, row: int, target_modality: str, k: int = 10,
                exclude_self: bool = True) -> SearchResult:
    """Neighbours of row ``row`` of ``modality`` among ``target_modality``'s rows.

    Same-modality queries leave the item itself out when ``exclude_self``
    (cross-modal queries never contain it). Returns one query row [1, k].
    """
    _check_modality(modality)
    _check_modality(target_modality, "target_modality")
    k = _check_k(k)
    arr = _array(ds, modality)
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)) \
            or not 0 <= row < arr.shape[0]:
        raise InputError(
            f"{modality} row {row!r} is out of range; dataset {ds.name!r} has "
            f"{arr.shape[0]} {modality} rows (0..{arr.shape[0] - 1})."
        )
    row = int(row)
    vec = np.asarray(arr[row], dtype=np.float32)
    name = f"{modality} row {row} of dataset {ds.name!r}"
    drop = exclude_self and modality == target_modality
    res = search(ds, target_modality, _prepare_queries(vec, ds.dim, name),
                 k + 1 if drop else k)
    if drop:
        keep = res.rows[0] != row
        if keep.all():
            keep[-1] = False
        res = SearchResult(scores=res.scores[:, keep], rows=res.rows[:, keep],
                           modality=res.modality, kind=res.kind)
    return res
