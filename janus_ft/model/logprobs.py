"""Log-probabilities of the supervised targets of a collated batch, per token and per sequence.

The numbers are exactly the ones the SFT loss (`janus_ft.model.loss`) is made of, with the sign
flipped: the same single forward, the same targets, the same heads --

* text / understanding: the assistant tokens (labels not `-100`), each scored by `lm_head` at the
  position before it (labels shifted by one, as transformers' causal-LM loss does);
* generation: the N image codes, each scored by `generation_head` at the position before it, so the
  `<begin_of_image>` position scores the first code and all N codes count.

API (preference trainers use `sums`; per-token ratios, as GRPO needs, use `tokens` and `mask`):

    lp = target_logps(model, batch)   # batch from `janus_ft.data.collate.collate` / `JanusCollator`
    lp.tokens   # (rows, length) float32: log p(labels[r, t] | tokens < t) at targets, 0 elsewhere
    lp.mask     # (rows, length) bool: where the targets are (aligned with batch["labels"])
    lp.sums     # (rows,) summed log-probabilities of each row's targets (graph attached)
    lp.counts   # (rows,) number of targets per row

With right padding (`collate`) a row is one sample. A packed row (`pack`) holds several samples:
its `sums` add them all; split `tokens` by the restarts of `position_ids` to score them apart.
The mean of `tokens[mask]` is minus the SFT loss of the batch (`LossParts.total / n_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .heads import HEAD_CHUNK_SIZE
from .loss import target_losses


@dataclass
class TargetLogps:
    tokens: torch.Tensor   # (rows, length): target log-probabilities, 0 where mask is False
    mask: torch.Tensor     # (rows, length) bool: target positions

    @property
    def sums(self) -> torch.Tensor:
        return self.tokens.sum(-1)

    @property
    def counts(self) -> torch.Tensor:
        return self.mask.sum(-1)


def target_logps(model, batch: dict, input_grad: bool = True, head_chunk_size: int = HEAD_CHUNK_SIZE) -> TargetLogps:
    """Per-token log-probabilities of every supervised target of `batch` under `model` (a Janus
    model, bare or wrapped by PEFT / DDP / DeepSpeed). Gradients flow when grad is enabled;
    `input_grad` and `head_chunk_size` as in `janus_ft.model.loss.compute_loss_parts`."""
    shape = batch["labels"].shape
    positions, losses = target_losses(model, batch, input_grad, head_chunk_size)
    flat = losses.new_zeros(shape.numel()).index_add(0, positions, -losses)
    mask = torch.zeros(shape.numel(), dtype=torch.bool, device=positions.device).index_fill(0, positions, True)
    return TargetLogps(flat.view(shape), mask.view(shape))
