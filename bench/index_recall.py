"""Benchmark: the approximate (IVF) search index vs exact search.

Builds :func:`clipgeom.index.build_faiss_index` (the function ``build_index``
uses) with ``kind="ivf"`` on a synthetic N x d float32 offset-Gaussian set
(default 1,000,000 x 512), and reports:

* build time (k-means training, adding the rows, nprobe calibration),
* query time for ``--queries`` (1,000) fresh queries from the same
  distribution, batched and one at a time, for IVF and exact IndexFlatIP
  (IVF batches both ways: :func:`clipgeom.index.ivf_batch_search`, list by
  list, which ``search`` uses from 64 queries, and faiss's own
  ``index.search``, query by query),
* recall@10 of IVF against exact IndexFlatIP search for those queries,
* peak RSS.

The rows are generated in chunks, L2-normalised and added to an exact
``IndexFlatIP``; the IVF index is then built from a zero-copy view of the flat
index's storage, so the data exists twice (flat + IVF), never three times.

``--spectrum clip`` (default): per-feature variance with a long tail
(var_k ~ 1/k, the "ellipsoid, not a sphere" of the Double-Ellipsoid paper),
offset ||m|| / ||sigma|| = 0.94 (the paper's value for images).
``--spectrum isotropic``: var_k = 1 plus the same offset: after
normalisation a structureless 511-d Gaussian, the worst case for any ANN
method (nprobe calibrates high and IVF queries get slower, not wrong).
Both are rotation-invariant for IVF/exact search, so no random rotation.

    .venv/bin/python bench/index_recall.py                     # 1M x 512
    .venv/bin/python bench/index_recall.py --n 100000 --spectrum isotropic

Measured on the shared 2-core AMD EPYC box (load average 3-4), faiss 1.15.1:

* clip, 1,000,000 x 512: build 197 s (k-means 137 s, add 51 s, calibration
  9 s); nlist 4000, nprobe 256 (6.4%); recall@10 0.976; 1000 queries: exact
  15.6 s, IVF list by list 2.6 s, IVF query by query 13.9 s; one query:
  exact 391 ms, IVF 15 ms; peak RSS 4.8 GB (2 GB exact + 2.7 GB IVF build).
* isotropic, 300,000 x 512: nprobe 640 of 2191 (29%), recall@10 0.969;
  1000 queries: exact 7.2 s, IVF list by list 11.8 s; one query: exact
  146 ms, IVF 62 ms. Structureless data gets no speed-up from any ANN.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import _common as C
from clipgeom import index as ix

import faiss  # noqa: E402  (after clipgeom.index: OMP_WAIT_POLICY first)


def spectrum(d: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sigma, m): per-feature std and offset with ||m|| / ||sigma|| = 0.94."""
    if kind == "clip":
        sigma = np.arange(1, d + 1, dtype=np.float64) ** -0.5
    else:
        sigma = np.ones(d)
    sigma *= np.sqrt(d) / np.linalg.norm(sigma)
    m = np.random.default_rng(seed + 1000).standard_normal(d)
    m *= 0.94 * np.linalg.norm(sigma) / np.linalg.norm(m)
    return sigma.astype(np.float32), m.astype(np.float32)


