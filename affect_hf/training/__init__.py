"""Training with Accelerate: `accelerate launch scripts/train.py --recipe {emma,mae,cotex,dan} ...`.

One loop (`loop`: how) for every recipe (`recipes`: what). From outside this package a recipe is reached through
`get_recipe(name)` only.
"""

from .arguments import TrainingArguments, resolve_mixed_precision
from .command_line import parse_train_arguments
from .loop import NoModelSavedError, NonFiniteLossError, main, train
from .optimization import build_schedule, layer_decay_parameter_groups, weight_decay_parameter_groups
from .presets import EMMA_PRESETS, emma_config_from_preset
from .recipes import RECIPE_NAMES, get_recipe
from .state import TrainerState
from .step import TrainingStep


__all__ = [
    "EMMA_PRESETS",
    "RECIPE_NAMES",
    "NoModelSavedError",
    "NonFiniteLossError",
    "TrainerState",
    "TrainingArguments",
    "TrainingStep",
    "build_schedule",
    "emma_config_from_preset",
    "get_recipe",
    "layer_decay_parameter_groups",
    "main",
    "parse_train_arguments",
    "resolve_mixed_precision",
    "train",
    "weight_decay_parameter_groups",
]
