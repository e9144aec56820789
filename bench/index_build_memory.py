"""Peak memory of building a FAISS index over a memory-mapped array.

Each variant builds an IVF index (``kind="ivf"``) over the same generated
``.npy`` file, in its own subprocess, and reports wall time, the process's
peak RSS (``ru_maxrss``: anonymous memory plus the pages of mapped files it
touched) and the peak of its anonymous memory alone (``RssAnon`` sampled every
20 ms), next to the size of the vectors:

* ``legacy``: the algorithm before the blocked build (kept here to compare):
  blocks sliced from the memory map (which maps every page it reads into
  the process) and appended with ``index.add`` (lists grow by doubling);
* ``memory``: :func:`clipgeom.index.build_faiss_index` (blocks read with
  ``preadv``, lists allocated at their final sizes);
* ``disk``: the same with ``ondisk=`` (lists written to a file, then mapped).

    .venv/bin/python bench/index_build_memory.py [--n 300000] [--dim 512] [--variants legacy,memory,disk]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import JSON_TAG, ROOT, emit, header, parser


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _child(variant: str, path: str, workdir: str) -> None:
    import resource

    import faiss
    import numpy as np

    from clipgeom import index as ix
    from clipgeom._chunks import row_chunks

    x = np.load(path, mmap_mode="r")
    peak = {"anon": _rss_anon_mb()}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak["anon"] = max(peak["anon"], _rss_anon_mb())

    t = threading.Thread(target=sample, daemon=True)
    base_anon = _rss_anon_mb()
    t.start()
    t0 = time.perf_counter()
    if variant == "legacy":
        n, d = x.shape
        nlist = ix.nlist_for(n)
        rows = np.sort(np.random.default_rng(0).choice(n, min(n, ix.TRAIN_PER_LIST * nlist),
                                                       replace=False))
        train = np.asarray(x[rows], dtype=np.float32)
        faiss.normalize_L2(train)
        q = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(q, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed, index.cp.niter, index.cp.spherical = 0, ix.KMEANS_ITER, True
        index.train(train)
        del train
        for sl in row_chunks(n, ix.CHUNK):
            block = np.array(x[sl], dtype=np.float32, order="C", copy=True)
            faiss.normalize_L2(block)
            index.add(block)
    else:
        ondisk = Path(workdir) / "lists.ivfdata" if variant == "disk" else None
        index, params = ix.build_faiss_index(x, "ivf", ondisk=ondisk)
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    peak["anon"] = max(peak["anon"], _rss_anon_mb())
    print(JSON_TAG + json.dumps({
        "variant": variant, "wall_s": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_anon_mb": round(peak["anon"], 1), "anon_before_mb": round(base_anon, 1),
        "ntotal": int(index.ntotal)}))


def main() -> None:
    p = parser(__doc__.splitlines()[0], n=300_000, repeat=1)
    p.add_argument("--variants", default="legacy,memory,disk")
    p.add_argument("--child", nargs=3, metavar=("VARIANT", "NPY", "DIR"), help=argparse_hide())
    args = p.parse_args()
    if args.child:
        _child(*args.child)
        return
    import numpy as np

    header("FAISS IVF build: peak memory", args)
    results = []
    with tempfile.TemporaryDirectory(prefix="clipgeom-index-mem-") as tmp:
        path = Path(tmp) / "x.npy"
        # a CLIP-like spectrum, written block by block (never in memory whole)
        rng = np.random.default_rng(args.seed)
        sigma = (np.arange(1, args.dim + 1) ** -0.5 * 3).astype(np.float32)
        shift = rng.standard_normal(args.dim).astype(np.float32) * 0.3
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                        shape=(args.n, args.dim))
        for s in range(0, args.n, 65536):
            e = min(args.n, s + 65536)
            out[s:e] = rng.standard_normal((e - s, args.dim), dtype=np.float32) * sigma + shift
        out.flush()
        del out
        vec_mb = args.n * args.dim * 4 / 2 ** 20
        print(f"vectors: {args.n:,} x {args.dim} float32 = {vec_mb:,.0f} MiB")
        for v in args.variants.split(","):
            r = subprocess.run([sys.executable, __file__, "--child", v, str(path), tmp],
                               capture_output=True, text=True, cwd=ROOT)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith(JSON_TAG)]
            if r.returncode or not line:
                print(f"{v}: failed\n{r.stderr[-2000:]}")
                continue
            res = json.loads(line[-1][len(JSON_TAG):])
            results.append(res)
            print(f"{v:>7}: {res['wall_s']:7.1f} s   peak RSS {res['peak_rss_mb']:8.0f} MiB   "
                  f"peak anonymous {res['peak_anon_mb']:8.0f} MiB "
                  f"(before {res['anon_before_mb']:.0f})   vectors {vec_mb:.0f} MiB")
    emit({"n": args.n, "dim": args.dim, "vectors_mb": round(vec_mb, 1), "results": results})


def argparse_hide():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
