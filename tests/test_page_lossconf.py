"""Pages 3 (alpha shift & loss) and 4 (conformity) through AppTest, numbers
checked against brute-force N x N computations (tests/brute.py)."""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from streamlit.testing.v1 import AppTest

import brute
from apptest_helpers import figures, metrics
from clipgeom import conformity, store, synthetic
from dashboard import data

ROOT = Path(__file__).resolve().parent.parent
LOSS_PAGE = str(ROOT / "pages" / "3_Alpha_shift_and_loss.py")
CONF_PAGE = str(ROOT / "pages" / "4_Conformity.py")


def _stored(n=240, dim=16, seed=3):
    d = synthetic.two_shells(n, dim, seed=seed)
    freq = np.random.default_rng(seed).uniform(0.01, 1.0, n)
    images = pd.DataFrame({"image_id": [f"im{i}" for i in range(n)],
                           "source": [f"src/{i}.jpg" for i in range(n)],
                           "concept_frequency": freq})
    texts = pd.DataFrame({"text_id": [f"t{i}" for i in range(n)],
                          "caption": [f"caption number {i}" for i in range(n)],
                          "image_id": [f"im{i}" for i in range(n)]})
    store.create_dataset("mine", d.image, d.text, images, texts)
    return d, freq


# ------------------------------------------------------------------ new functions
def test_query_conformity_matches_brute_force(rng):
    ref = rng.standard_normal((50, 7)) + 2.0
    q = rng.standard_normal(7)
    want = brute.unit(q[None]) @ brute.unit(ref).T
    got = conformity.query_conformity(q, ref)
    assert got.shape == (1,)
    np.testing.assert_allclose(got[0], want.mean(), rtol=1e-5, atol=1e-6)


def test_conformity_ranking_orders_and_puts_nan_last():
    v = [0.2, 0.9, np.nan, 0.2, -0.1]
    assert conformity.conformity_ranking(v).tolist() == [1, 0, 3, 4, 2]
    assert conformity.conformity_ranking(v, most=False).tolist() == [4, 0, 3, 1, 2]


# ------------------------------------------------------------------ page 3
def test_loss_page_on_synthetic_data(clipgeom_home):
    at = AppTest.from_file(LOSS_PAGE, default_timeout=180).run()
    assert not at.exception
    assert not at.error
    assert len(at.get("plotly_chart")) == 4          # Fig. 6 top, bottom, Fig. 11, logits
    # the loss at alpha = 0 equals the N x N loss on the same (unsampled) pairs
    p = data.SYNTHETIC_PARAMS
    d = synthetic.two_shells(p["n"], p["dim"], seed=p["seed"])
    want = brute.clip_loss(d.image, d.text, 0.01)["total"]
    got = float(metrics(at)["Loss at α = 0 (unshifted, Eq. 7-8)"])
    assert abs(got - want) < 1e-3 * max(1.0, abs(want))
    # the logit table's cosine row is the same loss
    tab = [df.value for df in at.dataframe if "logit" in df.value.columns][0]
    assert abs(float(tab.loc[tab["logit"] == "cosine", "total"].iloc[0]) - want) < 1e-3 * want
    # moving the text set instead changes the curve
    before = figures(at)[0]["data"][0]["y"]
    at.radio(key="alpha_modality").set_value("text").run()
    assert not at.exception
    after = figures(at)[0]["data"][0]["y"]
    assert before != after
    sweep = [df.value for df in at.dataframe if "alpha" in df.value.columns][0]
    at1 = float(sweep.loc[np.isclose(sweep["alpha"], 1.0), "total"].iloc[0])
    want1 = brute.clip_loss(d.image, d.text, 0.01, at=1.0)["total"]
    assert abs(at1 - want1) < 1e-3 * max(1.0, abs(want1))


