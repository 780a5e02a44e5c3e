"""Image files on disk: listing a tree in one pass, and a cheap check of each file before training.

The check reads each file's header and last bytes, never its pixels: it catches empty files, files
that are not images, and JPEG / PNG files cut short (the usual damage of an interrupted copy), so a
run refuses them before it starts rather than hours into it. Damage inside a file that leaves header
and end intact is found only when the image is decoded; `DecodeError` then names the file.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


class DecodeError(OSError):
    """An image that could not be decoded when a batch needed it; the message names the file."""


@dataclass
class ImageFile:
    path: str
    size: int  # bytes
    mtime_ns: int


@dataclass
class ImageHeader:
    width: int
    height: int
    mode: str
    problem: str | None  # why the file cannot be used; None when it can


def iter_image_files(root: Path) -> Iterator[ImageFile]:
    """Every file with an image suffix under `root` (symlinks followed), depth first, each folder's entries in
    name order: one walk, one stat per file, and only one folder's entries held at a time."""
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            yield from iter_image_files(Path(entry.path))
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
            stat = entry.stat()
            yield ImageFile(entry.path, stat.st_size, stat.st_mtime_ns)


def listing_digest(root: Path) -> tuple[str, int]:
    """A hash of the names, sizes and modification times of `root`'s images, and their number."""
    digest, count = hashlib.sha256(), 0
    for f in iter_image_files(root):
        digest.update(f"{f.path}\t{f.size}\t{f.mtime_ns}\n".encode())
        count += 1
    return digest.hexdigest(), count


def inspect_image(path: str, size: int) -> ImageHeader:
    """Size and mode from the header, and what (if anything) makes the file unusable."""
    if size == 0:
        return ImageHeader(0, 0, "", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: the size is reported instead
            with Image.open(path) as image:
                width, height, mode, kind = image.width, image.height, image.mode, image.format
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file; all mean "not an image"
        return ImageHeader(0, 0, "", f"not a readable image ({type(e).__name__}: {e})")
    ending = _tail(path, 64)
    if kind == "JPEG" and b"\xff\xd9" not in ending:
        return ImageHeader(width, height, mode, "truncated JPEG (no end-of-image marker)")
    if kind == "PNG" and b"IEND" not in ending:
        return ImageHeader(width, height, mode, "truncated PNG (no IEND chunk)")
    return ImageHeader(width, height, mode, None)


def _tail(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read()
