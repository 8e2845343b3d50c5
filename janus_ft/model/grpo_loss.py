"""The GRPO objective on per-token log-probabilities (`janus_ft.model.logprobs`), for text answers
and image codes alike.

Names and formulas follow TRL's `GRPOTrainer` (trl/trainer/grpo_trainer.py, `_compute_loss` and
`_generate_and_score_completions`), so a recipe's `grpo.loss_type`, `beta`, `epsilon`,
`scale_rewards` mean what they mean there:

* advantage of completion i of a group: (r_i - mean(group)) / (std(group) + 1e-4), std unbiased, NaN
  rewards (no reward applied) left out and given advantage 0;
* ratio = exp(logp - logp_old) per token; surrogate -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A);
* KL to the reference per token (k3): exp(ref - logp) - (ref - logp) - 1, added as beta * KL;
* `loss_type`: `grpo` averages each completion over its tokens, then over completions; `bnpo`
  averages over all tokens of the batch; `dr_grpo` divides each completion's sum by a constant
  length (max_completion_length for text, the N image tokens for images) and averages over
  completions; `dapo` divides by the tokens of the whole optimizer step (`step_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..recipe.grpo import LOSS_TYPES


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Advantages of rewards laid out group after group (G consecutive completions per prompt).

    NaN-aware as TRL: a NaN reward (no reward function applied to that completion) is left out of
    its group's mean and std, and its own advantage is 0; a group with one scored completion has no
    std, so its advantages are 0 too (with scaling).

    >>> [round(a, 4) for a in group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2).tolist()]
    [0.707, -0.707, 0.0, 0.0]
    >>> [round(a, 4) for a in group_advantages(torch.tensor([1.0, 0.0, float("nan"), 3.0, 1.0, 2.0]), 3).tolist()]
    [0.707, -0.707, 0.0, 0.9999, -0.9999, 0.0]
    """
    from trl.trainer.utils import nanstd

    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.nanmean(1, keepdim=True)).flatten()
    if scale == "none":
        return torch.nan_to_num(centred, nan=0.0)
    std = nanstd(grouped, 1).repeat_interleave(group_size) if scale == "group" else nanstd(rewards).expand_as(rewards)
    return torch.nan_to_num(centred / (std + 1e-4), nan=0.0)


@dataclass
class GrpoLoss:
    loss: torch.Tensor          # the scalar to differentiate
    kl: torch.Tensor            # mean per-token KL to the reference (0 with beta = 0), detached
    clip_fraction: torch.Tensor  # share of tokens whose ratio was clipped where it mattered, detached


def grpo_loss(logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, old_logps: torch.Tensor | None = None,
              ref_logps: torch.Tensor | None = None, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo", lengths: torch.Tensor | None = None,
              step_tokens: int | None = None) -> GrpoLoss:
    """GRPO loss of a batch: `logps`, `old_logps`, `ref_logps` are (rows, length) per-token
    log-probabilities, `mask` (rows, length) marks the completion tokens, `advantages` (rows,).
    `old_logps=None` is the on-policy case (one update per sample: ratio 1, gradient of logp * A).
    `lengths` (rows,): dr_grpo's constant length per row; `step_tokens`: dapo's token count."""
    mask = mask.float()
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = torch.zeros_like(logps)
    if beta != 0.0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    tokens = mask.sum(-1).clamp(min=1.0)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / tokens).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = ((per_token * mask).sum(-1) / lengths).mean()
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / max(step_tokens or 0, 1)
    else:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    # Clipped where the clip decides the min: ratio below 1 - eps with A < 0, above 1 + eps_high with A > 0.
    was_clipped = ((ratio > clipped) & (adv > 0)) | ((ratio < clipped) & (adv < 0))
    n = mask.sum().clamp(min=1.0)
    return GrpoLoss(loss, ((kl * mask).sum() / n).detach(), ((was_clipped.float() * mask).sum() / n).detach())
