"""Robust image decoding: every file a user might have becomes an RGB image or a TlearnError.

Datasets collected by hand hold every kind of file (grayscale scans, palette GIFs, transparent
PNGs, 16-bit TIFFs, CMYK JPEGs, photos rotated by EXIF, files cut short by a failed copy). The
network wants RGB, so the conversion happens here, once, and a file that cannot be read raises
the one user-facing error type so the loader can skip and count it instead of crashing a run.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlearn.errors import TlearnError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

_WHITE = (255, 255, 255, 255)


def is_image_file(path: str | Path) -> bool:
    """Whether a file name looks like an image; hidden files (macOS `._x.jpg` forks) do not."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def open_image(path: str | Path) -> Image.Image:
    """Decode a file fully into an RGB image, or raise TlearnError naming the file.

    Decoding is complete (`load()`), so a truncated file fails here rather than later inside a
    transform where the error would no longer say which file it was.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise TlearnError(f"cannot read image {path}: the file is empty; replace or remove it.")
    except FileNotFoundError as exc:
        raise TlearnError(f"image {path} does not exist; check the path.") from exc
    except OSError as exc:
        raise TlearnError(f"cannot read image {path} ({exc}); replace or remove it.") from exc
    return _decode(lambda: Image.open(path), path, Image.MAX_IMAGE_PIXELS)


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Decode an image held in memory (an upload to `tlearn serve`) as `open_image` decodes files.

    `max_pixels` is checked from the header before any pixel is decoded, so a small file that
    claims a huge image (a decompression bomb) costs nothing; None means no limit.
    """
    if not data:
        raise TlearnError(f"cannot read image {name}: it is empty; send the image's bytes.")
    return _decode(lambda: Image.open(io.BytesIO(data)), name, max_pixels)


def _decode(opener, name: object, max_pixels: int | None) -> Image.Image:
    try:
        with opener() as im:
            _check_pixels(im, name, max_pixels)
            im.seek(0)  # first frame of an animated GIF/WebP/TIFF
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except TlearnError:
        raise
    except FileNotFoundError as exc:
        raise TlearnError(f"image {name} does not exist; check the path.") from exc
    except UnidentifiedImageError as exc:
        raise TlearnError(
            f"cannot read image {name}: it is not an image format Pillow can decode; "
            "replace or remove it."
        ) from exc
    except Image.DecompressionBombError as exc:
        raise TlearnError(
            f"cannot read image {name}: it is too large to decode safely ({exc}); "
            "resize or remove it."
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, KeyError) as exc:
        # Pillow's plugins signal corrupt data with any of these (SyntaxError for bad headers).
        raise TlearnError(f"cannot read image {name} ({exc}); replace or remove it.") from exc


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way a person would look at it.

    High-bit-depth images are rescaled (Pillow's own conversion clips 16-bit values to 255, which
    turns most of a 16-bit image white), and transparency is laid on white (Pillow's conversion
    drops alpha, which shows whatever colour the invisible pixels happened to hold).
    """
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _high_depth_to_l(im)
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit int/float) grayscale to 8-bit, keeping the full value range."""
    a = np.asarray(im).astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 257.0  # 65535 -> 255, the exact inverse of 8-bit -> 16-bit (v * 257)
    elif im.mode == "F" and lo >= 0 and hi <= 1.0:
        a = a * 255.0
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))  # unknown range: stretch what is there
    else:
        a = np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in folders, for `predict`.

    A file named directly is kept whatever its extension (the user asked for it); files inside
    folders are chosen by extension so stray text or hidden files are not fed to the model.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    paths = list(paths)
    for p in map(Path, paths):
        if p.is_file():
            candidates = [p]
        elif p.is_dir():
            candidates = sorted(f for f in walk_files(p) if is_image_file(f))
        else:
            raise TlearnError(f"no such file or folder: {p}; check the path.")
        for f in candidates:
            if f not in seen:
                seen.add(f)
                found.append(f)
    if not found:
        shown = ", ".join(str(p) for p in paths[:3]) or "(no paths given)"
        exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise TlearnError(
            f"no images found in {shown}; give image files or folders holding {exts}."
        )
    return found


def walk_files(root: Path) -> Iterable[Path]:
    """Files under a folder, following symlinks, skipping hidden folders such as `.git`.

    A symlinked folder that leads back to one already walked, or up to the root or above it (a
    loop), is not entered: os.walk would list its files once per turn of the loop, and a link up
    from one class folder would pull the other classes' images into it.
    """
    top = os.path.realpath(root)
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in visited:
            dirnames[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not _leads_above(os.path.join(dirpath, d), top)
        )
        for name in filenames:
            yield Path(dirpath) / name


def _leads_above(path: str, top: str) -> bool:
    """Whether a folder is `top` itself or one of its ancestors (through symlinks)."""
    real = os.path.realpath(path)
    return real == top or top.startswith(real.rstrip(os.sep) + os.sep)


# Pillow warns between MAX_IMAGE_PIXELS and twice that, and refuses only beyond; tlearn refuses at
# the limit itself (`_check_pixels`), so the warning would only repeat the skip message.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own default: about 0.25 GB of RGB pixels


def _check_pixels(im: Image.Image, path: object, limit: int | None) -> None:
    if limit and im.width * im.height > limit:
        raise TlearnError(
            f"cannot read image {path}: {im.width}x{im.height} pixels is over the "
            f"{limit:,}-pixel limit (a decompression-bomb guard); resize or remove it, or raise "
            "--max-image-pixels."
        )


@contextlib.contextmanager
def max_image_pixels(limit: int | None) -> Iterator[None]:
    """Set Pillow's pixel limit for a run (loader processes forked inside inherit it)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous
