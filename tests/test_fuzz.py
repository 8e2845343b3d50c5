"""Hostile data: any line of a JSONL file yields valid samples or a clean `BadRecord`, never a traceback.

Property-based (hypothesis) over the whole data path a training run takes: read_lines ->
parse_line -> parse_record -> render -> encode -> `JanusDataset.sample` (images included). The
suite runs a fixed, derandomised set of examples; `JANUS_FT_FUZZ_EXAMPLES=5000` runs a longer search.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from janus_ft.data.dataset import JanusDataset, load_records
from janus_ft.errors import BadRecord
from janus_ft.janus import IMAGE_TOKENS as RESERVED
from janus_ft.janus import TASKS

FUZZ = settings(max_examples=int(os.environ.get("JANUS_FT_FUZZ_EXAMPLES", "150")), deadline=None,
                derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that have broken (or could break) a parser, renderer or tokenizer.
NASTY = ["<image>", "<image><image>", " <image> ", *RESERVED, "<｜end▁of▁sentence｜>", "<|User|>", "\u2028",
         "\x85", "\ufeff", "\x00", "\ud800", "\udcff", "\r", "\n\n", "é", "🦊", "", " ", "ok.png", "bad.png",
         "missing.png", "/abs/none.png", "../ok.png", "a" * 300, "x" * 5000]
texts = st.one_of(st.text(max_size=40), st.sampled_from(NASTY),
                  st.lists(st.sampled_from(NASTY) | st.text(max_size=8), max_size=4).map("".join))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
answers = texts.map(lambda t: t + " answer") | texts  # mostly non-empty, so records get through
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=12)

image_names = st.sampled_from(["ok.png", "odd.png", "bad.png", "missing.png"])
images = st.one_of(json_values, st.lists(image_names | texts, max_size=3), image_names)
message = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["system", "user", "assistant"]) | json_values, "content": texts | json_values}))
history = st.one_of(json_values, st.lists(st.lists(texts, min_size=2, max_size=2) | json_values, max_size=3))
# Record-shaped objects: the right keys, each holding a well-typed value or anything at all.
records_like = st.fixed_dictionaries({}, optional={
    "query": texts | json_values, "response": texts | st.just("<image>") | json_values,
    "images": images, "history": history, "system": texts | json_values,
    "messages": st.lists(message, max_size=4) | json_values,
    "task": st.sampled_from(TASKS) | json_values, "caption": texts | json_values})


@st.composite
def near_valid(draw) -> dict:
    """A record of one of the documented shapes, then (half the time) one key broken or dropped:
    many of these reach rendering, tokenization and image loading."""
    names = draw(st.lists(image_names, max_size=2))
    tags = draw(st.sampled_from(["before", "after", "untagged"]))
    query = draw(texts)
    query = query if tags == "untagged" else ("<image>" * len(names) + query if tags == "before"
                                               else query + "<image>" * len(names))
    shape = draw(st.sampled_from(["query", "messages", "generation"]))
    if shape == "generation":
        obj = {"query": draw(texts), "response": "<image>", "images": [draw(image_names)]}
    elif shape == "query":
        obj = {"query": query, "response": draw(answers), "images": names,
               "history": draw(st.lists(st.tuples(texts, answers).map(list), max_size=2))}
        if draw(st.booleans()):
            obj["system"] = draw(texts)
    else:
        turns = [{"role": "system", "content": draw(texts)}] if draw(st.booleans()) else []
        for i in range(draw(st.integers(1, 2))):
            turns += [{"role": "user", "content": query if i == 0 else draw(texts)},
                      {"role": "assistant", "content": draw(answers)}]
        obj = {"messages": turns, "images": names}
    if draw(st.booleans()):
        obj["task"] = draw(st.sampled_from(TASKS))
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(obj)))
        if draw(st.booleans()):
            del obj[key]
        else:
            obj[key] = draw(json_values)
    return obj


lines = st.one_of(near_valid(), records_like, json_values)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (24, 16), (200, 30, 30)).save(root / "ok.png")
    Image.new("LA", (9, 30), (0, 128)).save(root / "odd.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00 truncated")
    return root


def _assert_clean(err: BadRecord, path: Path, lines: int) -> None:
    """The error names the file, a line that exists, and (when it has one) the field, in words."""
    msg = str(err)
    if err.line is None:   # raw lines that are all blank: the file as a whole holds no record
        assert msg == f"{path}: no records: the file is empty or holds only blank lines"
        return
    assert err.path == str(path) and 1 <= err.line <= lines, msg
    assert msg.startswith(f"{path}:{err.line}: ")
    if err.field:
        assert f"field '{err.field}':" in msg
    assert err.problem.strip() and len(msg) < 2000  # a huge value is never echoed whole


def _check_samples(records, processor, path: Path, n_lines: int) -> None:
    """Render and tokenize every record, build each sample (opening its images) and check the
    invariants the model relies on; a bad image may only surface as a clean BadRecord."""
    ds = JanusDataset(records, processor, "janus-pro", max_length=10**9)
    sp, n = ds.special, processor.num_image_tokens
    for i, ex in enumerate(ds.examples):
        n_images = len(ex.record.images)
        try:
            sample = ds.sample(i, unconditional=True)
        except BadRecord as err:
            _assert_clean(err, path, n_lines)
            assert err.field.startswith("images[") and ex.record.task == "understanding"
            continue
        ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
        assert len(ids) == len(labels) and ids[0] == sp.bos
        # Image positions are exactly the record's images: no more (typed tokens), no fewer.
        assert ex.input_ids.count(sp.image) == n * n_images
        assert ex.input_ids.count(sp.boi) == ex.input_ids.count(sp.eoi) == n_images
        if ex.record.task == "understanding":
            assert sample["pixel_values"].shape[:2] == (n_images, 3)
        else:
            assert "pixel_values" not in sample


def _run(data: bytes, data_dir: Path, processor) -> None:
    path = data_dir / "data.jsonl"
    path.write_bytes(data)
    n_lines = max(1, data.count(b"\n") + data.count(b"\r") + 1)
    errors: list[BadRecord] = []
    collected = load_records([path], errors)  # data check's way: every bad line, never a raise
    for err in errors:
        _assert_clean(err, path, n_lines)
    try:
        records = load_records([path])  # training's way: the first bad line raises
    except BadRecord as err:
        _assert_clean(err, path, n_lines)
        assert errors and str(err) == str(errors[0])
        return
    assert not errors and len(records) == len(collected)
    _check_samples(records, processor, path, n_lines)


@FUZZ
@given(obj=lines)
def test_any_json_line_is_a_sample_or_a_bad_record(obj, data_dir, tiny_processor):
    _run((json.dumps(obj) + "\n").encode(), data_dir, tiny_processor)


@FUZZ
@given(objs=st.lists(near_valid() | records_like, min_size=1, max_size=3), ascii_only=st.booleans(),
       bom=st.booleans(), blank=st.sampled_from(["", "\n", "  \n", "\r\n"]))
def test_files_of_records_any_encoding_details(objs, ascii_only, bom, blank, data_dir, tiny_processor):
    """Raw UTF-8 (U+2028 left unescaped), a BOM, blank lines and CRLF change nothing but line numbers."""
    text = blank.join(json.dumps(o, ensure_ascii=ascii_only) + "\n" for o in objs)
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate cannot be written raw: escape it as JSON would
        data = blank.join(json.dumps(o) + "\n" for o in objs).encode()
    _run(("\ufeff".encode() if bom else b"") + data, data_dir, tiny_processor)


@FUZZ
@given(raw=st.lists(st.binary(max_size=60) | st.text(max_size=30).map(str.encode)
                    | st.sampled_from([b'{"query": "q", "response": "r"}', b"\xff\xfe", b"\xef\xbb\xbf{}",
                                       b"[" * 5000, b"1" * 5000, b'{"query": "\\ud800", "response": "r"}']),
                    min_size=1, max_size=4))
def test_raw_bytes_lines_never_escape_as_tracebacks(raw, data_dir, tiny_processor):
    """Non-JSON text, invalid UTF-8, NUL bytes, deep nesting and 5000-digit numbers."""
    _run(b"\n".join(raw), data_dir, tiny_processor)
