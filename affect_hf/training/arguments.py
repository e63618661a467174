"""The loop's arguments and the command line: `HfArgumentParser` over the loop's dataclass and the recipe's.

`--recipe` picks the recipe first; its own argument dataclass is then parsed beside `TrainingArguments`, and the
recipe's defaults (learning rate, epochs, batch, optimiser betas ...) fill every loop field left unset, so
`python scripts/train.py --recipe mae --help` shows MAE's options and MAE's defaults. A single `.yaml`, `.yml`
or `.json` file may hold the same options. An option that belongs to no part of the chosen recipe is refused by
name.
"""

import json
import sys
from dataclasses import dataclass, field, fields, replace
from types import SimpleNamespace
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser


RECIPE_NAMES = ("emma", "mae", "cotex", "dan")
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

    recipe: str = field(default="emma", metadata={"help": "What to train.", "choices": RECIPE_NAMES})
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
        if self.recipe not in RECIPE_NAMES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPE_NAMES)}, got {self.recipe!r}")
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


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them bf16 matmuls are emulated, about 3x slower than fp32 (measured)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_mixed_precision(requested: str) -> str:
    """Turn "auto" into what Accelerate should use on this machine; other values pass through."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def _recipe_name(argv: list[str], file_options: dict | None) -> str:
    if file_options is not None:
        return file_options.get("recipe", TrainingArguments.recipe)
    for index, token in enumerate(argv):
        if token == "--recipe" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith("--recipe="):
            return token.split("=", 1)[1]
    return TrainingArguments.recipe


def _read_options_file(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        options = yaml.safe_load(handle) if path.endswith((".yaml", ".yml")) else json.load(handle)
    if not isinstance(options, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, found {type(options).__name__}")
    return options


def parse_train_arguments(argv: list[str] | None = None) -> tuple[TrainingArguments, Any]:
    """(loop arguments, recipe arguments) from flags, or from a single `.yaml` / `.yml` / `.json` file."""
    from .recipes import get_recipe

    argv = sys.argv[1:] if argv is None else argv
    file_options = None
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        file_options = _read_options_file(argv[0])
    name = _recipe_name(argv, file_options)
    if name not in RECIPE_NAMES:
        raise SystemExit(f"--recipe must be one of {', '.join(RECIPE_NAMES)}, got {name!r}")
    recipe_class = get_recipe(name)
    parser = HfArgumentParser((TrainingArguments, recipe_class.arguments_class))
    parser.description = f"Train with the {name} recipe: {recipe_class.description}"
    if file_options is not None:
        known = {f.name for dataclass_type in parser.dataclass_types for f in fields(dataclass_type)}
        unknown = sorted(set(file_options) - known)
        if unknown:
            parser.error(f"{argv[0]}: {_unknown_options_message(unknown, name)}")
        return tuple(parser.parse_dict(file_options))
    if "-h" in argv or "--help" in argv:
        # Show the recipe's defaults; when training they are filled in by `TrainingArguments.with_defaults`, after
        # the recipe's own options are known (CoTEX's batch grows with its mask ratio).
        defaults = {f.name: f.default for f in fields(recipe_class.arguments_class)}
        parser.set_defaults(**recipe_class.loop_defaults(SimpleNamespace(**defaults)))
    *arguments, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        options = [token.split("=", 1)[0].lstrip("-") for token in remaining if token.startswith("-")]
        parser.error(_unknown_options_message(options or remaining, name))
    return tuple(arguments)


def _unknown_options_message(options: list[str], recipe: str) -> str:
    """Name the options the recipe does not take, and the recipes that do take them."""
    from .recipes import get_recipe

    parts = []
    for option in options:
        owners = [
            other
            for other in RECIPE_NAMES
            if option.replace("-", "_") in {f.name for f in fields(get_recipe(other).arguments_class)}
        ]
        plural = "s" if len(owners) > 1 else ""
        parts.append(f"--{option}" + (f" (an option of the {' and '.join(owners)} recipe{plural})" if owners else ""))
    return f"not an option of the {recipe} recipe: {', '.join(parts)}; see --recipe {recipe} --help"
