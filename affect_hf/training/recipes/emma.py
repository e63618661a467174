"""EMMA: the MAE ViT fine-tuned for valence/arousal, 8 expressions and 12 AUs, with a frozen DAN's scores (ABAW4 MTL).

Defaults are the paper's: AdamW (weight decay 0.05), base lr 5e-4 x effective batch / 256, layer-wise lr decay
0.65, 5 warmup epochs then cosine to 1e-6, 30 epochs, drop path 0.1, gradient clipping at 1, 224 px.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from ...data import AbawMtlTorchDataset
from ...evaluation import TRACK_SELECTION, collect_predictions, load_split, score_predictions, split_dataset
from ...labels import MISSING_ACTION_UNIT
from ...model_cards import EMMA_TEMPLATE
from ...modeling import EmmaForAffectAnalysis
from ..presets import emma_config_from_preset
from .base import VIT_FINETUNING_DEFAULTS, Evaluation, RecipeData, ViTFineTuningRecipe
from .checks import check_model_folder, limit_rows


# The ABAW tasks an EMMA trains on: the MTL set, or one Aff-Wild2 uni-task track.
EMMA_TASKS = ("mtl", "va", "expr", "au")


@dataclass
class EmmaArguments:
    data_dir: str = field(
        metadata={"help": "ABAW4 MTL root (annotation files + cropped_aligned/), or an Aff-Wild2 root with --task"}
    )
    model_config: str = field(default="base", metadata={"help": "Preset (tiny, base) or a JSON file of EmmaConfig."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved EMMA folder to start from."})
    mae_path: str | None = field(default=None, metadata={"help": "A saved ViTMAE / MAE-pretraining folder."})
    cnn_path: str | None = field(
        default=None, metadata={"help": "A saved DAN folder (the frozen CNN); with --mae_path."}
    )
    drop_path_rate: float = 0.1
    layer_decay: float = 0.65
    task: str = field(
        default="mtl",
        metadata={
            "help": "mtl: the ABAW4 MTL files; va, expr, au: an Aff-Wild2 uni-task track (its heads are trained, "
            "its score selects the model).",
            "choices": EMMA_TASKS,
        },
    )
    au_pos_weight: str = field(
        default="data", metadata={"help": "'data': negatives/positives of the training split; 'config': keep."}
    )
    fit_au_thresholds: bool = field(
        default=False, metadata={"help": "Store per-AU thresholds fitted on validation in the saved model."}
    )

    def __post_init__(self):
        if self.task not in EMMA_TASKS:
            raise ValueError(f"--task must be mtl, va, expr or au, got {self.task!r}")
        if self.au_pos_weight not in ("data", "config"):
            raise ValueError(f"--au_pos_weight must be 'data' or 'config', got {self.au_pos_weight!r}")


def au_pos_weight_from_labels(action_units: np.ndarray) -> list[float]:
    """Negatives / positives per AU over valid labels (1.0 where an AU has no positive or no negative)."""
    valid = action_units != MISSING_ACTION_UNIT
    positives = ((action_units == 1) & valid).sum(axis=0)
    negatives = ((action_units == 0) & valid).sum(axis=0)
    weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    return [float(weight) for weight in weights]


def task_card_dataset(task: str) -> tuple[str, str]:
    """The dataset a card names for a task (its name, its id): the ABAW4 MTL set or an Aff-Wild2 uni-task track."""
    if task == "mtl":
        return ("ABAW4 MTL (s-Aff-Wild2) format", "abaw-mtl")
    return (f"Aff-Wild2 {task.upper()} track (ABAW)", f"aff-wild2-{task}")


class EmmaRecipe(ViTFineTuningRecipe):
    name = "emma"
    description = "EMMA multi-task affect (valence/arousal, 8 expressions, 12 AUs) on ABAW4 MTL data"
    arguments_class = EmmaArguments
    selection_score = "P_MTL"
    card_template = EMMA_TEMPLATE
    card_dataset = task_card_dataset("mtl")
    card_tags = ("affect", "facial-expression", "action-units", "valence-arousal", "abaw", "vit-mae", "custom_code")

    @classmethod
    def loop_defaults(cls, recipe_args) -> dict[str, Any]:
        return {
            "num_train_epochs": 30,
            "warmup_epochs": 5.0,
            "per_device_train_batch_size": 64,
            "gradient_accumulation_steps": 1,
            "base_learning_rate": 5e-4,
            "max_grad_norm": 1.0,
            **VIT_FINETUNING_DEFAULTS,
        }

    def check_arguments(self) -> None:
        options = self.recipe_args
        if options.cnn_path and not options.mae_path:
            raise ValueError("--cnn_path is used only with --mae_path (EMMA assembled from an MAE and a DAN folder)")
        if options.model_name_or_path and options.mae_path:
            raise ValueError("give either --model_name_or_path (a saved EMMA) or --mae_path, not both")
        if options.mae_path:
            check_model_folder(options.mae_path, ("vit_mae",), "--mae_path")
        if options.cnn_path:
            check_model_folder(options.cnn_path, ("dan",), "--cnn_path")
        if options.model_name_or_path and os.path.isdir(options.model_name_or_path):
            check_model_folder(options.model_name_or_path, ("emma",), "--model_name_or_path")

    def build_model(self) -> EmmaForAffectAnalysis:
        options = self.recipe_args
        if options.model_name_or_path:
            model = EmmaForAffectAnalysis.from_pretrained(
                options.model_name_or_path, drop_path_rate=options.drop_path_rate
            )
        elif options.mae_path:
            model = EmmaForAffectAnalysis.from_pretrained_parts(
                options.mae_path, options.cnn_path, drop_path_rate=options.drop_path_rate
            )
        else:
            model = EmmaForAffectAnalysis(
                emma_config_from_preset(options.model_config, drop_path_rate=options.drop_path_rate)
            )
        if model.cnn is not None:
            # oneDNN's convolutions are fastest on NHWC; the saved weights are the same numbers either way.
            model.cnn.to(memory_format=torch.channels_last)
        return model

    def __init__(self, training_args, recipe_args: EmmaArguments):
        super().__init__(training_args, recipe_args)
        task = recipe_args.task
        self.selection_score = TRACK_SELECTION[task]
        self.card_dataset = task_card_dataset(task)

    def load_split(self, split: str):
        """An ABAW MTL split, or a uni-task track's (`--task va|expr|au`): the same columns either way."""
        return load_split(self.recipe_args.data_dir, self.recipe_args.task, split)

    def data_identity(self) -> dict[str, Any]:
        return {**super().data_identity(), "task": self.recipe_args.task}

    def build_data(self, model: EmmaForAffectAnalysis, accelerator: Accelerator) -> RecipeData:
        options, args = self.recipe_args, self.args
        train_split = limit_rows(self.load_split("train"), args.max_train_samples, args.seed)
        eval_split = limit_rows(self.load_split("validation"), args.max_eval_samples, args.seed)
        if options.au_pos_weight == "data":
            model.config.au_pos_weight = au_pos_weight_from_labels(np.asarray(train_split["action_units"]))
        image_size = model.config.image_size
        return RecipeData(
            train=AbawMtlTorchDataset(train_split, image_size=image_size, train=True, seed=args.seed),
            evaluation=split_dataset(eval_split, options.task, image_size),
            description=f"ABAW {options.task.upper()} {len(train_split)} training / {len(eval_split)} validation "
            "frames",
        )

    def example_batch(self, model: EmmaForAffectAnalysis, batch_size: int, generator: torch.Generator) -> dict:
        size, config = model.config.image_size, model.config
        return {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator),
            "valence_arousal": torch.rand(batch_size, 2, generator=generator) * 2 - 1,
            "expression": torch.randint(0, config.num_labels, (batch_size,), generator=generator),
            "action_units": torch.randint(0, 2, (batch_size, config.num_action_units), generator=generator),
        }

    def evaluate(self, model, dataloader, accelerator: Accelerator) -> Evaluation:
        """The track's ABAW scores at the model's AU thresholds, and P_AU (and P_MTL) at thresholds fitted here."""
        thresholds = accelerator.unwrap_model(model).config.au_thresholds
        predictions, references = collect_predictions(model, dataloader, accelerator.gather_for_metrics)
        scores, fitted = score_predictions(predictions, references, thresholds, self.recipe_args.task)
        return Evaluation(scores=scores, extras={"fitted_au_thresholds": fitted})

    def save_model(
        self, model: EmmaForAffectAnalysis, folder: Path, evaluation: Evaluation | None, run_config: dict[str, Any]
    ) -> None:
        """The card's folder, with the AU thresholds fitted on validation when `--fit_au_thresholds`."""
        thresholds = model.config.au_thresholds
        if self.fits_thresholds(evaluation):
            model.config.au_thresholds = [float(value) for value in evaluation.extras["fitted_au_thresholds"]]
        try:
            super().save_model(model, folder, evaluation, run_config)
        finally:
            model.config.au_thresholds = thresholds

    def fits_thresholds(self, evaluation: Evaluation | None) -> bool:
        return self.recipe_args.fit_au_thresholds and evaluation is not None

    def card_note(self, evaluation: Evaluation | None) -> str:
        if self.fits_thresholds(evaluation):
            return (
                "AU thresholds were fitted on this validation split (P_AU_fitted_thresholds): the scores at those "
                "thresholds are optimistic."
            )
        return "AU decisions at the config's thresholds."


__all__ = ["EMMA_TASKS", "EmmaArguments", "EmmaRecipe", "au_pos_weight_from_labels"]
