"""Pages at 1,000,000 pairs: what the Projections, Talk, Alpha-shift and
Conformity pages now sample or read instead of scanning every row again, each
checked against a direct computation (numpy float64 on the same rows, or the
old code path). The sample caps are made small so that a few hundred rows
take the sampled path."""

import numpy as np
import pytest
import streamlit as st

from brute import unit
from clipgeom import conformity, report, synthetic
from dashboard import data, lossconf, proj, talk


@pytest.fixture(autouse=True)
def _fresh_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def _loaded(n_img=300, n_txt=260, d=16, seed=3, tag="lv"):
    syn = synthetic.two_shells(max(n_img, n_txt), d, seed=seed)
    img = np.asarray(syn.image[:n_img], np.float32)
    txt = np.asarray(syn.text[:n_txt], np.float32)
    rows = np.arange(min(n_img, n_txt))
    return data.Loaded(name=f"{tag}-{seed}", image=img, text=txt, pair_image_rows=rows,
                       pair_text_rows=rows, fingerprint=f"{tag}-{n_img}-{n_txt}-{d}-{seed}",
                       synthetic=True, model="none")


@pytest.mark.parametrize("center,normalize", [(False, True), (True, True), (False, False)])
def test_joint_svd_fitted_on_a_sample_projects_every_row(monkeypatch, center, normalize):
    monkeypatch.setattr(proj, "JOINT_FIT_ROWS", 140)
    ld = _loaded()
    ri, rt = proj.joint_fit_rows(300, 260)
    assert len(ri) + len(rt) <= 141 and len(ri) > len(rt)      # same fraction of each
    jp = proj.joint(ld.fingerprint, ld, center, normalize)
    assert (jp["n_fit"], jp["n_rows"]) == (len(ri) + len(rt), 560)
    prep = (lambda x: unit(x)) if normalize else (lambda x: np.asarray(x, np.float64))
    w = np.vstack([prep(ld.image[ri]), prep(ld.text[rt])])
    mean = w.mean(axis=0) if center else np.zeros(w.shape[1])
    _, sv, vt = np.linalg.svd(w - mean, full_matrices=False)
    np.testing.assert_allclose(jp["singular_values"], sv * np.sqrt(560 / len(w)), rtol=1e-8)
    np.testing.assert_allclose(jp["ratio"], sv ** 2 / np.sum(sv ** 2), rtol=1e-8)
    for mod, x in (("image", ld.image), ("text", ld.text)):
        want = (prep(x) - mean) @ vt[:2].T                   # every row, not only the sample
        got = jp[mod]
        assert got.shape == (x.shape[0], 2)
        for j in range(2):
            s = np.sign(got[:, j] @ want[:, j])
            # float32 products (a plot's precision)
            np.testing.assert_allclose(got[:, j], s * want[:, j], rtol=1e-5,
                                       atol=1e-5 * np.abs(want).max())


def test_joint_svd_on_every_row_below_the_cap():
    ld = _loaded(seed=4)
    jp = proj.joint(ld.fingerprint, ld, False, True)
    assert jp["n_fit"] == jp["n_rows"] == 560
    _, sv, _ = np.linalg.svd(np.vstack([unit(ld.image), unit(ld.text)]), full_matrices=False)
    np.testing.assert_allclose(jp["singular_values"], sv, rtol=1e-8)


def _brute_conformity(x):
    u = unit(x)
    return (u @ u.sum(axis=0) - 1.0) / (len(x) - 1)


def test_talk_arrays_on_a_sample_use_every_row_for_conformity(monkeypatch):
    monkeypatch.setattr(talk, "STAT_ROWS", 120)
    monkeypatch.setattr(talk, "SLIDE_POINTS", 50)
    ld = _loaded(seed=5)
    fits = {m: conformity.fit_conformity(getattr(ld, m)) for m in ("image", "text")}
    arr = talk._arrays(ld.fingerprint, ld, tuple((fits[m].a, fits[m].b)
                                                  for m in ("image", "text")))
    units = {}
    for mod, x in (("image", ld.image), ("text", ld.text)):
        a = arr[mod]
        rows = a["rows"]
        assert len(rows) == 50 and a["n_stat"] == 120 and a["n_rows"] == len(x)
        # conformity against every row (Def. 1), not against the sample
        np.testing.assert_allclose(a["exact"], _brute_conformity(x)[rows], atol=1e-6)
        np.testing.assert_allclose(a["estimated"], fits[mod].estimated[rows], atol=1e-6)
        stat = talk.projection.sample_rows(len(x), 120, 0 if mod == "image" else 1)
        x64 = np.asarray(x, np.float64)
        np.testing.assert_allclose(a["centered_norms"],
                                   np.linalg.norm(x64[stat] - x64.mean(axis=0), axis=1),
                                   rtol=1e-6)
        units[mod] = unit(x[talk.projection.sample_rows(len(x), 120, 0 if mod == "image"
                                                         else 1)])
    _, _, vt = np.linalg.svd(np.vstack([units["image"], units["text"]]), full_matrices=False)
    for mod, x in (("image", ld.image), ("text", ld.text)):
        want = unit(x[arr[mod]["rows"]]) @ vt[:2].T
        for j in range(2):
            s = np.sign(arr[mod]["xy"][:, j] @ want[:, j])
            np.testing.assert_allclose(arr[mod]["xy"][:, j], s * want[:, j], atol=1e-9)


