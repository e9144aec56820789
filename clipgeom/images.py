"""Image decoding and thumbnails (Pillow).

:func:`open_image` turns any supported image file into an RGB
``PIL.Image.Image`` or raises :class:`~clipgeom.errors.InputError` with a
message naming the file. It is safe to call in DataLoader worker processes:
it keeps no state and never changes Pillow's global settings.

Decoding rules
--------------
- The file is read into memory once (at most ``ImageLimits.max_file_bytes``),
  so the size check and the decode see the same bytes.
- The header size is checked against ``ImageLimits.max_pixels`` before any
  pixel is decoded (decompression bombs). Pillow's own bomb guard
  (``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top; its warning and its
  error are both turned into InputError.
- The image is fully decoded (``.load()``), so truncated or corrupt files
  fail here and not later. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False.
- EXIF orientation is applied (a photo taken in portrait comes out portrait).
  Unreadable EXIF data is ignored (the image is kept unrotated).
- Animated images (GIF, WebP, APNG, multi-page TIFF) give their first frame.
- Colour modes: transparency (RGBA, LA, PA, P or L/RGB with a transparent
  colour) is composited onto white; CMYK and palettes are converted; 16-bit
  and 32-bit grayscale (``I;16``, ``I``) are scaled to 8 bits (16-bit data
  divided by 257; ``I`` data in 0..255 kept, in 0..65535 treated as 16-bit,
  otherwise stretched min..max); float grayscale ``F`` in 0..1 is scaled by
  255, in 0..255 kept, otherwise stretched min..max.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ._atomic import replacing
from .errors import DatasetError, InputError

#: File extensions treated as images (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)

#: Errors Pillow's decoders raise on broken data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                  zlib.error, IndexError, TypeError, KeyError)

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied by :func:`open_image`.

    max_pixels: width * height above which an image is refused before it is
    decoded (a 50-megapixel photo is already huge for an embedding job).
    max_file_bytes: files larger than this are refused without being read.
    """

    max_pixels: int = 50_000_000
    max_file_bytes: int = 50 * 1024 * 1024


def is_image_path(path) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def open_image(path, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Open ``path`` as a fully decoded RGB image (see the module docstring).

    Raises InputError naming the file for: a missing file or a folder, a
    file larger than ``limits.max_file_bytes``, a file that is not an image,
    more than ``limits.max_pixels`` pixels, and truncated or corrupt data.
    """
    limits = limits if limits is not None else ImageLimits()
    path = Path(path)
    data = _read_bounded(path, limits.max_file_bytes)
    if not data:
        raise InputError(f"{path}: the file is empty (0 bytes); it is not an image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = _decode(path, data, limits)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"{path}: refused as a possible decompression bomb ({exc}). "
            "Resize the image or use a smaller one."
        ) from None
    return im


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found.") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file.")
    if st.st_size > max_bytes:
        raise InputError(
            f"{path}: the file is {_mb(st.st_size)}, more than the "
            f"{_mb(max_bytes)} allowed for one image. Use a smaller file."
        )
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if len(data) > max_bytes:  # grew since stat
        raise InputError(
            f"{path}: the file is more than the {_mb(max_bytes)} allowed for "
            "one image. Use a smaller file."
        )
    return data


def _decode(path: Path, data: bytes, limits: ImageLimits) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError(
            f"{path}: not an image file that can be read (expected JPEG, PNG, "
            "WebP, BMP, GIF or TIFF)."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: corrupt image header ({exc}).") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise InputError(f"{path}: the image has no pixels ({w}x{h}).")
    if w * h > limits.max_pixels:
        raise InputError(
            f"{path}: the image is {w}x{h} = {w * h:,} pixels, more than the "
            f"{limits.max_pixels:,} allowed (a guard against decompression "
            "bombs). Resize it first."
        )
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # pragma: no cover - someone set it
        raise InputError(
            f"{path}: cannot check the image because PIL.ImageFile."
            "LOAD_TRUNCATED_IMAGES was set to True elsewhere; set it back to False."
        )
    try:
        im.load()  # first frame only; full decode catches truncation
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except _DECODE_ERRORS as exc:
        raise InputError(
            f"{path}: the image is truncated or corrupt ({exc}). Re-export or "
            "re-download it."
        ) from None
    im = _apply_exif(im)
    try:
        return to_rgb(im)
    except _DECODE_ERRORS as exc:
        raise InputError(
            f"{path}: cannot convert colour mode {im.mode!r} to RGB ({exc})."
        ) from None


def _apply_exif(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF must not reject the pixels
        return im
    return out if out is not None else im


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to RGB (rules in the module doc).

    Returns ``im`` itself when it is already RGB without transparency.
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _WIDE_GRAY:
        return Image.fromarray(_gray_to_u8(im), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _gray_to_u8(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))
    else:
        a = np.zeros_like(a)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def thumbnail_size(size: tuple[int, int], max_side: int = 256) -> tuple[int, int]:
    """(width, height) scaled down to at most ``max_side`` a side, aspect kept."""
    w, h = size
    m = max(w, h)
    if m <= max_side:
        return (w, h)
    s = max_side / m
    return (max(1, min(max_side, round(w * s))), max(1, min(max_side, round(h * s))))


def make_thumbnail(image_or_path, out_path, max_side: int = 256,
                   quality: int = 85, *, limits: ImageLimits | None = None) -> Path:
    """Write a JPEG thumbnail (RGB, aspect kept, at most ``max_side`` a side).

    ``image_or_path``: a PIL image (any mode; not modified) or an image path
    (opened with :func:`open_image`). Images smaller than ``max_side`` are
    not enlarged. The file is written to a temporary name beside
    ``out_path`` and renamed into place, so readers never see half a file.
    Returns ``Path(out_path)``.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise InputError(f"max_side must be a positive integer, got {max_side!r}.")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise InputError(f"quality must be an integer from 1 to 95, got {quality!r}.")
    if isinstance(image_or_path, Image.Image):
        im = to_rgb(image_or_path)
    else:
        im = open_image(image_or_path, limits)
    size = thumbnail_size(im.size, max_side)
    if size != im.size:
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out_path = Path(out_path)
    try:
        with replacing(out_path) as tmp, open(tmp, "xb") as f:
            im.save(f, format="JPEG", quality=quality)
    except OSError as exc:
        raise DatasetError(
            f"{out_path}: cannot write the thumbnail ({exc.strerror or exc}). "
            "Check free space and permissions."
        ) from None
    return out_path
