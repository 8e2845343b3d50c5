"""Captioned images for text-to-image fine-tuning, plus a converter for your own captioned folder.

Scenes are a coloured shape on a background (plain, striped or gradient), sometimes inside a
checkerboard frame; the caption is built from the same parameters that drew the scene, so caption
and image always agree ("a small red circle on a blue striped background").

    python data_templates/captions/make_captions.py OUT_DIR --n 200 --seed 0 --size 64 --split-val 20
    python data_templates/captions/make_captions.py OUT_DIR --layout folder      # img.png + img.txt pairs
    python data_templates/captions/make_captions.py --from-folder PHOTOS/ OUT.jsonl
    python data_templates/captions/make_captions.py OUT_DIR --subjects 8 --shots 24 --noise 3

Records are generation records: the caption is the query and the response is exactly "<image>".
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data_templates/: generator_io
from generator_io import finish, parser, write_jsonl  # noqa: E402

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (240, 210, 30),
    "orange": (245, 140, 20), "purple": (140, 50, 180), "white": (250, 250, 250), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.25, 0.35), "": (0.45, 0.6), "large": (0.7, 0.8)}  # "" = not mentioned
BACKGROUNDS = ("plain", "striped", "gradient")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def sample_scene(rng: random.Random, plain: bool = False) -> dict:
    """Scene parameters; `plain` keeps captions short (normal size, solid background, no frame)."""
    fg, bg = rng.sample(list(COLOURS), 2)  # never the same colour twice: the shape must be visible
    return {"shape": rng.choice(SHAPES), "fg": fg, "bg": bg,
            "size": "" if plain else rng.choice(list(SIZES)),
            "background": "plain" if plain else rng.choice(BACKGROUNDS),
            "frame": False if plain else rng.random() < 0.25,
            "jitter": (rng.uniform(-1, 1), rng.uniform(-1, 1)), "scale": rng.random()}


def caption(scene: dict) -> str:
    """The caption is a pure function of the scene, so equal scenes always get equal captions."""
    size = f"{scene['size']} " if scene["size"] else ""
    kind = "" if scene["background"] == "plain" else f"{scene['background']} "
    frame = " with a checkerboard frame" if scene["frame"] else ""
    shape = f"{size}{scene['fg']} {scene['shape']}"
    return f"{_a(shape)} {shape} on {_a(scene['bg'])} {scene['bg']} {kind}background{frame}"


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _tint(rgb):
    # The second tone of stripes/gradients: halfway to mid-gray, visible for every colour incl. white.
    return tuple((c + 128) // 2 for c in rgb)


def draw_scene(scene: dict, size: int) -> Image.Image:
    bg, fg = COLOURS[scene["bg"]], COLOURS[scene["fg"]]
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    if scene["background"] == "striped":
        band = max(2, size // 8)
        for y in range(0, size, 2 * band):
            draw.rectangle([0, y + band, size, y + 2 * band - 1], fill=_tint(bg))
    elif scene["background"] == "gradient":
        for y in range(size):  # top is the named colour, bottom its tint
            t = y / max(1, size - 1)
            draw.line([0, y, size, y], fill=tuple(round(a + (b - a) * t) for a, b in zip(bg, _tint(bg))))
    inner = 0
    if scene["frame"]:
        cell = max(2, size // 16)
        inner = 2 * cell
        for y in range(0, size, cell):
            for x in range(0, size, cell):
                if min(x, y, size - cell - x, size - cell - y) < inner:  # a cell of the border ring
                    black = (x // cell + y // cell) % 2
                    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(0, 0, 0) if black else (255, 255, 255))
    room = size - 2 * inner  # the shape stays inside the frame
    lo, hi = SIZES[scene["size"]]
    side = room * (lo + (hi - lo) * scene["scale"])
    slack = (room - side) / 2
    x0 = inner + slack + scene["jitter"][0] * slack * 0.8
    y0 = inner + slack + scene["jitter"][1] * slack * 0.8
    box = [round(x0), round(y0), round(x0 + side), round(y0 + side)]
    if scene["shape"] == "circle":
        draw.ellipse(box, fill=fg)
    elif scene["shape"] == "square":
        draw.rectangle(box, fill=fg)
    else:
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fg)
    return img


def make_captions(out_dir, n: int = 200, seed: int = 0, size: int = 64, n_val: int | None = None,
                  layout: str = "jsonl", plain: bool = False,
                  train_name: str = "train.jsonl", val_name: str = "val.jsonl") -> tuple[Path, Path]:
    """Write `n` captioned images (the last `n_val` to val; default n // 10).

    layout="jsonl": OUT_DIR/{train,val}.jsonl + OUT_DIR/images/c_0001.png; returns the two JSONL paths.
    layout="folder": OUT_DIR/{train,val}/c_0001.png + c_0001.txt; returns the two folders, which
    `folder_to_jsonl` turns into the same records the jsonl layout writes.
    """
    n_val = n // 10 if n_val is None else n_val
    if n < 1 or not 0 <= n_val <= n or layout not in ("jsonl", "folder"):
        raise ValueError(f"need n >= 1, 0 <= n_val <= n, layout jsonl|folder; got {n}, {n_val}, {layout!r}")
    out_dir, rng = Path(out_dir), random.Random(seed)
    scenes = [sample_scene(rng, plain) for _ in range(n)]
    splits = {"train": range(1, n - n_val + 1), "val": range(n - n_val + 1, n + 1)}
    if layout == "folder":
        for split, ids in splits.items():
            (out_dir / split).mkdir(parents=True, exist_ok=True)
            for i in ids:
                draw_scene(scenes[i - 1], size).save(out_dir / split / f"c_{i:04d}.png")
                (out_dir / split / f"c_{i:04d}.txt").write_text(caption(scenes[i - 1]) + "\n", encoding="utf-8")
        return out_dir / "train", out_dir / "val"
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / train_name, "val": out_dir / val_name}
    for split, ids in splits.items():
        records = []
        for i in ids:
            rel = f"images/c_{i:04d}.png"
            draw_scene(scenes[i - 1], size).save(out_dir / rel)
            records.append({"query": caption(scenes[i - 1]), "response": "<image>", "images": [rel]})
        write_jsonl(paths[split], records)
    return paths["train"], paths["val"]


def make_subject_shots(out_dir, subjects: int = 8, shots: int = 24, n_val: int = 4, noise: int = 3,
                       seed: int = 0, size: int = 64, train_name: str = "train.jsonl",
                       val_name: str = "val.jsonl") -> tuple[Path, Path]:
    """A few subjects photographed many times, like a product-photo set: every subject is one
    plain scene with its own caption, every shot adds fresh per-pixel noise (+-`noise` levels).
    The last `n_val` shots of each subject go to val, so val images are unseen but their captions
    are not: the held-out set a style fine-tune is judged on.

    Train lists the shots subject by subject; val lists one held-out shot of every subject before
    the next, so the first few val captions (the ones an evaluation draws) are different subjects.
    """
    import numpy as np

    if subjects < 1 or not 0 <= n_val < shots or noise < 0:
        raise ValueError(f"need subjects >= 1, 0 <= n_val < shots, noise >= 0; got {subjects}, {n_val}, {shots}, {noise}")
    out_dir, rng, noise_rng = Path(out_dir), random.Random(seed), np.random.default_rng(seed)
    scenes: dict[str, dict] = {}
    while len(scenes) < subjects:  # distinct captions; at most 8 * 7 * 3 plain scenes exist
        if len(scenes) >= len(COLOURS) * (len(COLOURS) - 1) * len(SHAPES):
            raise ValueError(f"at most {len(scenes)} distinct subjects")
        scene = sample_scene(rng, plain=True)
        scenes.setdefault(caption(scene), scene)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records: dict[str, list] = {"train": [], "val": []}
    for s, (text, scene) in enumerate(scenes.items()):
        clean = np.asarray(draw_scene(scene, size), dtype=np.int16)
        for shot in range(shots):
            noisy = clean + noise_rng.integers(-noise, noise + 1, clean.shape, dtype=np.int16)
            rel = f"images/s{s:02d}_{shot:03d}.png"
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out_dir / rel)
            split = "val" if shot >= shots - n_val else "train"
            records[split].append({"query": text, "response": "<image>", "images": [rel]})
    val = records["val"]
    records["val"] = [val[s * n_val + k] for k in range(n_val) for s in range(subjects)]  # shot-major
    paths = {"train": out_dir / train_name, "val": out_dir / val_name}
    for split, recs in records.items():
        write_jsonl(paths[split], recs)
    return paths["train"], paths["val"]


def folder_to_jsonl(folder, out_jsonl) -> Path:
    """Turn a folder of `name.png` + `name.txt` pairs (searched recursively) into generation JSONL.

    Image paths are written relative to the JSONL's directory, as the dataset contract requires, so
    the JSONL can sit anywhere. An image without its caption file is an error naming the file: a
    silently skipped photo is a photo the user thinks they trained on.
    """
    folder, out_jsonl = Path(folder), Path(out_jsonl)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    missing = [str(p) for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise ValueError(f"{len(missing)} image(s) without a caption .txt next to them, e.g. {missing[0]}")
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    base = out_jsonl.parent.resolve()
    records = []
    for p in images:
        text = " ".join(p.with_suffix(".txt").read_text(encoding="utf-8").split())  # one line, no newlines
        if not text:
            raise ValueError(f"{p.with_suffix('.txt')}: empty caption")
        rel = Path(os.path.relpath(p.resolve(), base)).as_posix()
        records.append({"query": text, "response": "<image>", "images": [rel]})
    write_jsonl(out_jsonl, records)
    return out_jsonl


def main(argv=None) -> None:
    p = parser(__doc__, n=200, size=64, val_default="n // 10; with --subjects, 4 shots per subject",
               out_help="output directory; with --from-folder, the output .jsonl file")
    p.add_argument("--layout", choices=("jsonl", "folder"), default="jsonl",
                   help="jsonl: train/val.jsonl + images/; folder: train/ and val/ of img.png + img.txt")
    p.add_argument("--plain", action="store_true", help="short captions: solid backgrounds, no size words or frames")
    p.add_argument("--subjects", type=int, metavar="K",
                   help="instead: K subjects x --shots noisy photos each (last --split-val shots per subject to val)")
    p.add_argument("--shots", type=int, default=24, help="with --subjects: photos per subject")
    p.add_argument("--noise", type=int, default=3, help="with --subjects: per-pixel noise amplitude")
    p.add_argument("--from-folder", metavar="FOLDER", help="convert FOLDER of img + img.txt pairs to OUT (.jsonl)")
    args = p.parse_args(argv)

    def make():
        if args.from_folder:
            return [folder_to_jsonl(args.from_folder, args.out)]
        if args.subjects:
            n_val = 4 if args.split_val is None else args.split_val
            return make_subject_shots(args.out, args.subjects, args.shots, n_val, args.noise, args.seed, args.size)
        return make_captions(args.out, args.n, args.seed, args.size, args.split_val, args.layout, args.plain)

    finish(p, make)


if __name__ == "__main__":
    main()
