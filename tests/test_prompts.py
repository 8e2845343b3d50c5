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
