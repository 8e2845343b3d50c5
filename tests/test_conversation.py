"""Rendering: exact Janus strings for every record shape, in both formats, and parity with the
checkpoint's own chat template / processor at inference."""

from pathlib import Path

import pytest
from PIL import Image

from janus_ft.data.conversation import (
    DEFAULT_SYSTEM_PROMPT,
    content_parts,
    detect_format,
    render,
    render_text,
    user_content,
)
from janus_ft.data.records import parse_record
from janus_ft.tiny import build_tiny

E = "<｜end▁of▁sentence｜>"
SYS = DEFAULT_SYSTEM_PROMPT + "\n\n"


def rec(obj):
    return parse_record(obj, Path("/data/x.jsonl"), 1)


def text(obj, fmt="janus-pro", **kw):
    return render_text(render(rec(obj), fmt, **kw))


CASES = [
    # (record, janus-pro rendering, janus rendering)
    ({"query": "Hi", "response": "Hello!"},
     f"{SYS}<|User|>: Hi\n\n<|Assistant|>: Hello!{E}",
     f"{SYS}User: Hi\n\nAssistant: Hello!{E}"),
    ({"query": "Hi", "response": "Hello!", "system": ""},
     f"<|User|>: Hi\n\n<|Assistant|>: Hello!{E}",
     f"User: Hi\n\nAssistant: Hello!{E}"),
    ({"query": "EEEEE", "response": "FFFFF", "history": [["q1", "r1"], ["q2", "r2"]], "system": "Be brief."},
     f"Be brief.\n\n<|User|>: q1\n\n<|Assistant|>: r1{E}<|User|>: q2\n\n<|Assistant|>: r2{E}"
     f"<|User|>: EEEEE\n\n<|Assistant|>: FFFFF{E}",
     f"Be brief.\n\nUser: q1\n\nAssistant: r1{E}User: q2\n\nAssistant: r2{E}User: EEEEE\n\nAssistant: FFFFF{E}"),
    ({"query": "<image>Convert the formula into LaTeX.", "response": "\\frac{a}{b}", "images": ["1.png"]},
     f"{SYS}<|User|>: <image_placeholder>\nConvert the formula into LaTeX.\n\n<|Assistant|>: \\frac{{a}}{{b}}{E}",
     f"{SYS}User: <image_placeholder>\nConvert the formula into LaTeX.\n\nAssistant: \\frac{{a}}{{b}}{E}"),
    ({"query": "<image><image>Which is brighter?", "response": "The first.", "images": ["a.png", "b.png"]},
     f"{SYS}<|User|>: <image_placeholder>\n\n<image_placeholder>\nWhich is brighter?\n\n<|Assistant|>: The first.{E}",
     f"{SYS}User: <image_placeholder>\n\n<image_placeholder>\nWhich is brighter?\n\nAssistant: The first.{E}"),
    ({"messages": [{"role": "user", "content": "<image>What is shown?"},
                   {"role": "assistant", "content": "A cat."}], "images": ["cat.jpg"]},
     f"{SYS}<|User|>: <image_placeholder>\nWhat is shown?\n\n<|Assistant|>: A cat.{E}",
     f"{SYS}User: <image_placeholder>\nWhat is shown?\n\nAssistant: A cat.{E}"),
    ({"query": "A watercolor fox in the snow", "response": "<image>", "images": ["fox.png"], "system": "ignored"},
     "<|User|>: A watercolor fox in the snow\n\n<|Assistant|>:<begin_of_image>…<end_of_image>",
     "User: A watercolor fox in the snow\n\nAssistant:<begin_of_image>…<end_of_image>"),
]


@pytest.mark.parametrize("obj,pro,janus", CASES)
def test_exact_rendering_both_formats(obj, pro, janus):
    assert text(obj, "janus-pro") == pro
    assert text(obj, "janus") == janus


def test_images_without_tags_go_first_and_system_prompt_override():
    obj = {"query": "What is shown?", "response": "A cat.", "images": ["cat.jpg"]}
    assert text(obj, system_prompt="Custom.") == (
        f"Custom.\n\n<|User|>: <image_placeholder>\nWhat is shown?\n\n<|Assistant|>: A cat.{E}")


def test_only_answers_supervised_and_last_turn_option():
    obj = {"query": "q3", "response": "r3", "history": [["q1", "r1"], ["q2", "r2"]]}
    pieces = render(rec(obj), "janus-pro")
    assert [p.text for p in pieces if p.supervised] == [" r1", " r2", " r3"]
    last = render(rec(obj), "janus-pro", last_turn_only=True)
    assert [p.text for p in last if p.supervised] == [" r3"]


