"""`janus-ft grpo --recipe R.yaml [section.key=value ...]`: GRPO with LoRA and Python reward
functions (`janus_ft.train.grpo`)."""

from __future__ import annotations

from ..recipe import load_recipe
from ..tiny import ensure_tiny
from ..train.grpo import run_grpo


def configure(parser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML with a grpo section (see recipes/grpo_*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override recipe keys, e.g. grpo.num_generations=4 train.max_steps=20")


def run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    ensure_tiny(recipe.model.path)
    result = run_grpo(recipe)
    return 128 + result.interrupted if result.interrupted else 0
