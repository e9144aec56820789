"""Uploads through clipgeom.upload (the Upload page's core) and the page itself
(whose embedding runs as a background job: tests/test_background_jobs.py and
tests/test_page_jobs.py follow the jobs themselves)."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from apptest_helpers import change_every_control
from clipgeom import background, embed, sample_zip, store, upload
from clipgeom.errors import DatasetError, InputError
from tiny_data import tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "8_Upload.py")
HAS_DEMO_MODEL = (ROOT / "assets" / "demo-model" / "demo-clip.pt").exists()
HAS_DEMO = (ROOT / "assets" / "demo" / "manifest.json").exists()
ZIP_KIND = "One zip (images + captions.csv)"


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
    # the background path refuses the same uploads with the same words, before
    # any job exists
    start = upload.start_embed_images
    with pytest.raises(InputError, match="12 files were uploaded; the limit is 5"):
        start("a", files, None, spec, limits=upload.UploadLimits(max_files=5))
    with pytest.raises(InputError, match="limit is 0.0 MB"):
        start("a", files, None, spec, limits=upload.UploadLimits(max_total_bytes=1000))
    with pytest.raises(InputError, match="'notes.exe': not an image"):
        start("a", files + [("notes.exe", b"MZ")], None, spec)
    with pytest.raises(InputError, match="both called 'img1.png'"):
        start("a", files + [("sub/img1.png", b"x")], None, spec)
    with pytest.raises(InputError, match="no captions file"):
        start("a", files, None, spec)
    with pytest.raises(InputError, match="expected a .zip"):
        upload.start_embed_zip("a", ("x.tar", b"x"), spec)
    with pytest.raises(InputError, match="limit is 0.0 MB"):
        upload.start_embed_zip("a", ("x.zip", b"x" * 2000), spec,
                               limits=upload.UploadLimits(max_total_bytes=1000))
    assert background.list_jobs() == []
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
    at.session_state["upload_result"] = {"ok": "fresh"}   # what a finished upload leaves
    at.run()
    assert not at.exception and not at.error
    assert any("Created dataset 'fresh': 12 images, 13 captions" in s.value for s in at.success)
    skipped = at.dataframe[0].value
    assert any("broken.png" in item for item in skipped["item"])
    # the manifest records the staging path; the page shows the user's file name only
    stored = store.open_dataset("fresh").manifest["skipped"]
    assert any("uploads" in s["reason"] for s in stored)
    for col in ("item", "reason"):
        for cell in skipped[col]:
            assert "uploads" not in cell and str(clipgeom_home) not in cell, cell
    assert any(r.startswith("broken.png: ") for r in skipped["reason"])


# ---- the sample zip, "every image failed", server paths, per-attempt state, deletion ----

def _zip(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _submit(at):
    [go] = [b for b in at.button if b.label == "Create dataset"]
    return go.click().run()


def _upload_zip(at, name, data, filename="set.zip", overwrite=False):
    """Submit a zip on the page; when that started a job, wait for it to end
    and rerun the page (what the Jobs panel's polling does in a browser)."""
    at.radio(key="upload_kind").set_value(ZIP_KIND).run()
    at.text_input(key="upload_name").set_value(name)
    at.checkbox(key="upload_overwrite").set_value(overwrite)
    at.file_uploader(key="upload_zip").set_value((filename, data, "application/zip"))
    _submit(at)
    res = at.session_state["upload_result"] if "upload_result" in at.session_state else {}
    if "job" in res:
        assert any("in the background" in i.value for i in at.info)
        assert not background.wait(res["job"], timeout=300).active
        at.run()
    return at


def test_sample_zip_is_deterministic_and_its_captions_describe_its_images():
    import csv
    from PIL import Image

    first = sample_zip.sample_zip.__wrapped__()
    assert first == sample_zip.sample_zip.__wrapped__() == sample_zip.sample_zip()
    zf = zipfile.ZipFile(io.BytesIO(first))
    names = zf.namelist()
    assert names[-1] == "clipgeom-sample/captions.csv"
    pngs = [n for n in names if n.endswith(".png")]
    assert len(pngs) == 8 and len(names) == 9
    rows = list(csv.DictReader(io.StringIO(zf.read(names[-1]).decode())))
    assert len(rows) == 16
    rgb = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 60),
           "yellow": (235, 200, 20), "purple": (130, 40, 170), "orange": (245, 130, 20)}
    corner = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
              "bottom right": (0.7, 0.7), "centre": (0.5, 0.5)}
    for row in rows:
        assert "clipgeom-sample/" + row["image"] in pngs
        img = Image.open(io.BytesIO(zf.read("clipgeom-sample/" + row["image"]))).convert("RGB")
        colour = next(c for c in rgb if f" {c} " in f" {row['caption']} ")
        if " at the " in row["caption"]:          # the shape's colour where it is said to be
            fx, fy = corner[row["caption"].split(" at the ")[1]]
            px = img.getpixel((int(fx * img.width), int(fy * img.height)))
            assert px == rgb[colour], (row, px)
        assert img.getpixel((img.width // 2 if "centre" not in row["caption"] else 0, 0)) \
            == (255, 255, 255)                   # a white background


@pytest.mark.skipif(not HAS_DEMO_MODEL, reason="the demo model is not built")
def test_sample_zip_uploads_through_the_page(bundled_home):
    """The offered sample goes through the page's own path (form, zip, demo model)
    and becomes an 8-image, 16-caption dataset with nothing skipped."""
    import time

    at = AppTest.from_file(PAGE, default_timeout=300).run()
    [dl] = [b for b in at.get("download_button") if b.proto.label == "Sample zip"]
    t0 = time.monotonic()
    _upload_zip(at, "sample", sample_zip.sample_zip(), sample_zip.FILE_NAME)
    took = time.monotonic() - t0
    print(f"sample zip through the page: {took:.1f} s")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Created dataset 'sample': 8 images, 16 captions, 64 dimensions, 8 pairs"
               in s.value for s in at.success)
    assert any("No file was skipped" in c.value for c in at.caption)
    assert at.session_state["dataset"] == "sample"
    ds = store.open_dataset("sample")
    assert not ds.manifest["skipped"]
    assert sorted(ds.texts["caption"])[:1] == ["a blue circle at the centre"]


def test_every_image_failed_names_the_files_not_the_server(clipgeom_home, tiny_model_config):
    data = _zip({"set/bad0.png": b"not a png", "set/bad1.png": b"\x89PNG\r\n\x1a\n nope",
                 "set/bad2.jpg": b"", "set/bad3.png": b"x",
                 "set/captions.csv": "image,caption\nbad0.png,a\nbad1.png,b\nbad2.jpg,c\n"
                                     "bad3.png,d\n"})
    with pytest.raises(InputError) as err:
        upload.embed_zip("broken", ("my set.zip", data), _spec(tiny_model_config))
    msg = str(err.value)
    assert "every image failed" in msg and "needs at least" not in msg
    assert "set/bad0.png: not an image" in msg and "set/bad1.png" in msg
    assert "(and 2 more)" in msg
    assert "uploads" not in msg and str(clipgeom_home) not in msg
    assert store.list_datasets() == []


def test_user_message_cuts_staging_paths(clipgeom_home):
    st_root = clipgeom_home / "uploads" / "upload-ab12cd_9"
    assert upload.user_message(f"{st_root}/images/my photo.png: bad") == "my photo.png: bad"
    assert upload.user_message(f"'{st_root}/extracted/set-x1y2z3w4/set/a.png': x") == \
        "'set/a.png': x"
    assert upload.user_message(f"{st_root}/my set.zip: not a zip") == "my set.zip: not a zip"
    assert upload.user_message("/elsewhere/uploads/upload-zz/text/t.npy: NaN") == "t.npy: NaN"
    assert upload.user_message("plain reason") == "plain reason"
    # a background job's staged inputs are cut the same way
    job_in = clipgeom_home / "background" / "20250101-120000-ab12cd" / "input"
    assert upload.user_message(f"{job_in}/images/my photo.png: bad") == "my photo.png: bad"
    assert upload.user_message(f"'{job_in}/extracted/set-x1y2z3w4/set/a.png': x") == \
        "'set/a.png': x"
    assert upload.user_message(f"{job_in}/my set.zip: not a zip") == "my set.zip: not a zip"


@pytest.mark.skipif(not HAS_DEMO_MODEL, reason="the demo model is not built")
def test_each_attempt_replaces_the_previous_result(bundled_home, monkeypatch):
    """A success with skipped files, then a failing attempt: only the failure is
    shown (no success, no skipped table, no progress bar), also on later reruns;
    an unexpected exception is an error box, not a traceback; every-image-failed
    says so and names the user's files."""
    good = dict(zip([f"set/{n}" for n, _ in sample_zip.sample_files()],
                    [b for _, b in sample_zip.sample_files()]))
    good["set/broken.png"] = b"not an image"
    at = AppTest.from_file(PAGE, default_timeout=300).run()
    _upload_zip(at, "first", _zip(good))
    assert any("Created dataset 'first'" in s.value for s in at.success)
    assert len(at.dataframe) == 1                                  # the skipped table
    assert any("broken.png" in r for r in at.dataframe[0].value["reason"])
    # every image fails
    bad = {"set/bad0.png": b"nope", "set/bad1.png": b"nope",
           "set/captions.csv": b"image,caption\nbad0.png,a\nbad1.png,b\n"}
    _upload_zip(at, "second", _zip(bad))
    assert not at.exception
    assert not at.success and not at.dataframe and not at.get("progress")
    [err] = at.error
    shown = err.value.replace("\\", "")           # the text once markdown escapes render
    assert "every image failed" in shown and "set/bad0.png: not an image" in shown
    assert "uploads" not in shown and "needs at least" not in shown
    at.radio(key="upload_model").set_value("open_clip model").run()   # any later rerun
    assert not at.success and not at.dataframe
    # an unexpected failure inside the pipeline
    def boom(*a, **k):
        raise RuntimeError("CUDA exploded")
    monkeypatch.setattr(upload, "start_embed_zip", boom)
    at.radio(key="upload_model").set_value("demo model (bundled, offline)").run()
    _upload_zip(at, "third", _zip(good))
    assert not at.exception
    assert not at.success and not at.get("progress")
    [err] = at.error
    assert "CUDA exploded" in err.value and "RuntimeError" in err.value
    assert "first" in [d["name"] for d in store.list_datasets()]
    # the Jobs panel lists both jobs, without repeating their outcome as boxes
    assert [j.dataset for j in background.list_jobs()] == ["second", "first"]


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
def test_delete_own_dataset_with_confirmation(bundled_home):
    """Only the user's datasets are offered; the button needs the confirmation;
    after deletion neither picker lists it and the selection falls back to the demo."""
    tiny_dataset(d=16, snapshots=True)
    tiny_dataset(name="other", d=16)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["dataset"] = "tiny20"
    at.run()
    assert not at.exception and not at.error
    pick = at.selectbox(key="delete_pick")
    assert list(pick.options) == ["other", "tiny20"]               # never the bundled demo
    assert at.button(key="delete_go").disabled
    pick.select("tiny20").run()
    assert at.button(key="delete_go").disabled                    # still unconfirmed
    assert "tiny20" in upload.user_datasets()
    at.checkbox(key="delete_confirm").check().run()
    assert not at.button(key="delete_go").disabled
    at.button(key="delete_go").click().run()
    assert not at.exception and not at.error
    assert "tiny20" not in upload.user_datasets()
    assert any("Deleted dataset 'tiny20'" in s.value for s in at.success)
    assert at.session_state["dataset"] == "demo"
    assert "tiny20" not in at.selectbox(key="dataset_select").options
    assert list(at.selectbox(key="delete_pick").options) == ["other"]
    assert not at.checkbox(key="delete_confirm").value
    with pytest.raises(DatasetError, match="bundled"):
        upload.delete_user_dataset("demo")


def _upload_controls(at):
    keys = change_every_control(at, texts={"upload_name": "x"})
    assert {"upload_kind", "upload_overwrite", "upload_name"} <= set(keys)
    # the last kind (precomputed arrays) hides the model choice: go back for it
    at.radio(key="upload_kind").set_value("Images + captions file").run()
    keys += change_every_control(at, skip=("dataset_select", *keys),
                                 texts={"upload_arch": "RN50", "upload_tag": "openai"})
    assert "upload_arch" in keys or not HAS_DEMO_MODEL
    return keys


def test_upload_page_every_control_with_a_20_pair_dataset(clipgeom_home):
    tiny_dataset(d=16, snapshots=True)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["dataset"] = "tiny20"
    at.run()
    keys = _upload_controls(at)
    assert "delete_confirm" in keys
    assert "tiny20" in upload.user_datasets()          # changing controls deletes nothing


@pytest.mark.skipif(not HAS_DEMO, reason="the bundled demo is not built")
def test_upload_page_every_control_on_the_demo(bundled_home):
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert at.session_state["dataset"] == "demo"
    keys = _upload_controls(at)
    assert "upload_model" in keys
