"""Record shapes, task inference and every kind of bad record (file:line, field)."""

from pathlib import Path

import pytest

from janus_ft.errors import BadRecord
from janus_ft.records import parse_line, parse_record, read_records


def parse(obj):
    return parse_record(obj, Path("/d/data.jsonl"), 7)


@pytest.mark.parametrize("obj,task,n_turns", [
    ({"query": "<image>Convert.", "response": "x", "images": ["1.png"]}, "understanding", 1),
    ({"query": "q", "response": "r", "history": [["a", "b"], ["c", "d"]]}, "text", 3),
    ({"query": "A fox", "response": "<image>", "images": ["fox.png"]}, "generation", 1),
    ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "<image>What?"},
                   {"role": "assistant", "content": "A cat."}], "images": ["c.jpg"]}, "understanding", 1),
    ({"query": "q", "response": "r", "task": "text"}, "text", 1),
])
def test_shapes_and_task_inference(obj, task, n_turns):
    r = parse(obj)
    assert r.task == task and len(r.turns) == n_turns
    assert all(p.parent == Path("/d") for p in r.images)  # relative to the JSONL's directory


def test_messages_system_and_default():
    r = parse({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "u"},
                            {"role": "assistant", "content": "a"}]})
    assert r.system == "S"
    assert parse({"query": "q", "response": "r"}).system is None
    assert parse({"query": "q", "response": "r", "system": ""}).system == ""


@pytest.mark.parametrize("obj,field,words", [
    ([1, 2], None, "expected a JSON object"),
    ({"foo": 1}, None, "expected 'query' and 'response'"),
    ({"query": "q", "response": ""}, "response", "is empty"),
    ({"query": "q", "response": 3}, "response", "expected a string"),
    ({"query": 5, "response": "r"}, "query", "expected a string"),
    ({"query": "<image>q", "response": "r", "images": ["a.png", "b.png"]}, "images", "2 image(s) given but 1"),
    ({"query": "<image>q", "response": "<image>", "images": ["a.png", "b.png"]}, "images", "both query and response"),
    ({"query": "q", "response": "r", "images": "a.png" and [3]}, "images", "list of image paths"),
    ({"query": "q", "response": "r", "history": [["a"]]}, "history[0]", "pair of strings"),
    ({"query": "q", "response": "r", "history": "x"}, "history", "expected a list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "x"}]}, "messages", "must end with an assistant"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, "messages[1].role",
     "two user messages"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content", "expected a string"),
    ({"query": "q", "response": "r", "task": "audio"}, "task", "unknown task"),
    ({"query": "q", "response": "r", "task": "generation"}, "task", "says 'generation'"),
    ({"query": "", "response": "<image>", "images": ["a.png"]}, "query", "needs a caption"),
])
def test_bad_records_name_file_line_and_field(obj, field, words):
    with pytest.raises(BadRecord) as err:
        parse(obj)
    msg = str(err.value)
    assert msg.startswith("/d/data.jsonl:7:")
    assert words in msg
    assert err.value.field == field
    if field:
        assert f"field '{field}'" in msg


def test_malformed_json_and_missing_file(tmp_path):
    with pytest.raises(BadRecord, match=r"x.jsonl:3: malformed JSON"):
        parse_line('{"query": "q", ', tmp_path / "x.jsonl", 3)
    with pytest.raises(BadRecord, match="file not found"):
        list(read_records(tmp_path / "missing.jsonl"))
