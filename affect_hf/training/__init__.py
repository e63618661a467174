"""Training with Accelerate: `accelerate launch scripts/train.py --recipe {emma,mae,cotex,dan} ...`."""

from .arguments import RECIPE_NAMES, TrainingArguments, parse_train_arguments
from .loop import NoModelSavedError, NonFiniteLossError, main, train
from .optimization import layer_decay_parameter_groups, weight_decay_parameter_groups
from .presets import EMMA_PRESETS, emma_config_from_preset
from .recipes import get_recipe


__all__ = [
    "EMMA_PRESETS",
    "RECIPE_NAMES",
    "NoModelSavedError",
    "NonFiniteLossError",
    "TrainingArguments",
    "emma_config_from_preset",
    "get_recipe",
    "layer_decay_parameter_groups",
    "main",
    "parse_train_arguments",
    "train",
    "weight_decay_parameter_groups",
]
