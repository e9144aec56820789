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


# ---------------------------------------------------------------- blocks and disk


def _memmap(tmp_path, x, name="x.npy"):
    np.save(tmp_path / name, x)
    return np.load(tmp_path / name, mmap_mode="r")


def test_row_reader_reads_a_memmap_without_touching_it(tmp_path, rng):
    x = offset_gauss(rng, 1000, 12)
    m = _memmap(tmp_path, x)
    with ix._RowReader(m) as r:
        assert r._fd is not None                 # read with preadv, not via the map
        np.testing.assert_array_equal(r.block(0, 1000), x)
        np.testing.assert_array_equal(r.block(137, 560), x[137:560])
        rows = np.array([0, 1, 2, 9, 500, 501, 999])
        np.testing.assert_array_equal(r.take(rows), x[rows])
    # a row range of the map, and another dtype, and a plain array
    with ix._RowReader(m[100:700]) as r:
        assert r._fd is not None
        np.testing.assert_array_equal(r.block(5, 50), x[105:150])
    h = _memmap(tmp_path, x.astype(np.float16), "h.npy")
    with ix._RowReader(h) as r:
        got = r.block(3, 90)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, x.astype(np.float16)[3:90].astype(np.float32))
    with ix._RowReader(m[:, :5]) as r:            # not row-contiguous: sliced
        assert r._fd is None
        np.testing.assert_array_equal(r.block(0, 10), x[:10, :5])
    b = r.block(0, 4)
    b[:] = 0                                      # a copy: the source is untouched
    assert np.array_equal(m[:4, :5], x[:4, :5])


def test_flat_index_built_in_tiny_blocks_equals_brute_force(tmp_path, rng, monkeypatch):
    x = offset_gauss(rng, 777, 24)
    m = _memmap(tmp_path, x)
    q = offset_gauss(np.random.default_rng(5), 30, 24)
    qn = unit(q).astype(np.float32)
    for chunk in (1, 7, 100, 10_000):
        monkeypatch.setattr(ix, "CHUNK", chunk)
        index, params = ix.build_faiss_index(m, "flat")
        assert index.ntotal == 777 and params["block_rows"] == chunk
        D, I = index.search(qn, 10)
        res = ix.SearchResult(scores=D, rows=I, modality="image", kind="flat")
        assert_same_ranking(res, *brute_topk(q, x, 10))


def test_ivf_built_in_tiny_blocks_is_the_same_index(tmp_path, rng, monkeypatch):
    """Blocks change nothing: the same lists (ids in the same order, same
    vectors), the same nprobe, and recall against brute force."""
    x = offset_gauss(rng, 4000, 32)
    x[11] = 0.0                                   # a zero row rides along
    m = _memmap(tmp_path, x)
    monkeypatch.setattr(ix, "CHUNK", 1 << 20)
    one, p1 = ix.build_faiss_index(m, "ivf")
    monkeypatch.setattr(ix, "CHUNK", 333)
    blk, p2 = ix.build_faiss_index(m, "ivf")
    assert p1["nprobe"] == p2["nprobe"] and p1["zero_rows"] == p2["zero_rows"] == 1
    assert blk.ntotal == one.ntotal == 4000
    _assert_same_lists(one, blk)
    q = offset_gauss(np.random.default_rng(8), 100, 32)
    qn = unit(q).astype(np.float32)
    D1, I1 = one.search(qn, 10)
    D2, I2 = blk.search(qn, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    with np.errstate(invalid="ignore"):           # the zero row's cosines are NaN
        _, truth = brute_topk(q, x, 10)
    assert recall(I2, truth) >= ix.RECALL_GOAL


def _lists(index):
    import faiss

    inv = faiss.downcast_InvertedLists(index.invlists)
    out = []
    for lst in range(index.nlist):
        size = inv.list_size(lst)
        ids = faiss.rev_swig_ptr(inv.get_ids(lst), size).copy() if size else np.empty(0)
        codes = (faiss.rev_swig_ptr(inv.get_codes(lst), size * index.code_size).copy()
                 if size else np.empty(0))
        out.append((ids, codes))
    return out


def _assert_same_lists(a, b):
    assert a.nlist == b.nlist
    for (ia, ca), (ib, cb) in zip(_lists(a), _lists(b)):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ca, cb)


