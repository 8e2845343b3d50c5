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


def input_embeddings(core, batch: dict, gen_mask: torch.Tensor, input_grad: bool = True) -> torch.Tensor:
    ids = batch["input_ids"]
    embeds = core.get_input_embeddings()(ids)
    if embeds.requires_grad and embeds.is_leaf and not (input_grad and trains(core.model.language_model)):
        # A frozen table's output requires grad only through `enable_input_require_grads`' hook (see
        # `image_features`). Only reentrant checkpointing of a training LLM needs that: its layers
        # return no gradient unless an input requires one. Otherwise it just adds the first layer's
        # input gradient to every backward. Image features keep the gradient they carry.
        embeds = embeds.detach()
    # Both image paths run on every batch, on zero images when it has none of their task: DeepSpeed
    # ZeRO reduces gradients in the order backward produces them, so every rank must run the same
    # modules in the same order whatever tasks its shard of the step holds.
    pixels, blank = batch.get("pixel_values"), "pixel_values" not in batch
    if blank:   # the vision tower cannot take zero images: one blank image, its features dropped
        vc = core.config.vision_config
        pixels = embeds.new_zeros(1, vc.num_channels, vc.image_size, vc.image_size)
    features = image_features(core, pixels.to(embeds.dtype))
    features = features[:0] if blank else features
    features = features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    und_mask = (ids == core.config.image_token_id) & ~gen_mask
    if int(und_mask.sum()) != features.shape[0]:
        raise ValueError(f"{int(und_mask.sum())} image placeholders but {features.shape[0]} image features")
    embeds = embeds.masked_scatter(und_mask[..., None], features)
    gen = core.prepare_embeddings_for_image_generation(batch["labels"][gen_mask]).to(embeds.dtype)
    return embeds.masked_scatter(gen_mask[..., None], gen)


def trains(module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def image_features(core, pixels: torch.Tensor) -> torch.Tensor:
    """`get_image_features` (SigLIP, then the aligner), with autograd through SigLIP only where it
    has trainable weights.

    Gradient checkpointing makes transformers call `enable_input_require_grads`, which hooks the
    input embeddings of every sub-model -- SigLIP's patch embeddings included -- so their output
    requires grad. A frozen tower would then be recorded, recomputed by its checkpointed layers
    and differentiated in every backward, only to end at weights that do not train (and without
    checkpointing nothing needs its graph either). A trainable aligner still gets its gradient:
    it runs outside, on features that simply carry none.
    """
    vision = core.model.vision_model
    with torch.set_grad_enabled(torch.is_grad_enabled() and trains(vision)):
        hidden = vision(pixels, return_dict=True).last_hidden_state
    return core.model.aligner(hidden)


def compute_loss_parts(model, batch: dict, input_grad: bool = True) -> LossParts:
    """Token losses of a batch. `input_grad=False` drops the gradient that transformers' gradient
    checkpointing asks for on the LLM's input embeddings, which only reentrant checkpointing needs
    (`JanusTrainer` passes what its arguments say)."""
    core = core_model(model)
    text_mask, gen_mask = target_masks(batch, core.config.image_token_id)
    # Position t predicts t+1: shift the target masks left by one.
    text_pred, gen_pred = text_mask[:, 1:], gen_mask[:, 1:]
    keep = text_pred.any(0).nonzero().flatten()   # lm_head only where some row has a text target

    # Embeddings and the generation head run inside the wrapped model's forward (hooks on the Janus
    # module): FSDP has gathered the weights only there, and DDP's search for unused parameters
    # only sees what the forward produced.
    def embed(module, args, kwargs):
        return args, {**kwargs, "inputs_embeds": input_embeddings(module, batch, gen_mask, input_grad)}

    def generation_logits(module, args, kwargs, output):
        return output, module.model.generation_head(output.hidden_states[-1][:, :-1][gen_pred])

    hooks = [core.register_forward_pre_hook(embed, with_kwargs=True),
             core.register_forward_hook(generation_logits, with_kwargs=True)]
    try:
        out, gen_logits = model(attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"),
                                output_hidden_states=True, logits_to_keep=keep, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    labels, tasks = batch["labels"][:, 1:], batch["task_ids"][:, 1:]
    column = torch.full((text_pred.shape[1],), -1, dtype=torch.long, device=keep.device)
    column[keep] = torch.arange(len(keep), device=keep.device)
    rows, cols = text_pred.nonzero(as_tuple=True)
    token_losses = torch.cat([
        F.cross_entropy(out.logits[rows, column[cols]].float(), labels[rows, cols], reduction="none"),
        F.cross_entropy(gen_logits.float(), labels[gen_pred], reduction="none")])
    token_tasks = torch.cat([tasks[rows, cols], tasks[gen_pred]])
    per_task = {}
    detached = token_losses.detach()
    for task in token_tasks.unique().tolist():
        sel = token_tasks == task
        per_task[task] = (float(detached[sel].sum()), int(sel.sum()))
    return LossParts(token_losses.sum(), int(token_losses.numel()), per_task)
