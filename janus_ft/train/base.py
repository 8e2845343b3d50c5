"""The base of janus_ft's trainers: what SFT, DPO and GRPO share, on transformers' `Trainer`.

A method's trainer (`sft.SftTrainer`, `dpo.DpoTrainer`, `grpo_trainer.GrpoTrainer`) subclasses this
and adds only its loss (`compute_loss`) and, for GRPO, its batches (sampled in `_prepare_inputs`),
as TRL's trainers sit side by side on one base. Everything else is here or is transformers':

- checkpoints written then renamed (`upstream.AtomicCheckpoints`), signals (`SignalCheckpoint`
  gets the accelerator to agree on a stop over the ranks);
- the NaN policy (`guard`): a non-finite loss stops the run, or with `train.nan_policy: skip` that
  micro-batch counts for nothing, judged on the sums over all ranks so all ranks act alike;
- one metric store (`metrics.MetricStore`): device sums, reduced over the ranks and read once per log;
- the evaluation probe (answers, image grids; GRPO's held-out rewards): its metrics join the
  evaluation's log entry, its grid goes to `output_dir/samples/step-N.png` (the UI's runs tab) and
  to TensorBoard;
- the console (`callbacks.ConsoleCallback` in place of transformers' progress bar and printer).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate.logging import get_logger
from transformers import Trainer

from ..model.heads import HEAD_CHUNK_SIZE
from .callbacks import ConsoleCallback
from .checkpoint import SignalCheckpoint, TrainingError
from .metrics import MetricStore, means
from .upstream import AtomicCheckpoints

logger = get_logger(__name__)


def outputs(loss, return_outputs: bool):
    """What `compute_loss` returns: the loss, or with `return_outputs` (the Trainer's evaluation) the
    loss and no outputs to gather -- an empty dict, which the Trainer reads as no logits."""
    return (loss, {}) if return_outputs else loss


class JanusTrainer(AtomicCheckpoints, Trainer):
    def __init__(self, *args, probe=None, nan_policy: str = "stop", head_chunk_size: int = HEAD_CHUNK_SIZE, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe = probe             # `run(model, state) -> (metrics, grid image or None)`, see train.probe
        self.nan_policy = nan_policy   # "stop" | "skip" (train.nan_policy)
        self.head_chunk_size = head_chunk_size   # targets a head scores at a time (model.head_chunk_size)
        self.skipped_batches = 0
        self.metrics = MetricStore()
        self._evaluating = False
        self._pending = None           # this step's sums, not judged yet (see `guard`)
        self._flops_params: int | None = None
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, SignalCheckpoint):
                callback.accelerator = self.accelerator
        ConsoleCallback.replace_defaults(self)

    # ---- the NaN policy ---------------------------------------------------------------------------

    def guard(self, model, sums: torch.Tensor, names: list[str], return_outputs: bool, kind: str = "task(s) "):
        """None while the micro-batch's `sums` ((rows, 2): a loss sum and its count per name, e.g.
        per task) are finite; else what `compute_loss` must return instead of its loss (or it raises).

        Judged when it is time: every micro-batch under nan_policy=skip, else the step's last one --
        before its backward, so before any optimizer step (DeepSpeed steps inside that backward).
        The sums stay on the device until then: reading them is the step's one host sync."""
        pending = sums.detach() if self._pending is None else self._pending + sums.detach()
        if self.nan_policy != "skip" and not self.accelerator.sync_gradients:
            self._pending = pending
            return None
        self._pending = None
        pending = self.all_ranks(pending)
        bad = [name for name, (value, n) in zip(names, pending.tolist()) if n and not math.isfinite(value)]
        return self._non_finite(model, kind + ", ".join(bad), return_outputs) if bad else None

    def _non_finite(self, model, where: str, return_outputs: bool):
        """A NaN / inf loss never reaches the weights: stop (default), or with train.nan_policy=skip
        give this micro-batch a zero loss. The zero is `0 * parameter` summed over the trainable
        parameters, so every one gets a (zero) gradient and DDP's all-reduce still lines up."""
        step = self.state.global_step + 1
        if self.nan_policy != "skip":
            from transformers.trainer_utils import get_last_checkpoint

            last = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
            raise TrainingError(
                f"non-finite loss at step {step} in {where}: training stopped"
                + (f"; the last good checkpoint is {last}" if last else "; no checkpoint was written yet")
                + ". Lower train.learning_rate, check that data, or set train.nan_policy=skip")
        self.skipped_batches += 1
        self.metrics.add("train", ["skipped_batches"], torch.tensor([float(self.skipped_batches)]))
        logger.warning(f"non-finite loss at step {step} in {where}: micro-batch skipped "
                       f"({self.skipped_batches} so far)")
        zero = sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
        return outputs(zero, return_outputs)

    def all_ranks(self, sums: torch.Tensor) -> torch.Tensor:
        """`sums` added over all processes (one all-reduce; itself with one process)."""
        if self.accelerator.num_processes == 1:
            return sums
        return self.accelerator.reduce(sums.to(self.accelerator.device), reduction="sum")

    def reentrant_checkpointing(self) -> bool:
        """Whether the LLM's input embeddings must carry a gradient: only under reentrant activation
        checkpointing, whose layers return none unless an input requires one (read at every step: a
        launcher may switch it after janus_ft built the arguments; unset, torch's default is reentrant)."""
        args = self.args
        return bool(args.activation_checkpointing) and (args.activation_checkpointing_kwargs or {}).get(
            "use_reentrant", True)

    # ---- logging and evaluation -------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return "eval" if self._evaluating else "train"

    def log(self, logs: dict, start_time=None) -> None:
        """The store's metrics since the last log (over all ranks) join the entry -- as `eval_<name>`
        during an evaluation, with the probe's answers, rewards and grid -- so one evaluation is one
        entry in log_history and TensorBoard and one console line. `logs` is also the dict
        `evaluate` returns, so they are in its result too."""
        mode = self.mode
        # A training log is one with the loss; the Trainer's closing entry (train_runtime, ...) is not.
        if mode == "eval" or "loss" in logs:
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + k: v for k, v in self.metric_values(self.metrics.pop(mode, self.accelerator)).items()})
        if self._evaluating:
            logs.update(self._probe())
        super().log(logs, start_time)

    def metric_values(self, stats: dict) -> dict[str, float]:
        """What the store's (sum, count, squares) become in the log: means; methods add derived ones."""
        return means(stats)

    def evaluate(self, *args, **kwargs) -> dict:
        """The Trainer's evaluation (loss per task over the evaluation set) with the probe's
        metrics; a method with no evaluation loss (GRPO) evaluates with its probe alone."""
        self._evaluating = True
        try:
            if self.eval_dataset is not None and self.has_eval_loss:
                return super().evaluate(*args, **kwargs)
            metrics: dict = {}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics
        finally:
            self._evaluating = False

    has_eval_loss = True   # whether the evaluation set has a loss (SFT, DPO) or is only probed (GRPO)

    def _probe(self) -> dict:
        probe = self.probe
        if probe is None or not probe.enabled():
            return {}
        from transformers.integrations import is_deepspeed_zero3_enabled

        every_rank = getattr(probe, "every_rank", False)
        if not every_rank and (not self.is_world_process_zero() or is_deepspeed_zero3_enabled()):
            return {}   # generating on one rank while ZeRO-3 shards the weights would wait for the others
        with self.generation_model() if every_rank else nullcontext(self.accelerator.unwrap_model(self.model)) as model:
            metrics, grid = probe.run(model, self.state)
        if grid is not None and self.is_world_process_zero():
            self.publish_grid(grid)
        return metrics

    @contextmanager
    def generation_model(self):
        """The model to sample from, every rank at once: under ZeRO-3 its weights gathered on each
        rank for the duration (TRL's helper), so ranks sampling different lengths never wait on
        each other's shards."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        if not is_deepspeed_zero3_enabled():
            yield self.accelerator.unwrap_model(self.model)
            return
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gradient_checkpointing_kwargs=self.args.activation_checkpointing_kwargs) as model:
            yield model

    def publish_grid(self, grid) -> Path:
        """An evaluation's sample grid: `output_dir/samples/step-N.png`, and an image in the event
        file the TensorBoard callback writes the scalars to."""
        path = Path(self.args.output_dir) / "samples" / f"step-{self.state.global_step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        from transformers.integrations import TensorBoardCallback

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                import numpy as np

                callback.tb_writer.add_image("eval/samples", np.asarray(grid.convert("RGB")), self.state.global_step,
                                             dataformats="HWC")
        return path

    def floating_point_ops(self, inputs) -> int:
        """transformers' estimate for `total_flos` (6 x tokens x non-embedding parameters), with the
        parameter count taken once: transformers walks every parameter tensor on every micro-batch
        only to log this number (10 ms a step at Janus-Pro-1B size, docs/benchmarks.md)."""
        if self._flops_params is None:
            model = self.model
            self._flops_params = model.num_parameters(exclude_embeddings=True) if hasattr(model, "num_parameters") else 0
        ids = inputs.get("input_ids")
        return 6 * ids.numel() * self._flops_params if torch.is_tensor(ids) else 0
