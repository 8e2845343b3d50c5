"""`janus-ft sft --recipe R.yaml [section.key=value ...]`: the main job (`janus_ft.train.sft`)."""

from __future__ import annotations

from ..recipe import load_recipe
from ..tiny import ensure_tiny
from ..train.sft import run_sft


def configure(parser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override recipe keys, e.g. train.max_steps=20 output_dir=runs/x")


def run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    ensure_tiny(recipe.model.path)
    result = run_sft(recipe)
    return 128 + result.interrupted if result.interrupted else 0   # the shell's code for "killed by signal"
