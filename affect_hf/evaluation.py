"""Scoring a model on a labelled split: the layer under the recipes' evaluations, `affect-hf evaluate` and the
test-set predictions, so that all of them read a split, predict it and score it the same way.

1. `load_split(data_dir, track, split)`: a track's split as a `datasets.Dataset` (ABAW4 MTL, an Aff-Wild2 uni-task
   track, or ABAW4 LSD); `split_dataset` turns it into the model's inputs (the evaluation transform) and labels.
2. `iter_predictions` / `collect_predictions`: the model's answers (`affect_scores`) over a loader, batch by batch
   and in order (memory holds the answers, never the images), with the labels beside them. In training,
   `gather=accelerator.gather_for_metrics` joins the processes' shares.
3. `score_predictions` (the ABAW scores of a track, with AU thresholds fitted on the split) and
   `metrics.classification_scores` (macro F1 and accuracy of a class list) compute the scores.
`evaluate_model` does all three for one model and one split.
"""

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from datasets import Dataset
from torch.utils.data import DataLoader

from .data import AbawMtlTorchDataset, AffectImageTransform, ImageDataset, class_label, load_abaw_mtl
from .data.abaw_lsd import load_abaw_lsd
from .data.abaw_tracks import load_abaw_track
from .data.frame_features import WindowDataset, extract_frame_features, track_windows
from .labels import (
    ABAW_EXPRESSIONS,
    LSD_EXPRESSIONS,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
)
from .metrics import ABAW_TASK_SCORES, abaw_mtl_score, abaw_task_scores, classification_scores, fit_au_thresholds
from .modeling.pipeline_affect import affect_scores
from .models import TEMPORAL_MODEL_TYPE, load_frame_model, weights_sha256


EVALUATION_TRACKS = ("mtl", "va", "expr", "au", "lsd")
TRACK_TASKS = {"mtl": ("va", "expr", "au"), "va": ("va",), "expr": ("expr",), "au": ("au",), "lsd": ("lsd",)}
# The label column of each task, and the score that selects a model for each track.
TASK_LABELS = {"va": "valence_arousal", "expr": "expression", "au": "action_units", "lsd": "expression"}
TRACK_SELECTION = {"mtl": "P_MTL", **ABAW_TASK_SCORES, "lsd": "f1_macro"}
MISSING_CODES = {"valence_arousal": MISSING_VALENCE_AROUSAL, "expression": MISSING_EXPRESSION,
                 "action_units": MISSING_ACTION_UNIT}  # fmt: skip

# The model's answers kept for scoring, under the names of the labels they answer.
PREDICTED = {"valence_arousal": "valence_arousal", "expression_probabilities": "expression",
             "au_probabilities": "action_units"}  # fmt: skip
# A batch's labels under the same names (a classifier's batches call theirs `labels`).
LABELLED = {"valence_arousal": "valence_arousal", "expression": "expression", "labels": "expression",
            "action_units": "action_units"}  # fmt: skip


def check_track(track: str) -> None:
    if track not in EVALUATION_TRACKS:
        raise ValueError(f"unknown track {track!r}; expected one of {', '.join(EVALUATION_TRACKS)}")


def load_split(
    data_dir: str | os.PathLike, track: str, split: str, image_dir: str | os.PathLike | None = None
) -> Dataset:
    """The track's `split` ("train", "validation"; "test" for mtl and lsd) with the columns of its reader."""
    check_track(track)
    if track == "mtl":
        return load_abaw_mtl(data_dir, split, image_dir=image_dir)
    if track == "lsd":
        return load_abaw_lsd(data_dir, split, image_dir=image_dir)
    return load_abaw_track(data_dir, track, split)


def split_dataset(split: Dataset, track: str, image_size: int) -> torch.utils.data.Dataset:
    """A split as the model's evaluation inputs (resize and normalise, no augmentation) with its labels."""
    check_track(track)
    if track == "lsd":
        return ImageDataset(split, AffectImageTransform(image_size, train=False), labels=class_label())
    return AbawMtlTorchDataset(split, image_size=image_size, train=False)


