"""Issue 12, first renders at 1,000,000 rows: what the pages no longer redo.

* the store reads a version's tables and pairs them once per process, shared
  by every opener (a dataset replaced or a table altered on disk is read
  afresh; a caller changing its frame changes no other's);
* the Projections page's kernels (joint SVD, transform lab, intra-modal
  recovery) run on one BLAS / torch thread (``clipgeom.threads``), with the
  numbers of ``clipgeom.transforms`` called directly;
* the Search page's nearest-item searches and thumbnails, and the captions
  shown by Search and Conformity, against direct computations.
"""

import numpy as np
import pandas as pd
import pytest
import streamlit as st
import torch
from threadpoolctl import threadpool_info

from clipgeom import store, synthetic, transforms
from clipgeom.store import dataset as store_dataset
from dashboard import data, lossconf, proj


@pytest.fixture(autouse=True)
def _fresh_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    store_dataset.clear_shared()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
    store_dataset.clear_shared()


def _blas() -> list[int]:
    return sorted({int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"})


@pytest.fixture
def two_threads():
    """torch and BLAS at 2 threads (tests start BLAS at 1: conftest), restored after."""
    from threadpoolctl import threadpool_limits

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    with threadpool_limits(2):
        yield
    torch.set_num_threads(saved)


def _make(name="speed", n=12, d=8, seed=0, extra_caption=True):
    rng = np.random.default_rng(seed)
    img = (rng.normal(size=(n, d)) + 1).astype(np.float32)
    txt = (rng.normal(size=(n + 1, d)) - 1).astype(np.float32)
    ids = [f"im{i}" for i in range(n)]
    images = pd.DataFrame({"image_id": ids, "shade": np.arange(n, dtype=float)})
    tid = ids[::-1] + ([ids[3]] if extra_caption else [None])
    texts = pd.DataFrame({"text_id": [f"t{i}" for i in range(n + 1)],
                          "caption": [f"{name} caption {i}" for i in range(n + 1)],
                          "image_id": tid})
    store.create_dataset(name, img, txt, images, texts, overwrite=True)
    return img, txt, images, texts


# ---------------------------------------------------------------- store: read once
def test_tables_and_pairs_are_read_once_per_version(clipgeom_home, monkeypatch):
    _make()
    reads, pairings = [], []
    real_read, real_pair = store_dataset.pq.read_table, store_dataset.pair_rows
    monkeypatch.setattr(store_dataset.pq, "read_table",
                        lambda p, *a, **k: reads.append(str(p)) or real_read(p, *a, **k))
    monkeypatch.setattr(store_dataset, "pair_rows",
                        lambda *a: pairings.append(1) or real_pair(*a))
    a = store.open_dataset("speed")
    ii, tt = a.pairs()
    a.images, a.texts
    assert len(reads) == 2 and len(pairings) == 1
    b = store.open_dataset("speed")                   # another opener, same version
    assert b is not a
    pd.testing.assert_frame_equal(b.images, a.images)
    pd.testing.assert_frame_equal(b.texts, a.texts)
    i2, t2 = b.pairs()
    np.testing.assert_array_equal(i2, ii)
    np.testing.assert_array_equal(t2, tt)
    assert len(reads) == 2 and len(pairings) == 1    # nothing read or paired again
    # the pairing is the first caption of each image (texts name images in reverse)
    n = a.n_images
    np.testing.assert_array_equal(ii, np.arange(n))
    np.testing.assert_array_equal(tt, n - 1 - np.arange(n))


def test_a_caller_changing_its_frame_changes_no_other(clipgeom_home):
    _make()
    a = store.open_dataset("speed")
    a.images["shade"] = -1.0                          # a column replaced
    a.texts.loc[0, "caption"] = "changed"             # a value set in place
    a.pairs()[0][:] = -5                              # pairs are copies
    b = store.open_dataset("speed")
    assert (b.images["shade"].to_numpy() == np.arange(12)).all()
    assert b.texts["caption"].iloc[0] == "speed caption 0"
    assert (b.pairs()[0] >= 0).all()


def test_a_replaced_dataset_is_read_afresh(clipgeom_home):
    _make(seed=0)
    a = store.open_dataset("speed")
    before = a.texts["caption"].tolist(), a.pairs()
    _make(seed=1, extra_caption=False)               # overwritten: a new version
    a.texts                                           # the old object keeps its version
    b = store.open_dataset("speed")
    assert b.fingerprint != a.fingerprint
    assert b.texts["image_id"].iloc[-1] is None      # the new table, not the shared old one
    assert a.texts["image_id"].iloc[-1] == "im3"
    assert b.texts["caption"].tolist() == before[0]  # (same captions in both versions)
    np.testing.assert_array_equal(b.pairs()[0], before[1][0])


def test_a_table_altered_in_place_is_not_served_from_memory(clipgeom_home):
    from clipgeom.errors import DatasetError

    _make()
    a = store.open_dataset("speed")
    a.texts
    path = a.path / "texts.parquet"
    t = pd.read_parquet(path)
    t.loc[0, "caption"] = "edited after import"
    t.to_parquet(path)
    # the store notices the change at open (its sha256 no longer matches):
    # never the old frame from memory, never the edited one silently
    with pytest.raises(DatasetError, match="changed since it was imported"):
        store.open_dataset("speed").texts


# ---------------------------------------------------------------- dashboard tables
def test_lossconf_tables_are_the_stores_and_follow_a_replacement(clipgeom_home):
    _, _, images, texts = _make()
    fp = store.open_dataset("speed").fingerprint
    im, tx = lossconf.tables(fp, "speed")
    assert im["image_id"].tolist() == images["image_id"].tolist()
    assert im["shade"].tolist() == images["shade"].tolist()
    assert tx["caption"].tolist() == texts["caption"].tolist()
    _make(name="speed", n=5)                          # replaced: 5 images now
    fp2 = store.open_dataset("speed").fingerprint
    assert len(lossconf.tables(fp2, "speed")[0]) == 5


def test_captions_by_row_of_a_stored_dataset(clipgeom_home):
    _, _, images, texts = _make()
    fp = store.open_dataset("speed").fingerprint
    caps, by_image = lossconf.captions_by_row(fp, "speed")
    assert caps == texts["caption"].tolist()
    first = {}
    for r, iid in enumerate(texts["image_id"]):
        if iid is not None and iid not in first:
            first[iid] = caps[r]
    assert dict(by_image) == {r: first.get(iid, "") for r, iid in enumerate(images["image_id"])}


def test_thumbnails_are_the_stores(clipgeom_home):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 4)).astype(np.float32)
    from PIL import Image

    src = clipgeom_home / "src"
    src.mkdir()
    for i in (0, 2):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(src / f"t{i}.png")
    images = pd.DataFrame({"image_id": ["a", "b", "c"], "thumbnail": ["t0.png", None, "t2.png"]})
    texts = pd.DataFrame({"text_id": ["x"], "caption": ["c"], "image_id": ["a"]})
    store.create_dataset("thumbs", img, img[:1], images, texts, thumbs_dir=src)
    ds = store.open_dataset("thumbs")
    for r in range(3):
        assert lossconf.thumb("thumbs", r) == ds.thumb_path(r)
    assert lossconf.thumb("thumbs", 1) is None and lossconf.thumb("thumbs", 0) is not None


