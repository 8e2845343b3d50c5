"""janus_ft.train.arguments: the one `TrainingArguments` builder of every method. transformers 5's
names behave as transformers documents them (`warmup_steps: 0.1` is a ratio), the names it removed
say what replaced them, and the data loader's workers default by where the run trains."""

from __future__ import annotations

from pathlib import Path

import pytest

import janus_ft
from janus_ft.errors import RecipeError
from janus_ft.recipe import load_recipe
from janus_ft.train import arguments
from janus_ft.train.arguments import training_arguments

REPO = Path(__file__).resolve().parent.parent


def test_a_fractional_warmup_gives_the_schedule_transformers_gives(tmp_path, tiny_dir):
    """`train.warmup_steps: 0.1` over 10 steps: the learning rates a run logs are those of
    transformers' own scheduler for `TrainingArguments(warmup_steps=0.1)` (1 warm-up step), not a
    0-step warm-up (an int cast) or a refusal."""
    import torch
    from transformers import TrainingArguments, get_scheduler

    result = janus_ft.sft(REPO / "recipes/demo.yaml", [
        "train.warmup_steps=0.1", "train.max_steps=10", "train.lr_scheduler_type=linear", "train.logging_steps=1",
        "train.per_device_train_batch_size=1", "train.gradient_accumulation_steps=1", "data.val=[]",
        "train.save_steps=1000", "train.disable_tqdm=true", f"output_dir={tmp_path / 'run'}"])
    logged = [e["learning_rate"] for e in result.log_history if "learning_rate" in e]
    lr = load_recipe(REPO / "recipes/demo.yaml").train.learning_rate
    reference = TrainingArguments(output_dir=str(tmp_path / "ref"), warmup_steps=0.1)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = get_scheduler("linear", optimizer, reference.get_warmup_steps(10), 10)
    want = []
    for _ in range(10):
        want.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert reference.get_warmup_steps(10) == 1 and want[0] == 0.0 and want[1] == lr
    assert logged == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("key, replacement", [
    ("warmup_ratio", "train.warmup_steps, which takes the ratio as a float below 1"),
    ("evaluation_strategy", "train.eval_strategy"),
    ("no_cuda", "train.use_cpu"),
    ("per_gpu_train_batch_size", "train.per_device_train_batch_size"),
])
def test_a_key_transformers_5_removed_names_its_replacement(key, replacement):
    with pytest.raises(RecipeError, match=f"recipe key 'train.{key}' was removed in transformers 5: use {replacement}"):
        load_recipe(REPO / "recipes/demo.yaml", [f"train.{key}=1"])


def test_pass_through_values_are_checked_against_the_installed_types():
    assert load_recipe(REPO / "recipes/demo.yaml", ["train.adam_beta2=0.95"]).train.extra == {"adam_beta2": 0.95}
    with pytest.raises(RecipeError, match="recipe key 'train.adam_beta2' expects float, got 'high'"):
        load_recipe(REPO / "recipes/demo.yaml", ["train.adam_beta2=high"])
    with pytest.raises(RecipeError, match="'train.torch_compile' is set by janus_ft: use model.compile"):
        load_recipe(REPO / "recipes/demo.yaml", ["train.torch_compile=true"])


@pytest.mark.parametrize("accelerator, recipe, workers", [
    (True, "demo.yaml", 4), (False, "demo.yaml", 0), (True, "grpo_format.yaml", 0)])
def test_loader_workers_default_by_where_the_run_trains(monkeypatch, tmp_path, accelerator, recipe, workers):
    """With a GPU, 4 persistent, prefetching workers per process prepare samples off the step;
    on CPU none (they would take the step's cores); GRPO's loader hands out indices: none either."""
    monkeypatch.setattr(arguments, "has_accelerator", lambda: accelerator)
    loaded = load_recipe(REPO / "recipes" / recipe, [f"output_dir={tmp_path}"])
    fields = arguments.loader_fields(loaded.train.dataloader_num_workers, loader_work=recipe != "grpo_format.yaml")
    assert fields["dataloader_num_workers"] == workers
    assert fields.get("dataloader_persistent_workers", False) == bool(workers)
    assert arguments.loader_fields(2)["dataloader_num_workers"] == 2   # as the recipe says, anywhere
    if not accelerator:
        assert training_arguments(loaded, 5, False).dataloader_num_workers == 0
