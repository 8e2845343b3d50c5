"""A head's targets scored in chunks: minus the log-probability of each target, never holding the
logits of every target at once.

In one piece, a text-heavy Janus-Pro step builds [text targets x 102,400] logits, their float32
copy, the log-softmax and its gradient (1.2 MB per text target at the peak, measured), and a
generation step [codes x 16,384]. Scored `chunk_size` targets at a time, one chunk's worth exists
at a time:

* **a frozen head** (the LM head under LoRA; the generation head unless `lora.targets` or
  `lora.modules_to_save` name `gen_head`): each chunk's losses and their gradient with respect to
  the head's input are computed together in the forward -- one head forward and backward per
  chunk, the FLOPs of the one-piece path, and no weight gradient. Backward only scales those rows
  by the gradient that reaches each loss. Exact, because a head acts on each position alone:
  d loss_i / d x_j = 0 for i != j.
* **a head that trains** (LoRA on it, or trained fully): each chunk runs under activation
  checkpointing (torch's, which replays the RNG and autocast state), so backward recomputes that
  chunk's logits -- one more head forward -- and autograd adds the chunks' weight gradients.
  Autograd adds them in the weights' dtype, so only float32 trainable weights are chunked (PEFT
  keeps LoRA adapters in float32); a bf16 head trained fully keeps the one-piece matmul, whose
  weight gradient accumulates in float32.

The head is called as a module on every chunk, so PEFT's LoRA layers and autocast see an ordinary
call. Under DeepSpeed ZeRO-3 a head stays in one piece (`gathered_per_call`). Losses are float32
cross-entropy, as in one piece.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Targets per chunk when the caller does not say (`model.head_chunk_size` has the same default):
# measured at Janus-Pro-1B size (docs/benchmarks.md, "Chunked heads").
HEAD_CHUNK_SIZE = 1024


def target_nll(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int = HEAD_CHUNK_SIZE) -> torch.Tensor:
    """float32 `-log softmax(head(hidden))[targets]`, one per row of `hidden` ((targets, width)),
    scored `chunk_size` rows at a time (0: in one piece)."""
    trainable = [p for p in head.parameters() if p.requires_grad]
    if hidden.shape[0] == 0 and not trainable and not gathered_per_call(head):
        # Nothing to score (a batch without text, or without images): a frozen head is not called.
        # Under autocast a float32 head (QLoRA keeps the heads in float32) would cast its weight to
        # bf16 and keep the copy for backward, 0.78 GiB for the LM head at 7B size, for no product.
        return hidden.float().sum(-1)
    if chunk_size <= 0 or hidden.shape[0] <= chunk_size or gathered_per_call(head):
        return nll(head, hidden, targets)
    pieces = zip(hidden.split(chunk_size), targets.split(chunk_size))
    if not torch.is_grad_enabled() or not (trainable or hidden.requires_grad):
        return torch.cat([nll(head, h, t) for h, t in pieces])   # no graph: each chunk's logits go at once
    if not trainable:
        return FrozenHeadNll.apply(hidden, targets, head, chunk_size)
    if any(p.dtype != torch.float32 for p in trainable):
        return nll(head, hidden, targets)
    return torch.cat([checkpoint(nll, head, h, t, use_reentrant=False) for h, t in pieces])


def gathered_per_call(head) -> bool:
    """Whether DeepSpeed ZeRO-3 shards the head (its parameters carry `ds_id`): ZeRO-3 gathers a
    module's weights with a collective at every call, and ranks holding different numbers of targets
    would call a chunked head a different number of times and wait on each other for ever."""
    return any(hasattr(p, "ds_id") for p in head.parameters())


def nll(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The one-piece scoring: float32 cross-entropy of the head's logits, per target."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


class FrozenHeadNll(torch.autograd.Function):
    """Chunked scoring by a head with no trainable weights: the gradient of every loss with respect
    to its own input row is taken in the forward, one chunk at a time; backward scales the rows."""

    @staticmethod
    def forward(ctx, hidden, targets, head, chunk_size):
        losses, grads = [], []
        for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size)):
            with torch.enable_grad():
                h = h.detach().requires_grad_()
                loss = nll(head, h, t)
                (grad,) = torch.autograd.grad(loss.sum(), h)
            losses.append(loss.detach())
            grads.append(grad)
        ctx.save_for_backward(torch.cat(grads))
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, grad_losses):
        (grads,) = ctx.saved_tensors
        return (grads.float() * grad_losses.unsqueeze(1)).to(grads.dtype), None, None, None
