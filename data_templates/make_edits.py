"""Synthetic image edits: shapes on a plain background, one of them recoloured or moved, or the
whole image mirrored.

Every record is an edit (source image + instruction -> edited image) whose result is fully decided
by the two. A scene holds one or more shapes of different kinds (square, circle, and a right
triangle facing left or right), each of one of four colours, each filling one cell of a grid
(4 x 4 by default); the instruction says what changes and everything else stays:

    {"query": "<image>Make the square red.", "response": "<image>",
     "images": ["images/circle-blue-12_square-green-30.png", "images/circle-blue-12_square-red-30.png"]}

- recolour: "Make the {shape} {colour}." (another of the four colours; everything else kept)
- move: "Move the {shape} {left|right|up|down}." (one cell, into a free cell of the grid)
- mirror: "Mirror the image." (a left-right flip: columns mirror and triangles turn round)

The instruction names one shape but not where anything is (nor the other shapes, nor, for a move,
the colour): only the source image tells, so a model that edits better than it draws from the
instruction alone is reading the source. Edits are drawn without repeats, so the validation edits
are edits the training set never shows.

    python data_templates/make_edits.py OUT_DIR --n 240 --seed 0 --size 64 --split-val 40

writes OUT_DIR/train.jsonl, OUT_DIR/val.jsonl and OUT_DIR/images/*.png (one file per scene).
`--rejected` makes every record a preference pair for `janus-ft dpo`: `rejected_images` holds the
edit done with a wrong colour (the edited shape in a colour neither the target nor the source has).
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import NamedTuple

from generator_io import check_split, finish, parser, write_split
from make_shapes import BACKGROUND, COLOURS
from PIL import Image, ImageDraw, ImageOps

SHAPES = ("square", "circle", "triangle")
MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
FLIP = {"left": "right", "right": "left", "": ""}


class Thing(NamedTuple):
    shape: str
    colour: str
    col: int
    row: int
    facing: str = ""   # a triangle's right angle, "left" or "right": what a mirror turns round

    @property
    def name(self) -> str:
        turn = f"-{self.facing}" if self.facing else ""
        return f"{self.shape}{turn}-{self.colour}-{self.col}{self.row}"


Scene = tuple   # of Things, in the order of SHAPES


def scene_file(scene: Scene) -> str:
    return "images/" + "_".join(t.name for t in scene) + ".png"


@cache
def tile(shape: str, colour: str, facing: str, side: int) -> Image.Image:
    """One shape filling a `side` px cell (less a margin). Squares and circles are drawn mirror-
    symmetric and a right-facing triangle is the left-facing one flipped, so mirroring a scene
    mirrors its pixels exactly."""
    if facing == "right":
        return ImageOps.mirror(tile(shape, colour, "left", side))
    img = Image.new("RGB", (side, side), BACKGROUND)
    pen, rgb, lo, hi = ImageDraw.Draw(img), COLOURS[colour], side // 8, side - 1 - side // 8
    if shape == "square":
        pen.rectangle([lo, lo, hi, hi], fill=rgb)
    elif shape == "circle":
        pen.ellipse([lo, lo, hi, hi], fill=rgb)
    else:
        pen.polygon([(lo, lo), (lo, hi), (hi, hi)], fill=rgb)
    if shape != "triangle":   # whatever rounding PIL did on the right, the left half decides
        img.paste(ImageOps.mirror(img.crop((0, 0, side // 2, side))), (side - side // 2, 0))
    return img


def draw(scene: Scene, size: int, grid: int = 4) -> Image.Image:
    """The scene: each shape in its cell of a `grid` x `grid` layout of a `size` px image."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    side = size // grid
    for t in scene:
        img.paste(tile(t.shape, t.colour, t.facing, side), (t.col * side, t.row * side))
    return img


def mirrored(scene: Scene, grid: int = 4) -> Scene:
    return tuple(t._replace(col=grid - 1 - t.col, facing=FLIP[t.facing]) for t in scene)


def edits(scene: Scene, colours=tuple(COLOURS), grid: int = 4) -> list[tuple[str, Scene]]:
    """Every (instruction, result) this scene can be edited into."""
    out = []
    taken = {(t.col, t.row) for t in scene}
    for i, t in enumerate(scene):
        out += [(f"Make the {t.shape} {c}.", _changed(scene, i, colour=c)) for c in colours if c != t.colour]
        for word, (dx, dy) in MOVES.items():
            col, row = t.col + dx, t.row + dy
            if 0 <= col < grid and 0 <= row < grid and (col, row) not in taken:
                out.append((f"Move the {t.shape} {word}.", _changed(scene, i, col=col, row=row)))
    if mirrored(scene, grid) != scene:   # a centred symmetric scene mirrors onto itself: nothing to learn
        out.append(("Mirror the image.", mirrored(scene, grid)))
    return out


