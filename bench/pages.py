"""Render time of every dashboard page (AppTest, no browser), on the bundled
demo and on a large synthetic dataset.

    python bench/pages.py                  # demo + 100,000 x 512 synthetic pairs
    python bench/pages.py --n 20000        # a smaller synthetic set
    python bench/pages.py --skip-large     # the demo only

For each page: the first render in this process (cold caches, what a user
waits for the first time; on the large set the report and sweeps are
computed here) and a re-render by a new AppTest session in the same process
(Streamlit's caches warm: what switching pages costs). The UMAP page
section's one-time cost is timed separately (it runs on a button).
Goals (issue 5): demo first render <= 5 s, cached <= 1 s; large set <= 10 s
once caches are warm. Issue 9: every control change <= 5 s on the demo:
after the cached render, every control of the page (toggles, checkboxes,
select boxes, multiselects, radios, sliders, number and text inputs; not
buttons) is changed once (tests/apptest_helpers.walk_controls) and each rerun
is timed; the slowest and the median are printed.

Issue 12, ``--prepared``: a large dataset as a user prepares it with the CLI,
then every page at that size:

    python bench/pages.py --prepared --n 1000000 [--tmpdir DIR] [--keep]

1. float32 image and text ``.npy`` files generated block by block
   (``scale_report.generate``) and a captions ``.txt``; ``clipgeom import``
   (the generated files are deleted once imported: the store holds a copy);
2. ``clipgeom report NAME`` (stores the report the pages read) and
   ``clipgeom index NAME`` (both modalities), each in its own subprocess:
   wall time, CPU time, peak RSS (VmHWM, which counts the memory-mapped
   arrays' pages) and peak anonymous memory (RssAnon sampled every 0.2 s);
3. in ONE further process (as a Streamlit server serves one user who visits
   every page in turn): every page's first render (this process's caches
   cold) and a second render by a new session (caches warm), with AppTest;
   per page seconds, error/exception, the process's VmHWM and the peak of its
   RssAnon during that page; at the end the process's VmHWM and RssAnon peak.

Goals (issue 12): every page's first render after the report is stored
< 10 s; the index build's peak RSS < 3 GB. With ``--keep`` the data stays
under ``--tmpdir`` (default /tmp/clipgeom-scale, one folder per size) and a
rerun skips the steps already done (their figures are kept in
``state.json``). The load average is printed with every figure.
``--pages 5_Proj,9_Talk`` renders only those pages; ``--profile 5_Proj``
prints a cProfile of their first render (the script's thread, filtered to
clipgeom, dashboard and pages).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# app.py routes to pages/0_Home.py (whose links resolve only through the router)
PAGES = [ROOT / "app.py"] + sorted(p for p in (ROOT / "pages").glob("*.py")
                                   if p.stem != "0_Home")


def render(page: Path, dataset: str) -> tuple[float, bool]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(page), default_timeout=1800)
    at.session_state["dataset"] = dataset
    t0 = time.perf_counter()
    at.run()
    ok = not at.exception and not at.error
    return time.perf_counter() - t0, ok


def controls(page: Path, dataset: str) -> tuple[list[tuple[str, float]], bool]:
    """(label, seconds) of each control change on the page, and whether no
    change raised or showed an error."""
    from streamlit.testing.v1 import AppTest

    from tests.apptest_helpers import SEPARATELY_TESTED, errors, walk_controls

    at = AppTest.from_file(str(page), default_timeout=1800)
    at.session_state["dataset"] = dataset
    at.run()
    times, ok = [], True
    for change in walk_controls(at, skip=SEPARATELY_TESTED):
        times.append((change.label, change.seconds))
        ok = ok and not errors(at)
    return times, ok


def bench(dataset: str, with_controls: bool = True) -> list[tuple[str, float, float, bool]]:
    import statistics

    rows = []
    for page in PAGES:
        first, ok1 = render(page, dataset)
        again, ok2 = render(page, dataset)
        rows.append((page.stem, first, again, ok1 and ok2))
        line = (f"  {page.stem:32s} first {first:7.2f} s   cached {again:6.2f} s"
                f"{'' if ok1 and ok2 else '   ERROR'}")
        if with_controls:
            times, ok3 = controls(page, dataset)
            if times:
                slow = max(times, key=lambda t: t[1])
                line += (f"   {len(times):2d} control changes: median "
                         f"{statistics.median(t for _, t in times):5.2f} s, slowest "
                         f"{slow[1]:5.2f} s ({slow[0][:40]})" + ("" if ok3 else "   ERROR"))
        print(line, flush=True)
    return rows


# ------------------------------------------------------------ --prepared (issue 12)
PREPARED_NAME = "big"


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _proc_mb(pid: int | str = "self") -> dict:
    """VmHWM, VmRSS, RssAnon, RssFile of a process, MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024.0
    return out


