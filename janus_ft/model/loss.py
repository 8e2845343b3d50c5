"""Forward and loss for mixed batches of text, understanding, generation and edit samples.

transformers' `JanusForConditionalGeneration.forward` covers the text/understanding path only; the
generation path (image tokens embedded through `generation_embeddings` -> `generation_aligner`,
predicted by `generation_head`) has no training forward there. This module builds the input
embeddings for every task (an edit's source code blocks go through the generation path too), runs
the wrapped model once (so DDP / DeepSpeed / PEFT hooks see a normal forward), and scores every
supervised position with the head of its target:

* a text target at t+1 is scored by `lm_head` at t,
* an image-code target at t+1 by `generation_head` at t -- so the `<begin_of_image>` position
  predicts the first image token, and every one of the N tokens is in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.collate import loss_plan
from ..janus import IGNORE_INDEX, TASK_IDS
from .heads import HEAD_CHUNK_SIZE, target_nll


def core_model(model):
    """The `JanusForConditionalGeneration` under DDP / DeepSpeed / PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


@dataclass
class LossParts:
    total: torch.Tensor       # sum of token losses (graph attached)
    n_tokens: int
    task_sums: torch.Tensor   # (tasks, 2): per task id, (sum of token losses, tokens); detached, on the device

    @property
    def per_task(self) -> dict[int, tuple[float, int]]:
        """task id -> (sum of token losses, tokens) for the tasks in the batch (reads the device)."""
        return {task: (loss_sum, int(n)) for task, (loss_sum, n) in enumerate(self.task_sums.tolist()) if n}


def target_masks(batch: dict, image_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(text targets, image-code targets), both aligned with input_ids."""
    labels = batch["labels"]
    supervised = labels != IGNORE_INDEX
    gen = (batch["input_ids"] == image_token_id) & supervised
    return supervised & ~gen, gen


def input_embeddings(core, batch: dict, plan: dict, input_grad: bool = True) -> torch.Tensor:
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
    slots, gen = plan["image_slots"], plan["gen_targets"]
    if len(slots) != features.shape[0]:   # sizes known on the host: no device sync
        raise ValueError(f"{len(slots)} image placeholders but {features.shape[0]} image features")
    codes = batch["labels"].flatten().index_select(0, gen)
    if "source_slots" in plan:   # edit sources as codes: embedded as targets are, in the same call
        gen = torch.cat([gen, plan["source_slots"]])
        codes = torch.cat([codes, batch["source_codes"].flatten().index_select(0, plan["source_slots"])])
    gen_embeds = core.prepare_embeddings_for_image_generation(codes).to(embeds.dtype)
    # Features go to their placeholders in row-major order, one image after the other, as the
    # collator concatenated `pixel_values`.
    flat = embeds.flatten(0, 1).index_copy(0, slots, features).index_copy(0, gen, gen_embeds)
    return flat.view_as(embeds)


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


def compute_loss_parts(model, batch: dict, input_grad: bool = True, head_chunk_size: int = HEAD_CHUNK_SIZE) -> LossParts:
    """Token losses of a batch. `input_grad=False` drops the gradient that transformers' gradient
    checkpointing asks for on the LLM's input embeddings, which only reentrant checkpointing needs
    (`JanusTrainer` passes what its arguments say). `head_chunk_size`: targets each head scores at
    a time (`model.head_chunk_size`, `janus_ft.model.heads`; 0: all at once).

    The batch's `loss_plan` (`janus_ft.data.collate.loss_plan`, made by the collator on the CPU) says
    where targets and images sit; nothing here waits for the device to report a count, so a GPU
    step is queued without a host sync. A batch without a plan gets one here.
    """
    targets, token_losses = target_losses(model, batch, input_grad, head_chunk_size)
    tasks = batch["task_ids"].flatten().index_select(0, targets)
    task_sums = token_losses.new_zeros(len(TASK_IDS), 2).index_add_(
        0, tasks, torch.stack([token_losses.detach(), torch.ones_like(token_losses)], 1))
    return LossParts(token_losses.sum(), len(targets), task_sums)


def target_losses(model, batch: dict, input_grad: bool = True,
                  head_chunk_size: int = HEAD_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions of the targets, their token losses): text targets first, then image codes,
    each in row-major order. A token loss is minus the log-probability of the target."""
    core = core_model(model)
    plan = batch.get("loss_plan") or loss_plan(batch, core.config.image_token_id)
    # Flat positions (row x length) of the targets; position t predicts t + 1, in the same row
    # (column 0 is never a target).
    text, gen = plan["text_targets"], plan["gen_targets"]
    labels = batch["labels"].flatten()

    # Embeddings and both heads run inside the wrapped model's forward (hooks on the Janus module):
    # FSDP has gathered the weights only there, and DDP's search for unused parameters only sees
    # what the forward produced. Each head sees only the positions it scores, where transformers'
    # `logits_to_keep` would score every row at every kept column.
    def embed(module, args, kwargs):
        return args, {**kwargs, "inputs_embeds": input_embeddings(module, batch, plan, input_grad)}

    # The final hidden states come from the Janus model's own output, not `output_hidden_states`:
    # asking for those makes transformers hook every decoder and attention layer (for good), and in
    # a compiled layer (janus_ft.model.compile) such a hook is a graph break.
    last = {}

    def keep_last(module, args, output):
        last["hidden"] = output.last_hidden_state

    def head_losses(module, args, kwargs, output):
        hidden = last.pop("hidden").flatten(0, 1)
        return output, torch.cat([
            target_nll(module.lm_head, hidden.index_select(0, text - 1), labels.index_select(0, text), head_chunk_size),
            target_nll(module.model.generation_head, hidden.index_select(0, gen - 1), labels.index_select(0, gen),
                       head_chunk_size)])

    hooks = [core.register_forward_pre_hook(embed, with_kwargs=True), core.model.register_forward_hook(keep_last),
             core.register_forward_hook(head_losses, with_kwargs=True)]
    # A packed batch's sample bounds go to the attention functions as the FlashAttention keyword
    # arguments transformers forwards to them (janus_ft.model.attention: per-sample attention).
    bounds = ({} if "cu_seq_lens" not in batch else {
        "cu_seq_lens_q": batch["cu_seq_lens"], "cu_seq_lens_k": batch["cu_seq_lens"],
        "max_length_q": batch["max_length"], "max_length_k": batch["max_length"]})
    try:
        _, token_losses = model(
            attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"),
            logits_to_keep=text.new_empty(0), use_cache=False, **bounds)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat([text, gen]), token_losses
