"""Recipes: YAML -> typed dataclasses, with `section.key=value` overrides.

Every field carries a one-line help. An unknown key is an error naming the closest valid key;
a wrong type is an error naming the key and the expected type. `train` maps onto TRL's
`SFTConfig`: besides janus_ft's own keys it takes every `SFTConfig` / `TrainingArguments` field by
its own name (gathered into `train.extra`, which may also be written directly), except the few
janus_ft must set itself (`OWNED_TRAIN_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import RecipeError
from .janus import COMPONENTS, DTYPES, TASKS


def _f(default, help_text: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help_text}, **kw)
    return field(default=default, metadata={"help": help_text}, **kw)


@dataclass
class ModelArgs:
    path: str = _f("tiny", "transformers-native Janus directory or hub id; 'tiny' = the embedded tiny model")
    format: str = _f("auto", "conversation format: janus-pro | janus | auto (from the chat template)")
    dtype: str = _f("float32", "weights dtype: float32 | bfloat16 | float16")
    quantization: str = _f("none", "none | 4bit | 8bit (bitsandbytes, language model only)")
    attn_implementation: str | None = _f(None, "sdpa | eager | flash_attention_2 (default: transformers' choice)")


# What `columns` may map a source's columns onto (the JSONL record fields, docs/data.md).
RECORD_FIELDS = ("query", "response", "images", "history", "system", "messages", "task")


@dataclass
class DataSource:
    path: str = _f("", "a JSONL, Parquet, Arrow, CSV or JSON file, an imagefolder or saved-dataset directory, "
                       "or a hub dataset id; PATH#N samples N records (ms-swift's syntax, see sample)")
    split: str | None = _f(None, "split of a `datasets` source (default: its only split)")
    name: str | None = _f(None, "configuration (subset) of a hub dataset")
    columns: dict = _f({}, f"record field -> the source's column, fields: {', '.join(RECORD_FIELDS)}")
    query: str | None = _f(None, "the query of every record, for sources that hold only (image, text)")
    response: str | None = _f(None, "the response of every record: '<image>' for text-to-image sources of "
                                    "(image, caption) rows")
    max_samples: int | None = _f(None, "use the first N records of the source")
    sample: int | None = _f(None, "use N records drawn at random with train.seed, repeating the source when N "
                                  "exceeds it (what PATH#N sets)")

    @property
    def label(self) -> str:
        """How errors and logs name the source: its path, and the split when one was chosen."""
        return f"{self.path}[{self.split}]" if self.split else self.path


@dataclass
class DataArgs:
    train: list = _f([], "training sources: list of {path: FILE.jsonl}")
    val: list = _f([], "validation sources, same shape as train")
    mix: dict = _f({}, "samples of each task per optimizer step, as ratios (Janus-Pro stage 3: 5:1:4); "
                       "empty: the tasks present, in proportion to their sizes")
    max_length: int = _f(2048, "longest sample in tokens after image expansion; longer ones are dropped")
    cfg_dropout: float = _f(0.1, "probability of blanking a generation caption (classifier-free guidance)")
    system_prompt: str | None = _f(None, "system prompt for records without one (default: Janus's own)")
    last_turn_only: bool = _f(False, "supervise only the last assistant turn of multi-turn records")
    packing: bool = _f(False, "pack samples into padding-free rows (position ids restart per sample)")
    group_by_length: bool = _f(False, "without packing: order each step's samples by length so micro-batches pad less")
    code_cache: str | None = _f(None, "directory of the VQ code cache (default: $JANUS_FT_CACHE/vq_codes)")


@dataclass
class LoraArgs:
    r: int = _f(16, "LoRA rank")
    alpha: int = _f(32, "LoRA alpha (scaling = alpha / r)")
    dropout: float = _f(0.05, "dropout on the LoRA input")
    targets: list = _f(["llm", "aligner"], f"components that get LoRA: any of {', '.join(COMPONENTS)}")
    modules_to_save: list = _f([], "components trained fully instead of with LoRA (same names)")
    extra: dict = _f({}, "other peft.LoraConfig arguments, passed through (e.g. use_rslora, use_dora)")


@dataclass
class TrainArgs:
    max_steps: int = _f(-1, "optimizer steps; -1 = derive from num_train_epochs")
    num_train_epochs: float = _f(1, "passes over the training data (when max_steps is -1)")
    learning_rate: float = _f(2.0e-4, "peak learning rate")
    per_device_train_batch_size: int = _f(2, "samples per device per micro-batch")
    per_device_eval_batch_size: int = _f(4, "samples per device per evaluation batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    seed: int = _f(42, "seed for initialisation, data order, mixing and CFG dropout")
    lr_scheduler_type: str = _f("cosine", "transformers scheduler name (Janus-Pro stage 3: constant)")
    warmup_steps: int = _f(0, "linear warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    logging_steps: int = _f(1, "log every N optimizer steps")
    save_steps: int = _f(500, "checkpoint every N optimizer steps")
    save_total_limit: int | None = _f(None, "keep at most N checkpoints")
    save_last: bool = _f(False, "also checkpoint the last step when save_steps does not divide it (the final "
                                "adapter is always written)")
    eval_steps: int | None = _f(None, "evaluate on data.val every N steps (None: only at the end)")
    eval_on_start: bool = _f(False, "with eval_steps, also evaluate before step 1: curves and grids start at the base model")
    eval_answers: int = _f(8, "understanding/text val records answered at each evaluation (exact match, CER); 0: loss only")
    eval_images: int = _f(4, "generation val captions drawn at each evaluation (output_dir/samples, TensorBoard); 0: none")
    sample_prompts: list = _f([], "captions to draw at each evaluation instead of the first val captions")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    report_to: list = _f([], "loggers, e.g. [tensorboard]")
    resume: bool = _f(False, "continue from the newest checkpoint in output_dir")
    resume_from_checkpoint: str | None = _f(None, "continue from this checkpoint directory")
    overwrite_output_dir: bool = _f(False, "replace what a non-empty output_dir holds (default: refuse)")
    nan_policy: str = _f("stop", "on a non-finite loss: stop (naming step and task) | skip (the micro-batch, counted)")
    deepspeed: str | None = _f(None, "DeepSpeed config file (see recipes/deepspeed/)")
    dataloader_num_workers: int = _f(0, "worker processes building samples")
    disable_tqdm: bool = _f(False, "hide the progress bar")
    extra: dict = _f({}, "other SFTConfig / TrainingArguments fields, passed through (also accepted directly under train)")


@dataclass
class Recipe:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    output_dir: str = "runs/janus-ft"
    source: str | None = field(default=None, metadata={"internal": True})


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
    if isinstance(raw.get("train"), dict):
        raw["train"] = _lift_trl_fields(raw["train"])
    recipe = _build(Recipe, raw, where="")
    recipe.source = str(path) if path else None
    _resolve_paths(recipe, path.parent if path is not None else Path.cwd())
    validate(recipe)
    return recipe


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


def _lift_trl_fields(train: dict) -> dict:
    """Keys of the `train` section that are TRL `SFTConfig` / `TrainingArguments` fields but not
    janus_ft's own go to `train.extra`, so a TRL user's recipe works as written; owned and unknown
    names are refused here, before anything loads."""
    own = {f.name for f in dataclasses.fields(TrainArgs)}
    extra = train.get("extra") if isinstance(train.get("extra"), dict) else None
    foreign = [k for k in train if k not in own]
    if not foreign and not extra:
        return train
    from trl import SFTConfig  # only when needed: importing TRL costs seconds

    trl_fields = {f.name for f in dataclasses.fields(SFTConfig) if f.init}
    lifted = {k: v for k, v in train.items() if k in own}
    moved = dict(extra or {})
    for key in foreign + list(extra or {}):
        name = f"train.{key}" if key in foreign else f"train.extra.{key}"
        if key in OWNED_TRAIN_FIELDS:
            raise RecipeError(f"recipe key '{name}' is set by janus_ft: {OWNED_TRAIN_FIELDS[key]}")
        if key not in trl_fields:
            close = difflib.get_close_matches(str(key), sorted(own | trl_fields), n=1)
            hint = f" (did you mean 'train.{close[0]}'?)" if close else ""
            raise RecipeError(f"unknown recipe key '{name}'{hint}: train takes janus_ft's keys and every TRL "
                              "SFTConfig / transformers TrainingArguments field")
        if key in foreign:
            moved[key] = train[key]
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


def validate(recipe: Recipe) -> None:
    """Checks that need no model: names, choices and combinations."""
    m, d, lo, t = recipe.model, recipe.data, recipe.lora, recipe.train
    _choice("model.format", m.format, ("auto", "janus-pro", "janus"))
    _choice("model.dtype", m.dtype, DTYPES)
    _choice("model.quantization", m.quantization, ("none", "4bit", "8bit"))
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
    if not 0 <= d.cfg_dropout < 1:
        raise RecipeError(f"data.cfg_dropout must be in [0, 1), got {d.cfg_dropout}")
    if d.packing and d.group_by_length:
        raise RecipeError("data.packing and data.group_by_length both set: packed rows have no padding "
                          "to save, pick one")
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


def recipe_to_dict(recipe: Recipe) -> dict:
    out = dataclasses.asdict(recipe)
    out.pop("source", None)
    return out


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True))
