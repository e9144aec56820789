"""The hot kernels with 1 vs 2 threads, on a quiet machine and next to a CPU hog.

Why: on a 2-core machine a kernel made of many short parallel operations
waits, at every operation, for a thread whose core is busy elsewhere (and
OpenMP workers spin while they wait). This benchmark measures it kernel by
kernel so that :data:`clipgeom.threads.POLICY` is chosen by figures, not by
habit. For each condition ("idle": nothing started by this script; "loaded":
a subprocess spinning one core, ``while True: pass``, at this script's
priority) and each kernel, it runs the kernel with ``clipgeom.threads.limit(1)``
and ``limit(2)`` in alternation (torch intra-op, BLAS pools, faiss OpenMP)
and prints wall and process CPU time (best / median / worst).

Kernels (the report's and the dashboard's hot spots):

* ``alpha_sweep``: ``loss.alpha_sweep`` (21 alphas, image side) on ``--pairs`` pairs
* ``loss``: ``loss.logit_comparison`` (four logits) on the same pairs
* ``exact_conformity``: ``conformity.exact_conformity`` on ``--rows`` x ``--dim``
* ``summary``: ``geometry.summarize`` (float64 covariance) on ``--rows`` / 2 rows
* ``faiss_search``: ``index.ivf_batch_search`` of 500 queries on an IVF index of
  ``--index-rows`` rows, and ``faiss_flat``: exact ``IndexFlatIP`` search of 100 queries

    .venv/bin/python bench/threads_under_load.py [--pairs 3000] [--rows 200000] [--repeat 3] [--quick]

Run it under ``nice`` like everything else on a shared machine; the hog then
has the same priority as the kernels it competes with.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _common import emit, header, loadavg, parser

KERNELS = ("alpha_sweep", "loss", "exact_conformity", "summary", "faiss_search", "faiss_flat")


def make_kernels(args):
    import faiss
    import numpy as np

    from clipgeom import conformity, geometry, index, loss, synthetic

    rng = np.random.default_rng(args.seed)
    pairs = synthetic.two_shells(args.pairs, args.dim, seed=args.seed)
    vi = np.asarray(pairs.image, np.float32)
    vt = np.asarray(pairs.text, np.float32)
    alphas = loss.default_alphas()
    sigma = (np.arange(1, args.dim + 1) ** -0.5 * 3).astype(np.float32)
    x = rng.standard_normal((args.rows, args.dim), dtype=np.float32) * sigma + 0.3
    half = x[: args.rows // 2]
    xb = x[: args.index_rows].copy()
    ivf, params = index.build_faiss_index(xb, "ivf", seed=args.seed)
    q = x[-500:].copy()
    faiss.normalize_L2(q)
    flat = faiss.IndexFlatIP(args.dim)
    xn = xb.copy()
    faiss.normalize_L2(xn)
    flat.add(xn)
    print(f"# IVF index: {args.index_rows:,} rows, nlist {params['nlist']}, "
          f"nprobe {params['nprobe']}", flush=True)
    return {
        "alpha_sweep": lambda: loss.alpha_sweep(vi, vt, alphas, "image", 0.01),
        "loss": lambda: loss.logit_comparison(vi, vt, 0.01),
        "exact_conformity": lambda: conformity.exact_conformity(x),
        "summary": lambda: geometry.summarize(half),
        "faiss_search": lambda: index.ivf_batch_search(ivf, q, 10),
        "faiss_flat": lambda: flat.search(q[:100], 10),
    }


def timed(fn, n_threads):
    from clipgeom import threads

    with threads.limit(n_threads):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0


def start_hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    p = parser(__doc__.splitlines()[0], n=0, repeat=3)
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--index-rows", type=int, default=50_000)
    p.add_argument("--kernels", default=",".join(KERNELS))
    p.add_argument("--conditions", default="idle,loaded")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    args = p.parse_args()
    if args.quick:
        args.pairs, args.rows, args.index_rows, args.repeat = 500, 20_000, 5_000, 1
    header("hot kernels, 1 vs 2 threads, idle vs next to a CPU hog", args)
    print(f"# nice {os.nice(0)}; load average before: {loadavg()}", flush=True)
    kernels = make_kernels(args)
    for k in kernels.values():            # warm-up: imports, first-call costs
        timed(k, 1)
    chosen = [k for k in args.kernels.split(",") if k in kernels]
    results: dict = {}
    for cond in args.conditions.split(","):
        hog = start_hog() if cond == "loaded" else None
        try:
            if hog is not None:
                time.sleep(1.0)
            print(f"\n## {cond} (load average {loadavg()})", flush=True)
            print(f"{'kernel':>17} {'thr':>3}  {'wall best / median / worst (s)':>32}  "
                  f"{'CPU median (s)':>14}", flush=True)
            for name in chosen:
                runs = {1: [], 2: []}
                for _ in range(args.repeat):
                    for n in (1, 2):                 # alternate: same conditions for both
                        runs[n].append(timed(kernels[name], n))
                for n in (1, 2):
                    walls = sorted(w for w, _ in runs[n])
                    cpus = sorted(c for _, c in runs[n])
                    med = walls[len(walls) // 2]
                    print(f"{name:>17} {n:>3}  {walls[0]:9.2f} / {med:7.2f} / {walls[-1]:7.2f}  "
                          f"{cpus[len(cpus) // 2]:14.2f}", flush=True)
                    results.setdefault(cond, {}).setdefault(name, {})[str(n)] = {
                        "wall": [round(w, 3) for w in walls],
                        "cpu": [round(c, 3) for c in cpus]}
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    print("\n## winner per kernel (median wall)")
    for name in chosen:
        row = []
        for cond in results:
            r = results[cond][name]
            m1 = sorted(r["1"]["wall"])[len(r["1"]["wall"]) // 2]
            m2 = sorted(r["2"]["wall"])[len(r["2"]["wall"]) // 2]
            row.append(f"{cond}: {'1' if m1 <= m2 else '2'} thread(s) ({m1:.2f} vs {m2:.2f} s)")
        print(f"{name:>17}: " + "; ".join(row))
    emit({"results": results, "pairs": args.pairs, "rows": args.rows,
          "index_rows": args.index_rows, "dim": args.dim, "nice": os.nice(0)})


if __name__ == "__main__":
    main()
