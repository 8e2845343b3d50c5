"""What the three training commands share: `--recipe R.yaml [section.key=value ...]`, then the
method's run from `janus_ft.api` (the same call Python code makes). Not a command itself."""

from __future__ import annotations


def configure_training(parser, recipes: str, example: str) -> None:
    parser.add_argument("--recipe", required=True, help=f"recipe YAML (see {recipes})")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help=f"override recipe keys, e.g. {example}")


def run_training(method: str, args) -> int:
    from .. import api

    result = getattr(api, method)(args.recipe, args.overrides)
    return 128 + result.interrupted if result.interrupted else 0   # the shell's code for "killed by signal"
