"""Recipes: YAML -> typed dataclasses, with `section.key=value` overrides.

An unknown key is an error naming the closest valid key; a wrong type is an error naming the key
and the expected type. `train` maps onto TRL's `SFTConfig`: besides janus_ft's own keys it takes
every `SFTConfig` / `TrainingArguments` field by its own name (gathered into `train.extra`, which
may also be written directly), except the few janus_ft must set itself (`OWNED_TRAIN_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from ..errors import RecipeError
from .dpo import OWNED_DPO_FIELDS, DpoArgs
from .grpo import GrpoArgs, UnsupportedGrpoFields
from .sections import DataSource, Recipe, TrainArgs
from .validate import validate


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (or defaults), apply `section.key=value` overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise RecipeError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of sections (model, data, lora, train, output_dir)")
    for item in overrides or []:
        _apply_override(raw, item)
    for section, (own, config, owned) in TRL_SECTIONS.items():
        if isinstance(raw.get(section), dict):
            raw[section] = lift_trl_fields(raw[section], section, own, config, owned)
    recipe = _build(Recipe, raw, where="")
    recipe.source = str(path) if path else None
    _resolve_paths(recipe, path.parent if path is not None else Path.cwd())
    validate(recipe)
    return recipe


def recipe_trainer(path: str | Path) -> str:
    """Which trainer a recipe file is written for: "dpo" or "grpo" when it has that section, else
    "sft" (what `data check` / `data preview` then read its data as)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "sft"   # load_recipe reports it
    found = [name for name in TRL_SECTIONS if isinstance(raw, dict) and name in raw and name != "train"]
    return found[0] if len(found) == 1 else "sft"


# SFTConfig / TrainingArguments fields janus_ft sets itself: a recipe that set them would silently
# break the task mixture, the labels or the images, so they are refused with the reason.
OWNED_TRAIN_FIELDS = {
    "remove_unused_columns": "janus_ft's samples carry task and image columns the collator needs",
    "dataset_kwargs": "janus_ft renders and tokenizes samples itself; TRL must not prepare them again",
    "train_sampling_strategy": "the mixture schedule is read in order: any other sampler breaks the task "
                               "ratios inside each step (use data.group_by_length to sort within a step)",
    "shuffle_dataset": "the mixture schedule is already shuffled with train.seed; a second shuffle breaks "
                       "the task ratios inside each step",
    "group_by_length": "use data.group_by_length (it sorts within each step, keeping the task ratios)",
    "packing": "use data.packing (janus_ft packs samples with their images itself)",
    "packing_strategy": "use data.packing (janus_ft packs samples with their images itself)",
    "padding_free": "use data.packing (janus_ft packs samples with their images itself)",
    "eval_packing": "use data.packing",
    "max_length": "use data.max_length (longer samples are dropped and counted, never truncated)",
    "truncation_mode": "janus_ft never truncates a sample (it would cut image tokens); see data.max_length",
    "dataset_text_field": "janus_ft reads records, not a text column",
    "completion_only_loss": "janus_ft supervises exactly the assistant turns (and image codes) itself",
    "assistant_only_loss": "janus_ft supervises exactly the assistant turns (and image codes) itself",
    "loss_type": "janus_ft computes the per-task loss itself",
    "chat_template_path": "the conversation format comes from the checkpoint (model.format)",
    "eos_token": "special tokens are the checkpoint's own",
    "pad_token": "special tokens are the checkpoint's own",
    "model_init_kwargs": "use the model section (path, dtype, quantization, attn_implementation)",
    "output_dir": "set output_dir at the top level of the recipe",
    "activation_checkpointing": "use train.gradient_checkpointing",
    "activation_checkpointing_kwargs": "janus_ft needs non-reentrant checkpointing (LoRA inside the vision "
                                       "tower, micro-batches without images under DDP)",
    "gradient_checkpointing_kwargs": "janus_ft needs non-reentrant checkpointing (LoRA inside the vision "
                                     "tower, micro-batches without images under DDP)",
}


# Sections that pass TRL config fields through: section -> (its dataclass, TRL's config class, the
# fields janus_ft sets itself). A trainer's section joins here.
TRL_SECTIONS = {"train": (TrainArgs, "SFTConfig", OWNED_TRAIN_FIELDS)}
TRL_SECTIONS["grpo"] = (GrpoArgs, "GRPOConfig", UnsupportedGrpoFields())
TRL_SECTIONS["dpo"] = (DpoArgs, "DPOConfig", OWNED_DPO_FIELDS)


