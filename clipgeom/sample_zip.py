"""A small sample upload: a zip of generated images and their captions.csv.

Offered on the Upload page so a user can see the layout an upload expects
(and try the pipeline end to end) before preparing their own files. It is
generated in memory and is byte-for-byte deterministic: fixed shapes, colours
and positions, PNG encoding, and zip entries with a fixed timestamp and order.
"""

from __future__ import annotations

import csv
import functools
import io
import zipfile

from PIL import Image, ImageDraw

FOLDER = "clipgeom-sample"
FILE_NAME = f"{FOLDER}.zip"
SIZE = 96
# (shape, colour name, RGB, position name, box corner as fractions of the side)
_ITEMS = [
    ("circle", "red", (220, 30, 30), "top left", (0.08, 0.08)),
    ("square", "blue", (30, 70, 220), "bottom right", (0.48, 0.48)),
    ("triangle", "green", (30, 160, 60), "top right", (0.48, 0.08)),
    ("circle", "yellow", (235, 200, 20), "bottom left", (0.08, 0.48)),
    ("square", "purple", (130, 40, 170), "centre", (0.28, 0.28)),
    ("triangle", "orange", (245, 130, 20), "bottom left", (0.08, 0.48)),
    ("circle", "blue", (30, 70, 220), "centre", (0.28, 0.28)),
    ("square", "red", (220, 30, 30), "top right", (0.48, 0.08)),
]
_EPOCH = (1980, 1, 1, 0, 0, 0)      # the earliest zip timestamp: no clock in the bytes


def _image(shape: str, rgb, corner) -> bytes:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    x0, y0 = int(corner[0] * SIZE), int(corner[1] * SIZE)
    x1, y1 = x0 + int(0.44 * SIZE), y0 + int(0.44 * SIZE)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=rgb)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=rgb)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=rgb)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def sample_files() -> list[tuple[str, bytes]]:
    """(name, bytes) of the sample's images and its captions.csv, in zip order."""
    files, rows = [], []
    for k, (shape, colour, rgb, where, corner) in enumerate(_ITEMS):
        name = f"{k:02d}-{colour}-{shape}.png"
        files.append((name, _image(shape, rgb, corner)))
        rows.append((name, f"a {colour} {shape} at the {where}"))
        rows.append((name, f"a photo of a {shape} that is {colour}"))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
    return files + [("captions.csv", buf.getvalue().encode("utf-8"))]


@functools.lru_cache(maxsize=1)
def sample_zip() -> bytes:
    """The sample as zip bytes: ``clipgeom-sample/`` holding the images and a
    captions.csv with two captions per image (columns image, caption)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sample_files():
            info = zipfile.ZipInfo(f"{FOLDER}/{name}", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()
