"""Images for the understanding path: open lazily, fail clearly, hand to the checkpoint's processor.

The checkpoint's `JanusImageProcessor` pads the short side to a square with the mean colour
((127, 127, 127) for Janus's 0.5 mean), resizes to the vision tower's size and normalises
(reference/janus.md section 6). Generation targets use a different path (`janus_ft.vq`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from .errors import BadRecord

# Far above any real training image (a 16k x 16k photo), far below a decompression bomb.
MAX_PIXELS = 16384 * 16384


def open_rgb(path: Path, source: str = "", line: int | None = None, field: str = "images") -> Image.Image:
    """Open an image as RGB, or raise `BadRecord` naming the record and the problem.

    Transparency is composited on white (a transparent PNG logo is meant to be seen on a page);
    palette, greyscale, CMYK and 16-bit images are converted.
    """
    where = (source or str(path), line, field)
    if not Path(path).is_file():
        raise BadRecord(*where, f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadRecord(*where, f"image too large ({img.width}x{img.height}): {path}")
                img.load()
                return to_rgb(img)
    except BadRecord:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise BadRecord(*where, f"cannot read image {path}: {err}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale into 8 bits instead of clipping everything to white.
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def pixel_values(image_processor, images: list[Image.Image]):
    """Float tensor (n, 3, H, W) from the checkpoint's own image processor."""
    return image_processor(images=images, return_tensors="pt")["pixel_values"]
