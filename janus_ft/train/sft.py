"""Supervised fine-tuning (`janus-ft sft`): the main job, read top to bottom.

load recipe -> load model and processor -> build datasets and mixture -> apply LoRA -> trainer
-> train -> save adapter, processor, recipe, mixture and loss plot.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from accelerate.logging import get_logger

from ..data.conversation import detect_format
from ..data.dataset import build_datasets, read_sources, require_tasks
from ..data.images import check_images
from ..data.mixture import MixtureDataset, lazy_hf_dataset, steps_for_epochs
from ..errors import RecipeError, UserError
from ..files import publish
from ..recipe import Recipe, save_recipe
from .checkpoint import SignalCheckpoint, check_output_dir, clear_staging
from .distributed import (
    distributed_fields,
    distributed_state,
    has_accelerator,
    world_size,
)

logger = get_logger(__name__)


def sft_config(recipe: Recipe, max_steps: int, has_eval: bool):
    """The recipe's `train` section as TRL's `SFTConfig` (one mapping, plus `train.extra`)."""
    from trl import SFTConfig

    t, dtype = recipe.train, recipe.model.dtype
    fields = {k: getattr(t, k) for k in (
        "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
        "gradient_accumulation_steps", "seed", "lr_scheduler_type", "warmup_steps", "weight_decay",
        "max_grad_norm", "logging_steps", "save_steps", "save_total_limit",
        "deepspeed", "dataloader_num_workers", "disable_tqdm")}
    fields.update(
        output_dir=recipe.output_dir, max_steps=max_steps, report_to=t.report_to or "none",
        eval_strategy="steps" if (has_eval and t.eval_steps) else "no", eval_steps=t.eval_steps,
        # Mixed-precision autocast needs an accelerator; on CPU bf16 weights simply train in bf16.
        bf16=dtype == "bfloat16" and has_accelerator(), fp16=False,
        # janus_ft builds samples itself: TRL must not re-tokenize, drop columns or shuffle the
        # mixture schedule (its order is what keeps the ratio inside each optimizer step).
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, max_length=None,
        train_sampling_strategy="sequential", prediction_loss_only=True,
        # transformers 5 calls it activation checkpointing. Non-reentrant (transformers' default, made
        # explicit): DDP must find unused parameters (a micro-batch without images leaves the SigLIP
        # LoRA without gradient), which reentrant checkpointing does not allow; and TRL's switch to
        # reentrant for PEFT + ZeRO-3 edits this dict in place (given None, its edit lands on the
        # deprecated alias the Trainer no longer reads).
        activation_checkpointing=t.gradient_checkpointing, activation_checkpointing_kwargs={"use_reentrant": False})
    fields.update(distributed_fields(t))
    fields.update(t.extra)
    try:
        return SFTConfig(**fields)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"train: {err}") from None


def resume_argument(recipe: Recipe):
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


@dataclass
class SftResult:
    output_dir: Path       # adapter, processor, recipe.yaml, mixture.json, loss.png
    model: object          # the trained PeftModel, still in memory
    log_history: list
    interrupted: int = 0   # the signal that stopped training (a resumable checkpoint was saved), or 0


def read_data(recipe: Recipe) -> tuple[list, list]:
    """(train, val) records, every record and every image validated; a task with a ratio and no
    records is an error."""
    train_records, val_records = (read_sources(s, recipe.train.seed) for s in (recipe.data.train, recipe.data.val))
    require_tasks({t: [r for r in train_records if r.task == t] for t in recipe.data.mix}, recipe.data.mix)
    bad_images = check_images(train_records + val_records)   # decoded once each, as training will
    if bad_images:
        shown = "\n  ".join(str(e) for e in bad_images[:10])
        raise UserError(f"{len(bad_images)} bad image reference(s){' (first 10)' if len(bad_images) > 10 else ''}:"
                        f"\n  {shown}")
    return train_records, val_records


def claim_output_dir(recipe: Recipe) -> None:
    """Refuse an output_dir holding another run (unless resuming / overwriting), then mark it as
    this run's with its recipe."""
    out, t = Path(recipe.output_dir), recipe.train
    state = distributed_state()
    check_output_dir(out, t.resume or bool(t.resume_from_checkpoint), t.overwrite_output_dir, state.is_main_process)
    state.wait_for_everyone()   # every rank has looked at output_dir before the main process writes there
    if state.is_main_process:
        clear_staging(out)
        save_recipe(recipe, out / "recipe.yaml")


def training_schedule(recipe: Recipe, train_sets: dict) -> tuple[MixtureDataset, int, int]:
    """(mixture, global batch, optimizer steps): the schedule in blocks of one global batch."""
    t = recipe.train
    global_batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size()
    sizes = {task: len(ds) for task, ds in train_sets.items()}
    steps = t.max_steps if t.max_steps > 0 else steps_for_epochs(sizes, recipe.data.mix, global_batch,
                                                                  t.num_train_epochs)
    mixture = MixtureDataset(train_sets, recipe.data.mix, global_batch, steps, t.seed, recipe.data.cfg_dropout,
                             group_by_length=recipe.data.group_by_length)
    return mixture, global_batch, steps


