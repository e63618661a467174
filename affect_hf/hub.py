"""Hub-ready model folders: weights, code, image processor and a rendered card, written atomically; pushing."""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from transformers import PreTrainedModel, ViTImageProcessorPil

from .data.transforms import IMAGE_MEAN, IMAGE_STD, RESAMPLING
from .files import publish_folder, remove_stale_staging, staging_folder
from .model_cards import EMMA_TEMPLATE


def build_image_processor(image_size: int) -> ViTImageProcessorPil:
    """The processor saved with every model: the eval transform's resize and normalisation (not ViT's 0.5).

    Built as the PIL backend, which needs no torchvision (so no warning where there is none); it is saved as
    `ViTImageProcessor`, so `AutoImageProcessor` gives a Hub user the torchvision backend where it is installed.
    """
    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=RESAMPLING,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )


DEFAULT_INDEX_METRIC_PREFIXES = ("P_", "ccc_")


def render_model_card(
    model: PreTrainedModel,
    template: str | os.PathLike = EMMA_TEMPLATE,
    scores: dict[str, float] | None = None,
    training_arguments: dict[str, Any] | None = None,
    repo_id: str | None = None,
    dataset_name: str = "ABAW4 MTL (s-Aff-Wild2) format",
    dataset_type: str = "abaw-mtl",
    data_dir: str = "",
    data_note: str = "",
    index_metrics: tuple[str, ...] | None = None,
    tags: tuple[str, ...] = (
        "affect",
        "facial-expression",
        "action-units",
        "valence-arousal",
        "abaw",
        "vit-mae",
        "custom_code",
    ),
    pipeline_tag: str | None = "image-classification",
    task_type: str = "image-classification",
) -> ModelCard:
    """A card from `template` with a valid `model-index` and the training arguments.

    The model-index holds the scores named in `index_metrics` (default: the ABAW scores, `P_*` and `ccc_*`); the
    card's table shows every score.
    """
    scores = {name: float(value) for name, value in (scores or {}).items()}
    repo_id = repo_id or "path/to/this/folder"
    indexed = [
        name
        for name in scores
        if (name in index_metrics if index_metrics is not None else name.startswith(DEFAULT_INDEX_METRIC_PREFIXES))
    ]
    eval_results = [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="validation",
            metric_type=name,
            metric_name=name,
            metric_value=scores[name],
        )
        for name in indexed
        if scores[name] == scores[name]  # a NaN is no result
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=list(tags),
        license="apache-2.0",
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    arguments_json = json.dumps(training_arguments or {}, indent=2, sort_keys=True, default=str)
    arguments_block = f"```json\n{arguments_json}\n```"
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        image_size=getattr(model.config, "image_size", None),
        scores=scores,
        data_dir=data_dir,
        data_note=data_note,
        training_arguments=arguments_block,
    )


def save_model_folder(model: PreTrainedModel, output_dir: str | os.PathLike, card: ModelCard | None = None) -> Path:
    """Write weights, config, code files, `preprocessor_config.json` and README.md atomically."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir.parent, output_dir.name)
    staging = staging_folder(output_dir)
    try:
        model.save_pretrained(staging)
        if hasattr(model.config, "image_size"):  # a model of pictures; the temporal model reads features
            build_image_processor(model.config.image_size).save_pretrained(staging)
        (card or render_model_card(model)).save(staging / "README.md")
        publish_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload model",
) -> str:
    """Upload every file of a saved folder in one commit; returns the commit URL.

    `model.push_to_hub` would upload neither the image processor nor our card.
    """
    folder = Path(folder)
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message)
    return commit.commit_url
