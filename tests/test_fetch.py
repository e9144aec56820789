"""clipgeom.fetch against a local HTTP server (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipgeom import fetch
from clipgeom.errors import InputError
from clipgeom.fetch import NetworkError, TqdmProgress, download, fetch_coco
from clipgeom.ingest import from_coco
from fixtures_media import make_coco, make_coco_annotations_zip, tree

ZIP_PATH = "/annotations/annotations_trainval2017.zip"


class State:
    def __init__(self, files, ignore_range=False, drop_once=(), status=None):
        self.files = dict(files)          # url path -> bytes
        self.ignore_range = ignore_range  # answer 200 with the whole file to Range requests
        self.drop_once = set(drop_once)   # paths whose first answer stops half way
        self.status = dict(status or {})  # path -> forced HTTP status
        self.requests = []                # (path, Range header or None)
        self.lock = threading.Lock()
        self.base = ""

    def seen(self, path):
        return [r for p, r in self.requests if p == path]


def _handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((path, rng))
                drop = path in state.drop_once
                state.drop_once.discard(path)
            if path in state.status:
                self.send_error(state.status[path])
                return
            data = state.files.get(path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and not state.ignore_range:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if drop:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(files, **opts):
    state = State(files, **opts)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True)
    t.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)


def blob(n=200_000, seed=1):
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"end"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------

def test_download_plain_with_progress_and_checks(tmp_path):
    data = blob()
    calls = []
    with serve({"/f.bin": data}) as srv:
        out = download(srv.base + "/f.bin", tmp_path / "d" / "f.bin",
                       expected_size=len(data),
                       sha256=hashlib.sha256(data).hexdigest(),
                       progress=lambda d, t: calls.append((d, t)))
        assert out.read_bytes() == data
        assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data))
        assert tree(tmp_path / "d") == {"f.bin"}
        # an existing complete file is not fetched again
        download(srv.base + "/f.bin", out, expected_size=len(data))
        download(srv.base + "/f.bin", out)
        assert len(srv.requests) == 1


def test_download_resumes_part_with_range(tmp_path):
    data = blob()
    dest = tmp_path / "f.bin"
    half = len(data) // 2
    (tmp_path / "f.bin.part").write_bytes(data[:half])
    calls = []
    with serve({"/f.bin": data}) as srv:
        download(srv.base + "/f.bin", dest, progress=lambda d, t: calls.append(d))
    assert srv.requests == [("/f.bin", f"bytes={half}-")]
    assert dest.read_bytes() == data
    assert calls[0] == half
    assert not (tmp_path / "f.bin.part").exists()


def test_download_server_ignoring_range_restarts(tmp_path):
    data = blob()
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"X" * 1000)  # stale junk
    with serve({"/f.bin": data}, ignore_range=True) as srv:
        download(srv.base + "/f.bin", dest)
    assert srv.requests == [("/f.bin", "bytes=1000-")]
    assert dest.read_bytes() == data


def test_download_part_already_complete_416(tmp_path):
    data = blob(5000)
    (tmp_path / "f.bin.part").write_bytes(data)
    with serve({"/f.bin": data}) as srv:
        download(srv.base + "/f.bin", tmp_path / "f.bin")
    assert srv.requests == [("/f.bin", f"bytes={len(data)}-")]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_connection_dropped_then_resumed(tmp_path):
    data = blob()
    with serve({"/f.bin": data}, drop_once={"/f.bin"}) as srv:
        download(srv.base + "/f.bin", tmp_path / "f.bin", retries=2)
    assert srv.requests[0] == ("/f.bin", None)
    assert srv.requests[1] == ("/f.bin", f"bytes={len(data) // 2}-")
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_mismatch_and_http_errors(tmp_path):
    data = blob(10_000)
    with serve({"/f.bin": data}, status={"/boom": 503}) as srv:
        with pytest.raises(InputError, match="does not match.*sha256"):
            download(srv.base + "/f.bin", tmp_path / "a.bin", sha256="0" * 64, retries=1)
        assert not (tmp_path / "a.bin").exists()
        assert not (tmp_path / "a.bin.part").exists()
        with pytest.raises(InputError, match=f"{len(data):,} bytes but 5 were expected"):
            download(srv.base + "/f.bin", tmp_path / "b.bin", expected_size=5)
        n = len(srv.requests)
        with pytest.raises(InputError, match="answered 404"):
            download(srv.base + "/nope.bin", tmp_path / "c.bin")
        assert len(srv.requests) == n + 1  # a 404 is not retried
        with pytest.raises(NetworkError, match="kept failing.*503"):
            download(srv.base + "/boom", tmp_path / "d.bin", retries=2)
        assert len(srv.seen("/boom")) == 3
    with pytest.raises(InputError, match="only http"):
        download("file:///etc/passwd", tmp_path / "e")


def test_download_connection_refused_is_clear(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/x.bin"
    with pytest.raises(NetworkError) as err:
        download(url, tmp_path / "x.bin", retries=1, timeout=5)
    msg = str(err.value)
    assert "Could not reach 127.0.0.1" in msg and "by hand" in msg and str(tmp_path / "x.bin") in msg
    assert isinstance(err.value, InputError)
    assert not (tmp_path / "x.bin").exists()


# --------------------------------------------------------------------------
# fetch_coco
# --------------------------------------------------------------------------

def coco_site(tmp_path, corrupt=()):
    src = tmp_path / "site"
    ann, images_dir, images = make_coco(src, ids=[42, 7, 13, 99])
    z = make_coco_annotations_zip(src / "ann.zip", ann)
    files = {ZIP_PATH: z.read_bytes()}
    for im in images:
        data = (images_dir / im["file_name"]).read_bytes()
        if im["id"] in corrupt:
            data = data[: len(data) // 3]  # a truncated image
        files[f"/val2017/{im['file_name']}"] = data
    return ann, images_dir, images, files


def test_fetch_coco_with_limit(tmp_path):
    ann, images_dir, images, files = coco_site(tmp_path)
    dest = tmp_path / "coco"
    calls = []
    with serve(files) as srv:
        res = fetch_coco(dest, limit=2, annotations_url=srv.base + ZIP_PATH,
                         images_base_url=srv.base + "/val2017",
                         progress=lambda d, t, label: calls.append((d, t, label)))
        ann_json, img_dir = res
        assert ann_json == dest / "annotations" / "captions_val2017.json"
        assert img_dir == dest / "val2017" and res.failed == []
        assert ann_json.read_bytes() == ann.read_bytes()
        wanted = [im["file_name"] for im in images[:2]]
        assert sorted(p.name for p in img_dir.iterdir()) == sorted(wanted)
        for fn in wanted:
            assert (img_dir / fn).read_bytes() == (images_dir / fn).read_bytes()
        assert not (dest / "annotations" / "instances_val2017.json").exists()
        assert {label for *_, label in calls} == {"annotations", "images"}
        assert calls[-1] == (2, 2, "images")
        n = len(srv.requests)
        again = fetch_coco(dest, limit=2, annotations_url=srv.base + ZIP_PATH,
                           images_base_url=srv.base + "/val2017")
        assert tuple(again) == (ann_json, img_dir)
        assert len(srv.requests) == n  # everything was already there
        fetch_coco(dest, limit=3, annotations_url=srv.base + ZIP_PATH,
                   images_base_url=srv.base + "/val2017")
        assert [p for p, _ in srv.requests[n:]] == [f"/val2017/{images[2]['file_name']}"]
    il = from_coco(ann_json, img_dir, limit=3)
    assert il.images["image_id"].tolist() == ["42", "7", "13"]


def test_fetch_coco_direct_json_url(tmp_path):
    ann, _, images, files = coco_site(tmp_path)
    files["/captions_val2017.json"] = ann.read_bytes()
    with serve(files) as srv:
        ann_json, img_dir = fetch_coco(tmp_path / "c", limit=1,
                                       annotations_url=srv.base + "/captions_val2017.json",
                                       images_base_url=srv.base + "/val2017/")
    assert ann_json.read_bytes() == ann.read_bytes()
    assert [p.name for p in img_dir.iterdir()] == [images[0]["file_name"]]


def test_fetch_coco_corrupt_image_retried_once_then_reported(tmp_path):
    ann, _, images, files = coco_site(tmp_path, corrupt={7})
    bad = images[1]["file_name"]
    with serve(files) as srv:
        res = fetch_coco(tmp_path / "c", limit=3, annotations_url=srv.base + ZIP_PATH,
                         images_base_url=srv.base + "/val2017", workers=2)
    assert len(srv.seen(f"/val2017/{bad}")) == 2
    assert [s.item for s in res.failed] == [bad]
    assert "not a readable image" in res.failed[0].reason
    assert sorted(p.name for p in res.images_dir.iterdir()) == sorted(
        [images[0]["file_name"], images[2]["file_name"]])  # no leftovers
    il = from_coco(res.annotations_json, res.images_dir, limit=3)
    assert il.images["image_id"].tolist() == ["42", "13"]
    assert il.skipped[0].item.endswith(bad)


def test_fetch_coco_missing_image_reported(tmp_path):
    _, _, images, files = coco_site(tmp_path)
    del files[f"/val2017/{images[0]['file_name']}"]
    with serve(files) as srv:
        res = fetch_coco(tmp_path / "c", limit=2, annotations_url=srv.base + ZIP_PATH,
                         images_base_url=srv.base + "/val2017")
    assert [s.item for s in res.failed] == [images[0]["file_name"]]
    assert "404" in res.failed[0].reason


def test_fetch_coco_unreachable_host(tmp_path):
    base = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(InputError) as err:
        fetch_coco(tmp_path / "c", limit=1, annotations_url=base + ZIP_PATH,
                   images_base_url=base + "/val2017", retries=0, timeout=5)
    msg = str(err.value)
    assert "Could not reach 127.0.0.1" in msg
    assert "To download by hand" in msg and "captions_val2017.json" in msg
    assert "zips/val2017.zip" in msg


def test_fetch_coco_unreachable_image_host(tmp_path):
    _, _, _, files = coco_site(tmp_path)
    with serve(files) as srv:
        with pytest.raises(NetworkError, match="Could not reach 127.0.0.1.*To download by hand"):
            fetch_coco(tmp_path / "c", limit=2, annotations_url=srv.base + ZIP_PATH,
                       images_base_url=f"http://127.0.0.1:{free_port()}/val2017",
                       retries=0, timeout=5)


def test_fetch_coco_bad_arguments_and_missing_member(tmp_path):
    with pytest.raises(InputError, match="split"):
        fetch_coco(tmp_path, split="../x")
    with pytest.raises(InputError, match="limit"):
        fetch_coco(tmp_path, limit=0)
    _, _, _, files = coco_site(tmp_path)
    with serve(files) as srv:
        with pytest.raises(InputError, match="has no member 'annotations/captions_train2017.json'"):
            fetch_coco(tmp_path / "c", split="train2017", limit=1,
                       annotations_url=srv.base + ZIP_PATH)


def test_defaults_are_official_urls():
    assert fetch.ANNOTATIONS_URL == \
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
    assert fetch.DEFAULT_IMAGES_BASE_URL == "http://images.cocodataset.org/val2017"


def test_tqdm_progress():
    buf = io.StringIO()
    with TqdmProgress(file=buf, mininterval=0) as p:
        p(0, 100, "annotations")
        p(100, 100, "annotations")
        p(1, 2, "images")
        p(2, 2, "images")
    out = buf.getvalue()
    assert "annotations" in out and "images" in out and "2/2" in out
