"""Downloading MS-COCO captions and images (``fetch-coco``), standard library only.

:func:`download` streams one URL to ``<dest>.part``, resumes an interrupted
``.part`` with an HTTP Range request (restarting when the server ignores
Range), checks the size and optional sha256, and renames the file into place.
A file already at ``dest`` is kept (when it passes the given checks).

:func:`fetch_coco` downloads the official captions annotations (a zip of which
only ``annotations/captions_<split>.json`` is extracted, with the zip checks
of :mod:`clipgeom.ingest`) and the first ``limit`` images of the split, each
verified by decoding it with :func:`clipgeom.images.open_image`. Its result
feeds :func:`clipgeom.ingest.from_coco`.

Progress callbacks: :func:`download` calls ``progress(bytes_done,
bytes_total)``; :func:`fetch_coco` calls ``progress(done, total, label)``
with label ``"annotations"`` (bytes) or ``"images"`` (files). Totals may be
None when unknown. :class:`TqdmProgress` draws them with tqdm.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from . import __version__
from .errors import InputError
from .images import open_image
from .ingest import Skipped, _check_limit, coco_file_problem, extract_member, load_coco

log = logging.getLogger(__name__)

ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
#: Images of a split live under this URL (``{split}`` is filled in).
IMAGES_BASE_URL = "http://images.cocodataset.org/{split}"
DEFAULT_IMAGES_BASE_URL = IMAGES_BASE_URL.format(split="val2017")
USER_AGENT = f"clipgeom/{__version__} (+fetch-coco)"
CHUNK = 64 * 1024
#: First pause between retries, in seconds (doubled each time, at most 10 s).
BACKOFF_S = 0.5

_SPLIT = re.compile(r"^[a-z]+20[0-9]{2}$")


class NetworkError(InputError):
    """The host could not be reached, or the transfer kept failing."""


class _Retry(Exception):
    """A transient failure: try again (resuming where possible)."""

    def __init__(self, msg: str, *, connect: bool = False):
        super().__init__(msg)
        self.connect = connect


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _check_url(url) -> str:
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme.lower() \
            not in ("http", "https") or not urllib.parse.urlsplit(url).hostname:
        raise InputError(f"{url!r}: only http:// and https:// URLs can be downloaded.")
    return url


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, expected_size, sha256) -> str | None:
    """Why ``path`` is not the wanted file, or None."""
    size = path.stat().st_size
    if expected_size is not None and size != int(expected_size):
        return f"size {size:,} bytes, expected {int(expected_size):,}"
    if sha256 is not None:
        got = _sha256(path)
        if got.lower() != str(sha256).lower():
            return f"sha256 {got[:16]}..., expected {str(sha256)[:16]}..."
    return None


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.I)


def _content_range(value):
    """(start, end, total) from a Content-Range header; parts may be None."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    end = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, end, total


