"""Inference helpers shared by `chat`, `generate` and `eval`: load a base (+ LoRA adapter) for
inference, and build prompts exactly as training builds them.

Prompts are rendered by `janus_ft.data.conversation` and tokenized by `janus_ft.data.tokens.encode`, the
same two functions the dataset uses, so a fine-tune is asked its questions in the very token
sequence it was trained on (and, for one turn, the sequence transformers' `JanusProcessor` builds
from its chat template).
"""

from __future__ import annotations

import torch

from ..data.conversation import render, resolve_format
from ..data.images import open_rgb, pixel_values
from ..data.records import IMAGE_TAG, Record
from ..data.tokens import encode
from ..errors import UserError
from ..janus import SpecialIds

# Files a processor directory has (transformers 5 keeps the image processor in processor_config.json).
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def prompt_record(query: str, n_images: int = 0, system: str | None = None,
                  history: tuple | list = ()) -> Record:
    """A record whose last turn is the question to answer. Images without `<image>` tags go at the
    start of the first query, as the data layer places them."""
    turns = [(str(u), str(a)) for u, a in history] + [(query, "")]
    tags = sum(u.count(IMAGE_TAG) for u, _ in turns)
    if n_images and not tags:
        turns[0] = (IMAGE_TAG * n_images + turns[0][0], turns[0][1])
    elif tags != n_images:
        raise UserError(f"{n_images} image(s) given but {tags} <image> tag(s) in the prompt")
    return Record(task="understanding" if n_images else "text", turns=turns, system=system)


def record_prompt_ids(processor, record: Record, fmt: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of everything up to and including the last `{R_a}:`: training's rendering and
    tokenization with the last answer left off. `system_prompt` replaces the default for records
    without a `system` field, as `data.system_prompt` does in training."""
    pieces = render(record, fmt, system_prompt)
    if pieces[-1].kind != "answer":
        raise UserError(f"a {record.task} record has no answer to generate")
    special = SpecialIds.from_tokenizer(processor.tokenizer)
    ids, _ = encode(pieces[:-1], processor.tokenizer, special, processor.num_image_tokens)
    return ids


def build_prompt(processor, query: str, n_images: int = 0, fmt: str | None = None,
                 system: str | None = None, history: tuple | list = ()) -> dict:
    """Model inputs (`input_ids`, `attention_mask`, batch of one) for a question.

    `system=None` means Janus's default system prompt (what the processor prepends at inference);
    `""` means none. Image placeholders are expanded to `<begin_of_image>` + N + `<end_of_image>`.
    """
    record = prompt_record(query, n_images, system, history)
    ids = record_prompt_ids(processor, record, resolve_format(processor, fmt))
    input_ids = torch.tensor([ids])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def record_inputs(processor, record: Record, fmt: str, system_prompt: str | None = None) -> dict:
    """Model inputs for a record's last question, with `pixel_values` when it has images."""
    input_ids = torch.tensor([record_prompt_ids(processor, record, fmt, system_prompt)])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if record.images:
        images = [open_rgb(p, record.source, record.line or None) for p in record.images]
        inputs["pixel_values"] = pixel_values(processor.image_processor, images)
    return inputs


def to_model(inputs: dict, model) -> dict:
    """Inputs on the model's device; pixel values in its dtype (a bf16 model rejects f32 pixels)."""
    param = next(model.parameters())
    return {k: v.to(param.device, param.dtype if k == "pixel_values" else v.dtype) for k, v in inputs.items()}