# ---------------------------------------------------------------- Projections: one thread
def _loaded(n=400, d=32, seed=5):
    syn = synthetic.two_shells(n, d, seed=seed)
    rows = np.arange(n)
    return data.Loaded(name="lab", image=np.asarray(syn.image, np.float32),
                       text=np.asarray(syn.text, np.float32), pair_image_rows=rows,
                       pair_text_rows=rows, fingerprint=f"lab-{n}-{d}-{seed}",
                       synthetic=True, model="none")


def test_transform_lab_runs_on_one_thread_with_the_direct_numbers(two_threads, monkeypatch):
    ld = _loaded()
    img, txt, _ = proj._paired(ld, proj.MAX_LAB_PAIRS)
    want = {m: transforms.evaluate_alignment(img, txt, m, k=8 if m == "whiten" else None,
                                             train_fraction=0.75, temperature=0.02)
            for m in transforms.METHODS}
    seen = []
    real = transforms.evaluate_alignment

    def spy(*a, **k):
        seen.append((torch.get_num_threads(), _blas()))
        return real(*a, **k)

    monkeypatch.setattr(transforms, "evaluate_alignment", spy)
    assert _blas() == [2] and torch.get_num_threads() == 2
    table = proj.alignment_table(ld, "whiten", 8, 0.75, 0.02)
    assert seen == [(1, [1])] * len(transforms.METHODS)
    assert _blas() == [2] and torch.get_num_threads() == 2    # put back afterwards
    for m, row in zip(transforms.METHODS, table.to_dict("records")):
        w = want[m]
        assert row["train loss"] == pytest.approx(w.train.loss, rel=1e-9)
        assert row["test loss"] == pytest.approx(w.test.loss, rel=1e-9)
        assert row["test acc i→t"] == w.test.accuracy_i2t
        assert row["test acc t→i"] == w.test.accuracy_t2i
        got = proj.alignment(ld.fingerprint, ld, m, 8, 0.75, 0.02)
        np.testing.assert_allclose(got["pos"], w.positive_cosines, rtol=1e-9)
        np.testing.assert_allclose(got["image_test"], w.image_test, rtol=1e-9, atol=1e-12)


