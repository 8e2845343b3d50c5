"""Supervised fine-tuning (`janus-ft sft`, `janus_ft.sft`): the main job.

On the run lifecycle (`train.run`), SFT reads records into the prepared-rows cache before any
weight loads, builds one dataset per task (generation images VQ-encoded once) and the mixture
schedule that keeps `data.mix` inside every optimizer step, and trains the Janus token loss: text
targets through the LM head, image codes through the generation head (`model.loss`).
"""

from __future__ import annotations

from accelerate.logging import get_logger
from transformers import TrainerCallback

from ..data.dataset import build_datasets, require_tasks
from ..data.images import bad_images_error
from ..data.mixture import MixtureDataset, lazy_hf_dataset, steps_for_epochs
from ..data.prepared import Tokenization, errors_of, prepare, task_indices
from ..errors import RecipeError
from ..janus import TASK_NAMES
from ..model.loss import compute_loss_parts
from ..recipe import Recipe
from .base import JanusTrainer, outputs
from .callbacks import MixtureCallback
from .distributed import world_size
from .run import Method, Setup

logger = get_logger(__name__)

LOSS_NAMES = [f"loss_{TASK_NAMES[t]}" for t in sorted(TASK_NAMES)]


class SftTrainer(JanusTrainer):
    """The token loss of a mixed batch, logged per task as `loss_<task>` (and `eval_loss_<task>`)."""

    # The loss is a sum over supervised tokens divided by the Trainer's count over the whole
    # accumulated step, so gradient accumulation gives the same update as one large batch.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True   # the Trainer then counts the step's tokens for us

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        parts = compute_loss_parts(model, inputs, self.reentrant_checkpointing(), self.head_chunk_size)
        if model.training:
            stopped = self.guard(model, parts.task_sums, list(TASK_NAMES.values()), return_outputs)
            if stopped is not None:
                return stopped
        self.metrics.add(self.mode, LOSS_NAMES, parts.task_sums[:, 0], parts.task_sums[:, 1])
        if num_items_in_batch is not None:
            loss = parts.total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = parts.total / max(parts.n_tokens, 1)
        return outputs(loss, return_outputs)


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
        raise bad_images_error(bad)
    if not d.streaming:
        sizes = {t: len(i) for t, i in task_indices(train_rows).items()} if train_rows is not None else {}
        require_tasks({t: range(sizes.get(t, 0)) for t in d.mix}, d.mix)
    return train_rows, val_rows


def global_batch(recipe: Recipe) -> int:
    """Samples per optimizer step over all processes: the block the mixture schedule is laid out in."""
    t = recipe.train
    return t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size()


def training_schedule(recipe: Recipe, train_sets: dict, processor=None, fmt: str = "janus-pro") -> tuple:
    """(mixture, optimizer steps): the schedule in blocks of one global batch; with data.streaming,
    over the records of data.train as they are read."""
    t, d, block = recipe.train, recipe.data, global_batch(recipe)
    if d.streaming:
        from ..data.stream import StreamingMixture

        if t.max_steps <= 0:
            raise RecipeError("data.streaming needs train.max_steps: a stream's length is not known ahead")
        return StreamingMixture(d.train, processor, fmt, d.mix, block, t.max_steps, t.seed, d.max_length,
                                d.system_prompt, d.last_turn_only, d.max_bad_records), t.max_steps
    steps = t.max_steps if t.max_steps > 0 else steps_for_epochs({task: len(ds) for task, ds in train_sets.items()},
                                                                  d.mix, block, t.num_train_epochs)
    mixture = MixtureDataset(train_sets, d.mix, block, steps, t.seed, d.cfg_dropout, group_by_length=d.group_by_length)
    return mixture, steps


def concat_lazily(datasets, keys: tuple[str, ...] | None = None):
    """Held-out sets of all tasks as one lazy dataset, in order (no dropout, no mixing), or None."""
    index = [(d, i) for d in datasets for i in range(len(d))]
    return lazy_hf_dataset(len(index), lambda p: index[p][0].sample(index[p][1]), keys) if index else None


class SFT(Method):
    name = "sft"
    trainer_class = SftTrainer

    def read(self, recipe, processor, fmt, inputs):
        return read_data(recipe, processor, fmt)

    def build(self, recipe, model, processor, fmt, data) -> Setup:
        from ..data.collate import JanusCollator
        from .probe import TrainingProbe

        train_rows, val_rows = data
        train_sets = build_datasets(train_rows, model, processor, recipe, fmt) if train_rows is not None else {}
        if train_rows is not None:
            require_tasks(train_sets, recipe.data.mix)   # again: records may be dropped for length
        val_sets = build_datasets(val_rows, model, processor, recipe, fmt) if val_rows is not None else {}
        mixture, steps = training_schedule(recipe, train_sets, processor, fmt)
        t, d = recipe.train, recipe.data
        return Setup(
            train_dataset=mixture.as_hf_dataset(), eval_dataset=concat_lazily(list(val_sets.values())),
            collator=JanusCollator(processor.tokenizer.pad_token_id, packing=d.packing,
                                   pad_to_multiple_of=d.pad_to_multiple_of, image_token_id=model.config.image_token_id),
            steps=steps, callbacks=[MixtureCallback(mixture, global_batch(recipe), mixture.ratios)]
            + ([StreamReport(mixture)] if d.streaming else []),
            probe=TrainingProbe(processor, fmt, val_sets, t.eval_answers, t.eval_images, t.sample_prompts,
                                t.per_device_eval_batch_size, system_prompt=d.system_prompt))


class StreamReport(TrainerCallback):
    """With data.streaming, says at the end how many bad records the stream skipped."""

    def __init__(self, stream):
        self.stream = stream

    def on_train_end(self, args, state, control, **kwargs):
        if self.stream.bad:
            logger.warning(f"{self.stream.bad} bad record(s) skipped in the stream (data.max_bad_records="
                           f"{self.stream.max_bad})")
