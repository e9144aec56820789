"""Raw open_clip extraction and the resumable embedding job (tiny random model)."""

import json

import numpy as np
import pytest
import torch

from clipgeom import embed, ingest, job, store
from clipgeom.__main__ import main
from clipgeom.errors import InputError
from clipgeom.images import open_image


@pytest.fixture
def spec(tiny_model_config):
    return embed.ModelSpec(str(tiny_model_config))


def _opts(**kw):
    kw.setdefault("workers", 0)
    kw.setdefault("chunk_rows", 4)
    kw.setdefault("build_index", False)
    return job.JobOptions(**kw)


def test_stored_rows_are_the_models_raw_output(spec, tiny_model_config, image_folder,
                                               clipgeom_home, tmp_path):
    root, caps = image_folder
    lm = embed.load_model(spec)                     # random init
    ck = tmp_path / "w.pt"
    torch.save(lm.model.state_dict(), ck)
    ds = job.run("raw", ingest.from_folder(root, caps),
                 embed.ModelSpec(str(tiny_model_config), checkpoint=str(ck)), _opts())
    assert ds.n_images == 12 and ds.n_texts == 13 and ds.dim == 32
    img = np.asarray(ds.image_emb)
    norms = np.linalg.norm(img, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-2)          # not normalised
    # recompute row 3 and caption 5 directly with the model, un-normalised
    src = root / ds.images["source"].iloc[3]
    with torch.inference_mode():
        direct = lm.model.encode_image(lm.preprocess(open_image(src))[None], normalize=False)
        cap = ds.texts["caption"].iloc[5]
        direct_t = lm.model.encode_text(lm.tokenizer([cap]), normalize=False)
    np.testing.assert_allclose(img[3], direct[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ds.text_emb)[5], direct_t[0].numpy(), rtol=1e-5,
                               atol=1e-5)
    assert ds.manifest["normalized_input"] == {"image": False, "text": False}
    assert ds.manifest["embedding"]["normalized"] is False
    # two captions for the first image; pairs use one per image
    ii, tt = ds.pairs()
    assert len(ii) == 12


def test_checkpoint_reproduces_embeddings(spec, tiny_model_config, image_folder, clipgeom_home,
                                          tmp_path):
    root, caps = image_folder
    torch.manual_seed(7)
    lm = embed.load_model(spec)
    ck = tmp_path / "tiny.pt"
    torch.save(lm.model.state_dict(), ck)
    ck_spec = embed.ModelSpec(str(tiny_model_config), checkpoint=str(ck))
    a = job.run("a", ingest.from_folder(root, caps), ck_spec, _opts())
    torch.manual_seed(999)               # a different random init must not matter
    b = job.run("b", ingest.from_folder(root, caps), ck_spec, _opts())
    np.testing.assert_array_equal(np.asarray(a.image_emb), np.asarray(b.image_emb))
    assert a.manifest["model"]["checkpoint_sha256"] == embed.file_sha256(ck)
    pix = torch.stack([lm.preprocess(open_image(root / s)) for s in a.images["source"][:3]])
    np.testing.assert_allclose(np.asarray(a.image_emb)[:3], embed.encode_image_batch(lm, pix),
                               rtol=1e-5, atol=1e-5)


def test_killed_then_resumed_job_equals_uninterrupted(spec, tiny_model_config, image_folder,
                                                      clipgeom_home, tmp_path, monkeypatch):
    root, caps = image_folder
    torch.manual_seed(3)
    ck = tmp_path / "w.pt"
    torch.save(embed.load_model(spec).model.state_dict(), ck)
    ck_spec = embed.ModelSpec(str(tiny_model_config), checkpoint=str(ck))
    full = job.run("full", ingest.from_folder(root, caps), ck_spec, _opts())

    def die_after_first_chunk(stage, done, total):
        if stage == "images" and done >= 5:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        job.run("part", ingest.from_folder(root, caps), ck_spec, _opts(),
                progress=die_after_first_chunk)
    assert "part" not in [d["name"] for d in store.list_datasets()]   # no half dataset
    jobdir = clipgeom_home / "jobs" / "part"
    assert (jobdir / "image_00000.npz").exists() and not (jobdir / "image_00002.npz").exists()

    calls = []
    real = embed.encode_image_batch
    monkeypatch.setattr(embed, "encode_image_batch",
                        lambda lm, px: calls.append(len(px)) or real(lm, px))
    resumed = job.run("part", ingest.from_folder(root, caps), ck_spec, _opts(resume=True))
    assert sum(calls) == 8                       # chunk 0 (4 images) was not recomputed
    np.testing.assert_array_equal(np.asarray(resumed.image_emb), np.asarray(full.image_emb))
    np.testing.assert_array_equal(np.asarray(resumed.text_emb), np.asarray(full.text_emb))
    assert not jobdir.exists()