def lift_trl_fields(raw: dict, section: str, own_cls, config: str, owned: dict) -> dict:
    """Keys of a section that are fields of its TRL config class (`SFTConfig` for `train`) but not
    janus_ft's own go to the section's `extra`, so a TRL user's recipe works as written; owned and
    unknown names are refused here, before anything loads."""
    own = {f.name for f in dataclasses.fields(own_cls)}
    extra = raw.get("extra") if isinstance(raw.get("extra"), dict) else None
    foreign = [k for k in raw if k not in own]
    if not foreign and not extra:
        return raw
    import trl  # only when needed: importing TRL costs seconds

    trl_fields = {f.name for f in dataclasses.fields(getattr(trl, config)) if f.init}
    lifted = {k: v for k, v in raw.items() if k in own}
    moved = dict(extra or {})
    for key in foreign + list(extra or {}):
        name = f"{section}.{key}" if key in foreign else f"{section}.extra.{key}"
        if key in owned:
            raise RecipeError(f"recipe key '{name}' is set by janus_ft: {owned[key]}")
        if key not in trl_fields:
            close = difflib.get_close_matches(str(key), sorted(own | trl_fields), n=1)
            hint = f" (did you mean '{section}.{close[0]}'?)" if close else ""
            raise RecipeError(f"unknown recipe key '{name}'{hint}: {section} takes janus_ft's keys and every TRL "
                              f"{config}" + (" / transformers TrainingArguments" if section == "train" else "")
                              + " field")
        if key in foreign:
            moved[key] = raw[key]
    if moved:
        lifted["extra"] = moved
    return lifted


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {item!r} is not of the form section.key=value")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {item!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value else ""


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        name = f"{where}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{where}{close[0]}'?)" if close else f" (valid: {', '.join(fields)})"
            raise RecipeError(f"unknown recipe key '{name}'{hint}")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(kind, value, name: str):
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, f"{name}.")
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is float and isinstance(value, str):   # YAML 1.1 reads "5e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool, list, dict) and isinstance(value, t):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise RecipeError(f"recipe key '{name}' expects {names}, got {value!r}")


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    """Data paths (and train.deepspeed) in a recipe are relative to the working directory if they
    exist there, else to the recipe file (so `janus-ft sft --recipe recipes/x.yaml` works from the
    repo root or recipes/)."""
    ds = recipe.train.deepspeed
    if ds and not Path(ds).is_absolute() and not Path(ds).exists() and (base / ds).exists():
        recipe.train.deepspeed = str(base / ds)
    for split in ("train", "val"):
        setattr(recipe.data, split, [parse_source(src, f"data.{split}[{i}]", base)
                                     for i, src in enumerate(getattr(recipe.data, split))])


def parse_source(spec, where: str, base: Path | None = None) -> DataSource:
    """A `DataSource` from a recipe entry (a mapping or a bare path) or a command-line argument.

    `PATH#N` is ms-swift's way to ask for N sampled records; a path that exists as written (a file
    really named `a#3.jsonl`) is taken as it is. A relative path that does not exist in the working
    directory but does next to the recipe (`base`) is resolved there.
    """
    if isinstance(spec, DataSource):
        return spec
    src = _build(DataSource, spec if isinstance(spec, dict) else {"path": spec}, f"{where}.")
    if not isinstance(src.path, str) or not src.path:
        raise RecipeError(f"{where}.path: give a file, a directory or a hub dataset id")
    head, sep, count = src.path.rpartition("#")
    if sep and count.isdigit() and not _exists(src.path) and not (base and _exists(base / src.path)):
        if src.sample is not None:
            raise RecipeError(f"{where}: {src.path!r} and sample={src.sample} both set the sample size")
        src.path, src.sample = head, int(count)
    p = Path(src.path)
    if base is not None and not p.is_absolute() and not _exists(p) and _exists(base / p):
        src.path = str(base / p)
    return src


def _exists(path) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):   # a name too long for the file system, an embedded NUL byte
        return False


def recipe_to_dict(recipe: Recipe) -> dict:
    out = dataclasses.asdict(recipe)
    out.pop("source", None)
    return out


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True))
