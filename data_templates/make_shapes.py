"""Synthetic understanding task that cannot be solved without looking at the image.

Each image is one filled shape (circle, square or triangle) in one of four colours on a light gray
background; the answer is the colour. The question text is identical for every record, so a model
can only beat chance (25%) by reading the pixels: that makes it an honest check that the vision
path and its LoRA actually learn, which a text-answerable task would not be.

    python data_templates/make_shapes.py OUT_DIR --n 200 --seed 0 --size 64 --split-val 40

writes OUT_DIR/train.jsonl, OUT_DIR/val.jsonl and OUT_DIR/images/shape_0001.png, ...
"""

from __future__ import annotations

import random
from pathlib import Path

from generator_io import check_split, finish, parser, write_split
from PIL import Image, ImageDraw

QUERY = "<image>What colour is the shape?"
BACKGROUND = (211, 211, 211)  # light gray: far from every label colour, so "dominant" is unambiguous
COLOURS = {  # saturated and pairwise far apart, so even a 64 px image leaves no doubt
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
}
SHAPES = ("circle", "square", "triangle")


def draw_shape(size: int, shape: str, rgb: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """One filled `shape` with a jittered size and position, fully inside a `size` x `size` image."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    side = rng.uniform(0.35, 0.6) * size      # big enough to dominate, small enough to move around
    x0 = rng.uniform(0.05 * size, 0.95 * size - side)
    y0 = rng.uniform(0.05 * size, 0.95 * size - side)
    box = [round(x0), round(y0), round(x0 + side), round(y0 + side)]
    draw = ImageDraw.Draw(img)  # no anti-aliasing: every shape pixel is exactly `rgb`
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=rgb)
    return img


def make_shapes(out_dir, n: int = 200, seed: int = 0, size: int = 64, n_val: int | None = None,
                train_name: str = "train.jsonl", val_name: str = "val.jsonl") -> tuple[Path, Path]:
    """Write `n` records (the last `n_val` to the val file; default n // 5) and their images.

    Labels are balanced (each colour n/4 times, shuffled) so accuracy has a clean 25% chance level.
    Returns (train_path, val_path); image paths in the JSONL are relative to `out_dir`.
    """
    n_val = n // 5 if n_val is None else n_val
    check_split(n, n_val)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    labels = [list(COLOURS)[i % len(COLOURS)] for i in range(n)]
    rng.shuffle(labels)
    records = []
    for i, colour in enumerate(labels, start=1):
        rel = f"images/shape_{i:04d}.png"
        draw_shape(size, rng.choice(SHAPES), COLOURS[colour], rng).save(out_dir / rel)
        records.append({"query": QUERY, "response": colour, "images": [rel]})
    return write_split(out_dir, records, n_val, train_name, val_name)


def main(argv=None) -> None:
    p = parser(__doc__, n=200, size=64, val_default="n // 5", out_help="output directory (train.jsonl, val.jsonl, images/)")
    args = p.parse_args(argv)
    finish(p, lambda: make_shapes(args.out, args.n, args.seed, args.size, args.split_val))


if __name__ == "__main__":
    main()
