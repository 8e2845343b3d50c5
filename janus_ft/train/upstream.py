"""Every place janus_ft reaches into a dependency's private API, in one module.

- transformers' `Trainer._save_checkpoint` / `_get_output_dir`: overridden so a checkpoint is
  written aside and renamed into place (`AtomicCheckpoints`);
- TRL's `unwrap_model_for_generation` (public in `trl.models.utils`, listed here as it reaches into
  DeepSpeed's hooks): GRPO samples from ZeRO-3 weights gathered on every rank (`base.generation_model`);
- accelerate's `AcceleratorState._reset_state`: DeepSpeed over gloo on CPU ranks needs the state
  rebuilt (`reset_accelerate_state`).

tests/test_upstream.py checks each of these against the installed versions, so an upgrade that
changes them fails there, by name, instead of somewhere deep in a training run.
"""

from __future__ import annotations

from pathlib import Path

from ..files import publish
from .checkpoint import STAGING, clear_staging, save_error


class AtomicCheckpoints:
    """Mixin for a transformers `Trainer`: checkpoints are written then renamed."""

    _staging: Path | None = None

    def _save_checkpoint(self, model, trial):
        """Write then rename: the Trainer writes the whole checkpoint into `output_dir/.staging`, which
        then moves to `output_dir/checkpoint-N` in one rename (by the main process, after every rank
        has written its part). Older checkpoints are rotated only after that, so a kill at any point
        leaves every complete checkpoint as it was."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.is_world_process_zero():
            clear_staging(run_dir)
        self.accelerator.wait_for_everyone()
        self._staging = run_dir / STAGING
        try:
            super()._save_checkpoint(model, trial)
        except OSError as err:
            if self.is_world_process_zero():
                clear_staging(run_dir)
            raise save_error(err, name, run_dir) from None
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            publish(run_dir / STAGING / name, run_dir / name)
            clear_staging(run_dir)
            if self.state.best_model_checkpoint:   # recorded under the staging path
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(f"/{STAGING}/", "/")
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial):
        # While a checkpoint is being saved, the Trainer's run directory is the staging directory.
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)


def reset_accelerate_state() -> None:
    """Forget accelerate's process state (the process group itself stays), so it can be rebuilt."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
