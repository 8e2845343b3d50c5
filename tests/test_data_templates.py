"""The offline data generators and the bundled samples they produced (data_templates/)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

DATA_TEMPLATES = Path(__file__).resolve().parents[1] / "data_templates"
sys.path.insert(0, str(DATA_TEMPLATES))  # the generators are scripts, imported the way make_samples does

import make_samples  # noqa: E402
import make_shapes  # noqa: E402
from captions import make_captions  # noqa: E402
from latex_ocr import make_latex_ocr  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_record(record: dict, base: Path, size: int | None = None) -> None:
    """Contract basics: one <image> per image, each path (relative to the JSONL's dir) opens."""
    texts = [m["content"] for m in record["messages"]] if "messages" in record else \
        [record["query"], record["response"], *(t for turn in record.get("history", []) for t in turn)]
    assert sum(t.count("<image>") for t in texts) == len(record.get("images", []))
    for rel in record.get("images", []):
        assert not Path(rel).is_absolute()
        with Image.open(base / rel) as im:
            im.load()
            assert size is None or im.size == (size, size)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


GENERATORS = {
    "shapes": lambda out, seed: make_shapes.make_shapes(out, n=12, seed=seed, size=32, n_val=3),
    "latex": lambda out, seed: make_latex_ocr.make_latex_ocr(out, n=6, seed=seed, size=96, n_val=2),
    "captions": lambda out, seed: make_captions.make_captions(out, n=12, seed=seed, size=32, n_val=3),
    "captions-folder": lambda out, seed: make_captions.make_captions(out, n=6, seed=seed, n_val=2, layout="folder"),
    "subject-shots": lambda out, seed: make_captions.make_subject_shots(out, subjects=3, shots=4, n_val=1, seed=seed, size=32),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, name):
    make = GENERATORS[name]
    make(tmp_path / "a", 0), make(tmp_path / "b", 0), make(tmp_path / "c", 1)
    a, b, c = (tree(tmp_path / d) for d in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


@pytest.mark.parametrize("make, n, n_val, size", [
    (make_shapes.make_shapes, 20, 5, 40),
    (make_latex_ocr.make_latex_ocr, 5, 1, 128),
    (make_captions.make_captions, 20, 0, 48),
])
def test_counts_valid_jsonl_and_images(tmp_path, make, n, n_val, size):
    train, val = make(tmp_path, n=n, seed=3, size=size, n_val=n_val)
    assert (train, val) == (tmp_path / "train.jsonl", tmp_path / "val.jsonl")
    records = read_jsonl(train) + read_jsonl(val)
    assert [len(read_jsonl(train)), len(read_jsonl(val))] == [n - n_val, n_val]
    assert len({r["images"][0] for r in records}) == n  # one fresh image per record
    for r in records:
        check_record(r, tmp_path, size)
        assert r["response"]


def test_subject_shots_val_images_are_new_shots_of_trained_captions(tmp_path):
    import numpy as np

    train, val = make_captions.make_subject_shots(tmp_path, subjects=5, shots=6, n_val=2, noise=3, seed=4, size=32)
    train_recs, val_recs = read_jsonl(train), read_jsonl(val)
    assert (len(train_recs), len(val_recs)) == (20, 10)
    assert len({r["query"] for r in train_recs}) == 5 and {r["query"] for r in val_recs} == {r["query"] for r in train_recs}
    assert len({r["query"] for r in val_recs[:5]}) == 5   # val is shot-major: every subject before a repeat
    for r in train_recs + val_recs:
        check_record(r, tmp_path, 32)
    pixels = {r["images"][0]: np.asarray(Image.open(tmp_path / r["images"][0]), dtype=int) for r in train_recs + val_recs}
    first, second = (pixels[r["images"][0]] for r in train_recs[:2])   # two shots of subject 0
    assert 0 < np.abs(first - second).max() <= 6                       # same scene, fresh noise
    with pytest.raises(ValueError):
        make_captions.make_subject_shots(tmp_path / "x", subjects=2, shots=3, n_val=3)


def test_bundled_generation_samples_are_held_out_shots_of_trained_subjects():
    """The demo's generation validation loss can only fall if val shows new shots of trained captions."""
    samples = DATA_TEMPLATES / "samples"
    train, val = (read_jsonl(samples / name) for name in ("generation.jsonl", "generation_val.jsonl"))
    shots = Counter(r["query"] for r in train)
    assert len(shots) == 4 and set(shots.values()) == {4}
    assert Counter(r["query"] for r in val) == {caption: 2 for caption in shots}
    assert not {r["images"][0] for r in val} & {r["images"][0] for r in train}
    assert len({r["query"] for r in val[:4]}) == 4   # the 4 captions an evaluation draws: every subject


def test_shape_colour_is_the_dominant_non_background_colour(tmp_path):
    train, val = make_shapes.make_shapes(tmp_path, n=80, seed=7, size=64, n_val=0)
    records = read_jsonl(train)
    # Every question is the same text, so only the pixels can tell the answers apart...
    assert {r["query"] for r in records} == {make_shapes.QUERY}
    # ...and the labels are balanced, so chance accuracy is exactly 25%.
    assert Counter(r["response"] for r in records) == {c: 20 for c in make_shapes.COLOURS}
    for r in records:
        pixels = Counter(Image.open(tmp_path / r["images"][0]).convert("RGB").getdata())
        del pixels[make_shapes.BACKGROUND]
        rgb, count = pixels.most_common(1)[0]
        nearest = min(make_shapes.COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(make_shapes.COLOURS[c], rgb)))
        assert nearest == r["response"]
        assert count > 0.05 * 64 * 64  # the shape is big enough to see, not a stray pixel


def test_shapes_are_fast(tmp_path):
    start = time.perf_counter()
    make_shapes.make_shapes(tmp_path, n=200, seed=0, size=64, n_val=40)
    assert time.perf_counter() - start < 3


def test_every_latex_template_renders_in_mathtext_and_is_not_blank():
    import random

    renderer, rng = make_latex_ocr.Renderer(), random.Random(0)
    assert len(make_latex_ocr.TEMPLATES) >= 60
    for template in make_latex_ocr.TEMPLATES:
        for _ in range(2):  # different substitutions (Greek letters next to letters, etc.)
            latex = make_latex_ocr.sample_formula(template, rng)
            assert "@" not in latex and "#" not in latex
            img = renderer.render(latex, 96).convert("L")  # raises on anything mathtext cannot parse
            assert img.size == (96, 96) and img.getpixel((0, 0)) == 255  # white background
            assert min(img.getdata()) < 80  # black ink is there
            box = Image.eval(img, lambda v: 255 - v).getbbox()
            assert box[0] > 0 and box[1] > 0 and box[2] < 96 and box[3] < 96  # padded, not cut off


def test_captions_describe_their_scene(tmp_path):
    train, _ = make_captions.make_captions(tmp_path, n=40, seed=2, size=32, n_val=0)
    records = read_jsonl(train)
    assert {r["response"] for r in records} == {"<image>"}
    for r in records:
        words = r["query"].split()
        assert words[0] in ("a", "an") and "background" in words and " a o" not in r["query"]
    plain, _ = make_captions.make_captions(tmp_path / "plain", n=20, seed=2, n_val=0, plain=True)
    for r in read_jsonl(plain):
        assert len(r["query"].split()) == 7  # "a red circle on a blue background"


def test_folder_layout_round_trips_through_folder_to_jsonl(tmp_path):
    make_captions.make_captions(tmp_path / "j", n=10, seed=4, size=32, n_val=2)
    train_dir, val_dir = make_captions.make_captions(tmp_path / "f", n=10, seed=4, size=32, n_val=2, layout="folder")
    assert sorted(p.name for p in train_dir.glob("*.txt")) == [f"c_{i:04d}.txt" for i in range(1, 9)]
    # The JSONL may sit anywhere: paths are written relative to its own directory.
    out = make_captions.folder_to_jsonl(train_dir, tmp_path / "elsewhere" / "train.jsonl")
    converted, expected = read_jsonl(out), read_jsonl(tmp_path / "j" / "train.jsonl")
    assert [r["query"] for r in converted] == [r["query"] for r in expected]
    assert converted[0]["images"] == ["../f/train/c_0001.png"]
    for c, e in zip(converted, expected):
        check_record(c, out.parent, 32)
        assert c["response"] == "<image>"
        assert (out.parent / c["images"][0]).read_bytes() == (tmp_path / "j" / e["images"][0]).read_bytes()


def test_folder_to_jsonl_names_an_image_without_caption(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")
    with pytest.raises(ValueError, match="lonely.png"):
        make_captions.folder_to_jsonl(tmp_path, tmp_path / "out.jsonl")


@pytest.mark.parametrize("script", ["make_shapes.py", "latex_ocr/make_latex_ocr.py", "captions/make_captions.py"])
def test_cli(tmp_path, script):
    cmd = [sys.executable, str(DATA_TEMPLATES / script), str(tmp_path), "--n", "4", "--seed", "1",
           "--size", "64", "--split-val", "1"]
    subprocess.run(cmd, check=True, capture_output=True)
    assert [len(read_jsonl(tmp_path / f)) for f in ("train.jsonl", "val.jsonl")] == [3, 1]
    bad = subprocess.run(cmd[:-1] + ["9"], capture_output=True, text=True)  # more val than records
    assert bad.returncode == 2 and "n_val" in bad.stderr


def test_captions_cli_converts_a_folder(tmp_path):
    make_captions.make_captions(tmp_path, n=3, seed=0, n_val=0, layout="folder")
    script = DATA_TEMPLATES / "captions" / "make_captions.py"
    subprocess.run([sys.executable, str(script), "--from-folder", str(tmp_path / "train"), str(tmp_path / "t.jsonl")],
                   check=True, capture_output=True)
    assert len(read_jsonl(tmp_path / "t.jsonl")) == 3


def test_committed_samples_are_what_make_samples_writes(tmp_path):
    make_samples.make_samples(tmp_path)
    for folder in ("samples", "examples"):
        fresh, committed = tree(tmp_path / folder), tree(DATA_TEMPLATES / folder)
        committed.pop("README.md", None)  # the one hand-written file
        assert fresh.keys() == committed.keys(), "rerun data_templates/make_samples.py and commit"
        for name in fresh:
            if not name.endswith(".png"):
                assert fresh[name] == committed[name], name
                continue
            # Compare pixels, not PNG bytes: another Pillow/zlib may compress the same image differently.
            a, b = (Image.open(root / folder / name).convert("RGB") for root in (tmp_path, DATA_TEMPLATES))
            diff = sum(abs(x - y) for p, q in zip(a.getdata(), b.getdata()) for x, y in zip(p, q))
            # Text rendered by matplotlib may shift by a hair across FreeType versions; shapes are exact.
            tolerance = a.width * a.height * 3 * 4 if name.endswith("formula.png") else 0
            assert a.size == b.size and diff <= tolerance, name


def test_bundled_samples_cover_every_task_and_shape():
    samples = DATA_TEMPLATES / "samples"
    counts = {f: len(read_jsonl(samples / f"{f}.jsonl")) for f in
              ("understanding", "understanding_val", "text", "generation", "generation_val")}
    assert counts == {"understanding": 48, "understanding_val": 16, "text": 24, "generation": 16, "generation_val": 8}
    text = read_jsonl(samples / "text.jsonl")
    assert all("images" not in r for r in text)
    assert all(any(key in r for r in text) for key in ("history", "system", "messages"))
    for path in [*samples.glob("*.jsonl"), *(DATA_TEMPLATES / "examples").glob("*.jsonl")]:
        for r in read_jsonl(path):
            check_record(r, path.parent, 64)
    assert len(read_jsonl(DATA_TEMPLATES / "examples" / "shapes.jsonl")) == 5
    files = [p for d in ("samples", "examples") for p in (DATA_TEMPLATES / d).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 300_000  # small enough to live in git