def _write_captions(path: Path, n: int) -> None:
    """One caption per text row (what a user's captions file gives the pages:
    hover texts, search results, token tokens of the selection panel)."""
    words = ["dog", "cat", "street", "beach", "kitchen", "mountain", "train", "bicycle",
             "child", "market", "forest", "boat", "table", "window", "horse", "bridge"]
    with open(path, "w", encoding="utf-8") as fh:
        for k in range(n):
            fh.write(f"a photo of a {words[k % 16]} near a {words[(k // 16) % 16]}, "
                     f"item {k}\n")


def _step(state: dict, state_path: Path, key: str, cmd: list[str], env: dict, what: str):
    """Run one CLI step in its own process (measured), unless ``state`` has it."""
    from scale_report import print_stages, run_measured

    if key in state:
        r = state[key]
        print(f"{what}: (kept from an earlier run) {r['wall_s']:.1f} s, peak RSS "
              f"{r['peak_rss_mb']:.0f} MiB, anonymous {r['peak_anon_mb']:.0f} MiB; "
              f"load then {r['load']}", flush=True)
        return r
    r = run_measured(cmd, env, what)
    print(f"{what}: {r['wall_s']:.1f} s (CPU {r['cpu_s']:.0f} s), peak RSS (VmHWM) "
          f"{r['peak_rss_mb']:.0f} MiB = anonymous {r['peak_anon_mb']:.0f} + file-backed "
          f"{r['peak_file_mb']:.0f} (peaks sampled separately); load {_loadavg()}", flush=True)
    print_stages(r["stages"], r["wall_s"])
    state[key] = {k: v for k, v in r.items() if k not in ("stdout", "stages")}
    state[key]["load"] = _loadavg()
    state_path.write_text(json.dumps(state, indent=1))
    return state[key]