def test_joint_svd_and_whitening_rank_run_on_one_thread(two_threads, monkeypatch):
    from clipgeom import projection

    ld = _loaded()
    seen = []
    real_svd, real_rank = projection.joint_svd_projection, transforms.whitening_rank

    def svd(*a, **k):
        seen.append(("svd", _blas()))
        return real_svd(*a, **k)

    def rank(*a, **k):
        seen.append(("rank", _blas()))
        return real_rank(*a, **k)

    monkeypatch.setattr(projection, "joint_svd_projection", svd)
    monkeypatch.setattr(transforms, "whitening_rank", rank)
    proj.joint(ld.fingerprint, ld, False, True)
    proj.lab_sizes(ld, 0.8)
    res = proj.alignment(ld.fingerprint, ld, "none", 8, 0.8, 0.01)
    proj.joint_of(ld.fingerprint, "raw", res["image_raw"], res["text_raw"])
    assert seen == [("svd", [1]), ("rank", [1]), ("svd", [1])]
    assert _blas() == [2]


# ---------------------------------------------------------------- pairing
def _first_caption_loop(image_ids, text_image_ids):
    """The definition, row by row: per image (in image order), the first text
    row naming it; images without one left out."""
    first = {}
    for r, iid in enumerate(text_image_ids):
        if isinstance(iid, str) and iid not in first:
            first[iid] = r
    rows = [(i, first[iid]) for i, iid in enumerate(image_ids) if iid in first]
    return (np.array([i for i, _ in rows], dtype=np.int64),
            np.array([t for _, t in rows], dtype=np.int64))


@pytest.mark.parametrize("as_series", [False, True])
def test_pair_rows_equals_the_row_by_row_definition(as_series):
    from clipgeom.store.files import pair_rows

    rng = np.random.default_rng(4)
    ids = [f"i{k}" for k in rng.permutation(300)]
    tids = [ids[j] if j < 300 else (None if j % 2 else float("nan"))
            for j in rng.integers(0, 380, 900)]
    cases = [(ids, tids), (ids, []), ([], []), (["a", "None", "nan"], [None, "None", "nan"]),
             (ids, [None] * 4)]
    for a, b in cases:
        if as_series:
            a = pd.Series(a, dtype="str")
            b = pd.Series(b, dtype=object)
        got = pair_rows(a, b)
        want = _first_caption_loop(list(a), list(b))
        for g, w in zip(got, want):
            assert g.dtype == np.int64
            np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------- Conformity: two datasets
