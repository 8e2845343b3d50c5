"""`janus-ft sft --recipe R.yaml [section.key=value ...]`: the main job, read top to bottom.

load recipe -> load model and processor -> build datasets and mixture -> apply LoRA -> trainer
-> train -> save adapter, processor, recipe, mixture and loss plot.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import SaveEverySteps, SignalCheckpoint, check_output_dir, clear_staging
from .conversation import detect_format
from .dataset import JanusDataset, load_records, require_tasks
from .distributed import distributed_fields, distributed_state, has_accelerator, vq_on_accelerator, world_size
from .errors import RecipeError, UserError
from .images import check_images
from .mixture import MixtureDataset, lazy_hf_dataset, steps_for_epochs
from .recipe import Recipe, load_recipe, save_recipe


def configure(parser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override recipe keys, e.g. train.max_steps=20 output_dir=runs/x")


def run(args) -> int:
    result = run_sft(load_recipe(args.recipe, args.overrides))
    return 128 + result.interrupted if result.interrupted else 0   # the shell's code for "killed by signal"


def read_sources(sources) -> list:
    """Every record of the given sources, validated (raises on the first bad one)."""
    records = []
    for src in sources:
        recs = load_records([src.path])
        records += recs[: src.max_samples] if src.max_samples else recs
    return records


def build_datasets(records, model, processor, recipe: Recipe, fmt: str) -> dict[str, JanusDataset]:
    """One dataset per task; generation images VQ-encoded once (and cached on disk)."""
    by_task: dict[str, list] = {}
    for rec in records:
        by_task.setdefault(rec.task, []).append(rec)
    codes = vq_codes(model, by_task.get("generation", []), recipe.data.code_cache)
    d = recipe.data
    datasets = {task: JanusDataset(recs, processor, fmt, d.max_length, d.system_prompt, d.last_turn_only, codes)
                for task, recs in by_task.items()}
    for task, ds in datasets.items():
        if ds.dropped:
            first = ds.dropped[0]
            print(f"janus-ft: dropped {len(ds.dropped)} {task} record(s) longer than data.max_length="
                  f"{d.max_length} tokens (first: {first.source}:{first.line})")
    return datasets


def vq_codes(model, records, cache_dir) -> dict[str, list[int]]:
    """Codes for every generation target, encoded once per image and cached on disk. The main
    process encodes first, so other ranks only read the cache."""
    if not records:
        return {}
    from .vq import CodeCache, codes_for_files

    paths = sorted({str(r.images[0]) for r in records})
    cache = CodeCache(cache_dir)
    with distributed_state().main_process_first(), vq_on_accelerator(model):
        codes = codes_for_files(model, paths, cache)
    print(f"janus-ft: VQ codes for {len(paths)} image(s): {cache.hits} cached, {cache.encoder_passes} encoded")
    return {p: c.tolist() for p, c in zip(paths, codes)}


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
            print(f"janus-ft: train.resume: no checkpoint in {recipe.output_dir}, starting from scratch")
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
    train_records, val_records = read_sources(recipe.data.train), read_sources(recipe.data.val)
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
    from .collate import JanusCollator
    from .model import apply_lora, load_model_and_processor, train_in_fp32, trainable_table
    from transformers import set_seed

    from .probe import TrainingProbe
    from .trainer import JanusTrainer, MixtureCallback

    out, t = Path(recipe.output_dir), recipe.train
    # Data and output_dir are checked before any weight is loaded: a typo costs seconds, not a model load.
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
    print(trainable_table(model))

    mixture, global_batch, steps = training_schedule(recipe, train_sets)
    eval_set = _concat(list(val_sets.values()))
    trainer = JanusTrainer(
        model=model, args=sft_config(recipe, steps, eval_set is not None), train_dataset=mixture.as_hf_dataset(),
        eval_dataset=eval_set, processing_class=processor,
        data_collator=JanusCollator(processor.tokenizer.pad_token_id, packing=recipe.data.packing,
                                    image_token_id=model.config.image_token_id),
        callbacks=[MixtureCallback(mixture, global_batch, recipe.data.mix), SaveEverySteps(t.save_last),
                   stopper := SignalCheckpoint()],
        probe=TrainingProbe(processor, fmt, val_sets, t.eval_answers, t.eval_images, t.sample_prompts,
                            t.per_device_eval_batch_size, system_prompt=recipe.data.system_prompt),
        nan_policy=t.nan_policy)
    if recipe.model.quantization != "none":
        train_in_fp32(trainer.model)   # undo TRL's bf16 cast of trainable parameters (see model.py)
    trainer.train(resume_from_checkpoint=resume_argument(recipe))
    if trainer.skipped_batches:
        print(f"janus-ft: {trainer.skipped_batches} micro-batch(es) skipped for a non-finite loss (train.nan_policy=skip)")
    if stopper.received:
        print(f"janus-ft: stopped by {signal.Signals(stopper.received).name} at step {trainer.state.global_step}; "
              f"checkpoint-{trainer.state.global_step} saved in {out}. Continue with train.resume=true")
        return SftResult(out, trainer.model, trainer.state.log_history, stopper.received)
    if eval_set is not None:
        trainer.evaluate()
    save_outputs(trainer, processor, out)   # every rank: ZeRO-3 gathers the sharded weights to save them
    if trainer.is_world_process_zero():
        print(f"janus-ft: adapter, processor, recipe.yaml, mixture.json and loss.png in {out}")
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
                os.replace(path, target)
    except OSError as err:
        raise save_error(err, "the final adapter", out) from None
    finally:
        clear_staging(out)


def _concat(datasets):
    """Validation sets of all tasks as one lazy dataset, in order (no dropout, no mixing)."""
    index = [(d, i) for d in datasets for i in range(len(d))]
    return lazy_hf_dataset(len(index), lambda p: index[p][0].sample(index[p][1])) if index else None
