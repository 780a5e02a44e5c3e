"""Every image a folder can hold, read faithfully or refused / skipped by name: the bad-data table of docs/data.md.

Each file is written with PIL (or by hand, for what PIL cannot write) in a scratch folder. "Read" is what a
dataset item holds: the decoded, upright image converted to 8-bit grey or RGB at its own size.
"""

import os
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image, ImageCms

from vqgen.cli import exit_on
from vqgen.data import DATA_ERRORS, DatasetSpecError, DecodeError, load_image_dataset, load_table
from vqgen.data.image_files import inspect_image
from vqgen.data.images import _item, decode
from vqgen.data.transforms import transform


@pytest.fixture(autouse=True)
def fresh_index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQGEN_DATA_CACHE", str(tmp_path / "index-cache"))
    datasets.disable_progress_bars()  # the index's "Saving the dataset" bar would mix into captured errors
    yield
    datasets.enable_progress_bars()


def read(path: Path, channels: int) -> np.ndarray:
    """The pixels a dataset item gets from `path`: `h w c` uint8, upright, at the image's own size."""
    image = decode({"path": str(path)})
    assert image.width == image.height
    return transform(image, image.width, channels, None, None)


def header(path: Path):
    return inspect_image(str(path), path.stat().st_size)


def saved(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def png_by_hand(path: Path, samples: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written without PIL (PIL cannot write 16-bit colour): `samples` `h w [c]` uint16."""
    h, w = samples.shape[:2]
    rows = samples.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def luma(rgb: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L, ITU-R 601: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).astype(np.uint8)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return rgb * a + 255 * (1 - a)


RAMP16 = np.array([[0, 257, 1000, 32767], [32768, 40000, 65280, 65535]] * 2, np.uint16)  # 4 x 4
# the nearest 8-bit level: round(v * 255 / 65535)
RAMP16_8 = np.floor(RAMP16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


# -- modes and depths ----------------------------------------------------------------------------
def test_eight_bit_modes_are_exact(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    # L: as stored; to RGB the channel is repeated
    path = saved(Image.fromarray(grey), tmp_path / "l.png")
    assert (read(path, 1)[..., 0] == grey).all() and (read(path, 3) == grey[..., None]).all()
    # 1-bit: 0 and 255
    bits = grey > 127
    path = saved(Image.fromarray(bits), tmp_path / "one.png")
    assert Image.open(path).mode == "1" and (read(path, 1)[..., 0] == bits * 255).all()
    # RGB: as stored; to grey by the stated luma
    path = saved(Image.fromarray(rgb), tmp_path / "rgb.png")
    assert (read(path, 3) == rgb).all() and (read(path, 1)[..., 0] == luma(rgb)).all()
    # a palette: each index looked up
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = rng.integers(0, 16, (4, 4), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.tobytes())
    for suffix in ("png", "gif", "bmp", "tif"):
        path = saved(image, tmp_path / f"p.{suffix}")
        assert Image.open(path).mode == "P" and (read(path, 3) == palette[indices]).all(), suffix
        assert (read(path, 1)[..., 0] == luma(palette[indices])).all(), suffix


def test_sixteen_bit_grey_scales_by_the_full_range_and_never_clips(tmp_path):
    """65535 -> 255 (1.0), 32768 -> 128 (32768/65535 to within half a level), 257 k -> k: the old conversion
    clipped every value above 255 to white."""
    for path in (saved(Image.fromarray(RAMP16), tmp_path / "grey16.png"),
                 saved(Image.fromarray(RAMP16.astype(">u2")), tmp_path / "grey16b.tif"),
                 png_by_hand(tmp_path / "byhand16.png", RAMP16, colour_type=0)):
        assert header(path).bits == 16 and header(path).problem is None
        got = read(path, 1)[..., 0]
        assert (got == RAMP16_8).all(), path.name
        assert got[1, 3] / 255 == 1.0 and abs(got[1, 0] / 255 - 32768 / 65535) <= 0.5 / 255
        assert (read(path, 3) == got[..., None]).all()
    assert Image.open(tmp_path / "grey16b.tif").mode == "I;16B"


def test_thirty_two_bit_and_float_images_scale_or_are_refused_by_their_range(tmp_path):
    path = saved(Image.fromarray(RAMP16.astype(np.int32)), tmp_path / "int32.tif")
    assert Image.open(path).mode == "I" and header(path).problem is None and (read(path, 1)[..., 0] == RAMP16_8).all()
    floats = np.array([[0, 0.25, 0.5, 1.0]] * 4, np.float32)
    path = saved(Image.fromarray(floats), tmp_path / "float.tif")
    assert header(path).bits == 32 and (read(path, 1)[..., 0] == [0, 64, 128, 255]).all()  # floor(x 255 + 1/2)
    for name, array, shown in [("over.tif", floats * 2, "[0, 2], outside [0, 1]"),
                               ("neg.tif", floats - 0.5, "[-0.5, 0.5], outside [0, 1]"),
                               ("nan.tif", np.where(floats > 0.6, np.nan, floats).astype(np.float32),
                                "[0, 0.5] and include NaN or inf"),
                               ("big.tif", RAMP16.astype(np.int32) * 2, "[0, 131070], outside [0, 65535]")]:
        path = saved(Image.fromarray(array), tmp_path / name)
        problem = header(path).problem
        assert problem and "outside [0," in problem and "rescale" in problem, name
        assert shown in problem, problem
        with pytest.raises(DecodeError, match=name):  # a source without an index finds it when decoding: named
            _item({"path": str(path)}, None, 4, 1, None, None)


def test_sixteen_bit_colour_png_keeps_the_high_byte(tmp_path):
    """PIL opens 48- and 64-bit PNGs as 8-bit RGB / RGBA, keeping each sample's high byte: within one level of
    the nearest, full scale to full scale."""
    rgb16 = np.stack([RAMP16, RAMP16[::-1], np.full_like(RAMP16, 65535)], -1)
    path = png_by_hand(tmp_path / "rgb16.png", rgb16, colour_type=2)
    assert header(path).bits == 16 and header(path).mode == "RGB"
    got = read(path, 3)
    assert (got == rgb16 >> 8).all() and (got[..., 2] == 255).all()
    assert np.abs(got.astype(int) - np.floor(rgb16.astype(float) * 255 / 65535 + 0.5)).max() <= 1


def test_alpha_and_transparent_colours_are_composited_on_white(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    alpha = np.array([[0, 255, 128, 64]] * 4, np.uint8)
    expected = on_white(rgb, alpha)
    for name in ("rgba.png", "rgba.webp", "rgba.tif"):
        path = saved(Image.fromarray(np.dstack([rgb, alpha])), tmp_path / name, **({"lossless": True} if "webp" in name else {}))
        assert header(path).alpha, name
        got = read(path, 3).astype(float)
        assert np.abs(got - expected).max() <= 1 and (got[:, 0] == 255).all() and (got[:, 1] == rgb[:, 1]).all(), name
        assert np.abs(read(path, 1)[..., 0].astype(float) - luma(np.round(expected).astype(np.uint8))).max() <= 1
    grey = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    path = saved(Image.fromarray(np.dstack([grey, alpha]), "LA"), tmp_path / "la.png")
    assert np.abs(read(path, 1)[..., 0] - on_white(grey[..., None], alpha)[..., 0]).max() <= 1
    # a palette entry marked transparent (GIF, PNG tRNS), and per-entry alpha (PNG tRNS bytes)
    image = Image.fromarray(np.array([[0, 1, 2, 3]] * 4, np.uint8), "P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 200, 0, 0, 0, 200])
    for name, transparency, expected_row in [
            ("p.gif", 1, [[10, 20, 30], [255, 255, 255], [0, 200, 0], [0, 0, 200]]),
            ("p.png", 1, [[10, 20, 30], [255, 255, 255], [0, 200, 0], [0, 0, 200]]),
            ("p-bytes.png", bytes([255, 255, 0, 128]), [[10, 20, 30], [200, 0, 0], [255, 255, 255], [127, 127, 227]])]:
        path = saved(image, tmp_path / name, transparency=transparency)
        assert header(path).alpha, name
        assert np.abs(read(path, 3)[0].astype(int) - expected_row).max() <= 1, name
    # a colour key (PNG tRNS on an RGB or L image): that colour only
    path = saved(Image.fromarray(rgb), tmp_path / "key.png", transparency=tuple(int(v) for v in rgb[0, 0]))
    got = read(path, 3)
    assert (got[0, 0] == 255).all() and (got[1:] == rgb[1:]).all()
    path = saved(Image.fromarray(grey), tmp_path / "lkey.png", transparency=int(grey[2, 2]))
    assert (read(path, 1)[..., 0] == np.where(grey == grey[2, 2], 255, grey)).all()


def test_cmyk_ycbcr_and_lab_convert_by_the_stated_formulas(tmp_path):
    rng = np.random.default_rng(2)
    cmyk = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    path = saved(Image.fromarray(cmyk, "CMYK"), tmp_path / "cmyk.tif")
    c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    assert np.abs(read(path, 3) - (255 - c) * (255 - k) / 255).max() <= 1  # R = (255 - C)(255 - K) / 255
    ycc = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    path = saved(Image.fromarray(ycc, "YCbCr"), tmp_path / "ycbcr.tif")
    y, cb, cr = (ycc[..., i].astype(float) for i in range(3))
    jfif = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], -1)
    assert np.abs(read(path, 3) - jfif.clip(0, 255)).max() <= 1  # JFIF's full-range BT.601
    lab = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), "LAB")
    path = saved(lab, tmp_path / "lab.tif")
    srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    expected = np.asarray(ImageCms.applyTransform(lab, srgb))
    assert np.abs(read(path, 3).astype(int) - expected).max() <= 1  # CIE L*a*b* (D50) -> sRGB
    assert (read(path, 1)[..., 0] == luma(read(path, 3))).all()


# -- orientation and frames ----------------------------------------------------------------------
UPRIGHT = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: a.swapaxes(0, 1),
           6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("suffix", ["png", "jpg", "webp", "tif"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    """A stored image with orientation k reads as the stored pixels turned as the EXIF standard says (the
    turn is built here with numpy, not PIL); the index reports the upright size."""
    stored = np.kron(np.arange(6, dtype=np.uint8).reshape(2, 3) * 40, np.ones((8, 8), np.uint8))  # 16 x 24, 8x8 blocks
    for k, turn in UPRIGHT.items():
        exif = Image.Exif()
        exif[0x0112] = k
        options = {"jpg": {"quality": 100}, "webp": {"lossless": True}, "tif": {"compression": "tiff_deflate"}}.get(suffix, {})
        path = saved(Image.fromarray(stored), tmp_path / f"o{k}.{suffix}", exif=exif, **options)
        got = np.asarray(decode({"path": str(path)}).convert("L"))  # (WebP stores grey as RGB)
        expected = turn(stored)
        assert got.shape == expected.shape and np.abs(got.astype(int) - expected).max() <= 2, (suffix, k)
        h, w = expected.shape
        assert (header(path).width, header(path).height) == (w, h), (suffix, k)


def test_an_uncompressed_tiff_turned_a_quarter_is_refused(tmp_path):
    """PIL decodes it scrambled (its rows read as columns): refused by name, never read wrong."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = saved(Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3)), tmp_path / "raw6.tif", exif=exif)
    assert "uncompressed TIFF with a quarter-turn EXIF orientation" in header(path).problem
    with pytest.raises(DecodeError, match="raw6.tif could not be decoded.*save it upright"):
        decode({"path": str(path)})
    exif[0x0112] = 3  # a half turn keeps the strips' shape: read, and turned
    path = saved(Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3)), tmp_path / "raw3.tif", exif=exif)
    assert header(path).problem is None and (np.asarray(decode({"path": str(path)})) == [[5, 4, 3], [2, 1, 0]]).all()


