"""Merge: a LoRA adapter + its base -> one plain transformers Janus checkpoint.

The result loads with `JanusForConditionalGeneration.from_pretrained` and
`JanusProcessor.from_pretrained` alone (nothing of janus_ft needed to use it): merged weights as (sharded)
safetensors, the processor with its chat template, and a generation config that carries the
classifier-free-guidance defaults `janus-ft generate` and Janus's own inference code expect.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
import yaml

from ..errors import UserError
from ..files import publish
from ..janus import DTYPES
from .io import parse_size

# Merging runs in one process (no ranks to tell apart): the standard library's logger.
logger = logging.getLogger(__name__)



def merge_adapter(adapter_dir, output_dir, base: str | None = None, dtype: str | None = None,
                  max_shard_size: str | int = "5GB", overwrite: bool = False) -> Path:
    """Merge the LoRA adapter in `adapter_dir` into its base and save a plain checkpoint to `output_dir`."""
    adapter, out = Path(adapter_dir), Path(output_dir)
    shard_bytes = parse_size(max_shard_size)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    from ..model.loading import resolve_model_path

    base_path = resolve_model_path(base_name(adapter, base))
    _check_output(out, adapter, base_path, overwrite)

    model, processor = merged_model(adapter, base_path)
    if dtype is not None:
        model.to(getattr(torch, dtype))
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, max_shard_size=shard_bytes)
        processor.save_pretrained(tmp)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # nothing half-written survives a failure
    return out


def base_name(adapter: Path, base: str | None) -> str:
    """`--base`, else the adapter's recorded base if it is still there, else the recipe's model.path
    (as written: `tiny` stays `tiny`).

    sft records the *resolved* path (for `model.path: tiny`, a cache directory), which may be gone
    on another machine; the recipe's `tiny` names the tiny model again. A hub id is passed on as it is.
    """
    from ..model.loading import adapter_base

    if not Path(adapter).is_dir():
        raise UserError(f"adapter directory not found: {adapter}")
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"{adapter} has no adapter_config.json: is it an adapter written by `janus-ft sft`?")
    if base:
        return base
    try:
        named = adapter_base(adapter)
    except UserError:
        named = None
    if named and Path(named).is_dir():
        return named
    recipe_file = Path(adapter) / "recipe.yaml"
    if recipe_file.is_file():
        recipe_path = ((yaml.safe_load(recipe_file.read_text()) or {}).get("model") or {}).get("path")
        if recipe_path:
            return recipe_path
    if named:
        return named
    raise UserError(f"{adapter}: no base model recorded; pass base=PATH")


def merged_model(adapter: Path, base_path: str):
    """(merged `JanusForConditionalGeneration`, processor). Merging runs in float32 so a bf16 base
    does not round the LoRA delta away; `merge_and_unload` also swaps each `modules_to_save` wrapper
    for its trained copy, so fully-trained components come out as plain modules."""
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration, JanusProcessor

    try:
        base = JanusForConditionalGeneration.from_pretrained(base_path, dtype=torch.float32)
    except OSError as err:
        raise UserError(f"cannot load the base Janus checkpoint {base_path!r}: {err}") from None
    tied = bool(base.config.tie_word_embeddings)
    try:
        model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"adapter {adapter} does not load onto base {base_path!r}: {err}") from None
    # A tied base whose embeddings or lm_head were trained fully (modules_to_save: [llm]) now has two
    # different matrices; saving it tied would silently drop the trained lm_head.
    if tied and not torch.equal(model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        logger.warning("lm_head was trained apart from the input embeddings; saving them untied")
        model.config.tie_word_embeddings = False
    has_processor = any((adapter / f).is_file() for f in ("processor_config.json", "tokenizer_config.json"))
    processor = JanusProcessor.from_pretrained(str(adapter) if has_processor else base_path)
    # Older processors keep the template on the tokenizer only; the merged dir must carry it.
    processor.chat_template = processor.chat_template or processor.tokenizer.chat_template
    _fill_generation_config(model.generation_config, processor.tokenizer)
    return model, processor


def _fill_generation_config(gen, tokenizer) -> None:
    """Keep what the base's generation config says; fill the CFG defaults it lacks from the
    tokenizer (pad ids differ between Janus checkpoints: docs/janus.md)."""
    from ..janus import generation_config

    defaults = generation_config(tokenizer)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "guidance_scale"):
        if getattr(gen, key, None) is None:
            setattr(gen, key, getattr(defaults, key))
    kwargs = dict(getattr(gen, "generation_kwargs", None) or {})
    kwargs.setdefault("boi_token_id", defaults.generation_kwargs["boi_token_id"])
    gen.generation_kwargs = kwargs


def _check_output(out: Path, adapter: Path, base_path: str, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    for source in (adapter, Path(base_path)):
        if source.exists() and out.exists() and out.samefile(source):
            raise UserError(f"output {out} is the adapter or base directory; choose another")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output={out} is not empty; pass overwrite=True to replace it")
