"""Odd image files: every kind is either converted to the RGB a viewer shows, or rejected with a
`BadRecord` naming file:line and the `images` field, on both the understanding and the
generation-target path, and by `janus-ft data check` before any model is loaded."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_jsonl
from PIL import Image

from janus_ft.data.dataset import JanusDataset
from janus_ft.data.images import MAX_ASPECT, check_images, open_rgb, to_rgb
from janus_ft.data.records import parse_record
from janus_ft.data.vq import (
    _decode_image,
    _read_image_bytes,
    preprocess_generation_image,
)
from janus_ft.errors import BadRecord, UserError

RED, WHITE, BLACK = (255, 0, 0), (255, 255, 255), (0, 0, 0)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` 8-bit grey pixels but holds almost no data: what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _palette_with_transparency() -> Image.Image:
    """Left half palette index 0 (fully transparent), right half index 1 (opaque red)."""
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(0, (0, 0, 4, 8))
    return img


def _halves(left, right, mode: str) -> Image.Image:
    img = Image.new(mode, (8, 8), right)
    img.paste(left, (0, 0, 4, 8))
    return img


# name -> (writer, expected RGB of the left and the right half). Left/right differ where the kind
# has transparency, so one test checks both the transparent and the opaque pixels.
GOOD = {
    "rgb.png": (lambda p: Image.new("RGB", (8, 8), RED).save(p), RED, RED),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, quality=100), RED, RED),
    "cmyk.tif": (lambda p: Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(p), BLACK, BLACK),
    "palette.png": (lambda p: _palette_with_transparency().save(p), BLACK, RED),
    "palette_trns.png": (lambda p: _palette_with_transparency().save(p, transparency=0), WHITE, RED),
    "palette_trns.gif": (lambda p: _palette_with_transparency().save(p, transparency=0), WHITE, RED),
    "la.png": (lambda p: _halves((0, 0), (0, 255), "LA").save(p), WHITE, BLACK),
    "rgba.png": (lambda p: _halves((255, 0, 0, 0), (255, 0, 0, 255), "RGBA").save(p), WHITE, RED),
    "grey_trns.png": (lambda p: _halves(0, 77, "L").save(p, transparency=0), WHITE, (77, 77, 77)),
    "rgb_trns.png": (lambda p: _halves(BLACK, RED, "RGB").save(p, transparency=BLACK), WHITE, RED),
    "grey16.png": (lambda p: Image.fromarray(np.full((8, 8), 128 * 257, np.uint16)).save(p),
                   (128,) * 3, (128,) * 3),
    "grey16.tif": (lambda p: Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(p), WHITE, WHITE),
    "grey16.pgm": (lambda p: Path(p).write_bytes(b"P5\n8 8\n65535\n" + np.full((8, 8), 257 * 9, ">u2").tobytes()),
                   (9, 9, 9), (9, 9, 9)),
    "onebit.png": (lambda p: _halves(0, 1, "1").save(p), BLACK, WHITE),
    "tiny.png": (lambda p: Image.new("RGB", (1, 1), RED).save(p), RED, RED),
}


def _truncated(fmt: str):
    def write(p):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
        Path(p).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return write


# name -> (writer, words the message must contain)
BAD = {
    "truncated.png": (_truncated("PNG"), "cannot read image (image file is truncated"),
    "truncated.jpg": (_truncated("JPEG"), "cannot read image (image file is truncated"),
    "text.png": (lambda p: Path(p).write_text("this is not a picture"), "not an image file"),
    "empty.png": (lambda p: Path(p).write_bytes(b""), "image file is empty"),
    "folder.png": (lambda p: Path(p).mkdir(), "is a directory"),
    "missing.png": (lambda p: None, "image not found"),
    "bomb.png": (lambda p: Path(p).write_bytes(_png_header(10_000, 10_000)), "image too large to decode safely"),
    "huge_bomb.png": (lambda p: Path(p).write_bytes(_png_header(20_000, 20_000)),
                      "image too large to decode safely"),
    "line.png": (lambda p: Image.new("L", (MAX_ASPECT + 1, 1)).save(p), "aspect ratio beyond"),
}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd_images")
    for name, (write, *_) in {**GOOD, **BAD}.items():
        write(root / name)
    return root


def _halves_of(img: Image.Image) -> tuple[tuple, tuple]:
    return img.getpixel((1, 4)), img.getpixel((6, 4))


def _close(got, want, tolerance: int = 3) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(got, want))  # JPEG is lossy


@pytest.mark.parametrize("name", sorted(GOOD))
def test_odd_kinds_become_the_rgb_a_viewer_shows(image_dir, name):
    _, left, right = GOOD[name]
    img = open_rgb(image_dir / name, "d.jsonl", 4)
    assert img.mode == "RGB"
    if img.size == (1, 1):
        assert img.getpixel((0, 0)) == left
        return
    got_left, got_right = _halves_of(img)
    assert _close(got_left, left) and _close(got_right, right), (got_left, got_right)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_generation_targets_see_the_same_colours(image_dir, name):
    """The generation path decodes from the file's bytes (the cache key) and crops; on these
    images its result must agree with the understanding path."""
    path = image_dir / name
    pixels = preprocess_generation_image(_decode_image(path, _read_image_bytes(path)), 8)
    rgb = torch.round((pixels + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).numpy()
    understood = open_rgb(path)
    if understood.size == (8, 8):  # no resampling: exactly the understanding path's pixels
        assert np.array_equal(rgb, np.asarray(understood))
    assert _close(rgb[4, 6], GOOD[name][2])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_are_bad_records_naming_file_line_and_field(image_dir, name):
    _, words = BAD[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bomb must be refused, not warned about
        with pytest.raises(BadRecord) as err:
            open_rgb(image_dir / name, "/d/data.jsonl", 9, "images[1]")
    msg = str(err.value)
    assert msg.startswith("/d/data.jsonl:9: field 'images[1]': ") and words in msg, msg
    assert name in msg and "Traceback" not in msg


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_generation_targets_are_user_errors(image_dir, name):
    """The VQ encoder path refuses the same files (with a UserError: it has paths, not records)."""
    path = image_dir / name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError) as err:
            _decode_image(path, _read_image_bytes(path))
    assert str(err.value).startswith(f"{path}: ") and BAD[name][1] in str(err.value)


def test_bombs_are_refused_before_decoding(image_dir, monkeypatch):
    """PIL's MAX_IMAGE_PIXELS decides: a 1600-pixel image is a bomb when the limit is 1000, whether
    it is over the warning (1x) or the error (2x) threshold, and a refused image is never decoded
    (a decoded header-only bomb would report truncation instead)."""
    Image.new("RGB", (40, 40), RED).save(image_dir / "small_bomb.png")
    Image.new("RGB", (50, 50), RED).save(image_dir / "bigger_bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("small_bomb.png", "bigger_bomb.png"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(BadRecord, match="image too large to decode safely"):
                open_rgb(image_dir / name, "d.jsonl", 1)
        assert not caught
    # With PIL's guard switched off, janus_ft's own ceiling still stands.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(BadRecord, match=r"20000x20000 = 400000000 pixels, over the decompression-bomb limit"):
        open_rgb(image_dir / "huge_bomb.png", "d.jsonl", 1)


def test_device_files_are_not_read(tmp_path):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(BadRecord, match="not a regular file"):
        open_rgb(Path("/dev/zero"), "d.jsonl", 1)  # read_bytes() would never return
    with pytest.raises(UserError, match="not a regular file"):
        _read_image_bytes(Path("/dev/zero"))


def test_every_mode_converts_to_rgb():
    modes = {m: Image.new(m, (4, 4)) for m in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                                              "CMYK", "YCbCr", "LAB", "I;16", "I;16B", "I;16L", "F")}
    modes["I"] = Image.fromarray(np.full((4, 4), 257 * 200, np.int32))
    for mode, img in modes.items():
        assert to_rgb(img).mode == "RGB", mode
    assert to_rgb(modes["I"]).getpixel((0, 0)) == (200, 200, 200)


def test_training_sample_pixels_and_bad_image_at_sample_time(image_dir, tiny_processor):
    """A good odd image reaches pixel_values in its own colour; a bad one raises a BadRecord (file,
    line, `images[i]`) when its sample is built, not an exception from PIL or the processor."""
    good = parse_record({"query": "<image>Colour?", "response": "white", "images": ["palette_trns.png"]},
                        image_dir / "d.jsonl", 3)
    bad = parse_record({"query": "<image><image>?", "response": "r", "images": ["rgb.png", "truncated.jpg"]},
                       image_dir / "d.jsonl", 5)
    ds = JanusDataset([good, bad], tiny_processor, "janus-pro")
    pixels = ds.sample(0)["pixel_values"]
    assert pixels.shape[:2] == (1, 3)
    size = pixels.shape[-1]
    assert torch.allclose(pixels[0, :, size // 2, 3 * size // 4], torch.tensor([1.0, -1.0, -1.0]), atol=0.05)
    with pytest.raises(BadRecord) as err:
        ds.sample(1)
    assert str(err.value).startswith(f"{image_dir / 'd.jsonl'}:5: field 'images[1]': cannot read image")


def test_check_images_reports_every_bad_reference_once_decoded(image_dir):
    records = [parse_record({"query": "<image>q", "response": "r", "images": [name]}, image_dir / "d.jsonl", i)
               for i, name in enumerate(sorted(BAD) + ["rgb.png", "truncated.png"], start=1)]
    errors = check_images(records)
    assert [(e.line, e.field) for e in errors] == [(i, "images[0]") for i in range(1, len(BAD) + 1)] + \
        [(len(BAD) + 2, "images[0]")]


def test_data_check_lists_all_bad_images_before_loading_anything(image_dir, capsys, monkeypatch):
    import janus_ft.cli.data as data_cli

    def no_model(*args):
        raise AssertionError("data check loaded a model despite bad images")

    # The tokenizer is loaded (records are tokenized as they are checked); no model weights are.
    monkeypatch.setattr(data_cli, "_report_cache", no_model)
    lines = [{"query": "<image>q", "response": "r", "images": [name]} for name in sorted(BAD)]
    lines.insert(1, {"query": "a caption", "response": "<image>", "images": ["grey16.png"]})
    lines.append({"query": "a caption", "response": "<image>", "images": ["bomb.png"]})
    path = write_jsonl(image_dir / "check.jsonl", lines)
    from janus_ft.cli import main

    assert main(["data", "check", str(path), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{len(BAD) + 1} bad record(s)" in err
    reported = {line.split(": field")[0]: line for line in err.splitlines() if line.startswith("bad record:")}
    for number, row in enumerate(lines, start=1):
        where = f"bad record: {path}:{number}"
        if row["images"][0] in BAD:
            assert "field 'images[0]': " in reported[where] and BAD[row["images"][0]][1] in reported[where]
        else:
            assert where not in reported


def test_image_paths_no_file_system_accepts_are_clean(tmp_path):
    """A name too long for the file system, or with a NUL byte, is 'not found', not an OSError."""
    for name in ("x" * 5000 + ".png", "a\x00b.png"):
        record = parse_record({"query": "<image>q", "response": "r", "images": [name]}, tmp_path / "d.jsonl", 2)
        with pytest.raises(BadRecord, match=r"d.jsonl:2: field 'images\[0\]': image not found"):
            open_rgb(record.images[0], record.source, record.line, "images[0]")


def test_codes_for_files_encodes_odd_kinds_and_refuses_bad_ones(image_dir, tiny_model, tmp_path):
    """End to end on the VQ path: odd kinds encode to the codes of their RGB conversion; a bad file
    stops encoding with a message naming it (checked before any encoder pass)."""
    from janus_ft.data.vq import CodeCache, codes_for_files, encode_images

    names = ["palette_trns.png", "grey16.png", "cmyk.jpg", "la.png"]
    cache = CodeCache(tmp_path / "cache")
    codes = codes_for_files(tiny_model, [image_dir / n for n in names], cache)
    assert torch.equal(codes, encode_images(tiny_model, [open_rgb(image_dir / n) for n in names]))
    for name in ("bomb.png", "truncated.png", "folder.png"):
        with pytest.raises(UserError) as err:
            codes_for_files(tiny_model, [image_dir / "rgb.png", image_dir / name], cache)
        assert str(err.value).startswith(f"{image_dir / name}: ") and BAD[name][1] in str(err.value)
    assert cache.encoder_passes == len(names)