def test_animated_files_read_their_first_frame_with_a_counted_warning(tmp_path, caplog):
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 200, 90)]
    root = tmp_path / "data"
    for name in ("a", "b"):
        saved(frames[0], root / "train" / name / "still.png")
        saved(frames[0], root / "test" / name / "still.png")
    saved(frames[0], root / "train" / "a" / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    saved(frames[0], root / "train" / "b" / "pages.tif", save_all=True, append_images=frames[1:])
    saved(frames[0].convert("RGB"), root / "train" / "b" / "anim.webp", save_all=True, append_images=[f.convert("RGB") for f in frames[1:]], lossless=True)
    ds = load_image_dataset(str(root), "train", channels=1)
    assert len(ds) == 5
    assert all((ds[i]["image"] == 10).all() for i in range(5))
    assert "3 image(s)" in caplog.text and "first frame is used" in caplog.text and "anim.gif" in caplog.text


# -- files that are refused or skipped -----------------------------------------------------------
def damaged(tmp_path: Path, case: str) -> Path:
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    cut = {"png": -20, "jpg": -40, "gif": -30, "webp": -30, "bmp": -30}
    if case in cut:
        path = saved(image.convert("P") if case == "gif" else image, tmp_path / f"cut.{case}")
        path.write_bytes(path.read_bytes()[:cut[case]])
        return path
    if case == "empty":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif case == "text":
        path = tmp_path / "page.jpg"
        path.write_text("<html>a web page saved as jpg</html>")
    elif case == "broken_link":
        path = tmp_path / "gone.png"
        path.symlink_to(tmp_path / "nowhere.png")
    return path


@pytest.mark.parametrize("case, problem", [
    ("png", "truncated PNG"), ("jpg", "truncated JPEG"), ("gif", "truncated GIF"), ("webp", "truncated WebP"),
    ("bmp", "truncated BMP"), ("empty", "empty file"), ("text", "not a readable image"),
    ("broken_link", "a symbolic link to .*nowhere.png, which does not exist")])
def test_unusable_files_are_refused_by_name_or_skipped_and_counted(tmp_path, case, problem, caplog):
    root = tmp_path / "data"
    for name in ("a", "b"):
        for i in range(3):
            saved(Image.new("RGB", (16, 16), (i, 2, 3)), root / "train" / name / f"{i}.png")
        saved(Image.new("RGB", (16, 16)), root / "test" / name / "0.png")
    bad = damaged(root / "train" / "a", case)
    with pytest.raises(DatasetSpecError, match=rf"1 of 7 files.*{bad.name}: {problem}.*--skip_bad_images"):
        load_image_dataset(str(root), "train")
    kept = load_image_dataset(str(root), "train", skip_bad_images=True)
    assert len(kept) == 6 and "skipping 1 unusable file" in caplog.text and bad.name in caplog.text


def test_a_truncated_tiff_is_named_when_decoded(tmp_path):
    """TIFF states no length and has no end marker: its damage is found when the image is decoded."""
    path = saved(Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)),
                 tmp_path / "cut.tif")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DecodeError, match="cut.tif could not be decoded"):
        decode({"path": str(path)})


