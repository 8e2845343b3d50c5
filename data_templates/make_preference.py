"""Synthetic preference pairs for `janus-ft dpo`, all three tasks, in the three record shapes.

* understanding (ms-swift shape, `rejected_response`): a shape image (make_shapes.py), "What colour
  is the shape?"; chosen = its colour, rejected = another colour. Only the pixels tell them apart.
* text (TRL shape, `prompt` / `chosen` / `rejected`): "Which is a colour: X or Y?" naming one colour
  and one shape in random order; chosen = the colour, rejected = the shape.
* generation (`rejected_images`): caption "a {colour} {shape}"; chosen = a noisy shot of that shape
  in that colour, rejected = a noisy shot of the same shape at the same place in another colour.
  Every colour is chosen for its own caption and rejected for others, so only the caption tells
  which image is preferred: held-out pairs (unseen shots) measure conditioning on the caption.

    python data_templates/make_preference.py OUT_DIR --n 120 --seed 0 --size 64 --split-val 40 --noise 3

writes OUT_DIR/{understanding,text,generation}{,_val}.jsonl and OUT_DIR/images/*.png
(n pairs per task, the last split-val of each held out).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from generator_io import check_split, finish, parser, write_split
from make_shapes import COLOURS, QUERY, SHAPES, draw_shape
from PIL import Image


def make_preference(out_dir, n: int = 120, seed: int = 0, size: int = 64, n_val: int | None = None,
                    noise: int = 3) -> list[Path]:
    """Write n pairs of each task (the last `n_val`, default n // 3, to the `_val` files) and their
    images; returns the paths written. Chosen colours are balanced over the records."""
    n_val = n // 3 if n_val is None else n_val
    check_split(n, n_val)
    if noise < 0:
        raise ValueError(f"need noise >= 0, got {noise}")
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

    # Generation: each colour x shape is one fixed scene (a "subject"); every pair draws fresh noisy
    # shots (+-`noise` levels per pixel) of its subject and of the same shape in another colour, so
    # held-out pairs are unseen images of the captions trained on. The VQ codes of a noisy shot stay
    # close to its scene's, while a new drawing (another size or place) gives unrelated codes.
    subjects = [(c, s) for c in colours for s in SHAPES]
    scenes = {}
    for colour, shape in subjects:
        place = random.Random(f"{seed}-{shape}")   # the same size and place for every colour of a shape
        scenes[colour, shape] = np.asarray(draw_shape(size, shape, COLOURS[colour], place), dtype=np.int16)
    noise_rng = np.random.default_rng(seed)

    def shot(colour, shape, rel):
        noisy = scenes[colour, shape] + noise_rng.integers(-noise, noise + 1, scenes[colour, shape].shape)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out_dir / rel)
        return rel

    gen = []
    for i in range(n):
        colour, shape = subjects[i % len(subjects)]
        other = rng.choice([x for x in colours if x != colour])
        gen.append({"query": f"a {colour} {shape}", "response": "<image>",
                    "images": [shot(colour, shape, f"images/gen_{i + 1:04d}_chosen.png")],
                    "rejected_images": [shot(other, shape, f"images/gen_{i + 1:04d}_rejected.png")]})
    paths += write_split(out_dir, gen, n_val, "generation.jsonl", "generation_val.jsonl")
    return paths


def main(argv=None) -> None:
    p = parser(__doc__, n=120, size=64, val_default="n // 3",
               out_help="output directory ({understanding,text,generation}{,_val}.jsonl, images/)")
    p.add_argument("--noise", type=int, default=3, help="per-pixel noise of the generation shots, +- levels")
    args = p.parse_args(argv)
    finish(p, lambda: make_preference(args.out, args.n, args.seed, args.size, args.split_val, args.noise))


if __name__ == "__main__":
    main()
