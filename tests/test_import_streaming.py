"""`import` streams arrays in row blocks (issue 12): the stored arrays, their
sha256 and the dataset fingerprint equal what the whole-array path writes
(np.save of the float32 array); a bad row found late, or a kill -9 part-way,
leaves nothing half-written. (Peak memory: bench/scale_report.py.)"""

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipgeom import store
from clipgeom.errors import InputError
from clipgeom.store import files

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(clipgeom_home):
    return clipgeom_home


def _npsave_sha(arr) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32))
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _rows(n, d, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) + 1.0).astype(dtype)


@pytest.mark.parametrize("kind", ["float32", "float64", "fortran", "big_endian", "float16"])
def test_streamed_import_equals_the_source_and_np_save(home, tmp_path, kind, monkeypatch):
    monkeypatch.setattr(files, "STREAM_ROWS", 37)        # many blocks, a ragged last one
    img = _rows(300, 12, 1, np.float64 if kind == "float64" else np.float32)
    txt = _rows(250, 12, 2)
    if kind == "fortran":
        img = np.asfortranarray(img)
    elif kind == "big_endian":
        img = img.astype(">f4")
    elif kind == "float16":
        img = img.astype(np.float16)
    np.save(tmp_path / "i.npy", img)
    np.save(tmp_path / "t.npy", txt)
    ds = store.import_arrays("s", tmp_path / "i.npy", tmp_path / "t.npy")
    np.testing.assert_array_equal(np.asarray(ds.image_emb), img.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(ds.text_emb), txt)
    for fname, arr in (("image_emb.npy", img), ("text_emb.npy", txt)):
        on_disk = files.sha256_file(ds.path / fname)
        assert ds.manifest["arrays"][fname]["sha256"] == on_disk == _npsave_sha(arr)
    # the same arrays through the in-memory path give the same dataset fingerprint
    other = store.create_dataset("m", img.astype(np.float32), txt)
    assert other.fingerprint == ds.fingerprint
    assert ds.normalized_input == {"image": False, "text": False}


def test_unit_rows_are_detected_while_streaming(home, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "STREAM_ROWS", 16)
    x = _rows(100, 8, 3)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(tmp_path / "i.npy", x)
    y = x.copy()
    y[99] *= 1.5                                         # the last block is not unit
    np.save(tmp_path / "t.npy", y)
    ds = store.import_arrays("u", tmp_path / "i.npy", tmp_path / "t.npy")
    assert ds.normalized_input == {"image": True, "text": False}


@pytest.mark.parametrize("problem", ["nan_late", "zero_row", "overflow", "text_nan"])
def test_a_bad_row_found_late_leaves_nothing_written(home, tmp_path, monkeypatch, problem):
    monkeypatch.setattr(files, "STREAM_ROWS", 50)
    img = _rows(400, 8, 4, np.float64)
    txt = _rows(400, 8, 5)
    if problem == "nan_late":
        img[391, 3] = np.nan
        img[395, 0] = np.inf
        match = r"image embeddings \(.*i\.npy\): NaN or Inf values in rows 391, 395"
    elif problem == "zero_row":
        img[388] = 0
        match = r"all-zero vector in row 388"
    elif problem == "overflow":
        img[350, 1] = 1e300
        match = r"values too large for float32 in row 350"
    else:
        txt[399, 7] = np.nan
        match = r"text embeddings \(.*t\.npy\): NaN or Inf values in row 399"
    np.save(tmp_path / "i.npy", img)
    np.save(tmp_path / "t.npy", txt)
    with pytest.raises(InputError, match=match):
        store.import_arrays("bad", tmp_path / "i.npy", tmp_path / "t.npy")
    datasets = home / "datasets"
    assert not (datasets / "bad").exists()
    assert [p.name for p in datasets.iterdir() if p.name.startswith(".tmp")] == []
    assert store.list_datasets() == []


def test_an_existing_dataset_survives_a_failed_overwrite(home, tmp_path):
    good = _rows(60, 8, 6)
    np.save(tmp_path / "g.npy", good)
    first = store.import_arrays("keep", tmp_path / "g.npy", tmp_path / "g.npy")
    bad = good.copy()
    bad[59, 0] = np.nan
    np.save(tmp_path / "b.npy", bad)
    with pytest.raises(InputError, match="row 59"):
        store.import_arrays("keep", tmp_path / "b.npy", tmp_path / "g.npy", overwrite=True)
    again = store.open_dataset("keep")
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(np.asarray(again.image_emb), good)


def test_a_file_shorter_than_its_header_is_refused_before_writing(home, tmp_path):
    np.save(tmp_path / "i.npy", _rows(100, 8, 7))
    raw = (tmp_path / "i.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw[:-4 * 8 * 10])
    with pytest.raises(InputError, match=r"short\.npy: not a valid \.npy file \(the file is "
                                         r"truncated"):
        store.import_arrays("x", tmp_path / "short.npy", tmp_path / "i.npy")


CHILD = r"""
import sys, time
import numpy as np
from clipgeom import store
from clipgeom.store import files
files.STREAM_ROWS = 64
real = files.NpyRows.blocks
def slow(self, rows=64):
    for item in real(self, rows):
        time.sleep(0.05)
        yield item
files.NpyRows.blocks = slow
store.import_arrays("killed", sys.argv[1], sys.argv[2])
print("finished", flush=True)
"""


def test_kill_9_during_import_leaves_nothing_and_the_next_import_works(home, tmp_path):
    img = _rows(3000, 16, 8)
    np.save(tmp_path / "i.npy", img)
    np.save(tmp_path / "t.npy", _rows(3000, 16, 9))
    env = dict(os.environ, CLIPGEOM_HOME=str(home), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "i.npy"),
                             str(tmp_path / "t.npy")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    datasets = home / "datasets"
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline and partial is None:
        for tmp in datasets.glob(".tmp-killed-*") if datasets.is_dir() else []:
            f = tmp / "image_emb.npy"
            if f.is_file() and f.stat().st_size > 128 + 64 * 16 * 4:   # some blocks in
                partial = f
        time.sleep(0.02)
    assert partial is not None, proc.communicate(timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert partial.stat().st_size < 128 + img.nbytes                # killed part-way
    assert not (datasets / "killed").exists()
    assert store.list_datasets() == []                               # and swept
    assert not list(datasets.glob(".tmp-*"))
    ds = store.import_arrays("killed", tmp_path / "i.npy", tmp_path / "t.npy")
    np.testing.assert_array_equal(np.asarray(ds.image_emb), img)
