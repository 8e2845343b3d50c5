"""Prepared rows: every source validated, rendered and tokenized once into memory-mapped Arrow files,
cached by what decides the tokens. The rows train exactly as the records do; bad records are rows
holding the error the record path raises; a second start reads the cache instead of rebuilding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_jsonl
from test_sources import RECORDS, SOURCES, data, source  # noqa: F401  (`data` is a fixture)

from janus_ft.data import prepared
from janus_ft.data.dataset import JanusDataset, load_records
from janus_ft.data.images import check_images
from janus_ft.data.prepared import Tokenization, errors_of, prepare, record_of, task_indices
from janus_ft.recipe import parse_source


def rows_of(entries, processor, num_proc=1, **kwargs):
    return prepare([parse_source(e, "t") if not hasattr(e, "path") else e for e in entries], 42,
                   Tokenization(processor, "janus-pro", **kwargs), num_proc)


def per_task(ds_rows, processor, max_length=10**6):
    return {t: JanusDataset.from_rows(ds_rows, i, processor, max_length) for t, i in task_indices(ds_rows).items() if len(i)}


def assert_same_samples(got: JanusDataset, want: JanusDataset):
    assert len(got) == len(want)
    for i in range(len(want)):
        a, b = got.sample(i), want.sample(i)
        assert a.keys() == b.keys()
        assert a["input_ids"].tolist() == b["input_ids"].tolist() and a["labels"].tolist() == b["labels"].tolist()
        if "pixel_values" in a:
            assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert [(r.task, r.turns, r.system) for r in (e.record for e in got.examples)] == \
           [(r.task, r.turns, r.system) for r in (e.record for e in want.examples)]


@pytest.mark.parametrize("name", ["jsonl", *SOURCES])
def test_prepared_rows_train_as_the_jsonl_records_do(name, data, tiny_processor):  # noqa: F811
    entry, reference = SOURCES.get(name, ({"path": "records.jsonl"}, "records.jsonl"))
    procs = 2 if name == "parquet-bytes" else 1   # two worker processes, one Arrow file each
    rows = rows_of([source(data, entry)], tiny_processor, num_proc=procs)
    records = load_records([data / reference])
    assert errors_of(rows) == [] and len(rows) == len(records) and len(rows.cache_files) == procs
    expected = {t: JanusDataset([r for r in records if r.task == t], tiny_processor, "janus-pro", 10**6)
                for t in {r.task for r in records}}
    got = per_task(rows, tiny_processor)
    assert got.keys() == expected.keys()
    for task in expected:
        assert_same_samples(got[task], expected[task])
        assert got[task].lengths().tolist() == [len(e.input_ids) for e in expected[task].examples]
    want_lines = [r.line for r in records] if name == "jsonl" else [f"row {i}" for i in range(len(records))]
    assert [record_of(r).line for r in rows] == want_lines


def test_rows_are_memory_mapped_and_long_ones_dropped_when_used(data, tiny_processor):  # noqa: F811
    rows = rows_of([{"path": str(data / "records.jsonl")}], tiny_processor)
    assert rows.cache_files and all(f["filename"].endswith(".arrow") for f in rows.cache_files)
    assert type(rows.data).__name__ == "MemoryMappedTable"
    lengths = prepared.lengths_of(rows)
    text = task_indices(rows)["text"]
    short = JanusDataset.from_rows(rows, text, tiny_processor, max_length=int(lengths[text].min()))
    assert len(short) == 1 and len(short.dropped) == 1 and short.dropped[0].line == 4 - int(np.argmin(lengths[text]))


def test_bad_records_are_rows_with_the_errors_the_record_path_gives(tmp_path, tiny_processor):
    (tmp_path / "ok.png").write_bytes(b"")   # empty: a bad image
    good = {"query": "Hi", "response": "Hello"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, '{"broken', {"query": "<image>x", "response": "y",
                       "images": ["ok.png"]}, {"query": "q", "response": " "}, good])
    with path.open("ab") as f:
        f.write(b'{"query": "caf\xe9", "response": "r"}\n')
    errors = []
    records = load_records([path], errors)
    expected = sorted(str(e) for e in errors + check_images(records))
    rows = rows_of([{"path": str(path)}], tiny_processor)
    got = errors_of(rows)
    assert sorted(str(e) for e in got) == expected and len(got) == 4
    assert [e.line for e in got] == [2, 3, 4, 6]
    assert len(task_indices(rows)["text"]) == 2


def test_a_second_start_reads_the_cache_and_a_change_rebuilds(tmp_path, tiny_processor, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS[2:4] * 3)
    builds = []
    real = prepared._build
    monkeypatch.setattr(prepared, "_build", lambda *a: builds.append(a[0].path) or real(*a))
    first = rows_of([{"path": str(path)}], tiny_processor)
    again = rows_of([{"path": str(path)}], tiny_processor)
    assert len(builds) == 1 and again.cache_files == first.cache_files
    assert again["input_ids"] == first["input_ids"]
    rows_of([{"path": str(path)}], tiny_processor, system_prompt="Be brief.")      # the tokens change
    rows_of([{"path": f"{path}#4"}], tiny_processor)                               # other records
    assert len(builds) == 3
    write_jsonl(path, RECORDS[2:4] * 2)                                             # the file changes
    assert len(rows_of([{"path": str(path)}], tiny_processor)) == 4 and len(builds) == 4
