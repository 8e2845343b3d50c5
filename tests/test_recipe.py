"""Recipes: every shipped recipe loads and maps onto SFTConfig; mistakes are clear errors."""

from pathlib import Path

import pytest

from janus_ft.cli import main
from janus_ft.errors import RecipeError
from janus_ft.recipe import load_recipe, save_recipe
from janus_ft.train.arguments import training_arguments

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_templates" / "samples"
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_maps_to_training_arguments(path, tmp_path):
    recipe = load_recipe(path, [f"output_dir={tmp_path}"])
    config = training_arguments(recipe, max_steps=10, has_eval=bool(recipe.data.val))
    assert config.learning_rate == recipe.train.learning_rate
    assert config.per_device_train_batch_size == recipe.train.per_device_train_batch_size
    save_recipe(recipe, tmp_path / "r.yaml")   # the resolved recipe round-trips
    assert load_recipe(tmp_path / "r.yaml").train == recipe.train


def test_overrides_and_extra_passthrough(tmp_path):
    r = load_recipe(REPO / "recipes/demo.yaml", ["train.max_steps=7", "lora.targets=[llm, vision]",
                                                 "train.extra={adam_beta2: 0.95}", "output_dir=x"])
    assert r.train.max_steps == 7 and r.lora.targets == ["llm", "vision"] and r.output_dir == "x"
    assert training_arguments(r, 7, False).adam_beta2 == 0.95


def test_eval_on_start_needs_periodic_evaluation_and_a_fresh_run():
    demo = REPO / "recipes/demo.yaml"
    assert training_arguments(load_recipe(demo), 60, has_eval=True).eval_on_start
    assert not training_arguments(load_recipe(demo), 60, has_eval=False).eval_on_start       # no data.val
    assert not training_arguments(load_recipe(demo, ["train.eval_steps=null"]), 60, True).eval_on_start
    # a resumed run's log already starts with its first evaluation
    assert not training_arguments(load_recipe(demo, ["train.resume=true"]), 60, True).eval_on_start


def test_pinned_memory_only_with_an_accelerator():
    import torch

    config = training_arguments(load_recipe(REPO / "recipes/demo.yaml"), 1, has_eval=False)
    assert config.dataloader_pin_memory == torch.cuda.is_available()


@pytest.mark.parametrize("override,message", [
    ("trian.max_steps=3", "unknown recipe key 'trian' (did you mean 'train'?)"),
    ("train.learning_rat=1e-4", "did you mean 'train.learning_rate'"),
    ("train.max_steps=abc", "'train.max_steps' expects int"),
    ("lora.targets=[llm, visoin]", "did you mean 'vision'"),
    ("model.dtype=fp16", "model.dtype: unknown value 'fp16'"),
    ("model.quantization=3bit", "model.quantization: unknown value"),
    ("data.mix={understanding: 1, video: 2}", "data.mix: unknown value 'video'"),
    ("data.mix={understanding: -1}", "must be a number >= 0"),
    ("data.cfg_dropout=1.5", "data.cfg_dropout must be in [0, 1)"),
    ("data.packed_attention=varlen", "data.packed_attention: unknown value 'varlen'; expected one of auto, "
                                     "per_sample, mask"),
    ("data.packed_attention=mask", "data.packed_attention=mask chooses how packed rows attend, but data.packing "
                                   "is false"),
    ("lora.modules_to_save=[llm]", "both name ['llm']"),
    ("train.per_device_train_batch_size=0", "must be >= 1"),
    ("train.extra={not_a_field: 1}", "unknown recipe key 'train.extra.not_a_field'"),
    ("train.save_stratgy=no", "did you mean 'train.save_strategy'"),
    ("train.remove_unused_columns=true", "'train.remove_unused_columns' is set by janus_ft"),
    ("train.extra={packing: true}", "'train.extra.packing' is set by janus_ft: use data.packing"),
    ("data.train=[]", "data.train is empty"),
    ("train.max_steps", "is not of the form section.key=value"),
])
def test_bad_recipes_fail_with_a_clear_message(override, message):
    with pytest.raises(RecipeError) as err:
        r = load_recipe(REPO / "recipes/demo.yaml", [override])
        training_arguments(r, 1, False)
    assert message in str(err.value)


def _plain(value):
    """A dataclass default as YAML can write it (enums by value)."""
    import enum
    return value.value if isinstance(value, enum.Enum) else value


