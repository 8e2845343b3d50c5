"""Preference tuning (`janus-ft dpo`): DPO / IPO with LoRA on pairs of any task, read top to bottom.

load recipe -> read and check pairs -> load model and processor -> pair datasets and mixture ->
apply LoRA -> trainer (-> precompute reference log-probs) -> train -> save adapter, processor,
recipe, mixture and loss plot. Everything but the pair data and the loss is `janus-ft sft`'s.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate.logging import get_logger

from ..data.conversation import detect_format
from ..data.dataset import JanusDataset, require_tasks, vq_codes, warn_dropped
from ..data.mixture import MixtureDataset, lazy_hf_dataset, steps_for_epochs
from ..data.preference import PAIR_KEYS, PairCollator, PairDataset, check_pair_images, parse_pair
from ..data.sources import read_source
from ..errors import UserError
from ..recipe import Recipe, parse_source
from ..recipe.dpo import validate_dpo
from .distributed import distributed_state, world_size
from .sft import SftResult, claim_output_dir, finish, sft_config, train

logger = get_logger(__name__)


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
        shown = "\n  ".join(str(e) for e in bad_images[:10])
        raise UserError(f"{len(bad_images)} bad image reference(s){' (first 10)' if len(bad_images) > 10 else ''}:"
                        f"\n  {shown}")
    return train_pairs, val_pairs


def build_pair_datasets(pairs, model, processor, recipe: Recipe, fmt: str) -> dict[str, PairDataset]:
    """One `PairDataset` per task; both sides' generation images VQ-encoded once (code cache)."""
    by_task: dict[str, list] = {}
    for pair in pairs:
        by_task.setdefault(pair.task, []).append(pair)
    generation = by_task.get("generation", [])
    codes = vq_codes(model, [p.chosen.images[0] for p in generation] + [p.rejected.images[0] for p in generation],
                     recipe.data.code_cache)
    d = recipe.data
    datasets = {task: PairDataset(ps, processor, fmt, d.max_length, d.system_prompt, d.last_turn_only, codes)
                for task, ps in by_task.items()}
    warn_dropped(datasets, "pair(s) with a side longer than", d.max_length)
    return datasets


def chosen_sets(pairs, processor, fmt: str, recipe: Recipe) -> dict:
    """The chosen side of each held-out pair as a record set per task: what the evaluation probe
    answers (the chosen answer is the reference for exact match and CER) and draws (the captions)."""
    d, by_task = recipe.data, {}
    for pair in pairs:
        by_task.setdefault(pair.task, []).append(pair.chosen)
    return {task: JanusDataset(records, processor, fmt, d.max_length, d.system_prompt, d.last_turn_only)
            for task, records in by_task.items()}


def precompute_reference(model, datasets: dict[str, PairDataset], collator: PairCollator, batch_size: int,
                         device, unconditional: bool = False) -> None:
    """Reference log-probs of every pair (adapter disabled, eval mode, no grad), stored on the datasets;
    with `unconditional`, of the blanked generation prompts too (what CFG dropout trains)."""
    from ..model.logprobs import target_logps

    was_training = model.training
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        for task, ds in datasets.items():
            for blank in (False, True) if unconditional and task == "generation" else (False,):
                rows = []
                for start in range(0, len(ds), batch_size):
                    pairs = [ds.sample(i, blank) for i in range(start, min(start + batch_size, len(ds)))]
                    batch = collator([{k: v for k, v in p.items() if k != "ref"} for p in pairs])
                    batch = {k: _to(v, device) for k, v in batch.items()}
                    sums = target_logps(model, batch, input_grad=False).sums
                    rows.append(torch.stack(sums.split(len(pairs)), 1))
                ds.set_reference(blank, torch.cat(rows))
    model.train(was_training)


def _to(value, device):
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value.to(device) if isinstance(value, torch.Tensor) else value


def run_dpo(recipe: Recipe) -> SftResult:
    """Preference-tune as the recipe says; the adapter and its companions land in `recipe.output_dir`."""
    from transformers import set_seed

    from ..model.loading import check_quantization, load_model_and_processor, train_in_fp32
    from ..model.lora import apply_lora, trainable_table
    from .checkpoint import SaveEverySteps, SignalCheckpoint
    from .dpo_trainer import JanusDpoTrainer
    from .probe import TrainingProbe
    from .trainer import ConsoleCallback, MixtureCallback

    out, t, started = Path(recipe.output_dir), recipe.train, time.monotonic()
    validate_dpo(recipe)
    distributed_state()
    check_quantization(recipe.model.quantization)
    train_pairs, val_pairs = read_pair_data(recipe)
    resume_from = claim_output_dir(recipe)
    model, processor = load_model_and_processor(recipe.model)
    fmt = detect_format(processor) if recipe.model.format == "auto" else recipe.model.format
    train_sets = build_pair_datasets(train_pairs, model, processor, recipe, fmt)
    require_tasks(train_sets, recipe.data.mix)   # again: pairs may be dropped for length
    val_sets = build_pair_datasets(val_pairs, model, processor, recipe, fmt)

    set_seed(t.seed)   # LoRA's A matrices: the same recipe gives the same adapter (see run_sft)
    model = apply_lora(model, recipe.lora)
    logger.info("trainable parameters:\n" + trainable_table(model))

    global_batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size()
    steps = t.max_steps if t.max_steps > 0 else steps_for_epochs(
        {task: len(ds) for task, ds in train_sets.items()}, recipe.data.mix, global_batch, t.num_train_epochs)
    mixture = MixtureDataset(train_sets, recipe.data.mix, global_batch, steps, t.seed, recipe.data.cfg_dropout,
                             group_by_length=recipe.data.group_by_length)
    index = [(ds, i) for ds in val_sets.values() for i in range(len(ds))]
    eval_set = lazy_hf_dataset(len(index), lambda p: index[p][0].sample(index[p][1]), PAIR_KEYS) if index else None
    collator = PairCollator(processor.tokenizer.pad_token_id, model.config.image_token_id)
    trainer = JanusDpoTrainer(
        model=model, args=sft_config(recipe, steps, eval_set is not None),
        train_dataset=mixture.as_hf_dataset(PAIR_KEYS), eval_dataset=eval_set, processing_class=processor,
        data_collator=collator,
        callbacks=[MixtureCallback(mixture, global_batch, mixture.ratios), SaveEverySteps(t.save_last),
                   stopper := SignalCheckpoint()],
        nan_policy=t.nan_policy, dpo=recipe.dpo,
        probe=TrainingProbe(processor, fmt, chosen_sets(val_pairs, processor, fmt, recipe), t.eval_answers,
                            t.eval_images, t.sample_prompts, t.per_device_eval_batch_size,
                            system_prompt=recipe.data.system_prompt))
    ConsoleCallback.replace_defaults(trainer)
    if recipe.model.quantization != "none":
        train_in_fp32(trainer.model)
    if recipe.dpo.precompute_ref:
        ref_started = time.monotonic()
        for sets, blank in ((train_sets, recipe.data.cfg_dropout > 0), (val_sets, False)):
            precompute_reference(trainer.model, sets, collator, recipe.dpo.precompute_ref_batch_size,
                                 trainer.args.device, unconditional=blank)
        logger.info(f"reference log-probs precomputed in {time.monotonic() - ref_started:.1f} s")
    train(trainer, resume_from, stopper)
    return finish(trainer, stopper, processor, out, started, evaluate_last=eval_set is not None)
