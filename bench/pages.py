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
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--no-controls", action="store_true", help="first/cached renders only")
    args = ap.parse_args()
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
