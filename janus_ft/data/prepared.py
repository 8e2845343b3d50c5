"""Prepared rows: every record of a source validated, rendered and tokenized once, into Arrow files.

Training does not hold records as Python objects. Each source becomes Arrow rows on disk (task,
turns, images, system prompt, where it came from, `input_ids`, `labels`, length, or the error that
made it bad), built with `datasets.map(num_proc=...)` and memory-mapped afterwards: a million records
cost a few megabytes of index arrays in the training process, not gigabytes of objects.

The rows are cached under `$JANUS_FT_CACHE/prepared/<key>/`, the key hashing everything that changes
them: the source (a file's path, size and modification time; a `datasets` source's fingerprint), its
entry (columns, constant query / response, split, name, `max_samples`, `#N` and the seed drawing it),
the tokenizer (its serialized vocabulary), the conversation format, the system prompt,
`last_turn_only` and the image tokens per image. `max_length` is not part of it: rows keep their
length and the long ones are dropped when the rows are used, so a new limit reuses the cache. A
second start, a resume and every other rank open the rows the first start wrote: the main process
builds them first (`main_process_first`, as for the VQ code cache), the others then find them.
Rows are written aside and renamed into place when complete (`files.publish`).

Images are checked (decoded once, as training will) while the rows are built, each distinct file
once per worker, remembered by (path, size, modification time).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from accelerate.logging import get_logger

from ..errors import BadRecord
from ..files import cache_root, hold, main_process_first, publish, remove
from ..janus import TASKS, SpecialIds
from ..recipe import DataSource
from .conversation import render
from .images import open_rgb
from .records import Record, parse_record, read_lines
from .sources import (
    dataset_fields,
    jsonl_fields,
    needed_columns,
    open_dataset,
    source_kind,
    taken_rows,
)
from .tokens import encode

PREP_VERSION = 2   # bump when the rows' layout or the rendering changes: old caches are then ignored (2: edit records)
logger = get_logger(__name__)
_BATCH = 1000      # records per map batch: bounded memory per worker, a smooth progress bar
_FEATURES = {
    "task": pa.string(), "users": pa.list_(pa.string()), "answers": pa.list_(pa.string()),
    "images": pa.list_(pa.string()), "system": pa.string(), "source": pa.string(), "line": pa.string(),
    "input_ids": pa.list_(pa.int32()), "labels": pa.list_(pa.int32()), "length": pa.int32(),
    "error_field": pa.string(), "error": pa.string(),
}


@dataclass(frozen=True)
class Tokenization:
    """Everything besides the source that decides a record's tokens."""

    processor: object
    fmt: str
    system_prompt: str | None = None
    last_turn_only: bool = False

    def fingerprint(self) -> str:
        tok = self.processor.tokenizer
        return hashlib.sha256(json.dumps([
            _tokenizer_digest(tok), self.fmt, self.system_prompt, self.last_turn_only,
            self.processor.num_image_tokens, PREP_VERSION]).encode()).hexdigest()


def _tokenizer_digest(tok) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    extra = [str(tok.all_special_tokens), type(tok).__name__]
    return hashlib.sha256((text + json.dumps(extra)).encode()).hexdigest()


def source_fingerprint(src: DataSource, seed: int) -> str:
    """The source's identity and how it is read; a changed file or dataset gets a new one."""
    kind = source_kind(src)
    if kind in ("jsonl", "parquet", "arrow", "csv", "json"):
        path = Path(src.path).resolve()
        try:
            info = path.stat()
            identity = [str(path), info.st_size, info.st_mtime_ns]
        except OSError:
            identity = [str(path), None, None]   # missing: reading it reports the error
    else:
        identity = [open_dataset(src)[0]._fingerprint, str(Path.cwd()) if kind == "hub" else str(Path(src.path).resolve())]
    entry = [kind, src.split, src.name, sorted(src.columns.items()), src.query, src.response,
             src.max_samples, src.sample, seed if src.sample is not None else None]
    return hashlib.sha256(json.dumps(identity + entry).encode()).hexdigest()


def prepared_dir(src: DataSource, seed: int, tokenization: Tokenization, root: Path | None = None) -> Path:
    key = hashlib.sha256((source_fingerprint(src, seed) + tokenization.fingerprint()).encode()).hexdigest()
    return (root or cache_root() / "prepared") / key[:40]


