"""The GRPO trainer: transformers' `Trainer` (optimizer, schedule, accumulation, checkpoints, resume,
DDP) with sampling and the GRPO loss in place of a dataset's batches.

Why not TRL's `GRPOTrainer`: it samples through `processing_class` + `model.generate` on chat
messages and scores completions with the LM head only. Janus's image path samples with CFG through
`generate(generation_mode="image")` and scores codes with the generation head, and its prompts must
be rendered as janus_ft trains them. What is TRL's here: the config names (`GRPOConfig`), the
formulas (`model.grpo_loss`), the reward-function call convention and the logged metric names
(`reward`, `reward_std`, `rewards/<fn>/mean`, `kl`, `clip_ratio/region_mean`, `completions/mean_length`).

Each micro-batch takes `per_device_train_batch_size / num_generations` prompts; `_prepare_inputs`
samples their groups with the adapter on (the weights the update differentiates), scores them
with the rewards, normalises advantages per group and, with `beta > 0`, computes the reference
log-probabilities with the adapter disabled; `compute_loss` is the clipped surrogate (+ KL). Seeds
of the sampling depend only on (seed, step, micro-batch, prompt), so a resumed run draws what the
straight run drew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate.logging import get_logger

from ..data.prompts import Prompt
from ..data.vq import decode_codes_to_pil
from ..infer.generate import contact_sheet
from ..infer.rollout import completion_batch, sample_images, sample_text
from ..janus import SpecialIds
from ..model.grpo_loss import group_advantages, grpo_loss
from ..model.logprobs import target_logps
from .base import JanusTrainer, outputs
from .metrics import std
from .rewards import Reward, score

logger = get_logger(__name__)


@dataclass
class Scored:
    batch: dict               # prompt + completion rows, group after group
    rewards: torch.Tensor     # (rows, reward functions), unweighted
    total: torch.Tensor       # (rows,) weighted sum
    truncated: list           # per row: a text answer cut at max_completion_length
    lengths: list             # per row: completion tokens
    tasks: list               # per row
    images: list              # decoded images of generation rows, in order


@dataclass
class Sampler:
    """Samples and scores groups of completions for prompts (training and held-out evaluation)."""

    processor: object
    fmt: str
    grpo: object              # recipe.grpo
    rewards: list[Reward]
    system_prompt: str | None = None

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
    def sample(self, model, prompts: list[Prompt], n: int, seeds: list[int]) -> Scored:
        was_training = model.training
        model.eval()   # no LoRA dropout while sampling
        try:
            rollouts = [self.rollout(model, p, n, s) for p, s in zip(prompts, seeds)]
        finally:
            model.train(was_training)
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        batch = completion_batch(rollouts, self.special, core.config.image_token_id)
        texts, images, completions = [], [], []
        for r in rollouts:
            if r.task == "generation":
                decoded = decode_codes_to_pil(model, torch.tensor(r.completions))
                images += decoded
                completions += decoded
            else:
                answers = [self.processor.tokenizer.decode(c, skip_special_tokens=True).strip() for c in r.completions]
                texts += answers
                completions += answers
        rows = [(p, r) for p, r in zip(prompts, rollouts) for _ in r.completions]
        fields = _fields([p for p, _ in rows])
        if any(r.task == "generation" for _, r in rows):
            fields["codes"] = [c if r.task == "generation" else None for r in rollouts for c in r.completions]
        table = self._score(rows, completions, fields)
        weights = torch.tensor([r.weight for r in self.rewards])
        return Scored(batch, table, table @ weights, [t for r in rollouts for t in r.truncated],
                      [len(c) for r in rollouts for c in r.completions], [r.task for _, r in rows], images)

    def _score(self, rows, completions, fields) -> torch.Tensor:
        texts = [p.record.caption if p.task == "generation" else p.record.turns[-1][0] for p, _ in rows]
        where = [p.where for p, _ in rows]
        return torch.tensor(score(self.rewards, texts, completions, fields, where), dtype=torch.float32).T


def _fields(prompts: list[Prompt]) -> dict:
    """Every extra field of the prompts as a list aligned with them (None where one lacks it)."""
    keys = list(dict.fromkeys(k for p in prompts for k in p.fields))
    return {k: [p.fields.get(k) for p in prompts] for k in keys}


class PromptIndices(torch.utils.data.Dataset):
    """The Trainer's dataset: prompt indices (sampling happens in the trainer, not the loader)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def collate_indices(indices: list[int]) -> dict:
    return {"prompt_index": torch.tensor(indices)}


def sampling_seed(base: int, step: int, micro: int, k: int) -> int:
    return ((base * 1_000_003 + step) * 1009 + micro * 101 + k) % (2 ** 31)