def test_train_takes_every_trl_field_by_its_own_name(tmp_path):
    """A TRL user's `train` section works as written: every SFTConfig / TrainingArguments field is
    accepted by its own name (here each set to its own default), except those janus_ft owns or does
    not support, each refused with its reason."""
    import dataclasses

    import yaml
    from trl import SFTConfig

    from janus_ft.recipe import OWNED_TRAIN_FIELDS, TrainArgs
    from janus_ft.recipe.load import UNSUPPORTED_TRAIN_FIELDS

    own = {f.name for f in dataclasses.fields(TrainArgs)}
    fields = {}
    for key, reason in UNSUPPORTED_TRAIN_FIELDS.items():
        with pytest.raises(RecipeError) as err:
            load_recipe(REPO / "recipes/demo.yaml", [f"train.{key}=true"])
        assert str(err.value) == f"recipe key 'train.{key}' is not supported by janus-ft sft: {reason}"
    for f in dataclasses.fields(SFTConfig):
        # bf16's default None means "on unless fp16" in TRL, which a CPU refuses: set it as a user would
        if not f.init or f.name in OWNED_TRAIN_FIELDS or f.name in UNSUPPORTED_TRAIN_FIELDS or f.name in own or f.name == "bf16":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        fields[f.name] = _plain(default)
    assert len(fields) > 80   # 135 SFTConfig fields less the owned and those janus_ft names itself
    raw = yaml.safe_load((REPO / "recipes/demo.yaml").read_text())
    raw["train"].update(fields, bf16=False, save_strategy="no", adam_beta2=0.95)
    (tmp_path / "trl.yaml").write_text(yaml.safe_dump(raw))
    recipe = load_recipe(tmp_path / "trl.yaml", [f"output_dir={tmp_path / 'out'}"])
    assert set(recipe.train.extra) == set(fields) | {"bf16"}
    config = training_arguments(recipe, 5, False)
    assert config.save_strategy == "no" and config.adam_beta2 == 0.95
    # the escape hatch still works, and both spellings land in the same place
    r = load_recipe(REPO / "recipes/demo.yaml", ["train.extra={save_strategy: 'no'}", "train.optim=adamw_torch"])
    assert r.train.extra == {"save_strategy": "no", "optim": "adamw_torch"}


@pytest.mark.parametrize("key", sorted(__import__("janus_ft.recipe", fromlist=["x"]).OWNED_TRAIN_FIELDS))
def test_fields_janus_ft_owns_are_refused_with_the_reason(key):
    from janus_ft.recipe import OWNED_TRAIN_FIELDS
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes/demo.yaml", [f"train.{key}=1"])
    assert str(err.value) == f"recipe key 'train.{key}' is set by janus_ft: {OWNED_TRAIN_FIELDS[key]}"


def test_cli_bad_recipe_exits_2_before_loading_a_model(tmp_path, capsys):
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), "lora.r=sixteen"]) == 2
    assert "expects int" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), f"data.train=[{{path: {missing}}}]",
                 f"output_dir={tmp_path / 'o'}"]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"),
                 f"data.train=[{{path: {REPO / 'data_templates/samples/text.jsonl'}}}]",
                 f"output_dir={tmp_path / 'o'}"]) == 2
    assert "ratio 5 but no understanding records" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    data = tmp_path / "d.jsonl"      # bad images: all reported before any weight loads
    (tmp_path / "fake.png").write_text("not a png")
    data.write_text('{"query": "<image>hi", "response": "a", "images": ["fake.png"]}\n'
                    '{"query": "<image>hi", "response": "b", "images": ["gone.png"]}\n')
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), f"data.train=[{{path: {data}}}]",
                 "data.mix={understanding: 1}", "data.val=[]", f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "2 bad image reference(s)" in err and "d.jsonl:1: field 'images[0]'" in err and "d.jsonl:2:" in err
    assert not (tmp_path / "o").exists()


def test_bad_record_survives_a_dataloader_worker():
    """torch re-raises a worker's exception as `type(message)`: it must stay a BadRecord (exit 2)."""
    import torch

    from janus_ft.errors import BadRecord

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise BadRecord("a.jsonl", 3, "images[0]", "not an image")

    with pytest.raises(BadRecord) as info:
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))
    assert str(info.value) == "a.jsonl:3: field 'images[0]': not an image"


def test_every_command_has_help(capsys):
    from janus_ft.cli import COMMANDS
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: janus-ft " + name in capsys.readouterr().out


def test_without_data_mix_the_tasks_present_are_mixed_by_size(tiny_processor):
    """A recipe with one task's data and no data.mix trains on it (no ratios to zero first); an
    explicit ratio for a task without records stays an error."""
    from janus_ft.data.prepared import task_indices
    from janus_ft.errors import UserError
    from janus_ft.train.sft import global_batch, read_data, training_schedule

    train = [f"data.train=[{{path: {SAMPLES / 'understanding.jsonl'}}}, {{path: {SAMPLES / 'text.jsonl'}}}]",
             "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2"]
    recipe = load_recipe(None, train)
    assert recipe.data.mix == {}
    rows, _ = read_data(recipe, tiny_processor, "janus-pro")
    sets = {task: range(len(i)) for task, i in task_indices(rows).items()}
    mixture, steps = training_schedule(recipe, sets)
    assert mixture.ratios == {"understanding": 48, "text": 24} and (global_batch(recipe), steps) == (8, 9)
    assert mixture.counts(len(mixture)) == {"understanding": 48, "text": 24, "generation": 0, "edit": 0}
    with pytest.raises(UserError, match="data.mix gives task 'generation' ratio 4 but no generation records"):
        read_data(load_recipe(None, train + ["data.mix={understanding: 5, text: 1, generation: 4}"]), tiny_processor,
                  "janus-pro")
