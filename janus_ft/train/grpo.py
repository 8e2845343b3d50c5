"""Reinforcement learning with programmable rewards (`janus-ft grpo`, `janus_ft.grpo`).

On the run lifecycle (`train.run`), GRPO loads the reward functions and reads the prompts before any
weight loads; its trainer (`grpo_trainer.GrpoTrainer`) samples G completions per prompt (text
answers, or images drawn with CFG exactly as `janus-ft generate` draws them), scores them with the
rewards, normalises advantages per group and takes the clipped policy-gradient step; held-out
prompts are scored at each evaluation (`RewardProbe`). Outputs as `sft`, plus `reward.png`.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..data.images import bad_images_error, check_images
from ..data.prompts import Prompt, load_prompts
from ..errors import UserError
from ..eval.rewards import load_rewards
from ..recipe import Recipe
from ..recipe.grpo import check_grpo
from . import console
from .distributed import world_size
from .grpo_trainer import GrpoTrainer, PromptIndices, RewardProbe, Sampler, collate_indices
from .plot import plot_losses, plot_rewards
from .run import Method, Setup


def read_prompts(recipe: Recipe) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out) prompts, every record and image checked."""
    train_prompts = load_prompts(recipe.data.train, recipe.train.seed)
    val_prompts = load_prompts(recipe.data.val, recipe.train.seed)
    bad = check_images([p.record for p in train_prompts + val_prompts])
    if bad:
        raise bad_images_error(bad)
    if not train_prompts:
        raise UserError("data.train holds no prompts")
    return train_prompts, val_prompts


def prompts_per_micro_batch(recipe: Recipe) -> int:
    """The Trainer's batch: prompts, each sampled `grpo.num_generations` times, so that a micro-batch
    holds `train.per_device_train_batch_size` completions."""
    return recipe.train.per_device_train_batch_size // recipe.grpo.num_generations


class GRPO(Method):
    name = "grpo"
    trainer_class = GrpoTrainer
    plots = {"loss.png": plot_losses, "reward.png": plot_rewards}

    def check(self, recipe) -> None:
        t = recipe.train
        check_grpo(recipe.grpo, t.per_device_train_batch_size, t.gradient_accumulation_steps, world_size())

    def read(self, recipe, processor, fmt, inputs):
        # Rewards first: a typo in a reward file costs seconds, not a model load.
        rewards = load_rewards(recipe.grpo.rewards + inputs.get("reward_funcs", []),
                               Path(recipe.source).parent if recipe.source else None)
        return rewards, *read_prompts(recipe)

    def build(self, recipe, model, processor, fmt, data) -> Setup:
        rewards, train_prompts, val_prompts = data
        t, g = recipe.train, recipe.grpo
        per_device = prompts_per_micro_batch(recipe)
        prompts_per_step = per_device * t.gradient_accumulation_steps * world_size()
        steps = t.max_steps if t.max_steps > 0 else math.ceil(len(train_prompts) * t.num_train_epochs / prompts_per_step)
        sampler = Sampler(processor, fmt, g, rewards, recipe.data.system_prompt)
        seed = g.seed if g.seed is not None else t.seed
        return Setup(
            train_dataset=PromptIndices(len(train_prompts)),
            eval_dataset=PromptIndices(len(val_prompts)) if val_prompts else None, collator=collate_indices,
            steps=steps, per_device_batch=per_device, in_order=False, loader_work=False,
            probe=RewardProbe(sampler, val_prompts, g.num_generations_eval or g.num_generations, seed, t.eval_images,
                              t.per_device_eval_batch_size),
            trainer_kwargs={"sampler": sampler, "prompts": train_prompts})

    def summary(self, log_history, steps, seconds, out) -> str:
        return console.reward_summary(log_history, steps, seconds, out)
