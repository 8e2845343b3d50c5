"""Recipes: YAML, a dict or a recipe object -> the typed recipe of one training method, with
`section.key=value` overrides.

An unknown key is an error naming the closest valid key; a wrong type is an error naming the key
and the expected type; a key the method does not read is an error saying why (`recipe.methods`).
Besides janus_ft's own keys, `train` takes every transformers `TrainingArguments` field by its own
name (and an SFT recipe the TRL `SFTConfig` names, each honoured or refused), gathered into
`train.extra` (which may also be written directly) and checked against the installed class's
types; the fields janus_ft must set itself (`OWNED_TRAIN_FIELDS`) and those transformers 5 removed
(`REMOVED_FIELDS`) are refused with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from ..errors import RecipeError
from .dpo import OWNED_DPO_FIELDS
from .grpo import UnsupportedGrpoFields
from .methods import METHODS
from .sections import DataSource, Recipe, TrainArgs
from .validate import validate


def load_recipe(recipe: str | Path | dict | Recipe | None = None, overrides: list[str] | dict | None = None,
                method: str | None = None) -> Recipe:
    """The recipe of a training method, validated: from a YAML file, a dict of sections or a recipe
    object (defaults without one), with dotted overrides (`["train.max_steps=20"]` or
    `{"train.max_steps": 20}`). `method` ("sft", "dpo", "grpo") defaults to the one the recipe is
    written for: the one whose section it has (`dpo:`, `grpo:`), else sft."""
    raw, path = _read(recipe)
    for key, value in override_items(overrides):
        _apply_override(raw, key, value)
    spec = METHODS[_method_of(raw, method, path)]
    trl_sections = {"train": (TrainArgs, spec.train_config, OWNED_TRAIN_FIELDS)}
    if spec.section_config:
        own = {f.name: f.default_factory for f in dataclasses.fields(spec.recipe)}[spec.name]
        trl_sections[spec.name] = (own, spec.section_config, SECTION_OWNED[spec.name])
    for section, (own, config, owned) in trl_sections.items():
        if isinstance(raw.get(section), dict):
            raw[section] = lift_trl_fields(raw[section], section, own, config, owned, spec.name)
    out = _build(spec.recipe, raw, where="")
    out.source = str(path) if path else None
    _refuse_unread(raw, spec.unread_keys(out), spec.name)
    _resolve_paths(out, path.parent if path is not None else Path.cwd())
    validate(out)
    if spec.validate:
        spec.validate(out)
    return out


def _read(recipe) -> tuple[dict, Path | None]:
    if recipe is None:
        return {}, None
    if isinstance(recipe, Recipe):
        raw = recipe_to_dict(recipe)
        return raw, Path(recipe.source) if recipe.source else None
    if isinstance(recipe, dict):
        return copy.deepcopy(recipe), None
    path = Path(recipe)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (model, data, lora, train, output_dir)")
    return raw, path


def override_items(overrides) -> list[tuple[str, object]]:
    """(dotted key, value) pairs: `key=value` strings take YAML values, a dict its own values."""
    if isinstance(overrides, dict):
        return list(overrides.items())
    items = []
    for item in overrides or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not of the form section.key=value")
        items.append((key, yaml.safe_load(value) if value else ""))
    return items


def _method_of(raw: dict, method: str | None, path: Path | None) -> str:
    """The method named, checked against the method sections the recipe has."""
    if method is not None and method not in METHODS:
        raise RecipeError(f"unknown training method {method!r}; expected one of {', '.join(METHODS)}")
    found = [name for name in METHODS if name in raw]
    where = f"{path}: " if path else ""
    if len(found) > 1:
        raise RecipeError(f"{where}the recipe has both a {found[0]} and a {found[1]} section: a recipe is for one "
                          "training method")
    if method is None:
        return found[0] if found else "sft"
    if found and found[0] != method:
        raise RecipeError(f"{where}this is a {found[0]} recipe (it has a {found[0]} section), not a {method} recipe: "
                          f"train it with janus_ft's {found[0]} method, or remove the section")
    return method


def recipe_method(path: str | Path) -> str:
    """Which method a recipe file is written for ("sft", "dpo", "grpo"): what `data check` and
    `data preview` then read its data as."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "sft"   # load_recipe reports it
    found = [name for name in METHODS if isinstance(raw, dict) and name in raw]
    return found[0] if len(found) == 1 else "sft"


