"""Reinforcement learning with programmable rewards (`janus-ft grpo`), read top to bottom.

load recipe -> load the reward functions -> read the prompts -> claim output_dir -> load model and
processor -> apply LoRA -> trainer (samples G completions per prompt, scores them, GRPO update)
-> train -> save adapter, processor, recipe and the reward curve.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, fields
from pathlib import Path

from accelerate.logging import get_logger

from ..data.conversation import detect_format
from ..data.images import check_images
from ..data.prompts import Prompt, load_prompts
from ..errors import RecipeError, UserError
from ..eval.rewards import load_rewards
from ..recipe import Recipe
from ..recipe.grpo import check_grpo
from .checkpoint import SaveEverySteps, SignalCheckpoint
from .distributed import distributed_fields, distributed_state, has_accelerator, world_size
from .sft import claim_output_dir, save_outputs, train
from .trainer import ConsoleCallback

logger = get_logger(__name__)


@dataclass
class GrpoResult:
    output_dir: Path
    model: object
    log_history: list
    interrupted: int = 0


def grpo_arguments(recipe: Recipe, max_steps: int, has_eval: bool):
    """The recipe's `train` section as transformers' `TrainingArguments` (GRPO's own options live in
    `grpo`, read by the trainer)."""
    from transformers import TrainingArguments

    t = recipe.train
    names = {f.name for f in fields(TrainingArguments) if f.init}
    sft_only = sorted(k for k in t.extra if k not in names)
    if sft_only:
        raise RecipeError(f"train.{sft_only[0]} is an SFTConfig option; janus-ft grpo trains on sampled completions "
                          "and does not use it")
    evaluating = has_eval and bool(t.eval_steps)
    args = {k: getattr(t, k) for k in (
        "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "lr_scheduler_type",
        "warmup_steps", "weight_decay", "max_grad_norm", "logging_steps", "save_steps", "save_total_limit",
        "deepspeed", "disable_tqdm")}
    args.update(output_dir=recipe.output_dir, max_steps=max_steps, report_to=t.report_to or "none",
                per_device_train_batch_size=t.per_device_train_batch_size // recipe.grpo.num_generations,
                eval_strategy="steps" if evaluating else "no", eval_steps=t.eval_steps,
                eval_on_start=evaluating and t.eval_on_start and not (t.resume or t.resume_from_checkpoint),
                dataloader_pin_memory=has_accelerator(), remove_unused_columns=False, prediction_loss_only=True,
                bf16=recipe.model.dtype == "bfloat16" and has_accelerator(),
                activation_checkpointing=t.gradient_checkpointing,
                activation_checkpointing_kwargs={"use_reentrant": False})
    args.update(distributed_fields(t))
    args.update(t.extra)
    try:
        return TrainingArguments(**args)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"train: {err}") from None


def read_prompts(recipe: Recipe) -> tuple[list[Prompt], list[Prompt]]:
    train_prompts = load_prompts(recipe.data.train, recipe.train.seed)
    val_prompts = load_prompts(recipe.data.val, recipe.train.seed)
    bad = check_images([p.record for p in train_prompts + val_prompts])
    if bad:
        raise UserError(f"{len(bad)} bad image reference(s):\n  " + "\n  ".join(str(e) for e in bad[:10]))
    return train_prompts, val_prompts


def run_grpo(recipe: Recipe) -> GrpoResult:
    """GRPO with LoRA as the recipe says; the adapter and its companions land in `recipe.output_dir`."""
    from transformers import set_seed

    from ..model.loading import check_quantization, load_model_and_processor, train_in_fp32
    from ..model.lora import apply_lora, trainable_table
    from .grpo_trainer import GrpoTrainer, PromptIndices, Sampler, collate_indices

    out, t, g, started = Path(recipe.output_dir), recipe.train, recipe.grpo, time.monotonic()
    # Everything a typo can break is checked before a weight loads: rewards, prompts, output_dir.
    distributed_state()
    check_grpo(g, t.per_device_train_batch_size, t.gradient_accumulation_steps, world_size())
    check_quantization(recipe.model.quantization)
    rewards = load_rewards(g.rewards, Path(recipe.source).parent if recipe.source else None)
    train_prompts, val_prompts = read_prompts(recipe)
    resume_from = claim_output_dir(recipe)
    model, processor = load_model_and_processor(recipe.model)
    fmt = detect_format(processor) if recipe.model.format == "auto" else recipe.model.format

    set_seed(t.seed)
    model = apply_lora(model, recipe.lora)
    logger.info("trainable parameters:\n" + trainable_table(model))

    prompts_per_step = t.per_device_train_batch_size // g.num_generations * t.gradient_accumulation_steps * world_size()
    steps = t.max_steps if t.max_steps > 0 else math.ceil(len(train_prompts) * t.num_train_epochs / prompts_per_step)
    trainer = GrpoTrainer(
        model=model, args=grpo_arguments(recipe, steps, bool(val_prompts)), train_dataset=PromptIndices(len(train_prompts)),
        eval_dataset=PromptIndices(len(val_prompts)) if val_prompts else None, data_collator=collate_indices,
        processing_class=processor, callbacks=[SaveEverySteps(t.save_last), stopper := SignalCheckpoint()],
        sampler=Sampler(processor, fmt, g, rewards, recipe.data.system_prompt), prompts=train_prompts,
        eval_prompts=val_prompts, eval_images=t.eval_images)
    stopper.accelerator = trainer.accelerator
    GrpoConsole.replace_defaults(trainer)
    if recipe.model.quantization != "none":
        train_in_fp32(trainer.model)
    train(trainer, resume_from, stopper)
    if stopper.received:
        logger.warning(f"stopped by {signal.Signals(stopper.received).name} at step {trainer.state.global_step}; "
                       f"checkpoint-{trainer.state.global_step} saved in {out}. Continue with train.resume=true")
        return GrpoResult(out, trainer.model, trainer.state.log_history, stopper.received)
    if val_prompts and not any(e.get("step") == trainer.state.global_step and "eval_reward" in e
                               for e in trainer.state.log_history):
        trainer.evaluate()
    save_outputs(trainer, processor, out)
    if trainer.is_world_process_zero():
        plot_rewards(trainer.state.log_history, out / "reward.png")
    logger.info(reward_summary(trainer.state.log_history, trainer.state.global_step, time.monotonic() - started, out))
    return GrpoResult(out, trainer.model, trainer.state.log_history)


def reward_summary(log_history: list[dict], steps: int, seconds: float, out: Path) -> str:
    """`20 steps in 95 s; reward (train) 0.41 -> 0.63, held-out 0.40 -> 0.61; outputs in DIR`"""
    def first_last(key):
        values = [e[key] for e in log_history if key in e]
        return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else None

    parts = [f"{label} {span}" for label, span in (("reward (train)", first_last("reward")),
                                                   ("held-out", first_last("eval_reward"))) if span]
    return f"{steps} steps in {seconds:.0f} s; " + ", ".join(parts) + f"; adapter, processor, recipe.yaml, reward.png in {out}"


def plot_rewards(log_history: list[dict], path: Path) -> Path:
    """`reward.png`: the mean reward of the sampled batches and of the held-out prompts, per step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, style in (("reward", {"color": "black", "label": "training batches"}),
                       ("eval_reward", {"color": "tab:red", "linestyle": "--", "marker": "o", "label": "held-out prompts"})):
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        if points:
            ax.plot(*zip(*points), **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward (weighted sum of the reward functions)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


class GrpoConsole(ConsoleCallback):
    """One line per training log (reward per function, KL, clipping) and per held-out evaluation."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        keys = [k for k in logs if k.startswith(("rewards/", "eval_rewards/")) and not k.endswith("/std")]
        named = "  ".join(f"{k.split('/')[1]} {logs[k]:.3f}" for k in keys)
        if "eval_reward" in logs:
            self.write(f"eval step {state.global_step}/{state.max_steps} | reward {logs['eval_reward']:.3f} | {named}")
        elif "reward" in logs:
            rest = "  ".join(f"{k} {logs[k]:.4g}" for k in ("kl", "clip_ratio/region_mean", "completions/mean_length",
                                                          "learning_rate") if k in logs)
            self.write(f"step {state.global_step}/{state.max_steps} | reward {logs['reward']:.3f} "
                       f"(std {logs.get('reward_std', 0):.3f}) | {named} | {rest}")
