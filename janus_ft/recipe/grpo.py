"""The recipe's `grpo` section (`janus-ft grpo`): TRL `GRPOConfig` names for what janus_ft's GRPO
trainer implements, plus `rewards`. A `GRPOConfig` field it does not implement is refused by name
with the reason, never silently ignored; training arguments (learning rate, steps, checkpoints) stay
in `train`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

from ..errors import RecipeError
from ..janus import CFG_SCALE
from .sections import Recipe

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")   # TRL's names (GRPOConfig.loss_type) for the ones implemented
SCALE_REWARDS = ("group", "batch", "none")


def _opt(default, help_text: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class GrpoArgs:
    rewards: list = _opt([], "reward functions: [{fn: FILE.py:NAME | module:NAME | built-in, weight: 1.0, args: {}}]; "
                             "built-ins: exact_match, accuracy, format, colour")
    num_generations: int = _opt(8, "completions sampled per prompt (the group its advantages are normalised in)")
    num_generations_eval: int | None = _opt(None, "completions per held-out prompt at evaluation (default: num_generations)")
    max_completion_length: int = _opt(256, "longest text answer sampled, in tokens (images are always N codes)")
    temperature: float = _opt(1.0, "sampling temperature, text and images")
    top_p: float = _opt(1.0, "nucleus sampling for text answers")
    top_k: int = _opt(0, "top-k sampling for text answers (0: off, the whole distribution)")
    guidance_scale: float = _opt(CFG_SCALE, "classifier-free guidance when sampling images (as janus-ft generate --cfg)")
    beta: float = _opt(0.0, "weight of the KL to the reference (the base model: adapter disabled); 0 skips it")
    epsilon: float = _opt(0.2, "ratio clip: [1 - epsilon, 1 + epsilon_high]")
    epsilon_high: float | None = _opt(None, "upper clip (default: epsilon)")
    loss_type: str = _opt("grpo", "token normalisation: grpo (per completion) | bnpo (per batch token) | dr_grpo "
                                  "(constant length) | dapo (per token of the optimizer step)")
    scale_rewards: str = _opt("group", "advantage scaling: group (std of the group) | batch | none")
    mask_truncated_completions: bool = _opt(False, "leave text answers cut at max_completion_length out of the "
                                                  "loss (images are never truncated)")
    num_iterations: int = _opt(1, "updates per sampled batch (janus_ft samples on policy: 1)")
    seed: int | None = _opt(None, "seed of the sampling (default: train.seed)")


@dataclass
class GrpoRecipe(Recipe):
    """`janus-ft grpo`'s recipe: the shared sections and `grpo`."""

    grpo: GrpoArgs = field(default_factory=GrpoArgs, metadata={"help": "GRPO options, by TRL GRPOConfig names, and rewards"})

    method: ClassVar[str] = "grpo"


class UnsupportedGrpoFields(Mapping):
    """`GRPOConfig` fields a recipe may not set under `grpo` (see `recipe.load.lift_trl_fields`):
    training arguments belong to `train`; the rest janus_ft's trainer does not implement."""

    def _names(self) -> set:
        import transformers
        import trl

        return {f.name for f in fields(trl.GRPOConfig) if f.init} - {f.name for f in fields(transformers.TrainingArguments)}

    def __contains__(self, key) -> bool:
        import trl

        return key in {f.name for f in fields(trl.GRPOConfig) if f.init}

    def __getitem__(self, key) -> str:
        if key not in self._names():
            return f"a training argument: set train.{key}"
        return ("a GRPOConfig option janus_ft's GRPO trainer does not implement (it samples on policy with "
                "transformers' generate, one update per sample; see docs/grpo.md)")

    def __iter__(self):
        return iter(sorted(self._names()))

    def __len__(self) -> int:
        return len(self._names())


def validate_grpo(recipe: GrpoRecipe) -> None:
    """The `grpo` section's checks that need no process group (`check_grpo` adds the one that does)."""
    t = recipe.train
    check_grpo(recipe.grpo, t.per_device_train_batch_size, t.gradient_accumulation_steps, processes=1)


def check_grpo(g: GrpoArgs, batch: int, accumulation: int, processes: int) -> None:
    """Checks of the `grpo` section for a run of `processes` processes."""
    if g.loss_type not in LOSS_TYPES:
        raise RecipeError(f"grpo.loss_type: unknown value {g.loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if g.scale_rewards not in SCALE_REWARDS:
        raise RecipeError(f"grpo.scale_rewards: unknown value {g.scale_rewards!r}; expected one of {', '.join(SCALE_REWARDS)}")
    if g.num_generations < 2:
        raise RecipeError(f"grpo.num_generations must be at least 2 (advantages compare completions), got {g.num_generations}")
    if g.num_iterations != 1:
        raise RecipeError("grpo.num_iterations: janus_ft samples on policy, one update per sampled batch: 1")
    if batch % g.num_generations:
        raise RecipeError(f"train.per_device_train_batch_size ({batch}) counts completions and must be a "
                          f"multiple of grpo.num_generations ({g.num_generations})")
    if g.loss_type == "dapo" and (accumulation > 1 or processes > 1):
        raise RecipeError("grpo.loss_type=dapo normalises by the tokens of the whole step, which janus_ft knows only "
                          "with one micro-batch on one process: use grpo, bnpo or dr_grpo")
    if g.guidance_scale < 0:
        raise RecipeError(f"grpo.guidance_scale must be >= 0 (1: the caption's distribution alone, no guidance), "
                          f"got {g.guidance_scale}")
    if g.max_completion_length < 1 or g.temperature <= 0 or not 0 < g.top_p <= 1 or g.epsilon <= 0 or g.beta < 0:
        raise RecipeError("grpo: max_completion_length >= 1, temperature > 0, 0 < top_p <= 1, epsilon > 0 and beta >= 0")
