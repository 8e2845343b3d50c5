"""Inference helpers shared by `chat`, `generate` and `eval`: load a base (+ LoRA adapter) for
inference, and build prompts exactly as training builds them.

Prompts are rendered by `janus_ft.conversation` and tokenized by `janus_ft.tokens.encode`, the
same two functions the dataset uses, so a fine-tune is asked its questions in the very token
sequence it was trained on (and, for one turn, the sequence transformers' `JanusProcessor` builds
from its chat template).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .conversation import detect_format, render
from .errors import UserError
from .images import open_rgb, pixel_values
from .model import _DTYPES, resolve_model_path
from .records import IMAGE_TAG, Record
from .tokens import SpecialIds, encode

# Files a processor directory has (transformers 5 keeps the image processor in processor_config.json).
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter was trained on, from its `adapter_config.json`."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"--adapter {adapter}: no adapter_config.json there (not a PEFT adapter directory)")
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config} names no base_model_name_or_path: pass the base with --model")
    return base


def has_processor(path: str | Path) -> bool:
    path = Path(path)
    return (path / "tokenizer_config.json").is_file() and any((path / f).is_file() for f in _PROCESSOR_FILES)


def load_base(model_path: str, dtype: str = "float32"):
    """A `JanusForConditionalGeneration` in eval mode on the best device, or a UserError."""
    from transformers import JanusForConditionalGeneration

    if dtype not in _DTYPES:
        raise UserError(f"--dtype: expected one of {', '.join(_DTYPES)}, got {dtype!r}")
    path = resolve_model_path(model_path)
    try:
        model = JanusForConditionalGeneration.from_pretrained(path, dtype=_DTYPES[dtype])
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a Janus checkpoint from {model_path!r}: {err}") from None
    return model.to(device()).eval()


def attach_adapter(model, adapter: str | Path):
    """Wrap `model` with a LoRA adapter exactly as a user would: plain `PeftModel.from_pretrained`."""
    from peft import PeftModel

    adapter_base(adapter)  # a clear error for a directory that is not an adapter
    try:
        return PeftModel.from_pretrained(model, str(adapter)).eval()
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"--adapter {adapter}: cannot load it onto this base model: {err}") from None


def load_processor(model_path: str, adapter: str | Path | None = None):
    """From the adapter directory when it carries processor files (`janus-ft sft` saves them there),
    else from the base."""
    from transformers import JanusProcessor

    source = adapter if adapter is not None and has_processor(adapter) else resolve_model_path(model_path)
    try:
        return JanusProcessor.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a Janus processor from {source}: {err}") from None


def load_for_inference(model_path: str | None, adapter: str | Path | None = None, dtype: str = "float32"):
    """(model, processor) in eval mode: base by path (or `tiny`), plus an optional LoRA adapter.

    Without `model_path` the base is the adapter's `base_model_name_or_path`.
    """
    if model_path is None:
        if adapter is None:
            raise UserError("give --model (a Janus checkpoint) or --adapter (a LoRA adapter directory)")
        model_path = adapter_base(adapter)
    model = load_base(model_path, dtype)
    if adapter is not None:
        model = attach_adapter(model, adapter)
    return model, load_processor(model_path, adapter)


def resolve_format(processor, fmt: str | None) -> str:
    return detect_format(processor) if fmt in (None, "auto") else fmt


def prompt_record(query: str, n_images: int = 0, system: str | None = None,
                  history: tuple | list = ()) -> Record:
    """A record whose last turn is the question to answer. Images without `<image>` tags go at the
    start of the first query, as the data layer places them (CONTRACT.md)."""
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