def _refuse_unread(raw: dict, unread: dict[str, str], method: str) -> None:
    for key, why in unread.items():
        section, _, name = key.partition(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            raise RecipeError(f"recipe key '{key}' is not read by janus-ft {method}: {why}")


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
    "pad_to_multiple_of": "use data.pad_to_multiple_of",
    "dataset_num_proc": "use data.num_proc (records are prepared in parallel into the prepared-rows cache)",
    **dict.fromkeys(("torch_compile", "torch_compile_backend", "torch_compile_mode"),
                    "use model.compile (janus_ft compiles each language-model decoder layer, LoRA inside, with the "
                    "sequence length dynamic; torch_compile compiles the whole model as one graph, SigLIP tower and "
                    "heads included, whose compile time grows with the model's depth)"),
}

# SFTConfig fields with no meaning for Janus, or not implemented: refused, not silently ignored.
UNSUPPORTED_TRAIN_FIELDS = {
    "trust_remote_code": "Janus is native in transformers: no remote code runs",
    "router_aux_loss_coef": "Janus's language model is dense (no router)",
    "activation_offloading": "not implemented; train.gradient_checkpointing and model.quantization are the memory "
                             "levers",
}

# Arguments transformers 5 removed, with what replaced them: recipes written for 4.x carry them.
REMOVED_FIELDS = {
    "warmup_ratio": "train.warmup_steps, which takes the ratio as a float below 1 (e.g. warmup_steps: 0.1)",
    "evaluation_strategy": "train.eval_strategy",
    "no_cuda": "train.use_cpu",
    "use_mps_device": "nothing: the MPS device is used when available",
    "per_gpu_train_batch_size": "train.per_device_train_batch_size",
    "per_gpu_eval_batch_size": "train.per_device_eval_batch_size",
    "fp16_backend": "nothing: mixed precision always uses torch.amp",
    "half_precision_backend": "nothing: mixed precision always uses torch.amp",
    "push_to_hub_model_id": "train.hub_model_id",
    "push_to_hub_organization": "train.hub_model_id (as 'organization/name')",
    "push_to_hub_token": "train.hub_token",
    "include_inputs_for_metrics": "train.include_for_metrics",
    "logging_dir": "the TENSORBOARD_LOGGING_DIR environment variable (by default TensorBoard logs go under output_dir)",
    "save_safetensors": "nothing: checkpoints are always safetensors",
    "torchdynamo": "train.torch_compile_backend",
    "include_tokens_per_second": "train.include_num_input_tokens_seen",
    "split_batches": "train.accelerator_config: {split_batches: true}",
    "dispatch_batches": "train.accelerator_config: {dispatch_batches: true}",
    "tpu_num_cores": "nothing: launch TPU jobs with accelerate",
}

# The method sections' TRL fields janus_ft spells its own way or sets itself.
SECTION_OWNED = {"dpo": OWNED_DPO_FIELDS, "grpo": UnsupportedGrpoFields()}


def upstream_fields(config: str) -> dict:
    """name -> type of the init fields of TRL's `config` class (or transformers' `TrainingArguments`),
    as the installed version declares them."""
    import transformers

    if config == "TrainingArguments":
        cls = transformers.TrainingArguments
    else:
        import trl  # only when needed: importing TRL costs seconds
        cls = getattr(trl, config)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:   # an annotation that does not resolve on this Python: take it as declared
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init}


