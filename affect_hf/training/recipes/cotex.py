"""Masked CoTEX on the ABAW4 LSD track: MAE ViTs co-trained on synthetic faces, scored on real ones.

Defaults follow the authors' `Masked_CoTEX_main.py`: 2 views, JS weight 100 (their reduction), drop path 0.1,
layer decay 0.65, weight decay 0.05, 6 epochs with 5 of warmup then cosine to 1e-6, gradient accumulation 4,
clipping at 0.05, resize 1.02x + random crop + flip, and a batch grown with the mask ratio
(64 x int(1 / (1 - mask_ratio)), at most 4096: masked steps are cheaper). Their learning rate, 5e-4, is not scaled
by the batch; here the base rate 1.25e-4 x effective batch / 256 gives exactly 5e-4 at their batch of 256 x 4.
"""

import os
from dataclasses import dataclass, field
from typing import Any

from accelerate import Accelerator

from ...data import AffectImageTransform, ImageDataset, class_label
from ...evaluation import evaluate_classifier, load_split, split_dataset
from ...labels import LSD_EXPRESSIONS
from ...model_cards import COTEX_TEMPLATE
from ...modeling import CotexConfig, CotexForImageClassification
from ...modeling.configuration_cotex import JS_REDUCTIONS
from ..presets import config_from_preset
from .base import VIT_FINETUNING_DEFAULTS, Evaluation, RecipeData, ViTFineTuningRecipe
from .checks import check_model_folder, limit_rows


# The authors' light training augmentation.
COTEX_RESIZE_SCALE = 1.02


@dataclass
class CotexArguments:
    data_dir: str = field(metadata={"help": "ABAW4 LSD root (training_set_synthetic_images/ ... or train/ + val/)."})
    model_config: str = field(default="base", metadata={"help": "Preset (tiny, base) or a JSON file of CotexConfig."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved CoTEX folder to start from."})
    mae_path: list[str] | None = field(
        default=None, metadata={"help": "MAE folder(s) the views start from (views shared out in order)."}
    )
    num_views: int = 2
    mask_ratio: float = field(default=0.75, metadata={"help": "Patches each view drops in training."})
    js_weight: float = 100.0
    js_reduction: str = field(default="mean", metadata={"help": "Reduction of each KL term.", "choices": JS_REDUCTIONS})
    drop_path_rate: float = 0.1
    layer_decay: float = 0.65
    unmasked_batch_size: int = field(
        default=64, metadata={"help": "Per-device batch at mask ratio 0; the default batch grows with the ratio."}
    )
    max_batch_size: int = field(default=4096, metadata={"help": "Cap of the grown batch."})

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"--mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.num_views < 1:
            raise ValueError(f"--num_views must be at least 1, got {self.num_views}")


def grown_batch_size(unmasked_batch_size: int, mask_ratio: float, max_batch_size: int) -> int:
    """The authors' rule: a view keeps 1 - ratio of the patches, so the batch grows by int(1 / (1 - ratio))."""
    return min(unmasked_batch_size * int(1 / (1 - mask_ratio)), max_batch_size)


class CotexRecipe(ViTFineTuningRecipe):
    name = "cotex"
    description = "masked CoTEX: co-trained MAE ViTs for the 6 ABAW4 LSD expressions"
    arguments_class = CotexArguments
    selection_score = "f1_macro"
    card_template = COTEX_TEMPLATE
    card_dataset = ("ABAW4 LSD format (validation: real faces)", "abaw-lsd")
    card_index_metrics = ("f1_macro", "accuracy")
    card_tags = ("affect", "facial-expression", "abaw", "vit-mae", "cotex", "custom_code")

    @classmethod
    def loop_defaults(cls, recipe_args) -> dict[str, Any]:
        return {
            "num_train_epochs": 6,
            "warmup_epochs": 5.0,
            "per_device_train_batch_size": grown_batch_size(
                recipe_args.unmasked_batch_size, recipe_args.mask_ratio, recipe_args.max_batch_size
            ),
            "gradient_accumulation_steps": 4,
            "base_learning_rate": 1.25e-4,
            "max_grad_norm": 0.05,
            **VIT_FINETUNING_DEFAULTS,
        }

    def check_arguments(self) -> None:
        options = self.recipe_args
        if options.model_name_or_path and options.mae_path:
            raise ValueError("give either --model_name_or_path (a saved CoTEX) or --mae_path, not both")
        for path in options.mae_path or ():
            check_model_folder(path, ("vit_mae",), "--mae_path")
        if options.mae_path and options.num_views % len(options.mae_path):
            raise ValueError(
                f"--num_views {options.num_views} cannot be shared among {len(options.mae_path)} MAE folders"
            )
        if options.model_name_or_path and os.path.isdir(options.model_name_or_path):
            check_model_folder(options.model_name_or_path, ("cotex",), "--model_name_or_path")

    def model_options(self) -> dict[str, Any]:
        options = self.recipe_args
        return {
            "num_views": options.num_views,
            "mask_ratio": options.mask_ratio,
            "js_weight": options.js_weight,
            "js_reduction": options.js_reduction,
            "drop_path_rate": options.drop_path_rate,
        }

    def build_model(self) -> CotexForImageClassification:
        options = self.recipe_args
        if options.model_name_or_path:
            return CotexForImageClassification.from_pretrained(options.model_name_or_path, **self.model_options())
        if options.mae_path:
            return CotexForImageClassification.from_pretrained_parts(options.mae_path, **self.model_options())
        return CotexForImageClassification(
            config_from_preset(CotexConfig, options.model_config, **self.model_options())
        )

    def build_data(self, model: CotexForImageClassification, accelerator: Accelerator) -> RecipeData:
        args, size = self.args, model.config.image_size
        data_dir = self.recipe_args.data_dir
        train_split = limit_rows(load_split(data_dir, "lsd", "train"), args.max_train_samples, args.seed)
        eval_split = limit_rows(load_split(data_dir, "lsd", "validation"), args.max_eval_samples, args.seed)
        train_transform = AffectImageTransform(
            size, train=True, resize_scale=COTEX_RESIZE_SCALE, color_jitter_probability=0.0
        )
        labels = class_label()
        return RecipeData(
            train=ImageDataset(train_split, train_transform, labels, train=True, seed=args.seed),
            evaluation=split_dataset(eval_split, "lsd", size),
            description=f"ABAW LSD {len(train_split)} synthetic training / {len(eval_split)} real validation faces",
        )

    def evaluate(self, model, dataloader, accelerator: Accelerator) -> Evaluation:
        return Evaluation(
            scores=evaluate_classifier(model, dataloader, LSD_EXPRESSIONS, accelerator.gather_for_metrics)
        )


__all__ = ["CotexArguments", "CotexRecipe", "grown_batch_size"]
