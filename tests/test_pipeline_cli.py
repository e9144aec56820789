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


# --------------------------------------------------------------------------
# Issue 10: a machine that refuses to write; open_clip's random-init notice
# --------------------------------------------------------------------------

def _cli(args, home, **env_extra):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, CLIPGEOM_HOME=str(home), OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent), **env_extra)
    return subprocess.run([sys.executable, "-m", "clipgeom", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _unwritable_home(tmp_path):
    """A CLIPGEOM_HOME nothing can be written under. Tests may run as root, where
    chmod 555 does not stop writes: then use a FILE where the home folder is
    expected, which makes every mkdir under it fail (ENOTDIR) for root too."""
    import os

    if os.geteuid() != 0:
        home = tmp_path / "ro-home"
        home.mkdir()
        home.chmod(0o555)
        return home
    home = tmp_path / "home-is-a-file"
    home.write_text("not a folder")
    return home


def test_embed_into_an_unwritable_home_says_so_without_a_traceback(tmp_path, image_folder,
                                                                   tiny_model_config):
    root, caps = image_folder
    home = _unwritable_home(tmp_path)
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(root.iterdir()):
            zf.write(p, p.name)
    try:
        for args in (["embed", "ro", "--images", str(root), "--captions", str(caps)],
                     ["embed", "ro", "--zip", str(z)]):
            out = _cli([*args, "--model", str(tiny_model_config), "--workers", "0",
                        "--no-index"], home)
            assert out.returncode != 0
            assert "Traceback" not in out.stderr, out.stderr
            last = out.stderr.strip().splitlines()[-1]
            assert last.startswith("clipgeom: error:") and str(home) in last, out.stderr
    finally:
        if home.is_dir():
            home.chmod(0o755)


def test_a_full_disk_in_any_write_path_is_one_line(clipgeom_home, image_folder, capsys,
                                                   monkeypatch, tiny_model_config):
    """An OSError that escapes a command (here ENOSPC injected into the job) is
    printed by the CLI's top level as strerror + path, exit 1, no traceback."""
    import errno

    from clipgeom import job

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device",
                      str(clipgeom_home / "jobs" / "full" / "image_00000.npz"))
    monkeypatch.setattr(job, "run", full)
    root, caps = image_folder
    rc = main(["embed", "full", "--images", str(root), "--captions", str(caps),
               "--model", str(tiny_model_config)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("clipgeom: error: No space left on device: ")
    assert "image_00000.npz" in err and "Free some disk space" in err
    assert len(err.strip().splitlines()) == 1


def test_checkpoint_embed_does_not_claim_random_weights(tmp_path, clipgeom_home, image_folder,
                                                        tiny_model_config, checkpoint):
    root, caps = image_folder
    out = _cli(["embed", "ck", "--images", str(root), "--captions", str(caps), "--model",
                str(tiny_model_config), "--checkpoint", str(checkpoint), "--workers", "0",
                "--no-index"], clipgeom_home)
    assert out.returncode == 0, out.stderr
    assert "No pretrained weights loaded" not in out.stderr
    assert "initialized randomly" not in out.stderr
    # Without a checkpoint the model IS random, and open_clip's notice stays:
    # this is what the assertion above would see if the filter did nothing.
    import subprocess
    import sys
    code = ("from clipgeom import embed; "
            f"embed.load_model(embed.ModelSpec({str(tiny_model_config)!r}), 'cpu')")
    raw = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert "No pretrained weights loaded" in raw.stderr
