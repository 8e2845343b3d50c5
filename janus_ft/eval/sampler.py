"""Sampling and scoring groups of completions for prompts: the rollouts GRPO trains on, and the
samples reward evaluation (`evaluate_rewards`, `janus-ft eval --reward`) scores, drawn and scored
the same way by both.

Completions reach the rewards as TRL hands them over (`eval.rewards`): strings, conversational
messages for a conversational prompt, PIL images for generation, with `completion_ids` (token ids,
EOS included when emitted, or the image's VQ codes). The weighted total is TRL's: `nansum` over the
rewards that apply, NaN where none does (such a completion is left out of the means and gets
advantage 0, `model.grpo_loss.group_advantages`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ..data.prompts import Prompt
from ..data.vq import decode_codes_to_pil
from ..infer.rollout import completion_batch, sample_images, sample_text
from ..janus import SpecialIds
from .rewards import Batch, Reward, score


@dataclass
class Scored:
    batch: dict               # prompt + completion rows, group after group
    rewards: torch.Tensor     # (rows, reward functions), unweighted; NaN where a reward returned None
    total: torch.Tensor       # (rows,) weighted sum of the rewards that apply; NaN where none does
    truncated: list           # per row: a text answer cut at max_completion_length
    lengths: list             # per row: completion tokens
    tasks: list               # per row
    images: list              # decoded images of generation rows, in order
    completions: list = field(default_factory=list)   # per row, as the rewards got it
    extra: dict = field(default_factory=dict)          # columns the rewards logged with log_extra


def weighted_total(table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TRL's reward sum: weighted `nansum` over the rewards, NaN where every reward returned None.

    >>> weighted_total(torch.tensor([[1.0, float("nan")], [float("nan")] * 2]), torch.tensor([2.0, 1.0]))
    tensor([2., nan])
    """
    total = (table * weights).nansum(dim=1)
    total[torch.isnan(table).all(dim=1)] = math.nan
    return total


def columns_of(prompts: list[Prompt]) -> dict:
    """Every extra field of the prompts as a list aligned with them (None where one lacks it)."""
    keys = list(dict.fromkeys(k for p in prompts for k in p.fields))
    return {k: [p.fields.get(k) for p in prompts] for k in keys}


@dataclass
class Sampler:
    """Samples and scores groups of completions for prompts (training and held-out evaluation)."""

    processor: object
    fmt: str
    grpo: object              # recipe.grpo (sampling settings)
    rewards: list[Reward]
    system_prompt: str | None = None
    logged: dict = field(default_factory=lambda: defaultdict(list))   # log_metric(name, value) since the last log

    def __post_init__(self):
        self.special = SpecialIds.from_tokenizer(self.processor.tokenizer)

    def rollout(self, model, prompt: Prompt, n: int, seed: int):
        g = self.grpo
        if prompt.task == "generation":
            return sample_images(model, self.processor, prompt.record.caption, self.fmt, n, g.guidance_scale,
                                 g.temperature, seed, g.top_p, g.top_k)
        return sample_text(model, self.processor, prompt.record, self.fmt, n, g.temperature, g.top_p,
                           g.max_completion_length, seed, self.system_prompt, g.top_k)

    @torch.no_grad()
    def sample(self, model, prompts: list[Prompt], n: int, seeds: list[int], trainer_state=None) -> Scored:
        was_training = model.training
        model.eval()   # no LoRA dropout while sampling
        try:
            rollouts = [self.rollout(model, p, n, s) for p, s in zip(prompts, seeds)]
        finally:
            model.train(was_training)
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        batch = completion_batch(rollouts, self.special, core.config.image_token_id)
        images, completions = [], []
        for p, r in zip(prompts, rollouts):
            if r.task == "generation":
                decoded = decode_codes_to_pil(model, torch.tensor(r.completions))
                images += decoded
                completions += decoded
            else:
                answers = [self.processor.tokenizer.decode(c, skip_special_tokens=True).strip() for c in r.completions]
                completions += [[{"role": "assistant", "content": a}] for a in answers] if p.conversational else answers
        rows = [p for p, r in zip(prompts, rollouts) for _ in r.completions]
        extra: dict = {}
        table = self.score(rows, completions, [c for r in rollouts for c in r.completions], trainer_state, extra)
        weights = torch.tensor([r.weight for r in self.rewards])
        return Scored(batch, table, weighted_total(table, weights), [t for r in rollouts for t in r.truncated],
                      [len(c) for r in rollouts for c in r.completions], [p.task for p in rows], images,
                      completions, extra)

    def score(self, rows: list[Prompt], completions: list, completion_ids: list, trainer_state=None,
              extra: dict | None = None) -> torch.Tensor:
        """(rows, rewards): every reward called once on all rows, by keyword, as TRL calls it."""
        def log_extra(column: str, values: list) -> None:
            if extra is not None:
                extra[column] = list(values)

        def log_metric(name: str, value: float) -> None:
            self.logged[name].append(float(value))

        batch = Batch([p.prompt for p in rows], completions, [list(c) for c in completion_ids], columns_of(rows),
                      [p.where for p in rows], trainer_state, log_extra, log_metric)
        return torch.tensor(score(self.rewards, batch), dtype=torch.float32).reshape(len(rows), len(self.rewards))


def sampling_seed(base: int, step: int, micro: int, k: int) -> int:
    return ((base * 1_000_003 + step) * 1009 + micro * 101 + k) % (2 ** 31)


def sample_prompts(sampler: Sampler, model, prompts: list[Prompt], n: int, seed: int, chunk: int = 8,
                   trainer_state=None) -> list[Scored]:
    """`n` scored completions of each prompt, `chunk` prompts at a time, sampled with seeds that
    depend only on the prompt's position: every evaluation draws from the same noise, so two
    evaluations differ only by the model."""
    out = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        out.append(sampler.sample(model, part, n, [sampling_seed(seed, -2, 0, start + k) for k in range(len(part))],
                                  trainer_state))
    return out


def reward_means(sampler: Sampler, scored: list[Scored], prefix: str = "eval_") -> dict:
    """`reward` (weighted sum) and `rewards/<fn>` means over scored completions, a None left out of
    a mean; a reward that applied to none of them is left out."""
    total, table = torch.cat([s.total for s in scored]), torch.cat([s.rewards for s in scored])
    out = {f"{prefix}reward": total.nanmean().item()}
    out.update({f"{prefix}rewards/{r.label}": table[:, j].nanmean().item() for j, r in enumerate(sampler.rewards)})
    return {k: v for k, v in out.items() if math.isfinite(v)}


def evaluate_rewards(sampler: Sampler, model, prompts: list[Prompt], n: int, seed: int, chunk: int = 8,
                     trainer_state=None) -> dict:
    """`eval_reward` (weighted sum) and `eval_rewards/<fn>` means over `n` completions of each prompt."""
    return reward_means(sampler, sample_prompts(sampler, model, prompts, n, seed, chunk, trainer_state))
