"""Dataset: records -> model-ready samples, lazily (images are opened when a sample is built).

Records are rendered and tokenized once at load (cheap, and needed to know lengths); a sample
longer than `max_length` after image expansion is dropped and counted, never truncated (cutting
through image tokens would desynchronise features and placeholders). Generation targets come from
the VQ code cache, encoded once for the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.logging import get_logger

from ..errors import UserError
from ..janus import TASK_IDS, SpecialIds
from ..recipe import Recipe, parse_source
from .conversation import render
from .images import open_rgb, pixel_values
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


@dataclass
class JanusDataset(torch.utils.data.Dataset):
    """Samples of one or more tasks for one checkpoint's processor and conversation format."""

    records: list[Record]
    processor: object
    fmt: str
    max_length: int = 2048
    system_prompt: str | None = None
    last_turn_only: bool = False
    codes: dict[str, list[int]] | None = None   # generation image path -> VQ codes
    examples: list[Encoded] = field(init=False)
    dropped: list[Record] = field(init=False)

    def __post_init__(self):
        tok = self.processor.tokenizer
        self.special = SpecialIds.from_tokenizer(tok)
        self.num_image_tokens = self.processor.num_image_tokens
        self.examples, self.dropped = [], []
        for record in self.records:
            pieces = render(record, self.fmt, self.system_prompt, self.last_turn_only)
            codes = self._codes(record) if record.task == "generation" else None
            ids, labels = encode(pieces, tok, self.special, self.num_image_tokens, codes)
            if len(ids) > self.max_length:
                self.dropped.append(record)
            else:
                self.examples.append(Encoded(record, ids, labels))

    def _codes(self, record: Record) -> list[int] | None:
        if self.codes is None:
            return None  # lengths only (data check / preview without a model)
        return self.codes[str(record.images[0])]

    def __len__(self) -> int:
        return len(self.examples)

    def task_of(self, index: int) -> str:
        return self.examples[index].record.task

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)

    def sample(self, index: int, unconditional: bool = False) -> dict:
        """One sample; `unconditional` blanks a generation caption for classifier-free guidance."""
        ex = self.examples[index]
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
    """One dataset per task; generation images VQ-encoded once (and cached on disk)."""
    from accelerate import PartialState

    PartialState()   # the process's state (set up first by training's launcher code) for rank-aware logs
    by_task: dict[str, list] = {}
    for rec in records:
        by_task.setdefault(rec.task, []).append(rec)
    codes = vq_codes(model, by_task.get("generation", []), recipe.data.code_cache)
    d = recipe.data
    datasets = {task: JanusDataset(recs, processor, fmt, d.max_length, d.system_prompt, d.last_turn_only, codes)
                for task, recs in by_task.items()}
    for task, ds in datasets.items():
        if ds.dropped:
            first = ds.dropped[0]
            logger.warning(f"dropped {len(ds.dropped)} {task} record(s) longer than data.max_length="
                           f"{d.max_length} tokens (first: {first.source}:{first.line})")
    return datasets


def vq_codes(model, records, cache_dir) -> dict[str, list[int]]:
    """Codes for every generation target, encoded once per image and cached on disk. The main
    process encodes first, so other ranks only read the cache."""
    if not records:
        return {}
    from accelerate import PartialState

    from .vq import CodeCache, codes_for_files, vq_on_accelerator

    paths = sorted({str(r.images[0]) for r in records})
    cache = CodeCache(cache_dir)
    with PartialState().main_process_first(), vq_on_accelerator(model):
        codes = codes_for_files(model, paths, cache)
    # Per rank on purpose: each rank says whether it encoded or read the main process's cache.
    logger.info(f"VQ codes for {len(paths)} image(s): {cache.hits} cached, {cache.encoder_passes} encoded",
                main_process_only=False)
    return {p: c.tolist() for p, c in zip(paths, codes)}
