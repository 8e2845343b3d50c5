"""Dataset: records or prepared rows -> model-ready samples, lazily (images are opened when a sample is built).

Training reads prepared rows (`prepared`: validated and tokenized once, cached, memory-mapped);
small sets of records (tests, previews) are rendered and tokenized here at load. A sample
longer than `max_length` after image expansion is dropped and counted, never truncated (cutting
through image tokens would desynchronise features and placeholders). Generation and edit targets
(and edit sources, with `data.edit_source_codes`) come from the VQ code cache, encoded once for the
whole dataset; an edit sample is laid out by `edit.edit_row`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger

from ..errors import UserError
from ..janus import TASK_IDS, SpecialIds
from ..recipe import Recipe, parse_source
from .conversation import render
from .edit import FULL, NONE, EditSettings, edit_row, target_start
from .images import open_rgb, pixel_values
from .prepared import lengths_of, record_of, task_indices
from .records import Record
from .sources import DEFAULT_SEED, read_source
from .tokens import drop_condition, encode

logger = get_logger(__name__)


def load_records(sources, errors: list | None = None, seed: int = DEFAULT_SEED) -> list[Record]:
    """Read sources (`DataSource`s, or paths / `PATH#N` strings). With `errors`, bad records are
    collected there and skipped; without, the first one raises. `seed` draws `#N` samples."""
    out: list[Record] = []
    for src in sources:
        out += read_source(parse_source(str(src) if isinstance(src, Path) else src, "source"), seed, errors)
    return out


@dataclass
class Encoded:
    record: Record
    input_ids: list[int]
    labels: list[int]


class JanusDataset(torch.utils.data.Dataset):
    """Samples of one or more tasks for one checkpoint's processor and conversation format.

    Built from records (rendered and tokenized here, for small sets: tests, previews) or, for
    training, from prepared rows (`from_rows`: memory-mapped Arrow, see `prepared`). Either way
    `examples` is a sequence of `Encoded` and `dropped` of the `Record`s longer than `max_length`.
    `edit`: how edit samples are built (source codes, CFG dropout; `edit.EditSettings`).
    """

    def __init__(self, records: list[Record], processor, fmt: str, max_length: int = 2048,
                 system_prompt: str | None = None, last_turn_only: bool = False,
                 codes: dict[str, list[int]] | None = None, edit: EditSettings | None = None):
        self._setup(processor, codes, edit)
        self.examples, self.dropped = [], []
        for record in records:
            pieces = render(record, fmt, system_prompt, last_turn_only)
            ids, labels = encode(pieces, processor.tokenizer, self.special, self.num_image_tokens,
                                 self._codes(record) if record.task in ("generation", "edit") else None)
            if len(ids) + self._extra(record) > max_length:
                self.dropped.append(record)
            else:
                self.examples.append(Encoded(record, ids, labels))
        self._lengths = np.array([len(e.input_ids) + self._extra(e.record) for e in self.examples], dtype=np.int64)

    @classmethod
    def from_rows(cls, rows, indices: np.ndarray, processor, max_length: int = 2048,
                  codes: dict[str, list[int]] | None = None, edit: EditSettings | None = None) -> JanusDataset:
        """Prepared rows `indices` of `rows` (one task's, in order); nothing is read until used."""
        self = cls.__new__(cls)
        self._setup(processor, codes, edit)
        lengths = lengths_of(rows)[indices]
        if self.edit.source_codes and len(indices) and rows[int(indices[0])]["task"] == "edit":
            lengths = lengths + np.array([self.edit.extra_tokens(len(paths) - 1, self.num_image_tokens)
                                          for paths in rows.select(indices)["images"]], dtype=np.int64)
        keep = lengths <= max_length
        self.examples = RowExamples(rows, indices[keep], self._codes, self.special.boi)
        self.dropped = RowExamples(rows, indices[~keep], None)
        self._lengths = lengths[keep]
        return self

    def _setup(self, processor, codes, edit: EditSettings | None) -> None:
        self.processor, self.codes, self.edit = processor, codes, edit or EditSettings()
        self.special = SpecialIds.from_tokenizer(processor.tokenizer)
        self.num_image_tokens = processor.num_image_tokens

    def _codes(self, record: Record) -> list[int] | None:
        """The target's codes (the last image: a generation record has one)."""
        if self.codes is None:
            return None  # lengths only (data check / preview without a model)
        return self.codes[str(record.images[-1])]

    def _extra(self, record: Record) -> int:
        return self.edit.extra_tokens(len(record.sources), self.num_image_tokens) if record.task == "edit" else 0

    def __len__(self) -> int:
        return len(self.examples)

    def lengths(self) -> np.ndarray:
        """Tokens of each sample (generation samples included), without building them."""
        return self._lengths

    def task_of(self, index: int) -> str:
        return self.examples[index].record.task

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)

    def sample(self, index: int, unconditional: bool = False, draw=None) -> dict:
        """One sample; `unconditional` blanks a generation caption (an edit's instruction and sources)
        for classifier-free guidance. `draw` (a `random.Random`) draws an edit sample's dropouts."""
        ex = self.examples[index]
        if ex.record.task == "edit":
            condition, coded = self.edit.draw(draw) if draw is not None else (FULL, self.edit.source_codes)
            return self.edit_sample(index, NONE if unconditional else condition, coded)
        ids = ex.input_ids
        if unconditional and ex.record.task == "generation":
            ids = drop_condition(ids, self.special)
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(ex.labels),
               "task": TASK_IDS[ex.record.task]}
        if ex.record.task == "understanding":
            images = [open_rgb(p, ex.record.source, ex.record.line, f"images[{i}]")
                      for i, p in enumerate(ex.record.images)]
            out["pixel_values"] = pixel_values(self.processor.image_processor, images)
        return out

    def edit_sample(self, index: int, condition: str = FULL, coded: bool | None = None) -> dict:
        """Edit sample `index` keeping `condition` (`edit.FULL`, `SOURCES`, `NONE`), with the source
        code blocks when `coded` (default: as `data.edit_source_codes` says)."""
        ex = self.examples[index]
        coded = self.edit.source_codes if coded is None else coded
        sources = ex.record.sources
        codes = [self.codes[str(p)] for p in sources] if coded and self.codes is not None else None
        out = edit_row(ex.input_ids, ex.labels, self.special, condition, codes) | {"task": TASK_IDS["edit"]}
        if condition != NONE:
            images = [open_rgb(p, ex.record.source, ex.record.line, f"images[{i}]") for i, p in enumerate(sources)]
            out["pixel_values"] = pixel_values(self.processor.image_processor, images)
        return out


