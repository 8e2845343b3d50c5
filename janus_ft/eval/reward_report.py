"""`janus-ft eval --reward FILE.py:NAME`: held-out prompts sampled and scored with reward functions,
the base model and an adapter side by side.

The prompts are read as GRPO reads them (`data.prompts`: janus_ft's record shapes or TRL's, text,
understanding and generation), sampled with the recipe's `grpo` settings and scored with the same
functions, the same call convention and the same seeds as the held-out evaluation during GRPO
training (`eval.sampler`): for an adapter trained with those rewards, `reward` here is the last
`eval_reward` its run logged. Rewards get the adapter's `trainer_state.json` as `trainer_state`
(a fresh state for the base). Writes eval.json, eval.md, every completion with its scores
(`rewards_<model>.jsonl`) and a grid of the images drawn for the first generation prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.images import bad_images_error, check_images
from ..data.prompts import Prompt, load_prompts
from ..errors import UserError
from ..infer.engine import BASE, Janus
from ..infer.generate import contact_sheet
from ..recipe import DataSource
from .rewards import load_rewards
from .sampler import Sampler, Scored, reward_means, sample_prompts

MAX_GRID_PROMPTS, MAX_GRID_COLUMNS = 4, 8


def evaluate_with_rewards(recipe, rewards: list | None = None, adapter: str | Path | None = None,
                          compare_base: bool = False, sources: list[DataSource] | None = None,
                          n: int | None = None) -> tuple[dict, dict]:
    """(report, per model: its scored completions and image grid). `rewards`: recipe-style specs or
    callables (default: the recipe's `grpo.rewards`); `sources`: default `data.val`; `n`:
    completions per prompt (default: `grpo.num_generations_eval`, else `num_generations`)."""
    from ..recipe.grpo import GrpoArgs

    # A GRPO recipe's sampling settings; another method's recipe samples with GRPO's defaults.
    g = recipe.grpo if recipe.method == "grpo" else GrpoArgs()
    loaded = load_rewards(rewards or g.rewards, Path(recipe.source).parent if recipe.source else None, "rewards")
    sources = sources if sources is not None else recipe.data.val
    prompts = load_prompts(sources, recipe.train.seed)
    if not prompts:
        raise UserError("nothing to evaluate: no prompts (data.val is empty)")
    bad = check_images([p.record for p in prompts])
    if bad:
        raise bad_images_error(bad)
    n = n or g.num_generations_eval or g.num_generations
    seed = g.seed if g.seed is not None else recipe.train.seed
    janus = Janus.load(recipe.model.path, dtype=recipe.model.dtype, format=recipe.model.format)
    labels = ([BASE] if compare_base or not adapter else []) + (["adapter"] if adapter else [])
    if adapter:
        janus.load_adapter(adapter, name="adapter")
    results, outputs = {}, {}
    for label in labels:
        sampler = Sampler(janus.processor(label), janus.fmt(label), g, loaded, recipe.data.system_prompt)
        with janus.using(label) as model:
            scored = sample_prompts(sampler, model, prompts, n, seed, trainer_state=trainer_state(adapter, label))
        results[label] = {**reward_means(sampler, scored, prefix=""), "completions": sum(len(s.total) for s in scored)}
        outputs[label] = {"rows": sample_rows(loaded, prompts, n, scored), "grid": image_grid(prompts, n, scored)}
    report = {"model": recipe.model.path, "adapter": str(adapter) if adapter else None,
              "data": [str(s.path) for s in sources], "prompts": len(prompts), "completions_per_prompt": n,
              "rewards": [{"fn": r.name, "label": r.label, "weight": r.weight} for r in loaded], "results": results}
    if len(results) == 2:
        report["delta"] = {k: results["adapter"][k] - results[BASE][k]
                           for k in results[BASE] if k in results["adapter"] and k != "completions"}
    return report, outputs


def trainer_state(adapter, label: str):
    """What rewards get as `trainer_state`: the adapter's run's final state when it saved one."""
    from transformers import TrainerState

    path = Path(adapter) / "trainer_state.json" if adapter and label != BASE else None
    return TrainerState.load_from_json(str(path)) if path is not None and path.is_file() else TrainerState()


def sample_rows(rewards, prompts: list[Prompt], n: int, scored: list[Scored]) -> list[dict]:
    """One row per completion: its prompt record, the completion (text; `<image>` for an image),
    each reward's value (None where it did not apply), the weighted sum, and logged extra columns."""
    table, total = torch.cat([s.rewards for s in scored]), torch.cat([s.total for s in scored])
    completions = [c for s in scored for c in s.completions]
    extra: dict[str, list] = {}   # log_extra columns, aligned with every completion
    offset = 0
    for s in scored:
        for key, values in s.extra.items():
            column = extra.setdefault(key, [None] * len(completions))
            for k, value in enumerate(values[:len(s.total)]):
                column[offset + k] = value
        offset += len(s.total)
    rows = []
    for i, completion in enumerate(completions):
        prompt = prompts[i // n]
        text = completion if isinstance(completion, str) else \
            completion[0]["content"] if isinstance(completion, list) else "<image>"
        values = {r.label: _number(table[i, j]) for j, r in enumerate(rewards)}
        rows.append({"prompt_record": prompt.where, "prompt": prompt.prompt, "completion": text, "rewards": values,
                     "reward": _number(total[i])} | {k: v[i] for k, v in extra.items()})
    return rows


def _number(value: torch.Tensor) -> float | None:
    return None if torch.isnan(value) else value.item()


def image_grid(prompts: list[Prompt], n: int, scored: list[Scored]) -> dict | None:
    """The images drawn for the first generation prompts, one row per prompt."""
    images = iter(im for s in scored for im in s.images)
    rows = []
    for prompt in prompts:
        if prompt.task != "generation":
            continue
        drawn = [next(images) for _ in range(n)]
        if len(rows) < MAX_GRID_PROMPTS:
            rows.append((prompt.record.caption, drawn[:MAX_GRID_COLUMNS]))
    if not rows:
        return None
    columns = len(rows[0][1])
    return {"captions": [c for c, _ in rows], "image": contact_sheet([im for _, ims in rows for im in ims], columns)}


def write_reward_report(report: dict, outputs: dict, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output {out}: cannot create it ({err.strerror or err})") from None
    for label, output in outputs.items():
        with open(out / f"rewards_{label}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in output["rows"])
        files = {"completions": f"rewards_{label}.jsonl"}
        if output["grid"] is not None:
            output["grid"]["image"].save(out / f"rewards_{label}.png")
            files |= {"grid": f"rewards_{label}.png", "captions": output["grid"]["captions"]}
        report.setdefault("samples", {})[label] = files
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "eval.md").write_text(reward_markdown(report), encoding="utf-8")


def reward_markdown(report: dict) -> str:
    """One row per reward and one for the weighted sum, a column per model, then the delta."""
    results, labels = report["results"], list(report["results"])
    delta = report.get("delta")
    head = ["reward", "weight", *labels] + (["delta"] if delta is not None else [])
    lines = ["# janus-ft eval: rewards\n", f"model: `{report['model']}`  ", f"adapter: `{report['adapter']}`  ",
             f"data: {', '.join(f'`{d}`' for d in report['data'])} ({report['prompts']} prompts x "
             f"{report['completions_per_prompt']} completions)\n",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    rows = [(f"`{r['label']}`", f"{r['weight']:g}", f"rewards/{r['label']}") for r in report["rewards"]]
    for name, weight, key in [*rows, ("**weighted sum**", "", "reward")]:
        cells = [_cell(results[lab].get(key)) for lab in labels]
        if delta is not None:
            cells.append(_cell(delta.get(key), signed=True))
        lines.append("| " + " | ".join([name, weight, *cells]) + " |")
    lines.append("\nA reward that returned None for a completion (does not apply) is left out of its mean; "
                 "an empty cell: it applied to none.")
    for label, files in report.get("samples", {}).items():
        if "grid" in files:
            lines.append(f"\n{label}: ![{label}]({files['grid']})  \none row per caption: " + "; ".join(files["captions"]))
    return "\n".join(lines) + "\n"


def _cell(value, signed: bool = False) -> str:
    return "" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"
