"""Chaos: several processes create, embed, read, stage uploads and delete the
same few dataset names at once, and some are SIGKILLed at random, for a
bounded time. Afterwards every listed dataset verifies, its arrays match its
captions row for row (nothing mixed), no staging or temporary folder is
left, and no process printed a traceback."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from clipgeom import store

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["a", "b", "c"]
SECONDS = float(os.environ.get("CLIPGEOM_CHAOS_SECONDS", "25"))

# Every array row says which write made it and which row it is, and so does the
# caption: a dataset mixing two writes (or pairing old arrays with new captions)
# is caught row by row.
WORKER = textwrap.dedent("""
    import os, random, sys, time
    import numpy as np, pandas as pd
    from clipgeom import store, upload
    from clipgeom.errors import ClipgeomError

    NAMES = {names!r}
    rng = random.Random(int(sys.argv[1]))
    stop = time.time() + float(sys.argv[2])

    def check(ds):
        caps = ds.texts["caption"].tolist()
        t = np.asarray(ds.text_emb)
        for i, c in enumerate(caps):
            w, r = c.split()
            if int(t[i, 0]) != int(w) or int(t[i, 1]) != int(r):
                raise SystemExit(f"MIXED: {{ds.name}} row {{i}}: {{c}} vs {{t[i, :2]}}")

    while time.time() < stop:
        name = rng.choice(NAMES)
        op = rng.random()
        try:
            if op < 0.45:
                w, n = rng.randrange(1_000_000), rng.randrange(3, 40)
                x = np.zeros((n, 8), np.float32) + 1
                x[:, 0], x[:, 1] = w, np.arange(n)
                store.create_dataset(name, x + 0.5, x, texts=pd.DataFrame(
                    {{"caption": [f"{{w}} {{i}}" for i in range(n)]}}), overwrite=True)
            elif op < 0.8:
                ds = store.open_dataset(name)
                time.sleep(rng.random() * 0.2)        # a slow reader
                check(ds)
            elif op < 0.9:
                with upload.staging() as d:
                    (d / "x.bin").write_bytes(b"x" * 10000)
                    time.sleep(rng.random() * 0.2)
            else:
                store.delete_dataset(name)
        except ClipgeomError:
            pass                                          # busy, missing: said clearly
""")


def test_chaos(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, CLIPGEOM_HOME=str(home), PYTHONPATH=str(ROOT),
               CLIPGEOM_LOCK_TIMEOUT="0.5", CLIPGEOM_ASSETS=str(tmp_path / "none"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(names=NAMES))
    rng = random.Random(0)
    procs, finished, kills = [], [], 0

    def start(seed):
        return subprocess.Popen([sys.executable, str(script), str(seed), str(SECONDS)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    procs = [start(k) for k in range(4)]
    deadline = time.time() + SECONDS
    seed = 100
    while time.time() < deadline:
        time.sleep(rng.uniform(0.5, 2.0))
        victim = rng.randrange(len(procs))
        if procs[victim].poll() is None:
            procs[victim].send_signal(signal.SIGKILL)
            kills += 1
        out, err = procs[victim].communicate()
        finished.append((procs[victim].returncode, out, err))
        seed += 1
        procs[victim] = start(seed)
    for p in procs:
        out, err = p.communicate(timeout=SECONDS + 120)
        finished.append((p.returncode, out, err))

    assert kills >= 3
    for rc, out, err in finished:
        assert "Traceback" not in err, err[-3000:]
        assert "MIXED" not in out + err, out + err
        assert rc in (0, -signal.SIGKILL), (rc, err[-2000:])

    os.environ["CLIPGEOM_HOME"] = str(home)
    try:
        store.sweep()                                     # no process is alive now
        listed = [r for r in store.list_datasets(home) if not r["read_only"]]
        assert all(r["status"] == "ok" for r in listed), listed
        for r in listed:
            ds = store.verify_dataset(r["name"], home=home)
            t, i = np.asarray(ds.text_emb), np.asarray(ds.image_emb)
            w = int(t[0, 0])
            assert ds.texts["caption"].tolist() == [f"{w} {k}" for k in range(ds.n_texts)]
            assert (t[:, 0] == w).all() and (t[:, 1] == np.arange(ds.n_texts)).all()
            assert (i[:, 0] == w + 0.5).all()             # image and text of one write
        leftovers = [p.name for p in (home / "datasets").iterdir() if p.name.startswith(".")]
        assert leftovers == []
        for r in listed:
            versions = [p for p in (home / "datasets" / r["name"]).iterdir()
                        if p.name.startswith("v-")]
            assert len(versions) == 1
        assert not list((home / "uploads").glob("upload-*"))
    finally:
        del os.environ["CLIPGEOM_HOME"]
