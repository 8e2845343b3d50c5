"""Trainer: TRL's `SFTTrainer` with the Janus mixed-task loss.

The one subclass in janus_ft (STYLE.md rule 6): `compute_loss` must score image tokens with the
generation head, which no stock forward does. Everything else -- optimiser, schedule, gradient
accumulation, checkpoints, resume, DDP / DeepSpeed / FSDP, logging -- is TRL / transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback
from trl import SFTTrainer

from .dataset import TASK_NAMES
from .loss import compute_loss_parts


class JanusTrainer(SFTTrainer):
    def __init__(self, *args, probe=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe = probe   # janus_ft.probe.TrainingProbe: answers and images at each evaluation
        # Our loss is a sum over supervised tokens divided by the Trainer's count over the whole
        # accumulated step, so gradient accumulation gives the same update as one large batch.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        parts = compute_loss_parts(model, inputs)
        mode = "train" if model.training else "eval"
        for task, (loss_sum, n) in parts.per_task.items():
            self._metrics[mode][f"loss_{TASK_NAMES[task]}"].append(loss_sum / n)
        if num_items_in_batch is not None:
            loss = parts.total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = parts.total / max(parts.n_tokens, 1)
        return (loss, None) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        """The Trainer's evaluation (loss per task), then the probe's generated answers and images."""
        metrics = super().evaluate(*args, **kwargs)
        if self.probe is None or not self.probe.enabled():
            return metrics
        from transformers.integrations import is_deepspeed_zero3_enabled

        # Generating on one rank while ZeRO-3 shards the weights would wait forever for the others.
        if is_deepspeed_zero3_enabled():
            return metrics
        if self.is_world_process_zero():
            extra, grid = self.probe.run(self.accelerator.unwrap_model(self.model), self.state.global_step,
                                         Path(self.args.output_dir))
            if grid is not None:
                from .probe import tensorboard_image
                tensorboard_image(self.callback_handler.callbacks, "eval/samples", grid, self.state.global_step)
            self.log(extra)
            metrics.update(extra)
        return metrics


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