class RowExamples(Sequence):
    """`Encoded` examples read from prepared rows on access (generation targets filled with their
    VQ codes by `codes_of`); with `codes_of=None`, the rows' `Record`s."""

    def __init__(self, rows, indices: np.ndarray, codes_of, boi: int = -1):
        self.rows, self.indices, self.codes_of, self.boi = rows, indices, codes_of, boi

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self.rows[int(self.indices[index])]
        record = record_of(row)
        if self.codes_of is None:
            return record
        labels = row["labels"]
        if record.task in ("generation", "edit"):
            codes = self.codes_of(record)
            if codes is not None:
                # The rows hold placeholder codes (0) after the target's <begin_of_image> (`tokens.encode`),
                # the last one (an edit's sources come before it).
                start = target_start(row["input_ids"], self.boi) + 1
                labels = labels[:start] + list(codes) + labels[start + len(codes):]
        return Encoded(record, row["input_ids"], labels)


def require_tasks(datasets: dict[str, JanusDataset | list], mix: dict[str, float]) -> None:
    """A task with a positive ratio but no data cannot be mixed in: a recipe error, not a silent skip.
    (Without `data.mix` nothing is asked for: the tasks present are mixed by their sizes.)"""
    for task, ratio in mix.items():
        if ratio > 0 and (task not in datasets or len(datasets[task]) == 0):
            raise UserError(f"data.mix gives task '{task}' ratio {ratio} but no {task} records were found "
                            f"in data.train (set its ratio to 0, add {task} data, or leave data.mix out to "
                            "mix the tasks present by their sizes)")


