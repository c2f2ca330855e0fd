"""Each file decoded once: what is wrong with it, and a digest of its pixels.

The digest is of the decoded RGB pixels (after EXIF rotation, as training sees them), not of the
file's bytes: the same photo saved twice, or with its metadata stripped, is still one image.
Decoding is the same as training's (`tlearn.data.images`), so a file reported unreadable here is
exactly one that `train` would skip.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlearn.data.images import to_rgb
from tlearn.doctor.findings import Finding
from tlearn.doctor.inputs import Catalog
from tlearn.doctor.pixels import grey_base

# Modes that lose or distort pixels when made RGB wherever they occur; others are unusual only
# when few files of the dataset have them (grayscale is the norm in a scanned-digits set).
_ALWAYS_UNUSUAL = ("CMYK", "I;16", "I;16B", "I;16L", "I", "F", "1", "YCbCr", "LAB", "HSV")
_RARE = 0.05  # a mode held by fewer than this share of the files is unusual
_SERIAL_BELOW = 256  # files; fewer are decoded in this process (workers cost a fork each)


@dataclass
class FileCheck:
    problem: str = ""  # "" when the image decodes, else a kind of `findings.FILE_KINDS`
    detail: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    digest: str = ""  # of the decoded pixels; "" when it does not decode
    grey: np.ndarray | None = None  # `pixels.grey_base` of the decoded image


def check_file(path: str | Path, max_pixels: int | None = None) -> FileCheck:
    """Decode one file fully; say what stops it, or how it is stored and what its pixels are."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return FileCheck("empty", "0 bytes")
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            if max_pixels and w * h > max_pixels:
                return FileCheck("too-large", f"{w}x{h} pixels", mode, w, h)
            im.seek(0)
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        return FileCheck("unreadable", "not an image format Pillow can decode")
    except Image.DecompressionBombError as exc:
        return FileCheck("too-large", str(exc)[:120])
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, KeyError) as exc:
        text = str(exc) or type(exc).__name__
        kind = "truncated" if "truncated" in text.lower() else "unreadable"
        return FileCheck(kind, text[:120])
    return FileCheck("", "", mode, rgb.width, rgb.height, pixel_digest(rgb), grey_base(rgb))


def pixel_digest(rgb: Image.Image) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{rgb.width}x{rgb.height}|".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def check_catalog(catalog: Catalog, max_pixels: int | None, workers: int = 0) -> list[FileCheck]:
    """A `FileCheck` per catalogue item; in-memory sets (built-ins) only get their digests."""
    checks: list[FileCheck | None] = [None] * len(catalog)
    files = [i for i in range(len(catalog)) if catalog.is_file(i)]
    for i in range(len(catalog)):
        if not catalog.is_file(i):
            src = catalog.sources[int(catalog.split[i])]
            im = src.load(int(catalog.local[i]))
            checks[i] = FileCheck(
                "", "", "RGB", im.width, im.height, pixel_digest(im), grey_base(im)
            )
    paths = [catalog.paths[i] for i in files]
    if workers > 1 and len(paths) >= _SERIAL_BELOW:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(check_file, paths, [max_pixels] * len(paths), chunksize=64))
    else:
        done = [check_file(p, max_pixels) for p in paths]
    for i, c in zip(files, done, strict=True):
        checks[i] = c
    return [c if c is not None else FileCheck() for c in checks]


def file_findings(catalog: Catalog, checks: list[FileCheck], input_size: int) -> list[Finding]:
    """Broken files (left out of training), and small or oddly stored ones (shown only).

    A dataset whose images are mostly small (CIFAR's 32 px) gets one dataset-wide line instead
    of a row per image: that is the data, not a problem with some files.
    """
    out: list[Finding] = []
    for i, c in enumerate(checks):
        if c.problem:
            out.append(_about(catalog, i, c.problem, 1.0, "exclude", c.detail))
    decoded = [(i, c) for i, c in enumerate(checks) if not c.problem]
    if not decoded:
        return out
    modes = Counter(c.mode for _, c in decoded)
    for i, c in decoded:
        if c.mode in _ALWAYS_UNUSUAL or (c.mode != "RGB" and modes[c.mode] < _RARE * len(decoded)):
            detail = f"mode {c.mode} ({modes[c.mode]} of {len(decoded)} files)"
            out.append(_about(catalog, i, "unusual-mode", 0.5, "review", detail))
    small = [(i, c) for i, c in decoded if min(c.width, c.height) < input_size / 2]
    if len(small) > len(decoded) / 2:
        detail = (
            f"{len(small)} of {len(decoded)} images are under half the backbone's input of "
            f"{input_size} px: consider --image-size near their own size (faster, often as good)"
        )
        out.append(Finding("small", "", score=len(small) / len(decoded), action="review",
                           detail=detail))  # fmt: skip
    else:
        for i, c in small:
            score = 1 - min(c.width, c.height) / input_size
            detail = f"{c.width}x{c.height} px, the backbone sees {input_size} px"
            out.append(_about(catalog, i, "small", score, "review", detail))
    return out


def _about(catalog: Catalog, i: int, kind: str, score: float, action: str, detail: str):
    return Finding(
        kind, catalog.paths[i], catalog.split_of(i), catalog.label_of(i),
        score=score, action=action, detail=detail,
    )  # fmt: skip