def prepared(args) -> None:
    """Generate, import, report and index a large dataset with the CLI, then
    render every page in one further process (see the module docstring)."""
    import shutil

    sys.path.insert(0, str(ROOT / "bench"))
    from scale_report import generate

    Path(args.tmpdir).mkdir(parents=True, exist_ok=True)
    if args.keep:                 # a fixed folder per size, reused by the next --keep run
        root = Path(args.tmpdir) / f"n{args.n}-d{args.dim}"
        root.mkdir(exist_ok=True)
    else:                         # a fresh folder, deleted at the end
        root = Path(tempfile.mkdtemp(prefix=f"n{args.n}-d{args.dim}-", dir=args.tmpdir))
    state_path = root / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if not (root / "home").is_dir():
        state = {}
    env = dict(os.environ, CLIPGEOM_HOME=str(root / "home"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    py = sys.executable
    print(f"prepared dataset {args.n:,} x {args.dim} under {root}; CPU threads "
          f"{os.cpu_count()}; load {_loadavg()}", flush=True)
    try:
        if "import" not in state:
            shutil.rmtree(root / "home", ignore_errors=True)
            t0 = time.perf_counter()
            generate(root / "img.npy", args.n, args.dim, 0, 1.0)
            generate(root / "txt.npy", args.n, args.dim, 1, -1.0)
            _write_captions(root / "captions.txt", args.n)
            print(f"generated 2 x {args.n:,} x {args.dim} float32 "
                  f"({2 * args.n * args.dim * 4 / 2 ** 30:.2f} GiB) and captions in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        _step(state, state_path, "import",
              [py, "-m", "clipgeom", "import", PREPARED_NAME, "--image-emb",
               str(root / "img.npy"), "--text-emb", str(root / "txt.npy"),
               "--captions", str(root / "captions.txt")], env, "import")
        for f in ("img.npy", "txt.npy", "captions.txt"):   # the store holds a copy
            (root / f).unlink(missing_ok=True)
        _step(state, state_path, "report", [py, "-m", "clipgeom", "report", PREPARED_NAME],
              env, "report (stored)")
        idx = _step(state, state_path, "index", [py, "-m", "clipgeom", "index", PREPARED_NAME],
                    env, "index (both modalities)")
        print(f"index build peak RSS {idx['peak_rss_mb']:.0f} MiB: goal < 3 GB "
              f"{'met' if idx['peak_rss_mb'] < 3000 else 'NOT met'}", flush=True)
        _pages_process(env, args)
        du = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"data under {root}: {du / 2 ** 30:.2f} GiB"
              f"{'' if args.keep else ' (deleted: no --keep)'}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _pages_process(env: dict, args) -> None:
    """Render every page in one new process; its peaks sampled from here too."""
    import subprocess
    import threading

    cmd = [sys.executable, __file__, "--pages-child", "--dataset", PREPARED_NAME]
    if args.pages:
        cmd += ["--pages", args.pages]
    if args.profile:
        cmd += ["--profile", args.profile]
    proc = subprocess.Popen(cmd, env=env)
    peak = {"VmHWM": 0.0, "RssAnon": 0.0}

    def sample():
        while proc.poll() is None:
            try:
                st = _proc_mb(proc.pid)
            except OSError:
                break
            for k in peak:
                peak[k] = max(peak[k], st.get(k, 0.0))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    proc.wait()
    th.join(timeout=5)
    print(f"pages process (sampled from outside every 0.2 s): VmHWM {peak['VmHWM']:.0f} MiB, "
          f"RssAnon peak {peak['RssAnon']:.0f} MiB; exit code {proc.returncode}; "
          f"load {_loadavg()}", flush=True)


def pages_child(args) -> None:
    """Every page rendered twice (first, cached) in this process: seconds,
    errors, and memory (this process's VmHWM and the RssAnon peak per page)."""
    import threading

    import logging

    import streamlit  # noqa: F401  (creates its loggers)

    # no "missing ScriptRunContext" lines at every run
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").disabled = True
    pages = PAGES
    if args.pages:
        want = args.pages.split(",")
        pages = [p for p in PAGES if any(w in p.stem for w in want)]
    peak = {"anon": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _proc_mb().get("RssAnon", 0.0))
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    start = _proc_mb()
    print(f"pages process {os.getpid()}: at start RssAnon {start['RssAnon']:.0f} MiB; "
          f"load {_loadavg()}", flush=True)
    overall_anon = 0.0
    for page in pages:
        peak["anon"] = _proc_mb()["RssAnon"]
        if args.profile and any(w in page.stem for w in args.profile.split(",")):
            import cProfile
            import pstats

            # AppTest runs the script in a thread of its own: profile every
            # thread started during this render
            profs, orig = [], threading.Thread.run

            def run(self):
                prof = cProfile.Profile()
                profs.append(prof)
                prof.enable()
                try:
                    orig(self)
                finally:
                    prof.disable()

            threading.Thread.run = run
            try:
                first, ok1, err1 = render_detail(page, args.dataset)
            finally:
                threading.Thread.run = orig
            stats = pstats.Stats(*profs)
            stats.sort_stats("cumulative").print_stats("clipgeom|dashboard|pages", 45)
        else:
            first, ok1, err1 = render_detail(page, args.dataset)
        anon_first = peak["anon"]
        again, ok2, err2 = render_detail(page, args.dataset)
        now = _proc_mb()
        overall_anon = max(overall_anon, peak["anon"])
        print(f"  {page.stem:28s} first {first:7.2f} s   cached {again:6.2f} s   "
              f"RssAnon peak {anon_first:6.0f} / {peak['anon']:6.0f} MiB (first / both)  "
              f"VmHWM {now['VmHWM']:6.0f} MiB   load {_loadavg()}"
              f"{'' if ok1 and ok2 else '   ERROR: ' + (err1 or err2)}", flush=True)
    stop.set()
    end = _proc_mb()
    print(f"pages process: VmHWM {end['VmHWM']:.0f} MiB, RssAnon peak "
          f"{overall_anon:.0f} MiB, now RssAnon {end['RssAnon']:.0f} / RssFile "
          f"{end['RssFile']:.0f} MiB", flush=True)


def render_detail(page: Path, dataset: str) -> tuple[float, bool, str]:
    """Like :func:`render`, with the first error or exception's text."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(page), default_timeout=1800)
    at.session_state["dataset"] = dataset
    t0 = time.perf_counter()
    at.run()
    dt = time.perf_counter() - t0
    msgs = [str(getattr(e, "message", e))[:200] for e in list(at.exception) + list(at.error)]
    return dt, not msgs, "; ".join(msgs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--no-controls", action="store_true", help="first/cached renders only")
    ap.add_argument("--prepared", action="store_true",
                    help="import/report/index a generated dataset with the CLI, then every page")
    ap.add_argument("--tmpdir", default="/tmp/clipgeom-scale",
                    help="--prepared: where the data goes (one folder per size)")
    ap.add_argument("--keep", action="store_true",
                    help="--prepared: keep the data, and reuse what an earlier --keep run left")
    ap.add_argument("--pages", default="", help="comma-separated parts of page names (default all)")
    ap.add_argument("--profile", default="",
                    help="--prepared: cProfile the first render of these pages")
    ap.add_argument("--pages-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", default=PREPARED_NAME, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pages_child:
        return pages_child(args)
    if args.prepared:
        return prepared(args)
    home = Path(tempfile.mkdtemp(prefix="clipgeom-bench-pages-"))
    os.environ["CLIPGEOM_HOME"] = str(home)
    from clipgeom import projection, store, synthetic

    print(f"CPU threads: {os.cpu_count()}; home {home}")
    print("demo (bundled):")
    bench("demo", not args.no_controls)
    if args.skip_large:
        return
    import pandas as pd

    t0 = time.perf_counter()
    d = synthetic.two_shells(args.n, args.dim, seed=0)
    n = args.n
    store.create_dataset(
        "large", d.image, d.text,
        pd.DataFrame({"image_id": [f"i{k}" for k in range(n)]}),
        pd.DataFrame({"text_id": [f"t{k}" for k in range(n)], "caption": d.captions,
                      "image_id": [f"i{k}" for k in range(n)]}),
        source={"kind": "synthetic", "n": n, "dim": args.dim})
    print(f"large synthetic ({n:,} x {args.dim}), created in "
          f"{time.perf_counter() - t0:.1f} s:")
    bench("large", False)
    import numpy as np

    ds = store.open_dataset("large")
    x = np.vstack([ds.image_emb[projection.sample_rows(n, 2000, 0)],
                   ds.text_emb[projection.sample_rows(n, 2000, 1)]]).astype(np.float32)
    t0 = time.perf_counter()
    projection.umap_coords(x, cache_dir=home / "umap")
    print(f"UMAP of 2,000 + 2,000 sampled rows (the page's default), one-time: "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
