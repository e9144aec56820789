"""Jobs that outlive the browser: long dataset jobs in their own OS process.

The Upload page (and any long dataset job started in the app) does not embed
inside its script run, which a radio button or a closed tab would abort: it
creates a job here and starts it. A job is a folder
``<CLIPGEOM_HOME>/background/<id>/``:

=================  ==============================================================
``job.json``       what to run: kind, parameters, the dataset name, a title
                   (written once, when the job is created)
``state.json``     ``queued`` | ``running`` | ``finished`` | ``failed`` |
                   ``cancelled``, the pid, the attempt, start and end times, the
                   result (the dataset's name) or the error message
``progress.json``  the current stage, done, total, when the stage began
``log.txt``        the worker's own lines, its stdout and stderr, every attempt
``input/``         the job's inputs (an upload's staged files); removed when the
                   job ends (finished, failed or cancelled), kept while it can
                   still be resumed
``items/``         the ingested item list, so a resumed job embeds the same rows
=================  ==============================================================

Every file is written by atomic replace (:func:`clipgeom._atomic.replacing`);
state changes happen under ``state.lock`` (``filelock``).

:func:`start` runs ``python -m clipgeom jobs run ID`` in a new session (its
own process group, no terminal), so switching pages, closing the tab or
restarting the Streamlit server leaves it running. A job whose process is gone
while its state still says queued or running (kill -9, a reboot, a stopped
container) is reported as ``interrupted`` (resumable): :func:`resume` starts
it again, and the embedding job (:mod:`clipgeom.job`) skips the chunks it had
finished. :func:`cancel` sends SIGTERM to the worker (which stops what it
started, a local Ray included, and cleans up), then SIGKILL to its process
group and to whatever is left of its session, and marks the job cancelled.
The dataset name stays guarded by the store's writer lock, which the worker
holds for the whole job.

The engine of a job's embedding is the server operator's choice, read by the
worker from its environment (inherited from the server): ``CLIPGEOM_JOB_ENGINE``
``local`` (default: the worker process embeds) or ``ray`` (the embedding runs
on Ray Data through :mod:`clipgeom.ray_engine`: on the cluster at
``CLIPGEOM_RAY_ADDRESS``, else ``RAY_ADDRESS``, else on a local Ray that the
worker starts and stops). ``state.json`` records the engine of each attempt.
A job kind's function reads :attr:`JobContext.engine` and picks the engine;
a Ray job connects through :func:`ray_connection`, which keeps cancel working.

No Streamlit here: ``dashboard/jobs.py`` draws the Jobs panel from
:func:`list_jobs`; ``python -m clipgeom jobs`` lists, cancels and resumes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from filelock import FileLock

from . import store
from ._atomic import replacing
from .errors import ClipgeomError, DatasetError, InputError

ROOT = "background"
ACTIVE = ("queued", "running")
TERMINAL = ("finished", "failed", "cancelled")
INTERRUPTED = "interrupted"
# What each kind of job runs, as "module:function" (resolved in the worker).
# The function takes a JobContext and returns the dataset name it created.
KINDS = {"upload": "clipgeom.upload:run_upload_job"}
ID_RE = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
# A queued job without a pid yet is being launched; after this long it is not.
LAUNCH_GRACE_S = 30.0
PROGRESS_EVERY_S = 0.25
# The worker touches <job>/heartbeat this often. On its own host a job is
# judged by its pid; a job started on another host (a recreated container has
# a new host name, a home shared between machines) is interrupted once its
# heartbeat is older than HEARTBEAT_STALE_S.
HEARTBEAT_S = 5.0
HEARTBEAT_STALE_S = 60.0
# The engines a job's embedding may run on (CLIPGEOM_JOB_ENGINE).
ENGINES = ("local", "ray")


class Cancelled(BaseException):
    """Raised in the worker by SIGTERM/SIGINT (a BaseException, so no
    ``except Exception`` inside a job swallows it)."""


# ------------------------------------------------------------------ the record
@dataclass
class JobInfo:
    """A job as :func:`list_jobs` and :func:`job_status` report it.

    ``state`` is the effective state: the stored one, except that a queued or
    running job whose process is gone is ``interrupted`` (and resumable).
    """

    id: str
    kind: str
    title: str
    dataset: Optional[str]
    state: str
    created: float
    folder: Path
    attempt: int = 0
    pid: Optional[int] = None
    started: Optional[float] = None
    ended: Optional[float] = None
    result: Optional[str] = None
    error: Optional[str] = None
    engine: Optional[str] = None           # of the latest attempt, once it runs
    progress: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def resumable(self) -> bool:
        return self.state == INTERRUPTED

    @property
    def label(self) -> str:
        return "interrupted (resumable)" if self.resumable else self.state

    @property
    def fraction(self) -> float:
        done, total = self.progress.get("done"), self.progress.get("total")
        if not isinstance(done, (int, float)) or not isinstance(total, (int, float)):
            return 0.0
        return 1.0 if total <= 0 else max(0.0, min(1.0, done / total))

    @property
    def log_path(self) -> Path:
        return self.folder / "log.txt"

    def seconds(self, now: Optional[float] = None) -> Optional[float]:
        """Wall time of the latest attempt (so far, for an active job)."""
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (now or time.time())
        return max(0.0, end - self.started)

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("id", "kind", "title", "dataset", "state",
                                            "created", "attempt", "pid", "started", "ended",
                                            "result", "error", "engine", "progress")}
        out.update(folder=str(self.folder), resumable=self.resumable, label=self.label)
        return out


# ------------------------------------------------------------------ engines
def job_engine() -> str:
    """The engine of app jobs' embedding, as the operator configured the server:
    ``CLIPGEOM_JOB_ENGINE`` = ``local`` (default) or ``ray``."""
    value = (os.environ.get("CLIPGEOM_JOB_ENGINE") or "local").strip().lower()
    if value not in ENGINES:
        raise InputError(f"CLIPGEOM_JOB_ENGINE={value!r} is not an engine: set it to "
                         f"{' or '.join(ENGINES)} where the server starts.")
    return value


def ray_address() -> Optional[str]:
    """The Ray cluster of ray jobs (``CLIPGEOM_RAY_ADDRESS``); None: ``RAY_ADDRESS``
    if set, else a local Ray started for the job."""
    return (os.environ.get("CLIPGEOM_RAY_ADDRESS") or "").strip() or None


@contextlib.contextmanager
def ray_connection(address: Optional[str]):
    """Ray for a job on the ray engine (yields the ``ray`` module): connected
    here, a local Ray started when there is no address, and shut down when the
    job ends, cancelled or not, so a local Ray's processes (raylet, GCS, the
    model actors) end with the job. ``ray.init`` installs SIGTERM handlers of
    its own (a bare exit); the worker's are put back, so a cancel still stops
    the job in order. Already connected (tests): used as it is."""
    from .ray_engine import import_ray

    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    cluster = address or os.environ.get("RAY_ADDRESS")
    _check_reachable(cluster)
    try:
        for last in (bool(cluster), True):
            try:
                ray.init(address=address, log_to_driver=False)
                break
            except Exception:
                if last:
                    raise
                ray.shutdown()      # a local Ray waits a fixed time for its raylet: once more
    except SystemExit:              # ray.init's own handler met a cancel mid-start
        ray.shutdown()
        raise Cancelled() from None
    except Exception as exc:        # ConnectionError, ValueError, RuntimeError ...
        ray.shutdown()
        where = f"the Ray cluster at {cluster}" if cluster else "a local Ray"
        raise DatasetError(f"the job could not start or reach {where}: "
                           f"{str(exc).splitlines()[0][:300] if str(exc) else exc!r}"
                           ) from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: Optional[str], timeout_s: float = 10.0) -> None:
    """DatasetError unless a ``host:port`` cluster address accepts a TCP
    connection: ``ray.init`` retries an unreachable GCS without end, which
    would leave the job running forever. Other forms (``auto``, ``ray://``)
    are left to Ray."""
    m = re.fullmatch(r"\[?([^\s/\]]+?)\]?:(\d+)", (address or "").strip())
    if not m:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout_s).close()
    except OSError as exc:
        raise DatasetError(f"the job could not reach the Ray cluster at {address} "
                           f"({exc.strerror or exc}); check CLIPGEOM_RAY_ADDRESS (or "
                           "RAY_ADDRESS) where the server starts.") from None


# ------------------------------------------------------------------ files
def jobs_dir(home=None) -> Path:
    return store.home() if home is None else Path(home).expanduser().absolute()


def _root(home=None) -> Path:
    return jobs_dir(home) / ROOT


def folder(job_id: str, home=None) -> Path:
    """The job's folder; InputError for a malformed id or a job that does not exist."""
    if not isinstance(job_id, str) or not ID_RE.fullmatch(job_id):
        raise InputError(f"{job_id!r} is not a job id (like 20250101-120000-ab12cd).")
    f = _root(home) / job_id
    if not (f / "job.json").is_file():
        raise InputError(f"no job {job_id!r} under {_root(home)}.")
    return f


def input_dir(job_id: str, home=None) -> Path:
    """Where the job's inputs live (an upload stages its files here)."""
    return folder(job_id, home) / "input"


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")


@contextlib.contextmanager
def _state_lock(f: Path):
    with FileLock(str(f / "state.lock"), thread_local=False, is_singleton=False):
        yield


def _log(f: Path, line: str) -> None:
    """One timestamped line in the job's log (the worker's stdout is the same file)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with open(f / "log.txt", "a", encoding="utf-8") as out:
            out.write(f"[{stamp}] {line}\n")
    except OSError:
        pass


# ------------------------------------------------------------------ processes
def _alive(pid, job_id: str) -> bool:
    """True while ``pid`` is this job's live worker (not a zombie, not a
    recycled pid running something else)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                   # someone else's process: it exists
    except OSError:
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True                            # no /proc (macOS): kill(0) is all we know
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False                       # exited, not yet reaped
        for _ in range(40):
            cmdline = (proc / "cmdline").read_bytes()
            if cmdline:
                return job_id.encode() in cmdline
            # Empty while the worker is mid-exec (Popen has returned, the new
            # program's arguments are not set up yet: long on a loaded machine).
            time.sleep(0.025)
        return False                           # still empty: a kernel thread
    except (OSError, IndexError):
        return False


