"""clipgeom.store.import_arrays and clipgeom.captions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipgeom import store
from clipgeom.captions import read_captions, read_image_list, read_labels, read_lines
from clipgeom.errors import DatasetError, InputError


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("CLIPGEOM_HOME", str(h))
    monkeypatch.setattr(store, "ASSETS_DIR", tmp_path / "no-assets")
    return h


def emb(n, d=8, seed=0):
    return (np.random.default_rng(seed).normal(size=(n, d)) + 2.0).astype(np.float32)


@pytest.fixture
def npys(tmp_path):
    img, txt = emb(3), emb(4, seed=1)
    pi, pt = tmp_path / "img.npy", tmp_path / "txt.npy"
    np.save(pi, img)
    np.save(pt, txt)
    return pi, pt, img, txt


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------
# captions module
# --------------------------------------------------------------------------

def test_read_lines_endings_and_trailing_blanks(tmp_path):
    p = write(tmp_path / "a.txt", "\ufefffirst\r\nsec\u2028ond\n\nfourth\n\n\n")
    assert read_lines(p) == ["first", "sec\u2028ond", "", "fourth"]


def test_non_utf8_names_file_offset_and_line(tmp_path):
    p = write(tmp_path / "caps.txt", "ok line\ncaf\u00e9 latin1\n", encoding="latin-1")
    with pytest.raises(InputError) as e:
        read_lines(p)
    msg = str(e.value)
    assert "caps.txt" in msg and "byte offset 11" in msg and "line 2" in msg
    assert "UTF-8" in msg


def test_csv_captions_with_quotes_and_metadata(tmp_path):
    p = write(tmp_path / "c.csv",
              'Caption,image,label,photographer\n'
              '"a dog, running",1,animal,ann\n'
              '"two\nlines",,,bob\n'
              '\n'
              'plain,0,thing,\n')
    df = read_captions(p)
    assert df["caption"].tolist() == ["a dog, running", "two\nlines", "plain"]
    assert df["image"].tolist() == ["1", None, "0"]
    assert df["label"].tolist() == ["animal", None, "thing"]
    assert df["photographer"].tolist() == ["ann", "bob", ""]
    assert df.attrs["lines"] == [2, 3, 6]


def test_csv_errors_name_line(tmp_path):
    p = write(tmp_path / "c.csv", "caption,image\na,1\nb,2,extra\n")
    with pytest.raises(InputError, match=r"c\.csv, line 3: expected 2 fields"):
        read_captions(p)
    p = write(tmp_path / "d.csv", "text,image\na,1\n")
    with pytest.raises(InputError, match=r"d\.csv: no 'caption' column.*text, image"):
        read_captions(p)
    p = write(tmp_path / "e.csv", "caption,image_id\na,1\n")
    with pytest.raises(InputError, match=r"e\.csv: column 'image_id' is reserved"):
        read_captions(p)
    p = write(tmp_path / "f.csv", "")
    with pytest.raises(InputError, match=r"f\.csv: the file is empty"):
        read_captions(p)
    with pytest.raises(InputError, match=r"g\.xlsx.*unsupported"):
        read_captions(write(tmp_path / "g.xlsx", "x"))
    with pytest.raises(InputError, match=r"nothere\.csv: file not found"):
        read_captions(tmp_path / "nothere.csv")


def test_tsv_and_jsonl(tmp_path):
    p = write(tmp_path / "c.tsv", "caption\timage\nhello, world\t0\nbye\t\n")
    df = read_captions(p)
    assert df["caption"].tolist() == ["hello, world", "bye"]
    assert df["image"].tolist() == ["0", None]
    p = write(tmp_path / "c.jsonl",
              json.dumps({"caption": "a", "image": 2, "score": 1.5}) + "\n\n"
              + json.dumps({"caption": "b", "score": "high", "tags": ["x"]}) + "\n")
    df = read_captions(p)
    assert df["caption"].tolist() == ["a", "b"]
    assert df["image"].tolist() == [2, None]
    assert df["score"].tolist() == ["1.5", "high"]  # mixed types -> strings
    assert df["tags"].tolist() == [None, '["x"]']
    assert df.attrs["lines"] == [1, 3]


def test_jsonl_errors_name_line(tmp_path):
    p = write(tmp_path / "c.jsonl", '{"caption": "a"}\n{"caption": 3}\n')
    with pytest.raises(InputError, match=r"c\.jsonl, line 2: \"caption\" must be a string"):
        read_captions(p)
    p = write(tmp_path / "d.jsonl", '{"caption": "a"}\n{oops\n')
    with pytest.raises(InputError, match=r"d\.jsonl, line 2: not valid JSON"):
        read_captions(p)
    p = write(tmp_path / "e.jsonl", '{"caption": "a"}\n{"image": 1}\n')
    with pytest.raises(InputError, match=r"e\.jsonl, line 2: no \"caption\""):
        read_captions(p)


def test_image_list_and_labels(tmp_path):
    assert read_image_list(write(tmp_path / "l.txt", "a.jpg\n b.jpg \n")) == ["a.jpg", "b.jpg"]
    with pytest.raises(InputError, match=r"m\.txt, line 2: blank line"):
        read_image_list(write(tmp_path / "m.txt", "a.jpg\n\nb.jpg\n"))
    assert read_labels(write(tmp_path / "lab.txt", "cat\n\ndog\n")) == ["cat", None, "dog"]
    assert read_labels(write(tmp_path / "lab.csv", "id,label\n1,cat\n2,dog\n")) == ["cat", "dog"]
    with pytest.raises(InputError, match=r"nolab\.csv: no 'label' column"):
        read_labels(write(tmp_path / "nolab.csv", "id,x\n1,cat\n"))


# --------------------------------------------------------------------------
# import_arrays
# --------------------------------------------------------------------------

def test_import_plain_arrays(home, tmp_path):
    img, txt = emb(3), emb(3, seed=1)
    np.save(tmp_path / "i.npy", img)
    np.save(tmp_path / "t.npy", txt)
    ds = store.import_arrays("imp", tmp_path / "i.npy", tmp_path / "t.npy")
    assert np.array_equal(np.asarray(ds.image_emb), img)
    assert np.array_equal(np.asarray(ds.text_emb), txt)
    i, t = ds.pairs()
    assert i.tolist() == [0, 1, 2] and t.tolist() == [0, 1, 2]
    src = ds.manifest["source"]
    assert src["kind"] == "arrays"
    assert src["image_emb"] == str(tmp_path / "i.npy")
    assert src["text_emb"] == str(tmp_path / "t.npy")


def test_import_with_captions_pairing_by_source_and_row(home, tmp_path, npys):
    pi, pt, img, txt = npys
    lst = write(tmp_path / "images.txt", "photos/a.jpg\nphotos/b.jpg\nphotos/c.jpg\n")
    caps = write(tmp_path / "caps.csv",
                 "caption,image,label\n"
                 "first of c,photos/c.jpg,x\n"
                 "about a,0,y\n"
                 "unpaired,,\n"
                 "second of c,2,x\n")
    labels = write(tmp_path / "labels.txt", "cat\ndog\ncat\n")
    ds = store.import_arrays("cap", pi, pt, captions=caps, image_list=lst, labels=labels)
    assert ds.images["source"].tolist() == ["photos/a.jpg", "photos/b.jpg", "photos/c.jpg"]
    assert ds.images["label"].tolist() == ["cat", "dog", "cat"]
    assert ds.texts["caption"].tolist() == ["first of c", "about a", "unpaired", "second of c"]
    assert ds.texts["image_id"].tolist() == ["img00002", "img00000", None, "img00002"]
    assert ds.texts["label"].tolist() == ["x", "y", None, "x"]
    i, t = ds.pairs()
    assert i.tolist() == [0, 2] and t.tolist() == [1, 0]
    assert ds.manifest["n_pairs"] == 2
    assert ds.manifest["source"]["captions"] == str(caps)


def test_import_txt_captions_unequal_counts_unpaired(home, tmp_path, npys):
    pi, pt, _, _ = npys  # 3 images, 4 texts
    caps = write(tmp_path / "caps.txt", "a\nb\nc\nd\n")
    ds = store.import_arrays("t", pi, pt, captions=caps)
    assert ds.texts["caption"].tolist() == ["a", "b", "c", "d"]
    assert ds.texts["image_id"].tolist() == [None] * 4


def test_caption_count_mismatch(home, tmp_path, npys):
    pi, pt, _, _ = npys
    caps = write(tmp_path / "caps.txt", "a\nb\nc\n")
    with pytest.raises(InputError) as e:
        store.import_arrays("x", pi, pt, captions=caps)
    msg = str(e.value)
    assert "caps.txt" in msg and "3 captions" in msg and "4 rows" in msg and "txt.npy" in msg
    assert not (store.home() / "datasets" / "x").exists()


def test_image_list_and_label_count_mismatch(home, tmp_path, npys):
    pi, pt, _, _ = npys
    with pytest.raises(InputError, match=r"list\.txt: has 2 image lines but image embeddings \(.*img\.npy\) has 3"):
        store.import_arrays("x", pi, pt, image_list=write(tmp_path / "list.txt", "a\nb\n"))
    with pytest.raises(InputError, match=r"lab\.txt: has 4 labels.*has 3 rows"):
        store.import_arrays("x", pi, pt, labels=write(tmp_path / "lab.txt", "a\nb\nc\nd\n"))


def test_bad_image_reference_names_line(home, tmp_path, npys):
    pi, pt, _, _ = npys
    lst = write(tmp_path / "images.txt", "a.jpg\nb.jpg\nc.jpg\n")
    caps = write(tmp_path / "caps.csv", "caption,image\nw,a.jpg\nx,b.jpg\ny,zzz.jpg\nz,0\n")
    with pytest.raises(InputError, match=r"caps\.csv, line 4 \(text row 2\): image 'zzz\.jpg'"):
        store.import_arrays("x", pi, pt, captions=caps, image_list=lst)
    caps = write(tmp_path / "caps2.csv", "caption,image\nw,0\nx,1\ny,3\nz,0\n")
    with pytest.raises(InputError, match=r"caps2\.csv, line 4 \(text row 2\): image row 3 is out of range"):
        store.import_arrays("x", pi, pt, captions=caps)


def test_pickled_npy_refused(home, tmp_path, npys):
    _, pt, _, _ = npys
    obj = np.empty((3, 8), dtype=object)
    obj[:] = 0.5
    p = tmp_path / "evil.npy"
    np.save(p, obj, allow_pickle=True)
    with pytest.raises(InputError, match=r"evil\.npy: contains pickled objects.*np\.save"):
        store.import_arrays("x", p, pt)


def test_non_npy_and_corrupt_files(home, tmp_path, npys):
    pi, pt, img, _ = npys
    np.savetxt(tmp_path / "img.csv", img)
    with pytest.raises(InputError, match=r"img\.csv: image embeddings must be a \.npy"):
        store.import_arrays("x", tmp_path / "img.csv", pt)
    bad = write(tmp_path / "bad.npy", "not numpy at all")
    with pytest.raises(InputError, match=r"bad\.npy: not a valid \.npy"):
        store.import_arrays("x", pi, bad)
    trunc = tmp_path / "trunc.npy"
    trunc.write_bytes(pi.read_bytes()[:-10])
    with pytest.raises(InputError, match=r"trunc\.npy: not a valid \.npy"):
        store.import_arrays("x", trunc, pt)
    with pytest.raises(InputError, match=r"missing\.npy: image embeddings file not found"):
        store.import_arrays("x", tmp_path / "missing.npy", pt)


def test_bad_arrays_named_with_file(home, tmp_path, npys):
    pi, pt, img, _ = npys
    bad = img.copy()
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match=r"image embeddings \(.*nan\.npy\).*row 1"):
        store.import_arrays("x", tmp_path / "nan.npy", pt)
    np.save(tmp_path / "flat.npy", np.ones(8, np.float32))
    with pytest.raises(InputError, match=r"text embeddings \(.*flat\.npy\).*2-D"):
        store.import_arrays("x", pi, tmp_path / "flat.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), np.float32))
    with pytest.raises(InputError, match=r"empty\.npy.*at least 1 rows"):
        store.import_arrays("x", tmp_path / "empty.npy", pt)
    np.save(tmp_path / "narrow.npy", emb(4, d=6))
    with pytest.raises(InputError, match=r"img\.npy\) has 8 features but text embeddings \(.*narrow\.npy\) has 6"):
        store.import_arrays("x", pi, tmp_path / "narrow.npy")


def test_non_utf8_caption_file_in_import(home, tmp_path, npys):
    pi, pt, _, _ = npys
    caps = tmp_path / "caps.csv"
    caps.write_bytes(b"caption\na\nb\n\xff\xfe bad\nd\n")
    with pytest.raises(InputError, match=r"caps\.csv: not valid UTF-8 at byte offset 12 \(line 4"):
        store.import_arrays("x", pi, pt, captions=caps)


def test_import_overwrite(home, tmp_path, npys):
    pi, pt, _, _ = npys
    store.import_arrays("w", pi, pt)
    with pytest.raises(DatasetError, match="already exists"):
        store.import_arrays("w", pi, pt)
    ds = store.import_arrays("w", pi, pt, captions=write(tmp_path / "c.txt", "1\n2\n3\n4\n"),
                             overwrite=True)
    assert ds.texts["caption"].tolist() == ["1", "2", "3", "4"]


def test_import_bad_name_before_reading(home, tmp_path):
    with pytest.raises(InputError, match="Invalid dataset name"):
        store.import_arrays("../x", tmp_path / "nope.npy", tmp_path / "nope.npy")