def lift_trl_fields(raw: dict, section: str, own_cls, config: str, owned: dict, method: str = "sft") -> dict:
    """Keys of a section that are fields of its upstream config class (`SFTConfig` for the `train`
    section of an SFT recipe, `TrainingArguments` for DPO and GRPO, `DPOConfig` / `GRPOConfig` for
    their sections) but not janus_ft's own go to the section's `extra`, each value checked against
    the type the installed class declares, so a TRL user's recipe works as written; owned, removed
    and unknown names are refused here, before anything loads."""
    own = {f.name for f in dataclasses.fields(own_cls)}
    extra = raw.get("extra") if isinstance(raw.get("extra"), dict) else None
    foreign = [k for k in raw if k not in own]
    if not foreign and not extra:
        return raw
    upstream = upstream_fields(config)
    lifted = {k: v for k, v in raw.items() if k in own}
    moved = {}
    for key in foreign + list(extra or {}):
        name = f"{section}.{key}" if key in foreign else f"{section}.extra.{key}"
        if key in owned:
            raise RecipeError(f"recipe key '{name}' is set by janus_ft: {owned[key]}")
        if section == "train" and key in UNSUPPORTED_TRAIN_FIELDS:
            raise RecipeError(f"recipe key '{name}' is not supported by janus-ft {method}: {UNSUPPORTED_TRAIN_FIELDS[key]}")
        if key in REMOVED_FIELDS and key not in upstream:
            raise RecipeError(f"recipe key '{name}' was removed in transformers 5: use {REMOVED_FIELDS[key]}")
        if key not in upstream:
            raise RecipeError(_unknown(name, key, section, own, upstream, config, method))
        moved[key] = _coerce_upstream(upstream[key], raw[key] if key in foreign else extra[key], name)
    if moved:
        lifted["extra"] = moved
    return lifted


def _unknown(name: str, key: str, section: str, own: set, upstream: dict, config: str, method: str) -> str:
    if section == "train" and config != "SFTConfig" and key in upstream_fields("SFTConfig"):
        return f"recipe key '{name}' is a TRL SFTConfig option: janus-ft {method} does not read it"
    close = difflib.get_close_matches(str(key), sorted(own | set(upstream)), n=1)
    hint = f" (did you mean '{section}.{close[0]}'?)" if close else ""
    return (f"unknown recipe key '{name}'{hint}: {section} takes janus_ft's keys and every "
            f"{'transformers' if config == 'TrainingArguments' else 'TRL'} {config} field")


def _coerce_upstream(kind, value, name: str):
    """`value` as the upstream field's declared type accepts it (an int for a float field, an enum's
    string value), or an error naming the key and that type."""
    if _accepts(kind, value):
        return float(value) if kind is float and isinstance(value, int) else value
    raise RecipeError(f"recipe key '{name}' expects {_type_name(kind)}, got {value!r}")


def _accepts(kind, value) -> bool:
    import enum

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind in (typing.Any, object) or isinstance(kind, (str, typing.TypeVar)):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arm, value) for arm in args)
    if origin is typing.Literal:
        return value in args
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return isinstance(value, kind) or value in {m.value for m in kind}
    if origin is not None:
        kind = origin
    return isinstance(value, kind) if isinstance(kind, type) else True


def _type_name(kind) -> str:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(kind) is typing.Literal:
        return " or ".join(repr(a) for a in args)
    return "null" if kind is type(None) else getattr(kind, "__name__", str(kind))


def _apply_override(raw: dict, key: str, value) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {key}={value!r}: {part} is not a section")
    node[parts[-1]] = value


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
    exist there, else to the recipe file (so `janus-ft sft --recipe recipes/demo.yaml` works from the
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
    """The recipe as YAML-ready sections: its method's keys only (what loads back as the same method)."""
    out = dataclasses.asdict(recipe)
    out.pop("source", None)
    for key in METHODS[recipe.method].unread_keys(recipe):
        section, _, name = key.partition(".")
        out.get(section, {}).pop(name, None)
    return out


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True))