_REAPERS: list[threading.Thread] = []


def _reap(proc: subprocess.Popen) -> None:
    """Wait for the worker in a daemon thread, so that a worker that ends
    (or is killed) while this process lives does not stay a zombie."""
    t = threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True)
    t.start()
    _REAPERS.append(t)


def _worker_command(job_id: str, attempt: int) -> list[str]:
    return [sys.executable, "-m", "clipgeom", "jobs", "run", job_id, "--attempt", str(attempt)]


def _launch_locked(f: Path, job_id: str, h: Path, *, resume: bool) -> None:
    """Queue the next attempt and start its worker (the caller holds the state lock)."""
    job_engine()                               # a misconfigured server: said now, not later
    st = _read_json(f / "state.json") or {}
    attempt = int(st.get("attempt") or 0) + 1
    queued = {"state": "queued", "attempt": attempt, "resume": bool(resume),
              "queued_at": time.time(), "pid": None, "host": socket.gethostname(),
              "started": None, "ended": None, "result": None, "error": None}
    _write_json(f / "state.json", queued)
    env = dict(os.environ, CLIPGEOM_HOME=str(h), PYTHONUNBUFFERED="1")
    pkg_parent = str(Path(__file__).resolve().parent.parent)   # this very clipgeom
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    _log(f, f"attempt {attempt}: {'resuming' if resume else 'starting'}")
    try:
        with open(f / "log.txt", "ab") as log:
            proc = subprocess.Popen(_worker_command(job_id, attempt), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, close_fds=True)
    except OSError as exc:
        _write_json(f / "state.json", dict(queued, state="failed", ended=time.time(),
                                           error=f"the job's process could not be started "
                                                 f"({exc.strerror or exc})."))
        raise DatasetError(f"could not start the job's process ({exc.strerror or exc}).") \
            from None
    _reap(proc)
    _write_json(f / "state.json", dict(queued, pid=proc.pid))


