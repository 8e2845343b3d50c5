"""`janus-ft generate`: text-to-image with classifier-free guidance, through transformers' own
`JanusForConditionalGeneration.generate(generation_mode="image")`.

The prompt is rendered as the data layer renders a generation record (`{R_u}: caption\\n\\n{R_a}:`,
no system prompt) and the processor in image mode appends `<begin_of_image>`, so sampling starts
from the exact prefix the generation loss trained on. Codes are decoded with the original Janus
mapping (`janus_ft.data.vq.decode_codes_to_pil`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from ..data.conversation import render
from ..data.records import IMAGE_TAG, Record
from ..errors import UserError
from ..janus import SpecialIds
from .prompts import to_model


def prompt_inputs(processor, caption: str, fmt: str) -> dict:
    """Input ids of a generation prompt: the data layer's rendering, `<begin_of_image>` appended by
    the processor in image mode (which adds no system prompt in that mode)."""
    if not caption.strip():
        raise UserError("the prompt is empty: a generation prompt needs a caption")
    record = Record(task="generation", turns=[(caption, IMAGE_TAG)], system="")
    text = render(record, fmt)[0].text
    return dict(processor(text=text, generation_mode="image", return_tensors="pt"))


def image_generation_config(model, tokenizer, cfg: float, temperature: float, n: int, top_k: int = 0,
                            top_p: float = 1.0):
    """The model's generation config with the ids CFG needs read from the tokenizer: the
    unconditional row keeps BOS and `<begin_of_image>` and pads the rest, and the pad id differs
    between checkpoints (docs/janus.md).

    `top_k=0, top_p=1` sample the whole guided distribution, as DeepSeek's reference sampler does;
    transformers would otherwise fill in its global default `top_k=50`."""
    config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    special = SpecialIds.from_tokenizer(tokenizer)
    config.bos_token_id, config.pad_token_id = special.bos, special.pad
    config.generation_kwargs = {**(config.generation_kwargs or {}), "boi_token_id": special.boi}
    # transformers' Janus generate guides only when the scale is above 1; at or below 1 (1: the
    # conditional logits alone, 0: the unconditional ones) `sample_codes` brings the guidance
    config.guidance_scale = cfg if cfg > 1 else 1.0
    config.num_return_sequences, config.do_sample = n, temperature > 0
    if config.do_sample:   # (greedy decoding warns about sampling settings it ignores)
        config.top_k, config.top_p = top_k, top_p
    config.temperature = temperature if temperature > 0 else 1.0
    return config


class Guidance:
    """Classifier-free guidance at any scale: `uncond + scale * (cond - uncond)` over a batch whose
    first half is conditional (the formula of DeepSeek's sampler; transformers' own processor
    refuses scales <= 1, where its Janus generate then fails on the doubled batch)."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, input_ids, scores):
        cond, uncond = scores.chunk(2, dim=0)
        return uncond + self.scale * (cond - uncond)


@torch.no_grad()
def sample_codes(model, processor, caption: str, fmt: str, n: int = 4, cfg: float = 5.0,
                 temperature: float = 1.0, seed: int = 0, top_k: int = 0, top_p: float = 1.0) -> torch.LongTensor:
    """(n, num_image_tokens) VQ codes sampled for one caption, seeded for reproducibility."""
    from transformers import LogitsProcessorList

    inputs = to_model(prompt_inputs(processor, caption, fmt), model)
    config = image_generation_config(model, processor.tokenizer, cfg, temperature, n, top_k, top_p)
    guidance = LogitsProcessorList([] if cfg > 1 else [Guidance(cfg)])
    torch.manual_seed(seed)
    codes = model.generate(**inputs, generation_mode="image", generation_config=config, logits_processor=guidance)
    return codes.long().cpu()


def contact_sheet(images: list[Image.Image], columns: int | None = None, gap: int = 2) -> Image.Image:
    """Images tiled left to right, top to bottom, on white, `gap` pixels apart.

    >>> sheet = contact_sheet([Image.new("RGB", (8, 8))] * 3)
    >>> sheet.size
    (18, 18)
    """
    if not images:
        raise ValueError("no images to tile")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = max(im.width for im in images), max(im.height for im in images)
    sheet = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return sheet


def save_images(images: list[Image.Image], out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output={out}: cannot create it ({err.strerror or err})") from None
    for i, im in enumerate(images):
        im.save(out / f"{i}.png")
    contact_sheet(images).save(out / "grid.png")
    return out
