"""The store and jobs under concurrency, kills and damaged metadata, with real
processes: two writers of one name never mix, a reader sees one version, a
killed writer's leftovers are swept, a stranded commit is restored, damaged
manifests list as CORRUPT, damaged job chunks are recomputed on resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipgeom import embed, ingest, job, store, upload
from clipgeom.errors import DatasetError

ROOT = Path(__file__).resolve().parent.parent


def emb(n, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) + 3


def _py(code: str, home: Path, **env) -> subprocess.Popen:
    e = dict(os.environ, CLIPGEOM_HOME=str(home), PYTHONPATH=str(ROOT), **env)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout=60):
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


# ---------------------------------------------------------------- two writers
def test_two_embed_jobs_of_one_name_never_mix(tiny_model_config, image_folder, clipgeom_home,
                                              tmp_path):
    """Job A holds the name while it embeds; job B of the same name (another
    image set, --overwrite) is refused with A's pid; the dataset is A's alone."""
    root, caps = image_folder
    other = tmp_path / "other"
    other.mkdir()
    from PIL import Image
    rows = ["image,caption"]
    for k in range(5):
        Image.new("RGB", (30, 30), (40 * k, 10, 10)).save(other / f"o{k}.png")
        rows.append(f"o{k}.png,other set picture {k}")
    (tmp_path / "other.csv").write_text("\n".join(rows) + "\n")
    started = tmp_path / "a-started"
    a = _py(f"""
        import time
        from clipgeom import embed, ingest, job
        spec = embed.ModelSpec({str(tiny_model_config)!r})
        def progress(stage, done, total):
            open({str(started)!r}, "w").close()
            time.sleep(0.4)                      # hold the name for a while
        job.run("same", ingest.from_folder({str(root)!r}, {str(caps)!r}), spec,
                job.JobOptions(workers=0, chunk_rows=2, build_index=False), progress=progress)
        print("A done")
    """, clipgeom_home)
    _wait_for(started)
    b = _py(f"""
        from clipgeom import embed, ingest, job
        from clipgeom.errors import ClipgeomError
        spec = embed.ModelSpec({str(tiny_model_config)!r})
        try:
            job.run("same", ingest.from_folder({str(other)!r}, {str(tmp_path / 'other.csv')!r}),
                    spec, job.JobOptions(workers=0, overwrite=True, build_index=False))
            print("B done")
        except ClipgeomError as exc:
            print("B refused:", exc)
    """, clipgeom_home, CLIPGEOM_LOCK_TIMEOUT="1")
    out_b, err_b = b.communicate(timeout=300)
    out_a, err_a = a.communicate(timeout=300)
    assert a.returncode == 0, err_a
    assert "A done" in out_a
    assert "B refused:" in out_b and f"pid {a.pid}" in out_b and "Traceback" not in err_b
    ds = store.verify_dataset("same")
    assert ds.n_images == 12 and not any("other set" in c for c in ds.texts["caption"])
    assert not (clipgeom_home / "jobs" / "same").exists()


def test_an_upload_while_a_job_runs_never_deletes_its_chunks(tiny_model_config, image_folder,
                                                             clipgeom_home, tmp_path):
    root, caps = image_folder
    started = tmp_path / "started"
    release = tmp_path / "release"
    a = _py(f"""
        import os, time
        from clipgeom import embed, ingest, job
        spec = embed.ModelSpec({str(tiny_model_config)!r})
        def progress(stage, done, total):
            if stage == "images" and done >= 4:
                open({str(started)!r}, "w").close()
                while not os.path.exists({str(release)!r}):
                    time.sleep(0.05)
        job.run("busy", ingest.from_folder({str(root)!r}, {str(caps)!r}), spec,
                job.JobOptions(workers=0, chunk_rows=2, build_index=False), progress=progress)
    """, clipgeom_home)
    _wait_for(started)
    chunks = sorted((clipgeom_home / "jobs" / "busy").glob("image_*.npz"))
    assert chunks
    os.environ["CLIPGEOM_LOCK_TIMEOUT"] = "0.5"
    try:
        with pytest.raises(DatasetError, match=r"being written by .*pid"):
            upload.embed_zip("busy", ("x.zip", b"PK\x05\x06" + b"\0" * 18),
                             embed.ModelSpec(str(tiny_model_config)), overwrite=True)
    finally:
        del os.environ["CLIPGEOM_LOCK_TIMEOUT"]
    assert all(c.exists() for c in chunks)            # the job's work is untouched
    release.touch()
    a.communicate(timeout=300)
    assert a.returncode == 0
    assert store.verify_dataset("busy").n_images == 12


# ---------------------------------------------------------------- one version per reader
def test_a_reader_keeps_reading_the_version_it_opened(clipgeom_home):
    store.create_dataset("r", emb(5), emb(5, seed=1),
                         texts=pd.DataFrame({"caption": [f"one {k}" for k in range(5)]}))
    ds1 = store.open_dataset("r")
    writer = _py("""
        import numpy as np, pandas as pd
        from clipgeom import store
        x = np.random.default_rng(3).normal(size=(7, 8)).astype(np.float32) + 3
        store.create_dataset("r", x, x + 1, texts=pd.DataFrame(
            {"caption": [f"two {k}" for k in range(7)]}), overwrite=True)
    """, clipgeom_home)
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    # the old object: old arrays AND old captions (read only now), never a mix
    assert ds1.n_texts == 5 and ds1.texts["caption"].tolist()[0] == "one 0"
    assert ds1.cache_dir.parent == ds1.path              # its results go to its own version
    ds2 = store.open_dataset("r")
    assert ds2.n_texts == 7 and ds2.texts["caption"].tolist()[0] == "two 0"
    assert ds2.path != ds1.path and ds2.fingerprint != ds1.fingerprint
    # the old version is kept while read, removed once released
    store.sweep()
    assert ds1.path.exists()
    ds1.close()
    store.sweep()
    assert not ds1.path.exists()
    assert [p.name for p in (clipgeom_home / "datasets" / "r").iterdir()
            if p.name.startswith("v-")] == [ds2.path.name]


# ---------------------------------------------------------------- kills
def test_a_writer_killed_mid_write_leaves_the_old_version_and_no_leftover(clipgeom_home,
                                                                          tmp_path):
    store.create_dataset("k", emb(4), emb(4, seed=1))
    before = store.open_dataset("k").fingerprint
    marker = tmp_path / "writing"
    p = _py(f"""
        import time, numpy as np
        from clipgeom import store
        from clipgeom.store import writer
        real = writer.write_table
        def slow(table, path):
            real(table, path)
            open({str(marker)!r}, "w").close()
            time.sleep(60)                       # killed here, mid-write
        writer.write_table = slow
        x = np.ones((9, 8), np.float32)
        store.create_dataset("k", x, x * 2, overwrite=True)
    """, clipgeom_home)
    _wait_for(marker)
    assert list((clipgeom_home / "datasets").glob(".tmp-k-*"))        # half-written
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    ds = store.open_dataset("k")                     # the old version, whole
    assert ds.fingerprint == before and ds.n_images == 4
    store.list_datasets()                            # any store operation sweeps
    assert not list((clipgeom_home / "datasets").glob(".tmp-*"))
    store.verify_dataset("k")


def test_a_killed_upload_staging_folder_is_swept(clipgeom_home, tmp_path):
    marker = tmp_path / "staged"
    p = _py(f"""
        import time
        from clipgeom import upload
        with upload.staging() as d:
            (d / "big.bin").write_bytes(b"x" * 100000)
            open({str(marker)!r}, "w").close()
            time.sleep(60)
    """, clipgeom_home)
    _wait_for(marker)
    staged = list((clipgeom_home / "uploads").glob("upload-*"))
    assert len(staged) == 1
    store.sweep()
    assert staged[0].exists()                        # its process is alive: kept
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert "removed uploads/" + staged[0].name in store.sweep()
    assert not staged[0].exists()


def test_a_crash_between_the_two_renames_of_the_old_layout_is_restored(clipgeom_home):
    """Datasets written before versions commit with two renames; a crash between
    them left the data only in .old-<name>-*: the next open restores it."""
    ds = store.create_dataset("w", emb(3), emb(3, seed=2))
    fp = ds.fingerprint
    ds.close()
    d = clipgeom_home / "datasets"
    # rebuild the old flat layout, then "crash" after the first rename
    flat = d / ".old-w-1a2b3c"
    os.replace(ds.path, flat)
    import shutil
    shutil.rmtree(d / "w")
    assert store.open_dataset("w").fingerprint == fp
    assert not flat.exists() and store.verify_dataset("w").n_images == 3


# ---------------------------------------------------------------- damaged metadata
@pytest.mark.parametrize("field,value", [
    (("arrays", "image_emb.npy", "dtype"), "not_a_dtype"),
    (("arrays", "image_emb.npy", "shape"), "abc"),
    (("model",), "ViT-B-32"),
    (("normalized_input",), "yes"),
    (("dim",), "64"),
    (("n_images",), None),
])
def test_a_manifest_with_wrong_types_lists_as_corrupt(clipgeom_home, field, value):
    good = store.create_dataset("good", emb(3), emb(3))
    bad = store.create_dataset("bad", emb(3), emb(3))
    mp = bad.path / "manifest.json"
    m = json.loads(mp.read_text())
    target = m
    for k in field[:-1]:
        target = target[k]
    target[field[-1]] = value
    mp.write_text(json.dumps(m))
    rows = {r["name"]: r for r in store.list_datasets()}
    assert rows["bad"]["status"] == "CORRUPT" and field[-1] in rows["bad"]["error"]
    assert rows["good"]["status"] == "ok"
    with pytest.raises(DatasetError, match="manifest is corrupt"):
        store.open_dataset("bad")
    assert store.open_dataset("good").fingerprint == good.fingerprint
    # the CLI lists it, no traceback
    out = subprocess.run([sys.executable, "-m", "clipgeom", "list"], capture_output=True,
                         text=True, env=dict(os.environ, CLIPGEOM_HOME=str(clipgeom_home),
                                             PYTHONPATH=str(ROOT)))
    assert out.returncode == 0 and "bad" in out.stdout and "CORRUPT" in out.stdout
    assert "Traceback" not in out.stderr


def test_pages_render_beside_a_corrupt_dataset(clipgeom_home):
    from streamlit.testing.v1 import AppTest

    store.create_dataset("fine", emb(30), emb(30, seed=1))
    bad = store.create_dataset("broken", emb(3), emb(3))
    (bad.path / "manifest.json").write_text(json.dumps({"schema_version": "x"}))
    for page in ("app.py", "pages/8_Upload.py", "pages/1_Separability.py"):
        at = AppTest.from_file(str(ROOT / page), default_timeout=300)
        at.session_state["dataset"] = "fine"
        at.run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])


def test_a_damaged_chunk_is_recomputed_on_resume(tiny_model_config, image_folder,
                                                 clipgeom_home, checkpoint):
    root, caps = image_folder
    spec = embed.ModelSpec(str(tiny_model_config), checkpoint=str(checkpoint))
    opts = job.JobOptions(workers=0, chunk_rows=4, build_index=False)

    class Stop(Exception):
        pass

    def stop_late(stage, done, total):
        if stage == "captions":
            raise Stop

    with pytest.raises(Stop):
        job.run("dmg", ingest.from_folder(root, caps), spec, opts, progress=stop_late)
    chunk = clipgeom_home / "jobs" / "dmg" / "image_00001.npz"
    chunk.write_bytes(chunk.read_bytes()[:40])                 # damaged
    said = []
    resumed = job.run("dmg", ingest.from_folder(root, caps), spec,
                      job.JobOptions(workers=0, chunk_rows=4, build_index=False, resume=True),
                      progress=lambda s, d, t: said.append(s))
    whole = job.run("whole", ingest.from_folder(root, caps), spec, opts)
    assert any("chunk 1 was damaged" in s for s in said)
    np.testing.assert_array_equal(np.asarray(resumed.image_emb), np.asarray(whole.image_emb))


def test_every_writer_path_gives_a_clear_message_on_an_unwritable_home(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the home should be")
    monkeypatch.setenv("CLIPGEOM_HOME", str(blocker))
    with pytest.raises(DatasetError, match="not-a-folder"):
        store.create_dataset("x", emb(3), emb(3))
    with pytest.raises(DatasetError, match="not-a-folder"):
        with store.writer_lock("x", "test"):
            pass
    assert store.list_datasets() == [] or all(r["read_only"] for r in store.list_datasets())


def test_cli_verify_names_an_altered_array(clipgeom_home):
    ds = store.create_dataset("ok", emb(3), emb(3))
    bad = store.create_dataset("bad", emb(3), emb(3))
    p = bad.path / "image_emb.npy"
    a = np.load(p)
    a[1, 2] += 1                       # same size, new content
    np.save(p, a)
    env = dict(os.environ, CLIPGEOM_HOME=str(clipgeom_home), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "clipgeom", "verify"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "ok " in out.stdout.split("\n")[[n.split()[0] for n in out.stdout.splitlines()
                                             ].index("ok")]
    assert "bad" in out.stdout and "image_emb.npy" in out.stdout and "FAILED" in out.stdout
    assert ds.fingerprint


def test_a_name_with_a_trailing_newline_is_refused(clipgeom_home):
    from clipgeom.errors import InputError

    with pytest.raises(InputError, match="Invalid dataset name"):
        store.create_dataset("abc\n", emb(3), emb(3))
    assert not (clipgeom_home / "datasets").exists() or \
        not any((clipgeom_home / "datasets").iterdir())
