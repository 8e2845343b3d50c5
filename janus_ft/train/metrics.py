"""The one metric store of janus_ft's trainers: sums kept on the device, read once per log.

A trainer adds, at every micro-batch, the sums behind its metrics -- per-task loss sums and token
counts (SFT), pair statistics (DPO), rewards and clip fractions (GRPO) -- as tensors on the
device they were computed on. Nothing is read back to the host until the Trainer logs: then every
metric of the interval is stacked into one table, summed over the ranks in one all-reduce and
read in one transfer. A metric is a mean (sum / count) of everything since the last log on every
rank -- the number one large batch would give -- and, where squares were added, its sample
standard deviation too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class MetricStore:
    def __init__(self):
        self._groups: dict[str, dict[tuple[str, ...], torch.Tensor]] = {"train": {}, "eval": {}}

    def add(self, mode: str, names: Sequence[str], sums: torch.Tensor, counts: torch.Tensor | float = 1.0,
            squares: torch.Tensor | None = None) -> None:
        """Add per-name `sums` and `counts` (1-D, aligned with `names`; a count of 0 adds nothing)
        and optionally the sums of squares (for a standard deviation). `mode`: "train" or "eval"."""
        sums = sums.detach().reshape(len(names)).float()
        counts = torch.as_tensor(counts, dtype=sums.dtype, device=sums.device).expand_as(sums)
        squares = sums.new_zeros(len(names)) if squares is None else squares.detach().reshape(len(names)).float()
        row = torch.stack([sums, counts, squares], 1)
        key = tuple(names)
        held = self._groups[mode].get(key)
        self._groups[mode][key] = row if held is None else held + row

    def pop(self, mode: str, accelerator=None) -> dict[str, tuple[float, float, float]]:
        """name -> (sum, count, sum of squares) over the interval on all ranks; the store is emptied.
        Every rank must call it at the same point (it is one collective when several run)."""
        groups, self._groups[mode] = self._groups[mode], {}
        names = sorted({n for key in groups for n in key})
        processes = accelerator.num_processes if accelerator is not None else 1
        if processes > 1:
            from accelerate.utils import gather_object

            # A rank may lack a metric (no text rows this interval): all ranks agree on the union.
            names = sorted({n for part in gather_object([names]) for n in part})
        if not names:
            return {}
        device = accelerator.device if accelerator is not None else next(iter(groups.values())).device
        table = torch.zeros(len(names), 3, device=device)
        where = {n: i for i, n in enumerate(names)}
        for key, row in groups.items():
            table.index_add_(0, torch.tensor([where[n] for n in key], device=device), row.to(device))
        if processes > 1:
            table = accelerator.reduce(table, reduction="sum")
        return {n: tuple(values) for n, values in zip(names, table.tolist())}


def means(stats: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    """Each metric's mean (sum / count), for those with a count.

    >>> means({"loss_text": (6.0, 3.0, 0.0), "loss_generation": (0.0, 0.0, 0.0)})
    {'loss_text': 2.0}
    """
    return {name: s / n for name, (s, n, _) in stats.items() if n}


def std(stats: tuple[float, float, float]) -> float:
    """The sample standard deviation from (sum, count, sum of squares); 0 for fewer than 2 values.

    >>> round(std((6.0, 3.0, 14.0)), 6)   # 1, 2, 3
    1.0
    """
    s, n, sq = stats
    if n < 2:
        return 0.0
    return math.sqrt(max(sq - s * s / n, 0.0) / (n - 1))
