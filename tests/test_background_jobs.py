"""Background jobs (clipgeom.background) with real worker processes: a job
started from a process that then exits finishes and equals a synchronous
upload; a worker killed with SIGKILL is reported interrupted and its resume
recomputes no finished chunk; cancel stops the process group and cleans up;
a failed job names the user's files; the CLI lists, resumes and refuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipgeom import background, embed, store, upload
from clipgeom.errors import InputError

ROOT = Path(__file__).resolve().parent.parent

# Loaded by every Python process started with the hook folder on PYTHONPATH
# (the worker; in the browser tests also the server): after each chunk file
# the embedding job writes (the local engine's ``image_00000.npz``, the Ray
# engine's unit ``image_00000``), it logs "<pid> <chunk>" and sleeps, so a
# test can kill or cancel a job between chunks and see which chunks each
# process wrote.
HOOK = r'''
import importlib.util, os, sys, time

_LOG = os.environ.get("CLIPGEOM_TEST_CHUNK_LOG")
_DELAY = float(os.environ.get("CLIPGEOM_TEST_CHUNK_DELAY") or 0)
# module: (its chunk writer, the chunk's name from the writer's arguments)
_WRITERS = {"clipgeom.job": ("_save_npz_atomic", lambda args: args[0].name),
            "clipgeom.ray_engine": ("_write_unit", lambda args: args[1])}


class _SlowChunks:
    busy = False

    def find_spec(self, name, path=None, target=None):
        if name not in _WRITERS or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        load = spec.loader.exec_module
        writer, chunk = _WRITERS[name]

        def exec_module(module):
            load(module)
            save = getattr(module, writer)

            def logged(*args, **kwargs):
                save(*args, **kwargs)
                if _LOG:
                    with open(_LOG, "a") as f:
                        f.write(f"{os.getpid()} {chunk(args)}\n")
                time.sleep(_DELAY)
            setattr(module, writer, logged)
        spec.loader.exec_module = exec_module
        return spec


if _LOG or _DELAY:
    sys.meta_path.insert(0, _SlowChunks())
'''


def install_slow_hook(folder: Path, env, delay: float) -> Path:
    """Write the hook into ``folder`` and point ``env`` (a monkeypatch or a
    dict) at it; returns the chunk log's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    log = folder / "chunks.log"
    values = {"PYTHONPATH": str(folder), "CLIPGEOM_TEST_CHUNK_LOG": str(log),
              "CLIPGEOM_TEST_CHUNK_DELAY": str(delay)}
    for k, v in values.items():
        env.setenv(k, v) if hasattr(env, "setenv") else env.__setitem__(k, v)
    return log


def chunk_log(log: Path) -> list[tuple[int, str]]:
    if not log.exists():
        return []
    return [(int(p), n) for p, n in (ln.split() for ln in log.read_text().splitlines())]


