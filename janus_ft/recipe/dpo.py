"""The `dpo` recipe section (`janus-ft dpo`): TRL's `DPOConfig` names for what janus_ft implements.

`beta`, `loss_type` and `label_smoothing` are `DPOConfig` fields of the same name and meaning;
`rpo_alpha` is the name older TRL releases gave the SFT term on chosen (TRL 1.x spells it
`loss_type: [sigmoid, sft]` with `loss_weights`); `precompute_ref` is ours (`DPOConfig`'s
`precompute_ref_log_probs`). Other `DPOConfig` fields are refused by name: janus_ft does not
implement them, and accepting them silently would train something other than the recipe says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import RecipeError
from .sections import Recipe

LOSS_TYPES = ("sigmoid", "ipo")


def _opt(default, help_text: str):
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class DpoArgs:
    beta: float = _opt(0.1, "strength of the pull towards the reference (DPO's beta; IPO's tau)")
    loss_type: str = _opt("sigmoid", "sigmoid (DPO) | ipo (on per-token mean log-ratios, as TRL)")
    label_smoothing: float = _opt(0.0, "sigmoid only: probability that a pair's labels are flipped "
                                       "(conservative DPO), in [0, 0.5)")
    rpo_alpha: float | None = _opt(None, "weight of an SFT term on chosen: mean NLL of the chosen targets")
    precompute_ref: bool = _opt(False, "score every pair once under the reference before training, instead "
                                       "of a reference forward (adapter disabled) in every step")
    precompute_ref_batch_size: int = _opt(8, "pairs per forward when precomputing reference log-probs")
    extra: dict = _opt({}, "not used: DPOConfig fields janus-ft dpo does not implement land here and are refused")


@dataclass
class DpoRecipe(Recipe):
    """`janus-ft dpo`'s recipe: the shared sections and `dpo`."""

    dpo: DpoArgs = field(default_factory=DpoArgs, metadata={"help": "DPO / IPO options, by TRL DPOConfig names"})

    method: ClassVar[str] = "dpo"


# DPOConfig fields with a janus_ft spelling, or that janus_ft sets itself.
OWNED_DPO_FIELDS = {
    "precompute_ref_log_probs": "use dpo.precompute_ref",
    "max_length": "use data.max_length (longer pairs are dropped and counted, never truncated)",
    "max_prompt_length": "use data.max_length (janus_ft never truncates a prompt: it would cut image tokens)",
    "max_completion_length": "use data.max_length (janus_ft never truncates a response)",
    "padding_free": "pairs are padded; data.packing is not supported by janus-ft dpo",
    "loss_weights": "use dpo.rpo_alpha for the SFT term on chosen",
}


def validate_dpo(recipe) -> None:
    d = recipe.dpo
    if d.extra:
        raise RecipeError(f"dpo.{sorted(d.extra)[0]}: a TRL DPOConfig field janus-ft dpo does not implement "
                          "(dpo takes beta, loss_type, label_smoothing, rpo_alpha, precompute_ref, "
                          "precompute_ref_batch_size)")
    if d.loss_type not in LOSS_TYPES:
        raise RecipeError(f"dpo.loss_type: unknown {d.loss_type!r} (expected one of {', '.join(LOSS_TYPES)})")
    if d.beta <= 0:
        raise RecipeError(f"dpo.beta must be > 0, got {d.beta}")
    if not 0 <= d.label_smoothing < 0.5:
        raise RecipeError(f"dpo.label_smoothing must be in [0, 0.5), got {d.label_smoothing}")
    if d.label_smoothing and d.loss_type != "sigmoid":
        raise RecipeError("dpo.label_smoothing applies to loss_type=sigmoid only")
    if d.rpo_alpha is not None and d.rpo_alpha < 0:
        raise RecipeError(f"dpo.rpo_alpha must be >= 0, got {d.rpo_alpha}")
    if d.precompute_ref_batch_size < 1:
        raise RecipeError(f"dpo.precompute_ref_batch_size must be >= 1, got {d.precompute_ref_batch_size}")
