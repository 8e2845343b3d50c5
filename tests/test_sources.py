"""Data sources besides JSONL: Parquet, Arrow, CSV, imagefolder and saved datasets (built here,
offline), hub ids through `datasets.load_dataset`, column maps, `#N` and max_samples. The same
records read from any of them train exactly as their JSONL lines do."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from conftest import write_jsonl
from PIL import Image

from janus_ft.cli import main
from janus_ft.data.dataset import JanusDataset, load_records
from janus_ft.data.images import open_rgb
from janus_ft.data.sources import read_source, sample_indices
from janus_ft.errors import BadRecord, RecipeError
from janus_ft.recipe import DataSource, load_recipe, parse_source

REPO = Path(__file__).resolve().parent.parent
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
# All three tasks and every field a flat table can hold (CSV cannot hold lists: see FLAT).
RECORDS = [
    {"query": "<image>What colour is it?", "response": "red", "images": ["img/red.png"]},
    {"query": "<image><image>Which is brighter?", "response": "The second.", "images": ["img/blue.png", "img/green.png"],
     "system": "Answer in one sentence."},
    {"query": "And now?", "response": "Still green.", "history": [["Hi", "Hello"]], "system": ""},
    {"query": "Say hello", "response": "hello"},
    {"query": "a green square", "response": "<image>", "images": ["img/green.png"]},
]
FLAT = [0, 3, 4]   # the records with at most one image and no history


def png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def columns_of(rows: list[dict]) -> dict[str, list]:
    """Rows -> columns, with None where a row lacks a field (how tables hold optional fields)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k) for row in rows] for k in keys}


def with_images(rows: list[dict], root: Path, mode: str) -> datasets.Dataset:
    """The records as a Dataset whose `images` hold relative paths, encoded bytes, or `datasets.Image`
    values (PIL images that `datasets` encodes)."""
    def convert(rel):
        if mode == "paths":
            return rel
        return (root / rel).read_bytes() if mode == "bytes" else Image.open(root / rel).convert("RGB")

    rows = [dict(r, images=[convert(x) for x in r["images"]]) if "images" in r else r for r in rows]
    ds = datasets.Dataset.from_dict(columns_of(rows))
    return ds.cast_column("images", datasets.List(datasets.Image())) if mode == "image" else ds


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    (root / "img").mkdir()
    for name, colour in COLOURS.items():
        (root / "img" / f"{name}.png").write_bytes(png_bytes(colour))
    write_jsonl(root / "records.jsonl", RECORDS)
    (root / "array.json").write_text(json.dumps(RECORDS))   # LLaVA-style: one JSON array
    with_images(RECORDS, root, "paths").to_parquet(root / "paths.parquet")
    with_images(RECORDS, root, "bytes").to_parquet(root / "bytes.parquet")
    image = with_images(RECORDS, root, "image")
    datasets.DatasetDict({"train": image, "validation": image.select([0])}).save_to_disk(root / "saved")
    shutil.copy(next((root / "saved" / "train").glob("*.arrow")), root / "image.arrow")
    # CSV: a flat table with its own column names, mapped onto record fields.
    flat = [RECORDS[i] for i in FLAT]
    with (root / "flat.csv").open("w") as f:
        f.write("prompt,answer,file\n" + "".join(
            f"{r['query']},{r['response']},{r['images'][0] if 'images' in r else ''}\n" for r in flat))
    write_jsonl(root / "flat.jsonl", flat)
    # imagefolder: image files + metadata, (image, text) rows that get one constant query.
    folder = root / "folder"
    (folder / "img").mkdir(parents=True)
    for name in COLOURS:
        shutil.copy(root / "img" / f"{name}.png", folder / "img" / f"{name}.png")
    names = sorted(COLOURS)   # the order imagefolder lists files in
    write_jsonl(folder / "metadata.jsonl", [{"file_name": f"img/{n}.png", "text": n} for n in names])
    write_jsonl(folder / "expected.jsonl", [{"query": "<image>Colour?", "response": n, "images": [f"img/{n}.png"]}
                                            for n in names])
    write_jsonl(folder / "expected_t2i.jsonl", [{"query": n, "response": "<image>", "images": [f"img/{n}.png"]}
                                                for n in names])
    return root


