"""Files uploaded through the dashboard, turned into datasets (no Streamlit here).

The dashboard hands over ``(filename, bytes)`` pairs. This module checks the
upload limits, writes the files into a private staging folder under the
store's home (flat, sanitised names: nothing outside it can be touched), and
runs the same pipeline as the CLI: images + captions file or one zip ->
:mod:`clipgeom.ingest` -> :func:`clipgeom.job.run`; two ``.npy`` arrays ->
:func:`clipgeom.store.import_arrays`. Datasets are created atomically by the
store, so a failed upload leaves every stored dataset as it was; the staging
folder is always removed.

Two ways to run: ``embed_images`` / ``embed_zip`` embed in the calling
thread (tests, scripts); ``start_embed_images`` / ``start_embed_zip`` make the
same checks, stage the files in a new background job's folder and start it
(:mod:`clipgeom.background`): the Upload page uses these, so a page switch, a
closed tab or a server restart never loses an upload (a killed one is resumed
from its finished chunks). A job embeds on the engine the server's operator
chose (``CLIPGEOM_JOB_ENGINE``: local, or ray through
:mod:`clipgeom.ray_engine`). ``.npy`` imports stay synchronous (a copy and a
check, seconds at the upload size cap).

Limits: the size cap is Streamlit's ``server.maxUploadSize`` (MB, in
``.streamlit/config.toml``), which Streamlit enforces per file and this module
enforces on the whole upload; the file-count cap is ``MAX_FILES``
(environment variable ``CLIPGEOM_MAX_UPLOAD_FILES``), since Streamlit's config
file accepts no option of ours.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import background, embed, ingest, job, store
from .errors import ClipgeomError, InputError

MAX_FILES = int(os.environ.get("CLIPGEOM_MAX_UPLOAD_FILES", "5000"))


def chunk_rows() -> int:
    """Rows per resumable chunk of an upload job (CLIPGEOM_UPLOAD_CHUNK_ROWS,
    default 1024): a killed job loses at most one chunk of work."""
    try:
        return max(1, int(os.environ.get("CLIPGEOM_UPLOAD_CHUNK_ROWS", "1024")))
    except ValueError:
        return 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_SUFFIXES = (".csv", ".tsv", ".jsonl", ".txt")

Progress = Optional[Callable[[str, int, int], None]]


@dataclass(frozen=True)
class UploadLimits:
    max_files: int = MAX_FILES
    max_total_bytes: int = 200 * 1024 ** 2

    @classmethod
    def from_megabytes(cls, max_upload_mb: float, max_files: int = MAX_FILES
                       ) -> "UploadLimits":
        return cls(max_files=int(max_files), max_total_bytes=int(max_upload_mb * 1024 ** 2))


def _mb(n: int) -> str:
    return f"{n / 1024 ** 2:,.1f} MB"


def check_limits(files: list[tuple[str, bytes]], limits: UploadLimits) -> None:
    """InputError when the upload has too many files or too many bytes in all."""
    if len(files) > limits.max_files:
        raise InputError(f"{len(files):,} files were uploaded; the limit is "
                         f"{limits.max_files:,} (CLIPGEOM_MAX_UPLOAD_FILES). Upload one zip, "
                         "or import a folder with `python -m clipgeom embed`.")
    total = sum(len(b) for _, b in files)
    if total > limits.max_total_bytes:
        raise InputError(f"the upload holds {_mb(total)}; the limit is "
                         f"{_mb(limits.max_total_bytes)} in all (server.maxUploadSize in "
                         ".streamlit/config.toml). Import large sets with "
                         "`python -m clipgeom embed` instead.")


def safe_name(filename: str) -> str:
    """The file's base name, kept as it is (spaces and accents included, so a
    captions file that names "my photo.jpg" still finds it), minus anything
    that could leave the private staging folder or hide a file: folder parts,
    leading dots and control characters."""
    base = re.split(r"[\\/]", str(filename))[-1]
    clean = re.sub(r"[\x00-\x1f\x7f]", "_", base).lstrip(".").strip()
    if not clean or len(clean.encode("utf-8")) > 255:
        raise InputError(f"{filename!r}: not a usable file name.")
    return clean


def _safe_names(files: list[tuple[str, bytes]]) -> list[str]:
    """Each file's safe name; two uploads with one name are an error."""
    out: list[str] = []
    for name, _ in files:
        safe = safe_name(name)
        if safe in out:
            raise InputError(f"{name!r}: two uploaded files are both called {safe!r}; "
                             "rename one.")
        out.append(safe)
    return out


