"""clipgeom.index against brute-force numpy cosine rankings."""

import json
import os
import shutil

import numpy as np
import pytest

from brute import unit
from clipgeom import index as ix
from clipgeom import store
from clipgeom.errors import InputError


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "ASSETS_DIR", tmp_path / "assets")  # no bundled data
    ix.clear_cache()
    yield
    ix.clear_cache()


def offset_gauss(rng, n, d, shift=0.0):
    """Offset Gaussian with a long-tailed per-feature spread (CLIP-like)."""
    sigma = np.arange(1, d + 1) ** -0.5
    m = np.random.default_rng(99).standard_normal(d) * 0.3 + shift
    return (rng.standard_normal((n, d)) * sigma * 3 + m).astype(np.float32)


def brute_topk(queries, base, k, exclude=None):
    """(scores, rows) of the k largest cosines, float64, by the full matrix."""
    c = unit(queries) @ unit(base).T
    if exclude is not None:
        c[np.arange(len(c)), exclude] = -np.inf
    rows = np.argsort(-c, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(c, rows, axis=1), rows


def assert_same_ranking(res, scores, rows):
    np.testing.assert_allclose(res.scores, scores, atol=1e-5)
    for got, want, s in zip(res.rows, rows, scores):
        if np.all(np.diff(s) < -1e-5):        # no near-ties: identical order
            np.testing.assert_array_equal(got, want)
        else:                                  # ties: same set of rows
            assert set(got.tolist()) == set(want.tolist())


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture
def small(clipgeom_home, rng):
    img = offset_gauss(rng, 300, 32)
    txt = offset_gauss(rng, 250, 32, shift=0.5)   # a "modality gap"
    return store.create_dataset("small", img, txt), img, txt


def test_exact_search_equals_brute_force_both_modalities(small, rng):
    ds, img, txt = small
    q = offset_gauss(rng, 20, 32) * 3.0            # raw scale must not matter
    for modality, base in (("image", img), ("text", txt)):
        res = ix.search(ds, modality, q, k=10)
        assert res.rows.shape == (20, 10) and res.rows.dtype == np.int64
        assert res.kind == "flat" and res.exact
        assert_same_ranking(res, *brute_topk(q, base, 10))
    # a single [d] vector is one query
    one = ix.search(ds, "image", q[3], k=5)
    assert one.rows.shape == (1, 5)
    np.testing.assert_array_equal(one.rows[0], brute_topk(q[3:4], img, 5)[1][0])


def test_search_item_cross_and_same_modality(small):
    ds, img, txt = small
    # text -> image (cross-modal): nothing is excluded
    res = ix.search_item(ds, "text", 7, "image", k=10)
    assert_same_ranking(res, *brute_topk(txt[7:8], img, 10))
    # image -> text
    res = ix.search_item(ds, "image", 11, "text", k=6)
    assert_same_ranking(res, *brute_topk(img[11:12], txt, 6))
    # image -> image leaves the item itself out
    res = ix.search_item(ds, "image", 42, "image", k=10)
    assert 42 not in res.rows[0] and res.rows.shape == (1, 10)
    assert_same_ranking(res, *brute_topk(img[42:43], img, 10, exclude=[42]))
    # ... unless asked to keep it: then it is first, cosine 1
    res = ix.search_item(ds, "text", 5, "text", k=3, exclude_self=False)
    assert res.rows[0, 0] == 5 and res.scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_forced_approximate_path_recall(clipgeom_home, rng, monkeypatch):
    n, d = 5000, 64
    img = offset_gauss(rng, n, d)
    txt = offset_gauss(rng, 1500, d, shift=0.5)
    ds = store.create_dataset("big", img, txt)
    monkeypatch.setattr(ix, "EXACT_LIMIT", 1000)
    info = ix.build_index(ds, "image")
    assert info.kind == "ivf" and not info.exact
    p = info.params
    assert p["nlist"] == ix.nlist_for(n) and 1 <= p["nprobe"] <= p["nlist"]
    assert p["calibration_recall"] >= ix.CALIBRATION_TARGET
    assert p["calibration_queries"] == 2 * ix.CALIBRATION_QUERIES
    q = offset_gauss(np.random.default_rng(7), 200, d)
    res = ix.search(ds, "image", q, k=10)
    assert res.kind == "ivf"
    _, truth = brute_topk(q, img, 10)
    assert recall(res.rows, truth) >= 0.95
    # scores are still exact cosines of the rows returned
    c = unit(q) @ unit(img).T
    np.testing.assert_allclose(res.scores, np.take_along_axis(c, res.rows, 1), atol=1e-5)
    # metadata on disk; a fresh process (empty cache) reads it back with nprobe
    meta = json.loads((ds.index_dir / "image.json").read_text())
    assert meta["kind"] == "ivf" and meta["params"]["nprobe"] == p["nprobe"]
    assert meta["fingerprint"] == ds.fingerprint and meta["n"] == n and meta["dim"] == d
    assert meta["faiss_version"] and meta["built"].endswith("Z")
    ix.clear_cache()
    index, info2 = ix.load_index(ds, "image")
    assert index.nprobe == p["nprobe"] and info2 == info
    # the threshold decides: text has 1500 > 1000 rows too, kind= overrides
    assert ix.build_index(ds, "text").kind == "ivf"
    assert ix.build_index(ds, "text", kind="flat").kind == "flat"


def test_fingerprint_change_rebuilds(clipgeom_home, rng):
    img1, txt1 = offset_gauss(rng, 200, 16), offset_gauss(rng, 120, 16)
    ds1 = store.create_dataset("fp", img1, txt1)
    ix.search(ds1, "image", img1[:3], k=5)
    old_index = (ds1.index_dir / "image.faiss").read_bytes()
    old_meta = (ds1.index_dir / "image.json").read_text()

    img2, txt2 = offset_gauss(rng, 180, 16), offset_gauss(rng, 90, 16)
    ds2 = store.create_dataset("fp", img2, txt2, overwrite=True)
    # a new version: its own folder, so the old index is not even seen ...
    assert ds2.fingerprint != ds1.fingerprint and ds2.path != ds1.path
    assert not (ds2.index_dir / "image.faiss").exists()
    # stale files of the old arrays in place (as if copied or left behind)
    (ds2.index_dir / "image.faiss").write_bytes(old_index)
    (ds2.index_dir / "image.json").write_text(old_meta)
    q = offset_gauss(rng, 10, 16)
    res = ix.search(ds2, "image", q, k=8)
    assert_same_ranking(res, *brute_topk(q, img2, 8))
    meta = json.loads((ds2.index_dir / "image.json").read_text())
    assert meta["fingerprint"] == ds2.fingerprint and meta["n"] == 180


def test_corrupt_index_file_is_rebuilt(small, rng):
    ds, img, _ = small
    q = offset_gauss(rng, 5, 32)
    want = brute_topk(q, img, 10)
    info = ix.build_index(ds, "image")
    path = ds.index_dir / "image.faiss"
    garbage = [os.urandom(path.stat().st_size),      # same size, random bytes
               path.read_bytes()[:100],              # truncated
               b""]                                  # empty
    for bad in garbage:
        ix.clear_cache()
        path.write_bytes(bad)
        res = ix.search(ds, "image", q, k=10)
        assert_same_ranking(res, *want)
        meta = json.loads((ds.index_dir / "image.json").read_text())
        assert meta["file_bytes"] == path.stat().st_size == info.file_bytes
    # garbage whose size and sha256 the metadata vouches for: faiss's reader
    # fails on it, which must also end in a rebuild, not a crash
    ix.clear_cache()
    bad = b"IxF?" + os.urandom(4096)
    path.write_bytes(bad)
    meta = json.loads((ds.index_dir / "image.json").read_text())
    meta["file_bytes"], meta["file_sha256"] = len(bad), ix._sha256(path)[0]
    (ds.index_dir / "image.json").write_text(json.dumps(meta))
    assert_same_ranking(ix.search(ds, "image", q, k=10), *want)
    assert path.stat().st_size == info.file_bytes
    # corrupt metadata and a missing index file: rebuilt too
    ix.clear_cache()
    (ds.index_dir / "image.json").write_text("{not json")
    assert_same_ranking(ix.search(ds, "image", q, k=10), *want)
    ix.clear_cache()
    path.unlink()
    assert_same_ranking(ix.search(ds, "image", q, k=10), *want)


def test_build_is_skipped_when_valid_and_cache_is_reused(small, monkeypatch):
    ds, img, _ = small
    info = ix.build_index(ds, "text")
    calls = []
    real = ix.build_faiss_index
    monkeypatch.setattr(ix, "build_faiss_index",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert ix.build_index(ds, "text") == info and not calls
    a, _ = ix.load_index(ds, "text")
    monkeypatch.setattr(ix.faiss, "read_index", lambda *_: pytest.fail("reloaded"))
    b, _ = ix.load_index(ds, "text")
    assert a is b
    ix.build_index(ds, "text", force=True)
    assert len(calls) == 1


def test_k_larger_than_n_pads(clipgeom_home, rng):
    img, txt = offset_gauss(rng, 40, 8), offset_gauss(rng, 5, 8)
    ds = store.create_dataset("tiny", img, txt)
    q = offset_gauss(rng, 3, 8)
    res = ix.search(ds, "text", q, k=8)
    assert res.rows.shape == (3, 8)
    assert (res.rows[:, 5:] == -1).all() and np.isneginf(res.scores[:, 5:]).all()
    scores, rows = brute_topk(q, txt, 5)
    np.testing.assert_allclose(res.scores[:, :5], scores, atol=1e-5)
    assert all(set(a) == set(b) for a, b in zip(res.rows[:, :5], rows))
    # the approximate index pads the same way, query by query and list by list
    assert ix.build_index(ds, "text", kind="ivf", force=True).kind == "ivf"
    many = offset_gauss(rng, ix.IVF_BATCH_MIN + 6, 8)
    for qs in (q, many):
        res = ix.search(ds, "text", qs, k=8)
        assert res.kind == "ivf" and (res.rows[:, 5:] == -1).all()
        assert np.isneginf(res.scores[:, 5:]).all()
        scores, rows = brute_topk(qs, txt, 5)
        np.testing.assert_allclose(res.scores[:, :5], scores, atol=1e-5)
    # same-modality item search with k >= n: all other rows, then padding
    r = ix.search_item(ds, "text", 2, "text", k=6)
    assert sorted(r.rows[0, :4].tolist()) == [0, 1, 3, 4] and (r.rows[0, 4:] == -1).all()


def test_bad_queries_raise_input_error(small):
    ds, img, _ = small
    good = img[0]
    cases = [
        (np.ones(31), "31 features"),
        (np.ones((2, 33)), "33 features"),
        (np.where(np.arange(32) == 3, np.nan, 1.0), "NaN"),
        (np.vstack([good, np.zeros(32)]), "all-zero vector in row 1"),
        (np.ones((2, 2, 32)), "expected a vector"),
        (["a"] * 32, "expected numbers"),
        (np.ones((0, 32)), "at least 1 rows"),
    ]
    for bad, words in cases:
        with pytest.raises(InputError, match=words):
            ix.search(ds, "image", bad)
    with pytest.raises(InputError, match="modality"):
        ix.search(ds, "audio", good)
    for k in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="k must"):
            ix.search(ds, "image", good, k=k)
    with pytest.raises(InputError, match="out of range"):
        ix.search_item(ds, "text", 250, "image")
    with pytest.raises(InputError, match="target_modality"):
        ix.search_item(ds, "text", 0, "video")
    with pytest.raises(InputError, match="kind"):
        ix.build_index(ds, "image", kind="hnsw")


def test_zero_and_nonfinite_rows_are_indexed_as_zero(rng):
    x = offset_gauss(rng, 300, 16)
    x[5] = 0.0
    x[9, 3] = np.nan
    for kind in ("flat", "ivf"):
        index, params = ix.build_faiss_index(x, kind)
        assert params["zero_rows"] == 2 and index.ntotal == 300
        q = unit(x[:4]).astype(np.float32)
        scores, rows = index.search(q, 300)
        got = dict(zip(rows[0].tolist(), scores[0].tolist()))
        if 5 in got:
            assert got[5] == 0.0 and got.get(9, 0.0) == 0.0
        assert np.isfinite(scores).all()
    assert not np.isnan(x[5]).any() and np.isnan(x[9, 3])   # input untouched


def test_progress_and_thread_settings(small):
    ds, _, _ = small
    seen = []
    ix.build_index(ds, "image", kind="ivf", progress=lambda d, t, s: seen.append(s))
    assert {"train", "add", "calibrate"} <= set(seen)
    assert os.environ.get("OMP_WAIT_POLICY")
    assert 1 <= ix.THREADS <= 8


def test_read_only_dataset_index_lives_outside_assets(clipgeom_home, tmp_path, rng,
                                                      monkeypatch):
    img, txt = offset_gauss(rng, 60, 8), offset_gauss(rng, 40, 8)
    made = store.create_dataset("bundled", img, txt)
    assets = tmp_path / "assets"
    assets.mkdir()
    monkeypatch.setattr(store, "ASSETS_DIR", assets)
    user_folder = made.path.parent          # datasets/<name>/
    made.close()
    shutil.move(str(made.path), str(assets / "bundled"))   # its version, as bundled
    shutil.rmtree(user_folder)
    ds = store.open_dataset("bundled")
    assert ds.read_only and ds.path == assets / "bundled"
    res = ix.search_item(ds, "image", 0, "text", k=4)
    assert_same_ranking(res, *brute_topk(img[:1], txt, 4))
    assert (ds.index_dir / "text.faiss").is_file()
    assert assets not in ds.index_dir.parents
    assert not list((assets / "bundled" / "index").iterdir())


def test_index_shipped_inside_a_read_only_dataset_is_used_in_place(
        clipgeom_home, tmp_path, rng, monkeypatch):
    img, txt = offset_gauss(rng, 60, 8), offset_gauss(rng, 40, 8)
    made = store.create_dataset("bundled", img, txt)
    ix.build_index(made, "text")                    # built before it is bundled
    assets = tmp_path / "assets"
    assets.mkdir()
    monkeypatch.setattr(store, "ASSETS_DIR", assets)
    user_folder = made.path.parent          # datasets/<name>/
    made.close()
    shutil.move(str(made.path), str(assets / "bundled"))   # its version, as bundled
    shutil.rmtree(user_folder)
    ix.clear_cache()
    ds = store.open_dataset("bundled")
    res = ix.search_item(ds, "image", 0, "text", k=4)
    assert_same_ranking(res, *brute_topk(img[:1], txt, 4))
    assert not (ds.index_dir / "text.faiss").exists()      # nothing rebuilt in home
    # a damaged shipped index is ignored and rebuilt in home, assets untouched
    shipped = assets / "bundled" / "index" / "text.faiss"
    before = shipped.read_bytes()
    shipped.write_bytes(before[:-8])
    ix.clear_cache()
    res = ix.search_item(store.open_dataset("bundled"), "image", 0, "text", k=4)
    assert_same_ranking(res, *brute_topk(img[:1], txt, 4))
    assert (ds.index_dir / "text.faiss").is_file()


def test_ivf_batch_search_equals_faiss_search(rng):
    x = offset_gauss(rng, 3000, 32)
    index, params = ix.build_faiss_index(x, "ivf")
    q = offset_gauss(np.random.default_rng(3), 150, 32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    for nprobe in (1, params["nprobe"], params["nlist"]):
        index.nprobe = nprobe
        for k in (1, 10, 40):
            D1, I1 = index.search(q, k)
            D2, I2 = ix.ivf_batch_search(index, q, k)
            np.testing.assert_allclose(D2, D1, atol=1e-5)
            assert (I1 == I2).mean() > 0.99          # order may differ at ties
            assert all(set(a) == set(b) for a, b in zip(I1, I2))
    # all lists probed = exact search
    _, truth = brute_topk(q, x, 10)
    assert recall(ix.ivf_batch_search(index, q, 10)[1], truth) == 1.0
