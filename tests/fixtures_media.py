"""Generators for tiny test media: images, caption files, COCO JSON, zips.

Everything is written under a folder the test gives (``tmp_path``) and is
small (a few pixels) so the tests stay fast.
"""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# A few distinct colours; image k of a fixture is filled with COLORS[k % n].
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
          (255, 0, 255), (128, 128, 128), (255, 128, 0)]


def make_image(path, size=(8, 6), color=(255, 0, 0), mode="RGB", fmt=None) -> Path:
    """Write a solid image (``size`` = (width, height)); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt)
    return path


def image_bytes(size=(8, 6), color=(255, 0, 0), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def noisy_jpeg_bytes(size=(64, 48), seed=0, quality=90) -> bytes:
    """A JPEG of random pixels (large enough that cutting it truncates data)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def exif_jpeg(path, size=(8, 4), orientation=6) -> Path:
    """A JPEG whose left half is red and right half blue, with an EXIF
    orientation tag."""
    path = Path(path)
    w, h = size
    im = Image.new("RGB", size, (255, 0, 0))
    im.paste((0, 0, 255), (w // 2, 0, w, h))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def write_csv(path, header, rows, delimiter=",") -> Path:
    """Write a delimited file (fields containing the delimiter are quoted)."""
    import csv
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow(r)
    return path


def write_jsonl(path, records) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def make_coco(root, n_images=4, captions_per_image=2, ids=None, missing=(),
              extra_annotations=()) -> tuple[Path, Path, list[dict]]:
    """A small MS-COCO captions JSON and its images.

    ``ids``: COCO image ids in JSON order (default 101, 102, ...);
    ``missing``: ids whose image file is not written. Returns
    (json_path, images_dir, images list as in the JSON).
    """
    root = Path(root)
    images_dir = root / "val"
    images_dir.mkdir(parents=True, exist_ok=True)
    ids = list(ids) if ids is not None else [101 + k for k in range(n_images)]
    images, anns = [], []
    ann_id = 1000
    for k, iid in enumerate(ids):
        fn = f"{iid:012d}.jpg"
        images.append({"id": iid, "file_name": fn, "width": 8, "height": 6})
        if iid not in missing:
            make_image(images_dir / fn, color=COLORS[k % len(COLORS)])
    # Annotations interleaved (round-robin) so that JSON order != image order.
    for c in range(captions_per_image):
        for k, iid in enumerate(ids):
            anns.append({"id": ann_id, "image_id": iid,
                         "caption": f"image {iid} caption {c} "})
            ann_id += 1
    anns.extend(extra_annotations)
    path = root / "captions_val.json"
    path.write_text(json.dumps({"info": {}, "images": images,
                                "annotations": anns}), encoding="utf-8")
    return path, images_dir, images


def zip_entry(zf: zipfile.ZipFile, name: str, data: bytes = b"x", *,
              symlink: bool = False, encrypted: bool = False,
              compress=zipfile.ZIP_DEFLATED) -> None:
    """Add one raw entry (name written as given, no sanitising)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = compress
    if symlink:
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
    else:
        info.external_attr = (stat.S_IFREG | 0o644) << 16
    if encrypted:
        info.flag_bits |= 0x1
    zf.writestr(info, data)


def make_zip(path, entries, **kw) -> Path:
    """``entries``: list of (name, bytes) or (name, bytes, options dict)."""
    path = Path(path)
    with zipfile.ZipFile(path, "w") as zf:
        for e in entries:
            name, data = e[0], e[1]
            opts = e[2] if len(e) > 2 else {}
            zip_entry(zf, name, data, **opts)
    return path


def make_coco_annotations_zip(path, coco_json: Path, split="val2017") -> Path:
    """An annotations_trainval2017.zip look-alike holding captions_<split>.json
    (plus an unrelated member that must not be extracted)."""
    data = Path(coco_json).read_bytes()
    return make_zip(path, [
        (f"annotations/captions_{split}.json", data),
        ("annotations/instances_val2017.json", b"{}"),
    ])


def tree(root) -> set[str]:
    """All paths under root (relative, POSIX), for 'nothing written' checks."""
    root = Path(root)
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def patch_zip_headers(path, *, flag_bits: int = 0, file_size: int | None = None) -> Path:
    """Rewrite the headers of every member of a zip in place: OR
    ``flag_bits`` into the general-purpose flags and, if given, declare
    ``file_size`` as the uncompressed size (both local and central headers).
    zipfile itself resets these fields when writing, hence the patching."""
    import struct
    path = Path(path)
    data = bytearray(path.read_bytes())
    for sig, flag_at, size_at in ((b"PK\x03\x04", 6, 22), (b"PK\x01\x02", 8, 24)):
        pos = data.find(sig)
        while pos != -1:
            (flags,) = struct.unpack_from("<H", data, pos + flag_at)
            struct.pack_into("<H", data, pos + flag_at, flags | flag_bits)
            if file_size is not None:
                struct.pack_into("<I", data, pos + size_at, file_size)
            pos = data.find(sig, pos + 4)
    path.write_bytes(bytes(data))
    return path
