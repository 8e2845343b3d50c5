"""Mixture: tasks mixed at fixed ratios inside every optimizer step.

Janus-Pro's SFT "mixed all data types according to the ratio in a single training step"
(5:1:4 understanding : text : generation). The whole training schedule is laid out up front: each
block of `global_batch` consecutive samples (= one optimizer step across all devices and
accumulation steps) holds each task's share, rounded with a carried remainder so the counts over
any run stay within one sample of the ratios. The trainer reads the schedule in order, so resuming
from step k replays exactly the samples of steps k+1.. of an uninterrupted run. A recipe without
ratios mixes the tasks present in proportion to their sizes (`resolve_ratios`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import UserError
from .dataset import TASK_IDS, JanusDataset


def resolve_ratios(ratios: dict[str, float], sizes: dict[str, int]) -> dict[str, float]:
    """The ratios to mix by: the recipe's, or without any, each task present in proportion to its
    samples, so one epoch is one pass over everything (what a user with one task, or with data
    already balanced as they want it, expects without writing a mix).

    >>> resolve_ratios({}, {"understanding": 300, "text": 100, "generation": 0})
    {'understanding': 300, 'text': 100}
    >>> resolve_ratios({"understanding": 5, "text": 1}, {"understanding": 3, "text": 1})
    {'understanding': 5, 'text': 1}
    """
    if ratios:
        return dict(ratios)
    present = {task: n for task, n in sizes.items() if n > 0}
    if not present:
        # Every record was dropped (longer than data.max_length): a schedule of nothing would
        # "train" zero samples without a word.
        raise UserError("no samples to train on: every record is longer than data.max_length")
    return present


def block_counts(ratios: dict[str, float], block: int, n_blocks: int) -> Iterator[dict[str, int]]:
    """Samples of each task in each block, block after block (a generator: a million-step run never
    holds a million dicts); cumulative counts track the ratios to within one sample.

    >>> [sorted(c.items()) for c in block_counts({"a": 5, "b": 1, "c": 4}, 10, 2)]
    [[('a', 5), ('b', 1), ('c', 4)], [('a', 5), ('b', 1), ('c', 4)]]
    >>> sum(c["b"] for c in block_counts({"a": 5, "b": 1, "c": 4}, 4, 100))  # 10% of 400
    40
    """
    total = sum(ratios.values())
    tasks = [t for t, r in ratios.items() if r > 0]
    done = dict.fromkeys(tasks, 0)
    for k in range(1, n_blocks + 1):
        want = {t: k * block * ratios[t] / total for t in tasks}
        counts = {t: int(want[t]) - done[t] for t in tasks}
        # hand out what rounding down left over, largest remainder first
        short = block - sum(counts.values())
        for t in sorted(tasks, key=lambda t: (want[t] - int(want[t])), reverse=True)[:short]:
            counts[t] += 1
        for t in tasks:
            done[t] += counts[t]
        yield counts


class _Cycler:
    """Endless shuffled passes over one task's samples (a new permutation each pass)."""

    def __init__(self, n: int, rng: random.Random):
        self.n, self.rng, self.order = n, rng, []

    def next(self) -> int:
        if not self.order:
            self.order = list(range(self.n))
            self.rng.shuffle(self.order)
        return self.order.pop()


class Schedule(Sequence):
    """(task, index) for every sample of a run, held as two arrays (9 bytes a sample, not a Python
    tuple's ~90): a million-sample epoch costs megabytes. Reads like a list of tuples."""

    def __init__(self, tasks: list[str], codes: np.ndarray, indices: np.ndarray):
        self.tasks, self.codes, self.indices = tasks, codes, indices

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        return self.tasks[self.codes[position]], int(self.indices[position])

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


def build_schedule(sizes: dict[str, int], ratios: dict[str, float], global_batch: int,
                   n_steps: int, seed: int, lengths: dict[str, np.ndarray] | None = None) -> Schedule:
    """(task, index) for every sample of the run, step by step. With `lengths` (tokens of each
    task's samples), each step's samples are ordered longest first (see `group_by_length`)."""
    rng = random.Random(seed)
    cyclers = {t: _Cycler(sizes[t], random.Random(f"{seed}-{t}")) for t in sizes}
    tasks = list(sizes)
    code = {t: c for c, t in enumerate(tasks)}
    codes, indices = np.empty(global_batch * n_steps, np.int8), np.empty(global_batch * n_steps, np.int64)
    for step, counts in enumerate(block_counts({t: ratios.get(t, 0) for t in sizes}, global_batch, n_steps)):
        block = [(t, cyclers[t].next()) for t, c in counts.items() for _ in range(c)]
        rng.shuffle(block)   # tasks spread over the step's micro-batches
        block = group_by_length(block, lengths) if lengths else block
        span = slice(step * global_batch, (step + 1) * global_batch)
        codes[span] = [code[t] for t, _ in block]
        indices[span] = [i for _, i in block]
    return Schedule(tasks, codes, indices)