def test_images_over_the_decompression_bomb_limit_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    near = saved(Image.new("L", (12, 12)), tmp_path / "near.png")  # over the limit: PIL would only warn
    far = saved(Image.new("L", (40, 40)), tmp_path / "far.png")  # over twice the limit: PIL refuses to open it
    assert "144 pixels, over PIL's decompression-bomb limit of 100" in header(near).problem
    assert "too large to decode safely" in header(far).problem and "downscale" in header(far).problem


def test_unreadable_file_is_refused_by_name(tmp_path, monkeypatch):
    path = saved(Image.new("L", (4, 4)), tmp_path / "secret.png")
    if os.geteuid() == 0:  # root reads anything: make PIL meet what a user would
        opener = Image.open
        monkeypatch.setattr(Image, "open", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied", p))
                            if str(p) == str(path) else opener(p, *a, **k))
    else:
        path.chmod(0)
    assert header(path).problem == "cannot be read (permission denied); make it readable"


# -- the folder tree -----------------------------------------------------------------------------
def tree(root: Path, classes=("cat", "dog"), n=2) -> Path:
    for name in classes:
        for i in range(n):
            saved(Image.new("RGB", (8, 8), (i, 0, 0)), root / name / f"{i}.png")
    return root


def one_line_error(capsys, call) -> str:
    """What a command prints for `call`'s error: one line, no traceback (vqgen.cli.exit_on)."""
    with pytest.raises(SystemExit) as caught, exit_on(*DATA_ERRORS):
        call()
    assert caught.value.code == 2
    err = capsys.readouterr().err
    line = err.rsplit("\r", 1)[-1]  # after the index's progress bar, if one was drawn
    assert line.count("\n") == 1 and "Traceback" not in err, err
    return line


