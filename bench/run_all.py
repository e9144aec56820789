"""Run every benchmark in its own subprocess and print a markdown table.

Each benchmark runs as ``python bench/NAME.py [options]`` in a fresh
process, so the peak memory it reports (ru_maxrss, read at the end of that
process) is its own. Their full output is streamed through; the table of
goal vs measured is printed at the end.

    .venv/bin/python bench/run_all.py                     # full sizes (several minutes)
    .venv/bin/python bench/run_all.py --quick             # small sizes, a smoke test
    .venv/bin/python bench/run_all.py --only alpha_sweep report   # or alpha_sweep_1thread
    .venv/bin/python bench/run_all.py --repeat 3          # passed to every benchmark
    .venv/bin/python bench/run_all.py --out /tmp/table.md # also write the table to a file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent

# label -> (script in bench/, full-size extra args, quick extra args)
BENCHMARKS = {
    "conformity_exact": ("conformity_exact", ["--cold"], ["--n", "100000", "--nn-n", "3000"]),
    "alpha_sweep": ("alpha_sweep", [], ["--n", "3000"]),
    # The same sweep with torch limited to one thread: shows how much of the
    # default (two-thread) time is lost to thread synchronisation on a
    # shared 2-core machine (see docs/benchmarks.md).
    "alpha_sweep_1thread": ("alpha_sweep", ["--torch-threads", "1"],
                            ["--n", "3000", "--torch-threads", "1"]),
    "report": ("report", ["--repeat", "2"], ["--n", "10000"]),
    # Approximate FAISS index at 1M x 512: several minutes and ~5 GB RSS.
    "index_recall": ("index_recall", [], ["--n", "20000", "--queries", "100"]),
    # clipgeom.compare of three aligned 100,000 x 512 datasets (issue 11)
    "compare": ("compare", [], ["--n", "5000", "--dim", "128"]),
}


def run_one(script: str, extra: list[str]) -> tuple[dict | None, float, int]:
    cmd = [sys.executable, str(HERE / f"{script}.py"), *extra]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=HERE.parent)
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(C.JSON_TAG):
            result = json.loads(line[len(C.JSON_TAG):])
        else:
            print(line, end="", flush=True)
    rc = proc.wait()
    return result, time.perf_counter() - t0, rc


def mark(ok) -> str:
    return "" if ok is None else ("yes" if ok else "**NO**")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="passed as --repeat to every benchmark (default: each one's own)")
    ap.add_argument("--out", default=None, help="also write the results table to this file")
    ap.add_argument("--threads", type=int, default=None,
                    help="set OMP_NUM_THREADS and OPENBLAS_NUM_THREADS for the benchmarks "
                         "(torch's and numpy's thread pools; default: unset, i.e. one per core)")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)

    m = C.machine()
    started = datetime.now().astimezone()
    print(f"# clipgeom benchmarks, {started:%Y-%m-%d %H:%M %Z}")
    print(f"# machine: {m['nproc']} cpu ({m['cpu']}), {m['ram_gib']} GiB RAM, "
          f"python {m['python']}, numpy {m['numpy']}; {C.thread_env()}; "
          f"load average {C.loadavg()}")
    if args.quick:
        print("# --quick: small sizes; the goals are for the full sizes")

    results = []
    for name in args.only:
        script, full, quick = BENCHMARKS[name]
        extra = list(quick if args.quick else full)
        if args.repeat is not None:
            extra += ["--repeat", str(args.repeat)]
        res, wall, rc = run_one(script, extra)
        results.append((name, res, wall, rc))

    lines = [f"{started:%Y-%m-%d %H:%M %Z}; {m['nproc']} cpu ({m['cpu']}), {m['ram_gib']} GiB "
             f"RAM; {C.thread_env()}; load average at the end {C.loadavg()}", "",
             "| benchmark | measurement | goal | measured | met | process peak RSS | wall |",
             "|---|---|---|---|---|---|---|"]
    failed = False
    for name, res, wall, rc in results:
        if res is None:
            failed = True
            lines.append(f"| {name} | (failed, exit code {rc}) | | | **NO** | | {wall:.0f} s |")
            continue
        rows = res.get("rows") or [{"what": "(see its output)", "goal": "", "measured": "",
                                    "ok": None}]
        for i, row in enumerate(rows):
            first = i == 0
            peak = f"{res['peak_rss_mb']:.0f} MiB" if first else ""
            took = f"{wall:.0f} s" if first else ""
            lines.append(f"| {name if first else ''} | {row['what']} | {row['goal']} "
                         f"| {row['measured']} | {mark(row['ok'])} | {peak} | {took} |")
    table = "\n".join(lines) + "\n"
    print("\n## Results\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