def _write(files: list[tuple[str, bytes]], folder: Path) -> dict[str, Path]:
    """Write each file under its safe name; two uploads with one name are an error."""
    out: dict[str, Path] = {}
    for safe, (_, data) in zip(_safe_names(files), files):
        path = folder / safe
        path.write_bytes(data)
        out[safe] = path
    return out


@contextmanager
def staging(home=None) -> Iterator[Path]:
    """A private folder under ``<home>/uploads``, held by this process and
    removed on exit, success or not; a killed upload's folder is swept by the
    next store operation (``store.locks.owned_folder``)."""
    h = store.home() if home is None else Path(home)
    store.sweep(h)
    with store.locks.owned_folder(h / "uploads", "upload-") as path:
        yield path


@contextmanager
def as_file(filename: str, data: bytes) -> Iterator[Path]:
    """One uploaded file on disk under its own (safe) name, for the duration of
    the block, so that errors about it name the user's file."""
    with tempfile.TemporaryDirectory(prefix="clipgeom-query-") as tmp:
        path = Path(tmp) / safe_name(filename)
        path.write_bytes(data)
        yield path


# A path inside a staging folder, up to the user's own file name: the folder
# (``.../uploads/upload-XXXX/``, or a background job's ``.../background/ID/input/``)
# and the sub-folder the upload was written to (``images/``, ``image/``,
# ``text/``, or ``extracted/<zip>-XXXX/``).
_STAGED = re.compile(
    r"(?:[A-Za-z]:)?(?:[^\s'\"()\[\]]*?[\\/])?"
    r"(?:uploads[\\/]upload-[A-Za-z0-9_]+|background[\\/][0-9a-f-]+[\\/]input)[\\/]"
    r"(?:(?:images|image|text)[\\/]|extracted[\\/][A-Za-z0-9_.-]+[\\/])?")


def user_message(text: str, home=None) -> str:
    """``text`` (an error or a skipped-file reason) with every server path into
    the private staging folder cut down to the user's own file name
    (``/srv/x/uploads/upload-ab12/images/cat.png`` -> ``cat.png``; a zip member
    keeps its folder inside the zip)."""
    text = str(text)
    h = store.home() if home is None else Path(home)
    for sub in ("uploads", background.ROOT):
        root = h / sub
        for r in sorted({str(root), os.path.realpath(root)}, key=len, reverse=True):
            for sep in ("/", os.sep):
                text = text.replace(r + sep, f"{sub}/")
    return _STAGED.sub("", text)


def skipped_for_user(ds: "store.Dataset", home=None) -> list[dict]:
    """The dataset's skipped items (file and reason), with server paths cut down
    to the user's own file names by :func:`user_message`."""
    return [{"item": user_message(s.get("item", ""), home),
             "reason": user_message(s.get("reason", ""), home)}
            for s in (ds.manifest.get("skipped") or [])]