# ------------------------------------------------------------------ public API
def create(kind: str, params: dict, *, dataset: Optional[str], title: str,
           home=None) -> str:
    """A new queued job folder (not started yet: stage its inputs into
    :func:`input_dir`, then call :func:`start`). Returns the job id."""
    if kind not in KINDS:
        raise InputError(f"unknown job kind {kind!r} (known: {', '.join(sorted(KINDS))}).")
    job_engine()                               # a misconfigured server: said before any work
    if dataset is not None:
        store.check_name(dataset)
    root = _root(home)
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    f = root / job_id
    try:
        (f / "input").mkdir(parents=True)
        _write_json(f / "job.json", {"format": 1, "id": job_id, "kind": kind,
                                     "params": params, "dataset": dataset, "title": title,
                                     "created": time.time()})
        _write_json(f / "state.json", {"state": "queued", "attempt": 0, "pid": None,
                                       "queued_at": time.time()})
    except OSError as exc:
        shutil.rmtree(f, ignore_errors=True)
        raise DatasetError(f"Cannot create the job folder in {root} ({exc.strerror or exc}); "
                           "check free space and permissions (or set CLIPGEOM_HOME to a "
                           "writable folder).") from None
    return job_id


def discard(job_id: str, home=None) -> None:
    """Remove a job that was created but never started (its staging failed)."""
    shutil.rmtree(folder(job_id, home), ignore_errors=True)


