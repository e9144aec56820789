"""Files uploaded through the dashboard, turned into datasets (no Streamlit here).

The dashboard hands over ``(filename, bytes)`` pairs. This module checks the
upload limits, writes the files into a private staging folder under the
store's home (flat, sanitised names: nothing outside it can be touched), and
runs the same pipeline as the CLI: images + captions file or one zip ->
:mod:`clipgeom.ingest` -> :func:`clipgeom.job.run`; two ``.npy`` arrays ->
:func:`clipgeom.store.import_arrays`. Datasets are created atomically by the
store, so a failed upload leaves every stored dataset as it was; the staging
folder is always removed.

Limits: the size cap is Streamlit's ``server.maxUploadSize`` (MB, in
``.streamlit/config.toml``), which Streamlit enforces per file and this module
enforces on the whole upload; the file-count cap is ``MAX_FILES``
(environment variable ``CLIPGEOM_MAX_UPLOAD_FILES``), since Streamlit's config
file accepts no option of ours.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import embed, ingest, job, store
from .errors import ClipgeomError, InputError

MAX_FILES = int(os.environ.get("CLIPGEOM_MAX_UPLOAD_FILES", "5000"))
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


def _write(files: list[tuple[str, bytes]], folder: Path) -> dict[str, Path]:
    """Write each file under its safe name; two uploads with one name are an error."""
    out: dict[str, Path] = {}
    for name, data in files:
        safe = safe_name(name)
        if safe in out:
            raise InputError(f"{name!r}: two uploaded files are both called {safe!r}; "
                             "rename one.")
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
# (``.../uploads/upload-XXXX/``) and the sub-folder the upload was written to
# (``images/``, ``image/``, ``text/``, or ``extracted/<zip>-XXXX/``).
_STAGED = re.compile(
    r"(?:[A-Za-z]:)?(?:[^\s'\"()\[\]]*?[\\/])?uploads[\\/]upload-[A-Za-z0-9_]+[\\/]"
    r"(?:(?:images|image|text)[\\/]|extracted[\\/][A-Za-z0-9_.-]+[\\/])?")


def user_message(text: str, home=None) -> str:
    """``text`` (an error or a skipped-file reason) with every server path into
    the private staging folder cut down to the user's own file name
    (``/srv/x/uploads/upload-ab12/images/cat.png`` -> ``cat.png``; a zip member
    keeps its folder inside the zip)."""
    text = str(text)
    root = (store.home() if home is None else Path(home)) / "uploads"
    for r in sorted({str(root), os.path.realpath(root)}, key=len, reverse=True):
        for sep in ("/", os.sep):
            text = text.replace(r + sep, "uploads/")
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


@_user_facing
@_locked
def embed_images(name: str, images: list[tuple[str, bytes]],
                 captions: Optional[tuple[str, bytes]], spec: embed.ModelSpec, *,
                 limits: UploadLimits = UploadLimits(), overwrite: bool = False,
                 progress: Progress = None, home=None) -> "store.Dataset":
    """Images and a captions file (``image`` and ``caption`` columns) -> a new
    dataset embedded with ``spec``."""
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
    with staging(home) as tmp:
        img_dir = tmp / "images"
        img_dir.mkdir()
        _write(images, img_dir)
        cap_path = None
        if captions is not None:
            cap_path = _write([captions], tmp)[safe_name(captions[0])]
        if cap_path is None:
            raise InputError("no captions file was uploaded: add one (.csv/.tsv/.jsonl with "
                             "'image' and 'caption' columns) so both modalities exist.")
        items = ingest.from_folder(img_dir, cap_path)
        _need_captions(items, f"captions file {captions[0]!r}")
        return _run_job(name, items, spec, overwrite, progress, home)


def _run_job(name, items, spec, overwrite, progress, home) -> "store.Dataset":
    """job.run, never leaving its chunk folder behind: an upload cannot be
    resumed (its staged files are gone), so a failed job is only clutter.
    The caller holds the name's writer lock, so the folder is this job's own."""
    try:
        return job.run(name, items, spec, job.JobOptions(overwrite=overwrite, workers=0),
                       progress=progress, home=home)
    finally:
        shutil.rmtree((store.home() if home is None else Path(home)) / "jobs" / name,
                      ignore_errors=True)



@_user_facing
@_locked
def embed_zip(name: str, archive: tuple[str, bytes], spec: embed.ModelSpec, *,
              limits: UploadLimits = UploadLimits(), overwrite: bool = False,
              progress: Progress = None, home=None) -> "store.Dataset":
    """One zip in the pipeline's layout (images + captions.csv) -> a new dataset."""
    _check_new_name(name, overwrite, home)
    if Path(archive[0]).suffix.lower() != ".zip":
        raise InputError(f"{archive[0]!r}: expected a .zip archive.")
    check_limits([archive], limits)
    zl = ingest.ZipLimits(max_files=limits.max_files)
    with staging(home) as tmp:
        path = _write([archive], tmp)[safe_name(archive[0])]
        items = ingest.from_zip(path, tmp / "extracted", limits=zl)
        _need_captions(items, f"archive {archive[0]!r}")
        return _run_job(name, items, spec, overwrite, progress, home)


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
