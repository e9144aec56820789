import os
import sys

# Tests use small arrays: one BLAS thread avoids thread oversubscription on a
# 2-core machine (set before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture
def clipgeom_home(tmp_path, monkeypatch):
    """An empty CLIPGEOM_HOME for the test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CLIPGEOM_HOME", str(home))
    return home


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
