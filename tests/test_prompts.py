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
