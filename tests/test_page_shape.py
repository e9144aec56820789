"""The Separability and Thin-shell pages (AppTest) and their geometry helpers.

Numbers are checked against plain numpy computations written here, not
against clipgeom's own output.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from apptest_helpers import (arr, assert_clean, change_every_control, errors, figures,
                             markup_leaks, metrics, open_page, plain_texts,
                             wrong_modality_colours)
from clipgeom import geometry, store, synthetic
from dashboard import data
from tiny_data import SHARED_CAPTION, USER_MARKUP, tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
SEP_PAGE = str(ROOT / "pages" / "1_Separability.py")
SHELL_PAGE = str(ROOT / "pages" / "2_Thin_shell_and_ellipsoid.py")


def _sep_count(image, text):
    x = np.asarray(image, np.float64)
    y = np.asarray(text, np.float64)
    sep = np.abs(x.mean(0) - y.mean(0)) / np.sqrt(x.var(0) + y.var(0))
    return int(np.sum(sep > 1)), np.argsort(-sep, kind="stable")


def _mu_norm(x):
    x = np.asarray(x, np.float64)
    return float(np.mean([np.linalg.norm(r - x.mean(0)) for r in x]))


def _kl(a, b, bins=50, floor=1e-6):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    edges = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), bins + 1)
    pa = np.histogram(a, edges)[0] / a.size
    pb = np.histogram(b, edges)[0] / b.size
    pa = np.maximum(pa, floor)
    pb = np.maximum(pb, floor)
    pa, pb = pa / pa.sum(), pb / pb.sum()
    return float(sum(p * np.log(p / q) for p, q in zip(pa, pb)))


def _synthetic():
    p = data.SYNTHETIC_PARAMS
    return synthetic.two_shells(p["n"], p["dim"], seed=p["seed"])


# -------------------------------------------------------------- geometry helpers


def test_extreme_norms_match_a_brute_sort(rng):
    v = rng.standard_normal(50) ** 2
    got = geometry.extreme_norms(v, 5)
    by_value = sorted(range(50), key=lambda i: v[i])
    assert [g["row"] for g in got["smallest"]] == by_value[:5]
    assert [g["row"] for g in got["largest"]] == by_value[::-1][:5]
    assert got["largest"][0]["norm"] == pytest.approx(max(v))
    assert len(geometry.extreme_norms(v[:3], 10)["largest"]) == 3


def test_centered_columns_subtract_the_mean(rng):
    x = rng.standard_normal((40, 6)).astype(np.float32) + 3
    s = geometry.summarize(x)
    rows = np.array([1, 5, 7])
    got = geometry.centered_columns(x, s, [0, 4], rows)
    m = [sum(float(r[j]) for r in x) / 40 for j in range(6)]
    want = np.array([[float(x[i, 0]) - m[0], float(x[i, 4]) - m[4]] for i in rows])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_boundary_line_points_lie_on_the_line():
    for w, b in (([2.0, -1.0], 0.5), ([1.0, 0.0], -3.0), ([0.0, 4.0], 2.0)):
        xs, ys = geometry.boundary_line(w, b, (-5, 5), (-7, 7))
        for x, y in zip(xs, ys):
            assert w[0] * x + w[1] * y + b == pytest.approx(0.0, abs=1e-9)
        assert len(xs) == 2


def test_sample_rows_caps_and_is_seeded():
    assert list(geometry.sample_rows(5, 10)) == [0, 1, 2, 3, 4]
    a = geometry.sample_rows(1000, 100, seed=3)
    assert len(set(a.tolist())) == 100 and list(a) == sorted(a)
    assert list(a) == list(geometry.sample_rows(1000, 100, seed=3))


# -------------------------------------------------------------- pages on synthetic


def test_separability_page_on_synthetic(clipgeom_home):
    syn = _synthetic()
    n_above, order = _sep_count(syn.image, syn.text)
    at = AppTest.from_file(SEP_PAGE, default_timeout=180).run()
    assert not at.exception
    assert not at.error
    assert any("SYNTHETIC DATA" in w.value for w in at.warning)
    m = metrics(at)
    assert m["Separable features (Sep > 1, Eq. 5)"] == str(n_above)
    assert "SVM accuracy, top two features (Fig. 2)" in m
    assert m["Linear separability, all features"].endswith("%")
    # 3 histograms + sorted Sep + SVM scatter + 2 offset bars
    assert len(at.get("plotly_chart")) == 7
    ms = at.multiselect(key="sep_features")
    assert list(ms.value) == [int(f) for f in order[:3]]
    caps = [c.value for c in at.caption]
    assert f"{n_above} of {syn.image.shape[1]} features have Sep > 1" in " ".join(caps)
    kl_before = [c for c in caps if "KL(image" in c]
    assert len(kl_before) == 3
    # another feature: one histogram, with that feature's KL
    least = int(order[-1])
    ms.set_value([least]).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 5
    kl_after = [c.value for c in at.caption if "KL(image" in c.value]
    assert len(kl_after) == 1 and kl_after[0] not in kl_before
    want = _kl(syn.image[:, least], syn.text[:, least])
    assert f"Feature {least}: KL(image ‖ text) = {want:.4f}" in kl_after[0]


def test_shell_page_on_synthetic(clipgeom_home):
    syn = _synthetic()
    at = AppTest.from_file(SHELL_PAGE, default_timeout=180).run()
    assert not at.exception
    assert not at.error
    m = metrics(at)
    assert m["image: μ_norm = E‖v − m‖"] == f"{_mu_norm(syn.image):.4f}"
    assert m["text: μ_norm = E‖v − m‖"] == f"{_mu_norm(syn.text):.4f}"
    x = syn.text.astype(np.float64)
    mos = np.linalg.norm(x.mean(0)) / np.sqrt(np.sum(x.var(0)))
    assert m["text: ‖m‖/‖σ‖"] == f"{mos:.3f}"
    for label in ("image: var(y) = var‖v − m‖", "image: √E‖v − m‖²",
                  "image: relative error", "text: relative error"):
        assert label in m
    # centred norms, raw norms, first ten features, variance, ODD
    assert len(at.get("plotly_chart")) == 5
    # 2 caption tables + 2 image tables, each downloadable
    assert len(at.dataframe) == 4
    assert any("No thumbnails" in c.value for c in at.caption)
    at.radio(key="shell_feature_view").set_value("histograms").run()
    assert not at.exception and len(at.get("plotly_chart")) == 5


# -------------------------------------------------------------- a stored dataset


@pytest.fixture
def stored(clipgeom_home, tmp_path):
    from PIL import Image

    syn = synthetic.two_shells(80, 16, seed=3)
    text = syn.text.copy()
    text[17] *= 3.0                       # the odd caption: by far the largest norm
    thumbs = tmp_path / "thumbs"
    thumbs.mkdir()
    for k in range(80):
        Image.new("RGB", (16, 16), (3 * k, 100, 200)).save(thumbs / f"t{k}.jpg")
    images = pd.DataFrame({"image_id": [f"im{k}" for k in range(80)],
                           "source": [f"photo_{k}.jpg" for k in range(80)],
                           "thumbnail": [f"t{k}.jpg" for k in range(80)]})
    caps = [f"a photo of thing {k}" for k in range(80)]
    caps[17] = "an unusual caption with a huge norm"
    texts = pd.DataFrame({"caption": caps, "image_id": images["image_id"]})
    store.create_dataset("small", syn.image, text, images, texts, thumbs_dir=thumbs,
                         model={"name": "ViT-B-32", "pretrained": "openai"})
    return syn.image, text


def test_pages_on_a_stored_dataset_with_captions(stored):
    image, text = stored
    at = AppTest.from_file(SEP_PAGE, default_timeout=180).run()
    assert not at.exception and not at.error
    assert not any("SYNTHETIC" in w.value for w in at.warning)
    assert metrics(at)["Separable features (Sep > 1, Eq. 5)"] == str(
        _sep_count(image, text)[0])
    assert len(at.get("plotly_chart")) == 7

    at = AppTest.from_file(SHELL_PAGE, default_timeout=180).run()
    assert not at.exception and not at.error
    assert metrics(at)["image: μ_norm = E‖v − m‖"] == f"{_mu_norm(image):.4f}"
    largest = at.dataframe[0].value
    assert largest["caption"].iloc[0] == "an unusual caption with a huge norm"
    assert largest["row"].iloc[0] == 17
    assert largest["‖v‖"].iloc[0] == pytest.approx(np.linalg.norm(text[17].astype(float)),
                                                  rel=1e-6)
    # thumbnails of the 8 largest and 8 smallest images, labelled in plain text
    assert len(at.get("image")) == 16
    assert any(t.startswith("photo_") for t in plain_texts(at))
    assert not any("No thumbnails" in c.value for c in at.caption)
    # by centred norm the table is recomputed
    at.radio(key="shell_extreme_kind").set_value("centred norm ‖v − m‖").run()
    assert not at.exception
    assert "‖v − m‖" in at.dataframe[0].value.columns


# -------------------------------------------------------------- Fig. 14: distinct captions


def test_distinct_extremes_rank_each_caption_once():
    from dashboard import shape

    norms = [5.0, 9.0, 9.0, 1.0, 7.0, 9.0, 0.5, 3.0]
    labels = ["a", "dup", "dup", "b", "c", "dup", "d", "b"]
    got = shape.distinct_extremes(norms, labels, 3)
    # by hand: per label, its largest norm, the first row reaching it, and its count
    assert got["largest"]["caption"].tolist() == ["dup", "c", "a"]
    assert got["largest"]["row"].tolist() == [1, 4, 0]
    assert got["largest"]["rows"].tolist() == [3, 1, 1]
    assert got["largest"]["norm"].tolist() == [9.0, 7.0, 5.0]
    assert got["smallest"]["caption"].tolist() == ["d", "b", "a"]
    assert got["smallest"]["row"].tolist() == [6, 3, 0]
    assert got["smallest"]["rows"].tolist() == [1, 2, 1]
    assert len(shape.distinct_extremes(norms, labels, 50)["largest"]) == 5   # 5 distinct


def test_fig14_shows_each_caption_once_with_its_count(clipgeom_home, tmp_path):
    """The demo world repeats "a shape" with one large-norm embedding: the list
    of largest-norm captions showed it 8 times. Each caption once, with a count."""
    image, text, caps = tiny_dataset(tmp_path)
    at = AppTest.from_file(SHELL_PAGE, default_timeout=180).run()
    assert not at.exception and not errors(at)
    tables = [t.value for t in at.dataframe if "caption" in t.value.columns]
    assert len(tables) == 2
    largest, smallest = tables
    norms = np.linalg.norm(text.astype(np.float64), axis=1)
    for df in (largest, smallest):
        assert df["caption"].is_unique
        assert df["rows with this caption"].sum() <= len(caps)
    assert largest["caption"].iloc[0] == SHARED_CAPTION
    assert largest["rows with this caption"].iloc[0] == 8
    assert largest["‖v‖"].iloc[0] == pytest.approx(norms[-1], rel=1e-6)
    # the rest follow by norm among the other (distinct) captions
    others = sorted(((norms[k], caps[k]) for k in range(len(caps) - 8)), reverse=True)
    assert largest["caption"].tolist()[1:] == [c for _, c in others[:len(largest) - 1]]
    # user strings are data: in tables and plain text, never markdown
    assert not markup_leaks(at, USER_MARKUP)


# -------------------------------------------------------------- tiny data and every control


def test_bins_range_never_exceeds_the_items():
    from dashboard import shape

    for n in (2, 3, 7, 20, 55, 3000):
        lo, hi, default, step = shape.bins_range(n, lo=10, hi=200, default=50, step=10)
        assert 1 <= lo < hi <= max(2, n) and hi <= 200
        assert lo <= default <= hi
        assert (hi - lo) % step == 0


def _bars_per_trace(fig):
    """Bins per histogram trace (bar traces over numbers; not the feature bar charts)."""
    out = []
    for tr in fig["data"]:
        x = tr.get("x")
        if tr["type"] == "bar" and not (isinstance(x, list) and x and isinstance(x[0], str)):
            out.append(len(arr(x)))
    return out


@pytest.mark.parametrize("page", [SEP_PAGE, SHELL_PAGE], ids=["separability", "shell"])
def test_pages_on_20_pairs_then_every_control(clipgeom_home, tmp_path, page):
    tiny_dataset(tmp_path)                              # 20 pairs, d = 64
    at = open_page(page, timeout=180)
    assert_clean(at)
    assert any("Fewer items than features" in i.value for i in at.info)
    figs = figures(at)
    assert figs
    for fig in figs:              # no histogram has more bins than the 20 items
        assert all(n <= 20 for n in _bars_per_trace(fig))
    assert not markup_leaks(at, USER_MARKUP)
    keys = set(change_every_control(at, skip=(), buttons=True))    # the dataset picker last
    want = ({"sep_features", "sep_bins", "sep_k_offset"} if page == SEP_PAGE else
            {"shell_bins", "shell_feature_view", "shell_extreme_kind", "shell_extreme_k"})
    assert want <= keys, keys


def test_separability_offset_bars_follow_their_slider(clipgeom_home, tmp_path):
    """The slider goes to 40 features; the bars stopped at 10."""
    image, text, _ = tiny_dataset(tmp_path)
    at = AppTest.from_file(SEP_PAGE, default_timeout=180).run()
    at.slider(key="sep_k_offset").set_value(25).run()
    assert not at.exception and not errors(at)
    bars = [f for f in figures(at) if f["layout"].get("title", {}).get("text") ==
            "image embeddings"][0]["data"][0]
    x = np.asarray(image, np.float64)
    ratio = np.abs(x.mean(0)) / x.std(0)
    want = [f"f{f}" for f in np.argsort(-ratio, kind="stable")[:25]]
    assert list(bars["x"]) == want


def test_svm_scatter_traces_carry_dataset_rows(clipgeom_home, tmp_path):
    """Fig. 2 right: traces "image"/"text", customdata = dataset row, and each
    point is that row's value of the two most separable features."""
    image, text, _ = tiny_dataset(tmp_path)
    at = AppTest.from_file(SEP_PAGE, default_timeout=180).run()
    _, order = _sep_count(image, text)
    f1, f2 = int(order[0]), int(order[1])
    fig = [f for f in figures(at) if any(t.get("name") == "SVM boundary" for t in f["data"])][0]
    for name, x in (("image", image), ("text", text)):
        tr = [t for t in fig["data"] if t.get("name") == name]
        assert len(tr) == 1
        rows = arr(tr[0]["customdata"]).astype(int)
        assert sorted(rows.tolist()) == list(range(len(x)))
        np.testing.assert_allclose(arr(tr[0]["x"]), x[rows, f1], rtol=1e-6)
        np.testing.assert_allclose(arr(tr[0]["y"]), x[rows, f2], rtol=1e-6)
    assert not wrong_modality_colours([fig])


def test_pages_name_no_colours_of_their_own():
    """Modality colours come from figures.show (traces named by modality)."""
    import re

    for page in (SEP_PAGE, SHELL_PAGE):
        src = Path(page).read_text()
        assert not re.search(r"#[0-9a-fA-F]{6}\b", src), page


HAS_DEMO = (ROOT / "assets" / "demo" / "manifest.json").exists()


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
@pytest.mark.parametrize("page", [SEP_PAGE, SHELL_PAGE], ids=["separability", "shell"])
def test_pages_on_the_demo_then_every_control(bundled_home, page):
    at = open_page(page)
    assert_clean(at)
    if page == SHELL_PAGE:
        for t in (d.value for d in at.dataframe if "caption" in d.value.columns):
            assert t["caption"].is_unique
    change_every_control(at, buttons=True)
