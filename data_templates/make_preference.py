"""Synthetic preference pairs for `janus-ft dpo`, all three tasks, in the three record shapes.

* understanding (ms-swift shape, `rejected_response`): a shape image (make_shapes.py), "What colour
  is the shape?"; chosen = its colour, rejected = another colour. Only the pixels tell them apart.
* text (TRL shape, `prompt` / `chosen` / `rejected`): "Which is a colour: X or Y?" naming one colour
  and one shape in random order; chosen = the colour, rejected = the shape.
* generation (`rejected_images`): caption "a {colour} {shape}"; chosen = that shape in that colour,
  rejected = the same shape at the same place in another colour. Only the caption's colour word
  tells which image is preferred, so held-out pairs measure conditioning on the caption.

    python data_templates/make_preference.py OUT_DIR --n 120 --seed 0 --size 64 --split-val 40

writes OUT_DIR/{understanding,text,generation}{,_val}.jsonl and OUT_DIR/images/*.png
(n pairs per task, the last split-val of each held out).
"""

from __future__ import annotations

import random
from pathlib import Path

from generator_io import check_split, finish, parser, write_split
from make_shapes import COLOURS, QUERY, SHAPES, draw_shape


def make_preference(out_dir, n: int = 120, seed: int = 0, size: int = 64, n_val: int | None = None) -> list[Path]:
    """Write n pairs of each task (the last `n_val`, default n // 3, to the `_val` files) and their
    images; returns the paths written. Chosen colours are balanced over the records."""
    n_val = n // 3 if n_val is None else n_val
    check_split(n, n_val)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colours = list(COLOURS)
    paths = []

    def colour_pairs():
        chosen = [colours[i % len(colours)] for i in range(n)]
        rng.shuffle(chosen)
        return [(c, rng.choice([x for x in colours if x != c])) for c in chosen]

    und = []
    for i, (colour, other) in enumerate(colour_pairs(), start=1):
        rel = f"images/und_{i:04d}.png"
        draw_shape(size, rng.choice(SHAPES), COLOURS[colour], rng).save(out_dir / rel)
        und.append({"query": QUERY, "response": colour, "rejected_response": other, "images": [rel]})
    paths += write_split(out_dir, und, n_val, "understanding.jsonl", "understanding_val.jsonl")

    text = []
    for colour, _ in colour_pairs():
        shape = rng.choice(SHAPES)
        first, second = (colour, shape) if rng.random() < 0.5 else (shape, colour)
        text.append({"prompt": f"Which is a colour: {first} or {second}?", "chosen": colour, "rejected": shape})
    paths += write_split(out_dir, text, n_val, "text.jsonl", "text_val.jsonl")

    gen = []
    for i, (colour, other) in enumerate(colour_pairs(), start=1):
        shape, state = rng.choice(SHAPES), rng.getstate()
        good, bad = f"images/gen_{i:04d}_chosen.png", f"images/gen_{i:04d}_rejected.png"
        draw_shape(size, shape, COLOURS[colour], rng).save(out_dir / good)
        rng.setstate(state)   # the same size and place: only the colour differs
        draw_shape(size, shape, COLOURS[other], rng).save(out_dir / bad)
        gen.append({"query": f"a {colour} {shape}", "response": "<image>", "images": [good], "rejected_images": [bad]})
    paths += write_split(out_dir, gen, n_val, "generation.jsonl", "generation_val.jsonl")
    return paths


def main(argv=None) -> None:
    p = parser(__doc__, n=120, size=64, val_default="n // 3",
               out_help="output directory ({understanding,text,generation}{,_val}.jsonl, images/)")
    args = p.parse_args(argv)
    finish(p, lambda: make_preference(args.out, args.n, args.seed, args.size, args.split_val))


if __name__ == "__main__":
    main()
