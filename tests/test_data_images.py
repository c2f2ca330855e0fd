"""Decoding: every mode becomes RGB with the right pixels; every broken file is a TlearnError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tlearn.data import IMAGE_EXTENSIONS, find_images, open_image
from tlearn.errors import TlearnError


def _pixels(path) -> np.ndarray:
    im = open_image(path)
    assert im.mode == "RGB"
    return np.asarray(im)


def test_grayscale_becomes_gray_rgb(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (5, 4), 77).save(p)
    assert (_pixels(p) == 77).all()


def test_one_bit_becomes_black_and_white(tmp_path):
    p = tmp_path / "b.bmp"
    im = Image.new("1", (4, 4), 0)
    im.putpixel((1, 2), 1)
    im.save(p)
    a = _pixels(p)
    assert tuple(a[2, 1]) == (255, 255, 255) and tuple(a[0, 0]) == (0, 0, 0)


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (32768, 128), (0, 0), (257, 1)])
def test_16_bit_png_is_scaled_not_clipped(tmp_path, value, expected):
    p = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 4), value, dtype=np.uint16)).save(p)
    assert Image.open(p).mode.startswith("I")  # really stored as 16-bit
    assert (_pixels(p) == expected).all()


def test_32_bit_int_tiff_holding_16_bit_values(tmp_path):
    p = tmp_path / "deep.tif"
    a = np.array([[0, 32768, 65535]], dtype=np.int32)
    Image.fromarray(a, mode="I").save(p)
    assert _pixels(p)[0, :, 0].tolist() == [0, 128, 255]


def test_rgba_transparent_becomes_white_and_opaque_keeps_colour(tmp_path):
    p = tmp_path / "a.png"
    im = Image.new("RGBA", (2, 1), (10, 20, 30, 0))  # invisible dark pixel
    im.putpixel((1, 0), (10, 20, 30, 255))
    im.save(p)
    a = _pixels(p)
    assert tuple(a[0, 0]) == (255, 255, 255)
    assert tuple(a[0, 1]) == (10, 20, 30)


def test_half_transparent_la_is_blended_on_white(tmp_path):
    p = tmp_path / "la.png"
    Image.new("LA", (2, 2), (0, 128)).save(p)
    assert np.allclose(_pixels(p), 127, atol=1)


def test_palette_with_transparency_becomes_white(tmp_path):
    p = tmp_path / "p.gif"
    im = Image.new("P", (2, 1), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.putpixel((1, 0), 1)
    im.save(p, transparency=0)
    a = _pixels(p)
    assert tuple(a[0, 0]) == (255, 255, 255)  # index 0 is transparent red
    assert tuple(a[0, 1]) == (0, 0, 255)


def test_cmyk_becomes_rgb(tmp_path):
    p = tmp_path / "c.tif"
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(p)
    assert (_pixels(p) == (255, 0, 0)).all()


def test_animated_gif_gives_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    a = _pixels(p)
    assert a[..., 0].min() > 200 and a[..., 2].max() < 50


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 20), (90, 90, 90)).save(p, exif=exif)
    assert open_image(p).size == (20, 40)


def test_image_is_detached_from_file(tmp_path):
    p = tmp_path / "x.png"
    Image.new("RGB", (3, 3), (1, 2, 3)).save(p)
    im = open_image(p)
    p.unlink()
    assert im.getpixel((0, 0)) == (1, 2, 3)


def _truncated_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p, quality=95)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


def _truncated_png(tmp_path):
    p = tmp_path / "cut.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


def _zero_bytes(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    return p


def _text(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n")
    return p


def _bad_header(tmp_path):
    p = tmp_path / "head.png"
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    data = bytearray(good.read_bytes())
    data[16:24] = b"\xff" * 8  # width and height in IHDR
    p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("make", [_truncated_jpeg, _truncated_png, _zero_bytes, _text, _bad_header])
def test_broken_files_raise_tlearn_error_naming_the_file(tmp_path, make):
    p = make(tmp_path)
    with pytest.raises(TlearnError, match=p.name):
        open_image(p)


def test_missing_file_and_folder_raise_tlearn_error(tmp_path):
    with pytest.raises(TlearnError, match="nope.png"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(TlearnError, match="cannot read image"):
        open_image(tmp_path)


def test_extensions_cover_common_formats():
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"} <= IMAGE_EXTENSIONS


def test_find_images_walks_folders_sorted_and_keeps_explicit_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.PNG", "d/a.jpg", "d/sub/c.webp", "d/readme.txt", "d/.hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    odd = tmp_path / "photo.raw"
    odd.write_bytes(b"x")
    found = find_images([tmp_path / "d", odd, tmp_path / "d" / "a.jpg"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["d/a.jpg", "d/b.PNG", "d/sub/c.webp", "photo.raw"]


def test_find_images_errors(tmp_path):
    with pytest.raises(TlearnError, match="no such file or folder"):
        find_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlearnError, match="no images found"):
        find_images([tmp_path / "empty"])
