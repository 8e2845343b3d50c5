"""The run lifecycle every training method fills in, read top to bottom (`run`):

check the platform -> read and check the data (before any weight loads) -> claim output_dir ->
load the model -> build the method's datasets -> LoRA -> the method's trainer -> train -> finish
(last evaluation, adapter, processor, plots, summary).

A method (`sft.SFT`, `dpo.DPO`, `grpo.GRPO`) says how to read its data, what to build from it and
which trainer trains it; it copies nothing of the rest. The command line and the Python API
(`janus_ft.sft` / `dpo` / `grpo`) both call `run`.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.logging import get_logger

from ..files import publish
from ..recipe import Recipe, save_recipe
from . import console
from .arguments import resume_argument, training_arguments
from .checkpoint import STAGING, SaveEverySteps, SignalCheckpoint, check_output_dir, clear_staging, lost_process_error, save_error
from .distributed import distributed_state, on_main_process, process_lost
from .plot import plot_losses

logger = get_logger(__name__)


@dataclass
class RunResult:
    output_dir: Path       # adapter, processor, recipe.yaml, trainer_state.json, plots (mixture.json)
    model: object          # the trained PeftModel, still in memory
    log_history: list
    interrupted: int = 0   # the signal that stopped training (a resumable checkpoint was saved), or 0


@dataclass
class Setup:
    """What a method builds for its trainer once the model is loaded."""

    train_dataset: object
    eval_dataset: object | None
    collator: object
    steps: int                                     # optimizer steps of the run
    callbacks: list = field(default_factory=list)  # the method's own (e.g. mixture.json)
    probe: object | None = None                    # answers / images / rewards at each evaluation
    trainer_kwargs: dict = field(default_factory=dict)
    per_device_batch: int | None = None            # see `training_arguments`
    in_order: bool = True
    loader_work: bool = True                       # the loader builds samples (False: it hands out indices)


class Method:
    """A training method: its data, its datasets and its trainer. Subclasses override what differs."""

    name = ""
    trainer_class: type = None
    plots = {"loss.png": plot_losses}

    def check(self, recipe: Recipe) -> None:
        """Checks that need the process group (the recipe itself was checked when it loaded)."""

    def read(self, recipe: Recipe, processor, fmt: str, inputs: dict):
        """The training and held-out data, every record checked, before any weight loads."""
        raise NotImplementedError

    def build(self, recipe: Recipe, model, processor, fmt: str, data) -> Setup:
        """Datasets (VQ codes encoded once), schedule and collator, before LoRA is applied."""
        raise NotImplementedError

    def before_training(self, trainer, setup: Setup) -> None:
        """Work on the trainer's model before the first step (DPO's precomputed reference)."""

    def summary(self, log_history: list, steps: int, seconds: float, out: Path) -> str:
        return console.summary(log_history, steps, seconds, out)


def run(recipe: Recipe, method: Method, *, model=None, processor=None, callbacks=(), **inputs) -> RunResult:
    """Train as the recipe says; the adapter and its companions land in `recipe.output_dir`.
    `model` / `processor`: already loaded instead of `recipe.model.path`; `callbacks`: more
    transformers `TrainerCallback`s; `inputs`: the method's in-memory data (e.g. `train_dataset`)."""
    from transformers import set_seed

    from ..data.conversation import resolve_format
    from ..model.loading import check_quantization, load_model_and_processor, load_processor, train_in_fp32
    from ..model.lora import apply_lora, trainable_table

    out, t, started = Path(recipe.output_dir), recipe.train, time.monotonic()
    # The platform, data and output_dir are checked before any weight is loaded: a typo costs
    # seconds, not a model load. Process setup first: the checks below are rank-aware.
    distributed_state()
    method.check(recipe)
    check_quantization(recipe.model.quantization)   # bitsandbytes has a kernel for this device
    processor = processor or load_processor(recipe.model.path)   # the tokenizer prepares the data
    fmt = resolve_format(processor, recipe.model.format)
    data = method.read(recipe, processor, fmt, inputs)
    resume_from = claim_output_dir(recipe)
    if model is None:
        model, processor = load_model_and_processor(recipe.model)
    setup = method.build(recipe, model, processor, fmt, data)

    # LoRA's A matrices are drawn now, before the Trainer seeds anything: seed here, or the same
    # recipe gives a different adapter depending on what ran earlier in the process.
    set_seed(t.seed)
    model = apply_lora(model, recipe.lora)
    logger.info("trainable parameters:\n" + trainable_table(model))
    apply_levers(model, recipe)

    trainer = method.trainer_class(
        model=model, processing_class=processor, data_collator=setup.collator,
        args=training_arguments(recipe, setup.steps, setup.eval_dataset is not None, setup.per_device_batch,
                                setup.in_order, setup.loader_work),
        train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
        callbacks=[*setup.callbacks, SaveEverySteps(t.save_last), stopper := SignalCheckpoint(), *callbacks],
        probe=setup.probe, nan_policy=t.nan_policy, head_chunk_size=recipe.model.head_chunk_size,
        **setup.trainer_kwargs)
    if recipe.model.quantization != "none":
        train_in_fp32(trainer.model)   # undo the bf16 cast of trainable parameters (see model.loading)
    method.before_training(trainer, setup)
    train(trainer, resume_from, stopper)
    return finish(trainer, method, stopper, processor, out, started)