def start(job_id: str, home=None) -> JobInfo:
    """Start the worker process of a job made by :func:`create`."""
    f = folder(job_id, home)
    with _state_lock(f):
        st = _read_json(f / "state.json") or {}
        if st.get("state") != "queued" or st.get("attempt"):
            raise InputError(f"job {job_id} was already started.")
        _launch_locked(f, job_id, jobs_dir(home), resume=False)
    return job_status(job_id, home)


def _info(f: Path) -> Optional[JobInfo]:
    spec = _read_json(f / "job.json")
    if spec is None:
        return None
    st = _read_json(f / "state.json")
    if st is None:
        st = {"state": "failed", "error": "the job's state file is missing or damaged."}
    info = JobInfo(id=f.name, kind=str(spec.get("kind")), title=str(spec.get("title") or f.name),
                   dataset=spec.get("dataset"), state=str(st.get("state")),
                   created=float(spec.get("created") or 0), folder=f,
                   attempt=int(st.get("attempt") or 0), pid=st.get("pid"),
                   started=st.get("started"), ended=st.get("ended"), result=st.get("result"),
                   error=st.get("error"), engine=st.get("engine"),
                   progress=_read_json(f / "progress.json") or {},
                   params=spec.get("params") or {})
    if info.state in ACTIVE:
        if st.get("host", socket.gethostname()) != socket.gethostname():
            if time.time() - _heartbeat(f, st) > HEARTBEAT_STALE_S:
                info.state = INTERRUPTED
        elif info.pid is None:
            if info.state == "running" or \
                    time.time() - float(st.get("queued_at") or 0) > LAUNCH_GRACE_S:
                info.state = INTERRUPTED
        elif not _alive(info.pid, info.id):
            info.state = INTERRUPTED
    return info


def _heartbeat(f: Path, st: dict) -> float:
    """When the worker last showed it was alive (its heartbeat file's mtime,
    else when it was queued)."""
    try:
        return (f / "heartbeat").stat().st_mtime
    except OSError:
        return float(st.get("started") or st.get("queued_at") or 0)


def _beat(f: Path) -> None:
    """The worker's heartbeat thread: touch ``heartbeat`` every HEARTBEAT_S."""
    path = f / "heartbeat"
    while True:
        try:
            path.touch()
        except OSError:
            pass
        time.sleep(HEARTBEAT_S)


def job_status(job_id: str, home=None) -> JobInfo:
    info = _info(folder(job_id, home))
    if info is None:
        raise InputError(f"job {job_id!r}: its job.json is damaged.")
    return info


def list_jobs(home=None) -> list[JobInfo]:
    """Every job under the home, newest first."""
    root = _root(home)
    try:
        entries = [p for p in root.iterdir() if p.is_dir() and ID_RE.fullmatch(p.name)]
    except OSError:
        return []
    jobs = [i for i in (_info(p) for p in entries) if i is not None]
    return sorted(jobs, key=lambda j: (j.created, j.id), reverse=True)


def _cleanup(f: Path, info: JobInfo, h: Path) -> None:
    """What an ended job no longer needs: its inputs, its item list and (for a
    dataset job, when no live writer holds the name) the embedding chunks."""
    for sub in ("input", "items"):
        shutil.rmtree(f / sub, ignore_errors=True)
    if info.dataset and info.kind == "upload":
        try:
            with store.writer_lock(info.dataset, f"cleaning up job {info.id}", home=h,
                                   timeout=0):
                shutil.rmtree(h / "jobs" / info.dataset, ignore_errors=True)
        except ClipgeomError:
            pass                               # another writer owns the name now