SOURCES = {   # name -> (source entry, the JSONL file holding the same records)
    "json-array": ({"path": "array.json"}, "records.jsonl"),
    "parquet-paths": ({"path": "paths.parquet"}, "records.jsonl"),
    "parquet-bytes": ({"path": "bytes.parquet"}, "records.jsonl"),
    "arrow-image": ({"path": "image.arrow"}, "records.jsonl"),
    "saved-dataset": ({"path": "saved", "split": "train"}, "records.jsonl"),
    "csv-columns": ({"path": "flat.csv", "columns": {"query": "prompt", "response": "answer", "images": "file"}},
                    "flat.jsonl"),
    "imagefolder": ({"path": "folder", "columns": {"images": "image", "response": "text"}, "query": "<image>Colour?"},
                    "folder/expected.jsonl"),
    "imagefolder-t2i": ({"path": "folder", "columns": {"images": "image", "query": "text"}, "response": "<image>"},
                        "folder/expected_t2i.jsonl"),
}


def source(root: Path, entry: dict) -> DataSource:
    return parse_source(dict(entry, path=str(root / entry["path"])), "test")


def samples(records, processor) -> list[dict]:
    ds = JanusDataset(records, processor, "janus-pro", max_length=10**6)
    assert len(ds) == len(records)
    return [ds.sample(i) for i in range(len(ds))]


@pytest.mark.parametrize("name", SOURCES)
def test_a_source_gives_the_tokens_and_pixels_of_its_jsonl(name, data, tiny_processor):
    entry, reference = SOURCES[name]
    records = read_source(source(data, entry))
    expected = load_records([data / reference])
    assert [r.line for r in records] == [f"row {i}" for i in range(len(expected))]
    assert [(r.task, r.turns, r.system) for r in records] == [(r.task, r.turns, r.system) for r in expected]
    for got, want in zip(samples(records, tiny_processor), samples(expected, tiny_processor), strict=True):
        assert got.keys() == want.keys()
        assert got["input_ids"].tolist() == want["input_ids"].tolist()
        assert got["labels"].tolist() == want["labels"].tolist()
        if "pixel_values" in got:
            assert torch.equal(got["pixel_values"], want["pixel_values"])
    for got, want in zip(records, expected, strict=True):   # generation targets: the same pixels
        for a, b in zip(got.images, want.images, strict=True):
            assert np.array_equal(np.asarray(open_rgb(a)), np.asarray(open_rgb(b)))


def test_images_that_are_data_are_stored_once_by_content(data):
    records = read_source(source(data, {"path": "bytes.parquet"}))
    green = [p for r in records for p in r.images if p.read_bytes() == (data / "img/green.png").read_bytes()]
    assert len(green) == 2 and green[0] == green[1]   # two rows, one file
    assert green[0].parent.parent.name == "images" and green[0].name.startswith(green[0].parent.name)
    paths = read_source(source(data, {"path": "paths.parquet"}))   # paths: relative to the file, not copied
    assert paths[0].images == [data / "img/red.png"]


def test_image_paths_in_a_directory_source_are_relative_to_it(data, tmp_path):
    saved = tmp_path / "saved_paths"
    with_images(RECORDS[:1], data, "paths").save_to_disk(saved)
    shutil.copytree(data / "img", saved / "img")
    assert read_source(source(tmp_path, {"path": "saved_paths"}))[0].images == [saved / "img/red.png"]