def check_model_for_track(config: Any, track: str, name: str | os.PathLike) -> None:
    """A model that cannot answer the track is refused before any image is read."""
    if track in ("mtl", "va", "au") and not hasattr(config, "au_thresholds"):
        raise ValueError(f"{name} is a {config.model_type} model: the {track.upper()} track needs an EMMA")
    if track == "lsd" and config.num_labels != len(LSD_EXPRESSIONS):
        raise ValueError(f"{name} predicts {config.num_labels} classes: the LSD track needs 6")
    if track == "expr":
        labels = [config.id2label[i] for i in range(config.num_labels)]
        if labels != list(ABAW_EXPRESSIONS):
            raise ValueError(f"{name} predicts {labels}: the expr track needs the ABAW order {ABAW_EXPRESSIONS}")


Gather = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@torch.no_grad()
def iter_predictions(
    model, dataloader, gather: Gather | None = None, forward: Callable | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Per batch, in the loader's order: the model's answers (`valence_arousal`, `expression` probabilities,
    `action_units` probabilities, those it has) and the batch's labels (`reference_<name>`), float, on the CPU.

    `model` is a torch model (also one prepared by Accelerate) or an ONNX model (`affect_hf.models`); its inputs
    are moved to its device and dtype here, so the loader may be a plain one. `forward(model, batch)` runs a model
    whose inputs are not pixels (the temporal model's windows); a batch with a `mask` (B x T windows of frames) is
    answered per frame, its valid frames only, in order, after gathering.
    """
    model.eval()
    inner = getattr(model, "module", model)  # a distributed wrapper holds the model
    for batch in dataloader:
        if forward is None:
            pixel_values = send_to_device(batch["pixel_values"], inner.device).to(inner.dtype)
            outputs = model(pixel_values=pixel_values)
        else:
            outputs = forward(model, batch)
        scores = affect_scores(outputs, inner.config)
        columns = {PREDICTED[name]: value for name, value in scores.items() if name in PREDICTED}
        columns.update({f"reference_{LABELLED[name]}": batch[name] for name in LABELLED if name in batch})
        columns = {name: value.float() for name, value in columns.items()}
        if "mask" in batch:
            columns["mask"] = batch["mask"].float()
        if gather is not None:
            columns = gather(columns)
        if "mask" in columns:
            valid = columns.pop("mask").bool()
            columns = {name: value[valid] for name, value in columns.items()}
        yield {name: value.cpu() for name, value in columns.items()}


def collect_predictions(
    model, dataloader, gather: Gather | None = None, forward: Callable | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`iter_predictions` over the whole loader: (answers, labels) as arrays in dataset order, labels as ints
    except valence/arousal."""
    collected: dict[str, list[np.ndarray]] = {}
    for columns in iter_predictions(model, dataloader, gather, forward):
        for name, value in columns.items():
            collected.setdefault(name, []).append(value.numpy())
    arrays = {name: np.concatenate(values) for name, values in collected.items()}
    predictions = {name: value for name, value in arrays.items() if not name.startswith("reference_")}
    references = {
        name.removeprefix("reference_"): value if name == "reference_valence_arousal" else value.astype(np.int64)
        for name, value in arrays.items()
        if name.startswith("reference_")
    }
    return predictions, references


def score_predictions(
    predictions: dict[str, np.ndarray], references: dict[str, np.ndarray], au_thresholds: list[float], track: str
) -> tuple[dict[str, float], np.ndarray]:
    """The ABAW scores of an EMMA's answers on a track ("mtl": P_VA, P_EXPR, P_AU, P_MTL; "va", "expr", "au": that
    task's), at the model's AU thresholds and at thresholds fitted on this split (`*_fitted_thresholds`).
    Returns the scores and the fitted thresholds."""
    fitted = fit_au_thresholds(predictions["action_units"], references["action_units"])
    if track == "mtl":
        scores = abaw_mtl_score(predictions, references, au_thresholds=au_thresholds)
        fitted_scores = abaw_mtl_score(predictions, references, au_thresholds=fitted)
        scores["P_AU_fitted_thresholds"] = fitted_scores["P_AU"]
        scores["P_MTL_fitted_thresholds"] = fitted_scores["P_MTL"]
    else:
        labels = TASK_LABELS[track]
        scores = abaw_task_scores(track, predictions[labels], references[labels], au_thresholds)
        if track == "au":
            fitted_scores = abaw_task_scores(track, predictions[labels], references[labels], fitted)
            scores["P_AU_fitted_thresholds"] = fitted_scores["P_AU"]
    return {key: float(value) for key, value in scores.items()}, fitted


def evaluate_classifier(
    model, dataloader, class_names: tuple[str, ...], gather: Gather | None = None
) -> dict[str, float]:
    """Macro F1, accuracy and per-class F1 of a classifier's answers against the batches' labels."""
    predictions, references = collect_predictions(model, dataloader, gather)
    return classification_scores(predictions["expression"], references["expression"], class_names)


def labelled(column: str, values: np.ndarray) -> np.ndarray:
    """Whether each value is a label rather than the column's missing code."""
    return np.asarray(values) != MISSING_CODES[column]


def unavailable_tasks(references: dict[str, np.ndarray], track: str) -> dict[str, str]:
    """The track's tasks without a single valid label in the split, with the reason."""
    missing = {}
    for task in TRACK_TASKS[track]:
        column = TASK_LABELS[task]
        if not labelled(column, references[column]).any():
            missing[task] = f"no valid {column.replace('_', ' ')} label in this split"
    return missing


@dataclass
class ModelEvaluation:
    """One model on one split: its answers and the labels (arrays in order), the scores, and for EMMA the AU
    thresholds fitted on the split; `unavailable` names the track's tasks the split has no labels for."""

    predictions: dict[str, np.ndarray]
    references: dict[str, np.ndarray]
    scores: dict[str, float]
    fitted_au_thresholds: np.ndarray | None
    unavailable: dict[str, str]


def window_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """A temporal model on a batch of windows (`forward` of `collect_predictions`)."""
    device = getattr(model, "module", model).device
    batch = send_to_device(batch, device)
    return model(features=batch["features"], scores=batch["scores"], positions=batch["positions"], mask=batch["mask"])


def evaluation_windows(frames: Dataset, span: int) -> WindowDataset:
    """A split's frame features (`data.frame_features`) in windows of `span` frames side by side: every frame once,
    in order, as a temporal model is scored."""
    return WindowDataset(frames, track_windows(frames, span, span, each_frame_once=True), span)


def evaluate_model(
    model, split: Dataset, track: str, batch_size: int = 64, num_workers: int = 0, name: str = "the model",
    cache_dir: str | os.PathLike | None = None, frame_model: str | os.PathLike | None = None, strict: bool = False,
) -> ModelEvaluation:  # fmt: skip
    """Score a loaded model (`affect_hf.models.load_affect_model`) on a split of `track`, in order.

    A temporal model is scored on its frame model's features (`load_frame_model`: the one it names, or
    `frame_model`; `strict` refuses other weights), extracted into `cache_dir` (default: a temporary folder), in
    windows of its training length, every frame once."""
    check_track(track)
    if model.config.model_type == TEMPORAL_MODEL_TYPE:
        frame = load_frame_model(model, device=model.device, frame_model=frame_model, strict=strict, dtype="fp32")
        check_model_for_track(frame.config, track, name)
        with tempfile.TemporaryDirectory(prefix="affect-hf-features-") as temporary:
            frame_name = str(frame_model or model.config.frame_model)  # a Hub id names itself (no weights hash)
            frames = extract_frame_features(frame, split, cache_dir or temporary,
                                            weights_sha256(frame_name) or frame_name, batch_size)  # fmt: skip
            loader = DataLoader(evaluation_windows(frames, model.config.window_frames or 1), batch_size=batch_size,
                                shuffle=False)  # fmt: skip
            predictions, references = collect_predictions(model, loader, forward=window_forward)
    else:
        check_model_for_track(model.config, track, name)
        dataset = split_dataset(split, track, model.config.image_size)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        predictions, references = collect_predictions(model, loader)
    missing = unavailable_tasks(references, track)
    if track == "lsd":
        scores = classification_scores(predictions["expression"], references["expression"], LSD_EXPRESSIONS)
        return ModelEvaluation(predictions, references, scores, None, missing)
    scores, fitted = score_predictions(predictions, references, model.config.au_thresholds, track)
    return ModelEvaluation(predictions, references, scores, fitted, missing)


__all__ = [
    "EVALUATION_TRACKS",
    "TASK_LABELS",
    "TRACK_SELECTION",
    "TRACK_TASKS",
    "ModelEvaluation",
    "check_model_for_track",
    "check_track",
    "collect_predictions",
    "evaluate_classifier",
    "evaluate_model",
    "evaluation_windows",
    "iter_predictions",
    "window_forward",
    "labelled",
    "load_split",
    "score_predictions",
    "split_dataset",
    "unavailable_tasks",
]
