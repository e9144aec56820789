"""End to end through the CLI: fetch-coco from a local server, coco, embed --zip."""

import io
import zipfile

import numpy as np

from clipgeom import embed, fetch, store
from clipgeom.__main__ import main

from fixtures_media import make_coco, make_coco_annotations_zip
from test_fetch import serve


def _coco_files(tmp_path, ann_url: str, n_images: int, captions_per_image: int):
    """A generated MS-COCO (images, {url path: bytes}) to serve over local HTTP."""
    ann_json, images_dir, images = make_coco(tmp_path / "origin", n_images=n_images,
                                             captions_per_image=captions_per_image)
    ann_zip = make_coco_annotations_zip(tmp_path / ann_url.lstrip("/"), ann_json)
    files = {ann_url: ann_zip.read_bytes()}
    for im in images:
        files[f"/val2017/{im['file_name']}"] = (images_dir / im["file_name"]).read_bytes()
    return images, files


def test_fetch_coco_then_coco_command(tmp_path, clipgeom_home, tiny_model_config, checkpoint,
                                      capsys, monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    images, files = _coco_files(tmp_path, "/annotations_trainval2017.zip", 5, 2)
    dest = tmp_path / "coco"
    with serve(files) as srv:
        rc = main(["fetch-coco", str(dest), "--limit", "3",
                   "--annotations-url", srv.base + "/annotations_trainval2017.zip",
                   "--images-url", srv.base + "/val2017"])
    assert rc == 0
    out = capsys.readouterr().out
    ann = dest / "annotations" / "captions_val2017.json"
    assert str(ann) in out
    assert sorted(p.name for p in (dest / "val2017").iterdir()) == \
        sorted(im["file_name"] for im in images[:3])
    rc = main(["coco", "coco3", "--annotations", str(ann), "--images", str(dest / "val2017"),
               "--limit", "3", "--model", str(tiny_model_config), "--checkpoint",
               str(checkpoint), "--workers", "0"])
    assert rc == 0
    ds = store.open_dataset("coco3")
    assert (ds.n_images, ds.n_texts) == (3, 6)
    assert len(ds.pairs()[0]) == 3
    assert ds.manifest["model"]["checkpoint_sha256"] == embed.file_sha256(checkpoint)


def test_embed_from_zip_cleans_up_and_lists_skips(tmp_path, clipgeom_home, tiny_model_config,
                                                  checkpoint, capsys):
    from PIL import Image

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (20, 16), colour).save(buf, "PNG")
        return buf.getvalue()
    zpath = tmp_path / "upload.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("set/a.png", png("red"))
        zf.writestr("set/b.png", png("blue"))
        zf.writestr("set/c.png", b"this is not a png")
        zf.writestr("set/captions.csv",
                    "image,caption\na.png,a red picture\nb.png,a blue picture\n"
                    "c.png,a broken picture\nmissing.png,no such file\n")
    rc = main(["embed", "zipped", "--zip", str(zpath), "--model", str(tiny_model_config),
               "--checkpoint", str(checkpoint), "--workers", "0"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "missing.png" in captured.err                       # skipped at import, listed
    ds = store.open_dataset("zipped")
    assert ds.n_images == 2                                    # c.png failed to decode
    items = " ".join(s["item"] + " " + s["reason"] for s in ds.manifest["skipped"])
    assert "c.png" in items and "missing.png" in items
    assert not any((clipgeom_home / "uploads").iterdir())      # extraction removed
    np.testing.assert_array_equal(np.isfinite(np.asarray(ds.image_emb)), True)


def test_search_needs_a_model_for_text_queries(clipgeom_home, capsys):
    assert main(["synthetic", "syn", "--n", "50", "--dim", "8"]) == 0
    capsys.readouterr()
    assert main(["search", "syn", "--text", "a dog"]) == 2
    assert "query with an item" in capsys.readouterr().err
    assert main(["search", "syn", "--item", "3", "-k", "4", "--json"]) == 0
    assert main(["search", "syn", "--item", "999"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_demo_coco_chains_fetch_import_and_embed(tmp_path, clipgeom_home, tiny_model_config,
                                                 checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    _, files = _coco_files(tmp_path, "/ann.zip", 4, 3)
    with serve(files) as srv:
        rc = main(["demo", "coco", "--name", "cocodemo", "--dir", str(tmp_path / "c"),
                   "--limit", "2", "--annotations-url", srv.base + "/ann.zip",
                   "--images-url", srv.base + "/val2017", "--model", str(tiny_model_config),
                   "--pretrained", "", "--checkpoint", str(checkpoint), "--workers", "0"])
    assert rc == 0
    ds = store.open_dataset("cocodemo")
    assert (ds.n_images, ds.n_texts, len(ds.pairs()[0])) == (2, 6, 2)
