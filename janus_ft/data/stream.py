"""Streaming (`data.streaming: true`): records read, checked and tokenized as training consumes them.

For data larger than the disk or memory a prepared cache needs: nothing is written and nothing is
read ahead beyond what the mixing needs. The schedule still fixes the task of every position (each
optimizer step's block holds the ratios, as in `mixture`); the sample at a position is the next
record of that task in the stream, which is the sources read in order, again from the start when
they run out. Records of a task wait in a queue until a position of their task comes, so a stream
whose composition follows `data.mix` holds only a few records at a time.

A bad record is skipped and counted; more than `data.max_bad_records` stop the run naming the last
one. Positions only move forward in a run, so a resumed run (the Trainer skips the batches already
trained) replays the stream up to its first position (reading, checking and measuring what it
skips, as the run before did) and continues with exactly the samples the uninterrupted run trained
on; so does each rank, skipping the positions the other ranks train on. Generation and edit records
need the VQ code cache filled ahead, which streaming cannot do: they are refused.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import BadRecord, UserError
from ..janus import TASK_IDS, SpecialIds
from ..recipe import DataSource
from .conversation import render
from .images import open_rgb, pixel_values
from .mixture import block_counts, lazy_hf_dataset
from .records import parse_record
from .sources import dataset_rows, jsonl_rows, source_kind
from .tokens import encode


def task_schedule(ratios: dict[str, float], global_batch: int, n_steps: int, seed: int) -> tuple[list[str], np.ndarray]:
    """(task names, the task code of every position): each step's block holds the ratios, shuffled."""
    tasks = [t for t, r in ratios.items() if r > 0]
    rng = random.Random(seed)
    codes = np.empty(global_batch * n_steps, np.int8)
    for step, counts in enumerate(block_counts({t: ratios[t] for t in tasks}, global_batch, n_steps)):
        block = [tasks.index(t) for t, c in counts.items() for _ in range(c)]
        rng.shuffle(block)
        codes[step * global_batch:(step + 1) * global_batch] = block
    return tasks, codes


def stream_records(sources: list[DataSource], seed: int, check_images: bool = True) -> Iterator:
    """Every row of the sources, in order, parsed and validated: a `Record`, or the `BadRecord`."""
    for src in sources:
        rows = jsonl_rows(src, seed) if source_kind(src) == "jsonl" else dataset_rows(src, seed)
        for where, fields in rows:
            try:
                record = parse_record(fields(), Path(src.label), where)
                for i, image in enumerate(record.images if check_images else ()):
                    open_rgb(image, src.label, where, f"images[{i}]").close()
                yield record
            except BadRecord as err:
                yield err


class StreamingMixture(torch.utils.data.Dataset):
    """The training schedule over a stream of records: position -> sample, read in order."""

    def __init__(self, sources: list[DataSource], processor, fmt: str, ratios: dict[str, float], global_batch: int,
                 n_steps: int, seed: int, max_length: int = 2048,
                 system_prompt: str | None = None, last_turn_only: bool = False, max_bad_records: int = 100):
        if not ratios:
            raise UserError("data.streaming needs data.mix: a stream's task sizes are not known ahead")
        for task in ("generation", "edit"):
            if ratios.get(task, 0) > 0:
                raise UserError(f"data.streaming does not train {task} records (their VQ codes are encoded "
                                "ahead, into the code cache); set data.streaming=false")
        self.sources, self.processor, self.fmt, self.seed = sources, processor, fmt, seed
        self.max_length, self.max_bad = max_length, max_bad_records
        self.system_prompt, self.last_turn_only = system_prompt, last_turn_only
        self.ratios = dict(ratios)
        self.tasks, self.codes = task_schedule(self.ratios, global_batch, n_steps, seed)
        self.special = SpecialIds.from_tokenizer(processor.tokenizer)
        self.bad = self.skipped_long = self.passes = 0
        self._restart()

    def _restart(self) -> None:
        self.position, self.queues = 0, {t: deque() for t in self.tasks}
        self.stream, self.found = self._cycle(), set()

    def _cycle(self) -> Iterator:
        while True:
            self.passes += 1
            seen = set()
            for item in stream_records(self.sources, self.seed):
                if not isinstance(item, BadRecord):
                    seen.add(item.task)
                yield item
            missing = [t for t in self.tasks if t not in seen]
            if missing:
                raise UserError(f"data.mix asks for {', '.join(missing)} but the sources hold no such records")

    def __len__(self) -> int:
        return len(self.codes)

    def _next(self, task: str) -> tuple:
        """The next record of `task` in the stream with its tokens (bad and too long ones skipped)."""
        queue = self.queues[task]
        while True:
            while not queue:
                item = next(self.stream)
                if isinstance(item, BadRecord):
                    self.bad += 1
                    if self.bad > self.max_bad:
                        raise UserError(f"more than data.max_bad_records={self.max_bad} bad records in the stream; "
                                        f"the last: {item}")
                elif item.task in ("generation", "edit"):
                    raise UserError(f"{item.source}:{item.line}: a {item.task} record; data.streaming does not train them")
                elif item.task in self.queues:
                    self.queues[item.task].append(item)
            record = queue.popleft()
            pieces = render(record, self.fmt, self.system_prompt, self.last_turn_only)
            ids, labels = encode(pieces, self.processor.tokenizer, self.special, self.processor.num_image_tokens)
            if len(ids) <= self.max_length:
                return record, ids, labels
            self.skipped_long += 1

    def __getitem__(self, position: int) -> dict:
        if position < self.position:
            self._restart()   # read again from the start: positions of a run only move forward
        while self.position < position:   # positions other ranks (or the run before a resume) trained on
            self._next(self.tasks[self.codes[self.position]])
            self.position += 1
        record, ids, labels = self._next(self.tasks[self.codes[position]])
        self.position = position + 1
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "task": TASK_IDS[record.task],
               "record": f"{record.source}:{record.line}"}
        if record.task == "understanding":
            images = [open_rgb(p, record.source, record.line, f"images[{i}]") for i, p in enumerate(record.images)]
            out["pixel_values"] = pixel_values(self.processor.image_processor, images)
        return out

    def counts(self, n_samples: int) -> dict[str, int]:
        out = dict.fromkeys(TASK_IDS, 0)
        tally = np.bincount(self.codes[:n_samples], minlength=len(self.tasks))
        out.update({t: int(n) for t, n in zip(self.tasks, tally)})
        return out

    def as_hf_dataset(self):
        return lazy_hf_dataset(len(self), self.__getitem__)
