"""What a training run prints: one line per training log and per evaluation, a closing summary,
and the short list of third-party warnings it hides. (The Trainer callback that prints the lines is
`callbacks.ConsoleCallback`; this module imports no ML library, so `cli` can hide import-time
warnings before the libraries that raise them load.)

A warning that janus_ft's own calls would cause is fixed at the call, never hidden here. What is
hidden is a warning raised inside a library whatever its caller passes, which the user can do
nothing about: each entry of `QUIET` names the exact message (its start), the category or logger,
and why. Everything else is still shown. Lines are printed by the main process only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..janus import TASKS
from .plot import loss_series


@dataclass(frozen=True)
class Quiet:
    message: str                            # the start of the exact message
    reason: str
    category: type[Warning] | None = None   # a `warnings.warn` of this category...
    logger: str | None = None               # ...or a record logged by this logger


QUIET = (
    Quiet("`is_gradient_checkpointing` is deprecated", category=FutureWarning,
          reason="PEFT's PeftModel reads transformers' deprecated alias whenever it wraps a model "
                 "(get_peft_model); janus_ft's own code uses `is_activation_checkpointing`"),
    Quiet("Passing `generation_config` together with generation-related arguments=({'guidance_scale'})",
          logger="transformers.generation.utils",
          reason="transformers' Janus `generate` in text mode passes `guidance_scale=None` next to the "
                 "generation config it built itself, whatever the caller passes"),
    Quiet("Setting accelerator to CPU.", logger="DeepSpeed",
          reason="DeepSpeed, when installed, says so on import on every machine without a GPU, "
                 "also in runs that do not use it"),
    Quiet("Failed to load CPU gemm_4bit_forward from kernels-community", logger="bitsandbytes.backends.cpu.ops",
          reason="bitsandbytes, when installed, logs it on import on CPUs with AVX512-BF16, also in runs "
                 "that quantize nothing; 4-bit on CPU then uses bitsandbytes' own (slower) kernel"),
)


class _Drop(logging.Filter):
    def __init__(self, quiet: Quiet):
        super().__init__()
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.quiet.message)


@contextlib.contextmanager
def quiet_third_party(entries: tuple[Quiet, ...] = QUIET):
    """Hide exactly the `entries` while the block runs (warning filters and logger filters are
    restored afterwards, so a program calling janus_ft in-process keeps its own settings)."""
    drops = [(logging.getLogger(q.logger), _Drop(q)) for q in entries if q.logger]
    with warnings.catch_warnings():
        for q in entries:
            if q.category is not None:
                warnings.filterwarnings("ignore", message=re.escape(q.message), category=q.category)
        for logger, drop in drops:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger, drop in drops:
                logger.removeFilter(drop)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tasks_in(keys) -> list[str]:
    return [t for t in TASKS if any(t in k for k in keys)]


def training_line(logs: dict, step: int, max_steps: int) -> str:
    """`step 5/60 | loss 5.701 | understanding 6.004  text 6.195  generation 5.623 | lr 0.002  grad_norm 1.69`"""
    per_task = "  ".join(f"{t} {_number(logs[f'loss_{t}'])}" for t in _tasks_in(logs) if f"loss_{t}" in logs)
    rest = "  ".join(f"{k.replace('learning_rate', 'lr')} {_number(logs[k])}"
                     for k in ("learning_rate", "grad_norm", "skipped_batches") if k in logs)
    return " | ".join(p for p in (f"step {step}/{max_steps}", f"loss {_number(logs['loss'])}", per_task, rest) if p)


_EVAL_TIMING = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_loss"}


def evaluation_line(logs: dict, step: int, max_steps: int) -> str:
    """`eval step 30/60 | loss understanding 2.63  generation 4.6 | understanding exact_match 0.25 ...`:
    the per-task validation loss, then every task metric the evaluation logged."""
    losses = "  ".join(f"{t} {_number(logs[f'eval_loss_{t}'])}" for t in TASKS
                       if f"eval_loss_{t}" in logs)
    metrics = []
    for task in TASKS:
        prefix = f"eval_{task}_"
        named = [f"{k[len(prefix):]} {_number(v)}" for k, v in logs.items() if k.startswith(prefix)]
        if named:
            metrics.append(f"{task} " + "  ".join(named))
    parts = [f"eval step {step}/{max_steps}", f"loss {losses}" if losses else "", *metrics]
    return " | ".join(p for p in parts if p)


def log_line(logs: dict, step: int, max_steps: int) -> str | None:
    """The console line of a log entry: an evaluation, a training log (rewards for GRPO), or None."""
    if "eval_reward" in logs:
        return reward_evaluation_line(logs, step, max_steps)
    if any(k.startswith("eval_") for k in logs):
        return evaluation_line(logs, step, max_steps)
    if "reward" in logs:
        return reward_line(logs, step, max_steps)
    if "loss" in logs:
        return training_line(logs, step, max_steps)
    return None


def _named_rewards(logs: dict, prefix: str) -> str:
    keys = [k for k in logs if k.startswith(prefix) and not k.endswith("/std")]
    return "  ".join(f"{k.split('/')[1]} {logs[k]:.3f}" for k in keys)


def reward_line(logs: dict, step: int, max_steps: int) -> str:
    """`step 3/30 | reward 0.412 (std 0.31) | exact_match 0.250  format 0.900 | kl 0.01  lr 2e-05`"""
    rest = "  ".join(f"{k.replace('learning_rate', 'lr')} {logs[k]:.4g}" for k in (
        "kl", "clip_ratio/region_mean", "completions/mean_length", "learning_rate", "skipped_batches") if k in logs)
    return (f"step {step}/{max_steps} | reward {logs['reward']:.3f} (std {logs.get('reward_std', 0):.3f}) | "
            f"{_named_rewards(logs, 'rewards/')} | {rest}")


def reward_evaluation_line(logs: dict, step: int, max_steps: int) -> str:
    """`eval step 10/30 | reward 0.503 | exact_match 0.400  format 1.000`"""
    return f"eval step {step}/{max_steps} | reward {logs['eval_reward']:.3f} | {_named_rewards(logs, 'eval_rewards/')}"


def reward_summary(log_history: list[dict], steps: int, seconds: float, out: Path) -> str:
    """`20 steps in 95 s; reward (train) 0.41 -> 0.63, held-out 0.40 -> 0.61; outputs in DIR`"""
    def first_last(key):
        values = [e[key] for e in log_history if key in e]
        return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else None

    parts = [f"{label} {span}" for label, span in (("reward (train)", first_last("reward")),
                                                   ("held-out", first_last("eval_reward"))) if span]
    return (f"{steps} steps in {seconds:.0f} s; " + ", ".join(parts)
            + f"; adapter, processor, recipe.yaml, trainer_state.json, loss.png, reward.png in {out}")


def summary(log_history: list[dict], steps: int, seconds: float, out: Path) -> str:
    """The closing lines of a run: steps and time, each task's training and validation loss at the
    first and the last time it was logged, and where the outputs are."""
    series = loss_series(log_history)
    lines = [f"{steps} steps in {seconds:.0f} s; loss per task, first -> last logged:"]
    for task in _tasks_in(series):
        cells = [f"{label} {points[0][1]:.3f} -> {points[-1][1]:.3f}" for label, points in
                 (("train", series.get(f"loss_{task}")), ("eval", series.get(f"eval_loss_{task}"))) if points]
        lines.append(f"  {task:<14} " + "   ".join(cells))
    samples = " and sample grids in samples/" if (out / "samples").is_dir() else ""
    lines.append(f"adapter, processor, recipe.yaml, mixture.json, trainer_state.json, loss.png"
                 f"{samples} in {out}")
    return "\n".join(lines)