def test_ivf_on_disk_answers_like_in_memory(tmp_path, rng, monkeypatch):
    x = offset_gauss(rng, 3000, 16)
    m = _memmap(tmp_path, x)
    monkeypatch.setattr(ix, "CHUNK", 250)
    mem, pm = ix.build_faiss_index(m, "ivf")
    disk, pd_ = ix.build_faiss_index(m, "ivf", ondisk=tmp_path / "lists.ivfdata")
    assert pm["storage"] == "memory" and pd_["storage"] == "disk"
    # the file holds every vector and id once, nothing else
    assert (tmp_path / "lists.ivfdata").stat().st_size == 3000 * (16 * 4 + 8)
    _assert_same_lists(mem, disk)
    q = unit(offset_gauss(np.random.default_rng(2), 150, 16)).astype(np.float32)
    for nprobe in (1, pm["nprobe"], mem.nlist):
        mem.nprobe = disk.nprobe = nprobe
        np.testing.assert_array_equal(mem.search(q, 10)[1], disk.search(q, 10)[1])
        np.testing.assert_array_equal(ix.ivf_batch_search(mem, q, 10)[1],
                                      ix.ivf_batch_search(disk, q, 10)[1])
    with pytest.raises(InputError, match="flat"):
        ix.build_faiss_index(m, "flat", ondisk=tmp_path / "no.ivfdata")


def test_dataset_index_goes_to_disk_above_the_memory_budget(clipgeom_home, rng,
                                                            monkeypatch):
    n, d = 3000, 16
    img = offset_gauss(rng, n, d)
    txt = offset_gauss(rng, 900, d, shift=0.5)
    ds = store.create_dataset("ondisk", img, txt)
    monkeypatch.setattr(ix, "EXACT_LIMIT", 500)
    monkeypatch.setattr(ix, "CHUNK", 400)
    q = offset_gauss(np.random.default_rng(4), 80, d)     # >= IVF_BATCH_MIN: list by list

    mem_info = ix.build_index(ds, "image")                # default budget: in memory
    assert mem_info.kind == "ivf" and mem_info.params["storage"] == "memory"
    want = ix.search(ds, "image", q, k=10)
    want_one = ix.search(ds, "image", q[:3], k=10)        # query by query
    assert not (ds.index_dir / "image.ivfdata").exists()

    monkeypatch.setenv("CLIPGEOM_INDEX_MEMORY_MB", str(n * d * 4 / 2 ** 20 / 2))
    assert ix.storage_for("ivf", n, d) == "disk" and ix.storage_for("flat", n, d) == "memory"
    info = ix.build_index(ds, "image", force=True)
    assert info.kind == "ivf" and info.params["storage"] == "disk"
    od = info.params["ondisk"]
    data = ds.index_dir / "image.ivfdata"
    assert od["file"] == "image.ivfdata" and data.stat().st_size == od["bytes"] == n * (d * 4 + 8)
    # the .faiss file is only the header: quantizer and list offsets
    assert (ds.index_dir / "image.faiss").stat().st_size < od["bytes"] / 4
    for _ in range(2):                                     # built, then read back fresh
        got = ix.search(ds, "image", q, k=10)
        np.testing.assert_array_equal(got.rows, want.rows)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
        np.testing.assert_array_equal(ix.search(ds, "image", q[:3], k=10).rows,
                                      want_one.rows)
        ix.clear_cache()
    # the same nprobe as in memory (same sample, same lists)
    assert info.params["nprobe"] == mem_info.params["nprobe"]
    res = ix.search_item(ds, "image", 7, "image", k=5)
    assert 7 not in res.rows[0]

    # a damaged data file is found (size; or content once its mtime moved) and rebuilt
    ix.clear_cache()
    raw = bytearray(data.read_bytes())
    raw[100:108] = b"\xff" * 8
    data.write_bytes(bytes(raw))                           # same size, new mtime
    got = ix.search(ds, "image", q, k=10)
    np.testing.assert_array_equal(got.rows, want.rows)
    assert json.loads((ds.index_dir / "image.json").read_text())["params"]["storage"] == "disk"
    ix.clear_cache()
    with open(data, "r+b") as f:
        f.truncate(od["bytes"] - 8)
    np.testing.assert_array_equal(ix.search(ds, "image", q, k=10).rows, want.rows)

    # back under the budget: an in-memory rebuild removes the on-disk lists
    monkeypatch.delenv("CLIPGEOM_INDEX_MEMORY_MB")
    assert ix.build_index(ds, "image", force=True).params["storage"] == "memory"
    assert not data.exists()
    np.testing.assert_array_equal(ix.search(ds, "image", q, k=10).rows, want.rows)
    # storage can be asked for; a flat index cannot live on disk
    assert ix.build_index(ds, "text", storage="disk").params["storage"] == "disk"
    with pytest.raises(InputError, match="flat"):
        ix.build_index(ds, "text", kind="flat", storage="disk")
    with pytest.raises(InputError, match="storage"):
        ix.build_index(ds, "text", storage="cloud")