# ------------------------------------------------------------------ page 4
def test_conformity_page_on_a_stored_dataset(clipgeom_home):
    d, freq = _stored()
    at = AppTest.from_file(CONF_PAGE, default_timeout=180).run()
    assert not at.exception
    assert not at.error
    charts = at.get("plotly_chart")
    assert len(charts) == 4        # Fig. 9, Fig. 10, two datasets compared, frequency
    # the comparison (default: the synthetic generator) is KL of the two exact
    # conformity distributions, each within its own set
    p = data.SYNTHETIC_PARAMS
    syn = synthetic.two_shells(p["n"], p["dim"], seed=p["seed"])
    want = conformity.conformity_kl(d.image, syn.image, bins=50).kl
    cmp = figures(at)[2]
    assert cmp["data"][1]["name"] == data.SYNTHETIC
    assert f"= {want:.4f}" in " ".join(c.value for c in at.caption)
    assert figures(at)[0]["data"][0]["type"] == "scattergl"
    m = metrics(at)
    # Pearson of exact (N x N) conformity vs cos to the mean, computed independently
    for mod, x in (("image", d.image), ("text", d.text)):
        exact = brute.conformity(x)
        u = brute.unit(x)
        mu = np.asarray(x, np.float64).mean(0)
        cm = u @ (mu / np.linalg.norm(mu))
        r = np.corrcoef(cm, exact)[0, 1]
        assert abs(float(m[f"{mod}: Pearson"]) - r) < 1e-4
    # Spearman = Pearson of ranks
    ci = brute.conformity(d.image)
    rho = np.corrcoef(rankdata(ci), rankdata(freq))[0, 1]
    assert abs(float(m["Spearman ρ (image conformity vs concept frequency)"]) - rho) < 1e-4
    # no model recorded: the caption box explains instead of failing
    assert any("no open_clip model" in i.value for i in at.info)

    gal = [df.value for df in at.dataframe if "rank" in df.value.columns][0]
    assert gal["caption"].iloc[0].startswith("caption number")
    top = int(np.argmax(ci))
    assert gal["row"].iloc[0] == top
    # paging shows the next items
    at.button(key="gal_next").click().run()
    assert not at.exception
    gal2 = [df.value for df in at.dataframe if "rank" in df.value.columns][0]
    assert gal2["rank"].iloc[0] == len(gal) + 1
    assert set(gal2["row"]).isdisjoint(gal["row"])
    # least conforming first
    at.radio(key="gal_order").set_value("least conforming").run()
    gal3 = [df.value for df in at.dataframe if "rank" in df.value.columns][0]
    assert gal3["rank"].iloc[0] == 1 and gal3["row"].iloc[0] == int(np.argmin(ci))
    # the page number input moves too
    at.number_input(key="gal_page").set_value(3).run()
    gal4 = [df.value for df in at.dataframe if "rank" in df.value.columns][0]
    assert gal4["rank"].iloc[0] == 2 * len(gal) + 1


def test_conformity_page_on_synthetic_data(clipgeom_home):
    at = AppTest.from_file(CONF_PAGE, default_timeout=180).run()
    assert not at.exception
    assert not at.error
    assert len(at.get("plotly_chart")) == 2
    assert any("concept_frequency" in i.value for i in at.info)


def test_conformity_gallery_shows_thumbnails(clipgeom_home, tmp_path):
    from PIL import Image

    n = 30
    d = synthetic.two_shells(n, 8, seed=2)
    thumbs = tmp_path / "thumbs"
    thumbs.mkdir()
    for i in range(n):
        Image.new("RGB", (16, 16), (8 * i, 40, 90)).save(thumbs / f"{i}.jpg")
    images = pd.DataFrame({"image_id": [f"im{i}" for i in range(n)],
                           "thumbnail": [f"{i}.jpg" for i in range(n)]})
    store.create_dataset("withthumbs", d.image, d.text, images, thumbs_dir=thumbs)
    at = AppTest.from_file(CONF_PAGE, default_timeout=180).run()
    assert not at.exception
    assert not at.error
    assert len(at.get("image")) == 12         # one page of the image gallery