def cancel(job_id: str, home=None, *, grace_s: float = 10.0) -> JobInfo:
    """Stop a queued, running or interrupted job: SIGTERM to its process group
    (the worker cleans up and marks itself cancelled), SIGKILL after
    ``grace_s``; then the job is marked cancelled and its inputs removed. A job
    that has already ended is left as it is."""
    f = folder(job_id, home)
    h = jobs_dir(home)
    for _ in range(3):
        info = job_status(job_id, home)
        if info.state in TERMINAL:
            return info
        host = (_read_json(f / "state.json") or {}).get("host")
        if info.state in ACTIVE and host and host != socket.gethostname():
            raise InputError(f"job {job_id} runs on host {host!r}: cancel it there "
                             f"(python -m clipgeom jobs cancel {job_id}).")
        if info.state in ACTIVE and info.pid is not None:
            _terminate(info.pid, job_id, grace_s)
        elif info.resumable and host in (None, socket.gethostname()):
            _end_session(info.pid)             # a killed worker's helpers, if any
        with _state_lock(f):
            info = job_status(job_id, home)
            if info.state in TERMINAL:
                return info
            if info.state in ACTIVE:
                continue                       # launched meanwhile: kill that one too
            st = _read_json(f / "state.json") or {}
            _write_json(f / "state.json", dict(st, state="cancelled", ended=time.time(),
                                               error="cancelled by the user."))
        _log(f, "cancelled by the user")
        _cleanup(f, info, h)
        return job_status(job_id, home)
    raise DatasetError(f"job {job_id} could not be stopped; try again.")


def _terminate(pid: int, job_id: str, grace_s: float) -> None:
    """SIGTERM to the worker alone (it stops what it started in order: a local
    Ray shut down from the driver, not killed under it), SIGKILL to its group
    after ``grace_s``; then whatever is left of its session is killed."""
    def signal_group(sig):
        try:
            if os.getpgid(pid) == pid:         # the worker leads its own group
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    if not _alive(pid, job_id):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid, job_id):
        time.sleep(0.1)
    signal_group(signal.SIGKILL)               # its helpers, if any outlived it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid, job_id):
        time.sleep(0.05)
    _end_session(pid)


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid`` (from /proc; [] without one)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    out = []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                out.append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _end_session(pid) -> None:
    """SIGKILL what is left of the session of a worker that has ended. A worker
    leads its own session; a job's helpers (Ray's workers and model actors
    take process groups of their own) stay in it, and would outlive a worker
    killed under them. Only once the leader is gone (or a zombie): while a
    session has members the kernel does not reuse its id, so they are the
    job's; a live leader of that id is someone else's, and left alone."""
    if not isinstance(pid, int) or pid <= 0:
        return
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return                             # a live leader: not an ended worker
    except (OSError, IndexError):
        pass                                   # gone: its session's members are orphans
    for _ in range(3):                         # members may fork while we look
        members = [m for m in _session(pid) if m != pid]
        if not members:
            return
        for m in members:
            try:
                os.kill(m, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.1)


def resume(job_id: str, home=None) -> JobInfo:
    """Start an interrupted job again; it continues from its finished chunks."""
    f = folder(job_id, home)
    with _state_lock(f):
        info = job_status(job_id, home)
        if info.state != INTERRUPTED:
            raise InputError(f"job {job_id} is {info.label}; only an interrupted job can be "
                             "resumed.")
        if (_read_json(f / "state.json") or {}).get("host") in (None, socket.gethostname()):
            _end_session(info.pid)             # the killed attempt's helpers, if any
        _launch_locked(f, job_id, jobs_dir(home), resume=True)
    return job_status(job_id, home)


def forget(job_id: str, home=None) -> None:
    """Remove an ended job (finished, failed or cancelled) from the list."""
    info = job_status(job_id, home)
    if info.state not in TERMINAL:
        raise InputError(f"job {job_id} is {info.label}: cancel it first.")
    shutil.rmtree(info.folder, ignore_errors=True)


def wait(job_id: str, timeout: float = 300, home=None, poll: float = 0.2) -> JobInfo:
    """Block until the job has ended or is interrupted, and its process has
    exited (so its clean-up is done too); for tests and scripts."""
    deadline = time.monotonic() + timeout
    while True:
        info = job_status(job_id, home)
        done = not info.active and not _alive(info.pid, info.id)
        if done or time.monotonic() > deadline:
            return info
        time.sleep(poll)