def group_by_length(block: list[tuple[str, int]], lengths: dict[str, list[int]]) -> list[tuple[str, int]]:
    """One step's samples, longest first, so each micro-batch cut from the step holds similar lengths
    and pads little. Only the order inside the step changes: which samples the step trains on, and
    so the task ratio of every step, stay as they are (a global length sort would break both).

    >>> group_by_length([("text", 0), ("understanding", 1), ("text", 1), ("generation", 0)],
    ...                 {"text": [12, 40], "understanding": [0, 90], "generation": [30]})
    [('understanding', 1), ('text', 1), ('generation', 0), ('text', 0)]
    """
    return sorted(block, key=lambda item: -lengths[item[0]][item[1]])   # stable: ties keep the shuffle


def steps_for_epochs(sizes: dict[str, int], ratios: dict[str, float], global_batch: int,
                     epochs: float) -> int:
    """Steps for `epochs` epochs, an epoch being as many samples as the mixed tasks hold together
    (one pass over everything when the ratios follow the data sizes; with other ratios, small tasks
    repeat and large ones are subsampled, as the ratio asks)."""
    ratios = resolve_ratios(ratios, sizes)
    total = sum(sizes[t] for t in sizes if ratios.get(t, 0) > 0)
    return max(1, round(epochs * total / global_batch))


class MixtureDataset(torch.utils.data.Dataset):
    """The training schedule as a map-style dataset, read in order by the trainer; `ratios` holds
    the ratios it mixes by (the recipe's, or the task sizes: see `resolve_ratios`)."""

    def __init__(self, datasets: dict[str, JanusDataset], ratios: dict[str, float], global_batch: int,
                 n_steps: int, seed: int, cfg_dropout: float = 0.0, group_by_length: bool = False):
        self.datasets, self.seed, self.cfg_dropout = datasets, seed, cfg_dropout
        self.ratios = resolve_ratios(ratios, {t: len(d) for t, d in datasets.items()})
        sizes = {t: len(d) for t, d in datasets.items() if len(d) and self.ratios.get(t, 0) > 0}
        # CFG dropout blanks caption ids in place, so a sample's length is known before it is built
        # (an edit's source-code dropout only shortens it).
        lengths = ({t: datasets[t].lengths() for t in sizes}
                   if group_by_length else None)
        self.schedule = build_schedule(sizes, self.ratios, global_batch, n_steps, seed, lengths)

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, position: int) -> dict:
        task, index = self.schedule[position]
        if task == "edit":   # its dropouts are the edit dataset's (`edit.EditSettings`), drawn the same way
            return self.datasets[task].sample(index, draw=random.Random(f"edit-{self.seed}-{position}"))
        # Seeded by position: the same sample is dropped on a resumed run, different ones each pass.
        unconditional = (task == "generation" and self.cfg_dropout > 0
                         and random.Random(f"cfg-{self.seed}-{position}").random() < self.cfg_dropout)
        return self.datasets[task].sample(index, unconditional=unconditional)

    def as_hf_dataset(self, keys: tuple[str, ...] | None = None):
        return lazy_hf_dataset(len(self), self.__getitem__, keys)

    def counts(self, n_samples: int) -> dict[str, int]:
        out = dict.fromkeys(TASK_IDS, 0)
        tally = np.bincount(self.schedule.codes[:n_samples], minlength=len(self.schedule.tasks))
        out.update({task: int(n) for task, n in zip(self.schedule.tasks, tally)})
        return out


def lazy_hf_dataset(n: int, getitem, keys: tuple[str, ...] | None = None):
    """A `datasets.Dataset` of positions whose rows are built on access by `getitem(position)`.

    TRL's trainer takes `datasets` objects only; an on-the-fly transform keeps samples lazy (images
    opened when the row is read) instead of materialising pixels for the whole run. `keys`: the
    columns of a row (default: a sample's; preference pairs: `preference.PAIR_KEYS`).
    """
    import datasets

    keys = keys or ("input_ids", "labels", "task", "pixel_values", "source_codes")

    def transform(batch):
        rows = [getitem(p) for p in batch["position"]]
        return {k: [r.get(k) for r in rows] for k in keys}

    return datasets.Dataset.from_dict({"position": np.arange(n)}).with_transform(transform)
