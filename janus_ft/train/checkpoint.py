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
import re
import shutil
import signal
from pathlib import Path

from accelerate.logging import get_logger
from transformers import TrainerCallback

from ..errors import RecipeError, UserError

logger = get_logger(__name__)

STAGING = ".staging"   # hidden: transformers' checkpoint regex (`checkpoint-N`) never matches it
RUN_FILES = ("recipe.yaml", "trainer_state.json", "adapter_config.json", "mixture.json")


class TrainingError(UserError):
    """Training stopped for a reason the user must act on (non-finite loss, disk full): a clear
    message and exit code 1, not a traceback."""

    exit_code = 1


def check_output_dir(output_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse a non-empty `output_dir` unless resuming or overwriting (then empty it); make sure it
    is writable. Runs before any weight loads, on the main process only: it writes (the probe, the
    deletions), so another rank listing the directory meanwhile would judge a half-done state."""
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
    if contents and overwrite and not resume:
        try:
            for name in contents:
                path = out / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError as err:
            raise RecipeError(f"output_dir {out}: cannot empty it for train.overwrite_output_dir "
                              f"({err.strerror or err}: {err.filename})") from None
    _check_writable(out)


def _check_writable(out: Path) -> None:
    probe = out / f".janus-ft-write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RecipeError(f"output_dir {out}: cannot write there ({err.strerror or err})") from None


def clear_staging(output_dir: str | Path) -> None:
    """Remove what a killed save left behind (never a complete checkpoint: those are renamed out)."""
    shutil.rmtree(Path(output_dir) / STAGING, ignore_errors=True)


def save_error(err: OSError, what: str, output_dir: str | Path) -> TrainingError:
    """A clear message for a checkpoint that could not be written (disk full, permissions)."""
    reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return TrainingError(f"cannot write {what} in {output_dir}: {reason}. Training stopped; {_kept(output_dir)} "
                         "(resume with train.resume=true once there is room)")


def lost_process_error(err: Exception, step: int, output_dir: str | Path) -> TrainingError:
    """A clear message for the ranks left when another process of the job died (killed, out of
    memory): which one and why is in the launcher's report; what matters here is what is on disk."""
    # gloo: "[.../pair.cc:537] Read error [127.0.0.1]:2700: Connection reset by peer. This is ..."
    detail = re.sub(r"^\[[^\]]*\]\s*", "", (str(err).strip().splitlines() or [""])[0]).split(". ")[0]
    return TrainingError(f"another process of this job is gone ({detail or type(err).__name__}): training stopped "
                         f"after step {step}; {_kept(output_dir)} (continue with train.resume=true)")


def _kept(output_dir: str | Path) -> str:
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    return f"the last complete checkpoint, {last}, is intact" if last else "no earlier checkpoint exists"


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
        self.accelerator = None   # the Trainer's, set by JanusTrainer: it reduces the flag over ranks
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        # Per rank on purpose: only the rank that received the signal says so.
        logger.warning(f"{signal.Signals(signum).name} received: saving a checkpoint after this step "
                       "(send it again to stop at once)", main_process_only=False)

    def restore(self):
        """The handlers from before training (also after a failed one, see `sft.train`)."""
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
        self.restore()

    def _agreed_stop(self) -> bool:
        """Whether any rank received a signal: accelerate's trigger, reduced over all ranks each step."""
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return self.received is not None
        if self.received is not None:
            self.accelerator.set_trigger()
        if not self.accelerator.check_trigger():
            return False
        # The other ranks stop as if told to terminate (the signal number is not shared).
        self.received = self.received or signal.SIGTERM
        return True
