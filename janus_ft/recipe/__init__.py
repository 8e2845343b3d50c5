"""Recipes: YAML sections -> typed dataclasses (`sections`), loading with overrides and TRL
pass-through (`load`), and the checks that need no model (`validate`)."""

from .load import (
    OWNED_TRAIN_FIELDS,
    TRL_SECTIONS,
    load_recipe,
    parse_source,
    recipe_to_dict,
    recipe_trainer,
    save_recipe,
)
from .sections import RECORD_FIELDS, DataArgs, DataSource, LoraArgs, ModelArgs, Recipe, TrainArgs
from .validate import check_source, validate

__all__ = [
    "OWNED_TRAIN_FIELDS", "RECORD_FIELDS", "TRL_SECTIONS", "DataArgs", "DataSource", "LoraArgs", "ModelArgs",
    "Recipe", "TrainArgs", "check_source", "load_recipe", "parse_source", "recipe_to_dict", "recipe_trainer", "save_recipe",
    "validate",
]
