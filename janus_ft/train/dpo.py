"""Preference tuning (`janus-ft dpo`, `janus_ft.dpo`): DPO / IPO with LoRA on pairs of any task.

On the run lifecycle (`train.run`), DPO reads and checks pairs (TRL's prompt/chosen/rejected,
ms-swift's rejected_response, text-to-image and edit pairs with rejected_images) before any weight loads,
builds one pair dataset per task (both sides' images VQ-encoded once) mixed at `data.mix`, and
trains the preference loss: one forward scores both sides (`model.logprobs`), the reference being
the same weights with the LoRA adapter disabled (no second model in memory) unless the pairs carry
precomputed reference log-probs (`dpo.precompute_ref`). Per task it logs `loss_<task>` (mean pair
loss) and TRL's DPO metrics -- `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected` -- over all pairs and with a `_<task>` suffix.
"""

from __future__ import annotations

import time

import torch
from accelerate.logging import get_logger

from ..data.dataset import JanusDataset, coded_images, require_tasks, vq_codes, warn_dropped
from ..data.edit import EditSettings
from ..data.images import bad_images_error
from ..data.mixture import MixtureDataset, steps_for_epochs
from ..data.preference import PAIR_KEYS, PairCollator, PairDataset, check_pair_images, parse_pair
from ..data.sources import read_source
from ..janus import TASK_IDS, TASK_NAMES
from ..model.heads import HEAD_CHUNK_SIZE
from ..model.logprobs import target_logps
from ..model.preference import preference_loss
from ..recipe import Recipe, parse_source
from .base import JanusTrainer, outputs
from .callbacks import MixtureCallback
from .run import Method, Setup
from .sft import concat_lazily, global_batch

logger = get_logger(__name__)

# Per-task statistics of a micro-batch's pairs, summed (the count is the pairs); logged per task
# (`loss_<task>`, `rewards/chosen_<task>`, ...) and, but for the loss, over all pairs.
STATS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected")
TASK_STATS = [f"loss_{TASK_NAMES[t]}" if s == "loss" else f"{s}_{TASK_NAMES[t]}" for t in sorted(TASK_NAMES) for s in STATS]


class DpoTrainer(JanusTrainer):
    # The loss is a mean over the micro-batch's pairs: the Trainer divides it by the accumulation
    # steps (equal micro-batches give the mean over the step) and DDP averages over the ranks.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, dpo=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo = dpo   # janus_ft.recipe.dpo.DpoArgs
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = target_logps(model, inputs, self.reentrant_checkpointing(), self.head_chunk_size)
        sums, counts = logps.sums, logps.counts
        n = sums.shape[0] // 2
        ref = inputs.get("ref_logps")
        ref_chosen, ref_rejected = (ref[:, 0], ref[:, 1]) if ref is not None else self.reference_logps(
            model, inputs).split(n)
        d = self.dpo
        out = preference_loss(sums[:n], sums[n:], ref_chosen.to(sums.dtype), ref_rejected.to(sums.dtype),
                              counts[:n], counts[n:], d.beta, d.loss_type, d.label_smoothing, d.rpo_alpha)
        stats, pairs = pair_stats(inputs["task_ids"][:n, 0], out, sums[:n].detach(), sums[n:].detach())
        if model.training:
            stopped = self.guard(model, torch.stack([stats[:, 0], pairs], 1), list(TASK_NAMES.values()), return_outputs)
            if stopped is not None:
                return stopped
        self.metrics.add(self.mode, TASK_STATS, stats.flatten(), pairs.repeat_interleave(len(STATS)))
        self.metrics.add(self.mode, list(STATS[1:]), stats[:, 1:].sum(0), pairs.sum())
        loss = out.losses.mean()
        return outputs(loss, return_outputs)

    def reference_logps(self, model, inputs) -> torch.Tensor:
        """Summed target log-probabilities of every row under the reference: the adapter disabled."""
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), unwrapped.disable_adapter():
            return target_logps(unwrapped, inputs, False, self.head_chunk_size).sums

    def metric_values(self, stats: dict) -> dict[str, float]:
        """Means, and `rewards/margins` (chosen - rejected) wherever both are there."""
        values = super().metric_values(stats)
        for key in [k for k in values if k.startswith("rewards/chosen")]:
            rejected = key.replace("rewards/chosen", "rewards/rejected")
            if rejected in values:
                values[key.replace("rewards/chosen", "rewards/margins")] = values[key] - values[rejected]
        return values


def pair_stats(tasks: torch.Tensor, out, chosen: torch.Tensor, rejected: torch.Tensor):
    """((tasks, len(STATS)) sums over the pairs of each task, (tasks,) pairs), on the device."""
    columns = torch.stack([out.losses.detach(), out.chosen_rewards, out.rejected_rewards,
                           (out.chosen_rewards > out.rejected_rewards).to(chosen.dtype), chosen, rejected], 1)
    sums = columns.new_zeros(len(TASK_IDS), len(STATS)).index_add_(0, tasks, columns)
    return sums, columns.new_zeros(len(TASK_IDS)).index_add_(0, tasks, torch.ones_like(chosen))


def read_pairs(sources, seed: int) -> list:
    """Every pair of the given sources, validated (the first bad one raises)."""
    pairs = []
    for i, src in enumerate(sources):
        pairs += read_source(parse_source(src, f"source {i}"), seed, parse=parse_pair)
    return pairs


