"""Image files on disk: listing a tree in one pass, and a cheap check of each file before training.

The check reads each file's header and last bytes, never its pixels (except the rare 32-bit integer and
float images, whose value range decides whether they can be scaled): it catches empty files, files that
are not images, files cut short, broken links, images too large to decode safely and modes vqgen cannot
convert, so a run refuses them before it starts rather than hours into it. Damage inside a file that
leaves header and end intact is found only when the image is decoded; `DecodeError` then names the file.
What each kind of file becomes is the bad-data table of docs/data.md.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from .source import DatasetSpecError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".webp", ".avif", ".tif", ".tiff", ".pbm", ".pgm",
                  ".ppm", ".pnm"}
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
# Samples wider than 8 bits and the value that maps to 1.0: I is read as 16-bit data (PIL's own I;16 -> I).
HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
# EXIF orientation -> the transpose that undoes it (as PIL's ImageOps.exif_transpose)
ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}


class DecodeError(OSError):
    """An image that could not be decoded when a batch needed it; the message names the file."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker re-raises it with its traceback as the message: keep the one line that says why.
        if message.startswith("Caught DecodeError") and "DecodeError: " in message:
            message = message.rstrip().rsplit("DecodeError: ", 1)[1]
        super().__init__(message)


@dataclass
class ImageFile:
    path: str
    size: int  # bytes; -1 for a symbolic link to nothing
    mtime_ns: int


@dataclass
class ImageHeader:
    width: int
    height: int
    mode: str
    problem: str | None = None  # why the file cannot be used; None when it can
    alpha: bool = False  # an alpha channel or a transparent colour
    bits: int = 8  # per sample, as stored
    frames: int = 1  # 2 stands for "more than one"


@dataclass
class Listing:
    """One walk of a tree: a hash of its images' names, sizes and times, their number, and what was left out."""

    digest: str
    count: int
    ignored: list[str]  # files without an image suffix (hidden ones aside)


def iter_image_files(root: Path, ignored: list[str] | None = None, _above: frozenset = frozenset()) -> Iterator[ImageFile]:
    """Every file with an image suffix under `root` (symlinks followed; hidden files and folders skipped), depth
    first, each folder's entries in name order: one walk, one stat per file, one folder's entries held at a time.

    Other files go into `ignored`; a symlink to a folder above it (a loop) is a `DatasetSpecError`.
    """
    real = os.stat(root)
    here = _above | {(real.st_dev, real.st_ino)}
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DatasetSpecError(f"cannot list {root} ({e.strerror}); make it readable, or move it out of the "
                               "dataset.") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            stat = os.stat(entry.path)
            if (stat.st_dev, stat.st_ino) in here:
                raise DatasetSpecError(f"{entry.path} is a symbolic link to {os.path.realpath(entry.path)}, a folder "
                                       "that holds it: the tree loops. Remove the link.")
            yield from iter_image_files(Path(entry.path), ignored, here)
        elif os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
            if ignored is not None:
                ignored.append(entry.path)
        elif entry.is_file():
            stat = entry.stat()
            yield ImageFile(entry.path, stat.st_size, stat.st_mtime_ns)
        elif entry.is_symlink():  # to nothing, or to itself
            yield ImageFile(entry.path, -1, 0)


def list_images(root: Path) -> Listing:
    """A hash of the names, sizes and modification times of `root`'s images, their number, the files left out."""
    digest, count, ignored = hashlib.sha256(), 0, []
    for f in iter_image_files(root, ignored):
        digest.update(f"{f.path}\t{f.size}\t{f.mtime_ns}\n".encode())
        count += 1
    return Listing(digest.hexdigest(), count, ignored)


def inspect_image(path: str, size: int) -> ImageHeader:
    """Size, mode, alpha, depth and frames from the header, and what (if anything) makes the file unusable."""
    if size < 0:
        return ImageHeader(0, 0, "", f"a symbolic link to {os.readlink(path)}, which does not exist (or loops)")
    if size == 0:
        return ImageHeader(0, 0, "", "empty file (0 bytes)")
    try:
        cut = _truncation(path, size)
    except PermissionError:
        return ImageHeader(0, 0, "", "cannot be read (permission denied); make it readable")
    if cut:
        return ImageHeader(0, 0, "", cut)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning and EXIF warnings: checked below
            with Image.open(path) as image:
                header = _header(image)
                if header.mode in ("I", "F") and not header.problem:
                    header.problem = _range_problem(image)
    except PermissionError:
        return ImageHeader(0, 0, "", "cannot be read (permission denied); make it readable")
    except Image.DecompressionBombError as e:
        return ImageHeader(0, 0, "", f"too large to decode safely ({e}); downscale it")
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file; all mean "not an image"
        return ImageHeader(0, 0, "", f"not a readable image ({type(e).__name__}: {e})")
    return header


