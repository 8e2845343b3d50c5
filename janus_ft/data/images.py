"""Images: open safely and fail clearly (both paths), then the understanding path's processor.

The checkpoint's `JanusImageProcessor` pads the short side to a square with the mean colour
((127, 127, 127) for Janus's 0.5 mean), resizes to the vision tower's size and normalises
(docs/janus.md, image preprocessing). Generation targets are opened and converted to RGB here too, so
both paths agree on what an image looks like, then preprocessed by `janus_ft.data.vq`.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadRecord, UserError
from ..files import cache_root, publish
from .records import brief

# Far above any real training image (a 16k x 16k photo), far below a decompression bomb. PIL's own
# `Image.MAX_IMAGE_PIXELS` (89 M by default) applies first; this bounds a user who turns it off.
MAX_PIXELS = 16384 * 16384
# Beyond this a picture is a line: the generation path scales the short side up to the image size
# before its centre crop, so a 1 x 100000 image would be resized to 384 x 38 M pixels.
MAX_ASPECT = 1000


class UnreadableImage(ValueError):
    """Why an image file cannot be used; callers turn it into a `BadRecord` or `UserError`."""


def open_rgb(path: Path, source: str = "", line: int | None = None, field: str = "images") -> Image.Image:
    """Open an image as RGB, or raise `BadRecord` naming the record and the problem.

    Transparency is composited on white (a transparent PNG logo is meant to be seen on a page);
    palette, greyscale, CMYK and 16-bit images are converted.
    """
    try:
        check_file(path)
        with decode(path) as img:
            return to_rgb(img)
    except UnreadableImage as err:
        raise BadRecord(source or str(path), line, field, f"{err}: {brief(str(path), 200)}") from None


def check_images(records) -> list[BadRecord]:
    """Decode every image of every record as training will; one `BadRecord` per bad reference.

    Each file is decoded once however many records use it, so `data check` reports every bad
    image before any model weight is loaded.
    """
    problems: dict[Path, BadRecord | None] = {}
    errors = []
    for rec in records:
        for i, path in enumerate(rec.images):
            if path not in problems:
                try:
                    open_rgb(path).close()
                    problems[path] = None
                except BadRecord as err:
                    problems[path] = err
            if problems[path] is not None:
                errors.append(BadRecord(rec.source, rec.line, f"images[{i}]", problems[path].problem))
    return errors


def bad_images_error(bad: list[BadRecord]) -> UserError:
    """One error listing (the first ten of) every bad image reference, so all are fixed in one go."""
    shown = "\n  ".join(str(e) for e in bad[:10])
    return UserError(f"{len(bad)} bad image reference(s){' (first 10)' if len(bad) > 10 else ''}:\n  {shown}")


def check_file(path) -> None:
    """A regular file, not a directory, a device (`/dev/zero` would be read forever) or nothing."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # missing, a name too long, an embedded NUL byte
        raise UnreadableImage("image not found") from None
    if stat.S_ISDIR(info.st_mode):
        raise UnreadableImage("image path is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableImage("image path is not a regular file")
    if info.st_size == 0:
        raise UnreadableImage("image file is empty (0 bytes)")


def decode(file) -> Image.Image:
    """Fully decode an image (a path or a binary file object), refusing decompression bombs.

    The size is checked from the header before any pixel is decoded, and PIL's bomb warning is an
    error here: a warning would let a 90-megapixel image through to eat memory in every worker.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(file)
            try:
                _check_size(img)
                img.load()
            except BaseException:
                img.close()
                raise
            return img
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImage(f"image too large to decode safely ({err})") from None
    except Image.UnidentifiedImageError:
        raise UnreadableImage("cannot read image (not an image file, or a format Pillow cannot read)") from None
    except Exception as err:  # PIL raises OSError, SyntaxError, struct.error... for broken files
        raise UnreadableImage(f"cannot read image ({brief(str(err) or type(err).__name__, 200)})") from None


def _check_size(img: Image.Image) -> None:
    w, h = img.size
    limit = min(Image.MAX_IMAGE_PIXELS or MAX_PIXELS, MAX_PIXELS)
    if w * h > limit:
        raise UnreadableImage(f"image too large to decode safely ({w}x{h} = {w * h} pixels, over the "
                              f"decompression-bomb limit of {limit})")
    if w < 1 or h < 1:
        raise UnreadableImage(f"image has no pixels ({w}x{h})")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise UnreadableImage(f"image is {w}x{h}; an aspect ratio beyond {MAX_ASPECT}:1 is not a usable picture")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white (what a viewer shows)."""
    if img.mode.startswith("I"):
        # 16-bit greyscale: PIL's convert() clips at 255 (nearly everything turns white); rescale.
        grey = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    if img.mode in ("P", "PA", "LA", "RGBa") or "transparency" in img.info:
        # Palette and colour-key transparency (PNG tRNS, GIF) become an alpha channel first.
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def pixel_values(image_processor, images: list[Image.Image]):
    """Float tensor (n, 3, H, W) from the checkpoint's own image processor."""
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


def stored_image(image) -> Path:
    """A file holding `image` (encoded bytes, or a PIL image), for images that arrive as data.

    Every image then reaches training, `data check` and the VQ code cache the one way they all
    read images: by path. Files are named by their content's hash under the cache root, so a
    second read, another rank or another source holding the same image reuses one file; bytes are
    stored as they are (a broken image is reported, with its record, when it is decoded).
    """
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")   # lossless: the pixels trained on are the pixels given
        image = buffer.getvalue()
    digest = hashlib.sha256(image).hexdigest()
    path = cache_root() / "images" / digest[:2] / digest
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{digest}.{os.getpid()}")
        staged.write_bytes(image)
        publish(staged, path, keep_existing=True)
    return path