class GrpoTrainer(JanusTrainer):
    # compute_loss returns the micro-batch's own normalised loss: the Trainer divides it by the
    # accumulation steps.
    loss_is_scaled_for_ga = False
    has_eval_loss = False   # held-out prompts are scored by the rewards (`RewardProbe`)

    def __init__(self, *args, sampler: Sampler, prompts: list[Prompt], **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.sampler, self.prompts = sampler, prompts
        self.g = sampler.grpo
        self.seed = self.g.seed if self.g.seed is not None else self.args.seed
        self._micro, self._micro_step = 0, None

    # ---- sampling -------------------------------------------------------------------------------

    def _prepare_inputs(self, inputs: dict) -> dict:
        step, n = self.state.global_step, self.g.num_generations
        self._micro = self._micro + 1 if self._micro_step == step else 0
        self._micro_step = step
        prompts = [self.prompts[i] for i in inputs["prompt_index"].tolist()]
        seeds = [sampling_seed(self.seed, step, self._micro * 1000 + self.args.process_index, k)
                 for k in range(len(prompts))]
        with self.generation_model() as model:
            scored = self.sampler.sample(model, prompts, n, seeds)
        advantages = group_advantages(scored.total, n, self.g.scale_rewards)
        batch = {k: (v.to(self.args.device) if torch.is_tensor(v) else v) for k, v in scored.batch.items()}
        batch["loss_plan"] = {k: v.to(self.args.device) for k, v in scored.batch["loss_plan"].items()}
        out = {"batch": batch, "advantages": advantages.to(self.args.device), "scored": scored}
        if self.g.beta != 0.0:
            model = self.accelerator.unwrap_model(self.model)
            with torch.no_grad(), model.disable_adapter():
                out["ref_logps"] = target_logps(model, batch).tokens
        self._log_sampling(scored, n)
        return out

    def _log_sampling(self, scored: Scored, n: int) -> None:
        """TRL's GRPO metrics of the sampled groups, into the store (nothing read from the device)."""
        add = self.metrics.add
        rewards = scored.rewards
        names = [f"rewards/{r.label}/mean" for r in self.sampler.rewards]
        add("train", names, rewards.sum(0), torch.full((rewards.shape[1],), float(rewards.shape[0])),
            squares=(rewards ** 2).sum(0))
        grouped = scored.total.view(-1, n)
        spread = grouped.std(1)
        add("train", ["reward", "reward_std", "frac_reward_zero_std"],
            torch.stack([scored.total.sum(), spread.sum(), (spread < 1e-6).float().sum()]),
            torch.tensor([float(len(scored.total)), len(spread), len(spread)]))
        text = [(length, cut) for length, cut, task in zip(scored.lengths, scored.truncated, scored.tasks)
                if task != "generation"]
        if text:
            add("train", ["completions/mean_length", "completions/clipped_ratio"],
                torch.tensor([float(sum(length for length, _ in text)), float(sum(cut for _, cut in text))]),
                float(len(text)))

    def metric_values(self, stats: dict) -> dict[str, float]:
        """Means, and each reward function's standard deviation over the completions (`/std`)."""
        values = super().metric_values(stats)
        for name, row in stats.items():
            if name.startswith("rewards/") and name.endswith("/mean"):
                values[name.replace("/mean", "/std")] = std(row)
        return values

    # ---- loss -----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch, scored = inputs["batch"], inputs["scored"]
        lp = target_logps(model, batch, input_grad=self.reentrant_checkpointing())
        mask = lp.mask
        if self.g.mask_truncated_completions:   # text only: an image is never truncated
            keep = torch.tensor([not t for t in scored.truncated], device=mask.device)
            mask = mask & keep[:, None]
        image_tokens = self.sampler.processor.num_image_tokens
        lengths = torch.tensor([float(image_tokens if t == "generation" else self.g.max_completion_length)
                                for t in scored.tasks], device=mask.device)
        out = grpo_loss(lp.tokens, mask, inputs["advantages"], ref_logps=inputs.get("ref_logps"), beta=self.g.beta,
                        epsilon=self.g.epsilon, epsilon_high=self.g.epsilon_high, loss_type=self.g.loss_type,
                        lengths=lengths, step_tokens=int(mask.sum()))
        stopped = self.guard(model, torch.stack([out.loss.detach(), torch.ones_like(out.loss)])[None], ["the GRPO loss"],
                             return_outputs, kind="")
        if stopped is not None:
            return stopped
        self.metrics.add("train", ["kl", "clip_ratio/region_mean"], torch.stack([out.kl, out.clip_fraction]))
        return outputs(out.loss, return_outputs)

    def floating_point_ops(self, inputs) -> int:
        return 0   # inputs are prompt indices: transformers' token-count estimate does not apply


@dataclass
class RewardProbe:
    """GRPO's evaluation: the mean reward of `n` completions of every held-out prompt (`eval_reward`,
    `eval_rewards/<fn>`), sampled with seeds that depend only on the prompt's position -- every
    evaluation draws from the same noise, so the curve shows the model changing -- and a grid of the
    images sampled for the first `images` generation prompts. Every rank samples (the same prompts,
    the same seeds), so sampling under ZeRO-3 keeps the ranks in step."""

    sampler: Sampler
    prompts: list[Prompt]
    n: int
    seed: int
    images: int = 4
    chunk: int = 8
    every_rank = True

    def enabled(self) -> bool:
        return bool(self.prompts)

    def run(self, model, step: int) -> tuple[dict, object]:
        return evaluate_rewards(self.sampler, model, self.prompts, self.n, self.seed, self.chunk), self._grid(model)

    def _grid(self, model):
        captions = [p for p in self.prompts if p.task == "generation"][:self.images]
        if not captions:
            return None
        scored = self.sampler.sample(model, captions, 1, [sampling_seed(self.seed, -1, 0, k) for k in range(len(captions))])
        return contact_sheet(scored.images, columns=len(captions))


def evaluate_rewards(sampler: Sampler, model, prompts: list[Prompt], n: int, seed: int, chunk: int = 8) -> dict:
    """`eval_reward` (weighted sum) and `eval_rewards/<fn>` means over `n` completions of each prompt,
    sampled with seeds that depend only on the prompt's position."""
    totals, per_fn = [], []
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        scored = sampler.sample(model, part, n, [sampling_seed(seed, -2, 0, start + k) for k in range(len(part))])
        totals.append(scored.total)
        per_fn.append(scored.rewards)
    total, table = torch.cat(totals), torch.cat(per_fn)
    out = {"eval_reward": total.mean().item()}
    out.update({f"eval_rewards/{r.label}": table[:, j].mean().item() for j, r in enumerate(sampler.rewards)})
    return {k: v for k, v in out.items() if math.isfinite(v)}