def test_sample_and_max_samples_take_the_rows_ms_swift_would(data):
    rows = write_jsonl(data / "ten.jsonl", [{"query": f"q{i}", "response": f"r{i}"} for i in range(10)])
    datasets.Dataset.from_json(str(rows)).to_parquet(data / "ten.parquet")
    for path, first in ((data / "ten.parquet", "row 0"), (rows, 1)):
        picked = load_records([f"{path}#4"])
        assert [r.turns[0][0] for r in picked] == [f"q{i}" for i in sample_indices(10, 4, seed=42)]
        assert [r.turns[0][0] for r in load_records([f"{path}#4"], seed=7)] != [r.turns[0][0] for r in picked]
        many = Counter(r.turns[0][0] for r in load_records([f"{path}#25"]))
        assert sum(many.values()) == 25 and sorted(many.values()) == [2] * 5 + [3] * 5   # all twice, 5 a third time
        first3 = read_source(parse_source({"path": str(path), "max_samples": 3}, "t"))
        assert [r.turns[0][0] for r in first3] == ["q0", "q1", "q2"] and first3[0].line == first
    assert sample_indices(10, 4, seed=42) == sorted(set(sample_indices(10, 4, seed=42)))   # distinct rows


def test_csv_cells_are_text(data):
    """CSV has no types: an answer of 3.10 or 007 is the text written, not a number."""
    (data / "numbers.tsv").write_text("query\tresponse\nHow long?\t3.10\nWhich agent?\t007\n")
    assert [r.turns for r in read_source(source(data, {"path": "numbers.tsv"}))] == [
        [("How long?", "3.10")], [("Which agent?", "007")]]


def test_only_the_rows_taken_are_read(data):
    path = write_jsonl(data / "tail.jsonl", [{"query": "q", "response": "r"}] * 3 + ['{"broken'])
    assert len(read_source(parse_source({"path": str(path), "max_samples": 3}, "t"))) == 3
    with pytest.raises(BadRecord, match="tail.jsonl:4: malformed JSON"):
        read_source(parse_source(str(path), "t"))


@pytest.fixture(scope="module")
def bad_parquet(data):
    red = png_bytes(COLOURS["red"])
    rows = [{"query": "<image>Colour?", "response": "red", "images": [red]},
            {"query": "<image>Colour?", "response": " ", "images": [red]},
            {"query": "<image>Colour?", "response": "red", "images": [b"\x89PNG\r\n\x1a\nnot really"]},
            {"query": "Hi", "response": "Hello"}]
    datasets.Dataset.from_dict(columns_of(rows)).to_parquet(data / "bad.parquet")
    datasets.Dataset.from_dict({"query": ["<image>Colour?"], "response": ["red"], "images": [["img/missing.png"]]}
                               ).to_parquet(data / "missing_image.parquet")
    return data / "bad.parquet", data / "missing_image.parquet"


