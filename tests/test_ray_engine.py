"""The Ray engine (issue 12, part 1) against the local engine, on a local Ray.

Ray starts once for the module (``ray.init(num_cpus=2)``) and is shut down
after it. Ground truth is the local job (clipgeom.job) on the same items and
model: a second code path (DataLoader + one process) whose arrays must match
the Ray engine's to 1e-5. The WebDataset shards are written here with
``tarfile``; the resume test kills a real driver process with SIGKILL.
"""

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import torch

from clipgeom import embed, ingest, job, store, webdataset as wds
from clipgeom.__main__ import main
from clipgeom.errors import InputError
from clipgeom.images import ImageLimits

ray = pytest.importorskip("ray")
from clipgeom import ray_engine  # noqa: E402

# Ray Data warns about its own deprecated settings when it copies its context.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(ROOT, "assets", "demo-model", "demo-clip.json")
DEMO_WEIGHTS = os.path.join(ROOT, "assets", "demo-model", "demo-clip.pt")


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module (2 CPUs); its address lets a second driver
    process join it, as a user joins a cluster with --address."""
    kw = dict(num_cpus=2, include_dashboard=False, log_to_driver=False,
              object_store_memory=256 * 2**20)
    try:
        ctx = ray.init(**kw)
    except Exception:       # Ray waits a fixed 30 s for its raylet: once more on a busy CPU
        ray.shutdown()
        ctx = ray.init(**kw)
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()


def _same_dataset(a, b, atol=1e-5):
    """The Ray engine's dataset equals the local engine's: arrays to ``atol``,
    tables, skipped items and thumbnails."""
    np.testing.assert_allclose(np.asarray(b.image_emb), np.asarray(a.image_emb),
                               rtol=1e-5, atol=atol)
    np.testing.assert_allclose(np.asarray(b.text_emb), np.asarray(a.text_emb),
                               rtol=1e-5, atol=atol)
    assert b.images.equals(a.images) and b.texts.equals(a.texts)
    assert [s["item"] for s in b.manifest["skipped"]] == [s["item"] for s in a.manifest["skipped"]]
    thumbs = [t for t in a.images["thumbnail"] if t]
    assert thumbs and all((b.path / "thumbs" / t).read_bytes() ==
                          (a.path / "thumbs" / t).read_bytes() for t in thumbs)
    assert b.manifest["embedding"]["normalized"] is False
    assert b.manifest["embedding"]["engine"] == "ray"
    assert b.manifest["model"] == a.manifest["model"]


# --------------------------------------------------------------------------
# Ray: killed, resumed, equal to the local engine (tiny model, image folder)
# --------------------------------------------------------------------------

def test_killed_ray_job_resumes_to_the_local_engines_arrays(
        ray_address, tiny_model_config, image_folder, clipgeom_home, tmp_path):
    """A driver joined to the cluster by address is SIGKILLed after its first
    finished unit; --resume reuses that unit untouched (same files, same
    mtimes), computes the rest, and the dataset equals the local engine's,
    corrupt image skipped and listed, its caption kept unpaired."""
    root, caps = image_folder
    data = (root / "img2.jpg").read_bytes()
    (root / "img2.jpg").write_bytes(data[: len(data) // 3])          # truncated JPEG
    torch.manual_seed(5)
    ck = tmp_path / "w.pt"
    torch.save(embed.load_model(embed.ModelSpec(str(tiny_model_config))).model.state_dict(), ck)
    spec = embed.ModelSpec(str(tiny_model_config), checkpoint=str(ck))
    opts = dict(chunk_rows=4, build_index=False)

    script = tmp_path / "killme.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal
        from clipgeom import embed, ingest, job, ray_engine
        spec = embed.ModelSpec({str(tiny_model_config)!r}, checkpoint={str(ck)!r})
        def progress(stage, done, total):
            if stage.startswith("images") and done >= 4:   # the first unit is on disk
                os.kill(os.getpid(), signal.SIGKILL)
        ray_engine.run("killed", ingest.from_folder({str(root)!r}, {str(caps)!r}), spec,
                       job.JobOptions(chunk_rows=4, build_index=False),
                       ray_engine.RayOptions(address={ray_address!r}), progress=progress)
    """))
    env = dict(os.environ, CLIPGEOM_HOME=str(clipgeom_home))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    jobdir = clipgeom_home / "jobs" / "killed" / "ray"
    finished = sorted(p.name for p in jobdir.glob("*.json") if p.name != "job.json")
    assert finished, sorted(p.name for p in jobdir.iterdir())
    assert "killed" not in [d["name"] for d in store.list_datasets()]     # no half dataset
    unit_files = {p: p.stat().st_mtime_ns for p in jobdir.iterdir()
                  if p.name.split(".")[0] in {f.split(".")[0] for f in finished}}
    assert len(unit_files) == 3 * len(finished)          # embeddings, ids, json per unit

    at_assembly = {}

    def watch(stage, done, total):
        if stage == "assembling" and done == 0:
            at_assembly.update({p: p.stat().st_mtime_ns for p in unit_files})
    resumed = ray_engine.run("killed", ingest.from_folder(root, caps), spec,
                             job.JobOptions(resume=True, **opts), progress=watch)
    assert at_assembly == unit_files                     # not recomputed, not rewritten
    assert resumed.manifest["embedding"]["resumed_units"] == len(finished)
    assert not jobdir.exists()

    local = job.run("local", ingest.from_folder(root, caps), spec,
                    job.JobOptions(workers=0, **opts))
    _same_dataset(local, resumed)
    assert resumed.n_images == 11 and resumed.n_texts == 13
    bad = [s for s in resumed.manifest["skipped"] if s["item"] == "img2.jpg"]
    assert bad and "img2.jpg" in bad[0]["reason"]


