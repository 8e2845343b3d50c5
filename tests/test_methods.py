"""janus_ft.recipe.methods: a recipe per training method. Every key a method does not read is
refused with its reason (the whole table, not samples of it); a method's saved recipe holds only
its own keys and loads back as the same method, for training and for `data check`; the table in
docs/recipe_keys.md is the one the code holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from janus_ft.cli import main
from janus_ft.errors import RecipeError
from janus_ft.recipe import METHODS, load_recipe, recipe_method, recipe_to_dict, save_recipe
from janus_ft.recipe.methods import DOC_HEADER, keys_table

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {"sft": "demo.yaml", "dpo": "dpo_mixed.yaml", "grpo": "grpo_format.yaml"}
UNREAD = [(method, key) for method, spec in METHODS.items() for key in spec.unread]


def default_of(key: str):
    """The default of a dotted recipe key, as a recipe would write it."""
    section, _, name = key.partition(".")
    cls = {f.name: f.default_factory for f in dataclasses.fields(METHODS["sft"].recipe)}[section]
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def test_the_table_covers_what_the_issue_found_unread():
    """GRPO never read these and DPO never read streaming: each is now refused (or honoured)."""
    assert {"data.mix", "data.max_length", "data.cfg_dropout", "data.streaming", "train.eval_answers"} <= set(
        METHODS["grpo"].unread)
    assert "train.nan_policy" not in METHODS["grpo"].unread   # honoured: see test_grpo's NaN test
    assert "data.streaming" in METHODS["dpo"].unread


@pytest.mark.parametrize("method, key", UNREAD, ids=[f"{m}-{k}" for m, k in UNREAD])
def test_a_key_the_method_does_not_read_is_refused_with_the_reason(method, key):
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes" / SHIPPED[method], {key: default_of(key)})
    assert str(err.value) == f"recipe key '{key}' is not read by janus-ft {method}: {METHODS[method].unread[key]}"


def test_max_bad_records_is_read_only_while_streaming():
    with pytest.raises(RecipeError, match="'data.max_bad_records' is not read by janus-ft sft: read only with"):
        load_recipe(REPO / "recipes/demo.yaml", ["data.max_bad_records=5"])
    streaming = load_recipe(REPO / "recipes/demo.yaml", ["data.streaming=true", "data.max_bad_records=5",
                                                         "train.max_steps=2"])
    assert streaming.data.max_bad_records == 5


@pytest.mark.parametrize("method", list(SHIPPED))
def test_a_saved_recipe_holds_its_own_keys_and_loads_back_as_the_same_method(method, tmp_path, capsys):
    recipe = load_recipe(REPO / "recipes" / SHIPPED[method], [f"output_dir={tmp_path / 'run'}"])
    assert recipe.method == method
    saved = tmp_path / "recipe.yaml"
    save_recipe(recipe, saved)
    raw = yaml.safe_load(saved.read_text())
    assert [s for s in ("dpo", "grpo") if s in raw] == ([] if method == "sft" else [method])
    for key in METHODS[method].unread_keys(recipe):
        section, _, name = key.partition(".")
        assert name not in raw[section], key
    assert recipe_method(saved) == method
    again = load_recipe(saved)
    assert again.method == method and recipe_to_dict(again) == recipe_to_dict(recipe)
    assert main(["data", "check", "--recipe", str(saved)]) == 0, capsys.readouterr()


def test_a_recipe_of_one_method_is_refused_by_another(tmp_path):
    with pytest.raises(RecipeError, match="this is a dpo recipe .* not a sft recipe"):
        load_recipe(REPO / "recipes/dpo_mixed.yaml", method="sft")
    raw = yaml.safe_load((REPO / "recipes/dpo_mixed.yaml").read_text()) | {"grpo": {"num_generations": 4}}
    with pytest.raises(RecipeError, match="has both a dpo and a grpo section"):
        load_recipe(raw)
    with pytest.raises(RecipeError, match="unknown training method 'ppo'"):
        load_recipe(REPO / "recipes/demo.yaml", method="ppo")


def test_recipes_load_from_a_dict_or_an_object_with_overrides_as_a_dict():
    raw = yaml.safe_load((REPO / "recipes/demo.yaml").read_text())
    from_dict = load_recipe(raw, {"train.max_steps": 7, "lora.r": 4})
    assert from_dict.train.max_steps == 7 and from_dict.lora.r == 4
    again = load_recipe(from_dict, ["train.max_steps=9"])
    assert again.train.max_steps == 9 and again.lora.r == 4
    with pytest.raises(RecipeError, match="unknown recipe key 'train.max_step'"):
        load_recipe(raw, {"train.max_step": 7})


def test_docs_table_is_current():
    assert (REPO / "docs/recipe_keys.md").read_text() == DOC_HEADER + keys_table(), (
        "regenerate: python -m janus_ft.recipe.methods > docs/recipe_keys.md")


METHOD_RUNS = {
    "sft": ["train.max_steps=1"],
    "dpo": ["train.max_steps=1", "data.val=[]", "train.per_device_train_batch_size=2"],
    "dpo-precomputed": ["train.max_steps=1", "data.val=[]", "train.per_device_train_batch_size=2",
                        "dpo.precompute_ref=true"],
    "grpo": ["train.max_steps=1", "data.val=[]", "grpo.beta=0.1", "grpo.num_generations=2",
             "grpo.max_completion_length=2", "train.per_device_train_batch_size=2"],
}


@pytest.mark.parametrize("run", list(METHOD_RUNS))
def test_every_method_scores_its_targets_model_head_chunk_size_at_a_time(run, tmp_path, tiny_dir, monkeypatch):
    """`model.head_chunk_size` reaches every head call of every method: SFT's loss, DPO's policy and
    reference log-probs (live or precomputed), GRPO's policy and reference (grpo.beta) log-probs."""
    import janus_ft
    from janus_ft.model import loss

    sizes, scored = [], loss.target_nll

    def spy(head, hidden, targets, chunk_size):
        sizes.append(chunk_size)
        return scored(head, hidden, targets, chunk_size)

    monkeypatch.setattr(loss, "target_nll", spy)
    method = run.split("-")[0]
    recipe = load_recipe(REPO / "recipes" / SHIPPED[method], [f"output_dir={tmp_path / 'run'}", "train.disable_tqdm=true",
                                                              "model.head_chunk_size=3", *METHOD_RUNS[run]])
    getattr(janus_ft, method)(recipe)
    # two heads per forward: policy only (SFT), policy + reference (DPO, GRPO with beta)
    assert len(sizes) >= (2 if method == "sft" else 4) and set(sizes) == {3}
