"""Timings of the "Projections & isotropy" page and its UMAP on the bundled demo.

    python bench/proj_page.py            # page render + control changes + UMAP
    python bench/proj_page.py --page     # the page only
    python bench/proj_page.py --umap     # the UMAP only

Page (AppTest, no browser), in this process with a fresh CLIPGEOM_HOME:
  * first render: imports already done (as in a running server, where the
    Home page imported the dashboard), Streamlit's caches cold;
  * control changes: "Colour by" -> conformity, -> a metadata column,
    "Centre" on, the transform method -> whiten (each a rerun).
UMAP of the page's default 2,000 + 2,000 demo rows, each in a NEW process
(fresh interpreter, import of umap-learn included), with an empty numba cache
first ("first use": everything compiles) and then with that cache
("second use"); and the read of the demo's shipped UMAP.
Goals: page first render <= 5 s, control change <= 5 s; UMAP <= 15 s after
the first use.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAGE = ROOT / "pages" / "5_Projections_and_isotropy.py"

_UMAP_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from clipgeom import projection, store
ds = store.open_dataset("demo")
x, _ = projection.umap_sample(ds.image_emb, ds.text_emb, 2000)
t1 = time.perf_counter()
projection.umap_coords(x, **projection.umap_params_for(x.shape[0]))   # no cache: computes
t2 = time.perf_counter()
print(f"{{t2 - t1:.2f}}")
"""


def _umap_in_new_process(home: Path) -> float:
    env = dict(os.environ, CLIPGEOM_HOME=str(home))
    env.pop("NUMBA_CACHE_DIR", None)          # -> CLIPGEOM_HOME/cache/numba
    out = subprocess.run([sys.executable, "-c", _UMAP_CHILD.format(root=str(ROOT))],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_umap() -> None:
    home = Path(tempfile.mkdtemp(prefix="clipgeom-bench-umap-"))
    first = _umap_in_new_process(home)
    second = _umap_in_new_process(home)
    print(f"UMAP 2,000 + 2,000 demo rows, new process each: first use (empty numba cache) "
          f"{first:.1f} s, second use {second:.1f} s")
    os.environ["CLIPGEOM_HOME"] = str(home)
    from clipgeom import projection, store

    ds = store.open_dataset("demo")
    x, _ = projection.umap_sample(ds.image_emb, ds.text_emb, 2000)
    t0 = time.perf_counter()
    got = projection.stored_umap(x, shipped_dir=ds.shipped_dir("cache"),
                                 **projection.umap_params_for(x.shape[0]))
    print(f"shipped demo UMAP read: {1000 * (time.perf_counter() - t0):.1f} ms "
          f"({'found' if got is not None else 'MISSING: run python -m clipgeom.demo.ship_umap'})")


def _timed(at, what: str) -> None:
    t0 = time.perf_counter()
    at.run()
    ok = not at.exception and not at.error
    print(f"  {what:42s} {time.perf_counter() - t0:6.2f} s{'' if ok else '   ERROR'}",
          flush=True)


def bench_page() -> None:
    os.environ["CLIPGEOM_HOME"] = tempfile.mkdtemp(prefix="clipgeom-bench-proj-")
    import plotly.graph_objects  # noqa: F401  (what a running server has imported)
    import sklearn.decomposition  # noqa: F401
    from streamlit.testing.v1 import AppTest

    import dashboard.proj  # noqa: F401

    at = AppTest.from_file(str(PAGE), default_timeout=600)
    at.session_state["dataset"] = "demo"
    print("Projections & isotropy on the demo:")
    _timed(at, "first render (caches cold)")
    at.selectbox(key="proj_colour").set_value("conformity")
    _timed(at, "Colour by -> conformity")
    opts = at.selectbox(key="proj_colour").options
    meta = [o for o in opts if o not in ("modality", "conformity", "norm")]
    if meta:
        at.selectbox(key="proj_colour").set_value(meta[0])
        _timed(at, f"Colour by -> {meta[0]}")
    at.toggle(key="proj_center").set_value(True)
    _timed(at, "Centre before the SVD -> on")
    at.selectbox(key="lab_method").set_value("whiten")
    _timed(at, "Transform -> whiten")
    at2 = AppTest.from_file(str(PAGE), default_timeout=600)
    at2.session_state["dataset"] = "demo"
    _timed(at2, "render by a new session (caches warm)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", action="store_true")
    ap.add_argument("--umap", action="store_true")
    args = ap.parse_args()
    both = not (args.page or args.umap)
    if args.umap or both:
        bench_umap()
    if args.page or both:
        bench_page()


if __name__ == "__main__":
    main()
