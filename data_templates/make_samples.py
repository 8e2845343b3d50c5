"""Regenerate the bundled sample data (data_templates/samples/) and record-shape examples (examples/).

Everything here is committed so the demo recipe and the docs work without running anything first;
this script is how those files were made, and tests/test_data_templates.py checks that rerunning it
reproduces them exactly. Change a generator or a count here, rerun, commit the result:

    python data_templates/make_samples.py
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the generators are scripts, not an installed package

from captions.make_captions import caption, draw_scene, make_subject_shots  # noqa: E402
from generator_io import write_jsonl  # noqa: E402
from latex_ocr.make_latex_ocr import Renderer  # noqa: E402
from make_shapes import COLOURS, draw_shape, make_shapes  # noqa: E402

SIZE = 64  # the embedded tiny Janus sees 64 px images; keeps the committed samples a few hundred KB


def text_records(rng: random.Random) -> list[dict]:
    """24 text-only records: plain Q/A, multi-turn `history`, explicit `system`, and `messages`.

    Arithmetic chains make the history matter: "And plus 4?" has no answer without the earlier turns.
    """
    records = []
    for _ in range(12):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        records.append({"query": f"What is {a} + {b}?", "response": str(a + b)})
    for _ in range(4):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        records.append({"query": f"And plus {c}?", "response": str(a + b + c),
                        "history": [[f"What is {a} + {b}?", str(a + b)]]})
    for colour, thing in [("yellow", "a banana"), ("green", "grass"), ("red", "a ripe tomato"), ("blue", "the sky")]:
        records.append({"system": "Answer with one word.", "query": f"What colour is {thing}?", "response": colour})
    for _ in range(4):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        records.append({"messages": [
            {"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": str(a + b)},
            {"role": "user", "content": f"And plus {c}?"}, {"role": "assistant", "content": str(a + b + c)}]})
    return records


def make_examples(out: Path) -> list[Path]:
    """One small file per record shape the dataset contract accepts, plus all of them in shapes.jsonl."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    formula = r"\frac{a}{b}"
    Renderer().render(formula, SIZE).save(out / "images" / "formula.png")
    for name, level in [("bright", 230), ("dark", 60)]:
        Image.new("RGB", (SIZE, SIZE), (level, level, level)).save(out / "images" / f"{name}.png")
    draw_shape(SIZE, "circle", COLOURS["red"], rng).save(out / "images" / "red_circle.png")
    scene = {"shape": "circle", "fg": "orange", "bg": "blue", "size": "", "background": "gradient",
             "frame": False, "jitter": (0.0, 0.0), "scale": 0.5}
    draw_scene(scene, SIZE).save(out / "images" / "generated.png")
    shapes = {
        "query_response_images": {"query": "<image>Convert the formula into LaTeX.", "response": formula,
                                  "images": ["images/formula.png"]},
        "two_images_history_system": {"query": "<image><image>Which is brighter?", "response": "The first.",
                                      "images": ["images/bright.png", "images/dark.png"],
                                      "history": [["I will show you two gray patches.", "Okay."]],
                                      "system": "You compare images. Answer in a few words."},
        "text_history": {"query": "And plus 4?", "response": "9",
                         "history": [["What is 2 + 1?", "3"], ["And plus 2?", "5"]]},
        "generation": {"query": caption(scene), "response": "<image>", "images": ["images/generated.png"]},
        "messages": {"messages": [{"role": "user", "content": "<image>What is shown?"},
                                  {"role": "assistant", "content": "A red circle."}],
                     "images": ["images/red_circle.png"]},
    }
    paths = []
    for name, record in shapes.items():
        write_jsonl(out / f"{name}.jsonl", [record])
        paths.append(out / f"{name}.jsonl")
    write_jsonl(out / "shapes.jsonl", list(shapes.values()))
    # A "folder of captioned images", the layout users bring: convert it with --from-folder.
    (out / "folder").mkdir(exist_ok=True)
    photos = [{**scene, "fg": "red", "shape": "square"}, {**scene, "fg": "yellow", "bg": "purple"}]
    for i, photo in enumerate(photos, 1):
        draw_scene(photo, SIZE).save(out / "folder" / f"photo_{i}.png")
        (out / "folder" / f"photo_{i}.txt").write_text(caption(photo) + "\n", encoding="utf-8")
    return paths + [out / "shapes.jsonl"]


def make_samples(root=ROOT) -> list[Path]:
    """Write ROOT/samples/ and ROOT/examples/ (all but examples/README.md), replacing old output."""
    samples, examples = Path(root) / "samples", Path(root) / "examples"
    # Remove previous output first: a stale image from an older, larger run would otherwise be committed.
    shutil.rmtree(samples, ignore_errors=True)
    for stale in ("images", "folder"):
        shutil.rmtree(examples / stale, ignore_errors=True)
    for stale in examples.glob("*.jsonl"):
        stale.unlink()
    samples.mkdir(parents=True)
    paths = [*make_shapes(samples, n=64, seed=0, size=SIZE, n_val=16,
                          train_name="understanding.jsonl", val_name="understanding_val.jsonl"),
             # Generation: 4 captioned subjects x 6 shots, the last 2 shots of each held out, so the
             # demo's validation loss measures what a fine-tune is for (new pictures of the subjects
             # it was taught); unrelated one-off scenes could only be memorised. Noise of +-1 level
             # varies a shot's VQ codes while keeping each PNG about 4 KB.
             *make_subject_shots(samples, subjects=4, shots=6, n_val=2, noise=1, seed=0, size=SIZE,
                                 train_name="generation.jsonl", val_name="generation_val.jsonl")]
    write_jsonl(samples / "text.jsonl", text_records(random.Random(0)))
    return paths + [samples / "text.jsonl"] + make_examples(examples)


if __name__ == "__main__":
    print("wrote", *make_samples(), sep="\n  ")
