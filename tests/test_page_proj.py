"""Page 5, Projections & isotropy, through AppTest: numbers against brute force,
reruns after UMAP, tiny datasets, section isolation, colours and row ids."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from apptest_helpers import SEPARATELY_TESTED, arr, change_every_control, metrics
from clipgeom import projection, store, synthetic
from dashboard import data

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "5_Projections_and_isotropy.py")
HAS_DEMO = (ROOT / "assets" / "demo" / "manifest.json").exists()
BLUE, RED = "#1f77b4", "#d62728"


# ---------------------------------------------------------------- helpers


def _run(dataset: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    if dataset:
        at.session_state["dataset"] = dataset
    return at.run()


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _charts(at) -> dict:
    """{chart key: plotly spec} (figures.show keys every chart "chart-<key>")."""
    import json

    out = {}
    for c in at.get("plotly_chart"):
        key = c.proto.id.split("-chart-", 1)[1]
        out[key] = json.loads(c.proto.spec)
    return out


def _trace(fig, name):
    tr = [t for t in fig["data"] if t.get("name") == name]
    assert len(tr) == 1, [t.get("name") for t in fig["data"]]
    return tr[0]


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _synthetic():
    return synthetic.two_shells(**data.SYNTHETIC_PARAMS)


def _stored(name="tiny", n=20, d=64, rank=None, seed=3):
    """n pairs in d dimensions (rows of rank ``rank`` when given), one extra caption
    for image 0, and metadata: images "brightness" (numeric, one missing) and
    "shape" (categorical, one missing); texts "caption_len" (numeric)."""
    rng = np.random.default_rng(seed)
    if rank is None:
        img = rng.normal(size=(n, d)) + 1.0
        txt = img * 0.5 + rng.normal(size=(n, d)) - 1.0
    else:
        basis = rng.normal(size=(rank, d))
        img = rng.normal(size=(n, rank)) @ basis
        txt = rng.normal(size=(n, rank)) @ basis
    txt = np.vstack([txt, txt[:1] + 0.1])                     # a second caption of image 0
    ids = [f"im{i}" for i in range(n)]
    bright = rng.uniform(0, 10, n)
    bright[4] = np.nan
    shapes = np.array(["cube", "ball", "cone"] * n)[:n].astype(object)
    shapes[:2] = "ball"                                      # ball most frequent
    shapes[5] = None
    images = pd.DataFrame({"image_id": ids, "brightness": bright, "shape": shapes})
    texts = pd.DataFrame({"text_id": [f"t{i}" for i in range(n + 1)],
                          "caption": [f"caption {i}" for i in range(n + 1)],
                          "image_id": ids + [ids[0]],
                          "caption_len": np.arange(n + 1) + 3})
    store.create_dataset(name, img.astype(np.float32), txt.astype(np.float32), images, texts)
    return img.astype(np.float32), txt.astype(np.float32), images, texts


def _independent_isotropy(w):
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(w.T @ w)
    vecs = vecs * np.sign(w.sum(axis=0) @ vecs)  # oriented towards the cloud
    z = np.exp(w @ vecs).sum(axis=0)
    return z.min() / z.max(), z.std() / z.mean()


def _brute_recovery(xi, xt, k):
    """Supplement Eq. 4-10 as written: numpy SVD of S_inter = X_T X_I^T, the N x k^2
    system A x = 1 with A[i, j k + l] = V_ij V_il, minimum-norm solution."""
    _, _, vt = np.linalg.svd(xt @ xi.T)
    v = vt[:k].T
    a = np.einsum("ij,il->ijl", v, v).reshape(len(v), k * k)
    q = (np.linalg.pinv(a) @ np.ones(len(v))).reshape(k, k)
    return v @ q @ v.T


# ---------------------------------------------------------------- synthetic data


@pytest.fixture
def page(clipgeom_home):
    at = _run()
    _ok(at)
    return at


def test_page_draws_everything_on_synthetic_data(page):
    at = page
    assert any("SYNTHETIC DATA" in w.value for w in at.warning)
    charts = _charts(at)
    assert set(charts) == {"joint-svd", "spectrum", "lab-before", "lab-after", "cos-before",
                           "cos-after", "intra", "intra-curve"}
    joint = charts["joint-svd"]
    assert joint["data"][0]["mode"] == "lines"  # the pair lines
    assert _trace(joint, "image")["marker"]["color"] == BLUE
    assert _trace(joint, "text")["marker"]["color"] == RED
    # UMAP sits behind its button until computed
    assert at.button(key="umap_go") is not None

    syn = _synthetic()
    m = metrics(at)
    for mod, x in (("image", syn.image), ("text", syn.text)):
        i1, i2 = _independent_isotropy(x.astype(np.float64))
        label = "I1 image (min Z / max Z)" if mod == "image" else "I1 text"
        assert float(m[label]) == pytest.approx(i1, rel=1e-4)
        label = "I2 image (std Z / mean Z)" if mod == "image" else "I2 text"
        assert float(m[label]) == pytest.approx(i2, rel=1e-4)
    table = at.dataframe[0].value
    assert list(table["method"].str.split(" ").str[0]) == [
        "none", "center", "whiten", "Procrustes", "lstsq"]
    assert table.loc[table["selected"] != "", "method"].tolist() == ["none (CLIP as is)"]


def test_intra_recovery_on_the_page_is_checked_against_true_cosines(page):
    """The scatter used to be y = x: its "truth" was the rank-k projection itself."""
    from scipy.stats import pearsonr

    at = page
    charts = _charts(at)
    k = at.slider(key="intra_k").value
    assert k == 16                                     # 300 pairs: k(k+1) <= 300
    sc = _trace(charts["intra"], "image pairs")
    rows = np.unique(arr(sc["customdata"]).astype(int).ravel())
    assert len(rows) == at.number_input(key="intra_n").value == 300
    syn = _synthetic()
    xi, xt = _unit(syn.image[rows]), _unit(syn.text[rows])   # pair i <-> i
    iu = np.triu_indices(len(rows), 1)
    truth = (xi @ xi.T)[iu]
    rec = _brute_recovery(xi, xt, k)[iu]
    m = metrics(at)
    rms = np.sqrt(np.mean((rec - truth) ** 2))
    assert float(m["RMS error (off-diagonal)"]) == pytest.approx(rms, rel=2e-3)
    assert float(m["Pearson (off-diagonal)"]) == pytest.approx(pearsonr(truth, rec)[0],
                                                               abs=1e-4)
    assert rms > 1e-3                                    # not the identity line any more
    # the scatter's points: x = true cosine, y = recovered, for the pair in customdata
    cd = arr(sc["customdata"]).astype(int)
    pos = {r: i for i, r in enumerate(rows)}
    a = np.array([pos[r] for r in cd[:, 0]])
    b = np.array([pos[r] for r in cd[:, 1]])
    np.testing.assert_allclose(arr(sc["x"]), np.einsum("ij,ij->i", xi[a], xi[b]), atol=1e-6)
    full = _brute_recovery(xi, xt, k)
    np.testing.assert_allclose(arr(sc["y"]), full[a, b], atol=1e-6)
    # the error-vs-k curve
    curve = _trace(charts["intra-curve"], "RMS error")
    ks = arr(curve["x"]).astype(int)
    assert ks[0] == 1 and ks[-1] == projection.max_recovery_rank(300, 64) and k in ks
    for kk, y in list(zip(ks, arr(curve["y"])))[::4]:
        want = np.sqrt(np.mean((_brute_recovery(xi, xt, kk)[iu] - truth) ** 2))
        assert y == pytest.approx(want, rel=1e-5, abs=1e-9)


def test_controls_change_what_is_shown(page):
    at = page
    sv0 = arr(_charts(at)["spectrum"]["data"][0]["y"])
    x0 = arr(_trace(_charts(at)["joint-svd"], "image")["x"])
    at.toggle(key="proj_center").set_value(True).run()
    _ok(at)
    sv1 = arr(_charts(at)["spectrum"]["data"][0]["y"])
    x1 = arr(_trace(_charts(at)["joint-svd"], "image")["x"])
    syn = _synthetic()
    w = _unit(np.vstack([syn.image, syn.text]))
    np.testing.assert_allclose(sv0, np.linalg.svd(w, compute_uv=False), rtol=1e-4)
    np.testing.assert_allclose(sv1, np.linalg.svd(w - w.mean(axis=0), compute_uv=False),
                               rtol=1e-4, atol=1e-6)
    assert not np.allclose(x0[:50], x1[:50])
    assert any("Centred joint SVD" in s.value for s in at.subheader)

    table0 = at.dataframe[0].value
    at.selectbox(key="lab_method").set_value("whiten").run()
    _ok(at)
    table1 = at.dataframe[0].value
    assert table1.loc[table1["selected"] != "", "method"].str.startswith("whiten").all()
    assert not table0.equals(table1)
    at.slider(key="lab_k").set_value(4).run()
    _ok(at)
    table2 = at.dataframe[0].value
    w1 = table1[table1["method"].str.startswith("whiten")].iloc[0]
    w2 = table2[table2["method"].str.startswith("whiten")].iloc[0]
    assert w2["method"].endswith("k=4") and w1["test loss"] != w2["test loss"]
    assert table2.iloc[0]["test loss"] == table1.iloc[0]["test loss"]   # k only moves whiten


def test_colour_by_conformity_shares_one_colour_scale(page):
    at = page
    at.selectbox(key="proj_colour").set_value("conformity").run()
    _ok(at)
    fig = _charts(at)["joint-svd"]
    syn = _synthetic()
    vals = []
    for name, x in (("image", syn.image), ("text", syn.text)):
        tr = _trace(fig, name)
        rows = arr(tr["customdata"]).astype(int)
        u = _unit(x)
        brute = ((u @ u.T).sum(axis=1) - 1.0) / (u.shape[0] - 1)  # Def. 1, N x N
        np.testing.assert_allclose(arr(tr["marker"]["color"]), brute[rows], atol=1e-5)
        assert tr["marker"]["coloraxis"] == "coloraxis"
        vals.append(brute[rows])
    ax = fig["layout"]["coloraxis"]
    both = np.concatenate(vals)
    assert ax["cmin"] == pytest.approx(both.min(), abs=1e-5)
    assert ax["cmax"] == pytest.approx(both.max(), abs=1e-5)
    assert ax["colorscale"][0][1].lower() == "#440154"            # Viridis
    assert "label" not in at.selectbox(key="proj_colour").options  # synthetic: no tables


def test_reruns_after_compute_umap_never_raise(page):
    """Defect: the cached umap() drew into a progress bar made outside it, so every
    rerun after "Compute UMAP" raised CacheReplayClosureError and the rest of the
    page vanished."""
    at = page
    at.number_input(key="umap_rows").set_value(150).run()
    _ok(at)
    at.button(key="umap_go").click().run()
    _ok(at)
    charts = _charts(at)
    assert "umap" in charts
    um = charts["umap"]
    syn = _synthetic()
    rows_i = arr(_trace(um, "image")["customdata"]).astype(int)
    rows_t = arr(_trace(um, "text")["customdata"]).astype(int)
    assert len(rows_i) == len(rows_t) == 150
    assert len(set(rows_i)) == 150 and rows_i.max() < len(syn.image)
    xy0 = arr(_trace(um, "image")["x"])
    for change in (lambda: at.selectbox(key="proj_colour").set_value("norm"),
                   lambda: at.toggle(key="proj_center").set_value(True),
                   lambda: at.selectbox(key="proj_colour").set_value("modality"),
                   lambda: None):                      # a plain rerun / revisit
        change()
        at.run()
        _ok(at)
        charts = _charts(at)
        assert {"umap", "joint-svd", "intra", "intra-curve"} <= set(charts)
        np.testing.assert_array_equal(arr(_trace(charts["umap"], "image")["x"]), xy0)
        assert not at.button                           # stored: no button any more
    # a new session reads it from disk too
    at2 = _run()
    _ok(at2)
    at2.number_input(key="umap_rows").set_value(150).run()
    assert "umap" in _charts(at2)


# ---------------------------------------------------------------- 20 pairs


@pytest.mark.parametrize("d", [64, 512])
def test_twenty_pairs_render_every_section(clipgeom_home, d):
    _stored("tiny", d=d)
    at = _run("tiny")
    _ok(at)
    charts = _charts(at)
    assert {"joint-svd", "spectrum", "lab-before", "lab-after", "cos-before", "cos-after",
            "intra", "intra-curve"} <= set(charts)
    notes = " ".join(i.value for i in at.info)
    assert "n < d" in notes and "very few items" in notes
    sizes = at.slider(key="lab_k")
    assert sizes.max == min(d, 2 * (16 - 1)) and sizes.value <= sizes.max   # 16 train pairs
    assert at.number_input(key="intra_n").value == 20
    assert at.slider(key="intra_k").max == 5                                # 5 * 6 / 2 <= 20
    at.button(key="umap_go").click().run()
    _ok(at)
    assert "umap" in _charts(at)
    if d == 64:
        changed = change_every_control(at, skip=SEPARATELY_TESTED)
        assert not at.exception and not at.error, (changed, [e.value for e in at.error])
        assert len(changed) >= 6


def test_whitening_k_adapts_to_the_rank_of_the_data(clipgeom_home):
    """Rows of rank 5: the transform lab offers k up to the rank whitening sees
    (a remembered k = 12 is pulled back), so no divide-by-zero error appears."""
    img, txt, _, _ = _stored("flat", rank=5)
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["dataset"] = "flat"
    at.session_state["lab_k"] = 12
    at.run()
    _ok(at)
    from clipgeom import transforms
    ii, tt = store.open_dataset("flat").pairs()
    rank = transforms.whitening_rank(img[ii], txt[tt], 0.8)
    assert rank <= 10                                  # 2 modalities x rank 5
    assert at.slider(key="lab_k").max == rank and at.slider(key="lab_k").value <= rank
    assert "lab-after" in _charts(at)


def test_a_failing_section_shows_its_error_there_only(clipgeom_home, monkeypatch):
    """An error raised inside the transform lab is shown in that section; every
    other section still renders, and the lab comes back once it works."""
    from clipgeom import transforms
    from clipgeom.errors import InputError

    _stored("lab-fails", rank=6, seed=11)          # its own fingerprint: no cache hits
    real = transforms.evaluate_alignment

    def broken(*a, **k):
        raise InputError("the transform failed on purpose")

    monkeypatch.setattr(transforms, "evaluate_alignment", broken)
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["dataset"] = "lab-fails"
    at.run()
    assert not at.exception
    errs = [e.value for e in at.error]
    assert len(errs) == 1 and errs[0].startswith("Transform lab:") and "on purpose" in errs[0]
    charts = _charts(at)
    assert {"joint-svd", "spectrum", "intra", "intra-curve"} <= set(charts)
    assert not {"lab-before", "lab-after"} & set(charts)
    assert "I1 image (min Z / max Z)" in metrics(at) and "RMS error (off-diagonal)" in metrics(at)
    monkeypatch.setattr(transforms, "evaluate_alignment", real)
    at.slider(key="lab_train").set_value(0.7).run()      # new parameters: computed afresh
    _ok(at)
    assert "lab-after" in _charts(at)


# ---------------------------------------------------------------- colours and rows


def test_colour_by_any_metadata_column(clipgeom_home):
    img, txt, images, texts = _stored("meta")
    at = _run("meta")
    _ok(at)
    opts = at.selectbox(key="proj_colour").options
    assert {"modality", "conformity", "norm", "brightness", "shape", "caption_len"} <= set(opts)

    # numeric, from the images table: captions take their image's value
    at.selectbox(key="proj_colour").set_value("brightness").run()
    _ok(at)
    fig = _charts(at)["joint-svd"]
    bright = images["brightness"].to_numpy()
    img_of_text = np.array([int(i[2:]) for i in texts["image_id"]])
    for name, want_of in (("image", lambda r: bright[r]),
                          ("text", lambda r: bright[img_of_text[r]])):
        tr = _trace(fig, name)
        rows = arr(tr["customdata"]).astype(int)
        np.testing.assert_allclose(arr(tr["marker"]["color"]), want_of(rows))
        assert tr["marker"]["coloraxis"] == "coloraxis"
        missing = _trace(fig, f"{name}, no brightness")   # NaN -> its own grey points
        mrows = arr(missing["customdata"]).astype(int)
        assert np.isnan(want_of(mrows)).all() and len(mrows) >= 1
    assert 20 in arr(_trace(fig, "text")["customdata"]).astype(int)   # the extra caption
    ax = fig["layout"]["coloraxis"]
    assert ax["cmin"] == pytest.approx(np.nanmin(bright)) and \
        ax["cmax"] == pytest.approx(np.nanmax(bright))

    # numeric, from the texts table: an image takes its first caption's value
    at.selectbox(key="proj_colour").set_value("caption_len").run()
    _ok(at)
    tr = _trace(_charts(at)["joint-svd"], "image")
    rows = arr(tr["customdata"]).astype(int)
    np.testing.assert_allclose(arr(tr["marker"]["color"]), texts["caption_len"].to_numpy()[rows])

    # categorical: palette colours by frequency, one legend entry per category
    at.selectbox(key="proj_colour").set_value("shape").run()
    _ok(at)
    fig = _charts(at)["joint-svd"]
    from dashboard import figures

    order = ["ball", "cube", "cone"]                      # 8, 6, 5 images (one missing)
    assert [t["name"] for t in fig["data"] if t["name"].startswith("shape = ")] == \
        [f"shape = {c}" for c in order]
    for name, rows_to_img in (("image", lambda r: r), ("text", lambda r: img_of_text[r])):
        tr = _trace(fig, name)
        rows = arr(tr["customdata"]).astype(int)
        want = [figures.colour(order.index(images["shape"][rows_to_img(r)])) for r in rows]
        assert list(tr["marker"]["color"]) == want


def test_item_traces_carry_their_dataset_rows(clipgeom_home):
    img, txt, images, texts = _stored("rows")
    at = _run("rows")
    _ok(at)
    charts = _charts(at)
    # joint SVD: each point is the uncentred SVD projection of its customdata row
    w = _unit(np.vstack([img, txt]))
    _, _, vt = np.linalg.svd(w, full_matrices=False)
    for name, x in (("image", img), ("text", txt)):
        tr = _trace(charts["joint-svd"], name)
        rows = arr(tr["customdata"]).astype(int)
        want = _unit(x[rows]) @ vt[:2].T
        for j, axis in enumerate("xy"):
            got = arr(tr[axis])
            s = np.sign(got @ want[:, j])
            np.testing.assert_allclose(got, s * want[:, j], atol=1e-5)
    # transform lab: test pairs, image row and text row of the same pair
    for key in ("lab-before", "lab-after"):
        ri = arr(_trace(charts[key], "image")["customdata"]).astype(int)
        rt = arr(_trace(charts[key], "text")["customdata"]).astype(int)
        assert len(ri) == len(rt) == 4                    # 20 pairs, 20% test
        assert [images["image_id"][i] for i in ri] == [texts["image_id"][t] for t in rt]


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
def test_demo_shows_its_shipped_umap_without_computing(bundled_home, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the demo's default UMAP is shipped: nothing to compute")

    monkeypatch.setattr(projection, "import_umap", boom)
    at = _run()
    _ok(at)
    assert at.session_state["dataset"] == "demo"
    assert not at.button                                   # nothing to press
    um = _charts(at)["umap"]
    ds = store.open_dataset("demo")
    shipped = list((ROOT / "assets" / "demo" / "cache").glob("umap-*.npy"))
    assert len(shipped) == 1 and shipped[0].stat().st_size < 64 * 1024
    xy = np.load(shipped[0])
    assert xy.dtype == np.float32 and xy.shape == (4000, 2)
    rows_i = projection.sample_rows(ds.n_images, 2000, 0)
    tr = _trace(um, "image")
    np.testing.assert_array_equal(arr(tr["customdata"]).astype(int), rows_i)
    np.testing.assert_allclose(arr(tr["x"]), xy[:2000, 0])
    np.testing.assert_allclose(arr(_trace(um, "text")["y"]), xy[2000:, 1])
