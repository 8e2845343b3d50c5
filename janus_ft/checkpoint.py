"""Checkpoints and the output directory: never lose a run.

- A checkpoint is written into `output_dir/.staging/checkpoint-N` and renamed into place only when
  every file is on disk, so a kill at any moment leaves the previous checkpoints as they were and
  `get_last_checkpoint` (resume) never picks a half-written one.
- SIGINT / SIGTERM end the current optimizer step, save a checkpoint and stop; a second signal
  interrupts at once.
- An `output_dir` that already holds something is only written into when the recipe says resume
  or overwrite: a typo in `output_dir` must not clobber yesterday's run.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from .errors import RecipeError, UserError

STAGING = ".staging"   # hidden: transformers' checkpoint regex (`checkpoint-N`) never matches it
RUN_FILES = ("recipe.yaml", "trainer_state.json", "adapter_config.json", "mixture.json")


class TrainingError(UserError):
    """Training stopped for a reason the user must act on (non-finite loss, disk full): a clear
    message and exit code 1, not a traceback."""

    exit_code = 1


def check_output_dir(output_dir: str | Path, resume: bool, overwrite: bool, main_process: bool = True) -> None:
    """Refuse a non-empty `output_dir` unless resuming or overwriting; make sure it is writable.
    Runs before any weight loads."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RecipeError(f"output_dir {out} is a file, not a directory")
    contents = sorted(p.name for p in out.iterdir() if p.name != STAGING) if out.is_dir() else []
    if contents and not (resume or overwrite):
        shown = ", ".join(contents[:4]) + (", ..." if len(contents) > 4 else "")
        kind = "an earlier janus-ft run" if any(n in contents for n in RUN_FILES) or any(
            n.startswith("checkpoint-") for n in contents) else "other files"
        raise RecipeError(f"output_dir {out} is not empty: it holds {kind} ({shown}). Pass train.resume=true "
                          "to continue it, train.overwrite_output_dir=true to replace it, or choose another output_dir")
    if not main_process:
        return
    if contents and overwrite and not resume:
        for name in contents:
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    _check_writable(out)


def _check_writable(out: Path) -> None:
    probe = out / f".janus-ft-write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RecipeError(f"output_dir {out}: cannot write there ({err.strerror or err})") from None


def publish(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint into place. A checkpoint of the same step left by an earlier
    attempt is moved aside first and deleted only after the new one is in place."""
    old = None
    if final.exists():
        old = final.with_name(f"{STAGING}-old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clear_staging(output_dir: str | Path) -> None:
    """Remove what a killed save left behind (never a complete checkpoint: those are renamed out)."""
    shutil.rmtree(Path(output_dir) / STAGING, ignore_errors=True)


def save_error(err: OSError, what: str, output_dir: str | Path) -> TrainingError:
    """A clear message for a checkpoint that could not be written (disk full, permissions)."""
    from transformers.trainer_utils import get_last_checkpoint

    reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    kept = f"the last complete checkpoint, {last}, is intact" if last else "no earlier checkpoint exists"
    return TrainingError(f"cannot write {what} in {output_dir}: {reason}. Training stopped; {kept} "
                         "(resume with train.resume=true once there is room)")


class SaveEverySteps(TrainerCallback):
    """Checkpoints exactly every `train.save_steps`. transformers also writes one at the last step
    whatever `save_steps` says: with save_steps beyond max_steps that is a checkpoint (adapter,
    optimizer state, RNG) no recipe asked for, beside the final adapter janus_ft writes anyway.
    `train.save_last` keeps it, for a run to be continued from its very last step. Registered
    before `SignalCheckpoint`, whose save on a signal always stands."""

    def __init__(self, keep_last: bool = False):
        self.keep_last = keep_last

    def on_step_end(self, args, state, control, **kwargs):
        last = state.global_step >= state.max_steps
        if (last and not self.keep_last and args.save_strategy == "steps" and state.save_steps > 0
                and state.global_step % state.save_steps):
            control.should_save = False


class SignalCheckpoint(TrainerCallback):
    """SIGINT / SIGTERM: finish the optimizer step, save a checkpoint, stop training.

    The first signal only sets a flag (a checkpoint needs the step's state to be consistent); the
    second one restores the default handlers and re-raises, for a user who really wants out now.
    Under several processes the flag is all-reduced at each step, so every rank stops at the same
    step (a rank saving alone would wait forever in the checkpoint's collectives).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        print(f"\njanus-ft: {signal.Signals(signum).name} received: saving a checkpoint after this step "
              "(send it again to stop at once)", flush=True)

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        import threading
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed_stop():
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def _agreed_stop(self) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.received is not None
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([0 if self.received is None else self.received], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.received is None:
            self.received = int(flag.item())
        return bool(flag.item())
