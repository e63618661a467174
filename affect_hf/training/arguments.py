"""Command-line arguments of `scripts/train.py`, parsed by `HfArgumentParser` (also from a YAML or JSON file)."""

import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser


RECIPES = ("emma",)


@dataclass
class TrainArguments:
    """Defaults are the paper's EMMA recipe (ViT-B/16, 224 px)."""

    data_dir: str = field(metadata={"help": "ABAW4 MTL root: annotation files and cropped_aligned/"})
    recipe: str = field(default="emma", metadata={"help": "What to train.", "choices": RECIPES})
    output_dir: str = field(default="outputs/emma", metadata={"help": "Checkpoints, logs and the best model."})
    model_config: str = field(default="base", metadata={"help": "Preset (tiny, base) or a JSON file of EmmaConfig."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved EMMA folder to start from."})
    mae_path: str | None = field(default=None, metadata={"help": "A saved ViTMAE / MAE-pretraining folder."})
    cnn_path: str | None = field(default=None, metadata={"help": "A saved DAN folder (the frozen CNN)."})
    num_train_epochs: int = 30
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimiser steps (-1: epochs)."})
    warmup_epochs: float = 5.0
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    base_learning_rate: float = field(default=5e-4, metadata={"help": "Scaled by effective batch / 256."})
    learning_rate: float | None = field(default=None, metadata={"help": "Absolute rate; overrides the scaling."})
    min_learning_rate: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    drop_path_rate: float = 0.1
    max_grad_norm: float = 1.0
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 where the hardware computes it natively (most GPUs, CPUs with AVX512-BF16/AMX), "
            "fp16 on older GPUs, else no (emulated bf16 is slower than fp32).",
            "choices": ("auto", "no", "fp16", "bf16"),
        },
    )
    seed: int = 0
    num_workers: int = 4
    save_steps: int = field(default=0, metadata={"help": "Save training state every N steps (0: each epoch)."})
    save_total_limit: int = field(default=2, metadata={"help": "Training states kept (oldest removed first)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A state folder, or 'latest'."})
    logging_steps: int = 10
    eval_on_start: bool = field(default=False, metadata={"help": "Score the untrained model first (epoch -1)."})
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker: tensorboard, all, none."})
    au_pos_weight: str = field(
        default="data", metadata={"help": "'data': negatives/positives of the training split; 'config': keep."}
    )
    fit_au_thresholds: bool = field(
        default=False, metadata={"help": "Store per-AU thresholds fitted on validation in the saved best model."}
    )
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None
    hub_private_repo: bool | None = None

    def __post_init__(self):
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if self.au_pos_weight not in ("data", "config"):
            raise ValueError(f"--au_pos_weight must be 'data' or 'config', got {self.au_pos_weight!r}")
        positive = (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "save_total_limit",
            "logging_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")


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


def parse_train_arguments(argv: list[str] | None = None) -> TrainArguments:
    """Flags, or a single `.yaml` / `.yml` / `.json` file holding them."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(TrainArguments)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        (arguments,) = parser.parse_yaml_file(argv[0])
    elif len(argv) == 1 and argv[0].endswith(".json"):
        (arguments,) = parser.parse_json_file(argv[0])
    else:
        (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    return arguments