def read_pair_data(recipe: Recipe) -> tuple[list, list]:
    """(train, val) pairs, every pair and every image of both sides checked."""
    train_pairs, val_pairs = (read_pairs(s, recipe.train.seed) for s in (recipe.data.train, recipe.data.val))
    require_tasks({t: [p for p in train_pairs if p.task == t] for t in recipe.data.mix}, recipe.data.mix)
    bad_images = check_pair_images(train_pairs + val_pairs)
    if bad_images:
        raise bad_images_error(bad_images)
    return train_pairs, val_pairs


def build_pair_datasets(pairs, model, processor, recipe: Recipe, fmt: str) -> dict[str, PairDataset]:
    """One `PairDataset` per task; both sides' generation and edit targets (and edit sources, with
    `data.edit_source_codes`) VQ-encoded once (code cache), as `janus-ft sft` encodes its records'."""
    by_task: dict[str, list] = {}
    for pair in pairs:
        by_task.setdefault(pair.task, []).append(pair)
    d, edit = recipe.data, EditSettings.from_data(recipe.data)
    images = {task: [side.images for p in by_task.get(task, []) for side in (p.chosen, p.rejected)]
              for task in ("generation", "edit")}
    codes = vq_codes(model, coded_images(images, edit.source_codes), d.code_cache)
    datasets = {task: PairDataset(ps, processor, fmt, d.max_length, d.system_prompt, d.last_turn_only, codes, edit)
                for task, ps in by_task.items()}
    warn_dropped(datasets, "pair(s) with a side longer than", d.max_length)
    return datasets


def chosen_sets(val_sets: dict[str, PairDataset], processor, fmt: str, recipe: Recipe) -> dict:
    """The chosen side of each held-out pair as a record set per task: what the evaluation probe
    answers (the chosen answer is the reference for exact match and CER) and draws (the captions;
    the edits, their targets decoded from the pairs' VQ codes)."""
    d = recipe.data
    return {task: JanusDataset([e.record for e in ds.chosen.examples], processor, fmt, d.max_length,
                               d.system_prompt, d.last_turn_only, ds.chosen.codes, ds.edit)
            for task, ds in val_sets.items()}


def precompute_reference(model, datasets: dict[str, PairDataset], collator: PairCollator, batch_size: int,
                         device, cfg_dropout: float | None = None, head_chunk_size: int = HEAD_CHUNK_SIZE) -> None:
    """Reference log-probs of every pair (adapter disabled, eval mode, no grad), stored on the datasets:
    for training sets (`cfg_dropout` given) of every layout CFG dropout can draw (blanked generation
    prompts, each edit layout), for evaluation sets (`None`) of the layout evaluation scores."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        for ds in datasets.values():
            variants = [ds.evaluation_variant()] if cfg_dropout is None else ds.variants(cfg_dropout)
            for variant in variants:
                rows = []
                for start in range(0, len(ds), batch_size):
                    pairs = [ds.variant_sample(i, variant) for i in range(start, min(start + batch_size, len(ds)))]
                    batch = collator([{k: v for k, v in p.items() if k != "ref"} for p in pairs])
                    batch = {k: _to(v, device) for k, v in batch.items()}
                    sums = target_logps(model, batch, False, head_chunk_size).sums
                    rows.append(torch.stack(sums.split(len(pairs)), 1))
                ds.set_reference(variant, torch.cat(rows))
    model.train(was_training)


def _to(value, device):
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value.to(device) if isinstance(value, torch.Tensor) else value


class DPO(Method):
    name = "dpo"
    trainer_class = DpoTrainer

    def read(self, recipe, processor, fmt, inputs):
        return read_pair_data(recipe)

    def build(self, recipe, model, processor, fmt, data) -> Setup:
        from .probe import TrainingProbe

        train_pairs, val_pairs = data
        train_sets = build_pair_datasets(train_pairs, model, processor, recipe, fmt)
        require_tasks(train_sets, recipe.data.mix)   # again: pairs may be dropped for length
        val_sets = build_pair_datasets(val_pairs, model, processor, recipe, fmt)
        t, d, block = recipe.train, recipe.data, global_batch(recipe)
        steps = t.max_steps if t.max_steps > 0 else steps_for_epochs(
            {task: len(ds) for task, ds in train_sets.items()}, d.mix, block, t.num_train_epochs)
        mixture = MixtureDataset(train_sets, d.mix, block, steps, t.seed, d.cfg_dropout, group_by_length=d.group_by_length)
        setup = Setup(
            train_dataset=mixture.as_hf_dataset(PAIR_KEYS), eval_dataset=concat_lazily(list(val_sets.values()), PAIR_KEYS),
            collator=PairCollator(processor.tokenizer.pad_token_id, model.config.image_token_id, d.pad_to_multiple_of),
            steps=steps, callbacks=[MixtureCallback(mixture, block, mixture.ratios)],
            probe=TrainingProbe(processor, fmt, chosen_sets(val_sets, processor, fmt, recipe), t.eval_answers,
                                t.eval_images, t.sample_prompts, t.per_device_eval_batch_size,
                                system_prompt=d.system_prompt),
            trainer_kwargs={"dpo": recipe.dpo})
        self.sets, self.cfg_dropout = (train_sets, val_sets), d.cfg_dropout
        return setup

    def before_training(self, trainer, setup: Setup) -> None:
        """With dpo.precompute_ref, every pair's reference log-probs, once, before the first step."""
        options = trainer.dpo
        if not options.precompute_ref:
            return
        started = time.monotonic()
        train_sets, val_sets = self.sets
        for sets, dropout in ((train_sets, self.cfg_dropout), (val_sets, None)):
            precompute_reference(trainer.model, sets, trainer.data_collator, options.precompute_ref_batch_size,
                                 trainer.args.device, dropout, trainer.head_chunk_size)
        logger.info(f"reference log-probs precomputed in {time.monotonic() - started:.1f} s")