def prepare(sources: list[DataSource], seed: int, tokenization: Tokenization, num_proc: int | None = None,
            root: Path | None = None, errors: list | None = None):
    """The rows of all `sources`, in order, as one memory-mapped `datasets.Dataset` (None without
    sources). The main process builds what is not cached yet (hub sources are read there first
    too); the other ranks then open its files. A source that cannot be read raises, or with
    `errors` is listed there and skipped; bad records stay rows holding their error (`errors_of`)."""
    import datasets

    parts = []
    with main_process_first():
        for src in sources:
            try:
                parts.append(prepare_source(src, seed, tokenization, num_proc, root))
            except BadRecord as err:
                if errors is None:
                    raise
                errors.append(err)
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def prepare_source(src: DataSource, seed: int, tokenization: Tokenization, num_proc: int | None = None,
                   root: Path | None = None):
    """The source's rows (a memory-mapped `datasets.Dataset`), from the cache or built now. A source
    that cannot be read at all (missing, no such column) raises `BadRecord`; bad records are rows
    holding their error (see `errors`)."""
    import datasets

    target = prepared_dir(src, seed, tokenization, root)
    meta = target / "meta.json"
    # Held for the life of the process (its files stay memory-mapped): `janus-ft cache prune` skips it.
    built = not (meta.is_file() and hold(target))
    if built:
        staged = target.with_name(f".{target.name}-{os.getpid()}")
        remove(staged)
        staged.mkdir(parents=True)
        try:
            files = _build(src, seed, tokenization, staged, num_proc)
            (staged / "meta.json").write_text(json.dumps({"source": src.label, "files": files}) + "\n")
            publish(staged, target, keep_existing=True)
        finally:
            remove(staged)
        hold(target)
    files = json.loads(meta.read_text())["files"]
    parts = [datasets.Dataset.from_file(str(target / f)) for f in files]
    rows = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    # Per rank on purpose: each rank says whether it built the rows or opened the main process's.
    logger.info(f"{src.label}: {len(rows)} record(s) {'prepared' if built else 'read from the cache'} ({target})",
                main_process_only=False)
    return rows


