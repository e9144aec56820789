"""The Search & interpolation page through AppTest, results checked by brute force."""

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import brute
from apptest_helpers import arr, figures
from clipgeom import embed, geometry, ingest, interpolate, job, search, store

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "6_Search_and_interpolation.py")


@pytest.fixture
def embedded(clipgeom_home, image_folder, tiny_model_config, checkpoint):
    root, caps = image_folder
    spec = embed.ModelSpec(str(tiny_model_config), checkpoint=str(checkpoint))
    return job.run("shapes", ingest.from_folder(root, caps), spec,
                   job.JobOptions(workers=0, build_index=False))


def _table(at, column):
    return [df.value for df in at.dataframe if column in df.value.columns]


def _top(query, x, k):
    return list(np.argsort(-(brute.unit(np.asarray(x, float)) @ brute.unit(query[None])[0]),
                           kind="stable")[:k])


def test_search_by_text_and_item_match_brute_force(embedded):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["dataset"] = "shapes"
    at.run()
    assert not at.exception and not at.error
    # from an item: image row 0 among the other images, then among the captions
    res = _table(at, "score")[0]
    ds = store.open_dataset("shapes")
    img0 = np.asarray(ds.image_emb[0], float)
    assert res["row"].tolist() == _top(img0, ds.image_emb, 12)[1:]      # itself left out
    at.radio(key="search_item_target").set_value("text").run()
    res = _table(at, "score")[0]
    assert res["row"].tolist() == _top(img0, ds.text_emb, 12)
    # by text, among the images
    at.text_input(key="search_text").set_value("a red circle").run()
    assert not at.exception and not at.error
    res = _table(at, "score")[0]
    q = search.embed_query(ds, text="a red circle").astype(float)
    assert res["row"].tolist() == _top(q, ds.image_emb, 12)
    np.testing.assert_allclose(res["score"].to_numpy(),
                               np.sort(brute.unit(np.asarray(ds.image_emb, float))
                                       @ brute.unit(q[None])[0])[::-1][:12], atol=1e-5)


def test_interpolation_and_blur(embedded):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["dataset"] = "shapes"
    at.run()
    ds = store.open_dataset("shapes")
    paths = _table(at, "theta")[0]
    img = np.asarray(ds.image_emb, float)
    a, b = img[0], img[1]
    th = paths["theta"].to_numpy()
    m = img.mean(0)
    for key, pts in (("slerp", interpolate.slerp(a, b, th)),
                     ("vslerp", interpolate.vslerp(a, b, th, 1.0, m))):
        u = brute.unit(pts)
        np.testing.assert_allclose(paths[f"{key} cos(m, x)"], u @ brute.unit(m[None])[0],
                                   atol=1e-6)
        best = (u @ brute.unit(np.asarray(ds.text_emb, float)).T).argmax(1)
        caps = ds.texts["caption"].to_numpy()[best]
        assert paths[f"{key} nearest caption"].tolist() == caps.tolist()
    # the blur figure follows its slider (Fig. 7)
    figs = figures(at)
    blur_before = arr(figs[-1]["data"][0]["x"])
    want = geometry.blur_experiment([10, 5, 5], n=1000, dim=512, seed=0).cos_to_mean
    np.testing.assert_allclose(np.sort(blur_before), np.sort(want), atol=1e-9)
    at.slider(key="blur_scale").set_value(0.0).run()
    assert not at.exception
    blur_after = arr(figures(at)[-1]["data"][0]["x"])
    assert abs(blur_after.mean()) < 0.2 < blur_before.mean()


def test_page_on_synthetic_data_explains_search(clipgeom_home):
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception and not at.error
    assert any("pick a stored dataset" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 2          # interpolation + blur
