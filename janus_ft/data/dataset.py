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

from .conversation import render
from .errors import BadRecord, UserError
from .images import open_rgb, pixel_values
from .records import Record, parse_line, read_lines, read_records
from .tokens import SpecialIds, drop_condition, encode

TASK_IDS = {"text": 0, "understanding": 1, "generation": 2}
TASK_NAMES = {v: k for k, v in TASK_IDS.items()}


def load_records(paths, errors: list | None = None) -> list[Record]:
    """Read JSONL files. With `errors`, bad records are collected there and skipped; without, the
    first one raises."""
    out: list[Record] = []
    for path in paths:
        if errors is None:
            out += list(read_records(path))
            continue
        try:
            for number, text in read_lines(path):
                try:
                    out.append(parse_line(text, Path(path), number))
                except BadRecord as err:
                    errors.append(err)
        except BadRecord as err:  # the file itself: missing or unreadable
            errors.append(err)
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


def require_tasks(datasets: dict[str, "JanusDataset | list"], mix: dict[str, float]) -> None:
    """A task with a positive ratio but no data cannot be mixed in: a recipe error, not a silent skip."""
    for task, ratio in mix.items():
        if ratio > 0 and (task not in datasets or len(datasets[task]) == 0):
            raise UserError(f"data.mix gives task '{task}' ratio {ratio} but no {task} records were found "
                            f"in data.train (set its ratio to 0 or add {task} data)")