def run_sft(recipe: Recipe) -> SftResult:
    """Fine-tune as the recipe says; the adapter and its companions land in `recipe.output_dir`."""
    from transformers import set_seed

    from ..data.collate import JanusCollator
    from ..model.loading import (
        check_quantization,
        load_model_and_processor,
        train_in_fp32,
    )
    from ..model.lora import apply_lora, trainable_table
    from .probe import TrainingProbe
    from .trainer import JanusTrainer, MixtureCallback

    out, t = Path(recipe.output_dir), recipe.train
    # The platform, data and output_dir are checked before any weight is loaded: a typo costs
    # seconds, not a model load. Process setup first: the checks below are rank-aware.
    distributed_state()
    check_quantization(recipe.model.quantization)   # bitsandbytes has a kernel for this device
    train_records, val_records = read_data(recipe)
    claim_output_dir(recipe)
    model, processor = load_model_and_processor(recipe.model)
    fmt = detect_format(processor) if recipe.model.format == "auto" else recipe.model.format
    train_sets = build_datasets(train_records, model, processor, recipe, fmt)
    require_tasks(train_sets, recipe.data.mix)   # again: records may be dropped for length
    val_sets = build_datasets(val_records, model, processor, recipe, fmt)

    # LoRA's A matrices are drawn now, before the Trainer seeds anything: seed here, or the same
    # recipe gives a different adapter depending on what ran earlier in the process.
    set_seed(t.seed)
    model = apply_lora(model, recipe.lora)
    logger.info("trainable parameters:\n" + trainable_table(model))

    mixture, global_batch, steps = training_schedule(recipe, train_sets)
    eval_set = _concat(list(val_sets.values()))
    trainer = JanusTrainer(
        model=model, args=sft_config(recipe, steps, eval_set is not None), train_dataset=mixture.as_hf_dataset(),
        eval_dataset=eval_set, processing_class=processor,
        data_collator=JanusCollator(processor.tokenizer.pad_token_id, packing=recipe.data.packing),
        callbacks=[MixtureCallback(mixture, global_batch, mixture.ratios), stopper := SignalCheckpoint()],
        probe=TrainingProbe(processor, fmt, val_sets, t.eval_answers, t.eval_images, t.sample_prompts,
                            t.per_device_eval_batch_size, system_prompt=recipe.data.system_prompt),
        nan_policy=t.nan_policy)
    if recipe.model.quantization != "none":
        train_in_fp32(trainer.model)   # undo TRL's bf16 cast of trainable parameters (see model.py)
    trainer.train(resume_from_checkpoint=resume_argument(recipe))
    if trainer.skipped_batches:
        logger.warning(f"{trainer.skipped_batches} micro-batch(es) skipped for a non-finite loss (train.nan_policy=skip)")
    if stopper.received:
        logger.warning(f"stopped by {signal.Signals(stopper.received).name} at step {trainer.state.global_step}; "
                       f"checkpoint-{trainer.state.global_step} saved in {out}. Continue with train.resume=true")
        return SftResult(out, trainer.model, trainer.state.log_history, stopper.received)
    if eval_set is not None:
        trainer.evaluate()
    save_outputs(trainer, processor, out)   # every rank: ZeRO-3 gathers the sharded weights to save them
    logger.info(f"adapter, processor, recipe.yaml, mixture.json and loss.png in {out}")
    return SftResult(out, trainer.model, trainer.state.log_history)


def save_outputs(trainer, processor, out: Path) -> None:
    """The final adapter and its companions, written aside and then renamed into `out` file by file,
    so a kill or a full disk never leaves a half-written adapter next to the checkpoints."""
    from .checkpoint import STAGING, save_error
    from .plot import plot_losses

    staged = out / STAGING / "final"
    if not trainer.is_world_process_zero():
        trainer.save_model(str(staged))   # takes part in gathering the weights, writes nothing
        return
    try:
        trainer.save_model(str(staged))
        processor.save_pretrained(staged)
        trainer.state.save_to_json(str(staged / "trainer_state.json"))
        plot_losses(trainer.state.log_history, staged / "loss.png")
        for path in sorted(staged.rglob("*")):
            if path.is_file():
                target = out / path.relative_to(staged)
                target.parent.mkdir(parents=True, exist_ok=True)
                publish(path, target)
    except OSError as err:
        raise save_error(err, "the final adapter", out) from None
    finally:
        clear_staging(out)


def _concat(datasets):
    """Validation sets of all tasks as one lazy dataset, in order (no dropout, no mixing)."""
    index = [(d, i) for d in datasets for i in range(len(d))]
    return lazy_hf_dataset(len(index), lambda p: index[p][0].sample(index[p][1])) if index else None
