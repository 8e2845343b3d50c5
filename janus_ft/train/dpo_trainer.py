"""The preference trainer: `JanusTrainer` (checkpoints, signals, NaN guard, resume, logging) with a
DPO / IPO loss in place of the token loss.

A batch is a `PairCollator` batch (chosen rows, then rejected rows); one forward scores both sides
(`janus_ft.model.logprobs`), the reference is the same weights with the LoRA adapter disabled (no
second model in memory) unless the pairs carry precomputed reference log-probs. Per task it logs
`loss_<task>` (mean pair loss) and TRL's DPO metrics: `rewards/chosen`, `rewards/rejected`,
`rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected`, each for all pairs and
with a `_<task>` suffix per task, summed over the ranks and the logging interval.
"""

from __future__ import annotations

import torch

from ..janus import TASK_IDS, TASK_NAMES
from ..model.logprobs import target_logps
from ..model.preference import preference_loss
from .trainer import JanusTrainer
from .upstream import record_metric

# Columns of the per-task statistics: pairs first, then sums over pairs.
STATS = ("pairs", "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected")


class JanusDpoTrainer(JanusTrainer):
    def __init__(self, *args, dpo=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo = dpo   # janus_ft.recipe.dpo.DpoArgs
        # The loss is a mean over the micro-batch's pairs: the Trainer divides it by the accumulation
        # steps (equal micro-batches give the mean over the step) and DDP averages over the ranks.
        self.model_accepts_loss_kwargs = False
        self._stats = {"train": None, "eval": None}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = target_logps(model, inputs, input_grad=self._reentrant_checkpointing())
        sums, counts = logps.sums, logps.counts
        n = sums.shape[0] // 2
        ref = inputs.get("ref_logps")
        ref_chosen, ref_rejected = (ref[:, 0], ref[:, 1]) if ref is not None else self.reference_logps(
            model, inputs).split(n)
        d = self.dpo
        out = preference_loss(sums[:n], sums[n:], ref_chosen.to(sums.dtype), ref_rejected.to(sums.dtype),
                              counts[:n], counts[n:], d.beta, d.loss_type, d.label_smoothing, d.rpo_alpha)
        stats = pair_stats(inputs["task_ids"][:n, 0], out, sums[:n].detach(), sums[n:].detach())
        if model.training:
            bad = self._judge(stats[:, [1, 0]])   # (loss sum, pairs) per task: the NaN guard and loss_<task>
            if bad:
                return self._non_finite(model, bad, return_outputs)
        else:
            self._add_to_log("eval", self._all_ranks(stats[:, [1, 0]]))
        self._add_stats("train" if model.training else "eval", stats)
        loss = out.losses.mean()
        return (loss, None) if return_outputs else loss

    def reference_logps(self, model, inputs) -> torch.Tensor:
        """Summed target log-probabilities of every row under the reference: the adapter disabled."""
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), unwrapped.disable_adapter():
            return target_logps(unwrapped, inputs, input_grad=False).sums

    def _add_stats(self, mode: str, stats: torch.Tensor) -> None:
        held = self._stats[mode]
        self._stats[mode] = stats if held is None else held + stats

    def log(self, logs: dict, start_time=None) -> None:
        mode = "train" if self.model.training else "eval"
        stats, self._stats[mode] = self._stats[mode], None
        if stats is not None:
            for key, value in stats_metrics(self._all_ranks(stats)).items():
                record_metric(self, mode, key, value)
        super().log(logs, start_time)


def pair_stats(tasks: torch.Tensor, out, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """(tasks, len(STATS)) sums over the pairs of each task, on the device (read once per log)."""
    columns = torch.stack([torch.ones_like(chosen), out.losses.detach(), out.chosen_rewards, out.rejected_rewards,
                           (out.chosen_rewards > out.rejected_rewards).to(chosen.dtype), chosen, rejected], 1)
    return columns.new_zeros(len(TASK_IDS), len(STATS)).index_add_(0, tasks, columns)


def stats_metrics(stats: torch.Tensor) -> dict[str, float]:
    """TRL's DPO metric names, over all pairs and per task (`_<task>` suffix); margins = chosen - rejected."""
    rows = {"": stats.sum(0).tolist()} | {f"_{TASK_NAMES[t]}": row for t, row in enumerate(stats.tolist())}
    out = {}
    for suffix, row in rows.items():
        n = row[0]
        if not n:
            continue
        means = {name: value / n for name, value in zip(STATS[2:], row[2:])}
        means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        out.update({f"{name}{suffix}": value for name, value in means.items()})
    return out