IMG = {"type": "image"}


def T(text):   # noqa: N802 - reads like the content part it builds
    return {"type": "text", "text": text}


# (record query, the content parts a user would pass at inference): images at the start, middle and
# end of a turn, one and two images, spaces and newlines around the tags.
LAYOUTS = [
    ("<image>What is shown?", [IMG, T("What is shown?")]),
    ("<image>\nWhat is shown?", [IMG, T("What is shown?")]),
    ("What is shown? <image>", [T("What is shown? "), IMG]),
    ("Look at <image> now", [T("Look at "), IMG, T(" now")]),
    ("Look at\n<image>\nnow", [T("Look at"), IMG, T("now")]),
    ("Compare <image> and <image> please", [T("Compare "), IMG, T(" and "), IMG, T(" please")]),
    ("<image><image>Which is brighter?", [IMG, IMG, T("Which is brighter?")]),
    ("Which is brighter, <image> or <image>", [T("Which is brighter, "), IMG, T(" or "), IMG]),
    ("<image> and <image>", [IMG, T(" and "), IMG]),
]


@pytest.fixture(scope="module")
def janus13_processor(tmp_path_factory):
    from transformers import JanusProcessor
    return JanusProcessor.from_pretrained(build_tiny(tmp_path_factory.mktemp("janus13"), fmt="janus"))


@pytest.mark.parametrize("fmt", ["janus-pro", "janus"])
@pytest.mark.parametrize("query,parts", LAYOUTS)
def test_images_in_text_render_like_the_chat_template(tiny_processor, janus13_processor, tmp_path, fmt,
                                                      query, parts):
    """Training prompt == the checkpoint's chat template over the content parts a user would pass,
    as strings and as token ids (images expanded; the processor adds the default system prompt),
    for both formats."""
    from janus_ft.data.dataset import JanusDataset
    from janus_ft.janus import IGNORE_INDEX

    processor = tiny_processor if fmt == "janus-pro" else janus13_processor
    n = query.count("<image>")
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (64, 48), (200, 40 * i, 30)).save(paths[-1])
    record = parse_record({"query": query, "response": "Yes.", "images": [str(p) for p in paths]},
                          tmp_path / "d.jsonl", 1)
    templated = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)
    assert content_parts(query) == parts
    assert render_text(render(record, fmt)) == f"{SYS}{templated} Yes.{E}"
    ex = JanusDataset([record], processor, fmt).examples[0]
    prompt_len = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX)
    ref = processor(text=templated, images=[Image.open(p) for p in paths] or None, return_tensors="pt")
    assert ex.input_ids[:prompt_len] == ref["input_ids"][0].tolist()


def test_mid_sentence_images_keep_their_spaces():
    """The literal layout the template gives for text around images (spaces kept, not stripped)."""
    assert user_content("Compare <image> and <image> please") == (
        "Compare \n<image_placeholder>\n and \n<image_placeholder>\n please")
    assert user_content("  <image>  Q  ") == "<image_placeholder>\n  Q"


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_prompt_ids_equal_processor_at_inference(tiny_processor, tmp_path, n_images):
    """Training prompt = inference prompt, token for token, images expanded the same way."""
    from janus_ft.data.dataset import JanusDataset
    from janus_ft.janus import IGNORE_INDEX

    paths = []
    for i in range(n_images):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40 + 20 * i, 64), (200, 10 * i, 30)).save(paths[-1])
    query = "<image>" * n_images + "Describe the picture."
    record = parse_record({"query": query, "response": "A red square.", "images": [str(p) for p in paths]},
                          tmp_path / "d.jsonl", 1)
    ds = JanusDataset([record], tiny_processor, "janus-pro")
    ex = ds.examples[0]
    prompt_len = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX)
    messages = [{"role": "user", "content": content_parts(query)}]
    prompt = tiny_processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [Image.open(p) for p in paths] or None
    ref = tiny_processor(text=prompt, images=images, return_tensors="pt")
    assert ex.input_ids[:prompt_len] == ref["input_ids"][0].tolist()
    if n_images:
        assert ds[0]["pixel_values"].shape == ref["pixel_values"].shape
        assert (ds[0]["pixel_values"] == ref["pixel_values"]).all()


def test_detect_format(tmp_path, tiny_processor):
    from transformers import JanusProcessor

    assert detect_format(tiny_processor) == "janus-pro"
    old = JanusProcessor.from_pretrained(build_tiny(tmp_path / "janus13", fmt="janus"))
    assert detect_format(old) == "janus"
    assert old.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                   add_generation_prompt=True) == "User: Hi\n\nAssistant:"
