"""The dashboard holds a bounded working set: no page materialises a whole
embedding array.

The check: ``tracemalloc`` records the peak of the memory a page's run
allocates above what was allocated before it (numpy registers its array
buffers with tracemalloc). Every page is opened in AppTest on four stored
datasets, ``N1`` or ``N2`` rows by ``D1`` or ``D2`` features (their reports
and indexes stored first, as ``clipgeom report`` and import leave them), after
one warm-up run on a small dataset (imports, dataset-independent caches). Of
the peak P(n, d), the interaction

    [P(N2, D2) - P(N1, D2)] - [P(N2, D1) - P(N1, D1)]

cancels what grows with the rows alone (per-row numbers and metadata: norms,
conformity, 2-D coordinates, ids, captions, tokens) and what grows with the
width alone (row-chunk temporaries: every dataset has more than two of the
65,536-row chunks, so each pass holds as many of them at once in all four),
and keeps what grows with rows x width: a copy of a whole
array, 4 x (N2 - N1) x (D2 - D1) bytes in float32. The test asserts the
interaction is under half of that.

Why this check and not a fake array that counts reads: a streaming pass over
a memory map (views, then row blocks) and a whole copy look alike to an array
wrapper; what matters for memory is what is allocated, which tracemalloc
measures, and the 2 x 2 design keeps per-row Python objects (hundreds of
bytes a row on some pages) from passing for array copies. Its blind spot:
memory allocated outside Python's and numpy's allocators (torch tensors, faiss
indexes) is not traced; the FAISS indexes are built before the measurement
and are the index, not a copy of the array. Peaks combine by max (a page's
phases are not all alive at once), so the interaction of a page that also
copies an array can be lower than the copy; the control test
(``test_the_check_catches_a_page_that_copies_an_array``) shows a copy of one
array is caught.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from clipgeom import index, report, store

# Five stored datasets and their reports (about 5 min on the shared 2-core
# machine), then ten pages x five runs: 7-14 min in all.
pytestmark = pytest.mark.timeout(2400)

ROOT = Path(__file__).resolve().parent.parent
D1, D2 = 32, 128
N1, N2 = 135_000, 270_000
# A whole float32 array's share of the interaction.
ONE_COPY = 4 * (N2 - N1) * (D2 - D1)
SIZES = {(n, d): f"ws-{n // 1000}k-{d}" for n in (N1, N2) for d in (D1, D2)}
WARM = "ws-warm"
PAGES = [ROOT / "app.py"] + sorted(
    p for p in (ROOT / "pages").glob("*.py")
    if p.stem not in {"0_Home", "8_Upload", "10_Compare"})  # Upload/Compare: no picked dataset


def _make(name: str, n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sigma = (np.arange(1, d + 1) ** -0.5 * 2).astype(np.float32)
    img = rng.standard_normal((n, d), dtype=np.float32) * sigma + 0.4
    txt = 0.5 * img + rng.standard_normal((n, d), dtype=np.float32) * sigma - 0.4
    ds = store.create_dataset(name, img, txt)
    del img, txt
    report.stored_report(ds, temperature=report.default_temperature(ds),
                         max_pairs=report.DEFAULT_MAX_PAIRS)
    for m in ("image", "text"):
        index.build_index(ds, m)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("ws-home")
    mp.setenv("CLIPGEOM_HOME", str(home))
    no_assets = tmp_path_factory.mktemp("ws-no-assets")
    mp.setenv("CLIPGEOM_ASSETS", str(no_assets))
    mp.setattr(store, "ASSETS_DIR", no_assets)
    _make(WARM, 3000, D1, 0)
    for k, ((n, d), name) in enumerate(SIZES.items()):
        _make(name, n, d, k + 1)
    st.cache_data.clear()
    st.cache_resource.clear()
    index.clear_cache()
    tracemalloc.start()
    yield SIZES
    tracemalloc.stop()
    st.cache_data.clear()
    st.cache_resource.clear()
    index.clear_cache()
    mp.undo()


def _peak_growth(page: Path, dataset: str) -> int:
    """Peak traced bytes above the start while ``page`` runs once on ``dataset``."""
    gc.collect()          # the last run's garbage must not be freed during this one
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    at = AppTest.from_file(str(page), default_timeout=600)
    at.session_state["dataset"] = dataset
    at.run()
    peak = tracemalloc.get_traced_memory()[1]
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return peak - start


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_never_copies_a_whole_array(datasets, page):
    _peak_growth(page, WARM)
    p = {size: _peak_growth(page, name) for size, name in datasets.items()}
    interaction = (p[N2, D2] - p[N1, D2]) - (p[N2, D1] - p[N1, D1])
    mb = 2 ** 20
    table = ", ".join(f"{n // 1000}k x {d}: {v / mb:.1f}" for (n, d), v in p.items())
    print(f"\n{page.stem}: peak MiB {table}; interaction {interaction / mb:.1f} MiB "
          f"(limit {ONE_COPY / 2 / mb:.1f})")
    assert interaction < ONE_COPY / 2, (
        f"{page.stem}: peak MiB {table}; rows x width interaction {interaction / mb:.1f} "
        f"MiB, a whole float32 array's is {ONE_COPY / mb:.1f} MiB")


COPYING_PAGE = '''
import numpy as np
import streamlit as st
from dashboard import ui

loaded = ui.page_header("copy")
whole = np.array(loaded.image)        # what no page may do: the whole array in memory
st.write(float(whole[-1, -1]))
'''


def test_the_check_catches_a_page_that_copies_an_array(datasets, tmp_path):
    """The control: a page that copies one whole array fails the check."""
    page = tmp_path / "copying_page.py"
    page.write_text(COPYING_PAGE)
    _peak_growth(page, WARM)
    p = {size: _peak_growth(page, name) for size, name in datasets.items()}
    interaction = (p[N2, D2] - p[N1, D2]) - (p[N2, D1] - p[N1, D1])
    print(f"\ncontrol (copies the image array): interaction {interaction / 2 ** 20:.1f} MiB "
          f"(limit {ONE_COPY / 2 / 2 ** 20:.1f})")
    assert interaction >= ONE_COPY / 2
