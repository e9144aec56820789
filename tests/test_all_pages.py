"""Every page through AppTest, on the bundled demo and on the synthetic generator:
no exception, no error box, the figures each page promises."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import data

ROOT = Path(__file__).resolve().parent.parent
# app.py routes to pages/0_Home.py by default; Home's page links only resolve
# through that router, so Home is tested as app.py.
PAGES = [ROOT / "app.py"] + sorted(p for p in (ROOT / "pages").glob("*.py")
                                   if p.stem != "0_Home")
HAS_DEMO = (ROOT / "assets" / "demo" / "manifest.json").exists()

# The least number of figures each page draws, on the demo / on synthetic data
# (the generator has no thumbnails, captions, model or training snapshots).
MIN_FIGURES = {"app": (2, 2), "1_Separability": (4, 4), "2_Thin_shell_and_ellipsoid": (5, 5),
               "3_Alpha_shift_and_loss": (4, 4), "4_Conformity": (4, 2),
               "5_Projections_and_isotropy": (4, 4), "6_Search_and_interpolation": (2, 2),
               "7_Training_timeline": (5, 0), "8_Upload": (0, 0),
               "9_Talk": (1, 1), "10_Compare": (6, 0)}
# Pages that pick several datasets themselves (no sidebar dataset, no synthetic option).
MULTI_DATASET = {"10_Compare"}


def _run(page: Path, dataset: str | None = None):
    at = AppTest.from_file(str(page), default_timeout=300)
    if dataset:
        at.session_state["dataset"] = dataset
    return at.run()


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_on_the_demo(bundled_home, page):
    at = _run(page)                                  # the demo is the default dataset
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    if page.stem not in MULTI_DATASET:
        assert at.session_state["dataset"] == "demo"
    assert len(at.get("plotly_chart")) >= MIN_FIGURES[page.stem][0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_on_synthetic_data(clipgeom_home, page):
    at = _run(page, data.SYNTHETIC)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= MIN_FIGURES[page.stem][1]
    if page.stem not in {"8_Upload"} | MULTI_DATASET:
        assert any("SYNTHETIC DATA" in w.value for w in at.warning)