def test_data_check_lists_every_bad_row(bad_parquet, capsys):
    path, missing = bad_parquet
    assert main(["data", "check", str(path), str(missing)]) == 2
    captured = capsys.readouterr()
    # rows 1 (empty response) and 2 (broken image) are bad: counted as neither task
    assert f"{path}: 2 valid record(s): understanding 1, text 1, generation 0" in captured.out
    bad = [line for line in captured.err.splitlines() if line.startswith("bad record: ")]
    assert bad[0] == f"bad record: {path}:row 1: field 'response': is empty"
    assert bad[1].startswith(f"bad record: {path}:row 2: field 'images[0]': cannot read image (")
    assert bad[2].startswith(f"bad record: {missing}:row 0: field 'images[0]': image not found: {missing.parent}/img/missing.png")
    assert len(bad) == 3 and "3 bad record(s)" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("entry,message", [
    ({"path": "paths.parquet", "columns": {"images": "img"}},
     "paths.parquet: field 'columns.images': no column 'img' (columns: query, response, images, system, history)"),
    ({"path": "folder"}, "folder: no query, response or messages column (columns: image, text); map them with columns"),
    ({"path": "saved"}, "saved: has splits train, validation: choose one with split"),
    ({"path": "saved", "split": "test"}, "saved: no split 'test' (splits: train, validation)"),
    ({"path": "nothing.parquet"}, "nothing.parquet: file not found"),
    ({"path": "records.jsonl", "split": "train"}, "records.jsonl: split and name select from a `datasets` source"),
    ({"path": "corrupt.parquet"}, "corrupt.parquet: cannot load: Parquet file size is 4 bytes"),
])
def test_a_source_that_cannot_be_read_is_one_clear_error(data, capsys, entry, message, tmp_path):
    (data / "corrupt.parquet").write_text("junk")
    with pytest.raises((BadRecord, RecipeError)) as err:
        read_source(source(data, entry))
    assert str(err.value).startswith(f"{data}/{message}")
    recipe = tmp_path / "r.yaml"   # the same through `janus-ft sft`: exit 2 before any weight loads
    recipe.write_text(yaml.safe_dump({"data": {"train": [dict(entry, path=str(data / entry["path"]))]},
                                      "output_dir": str(tmp_path / "out")}))
    assert main(["sft", "--recipe", str(recipe)]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("override,message", [
    ("data.train=[{path: a.parquet, columns: {imgs: image}}]", "data.train[0].columns: unknown value 'imgs' "
                                                               "(did you mean 'images'?)"),
    ("data.train=[{path: a.parquet#0}]", "data.train[0].sample must be >= 1, got 0"),
    ("data.train=[{path: a.parquet#5, max_samples: 2}]", "max_samples (the first N) and sample / #N (N at random)"),
    ("data.train=[{path: a.parquet, query: q, columns: {query: prompt}}]", "query and columns.query both give"),
])
def test_source_entries_are_checked_with_the_recipe(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(None, [override])
    assert message in str(err.value)


def test_a_hub_id_goes_through_datasets_load_dataset(monkeypatch):
    """The shipped LaTeX-OCR recipe reads the hub dataset by id (offline here: `load_dataset` is
    stood in for, with rows of the dataset's own schema: an `image` and a `text` column)."""
    calls = []
    formulas = [r"\frac{a}{b}", r"x^{2}"]

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        rows = {"image": [Image.new("RGB", (40, 12), (255, 255, 255))] * 2, "text": formulas}
        return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    recipe = load_recipe(REPO / "recipes/latex_ocr.yaml")
    records = load_records(recipe.data.train + recipe.data.val)
    assert calls == [("linxy/LaTeX_OCR", "human_handwrite", "train"), ("linxy/LaTeX_OCR", "human_handwrite", "validation")]
    query = "<image>Convert the formula into LaTeX."   # what the offline generator asks too
    assert [(r.task, r.turns) for r in records[:2]] == [("understanding", [(query, f)]) for f in formulas]
    assert records[0].source == "linxy/LaTeX_OCR[train]" and records[0].line == "row 0"
    assert open_rgb(records[0].images[0]).size == (40, 12)


def test_sft_trains_on_dataset_sources_mixing_tasks_by_size(data, tmp_path, tiny_dir):
    """`janus-ft sft` on Parquet (image bytes), an imagefolder, a sampled saved dataset, an Arrow file
    (datasets.Image) and a CSV with mapped columns, with no data.mix: every task present is mixed by
    its size, and the run trains."""
    out = tmp_path / "run"
    recipe = {
        "model": {"path": "tiny"},
        "data": {"train": [{"path": str(data / "bytes.parquet")},
                           {"path": str(data / "folder"), "columns": {"images": "image", "response": "text"},
                            "query": "<image>Colour?"},
                           {"path": f"{data / 'saved'}#7", "split": "train"},
                           {"path": str(data / "image.arrow"), "max_samples": 2},
                           dict(SOURCES["csv-columns"][0], path=str(data / "flat.csv"))],
                 "max_length": 512},
        "lora": {"r": 4, "alpha": 8, "targets": ["llm", "aligner"]},
        "train": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1.0e-3, "save_steps": 100,
                  "disable_tqdm": True},
        "output_dir": str(out)}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["sft", "--recipe", str(tmp_path / "r.yaml")]) == 0
    drawn = [RECORDS[i] for i in sample_indices(5, 7, seed=42)]   # #7 of 5 rows: all, plus 2 drawn
    # parquet (all 5) + imagefolder (3) + saved #7 + arrow (first 2) + CSV (3: one of each task)
    sizes = {"understanding": 2 + 3 + sum("<image>" in r["query"] for r in drawn) + 2 + 1,
             "text": 2 + sum("images" not in r for r in drawn) + 1,
             "generation": 1 + sum(r["response"] == "<image>" for r in drawn) + 1}
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["ratios"] == sizes and mixture["samples"] == 12
    assert sum(mixture["consumed"].values()) == 12 and all(mixture["consumed"][t] >= 1 for t in sizes)
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert (out / "adapter_model.safetensors").is_file()


