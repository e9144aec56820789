"""Run every benchmark in its own subprocess and print a markdown table.

Each benchmark runs as ``python bench/NAME.py [options]`` in a fresh
process, so the peak memory it reports (ru_maxrss, read at the end of that
process) is its own. Their full output is streamed through; the table of
goal vs measured is printed at the end.

    .venv/bin/python bench/run_all.py                     # full sizes (several minutes)
    .venv/bin/python bench/run_all.py --quick             # small sizes, a smoke test
    .venv/bin/python bench/run_all.py --only alpha_sweep report
    .venv/bin/python bench/run_all.py --repeat 3          # passed to every benchmark
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent

# name -> (full-size extra args, quick extra args)
BENCHMARKS = {
    "conformity_exact": ([], ["--n", "100000", "--nn-n", "3000"]),
    "alpha_sweep": ([], ["--n", "3000"]),
    "report": ([], ["--n", "10000"]),
}


def run_one(name: str, extra: list[str]) -> tuple[dict | None, float, int]:
    cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
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
    args = ap.parse_args()

    m = C.machine()
    started = datetime.now().astimezone()
    print(f"# clipgeom benchmarks, {started:%Y-%m-%d %H:%M %Z}")
    print(f"# machine: {m['nproc']} cpu ({m['cpu']}), {m['ram_gib']} GiB RAM, "
          f"python {m['python']}, numpy {m['numpy']}; load average {C.loadavg()}")

    results = []
    for name in args.only:
        full, quick = BENCHMARKS[name]
        extra = list(quick if args.quick else full)
        if args.repeat is not None:
            extra += ["--repeat", str(args.repeat)]
        res, wall, rc = run_one(name, extra)
        results.append((name, res, wall, rc))

    print("\n## Results\n")
    print(f"{started:%Y-%m-%d %H:%M %Z}; {m['nproc']} cpu ({m['cpu']}), {m['ram_gib']} GiB RAM; "
          f"load average at the end {C.loadavg()}\n")
    print("| benchmark | measurement | goal | measured | met | process peak RSS | wall |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for name, res, wall, rc in results:
        if res is None:
            failed = True
            print(f"| {name} | (failed, exit code {rc}) | | | **NO** | | {wall:.0f} s |")
            continue
        for i, row in enumerate(res["rows"]):
            first = i == 0
            peak = f"{res['peak_rss_mb']:.0f} MiB" if first else ""
            took = f"{wall:.0f} s" if first else ""
            print(f"| {name if first else ''} | {row['what']} | {row['goal']} | {row['measured']} "
                  f"| {mark(row['ok'])} | {peak} | {took} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
