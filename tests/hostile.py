"""A "hostile" image folder: every kind of file a real, hand-collected dataset holds.

`make_hostile_folder(root)` writes `root/hostile/<class>/...` and returns the folder, the names
of the files that cannot be decoded (and must be skipped and counted) and the names of the odd
but valid files (which must be trained on). Used by tests/test_reliability.py.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

_COLORS = {"cat": (220, 40, 40), "dog": (40, 70, 220)}


@dataclass
class Hostile:
    folder: Path
    bad: set[str] = field(default_factory=set)  # file names that must be skipped
    odd: set[str] = field(default_factory=set)  # valid files in unusual forms


def _rgb(color, size=(20, 16), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    a = np.clip(np.array(color)[None, None, :] + rng.integers(-20, 21, (h, w, 3)), 0, 255)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **kw)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few bytes: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def make_hostile_folder(root: Path, good_per_class: int = 6) -> Hostile:
    folder = Path(root) / "hostile"
    h = Hostile(folder)
    for k, (name, color) in enumerate(_COLORS.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for j in range(good_per_class):
            _rgb(color, seed=100 * k + j).save(folder / name / f"{name}_{j}.png")
    cat, dog = folder / "cat", folder / "dog"

    def bad(path: Path, data: bytes) -> None:
        path.write_bytes(data)
        h.bad.add(path.name)

    def odd(path: Path, im: Image.Image, fmt: str, **kw) -> None:
        path.write_bytes(_encoded(im, fmt, **kw))
        h.odd.add(path.name)

    red, blue = _COLORS["cat"], _COLORS["dog"]
    jpeg = _encoded(_rgb(red, (40, 30)), "JPEG")
    png = _encoded(_rgb(blue, (40, 30)), "PNG")
    bad(cat / "zero_bytes.jpg", b"")
    bad(cat / "truncated.jpg", jpeg[: len(jpeg) // 2])
    bad(dog / "truncated.png", png[: len(png) // 2])
    bad(dog / "not_an_image.jpg", b"this is a text file with an image's name\n" * 20)
    bad(cat / "bomb.png", png_header_only(20_000, 20_000))
    loop_a, loop_b = cat / "loop_a.jpg", cat / "loop_b.jpg"
    os.symlink(loop_b.name, loop_a)
    os.symlink(loop_a.name, loop_b)
    h.bad |= {loop_a.name, loop_b.name}
    # A folder symlink leading back up: its files must be listed once, not once per loop turn.
    os.symlink("..", dog / "up")
    if os.geteuid() != 0:  # root reads files whatever their mode: the case cannot be made
        locked = cat / "no_permission.png"
        locked.write_bytes(_encoded(_rgb(red), "PNG"))
        locked.chmod(0)
        h.bad.add(locked.name)

    odd(cat / "one_pixel.png", _rgb(red, (1, 1)), "PNG")
    odd(cat / "cmyk.jpg", _rgb(red).convert("CMYK"), "JPEG")
    sixteen = Image.fromarray(np.full((16, 20), 40000, dtype=np.uint16))
    odd(dog / "sixteen_bit.png", sixteen, "PNG")
    palette = _rgb(blue).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    odd(dog / "palette_transparent.png", palette, "PNG", transparency=0)
    frames = [_rgb(red, seed=1).convert("P"), _rgb(blue, seed=2).convert("P")]
    odd(
        cat / "animated.gif",
        frames[0],
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=100,
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    odd(dog / "exif_rotated.jpg", _rgb(blue, (30, 16)), "JPEG", exif=exif.tobytes())
    odd_name = os.fsdecode(b"caf\xe9_latin1.png")  # not valid UTF-8: a surrogate escape
    (dog / odd_name).write_bytes(_encoded(_rgb(blue), "PNG"))
    h.odd.add(odd_name)
    (folder / "empty_class").mkdir()
    return h


def make_plain_folder(root: Path, n: int = 9, size=(20, 16)) -> Path:
    """A clean two-class folder of `n` noisy solid-colour PNGs per class."""
    folder = Path(root) / "plain"
    for k, (name, color) in enumerate(_COLORS.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            _rgb(color, size, seed=100 * k + j).save(folder / name / f"{name}_{j}.png")
    return folder
