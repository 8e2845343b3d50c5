"""The recipe's `train` section as transformers' `TrainingArguments`: one mapping for every method.

janus_ft's trainers are transformers `Trainer`s (`train.base`), so every method -- SFT, DPO, GRPO --
gets plain `TrainingArguments`: the recipe's own keys, what janus_ft must set for its samples and
its loss, the process setup, then `train.extra` (every other `TrainingArguments` field the recipe
named, already checked against the installed class's types when the recipe loaded).
"""

from __future__ import annotations

from pathlib import Path

from accelerate.logging import get_logger

from ..errors import RecipeError
from ..recipe import Recipe
from .distributed import distributed_fields, has_accelerator

logger = get_logger(__name__)

# TrainArgs keys that are TrainingArguments fields of the same name and meaning.
PASSED = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
          "seed", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "logging_steps", "save_steps",
          "save_total_limit", "deepspeed", "disable_tqdm")


def training_arguments(recipe: Recipe, max_steps: int, has_eval: bool, per_device_batch: int | None = None,
                       in_order: bool = True, loader_work: bool = True):
    """`TrainingArguments` for a run of `max_steps` optimizer steps. `per_device_batch` replaces
    `train.per_device_train_batch_size` where a method's loader batches something else (GRPO's
    loader yields prompts, each sampled `num_generations` times); `in_order=False` lets the Trainer
    shuffle the training set (GRPO's prompts) instead of reading a schedule in order;
    `loader_work=False`: the loader only hands out indices (GRPO), so no worker processes by default."""
    from transformers import TrainingArguments

    t, dtype = recipe.train, recipe.model.dtype
    fields = {k: getattr(t, k) for k in PASSED}
    evaluating = has_eval and bool(t.eval_steps)
    fields.update(
        output_dir=recipe.output_dir, max_steps=max_steps, report_to=t.report_to or "none",
        eval_strategy="steps" if evaluating else "no", eval_steps=t.eval_steps,
        # A resumed run already holds its first evaluation in the log it continues.
        eval_on_start=evaluating and t.eval_on_start and not (t.resume or t.resume_from_checkpoint),
        # Pinned host memory only speeds up copies to an accelerator; without one, torch warns at
        # every DataLoader the Trainer builds.
        dataloader_pin_memory=has_accelerator(),
        # Mixed-precision autocast needs an accelerator; on CPU bf16 weights simply train in bf16.
        bf16=dtype == "bfloat16" and has_accelerator(), fp16=False,
        # janus_ft's samples carry task and image columns its collators read, and a mixture schedule
        # must be read in order (its order keeps the task ratio inside each step).
        remove_unused_columns=False, train_sampling_strategy="sequential" if in_order else "random",
        prediction_loss_only=True,
        # The NaN guard (`JanusTrainer`) stops or skips before a non-finite loss is logged; the
        # Trainer's own filter would read the loss back from the device after every micro-batch.
        logging_nan_inf_filter=False,
        # transformers 5 calls it activation checkpointing. Non-reentrant (transformers' default, made
        # explicit): DDP must find unused parameters (a micro-batch without images leaves the SigLIP
        # LoRA without gradient), which reentrant checkpointing does not allow.
        activation_checkpointing=t.gradient_checkpointing, activation_checkpointing_kwargs={"use_reentrant": False})
    if per_device_batch is not None:
        fields["per_device_train_batch_size"] = per_device_batch
    fields.update(loader_fields(t.dataloader_num_workers, loader_work))
    fields.update(distributed_fields(t))
    fields.update(t.extra)
    try:
        return TrainingArguments(**fields)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"train: {err}") from None


def loader_fields(workers: int | None, loader_work: bool = True) -> dict:
    """DataLoader settings: `train.dataloader_num_workers` as given, else by default, with an
    accelerator, 4 worker processes per process, kept alive across epochs and evaluations, each
    preparing 2 micro-batches ahead -- so images are decoded and preprocessed while the accelerator
    computes, not between its steps. On CPU the workers would take the cores the step itself uses:
    none by default. A loader of prompt indices (GRPO samples in the trainer) has no work to move."""
    if workers is None:
        workers = 4 if has_accelerator() and loader_work else 0
    fields = {"dataloader_num_workers": workers}
    if workers:
        fields.update(dataloader_persistent_workers=True, dataloader_prefetch_factor=2)
    return fields


def resume_argument(recipe: Recipe) -> str | None:
    """The checkpoint to resume from: train.resume_from_checkpoint, or with train.resume the last one
    in output_dir."""
    t = recipe.train
    if t.resume_from_checkpoint:
        if not Path(t.resume_from_checkpoint).is_dir():
            raise RecipeError(f"train.resume_from_checkpoint: no such directory {t.resume_from_checkpoint}")
        return t.resume_from_checkpoint
    if t.resume:
        from transformers.trainer_utils import get_last_checkpoint
        last = get_last_checkpoint(recipe.output_dir) if Path(recipe.output_dir).is_dir() else None
        if last is None:
            logger.info(f"train.resume: no checkpoint in {recipe.output_dir}, starting from scratch")
        return last
    return None
