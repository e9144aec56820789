"""Benchmark: clipgeom.conformity.exact_conformity, O(N d), vs the N x N method.

Goal (issue): exact conformity of N = 1,000,000 rows, d = 512 float32 in
under 3 s, in memory and on a memory-mapped .npy (how datasets are opened).

Also times the naive method (normalise rows, U @ U.T in row blocks, mean of
each row's off-diagonal entries) at a smaller N (default 20,000), prints the
speed ratio, and checks both give the same values (max abs diff), with a
float64 N x N reference to show which side any difference comes from.

    .venv/bin/python bench/conformity_exact.py                  # full size
    .venv/bin/python bench/conformity_exact.py --n 200000 --nn-n 5000 --repeat 1

``--cold`` also times the memory-mapped run with the file's pages evicted
from the page cache first (posix_fadvise DONTNEED on that file only), i.e.
including the disk read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

import _common as C
from clipgeom import validate
from clipgeom._chunks import matvec, rmatvec, row_norms
from clipgeom.conformity import exact_conformity

GOAL_S = 3.0


def make_data(n: int, d: int, seed: int) -> np.ndarray:
    """Offset Gaussian rows, float32: x = z + m, ||m|| / ||sigma|| ~ 0.7 (mean cos ~ 0.33)."""
    rng = np.random.default_rng(seed)
    m = (0.7 * rng.standard_normal(d)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    step = 65536
    for s in range(0, n, step):
        blk = x[s:s + step]
        rng.standard_normal(blk.shape, dtype=np.float32, out=blk)
        blk += m
    return x


def nxn_conformity(x: np.ndarray, *, dtype=np.float32, block: int = 1024) -> np.ndarray:
    """The naive N x N method: C_j = mean_{k != j} cos(v_j, v_k)."""
    x = np.asarray(x, dtype=dtype)
    u = x / np.linalg.norm(x, axis=1, keepdims=True).astype(dtype)
    n = u.shape[0]
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, block):
        g = u[s:s + block] @ u.T                                    # [b, N] cosines
        rows = np.arange(g.shape[0])
        diag = g[rows, s + rows].astype(np.float64)
        out[s:s + block] = (g.sum(axis=1, dtype=np.float64) - diag) / (n - 1)
    return out


def evict(path: str) -> bool:
    """Drop this file's pages from the page cache (clean pages only; no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], n=1_000_000)
    p.add_argument("--nn-n", type=int, default=20_000, help="N for the N x N comparison")
    p.add_argument("--nn-repeat", type=int, default=None,
                   help="repetitions of the N x N method (default: --repeat)")
    p.add_argument("--no-f64", action="store_true", help="skip the float64 N x N reference")
    p.add_argument("--no-mmap", action="store_true", help="skip the memory-mapped runs")
    p.add_argument("--cold", action="store_true",
                   help="also time memory-mapped runs with the file evicted from the page cache")
    p.add_argument("--tmpdir", default=None, help="where to write the temporary .npy")
    args = p.parse_args()
    C.header("conformity_exact", args)
    res: dict = {"name": "conformity_exact", "n": args.n, "dim": args.dim}

    t0 = time.perf_counter()
    x = make_data(args.n, args.dim, args.seed)
    res["gen_s"] = round(time.perf_counter() - t0, 2)
    print(f"data: {args.n:,} x {args.dim} float32 ({x.nbytes / 2**30:.2f} GiB), "
          f"generated in {res['gen_s']:.1f} s", flush=True)

    # --- in memory
    rss0 = C.current_rss_mb()
    reset = C.reset_peak_rss()
    t_mem, c_mem = C.repeat_timed(lambda: exact_conformity(x), args.repeat, "in-memory")
    print(f"exact_conformity, in memory, N={args.n:,}: {t_mem.summary()}  "
          f"[goal < {GOAL_S:.0f} s]; mean conformity {c_mem.mean():.4f}")
    res["in_memory_s"] = t_mem.as_dict()
    if reset:
        res["working_mb"] = round(C.peak_rss_mb() - rss0, 1)
        print(f"  its working memory (peak during the calls - RSS before): {res['working_mb']:.0f} MiB "
              f"(the data itself: {x.nbytes / 2**20:.0f} MiB)")

    # --- where the time goes: the passes exact_conformity makes over x
    parts = {
        "validate.embeddings (finite + zero-row scans)": lambda: validate.embeddings(x),
        "row_norms": lambda: row_norms(x),
        "rmatvec (sum of unit rows)": lambda: rmatvec(x, np.ones(x.shape[0])),
        "matvec (dot with that sum)": lambda: matvec(x, np.ones(x.shape[1])),
    }
    res["breakdown_s"] = {}
    print("  breakdown (best of 2 each):")
    for label, fn in parts.items():
        t, _ = C.repeat_timed(fn, 2)
        res["breakdown_s"][label] = round(t.best, 3)
        print(f"    {t.best:6.3f} s  {label}")

    # --- memory-mapped .npy
    if not args.no_mmap:
        tmp = tempfile.mkdtemp(prefix="clipgeom-bench-", dir=args.tmpdir)
        try:
            path = os.path.join(tmp, "emb.npy")
            t0 = time.perf_counter()
            np.save(path, x)
            print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)

            def run_mmap():
                mm = np.load(path, mmap_mode="r")
                return exact_conformity(mm)

            t_mm, c_mm = C.repeat_timed(run_mmap, args.repeat, "memmap (page cache warm)")
            same = float(np.max(np.abs(c_mm - c_mem)))
            print(f"exact_conformity, memmap .npy, page cache warm: {t_mm.summary()}  "
                  f"[goal < {GOAL_S:.0f} s]; max |memmap - in-memory| = {same:.1e}")
            res["memmap_warm_s"] = t_mm.as_dict()
            res["memmap_vs_memory_maxdiff"] = same
            if args.cold:
                cold = C.Timings()
                for i in range(args.repeat):
                    if not evict(path):
                        print("posix_fadvise unavailable: cold run skipped")
                        break
                    t, _ = C.repeat_timed(run_mmap, 1)
                    cold.append(t[0])
                    print(f"  memmap (evicted) run {i + 1}/{args.repeat}: {t[0]:.3f} s", flush=True)
                if cold:
                    print(f"exact_conformity, memmap .npy, file evicted from page cache "
                          f"(includes disk read): {cold.summary()}")
                    res["memmap_cold_s"] = cold.as_dict()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- versus the N x N method
    nn = min(args.nn_n, args.n)
    if nn >= 2:
        xs = np.ascontiguousarray(x[:nn])
        nn_rep = args.nn_repeat or args.repeat
        t_ex, c_ex = C.repeat_timed(lambda: exact_conformity(xs), max(5, args.repeat))
        t_nn, c_nn = C.repeat_timed(lambda: nxn_conformity(xs), nn_rep, f"N x N float32, N={nn:,}")
        ratio = t_nn.best / t_ex.best
        diff = float(np.max(np.abs(c_ex - c_nn)))
        print(f"at N={nn:,}: exact_conformity {t_ex.summary()}")
        print(f"at N={nn:,}: N x N method (float32, blocks of 1024 rows) {t_nn.summary()}")
        print(f"ratio N x N / exact (best times): {ratio:,.0f}x")
        print(f"max |exact - N x N float32| = {diff:.2e} (values ~ {c_ex.mean():.3f})")
        res.update(nn_n=nn, nn_exact_s=t_ex.as_dict(), nn_naive_s=t_nn.as_dict(),
                   nn_ratio=round(ratio, 1), nn_maxdiff_f32=diff)
        if not args.no_f64:
            t_64, c_64 = C.repeat_timed(lambda: nxn_conformity(xs, dtype=np.float64), 1)
            d_ex = float(np.max(np.abs(c_ex - c_64)))
            d_nn = float(np.max(np.abs(c_nn - c_64)))
            print(f"float64 N x N reference ({t_64[0]:.1f} s): max |exact - ref| = {d_ex:.2e}, "
                  f"max |N x N float32 - ref| = {d_nn:.2e}")
            res.update(nn_maxdiff_exact_vs_f64=d_ex, nn_maxdiff_f32_vs_f64=d_nn,
                       nn_f64_s=round(t_64[0], 2))

    headline = res.get("memmap_warm_s", res["in_memory_s"])["best"]
    res["rows"] = [
        {"what": f"exact_conformity N={args.n:,} d={args.dim}, in memory",
         "goal": f"< {GOAL_S:.0f} s",
         "measured": C.fmt_t(res["in_memory_s"])
         + (f"; working memory {res['working_mb']:.0f} MiB" if "working_mb" in res else ""),
         "ok": res["in_memory_s"]["best"] < GOAL_S},
    ]
    if "memmap_warm_s" in res:
        res["rows"].append({"what": "same, memory-mapped .npy (page cache warm)",
                            "goal": f"< {GOAL_S:.0f} s", "measured": C.fmt_t(res["memmap_warm_s"]),
                            "ok": res["memmap_warm_s"]["best"] < GOAL_S})
    if "memmap_cold_s" in res:
        res["rows"].append({"what": "same, memory-mapped .npy (file evicted: disk read)",
                            "goal": "(info)", "measured": C.fmt_t(res["memmap_cold_s"]),
                            "ok": None})
    if "nn_ratio" in res:
        res["rows"].append({"what": f"N x N method / exact at N={res['nn_n']:,}",
                            "goal": "(info)",
                            "measured": f"{res['nn_ratio']:,.0f}x ({res['nn_naive_s']['best']:.2f} s"
                                        f" vs {res['nn_exact_s']['best'] * 1e3:.1f} ms); "
                                        f"max abs diff {res['nn_maxdiff_f32']:.1e}",
                            "ok": None})
    res["headline_s"] = headline
    C.emit(res)


if __name__ == "__main__":
    main()