def _changed(scene: Scene, i: int, **kw) -> Scene:
    return scene[:i] + (scene[i]._replace(**kw),) + scene[i + 1:]


def wrong_colour(source: Scene, target: Scene, colours, rng: random.Random) -> Scene:
    """The edit done with a wrong colour: the edited shape (the first one the edit changes) in a
    colour neither the target nor the source gives it -- a rejected target for a preference pair."""
    i = next((k for k, (s, t) in enumerate(zip(source, target)) if s != t), 0)
    avoid = {target[i].colour, source[i].colour}
    wrong = [c for c in colours if c not in avoid] or [c for c in colours if c != target[i].colour]
    return _changed(target, i, colour=rng.choice(wrong))


def random_scene(rng: random.Random, objects: int, shapes, colours, grid: int) -> Scene:
    kinds = sorted(rng.sample(list(shapes), objects), key=SHAPES.index)
    cells = rng.sample([(c, r) for c in range(grid) for r in range(grid)], objects)
    return tuple(Thing(kind, rng.choice(list(colours)), col, row, rng.choice(("left", "right")) if kind == "triangle" else "")
                 for kind, (col, row) in zip(kinds, cells))


def make_edits(out_dir, n: int = 240, seed: int = 0, size: int = 64, n_val: int | None = None,
               train_name: str = "train.jsonl", val_name: str = "val.jsonl", objects: int = 2, grid: int = 4,
               shapes=SHAPES, colours=tuple(COLOURS), rejected: bool = False) -> tuple[Path, Path]:
    """Write `n` distinct edit records (the last `n_val`, default n // 6, to the val file) and the
    images they use: scenes of `objects` shapes (of different kinds, from `shapes`) coloured from
    `colours` on a `grid` x `grid` layout. With `rejected`, each record is a preference pair whose
    `rejected_images` is the edit done with a wrong colour (`wrong_colour`; the edits are the same).
    Returns (train_path, val_path); image paths are relative to `out_dir`."""
    n_val = n // 6 if n_val is None else n_val
    check_split(n, n_val)
    unknown = sorted(set(shapes) - set(SHAPES)) + sorted(set(colours) - set(COLOURS))
    if unknown or not 1 <= objects <= len(shapes) or len(colours) < 2 or not 2 <= grid <= size:
        raise ValueError(f"need 1 <= objects <= shapes (from {', '.join(SHAPES)}), two or more colours from "
                         f"{', '.join(COLOURS)} and 2 <= grid <= size; got objects={objects}, shapes="
                         f"{','.join(shapes)}, colours={','.join(colours)}, grid={grid}")
    rng, seen, records = random.Random(seed), set(), []
    wrong_rng = random.Random(f"{seed}-rejected")   # its own draws: the edits stay those of a run without
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for _ in range(200 * n):
        if len(records) == n:
            break
        source = random_scene(rng, objects, shapes, colours, grid)
        instruction, target = rng.choice(edits(source, colours, grid) or [("", source)])
        if not instruction or (source, instruction) in seen:
            continue
        seen.add((source, instruction))
        scenes = (source, target) + ((wrong_colour(source, target, colours, wrong_rng),) if rejected else ())
        for scene in scenes:
            if not (out_dir / scene_file(scene)).exists():
                draw(scene, size, grid).save(out_dir / scene_file(scene))
        records.append({"query": f"<image>{instruction}", "response": "<image>",
                        "images": [scene_file(source), scene_file(target)]}
                       | ({"rejected_images": [scene_file(scenes[2])]} if rejected else {}))
    if len(records) < n:
        raise ValueError(f"n={n}: found only {len(records)} distinct edits of these scenes")
    return write_split(out_dir, records, n_val, train_name, val_name)


def main(argv=None) -> None:
    p = parser(__doc__, n=240, size=64, val_default="n // 6", out_help="output directory (train.jsonl, val.jsonl, images/)")
    p.add_argument("--objects", type=int, default=2, help="shapes per image (each of another kind)")
    p.add_argument("--grid", type=int, default=4, help="cells per side; a shape fills one cell")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes to draw")
    p.add_argument("--colours", default=",".join(COLOURS), help="comma-separated colours (two or more)")
    p.add_argument("--rejected", action="store_true",
                   help="write preference pairs (janus-ft dpo): rejected_images, the edit done with a wrong colour")
    args = p.parse_args(argv)
    finish(p, lambda: make_edits(args.out, args.n, args.seed, args.size, args.split_val, objects=args.objects,
                                 grid=args.grid, shapes=tuple(args.shapes.split(",")),
                                 colours=tuple(args.colours.split(",")), rejected=args.rejected))


if __name__ == "__main__":
    main()