# --------------------------------------------------------------------------
# WebDataset shards (demo model), through the CLI, both engines
# --------------------------------------------------------------------------

def _add(tf, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _write_shards(folder, n=18, per_shard=6):
    """img2dataset-style shards of generated scenes: key.jpg|png, key.txt,
    key.json. Sample 3's JPEG is truncated; sample 8 has no caption."""
    from clipgeom.demo import world

    w = world.generate(n, seed=2)
    folder.mkdir()
    for s in range(0, n, per_shard):
        with tarfile.open(folder / f"{s // per_shard:05d}.tar", "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                key, ext = f"{i:09d}", ("jpg" if i % 2 else "png")
                buf = io.BytesIO()
                w.image(i).save(buf, format="JPEG" if ext == "jpg" else "PNG")
                data = buf.getvalue()
                if i == 3:
                    data = data[: len(data) // 3]
                _add(tf, f"{key}.{ext}", data)
                if i != 8:
                    _add(tf, f"{key}.txt", w.captions[i].encode())
                _add(tf, f"{key}.json", json.dumps({"key": key}).encode())


def test_webdataset_shards_on_ray_equal_the_local_engine(ray_address, clipgeom_home, tmp_path,
                                                         capsys):
    _write_shards(tmp_path / "shards")
    pattern = str(tmp_path / "shards" / "{00000..00002}.tar")
    common = ["--webdataset", pattern, "--model", DEMO_CONFIG, "--checkpoint", DEMO_WEIGHTS,
              "--no-index"]
    assert main(["embed", "wl", *common, "--workers", "0"]) == 0
    assert main(["embed", "wr", *common, "--engine", "ray"]) == 0
    out = capsys.readouterr().out
    assert "embedded wr: 16 images, 17 captions" in out   # 18 - no caption - corrupt
    a, b = store.open_dataset("wl"), store.open_dataset("wr")
    _same_dataset(a, b)
    assert b.manifest["source"] == {"kind": "webdataset", "shards": pattern, "n_shards": 3}
    skipped = {s["item"]: s["reason"] for s in b.manifest["skipped"]}
    shard0, shard1 = pattern.replace("{00000..00002}", "00000"), \
        pattern.replace("{00000..00002}", "00001")
    assert "no caption" in skipped[f"{shard1}/000000008.png"]
    assert "corrupt" in skipped[f"{shard0}/000000003.jpg"]
    assert skipped["1 caption(s)"].startswith("their image was skipped")
    # The truncated image's caption is kept, unpaired; the caption-less image is left out.
    assert b.texts.set_index("text_id").loc["000000003", "image_id"] is None
    assert "000000008" not in set(b.images["image_id"])
    # Row k of the Ray dataset is the model's own raw output for that tar member.
    from PIL import Image

    lm = embed.load_model(embed.ModelSpec(DEMO_CONFIG, checkpoint=DEMO_WEIGHTS), "cpu")
    k = int(np.flatnonzero(b.images["image_id"] == "000000005")[0])
    with tarfile.open(shard0) as tf:
        jpeg = Image.open(io.BytesIO(tf.extractfile("000000005.jpg").read())).convert("RGB")
    with torch.inference_mode():
        direct = lm.model.encode_image(lm.preprocess(jpeg)[None], normalize=False)
    np.testing.assert_allclose(np.asarray(b.image_emb)[k], direct[0].numpy(), rtol=1e-5,
                               atol=1e-5)


# --------------------------------------------------------------------------
# Without Ray: the shard list, the sample rules, the tar reader, the CLI
# --------------------------------------------------------------------------

def test_brace_expansion_as_bash():
    assert wds.expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar",
                                                         "s/00002.tar"]
    assert wds.expand_braces("{8..10}") == ["8", "9", "10"]
    assert wds.expand_braces("{a,b{c,d}}x") == ["ax", "bcx", "bdx"]
    assert wds.expand_braces("p{1..2}/{a,b}") == ["p1/a", "p1/b", "p2/a", "p2/b"]
    assert wds.expand_braces("x{y}.tar") == ["x{y}.tar"]            # not a brace expansion
    with pytest.raises(InputError, match="more than"):
        wds.expand_braces("{0..99999999}")


def test_shard_list_names_missing_shards(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    with pytest.raises(InputError, match="00001.tar"):
        wds.shard_list(str(tmp_path / "{00000..00001}.tar"))
    assert wds.shard_list(str(tmp_path)) == [str(tmp_path / "00000.tar")]     # a folder
    assert wds.shard_list("s3://bucket/{0..1}.tar") == ["s3://bucket/0.tar", "s3://bucket/1.tar"]


@pytest.mark.parametrize("members, reason", [
    ({"txt": b"a cat"}, "no image member"),
    ({"jpg": b"x", "png": b"y", "txt": b"a cat"}, "several image members"),
    ({"jpg": b"x"}, "no caption"),
    ({"jpg": b"x", "txt": b"  "}, "empty caption"),
    ({"jpg": b"x", "txt": b"\xff\xfe"}, "not UTF-8"),
    ({"jpg": b"", "txt": b"a cat"}, "empty image"),
    ({"jpg": b"x" * 2000, "txt": b"a cat"}, "more than"),
])
def test_bad_samples_are_skipped_with_a_reason(members, reason):
    sample, skip = wds.check_sample("s/0.tar", "k1", members, ImageLimits(max_file_bytes=1000))
    assert sample is None and reason in skip.reason and skip.item.startswith("s/0.tar/k1")


def test_a_good_sample_and_upper_case_suffixes():
    sample, skip = wds.check_sample("s.tar", "k", {"JPG": b"abc", "TXT": b" a dog \n",
                                                  "json": b"{}"})
    assert skip is None and (sample.ext, sample.caption, sample.image) == ("jpg", "a dog", b"abc")
    assert wds.split_member("00000/000000012.jpg") == ("00000/000000012", "jpg")
    assert wds.split_member("a.b.txt") == ("a", "b.txt")


def test_tar_reader_refuses_scattered_keys(tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as tf:
        for name in ("a.jpg", "b.jpg", "a.txt"):
            _add(tf, name, b"x")
    with pytest.raises(InputError, match="not adjacent"):
        list(wds.iter_tar(str(tmp_path / "bad.tar")))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match="junk.tar"):
        list(wds.iter_tar(str(tmp_path / "junk.tar")))


def test_duplicate_keys_across_shards_keep_the_first():
    items, rows = wds.items_from_records(
        ["a.tar", "b.tar"],
        [[("ok", "k1", "jpg", "one"), ("skip", "a.tar/k2", "no caption")],
         [("ok", "k1", "png", "again"), ("ok", "k3", "jpg", "three")]],
        source={}, root=None)
    assert list(items.images["image_id"]) == ["k1", "k3"]
    assert rows == [[0, -1], [-1, 1]]
    assert [s.item for s in items.skipped] == ["a.tar/k2", "b.tar/k1.png"]
    assert list(items.texts["caption"]) == ["one", "three"]


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    with pytest.raises(InputError, match=r"clipgeom\[ray\]"):
        ray_engine.import_ray()


def test_cluster_flags_need_the_ray_engine(image_folder, clipgeom_home, capsys):
    root, caps = image_folder
    rc = main(["embed", "x", "--images", str(root), "--captions", str(caps),
               "--address", "127.0.0.1:6379"])
    assert rc == 2 and "--engine ray" in capsys.readouterr().err
    rc = main(["embed", "x", "--images", str(root), "--webdataset", "s/{0..1}.tar"])
    assert rc == 2 and "one of" in capsys.readouterr().err
