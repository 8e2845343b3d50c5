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

from dataclasses import dataclass

import torch
from accelerate.logging import get_logger

from ..data.prompts import Prompt
from ..eval.sampler import Sampler, Scored, evaluate_rewards, sampling_seed
from ..infer.generate import contact_sheet
from ..model.grpo_loss import group_advantages, grpo_loss
from ..model.logprobs import target_logps
from .base import JanusTrainer, outputs
from .metrics import std

logger = get_logger(__name__)


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
            scored = self.sampler.sample(model, prompts, n, seeds, self.state)
        advantages = group_advantages(scored.total, n, self.g.scale_rewards)
        batch = {k: (v.to(self.args.device) if torch.is_tensor(v) else v) for k, v in scored.batch.items()}
        batch["loss_plan"] = {k: v.to(self.args.device) for k, v in scored.batch["loss_plan"].items()}
        out = {"batch": batch, "advantages": advantages.to(self.args.device), "scored": scored}
        if self.g.beta != 0.0:
            model = self.accelerator.unwrap_model(self.model)
            with torch.no_grad(), model.disable_adapter():
                out["ref_logps"] = target_logps(model, batch, head_chunk_size=self.head_chunk_size).tokens
        self._log_sampling(scored, n)
        return out

    def _log_sampling(self, scored: Scored, n: int) -> None:
        """TRL's GRPO metrics of the sampled groups, into the store (nothing read from the device),
        NaN-aware as TRL's: a reward's None is left out of its mean, a completion no reward applies
        to out of `reward`, a group with fewer than two scored completions out of `reward_std`."""
        from trl.trainer.utils import nanstd

        add, rewards = self.metrics.add, scored.rewards
        scored_rows = ~rewards.isnan()
        add("train", [f"rewards/{r.label}/mean" for r in self.sampler.rewards], rewards.nansum(0),
            scored_rows.sum(0).float(), squares=(rewards ** 2).nansum(0))
        group_std = nanstd(scored.total.view(-1, n), dim=1)
        zero_std = torch.isclose(group_std, torch.zeros_like(group_std)).float()
        add("train", ["reward", "reward_std", "frac_reward_zero_std"],
            torch.stack([scored.total.nansum(), group_std.nansum(), zero_std.sum()]),
            torch.stack([(~scored.total.isnan()).sum().float(), (~group_std.isnan()).sum().float(),
                         torch.tensor(float(len(group_std)))]))
        for name, values in self.sampler.logged.items():   # a reward's log_metric(name, value)
            add("train", [name], torch.tensor([float(sum(values))]), float(len(values)))
        self.sampler.logged.clear()
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
        lp = target_logps(model, batch, self.reentrant_checkpointing(), self.head_chunk_size)
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

    def run(self, model, state) -> tuple[dict, object]:
        """(eval_reward and eval_rewards/<fn>, the grid); the rewards get the trainer's `state`."""
        return (evaluate_rewards(self.sampler, model, self.prompts, self.n, self.seed, self.chunk, trainer_state=state),
                self._grid(model, state))

    def _grid(self, model, state):
        captions = [p for p in self.prompts if p.task == "generation"][:self.images]
        if not captions:
            return None
        scored = self.sampler.sample(model, captions, 1, [sampling_seed(self.seed, -1, 0, k) for k in range(len(captions))],
                                     state)
        return contact_sheet(scored.images, columns=len(captions))
