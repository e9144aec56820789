"""Linked selection: selection events -> rows, the selection's contrast with
the rest, over-represented tokens and subsets saved as datasets (checked
against direct counting)."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from clipgeom import store, subset
from clipgeom.errors import InputError
from dashboard import selection


def _fig():
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="lines", name="12 pairs"))    # not items
    fig.add_trace(go.Scattergl(x=[1, 2, 3], y=[1, 2, 3], name="image", customdata=[10, 11, 12]))
    fig.add_trace(go.Scattergl(x=[1, 2], y=[1, 2], name="text",
                               customdata=[[7, "x"], [9, "y"]]))
    return fig


def test_rows_from_event_maps_curves_and_customdata():
    event = {"selection": {"points": [
        {"curve_number": 1, "point_index": 0, "customdata": 10},
        {"curve_number": 1, "point_index": 2, "customdata": 12},
        {"curve_number": 1, "point_index": 2, "customdata": 12},      # duplicate
        {"curve_number": 2, "point_index": 1, "customdata": [9, "y"]},
        {"curve_number": 0, "point_index": 0},                        # pair line: ignored
        {"curve_number": 5, "point_index": 0, "customdata": 3},       # no such trace
    ]}}
    rows = selection.rows_from_event(event, _fig())
    assert rows["image"].tolist() == [10, 12]
    assert rows["text"].tolist() == [9]


def test_rows_from_empty_event():
    rows = selection.rows_from_event({"selection": {"points": []}}, _fig())
    assert rows["image"].size == 0 and rows["text"].size == 0
    rows = selection.rows_from_event(None, _fig())
    assert rows["image"].size == 0


def test_contrast_against_direct_means(rng):
    v = rng.normal(size=50)
    rows = np.array([3, 7, 7, 20])
    c = subset.contrast(v, np.unique(rows), "norm")
    mask = np.isin(np.arange(50), rows)
    assert c.selected == pytest.approx(v[mask].mean())
    assert c.rest == pytest.approx(v[~mask].mean())
    assert c.difference == pytest.approx(v[mask].mean() - v[~mask].mean())


def test_over_represented_counts():
    toks = [["red", "circle"]] * 6 + [["blue", "circle"]] * 6 + [["red", "square"]] * 2
    rows = np.arange(6)                      # the six red circles
    df = subset.over_represented(toks, rows)
    top = df.iloc[0]
    # "red": 6/6 selected vs 2/8 of the rest; "circle": 6/6 vs 6/8: red ranks first
    assert top["token"] == "red"
    assert top["selected"] == 6 and top["rest"] == 2
    assert top["selected_share"] == pytest.approx(1.0)
    assert top["rest_share"] == pytest.approx(2 / 8)
    assert "blue" not in set(df["token"])    # absent from the selection


def test_caption_words_drop_stopwords():
    assert subset.caption_words(["A red circle at the top", "**bold** on"]) == \
        [["red", "circle", "top"], ["bold"]]


def test_clean_rows_names_bad_row():
    with pytest.raises(InputError, match="row 9"):
        subset.clean_rows([1, 9], 5, "image")


def _dataset(home, rng):
    images = pd.DataFrame({"image_id": [f"i{k}" for k in range(6)]})
    texts = pd.DataFrame({"caption": [f"cap {k}" for k in range(8)],
                          "image_id": ["i0", "i0", "i1", "i2", "i3", "i4", "i5", None]})
    return store.create_dataset("base", rng.normal(size=(6, 8)).astype(np.float32),
                                rng.normal(size=(8, 8)).astype(np.float32), images, texts,
                                model={"name": "m", "temperature": 0.02}, home=home)


def test_subset_closed_under_pairing(clipgeom_home, rng):
    ds = _dataset(clipgeom_home, rng)
    irows, trows = subset.subset_tables(ds.images, ds.texts, [0], [3])
    # image 0 brings both its captions (0, 1); caption 3 brings its image i2 (row 2)
    assert irows.tolist() == [0, 2]
    assert trows.tolist() == [0, 1, 3]


def test_save_subset_rows_match_source(clipgeom_home, rng):
    ds = _dataset(clipgeom_home, rng)
    sub = subset.save_subset(ds, "part", [0, 4], [])
    assert sub.n_images == 2 and sub.n_texts == 3
    np.testing.assert_array_equal(np.asarray(sub.image_emb), np.asarray(ds.image_emb)[[0, 4]])
    np.testing.assert_array_equal(np.asarray(sub.text_emb), np.asarray(ds.text_emb)[[0, 1, 5]])
    assert sub.texts["caption"].tolist() == ["cap 0", "cap 1", "cap 5"]
    assert sub.manifest["source"]["of"] == "base"
    assert sub.model["temperature"] == 0.02
    ii, tt = sub.pairs()
    assert ii.tolist() == [0, 1] and tt.tolist() == [0, 2]


def test_save_subset_refuses_empty_and_existing(clipgeom_home, rng):
    ds = _dataset(clipgeom_home, rng)
    with pytest.raises(InputError, match="at least one image"):
        subset.save_subset(ds, "empty", [], [7])          # caption 7 has no image
    with pytest.raises(Exception, match="exists|already"):
        subset.save_subset(ds, "base", [0], [])
    assert store.open_dataset("base").n_images == 6        # nothing lost


def test_selection_url_round_trip():
    rows = {"image": np.array([3, 5]), "text": np.array([0])}
    enc = selection.encode_rows("joint-svd", rows)
    back = selection.decode_rows(enc, "joint-svd", {"image": 10, "text": 10})
    assert back["image"].tolist() == [3, 5] and back["text"].tolist() == [0]
    assert selection.decode_rows(enc, "umap", {"image": 10, "text": 10}) is None
    assert selection.decode_rows("joint-svd|image:3,99", "joint-svd",
                                 {"image": 10, "text": 10})["image"].tolist() == [3]
    assert selection.decode_rows("garbage", "joint-svd", {"image": 1, "text": 1}) is None
    big = {"image": np.arange(selection.URL_MAX_ROWS + 1), "text": np.zeros(0, int)}
    assert selection.encode_rows("k", big) is None


# ---------------------------------------------------------------- the panel (AppTest)
def _panel_app(rows_image, rows_text, key="t"):
    """A script drawing the selection panel for given rows of the demo dataset,
    selected through a synthetic plotly selection event."""
    import numpy as np
    import plotly.graph_objects as go

    from dashboard import data, selection

    loaded = data.open_dataset("demo")
    fig = go.Figure([go.Scattergl(x=[0], y=[0], name="image"),
                     go.Scattergl(x=[0], y=[0], name="text")])
    event = {"selection": {"points":
             [{"curve_number": 0, "customdata": int(r)} for r in rows_image]
             + [{"curve_number": 1, "customdata": int(r)} for r in rows_text]}}
    rows = selection.rows_from_event(event, fig)
    selection.panel(loaded, rows, key=key)


HAS_DEMO = (Path(__file__).resolve().parent.parent / "assets" / "demo" / "manifest.json").exists()


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
def test_selection_panel_numbers_match_direct_computation(bundled_home):
    from streamlit.testing.v1 import AppTest

    ds = store.open_dataset("demo")
    img = np.asarray(ds.image_emb, dtype=np.float64)
    picked = [3, 10, 11, 250, 999]
    at = AppTest.from_function(_panel_app, args=(picked, []), default_timeout=120).run()
    assert not at.exception and not at.error
    assert any("Selection: 5 image(s), 0 caption(s)" in m.value for m in at.markdown)
    contrast = at.dataframe[0].value
    norms = np.linalg.norm(img, axis=1)
    row = contrast[contrast["measure"] == "mean norm"].iloc[0]
    mask = np.isin(np.arange(len(img)), picked)
    assert row["selected"] == pytest.approx(norms[mask].mean(), rel=1e-6)
    assert row["rest"] == pytest.approx(norms[~mask].mean(), rel=1e-6)
    u = img / norms[:, None]
    conf = (u @ u.sum(0) - 1) / (len(u) - 1)
    row = contrast[contrast["measure"] == "mean conformity"].iloc[0]
    assert row["selected"] == pytest.approx(conf[mask].mean(), rel=1e-5)
    # over-represented metadata: the selected images' main shapes are counted
    over = at.dataframe[1].value
    tok = over.iloc[0]["token"]
    col, val = tok.split("=", 1)
    in_sel = sum(val in str(v).split(",") for v in ds.images[col].iloc[picked])
    assert over.iloc[0]["selected"] == in_sel
    assert len(at.get("imgs")) >= 1 or len(at.get("image")) >= 1


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
def test_one_clicked_item_shows_its_nearest_neighbours(bundled_home):
    from streamlit.testing.v1 import AppTest

    ds = store.open_dataset("demo")
    img = np.asarray(ds.image_emb, dtype=np.float64)
    txt = np.asarray(ds.text_emb, dtype=np.float64)
    at = AppTest.from_function(_panel_app, args=([42], []), default_timeout=120).run()
    assert not at.exception and not at.error
    tables = [d.value for d in at.dataframe]
    nn_img, nn_txt = tables[-2], tables[-1]
    q = img[42] / np.linalg.norm(img[42])
    cos_i = img @ q / np.linalg.norm(img, axis=1)
    cos_i[42] = -np.inf
    assert nn_img["row"].tolist() == np.argsort(-cos_i, kind="stable")[:5].tolist()
    cos_t = txt @ q / np.linalg.norm(txt, axis=1)
    assert nn_txt["row"].tolist() == np.argsort(-cos_t, kind="stable")[:5].tolist()
    assert nn_txt["cosine"].iloc[0] == pytest.approx(cos_t.max(), rel=1e-6)
    texts = [t.value for t in at.text]
    iid = ds.images["image_id"].iloc[42]
    assert set(ds.texts.loc[ds.texts["image_id"] == iid, "caption"]) <= set(texts)
