"""Streamlit-side helpers shared by app.py and pages/: data loading with
caching, the dataset picker, error display. All maths stays in clipgeom."""

import os

import torch

# One intra-op thread for torch in the dashboard process. The loss kernel's
# small ops synchronise OpenMP threads per op: with a second busy process (or a
# second browser session) on this 2-core machine, the demo's three alpha sweeps
# took 13-33 s on 2 threads and 1.8-2.5 s on one (docs/benchmarks.md).
# CLIPGEOM_DASHBOARD_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("CLIPGEOM_DASHBOARD_THREADS", "1")))
