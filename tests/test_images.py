"""clipgeom.images: decoding every mode to RGB, EXIF, broken files, limits, thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from clipgeom.errors import InputError
from clipgeom.images import (IMAGE_EXTENSIONS, ImageLimits, is_image_path,
                             make_thumbnail, open_image, thumbnail_size, to_rgb)
from fixtures_media import exif_jpeg, make_image, noisy_jpeg_bytes


def header(path):
    """(mode, size, n_frames, EXIF orientation) of a file, closing it."""
    with Image.open(path) as im:
        return im.mode, im.size, getattr(im, "n_frames", 1), im.getexif().get(0x0112)


def _close(a, b, tol=3):
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


def test_extensions():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".webp", ".bmp",
                                ".gif", ".tif", ".tiff"}
    assert is_image_path("a/B.JPG") and not is_image_path("a/b.txt")


def test_rgb_png_and_jpeg_sizes(tmp_path):
    p = make_image(tmp_path / "a.png", size=(9, 5), color=(10, 20, 30))
    im = open_image(p)
    assert im.mode == "RGB" and im.size == (9, 5)
    assert im.getpixel((0, 0)) == (10, 20, 30)
    im.load()  # usable after the file was closed
    j = make_image(tmp_path / "a.jpg", size=(9, 5), color=(200, 20, 30))
    assert open_image(j).size == (9, 5)


def test_grayscale_L(tmp_path):
    p = make_image(tmp_path / "g.png", size=(7, 3), color=(90, 90, 90), mode="L")
    assert header(p)[0] == "L"
    im = open_image(p)
    assert (im.mode, im.size, im.getpixel((1, 1))) == ("RGB", (7, 3), (90, 90, 90))


def test_grayscale_16_bit(tmp_path):
    a = np.full((4, 6), 65535, np.uint16)
    a[:, :3] = 257 * 100
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    assert header(p)[0].startswith("I;16")
    im = open_image(p)
    assert (im.mode, im.size) == ("RGB", (6, 4))
    assert im.getpixel((0, 0)) == (100, 100, 100)
    assert im.getpixel((5, 3)) == (255, 255, 255)


@pytest.mark.parametrize("mode,value,expect", [("I", 1000, 4),  # 16-bit range: 1000 / 257
                                               ("I", 200, 200),
                                               ("F", 0.5, 128),
                                               ("F", 100.0, 100)])
def test_grayscale_32_bit_and_float(tmp_path, mode, value, expect):
    p = tmp_path / f"g_{mode}_{value}.tif"
    Image.new(mode, (5, 4), value).save(p)
    assert header(p)[0] == mode
    im = open_image(p)
    assert (im.mode, im.size) == ("RGB", (5, 4))
    assert im.getpixel((0, 0)) == (expect,) * 3


def test_cmyk(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 5), (0, 255, 255, 0)).save(p)  # red in CMYK
    assert header(p)[0] == "CMYK"
    im = open_image(p)
    assert (im.mode, im.size) == ("RGB", (8, 5))
    assert _close(im.getpixel((2, 2)), (255, 0, 0), tol=8)


def test_palette_with_transparency_goes_onto_white(tmp_path):
    p = tmp_path / "p.png"
    im = Image.new("P", (6, 4), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.save(p, transparency=1)
    assert header(p)[0] == "P"
    out = open_image(p)
    assert (out.mode, out.size) == ("RGB", (6, 4))
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent index
    assert out.getpixel((3, 3)) == (255, 0, 0)


def test_rgba_and_la_composited_onto_white(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    rgba.save(tmp_path / "a.png")
    out = open_image(tmp_path / "a.png")
    assert (out.mode, out.size) == ("RGB", (4, 2))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 0)
    assert _close(out.getpixel((2, 0)), (127, 127, 127), tol=2)
    la = Image.new("LA", (3, 5), (0, 0))
    la.putpixel((0, 0), (40, 255))
    la.save(tmp_path / "la.png")
    out = open_image(tmp_path / "la.png")
    assert (out.mode, out.size) == ("RGB", (3, 5))
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (40, 40, 40)


def test_exif_orientation_6_rotates(tmp_path):
    p = exif_jpeg(tmp_path / "o.jpg", size=(16, 8), orientation=6)
    _, size, _, orientation = header(p)
    assert size == (16, 8) and orientation == 6
    im = open_image(p)
    assert im.size == (8, 16)
    # orientation 6 = rotate 90 degrees clockwise: the left (red) half ends on top
    assert _close(im.getpixel((4, 3)), (255, 0, 0), tol=12)
    assert _close(im.getpixel((4, 12)), (0, 0, 255), tol=12)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = []
    for k in range(3):
        f = Image.new("P", (5, 5), k)
        f.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
        frames.append(f)
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert header(p)[2] == 3
    im = open_image(p)
    assert (im.mode, im.size, im.getpixel((2, 2))) == ("RGB", (5, 5), (255, 0, 0))


def test_truncated_jpeg_names_file(tmp_path):
    data = noisy_jpeg_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.jpg.*truncated or corrupt"):
        open_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_named_jpg_is_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("just some text\n")
    with pytest.raises(InputError, match=r"notes\.jpg.*not an image"):
        open_image(p)


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png.*not found"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"zero\.png.*empty"):
        open_image(tmp_path / "zero.png")
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(InputError, match="folder"):
        open_image(tmp_path / "d.jpg")


def test_pixel_cap_checked_from_header(tmp_path):
    p = make_image(tmp_path / "big.png", size=(10, 10))
    with pytest.raises(InputError, match=r"big\.png.*10x10 = 100 pixels.*99"):
        open_image(p, ImageLimits(max_pixels=99))
    assert open_image(p, ImageLimits(max_pixels=100)).size == (10, 10)


def test_file_size_cap(tmp_path):
    p = make_image(tmp_path / "a.png", size=(10, 10))
    with pytest.raises(InputError, match=r"a\.png.*allowed for one image"):
        open_image(p, ImageLimits(max_file_bytes=10))


@pytest.mark.parametrize("pillow_max", [60, 20])  # warning (>60), error (>2*20)
def test_pillow_decompression_bomb_becomes_input_error(tmp_path, monkeypatch, pillow_max):
    p = make_image(tmp_path / "bomb.png", size=(10, 10))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_max)
    with pytest.raises(InputError, match=r"bomb\.png.*decompression bomb"):
        open_image(p, ImageLimits(max_pixels=10**9))


def test_thumbnail_from_path_is_small_jpeg(tmp_path):
    p = make_image(tmp_path / "wide.png", size=(600, 300), color=(0, 128, 255))
    out = make_thumbnail(p, tmp_path / "thumbs" / "sub" / "wide.jpg")
    assert out == tmp_path / "thumbs" / "sub" / "wide.jpg"
    with Image.open(out) as t:
        assert t.format == "JPEG" and t.mode == "RGB"
        assert t.size == (256, 128)
    assert sorted(x.name for x in out.parent.iterdir()) == ["wide.jpg"]  # no temp files


def test_thumbnail_tall_rgba_image_object_and_no_upscale(tmp_path):
    im = Image.new("RGBA", (300, 1000), (0, 0, 0, 0))
    out = make_thumbnail(im, tmp_path / "t.jpg", max_side=256)
    with Image.open(out) as t:
        assert t.format == "JPEG" and t.mode == "RGB"
        assert max(t.size) <= 256 and t.size == (77, 256)
        assert _close(t.getpixel((10, 10)), (255, 255, 255))
    assert im.mode == "RGBA" and im.size == (300, 1000)  # caller's image untouched
    small = make_image(tmp_path / "s.png", size=(40, 20))
    with Image.open(make_thumbnail(small, tmp_path / "s.jpg")) as t:
        assert t.size == (40, 20)
    # overwriting an existing thumbnail replaces it
    make_thumbnail(Image.new("RGB", (500, 500)), tmp_path / "s.jpg")
    with Image.open(tmp_path / "s.jpg") as t:
        assert t.size == (256, 256)


def test_thumbnail_bad_args_and_bad_source(tmp_path):
    with pytest.raises(InputError):
        make_thumbnail(Image.new("RGB", (4, 4)), tmp_path / "x.jpg", max_side=0)
    with pytest.raises(InputError):
        make_thumbnail(Image.new("RGB", (4, 4)), tmp_path / "x.jpg", quality=101)
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    with pytest.raises(InputError, match="bad.jpg"):
        make_thumbnail(bad, tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()


def test_thumbnail_size_helper():
    assert thumbnail_size((1000, 10)) == (256, 3)
    assert thumbnail_size((1, 5000)) == (1, 256)
    assert thumbnail_size((256, 100)) == (256, 100)


def test_to_rgb_passthrough():
    im = Image.new("RGB", (2, 2))
    assert to_rgb(im) is im
    assert to_rgb(Image.new("1", (2, 2))).mode == "RGB"
