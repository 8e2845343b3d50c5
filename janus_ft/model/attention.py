"""Per-sample attention for packed rows: each sample of a packed row attends over itself only, with
no mask built.

A packed row (`janus_ft.data.collate.pack`) holds several samples whose `position_ids` restart.
transformers' SDPA path turns the restarts into a block-diagonal mask over the whole row, so
attention costs (sum of lengths)^2 instead of the sum of each length^2, and on a GPU an arbitrary
mask also takes SDPA off its flash kernel. Here the collator's sample bounds (`cu_seq_lens`,
`max_length`, computed on the host with the batch) reach the attention function as the FlashAttention
keyword arguments transformers forwards to every attention function (`cu_seq_lens_q/k`,
`max_length_q/k`), and attention runs per sample:

* flash-attention's varlen kernel when `flash_attn` is installed (CUDA, fp16 / bf16);
* else torch's varlen attention (`torch.nn.attention.varlen`, CUDA, fp16 / bf16, no dropout);
* else SDPA once per sample, causal, unmasked (CPU, or float32 on a GPU).

The function is registered through transformers' `AttentionInterface` and set on the language
model's config only (`set_packed_attention`): the SigLIP tower keeps SDPA. Batches that are not
packed (padded rows, generation with a cache) get transformers' own SDPA path with its usual mask.
https://huggingface.co/docs/transformers/attention_interface
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from .loss import core_model

PER_SAMPLE = "janus_ft_per_sample"   # the attention implementation's name in transformers' registry


def set_packed_attention(model, packing: bool, mode: str = "auto") -> str:
    """Give the language model of `model` (bare or wrapped by PEFT / DDP) per-sample attention when
    rows are packed and `mode` (data.packed_attention) is auto or per_sample; returns the language
    model's attention implementation after the call.

    A FlashAttention implementation chosen by the user (model.attn_implementation) is kept: it is
    per-sample already and takes the same bounds. `mask` keeps the block-diagonal mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    text = text_config(model)
    if not packing or mode == "mask" or text._attn_implementation.startswith("flash_attention"):
        return text._attn_implementation
    AttentionInterface.register(PER_SAMPLE, per_sample_attention)
    AttentionMaskInterface.register(PER_SAMPLE, padding_mask)
    core_model(model).set_attn_implementation({"text_config": PER_SAMPLE})
    return text._attn_implementation


def text_config(model):
    return core_model(model).config.text_config


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask transformers builds for `PER_SAMPLE`: none for rows without a padding mask (packed
    or unpadded: `per_sample_attention` finds their samples), SDPA's mask otherwise (padded rows,
    decoding with a cache). SDPA's mask is always built there, never skipped for "causal": a skip
    costs a device sync to check, and would leave no way to tell a padded batch from a packed one."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length and isinstance(q_offset, int) and q_offset == 0:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask=attention_mask,
                     **{**kwargs, "allow_is_causal_skip": False})


def per_sample_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None,
                         **kwargs) -> tuple[torch.Tensor, None]:
    """An `AttentionInterface` function: query (batch, heads, length, dim), key / value (batch,
    kv heads, length, dim) -> (batch, length, heads, dim). `cu_seq_lens_q` are the samples' bounds
    in the flattened rows (int32, from 0 to batch x length); keys share them (self-attention)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if (cu_seq_lens_q is None and attention_mask is None and position_ids is not None
            and query.shape[2] == key.shape[2] > 1):
        # Rows with neither a padding mask nor the collator's bounds (a packed batch made elsewhere):
        # find the samples from where position ids restart, as transformers' flash path does (a
        # device sync per layer on a GPU, which the collator's bounds avoid).
        cu_seq_lens_q, max_length_q = bounds_from_positions(position_ids.expand(query.shape[0], -1))
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    out = varlen_attention(query, key, value, cu_seq_lens_q, max_length_q, dropout, scaling)
    return out.view(query.shape[0], query.shape[2], *out.shape[1:]), None


def bounds_from_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seq_lens, max_length) of rows whose samples restart their position ids at 0.

    >>> bounds_from_positions(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]))
    (tensor([ 0,  3,  5, 10], dtype=torch.int32), 5)
    """
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    return cu, int(cu.diff().max())


def varlen_attention(query, key, value, cu_seq_lens: torch.Tensor, max_length: int, dropout: float,
                     scaling: float | None) -> torch.Tensor:
    """Causal attention within each sample of the flattened rows -> (tokens, heads, dim).
    `max_length` stays as given (under `torch.compile`, a dynamic int): converting it would pin a
    compiled layer to one length."""
    half = query.dtype in (torch.float16, torch.bfloat16)
    if query.is_cuda and half and _has_flash_attn():
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(_tokens(query), _tokens(key), _tokens(value), cu_seq_lens, cu_seq_lens,
                                      max_length, max_length, dropout_p=dropout, softmax_scale=scaling, causal=True)
    if query.is_cuda and half and dropout == 0 and _torch_varlen() is not None:
        return _torch_varlen()(_tokens(query), _tokens(key), _tokens(value), cu_seq_lens, cu_seq_lens,
                               max_length, max_length, scale=scaling, window_size=(-1, 0),
                               enable_gqa=key.shape[1] != query.shape[1])
    return _per_segment(query, key, value, cu_seq_lens, dropout, scaling)


@torch.compiler.disable
def _per_segment(query, key, value, cu_seq_lens, dropout, scaling) -> torch.Tensor:
    """SDPA on each sample alone (causal: no mask; on a CPU that is SDPA's flash kernel). Compiled
    layers call it eagerly: the bounds are read as numbers, which a graph would recompile on."""
    length, gqa = query.shape[2], key.shape[1] != query.shape[1]
    bounds = cu_seq_lens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        row, a, b = start // length, start % length, start % length + end - start
        outs.append(F.scaled_dot_product_attention(
            query[row:row + 1, :, a:b], key[row:row + 1, :, a:b], value[row:row + 1, :, a:b],
            dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa))
    return torch.cat(outs, 2)[0].transpose(0, 1)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, length, dim) -> (batch x length, heads, dim): the varlen kernels' layout."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])


@functools.cache
def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def _torch_varlen():
    try:   # torch >= 2.10
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn
