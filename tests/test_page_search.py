"""The Search & interpolation page through AppTest, results checked by brute force."""

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import brute
from apptest_helpers import (arr, change_every_control, errors, figures, markup_leaks,
                             shown_as_text)
from clipgeom import embed, geometry, ingest, interpolate, job, search, store
from tiny_data import MARKUP, USER_MARKUP, tiny_dataset

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
    # image results are labelled by their own id and score, never by a caption
    ids = ds.images["image_id"].astype(str).to_numpy()
    assert res["image id"].tolist() == ids[_top(q, ds.image_emb, 12)].tolist()
    labels = [t.value for t in at.text if t.value.startswith("#")]
    top = _top(q, ds.image_emb, 12)
    assert labels[0] == f"#1 · image {ids[top[0]]} · {res['score'].iloc[0]:.3f}"
    assert not any("circle" in lab for lab in labels)        # no caption in the labels
    # among the captions: each result shows the caption row that scored
    at.radio(key="search_text_target").set_value("text").run()
    res = _table(at, "matched caption")[0]
    want = _top(q, ds.text_emb, 12)
    assert res["row"].tolist() == want
    assert res["matched caption"].tolist() == ds.texts["caption"].to_numpy()[want].tolist()


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
    # the endpoints (images 0, 1) and every caption of them are left out of the
    # nearest items, so the galleries show what lies ALONG each path
    ends_ids = set(ds.images["image_id"].iloc[[0, 1]])
    left_out = np.flatnonzero(ds.texts["image_id"].isin(ends_ids).to_numpy())
    assert len(left_out) == 3                     # img0 has two captions
    conf = figures(at)[0]["data"]
    for j, (key, pts) in enumerate((("slerp", interpolate.slerp(a, b, th)),
                                    ("vslerp", interpolate.vslerp(a, b, th, 1.0, m)))):
        u = brute.unit(pts)
        np.testing.assert_allclose(paths[f"{key} cos(m, x)"], u @ brute.unit(m[None])[0],
                                   atol=1e-6)
        dist = np.linalg.norm(pts - m, axis=1)
        np.testing.assert_allclose(paths[f"{key} ||x - m||"], dist, rtol=1e-6)
        # the figure plots both: cos(m, x) (left) and ||x - m|| (right) per path
        np.testing.assert_allclose(arr(conf[2 * j]["y"]), u @ brute.unit(m[None])[0],
                                   atol=1e-6)
        np.testing.assert_allclose(arr(conf[2 * j + 1]["y"]), dist, rtol=1e-6)
        cos_t = u @ brute.unit(np.asarray(ds.text_emb, float)).T
        cos_t[:, left_out] = -np.inf
        caps = ds.texts["caption"].to_numpy()[cos_t.argmax(1)]
        assert paths[f"{key} nearest caption"].tolist() == caps.tolist()
        cos_i = u @ brute.unit(img).T
        cos_i[:, [0, 1]] = -np.inf
        assert paths[f"{key} nearest image row"].tolist() == cos_i.argmax(1).tolist()
    # the gallery marks a repeated nearest image instead of showing it again
    near = paths["slerp nearest image row"].tolist()
    n_rep = sum(near[i] == near[i - 1] for i in range(1, len(near)))
    marks = [t.value for t in at.text if "same image as the previous" in t.value]
    n_rep_v = sum(paths["vslerp nearest image row"].iloc[i]
                  == paths["vslerp nearest image row"].iloc[i - 1] for i in range(1, len(near)))
    assert len(marks) == n_rep + n_rep_v
    # unticking "leave out the endpoints" shows them at both ends again
    at.checkbox(key="interp_leave_out").uncheck().run()
    paths = _table(at, "theta")[0]
    assert paths["slerp nearest image row"].iloc[0] == 0
    assert paths["slerp nearest image row"].iloc[-1] == 1
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


def test_user_strings_are_shown_literally(clipgeom_home, tmp_path):
    """Captions and ids with markdown (bold, a link, LaTeX) appear verbatim as
    plain text, and no markdown-rendering element carries them unescaped."""
    tiny_dataset(tmp_path, d=16, thumbs="all", snapshots=True)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["dataset"] = "tiny20"
    at.run()
    at.radio(key="search_item_mod").set_value("text").run()          # query: caption 0
    assert not errors(at), errors(at)
    assert shown_as_text(at, MARKUP)
    assert any(MARKUP in t.value for t in at.text if t.value.startswith("query:"))
    _no_markup(at)
    at.radio(key="search_item_target").set_value("text").run()
    at.radio(key="interp_mod").set_value("text").run()
    at.number_input(key="interp_b_text").set_value(3).run()          # image 3: markup id
    assert not errors(at), errors(at)
    _no_markup(at)
    assert any("end: caption 3" == t.value for t in at.text)


def _no_markup(at):
    assert not markup_leaks(at, USER_MARKUP), markup_leaks(at, USER_MARKUP)


def _search_page_controls(at, check=None):
    keys = change_every_control(at, texts={"search_text": "a red circle"}, check=check)
    assert "interp_alpha" in keys and "blur_scale" in keys and "search_item_mod" in keys
    return keys


def test_every_control_on_a_20_pair_dataset(clipgeom_home, tmp_path):
    tiny_dataset(tmp_path, d=16, thumbs="all", snapshots=True)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["dataset"] = "tiny20"
    at.run()
    assert len(figures(at)) == 2
    keys = _search_page_controls(at, check=_no_markup)
    assert "interp_leave_out" in keys and "search_k" in keys


@pytest.mark.skipif(not (ROOT / "assets" / "demo" / "manifest.json").exists(),
                    reason="the bundled demo is not built")
def test_every_control_on_the_demo(bundled_home):
    at = AppTest.from_file(PAGE, default_timeout=300).run()
    assert at.session_state["dataset"] == "demo"
    keys = _search_page_controls(at)
    assert "search_text" in keys and "search_text_target" in keys
    # a query image through the demo model, among images then captions
    from PIL import Image, ImageDraw
    import io
    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).ellipse([8, 8, 40, 40], fill="red")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    at.file_uploader(key="search_image").set_value(("**q**.png", buf.getvalue(),
                                                    "image/png")).run()
    assert not errors(at), errors(at)
    assert any(t.value == "**q**.png" for t in at.text)
    assert any("image '**q**.png'" in t.value for t in at.text)
