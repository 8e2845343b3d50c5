"""Trainer callbacks every method shares: `mixture.json` and the console lines."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from . import console


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
    `train.disable_tqdm`), with a line per training log and one per evaluation printed above it
    (`console.log_line`). The evaluation gets no bar of its own: a second bar interleaves with the first."""

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
        if state.is_world_process_zero and logs:
            line = console.log_line(logs, state.global_step, state.max_steps)
            if line:
                self.write(line)

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
