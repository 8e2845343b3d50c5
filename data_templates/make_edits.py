"""Synthetic image edits: one shape on a plain background, recoloured, moved or mirrored.

Every record is an edit (source image + instruction -> edited image) whose result is fully decided
by the two: a shape (square, circle, or a right triangle facing left or right) of one of four
colours sits in one of 3 x 3 cells, each cell a quarter of the image apart, and the instruction
says what changes:

    {"query": "<image>Make the square red.", "response": "<image>",
     "images": ["images/square_blue_01.png", "images/square_red_01.png"]}

- recolour: "Make the {shape} {colour}." (another of the four colours; position and shape kept)
- move: "Move the {shape} {left|right|up|down}." (one cell, where the image has room)
- mirror: "Mirror the image." (a left-right flip: the column mirrors and a triangle turns round)

The instruction alone names the shape but not where it is (nor, for moves and mirrors, its colour):
only the source image tells, so a model that edits better than it draws from the instruction alone
is reading the source. Pairs are drawn without repeats, so the validation pairs are edits the
training set never shows (their images may appear in other pairs: there are only 144 scenes).

    python data_templates/make_edits.py OUT_DIR --n 240 --seed 0 --size 64 --split-val 40

writes OUT_DIR/train.jsonl, OUT_DIR/val.jsonl and OUT_DIR/images/{shape}_{colour}_{col}{row}.png.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

from generator_io import check_split, finish, parser, write_split
from make_shapes import BACKGROUND, COLOURS
from PIL import Image, ImageDraw, ImageOps

SHAPES = ("square", "circle", "triangle")
MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


class Scene(NamedTuple):
    shape: str
    colour: str
    col: int          # 0..2: the shape's box starts col / 4 of the image from the left
    row: int          # 0..2: and row / 4 from the top
    facing: str = ""  # a triangle's right angle: "left" or "right" (what a mirror turns round)

    @property
    def name(self) -> str:
        turn = f"-{self.facing}" if self.facing else ""
        return f"images/{self.shape}{turn}_{self.colour}_{self.col}{self.row}.png"


def mirrored(scene: Scene) -> Scene:
    """The scene flipped left to right: the column mirrors and a triangle turns round."""
    return scene._replace(col=2 - scene.col, facing={"left": "right", "right": "left"}.get(scene.facing, ""))


def draw(scene: Scene, size: int) -> Image.Image:
    """The scene: the shape fills a half-image box (less a margin), placed on a quarter-image grid.
    Right-hand scenes are their mirrored scene flipped, so a mirror edit is exact to the pixel."""
    if scene.col == 2 or (scene.col == 1 and scene.facing == "right"):
        return ImageOps.mirror(draw(mirrored(scene), size))
    img = Image.new("RGB", (size, size), BACKGROUND)
    side, margin = size / 2, size / 16
    x0, y0 = scene.col * size / 4 + margin, scene.row * size / 4 + margin
    x1, y1 = x0 + side - 2 * margin, y0 + side - 2 * margin
    pen, rgb = ImageDraw.Draw(img), COLOURS[scene.colour]
    if scene.shape == "square":
        pen.rectangle([round(x0), round(y0), round(x1), round(y1)], fill=rgb)
    elif scene.shape == "circle":
        pen.ellipse([round(x0), round(y0), round(x1), round(y1)], fill=rgb)
    else:
        corner = (x0, y1) if scene.facing == "left" else (x1, y1)
        top = (x0, y0) if scene.facing == "left" else (x1, y0)
        pen.polygon([corner, top, (x1 if scene.facing == "left" else x0, y1)], fill=rgb)
    return img


def scenes(shapes=SHAPES, colours=tuple(COLOURS)) -> list[Scene]:
    return [Scene(shape, colour, col, row, facing)
            for shape in shapes for facing in (("left", "right") if shape == "triangle" else ("",))
            for colour in colours for col in range(3) for row in range(3)]


def edits(scene: Scene, colours=tuple(COLOURS)) -> list[tuple[str, Scene]]:
    """Every (instruction, result) this scene can be edited into."""
    out = [(f"Make the {scene.shape} {colour}.", scene._replace(colour=colour))
           for colour in colours if colour != scene.colour]
    for word, (dx, dy) in MOVES.items():
        col, row = scene.col + dx, scene.row + dy
        if 0 <= col <= 2 and 0 <= row <= 2:
            out.append((f"Move the {scene.shape} {word}.", scene._replace(col=col, row=row)))
    if mirrored(scene) != scene:   # a centred square or circle mirrors onto itself: no edit to learn
        out.append(("Mirror the image.", mirrored(scene)))
    return out


def make_edits(out_dir, n: int = 240, seed: int = 0, size: int = 64, n_val: int | None = None,
               train_name: str = "train.jsonl", val_name: str = "val.jsonl", shapes=SHAPES,
               colours=tuple(COLOURS)) -> tuple[Path, Path]:
    """Write `n` distinct edit records (the last `n_val`, default n // 6, to the val file) and the
    images they use, of scenes of `shapes` and `colours` (a smaller world is learnt sooner).
    Returns (train_path, val_path); image paths are relative to `out_dir`."""
    n_val = n // 6 if n_val is None else n_val
    check_split(n, n_val)
    unknown = sorted(set(shapes) - set(SHAPES)) + sorted(set(colours) - set(COLOURS))
    if unknown or not shapes or len(colours) < 2:
        raise ValueError(f"shapes from {', '.join(SHAPES)} and two or more colours from {', '.join(COLOURS)}, "
                         f"got {', '.join(shapes)} / {', '.join(colours)}")
    pairs = [(source, instruction, target) for source in scenes(shapes, colours)
             for instruction, target in edits(source, colours)]
    if n > len(pairs):
        raise ValueError(f"n={n}: there are only {len(pairs)} distinct edits")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for source, instruction, target in random.Random(seed).sample(pairs, n):
        for scene in (source, target):
            if not (out_dir / scene.name).exists():
                draw(scene, size).save(out_dir / scene.name)
        records.append({"query": f"<image>{instruction}", "response": "<image>", "images": [source.name, target.name]})
    return write_split(out_dir, records, n_val, train_name, val_name)


def main(argv=None) -> None:
    p = parser(__doc__, n=240, size=64, val_default="n // 6", out_help="output directory (train.jsonl, val.jsonl, images/)")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes to draw")
    p.add_argument("--colours", default=",".join(COLOURS), help="comma-separated colours (two or more)")
    args = p.parse_args(argv)
    finish(p, lambda: make_edits(args.out, args.n, args.seed, args.size, args.split_val,
                                 shapes=tuple(args.shapes.split(",")), colours=tuple(args.colours.split(","))))


if __name__ == "__main__":
    main()