def _user_facing(fn):
    """Errors of an upload name the user's files, never the staging folder."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClipgeomError as exc:
            raise type(exc)(user_message(str(exc), kwargs.get("home"))) from None
    return wrapper


def user_datasets(home=None) -> list[str]:
    """Names of the datasets a user may delete (their own, never bundled ones)."""
    return [d["name"] for d in store.list_datasets(home) if not d.get("read_only")]


def delete_user_dataset(name: str, home=None) -> None:
    """Delete one of the user's datasets (store.delete_dataset); a bundled one
    is refused with a DatasetError that says so."""
    store.delete_dataset(name, home)


def _check_new_name(name: str, overwrite: bool, home) -> None:
    """Before any work: a bundled name can never be replaced, a user one only
    when asked."""
    store.check_name(name)
    existing = {d["name"]: d for d in store.list_datasets(home)}
    if existing.get(name, {}).get("read_only"):
        raise InputError(f"{name!r} is a bundled read-only dataset; choose another name.")
    if not overwrite and name in existing:
        raise InputError(f"dataset {name!r} already exists; choose another name or tick "
                         "'replace an existing dataset'.")


def _need_captions(items: "ingest.ItemList", what: str) -> None:
    # Every view compares the two modalities: a set without captions has nothing to compare.
    if len(items.texts) == 0:
        raise InputError(f"{what} has no captions: add a captions file (.csv/.tsv/.jsonl "
                         "with 'image' and 'caption' columns) so both modalities exist.")


def _locked(fn):
    """Run an upload under the writer lock of its dataset name (held from the
    first check to the commit): a second writer of the name never mixes in."""
    @functools.wraps(fn)
    def wrapper(name, *args, **kwargs):
        store.check_name(name)
        with store.writer_lock(name, f"upload of {name!r}", home=kwargs.get("home")):
            return fn(name, *args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class _Form:
    """An upload that passed its checks: how its files are written into a
    folder (``stage``), what reads them back from there (``params``, for
    :func:`_read_staged`; a job keeps them in job.json) and its job's title.
    Both ways of running an upload (now, or as a background job) go through it."""

    params: dict
    title: str
    stage: Callable[[Path], object]


def _check_images(name, images, captions, overwrite, limits, home) -> None:
    """Everything an images + captions upload can be refused for before any work."""
    _check_new_name(name, overwrite, home)
    if not images:
        raise InputError("no images were uploaded.")
    bad = [n for n, _ in images if Path(n).suffix.lower() not in IMAGE_SUFFIXES]
    if bad:
        raise InputError(f"{bad[0]!r}: not an image file (expected "
                         f"{', '.join(IMAGE_SUFFIXES)}).")
    if captions is not None and Path(captions[0]).suffix.lower() not in CAPTION_SUFFIXES:
        raise InputError(f"{captions[0]!r}: captions must be a .csv, .tsv or .jsonl file "
                         "with 'image' and 'caption' columns.")
    check_limits(images + ([captions] if captions else []), limits)


def _images_form(name, images, captions) -> _Form:
    """The last checks of an images upload (usable file names, a captions
    file), and its form."""
    _safe_names(images)
    if captions is None:
        raise InputError(_NO_CAPTIONS)
    return _Form({"form": "images", "captions": safe_name(captions[0]),
                  "captions_name": captions[0]},
                 f"{name}: {len(images):,} images + {captions[0]}",
                 lambda folder: _stage_images(images, captions, folder))


_NO_CAPTIONS = ("no captions file was uploaded: add one (.csv/.tsv/.jsonl with "
                "'image' and 'caption' columns) so both modalities exist.")


def _stage_images(images, captions, folder: Path) -> None:
    """The images into ``folder/images``, the captions file beside them."""
    img_dir = folder / "images"
    img_dir.mkdir()
    _write(images, img_dir)
    _write([captions], folder)


def _check_zip(name, archive, overwrite, limits, home) -> None:
    _check_new_name(name, overwrite, home)
    if Path(archive[0]).suffix.lower() != ".zip":
        raise InputError(f"{archive[0]!r}: expected a .zip archive.")
    check_limits([archive], limits)


def _zip_form(name, archive, limits) -> _Form:
    return _Form({"form": "zip", "archive": safe_name(archive[0]), "archive_name": archive[0],
                  "max_files": limits.max_files},
                 f"{name}: {archive[0]}", lambda folder: _write([archive], folder))


def _read_staged(folder: Path, params: dict) -> "ingest.ItemList":
    """The item list of an upload staged in ``folder`` (by its form's ``stage``)."""
    if params["form"] == "images":
        items = ingest.from_folder(folder / "images", folder / params["captions"])
        _need_captions(items, f"captions file {params['captions_name']!r}")
    else:
        items = ingest.from_zip(folder / params["archive"], folder / "extracted",
                                limits=ingest.ZipLimits(max_files=int(params["max_files"])))
        _need_captions(items, f"archive {params['archive_name']!r}")
    return items


def _embed_now(name: str, form_of: Callable[[], _Form], spec: embed.ModelSpec,
               overwrite: bool, progress: Progress, home) -> "store.Dataset":
    """Stage the upload in a private folder, read it and embed it, in this
    thread. ``form_of()`` makes the form's last checks (usable file names, a
    captions file) inside the staging folder, where this path always made them."""
    with staging(home) as tmp:
        form = form_of()
        form.stage(tmp)
        return _run_job(name, _read_staged(tmp, form.params), spec, overwrite, progress, home)


@_user_facing
@_locked
def embed_images(name: str, images: list[tuple[str, bytes]],
                 captions: Optional[tuple[str, bytes]], spec: embed.ModelSpec, *,
                 limits: UploadLimits = UploadLimits(), overwrite: bool = False,
                 progress: Progress = None, home=None) -> "store.Dataset":
    """Images and a captions file (``image`` and ``caption`` columns) -> a new
    dataset embedded with ``spec``, in this thread."""
    _check_images(name, images, captions, overwrite, limits, home)
    return _embed_now(name, lambda: _images_form(name, images, captions), spec, overwrite,
                      progress, home)


def _chunk_folder(engine: str, name: str, h: Path) -> Path:
    """Where the engine keeps a job's finished chunks (clipgeom.job: ``jobs/NAME``;
    clipgeom.ray_engine: ``jobs/NAME/ray``)."""
    return h / "jobs" / name / "ray" if engine == "ray" else h / "jobs" / name


def _run_job(name, items, spec, overwrite, progress, home, *, resume: bool = False,
             rows: Optional[int] = None, engine: str = "local",
             ray_address: Optional[str] = None) -> "store.Dataset":
    """The embedding job on ``engine``: ``local`` (:func:`clipgeom.job.run`, in
    this process) or ``ray`` (:func:`clipgeom.ray_engine.run`, the same arrays),
    never leaving its chunk folder behind when it fails or is cancelled: a
    synchronous upload cannot be resumed (its staged files are gone), so a
    failed job is only clutter. A background job killed outright (SIGKILL, a
    reboot) runs no ``finally``: its chunks stay for the resume, which an
    engine makes only from chunks of its own (a job resumed on the other
    engine starts its embedding afresh). The caller holds the name's writer
    lock, so the folder is this job's own."""
    h = store.home() if home is None else Path(home)
    resume = resume and (_chunk_folder(engine, name, h) / "job.json").is_file()
    opts = job.JobOptions(overwrite=overwrite, workers=0, resume=resume,
                          chunk_rows=rows or job.JobOptions.chunk_rows)
    try:
        if engine == "ray":
            from . import ray_engine

            with background.ray_connection(ray_address):
                return ray_engine.run(name, items, spec, opts,
                                      ray_engine.RayOptions(address=ray_address),
                                      progress=progress, home=h)
        return job.run(name, items, spec, opts, progress=progress, home=home)
    finally:
        shutil.rmtree(h / "jobs" / name, ignore_errors=True)


@_user_facing
@_locked
def embed_zip(name: str, archive: tuple[str, bytes], spec: embed.ModelSpec, *,
              limits: UploadLimits = UploadLimits(), overwrite: bool = False,
              progress: Progress = None, home=None) -> "store.Dataset":
    """One zip in the pipeline's layout (images + captions.csv) -> a new
    dataset, in this thread."""
    _check_zip(name, archive, overwrite, limits, home)
    return _embed_now(name, lambda: _zip_form(name, archive, limits), spec, overwrite,
                      progress, home)


# ------------------------------------------------------------------ background jobs
def _check_no_job(name: str, home) -> None:
    """One upload job per dataset name at a time: a second one is refused
    while the first is queued, running or interrupted (resume or cancel it)."""
    for j in background.list_jobs(home):
        if j.dataset == name and (j.active or j.resumable):
            what = ("resume or cancel it in the Jobs panel first" if j.resumable else
                    "wait for it to finish, or cancel it in the Jobs panel")
            raise InputError(f"a job for dataset {name!r} is already {j.label} "
                             f"(job {j.id}); {what}.")


def _spec_params(spec: embed.ModelSpec) -> dict:
    """The model as the worker rebuilds it (file paths made absolute: the
    worker need not share the page's working folder)."""
    def absolute(p):
        return str(Path(p).expanduser().absolute()) if p and Path(p).exists() else p
    return {"name": absolute(spec.name) if spec.config_path else spec.name,
            "pretrained": spec.pretrained, "checkpoint": absolute(spec.checkpoint)}


def _start(name: str, form: _Form, spec: embed.ModelSpec, overwrite: bool, home) -> str:
    """A background job for dataset ``name``: created, its files staged by the
    form in the job's input folder, then started. Returns the job id."""
    _check_no_job(name, home)
    params = dict(form.params, spec=_spec_params(spec), overwrite=bool(overwrite),
                  chunk_rows=chunk_rows())
    job_id = background.create("upload", params, dataset=name, title=form.title, home=home)
    try:
        form.stage(background.input_dir(job_id, home))
    except BaseException:
        background.discard(job_id, home)
        raise
    background.start(job_id, home)
    return job_id


@_user_facing
@_locked
def start_embed_images(name: str, images: list[tuple[str, bytes]],
                       captions: Optional[tuple[str, bytes]], spec: embed.ModelSpec, *,
                       limits: UploadLimits = UploadLimits(), overwrite: bool = False,
                       home=None) -> str:
    """:func:`embed_images` as a background job: the same checks now, then the
    files staged in the job's folder and its process started. Returns the job id
    (:func:`clipgeom.background.job_status` follows it)."""
    _check_images(name, images, captions, overwrite, limits, home)
    return _start(name, _images_form(name, images, captions), spec, overwrite, home)


@_user_facing
@_locked
def start_embed_zip(name: str, archive: tuple[str, bytes], spec: embed.ModelSpec, *,
                    limits: UploadLimits = UploadLimits(), overwrite: bool = False,
                    home=None) -> str:
    """:func:`embed_zip` as a background job (see :func:`start_embed_images`)."""
    _check_zip(name, archive, overwrite, limits, home)
    return _start(name, _zip_form(name, archive, limits), spec, overwrite, home)


def _save_items(items: "ingest.ItemList", folder: Path) -> None:
    """The ingested item list, kept so that a resumed job embeds exactly the
    same rows (a zip is extracted to a new random folder each time)."""
    tmp = folder.with_name(f".{folder.name}-{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        items.images.to_parquet(tmp / "images.parquet")
        items.texts.to_parquet(tmp / "texts.parquet")
        (tmp / "items.json").write_text(json.dumps({
            "root": str(items.root), "source": items.source,
            "skipped": [[s.item, s.reason] for s in items.skipped]}, default=str))
        shutil.rmtree(folder, ignore_errors=True)        # a damaged one from a killed run
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_items(folder: Path) -> Optional["ingest.ItemList"]:
    import pandas as pd

    try:
        meta = json.loads((folder / "items.json").read_text())
        return ingest.ItemList(images=pd.read_parquet(folder / "images.parquet"),
                               texts=pd.read_parquet(folder / "texts.parquet"),
                               skipped=[ingest.Skipped(i, r) for i, r in meta["skipped"]],
                               root=Path(meta["root"]), source=meta["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_upload_job(ctx: "background.JobContext") -> str:
    """An upload job's body, in the worker process (which holds the name's
    writer lock): ingest the staged files once (kept in ``items/``), then the
    resumable embedding job on the engine the server configured
    (``ctx.engine``: local or ray). Errors name the user's files, never the
    folder."""
    p, name = ctx.params, ctx.dataset
    try:
        _check_new_name(name, p["overwrite"], ctx.home)
        items_dir = ctx.folder / "items"
        items = _load_items(items_dir) if ctx.resume else None
        if items is None:
            ctx.progress("reading the files", 0, 1)
            items = _read_staged(ctx.input, p)
            try:
                _save_items(items, items_dir)
                items = _load_items(items_dir) or items   # the same rows on every attempt
            except (OSError, ValueError, TypeError) as exc:
                ctx.log(f"the item list could not be kept ({exc}); a resume re-reads the files")
        ctx.log(f"read the files: {len(items.images):,} image file(s) and "
                f"{len(items.texts):,} caption(s) to embed, {len(items.skipped):,} skipped")
        spec = embed.ModelSpec(**p["spec"])
        ctx.progress("starting Ray and loading the model" if ctx.engine == "ray"
                     else "loading the model", 0, 1)
        ds = _run_job(name, items, spec, p["overwrite"], ctx.progress, ctx.home,
                      resume=ctx.resume, rows=int(p["chunk_rows"]), engine=ctx.engine,
                      ray_address=ctx.ray_address)
        return ds.name
    except ClipgeomError as exc:
        raise type(exc)(user_message(str(exc), ctx.home)) from None


@_user_facing
@_locked
def import_npy(name: str, image_npy: tuple[str, bytes], text_npy: tuple[str, bytes],
               captions: Optional[tuple[str, bytes]] = None, *,
               limits: UploadLimits = UploadLimits(), overwrite: bool = False,
               home=None) -> "store.Dataset":
    """Two precomputed ``.npy`` arrays (and optional captions) -> a new dataset."""
    _check_new_name(name, overwrite, home)
    for n, _ in (image_npy, text_npy):
        if Path(n).suffix.lower() != ".npy":
            raise InputError(f"{n!r}: expected a .npy array.")
    files = [image_npy, text_npy] + ([captions] if captions else [])
    check_limits(files, limits)
    with staging(home) as tmp:
        img_dir, txt_dir = tmp / "image", tmp / "text"
        img_dir.mkdir()
        txt_dir.mkdir()   # separate folders: the two arrays may share a name
        ip = _write([image_npy], img_dir)[safe_name(image_npy[0])]
        tp = _write([text_npy], txt_dir)[safe_name(text_npy[0])]
        cp = _write([captions], tmp)[safe_name(captions[0])] if captions else None
        return store.import_arrays(name, ip, tp, captions=cp, overwrite=overwrite, home=home)
