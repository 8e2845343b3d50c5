"""Which recipe each training method takes, and which shared keys it does not read.

Every method reads `model`, `lora`, `train` and `output_dir`, and most of `data`; a key a method
does not read is refused when the recipe loads, with the reason (a recipe must never say one thing
while the run does another). A run saves only the keys its method reads (`recipe.load.save_recipe`),
so its `recipe.yaml` loads back as the same method. `docs/recipe_keys.md` is this table, written by
`python -m janus_ft.recipe.methods` (a test keeps it current).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .dpo import DpoRecipe, validate_dpo
from .grpo import GrpoRecipe, validate_grpo
from .sections import Recipe

_STREAM_ONLY = "read only with data.streaming (bad records skipped while streaming)"


@dataclass(frozen=True)
class Method:
    name: str
    recipe: type                  # the recipe dataclass: the shared sections plus the method's own
    train_config: str             # the TRL / transformers class whose field names `train` takes
    section_config: str | None    # the TRL class whose names the method's own section takes
    unread: dict                  # dotted key -> why this method does not read it
    validate: object = None       # checks of the method's own section

    def unread_keys(self, recipe: Recipe) -> dict[str, str]:
        """The keys this recipe may not set: those the method never reads, and those read only
        when another key is set (`data.max_bad_records` without `data.streaming`)."""
        keys = dict(self.unread)
        if not recipe.data.streaming and "data.streaming" not in keys:
            keys["data.max_bad_records"] = _STREAM_ONLY
        return keys


METHODS = {m.name: m for m in (
    Method("sft", Recipe, "SFTConfig", None, {}),
    Method("dpo", DpoRecipe, "TrainingArguments", "DPOConfig", {
        "data.streaming": "pairs are read and checked in full before training (streaming reads janus-ft sft records)",
        "data.max_bad_records": _STREAM_ONLY,
        "data.packing": "pairs are padded: each row is one side of one pair, scored as a whole",
        "data.packed_attention": "pairs are padded, never packed (data.packing)",
        "data.num_proc": "pairs are validated in this process (the parallel prepared-rows cache holds janus-ft sft "
                         "records)",
    }, validate_dpo),
    Method("grpo", GrpoRecipe, "TrainingArguments", "GRPOConfig", {
        "data.mix": "GRPO samples one group per prompt, the prompts shuffled: task ratios are not applied (give the "
                    "prompts in the proportions to train on)",
        "data.max_length": "answers are bounded by grpo.max_completion_length and prompts are never cut",
        "data.cfg_dropout": "images are sampled with guidance (grpo.guidance_scale) and scored on the caption: no "
                            "caption is blanked",
        "data.streaming": "prompts are read and checked in full before training",
        "data.max_bad_records": _STREAM_ONLY,
        "data.packing": "sampled groups are padded rows, scored once",
        "data.packed_attention": "sampled groups are padded, never packed (data.packing)",
        "data.group_by_length": "a step's rows are the groups sampled for its prompts",
        "data.pad_to_multiple_of": "sampled groups are padded to their longest completion",
        "data.num_proc": "prompts are read in this process",
        "data.last_turn_only": "nothing in a prompt is supervised: the sampled answer is what trains",
        "data.code_cache": "GRPO encodes no image: it samples codes and decodes them for the rewards",
        "train.eval_answers": "held-out prompts are scored by the rewards (eval_reward), not against a reference answer",
        "train.sample_prompts": "the evaluation grid draws the held-out generation prompts",
    }, validate_grpo),
)}


def recipe_sections(method: Method) -> list[tuple[str, type]]:
    """(section name, dataclass) of the method's recipe, the top-level keys as section ''."""
    fields = [f for f in dataclasses.fields(method.recipe) if not f.metadata.get("internal")]
    return [("", method.recipe)] + [(f.name, f.default_factory) for f in fields if dataclasses.is_dataclass(f.default_factory)]


def keys_table() -> str:
    """The markdown table of docs/recipe_keys.md: every recipe key, and what each method does with it."""
    names = list(METHODS)
    rows = {}
    for name in names:
        for section, cls in recipe_sections(METHODS[name]):
            for f in dataclasses.fields(cls):
                if f.metadata.get("internal") or (section == "" and dataclasses.is_dataclass(f.default_factory)):
                    continue
                key = f"{section}.{f.name}" if section else f.name
                rows.setdefault(key, {"help": f.metadata.get("help", "")})[name] = True
    lines = ["| key | " + " | ".join(names) + " | what it sets |", "|---|" + "---|" * len(names) + "---|"]
    for key, row in rows.items():
        cells = []
        for name in names:
            why = METHODS[name].unread.get(key)
            cells.append("-" if name not in row or why else "reads")
        help_text = row["help"].replace("|", "\\|")
        lines.append(f"| `{key}` | " + " | ".join(cells) + f" | {help_text} |")
    notes = ["", "Why a method does not read a key (setting it is an error that says this):", ""]
    for name in names:
        for key, why in METHODS[name].unread.items():
            notes.append(f"- `{name}` / `{key}`: {why}")
    return "\n".join(lines + notes) + "\n"


DOC_HEADER = """# Recipe keys by method

Written by `python -m janus_ft.recipe.methods > docs/recipe_keys.md`; `tests/test_recipe.py` checks it
is current. "reads": the method uses the key; "-": the key is not part of that method's recipe, and
setting it is an error naming the reason. `train` also takes every transformers `TrainingArguments`
field by its own name (and `janus-ft sft` the `SFTConfig` names janus_ft honours); `dpo` and `grpo`
take TRL's `DPOConfig` / `GRPOConfig` names for what they implement.

"""


if __name__ == "__main__":
    print(DOC_HEADER + keys_table(), end="")