def test_two_datasets_compared_from_the_kept_rows_equal_conformity_kl(clipgeom_home,
                                                                      monkeypatch):
    from clipgeom import conformity, report

    rng = np.random.default_rng(9)
    a_img = (rng.normal(size=(220, 16)) + 1).astype(np.float32)
    a_txt = (rng.normal(size=(220, 16)) - 1).astype(np.float32)
    ds = store.create_dataset("kept", a_img, a_txt)
    report.stored_report(ds, temperature=report.default_temperature(ds),
                         max_pairs=report.DEFAULT_MAX_PAIRS)
    b_img = (rng.normal(size=(90, 16)) * 2 + 0.5).astype(np.float32)
    store.create_dataset("plain", b_img, b_img[:40] - 1)      # no report: computed
    a, b = data.open_dataset("kept"), data.open_dataset("plain")
    calls = []
    real = conformity.exact_conformity
    monkeypatch.setattr(conformity, "exact_conformity",
                        lambda x, *k, **kw: calls.append(x.shape[0]) or real(x, *k, **kw))
    for mod, bins in (("image", 30), ("text", 17)):
        got = lossconf.compare_datasets(a.fingerprint, a, b.fingerprint, b, mod, bins)
        want = conformity.conformity_kl(a.image if mod == "image" else a.text,
                                        b.image if mod == "image" else b.text, bins=bins)
        np.testing.assert_allclose(got.edges, want.edges, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got.first, want.first, atol=1e-12)
        np.testing.assert_allclose(got.second, want.second, atol=1e-12)
        assert got.kl == pytest.approx(want.kl, rel=1e-6)
    # "kept" was read from its stored rows, "plain" (no report) computed; the
    # direct conformity_kl calls above add one call per dataset each
    assert [c for c in calls if c == 220] == [220, 220]
    assert [c for c in calls if c != 220] == [90, 90, 40, 40]


# ---------------------------------------------------------------- Search: interpolation
def test_both_paths_in_one_search_per_target_with_the_same_nearest_items(clipgeom_home):
    from clipgeom import index, interpolate

    rng = np.random.default_rng(2)
    img = (rng.normal(size=(600, 16)) + 0.7).astype(np.float32)
    txt = (rng.normal(size=(500, 16)) - 0.7).astype(np.float32)
    ds = store.create_dataset("paths", img, txt)
    for m in ("image", "text"):
        assert index.build_index(ds, m, kind="ivf", force=True).kind == "ivf"
    calls = []
    real = index.search

    def spy(ds_, modality, q, k=10, **kw):
        calls.append((modality, len(q), kw.get("batch")))
        return real(ds_, modality, q, k, **kw)

    thetas = np.linspace(0, 1, 7)
    mean = img.astype(np.float64).mean(0)
    exclude = {"image": [3, 8], "text": [3]}
    targets = {m: interpolate.index_nearest(ds, m) for m in ("image", "text")}
    import unittest.mock as mock

    with mock.patch.object(index, "search", spy):
        got = interpolate.compare_paths(img[3], img[8], mean, thetas, 1.0, targets,
                                        exclude=exclude)
    # one list-by-list search per target for both paths' 14 points
    assert sorted(calls) == [("image", 14, True), ("text", 14, True)]
    for name, pts in (("slerp", interpolate.slerp(img[3], img[8], thetas)),
                      ("vslerp", interpolate.vslerp(img[3], img[8], thetas, 1.0, mean))):
        np.testing.assert_allclose(got[name]["points"], pts)
        for m, x in (("image", img), ("text", txt)):
            # the same IVF lists searched point by point (faiss's own search)
            want = real(ds, m, pts, 1 + len(exclude[m]), batch=False)
            for i in range(len(pts)):
                keep = [(r, c) for r, c in zip(want.rows[i], want.scores[i])
                        if r not in exclude[m]][0]
                assert got[name][f"nearest_{m}"][i] == keep[0]
                assert got[name][f"nearest_{m}_cos"][i] == pytest.approx(keep[1], abs=1e-5)
            # ... and against an exact scan, the cosines agree wherever the
            # approximate index found the true nearest row
            rows, cos = interpolate.nearest_cosine(pts, x, 1, exclude=exclude[m])
            same = rows[:, 0] == got[name][f"nearest_{m}"]
            np.testing.assert_allclose(got[name][f"nearest_{m}_cos"][same], cos[same, 0],
                                       atol=1e-5)
            np.testing.assert_array_equal(got[name][f"nearest_{m}_repeat"],
                                          interpolate.repeats(got[name][f"nearest_{m}"]))


