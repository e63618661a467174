"""The loop's arguments (how to train, whatever the recipe) and the mixed-precision rule.

Fields whose default depends on the recipe stay None until the recipe's defaults fill them
(`TrainingArguments.with_defaults`); the command line over these and the recipe's own options is
`command_line.parse_train_arguments`.
"""

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..models import resolve_dtype


SCHEDULES = ("cosine", "exponential", "constant")
MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
# Loop fields whose default depends on the recipe (None until the recipe fills them in).
RECIPE_DEFAULT_FIELDS = (
    "num_train_epochs",
    "warmup_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "base_learning_rate",
    "min_learning_rate",
    "lr_schedule",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "max_grad_norm",
)


@dataclass
class TrainingArguments:
    """How to train, whatever the recipe. Fields left at None take the chosen recipe's default."""

    recipe: str = field(
        default="emma", metadata={"help": "What to train: a recipe name (a wrong one is answered with the list)."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Checkpoints, logs and the saved model (default: outputs/<recipe>)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in a used output_dir: its checkpoints, model and history are deleted."},
    )
    num_train_epochs: int | None = None
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimiser steps (-1: epochs)."})
    warmup_epochs: float | None = None
    per_device_train_batch_size: int | None = None
    per_device_eval_batch_size: int = 128
    gradient_accumulation_steps: int | None = None
    base_learning_rate: float | None = field(default=None, metadata={"help": "Scaled by effective batch / 256."})
    learning_rate: float | None = field(default=None, metadata={"help": "Absolute peak rate; overrides the scaling."})
    min_learning_rate: float | None = None
    lr_schedule: str | None = field(
        default=None,
        metadata={
            "help": "cosine: warmup then cosine to min_learning_rate, per step; exponential: lr x gamma per epoch; "
            "constant: after the warmup.",
            "choices": SCHEDULES,
        },
    )
    lr_gamma: float = field(default=0.6, metadata={"help": "Decay per epoch of the exponential schedule."})
    weight_decay: float | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping (0: none)."})
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 where the hardware computes it natively (most GPUs, CPUs with AVX512-BF16/AMX), "
            "fp16 on older GPUs, else no (emulated bf16 is slower than fp32).",
            "choices": MIXED_PRECISION_CHOICES,
        },
    )
    seed: int = 0
    num_workers: int = 4
    save_steps: int = field(default=0, metadata={"help": "Save training state every N steps (0: each epoch)."})
    save_total_limit: int = field(default=2, metadata={"help": "Training states kept (oldest removed first)."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps too (0: at each epoch's end)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A state folder, or 'latest'."})
    logging_steps: int = 10
    eval_on_start: bool = field(default=False, metadata={"help": "Evaluate the untrained model first (epoch -1)."})
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker: tensorboard, all, none."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_bad_images: int | None = field(
        default=None,
        metadata={"help": "Stop when more training images than this fail to decode (default: skip and count all)."},
    )
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None
    hub_private_repo: bool | None = None

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = f"outputs/{self.recipe}"
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        for name in ("per_device_eval_batch_size", "save_total_limit", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        for name in ("learning_rate", "base_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name} must be positive, got {value}: a run at learning rate 0 trains nothing")
        for name in ("save_steps", "eval_steps", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.max_bad_images is not None and self.max_bad_images < 0:
            raise ValueError(f"--max_bad_images must not be negative, got {self.max_bad_images}")
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise ValueError("--resume_from_checkpoint and --overwrite_output_dir contradict each other")

    def with_defaults(self, defaults: dict[str, Any]) -> "TrainingArguments":
        """A copy whose unset (None) fields take `defaults` (a recipe's)."""
        unknown = set(defaults) - set(RECIPE_DEFAULT_FIELDS)
        if unknown:
            raise ValueError(f"recipe defaults name no recipe-dependent loop argument: {sorted(unknown)}")
        return replace(self, **{name: value for name, value in defaults.items() if getattr(self, name) is None})

    @property
    def unset_fields(self) -> list[str]:
        """Recipe-dependent fields still unset."""
        return [name for name in RECIPE_DEFAULT_FIELDS if getattr(self, name) is None]


def resolve_mixed_precision(requested: str) -> str:
    """Turn "auto" into what Accelerate should use on this machine (the device's `models.resolve_dtype`); other
    values pass through."""
    if requested != "auto":
        return requested
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(resolve_dtype("auto", device), "no")
