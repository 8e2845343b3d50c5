"""GRPO prompt records: questions without a target, extra fields kept for the rewards."""

from pathlib import Path

import pytest

from janus_ft.data.prompts import parse_prompt
from janus_ft.errors import BadRecord

P = Path("p.jsonl")


def test_shapes_of_prompts():
    gen = parse_prompt({"query": "a red fox", "task": "generation", "colour": "red"}, P, 1)
    assert gen.task == "generation" and gen.record.caption == "a red fox" and gen.fields == {"colour": "red"}
    und = parse_prompt({"query": "<image>How many?", "images": ["s.png"], "solution": "3"}, P, 2)
    assert und.task == "understanding" and und.record.turns == [("<image>How many?", "")]
    assert und.fields == {"solution": "3"} and und.where == "p.jsonl:2"
    msg = parse_prompt({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                        "response": "Hello"}, P, 3)
    assert msg.task == "text" and msg.record.system == "Be brief." and msg.fields == {"response": "Hello"}


@pytest.mark.parametrize("obj, field, problem", [
    ({"query": " ", "task": "generation"}, "query", "needs a caption"),
    ({"query": "a fox", "task": "generation", "images": ["x.png"]}, "images", "has no image"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages", "end with the user"),
    ({"solution": "3"}, None, "expected 'query'"),
    ({"query": "<image><image>x", "images": ["a.png"]}, "images", "1 image(s) given but 2"),
])
def test_bad_prompts_name_line_and_field(obj, field, problem):
    with pytest.raises(BadRecord) as err:
        parse_prompt(obj, P, 7)
    assert err.value.line == 7 and err.value.field == field and problem in str(err.value)


def test_a_datasets_source_hands_its_other_columns_to_the_rewards(tmp_path):
    """A Parquet prompt set keeps `solution` (and any other column) as reward fields, as a JSONL
    line keeps every key; `columns` still renames what it maps."""
    import datasets

    from janus_ft.data.prompts import load_prompts
    from janus_ft.recipe import check_source, parse_source

    path = tmp_path / "prompts.parquet"
    datasets.Dataset.from_dict({"question": ["What is 1 + 1?", "What is 2 + 2?"], "answer": ["2", "4"],
                                "level": [1, 2]}).to_parquet(str(path))
    src = parse_source({"path": str(path), "columns": {"query": "question", "solution": "answer"}}, "data.train[0]")
    check_source(src, "data.train[0]")   # solution is a field columns may map onto
    prompts = load_prompts([src], seed=0)
    assert [p.fields for p in prompts] == [{"solution": "2", "level": 1}, {"solution": "4", "level": 2}]
    assert [p.record.turns[0][0] for p in prompts] == ["What is 1 + 1?", "What is 2 + 2?"]


def test_trl_prompt_shapes():
    """TRL's prompt-only datasets: a standard string, conversational messages (string content or
    TRL's parts, an image part placing the image as `<image>` does), `image` / `images`; every
    column but `prompt` reaches the rewards, and the rewards get the prompt as the record holds it."""
    std = parse_prompt({"prompt": "What is 2 + 2?", "solution": "4", "task": "math"}, P, 1)
    assert std.task == "text" and std.record.turns == [("What is 2 + 2?", "")] and std.record.system is None
    assert std.prompt == "What is 2 + 2?" and not std.conversational and std.fields == {"solution": "4", "task": "math"}
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    conv = parse_prompt({"prompt": messages, "image": "s.png", "solution": "3"}, P, 2)
    assert conv.task == "understanding" and conv.record.turns == [("<image>How many?", "")]
    assert conv.record.system == "Be brief." and conv.record.images == [Path("s.png")]
    assert conv.prompt == messages and conv.conversational and conv.fields == {"image": "s.png", "solution": "3"}
    gen = parse_prompt({"prompt": "a red fox", "task": "generation", "colour": "red"}, P, 3)
    assert gen.task == "generation" and gen.record.caption == "a red fox" and gen.prompt == "a red fox"
    assert gen.fields == {"task": "generation", "colour": "red"}
    # The janus_ft shapes hand the rewards their last query (the caption for generation).
    assert parse_prompt({"query": "<image>How many?", "images": ["s.png"]}, P, 4).prompt == "<image>How many?"
    assert parse_prompt({"query": "a fox", "task": "generation"}, P, 5).prompt == "a fox"


@pytest.mark.parametrize("obj, field, problem", [
    ({"prompt": 3}, "prompt", "expected a string or a list of messages"),
    ({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "prompt", "ends with the user"),
    ({"prompt": [{"role": "user", "content": [{"type": "video"}]}]}, "prompt[0].content[0]", "expected {type: text"),
    ({"prompt": "x", "image": "a.png", "images": ["b.png"]}, "image", "not both"),
    ({"prompt": [{"role": "user", "content": "x"}], "task": "generation"}, "prompt", "a caption: a string"),
    ({"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}], "image": "a.png"}, "images",
     "1 image(s) given but 2"),
])
def test_bad_trl_prompts_name_line_and_field(obj, field, problem):
    with pytest.raises(BadRecord) as err:
        parse_prompt(obj, P, 9)
    assert err.value.line == 9 and err.value.field == field and problem in str(err.value)


def test_a_trl_prompt_dataset_with_an_image_column(tmp_path):
    """TRL's VLM prompt datasets: a `prompt` column (conversational, an image part) and an `image`
    column of `datasets.Image` values; every prompt gets every column (None where it has none)."""
    import datasets
    from PIL import Image

    from janus_ft.data.prompts import load_prompts
    from janus_ft.recipe import parse_source

    red = Image.new("RGB", (8, 8), (220, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Colour?"}]}]
    ds = datasets.Dataset.from_dict({"prompt": [messages], "image": [red], "solution": ["red"]})
    ds.cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "vlm.parquet"))
    write_jsonl = tmp_path / "more.jsonl"
    write_jsonl.write_text('{"prompt": "Say hi", "level": 2}\n')
    sources = [parse_source({"path": str(tmp_path / "vlm.parquet")}, "data.train[0]"),
               parse_source({"path": str(write_jsonl)}, "data.train[1]")]
    first, second = load_prompts(sources, seed=0)
    assert first.task == "understanding" and first.record.turns == [("<image>Colour?", "")]
    assert list(Image.open(first.record.images[0]).getdata())[0] == (220, 30, 30)
    assert first.fields == {"image": [str(first.record.images[0])], "solution": "red", "level": None}
    assert second.fields == {"image": None, "solution": None, "level": 2}
