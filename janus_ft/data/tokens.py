"""Tokens: rendered pieces -> `input_ids` and `labels`, built together in one function.

One label convention for the whole project: labels are aligned with input_ids (the model shifts),
`IGNORE_INDEX` everywhere nothing is learned. Generation targets are the VQ codes themselves,
placed at the image-token positions: position t's hidden state predicts label t+1, so the
`<begin_of_image>` position predicts image token 0 (docs/janus.md, loss masking).
"""

from __future__ import annotations

from ..janus import IGNORE_INDEX, SpecialIds
from .conversation import Piece


def encode(pieces: list[Piece], tokenizer, special: SpecialIds, num_image_tokens: int,
           codes: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Token ids and aligned labels for one rendered record.

    Each `<image_placeholder>` in a prompt expands to `<begin_of_image>` + N placeholders +
    `<end_of_image>`, never supervised. `codes` fills the generation target (N VQ codes); without
    them the target positions hold placeholder codes of 0 (enough to measure lengths).
    """
    ids, labels = [special.bos], [IGNORE_INDEX]
    for piece in pieces:
        if piece.kind == "gen_image":
            target = list(codes) if codes is not None else [0] * num_image_tokens
            if len(target) != num_image_tokens:
                raise ValueError(f"expected {num_image_tokens} image codes, got {len(target)}")
            ids += [special.boi] + [special.image] * num_image_tokens + [special.eoi]
            labels += [IGNORE_INDEX] + target + [IGNORE_INDEX]
            continue
        piece_ids = tokenizer(piece.text, add_special_tokens=False)["input_ids"] if piece.text else []
        if piece.kind == "answer":
            piece_ids = piece_ids + [special.eos]
        else:
            piece_ids = _expand_images(piece_ids, special, num_image_tokens)
        ids += piece_ids
        labels += piece_ids if piece.supervised else [IGNORE_INDEX] * len(piece_ids)
    return ids, labels


def _expand_images(ids: list[int], special: SpecialIds, n: int) -> list[int]:
    out: list[int] = []
    for token in ids:
        if token == special.image:
            out += [special.boi] + [special.image] * n + [special.eoi]
        else:
            out.append(token)
    return out


def generation_prompt_span(ids: list[int], special: SpecialIds) -> tuple[int, int]:
    """The [start, stop) span of a generation sample's caption tokens: between BOS and `<begin_of_image>`."""
    return 1, ids.index(special.boi)


def drop_condition(ids: list[int], special: SpecialIds) -> list[int]:
    """The unconditional prompt for classifier-free guidance: caption tokens -> pad, BOS and BOI kept.

    Token for token what `JanusForConditionalGeneration.generate(generation_mode="image")` feeds its
    unconditional row (every prompt token that is neither BOS nor BOI becomes pad), so the branch
    trained here is the branch sampled at inference.
    """
    start, stop = generation_prompt_span(ids, special)
    return ids[:start] + [special.pad] * (stop - start) + ids[stop:]