def _build(src: DataSource, seed: int, tokenization: Tokenization, staged: Path, num_proc: int | None) -> list[str]:
    import datasets

    raw, base = _raw_rows(src, seed, staged)
    # By default one process per core, once there is a batch for each; a number given is used as is.
    procs = max(1, min(num_proc, len(raw)) if num_proc else min(os.cpu_count() or 1, len(raw) // _BATCH))
    out = raw.with_format("arrow").map(
        _Prepare(src, base, tokenization), batched=True, batch_size=min(_BATCH, -(-len(raw) // procs)),
        num_proc=procs if procs > 1 else None,
        remove_columns=raw.column_names, features=datasets.Features.from_arrow_schema(pa.schema(_FEATURES)),
        cache_file_name=str(staged / "rows.arrow"), new_fingerprint=staged.name, desc=f"preparing {src.label}")
    files = [Path(f["filename"]).name for f in out.cache_files]
    del out, raw
    (staged / "raw.arrow").unlink(missing_ok=True)
    return files


def _raw_rows(src: DataSource, seed: int, staged: Path):
    """(the source's taken rows as a `datasets.Dataset` with a `__where` column, the image base dir)."""
    import datasets

    if source_kind(src) == "jsonl":
        if src.split or src.name:
            from ..errors import RecipeError
            raise RecipeError(f"{src.path}: split and name select from a `datasets` source; a JSONL file has neither")
        n = _lines_to_arrow(Path(src.path), staged / "raw.arrow")
        raw = datasets.Dataset.from_file(str(staged / "raw.arrow"))
        base = Path(src.path).parent
    else:
        dataset, base = open_dataset(src)
        if len(dataset) == 0:
            raise BadRecord(src.label, None, None, "no records: the dataset has no rows")
        raw = dataset.select_columns(needed_columns(dataset.column_names, src))
        n = len(raw)
        raw = raw.add_column("__where", [f"row {i}" for i in range(n)])
    taken = taken_rows(n, src, seed)
    if taken != list(range(n)):
        raw = raw.select(taken)
    return raw, base


def _lines_to_arrow(path: Path, target: Path) -> int:
    """A JSONL file's non-blank lines as Arrow (line number, text), written in batches: a million
    lines never sit in memory at once."""
    schema = pa.schema({"__where": pa.string(), "text": pa.binary()})
    n = 0
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        numbers, texts = [], []
        for number, text in read_lines(path):
            numbers.append(str(number))
            texts.append(text)
            if len(texts) == 65536:
                writer.write_batch(pa.record_batch([numbers, _text_array(texts)], schema=schema))
                n, numbers, texts = n + len(texts), [], []
        if texts:
            writer.write_batch(pa.record_batch([numbers, _text_array(texts)], schema=schema))
            n += len(texts)
    return n


def _text_array(texts: list[str]) -> pa.Array:
    # Bytes that are not UTF-8 arrive as surrogate escapes (`read_lines`); stored as the bytes they
    # were, and decoded back the same way, so `decode_line` still names the line and column.
    return pa.array([t.encode("utf-8", "surrogateescape") for t in texts], pa.binary())


class _Prepare:
    """The map function: one batch of raw rows -> prepared rows (run in worker processes)."""

    def __init__(self, src: DataSource, base: Path, tokenization: Tokenization):
        self.src, self.base, self.t = src, base, tokenization

    def __call__(self, batch: pa.Table) -> dict:
        out = {k: [] for k in _FEATURES}
        tok = self.t.processor.tokenizer
        special, n_image = SpecialIds.from_tokenizer(tok), self.t.processor.num_image_tokens
        jsonl = "text" in batch.column_names and source_kind(self.src) == "jsonl"
        for row in batch.to_pylist():
            where = row.pop("__where")
            line = int(where) if jsonl else where
            try:
                if jsonl:
                    fields = jsonl_fields(row["text"].decode("utf-8", "surrogateescape"), Path(self.src.path), line, self.src)
                else:
                    fields = dataset_fields(row, self.base, self.src, where)
                rec = parse_record(fields, Path(self.src.label), line)
                for i, image in enumerate(rec.images):
                    problem = _image_problem(str(image), *_stat(image))
                    if problem:
                        raise BadRecord(self.src.label, line, f"images[{i}]", problem)
                pieces = render(rec, self.t.fmt, self.t.system_prompt, self.t.last_turn_only)
                ids, labels = encode(pieces, tok, special, n_image, None)
                _append(out, rec, ids, labels)
            except BadRecord as err:
                _append(out, None, [], [], err, self.src.label, where)
        return out


def _stat(path) -> tuple[int, int]:
    try:
        info = os.stat(path)
        return info.st_size, info.st_mtime_ns
    except (OSError, ValueError):
        return -1, -1


@lru_cache(maxsize=1 << 16)
def _image_problem(path: str, size: int, mtime_ns: int) -> str | None:
    """Why an image cannot be used, or None; remembered per (path, size, mtime) in each worker."""
    try:
        open_rgb(Path(path)).close()
        return None
    except BadRecord as err:
        return err.problem


def _append(out: dict, rec: Record | None, ids, labels, err: BadRecord | None = None, label="", where="") -> None:
    if rec is None:
        values = {"task": None, "users": [], "answers": [], "images": [], "system": None, "source": label,
                  "line": str(where), "length": 0, "error_field": err.field, "error": err.problem}
    else:
        values = {"task": rec.task, "users": [u for u, _ in rec.turns], "answers": [a for _, a in rec.turns],
                  "images": [str(p) for p in rec.images], "system": rec.system, "source": rec.source,
                  "line": str(rec.line), "length": len(ids), "error_field": None, "error": None}
    values.update(input_ids=ids, labels=labels)
    for k, v in values.items():
        out[k].append(v)


# --- reading prepared rows ------------------------------------------------------------------------

def record_of(row: dict) -> Record:
    """The `Record` a prepared row was made from."""
    line = row["line"]
    return Record(task=row["task"], turns=list(zip(row["users"], row["answers"])), images=[Path(p) for p in row["images"]],
                  system=row["system"], source=row["source"], line=int(line) if line.isdigit() else line)


def errors_of(rows) -> list[BadRecord]:
    """Every bad record of prepared rows, in order."""
    import pyarrow.compute as pc

    bad = np.flatnonzero(pc.is_valid(rows.data.column("error")).to_numpy(zero_copy_only=False))
    if not len(bad):
        return []
    picked = rows.select(bad).select_columns(["source", "line", "error_field", "error"]).to_list()
    return [BadRecord(r["source"], int(r["line"]) if r["line"].isdigit() else r["line"], r["error_field"], r["error"])
            for r in picked]


def task_indices(rows) -> dict[str, np.ndarray]:
    """Row indices of each task's (good) records."""
    import pyarrow.compute as pc

    column = rows.data.column("task")
    return {t: np.flatnonzero(pc.equal(column, t).fill_null(False).to_numpy(zero_copy_only=False)) for t in TASKS}


def lengths_of(rows) -> np.ndarray:
    return rows.data.column("length").to_numpy().astype(np.int64)
