"""DAN, EMMA's expression CNN, on 8-class AffectNet-style data, with DAN's losses and recipe.

Defaults follow DAN's AffectNet script: cross-entropy + affinity loss (learnable class centres) + partition loss
over the 4 attention heads, Adam at 1e-4 (here AdamW without weight decay: the same update) for a batch of 256,
the rate x 0.6 after every epoch, 40 epochs, class-balanced sampling, resize + flip + random affine (p=0.7) +
random erasing. The model with the best validation accuracy (DAN's criterion) is kept; its folder is what
`--recipe emma --cnn_path` takes.
"""

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from accelerate import Accelerator
from transformers import ResNetModel

from ...data import AffectImageTransform, ClassBalancedDataset, DanTrainTransform, ImageDataset, class_label
from ...data.affectnet import load_affectnet
from ...evaluation import evaluate_classifier
from ...labels import AFFECTNET_EXPRESSIONS
from ...model_cards import DAN_TEMPLATE
from ...modeling import DanConfig, DanForImageClassification
from ..presets import config_from_preset
from .base import Evaluation, Recipe, RecipeData
from .checks import check_model_folder, limit_rows


@dataclass
class DanArguments:
    data_dir: str = field(
        metadata={"help": "AffectNet-style root: train/ + val/ class folders, or training.csv + validation.csv."}
    )
    image_dir: str | None = field(
        default=None, metadata={"help": "Where the CSV lists' images live (default: Manually_Annotated_Images/)."}
    )
    model_config: str = field(default="base", metadata={"help": "Preset (tiny, base) or a JSON file of DanConfig."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved DAN folder to start from."})
    resnet_path: str | None = field(
        default=None, metadata={"help": "A saved transformers ResNet (e.g. an ImageNet ResNet-18) to start from."}
    )
    class_balanced: bool = field(default=True, metadata={"help": "Sample classes equally often (DAN on AffectNet)."})
    affinity_loss_weight: float = 1.0
    partition_loss_weight: float = 1.0


class DanRecipe(Recipe):
    name = "dan"
    description = "DAN, the expression CNN whose scores EMMA reads, on 8-class AffectNet-style data"
    arguments_class = DanArguments
    selection_score = "accuracy"
    card_template = DAN_TEMPLATE
    card_dataset = ("AffectNet format (8 expressions)", "affectnet")
    card_index_metrics = ("accuracy", "f1_macro")
    card_tags = ("affect", "facial-expression", "affectnet", "dan", "custom_code")

    @classmethod
    def loop_defaults(cls, recipe_args) -> dict[str, Any]:
        return {
            "num_train_epochs": 40,
            "warmup_epochs": 0.0,
            "per_device_train_batch_size": 256,
            "gradient_accumulation_steps": 1,
            "base_learning_rate": 1e-4,
            "min_learning_rate": 0.0,
            "lr_schedule": "exponential",
            "weight_decay": 0.0,
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "max_grad_norm": 0.0,
        }

    def check_arguments(self) -> None:
        options = self.recipe_args
        if options.model_name_or_path and options.resnet_path:
            raise ValueError("give either --model_name_or_path (a saved DAN) or --resnet_path, not both")
        if options.model_name_or_path and os.path.isdir(options.model_name_or_path):
            check_model_folder(options.model_name_or_path, ("dan",), "--model_name_or_path")
        if options.resnet_path and os.path.isdir(options.resnet_path):
            check_model_folder(options.resnet_path, ("resnet",), "--resnet_path")

    def build_model(self) -> DanForImageClassification:
        options = self.recipe_args
        losses = {
            "affinity_loss_weight": options.affinity_loss_weight,
            "partition_loss_weight": options.partition_loss_weight,
        }
        if options.model_name_or_path:
            return DanForImageClassification.from_pretrained(options.model_name_or_path, **losses)
        model = DanForImageClassification(config_from_preset(DanConfig, options.model_config, **losses))
        if options.resnet_path:
            resnet = ResNetModel.from_pretrained(options.resnet_path)
            incompatible = model.resnet.load_state_dict(resnet.state_dict(), strict=False)
            if incompatible.missing_keys or incompatible.unexpected_keys:
                raise ValueError(f"--resnet_path {options.resnet_path} does not match DAN's ResNet: {incompatible}")
        return model

    def build_data(self, model: DanForImageClassification, accelerator: Accelerator) -> RecipeData:
        options, args, size = self.recipe_args, self.args, model.config.image_size
        train_split = limit_rows(
            load_affectnet(options.data_dir, "train", options.image_dir), args.max_train_samples, args.seed
        )
        eval_split = limit_rows(
            load_affectnet(options.data_dir, "validation", options.image_dir), args.max_eval_samples, args.seed
        )
        labels = class_label()
        train = ImageDataset(train_split, DanTrainTransform(size), labels, train=True, seed=args.seed)
        if options.class_balanced:
            train = ClassBalancedDataset(train, np.asarray(train_split["label"]), seed=args.seed)
        return RecipeData(
            train=train,
            evaluation=ImageDataset(eval_split, AffectImageTransform(size, train=False), labels),
            description=f"AffectNet-style {len(train_split)} training / {len(eval_split)} validation faces"
            + (" (class-balanced sampling)" if options.class_balanced else ""),
        )

    def evaluate(self, model, dataloader, accelerator: Accelerator) -> Evaluation:
        return Evaluation(
            scores=evaluate_classifier(model, dataloader, AFFECTNET_EXPRESSIONS, accelerator.gather_for_metrics)
        )


__all__ = ["DanArguments", "DanRecipe"]