def log_tail(job_id: str, lines: int = 40, home=None, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of the job's log."""
    path = folder(job_id, home) / "log.txt"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")            # progress bars redraw with carriage returns
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


# ------------------------------------------------------------------ the worker
@dataclass
class JobContext:
    """What a job's function gets in the worker process."""

    id: str
    folder: Path
    home: Path
    params: dict
    dataset: Optional[str]
    resume: bool
    progress: Callable[[str, int, int], None]
    engine: str = "local"                  # where the embedding runs (job_engine())
    ray_address: Optional[str] = None      # with engine "ray" (ray_address())

    @property
    def input(self) -> Path:
        return self.folder / "input"

    def log(self, line: str) -> None:
        _log(self.folder, line)


class _ProgressFile:
    """A job.run progress callback writing progress.json (at most every
    PROGRESS_EVERY_S seconds within a stage) and a log line per stage."""

    def __init__(self, f: Path):
        self.f, self.stage, self.stage_t0, self.last = f, None, 0.0, 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        new = stage != self.stage
        if new:
            self.stage, self.stage_t0 = stage, time.time()
            _log(self.f, f"{stage}: {total:,} to do" if total > 1 else stage)
        elif done < total and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        _write_json(self.f / "progress.json", {"stage": stage, "done": int(done),
                                               "total": int(total), "updated": time.time(),
                                               "stage_started": self.stage_t0})
        if done >= total > 1:
            _log(self.f, f"{stage}: {done:,} of {total:,} done")


def _raise_cancelled(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # one is enough: clean up undisturbed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Cancelled()


def _end(f: Path, **changes) -> None:
    with _state_lock(f):
        st = _read_json(f / "state.json") or {}
        if st.get("state") in TERMINAL:        # cancel() got there first
            return
        _write_json(f / "state.json", dict(st, ended=time.time(), **changes))


def run_worker(job_id: str, attempt: int, home=None) -> int:
    """The body of the worker process (``python -m clipgeom jobs run``)."""
    signal.signal(signal.SIGTERM, _raise_cancelled)
    signal.signal(signal.SIGINT, _raise_cancelled)
    h = jobs_dir(home)
    f = folder(job_id, h)
    spec = _read_json(f / "job.json") or {}
    try:
        engine, engine_error = job_engine(), None
    except InputError as exc:              # the job fails below, saying why
        engine, engine_error = None, exc
    address = ray_address() if engine == "ray" else None
    with _state_lock(f):
        st = _read_json(f / "state.json") or {}
        if st.get("state") != "queued" or int(st.get("attempt") or 0) != attempt:
            _log(f, f"worker for attempt {attempt} found the job {st.get('state')} "
                    f"(attempt {st.get('attempt')}); nothing to do")
            return 0
        st.update(state="running", pid=os.getpid(), host=socket.gethostname(),
                  started=time.time(), engine=engine)
        _write_json(f / "state.json", st)
    on = (f"Ray at {address}" if address else "Ray ($RAY_ADDRESS, else a local Ray)") \
        if engine == "ray" else f"the {engine or 'unknown'} engine"
    _log(f, f"attempt {attempt} running (pid {os.getpid()}), embedding on {on}")
    threading.Thread(target=_beat, args=(f,), name="heartbeat", daemon=True).start()
    dataset = spec.get("dataset")
    ctx = JobContext(id=job_id, folder=f, home=h, params=spec.get("params") or {},
                     dataset=dataset, resume=bool(st.get("resume")), progress=_ProgressFile(f),
                     engine=engine or "local", ray_address=address)
    info = _info(f)
    try:
        if engine_error is not None:
            raise engine_error
        module, _, name = KINDS[spec.get("kind")].partition(":")
        fn = getattr(importlib.import_module(module), name)
        lock = store.writer_lock(dataset, f"{spec.get('kind')} job {job_id} for {dataset!r}",
                                 home=h) if dataset else contextlib.nullcontext()
        with lock:
            result = fn(ctx)
    except Cancelled:
        _log(f, "cancelled: stopping")
        _end(f, state="cancelled", error="cancelled by the user.")
        _cleanup(f, info, h)
        _log(f, "cancelled: cleaned up")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)                  # now, not after torch's interpreter teardown
    except ClipgeomError as exc:
        _log(f, f"failed: {exc}")
        _end(f, state="failed", error=str(exc))
        _cleanup(f, info, h)
        return 2
    except Exception as exc:                   # a bug or the machine: keep the traceback
        _log(f, "failed:\n" + traceback.format_exc())
        _end(f, state="failed", error=f"the job failed ({type(exc).__name__}: "
                                      f"{str(exc)[:300]}); no dataset was changed.")
        _cleanup(f, info, h)
        return 1
    _end(f, state="finished", result=result)
    _log(f, f"finished: dataset {result!r}")
    for sub in ("input", "items"):
        shutil.rmtree(f / sub, ignore_errors=True)
    return 0
