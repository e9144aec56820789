"""The local engine on worker processes (clipgeom.parallel): the report it
builds is the sequential engine's, number for number; the workers really ran
the passes; a dataset replaced on disk is read afresh by the workers that
mapped the old file; a worker killed mid-pass costs time, not the report."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from clipgeom import moments, parallel, report, store, synthetic

N, D, BLOCK = 3000, 32, 250


def _report(ds, engine):
    ii, tt = ds.pairs()
    return report.build_report(ds.image_emb, ds.text_emb, ii, tt, max_pairs=400,
                               engine=engine)


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture
def stored(clipgeom_home):
    d = synthetic.two_shells(N, D, seed=3)
    store.create_dataset("pool", d.image, d.text)
    return store.open_dataset("pool")


def test_worker_processes_give_the_sequential_report_exactly(stored):
    seq = _report(stored, moments.LocalEngine(BLOCK))
    eng = parallel.PoolEngine(BLOCK, workers=2)
    try:
        par = _report(stored, eng)
    finally:
        eng.close()
    # first pass x2, second pass x2, shift range x2, shift histograms x2, pairs
    assert eng.passes_on_workers == 9 and eng.fallbacks == 0
    assert _same(seq, par)
    assert par["computation"]["engine"] == "local"


def test_store_arrays_travel_as_file_maps_and_small_arrays_through_a_file(stored):
    from clipgeom import validate

    checked = validate.checked(stored.image_emb, "image embeddings")
    assert moments.source_descriptor(checked)[0] == "mmap"      # no copy to the workers
    eng = parallel.PoolEngine(BLOCK, workers=2)
    rows = np.arange(N, dtype=np.int64)
    descs = eng._descriptors({"x": checked, "rows": rows})
    assert [d[0] for d in descs.values()] == ["mmap", "mmap"]
    np.testing.assert_array_equal(moments.resolve(descs["rows"]), rows)
    spill = eng._spill_dir
    eng.close()
    assert not os.path.exists(spill)


def test_a_large_in_memory_array_runs_in_this_process(stored, monkeypatch):
    monkeypatch.setattr(parallel, "SPILL_LIMIT_BYTES", 0)
    x = np.asarray(stored.image_emb) * 1.0                       # not a memory map
    eng = parallel.PoolEngine(BLOCK, workers=2)
    got = moments.first_moments(x, engine=eng, gram=True)
    eng.close()
    ref = moments.first_moments(x, engine=moments.LocalEngine(BLOCK), gram=True)
    assert eng.passes_on_workers == 0
    np.testing.assert_array_equal(got.cov, ref.cov)


def test_workers_reused_across_reports_read_a_replaced_dataset_afresh(stored):
    eng = parallel.PoolEngine(BLOCK, workers=2)
    before = moments.first_moments(stored.image_emb, engine=eng)
    d = synthetic.two_shells(N, D, seed=4)                      # same shape, new rows
    store.create_dataset("pool", d.image, d.text, overwrite=True)
    again = store.open_dataset("pool")
    after = moments.first_moments(again.image_emb, engine=eng)   # same worker processes
    eng.close()
    ref = moments.first_moments(d.image.astype(np.float64), engine=moments.LocalEngine(BLOCK))
    assert not np.allclose(before.mean, ref.mean)
    np.testing.assert_array_equal(after.mean, ref.mean)
    np.testing.assert_array_equal(after.cov, ref.cov)


def _workers(pid: int) -> set[int]:
    """The loky worker processes that are children of ``pid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                worker = b"popen_loky" in f.read()
            if int(fields[1]) == pid and worker:
                out.add(int(entry))
    return out


def test_a_worker_killed_mid_pass_costs_time_not_the_report(clipgeom_home):
    d = synthetic.two_shells(40_000, 256, seed=5)
    store.create_dataset("big", d.image, d.text)
    ds = store.open_dataset("big")
    ref = moments.first_moments(ds.image_emb, engine=moments.LocalEngine(1000), gram=True)
    eng = parallel.PoolEngine(1000, workers=2)
    moments.first_moments(ds.text_emb, engine=eng)            # the workers are up
    workers = sorted(_workers(os.getpid()))
    assert len(workers) == 2, workers
    # Freeze both, so the pass below is mid-way for certain (its blocks are
    # submitted, none can finish), then kill one and let the other go on.
    for w in workers:
        os.kill(w, signal.SIGSTOP)
    result = {}
    t = threading.Thread(target=lambda: result.update(
        f=moments.first_moments(ds.image_emb, engine=eng, gram=True)))
    t.start()
    time.sleep(0.5)
    os.kill(workers[0], signal.SIGKILL)
    os.kill(workers[1], signal.SIGCONT)
    t.join(300)
    assert not t.is_alive()
    assert eng.fallbacks == 1
    got = result["f"]
    np.testing.assert_array_equal(got.cov, ref.cov)
    np.testing.assert_array_equal(got.unit_gram, ref.unit_gram)
    # the next pass gets a working pool again
    passes = eng.passes_on_workers
    again = moments.first_moments(ds.image_emb, engine=eng, gram=True)
    eng.close()
    assert eng.passes_on_workers == passes + 1
    np.testing.assert_array_equal(again.cov, ref.cov)


def test_workers_from_the_environment(monkeypatch):
    monkeypatch.setenv("CLIPGEOM_WORKERS", "3")
    assert parallel.default_workers() == 3
    monkeypatch.setenv("CLIPGEOM_WORKERS", "0")
    with pytest.raises(Exception, match="at least 1"):
        parallel.default_workers()
    monkeypatch.delenv("CLIPGEOM_WORKERS")
    assert parallel.default_workers() == len(os.sched_getaffinity(0))


def test_workers_end_with_a_killed_caller(clipgeom_home):
    """A report killed with SIGKILL cannot stop its workers; they notice and end."""
    import subprocess
    import sys

    d = synthetic.two_shells(3000, 32, seed=6)
    store.create_dataset("orphans", d.image, d.text)
    code = ("import time\nfrom clipgeom import moments, parallel, store\n"
            "ds = store.open_dataset('orphans')\n"
            "moments.first_moments(ds.image_emb, engine=parallel.PoolEngine(250, workers=2))\n"
            "print('ready', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    assert proc.stdout.readline().strip() == "ready"
    workers = _workers(proc.pid)
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    alive = set(workers)
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = {w for w in alive if os.path.exists(f"/proc/{w}")
                 and open(f"/proc/{w}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"}
    assert not alive, f"workers {alive} outlived their killed caller"


def test_a_worker_whose_caller_died_while_it_started_ends():
    """The race CI hit (a worker still starting when its caller was killed
    read init's pid as its parent and watched it forever): the caller's pid
    is given to the worker, so one that starts orphaned ends at once."""
    import subprocess
    import sys

    child = ("import sys, time\ntime.sleep(1.0)\n"        # the caller is gone by now
             "from clipgeom import parallel\nparallel._worker_init(int(sys.argv[1]))\n"
             "time.sleep(60)\n")
    caller = ("import os, subprocess, sys\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())])\n"
              "print(p.pid, flush=True)\nos._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", caller], capture_output=True, text=True,
                         env=dict(os.environ), timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            break                                       # gone (reaped by init)
        if state == "Z":
            break
        time.sleep(0.2)
    else:
        os.kill(pid, 9)
        raise AssertionError("a worker started after its caller died is still running")