def test_memory_budget_setting(monkeypatch):
    monkeypatch.delenv("CLIPGEOM_INDEX_MEMORY_MB", raising=False)
    assert ix.memory_budget() >= 256 * 2 ** 20
    monkeypatch.setattr(ix, "MEMORY_BUDGET", 12345)
    assert ix.memory_budget() == 12345
    monkeypatch.setenv("CLIPGEOM_INDEX_MEMORY_MB", "2")
    assert ix.memory_budget() == 2 * 2 ** 20
    monkeypatch.setenv("CLIPGEOM_INDEX_MEMORY_MB", "lots")
    with pytest.raises(InputError, match="CLIPGEOM_INDEX_MEMORY_MB"):
        ix.memory_budget()


def test_build_index_lets_go_of_what_it_built(small):
    ds, img, _ = small
    ix.build_index(ds, "image")
    assert ix._cache_get(ds, "image") is None             # written, not held
    ix.search(ds, "image", img[:2], k=3)
    assert ix._cache_get(ds, "image") is not None          # loaded when searched


def test_an_unchanged_index_file_is_not_rehashed_and_a_changed_one_is(clipgeom_home, monkeypatch):
    """The sha256 of an index file is skipped while its size and mtime are the
    recorded ones (a 2 GB index took ~2 s to hash per load), and checked when
    the mtime moved: a same-size corruption with a new mtime is caught."""
    img = np.random.default_rng(9).standard_normal((300, 16)).astype(np.float32)
    store.create_dataset("rehash", img, img[::-1].copy())
    ds = store.open_dataset("rehash")
    ix.build_index(ds, "image", kind="flat")
    ix.clear_cache()
    hashed = []
    real = ix._sha256
    monkeypatch.setattr(ix, "_sha256", lambda p: hashed.append(p) or real(p))
    index, info = ix.load_index(ds, "image")
    assert info.file_mtime_ns > 0 and hashed == []
    path = ds.index_dir / "image.faiss"
    raw = bytearray(path.read_bytes())
    raw[-8:] = b"\x00" * 8                       # same size, other content, new mtime
    path.write_bytes(bytes(raw))
    ix.clear_cache()
    _, again = ix.load_index(ds, "image")        # refused on its hash, rebuilt
    assert hashed and hashed[0] == path
    assert again.file_sha256 == real(path)[0]     # the rebuilt file, recorded anew
    res = ix.search(ds, "image", img[:3], k=1)
    np.testing.assert_array_equal(res.rows[:, 0], [0, 1, 2])
