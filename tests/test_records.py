"""Record shapes, task inference and every kind of bad record (file:line, field)."""

import json
from pathlib import Path

import pytest

from janus_ft.data.records import parse_line, parse_record, read_records
from janus_ft.errors import BadRecord


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
    ({"query": "<image>q", "response": "<image> now", "images": ["a.png", "b.png"]}, "response", "an edit record has one turn"),
    ({"query": "<image> ", "response": "<image>", "images": ["a.png", "b.png"]}, "query", "needs an instruction"),
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


# --- hostile files: each case below was a traceback before (tests/test_fuzz.py searches for more) ---

def _file(tmp_path, data: bytes) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    return path


def _both_ways(path):
    """(records, errors) the way `data check` reads, plus training's first error (or None)."""
    from janus_ft.data.dataset import load_records

    errors = []
    records = load_records([path], errors)
    try:
        load_records([path])
        first = None
    except BadRecord as err:
        first = err
    return records, errors, first


GOOD_LINE = b'{"query": "q", "response": "r"}'


@pytest.mark.parametrize("data,line,words", [
    (GOOD_LINE + b'\n{"query": "caf\xe9", "response": "r"}\n' + GOOD_LINE, 2,
     "not valid UTF-8 (byte 0xe9) at column 15"),
    (b"\xff\xfe{\x00}\x00\n", 1, "not valid UTF-8 (byte 0xff) at column 1"),
    (b'{"query": "q", "response": 1' + b"1" * 5000 + b"}", 1, "malformed JSON (Exceeds the limit"),
    (b"[" * 100_000, 1, "malformed JSON (nested too deeply)"),
    (b'{"query": "q", "response": "\\ud800"}', 1, "field 'response': contains a lone UTF-16 surrogate"),
    (b'{"query": "q", "response": "r", "history": [["\\udcff", "a"]]}', 1, "field 'history[0]': contains a lone"),
    (b'{"query": "q", "response": "see <image_placeholder>"}', 1,
     "field 'response': contains <image_placeholder>"),
    (b'{"query": "a <begin_of_image> fox", "response": "<image>", "images": ["f.png"]}', 1,
     "field 'query': contains <begin_of_image>"),
    (b'{"messages": [{"role": "user", "content": "<end_of_image>"}, {"role": "assistant", "content": "a"}]}', 1,
     "field 'messages[0].content': contains <end_of_image>"),
    (b'{"query": "q", "response": "r", "system": "<image_placeholder>"}', 1, "field 'system': contains"),
])
def test_hostile_lines_are_bad_records(tmp_path, data, line, words):
    path = _file(tmp_path, data)
    records, errors, first = _both_ways(path)
    assert [str(e) for e in errors if e.line == line] and str(first) == str(errors[0])
    assert str(errors[0]).startswith(f"{path}:{line}: ") and words in str(errors[0]), str(errors[0])
    assert len(records) == data.count(GOOD_LINE)  # the other lines still count


def test_huge_values_are_not_echoed_whole(tmp_path):
    for obj in ({"query": "q", "response": "r", "task": "x" * 10**6},
                {"messages": [{"role": ["y"] * 10**5, "content": "c"}]}):
        with pytest.raises(BadRecord) as err:
            parse(obj)
        assert len(str(err.value)) < 300 and "characters)" in str(err.value)


def test_bom_unescaped_separators_and_crlf_are_fine(tmp_path):
    """A BOM (Windows editors, and mid-file when files were concatenated), U+2028 / U+0085 left raw
    by `ensure_ascii=False` (str.splitlines() would cut the record in two) and CRLF line ends."""
    rec = json.dumps({"query": "a\u2028b\x85c", "response": "r"}, ensure_ascii=False)
    path = _file(tmp_path, ("\ufeff" + rec + "\r\n\r\n\ufeff" + rec + "\r\n").encode())
    records, errors, first = _both_ways(path)
    assert not errors and first is None
    assert [(r.line, r.turns[0][0]) for r in records] == [(1, "a\u2028b\x85c"), (3, "a\u2028b\x85c")]
    assert [r.line for r in read_records(path)] == [1, 3]


def test_unreadable_files_are_bad_records(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    for path in (tmp_path / "dir.jsonl", tmp_path / ("x" * 5000 + ".jsonl")):
        with pytest.raises(BadRecord, match="file not found"):
            list(read_records(path))
        records, errors, first = _both_ways(path)
        assert not records and "file not found" in str(errors[0]) and str(first) == str(errors[0])

