"""`janus-ft eval`: per-task validation loss and task metrics of a base model or adapter
(`--compare-base`: both, with the difference), written as eval.json and eval.md. With `--reward`
(or a recipe whose `grpo.rewards` names some), held-out prompts sampled and scored with reward
functions instead (`eval.reward_report`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..eval.evaluate import EvalSettings, evaluate, markdown, write_report
from ..eval.reward_report import evaluate_with_rewards, reward_markdown, write_reward_report
from ..model.loading import adapter_base
from ..recipe import load_recipe, parse_source


def configure(parser) -> None:
    parser.add_argument("--recipe", required=True, help="the recipe the adapter was trained with")
    parser.add_argument("--adapter", help="LoRA adapter directory (default: evaluate the base model only)")
    parser.add_argument("--data", action="append", metavar="SOURCE",
                        help="validation source(s) to use instead of the recipe's data.val: a JSONL, Parquet, "
                             "Arrow, CSV or JSON file, a dataset directory or a hub id; SOURCE#N samples N")
    parser.add_argument("--compare-base", action="store_true", help="also evaluate the base model, side by side")
    parser.add_argument("--output", metavar="DIR", help="report directory (default: ADAPTER/eval, "
                        "or OUTPUT_DIR/eval-base without an adapter)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest greedy answer in tokens")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance scale of the sample grids")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample grids")
    parser.add_argument("--reward", action="append", metavar="FILE.py:NAME",
                        help="score sampled completions of the held-out prompts with this reward (repeat for several; "
                             "module:NAME, a built-in or a reward model too; default: the recipe's grpo.rewards). "
                             "Sampling follows the recipe's grpo section (num_generations_eval, temperature, "
                             "guidance_scale, seed, ...)")
    parser.add_argument("--samples", type=int, metavar="N", help="with rewards: completions per prompt "
                        "(default: grpo.num_generations_eval, else grpo.num_generations)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="override recipe keys")


def run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    sources = [parse_source(p, "--data") for p in args.data] if args.data else recipe.data.val
    if not sources:
        raise UserError("nothing to evaluate: the recipe's data.val is empty; pass --data FILE.jsonl")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.compare_base and not args.adapter:
        raise UserError("--compare-base needs --adapter (the base alone is what runs without one)")
    if args.adapter:
        adapter_base(args.adapter)  # fail before minutes of base evaluation, not after
    default = Path(args.adapter) / "eval" if args.adapter else Path(recipe.output_dir) / "eval-base"
    out = Path(args.output) if args.output else default
    if args.reward or (recipe.method == "grpo" and recipe.grpo.rewards):
        if args.samples is not None and args.samples < 1:
            raise UserError(f"--samples must be >= 1, got {args.samples}")
        report, outputs = evaluate_with_rewards(recipe, args.reward, args.adapter, args.compare_base, sources,
                                                args.samples)
        write_reward_report(report, outputs, out)
        print(reward_markdown(report))
        print(f"janus-ft eval: eval.json, eval.md and the scored completions in {out}")
        return 0
    settings = EvalSettings(args.max_new_tokens, args.cfg, args.seed)
    report, grids = evaluate(recipe, sources, args.adapter, args.compare_base, settings)
    write_report(report, grids, out)
    print(markdown(report))
    print(f"janus-ft eval: eval.json and eval.md in {out}")
    return 0