def test_preview_shows_a_source_exactly_as_its_jsonl(data, capsys, tiny_dir):
    def preview(*args) -> list[dict]:
        assert main(["data", "preview", *args, "--model", str(tiny_dir), "--json"]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    def rendered(rows):
        return [(r["task"], r["text"], r["input_ids"], r["labels"]) for r in rows]

    parquet = preview(str(data / "bytes.parquet"))
    assert rendered(parquet) == rendered(preview(str(data / "records.jsonl")))
    assert [r["line"] for r in parquet] == [f"row {i}" for i in range(len(RECORDS))]
    folder = preview(str(data / "folder"), "--column", "images=image", "--column", "response=text",
                     "--query", "<image>Colour?")
    assert rendered(folder) == rendered(preview(str(data / "folder/expected.jsonl")))


def test_data_check_reads_a_recipes_sources_with_its_seed(data, tmp_path, capsys, tiny_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"path": "tiny"}, "train": {"seed": 3}, "data": {"train": [
        {"path": f"{data / 'bytes.parquet'}#3"}, dict(SOURCES["imagefolder"][0], path=str(data / "folder"))]}}))
    assert main(["data", "check", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    drawn = [RECORDS[i] for i in sample_indices(5, 3, seed=3)]
    counts = [sum("<image>" in r["query"] for r in drawn), sum("images" not in r for r in drawn),
              sum(r["response"] == "<image>" for r in drawn)]
    assert f"{data / 'bytes.parquet'}: 3 valid record(s): understanding {counts[0]}, text {counts[1]}, " \
           f"generation {counts[2]}" in out
    assert f"{data / 'folder'}: 3 valid record(s): understanding 3, text 0, generation 0" in out
    assert f"6 valid record(s): understanding {counts[0] + 3}, text {counts[1]}, generation {counts[2]}" in out


def test_image_values_become_files(tmp_path):
    from janus_ft.data.sources import image_files

    def bad(field, problem):
        return BadRecord("s.parquet", "row 4", field, problem)

    red = Image.new("RGB", (5, 3), COLOURS["red"])
    stored = image_files([red, {"bytes": png_bytes(COLOURS["red"]), "path": "x.png"}, {"bytes": None, "path": "a.png"},
                          "b.png", "/abs/c.png", 7], tmp_path, bad)
    assert np.array_equal(np.asarray(open_rgb(Path(stored[0]))), np.asarray(red))   # a PIL image, losslessly
    assert Path(stored[1]).read_bytes() == png_bytes(COLOURS["red"])               # bytes win over a path
    assert stored[2:] == [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "/abs/c.png", 7]
    with pytest.raises(BadRecord) as err:
        image_files({"bytes": None, "path": None}, tmp_path, bad)
    assert str(err.value) == "s.parquet:row 4: field 'images[0]': an image value with neither bytes nor a path"