def test_kl_sweep_read_from_the_report_equals_the_computed_one():
    ld = _loaded(seed=6, n_img=240, n_txt=240)
    rep = report.build_report(ld.image, ld.text, ld.pair_image_rows, ld.pair_text_rows,
                              max_pairs=100)
    ck = rep["conformity_kl"]
    alphas = tuple(float(a) for a in ck["alpha"])
    got = lossconf.kl_from_report(rep, alphas, ck["modality"], ck["bins"])
    want = conformity.conformity_kl_sweep(ld.image, ld.text, alphas, modality=ck["modality"],
                                          bins=ck["bins"])
    np.testing.assert_allclose(got.kl, want.kl, rtol=1e-9, atol=1e-12)
    assert got.argmin == want.argmin
    # another grid, modality or bin count is not the report's: computed instead
    assert lossconf.kl_from_report(rep, alphas[:-1], ck["modality"], ck["bins"]) is None
    assert lossconf.kl_from_report(rep, alphas, "image", ck["bins"]) is None
    assert lossconf.kl_from_report(rep, alphas, ck["modality"], ck["bins"] + 1) is None
    assert lossconf.kl_from_report(None, alphas, ck["modality"], ck["bins"]) is None


def test_conformity_fits_read_from_the_stored_report_equal_fit_conformity(clipgeom_home):
    from clipgeom import store

    ld0 = _loaded(seed=8, n_img=250, n_txt=250)
    ds = store.create_dataset("fitrep", ld0.image, ld0.text)
    report.stored_report(ds, temperature=report.default_temperature(ds),
                         max_pairs=report.DEFAULT_MAX_PAIRS)
    ld = data.open_dataset("fitrep")
    assert lossconf.stored_results(ld, ld.default_temperature,
                                   lossconf.DEFAULT_MAX_PAIRS) is not None
    got = lossconf.fits(ld.fingerprint, ld)
    for mod, x in (("image", ld0.image), ("text", ld0.text)):
        want = conformity.fit_conformity(x)
        f = got[mod]
        for k in ("a", "b", "pearson", "a_paper", "b_paper", "theory_a", "theory_a_paper",
                  "mean"):
            assert getattr(f, k) == pytest.approx(getattr(want, k), rel=1e-9, abs=1e-12), k
        np.testing.assert_allclose(f.exact, _brute_conformity(x), atol=1e-6)
        np.testing.assert_allclose(f.cos_mean, want.cos_mean, atol=1e-6)
        np.testing.assert_allclose(f.estimated, want.estimated, atol=1e-6)


def test_conformity_distributions_from_the_fits_equal_conformity_kl():
    ld = _loaded(seed=7)
    got = lossconf.distributions(ld.fingerprint, ld, 30)
    want = conformity.conformity_kl(ld.image, ld.text, bins=30)
    np.testing.assert_allclose(got.edges, want.edges, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.first, want.first, atol=1e-12)
    np.testing.assert_allclose(got.second, want.second, atol=1e-12)
    assert got.kl == pytest.approx(want.kl, rel=1e-6)


def test_first_caption_of_each_image_as_the_row_by_row_loop(monkeypatch):
    import pandas as pd

    images = pd.DataFrame({"image_id": ["a", "b", "c", "d"]})
    texts = pd.DataFrame({"caption": ["x0", "b1", "a1", "b2", "none", "a2"],
                          "image_id": ["x", "b", "a", "b", None, "a"]})
    monkeypatch.setattr(lossconf, "tables", lambda fp, name: (images, texts))
    caps, by_image = lossconf.captions_by_row("fp-caps", "any")
    first = {}                                      # the loop this replaced
    for r, iid in enumerate(texts["image_id"]):
        if iid is not None and iid not in first:
            first[iid] = caps[r]
    assert by_image == {r: first.get(iid, "") for r, iid in enumerate(images["image_id"])}
    assert by_image == {0: "a1", 1: "b1", 2: "", 3: ""}
    assert caps == texts["caption"].tolist()
