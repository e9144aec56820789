"""Benchmark: clipgeom.compare.compare on three row-aligned 100,000 x 512 datasets.

Data: ``clipgeom.synthetic.two_shells(n, dim)`` with seeds 0, 1, 2, written
with ``store.create_dataset`` into a temporary CLIPGEOM_HOME, all three with
the same image ids and captions (so every pair aligns and the cross-space
measures run: 3 pairs x 2 modalities). Timed: the first compare (computes and
stores the three reports, then the cross-space measures) and a second one
(reports read back from the datasets' caches). Memory: peak RSS of the
process during each compare (the kernel's high-water mark reset before it).

    .venv/bin/python bench/compare.py                     # 100,000 x 512
    .venv/bin/python bench/compare.py --n 20000 --dim 256
"""

from __future__ import annotations

import os
import tempfile
import time

import _common as C


def rss_split() -> dict:
    """Current anonymous and file-backed resident memory (MiB): touched pages of
    memory-mapped arrays count in RSS but are page cache, reclaimable."""
    out = {"rss_anon_mb": None, "rss_file_mb": None}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    out["rss_anon_mb"] = round(int(line.split()[1]) / 1024)
                elif line.startswith("RssFile:"):
                    out["rss_file_mb"] = round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], n=100_000, repeat=1)
    args = p.parse_args()
    home = tempfile.mkdtemp(prefix="clipgeom-bench-compare-")
    os.environ["CLIPGEOM_HOME"] = home

    import pandas as pd

    from clipgeom import compare, store
    from clipgeom.synthetic import two_shells

    C.header("compare", args)
    res: dict = {"name": "compare", "n": args.n, "dim": args.dim}
    ids = [f"item {k}" for k in range(args.n)]
    images = pd.DataFrame({"image_id": ids})
    texts = pd.DataFrame({"caption": [f"caption {k}" for k in range(args.n)], "image_id": ids})
    t0 = time.perf_counter()
    names = []
    for seed in (args.seed, args.seed + 1, args.seed + 2):
        data = two_shells(args.n, args.dim, seed=seed)
        names.append(f"shells-{seed}")
        ds = store.create_dataset(names[-1], data.image, data.text, images, texts,
                                  model={"name": "synthetic two-shell generator"},
                                  source={"kind": "synthetic", "seed": seed}, home=home)
        ds.close()
        del data
    res["setup_s"] = round(time.perf_counter() - t0, 1)
    print(f"data: 3 x two_shells({args.n:,}, {args.dim}) written to {home} in "
          f"{res['setup_s']:.1f} s (not timed)", flush=True)

    runs = []
    for label in ("first (computes 3 reports)", "second (reports cached)"):
        rss_before = C.current_rss_mb()
        reset = C.reset_peak_rss()
        stamps: list[tuple[str, float]] = []
        c0 = time.process_time()
        t0 = time.perf_counter()
        cmp = compare.compare(names, progress=lambda m: stamps.append((m, time.perf_counter())))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        cross = [ts for m, ts in stamps if m.startswith("cross-space")]
        cross_s = (t0 + wall - cross[0]) if cross else float("nan")
        peak = C.peak_rss_mb()
        split = rss_split()
        runs.append({"run": label, "wall_s": round(wall, 2), "cpu_s": round(cpu, 1),
                     "cross_space_s": round(cross_s, 2),
                     "peak_rss_mb": round(peak, 0) if reset else None,
                     "rss_before_mb": round(rss_before, 0), **split})
        print(f"compare {label}: {wall:.1f} s (CPU {cpu:.1f} s), of which cross-space "
              f"measures {cross_s:.1f} s; peak RSS during it "
              f"{peak:.0f} MiB{'' if reset else ' (process peak: no reset)'} "
              f"(RSS before {rss_before:.0f} MiB; after: anonymous {split['rss_anon_mb']} MiB, "
              f"file-backed {split['rss_file_mb']} MiB, i.e. pages of the memory-mapped "
              f"arrays); load average {C.loadavg()}", flush=True)
    for pr in cmp.pairs:
        print(f"  {pr.a} vs {pr.b} {pr.modality}: aligned {pr.aligned}, CKA {pr.cka:.4f}, "
              f"mutual-kNN@{pr.mutual_knn_k} {pr.mutual_knn:.4f}, conformity Spearman "
              f"{pr.conformity_spearman:.4f} on {pr.n_used} rows")
    assert all(pr.aligned for pr in cmp.pairs)
    res["runs"] = runs
    res["rows"] = [{"what": f"compare of 3 x {args.n:,} x {args.dim}, {r['run']}",
                    "goal": "(info)",
                    "measured": f"{r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']} MiB",
                    "ok": None} for r in runs]
    import shutil
    shutil.rmtree(home, ignore_errors=True)
    C.emit(res)


if __name__ == "__main__":
    main()
