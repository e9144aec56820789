"""Pages 3 (alpha shift & loss) and 4 (conformity) through AppTest, numbers
checked against brute-force N x N computations (tests/brute.py)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from streamlit.testing.v1 import AppTest

import brute
from apptest_helpers import (IMAGE_BLUE, TEXT_RED, arr, assert_clean, change_every_control,
                             errors, figure_strings, figures, markup_leaks, metrics, open_page,
                             wrong_modality_colours)
from clipgeom import conformity, loss, store, synthetic
from dashboard import data
from tiny_data import USER_MARKUP, tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
HAS_DEMO = (ROOT / "assets" / "demo" / "manifest.json").exists()
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
    assert any("no open_clip model" in i.value.replace("\\", "") for i in at.info)

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


# ------------------------------------------------------------------ helpers, by hand
def _hist_kl(a, b, bins, floor=1e-6):
    """KL(a || b) of two samples on shared equal-width bins over the pooled range."""
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.linspace(lo, hi, bins + 1)
    pa = np.maximum(np.histogram(a, edges)[0] / a.size, floor)
    pb = np.maximum(np.histogram(b, edges)[0] / b.size, floor)
    pa, pb = pa / pa.sum(), pb / pb.sum()
    return float(np.sum(pa * np.log(pa / pb)))


def _kl_both(image, text, alpha, bins):
    """Fig. 11 by brute force: shift both sets by alpha times their mean."""
    vi = np.asarray(image, np.float64)
    vt = np.asarray(text, np.float64)
    return _hist_kl(brute.conformity(vi - alpha * vi.mean(0)),
                    brute.conformity(vt - alpha * vt.mean(0)), bins)


def _table(at, column):
    return [d.value for d in at.dataframe if column in d.value.columns][0]


def test_merge_alpha_sweeps_is_the_sweep_of_the_whole_grid(rng):
    v = rng.standard_normal((30, 6)) + 2.0
    t = rng.standard_normal((30, 6)) - 1.0
    grid = np.round(np.linspace(-1, 1, 9), 10)
    parts = [loss.alpha_sweep(v, t, grid[[0, 4, 8]], "both", 0.05),
             loss.alpha_sweep(v, t, grid[[1, 2, 3]], "both", 0.05),
             loss.alpha_sweep(v, t, grid[[5, 6, 7, 4]], "both", 0.05)]   # 0.0 twice
    got = loss.merge_alpha_sweeps(parts)
    np.testing.assert_allclose(got.alpha, grid)
    for k, a in enumerate(grid):
        want = brute.clip_loss(v, t, 0.05, ai=a, at=a)
        assert abs(got.total[k] - want["total"]) < 1e-4
        assert abs(got.alignment[k] - want["alignment"]) < 1e-4
        assert got.accuracy_t2i[k] == want["acc_t2i"]
    assert got.argmin == grid[int(np.argmin(got.total))]


def test_sweep_batches_start_coarse_and_cover_the_grid_once():
    from dashboard import lossconf

    grid = lossconf.alpha_grid(-1.0, 1.0, 0.1)
    batches = lossconf.sweep_batches(grid)
    assert len(batches[0]) <= lossconf.COARSE_VALUES
    assert batches[0][0] == -1.0 and batches[0][-1] == 1.0 and 0.0 in batches[0]
    flat = [a for b in batches for a in b]
    assert sorted(flat) == list(grid) and len(flat) == len(set(flat))
    assert lossconf.sweep_batches((0.0, 0.5)) == [(0.0, 0.5)]


def test_min_on_edge():
    from dashboard import lossconf

    assert lossconf.min_on_edge([-1, 0, 1], [0.1, 0.5, 0.9])
    assert lossconf.min_on_edge([-1, 0, 1], [0.9, 0.5, 0.1])
    assert not lossconf.min_on_edge([-1, 0, 1], [0.9, 0.1, 0.5])
    assert not lossconf.min_on_edge([-1, 0, 1], [np.nan] * 3)


def test_cached_functions_never_draw():
    """A function under st.cache_data / st.cache_resource draws nothing and takes
    no callback (the alpha sweep drew a progress bar from inside its cache)."""
    import ast

    root = Path(__file__).resolve().parent.parent / "dashboard"
    for name in ("lossconf.py", "shape.py"):
        tree = ast.parse((root / name).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            cached = any("cache_" in ast.unparse(d) for d in fn.decorator_list)
            if not cached:
                continue
            calls = [ast.unparse(n.func) for stmt in fn.body for n in ast.walk(stmt)
                     if isinstance(n, ast.Call)]
            assert not [c for c in calls if c.startswith("st.")], (name, fn.name, calls)
            args = [a.arg for a in fn.args.args]
            assert not [a for a in args if "progress" in a or "callback" in a], fn.name


# ------------------------------------------------------------------ page 3: speed, Fig. 6, 11
def test_tau_change_sweeps_coarse_first_and_matches_brute_force(clipgeom_home, tmp_path,
                                                                 monkeypatch):
    image, text, _ = tiny_dataset(tmp_path)
    calls = []
    real = loss.alpha_sweep

    def spy(vi, vt, alphas=None, modality="image", temperature=0.01, **kw):
        calls.append((tuple(np.round(alphas, 10)), modality, temperature, kw))
        return real(vi, vt, alphas, modality, temperature, **kw)

    monkeypatch.setattr(loss, "alpha_sweep", spy)
    at = AppTest.from_file(LOSS_PAGE, default_timeout=180).run()
    assert not at.exception and not errors(at)
    calls.clear()
    tau = [n for n in at.number_input if n.key.startswith("temperature")][0]
    tau.set_value(0.05).run()
    assert not at.exception and not errors(at)
    grid = tuple(np.round(np.linspace(-1, 1, 21), 10))
    # the first pass is coarse and spans the range; every alpha is computed once
    assert len(calls[0][0]) <= 5 and min(calls[0][0]) == -1.0 and max(calls[0][0]) == 1.0
    assert sorted(a for c in calls for a in c[0]) == sorted(grid)
    assert all(c[2] == 0.05 and not c[3].get("progress") for c in calls)
    sweep = _table(at, "alignment")
    assert np.allclose(sweep["alpha"], grid)
    for a in (-1.0, 0.3, 1.0):
        want = brute.clip_loss(image, text, 0.05, ai=a)["total"]
        got = float(sweep.loc[np.isclose(sweep["alpha"], a), "total"].iloc[0])
        assert abs(got - want) < 1e-3 * max(1.0, abs(want))
    # a rerun with the same parameters computes nothing
    calls.clear()
    at.run()
    assert calls == []


def test_fig6_total_has_its_own_axis(clipgeom_home):
    at = AppTest.from_file(LOSS_PAGE, default_timeout=180).run()
    fig = figures(at)[0]
    axis = {tr["name"]: tr.get("yaxis", "y") for tr in fig["data"]
            if tr.get("showlegend") is not False}
    assert axis["total"] != axis["alignment"] == axis["uniformity"]


def test_fig11_shifts_both_by_default_and_flags_an_edge_minimum(clipgeom_home, tmp_path):
    image, text, _ = tiny_dataset(tmp_path)
    at = AppTest.from_file(LOSS_PAGE, default_timeout=180).run()
    assert at.radio(key="kl_modality").value == "both"
    fig11 = [f for f in figures(at) if "KL" in str(f["layout"]["yaxis"].get("title"))][0]
    assert "shift both" in str(fig11["layout"]["xaxis"]["title"])
    kl = arr(fig11["data"][0]["y"])
    bins = 20                                  # never more bins than the 20 items
    for k, a in enumerate(np.round(np.linspace(-1, 1, 21), 10)):
        assert abs(kl[k] - _kl_both(image, text, a, bins)) < 1e-6
    edge = int(np.argmin(kl)) in (0, len(kl) - 1)
    flagged = any("edge of the range" in w.value and "KL" in w.value for w in at.warning)
    assert flagged == edge
    # windows of 4 values: the flag follows where the brute-force minimum sits
    seen = set()
    for lo in np.round(np.arange(-2.0, 1.71, 0.1), 10):
        grid = np.round(lo + 0.1 * np.arange(4), 10)
        want = [_kl_both(image, text, a, bins) for a in grid]
        on_edge = int(np.argmin(want)) in (0, 3)
        if on_edge in seen:
            continue
        seen.add(on_edge)
        at.slider(key="alpha_range").set_value((float(grid[0]), float(grid[-1]))).run()
        assert not at.exception and not errors(at)
        flagged = any("edge of the range" in w.value and "KL" in w.value for w in at.warning)
        assert flagged == on_edge, (grid, want)
        if len(seen) == 2:
            break
    assert seen == {True, False}


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
def test_alpha_page_on_the_demo_reads_the_stored_report(bundled_home, monkeypatch):
    """The default render computes no loss: the shipped report has the sweeps
    (image, text, both at the model's tau) and the logits. Its numbers are checked
    against the N x N loss."""
    def boom(*a, **k):
        raise AssertionError("the loss kernel ran")

    monkeypatch.setattr(loss, "_evaluate", boom)
    at = AppTest.from_file(LOSS_PAGE, default_timeout=300).run()
    assert not at.exception and not errors(at), errors(at)
    for mod in ("text", "both", "image"):
        at.radio(key="alpha_modality").set_value(mod).run()
        assert not at.exception and not errors(at), errors(at)
    assert _table(at, "logit") is not None
    ds = store.open_dataset("demo")
    ii, tt = ds.pairs()
    vi, vt = np.asarray(ds.image_emb)[ii], np.asarray(ds.text_emb)[tt]
    tau = float(ds.manifest["model"]["temperature"])
    sweep = _table(at, "alignment")
    want = brute.clip_loss(vi, vt, tau, ai=0.5)["total"]
    got = float(sweep.loc[np.isclose(sweep["alpha"], 0.5), "total"].iloc[0])
    assert abs(got - want) < 1e-3 * abs(want)
    # Fig. 11 shifts both: its minimum is inside the range, not at alpha = -1
    fig11 = [f for f in figures(at) if "KL" in str(f["layout"]["yaxis"].get("title"))][0]
    kl = arr(fig11["data"][0]["y"])
    assert 0 < int(np.argmin(kl)) < len(kl) - 1
    assert not any("edge of the range" in w.value for w in at.warning)


# ------------------------------------------------------------------ page 4: Fig. 9, 10
def test_conformity_scatter_names_rows_and_colours(clipgeom_home, tmp_path):
    image, text, caps = tiny_dataset(tmp_path)
    at = AppTest.from_file(CONF_PAGE, default_timeout=180).run()
    assert not at.exception and not errors(at)
    figs = figures(at)
    assert not wrong_modality_colours(figs)
    fig9 = figs[0]
    for mod, x in (("image", image), ("text", text)):
        tr = [t for t in fig9["data"] if t.get("name") == mod]
        assert len(tr) == 1
        rows = arr(tr[0]["customdata"]).astype(int)
        assert sorted(rows.tolist()) == list(range(len(x)))
        exact = brute.conformity(x)
        u = brute.unit(x)
        mu = np.asarray(x, np.float64).mean(0)
        np.testing.assert_allclose(arr(tr[0]["y"]), exact[rows], atol=1e-6)
        np.testing.assert_allclose(arr(tr[0]["x"]), u[rows] @ (mu / np.linalg.norm(mu)),
                                   atol=1e-6)
    fig10 = figs[1]
    colours = {t["name"]: t["marker"]["color"] for t in fig10["data"]}
    assert colours == {"image": IMAGE_BLUE, "text": TEXT_RED}
    assert all(n <= 20 for n in (len(arr(t["x"])) for t in fig10["data"]))
    # captions are data: escaped in hover text, never markdown
    assert not any("<b>tag</b>" in s for f in figs for s in figure_strings(f))
    assert any("&lt;b&gt;tag&lt;/b&gt;" in s for s in figure_strings(fig9))
    assert not markup_leaks(at, USER_MARKUP)


def test_pages_name_no_colours_of_their_own():
    import re

    for page in (LOSS_PAGE, CONF_PAGE):
        assert not re.search(r"#[0-9a-fA-F]{6}\b", Path(page).read_text()), page


# ------------------------------------------------------------------ tiny data, every control
@pytest.mark.parametrize("page", [LOSS_PAGE, CONF_PAGE], ids=["loss", "conformity"])
def test_pages_on_20_pairs_then_every_control(clipgeom_home, tmp_path, page):
    tiny_dataset(tmp_path)                              # 20 pairs, d = 64
    if page == CONF_PAGE:      # a second stored dataset: "Compare with" has two choices
        tiny_dataset(tmp_path, "tiny20b", seed=6)
    at = open_page(page, timeout=180)
    assert_clean(at)
    assert not markup_leaks(at, USER_MARKUP)
    changed = set(change_every_control(at, skip=(), buttons=True))   # the dataset picker last
    want = ({"alpha_range", "alpha_step", "alpha_modality", "kl_modality", "loss_pairs"}
            if page == LOSS_PAGE else
            {"conf_bins", "conf_page_size", "gal_modality", "gal_order", "gal_next",
             "conf_other", "conf_cmp_mod"})
    assert want <= changed, changed


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
@pytest.mark.parametrize("page", [LOSS_PAGE, CONF_PAGE], ids=["loss", "conformity"])
def test_pages_on_the_demo_then_every_control(bundled_home, page):
    at = open_page(page)
    assert_clean(at)
    change_every_control(at, buttons=True)


def test_a_tiny_conformity_set_gets_a_note_not_an_error(clipgeom_home):
    d = synthetic.two_shells(2, 8, seed=1)
    store.create_dataset("two", d.image, d.text)
    for page in (CONF_PAGE, LOSS_PAGE):
        at = AppTest.from_file(page, default_timeout=180).run()
        assert not at.exception and not errors(at), errors(at)
    at = AppTest.from_file(CONF_PAGE, default_timeout=180).run()
    assert any("at least 3" in i.value for i in at.info)
