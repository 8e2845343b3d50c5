"""janus_ft from Python: `sft`, `dpo` and `grpo` run the same lifecycle as `janus-ft sft` / `dpo` /
`grpo` (`janus_ft.train.run`), with what TRL's trainers take in Python besides a recipe.

    import janus_ft
    result = janus_ft.sft("recipes/demo.yaml", {"train.max_steps": 20})
    result = janus_ft.grpo(recipe_dict, reward_funcs=[my_reward], callbacks=[MyCallback()])
    result.output_dir, result.model, result.log_history

A recipe is a YAML path, a dict of sections or a recipe object, always validated; overrides are
dotted keys, as a list of `key=value` strings or a dict. `model.path: tiny` builds the embedded tiny
model when it is missing.
"""

from __future__ import annotations

from .recipe import load_recipe


def _run(method_name: str, method, recipe, overrides, **kwargs):
    from .train.run import run

    return run(load_recipe(recipe, overrides, method=method_name), method, **kwargs)


def sft(recipe=None, overrides=None, *, model=None, processor=None, callbacks=()):
    """Supervised fine-tuning as the recipe says; returns a `RunResult` (output_dir, the trained
    model, log_history). `model` / `processor`: already loaded (else `model.path`); `callbacks`:
    transformers `TrainerCallback`s."""
    from .train.sft import SFT

    return _run("sft", SFT(), recipe, overrides, model=model, processor=processor, callbacks=callbacks)


def dpo(recipe=None, overrides=None, *, model=None, processor=None, callbacks=()):
    """Preference tuning (DPO / IPO) as the recipe says; arguments and result as `sft`."""
    from .train.dpo import DPO

    return _run("dpo", DPO(), recipe, overrides, model=model, processor=processor, callbacks=callbacks)


def grpo(recipe=None, overrides=None, *, model=None, processor=None, callbacks=()):
    """GRPO with the recipe's reward functions; arguments and result as `sft`."""
    from .train.grpo import GRPO

    return _run("grpo", GRPO(), recipe, overrides, model=model, processor=processor, callbacks=callbacks)
