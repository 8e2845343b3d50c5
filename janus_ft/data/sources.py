"""Sources: the files, directories and hub datasets a recipe names -> validated `Record`s.

A source is a JSONL file, read line by line (errors name `file:line`), or anything `datasets`
reads (errors name `source:row N`, N being the row's index in the source, as in `dataset[N]`):

| `path` | read with |
|---|---|
| `*.jsonl`, or an existing file with another unknown suffix | janus_ft's JSONL reader (`records`) |
| `*.parquet`, `*.arrow`, `*.csv`, `*.tsv`, `*.json` | `datasets.load_dataset(FORMAT, data_files=path)` |
| a directory written by `save_to_disk` | `datasets.load_from_disk` (memory-mapped, no copy) |
| another directory: an imagefolder, a clone of a hub repository | `datasets.load_dataset(dir, name)` |
| anything else, e.g. `owner/name` | `datasets.load_dataset(id, name)`: the hub, its local cache, or a mirror |

A row becomes record fields (`columns` maps fields onto the source's columns, `query` / `response`
give every record the same query / response) and is then validated by `records.parse_record` exactly as a JSONL line is. Image
values may be paths (relative to the source file's directory, or to the source directory), encoded
bytes, or `datasets.Image` values; images that arrive as data are stored once as files
(`images.stored_image`), so every image reaches training, `data check` and the VQ cache by path.
`max_samples` takes the first N rows; `sample` (`PATH#N`) N rows at random (`sample_indices`). Only
the rows taken are read and validated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from PIL import Image

from ..errors import BadRecord, RecipeError
from ..recipe import RECORD_FIELDS, DataSource
from .images import stored_image
from .records import Record, brief, decode_line, parse_record, read_lines

DEFAULT_SEED = 42   # train.seed's default, so `#N` picks the same rows in `data check` as in training
FILE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv", ".json": "json"}
_TEXT_FIELDS = ("query", "response", "messages", "prompt", "chosen")
_IMAGE_FIELDS = ("images", "image", "rejected_images", "source_images", "target_image")   # `image`: TRL's prompt datasets
_BATCH = 1024   # rows converted to Python at a time: bounded memory for sources of any size


def read_source(src: DataSource, seed: int = DEFAULT_SEED, errors: list | None = None,
                parse: Callable = parse_record, every_column: bool = False) -> list[Record]:
    """The records of one source. With `errors`, bad records (and a source that cannot be read)
    are collected there and skipped; without, the first one raises. `parse(fields, path, where)`
    validates a row (`records.parse_record`; preference pairs: `preference.parse_pair`).
    `every_column` keeps a `datasets` source's other columns as fields too, as a JSONL line keeps
    every key (GRPO prompts hand them to the reward functions)."""
    records: list[Record] = []
    try:
        rows = jsonl_rows(src, seed) if source_kind(src) == "jsonl" else dataset_rows(src, seed, every_column)
        for where, fields in rows:
            try:
                records.append(parse(fields(), Path(src.label), where))
            except BadRecord as err:
                if errors is None:
                    raise
                errors.append(err)
    except BadRecord as err:
        if errors is None:
            raise
        errors.append(err)
    return records


def source_kind(src: DataSource) -> str:
    """"jsonl", a `datasets` file format ("parquet", "arrow", "csv", "json"), "saved", "dir" or "hub"."""
    path = Path(src.path)
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    if _is(path, "dir"):
        return "saved" if any((path / n).is_file() for n in ("state.json", "dataset_dict.json")) else "dir"
    if path.suffix.lower() in FILE_FORMATS:
        return FILE_FORMATS[path.suffix.lower()]
    # A path that is plainly local (or a file with another suffix, read as JSONL as it always was)
    # is not a hub id to look up: if it is missing, the JSONL reader says "file not found".
    if _is(path, "file") or path.is_absolute() or src.path.startswith((".", "~")):
        return "jsonl"
    return "hub"


def _is(path: Path, kind: str) -> bool:
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except (OSError, ValueError):   # a name too long for the file system, an embedded NUL byte
        return False


def sample_indices(n_rows: int, n: int, seed: int) -> list[int]:
    """The rows `#N` takes, as ms-swift takes them: every row N // n_rows times, plus N % n_rows
    distinct rows drawn at random (numpy's `RandomState(seed)`), in the source's order.

    >>> sample_indices(10, 4, seed=42)
    [0, 1, 5, 8]
    >>> sample_indices(3, 7, seed=0)    # more than the source holds: all twice, one more at random
    [0, 0, 1, 1, 2, 2, 2]
    """
    import numpy as np

    repeats, rest = divmod(n, n_rows)
    drawn = np.random.RandomState(seed).permutation(n_rows)[:rest].tolist()
    return sorted(list(range(n_rows)) * repeats + drawn)


def taken_rows(n_rows: int, src: DataSource, seed: int) -> list[int]:
    if src.sample is not None:
        return sample_indices(n_rows, src.sample, seed)
    return list(range(min(n_rows, src.max_samples or n_rows)))


def map_fields(obj, columns: dict[str, str], constants: dict[str, str]):
    """One row's record fields: a column mapped onto a field becomes that field (and only that:
    `{response: query}` moves the column), the row's other fields stay, `constants` (a source's
    `query` / `response`) are every record's.

    >>> map_fields({"image": "a.png", "text": "x^2", "id": 7}, {"images": "image", "response": "text"},
    ...            {"query": "<image>OCR"})
    {'id': 7, 'images': 'a.png', 'response': 'x^2', 'query': '<image>OCR'}
    """
    if not isinstance(obj, dict) or (not columns and not constants):
        return obj
    out = {k: v for k, v in obj.items() if k not in columns.values()}
    out.update({fld: obj[col] for fld, col in columns.items() if col in obj})
    return out | constants


def _constants(src: DataSource) -> dict[str, str]:
    return {k: getattr(src, k) for k in ("query", "response") if getattr(src, k) is not None}


def jsonl_rows(src: DataSource, seed: int) -> Iterator[tuple[int, Callable]]:
    if src.split or src.name:
        raise RecipeError(f"{src.path}: split and name select from a `datasets` source; a JSONL file has neither")
    path = Path(src.path)
    if src.sample is None:   # the first lines, read as they come (a stream never holds the file)
        for k, (number, text) in enumerate(read_lines(path)):
            if src.max_samples is not None and k >= src.max_samples:
                return
            yield number, partial(jsonl_fields, text, path, number, src)
        return
    lines = list(read_lines(path))   # a missing, unreadable or empty file is a BadRecord here
    for i in taken_rows(len(lines), src, seed):
        number, text = lines[i]
        yield number, partial(jsonl_fields, text, path, number, src)


def jsonl_fields(text: str, path: Path, number: int, src: DataSource):
    return map_fields(decode_line(text, path, number), src.columns, _constants(src))


def dataset_rows(src: DataSource, seed: int, every_column: bool = False) -> Iterator[tuple[str, Callable]]:
    dataset, base = open_dataset(src)
    if len(dataset) == 0:
        raise BadRecord(src.label, None, None, "no records: the dataset has no rows")
    needed = needed_columns(dataset.column_names, src)
    if not every_column:
        dataset = dataset.select_columns(needed)
    taken = taken_rows(len(dataset), src, seed)
    if taken != list(range(len(dataset))):
        dataset = dataset.select(taken)
    # Arrow rows, not decoded ones: a `datasets.Image` stays {"bytes", "path"} instead of being
    # decoded here and again when the sample is built.
    arrow = dataset.with_format("arrow")
    for start in range(0, len(taken), _BATCH):
        for offset, row in enumerate(arrow[start:start + _BATCH].to_pylist()):
            where = f"row {taken[start + offset]}"
            yield where, partial(dataset_fields, row, base, src, where)


def dataset_fields(row: dict, base: Path, src: DataSource, where: str):
    # A column a row leaves empty (null) is a field the record does not have, as in JSONL.
    fields = map_fields({k: v for k, v in row.items() if v is not None}, src.columns, _constants(src))
    for key in _IMAGE_FIELDS:
        if key in fields:
            fields[key] = image_files(fields[key], base, partial(BadRecord, src.label, where), key)
    return fields


def needed_columns(names: list[str], src: DataSource) -> list[str]:
    """The source's columns that become record fields; a mapped column that does not exist, or a
    source with nothing to read a conversation from, is one error for the source, not one per row."""
    for fld, col in src.columns.items():
        if col not in names:
            raise BadRecord(src.label, None, f"columns.{fld}", f"no column {col!r} (columns: {', '.join(names)})")
    constants = _constants(src)
    own = [c for c in names if c in RECORD_FIELDS and c not in src.columns and c not in constants]
    fields = set(own) | set(src.columns) | set(constants)
    if not fields & set(_TEXT_FIELDS):
        raise BadRecord(src.label, None, None, f"no query, response or messages column (columns: {', '.join(names)}); "
                        "map them with columns, e.g. columns: {response: text}")
    return sorted(set(own) | set(src.columns.values()), key=names.index)


def image_files(value, base: Path, bad, key: str = "images") -> list:
    """A row's images -> the file paths records hold. Paths are taken relative to `base`; encoded
    bytes, PIL images and the bytes of `datasets.Image` values ({"bytes", "path"}) are stored as
    files. Anything else is passed on for `parse_record` to reject with its usual message."""
    out = []
    for i, item in enumerate(value if isinstance(value, list) else [value]):
        if isinstance(item, dict) and item and set(item) <= {"bytes", "path"}:
            if not item.get("bytes") and not item.get("path"):
                raise bad(f"{key}[{i}]", "an image value with neither bytes nor a path")
            item = item.get("bytes") or item["path"]
        if isinstance(item, (bytes, bytearray, Image.Image)):
            item = str(stored_image(bytes(item) if isinstance(item, bytearray) else item))
        elif isinstance(item, str) and item and not Path(item).is_absolute():
            item = str(base / item)
        out.append(item)
    return out


def open_dataset(src: DataSource):
    """(the `datasets.Dataset` of the source's split, the directory image paths are relative to)."""
    import datasets

    kind, path = source_kind(src), Path(src.path)
    if kind in FILE_FORMATS.values() and not path.is_file():
        raise BadRecord(src.label, None, None, "file not found")
    if src.name and kind not in ("hub", "dir"):
        raise RecipeError(f"{src.path}: name selects a configuration of a hub dataset; this source has none")
    try:
        if kind == "saved":
            loaded = datasets.load_from_disk(src.path)
        elif kind in ("hub", "dir"):
            loaded = datasets.load_dataset(src.path, src.name, split=src.split)
        else:
            options = _csv_options(path) if kind == "csv" else {}
            loaded = datasets.load_dataset(kind, data_files=src.path, split=src.split, **options)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        cause = f" ({brief(str(err.__cause__), 200)})" if err.__cause__ else ""
        hint = "" if kind != "hub" else " (not a local file or directory; tried it as a hub dataset id)"
        raise BadRecord(src.label, None, None, f"cannot load{hint}: {brief(str(err), 300)}{cause}") from None
    base = path if kind in ("saved", "dir") else Path.cwd() if kind == "hub" else path.parent
    return _split_of(loaded, src), base


def _csv_options(path: Path) -> dict:
    """Every column read as text: CSV has no types, and pandas would turn an answer "3.10" into the
    number 3.1 and "007" into 7."""
    import csv

    import datasets

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f, delimiter=delimiter), [])
    return {"delimiter": delimiter, "features": datasets.Features({c: datasets.Value("string") for c in header})}


def _split_of(loaded, src: DataSource):
    """The Dataset a source names: its `split`, or the only one there is. With several and none
    named, guessing could train on a test split: ask instead."""
    if not isinstance(loaded, dict):   # a DatasetDict is a dict of splits
        return loaded
    if src.split is not None:
        if src.split not in loaded:
            raise BadRecord(src.path, None, None, f"no split {src.split!r} (splits: {', '.join(loaded)})")
        return loaded[src.split]
    if len(loaded) != 1:
        raise BadRecord(src.path, None, None, f"has splits {', '.join(loaded)}: choose one with split")
    return next(iter(loaded.values()))