def _header(image: Image.Image) -> ImageHeader:
    width, height, mode = image.width, image.height, image.mode
    if orientation(image) in (5, 6, 7, 8) and image.format != "TIFF":  # a quarter turn (PIL tells a TIFF's own)
        width, height = height, width
    rawmode = str(getattr(image.tile[0], "args", "") if image.tile else "")
    bits = 32 if mode in ("I", "F") else 16 if mode.startswith("I;16") or ";16" in rawmode else 1 if mode == "1" else 8
    header = ImageHeader(width, height, mode, alpha=image.has_transparency_data, bits=bits,
                         frames=2 if getattr(image, "is_animated", False) else 1)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        header.problem = (f"{width}x{height} = {width * height} pixels, over PIL's decompression-bomb limit of {limit} "
                          "(Image.MAX_IMAGE_PIXELS); downscale it")
    elif scrambled_tiff(image):
        header.problem = SCRAMBLED_TIFF
    elif mode not in GREY_MODES | COLOUR_MODES:
        header.problem = f"mode {mode!r}, which vqgen cannot convert to grey or RGB; convert the file to PNG"
    return header


SCRAMBLED_TIFF = ("an uncompressed TIFF with a quarter-turn EXIF orientation, which PIL decodes scrambled; save it "
                  "upright, or compressed (LZW / Deflate)")


def scrambled_tiff(image: Image.Image) -> bool:
    """PIL turns a TIFF upright as it loads it; for uncompressed strips and a quarter turn the result is garbled."""
    return (image.format == "TIFF" and bool(image.tile) and image.tile[0][0] == "raw"
            and orientation(image) in (5, 6, 7, 8))


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored), read before `load`. A PNG's EXIF counts only if it precedes the
    pixels (as PIL and most tools write it): reading a later one would mean decoding the image."""
    if image.format != "TIFF" and not {"exif", "xmp", "XML:com.adobe.xmp"} & image.info.keys():
        return 1  # no EXIF or XMP to read (most files): the common case costs a set intersection
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - damaged EXIF: PIL's decoder ignores it as well
        return 1


def _range_problem(image: Image.Image) -> str | None:
    """32-bit integer and float images are decoded here: their values must fit the range that maps to [0, 1]."""
    image.load()
    array = np.asarray(image)
    finite = bool(np.isfinite(array).all())
    low, high = (np.nanmin(array), np.nanmax(array)) if not np.isnan(array).all() else (np.nan, np.nan)
    if finite and low >= 0 and high <= HIGH_DEPTH[image.mode]:
        return None
    return out_of_range(image.mode, low, high, finite)


def out_of_range(mode: str, low, high, finite: bool = True) -> str:
    kind = "float" if mode == "F" else "32-bit integer"
    return (f"{kind} samples span [{low:g}, {high:g}]{'' if finite else ' and include NaN or inf'}, outside "
            f"[0, {HIGH_DEPTH[mode]:g}] (which maps to [0, 1]): vqgen does not guess a scale; rescale the file into "
            "that range (or save it as 8- or 16-bit PNG)")


def _truncation(path: str, size: int) -> str | None:
    """A file cut short, told by its last bytes (JPEG, PNG, GIF) or by the length its header states (WebP, BMP)."""
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(0, size - 64))
        ending = f.read()
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in ending:
        return "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG") and b"IEND" not in ending:
        return "truncated PNG (no IEND chunk)"
    if head.startswith(b"GIF8") and not ending.rstrip(b"\0").endswith(b";"):
        return "truncated GIF (no trailer)"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and size < int.from_bytes(head[4:8], "little") + 8:
        return f"truncated WebP ({size} of the {int.from_bytes(head[4:8], 'little') + 8} bytes its header states)"
    if head.startswith(b"BM") and size < int.from_bytes(head[2:6], "little"):
        return f"truncated BMP ({size} of the {int.from_bytes(head[2:6], 'little')} bytes its header states)"
    return None
