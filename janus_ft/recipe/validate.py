"""Recipe checks that need no model: names, choices and combinations."""

from __future__ import annotations

import difflib
from pathlib import Path

from ..errors import RecipeError
from ..janus import COMPONENTS, DTYPES, TASKS
from .sections import RECORD_FIELDS, DataSource, Recipe


def validate(recipe: Recipe) -> None:
    """Checks that need no model: names, choices and combinations."""
    m, d, lo, t = recipe.model, recipe.data, recipe.lora, recipe.train
    _choice("model.format", m.format, ("auto", "janus-pro", "janus"))
    _choice("model.dtype", m.dtype, DTYPES)
    _choice("model.quantization", m.quantization, ("none", "4bit", "8bit"))
    if m.head_chunk_size < 0:
        raise RecipeError(f"model.head_chunk_size must be an integer >= 0 (0: score all targets in one piece), "
                          f"got {m.head_chunk_size!r}")
    if m.quantization != "none" and "llm" in lo.modules_to_save:
        raise RecipeError(f"lora.modules_to_save=[llm] cannot train a {m.quantization} language model "
                          "fully: use lora.targets=[llm], or model.quantization=none")
    for key in ("targets", "modules_to_save"):
        for name in getattr(lo, key):
            _choice(f"lora.{key}", name, COMPONENTS)
    both = set(lo.targets) & set(lo.modules_to_save)
    if both:
        raise RecipeError(f"lora.targets and lora.modules_to_save both name {sorted(both)}: pick one")
    if not lo.targets and not lo.modules_to_save:
        raise RecipeError("nothing to train: lora.targets and lora.modules_to_save are both empty")
    for task, ratio in d.mix.items():
        _choice("data.mix", task, TASKS)
        if not isinstance(ratio, (int, float)) or ratio < 0:
            raise RecipeError(f"data.mix.{task} must be a number >= 0, got {ratio!r}")
    if d.mix and sum(d.mix.values()) <= 0:
        raise RecipeError("data.mix: at least one task needs a positive ratio")
    for key in ("cfg_dropout", "edit_source_code_dropout", "edit_cfg_dropout", "edit_uncond_dropout"):
        if not 0 <= getattr(d, key) < 1:
            raise RecipeError(f"data.{key} must be in [0, 1), got {getattr(d, key)}")
    if d.edit_cfg_dropout + d.edit_uncond_dropout >= 1:
        raise RecipeError(f"data.edit_cfg_dropout + data.edit_uncond_dropout must be below 1 (some edit samples "
                          f"keep their instruction), got {d.edit_cfg_dropout} + {d.edit_uncond_dropout}")
    _choice("data.packed_attention", d.packed_attention, ("auto", "per_sample", "mask"))
    if d.packed_attention != "auto" and not d.packing:
        raise RecipeError(f"data.packed_attention={d.packed_attention} chooses how packed rows attend, but "
                          "data.packing is false: set data.packing=true, or leave data.packed_attention at auto")
    if d.packing and d.group_by_length:
        raise RecipeError("data.packing and data.group_by_length both set: packed rows have no padding "
                          "to save, pick one")
    if d.pad_to_multiple_of is not None and (d.pad_to_multiple_of < 1 or d.packing):
        raise RecipeError("data.pad_to_multiple_of must be >= 1, and applies to padded micro-batches (not data.packing)")
    if d.max_length < 8:
        raise RecipeError(f"data.max_length must be at least 8, got {d.max_length}")
    if not d.train:
        raise RecipeError("data.train is empty: give at least one {path: FILE.jsonl}")
    for split in ("train", "val"):
        for i, src in enumerate(getattr(d, split)):
            check_source(src, f"data.{split}[{i}]")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(t, key) < 1:
            raise RecipeError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    _choice("train.nan_policy", t.nan_policy, ("stop", "skip"))
    if t.deepspeed:
        _check_deepspeed(t.deepspeed)
    if t.max_steps == 0 or (t.max_steps < 0 and t.num_train_epochs <= 0):
        raise RecipeError("train.max_steps or train.num_train_epochs must be positive")


def check_source(src: DataSource, where: str) -> None:
    """Names and numbers of one data source (what it holds is checked when it is read)."""
    for key, column in src.columns.items():
        _choice(f"{where}.columns", key, RECORD_FIELDS)
        if not isinstance(column, str) or not column:
            raise RecipeError(f"{where}.columns.{key} must name a column of the source, got {column!r}")
    for key in ("query", "response"):
        if getattr(src, key) is not None and key in src.columns:
            raise RecipeError(f"{where}: {key} and columns.{key} both give the {key}: pick one")
    for key in ("max_samples", "sample"):
        if getattr(src, key) is not None and getattr(src, key) < 1:
            raise RecipeError(f"{where}.{key} must be >= 1, got {getattr(src, key)}")
    if src.max_samples is not None and src.sample is not None:
        raise RecipeError(f"{where}: max_samples (the first N) and sample / #N (N at random) both set: pick one")


def _check_deepspeed(path: str) -> None:
    import importlib.util
    import json

    if not Path(path).is_file():
        raise RecipeError(f"train.deepspeed: no such file {path} (relative to the working directory or the "
                          "recipe; shipped: recipes/deepspeed/zero2.json, recipes/deepspeed/zero3.json)")
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise RecipeError(f"train.deepspeed: {path} is not a JSON DeepSpeed config: {err}") from None
    if importlib.util.find_spec("deepspeed") is None:
        raise RecipeError("train.deepspeed needs DeepSpeed: pip install 'janus-ft[deepspeed]'")


def _choice(key: str, value, options) -> None:
    if value not in options:
        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RecipeError(f"{key}: unknown value {value!r}{hint}; expected one of {', '.join(options)}")