def read_sources(sources, seed: int = DEFAULT_SEED) -> list:
    """Every record of the given sources, validated (raises on the first bad one); `seed` (the
    recipe's train.seed) draws the records of `#N` sources."""
    return load_records(sources, seed=seed)


def build_datasets(records, model, processor, recipe: Recipe, fmt: str) -> dict[str, JanusDataset]:
    """One dataset per task, from a list of `Record`s or from prepared rows (`prepared.prepare`);
    generation and edit images VQ-encoded once (and cached on disk)."""
    from accelerate import PartialState

    PartialState()   # the process's state (set up first by training's launcher code) for rank-aware logs
    d = recipe.data
    edit = EditSettings.from_data(d)
    if isinstance(records, list):
        by_task: dict[str, list] = {}
        for rec in records:
            by_task.setdefault(rec.task, []).append(rec)
        images = {task: [r.images for r in by_task.get(task, [])] for task in ("generation", "edit")}
        codes = vq_codes(model, coded_images(images, edit.source_codes), d.code_cache)
        datasets = {task: JanusDataset(recs, processor, fmt, d.max_length, d.system_prompt, d.last_turn_only, codes,
                                       edit) for task, recs in by_task.items()}
    else:
        indices = {t: i for t, i in task_indices(records).items() if len(i)}
        images = {task: records.select(indices[task])["images"] if task in indices else []
                  for task in ("generation", "edit")}
        codes = vq_codes(model, coded_images(images, edit.source_codes), d.code_cache)
        datasets = {task: JanusDataset.from_rows(records, i, processor, d.max_length, codes, edit)
                    for task, i in indices.items()}
    warn_dropped(datasets, "record(s) longer than", d.max_length)
    return datasets


def coded_images(images: dict[str, list], source_codes: bool) -> list:
    """The images whose VQ codes training needs, from each record's image list by task: generation
    and edit targets (the last image), and edit sources too with `source_codes`.

    >>> coded_images({"generation": [["g.png"]], "edit": [["s1.png", "s2.png", "t.png"]]}, source_codes=False)
    ['g.png', 't.png']
    """
    edits = images.get("edit", [])
    return ([paths[-1] for paths in images.get("generation", [])]
            + [p for paths in edits for p in (paths if source_codes else paths[-1:])])


def warn_dropped(datasets: dict, what: str, max_length: int) -> None:
    """One warning per task naming how many samples were too long and the first of them."""
    for task, ds in datasets.items():
        if ds.dropped:
            first = ds.dropped[0]
            logger.warning(f"dropped {len(ds.dropped)} {task} {what} data.max_length={max_length} tokens "
                           f"(first: {first.source}:{first.line})")


def vq_codes(model, targets, cache_dir) -> dict[str, list[int]]:
    """Codes for every generation / edit image, encoded once per image and cached on disk. The main
    process encodes first, so other ranks only read the cache."""
    if not len(targets):
        return {}
    from ..files import main_process_first
    from .vq import CodeCache, codes_for_files, vq_on_accelerator

    paths = sorted({str(p) for p in targets})
    cache = CodeCache(cache_dir)
    with main_process_first(), vq_on_accelerator(model):
        codes = codes_for_files(model, paths, cache)
    # Per rank on purpose: each rank says whether it encoded or read the main process's cache.
    logger.info(f"VQ codes for {len(paths)} image(s): {cache.hits} cached, {cache.encoder_passes} encoded",
                main_process_only=False)
    return {p: c.tolist() for p, c in zip(paths, codes)}
