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

from model_cards import EMMA_TEMPLATE
from modeling import EmmaForAffectAnalysis

from ...data import AbawMtlTorchDataset, load_abaw_mtl
from ...data.abaw_tracks import load_abaw_track
from ...labels import MISSING_ACTION_UNIT
from ...metrics import ABAW_TASK_SCORES, abaw_mtl_score, abaw_task_scores, fit_au_thresholds
from ..evaluation import gather_predictions
from ..presets import emma_config_from_preset
from .base import VIT_FINETUNING_DEFAULTS, Evaluation, RecipeData, ViTFineTuningRecipe
from .checks import check_model_folder, limit_rows


# The label column of each uni-task track, and the score that selects the model for each task.
TASK_LABELS = {"va": "valence_arousal", "expr": "expression", "au": "action_units"}
TASK_SELECTION = {"mtl": "P_MTL", **ABAW_TASK_SCORES}


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
            "choices": ("mtl", *TASK_LABELS),
        },
    )
    au_pos_weight: str = field(
        default="data", metadata={"help": "'data': negatives/positives of the training split; 'config': keep."}
    )
    fit_au_thresholds: bool = field(
        default=False, metadata={"help": "Store per-AU thresholds fitted on validation in the saved model."}
    )

    def __post_init__(self):
        if self.task not in ("mtl", *TASK_LABELS):
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


@torch.no_grad()
def predict(model: torch.nn.Module, dataloader, accelerator: Accelerator) -> tuple[dict, dict]:
    """EMMA's predictions and references over a whole split, in order, gathered across processes."""

    def extract(outputs, batch) -> dict[str, torch.Tensor]:
        return {
            "valence_arousal": outputs.valence_arousal,
            "expression": outputs.logits,
            "action_units": torch.sigmoid(outputs.au_logits.float()),
            "ref_valence_arousal": batch["valence_arousal"],
            "ref_expression": batch["expression"],
            "ref_action_units": batch["action_units"],
        }

    arrays = gather_predictions(model, dataloader, accelerator, extract)
    tasks = ("valence_arousal", "expression", "action_units")
    predictions = {task: arrays[task] for task in tasks}
    references = {
        "valence_arousal": arrays["ref_valence_arousal"],
        "expression": arrays["ref_expression"].astype(np.int64),
        "action_units": arrays["ref_action_units"].astype(np.int64),
    }
    return predictions, references


def evaluate_model(
    model: torch.nn.Module, dataloader, accelerator: Accelerator, au_thresholds: list[float], task: str = "mtl"
) -> tuple[dict[str, float], np.ndarray]:
    """ABAW scores at the model's AU thresholds, plus P_AU (and P_MTL) with thresholds fitted on this split.

    `task` "mtl" scores the three tasks and P_MTL; "va", "expr" or "au" (a uni-task track) scores that task only.
    """
    predictions, references = predict(model, dataloader, accelerator)
    return score_predictions(predictions, references, au_thresholds, task)


def score_predictions(
    predictions: dict[str, np.ndarray], references: dict[str, np.ndarray], au_thresholds: list[float], task: str
) -> tuple[dict[str, float], np.ndarray]:
    """The scores of `evaluate_model` from `predict`'s arrays (training and `affect-hf evaluate` share them)."""
    fitted = fit_au_thresholds(predictions["action_units"], references["action_units"])
    if task == "mtl":
        scores = abaw_mtl_score(predictions, references, au_thresholds=au_thresholds)
        fitted_scores = abaw_mtl_score(predictions, references, au_thresholds=fitted)
        scores["P_AU_fitted_thresholds"] = fitted_scores["P_AU"]
        scores["P_MTL_fitted_thresholds"] = fitted_scores["P_MTL"]
    else:
        labels = TASK_LABELS[task]
        scores = abaw_task_scores(task, predictions[labels], references[labels], au_thresholds)
        if task == "au":
            fitted_scores = abaw_task_scores(task, predictions[labels], references[labels], fitted)
            scores["P_AU_fitted_thresholds"] = fitted_scores["P_AU"]
    return {key: float(value) for key, value in scores.items()}, fitted


class EmmaRecipe(ViTFineTuningRecipe):
    name = "emma"
    description = "EMMA multi-task affect (valence/arousal, 8 expressions, 12 AUs) on ABAW4 MTL data"
    arguments_class = EmmaArguments
    selection_score = "P_MTL"
    card_template = EMMA_TEMPLATE
    card_dataset = ("ABAW4 MTL (s-Aff-Wild2) format", "abaw-mtl")
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
        self.selection_score = TASK_SELECTION[task]
        if task != "mtl":
            self.card_dataset = (f"Aff-Wild2 {task.upper()} track (ABAW)", f"aff-wild2-{task}")

    def load_split(self, split: str):
        """An ABAW MTL split, or a uni-task track's (`--task va|expr|au`): the same columns either way."""
        options = self.recipe_args
        if options.task == "mtl":
            return load_abaw_mtl(options.data_dir, split)
        return load_abaw_track(options.data_dir, options.task, split)

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
            evaluation=AbawMtlTorchDataset(eval_split, image_size=image_size, train=False, seed=args.seed),
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
        thresholds = accelerator.unwrap_model(model).config.au_thresholds
        scores, fitted = evaluate_model(model, dataloader, accelerator, thresholds, self.recipe_args.task)
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


__all__ = ["EmmaArguments", "EmmaRecipe", "au_pos_weight_from_labels", "evaluate_model", "predict"]
