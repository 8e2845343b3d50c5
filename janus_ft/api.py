"""janus_ft from Python: `sft`, `dpo` and `grpo` run the same lifecycle as `janus-ft sft` / `dpo` /
`grpo` (`janus_ft.train.run`), taking what TRL's trainers take in Python besides the recipe:

    import janus_ft
    result = janus_ft.sft("recipes/demo.yaml", {"train.max_steps": 20})
    result = janus_ft.sft(recipe_dict, train_dataset=my_dataset, callbacks=[MyCallback()])
    result = janus_ft.grpo("recipes/grpo_format.yaml", reward_funcs=[my_reward])
    result.output_dir, result.model, result.log_history

A recipe is a YAML path, a dict of sections or a recipe object, always validated; overrides are
dotted keys, as a list of `key=value` strings, a dict, or keywords (`**{"train.max_steps": 20}`).
`train_dataset` / `eval_dataset` (a `datasets.Dataset` or a list of records, in any shape the data
docs list) take the place of `data.train` / `data.val`; they are checked and cached like files
(`janus_ft.data.inline`).
`model.path: tiny` builds the embedded tiny model when it is missing.
"""

from __future__ import annotations

from .recipe import load_recipe


def _run(method_name: str, method, recipe, overrides, dotted: dict, train_dataset, eval_dataset, **kwargs):
    from .data.inline import materialise
    from .recipe.load import override_items
    from .train.run import run

    changes = dict(override_items(overrides)) | dotted
    if train_dataset is not None:
        changes["data.train"] = [{"path": materialise(train_dataset, "train_dataset")}]
    if eval_dataset is not None:
        changes["data.val"] = [{"path": materialise(eval_dataset, "eval_dataset")}]
    return run(load_recipe(recipe, changes, method=method_name), method, **kwargs)


def sft(recipe=None, overrides=None, *, train_dataset=None, eval_dataset=None, model=None, processor=None,
        callbacks=(), **dotted):
    """Supervised fine-tuning as the recipe says; returns a `RunResult` (output_dir, the trained
    model, log_history, interrupted). `model` / `processor`: already loaded (else `model.path`);
    `callbacks`: transformers `TrainerCallback`s."""
    from .train.sft import SFT

    return _run("sft", SFT(), recipe, overrides, dotted, train_dataset, eval_dataset, model=model, processor=processor,
                callbacks=callbacks)


def dpo(recipe=None, overrides=None, *, train_dataset=None, eval_dataset=None, model=None, processor=None,
        callbacks=(), **dotted):
    """Preference tuning (DPO / IPO) as the recipe says, on preference pairs; as `sft` otherwise."""
    from .train.dpo import DPO

    return _run("dpo", DPO(), recipe, overrides, dotted, train_dataset, eval_dataset, model=model, processor=processor,
                callbacks=callbacks)


def grpo(recipe=None, overrides=None, *, reward_funcs=(), train_dataset=None, eval_dataset=None, model=None,
         processor=None, callbacks=(), **dotted):
    """GRPO with the recipe's rewards and `reward_funcs` (callables on TRL's reward convention, or
    reward-model paths, weight 1), on prompts; as `sft` otherwise."""
    from .train.grpo import GRPO

    return _run("grpo", GRPO(), recipe, overrides, dotted, train_dataset, eval_dataset, model=model, processor=processor,
                callbacks=callbacks, reward_funcs=list(reward_funcs))