def generate(rng, rows: int, sigma, m) -> np.ndarray:
    x = rng.standard_normal((rows, sigma.shape[0]), dtype=np.float32)
    x *= sigma
    x += m
    return x


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k
                          for f, t in zip(found, truth)]))


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], n=1_000_000, dim=512, repeat=1)
    p.add_argument("--queries", type=int, default=1000, help="query count (default 1000)")
    p.add_argument("--k", type=int, default=10, help="neighbours (default 10)")
    p.add_argument("--single", type=int, default=100,
                   help="queries timed one at a time (default 100)")
    p.add_argument("--spectrum", choices=("clip", "isotropic"), default="clip")
    args = p.parse_args()
    C.header("index_recall", args)
    n, d, k = args.n, args.dim, args.k
    print(f"faiss {faiss.__version__}, {ix.THREADS} OpenMP threads, "
          f"OMP_WAIT_POLICY={__import__('os').environ.get('OMP_WAIT_POLICY')}", flush=True)

    sigma, m = spectrum(d, args.spectrum, args.seed)
    rng = np.random.default_rng(args.seed)
    rss0 = C.current_rss_mb()
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    for s in range(0, n, ix.CHUNK):
        block = generate(rng, min(ix.CHUNK, n - s), sigma, m)
        faiss.normalize_L2(block)
        flat.add(block)
    t_gen = time.perf_counter() - t0
    # Zero-copy view of the flat index's normalised rows.
    xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
    print(f"generated + exact IndexFlatIP filled: {n:,} x {d} in {t_gen:.1f} s "
          f"(+{C.current_rss_mb() - rss0:.0f} MiB)", flush=True)

    last = [0.0]

    def progress(done, total, label):
        now = time.perf_counter()
        if done == total or now - last[0] > 15:
            last[0] = now
            print(f"  {label}: {done:,}/{total:,}  ({now - t1:.0f} s)", flush=True)

    rss1 = C.current_rss_mb()
    t1 = time.perf_counter()
    ivf, params = ix.build_faiss_index(xb, "ivf", seed=args.seed, progress=progress)
    t_build = time.perf_counter() - t1
    rss_ivf = C.current_rss_mb() - rss1
    print(f"IVF build: {t_build:.1f} s  (train {params['stage_seconds']['train']:.1f} s, "
          f"add {params['stage_seconds']['add']:.1f} s, calibrate "
          f"{params['stage_seconds']['calibrate']:.1f} s), +{rss_ivf:.0f} MiB RSS")
    print(f"IVF params: nlist {params['nlist']}, nprobe {params['nprobe']} "
          f"(scan {100 * params['scan_fraction']:.1f}% of lists), train_points "
          f"{params['train_points']:,}, calibration recall@10 "
          f"{params['calibration_recall']:.3f} on {params['calibration_queries']} rows",
          flush=True)

    qrng = np.random.default_rng(args.seed + 1)
    Q = generate(qrng, args.queries, sigma, m)
    faiss.normalize_L2(Q)

    t0 = time.perf_counter()
    _, truth = flat.search(Q, k)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, found = ix.ivf_batch_search(ivf, Q, k)
    t_ivf = time.perf_counter() - t0
    recall = recall_at(found, truth, k)
    t0 = time.perf_counter()
    _, found_q = ivf.search(Q, k)
    t_ivf_q = time.perf_counter() - t0
    same = float(np.mean(found_q == found))

    def single(index) -> float:
        times = []
        for i in range(min(args.single, len(Q))):
            t = time.perf_counter()
            index.search(Q[i:i + 1], k)
            times.append(time.perf_counter() - t)
        return 1000 * statistics.median(times)

    s_exact = single(flat)
    s_ivf = single(ivf)
    print(f"{args.queries} queries, batched: exact {t_exact:.2f} s, IVF list by list "
          f"(clipgeom.index.search) {t_ivf:.2f} s (speed-up over exact {t_exact / t_ivf:.1f}x), "
          f"IVF query by query (faiss index.search) {t_ivf_q:.2f} s; "
          f"same rows {100 * same:.2f}%")
    print(f"one query at a time (median of {min(args.single, len(Q))}): exact "
          f"{s_exact:.1f} ms, IVF {s_ivf:.2f} ms")
    print(f"recall@{k} IVF vs exact IndexFlatIP: {recall:.4f} "
          f"(goal {ix.RECALL_GOAL})")
    C.emit({
        "bench": "index_recall", "n": n, "dim": d, "spectrum": args.spectrum,
        "threads": ix.THREADS, "faiss": faiss.__version__,
        "kind": "ivf", "nlist": params["nlist"], "nprobe": params["nprobe"],
        "train_points": params["train_points"],
        "calibration_recall": params["calibration_recall"],
        "build_s": round(t_build, 2), "stage_s": params["stage_seconds"],
        "queries": args.queries, "k": k,
        "query_batch_exact_s": round(t_exact, 3), "query_batch_ivf_s": round(t_ivf, 3),
        "query_batch_ivf_faiss_search_s": round(t_ivf_q, 3),
        "query_single_exact_ms": round(s_exact, 2), "query_single_ivf_ms": round(s_ivf, 3),
        f"recall_at_{k}": round(recall, 4), "ivf_rss_mb": round(rss_ivf, 1),
    })


if __name__ == "__main__":
    main()
