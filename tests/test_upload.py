"""Uploads through clipgeom.upload (the Upload page's core) and the page itself."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from clipgeom import embed, store, upload
from clipgeom.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "8_Upload.py")


def _files(folder: Path):
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def _spec(cfg, ck=None):
    return embed.ModelSpec(str(cfg), checkpoint=None if ck is None else str(ck))


def test_images_and_captions_become_a_dataset(clipgeom_home, image_folder, tiny_model_config,
                                              checkpoint):
    root, caps = image_folder
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    seen = []
    ds = upload.embed_images("mine", _files(root), ("captions.csv", caps.read_bytes()),
                             _spec(tiny_model_config, checkpoint),
                             progress=lambda s, d, t: seen.append((s, d, t)))
    assert ds.n_images == 12 and ds.n_texts == 13
    assert any("broken.png" in s["item"] for s in ds.manifest["skipped"])
    assert seen and seen[-1][1] == seen[-1][2]
    # the stored vectors are the model's raw embeddings of the same files
    lm = embed.load_model(_spec(tiny_model_config, checkpoint))
    want = embed.encode_image_files(lm, [str(root / "img3.png")])[0]
    row = ds.images.index[ds.images["source"].str.endswith("img3.png")][0]
    np.testing.assert_allclose(ds.image_emb[row], want, rtol=1e-4, atol=1e-5)
    assert not list((clipgeom_home / "uploads").iterdir())     # staging removed
    # the model's own temperature, 1 / exp(logit_scale), is recorded (open_clip's
    # initial scale is 1 / 0.07) and becomes the pages' default
    assert ds.manifest["model"]["temperature"] == pytest.approx(0.07, rel=1e-5)


def test_limits_and_bad_names_fail_before_anything_is_written(clipgeom_home, image_folder,
                                                              tiny_model_config):
    root, caps = image_folder
    files = _files(root)
    spec = _spec(tiny_model_config)
    with pytest.raises(InputError, match="12 files were uploaded; the limit is 5"):
        upload.embed_images("a", files, None, spec, limits=upload.UploadLimits(max_files=5))
    with pytest.raises(InputError, match="limit is 0.0 MB"):
        upload.embed_images("a", files, None, spec,
                            limits=upload.UploadLimits(max_total_bytes=1000))
    with pytest.raises(InputError, match="'notes.exe': not an image"):
        upload.embed_images("a", files + [("notes.exe", b"MZ")], None, spec)
    with pytest.raises(InputError, match="both called 'img1.png'"):
        upload.embed_images("a", files + [("sub/img1.png", b"x")], None, spec)
    assert store.list_datasets() == []
    assert not list((clipgeom_home / "uploads").iterdir())     # staging removed
    assert not (clipgeom_home / "jobs").exists() or not list((clipgeom_home / "jobs").iterdir())
    assert upload.safe_name("../../etc/passwd") == "passwd"
    assert upload.safe_name("..\\x\\.hidden") == "hidden"
    assert upload.safe_name("my photo.jpg") == "my photo.jpg"    # kept: captions name it


def test_names_with_spaces_and_accents_still_match_their_captions(clipgeom_home, image_folder,
                                                                 tiny_model_config):
    root, _ = image_folder
    files = [("my photo.png", (root / "img1.png").read_bytes()),
             ("café.jpg", (root / "img0.jpg").read_bytes())]
    caps = "image,caption\nmy photo.png,a spaced name\ncafé.jpg,an accented name\n"
    ds = upload.embed_images("names", files, ("captions.csv", caps.encode()),
                             _spec(tiny_model_config))
    assert ds.n_images == 2 and len(ds.pairs()[0]) == 2
    assert not ds.manifest["skipped"]


@pytest.mark.skipif(not (ROOT / "assets" / "demo" / "manifest.json").exists(),
                    reason="the bundled demo is not built")
def test_a_bundled_name_is_refused_before_any_work(bundled_home, image_folder):
    root, caps = image_folder
    spec = embed.ModelSpec("no-such-model-would-be-loaded")
    with pytest.raises(InputError, match="bundled read-only"):
        upload.embed_images("demo", _files(root), ("captions.csv", caps.read_bytes()), spec,
                            overwrite=True)


def test_existing_dataset_is_kept_unless_replaced(clipgeom_home, image_folder,
                                                  tiny_model_config):
    root, caps = image_folder
    spec = _spec(tiny_model_config)
    cap = ("captions.csv", caps.read_bytes())
    with pytest.raises(InputError, match="no captions file"):
        upload.embed_images("mine", _files(root), None, spec)
    first = upload.embed_images("mine", _files(root)[:4], cap, spec)
    fp = first.fingerprint
    with pytest.raises(InputError, match="already exists"):
        upload.embed_images("mine", _files(root), cap, spec)
    assert store.open_dataset("mine").fingerprint == fp
    # a failing replacement leaves the old dataset whole
    with pytest.raises(InputError):
        upload.embed_zip("mine", ("x.zip", b"not a zip"), spec, overwrite=True)
    assert store.open_dataset("mine").fingerprint == fp
    again = upload.embed_images("mine", _files(root), cap, spec, overwrite=True)
    assert again.n_images == 12


def test_zip_upload(clipgeom_home, image_folder, tiny_model_config):
    root, caps = image_folder
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.iterdir()):
            zf.write(p, f"set/{p.name}")
        zf.write(caps, "set/captions.csv")
    ds = upload.embed_zip("zipped", ("my set.zip", buf.getvalue()), _spec(tiny_model_config))
    assert ds.n_images == 12 and ds.n_texts == 13
    assert len(ds.pairs()[0]) == 12          # one pair per image: its first caption


def test_npy_upload_matches_the_arrays(clipgeom_home, rng):
    img = rng.standard_normal((30, 8)).astype(np.float32)
    txt = rng.standard_normal((30, 8)).astype(np.float32)

    def npy(a):
        b = io.BytesIO()
        np.save(b, a)
        return b.getvalue()

    ds = upload.import_npy("arrays", ("emb.npy", npy(img)), ("emb.npy", npy(txt)))
    np.testing.assert_array_equal(ds.image_emb, img)
    np.testing.assert_array_equal(ds.text_emb, txt)
    bad = txt.copy()
    bad[7] = np.nan
    with pytest.raises(InputError, match="t.npy.*NaN or Inf values in row 7"):
        upload.import_npy("broken", ("i.npy", npy(img)), ("t.npy", npy(bad)))
    with pytest.raises(InputError, match="expected a .npy"):
        upload.import_npy("broken", ("i.txt", b"1 2"), ("t.npy", npy(txt)))
    assert [d["name"] for d in store.list_datasets()] == ["arrays"]
    assert not list((clipgeom_home / "uploads").iterdir())


def test_upload_page_renders_with_its_limits(clipgeom_home):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and not at.error
    assert any("200 MB per file" in c.value for c in at.caption)
    # nothing uploaded yet: submitting asks for a name and files, and writes nothing
    [go] = [b for b in at.button if b.label == "Create dataset"]
    go.click().run()
    assert not at.exception and not at.error
    assert any("choose its files first" in w.value for w in at.warning)
    assert store.list_datasets() == []
    at.radio(key="upload_kind").set_value("Precomputed .npy embeddings").run()
    assert not at.exception and not at.error


def test_upload_page_reports_the_new_dataset_and_its_skipped_files(clipgeom_home, image_folder,
                                                                  tiny_model_config):
    root, caps = image_folder
    (root / "broken.png").write_bytes(b"not an image at all")
    upload.embed_images("fresh", _files(root), ("captions.csv", caps.read_bytes()),
                        _spec(tiny_model_config))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["upload_done"] = "fresh"          # what a finished upload leaves
    at.run()
    assert not at.exception and not at.error
    assert any("Created dataset 'fresh': 12 images, 13 captions" in s.value for s in at.success)
    skipped = at.dataframe[0].value
    assert any("broken.png" in item for item in skipped["item"])
