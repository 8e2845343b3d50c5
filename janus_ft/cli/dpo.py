"""`janus-ft dpo --recipe R.yaml [section.key=value ...]`: preference tuning (`janus_ft.train.dpo`)."""

from __future__ import annotations

from ..recipe import load_recipe
from ..tiny import ensure_tiny
from ..train.dpo import run_dpo


def configure(parser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (see recipes/dpo_*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override recipe keys, e.g. dpo.beta=0.2 train.max_steps=20 output_dir=runs/x")


def run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    ensure_tiny(recipe.model.path)
    result = run_dpo(recipe)
    return 128 + result.interrupted if result.interrupted else 0   # the shell's code for "killed by signal"
