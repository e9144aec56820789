"""Benchmark: datasets larger than memory (issue 12) at 1,000,000 x 512.

Generates image and text float32 ``.npy`` files with numpy into a temporary
folder (written in blocks, never whole in RAM; a CLIP-like spread of feature
scales and an offset mean), then, each in its own subprocess:

1. ``clipgeom import``: wall time and peak RSS (the import streams row
   blocks with plain file reads, so no mapped pages count in its RSS).
   Goal: < 1 GB above the page cache.
2. ``clipgeom report NAME --recompute`` (``--engine`` local by default):
   wall time, stages (time-stamped progress lines), peak RSS (VmHWM, which
   includes the memory-mapped arrays' pages) and the peak of anonymous memory
   (RssAnon, sampled every 0.2 s and summed over the report's worker
   processes: what the report holds beyond the mapped arrays); the CPU time
   includes the workers'. Goals: < 90 s and < 2 GB beyond the mapped arrays.
3. exact conformity on the imported image array: the previous code path
   (validate.embeddings' two scans, then norms, sum of unit rows, dot: five
   passes) against the current one (checked once when the dataset is first
   read, then two passes), alternated ``--repeat`` times.

``--stream-n N`` adds the streaming report at N image rows (e.g. 10,000,000:
20 GB, generated under the temporary folder and deleted after) against
``--stream-text-n`` text rows, run directly on the memory-mapped files with
``build_report``: wall time, time per million rows and peak anonymous memory.

    .venv/bin/python bench/scale_report.py                       # 1M x 512
    .venv/bin/python bench/scale_report.py --n 100000 --repeat 1 # quick
    .venv/bin/python bench/scale_report.py --stream-n 10000000 --skip-1m

The machine may be shared: the load average is printed with every figure.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import _common as C

BLOCK = 65536


def generate(path: Path, n: int, d: int, seed: int, shift: float) -> float:
    """Offset Gaussian rows with a decaying spread of feature scales, float32,
    written block by block into an ``open_memmap`` (no whole array in RAM)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    scale = (0.05 + np.exp(-np.arange(d) / (d / 8))).astype(np.float32)
    mean = (shift * rng.standard_normal(d) * scale.mean()).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, BLOCK):
        blk = rng.standard_normal((min(BLOCK, n - s), d), dtype=np.float32)
        blk *= scale
        blk += mean
        out[s:s + len(blk)] = blk
    out.flush()
    del out
    return time.perf_counter() - t0


