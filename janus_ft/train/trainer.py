"""Trainer: TRL's `SFTTrainer` with the Janus mixed-task loss.

The one subclass in janus_ft: `compute_loss` must score image tokens with the generation head,
which no stock forward does, and must stop on a non-finite loss before it reaches the weights;
checkpoints are written then renamed (`upstream.AtomicCheckpoints`: a SIGKILL mid-save would
otherwise leave a half-written `checkpoint-N` that resume picks up); `log` adds the probe's answers
and images to an evaluation's entry. Everything else -- optimiser, schedule, gradient accumulation,
checkpoint contents, resume, DDP / DeepSpeed / FSDP, logging -- is TRL / transformers. The callbacks
here write `mixture.json` and the console lines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from accelerate.logging import get_logger
from transformers import TrainerCallback
from trl import SFTTrainer

from ..janus import TASK_NAMES
from ..model.loss import compute_loss_parts
from . import console
from .checkpoint import SignalCheckpoint, TrainingError
from .upstream import AtomicCheckpoints, record_metric

logger = get_logger(__name__)


class JanusTrainer(AtomicCheckpoints, SFTTrainer):
    def __init__(self, *args, probe=None, nan_policy: str = "stop", **kwargs):
        super().__init__(*args, **kwargs)
        self.probe = probe   # janus_ft.probe.TrainingProbe: answers and images at each evaluation
        self.nan_policy = nan_policy   # "stop" | "skip" (train.nan_policy)
        self.skipped_batches = 0
        self._flops_params: int | None = None   # parameter count for `total_flos`, taken once
        self._evaluating = False
        self._pending = None                      # this step's per-task sums, not judged yet
        self._log_sums = {"train": None, "eval": None}   # per-task sums since the last log
        # Our loss is a sum over supervised tokens divided by the Trainer's count over the whole
        # accumulated step, so gradient accumulation gives the same update as one large batch.
        self.model_accepts_loss_kwargs = True
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, SignalCheckpoint):
                callback.accelerator = self.accelerator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        parts = compute_loss_parts(model, inputs, input_grad=self._reentrant_checkpointing())
        if model.training:
            bad = self._judge(parts.task_sums)
            if bad:
                return self._non_finite(model, bad, return_outputs)
        else:
            self._add_to_log("eval", self._all_ranks(parts.task_sums))
        if num_items_in_batch is not None:
            loss = parts.total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = parts.total / max(parts.n_tokens, 1)
        return (loss, None) if return_outputs else loss

    def _judge(self, task_sums) -> list[str]:
        """The tasks whose loss is not finite, judged when it is time: every micro-batch under
        nan_policy=skip, else the step's last micro-batch -- before its backward, so before any
        optimizer step (DeepSpeed steps inside that backward). Per-task sums stay on the device
        until then: reading them is the step's one host sync. Judged on the sums over all ranks, so
        every rank stops or skips together (one rank alone would leave the others in a collective)."""
        pending = task_sums if self._pending is None else self._pending + task_sums
        if self.nan_policy != "skip" and not self.accelerator.sync_gradients:
            self._pending = pending
            return []
        self._pending = None
        pending = self._all_ranks(pending)
        bad = [TASK_NAMES[t] for t, (loss_sum, n) in enumerate(pending.tolist()) if n and not math.isfinite(loss_sum)]
        if not bad:
            self._add_to_log("train", pending)
        return bad

    def _add_to_log(self, mode: str, task_sums) -> None:
        logged = self._log_sums[mode]
        self._log_sums[mode] = task_sums if logged is None else logged + task_sums

    def _reentrant_checkpointing(self) -> bool:
        """Read at every step: TRL switches PEFT + ZeRO-3 runs to reentrant checkpointing by editing
        these arguments after janus_ft built them (unset, torch's default is reentrant)."""
        args = self.args
        return bool(args.activation_checkpointing) and (args.activation_checkpointing_kwargs or {}).get(
            "use_reentrant", True)

    def floating_point_ops(self, inputs) -> int:
        """transformers' estimate for `total_flos` (6 x tokens x non-embedding parameters), with the
        parameter count taken once: transformers walks every parameter tensor on every micro-batch
        only to log this number (10 ms a step at Janus-Pro-1B size, docs/benchmarks.md)."""
        if self._flops_params is None:
            model = self.model
            self._flops_params = model.num_parameters(exclude_embeddings=True) if hasattr(model, "num_parameters") else 0
        ids = inputs.get("input_ids")
        return 6 * ids.numel() * self._flops_params if ids is not None else 0

    def _all_ranks(self, task_sums):
        """Per-task (loss sum, tokens) summed over all processes, so `loss_<task>` describes the whole
        step and not rank 0's shard of it (one all-reduce of six numbers)."""
        if self.accelerator.num_processes == 1:
            return task_sums
        return self.accelerator.reduce(task_sums.to(self.accelerator.device), reduction="sum")

    def _non_finite(self, model, tasks: list[str], return_outputs: bool):
        """A NaN / inf loss never reaches the weights: stop (default), or with train.nan_policy=skip
        give this micro-batch a zero loss. The zero is `0 * parameter` summed over the trainable
        parameters, so every one gets a (zero) gradient and DDP's all-reduce still lines up."""
        step = self.state.global_step + 1
        if self.nan_policy != "skip":
            from transformers.trainer_utils import get_last_checkpoint

            last = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
            raise TrainingError(
                f"non-finite loss at step {step} in task(s) {', '.join(tasks)}: training stopped"
                + (f"; the last good checkpoint is {last}" if last else "; no checkpoint was written yet")
                + ". Lower train.learning_rate, check that task's data, or set train.nan_policy=skip")
        self.skipped_batches += 1
        record_metric(self, "train", "skipped_batches", float(self.skipped_batches))
        logger.warning(f"non-finite loss at step {step} in task(s) {', '.join(tasks)}: micro-batch skipped "
                       f"({self.skipped_batches} so far)")
        zero = sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
        return (zero, None) if return_outputs else zero

    def evaluate(self, *args, **kwargs):
        """The Trainer's evaluation (loss per task), with the probe's generated answers and images
        logged in the same entry (see `log`)."""
        self._evaluating = True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = False

    def log(self, logs: dict, start_time=None) -> None:
        """`loss_<task>`: sum of token losses over tokens, over everything since the last log on all
        ranks (the mean a single large batch would give; summed on the device, read once here).

        During an evaluation the probe's answers and images join the same entry, so one evaluation
        is one entry in log_history and TensorBoard and one line on the console (`logs` is the dict
        `evaluate` returns, so they are in its result too)."""
        mode = "train" if self.model.training else "eval"
        sums, self._log_sums[mode] = self._log_sums[mode], None
        for task, (loss_sum, n) in enumerate(sums.tolist() if sums is not None else []):
            if n:
                record_metric(self, mode, f"loss_{TASK_NAMES[task]}", loss_sum / n)
        if self._evaluating:
            logs.update(self._probe())
        super().log(logs, start_time)

    def _probe(self) -> dict:
        if self.probe is None or not self.probe.enabled() or not self.is_world_process_zero():
            return {}
        from transformers.integrations import is_deepspeed_zero3_enabled

        # Generating on one rank while ZeRO-3 shards the weights would wait forever for the others.
        if is_deepspeed_zero3_enabled():
            return {}
        extra, grid = self.probe.run(self.accelerator.unwrap_model(self.model), self.state.global_step,
                                     Path(self.args.output_dir))
        if grid is not None:
            from .probe import tensorboard_image
            tensorboard_image(self.callback_handler.callbacks, "eval/samples", grid, self.state.global_step)
        return extra


class MixtureCallback(TrainerCallback):
    """Writes `mixture.json` (samples consumed per task, the ratios asked for) with every checkpoint
    and at the end. Counts come from the schedule, which every process reads in the same order."""

    def __init__(self, mixture, global_batch: int, ratios: dict):
        self.mixture, self.global_batch, self.ratios = mixture, global_batch, ratios

    def report(self, step: int) -> dict:
        counts = self.mixture.counts(step * self.global_batch)
        total = sum(counts.values()) or 1
        return {"steps": step, "samples": sum(counts.values()), "consumed": counts,
                "fractions": {t: round(c / total, 4) for t, c in counts.items()},
                "ratios": self.ratios}

    def write(self, directory: Path, step: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "mixture.json").write_text(json.dumps(self.report(step), indent=2) + "\n")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(Path(args.output_dir), state.global_step)


class ConsoleCallback(TrainerCallback):
    """In place of transformers' progress bars and printed log dicts: one training bar (none with
    `train.disable_tqdm`), with a line per training log and one per evaluation printed above it.
    The evaluation gets no bar of its own: a second bar interleaves with the first."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not args.disable_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True, leave=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if any(k.startswith("eval_") for k in logs):
            self.write(console.evaluation_line(logs, state.global_step, state.max_steps))
        elif "loss" in logs:
            self.write(console.training_line(logs, state.global_step, state.max_steps))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    @classmethod
    def replace_defaults(cls, trainer) -> None:
        """Take the place of the progress bar (or printer) the Trainer installs by default."""
        from transformers.trainer import DEFAULT_PROGRESS_CALLBACK
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for default in {ProgressCallback, PrinterCallback, DEFAULT_PROGRESS_CALLBACK}:
            trainer.remove_callback(default)
        trainer.add_callback(cls())
