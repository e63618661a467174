"""The temporal recipe: a sequence model over a frozen frame-level EMMA's per-frame outputs, on the ABAW MTL set or
an Aff-Wild2 uni-task track (`--task`).

The frozen EMMA runs once over every frame (`data.frame_features`, cached as Arrow in the run's output folder);
the temporal model then trains on windows of `--window_seconds`, overlapping by `--window_overlap`. Evaluation
scores every validation frame once, in order (windows side by side), with the track's own score and the loop's
own functions, so P_VA / P_EXPR / P_AU compare directly with the frame-level model's (`affect-hf evaluate`).
Features are extracted in fp32 on the run's device.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import AutoConfig

from ...data.frame_features import WindowDataset, extract_frame_features, track_windows
from ...evaluation import (
    TRACK_SELECTION,
    collect_predictions,
    evaluation_windows,
    load_split,
    score_predictions,
    window_forward,
)
from ...model_cards import TEMPORAL_TEMPLATE
from ...modeling import TemporalAffectConfig, TemporalAffectModel
from ...models import load_affect_model, weights_sha256
from .base import Evaluation, Recipe, RecipeData
from .checks import check_model_folder, limit_rows
from .emma import EMMA_TASKS, task_card_dataset


# The folder of the run's cached frame features (one Arrow file per split and frame model).
FRAME_FEATURES_DIR = "frame_features"


@dataclass
class TemporalArguments:
    data_dir: str = field(
        metadata={"help": "ABAW4 MTL root, or an Aff-Wild2 root with --task va|expr|au (frames in video order)"}
    )
    frame_model: str = field(metadata={"help": "The frozen frame-level EMMA: a saved folder or a Hub id."})
    task: str = field(
        default="va", metadata={"help": "mtl, or an Aff-Wild2 uni-task track: va, expr, au", "choices": EMMA_TASKS}
    )
    window_seconds: float = field(default=4.0, metadata={"help": "Frames a window spans, in seconds."})
    window_overlap: float = field(default=0.5, metadata={"help": "Share of a training window the next one repeats."})
    fps: float = field(default=30.0, metadata={"help": "Frame rate of the videos (Aff-Wild2's is about 30)."})
    causal: bool = field(default=False, metadata={"help": "Each frame sees only earlier ones (streaming)."})
    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    dropout: float = 0.1
    feature_batch_size: int = field(default=64, metadata={"help": "Frames per batch of the feature extraction."})

    def __post_init__(self):
        if self.task not in EMMA_TASKS:
            raise ValueError(f"--task must be one of {', '.join(EMMA_TASKS)}, got {self.task!r}")
        if self.window_seconds <= 0 or self.fps <= 0:
            raise ValueError(f"--window_seconds and --fps must be positive, got {self.window_seconds}, {self.fps}")
        if not 0 <= self.window_overlap < 1:
            raise ValueError(f"--window_overlap must lie in [0, 1), got {self.window_overlap}")

    @property
    def window_frames(self) -> int:
        return max(1, round(self.window_seconds * self.fps))

    @property
    def window_stride(self) -> int:
        return max(1, round(self.window_frames * (1 - self.window_overlap)))


def temporal_config(frame: Any, **options: Any) -> TemporalAffectConfig:
    """A temporal model's config for a frame-level EMMA's (`frame`): its feature width, the scores its VA head reads,
    its labels, AUs and thresholds; `options` set the rest (`TemporalAffectConfig`'s fields)."""
    cnn_scores = frame.cnn_config.num_labels if frame.use_cnn_scores else 0
    return TemporalAffectConfig(
        feature_size=frame.vit_config.hidden_size, num_scores=cnn_scores + frame.num_labels + frame.num_action_units,
        au_thresholds=frame.au_thresholds, au_pos_weight=frame.au_pos_weight, au_names=frame.au_names,
        id2label=frame.id2label, **options,
    )  # fmt: skip


class TemporalRecipe(Recipe):
    name = "temporal"
    description = "a temporal model over a frozen EMMA's per-frame outputs (ABAW MTL or an Aff-Wild2 track)"
    arguments_class = TemporalArguments
    # The frame features are not run files: named by their split, weights and size, they stay valid, and a new run
    # into the same folder (--overwrite_output_dir, other options) reads them back instead of extracting again.
    card_template = TEMPORAL_TEMPLATE
    card_tags = ("affect", "valence-arousal", "facial-expression", "action-units", "abaw", "temporal", "custom_code")
    card_pipeline_tag = None

    def __init__(self, training_args, recipe_args: TemporalArguments):
        super().__init__(training_args, recipe_args)
        self.selection_score = TRACK_SELECTION[recipe_args.task]
        self.card_dataset = task_card_dataset(recipe_args.task)

    @classmethod
    def loop_defaults(cls, recipe_args) -> dict[str, Any]:
        # A small model on cached features: many short epochs, AdamW at a transformer's usual rate (5e-4 at 32).
        return {
            "num_train_epochs": 20,
            "warmup_epochs": 1.0,
            "per_device_train_batch_size": 32,
            "gradient_accumulation_steps": 1,
            "base_learning_rate": 4e-3,
            "max_grad_norm": 1.0,
            "min_learning_rate": 1e-6,
            "lr_schedule": "cosine",
            "weight_decay": 0.01,
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
        }

    def check_arguments(self) -> None:
        check_model_folder(self.recipe_args.frame_model, ("emma",), "--frame_model")

    def frame_model_identity(self) -> str:
        """The frame model's weights sha256 (a folder), or its name (a Hub id)."""
        return weights_sha256(self.recipe_args.frame_model) or str(self.recipe_args.frame_model)

    def build_model(self) -> TemporalAffectModel:
        options = self.recipe_args
        config = temporal_config(
            AutoConfig.from_pretrained(options.frame_model), hidden_size=options.hidden_size,
            num_hidden_layers=options.num_hidden_layers, num_attention_heads=options.num_attention_heads,
            intermediate_size=2 * options.hidden_size, dropout=options.dropout, causal=options.causal,
            frame_model=str(options.frame_model), frame_model_sha256=weights_sha256(options.frame_model),
            window_frames=options.window_frames, frames_per_second=options.fps,
        )  # fmt: skip
        return TemporalAffectModel(config)

    def data_identity(self) -> dict[str, Any]:
        options = self.recipe_args
        return {**super().data_identity(), "task": options.task, "frame_model": self.frame_model_identity(),
                "window_frames": options.window_frames, "window_stride": options.window_stride}  # fmt: skip

    def build_data(self, model: TemporalAffectModel, accelerator: Accelerator) -> RecipeData:
        options, args = self.recipe_args, self.args
        splits = {
            "train": limit_rows(load_split(options.data_dir, options.task, "train"), args.max_train_samples, args.seed),
            "validation": limit_rows(load_split(options.data_dir, options.task, "validation"), args.max_eval_samples,
                                     args.seed),
        }  # fmt: skip
        frame_model = load_affect_model(options.frame_model, device=accelerator.device, dtype="fp32")
        cache = Path(args.output_dir) / FRAME_FEATURES_DIR
        with accelerator.main_process_first():  # the first process extracts; the others read its files
            identity = self.frame_model_identity()
            frames = {name: extract_frame_features(frame_model, split, cache, identity, options.feature_batch_size)
                      for name, split in splits.items()}  # fmt: skip
        del frame_model
        span = options.window_frames
        train_windows = track_windows(frames["train"], span, options.window_stride)
        return RecipeData(
            train=WindowDataset(frames["train"], train_windows, span),
            evaluation=evaluation_windows(frames["validation"], span),
            description=f"ABAW {options.task.upper()} {len(train_windows)} training windows of {span} frames "
            f"({len(splits['train'])} frames) / {len(splits['validation'])} validation frames",
        )

    def example_batch(self, model: TemporalAffectModel, batch_size: int, generator: torch.Generator) -> dict:
        config, span = model.config, self.recipe_args.window_frames
        return {
            "features": torch.randn(batch_size, span, config.feature_size, generator=generator),
            "scores": torch.randn(batch_size, span, config.num_scores, generator=generator),
            "positions": torch.arange(span).expand(batch_size, -1).clone(),
            "mask": torch.ones(batch_size, span, dtype=torch.bool),
            "valence_arousal": torch.rand(batch_size, span, 2, generator=generator) * 2 - 1,
            "expression": torch.randint(0, config.num_labels, (batch_size, span), generator=generator),
            "action_units": torch.randint(0, 2, (batch_size, span, config.num_action_units), generator=generator),
        }

    def evaluate(self, model, dataloader, accelerator: Accelerator) -> Evaluation:
        """The track's ABAW scores over every validation frame once, at the model's AU thresholds (and fitted)."""
        thresholds = accelerator.unwrap_model(model).config.au_thresholds
        predictions, references = collect_predictions(model, dataloader, accelerator.gather_for_metrics,
                                                       forward=window_forward)  # fmt: skip
        scores, fitted = score_predictions(predictions, references, thresholds, self.recipe_args.task)
        return Evaluation(scores=scores, extras={"fitted_au_thresholds": fitted})

    def card_note(self, evaluation: Evaluation | None) -> str:
        options = self.recipe_args
        return (
            f"Windows of {options.window_frames} frames ({options.window_seconds:g} s at {options.fps:g} frames/s), "
            f"{'causal' if options.causal else 'bidirectional'}, over the frame model {options.frame_model}."
        )


__all__ = ["TemporalArguments", "TemporalRecipe", "temporal_config"]
