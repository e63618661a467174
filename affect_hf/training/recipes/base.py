"""What a recipe supplies to the one training loop.

A recipe says *what* is trained: its argument dataclass, its defaults for the loop's arguments, the model, the
datasets, the optimiser's parameter groups, the evaluation and the score that selects the saved model, and what
a saved folder holds. The loop (`affect_hf.training.loop`) says *how*, identically for every recipe.
"""

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import PIL.Image
import torch
from accelerate import Accelerator
from transformers import PreTrainedModel

from ...hub import render_model_card, save_model_folder
from ..arguments import TrainingArguments
from ..optimization import layer_decay_parameter_groups, weight_decay_parameter_groups


# MAE fine-tuning's optimiser and schedule (BEiT / MAE), which EMMA and CoTEX start from.
VIT_FINETUNING_DEFAULTS = {
    "min_learning_rate": 1e-6,
    "lr_schedule": "cosine",
    "weight_decay": 0.05,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
}


@dataclass
class Evaluation:
    """What an evaluation found: scores (logged, kept in the history, shown on the card), figures, and extras the
    recipe wants back when it saves the model (EMMA's fitted AU thresholds)."""

    scores: dict[str, float]
    images: dict[str, PIL.Image.Image] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecipeData:
    """The datasets of a run.

    `train` is a map-style torch dataset (shuffled by a seeded sampler and sharded by Accelerate) or an
    `ImageStream` (a `datasets` streaming source, sharded by node and worker, resumed from its position).
    Map-style training items may be unreadable-image markers, which the loop's collate drops and counts (see
    `affect_hf.data.datasets`). `evaluation` is read in order, whole, at every evaluation; None when the recipe has
    nothing to evaluate.
    """

    train: Any
    evaluation: torch.utils.data.Dataset | None = None
    description: str = ""


class Recipe:
    """Base of the recipes; subclasses set the class attributes and implement the `build_*` methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    arguments_class: ClassVar[type]
    # The score that selects the saved model; None keeps the last evaluated (or, without evaluation, the last) model.
    selection_score: ClassVar[str | None] = None
    greater_is_better: ClassVar[bool] = True
    # Files the recipe writes in the output folder (besides the loop's), deleted by --overwrite_output_dir.
    run_files: ClassVar[tuple[str, ...]] = ()
    # What a saved folder's card says: its template, the data's name and type, the scores in its model-index
    # (None: the ABAW scores), its tags and pipeline.
    card_template: ClassVar[Path]
    card_dataset: ClassVar[tuple[str, str]] = ("", "")
    card_index_metrics: ClassVar[tuple[str, ...] | None] = None
    card_tags: ClassVar[tuple[str, ...]] = ()
    card_pipeline_tag: ClassVar[str | None] = "image-classification"

    def __init__(self, training_args: TrainingArguments, recipe_args: Any):
        self.recipe_args = recipe_args
        self.args = training_args.with_defaults(self.loop_defaults(recipe_args))
        if self.args.unset_fields:
            raise ValueError(f"the {self.name} recipe gives no default for {self.args.unset_fields}")
        self.check_arguments()

    @classmethod
    def loop_defaults(cls, recipe_args: Any) -> dict[str, Any]:
        """Defaults of the loop's recipe-dependent arguments (learning rate, epochs, batch, betas ...)."""
        raise NotImplementedError

    def check_arguments(self) -> None:
        """Refuse combinations of options that cannot mean what the user wants."""

    def build_model(self) -> PreTrainedModel:
        raise NotImplementedError

    def build_data(self, model: PreTrainedModel, accelerator: Accelerator) -> RecipeData:
        raise NotImplementedError

    def parameter_groups(self, model: PreTrainedModel, learning_rate: float) -> list[dict]:
        """The optimiser's groups (each with `lr`): by default no weight decay on biases, norms and embeddings."""
        return weight_decay_parameter_groups(model, learning_rate, self.args.weight_decay)

    def optimizer(self, model: PreTrainedModel, learning_rate: float) -> torch.optim.Optimizer:
        """AdamW over the recipe's parameter groups, with its betas."""
        betas = (self.args.adam_beta1, self.args.adam_beta2)
        return torch.optim.AdamW(self.parameter_groups(model, learning_rate), lr=learning_rate, betas=betas)

    def example_batch(self, model: PreTrainedModel, batch_size: int, generator: torch.Generator) -> dict:
        """A random batch shaped like the training data's (for the benchmark): images and class labels."""
        config = model.config
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator),
            "labels": torch.randint(0, config.num_labels, (batch_size,), generator=generator),
        }

    def evaluate(self, model: torch.nn.Module, dataloader, accelerator: Accelerator) -> Evaluation:
        raise NotImplementedError

    def data_identity(self) -> dict[str, Any]:
        """What names the run's data, for the resume check: a resumed run must read the same data."""
        return {
            "data_dir": os.path.abspath(self.recipe_args.data_dir),
            "max_train_samples": self.args.max_train_samples,
            "max_eval_samples": self.args.max_eval_samples,
        }

    def card_note(self, evaluation: Evaluation | None) -> str:
        """A sentence under the card's scores (what they mean, where they come from)."""
        return ""

    def card_data_dir(self) -> str:
        return data_folder_name(self.recipe_args.data_dir)

    def save_model(
        self, model: PreTrainedModel, folder: Path, evaluation: Evaluation | None, run_config: dict[str, Any]
    ) -> None:
        """Write the Hub-ready folder (weights, config, code, image processor, card); main process only."""
        dataset_name, dataset_type = self.card_dataset
        card = render_model_card(
            model,
            self.card_template,
            scores=evaluation.scores if evaluation is not None else None,
            training_arguments=run_config,
            repo_id=self.args.hub_model_id,
            dataset_name=dataset_name,
            dataset_type=dataset_type,
            data_dir=self.card_data_dir(),
            data_note=self.card_note(evaluation),
            index_metrics=self.card_index_metrics,
            tags=self.card_tags,
            pipeline_tag=self.card_pipeline_tag,
        )
        save_model_folder(model, folder, card)

    def run_config(self) -> dict[str, Any]:
        """Every option of the run (the token left out), for the tracker, the history and the card."""
        config = {key: value for key, value in asdict(self.args).items() if key != "hub_token"}
        config.update(asdict(self.recipe_args))
        return config


class ViTFineTuningRecipe(Recipe):
    """A recipe that fine-tunes MAE ViTs (EMMA, CoTEX): layer-wise learning-rate decay over the ViT's depth."""

    def parameter_groups(self, model: PreTrainedModel, learning_rate: float) -> list[dict]:
        return layer_decay_parameter_groups(
            model,
            learning_rate,
            self.args.weight_decay,
            self.recipe_args.layer_decay,
            model.config.vit_config.num_hidden_layers,
        )


def data_folder_name(path: str | os.PathLike) -> str:
    """The name a card shows for a data folder (never a full local path)."""
    return os.path.basename(os.path.abspath(path))
