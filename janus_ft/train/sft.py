"""Supervised fine-tuning (`janus-ft sft`): the main job, read top to bottom.

load recipe -> load model and processor -> build datasets and mixture -> apply LoRA -> trainer
-> train -> save adapter, processor, recipe, mixture and loss plot.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate.logging import get_logger

from ..data.conversation import detect_format
from ..data.dataset import build_datasets, require_tasks
from ..data.mixture import MixtureDataset, lazy_hf_dataset, steps_for_epochs
from ..data.prepared import Tokenization, errors_of, prepare, task_indices
from ..errors import RecipeError, UserError
from ..files import publish
from ..recipe import Recipe, save_recipe
from .checkpoint import STAGING, SaveEverySteps, SignalCheckpoint, check_output_dir, clear_staging, lost_process_error, save_error
from .console import summary
from .distributed import distributed_fields, distributed_state, has_accelerator, on_main_process, process_lost, world_size

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
        # janus_ft builds samples itself: TRL must not re-tokenize, drop columns or shuffle the
        # mixture schedule (its order is what keeps the ratio inside each optimizer step).
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, max_length=None,
        train_sampling_strategy="sequential", prediction_loss_only=True,
        # The NaN guard (JanusTrainer) stops or skips before a non-finite loss is logged; the
        # Trainer's own filter would read the loss back from the device after every micro-batch.
        logging_nan_inf_filter=False,
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


@dataclass
class SftResult:
    output_dir: Path       # adapter, processor, recipe.yaml, mixture.json, loss.png
    model: object          # the trained PeftModel, still in memory
    log_history: list
    interrupted: int = 0   # the signal that stopped training (a resumable checkpoint was saved), or 0


def read_data(recipe: Recipe, processor, fmt: str) -> tuple:
    """(train, val) prepared rows (`data.prepared`): every record validated (its images decoded),
    rendered and tokenized once, cached on disk and memory-mapped, before any weight is loaded. A bad
    record is an error (all bad images listed at once); so is a task with a ratio and no records."""
    d = recipe.data
    tokenization = Tokenization(processor, fmt, d.system_prompt, d.last_turn_only)
    # Streamed training records are read as training consumes them (`data.stream`).
    train_rows, val_rows = (prepare(s, recipe.train.seed, tokenization, d.num_proc) if s is not d.train or not d.streaming
                            else None for s in (d.train, d.val))
    bad = [e for rows in (train_rows, val_rows) if rows is not None for e in errors_of(rows)]
    records = [e for e in bad if not (e.field or "").startswith("images[")]
    if records:
        raise records[0]
    if bad:
        shown = "\n  ".join(str(e) for e in bad[:10])
        raise UserError(f"{len(bad)} bad image reference(s){' (first 10)' if len(bad) > 10 else ''}:\n  {shown}")
    if not d.streaming:
        sizes = {t: len(i) for t, i in task_indices(train_rows).items()} if train_rows is not None else {}
        require_tasks({t: range(sizes.get(t, 0)) for t in d.mix}, d.mix)
    return train_rows, val_rows


def claim_output_dir(recipe: Recipe) -> str | None:
    """Refuse an output_dir holding another run (unless resuming / overwriting), then mark it as
    this run's with its recipe. Returns the checkpoint to resume from, if any.

    The main process alone looks at output_dir and decides; the other ranks get its verdict (the
    same checkpoint to resume from, or the same error) and never list a directory being written.
    """
    def claim():
        out, t = Path(recipe.output_dir), recipe.train
        resume_from = resume_argument(recipe)   # a missing resume_from_checkpoint is refused before any write
        check_output_dir(out, t.resume or bool(t.resume_from_checkpoint), t.overwrite_output_dir)
        clear_staging(out)
        save_recipe(recipe, out / "recipe.yaml")
        return resume_from

    return on_main_process(claim)


def training_schedule(recipe: Recipe, train_sets: dict, processor=None, fmt: str = "janus-pro") -> tuple:
    """(mixture, global batch, optimizer steps): the schedule in blocks of one global batch; with
    data.streaming, over the records of data.train as they are read."""
    t, d = recipe.train, recipe.data
    global_batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size()
    if d.streaming:
        from ..data.stream import StreamingMixture

        if t.max_steps <= 0:
            raise RecipeError("data.streaming needs train.max_steps: a stream's length is not known ahead")
        return StreamingMixture(d.train, processor, fmt, d.mix, global_batch, t.max_steps, t.seed, d.max_length,
                                d.system_prompt, d.last_turn_only, d.max_bad_records), global_batch, t.max_steps
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
        load_processor,
        train_in_fp32,
    )
    from ..model.lora import apply_lora, trainable_table
    from .probe import TrainingProbe
    from .trainer import ConsoleCallback, JanusTrainer, MixtureCallback

    out, t, started = Path(recipe.output_dir), recipe.train, time.monotonic()
    # The platform, data and output_dir are checked before any weight is loaded: a typo costs
    # seconds, not a model load. Process setup first: the checks below are rank-aware.
    distributed_state()
    check_quantization(recipe.model.quantization)   # bitsandbytes has a kernel for this device
    processor = load_processor(recipe.model.path)    # the tokenizer prepares the data; weights come later
    fmt = detect_format(processor) if recipe.model.format == "auto" else recipe.model.format
    train_rows, val_rows = read_data(recipe, processor, fmt)
    resume_from = claim_output_dir(recipe)
    model, processor = load_model_and_processor(recipe.model)
    train_sets = build_datasets(train_rows, model, processor, recipe, fmt) if train_rows is not None else {}
    if train_rows is not None:
        require_tasks(train_sets, recipe.data.mix)   # again: records may be dropped for length
    val_sets = build_datasets(val_rows, model, processor, recipe, fmt) if val_rows is not None else {}

    # LoRA's A matrices are drawn now, before the Trainer seeds anything: seed here, or the same
    # recipe gives a different adapter depending on what ran earlier in the process.
    set_seed(t.seed)
    model = apply_lora(model, recipe.lora)
    logger.info("trainable parameters:\n" + trainable_table(model))

    mixture, global_batch, steps = training_schedule(recipe, train_sets, processor, fmt)
    eval_set = _concat(list(val_sets.values()))
    trainer = JanusTrainer(
        model=model, args=sft_config(recipe, steps, eval_set is not None), train_dataset=mixture.as_hf_dataset(),
        eval_dataset=eval_set, processing_class=processor,
        data_collator=JanusCollator(processor.tokenizer.pad_token_id, packing=recipe.data.packing,
                                    image_token_id=model.config.image_token_id),
        callbacks=[MixtureCallback(mixture, global_batch, mixture.ratios), SaveEverySteps(t.save_last),
                   stopper := SignalCheckpoint()],
        probe=TrainingProbe(processor, fmt, val_sets, t.eval_answers, t.eval_images, t.sample_prompts,
                            t.per_device_eval_batch_size, system_prompt=recipe.data.system_prompt),
        nan_policy=t.nan_policy)
    ConsoleCallback.replace_defaults(trainer)
    if recipe.model.quantization != "none":
        train_in_fp32(trainer.model)   # undo TRL's bf16 cast of trainable parameters (see model.py)
    train(trainer, resume_from, stopper)
    if getattr(mixture, "bad", 0):
        logger.warning(f"{mixture.bad} bad record(s) skipped in the stream (data.max_bad_records={recipe.data.max_bad_records})")
    return finish(trainer, stopper, processor, out, started, evaluate_last=eval_set is not None)


def finish(trainer, stopper: SignalCheckpoint, processor, out: Path, started: float, evaluate_last: bool) -> SftResult:
    """The end every trainer shares: counts of skipped batches, the stop message after a signal,
    a last evaluation when the last step had none, the outputs and the summary."""
    if trainer.skipped_batches:
        logger.warning(f"{trainer.skipped_batches} micro-batch(es) skipped for a non-finite loss (train.nan_policy=skip)")
    if stopper.received:
        logger.warning(f"stopped by {signal.Signals(stopper.received).name} at step {trainer.state.global_step}; "
                       f"checkpoint-{trainer.state.global_step} saved in {out}. Continue with train.resume=true")
        return SftResult(out, trainer.model, trainer.state.log_history, stopper.received)
    if evaluate_last and not evaluated_at(trainer.state.log_history, trainer.state.global_step):
        trainer.evaluate()
    save_outputs(trainer, processor, out)   # every rank: ZeRO-3 gathers the sharded weights to save them
    for line in summary(trainer.state.log_history, trainer.state.global_step, time.monotonic() - started,
                        out).splitlines():
        logger.info(line)
    return SftResult(out, trainer.model, trainer.state.log_history)


def train(trainer, resume_from: str | None, stopper: SignalCheckpoint) -> None:
    """`trainer.train()`, with a clear message when another process of the job is gone (killed,
    out of memory): the collective waiting for it fails on the ranks left."""
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except RuntimeError as err:
        if trainer.accelerator.num_processes > 1 and process_lost(err):
            raise lost_process_error(err, trainer.state.global_step, trainer.args.output_dir) from None
        raise
    finally:
        # The launcher ends the ranks left with SIGTERM: that must stop them now, not ask for a
        # checkpoint no collective can write any more.
        stopper.restore()


def evaluated_at(log_history: list[dict], step: int) -> bool:
    """Whether an evaluation was logged at `step` (the last in-training one, when eval_steps divides
    max_steps): evaluating the same weights again would only repeat its numbers and grids."""
    return any(e.get("step") == step and "eval_loss" in e for e in log_history)


def save_outputs(trainer, processor, out: Path) -> None:
    """The final adapter and its companions, written aside and then renamed into `out` file by file,
    so a kill or a full disk never leaves a half-written adapter next to the checkpoints. Every rank
    returns once they are in place, or raises the main process's error."""
    staged = out / STAGING / "final"
    if not trainer.is_world_process_zero():
        trainer.save_model(str(staged))   # takes part in gathering the weights, writes nothing
    on_main_process(lambda: _write_outputs(trainer, processor, staged, out))


def _write_outputs(trainer, processor, staged: Path, out: Path) -> None:
    from .plot import plot_losses

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