def _int_header(resp, name):
    v = resp.headers.get(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _attempt(url: str, part: Path, expected_size, progress, timeout) -> None:
    """One request; returns when ``part`` holds the whole body. Raises
    _Retry for transient failures, InputError for permanent ones."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    if expected_size is not None and offset == expected_size and offset > 0:
        return
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT,
                                               "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - scheme checked
    except urllib.error.HTTPError as exc:
        code = exc.code
        headers = exc.headers
        exc.close()
        if code == 416 and offset:
            _, _, total = _content_range(headers.get("Content-Range") if headers else None)
            if total is not None and total == offset:
                return  # the .part was already complete
            part.unlink()
            raise _Retry(f"the server refused to resume ({code}); restarting") from None
        if code in (408, 425, 429) or code >= 500:
            raise _Retry(f"the server answered {code} {exc.reason}") from None
        raise InputError(
            f"{url}: the server answered {code} {exc.reason}; check the URL."
        ) from None
    except urllib.error.URLError as exc:
        raise _Retry(str(exc.reason), connect=True) from None
    except (http.client.HTTPException, OSError) as exc:
        raise _Retry(str(exc) or type(exc).__name__, connect=True) from None
    with resp:
        status = resp.status
        length = _int_header(resp, "Content-Length")
        if status == 206 and offset:
            start, _, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retry("the server sent the wrong part of the file; restarting")
            if total is None and length is not None:
                total = offset + length
            mode, done = "ab", offset
        elif status in (200, 206):
            # No Range asked, or the server ignored it: start over.
            total = length
            if status == 206:
                _, _, total = _content_range(resp.headers.get("Content-Range"))
            mode, done = "wb", 0
        else:
            raise _Retry(f"unexpected HTTP status {status}")
        if expected_size is not None and total is not None and total != expected_size:
            raise InputError(
                f"{url}: the server has a file of {total:,} bytes but "
                f"{int(expected_size):,} were expected; the file changed or "
                "the URL is wrong."
            )
        if progress is not None:
            progress(done, total)
        try:
            with open(part, mode) as f:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    if total is not None and done > total:
                        break
                    if progress is not None:
                        progress(done, total)
        except (http.client.HTTPException, socket.timeout, ConnectionError) as exc:
            raise _Retry(f"the connection broke after {done:,} bytes ({exc or type(exc).__name__})") from None
        except OSError as exc:
            if exc.errno is None:  # a socket error without errno (timeouts)
                raise _Retry(f"the connection broke after {done:,} bytes ({exc})") from None
            raise InputError(f"{part}: cannot write ({exc.strerror or exc}).") from None
    if total is not None and done > total:
        part.unlink()
        raise _Retry("the server sent more data than announced; restarting")
    if total is not None and done < total:
        raise _Retry(f"the connection closed after {done:,} of {total:,} bytes")


def download(url: str, dest, *, expected_size: int | None = None,
             sha256: str | None = None, progress=None, timeout: float = 30,
             retries: int = 3) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); return ``dest``.

    An existing ``dest`` that passes the given checks is kept as is.
    ``retries``: further attempts after the first one for transient failures
    (connection refused or reset, timeouts, 5xx); each attempt resumes the
    ``.part``. Raises :class:`NetworkError` when the host cannot be reached
    or the transfer keeps failing, InputError for other problems (HTTP 404,
    size or checksum mismatch).
    """
    _check_url(url)
    dest = Path(dest)
    if expected_size is not None and (isinstance(expected_size, bool)
                                      or int(expected_size) < 0):
        raise InputError(f"expected_size must be a byte count, got {expected_size!r}.")
    if dest.is_file() and _verify(dest, expected_size, sha256) is None:
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{dest.parent}: cannot create ({exc.strerror or exc}).") from None
    last: _Retry | None = None
    bad_file = None
    for attempt in range(max(0, int(retries)) + 1):
        if attempt:
            time.sleep(min(BACKOFF_S * 2 ** (attempt - 1), 10.0))
        bad_file = None
        try:
            _attempt(url, part, expected_size, progress, timeout)
        except _Retry as exc:
            last = exc
            log.info("download %s: %s (attempt %d)", url, exc, attempt + 1)
            continue
        bad_file = _verify(part, expected_size, sha256)
        if bad_file is None:
            os.replace(part, dest)
            return dest
        part.unlink()
        last = _Retry(f"the downloaded file does not match ({bad_file})")
    if bad_file is not None:
        raise InputError(
            f"{url}: the downloaded file does not match ({bad_file}), even "
            f"after {int(retries) + 1} tries. The server's file may have changed."
        )
    assert last is not None
    if last.connect:
        raise NetworkError(
            f"Could not reach {_host(url)} ({last}) to download {url}. Check the "
            "internet connection or proxy settings (http_proxy / https_proxy), "
            f"or download the file by hand and save it as {dest}."
        )
    raise NetworkError(
        f"Downloading {url} from {_host(url)} kept failing ({last}). Run the "
        f"command again to resume, or download the file by hand and save it as {dest}."
    )


# --------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------

class FetchResult(tuple):
    """``(annotations_json, images_dir)``; ``.failed`` lists the images that
    could not be fetched (:class:`~clipgeom.ingest.Skipped` items)."""

    def __new__(cls, annotations_json: Path, images_dir: Path, failed):
        self = super().__new__(cls, (Path(annotations_json), Path(images_dir)))
        self.failed = list(failed)
        return self

    @property
    def annotations_json(self) -> Path:
        return self[0]

    @property
    def images_dir(self) -> Path:
        return self[1]


def _manual(dest_dir: Path, split: str, ann_url: str, base: str) -> str:
    return (
        "To download by hand: get "
        f"{ann_url} and unzip annotations/captions_{split}.json into "
        f"{dest_dir / 'annotations'}; then put the images ({base}/<file_name>, "
        f"or all of them from http://images.cocodataset.org/zips/{split}.zip) "
        f"into {dest_dir / split}. Then import with the annotations file and "
        "that folder."
    )


def _fetch_image(base: str, file_name: str, images_dir: Path, timeout, retries):
    """Download and verify one image; None when done, else the reason."""
    final = images_dir / file_name
    staging = final.with_name(f".{final.name}.unverified")
    url = base.rstrip("/") + "/" + urllib.parse.quote(file_name)
    last = ""
    for _ in range(2):
        try:
            download(url, staging, timeout=timeout, retries=retries)
        except NetworkError:
            raise
        except InputError as exc:
            return str(exc)
        try:
            open_image(staging)
        except InputError as exc:
            last = str(exc).split(": ", 1)[-1]
            try:
                staging.unlink()
            except OSError:
                pass
            continue
        os.replace(staging, final)
        return None
    return (f"{url}: the download is not a readable image even after a second "
            f"try ({last}); it was deleted.")


def fetch_coco(dest_dir, *, split: str = "val2017", limit: int | None = None,
               annotations_url: str = ANNOTATIONS_URL,
               images_base_url: str | None = None, progress=None,
               workers: int = 8, timeout: float = 30,
               retries: int = 3) -> FetchResult:
    """Download COCO captions and the first ``limit`` images of ``split``.

    Files: ``dest_dir/annotations/captions_<split>.json`` and
    ``dest_dir/<split>/<file_name>``. What is already there is not fetched
    again (re-running resumes). ``annotations_url`` may be the official zip
    (kept in ``dest_dir`` for other splits) or a direct ``.json`` URL;
    ``images_base_url`` defaults to ``http://images.cocodataset.org/<split>``.
    Images are downloaded by ``workers`` threads and each is checked by
    decoding it; a corrupt one is deleted and downloaded once more, then
    reported in ``result.failed`` (and left out). Raises NetworkError (an
    InputError) with instructions for a manual download when the host
    cannot be reached.
    """
    if not isinstance(split, str) or not _SPLIT.match(split):
        raise InputError(f"split must look like 'val2017' or 'train2017', got {split!r}.")
    limit = _check_limit(limit)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a positive whole number, got {workers!r}.")
    _check_url(annotations_url)
    base = images_base_url or IMAGES_BASE_URL.format(split=split)
    _check_url(base)
    dest_dir = Path(dest_dir)
    manual = _manual(dest_dir, split, annotations_url, base)
    ann_json = dest_dir / "annotations" / f"captions_{split}.json"
    images_dir = dest_dir / split
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{images_dir}: cannot create ({exc.strerror or exc}).") from None

    def ann_progress(done, total):
        if progress is not None:
            progress(done, total, "annotations")

    try:
        if not ann_json.is_file():
            name = posixpath.basename(urllib.parse.urlsplit(annotations_url).path)
            if name.lower().endswith(".json"):
                download(annotations_url, ann_json, progress=ann_progress,
                         timeout=timeout, retries=retries)
            else:
                zpath = dest_dir / (name or "annotations.zip")
                download(annotations_url, zpath, progress=ann_progress,
                         timeout=timeout, retries=retries)
                extract_member(zpath, f"annotations/captions_{split}.json", ann_json)
    except NetworkError as exc:
        raise NetworkError(f"{exc} {manual}") from None

    images, _ = load_coco(ann_json)
    chosen = images if limit is None else images[:limit]
    failed: list[Skipped] = []
    todo: list[str] = []
    done = 0
    seen: set[str] = set()
    for im in chosen:
        fn = im["file_name"]
        problem = coco_file_problem(fn)
        if problem:
            failed.append(Skipped(fn, problem))
            continue
        if fn in seen:
            continue
        seen.add(fn)
        if (images_dir / fn).is_file():
            done += 1
        else:
            todo.append(fn)
    n = done + len(todo)
    if progress is not None:
        progress(done, n, "images")
    if todo:
        ex = ThreadPoolExecutor(max_workers=min(workers, len(todo)))
        try:
            futures = {}
            for fn in todo:
                (images_dir / fn).parent.mkdir(parents=True, exist_ok=True)
                futures[ex.submit(_fetch_image, base, fn, images_dir, timeout,
                                  retries)] = fn
            for fut in as_completed(futures):
                why = fut.result()
                if why is not None:
                    log.warning("fetch-coco: %s", why)
                    failed.append(Skipped(futures[fut], why))
                done += 1
                if progress is not None:
                    progress(done, n, "images")
        except NetworkError as exc:
            ex.shutdown(wait=True, cancel_futures=True)
            raise NetworkError(f"{exc} {manual}") from None
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    return FetchResult(ann_json, images_dir, failed)


class TqdmProgress:
    """A ``progress(done, total, label)`` callback with one tqdm bar per label.

    Byte counts for every label except ``"images"`` (counted in files).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, **tqdm_kwargs):
        self._kw = tqdm_kwargs
        self._bars: dict = {}

    def __call__(self, done, total=None, label: str = "download") -> None:
        bar = self._bars.get(label)
        if bar is None:
            from tqdm import tqdm
            kw = ({"unit": "img"} if label == "images"
                  else {"unit": "B", "unit_scale": True, "unit_divisor": 1024})
            kw.update(self._kw)
            bar = self._bars[label] = tqdm(total=total, desc=label, **kw)
        if total is not None and bar.total != total:
            bar.total = total
            bar.refresh()
        if done != bar.n:
            bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