def apply_levers(model, recipe: Recipe) -> None:
    """What training applies to the model once LoRA is in: per-sample attention for packed rows
    (data.packing, data.packed_attention), then compiled decoder layers (model.compile), which must
    see the attention they will run."""
    from ..model.attention import set_packed_attention
    from ..model.compile import compile_layers

    set_packed_attention(model, recipe.data.packing, recipe.data.packed_attention)
    if recipe.model.compile:
        compile_layers(model)


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


def finish(trainer, method: Method, stopper: SignalCheckpoint, processor, out: Path, started: float) -> RunResult:
    """The end every method shares: counts of skipped batches, the stop message after a signal,
    a last evaluation when the last step had none, the outputs and the summary."""
    if trainer.skipped_batches:
        logger.warning(f"{trainer.skipped_batches} micro-batch(es) skipped for a non-finite loss (train.nan_policy=skip)")
    if stopper.received:
        logger.warning(f"stopped by {signal.Signals(stopper.received).name} at step {trainer.state.global_step}; "
                       f"checkpoint-{trainer.state.global_step} saved in {out}. Continue with train.resume=true")
        return RunResult(out, trainer.model, trainer.state.log_history, stopper.received)
    if trainer.eval_dataset is not None and not evaluated_at(trainer.state.log_history, trainer.state.global_step):
        trainer.evaluate()
    save_outputs(trainer, processor, out, method.plots)   # every rank: ZeRO-3 gathers the sharded weights
    text = method.summary(trainer.state.log_history, trainer.state.global_step, time.monotonic() - started, out)
    for line in text.splitlines():
        logger.info(line)
    return RunResult(out, trainer.model, trainer.state.log_history)


def evaluated_at(log_history: list[dict], step: int) -> bool:
    """Whether an evaluation was logged at `step` (the last in-training one, when eval_steps divides
    max_steps): evaluating the same weights again would only repeat its numbers and grids."""
    return any(e.get("step") == step and any(k.startswith("eval_") for k in e) for e in log_history)


def save_outputs(trainer, processor, out: Path, plots: dict) -> None:
    """The final adapter and its companions, written aside and then renamed into `out` file by file,
    so a kill or a full disk never leaves a half-written adapter next to the checkpoints. Every rank
    returns once they are in place, or raises the main process's error."""
    staged = out / STAGING / "final"
    if not trainer.is_world_process_zero():
        trainer.save_model(str(staged))   # takes part in gathering the weights, writes nothing
    on_main_process(lambda: _write_outputs(trainer, processor, staged, out, plots))


def _write_outputs(trainer, processor, staged: Path, out: Path, plots: dict) -> None:
    try:
        trainer.save_model(str(staged))
        processor.save_pretrained(staged)
        trainer.state.save_to_json(str(staged / "trainer_state.json"))
        for name, plot in plots.items():
            plot(trainer.state.log_history, staged / name)
        for path in sorted(staged.rglob("*")):
            if path.is_file():
                target = out / path.relative_to(staged)
                target.parent.mkdir(parents=True, exist_ok=True)
                publish(path, target)
    except OSError as err:
        raise save_error(err, "the final adapter", out) from None
    finally:
        clear_staging(out)
