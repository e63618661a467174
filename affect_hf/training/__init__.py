"""Training with Accelerate: `accelerate launch scripts/train.py --recipe emma ...`."""

from .arguments import TrainArguments, parse_train_arguments
from .loop import evaluate_model, predict, train
from .optimization import layer_decay_parameter_groups
from .presets import EMMA_PRESETS, emma_config_from_preset


def main(argv: list[str] | None = None) -> dict:
    return train(parse_train_arguments(argv))


__all__ = [
    "EMMA_PRESETS",
    "TrainArguments",
    "emma_config_from_preset",
    "evaluate_model",
    "layer_decay_parameter_groups",
    "main",
    "parse_train_arguments",
    "predict",
    "train",
]
