"""Recipes: YAML sections -> typed dataclasses (`sections`, one recipe class per training method:
`dpo`, `grpo`), which keys each method reads (`methods`), loading with overrides and TRL
pass-through (`load`), and the checks that need no model (`validate`)."""

from .dpo import DpoRecipe
from .grpo import GrpoRecipe
from .load import (
    OWNED_TRAIN_FIELDS,
    load_recipe,
    parse_source,
    recipe_method,
    recipe_to_dict,
    save_recipe,
)
from .methods import METHODS
from .sections import RECORD_FIELDS, DataArgs, DataSource, LoraArgs, ModelArgs, Recipe, TrainArgs
from .validate import check_source, validate

__all__ = [
    "METHODS", "OWNED_TRAIN_FIELDS", "RECORD_FIELDS", "DataArgs", "DataSource", "DpoRecipe", "GrpoRecipe", "LoraArgs",
    "ModelArgs", "Recipe", "TrainArgs", "check_source", "load_recipe", "parse_source", "recipe_method", "recipe_to_dict",
    "save_recipe", "validate",
]