def test_tree_faults_are_one_line_errors_naming_the_path(tmp_path, monkeypatch, capsys):
    root = tree(tmp_path / "loop")
    (root / "cat" / "again").symlink_to(root)  # a folder link to a folder above it
    err = one_line_error(capsys, lambda: load_image_dataset(str(root), "test"))
    assert "cat/again is a symbolic link to" in err and "loops" in err
    root = tree(tmp_path / "locked")
    locked = str(root / "dog")
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(p)))
                        if str(p) == locked else scandir(p))
    err = one_line_error(capsys, lambda: load_image_dataset(str(root), "test"))
    assert f"cannot list {locked} (Permission denied)" in err
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(p)))
                        if str(p) == str(tmp_path / "locked") else listdir(p))
    err = one_line_error(capsys, lambda: load_image_dataset(str(tmp_path / "locked"), "test"))
    assert f"cannot read {tmp_path / 'locked'} (Permission denied)" in err
    (tmp_path / "file.png").write_bytes(b"x")
    assert "is a file; pass the folder" in one_line_error(capsys, lambda: load_image_dataset(str(tmp_path / "file.png")))
    assert "not an existing folder" in one_line_error(capsys, lambda: load_image_dataset(str(tmp_path / "no" / "such")))


def test_what_a_tree_holds_besides_class_folders_of_images(tmp_path, caplog):
    root = tree(tmp_path / "data", classes=("cat", "dog", "empty", "notes"))
    (root / "empty" / "0.png").unlink(), (root / "empty" / "1.png").unlink()
    for p in (root / "notes").iterdir():
        p.unlink()
    (root / "notes" / "README.txt").write_text("no images here")
    (root / "cat" / "photo.heic").write_bytes(b"\0" * 10)  # an image PIL cannot read, told by its suffix
    (root / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden: skipped
    saved(Image.new("RGB", (8, 8)), root / "dog" / ".ipynb_checkpoints" / "0-checkpoint.png")  # hidden folder
    saved(Image.new("RGB", (8, 8), (9, 9, 9)), root / "dog" / "deeper" / "still_dog.png")  # nested: its top class
    table = load_table(str(root), "train")
    test = load_table(str(root), "test")
    assert len(table) + len(test) == 5  # 2 cats, 3 dogs, nothing else
    names = table.features["label"].names
    assert names == ["cat", "dog", "empty", "notes"]
    labels = {str(Path(cell["path"]).relative_to(root)): names[label] for cell, label in zip(
        list(table["image"]) + list(test["image"]), list(table["label"]) + list(test["label"]))}
    assert labels == {"cat/0.png": "cat", "cat/1.png": "cat", "dog/0.png": "dog", "dog/1.png": "dog",
                      "dog/deeper/still_dog.png": "dog"}
    assert "ignoring 2 file(s) without an image suffix (.heic, .txt" in caplog.text and "photo.heic" in caplog.text
    assert "2 class(es) have no images here (empty, notes)" in caplog.text


def test_grey_and_colour_conversions_are_announced(tmp_path, caplog):
    root = tree(tmp_path / "data")
    saved(Image.new("L", (8, 8), 77), root / "cat" / "grey.png")
    ds = load_image_dataset(str(root), "test", skip_bad_images=True)
    assert ds.channels == 3 and "grey ones are converted to RGB" in caplog.text
    caplog.clear()
    load_image_dataset(str(root), "test", channels=1)
    assert "--channels_in 1 turns them grey" in caplog.text and "0.299 R + 0.587 G + 0.114 B" in caplog.text


def test_a_folder_of_every_kind_keeps_every_image_and_each_pixel(tmp_path, caplog):
    """The whole path (index, split, dataset items): the number of images kept, and every item equal to its
    file read alone; the warnings count each kind that is converted."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    kinds = {
        "l.png": Image.fromarray(rgb[..., 0]), "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])), "cmyk.tif": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "CMYK"),
        "i16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "f.tif": Image.fromarray(rgb[..., 1].astype(np.float32) / 255),
        "p.gif": Image.fromarray(rgb).convert("P"), "one.bmp": Image.fromarray(rgb[..., 2] > 100), "rgb.jpg": Image.fromarray(rgb),
    }
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for name, image in kinds.items():
                saved(image, root / split / cls / name)
    ds = load_image_dataset(str(root), "train")
    assert len(ds) == 2 * len(kinds) and ds.channels == 3
    for i in range(len(ds)):
        path = Path(ds.table[i]["image"]["path"])
        assert (ds[i]["image"].permute(1, 2, 0).numpy() == read(path, 3)).all(), path.name
    assert (read(root / "train" / "a" / "i16.png", 1)[..., 0] == rgb[..., 0]).all()  # v * 257 -> v exactly
    assert (read(root / "train" / "a" / "f.tif", 1)[..., 0] == rgb[..., 1]).all()  # v / 255 -> v exactly
    for count, what in [(2, "have an alpha channel"), (4, "have 16-bit, 32-bit or float"), (2, "are CMYK, LAB or YCbCr")]:
        assert f"{count} image(s) of {str(root)!r} {what}" in caplog.text, what


@pytest.mark.integration
def test_an_image_damaged_inside_read_by_a_worker_is_a_one_line_error(tmp_path, capsys):
    """A DataLoader worker re-raises with its traceback as the message; the error keeps the line that says why."""
    import torch

    root = tree(tmp_path / "data", n=3)
    path = root / "cat" / "1.png"
    data = bytearray(path.read_bytes())
    data[45:60] = bytes(15)  # the compressed pixels; header and IEND intact
    path.write_bytes(bytes(data))
    ds = load_image_dataset(str(root), "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), num_workers=1, collate_fn=ds.collate)
    err = one_line_error(capsys, lambda: next(iter(loader)))
    assert "cat/1.png could not be decoded" in err and "DataLoader worker" not in err


def test_classes_are_the_union_of_the_split_folders_and_loose_images_beside_classes_are_refused(tmp_path, caplog):
    root = tmp_path / "data"
    tree(root / "train", classes=("cat", "dog"))
    tree(root / "test", classes=("cat", "dog", "fox"))
    train, test = load_image_dataset(str(root), "train"), load_image_dataset(str(root), "test")
    assert train.class_names == test.class_names == ["cat", "dog", "fox"]
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1, 2, 2] and "1 class(es) have no images here (fox)" in caplog.text
    saved(Image.new("RGB", (8, 8)), root / "train" / "loose.png")
    with pytest.raises(DatasetSpecError, match=r"mixes class subfolders.*loose.png"):
        load_image_dataset(str(root), "train")
