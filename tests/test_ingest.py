"""clipgeom.ingest: folders + caption files, MS-COCO JSON, zip archives."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from clipgeom import store
from clipgeom.errors import InputError
from clipgeom.ingest import (ItemList, Skipped, ZipLimits, extract_member,
                             from_coco, from_folder, from_zip)
from fixtures_media import (COLORS, image_bytes, make_coco, make_image,
                            make_zip, patch_zip_headers, tree, write_csv,
                            write_jsonl)

HEADER = ["image", "caption", "label", "note"]
ROWS = [  # line numbers in the file: header is line 1, so ROWS[k] is line k + 2
    ["a.jpg", "a red square", "red", "n1"],               # 2
    ["a.jpg", "a red square, again", "", "n2"],           # 3 second caption of a
    ["c.jpg", "a blue thing", "blue", "n3"],              # 4 bare file name -> sub/c.jpg
    ["b.png", "   ", "green", "n4"],                      # 5 empty caption
    ["", "a caption without image", "", "n5"],            # 6 unpaired caption
    ["missing.jpg", "ghost", "", "n6"],                   # 7 missing image
    ["a.jpg", "a red square", "red", "n7"],               # 8 duplicate of line 2
    ["empty.jpg", "nothing", "", "n8"],                   # 9 image file is empty
    ["sub/c.jpg", "another blue", "", "n9"],              # 10 relative path
    ["b.png", "a green square", "green", "n10"],          # 11
    ["b.png", "green again", "red", "n11"],               # 12 label conflict
    ["notes.txt", "text file", "", "n12"],                # 13 not an image file
]


def build_folder(root: Path) -> Path:
    """The standard photo folder (see ROWS)."""
    make_image(root / "a.jpg", color=COLORS[0])
    make_image(root / "b.png", color=COLORS[1])
    make_image(root / "sub" / "c.jpg", color=COLORS[2])
    make_image(root / "sub" / "d.jpeg", color=COLORS[3])   # image without caption
    make_image(root / "x.jpg", color=COLORS[4])            # x.jpg and x.png: same stem
    make_image(root / "x.png", color=COLORS[5])
    (root / "empty.jpg").write_bytes(b"")                  # 0-byte "image"
    (root / "notes.txt").write_text("not an image\n")      # ignored silently
    make_image(root / ".hidden.jpg")                       # hidden: ignored
    make_image(root / "__MACOSX" / "._a.jpg")              # mac junk: ignored
    return root


EXPECTED_IDS = ["a", "b", "sub/c", "sub/d", "x.jpg", "x.png"]
EXPECTED_SOURCES = ["a.jpg", "b.png", "sub/c.jpg", "sub/d.jpeg", "x.jpg", "x.png"]
EXPECTED_TEXTS = [  # text line, caption, image_id, label, note
    (2, "a red square", "a", "red", "n1"),
    (3, "a red square, again", "a", "red", "n2"),
    (4, "a blue thing", "sub/c", "blue", "n3"),
    (6, "a caption without image", None, None, "n5"),
    (10, "another blue", "sub/c", "blue", "n9"),
    (11, "a green square", "b", "green", "n10"),
]


def check_standard(il: ItemList, root: Path, cap_item: str, empty_item: str,
                   cap_name: str = "caps.csv"):
    assert list(il.images.columns[:3]) == ["image_id", "source", "path"]
    assert il.images["image_id"].tolist() == EXPECTED_IDS
    assert il.images["source"].tolist() == EXPECTED_SOURCES
    for p, s in zip(il.images["path"], il.images["source"]):
        assert os.path.isabs(p) and Path(p) == (root / s).absolute()
        assert Path(p).is_file()
    assert il.images["label"].tolist() == ["red", "green", "blue", None, None, None]
    got = list(zip(il.texts["text_id"], il.texts["caption"], il.texts["image_id"],
                   il.texts["label"], il.texts["note"]))
    want = [(f"{cap_name}:{ln}", c, i, lab, n) for ln, c, i, lab, n in EXPECTED_TEXTS]
    assert got == want
    assert list(il.texts.columns) == ["text_id", "caption", "image_id", "label", "note"]
    items = [s.item for s in il.skipped]
    assert items == [empty_item] + [f"{cap_item}:{ln}" for ln in (5, 7, 8, 9, 12, 13)]
    reasons = [s.reason for s in il.skipped]
    assert "empty file (0 bytes)" in reasons[0]
    assert "empty caption" in reasons[1]
    assert "'missing.jpg' not found" in reasons[2]
    assert "duplicate of line 2" in reasons[3]
    assert "'empty.jpg' was skipped (empty file (0 bytes))" in reasons[4]
    assert "label 'red' contradicts label 'green'" in reasons[5] and "line 11" in reasons[5]
    assert "'notes.txt' is not an image file" in reasons[6]
    assert il.summary() == "6 images, 6 captions (5 paired), 7 skipped"


def test_folder_standard(tmp_path):
    root = build_folder(tmp_path / "photos")
    caps = write_csv(tmp_path / "caps.csv", HEADER, ROWS)
    il = from_folder(root, caps)
    check_standard(il, root, str(caps), str(root / "empty.jpg"))
    assert il.root == root.absolute()
    assert il.source["kind"] == "folder" and il.source["captions"] == str(caps)
    assert str(il.skipped[2]).startswith(f"{caps}:7: image file")


def test_folder_strict_raises_at_first_bad_item(tmp_path):
    root = build_folder(tmp_path / "photos")
    caps = write_csv(tmp_path / "caps.csv", HEADER, ROWS)
    with pytest.raises(InputError, match=r"empty\.jpg: empty file"):
        from_folder(root, caps, strict=True)
    (root / "empty.jpg").unlink()
    with pytest.raises(InputError, match=r"caps\.csv:5: empty caption"):
        from_folder(root, caps, strict=True)


def test_folder_captions_found_inside_folder(tmp_path):
    root = build_folder(tmp_path / "photos")
    write_csv(root / "captions.csv", HEADER, ROWS)
    il = from_folder(root)
    check_standard(il, root, str(root / "captions.csv"), str(root / "empty.jpg"),
                   cap_name="captions.csv")
    only = from_folder(root, captions=False)
    assert only.images["image_id"].tolist() == EXPECTED_IDS
    assert len(only.texts) == 0 and list(only.texts.columns) == ["text_id", "caption", "image_id"]
    write_jsonl(root / "captions.jsonl", [{"image": "a.jpg", "caption": "x"}])
    with pytest.raises(InputError, match="several captions files"):
        from_folder(root)


def test_folder_tsv_and_jsonl(tmp_path):
    root = tmp_path / "p"
    make_image(root / "a.jpg")
    make_image(root / "b.png")
    tsv = write_csv(tmp_path / "c.tsv", ["image", "caption"],
                    [["a.jpg", "one, with comma"], ["b.png", "two"]], delimiter="\t")
    il = from_folder(root, tsv)
    assert il.texts["caption"].tolist() == ["one, with comma", "two"]
    assert il.texts["image_id"].tolist() == ["a", "b"]
    assert "label" not in il.images.columns and "label" not in il.texts.columns
    jl = write_jsonl(tmp_path / "c.jsonl", [
        {"image": "b.png", "caption": "bee", "label": 3, "score": 0.5},
        {"image": None, "caption": "free text", "label": None, "score": 1.5},
        {"image": "a.jpg", "caption": ""},
    ])
    il = from_folder(root, jl)
    assert il.texts["text_id"].tolist() == ["c.jsonl:1", "c.jsonl:2"]
    assert il.texts["image_id"].tolist() == ["b", None]
    assert il.texts["label"].tolist() == [3, None]
    assert il.texts["score"].tolist() == [0.5, 1.5]
    assert il.images["label"].tolist() == [None, 3]
    assert [str(s) for s in il.skipped] == [f"{jl}:3: empty caption; write a caption or delete the row."]


def test_folder_whole_file_errors(tmp_path):
    root = tmp_path / "p"
    make_image(root / "a.jpg")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"image,caption\na.jpg,caf\xe9\n")
    with pytest.raises(InputError, match=r"latin1\.csv: not valid UTF-8 at byte offset 23 \(line 2"):
        from_folder(root, bad)
    nocol = write_csv(tmp_path / "nocol.csv", ["file", "caption"], [["a.jpg", "x"]])
    with pytest.raises(InputError, match=r"nocol\.csv: no 'image' column"):
        from_folder(root, nocol)
    nocap = write_csv(tmp_path / "nocap.csv", ["image", "text"], [["a.jpg", "x"]])
    with pytest.raises(InputError, match=r"nocap\.csv: no 'caption' column"):
        from_folder(root, nocap)
    txt = tmp_path / "caps.txt"
    txt.write_text("hello\n")
    with pytest.raises(InputError, match=r"caps\.txt.*\.csv, \.tsv or \.jsonl"):
        from_folder(root, txt)
    with pytest.raises(InputError, match="not found"):
        from_folder(root, tmp_path / "nothere.csv")


def test_folder_empty_or_missing(tmp_path):
    with pytest.raises(InputError, match="images folder not found"):
        from_folder(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        from_folder(tmp_path / "f.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(InputError, match="no image files"):
        from_folder(empty)
    (empty / "zero.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"nothing to import.*zero\.png"):
        from_folder(empty)


def test_folder_captions_only(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    caps = write_csv(tmp_path / "c.csv", ["image", "caption"], [["", "a"], ["", "b"]])
    il = from_folder(empty, caps)
    assert il.n_images == 0 and il.texts["image_id"].tolist() == [None, None]


def test_folder_non_recursive_ambiguous_and_hints(tmp_path):
    root = tmp_path / "p"
    make_image(root / "Top.jpg")
    make_image(root / "s1" / "z.jpg")
    make_image(root / "s2" / "z.jpg")
    caps = write_csv(tmp_path / "c.csv", ["image", "caption"], [
        ["z.jpg", "which one"], ["top.jpg", "case"], ["Top", "no ext"],
        ["s1\\z.jpg", "windows path"], ["../p/Top.jpg", "dotdot inside"],
        ["../other.jpg", "outside"], [str(root / "s2" / "z.jpg"), "absolute"],
    ])
    il = from_folder(root, caps)
    assert il.images["image_id"].tolist() == ["Top", "s1/z", "s2/z"]
    assert il.texts["image_id"].tolist() == ["s1/z", "s2/z"]
    r = {s.item.rsplit(":", 1)[1]: s.reason for s in il.skipped}
    assert "ambiguous" in r["2"] and "s1/z.jpg, s2/z.jpg" in r["2"]
    assert "Did you mean 'Top.jpg'" in r["3"]
    assert "Did you mean 'Top.jpg'" in r["4"]
    assert "outside the images folder" in r["6"] and "outside" in r["7"]
    flat = from_folder(root, caps, recursive=False)
    assert flat.images["image_id"].tolist() == ["Top"]
    assert "sub-folder" in {s.item.rsplit(":", 1)[1]: s.reason for s in flat.skipped}["5"]


def test_item_list_goes_into_the_store(tmp_path, clipgeom_home):
    root = build_folder(tmp_path / "photos")
    caps = write_csv(tmp_path / "caps.csv", HEADER, ROWS)
    il = from_folder(root, caps)
    rng = np.random.default_rng(0)
    images = il.images_table()
    assert "path" not in images.columns and "path" in il.images.columns
    ds = store.create_dataset("folder", rng.normal(size=(il.n_images, 4)),
                              rng.normal(size=(il.n_texts, 4)), images, il.texts,
                              source=il.source,
                              extra_manifest={"skipped": il.skipped_records()})
    assert ds.images["image_id"].tolist() == EXPECTED_IDS
    assert ds.texts["image_id"].tolist() == [t[2] for t in EXPECTED_TEXTS]
    img_rows, txt_rows = ds.pairs()
    assert img_rows.tolist() == [0, 1, 2] and txt_rows.tolist() == [0, 5, 2]
    assert len(ds.manifest["skipped"]) == 7


# --------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------

def coco_fixture(tmp_path):
    extra = [{"id": 5000, "image_id": 555, "caption": "orphan"},
             {"id": 5001, "image_id": 7, "caption": "   "},
             {"id": 5002, "image_id": 42, "caption": "image 42 caption 0"}]
    return make_coco(tmp_path, ids=[42, 7, 13, 99], missing={13},
                     extra_annotations=extra)


def test_coco_all(tmp_path):
    path, images_dir, _ = coco_fixture(tmp_path)
    il = from_coco(path, images_dir)
    assert il.images["image_id"].tolist() == ["42", "7", "99"]
    assert il.images["source"].tolist() == ["000000000042.jpg", "000000000007.jpg",
                                            "000000000099.jpg"]
    assert il.images["coco_id"].tolist() == [42, 7, 99]
    assert all(Path(p).is_file() for p in il.images["path"])
    # annotations in JSON order: 1000..1003 (caption 0), 1004..1007 (caption 1)
    assert il.texts["text_id"].tolist() == ["1000", "1001", "1003", "1004", "1005", "1007"]
    assert il.texts["image_id"].tolist() == ["42", "7", "99", "42", "7", "99"]
    assert il.texts["caption"].tolist()[0] == "image 42 caption 0"  # stripped
    items = [s.item for s in il.skipped]
    assert items == [str(images_dir / "000000000013.jpg"),
                     f"{path}:annotations[8]", f"{path}:annotations[9]",
                     f"{path}:annotations[10]"]
    reasons = [s.reason for s in il.skipped]
    assert "images[2] (id 13)" in reasons[0] and "not found" in reasons[0]
    assert "2 caption(s) are left out" in reasons[0]
    assert "image_id 555 is not in the 'images' list" in reasons[1]
    assert "empty caption" in reasons[2]
    assert "duplicate of annotations[0]" in reasons[3]
    assert il.source == {"kind": "coco", "annotations": str(path),
                         "images_dir": str(images_dir), "limit": None}


def test_coco_limit(tmp_path):
    path, images_dir, _ = coco_fixture(tmp_path)
    il = from_coco(path, images_dir, limit=2)
    assert il.images["image_id"].tolist() == ["42", "7"]
    assert il.texts["text_id"].tolist() == ["1000", "1001", "1004", "1005"]
    assert [s.item for s in il.skipped] == [f"{path}:annotations[{k}]" for k in (8, 9, 10)]
    il3 = from_coco(path, images_dir, limit=3)  # the 3rd image is missing: not replaced
    assert il3.images["image_id"].tolist() == ["42", "7"]
    assert il3.skipped[0].item.endswith("000000000013.jpg")
    with pytest.raises(InputError, match="limit"):
        from_coco(path, images_dir, limit=0)


def test_coco_strict(tmp_path):
    path, images_dir, _ = coco_fixture(tmp_path)
    with pytest.raises(InputError, match=r"000000000013\.jpg: listed as images\[2\]"):
        from_coco(path, images_dir, strict=True)


@pytest.mark.parametrize("content,match", [
    ('{"images": [', r"not valid JSON .* line 1"),
    ('[1, 2]', "expected a JSON object"),
    ('{"images": []}', "key 'annotations' is missing"),
    ('{"images": {}, "annotations": []}', "key 'images' must be a list"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}], "annotations": []}',
     r"images\[1\]\.file_name"),
    ('{"images": [{"file_name": "a.jpg"}], "annotations": []}', r"images\[0\]\.id"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1}]}',
     r"annotations\[0\]\.caption"),
    ('{"images": [], "annotations": [{"id": 1, "caption": "x"}]}',
     r"annotations\[0\]\.image_id"),
])
def test_coco_bad_json(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(InputError, match=r"bad\.json: .*" + match):
        from_coco(p, tmp_path / "imgs")


def test_coco_unsafe_file_name_and_missing_dir(tmp_path):
    (tmp_path / "imgs").mkdir()
    make_image(tmp_path / "outside.jpg")
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "../outside.jpg"}],
                             "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}))
    with pytest.raises(InputError, match="nothing to import"):
        from_coco(p, tmp_path / "imgs")
    with pytest.raises(InputError, match="images folder not found"):
        from_coco(p, tmp_path / "nope")


# --------------------------------------------------------------------------
# Zip
# --------------------------------------------------------------------------

def zip_folder(folder: Path, zpath: Path, prefix: str = "", extra=()) -> Path:
    entries = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            entries.append((prefix + p.relative_to(folder).as_posix(), p.read_bytes()))
    entries.extend(extra)
    return make_zip(zpath, entries)


def test_zip_round_trip_matches_folder(tmp_path):
    src = build_folder(tmp_path / "photos")
    write_csv(src / "captions.csv", HEADER, ROWS)
    z = zip_folder(src, tmp_path / "photos.zip", prefix="photos/",
                   extra=[("photos/.DS_Store", b"junk"), ("__MACOSX/photos/._b.png", b"junk")])
    work = tmp_path / "work"
    il = from_zip(z, work)
    ref = from_folder(src)
    assert il.images.drop(columns="path").equals(ref.images.drop(columns="path"))
    assert il.texts.equals(ref.texts)
    # Members that are neither images nor the captions file are not extracted;
    # they are listed first, with the reason (hidden files silently ignored).
    not_extracted = [s for s in il.skipped if s.reason.endswith("not extracted.")]
    assert [s.item for s in not_extracted] == ["photos.zip/photos/notes.txt"]
    assert il.source["not_extracted"] == 1
    rest = il.skipped[len(not_extracted):]
    assert [s.reason for s in rest] == [s.reason for s in ref.skipped]
    assert rest[0].item == "photos.zip/photos/empty.jpg"
    assert rest[1].item == "photos.zip/photos/captions.csv:5"
    assert il.root.parent.parent == work.absolute() and il.root.name == "photos"
    for p in il.images["path"]:
        assert Path(p).is_file() and Path(p).is_relative_to(work.absolute())
        assert Path(p).read_bytes() == (src / Path(p).relative_to(il.root)).read_bytes()
    assert il.source["captions"] == "photos/captions.csv"
    assert not any(".DS_Store" in p or "__MACOSX" in p for p in tree(work))


def test_zip_top_level_files_and_images_only(tmp_path):
    z = make_zip(tmp_path / "flat.zip", [
        ("a.png", image_bytes()), ("sub/b.png", image_bytes(color=(0, 0, 255))),
    ])
    il = from_zip(z, tmp_path / "work")
    assert il.images["image_id"].tolist() == ["a", "sub/b"]
    assert len(il.texts) == 0 and il.source["captions"] is None
    z2 = make_zip(tmp_path / "caps.zip", [
        ("a.png", image_bytes()), ("captions.jsonl",
                                   b'{"image": "a.png", "caption": "hi"}\n'),
    ])
    il2 = from_zip(z2, tmp_path / "work")  # same work dir: a new sub-folder
    assert il2.texts["image_id"].tolist() == ["a"]
    assert il2.root != il.root


def test_zip_two_captions_files_rejected_and_cleaned(tmp_path):
    z = make_zip(tmp_path / "two.zip", [
        ("a.png", image_bytes()), ("captions.csv", b"image,caption\n"),
        ("captions.tsv", b"image\tcaption\n"),
    ])
    with pytest.raises(InputError, match="several captions files"):
        from_zip(z, tmp_path / "work")
    assert tree(tmp_path / "work") == set()


def _dup_zip(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_zip(path, [("a.png", image_bytes()), ("a.png", image_bytes())])


def _encrypted_zip(path):
    make_zip(path, [("a.png", image_bytes())])
    return patch_zip_headers(path, flag_bits=0x1)


def _lying_zip(path):
    # declares 1,000 bytes; holds 2 MB
    make_zip(path, [("big.bmp", bytes(2_000_000))])
    return patch_zip_headers(path, file_size=1000)


def _truncated_zip(path):
    make_zip(path, [("a.png", image_bytes()), ("b.png", image_bytes(color=(1, 2, 3)))])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bomb_zip(path):
    return make_zip(path, [("bomb.bmp", bytes(50 * 1024 * 1024))])


HOSTILE = {
    "dotdot": (lambda p: make_zip(p, [("../evil.jpg", image_bytes())]), None, "'..'"),
    "dotdot-nested": (lambda p: make_zip(p, [("ok/../../evil.jpg", image_bytes())]), None, "'..'"),
    "absolute": (lambda p: make_zip(p, [("/tmp/evil.jpg", image_bytes())]), None, "absolute"),
    "drive": (lambda p: make_zip(p, [("C:/evil.jpg", image_bytes())]), None, "drive letter"),
    "backslash": (lambda p: make_zip(p, [("..\\evil.jpg", image_bytes())]), None, "backslash"),
    "symlink": (lambda p: make_zip(p, [("a.png", image_bytes()),
                                       ("link.jpg", b"/etc/passwd", {"symlink": True})]),
                None, "symbolic link"),
    "duplicate": (_dup_zip, None, "more than once"),
    "encrypted": (_encrypted_zip, None, "encrypted"),
    "bomb": (_bomb_zip, ZipLimits(max_ratio=10), "zip bomb"),
    "too-many": (lambda p: make_zip(p, [(f"{k}.png", image_bytes()) for k in range(5)]),
                 ZipLimits(max_files=3), "5 files, more than the 3"),
    "member-size": (lambda p: make_zip(p, [("a.png", image_bytes())]),
                    ZipLimits(max_member_bytes=10), "allowed for one file"),
    "total-size": (lambda p: make_zip(p, [("a.png", image_bytes()), ("b.png", image_bytes())]),
                   ZipLimits(max_total_uncompressed=100), "would extract to"),
    "lying-header": (_lying_zip, None, "corrupt|more data"),
    "corrupt": (lambda p: (p.write_bytes(os.urandom(2000)), p)[1], None, "not a valid zip"),
    "truncated": (_truncated_zip, None, "not a valid zip|corrupt"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_zip_rejected_and_nothing_written_outside(tmp_path, name):
    make, limits, match = HOSTILE[name]
    box = tmp_path / "box"
    box.mkdir()
    z = make(box / f"{name}.zip")
    work = box / "deep" / "work"
    before = tree(tmp_path)
    with pytest.raises(InputError, match=match) as err:
        from_zip(z, work, limits=limits or ZipLimits())
    assert f"{name}.zip" in str(err.value)
    after = tree(tmp_path)
    assert after - before <= {"box/deep", "box/deep/work"}
    assert tree(work) == set() if work.exists() else True
    assert not any("evil" in p for p in after)


def test_small_uniform_members_not_mistaken_for_bombs(tmp_path):
    # A 300 KB all-zero file compresses ~1000:1 but is below ratio_min_bytes.
    z = make_zip(tmp_path / "z.zip", [("flat.bmp", bytes(300_000)), ("a.png", image_bytes())])
    il = from_zip(z, tmp_path / "work")
    assert il.images["source"].tolist() == ["a.png", "flat.bmp"]


def test_extract_member(tmp_path):
    z = make_zip(tmp_path / "ann.zip", [("annotations/captions_val2017.json", b"{}"),
                                        ("annotations/other.json", b"[]")])
    out = extract_member(z, "annotations/captions_val2017.json", tmp_path / "o" / "c.json")
    assert out.read_bytes() == b"{}"
    assert tree(tmp_path / "o") == {"c.json"}
    with pytest.raises(InputError, match="has no member 'annotations/captions_x.json'.*other.json"):
        extract_member(z, "annotations/captions_x.json", tmp_path / "o" / "x.json")
    evil = make_zip(tmp_path / "evil.zip", [("annotations/captions_val2017.json", b"{}"),
                                            ("../evil", b"x")])
    with pytest.raises(InputError, match="'..'"):
        extract_member(evil, "annotations/captions_val2017.json", tmp_path / "o" / "e.json")
    assert not (tmp_path / "o" / "e.json").exists()


def test_skipped_str():
    assert str(Skipped("f.csv:3", "empty caption.")) == "f.csv:3: empty caption."


def test_zip_not_found(tmp_path):
    with pytest.raises(InputError, match="zip file not found"):
        from_zip(tmp_path / "no.zip", tmp_path / "work")
    assert not (tmp_path / "work").exists()
