"""Regenerate the README's pictures from a demo run:

- docs/images/demo_loss.png: the run's loss.png;
- docs/images/demo_samples.png: for the first validation captions, the held-out shot, its VQ codes
  decoded (the best a sample can be), and what the model draws for the caption before training and
  after it (the first and last of the run's `samples/step-N.png` grids).

    python scripts/demo_pictures.py                   # runs recipes/demo.yaml in a temporary directory
    python scripts/demo_pictures.py --run runs/demo   # or takes the pictures from a finished demo run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
VAL = REPO / "data_templates" / "samples" / "generation_val.jsonl"   # the demo's generation val file
TILE, GAP = 64, 2    # the evaluation grids: 64 px tiles 2 px apart, references over samples
SCALE = 2            # 64 px is a thumbnail in a README; pixels doubled, not smoothed
LABEL_WIDTH = 120


def grid_row(path: Path, row: int) -> Image.Image:
    """One row of an evaluation grid (0: references decoded from their codes, 1: samples)."""
    grid = Image.open(path).convert("RGB")
    top = row * (TILE + GAP)
    return grid.crop((0, top, grid.width, top + TILE))


def shots_row(columns: int) -> Image.Image:
    """The held-out shots whose captions the evaluation draws, as the grids lay them out."""
    records = [json.loads(line) for line in VAL.read_text(encoding="utf-8").splitlines()][:columns]
    row = Image.new("RGB", (columns * TILE + (columns - 1) * GAP, TILE), "white")
    for i, record in enumerate(records):
        row.paste(Image.open(VAL.parent / record["images"][0]).convert("RGB").resize((TILE, TILE)),
                  (i * (TILE + GAP), 0))
    return row


def samples_picture(run: Path) -> Image.Image:
    grids = sorted((run / "samples").glob("step-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    if len(grids) < 2:
        raise SystemExit(f"{run}/samples: need the grids of two evaluations (the demo evaluates at step 0 and 60)")
    first, last = grids[0], grids[-1]
    columns = (Image.open(first).width + GAP) // (TILE + GAP)
    rows = [("held-out shot", shots_row(columns)), ("its VQ codes,\ndecoded", grid_row(first, 0)),
            (f"sampled at\n{first.stem.replace('-', ' ')}", grid_row(first, 1)),
            (f"sampled at\n{last.stem.replace('-', ' ')}", grid_row(last, 1))]
    width = LABEL_WIDTH + rows[0][1].width * SCALE
    sheet = Image.new("RGB", (width, len(rows) * (TILE * SCALE + GAP * SCALE)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(15)
    for i, (label, row) in enumerate(rows):
        y = i * (TILE + GAP) * SCALE
        sheet.paste(row.resize((row.width * SCALE, row.height * SCALE), Image.Resampling.NEAREST), (LABEL_WIDTH, y))
        draw.multiline_text((8, y + TILE * SCALE // 2), label, fill="black", font=font, anchor="lm")
    return sheet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished demo run (default: run the demo now, in a temp dir)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            from janus_ft.cli import main as janus_ft

            run = Path(tmp) / "demo"
            if janus_ft(["sft", "--recipe", str(REPO / "recipes" / "demo.yaml"), f"output_dir={run}"]) != 0:
                return 1
        # An adaptive palette keeps each picture a few tens of KB in git.
        Image.open(run / "loss.png").convert("RGB").quantize(colors=64).save(OUT / "demo_loss.png", optimize=True)
        samples_picture(run).quantize(colors=128).save(OUT / "demo_samples.png", optimize=True)
    print("wrote", OUT / "demo_loss.png", OUT / "demo_samples.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