def _status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[k] = int(v.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the report's worker processes)."""
    parent = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as fh:
                    parent[int(e)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def _proc_cpu(pid: int):
    """User + system CPU seconds of a live process (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_measured(cmd: list[str], env: dict, label: str) -> dict:
    """Run ``cmd``; sample its memory every 0.2 s; time-stamp its stderr lines;
    its CPU time (user + system, all threads): the larger of the children's
    rusage and the sum over its process tree sampled from /proc."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peaks = {"VmHWM": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    stages: list[tuple[float, str]] = []

    tree_cpu: dict[int, float] = {}

    def sample():
        # anonymous memory summed over the process and its worker processes
        # (their mapped array pages are shared page cache, counted in RssFile);
        # CPU: each process's last seen user + system time (worker processes
        # that outlive the report are never reaped by it, so the children's
        # rusage misses them)
        while proc.poll() is None:
            st = _status(proc.pid)
            pids = _tree(proc.pid)
            for p in pids:
                c = _proc_cpu(p)
                if c is not None:
                    tree_cpu[p] = max(tree_cpu.get(p, 0.0), c)
            tree = [_status(p) for p in pids]
            st["RssAnon"] = sum(t.get("RssAnon", 0.0) for t in tree)
            for k in peaks:
                peaks[k] = max(peaks[k], st.get(k, 0.0))
            time.sleep(0.2)

    def read_err():
        for line in proc.stderr:
            stages.append((time.perf_counter() - t0, line.rstrip()))

    threads = [threading.Thread(target=sample, daemon=True),
               threading.Thread(target=read_err, daemon=True)]
    for t in threads:
        t.start()
    out = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - t0
    for t in threads:
        t.join(timeout=5)
    if proc.returncode != 0:
        print("\n".join(s for _, s in stages[-20:]))
        raise SystemExit(f"{label} failed with exit code {proc.returncode}")
    cpu = max(_children_cpu() - cpu0, sum(tree_cpu.values()))
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "peak_rss_mb": round(peaks["VmHWM"], 0),
            "peak_anon_mb": round(peaks["RssAnon"], 0),
            "peak_file_mb": round(peaks["RssFile"], 0), "stdout": out, "stages": stages}


def print_stages(stages, wall):
    """Each stage's wall time (until the next stage's message) and, where the
    message carries it (``|cpu S``), its CPU time."""
    marks = []
    for t, line in stages:
        if line.startswith("... "):
            msg, _, cpu = line[4:].partition(" |cpu ")
            marks.append((t, msg, float(cpu) if cpu else None))
    for k, (t, msg, cpu) in enumerate(marks):
        if msg == "done":
            break
        end, cpu_end = (marks[k + 1][0], marks[k + 1][2]) if k + 1 < len(marks) else (wall, None)
        c = f"  (CPU {cpu_end - cpu:6.1f} s)" if cpu is not None and cpu_end is not None else ""
        print(f"    {end - t:7.1f} s{c}  {msg}")


CONFORMITY = r"""
import json, sys, time
import numpy as np
from clipgeom import conformity, store, validate
from clipgeom._chunks import matvec, rmatvec, row_norms
repeat = int(sys.argv[2])

def before(x):
    # the previous exact_conformity: validate (two scans), norms, sum of unit rows, dot
    x = validate.embeddings(np.asarray(x), "embeddings")
    norms = row_norms(x)
    s = rmatvec(x, 1.0 / norms)
    return (matvec(x, s) / norms - 1.0) / (x.shape[0] - 1)

ds = store.open_dataset(sys.argv[1])
x = ds.image_emb
before(x)                                          # page cache warm
t0 = time.perf_counter(); first = conformity.exact_conformity(x); t_first = time.perf_counter() - t0
out = {"first_call_s": t_first, "before": [], "after": []}
for _ in range(repeat):
    t0 = time.perf_counter(); b = before(x); out["before"].append(time.perf_counter() - t0)
    t0 = time.perf_counter(); a = conformity.exact_conformity(x); out["after"].append(time.perf_counter() - t0)
out["max_abs_diff"] = float(np.max(np.abs(a - b)))
print(json.dumps(out))
"""

# What ``python -m clipgeom report big --json --recompute [--engine ray]`` runs,
# with each stage's message stamped with the process CPU time so far.
REPORT = r"""
import json, sys, time
from clipgeom import moments, report, store
ds = store.open_dataset(sys.argv[1])
eng = moments.engine_for(sys.argv[2])
say = lambda m: print(f"... {m} |cpu {time.process_time():.1f}", file=sys.stderr, flush=True)
try:
    rep = report.stored_report(ds, temperature=report.default_temperature(ds), recompute=True,
                               engine=eng, progress=say)
finally:
    eng.close()
say("done")
# stop the worker processes now, so that their CPU time counts in this process's children
from joblib.externals.loky import get_reusable_executor
get_reusable_executor().shutdown(wait=True)
print(json.dumps({"isotropy": rep["image"]["isotropy"]}))
"""

STREAM = r"""
import json, sys, time
import numpy as np
from clipgeom import report, validate
img = np.load(sys.argv[1], mmap_mode="r")
txt = np.load(sys.argv[2], mmap_mode="r")
for a in (img, txt):          # as the store does on open: checked once, then trusted
    validate.mark_checked(a, validate.scan_rows)
n = min(img.shape[0], txt.shape[0])
rows = np.arange(n)
t0 = time.perf_counter()
rep = report.build_report(img, txt, rows, rows, progress=lambda m: print(f"... {m} |cpu {time.process_time():.1f}", file=sys.stderr, flush=True))
print(json.dumps({"wall_s": time.perf_counter() - t0, "conformity_kl_at_zero": rep["conformity_kl"]["at_zero"],
                  "image_mean_norm": rep["image"]["mean_norm"]}))
"""


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], n=1_000_000, repeat=3)
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--tmpdir", default=None, help="where to generate (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--reuse", default=None, metavar="DIR",
                   help="a folder a --keep run left: its imported dataset is reused "
                        "(no generation, no import; kept)")
    p.add_argument("--skip-1m", action="store_true", help="only the --stream-n run")
    p.add_argument("--import-only", action="store_true",
                   help="generate and import only (no report, no conformity)")
    p.add_argument("--stream-n", type=int, default=0,
                   help="image rows of the streaming report on memory-mapped files (0: skip)")
    p.add_argument("--stream-text-n", type=int, default=1_000_000,
                   help="text rows for --stream-n (default 1,000,000)")
    args = p.parse_args()
    C.header("scale_report", args)
    if args.reuse:
        root, args.keep = Path(args.reuse), True
    else:
        root = Path(tempfile.mkdtemp(prefix="clipgeom-scale-", dir=args.tmpdir))
    print(f"data folder: {root}", flush=True)
    env = dict(os.environ, CLIPGEOM_HOME=str(root / "home"),
               PYTHONPATH=str(C.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    py = sys.executable
    res: dict = {"name": "scale_report", "n": args.n, "dim": args.dim, "engine": args.engine}
    rows = []
    try:
        if not args.skip_1m:
            if args.reuse:
                print("reusing the imported dataset (no generation, no import)", flush=True)
            else:
                gi = generate(root / "img.npy", args.n, args.dim, args.seed, 1.0)
                gt = generate(root / "txt.npy", args.n, args.dim, args.seed + 1, -1.0)
                gib = 2 * args.n * args.dim * 4 / 2 ** 30
                print(f"data: 2 x {args.n:,} x {args.dim} float32 ({gib:.2f} GiB) in "
                      f"{gi + gt:.1f} s", flush=True)

                imp = run_measured([py, "-m", "clipgeom", "import", "big", "--image-emb",
                                    str(root / "img.npy"), "--text-emb", str(root / "txt.npy")],
                                   env, "import")
                print(f"import: {imp['wall_s']:.1f} s (CPU {imp['cpu_s']:.0f} s), peak RSS {imp['peak_rss_mb']:.0f} MiB "
                      f"(anonymous {imp['peak_anon_mb']:.0f}, file-backed "
                      f"{imp['peak_file_mb']:.0f}); load {C.loadavg()}", flush=True)
                res["import"] = {k: v for k, v in imp.items() if k not in ("stdout", "stages")}
                rows.append({"what": f"import {args.n:,} x {args.dim} (2 arrays, "
                                     f"{gib:.1f} GiB)", "goal": "< 1 GB above page cache",
                             "measured": f"{imp['peak_rss_mb']:.0f} MiB peak RSS, "
                                         f"{imp['wall_s']:.0f} s",
                             "ok": imp["peak_rss_mb"] < 1000})

                if args.import_only:
                    res["rows"] = rows
                    C.emit(res)
                    return
            rep = run_measured([py, "-c", REPORT, "big", args.engine], env, "report")
            print(f"report ({args.engine}): {rep['wall_s']:.1f} s (CPU {rep['cpu_s']:.0f} s), peak RSS "
                  f"{rep['peak_rss_mb']:.0f} MiB = anonymous {rep['peak_anon_mb']:.0f} + "
                  f"file-backed (the mapped arrays) {rep['peak_file_mb']:.0f}; "
                  f"load {C.loadavg()}", flush=True)
            print_stages(rep["stages"], rep["wall_s"])
            res["report"] = {k: v for k, v in rep.items() if k not in ("stdout", "stages")}
            res["report"]["stages"] = [[round(t, 1), s] for t, s in rep["stages"]]
            rows.append({"what": f"report {args.n:,} x {args.dim} ({args.engine})",
                         "goal": "< 90 s, < 2 GB beyond the mapped arrays",
                         "measured": f"{rep['wall_s']:.0f} s; anonymous peak "
                                     f"{rep['peak_anon_mb']:.0f} MiB",
                         "ok": rep["wall_s"] < 90 and rep["peak_anon_mb"] < 2000})

            conf = subprocess.run([py, "-c", CONFORMITY, "big", str(args.repeat)], env=env,
                                  capture_output=True, text=True)
            if conf.returncode != 0:
                raise SystemExit(conf.stderr)
            c = json.loads(conf.stdout.strip().splitlines()[-1])
            tb, ta = C.Timings(c["before"]), C.Timings(c["after"])
            print(f"exact conformity {args.n:,} x {args.dim} (memory-mapped, page cache warm):"
                  f"\n  before (validate + 4 passes): {tb.summary()}"
                  f"\n  after (checked once per dataset, 2 passes): {ta.summary()}"
                  f"\n  the first call after opening (includes the one check): "
                  f"{c['first_call_s']:.3f} s; max |after - before| = {c['max_abs_diff']:.1e}; "
                  f"load {C.loadavg()}", flush=True)
            res["conformity"] = {"before": tb.as_dict(), "after": ta.as_dict(),
                                 "first_call_s": round(c["first_call_s"], 3),
                                 "max_abs_diff": c["max_abs_diff"]}
            rows.append({"what": "exact conformity, before -> after",
                         "goal": "(info)", "measured": f"{tb.best:.2f} s -> {ta.best:.2f} s "
                                                       f"(best of {len(tb)})", "ok": None})
            if not args.keep:
                shutil.rmtree(root / "home", ignore_errors=True)
                for f in ("img.npy", "txt.npy"):
                    (root / f).unlink(missing_ok=True)

        if args.stream_n:
            gi = generate(root / "simg.npy", args.stream_n, args.dim, args.seed + 2, 1.0)
            gt = generate(root / "stxt.npy", args.stream_text_n, args.dim, args.seed + 3, -1.0)
            print(f"stream data: {args.stream_n:,} + {args.stream_text_n:,} rows x {args.dim} "
                  f"in {gi + gt:.0f} s", flush=True)
            sr = run_measured([py, "-c", STREAM, str(root / "simg.npy"), str(root / "stxt.npy")],
                              env, "streaming report")
            out = json.loads(sr["stdout"].strip().splitlines()[-1])
            rows_m = (args.stream_n + args.stream_text_n) / 1e6
            print(f"streaming report: {out['wall_s']:.0f} s for {rows_m:.1f} M rows "
                  f"({out['wall_s'] / rows_m:.1f} s per million rows), peak anonymous "
                  f"{sr['peak_anon_mb']:.0f} MiB (VmHWM {sr['peak_rss_mb']:.0f} MiB incl. "
                  f"mapped pages); load {C.loadavg()}", flush=True)
            print_stages(sr["stages"], sr["wall_s"])
            res["stream"] = {"n_image": args.stream_n, "n_text": args.stream_text_n,
                             "wall_s": round(out["wall_s"], 1),
                             "s_per_million_rows": round(out["wall_s"] / rows_m, 1),
                             "peak_anon_mb": sr["peak_anon_mb"], "peak_rss_mb": sr["peak_rss_mb"],
                             "stages": [[round(t, 1), s] for t, s in sr["stages"]]}
            rows.append({"what": f"streaming report {args.stream_n:,} + "
                                 f"{args.stream_text_n:,} rows", "goal": "< 4 GB peak",
                         "measured": f"{out['wall_s']:.0f} s ({out['wall_s'] / rows_m:.0f} s "
                                     f"per million rows); anonymous peak "
                                     f"{sr['peak_anon_mb']:.0f} MiB",
                         "ok": sr["peak_anon_mb"] < 4000})
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    res["rows"] = rows
    C.emit(res)


if __name__ == "__main__":
    main()
