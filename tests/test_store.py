"""clipgeom.store: datasets on disk.

Ground truth is computed independently: hashlib over the file bytes, numpy
reading the .npy files directly, hand-computed pairings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from clipgeom import store
from clipgeom.errors import DatasetError, InputError


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("CLIPGEOM_HOME", str(h))
    # No bundled datasets unless a test sets some up.
    monkeypatch.setattr(store, "ASSETS_DIR", tmp_path / "no-assets")
    return h


def _vdir(home, name):
    """The current version folder of a dataset (where its files are)."""
    return store.open_dataset(name, home=home).path


def emb(n, d=8, seed=0, unit=False):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    x += 3.0  # raw CLIP-like: offset from the origin
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def tmp_leftovers(home):
    d = home / "datasets"
    return [p.name for p in d.iterdir() if p.name.startswith(".")] if d.is_dir() else []


# --------------------------------------------------------------------------
# locations and names
# --------------------------------------------------------------------------

def test_home_from_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPGEOM_HOME", str(tmp_path / "h"))
    assert store.home() == tmp_path / "h"
    monkeypatch.delenv("CLIPGEOM_HOME")
    monkeypatch.chdir(tmp_path)
    assert store.home() == tmp_path / "data"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "-x", "a b",
                                 "x" * 65, "..", "é"])
def test_bad_names_rejected(home, bad):
    with pytest.raises(InputError, match="Invalid dataset name"):
        store.create_dataset(bad, emb(3), emb(3))
    with pytest.raises(InputError, match="Invalid dataset name"):
        store.open_dataset(bad)
    with pytest.raises(InputError, match="Invalid dataset name"):
        store.delete_dataset(bad)
    assert not (home / "x").exists() and not (home.parent / "x").exists()


def test_good_names_accepted(home):
    for nm in ["a", "A1", "coco_5k.v2-b", "9" * 64]:
        store.create_dataset(nm, emb(2), emb(2))
    assert [d["name"] for d in store.list_datasets()] == sorted(
        ["a", "A1", "coco_5k.v2-b", "9" * 64])


# --------------------------------------------------------------------------
# round trip and manifest
# --------------------------------------------------------------------------

def test_round_trip_bit_exact_and_memmap(home):
    img, txt = emb(7, seed=1), emb(5, seed=2)
    ds = store.create_dataset("rt", img, txt, model={"name": "ViT-B-32",
                                                   "pretrained": "openai"})
    assert isinstance(ds.image_emb, np.memmap)
    assert isinstance(ds.text_emb, np.memmap)
    assert ds.image_emb.dtype == np.float32
    assert np.array_equal(np.asarray(ds.image_emb).view(np.uint32),
                          img.view(np.uint32))
    assert np.array_equal(np.asarray(ds.text_emb).view(np.uint32),
                          txt.view(np.uint32))
    # reopen independently
    ds2 = store.open_dataset("rt")
    assert np.array_equal(np.asarray(ds2.image_emb), img)
    # the file on disk is a plain npy readable by numpy itself
    raw = np.load(_vdir(home, "rt") / "image_emb.npy", allow_pickle=False)
    assert raw.dtype == np.float32 and np.array_equal(raw, img)
    assert ds2.model == {"name": "ViT-B-32", "pretrained": "openai"}


def test_float64_input_stored_as_float32(home):
    img = emb(4).astype(np.float64) + 1e-9
    ds = store.create_dataset("f64", img, emb(4, seed=3))
    assert ds.image_emb.dtype == np.float32
    assert np.array_equal(np.asarray(ds.image_emb), img.astype(np.float32))


def test_manifest_hashes_match_file_bytes(home):
    ds = store.create_dataset("m", emb(6), emb(6, seed=4),
                              source={"kind": "test"}, extra_manifest={"note": 1})
    d = _vdir(home, "m")
    m = json.loads((d / "manifest.json").read_text())
    files = {}
    for f in ["image_emb.npy", "text_emb.npy", "images.parquet", "texts.parquet"]:
        files[f] = hashlib.sha256((d / f).read_bytes()).hexdigest()
    assert m["arrays"]["image_emb.npy"]["sha256"] == files["image_emb.npy"]
    assert m["arrays"]["text_emb.npy"]["sha256"] == files["text_emb.npy"]
    assert m["arrays"]["image_emb.npy"]["shape"] == [6, 8]
    assert m["arrays"]["text_emb.npy"]["dtype"] == "float32"
    expect_fp = hashlib.sha256("".join(
        f"{f}:{files[f]}\n" for f in ["image_emb.npy", "text_emb.npy",
                                      "images.parquet", "texts.parquet"]
    ).encode()).hexdigest()
    assert m["fingerprint"] == expect_fp == ds.fingerprint
    assert m["schema_version"] == 1 and m["name"] == "m"
    assert (m["dim"], m["n_images"], m["n_texts"], m["n_pairs"]) == (8, 6, 6, 6)
    assert m["source"] == {"kind": "test"} and m["note"] == 1
    assert m["skipped"] == [] and m["model"] is None
    assert m["created"].endswith("Z")
    assert {p.name for p in d.iterdir()} >= {"thumbs", "index", "cache"}


def test_fingerprint_is_content_id(home, tmp_path):
    a = store.create_dataset("a", emb(4), emb(4, seed=1)).fingerprint
    b = store.create_dataset("b", emb(4), emb(4, seed=1)).fingerprint
    c = store.create_dataset("c", emb(4), emb(4, seed=2)).fingerprint
    assert a == b != c


def test_default_tables_and_pairing(home):
    ds = store.create_dataset("d", emb(3), emb(3, seed=1))
    assert ds.images["image_id"].tolist() == ["img00000", "img00001", "img00002"]
    assert ds.images["source"].tolist() == ["", "", ""]
    assert ds.images["thumbnail"].tolist() == [None, None, None]
    assert ds.texts["text_id"].tolist() == ["txt00000", "txt00001", "txt00002"]
    assert ds.texts["caption"].tolist() == ["", "", ""]
    assert ds.texts["image_id"].tolist() == ["img00000", "img00001", "img00002"]
    i, t = ds.pairs()
    assert i.tolist() == [0, 1, 2] and t.tolist() == [0, 1, 2]
    # unequal counts: unpaired
    ds = store.create_dataset("u", emb(3), emb(2, seed=1))
    assert ds.texts["image_id"].tolist() == [None, None]
    assert ds.pairs()[0].size == 0 and ds.manifest["n_pairs"] == 0


def test_pairs_first_caption_per_image(home):
    images = pd.DataFrame({"image_id": ["cat", "dog", "cow", "owl"],
                           "label": ["a", "b", "a", "c"]})
    # dog: texts 0, 3 ; cat: texts 2, 5 ; cow: none ; owl: text 6 ; 1, 4 unpaired
    texts = pd.DataFrame({
        "caption": [f"c{k}" for k in range(7)],
        "image_id": ["dog", None, "cat", "dog", None, "cat", "owl"],
    })
    ds = store.create_dataset("p", emb(4), emb(7, seed=5), images, texts)
    i, t = ds.pairs()
    assert i.tolist() == [0, 1, 3]  # cat, dog, owl in image order
    assert t.tolist() == [2, 0, 6]
    assert i.dtype.kind == "i" and t.dtype.kind == "i"
    assert ds.manifest["n_pairs"] == 3
    assert ds.images["label"].tolist() == ["a", "b", "a", "c"]
    assert store.open_dataset("p").pairs()[1].tolist() == [2, 0, 6]


def test_normalized_input_detection(home):
    unit = emb(5, unit=True)
    ds = store.create_dataset("n", unit, emb(5, seed=1))
    assert ds.normalized_input == {"image": True, "text": False}
    almost = unit * np.float32(1.0005)  # within 1e-3
    off = unit.copy()
    off[3] *= 1.01  # one row off by 1e-2
    ds = store.create_dataset("n2", almost, off)
    assert ds.normalized_input == {"image": True, "text": False}
    assert store.open_dataset("n2").manifest["normalized_input"]["image"] is True


def test_metadata_columns_and_thumbs(home, tmp_path):
    th = tmp_path / "th"
    th.mkdir()
    (th / "a.jpg").write_bytes(b"\xff\xd8jpeg")
    images = pd.DataFrame({"image_id": ["a", "b"], "source": ["x/a.png", "x/b.png"],
                           "thumbnail": ["a.jpg", None], "width": [640, 480]})
    ds = store.create_dataset("t", emb(2), emb(2, seed=1), images, thumbs_dir=th)
    assert ds.thumb_path(0) == _vdir(home, "t") / "thumbs" / "a.jpg"
    assert ds.thumb_path(0).read_bytes() == b"\xff\xd8jpeg"
    assert ds.thumb_path(1) is None
    assert ds.images["width"].tolist() == [640, 480]
    with pytest.raises(InputError, match="out of range"):
        ds.thumb_path(2)


def test_thumbnail_paths_must_stay_inside(home):
    images = pd.DataFrame({"image_id": ["a", "b"], "thumbnail": ["../../etc/passwd", None]})
    with pytest.raises(InputError, match="row 0"):
        store.create_dataset("t", emb(2), emb(2), images)


def test_large_array_opens_as_memmap_without_reading(home):
    big = np.ones((20000, 64), np.float32)
    big[:, 0] = np.arange(20000)
    store.create_dataset("big", big, emb(2, d=64))
    ds = store.open_dataset("big")
    assert isinstance(ds.image_emb, np.memmap)
    assert ds.image_emb[12345, 0] == 12345


# --------------------------------------------------------------------------
# bad arrays and tables
# --------------------------------------------------------------------------

def test_nan_inf_rows_named(home):
    img = emb(6)
    img[2, 1] = np.nan
    img[4, 0] = np.inf
    with pytest.raises(InputError, match=r"image embeddings.*rows 2, 4"):
        store.create_dataset("x", img, emb(6))
    txt = emb(6)
    txt[5, 3] = -np.inf
    with pytest.raises(InputError, match=r"text embeddings.*row 5"):
        store.create_dataset("x", emb(6), txt)
    assert not (home / "datasets" / "x").exists()


def test_zero_vectors_rejected(home):
    txt = emb(4)
    txt[1] = 0
    with pytest.raises(InputError, match=r"text embeddings.*all-zero.*row 1"):
        store.create_dataset("x", emb(4), txt)


def test_different_widths(home):
    with pytest.raises(InputError, match="image embeddings has 8 features but text embeddings has 6"):
        store.create_dataset("x", emb(4), emb(4, d=6))


def test_one_d_and_empty_arrays(home):
    with pytest.raises(InputError, match=r"image embeddings: expected a 2-D"):
        store.create_dataset("x", np.ones(8, np.float32), emb(3))
    with pytest.raises(InputError, match=r"text embeddings: needs at least 1 rows, got 0"):
        store.create_dataset("x", emb(3), np.zeros((0, 8), np.float32))
    with pytest.raises(InputError, match="zero features"):
        store.create_dataset("x", np.zeros((3, 0)), emb(3))
    with pytest.raises(InputError, match="at least one of them needs 2"):
        store.create_dataset("x", emb(1), emb(1))
    # one row of one modality is allowed
    ds = store.create_dataset("ok", emb(1), emb(3))
    assert (ds.n_images, ds.n_texts) == (1, 3)


def test_table_length_mismatch_named(home):
    with pytest.raises(InputError, match="images table has 2 rows but image embeddings have 3"):
        store.create_dataset("x", emb(3), emb(3), images=pd.DataFrame({"image_id": ["a", "b"]}))
    with pytest.raises(InputError, match="texts table has 4 rows but text embeddings have 3"):
        store.create_dataset("x", emb(3), emb(3), texts=pd.DataFrame({"caption": list("abcd")}))


def test_duplicate_ids_named(home):
    with pytest.raises(InputError, match=r"duplicate image_id 'b' in rows 1 and 3"):
        store.create_dataset("x", emb(4), emb(4),
                             images=pd.DataFrame({"image_id": ["a", "b", "c", "b"]}))
    with pytest.raises(InputError, match=r"duplicate text_id 't1' in rows 0 and 2"):
        store.create_dataset("x", emb(3), emb(3),
                             texts=pd.DataFrame({"text_id": ["t1", "t2", "t1"]}))


def test_unknown_image_reference_names_text_row(home):
    texts = pd.DataFrame({"caption": ["a", "b"], "image_id": ["img00000", "nope"]})
    with pytest.raises(InputError, match=r"texts table row 1.*'nope'"):
        store.create_dataset("x", emb(2), emb(2), texts=texts)


def test_extra_manifest_cannot_override_core(home):
    with pytest.raises(InputError, match="fingerprint"):
        store.create_dataset("x", emb(2), emb(2), extra_manifest={"fingerprint": "x"})


# --------------------------------------------------------------------------
# atomicity and overwrite
# --------------------------------------------------------------------------

def test_existing_name_refused_without_overwrite(home):
    store.create_dataset("e", emb(3), emb(3))
    with pytest.raises(DatasetError, match="'e' already exists.*overwrite"):
        store.create_dataset("e", emb(3, seed=9), emb(3))
    assert np.array_equal(np.asarray(store.open_dataset("e").image_emb), emb(3))


def test_overwrite_replaces(home):
    store.create_dataset("o", emb(3), emb(3))
    ds = store.create_dataset("o", emb(5, seed=2), emb(5, seed=3), overwrite=True)
    assert ds.n_images == 5
    assert np.array_equal(np.asarray(store.open_dataset("o").image_emb), emb(5, seed=2))
    assert tmp_leftovers(home) == []
    assert [d["name"] for d in store.list_datasets()] == ["o"]


@pytest.mark.parametrize("step", ["write_table", "write_manifest"])
def test_crash_mid_write_leaves_old_intact(home, monkeypatch, step):
    old = store.create_dataset("c", emb(3), emb(3), texts=pd.DataFrame({"caption": ["x", "y", "z"]}))
    d = _vdir(home, "c")
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    old_fp = old.fingerprint

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store.writer, step, boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.create_dataset("c", emb(4, seed=7), emb(4, seed=8), overwrite=True)
    with pytest.raises(RuntimeError):
        store.create_dataset("fresh", emb(4), emb(4))
    assert tmp_leftovers(home) == []
    assert not (home / "datasets" / "fresh").exists()
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    assert after == before
    ds = store.open_dataset("c")
    assert ds.fingerprint == old_fp and ds.texts["caption"].tolist() == ["x", "y", "z"]


def test_crash_during_swap_restores_old(home, monkeypatch):
    store.create_dataset("s", emb(3), emb(3))
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((str(src), str(dst)))
        if ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", flaky)
    with pytest.raises(DatasetError, match="nothing was changed"):
        store.create_dataset("s", emb(4, seed=1), emb(4), overwrite=True)
    monkeypatch.setattr(store.os, "replace", real)
    assert np.array_equal(np.asarray(store.open_dataset("s").image_emb), emb(3))
    assert tmp_leftovers(home) == []


def test_os_error_becomes_dataset_error(home, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.writer, "save_array", full)
    with pytest.raises(DatasetError, match="No space left"):
        store.create_dataset("z", emb(3), emb(3))
    assert tmp_leftovers(home) == []


# --------------------------------------------------------------------------
# opening broken datasets
# --------------------------------------------------------------------------

def test_missing_dataset_lists_available(home):
    store.create_dataset("alpha", emb(2), emb(2))
    store.create_dataset("beta", emb(2), emb(2))
    with pytest.raises(DatasetError, match=r"No dataset named 'gamma'.*Available: alpha, beta"):
        store.open_dataset("gamma")
    with pytest.raises(DatasetError, match="No dataset named 'gamma'"):
        store.delete_dataset("gamma")


def test_missing_dataset_when_none_exist(home):
    with pytest.raises(DatasetError, match="No datasets exist yet"):
        store.open_dataset("x")


def test_corrupt_manifest(home):
    store.create_dataset("bad", emb(2), emb(2))
    mp = _vdir(home, "bad") / "manifest.json"
    mp.write_text("{not json")
    with pytest.raises(DatasetError, match=r"manifest\.json.*corrupt.*Re-import"):
        store.open_dataset("bad")
    mp.unlink()
    with pytest.raises(DatasetError, match=r"manifest\.json.*missing"):
        store.open_dataset("bad")


def test_missing_array_file(home):
    store.create_dataset("ma", emb(2), emb(2))
    (_vdir(home, "ma") / "text_emb.npy").unlink()
    with pytest.raises(DatasetError, match=r"text_emb\.npy.*missing.*Re-import"):
        store.open_dataset("ma")


def test_shape_dtype_mismatch(home):
    store.create_dataset("sh", emb(3), emb(3))
    p = _vdir(home, "sh") / "image_emb.npy"
    np.save(p, emb(4))
    with pytest.raises(DatasetError, match=r"image_emb\.npy.*shape \(4, 8\).*\(3, 8\)"):
        store.open_dataset("sh")
    np.save(p, emb(3).astype(np.float64))
    with pytest.raises(DatasetError, match=r"image_emb\.npy.*dtype float64"):
        store.open_dataset("sh")


def test_pickled_array_on_disk_refused(home):
    store.create_dataset("pk", emb(2), emb(2))
    p = _vdir(home, "pk") / "text_emb.npy"
    obj = np.empty((2, 8), dtype=object)
    obj[:] = 1.0
    np.save(p, obj, allow_pickle=True)
    with pytest.raises(DatasetError, match=r"text_emb\.npy.*pickled"):
        store.open_dataset("pk")


def test_truncated_array(home):
    store.create_dataset("tr", emb(50), emb(50))
    p = _vdir(home, "tr") / "image_emb.npy"
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"image_emb\.npy.*cannot be read"):
        store.open_dataset("tr")


def test_verify_detects_changed_bytes(home):
    store.create_dataset("v", emb(3), emb(3))
    assert store.verify_dataset("v").name == "v"
    p = _vdir(home, "v") / "text_emb.npy"
    a = np.load(p)
    a[0, 0] += 1
    np.save(p, a)
    # a same-size change is noticed on open (its stat changed, so it is hashed)
    with pytest.raises(DatasetError, match=r"text_emb\.npy.*changed since it was imported"):
        store.open_dataset("v")
    with pytest.raises(DatasetError, match=r"text_emb\.npy.*changed"):
        store.verify_dataset("v")


def test_corrupt_parquet_reported_on_access(home):
    store.create_dataset("pq", emb(2), emb(2))
    (_vdir(home, "pq") / "texts.parquet").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"texts\.parquet.*changed since it was imported"):
        store.open_dataset("pq")


# --------------------------------------------------------------------------
# list / delete
# --------------------------------------------------------------------------

def test_list_skips_tmp_and_reports_corrupt(home):
    store.create_dataset("good", emb(3), emb(2), model={"checkpoint_sha256": "ab"})
    store.create_dataset("broken", emb(2), emb(2))
    (_vdir(home, "broken") / "manifest.json").write_text("[]")
    (home / "datasets" / ".tmp-half-1234").mkdir()
    (home / "datasets" / "stray.txt").write_text("x")
    out = store.list_datasets()
    assert [d["name"] for d in out] == ["broken", "good"]
    good = out[1]
    assert (good["n_images"], good["n_texts"], good["dim"]) == (3, 2, 8)
    assert good["read_only"] is False and "error" not in good
    assert good["model"] == {"checkpoint_sha256": "ab"} and good["created"]
    assert "manifest.json" in out[0]["error"]


def test_list_empty_home(home):
    assert store.list_datasets() == []


def test_delete(home):
    store.create_dataset("del", emb(2), emb(2))
    store.delete_dataset("del")
    assert not (home / "datasets" / "del").exists()
    assert tmp_leftovers(home) == []
    with pytest.raises(DatasetError, match="No dataset named 'del'"):
        store.open_dataset("del")


# --------------------------------------------------------------------------
# read-only bundled datasets
# --------------------------------------------------------------------------

@pytest.fixture
def assets(home, tmp_path, monkeypatch):
    other = tmp_path / "build"
    store.create_dataset("demo", emb(4), emb(4, seed=1), home=other)
    a = tmp_path / "assets"
    a.mkdir()
    shutil.move(str(_vdir(other, "demo")), str(a / "demo"))   # bundled: one flat version
    (a / "notadataset").mkdir()
    monkeypatch.setattr(store, "ASSETS_DIR", a)
    return a


def test_read_only_listed_and_openable(home, assets):
    assert store.read_only_roots() == [assets / "demo"]
    out = store.list_datasets()
    assert [(d["name"], d["read_only"]) for d in out] == [("demo", True)]
    ds = store.open_dataset("demo")
    assert ds.read_only and ds.path == assets / "demo"
    assert np.array_equal(np.asarray(ds.image_emb), emb(4))
    before = sorted(p.relative_to(assets) for p in assets.rglob("*"))
    cd, ix = ds.cache_dir, ds.index_dir
    assert cd == home / "cache" / f"demo-{ds.fingerprint[:12]}" and cd.is_dir()
    assert ix == home / "index" / f"demo-{ds.fingerprint[:12]}" and ix.is_dir()
    assert sorted(p.relative_to(assets) for p in assets.rglob("*")) == before


def test_read_only_cannot_be_deleted_or_shadowed(home, assets):
    with pytest.raises(DatasetError, match="'demo'.*read-only.*cannot be deleted"):
        store.delete_dataset("demo")
    with pytest.raises(DatasetError, match="'demo'.*read-only.*another name"):
        store.create_dataset("demo", emb(2), emb(2))
    with pytest.raises(DatasetError, match="read-only"):
        store.create_dataset("demo", emb(2), emb(2), overwrite=True)
    assert (assets / "demo" / "manifest.json").is_file()
    assert not (home / "datasets" / "demo").exists()


def test_user_dataset_cache_inside_dataset(home):
    ds = store.create_dataset("u", emb(2), emb(2))
    assert ds.cache_dir == _vdir(home, "u") / "cache"
    assert ds.index_dir == _vdir(home, "u") / "index"


def test_home_argument_overrides_env(home, tmp_path):
    other = tmp_path / "elsewhere"
    store.create_dataset("h", emb(2), emb(2), home=other)
    assert (_vdir(other, "h") / "manifest.json").is_file()
    assert store.open_dataset("h", home=other).name == "h"
    with pytest.raises(DatasetError):
        store.open_dataset("h")


def test_stale_temp_folders_swept(home):
    d = home / "datasets"
    d.mkdir(parents=True)
    dead_tmp, live_tmp, trash = d / ".tmp-x-1a2b", d / ".tmp-y-3c4d", d / ".del-w-9f"
    for p in (dead_tmp, live_tmp, trash):
        p.mkdir()
        (p / "f").write_text("x")
    # a live writer of "y" (another thread: its own lock file descriptor) owns its tmp
    import threading
    held, release = threading.Event(), threading.Event()

    def writer():
        with store.writer_lock("y", "test writer"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(10)
    try:
        store.create_dataset("s", emb(2), emb(2))
        assert not dead_tmp.exists() and not trash.exists()    # nobody owns them
        assert live_tmp.exists()                               # its writer is alive
    finally:
        release.set()
        t.join()
    store.list_datasets()
    assert not live_tmp.exists()


def test_numeric_label_round_trip(home):
    ds = store.create_dataset("lab", emb(3), emb(3),
                              images=pd.DataFrame({"label": [2, 0, 1]}))
    assert store.open_dataset("lab").images["label"].tolist() == [2, 0, 1]
    assert ds.images["image_id"].tolist() == ["img00000", "img00001", "img00002"]


def test_extra_arrays_round_trip_and_hash(clipgeom_home, tmp_path):
    import hashlib

    import numpy as np
    from clipgeom import store
    from clipgeom.errors import InputError

    rng = np.random.default_rng(0)
    snap = rng.standard_normal((3, 5, 4)).astype(np.float32)
    ds = store.create_dataset("ex", rng.standard_normal((6, 4)).astype(np.float32),
                              rng.standard_normal((6, 4)).astype(np.float32),
                              extra_arrays={"snap_image": snap, "steps": np.array([0, 5, 9])})
    assert ds.extra_array_names == ["snap_image", "steps"]
    got = ds.extra_array("snap_image")
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, snap)
    digest = hashlib.sha256((ds.path / "extra" / "snap_image.npy").read_bytes()).hexdigest()
    assert ds.manifest["extra_arrays"]["snap_image"]["sha256"] == digest
    with pytest.raises(Exception, match="no extra array"):
        ds.extra_array("nope")
    with pytest.raises(InputError, match="extra array name"):
        store.create_dataset("ex2", np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),
                             extra_arrays={"../evil": np.ones(2)})
