"""Forward and loss for mixed batches of text, understanding and generation samples.

transformers' `JanusForConditionalGeneration.forward` covers the text/understanding path only; the
generation path (image tokens embedded through `generation_embeddings` -> `generation_aligner`,
predicted by `generation_head`) has no training forward there. This module builds the input
embeddings for all three tasks, runs the wrapped model once (so DDP / DeepSpeed / PEFT hooks see a
normal forward), and scores every supervised position with the head of its target:

* a text target at t+1 is scored by `lm_head` at t,
* an image-code target at t+1 by `generation_head` at t -- so the `<begin_of_image>` position
  predicts the first image token, and every one of the N tokens is in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tokens import IGNORE_INDEX


def core_model(model):
    """The `JanusForConditionalGeneration` under DDP / DeepSpeed / PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


@dataclass
class LossParts:
    total: torch.Tensor             # sum of token losses (graph attached)
    n_tokens: int
    per_task: dict[int, tuple[float, int]]   # task id -> (sum of token losses, tokens)


def target_masks(batch: dict, image_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(text targets, image-code targets), both aligned with input_ids."""
    labels = batch["labels"]
    supervised = labels != IGNORE_INDEX
    gen = (batch["input_ids"] == image_token_id) & supervised
    return supervised & ~gen, gen


def input_embeddings(core, batch: dict, gen_mask: torch.Tensor) -> torch.Tensor:
    ids = batch["input_ids"]
    embeds = core.get_input_embeddings()(ids)
    if "pixel_values" in batch:
        pixels = batch["pixel_values"].to(embeds.dtype)
        features = core.model.get_image_features(pixels).pooler_output
        features = features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        und_mask = (ids == core.config.image_token_id) & ~gen_mask
        if int(und_mask.sum()) != features.shape[0]:
            raise ValueError(f"{int(und_mask.sum())} image placeholders but {features.shape[0]} image features")
        embeds = embeds.masked_scatter(und_mask[..., None], features)
    if gen_mask.any():
        codes = batch["labels"][gen_mask]
        gen = core.prepare_embeddings_for_image_generation(codes).to(embeds.dtype)
        embeds = embeds.masked_scatter(gen_mask[..., None], gen)
    return embeds


def compute_loss_parts(model, batch: dict) -> LossParts:
    core = core_model(model)
    text_mask, gen_mask = target_masks(batch, core.config.image_token_id)
    embeds = input_embeddings(core, batch, gen_mask)
    # Position t predicts t+1: shift the target masks left by one.
    text_pred, gen_pred = text_mask[:, 1:], gen_mask[:, 1:]
    keep = text_pred.any(0).nonzero().flatten()   # lm_head only where some row has a text target
    out = model(inputs_embeds=embeds, attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"), output_hidden_states=bool(gen_pred.any()),
                logits_to_keep=keep, use_cache=False)
    labels, tasks = batch["labels"][:, 1:], batch["task_ids"][:, 1:]
    losses, task_of = [], []
    if text_pred.any():
        column = torch.full((text_pred.shape[1],), -1, dtype=torch.long, device=keep.device)
        column[keep] = torch.arange(len(keep), device=keep.device)
        rows, cols = text_pred.nonzero(as_tuple=True)
        logits = out.logits[rows, column[cols]].float()
        losses.append(F.cross_entropy(logits, labels[rows, cols], reduction="none"))
        task_of.append(tasks[rows, cols])
    if gen_pred.any():
        hidden = out.hidden_states[-1][:, :-1][gen_pred]
        logits = core.model.generation_head(hidden).float()
        losses.append(F.cross_entropy(logits, labels[gen_pred], reduction="none"))
        task_of.append(tasks[gen_pred])
    if not losses:  # nothing supervised: a zero that still touches the graph (DDP needs a backward)
        return LossParts(out.logits.sum() * 0.0, 0, {})
    token_losses, token_tasks = torch.cat(losses), torch.cat(task_of)
    per_task = {}
    detached = token_losses.detach()
    for task in token_tasks.unique().tolist():
        sel = token_tasks == task
        per_task[task] = (float(detached[sel].sum()), int(sel.sum()))
    return LossParts(token_losses.sum(), int(token_losses.numel()), per_task)
