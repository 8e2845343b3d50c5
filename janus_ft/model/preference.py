"""Preference losses on sequence log-probabilities: DPO (sigmoid), conservative DPO (label
smoothing), IPO, and the optional SFT term on chosen (`rpo_alpha`).

The inputs are what `janus_ft.model.logprobs.target_logps` gives for a `PairCollator` batch: row i
is the chosen side of pair i, row B + i its rejected side; the log-probabilities are summed over
each side's supervised targets (assistant text, or the N image codes through the generation head).
The formulas are TRL's `DPOTrainer` ones (tests/test_dpo.py checks them against TRL's own code):

    log-ratio  h = (logp_c - ref_c) - (logp_r - ref_r)
    sigmoid    -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    ipo        (h' - 1 / (2 beta))^2, h' the same with each log-ratio divided by its side's target count
    rewards    beta * (logp - ref) per side; accuracy = reward_c > reward_r
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceLoss:
    losses: torch.Tensor            # (pairs,) per-pair loss, graph attached (the SFT term included)
    chosen_rewards: torch.Tensor    # (pairs,) detached
    rejected_rewards: torch.Tensor  # (pairs,) detached


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, chosen_counts: torch.Tensor, rejected_counts: torch.Tensor,
                    beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                    rpo_alpha: float | None = None) -> PreferenceLoss:
    """Per-pair losses from summed log-probabilities (policy and reference) and target counts.

    `rpo_alpha` adds alpha x the mean negative log-likelihood of all chosen targets of the batch
    (TRL's "sft" loss term), spread over the pairs so that the mean of `losses` carries it once.
    """
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if loss_type == "sigmoid":
        h = beta * (chosen_ratio - rejected_ratio)
        losses = -F.logsigmoid(h) * (1 - label_smoothing) - F.logsigmoid(-h) * label_smoothing
    elif loss_type == "ipo":
        h = chosen_ratio / chosen_counts.clamp(min=1) - rejected_ratio / rejected_counts.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    if rpo_alpha:
        losses = losses + rpo_alpha * -chosen.sum() / chosen_counts.sum().clamp(min=1)
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
