"""Page 5, Projections & isotropy (AppTest, synthetic data), and the intra-modal
recovery experiment checked against an independent computation."""

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from clipgeom import projection, synthetic
from clipgeom.errors import InputError
from apptest_helpers import arr as _arr, figures as _figures, metrics as _metrics

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "5_Projections_and_isotropy.py")


# ---- clipgeom.projection.intra_recovery_experiment ---------------------------


def _independent_truth(image, text, k):
    """Unit rows -> top-k right singular vectors of the stacked rows (numpy SVD,
    uncentred) -> re-normalised -> image Gram matrix."""
    ui = image / np.linalg.norm(image, axis=1, keepdims=True)
    ut = text / np.linalg.norm(text, axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(np.vstack([ui, ut]), full_matrices=False)
    xi = ui @ vt[:k].T
    xi /= np.linalg.norm(xi, axis=1, keepdims=True)
    return xi @ xi.T


def test_intra_recovery_experiment_against_numpy(rng):
    n, d, k = 120, 24, 6
    img = rng.standard_normal((n, d)) + 2.0
    txt = img @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal((n, d))
    out = projection.intra_recovery_experiment(img, txt, n_pairs=n, k=k, seed=0)
    np.testing.assert_array_equal(out["rows"], np.arange(n))
    truth = _independent_truth(img, txt, k)
    iu = np.triu_indices(n, 1)
    np.testing.assert_allclose(out["true"], truth[iu], atol=1e-5)
    # rank-k unit rows: the inter-modal matrix determines the intra-modal one exactly
    np.testing.assert_allclose(out["recovered"], truth[iu], atol=1e-5)
    assert out["max_abs"] < 1e-5 and out["pearson"] > 0.99999 and out["residual"] < 1e-6


def test_intra_recovery_experiment_in_full_rank_space(rng):
    # k = d: PCA is a rotation, so the truth is just the Gram matrix of the unit rows
    n, d = 60, 5
    img = rng.standard_normal((n, d))
    txt = rng.standard_normal((n, d))
    out = projection.intra_recovery_experiment(img, txt, n_pairs=1000, k=d)
    u = img / np.linalg.norm(img, axis=1, keepdims=True)
    g = u @ u.T
    # inputs are validated as float32 (the stored dtype), hence the tolerance
    np.testing.assert_allclose(out["recovered"], g[np.triu_indices(n, 1)], atol=1e-6)
    assert out["pca_energy"] == pytest.approx(1.0)


def test_intra_recovery_experiment_rejects_too_few_pairs(rng):
    x = rng.standard_normal((40, 16))
    with pytest.raises(InputError, match="k\\(k\\+1\\)/2"):
        projection.intra_recovery_experiment(x, x + 1.0, n_pairs=30, k=16)


# ---- the page ----------------------------------------------------------------


def _spectrum(at):
    figs = [f for f in _figures(at) if f["layout"].get("yaxis", {}).get("type") == "log"]
    assert len(figs) == 1
    return _arr(figs[0]["data"][0]["y"])


def _joint_image_x(at):
    fig = _figures(at)[0]
    tr = [t for t in fig["data"] if t.get("name") == "image"][0]
    assert tr["type"] == "scattergl"
    return _arr(tr["x"])


def _independent_isotropy(w):
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(w.T @ w)
    vecs = vecs * np.sign(w.sum(axis=0) @ vecs)  # oriented towards the cloud
    z = np.exp(w @ vecs).sum(axis=0)
    return z.min() / z.max(), z.std() / z.mean()


@pytest.fixture
def page(clipgeom_home):
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception
    assert not at.error
    return at


def test_page_draws_everything_on_synthetic_data(page):
    from dashboard import data

    at = page
    assert any("SYNTHETIC DATA" in w.value for w in at.warning)
    # joint SVD, spectrum, before/after projections, before/after cosines, intra scatter
    figs = _figures(at)
    assert len(figs) == 7
    assert figs[0]["data"][0]["mode"] == "lines"  # the pair lines
    assert {"image", "text"} <= {t.get("name") for t in figs[0]["data"]}
    assert all(t["type"] in ("scattergl", "scatter", "histogram")
               for f in figs for t in f["data"])
    assert all(t.get("text") or t.get("hovertemplate") or t.get("hoverinfo") == "skip"
               for f in figs for t in f["data"])
    # UMAP sits behind its button
    assert at.button(key="umap_go") is not None
    assert not any("UMAP (cosine)" in c.value for c in at.caption)

    syn = synthetic.two_shells(**data.SYNTHETIC_PARAMS)
    m = _metrics(at)
    for mod, arr in (("image", syn.image), ("text", syn.text)):
        i1, i2 = _independent_isotropy(arr.astype(np.float64))
        label = "I1 image (min Z / max Z)" if mod == "image" else "I1 text"
        assert float(m[label]) == pytest.approx(i1, rel=1e-4)
        label = "I2 image (std Z / mean Z)" if mod == "image" else "I2 text"
        assert float(m[label]) == pytest.approx(i2, rel=1e-4)
    assert float(m["RMS error"]) < 1e-6  # recovery is exact for rank-k unit rows

    table = at.dataframe[0].value
    assert list(table["method"].str.split(" ").str[0]) == [
        "none", "center", "whiten", "Procrustes", "lstsq"]
    assert table.loc[table["selected"] != "", "method"].tolist() == ["none (CLIP as is)"]


def test_controls_change_what_is_shown(page):
    at = page
    sv0, x0 = _spectrum(at), _joint_image_x(at)
    at.toggle(key="proj_center").set_value(True).run()
    assert not at.exception and not at.error
    sv1, x1 = _spectrum(at), _joint_image_x(at)
    assert sv1.shape == sv0.shape
    # both spectra against numpy's SVD of the stacked unit rows, uncentred and centred
    from dashboard import data

    syn = synthetic.two_shells(**data.SYNTHETIC_PARAMS)
    w = np.vstack([syn.image, syn.text]).astype(np.float64)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(sv0, np.linalg.svd(w, compute_uv=False), rtol=1e-4)
    np.testing.assert_allclose(sv1, np.linalg.svd(w - w.mean(axis=0), compute_uv=False),
                               rtol=1e-4, atol=1e-6)
    assert np.sum(sv0 ** 2) == pytest.approx(w.shape[0], rel=1e-5)
    assert np.sum(sv1 ** 2) < np.sum(sv0 ** 2)
    assert not np.allclose(x0[:50], x1[:50])
    assert any("Centred joint SVD" in s.value for s in at.subheader)

    table0 = at.dataframe[0].value
    at.selectbox(key="lab_method").set_value("whiten").run()
    assert not at.exception and not at.error
    table1 = at.dataframe[0].value
    assert table1.loc[table1["selected"] != "", "method"].str.startswith("whiten").all()
    assert not table0.equals(table1)
    at.slider(key="lab_k").set_value(4).run()
    assert not at.exception and not at.error
    table2 = at.dataframe[0].value
    w1 = table1[table1["method"].str.startswith("whiten")].iloc[0]
    w2 = table2[table2["method"].str.startswith("whiten")].iloc[0]
    assert w2["method"].endswith("k=4") and w1["test loss"] != w2["test loss"]
    # the other methods do not depend on k
    none1 = table1.iloc[0]
    assert table2.iloc[0]["test loss"] == none1["test loss"]


def test_colour_by_conformity_uses_exact_conformity(page):
    from dashboard import data

    at = page
    at.selectbox(key="proj_colour").set_value("conformity").run()
    assert not at.exception and not at.error
    fig = _figures(at)[0]
    tr = [t for t in fig["data"] if t.get("name") == "text"][0]
    syn = synthetic.two_shells(**data.SYNTHETIC_PARAMS)
    u = syn.text / np.linalg.norm(syn.text, axis=1, keepdims=True)
    brute = ((u @ u.T).sum(axis=1) - 1.0) / (u.shape[0] - 1)  # Def. 1, N x N
    np.testing.assert_allclose(_arr(tr["marker"]["color"]), brute, atol=1e-5)
    assert "label" not in at.selectbox(key="proj_colour").options  # synthetic: no labels