def test_both_paths_scanned_once_per_target_without_an_index():
    from clipgeom import interpolate

    rng = np.random.default_rng(3)
    img, txt = rng.normal(size=(300, 8)) + 1, rng.normal(size=(200, 8)) - 1
    thetas = np.linspace(0, 1, 5)
    mean = img.mean(0)
    got = interpolate.compare_paths(img[0], img[1], mean, thetas, 0.5,
                                    {"image": img, "text": txt}, exclude={"image": [0, 1]})
    for name, pts in (("slerp", interpolate.slerp(img[0], img[1], thetas)),
                      ("vslerp", interpolate.vslerp(img[0], img[1], thetas, 0.5, mean))):
        for m, x, ex in (("image", img, {0, 1}), ("text", txt, set())):
            u = x / np.linalg.norm(x, axis=1, keepdims=True)
            cos = (pts / np.linalg.norm(pts, axis=1, keepdims=True)) @ u.T
            cos[:, list(ex)] = -np.inf
            np.testing.assert_array_equal(got[name][f"nearest_{m}"], cos.argmax(1))
            np.testing.assert_allclose(got[name][f"nearest_{m}_cos"], cos.max(1), atol=1e-12)


# ---------------------------------------------------------------- Projections: hover texts
def test_hover_texts_are_one_shared_read_only_copy(clipgeom_home):
    _, _, images, texts = _make()
    ld = data.open_dataset("speed")
    a = proj.item_text(ld.fingerprint, ld)
    b = proj.item_text(ld.fingerprint, ld)
    assert a["image_ids"] is b["image_ids"] and a["captions"] is b["captions"]
    assert a["image_ids"].tolist() == images["image_id"].tolist()
    assert a["captions"].tolist() == texts["caption"].tolist()
    with pytest.raises(ValueError):
        a["captions"][0] = "changed"


def test_the_shared_tables_are_bounded_least_recently_used_first(clipgeom_home, monkeypatch):
    for k in range(3):
        _make(name=f"lru{k}", n=10, seed=k)
    monkeypatch.setattr(store_dataset, "_SHARED_MAX_ROWS", 50)    # two versions' tables
    reads = []
    real_read = store_dataset.pq.read_table
    monkeypatch.setattr(store_dataset.pq, "read_table",
                        lambda p, *a, **k: reads.append(p.parent.parent.name)
                        or real_read(p, *a, **k))

    def visit(name):
        ds = store.open_dataset(name)
        ds.images, ds.texts

    for name in ("lru0", "lru1", "lru0", "lru2", "lru0", "lru1"):
        visit(name)
    # 10 + 11 rows a version: lru2 evicts lru1 (least recently used), not lru0
    assert reads == ["lru0"] * 2 + ["lru1"] * 2 + ["lru2"] * 2 + ["lru1"] * 2
    rows = sum(store_dataset._rows(v) for v in store_dataset._SHARED.values())
    assert rows <= 50
