"""Time the Separability, Thin shell, Alpha shift & loss and Conformity pages
on the bundled demo through AppTest: the first render, then one rerun per
control change (every control once). Prints seconds per step.

    .venv/bin/python bench/shapeloss_page_timings.py [page.py ...]

Runs with an empty CLIPGEOM_HOME (so only what the demo ships is cached on
disk) and a fresh process (so Streamlit's in-memory caches start empty; the
first render includes importing torch, pandas, plotly). The second line
renders again with modules imported but Streamlit's caches cleared.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ["CLIPGEOM_HOME"] = tempfile.mkdtemp(prefix="clipgeom-bench-")
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from streamlit.testing.v1 import AppTest  # noqa: E402

import apptest_helpers as helpers  # noqa: E402

PAGES = ["1_Separability.py", "2_Thin_shell_and_ellipsoid.py",
         "3_Alpha_shift_and_loss.py", "4_Conformity.py"]


_T0 = [0.0]
_FIRST_PASS: list = []


def _watch_sweeps() -> None:
    """Note when the first pass of a progressive alpha sweep returns (the page
    draws the coarse curve right after it)."""
    try:
        from dashboard import lossconf
    except ImportError:
        return
    real = getattr(lossconf, "alpha_sweep_part", None)
    if real is None:                      # a version without progressive sweeps
        return

    def watched(*args, **kwargs):
        out = real(*args, **kwargs)
        if not _FIRST_PASS:
            _FIRST_PASS.append(time.perf_counter() - _T0[0])
        return out

    watched.__wrapped_by_bench__ = True
    if not getattr(real, "__wrapped_by_bench__", False):
        lossconf.alpha_sweep_part = watched


def main(pages: list[str]) -> None:
    for page in pages:
        path = Path(page) if Path(page).exists() else ROOT / "pages" / page
        t = time.perf_counter()
        at = AppTest.from_file(str(path.resolve()), default_timeout=900).run()
        first = time.perf_counter() - t
        print(f"{path.name}: first render {first:.1f} s; errors {helpers.errors(at)}",
              flush=True)
        _watch_sweeps()          # after the first render: it must pay its own imports
        import streamlit as st
        st.cache_data.clear()
        st.cache_resource.clear()
        t = time.perf_counter()
        at = AppTest.from_file(str(path.resolve()), default_timeout=900).run()
        print(f"    again, modules imported, caches cleared: {time.perf_counter() - t:.1f} s",
              flush=True)
        timings: list = []
        coarse: list = []

        def before_run():
            if _FIRST_PASS:
                coarse.append(_FIRST_PASS[0])
            _FIRST_PASS.clear()
            _T0[0] = time.perf_counter()

        _T0[0] = time.perf_counter()
        helpers.change_every_control(at, timings=timings, buttons=True,
                                     before_run=before_run)
        before_run()
        for n, (key, s) in enumerate(timings):
            first = (f"  (first alpha pass back at {coarse[n]:.1f} s)"
                     if n < len(coarse) else "")
            print(f"    {key[:40]:40s} {s:6.1f} s{first}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or PAGES)
