"""Batch: samples -> padded (or packed) tensors. Pure functions, no model.

Padding is on the right with explicit `position_ids`, so every sample sees the positions it would
see alone. Understanding image features are scattered into placeholder positions in row-major
order, and `pixel_values` are concatenated in that same order, so features land on their own
sample whatever the lengths (ms-swift pads on the right while scattering image features with a left-padding mask).
"""

from __future__ import annotations

import torch

from ..janus import IGNORE_INDEX


def collate(samples: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Right-pad a list of samples into one batch.

    >>> import torch
    >>> b = collate([{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]), "task": 0},
    ...              {"input_ids": torch.tensor([5, 8]), "labels": torch.tensor([-100, 8]), "task": 1}], pad_id=2)
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
    ([[5, 6, 7], [5, 8, 2]], [[-100, 6, 7], [-100, 8, -100]], [[1, 1, 1], [1, 1, 0]])
    >>> b["position_ids"].tolist(), b["task_ids"].tolist()
    ([[0, 1, 2], [0, 1, 0]], [[0, 0, 0], [1, 1, -1]])
    """
    length = max(len(s["input_ids"]) for s in samples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch = {key: torch.full((len(samples), length), fill, dtype=torch.long)
             for key, fill in (("input_ids", pad_id), ("labels", IGNORE_INDEX), ("attention_mask", 0),
                               ("position_ids", 0), ("task_ids", -1))}
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        batch["input_ids"][row, :n] = s["input_ids"]
        batch["labels"][row, :n] = s["labels"]
        batch["attention_mask"][row, :n] = 1
        batch["position_ids"][row, :n] = torch.arange(n)
        batch["task_ids"][row, :n] = s["task"]
    _add_pixels(batch, samples)
    _add_source_codes(batch, samples, packed=False)
    return batch


def pack(samples: list[dict]) -> dict:
    """Concatenate samples into one padding-free row; `position_ids` restart at 0 for each sample.

    No token attends across samples: transformers' SDPA builds a block-diagonal causal mask from
    the restarting position ids when no attention mask is given, and per-sample attention
    (`janus_ft.model.attention`) runs each sample alone within the bounds `cu_seq_lens` (the
    samples' cumulative lengths, int32, as FlashAttention's varlen kernels take them) and
    `max_length` (the longest sample), both computed here on the host so no layer reads them back
    from the device.

    >>> import torch
    >>> b = pack([{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]), "task": 0},
    ...           {"input_ids": torch.tensor([5, 8]), "labels": torch.tensor([-100, 8]), "task": 2}])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["task_ids"].tolist()
    ([[5, 6, 7, 5, 8]], [[0, 1, 2, 0, 1]], [[0, 0, 0, 2, 2]])
    >>> b["labels"].tolist(), b["cu_seq_lens"].tolist(), b["max_length"]
    ([[-100, 6, 7, -100, 8]], [0, 3, 5], 3)
    """
    lengths = [len(s["input_ids"]) for s in samples]
    batch = {
        "input_ids": torch.cat([s["input_ids"] for s in samples])[None],
        "labels": torch.cat([s["labels"] for s in samples])[None],
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
        "task_ids": torch.cat([torch.full((n,), s["task"]) for n, s in zip(lengths, samples)])[None],
        "cu_seq_lens": torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32),
        "max_length": max(lengths),
    }
    # The first token of each sample must not be predicted from the previous sample's last token:
    # its label is always IGNORE (BOS), which `encode` guarantees.
    _add_pixels(batch, samples)
    _add_source_codes(batch, samples, packed=True)
    return batch


def real_token_fraction(batch: dict) -> float:
    """Sample tokens over token slots of a collated batch: the share of the compute that is not
    padding (1.0 for a packed row). Padding is where `task_ids` is -1, in both layouts.

    >>> import torch
    >>> s = [{"input_ids": torch.tensor([5, 6, 7, 8]), "labels": torch.tensor([-100, 6, 7, 8]), "task": 0},
    ...      {"input_ids": torch.tensor([5, 9]), "labels": torch.tensor([-100, 9]), "task": 1}]
    >>> real_token_fraction(collate(s, pad_id=2)), real_token_fraction(pack(s))
    (0.75, 1.0)
    """
    task_ids = batch["task_ids"]
    return float((task_ids >= 0).sum()) / task_ids.numel()


def loss_plan(batch: dict, image_token_id: int) -> dict:
    """Where a collated batch's targets and image slots sit, as flat positions (row x length):
    text targets (scored by the LM head), image-code targets (scored by the generation head; they
    hold the generation embeddings in the input) and understanding image placeholders (which take
    the SigLIP features); with edit samples' `source_codes`, also `source_slots`: the placeholders
    of source code blocks (generation embeddings of those codes, never scored). Column 0 is never a
    target: nothing precedes it to predict it.

    The collator computes this on the CPU, where counting and `nonzero` cost nothing, so the loss
    on a GPU never stops to read a count back from the device.

    >>> import torch
    >>> b = collate([{"input_ids": torch.tensor([1, 9, 9, 5, 6]), "labels": torch.tensor([-100, -100, -100, 5, 6]),
    ...               "task": 1},
    ...              {"input_ids": torch.tensor([1, 4, 9, 9]), "labels": torch.tensor([-100, -100, 7, 8]),
    ...               "task": 2}], pad_id=0)
    >>> {k: v.tolist() for k, v in loss_plan(b, image_token_id=9).items()}
    {'text_targets': [3, 4], 'gen_targets': [7, 8], 'image_slots': [1, 2]}
    """
    labels = batch["labels"]
    supervised = labels != IGNORE_INDEX
    supervised[:, 0] = False
    image = batch["input_ids"] == image_token_id
    masks = [("text_targets", supervised & ~image), ("gen_targets", supervised & image)]
    if "source_codes" in batch:
        source = batch["source_codes"] != IGNORE_INDEX
        masks += [("image_slots", image & ~supervised & ~source), ("source_slots", source)]
    else:
        masks.append(("image_slots", image & ~supervised))
    return {name: mask.flatten().nonzero().flatten() for name, mask in masks}


def _add_source_codes(batch: dict, samples: list[dict], packed: bool) -> None:
    """Edit samples' source codes, aligned with input_ids (IGNORE elsewhere), when any sample has them."""
    if all(s.get("source_codes") is None for s in samples):
        return
    rows = [s["source_codes"] if s.get("source_codes") is not None
            else torch.full((len(s["input_ids"]),), IGNORE_INDEX) for s in samples]
    if packed:
        batch["source_codes"] = torch.cat(rows)[None]
        return
    batch["source_codes"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    for row, codes in enumerate(rows):
        batch["source_codes"][row, :len(codes)] = codes


def _add_pixels(batch: dict, samples: list[dict]) -> None:
    pixels = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)


class JanusCollator:
    """The trainer's collator: pads, or packs when `packing` is on (see `pack`); with the model's
    `image_token_id`, adds the batch's `loss_plan`."""

    def __init__(self, pad_id: int, packing: bool = False, pad_to_multiple_of: int | None = None,
                 image_token_id: int | None = None):
        self.pad_id, self.packing, self.pad_to_multiple_of = pad_id, packing, pad_to_multiple_of
        self.image_token_id = image_token_id

    def __call__(self, samples: list[dict]) -> dict:
        batch = pack(samples) if self.packing else collate(samples, self.pad_id, self.pad_to_multiple_of)
        if self.image_token_id is not None:
            batch["loss_plan"] = loss_plan(batch, self.image_token_id)
        return batch