def wait_until(cond, timeout=120, what="the condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _files(folder: Path):
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


@pytest.fixture
def spec(tiny_model_config, checkpoint):
    """The tiny model with fixed weights: every process embeds alike."""
    return embed.ModelSpec(str(tiny_model_config), checkpoint=str(checkpoint))


@pytest.fixture
def upload_set(image_folder):
    root, caps = image_folder
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return _files(root), ("captions.csv", caps.read_bytes())


def _same_dataset(a: store.Dataset, b: store.Dataset) -> None:
    """Two datasets of the same files and model: equal arrays (to float32
    round-off across processes), tables and user-facing skipped lists."""
    assert (a.n_images, a.n_texts, a.dim) == (b.n_images, b.n_texts, b.dim)
    np.testing.assert_allclose(a.image_emb, b.image_emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.text_emb, b.text_emb, rtol=1e-5, atol=1e-6)
    for col in ("image_id", "source"):
        assert a.images[col].tolist() == b.images[col].tolist()
    assert a.texts["caption"].tolist() == b.texts["caption"].tolist()
    assert a.texts["image_id"].tolist() == b.texts["image_id"].tolist()
    assert upload.skipped_for_user(a) == upload.skipped_for_user(b)
    assert a.manifest["model"] == b.manifest["model"]


def _ended_cleanly(info: background.JobInfo, home: Path) -> None:
    assert not (info.folder / "input").exists() and not (info.folder / "items").exists()
    assert not (home / "jobs" / info.dataset).exists()
    assert not (home / "uploads").exists() or not list((home / "uploads").iterdir())
    with store.writer_lock(info.dataset, "test", timeout=0):   # nobody holds the name
        pass


def test_a_job_outlives_its_launcher_and_equals_a_synchronous_upload(
        clipgeom_home, upload_set, spec, monkeypatch):
    """Started by a process that exits at once (a server going away): the
    worker leads its own session and finishes; the dataset equals the one the
    synchronous path makes from the same files."""
    monkeypatch.setenv("CLIPGEOM_UPLOAD_CHUNK_ROWS", "4")
    images, caps = upload_set
    payload = clipgeom_home.parent / "payload.json"
    payload.write_text(json.dumps({"images": [[n, b.hex()] for n, b in images],
                                   "captions": [caps[0], caps[1].hex()]}))
    launcher = (
        "import json, sys\n"
        "from clipgeom import embed, upload\n"
        f"p = json.load(open({str(payload)!r}))\n"
        "imgs = [(n, bytes.fromhex(h)) for n, h in p['images']]\n"
        "caps = (p['captions'][0], bytes.fromhex(p['captions'][1]))\n"
        f"spec = embed.ModelSpec({spec.name!r}, checkpoint={spec.checkpoint!r})\n"
        "print(upload.start_embed_images('bg', imgs, caps, spec))\n")
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().splitlines()[-1]
    info = background.job_status(job_id)
    assert info.dataset == "bg" and info.kind == "upload"
    if info.active:                      # its own session and process group, no terminal
        assert os.getsid(info.pid) == info.pid and os.getpgid(info.pid) == info.pid
    info = background.wait(job_id, timeout=300)
    assert info.state == "finished", (info.error, background.log_tail(job_id))
    assert info.result == "bg" and info.attempt == 1 and info.seconds() > 0
    assert "finished: dataset 'bg'" in background.log_tail(job_id)
    assert (info.folder / "heartbeat").exists()                  # the worker beat
    _ended_cleanly(info, clipgeom_home)

    sync = upload.embed_images("sync", images, caps, spec)
    bg = store.open_dataset("bg")
    _same_dataset(bg, sync)
    assert any(s["item"].endswith("broken.png") for s in upload.skipped_for_user(bg))
    # the skipped reasons name the user's file, not the job folder
    for s in upload.skipped_for_user(bg):
        assert background.ROOT not in s["reason"] and str(clipgeom_home) not in s["reason"]
    assert [j.id for j in background.list_jobs()] == [job_id]


def test_kill_9_mid_job_is_interrupted_and_resume_recomputes_no_finished_chunk(
        clipgeom_home, upload_set, spec, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPGEOM_UPLOAD_CHUNK_ROWS", "2")      # 7 image + 7 text chunks
    log = install_slow_hook(tmp_path / "hook", monkeypatch, delay=0.7)
    images, caps = upload_set
    job_id = upload.start_embed_images("killed", images, caps, spec)
    wait_until(lambda: sum(n.startswith("image_") for _, n in chunk_log(log)) >= 2,
               what="two image chunks")
    first = background.job_status(job_id)
    assert first.state == "running" and first.progress["stage"] == "images"
    os.killpg(first.pid, signal.SIGKILL)
    wait_until(lambda: background.job_status(job_id).state == "interrupted",
               timeout=30, what="the interrupted state")
    chunks = clipgeom_home / "jobs" / "killed"
    done_before = sorted(p.name for p in chunks.glob("*.npz"))
    info = background.job_status(job_id)
    assert info.label == "interrupted (resumable)" and info.resumable
    assert (info.folder / "input" / "images").is_dir()      # the staged files are kept
    assert "killed" not in [d["name"] for d in store.list_datasets()]
    with pytest.raises(InputError, match="already interrupted .resumable.*resume or cancel"):
        upload.start_embed_images("killed", images, caps, spec)
    with pytest.raises(InputError, match="already started"):
        background.start(job_id)
    with pytest.raises(InputError, match="cancel it first"):
        background.forget(job_id)

    # the CLI says so and resumes it (the worker outlives the CLI process)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ["PYTHONPATH"]]))
    listing = subprocess.run([sys.executable, "-m", "clipgeom", "jobs", "list"],
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert f"{job_id}  interrupted (resumable)" in listing.stdout, listing
    line = next(x for x in listing.stdout.splitlines() if x.startswith(job_id))
    assert f"[{info.engine}]" in line and info.engine == "local"     # the engine it ran on
    subprocess.run([sys.executable, "-m", "clipgeom", "jobs", "resume", job_id], check=True,
                   capture_output=True, cwd=ROOT, env=env, timeout=120)
    info = background.wait(job_id, timeout=300)
    assert info.state == "finished", (info.error, background.log_tail(job_id))
    assert info.attempt == 2 and info.pid != first.pid
    by_pid: dict[int, set] = {}
    for pid, name in chunk_log(log):
        by_pid.setdefault(pid, set()).add(name)
    assert set(by_pid) == {first.pid, info.pid}
    n_caps = len(caps[1].decode().strip().splitlines()) - 1
    every = ({f"image_{c:05d}.npz" for c in range((len(images) + 1) // 2)}
             | {f"text_{c:05d}.npz" for c in range((n_caps + 1) // 2)})
    assert len(every) == 14                                     # 13 images, 13 captions
    assert by_pid[info.pid].isdisjoint(done_before)            # nothing recomputed
    assert by_pid[info.pid] | set(done_before) == every
    assert len(done_before) >= 2
    _ended_cleanly(info, clipgeom_home)
    monkeypatch.delenv("CLIPGEOM_TEST_CHUNK_DELAY")
    _same_dataset(store.open_dataset("killed"), upload.embed_images("ref", images, caps, spec))
    with pytest.raises(InputError, match="is finished; only an interrupted job"):
        background.resume(job_id)


def test_cancel_stops_the_job_and_leaves_nothing(clipgeom_home, upload_set, spec, tmp_path,
                                                 monkeypatch):
    monkeypatch.setenv("CLIPGEOM_UPLOAD_CHUNK_ROWS", "2")
    log = install_slow_hook(tmp_path / "hook", monkeypatch, delay=1.0)
    images, caps = upload_set
    job_id = upload.start_embed_images("stopped", images, caps, spec)
    wait_until(lambda: chunk_log(log), what="a first chunk")
    pid = background.job_status(job_id).pid
    t0 = time.monotonic()
    info = background.cancel(job_id)
    print(f"cancel took {time.monotonic() - t0:.2f} s")
    assert info.state == "cancelled" and "cancelled" in info.error
    assert not background._alive(pid, job_id)

    def group_gone():                                        # once the zombie is reaped
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        return False
    wait_until(group_gone, timeout=10, what="the process group to end")
    _ended_cleanly(info, clipgeom_home)
    assert store.list_datasets() == []
    assert "cancelled" in background.log_tail(job_id)
    assert background.cancel(job_id).state == "cancelled"    # again: nothing to do
    background.forget(job_id)
    assert background.list_jobs() == []


def test_cancel_an_interrupted_job_and_a_failed_one_names_the_users_files(
        clipgeom_home, spec):
    """An interrupted job (its pid recycled by another process) is cancelled
    without touching that process; a job whose every image fails ends failed
    with the user's file names, and its inputs are removed."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("set/bad0.png", b"nope")
        zf.writestr("set/bad1.png", b"\x89PNG\r\n\x1a\n nope")
        zf.writestr("set/captions.csv", "image,caption\nbad0.png,a\nbad1.png,b\n")
    job_id = upload.start_embed_zip("broken", ("my set.zip", buf.getvalue()), spec)
    info = background.wait(job_id, timeout=300)
    assert info.state == "failed"
    assert "every image failed" in info.error and "set/bad0.png: not an image" in info.error
    assert background.ROOT not in info.error and str(clipgeom_home) not in info.error
    _ended_cleanly(info, clipgeom_home)
    assert store.list_datasets() == []

    # a 'running' state whose pid now belongs to someone else (this test process)
    fake = background.create("upload", {}, dataset="ghost", title="ghost", home=None)
    st = json.loads((background.folder(fake) / "state.json").read_text())
    st.update(state="running", pid=os.getpid(), attempt=1, started=time.time())
    (background.folder(fake) / "state.json").write_text(json.dumps(st))
    assert background.job_status(fake).label == "interrupted (resumable)"
    assert background.cancel(fake).state == "cancelled"        # and this process lives on
    assert sorted(j.state for j in background.list_jobs()) == ["cancelled", "failed"]


def test_job_ids_and_damaged_files_are_refused_cleanly(clipgeom_home):
    for bad in ("../x", "20250101-120000-ab12cd", "", "x" * 30):
        with pytest.raises(InputError):
            background.job_status(bad)
    with pytest.raises(InputError, match="unknown job kind"):
        background.create("nope", {}, dataset=None, title="t")
    job_id = background.create("upload", {}, dataset="d", title="t")
    (background.folder(job_id) / "state.json").write_text("{not json")
    info = background.job_status(job_id)
    assert info.state == "failed" and "damaged" in info.error
    assert background.list_jobs()[0].id == job_id
    # a queued job whose launcher vanished before it got a pid
    job2 = background.create("upload", {}, dataset="d2", title="t2")
    assert background.job_status(job2).state == "queued"      # within the launch grace
    st = json.loads((background.folder(job2) / "state.json").read_text())
    st["queued_at"] = time.time() - background.LAUNCH_GRACE_S - 1
    (background.folder(job2) / "state.json").write_text(json.dumps(st))
    assert background.job_status(job2).state == "interrupted"


def test_a_job_of_another_host_is_judged_by_its_heartbeat(clipgeom_home):
    """A home shared with another machine, or a container recreated under a
    new host name: the pid means nothing here, the heartbeat's age decides."""
    job_id = background.create("upload", {}, dataset="far", title="far")
    f = background.folder(job_id)
    st = json.loads((f / "state.json").read_text())
    st.update(state="running", pid=os.getpid(), host="elsewhere", attempt=1,
              started=time.time())
    (f / "state.json").write_text(json.dumps(st))
    (f / "heartbeat").touch()
    assert background.job_status(job_id).state == "running"   # alive over there
    with pytest.raises(InputError, match="runs on host 'elsewhere': cancel it there"):
        background.cancel(job_id)
    old = time.time() - background.HEARTBEAT_STALE_S - 5
    os.utime(f / "heartbeat", (old, old))
    assert background.job_status(job_id).label == "interrupted (resumable)"


# ------------------------------------------------------------------ the ray engine
def _job_processes(pid: int) -> dict[int, str]:
    """The live processes of a worker's job: its session (the worker leads its
    own) and every descendant by parent chain (/proc), pid -> command."""
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            procs[int(d.name)] = (int(fields[1]), int(fields[3]), cmd)
    family = {p for p, (_, sid, _) in procs.items() if sid == pid} | {pid}
    grew = True
    while grew:                              # descendants that left the session
        more = {p for p, (ppid, _, _) in procs.items() if ppid in family} - family
        family |= more
        grew = bool(more)
    return {p: procs[p][2] for p in family if p in procs}


@pytest.fixture
def ray_jobs(monkeypatch):
    """App jobs on the ray engine (by default a local Ray started by each worker)."""
    pytest.importorskip("ray")
    monkeypatch.setenv("CLIPGEOM_JOB_ENGINE", "ray")
    monkeypatch.delenv("CLIPGEOM_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def ray_cluster(ray_jobs):
    """A running Ray (a local one, started here as a worker starts its own)
    that jobs join as a cluster, by CLIPGEOM_RAY_ADDRESS: one Ray start for a
    job and its resume."""
    with background.ray_connection(None) as ray:
        yield ray.get_runtime_context().gcs_address


def test_a_ray_job_killed_mid_run_resumes_to_the_local_jobs_arrays(
        clipgeom_home, upload_set, spec, tmp_path, monkeypatch, ray_cluster):
    """CLIPGEOM_JOB_ENGINE=ray with CLIPGEOM_RAY_ADDRESS: the worker embeds on
    that Ray, writes its progress, is killed with SIGKILL after some units,
    and its resume recomputes no finished unit; the dataset equals the local
    engine's job on the same files (1e-5; the local job's equality with a
    background job is the first test's)."""
    monkeypatch.setenv("CLIPGEOM_UPLOAD_CHUNK_ROWS", "2")      # 7 image + 7 text units
    images, caps = upload_set
    log = install_slow_hook(tmp_path / "hook", monkeypatch, delay=0.5)
    monkeypatch.setenv("CLIPGEOM_RAY_ADDRESS", ray_cluster)
    job_id = upload.start_embed_images("viaray", images, caps, spec)

    def ray_units():
        return [(p, n) for p, n in chunk_log(log) if not n.endswith(".npz")]
    wait_until(lambda: len(ray_units()) >= 2, timeout=240, what="two Ray units")
    first = background.job_status(job_id)
    assert first.state == "running" and first.engine == "ray"
    assert first.progress["stage"] == "images and captions" and first.progress["total"] == 26
    assert not any("raylet" in c for c in _job_processes(first.pid).values())  # joined
    os.killpg(first.pid, signal.SIGKILL)
    wait_until(lambda: background.job_status(job_id).resumable, timeout=30,
               what="the interrupted state")
    done_before = {n for p, n in ray_units() if p == first.pid}

    monkeypatch.setenv("CLIPGEOM_TEST_CHUNK_DELAY", "0")
    background.resume(job_id)
    info = background.wait(job_id, timeout=300)
    assert info.state == "finished", (info.error, background.log_tail(job_id, 80))
    assert info.engine == "ray" and info.attempt == 2
    assert json.loads((info.folder / "state.json").read_text())["engine"] == "ray"
    again = {n for p, n in ray_units() if p == info.pid}
    every = {f"{m}_{c:05d}" for m in ("image", "text") for c in range(7)}
    assert len(done_before) >= 2 and again.isdisjoint(done_before)   # nothing recomputed
    assert again | done_before == every
    assert f"embedding on Ray at {ray_cluster}" in background.log_tail(job_id, 200)
    _ended_cleanly(info, clipgeom_home)

    viaray = store.open_dataset("viaray")
    monkeypatch.setenv("CLIPGEOM_JOB_ENGINE", "local")
    ref = upload.embed_images("local", images, caps, spec)      # this process: local only
    _same_dataset(viaray, ref)
    assert viaray.manifest["embedding"]["engine"] == "ray"
    assert viaray.manifest["embedding"]["resumed_units"] == len(done_before)
    assert _job_processes(info.pid) == {}


def test_cancelling_a_ray_job_stops_its_ray_and_leaves_no_process(
        clipgeom_home, upload_set, spec, tmp_path, monkeypatch, ray_jobs):
    """Cancel while the Ray pipeline runs (model actor and decoding workers
    alive): the job is cancelled, and nothing of its session or process tree
    (raylet, GCS, Ray workers in their own process groups) outlives it."""
    monkeypatch.setenv("CLIPGEOM_UPLOAD_CHUNK_ROWS", "2")
    images, caps = upload_set
    job_id = upload.start_embed_images("stopped", images, caps, spec)

    def ray_workers_started():
        info = background.job_status(job_id)
        if info.progress.get("stage") != "images and captions":
            return False
        return any("default_worker" in c or c.startswith("ray::")
                   for c in _job_processes(info.pid).values())
    wait_until(ray_workers_started, timeout=240, what="the Ray pipeline to run")
    pid = background.job_status(job_id).pid
    before = _job_processes(pid)
    assert any("raylet" in c for c in before.values()), before
    t0 = time.monotonic()
    info = background.cancel(job_id)
    print(f"cancel took {time.monotonic() - t0:.2f} s; {len(before)} processes before")
    assert info.state == "cancelled" and info.engine == "ray"
    wait_until(lambda: not _job_processes(pid), timeout=10, what="the job's processes to end")
    alive = [p for p in before if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"]
    assert alive == []
    _ended_cleanly(info, clipgeom_home)
    assert store.list_datasets() == []
    assert "cancelled: cleaned up" in background.log_tail(job_id)


def test_a_misconfigured_engine_is_refused_and_a_dead_cluster_fails_the_job(
        clipgeom_home, upload_set, spec, monkeypatch):
    """An unknown engine is refused before any job exists; a Ray address where
    nothing listens fails the job, saying so, instead of a connection retried
    without end."""
    monkeypatch.setenv("CLIPGEOM_JOB_ENGINE", "spark")
    images, caps = upload_set
    with pytest.raises(InputError, match="CLIPGEOM_JOB_ENGINE='spark' is not an engine"):
        upload.start_embed_images("x", images, caps, spec)
    assert background.list_jobs() == []
    monkeypatch.setenv("CLIPGEOM_JOB_ENGINE", " Ray ")
    assert background.job_engine() == "ray"
    monkeypatch.delenv("CLIPGEOM_JOB_ENGINE")
    assert background.job_engine() == "local"

    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:                      # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("CLIPGEOM_JOB_ENGINE", "ray")
    monkeypatch.setenv("CLIPGEOM_RAY_ADDRESS", address)
    info = background.wait(upload.start_embed_images("x", images, caps, spec), timeout=120)
    assert info.state == "failed" and info.engine == "ray", background.log_tail(info.id)
    assert f"could not reach the Ray cluster at {address}" in info.error
    _ended_cleanly(info, clipgeom_home)