def test_resume_refuses_a_different_job(spec, image_folder, clipgeom_home):
    root, caps = image_folder
    with pytest.raises(KeyboardInterrupt):
        job.run("x", ingest.from_folder(root, caps), spec, _opts(),
                progress=lambda s, d, t: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(InputError, match="without --resume"):
        job.run("x", ingest.from_folder(root, caps), spec, _opts(resume=True, chunk_rows=3))


def test_corrupt_image_is_skipped_and_listed(spec, image_folder, clipgeom_home):
    root, caps = image_folder
    data = (root / "img2.jpg").read_bytes()
    (root / "img2.jpg").write_bytes(data[: len(data) // 3])          # truncated JPEG
    ds = job.run("skips", ingest.from_folder(root, caps), spec, _opts())
    assert ds.n_images == 11
    reasons = [s for s in ds.manifest["skipped"] if "img2.jpg" in s["item"]]
    assert reasons and "img2.jpg" in reasons[0]["reason"]
    # its caption is kept, unpaired
    assert ds.n_texts == 13
    assert ds.texts["image_id"].isna().sum() == 1
    with pytest.raises(InputError, match="img2.jpg"):
        job.run("strict", ingest.from_folder(root, caps), spec, _opts(strict=True))
    assert "strict" not in [d["name"] for d in store.list_datasets()]


def test_thumbnails_are_stored(spec, image_folder, clipgeom_home):
    root, caps = image_folder
    ds = job.run("thumbs", ingest.from_folder(root, caps), spec, _opts())
    from PIL import Image
    for row in range(ds.n_images):
        p = ds.thumb_path(row)
        assert p is not None and p.exists()
        with Image.open(p) as im:
            assert im.format == "JPEG" and max(im.size) <= 256


def test_long_captions_are_counted_as_truncated(spec):
    lm = embed.load_model(spec)
    assert embed.count_truncated(lm, ["a cat", " ".join(["word"] * 40)]) == 1
    assert embed.encode_texts(lm, [" ".join(["word"] * 40)]).shape == (1, 32)


def test_offline_pretrained_gives_a_clear_message(monkeypatch):
    import socket

    def no_dns(*a, **k):
        raise OSError("no network")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(InputError, match="--checkpoint"):
        embed.load_model(embed.ModelSpec("ViT-B-32", pretrained="openai"))


def test_unknown_architecture_and_bad_checkpoint(spec, tiny_model_config, tmp_path):
    with pytest.raises(InputError, match="ViT-B-32"):
        embed.load_model(embed.ModelSpec("ViT-B-33"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt"):
        embed.load_model(embed.ModelSpec(str(tiny_model_config), checkpoint=str(bad)))
    with pytest.raises(InputError, match="device"):
        embed.pick_device("tpu")


def test_cli_embed_index_and_search(tiny_model_config, image_folder, clipgeom_home, capsys,
                                    tmp_path):
    root, caps = image_folder
    torch.manual_seed(1)
    ck = tmp_path / "cli.pt"
    torch.save(embed.load_model(embed.ModelSpec(str(tiny_model_config))).model.state_dict(), ck)
    rc = main(["embed", "cli", "--images", str(root), "--captions", str(caps),
               "--model", str(tiny_model_config), "--checkpoint", str(ck), "--workers", "0"])
    assert rc == 0
    assert "embedded cli: 12 images, 13 captions" in capsys.readouterr().out
    ds = store.open_dataset("cli")
    assert (ds.index_dir / "image.faiss").exists()
    assert main(["search", "cli", "--text", "a red circle", "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # brute force: cosine of the query's raw embedding with every image
    lm = embed.load_model(embed.ModelSpec(str(tiny_model_config), checkpoint=str(ck)))
    q = embed.encode_texts(lm, ["a red circle"])[0]
    img = np.asarray(ds.image_emb, np.float64)
    cos = img @ q / (np.linalg.norm(img, axis=1) * np.linalg.norm(q))
    assert [r["row"] for r in res["results"]] == list(np.argsort(-cos)[:3])
    assert res["results"][0]["score"] == pytest.approx(cos.max(), abs=1e-5)
    assert main(["search", "cli", "--item", "2", "--item-modality", "image", "--target",
                 "text", "-k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["results"]) == 2


def test_sigkilled_process_resumes_to_identical_arrays(tiny_model_config, image_folder,
                                                       clipgeom_home, tmp_path):
    """A real SIGKILL (no cleanup runs) after two chunks, then --resume."""
    import os
    import subprocess
    import sys
    import textwrap

    root, caps = image_folder
    torch.manual_seed(5)
    ck = tmp_path / "k.pt"
    torch.save(embed.load_model(embed.ModelSpec(str(tiny_model_config))).model.state_dict(), ck)
    script = tmp_path / "killme.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal
        from clipgeom import embed, ingest, job
        spec = embed.ModelSpec({str(tiny_model_config)!r}, checkpoint={str(ck)!r})
        def progress(stage, done, total):
            if stage == "images" and done >= 8:
                os.kill(os.getpid(), signal.SIGKILL)
        job.run("killed", ingest.from_folder({str(root)!r}, {str(caps)!r}), spec,
                job.JobOptions(workers=0, chunk_rows=4, build_index=False), progress=progress)
    """))
    env = dict(os.environ, CLIPGEOM_HOME=str(clipgeom_home))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True)
    assert proc.returncode == -9                       # killed, not finished
    jobdir = clipgeom_home / "jobs" / "killed"
    assert (jobdir / "image_00000.npz").exists()
    assert "killed" not in [d["name"] for d in store.list_datasets()]
    spec = embed.ModelSpec(str(tiny_model_config), checkpoint=str(ck))
    resumed = job.run("killed", ingest.from_folder(root, caps), spec,
                      _opts(resume=True))
    full = job.run("whole", ingest.from_folder(root, caps), spec, _opts())
    np.testing.assert_array_equal(np.asarray(resumed.image_emb), np.asarray(full.image_emb))
    np.testing.assert_array_equal(np.asarray(resumed.text_emb), np.asarray(full.text_emb))


def test_checkpoint_load_logs_no_random_init_notice(tiny_model_config, checkpoint, caplog):
    """open_clip logs "No pretrained weights loaded ... initialized randomly"
    while building the model a checkpoint is loaded into; that is not true of
    the result, so it is dropped, and only then (issue 10)."""
    import logging

    caplog.set_level(logging.INFO)
    embed.load_model(embed.ModelSpec(str(tiny_model_config), checkpoint=str(checkpoint)), "cpu")
    assert "No pretrained weights loaded" not in caplog.text
    assert "initialized randomly" not in caplog.text
    caplog.clear()
    embed.load_model(embed.ModelSpec(str(tiny_model_config)), "cpu")   # truly random
    assert "No pretrained weights loaded" in caplog.text
    # The filter is removed afterwards: other warnings still get through.
    logging.getLogger().warning("No pretrained weights loaded: later, unrelated")
    assert "later, unrelated" in caplog.text


def test_check_resumable_needs_the_same_key(tmp_path):
    """The one resume check both engines (local, Ray) use: a job folder
    resumes only under the key it recorded; a missing or damaged job.json
    is not resumable either."""
    jobdir = tmp_path / "jobs" / "x"
    jobdir.mkdir(parents=True)
    with pytest.raises(InputError, match="without --resume"):
        job.check_resumable(jobdir, "k1")                  # no job.json
    (jobdir / "job.json").write_text("{not json")
    with pytest.raises(InputError, match="without --resume"):
        job.check_resumable(jobdir, "k1")
    (jobdir / "job.json").write_text('{"key": "k1", "engine": "ray"}')
    job.check_resumable(jobdir, "k1")
    with pytest.raises(InputError, match="other items, model or chunk size"):
        job.check_resumable(jobdir, "k2")
