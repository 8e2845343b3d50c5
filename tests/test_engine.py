"""`janus_ft.Janus` (infer/engine.py): `chat` equals `janus-ft chat` (greedy text) and `draw` equals
`janus-ft generate` (seeded pixels, exactly), with adapters; several adapters on one base, switched
by name or per call, answer as each alone does; PIL images equal their files; `tiny` is built."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_adapter, write_jsonl
from PIL import Image

from janus_ft.cli import main
from janus_ft.errors import UserError
from janus_ft.infer.engine import Janus

SAMPLES = Path(__file__).resolve().parent.parent / "data_templates" / "samples"
IMAGE = SAMPLES / "images" / "shape_0049.png"
QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    """Two LoRA adapters with random non-zero weights on the paths chat and draw use."""
    root = tmp_path_factory.mktemp("engine")
    return [random_adapter(tiny_dir, ["llm", "aligner", "gen_head", "gen_aligner"], root / name, seed=seed)
            for name, seed in (("one", 4), ("two", 5))]


@pytest.fixture(scope="module")
def janus(tiny_dir, adapters):
    j = Janus.load(str(tiny_dir), adapter=adapters[0])
    assert j.load_adapter(adapters[1]) == "two" and j.active == "one"
    return j


def test_chat_equals_janus_ft_chat(janus, tiny_dir, adapters, tmp_path, capsys):
    for name, flags in (("one", ["--adapter", str(adapters[0])]), ("base", [])):
        capsys.readouterr()
        assert main(["chat", "--model", str(tiny_dir), *flags, "--image", str(IMAGE), "--prompt", QUESTION,
                     "--system", "Be brief.", "--max-new-tokens", "8", "--no-stream"]) == 0
        got = janus.chat(QUESTION, images=[IMAGE], system="Be brief.", max_new_tokens=8, adapter=name)
        assert got == capsys.readouterr().out.strip() and got
    # With history: as `janus-ft chat --jsonl` answers a record's last query after its history.
    src = write_jsonl(tmp_path / "in.jsonl", [{"query": QUESTION, "response": ".", "history": [["hi", "hello"]],
                                              "images": [str(IMAGE)]}])
    assert main(["chat", "--adapter", str(adapters[0]), "--jsonl", str(src), "--output", str(tmp_path / "out.jsonl"),
                 "--max-new-tokens", "8"]) == 0
    predicted = json.loads((tmp_path / "out.jsonl").read_text())["prediction"]
    assert janus.chat(QUESTION, images=[IMAGE], history=[("hi", "hello")], adapter="one", max_new_tokens=8) == predicted
    assert janus.chat(QUESTION, images=[IMAGE], adapter="one", max_new_tokens=8) \
        != janus.chat(QUESTION, images=[IMAGE], adapter="base", max_new_tokens=8)


def test_draw_equals_janus_ft_generate(janus, tiny_dir, adapters, tmp_path):
    images = janus.draw("a red square", n=2, cfg=4.0, seed=7, adapter="one")
    assert main(["generate", "--model", str(tiny_dir), "--adapter", str(adapters[0]), "--prompt", "a red square",
                 "--output", str(tmp_path), "--n", "2", "--cfg", "4", "--seed", "7"]) == 0
    for i, image in enumerate(images):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / f"{i}.png")))
    base = janus.draw("a red square", n=2, cfg=4.0, seed=7, adapter="base")
    assert not np.array_equal(np.asarray(base[0]), np.asarray(images[0]))


def test_adapters_switch_by_name_and_answer_as_each_alone(janus, tiny_dir, adapters):
    alone = Janus.load(str(tiny_dir), adapter=adapters[1])
    want = alone.chat(QUESTION, images=[IMAGE], max_new_tokens=8)
    want_image = alone.draw("a blue circle", seed=3)[0]
    assert janus.use("two").chat(QUESTION, images=[IMAGE], max_new_tokens=8) == want
    assert np.array_equal(np.asarray(janus.draw("a blue circle", seed=3)[0]), np.asarray(want_image))
    janus.use("one")
    assert janus.chat(QUESTION, images=[IMAGE], max_new_tokens=8, adapter="two") == want
    plain = Janus.load(str(tiny_dir))
    assert janus.chat(QUESTION, images=[IMAGE], max_new_tokens=8, adapter="base") == \
        plain.chat(QUESTION, images=[IMAGE], max_new_tokens=8)
    assert janus.active == "one" and janus.names == ["base", "one", "two"]


def test_pil_images_answer_as_their_files(janus):
    pil = Image.open(IMAGE)
    assert janus.chat(QUESTION, images=[pil], max_new_tokens=8) == janus.chat(QUESTION, images=[IMAGE], max_new_tokens=8)
    assert janus.chat(QUESTION, images=pil, max_new_tokens=8) == janus.chat(QUESTION, images=[str(IMAGE)], max_new_tokens=8)


def test_errors_name_the_parameter(janus, tmp_path):
    with pytest.raises(UserError, match="no adapter named 'three' is loaded"):
        janus.chat("hi", adapter="three")
    with pytest.raises(UserError, match="images\\[0\\] .*nothing.png: file not found"):
        janus.chat("hi", images=[tmp_path / "nothing.png"])
    with pytest.raises(UserError, match="temperature 0 is greedy"):
        janus.draw("a fox", n=2, temperature=0.0)
    with pytest.raises(UserError, match="the instruction is empty: an edit needs an instruction"):
        janus.draw("  ", images=[IMAGE])
    with pytest.raises(UserError, match="image_cfg must be >= 0"):
        janus.draw("make it red", images=[IMAGE], image_cfg=-1)
    with pytest.raises(UserError, match="adapter name 'one' is taken"):
        janus.load_adapter(janus.adapters["two"], name="one")
    with pytest.raises(UserError, match="give path"):
        Janus.load()


def test_tiny_is_built_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("JANUS_FT_CACHE", str(tmp_path / "cache"))
    j = Janus.load("tiny")
    assert (tmp_path / "cache/tiny-janus-pro/janus_ft_tiny.json").is_file()
    assert j.chat("hi", max_new_tokens=2) == Janus.load("tiny").chat("hi", max_new_tokens=2)
