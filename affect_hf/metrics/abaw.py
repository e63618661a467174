"""ABAW scores (CCC, F1s, P_MTL) and AU-threshold fitting, in numpy.

The CCC formula lives once, in `modeling.losses`; here it is only wrapped. F1 is computed from
confusion counts by hand for one reason: threshold fitting needs it for many thresholds x 12 AUs in
one vectorised call. The tests check every score against scikit-learn.

Every task is scored only over samples whose label for that task is valid (ABAW missing codes: -5
for valence/arousal, -1 for expression and for each AU). The same rows are dropped from the
predictions, so whatever a model predicts for an unlabelled sample never counts.
"""

import warnings
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import numpy as np
import torch

from affect_hf.labels import (
    ACTION_UNITS,
    LABEL_RULES,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
    NUM_ACTION_UNITS,
    NUM_EXPRESSIONS,
    valid_labels,
)

from ..modeling.losses import concordance_correlation_coefficient


ArrayLike = Union[np.ndarray, Sequence, torch.Tensor]
Thresholds = Union[None, float, ArrayLike]

DEFAULT_AU_THRESHOLD = 0.5
# Step 0.01: fine enough for F1, small enough to hold (candidates x samples x 12) booleans at once.
DEFAULT_THRESHOLD_CANDIDATES = np.round(np.linspace(0.05, 0.95, 91), 2)


def _as_numpy(values: ArrayLike, name: str, ndim: int, width: Optional[int] = None) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != ndim or (width is not None and array.shape[-1] != width):
        expected = f"(N, {width})" if width is not None else "(N,)"
        raise ValueError(f"`{name}` must have shape {expected}, got {array.shape}.")
    return array


def _check_same_length(name: str, predictions: np.ndarray, references: np.ndarray) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"`{name}` predictions and references have different numbers of samples: "
            f"{len(predictions)} vs {len(references)}."
        )


def _check_finite(values: np.ndarray, name: str) -> None:
    """Predictions that count must be numbers: a NaN would silently score as a wrong (or right) answer."""
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"`{name}` holds NaN or infinite values where the labels are valid.")


def _check_probabilities(probabilities: np.ndarray, name: str) -> None:
    # Thresholds live in probability space; comparing them with logits was a defect of the original code.
    _check_finite(probabilities, name)
    if probabilities.size and (probabilities.min() < 0 or probabilities.max() > 1):
        raise ValueError(f"`{name}` must be probabilities in [0, 1] (apply a sigmoid to logits) or 0/1 decisions.")


def _check_references(task: str, references: np.ndarray) -> None:
    valid = valid_labels(task, references)
    if not valid.all():
        raise ValueError(f"{task} references: {LABEL_RULES[task]}; found {references[~valid][:5].tolist()}.")


def _valid_action_units(references: np.ndarray) -> np.ndarray:
    _check_references("au", references)
    return references != MISSING_ACTION_UNIT


def _warn_no_valid(task: str) -> None:
    warnings.warn(f"No sample has a valid {task} label: its score is NaN.", UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------------
# Building blocks


def ccc(predictions: ArrayLike, references: ArrayLike) -> float:
    """Concordance correlation coefficient of two 1-D arrays (population statistics, float64)."""
    predictions = _as_numpy(predictions, "predictions", ndim=1)
    references = _as_numpy(references, "references", ndim=1)
    _check_same_length("ccc", predictions, references)
    value = concordance_correlation_coefficient(
        torch.from_numpy(predictions.astype(np.float64)), torch.from_numpy(references.astype(np.float64))
    )
    return float(value)


def f1_from_counts(true_positives: np.ndarray, false_positives: np.ndarray, false_negatives: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN), elementwise; 0 where the denominator is 0 (sklearn's `zero_division=0`)."""
    true_positives = np.asarray(true_positives, dtype=np.float64)
    denominator = 2 * true_positives + false_positives + false_negatives
    return np.divide(
        2 * true_positives, denominator, out=np.zeros(np.shape(denominator), dtype=np.float64), where=denominator > 0
    )


def multiclass_f1_scores(predictions: ArrayLike, references: ArrayLike, num_classes: int) -> np.ndarray:
    """Per-class one-vs-rest F1 of class indices, shape (num_classes,); a class absent from both gets 0."""
    predictions = np.asarray(predictions, dtype=np.int64)
    references = np.asarray(references, dtype=np.int64)
    true_positives = np.bincount(references[predictions == references], minlength=num_classes)
    predicted_counts = np.bincount(predictions, minlength=num_classes)
    reference_counts = np.bincount(references, minlength=num_classes)
    return f1_from_counts(true_positives, predicted_counts - true_positives, reference_counts - true_positives)


def binary_f1_scores(decisions: ArrayLike, references: ArrayLike) -> np.ndarray:
    """Per-column binary F1 of 0/1 decisions (..., N, K) against labels (N, K) where -1 means missing.

    Leading axes of `decisions` broadcast, so one call scores many thresholds: (C, N, K) -> (C, K).
    Missing labels are left out of that column's counts only.
    """
    decisions = np.asarray(decisions).astype(bool)
    references = np.asarray(references)
    positive = references == 1
    negative = references == 0
    true_positives = (decisions & positive).sum(axis=-2)
    false_positives = (decisions & negative).sum(axis=-2)
    false_negatives = (~decisions & positive).sum(axis=-2)
    return f1_from_counts(true_positives, false_positives, false_negatives)


def _au_thresholds(au_thresholds: Thresholds) -> np.ndarray:
    thresholds = np.asarray(DEFAULT_AU_THRESHOLD if au_thresholds is None else au_thresholds, dtype=np.float64)
    if thresholds.ndim == 0:
        thresholds = np.full(NUM_ACTION_UNITS, thresholds)
    if thresholds.shape != (NUM_ACTION_UNITS,):
        raise ValueError(
            f"`au_thresholds` must be None, a float or {NUM_ACTION_UNITS} floats, got shape {thresholds.shape}."
        )
    if not (np.isfinite(thresholds).all() and (thresholds >= 0).all() and (thresholds <= 1).all()):
        raise ValueError(f"`au_thresholds` must be probabilities in [0, 1], got {thresholds.tolist()}.")
    return thresholds


# ---------------------------------------------------------------------------------------------------
# Per-task scores (each over its valid samples only)


def _valence_arousal_cccs(predictions: ArrayLike, references: ArrayLike) -> tuple[float, float, int]:
    predictions = _as_numpy(predictions, "valence_arousal predictions", ndim=2, width=2)
    references = _as_numpy(references, "valence_arousal references", ndim=2, width=2)
    _check_same_length("valence_arousal", predictions, references)
    _check_references("va", references)
    # A sample counts only when both valence and arousal are labelled (ABAW marks them missing together).
    valid = np.all(references != MISSING_VALENCE_AROUSAL, axis=1)
    _check_finite(predictions[valid], "valence_arousal predictions")
    num_valid = int(valid.sum())
    if num_valid == 0:
        _warn_no_valid("valence/arousal")
        return float("nan"), float("nan"), 0
    valence, arousal = (ccc(predictions[valid, i], references[valid, i]) for i in range(2))
    return valence, arousal, num_valid


def _expression_f1s(predictions: ArrayLike, references: ArrayLike) -> tuple[np.ndarray, int]:
    predictions_are_scores = np.ndim(predictions) == 2
    predictions = _as_numpy(
        predictions,
        "expression predictions (scores)" if predictions_are_scores else "expression predictions (class indices)",
        ndim=2 if predictions_are_scores else 1,
        width=NUM_EXPRESSIONS if predictions_are_scores else None,
    )
    references = _as_numpy(references, "expression references", ndim=1)
    _check_same_length("expression", predictions, references)
    valid = references != MISSING_EXPRESSION
    num_valid = int(valid.sum())
    if num_valid == 0:
        _warn_no_valid("expression")
        return np.full(NUM_EXPRESSIONS, np.nan), 0
    return _class_f1s(predictions[valid], references[valid], NUM_EXPRESSIONS, "expression"), num_valid


def _class_f1s(predictions: np.ndarray, references: np.ndarray, num_classes: int, task: str) -> np.ndarray:
    """Per-class F1 of labelled rows: predictions are indices or (N, classes) scores reduced by argmax."""
    if predictions.ndim == 2:
        _check_finite(predictions, f"{task} predictions")
        predictions = predictions.argmax(axis=1)
    for name, values in (("predictions", predictions), ("references", references)):
        if not np.all(np.isin(values, np.arange(num_classes))):
            raise ValueError(f"`{task}` {name} must be class indices in [0, {num_classes}) where labelled.")
    return multiclass_f1_scores(predictions, references, num_classes)


def _action_unit_f1s(
    predictions: ArrayLike, references: ArrayLike, au_thresholds: Thresholds
) -> tuple[np.ndarray, int]:
    predictions = _as_numpy(predictions, "action_units predictions", ndim=2, width=NUM_ACTION_UNITS).astype(np.float64)
    references = _as_numpy(references, "action_units references", ndim=2, width=NUM_ACTION_UNITS)
    _check_same_length("action_units", predictions, references)
    valid = _valid_action_units(references)
    _check_probabilities(predictions[valid], "action_units predictions")
    decisions = predictions >= _au_thresholds(au_thresholds)
    f1 = binary_f1_scores(decisions, references)
    per_unit_counts = valid.sum(axis=0)
    for name in np.asarray(ACTION_UNITS)[per_unit_counts == 0]:
        _warn_no_valid(f"action unit {name}")
    f1[per_unit_counts == 0] = np.nan
    return f1, int(valid.any(axis=1).sum())


def va_score(predictions: ArrayLike, references: ArrayLike) -> float:
    """P_VA: mean CCC of valence and arousal over samples with both labels valid (N x 2 arrays)."""
    valence, arousal, _ = _valence_arousal_cccs(predictions, references)
    return (valence + arousal) / 2


def expression_score(predictions: ArrayLike, references: ArrayLike) -> float:
    """P_EXPR: macro F1 over the 8 ABAW classes, on samples whose expression label is not -1.

    `predictions` are class indices (N,) or scores (N, 8) reduced by argmax.
    """
    f1, _ = _expression_f1s(predictions, references)
    return float(f1.mean())


def au_score(predictions: ArrayLike, references: ArrayLike, au_thresholds: Thresholds = None) -> float:
    """P_AU: mean over the 12 AUs of binary F1, each AU over the samples where its label is not -1.

    `predictions` are probabilities (or 0/1) of shape (N, 12); `prob >= threshold` is a positive.
    """
    f1, _ = _action_unit_f1s(predictions, references, au_thresholds)
    return float(f1.mean())


def abaw_mtl_score(
    predictions: Mapping[str, ArrayLike], references: Mapping[str, ArrayLike], au_thresholds: Thresholds = None
) -> dict[str, float]:
    """The ABAW multi-task score P_MTL = P_VA + P_EXPR + P_AU, with its parts.

    Both mappings hold `valence_arousal` (N x 2, -5 missing), `expression` (references: N ints, -1
    missing; predictions: N indices or N x 8 scores) and `action_units` (references: N x 12 ints, -1
    missing; predictions: N x 12 probabilities or 0/1). `au_thresholds` is None (0.5), one float or 12.
    A task without any valid label scores NaN (so does P_MTL) and a warning names it; so does a single
    AU without any valid label (its F1 and P_AU are NaN), rather than silently averaging over fewer AUs.
    """
    for name, mapping in (("predictions", predictions), ("references", references)):
        missing = {"valence_arousal", "expression", "action_units"} - set(mapping)
        if missing:
            raise ValueError(f"`{name}` lacks the keys {sorted(missing)}.")

    sample_counts = {len(predictions[key]) for key in ("valence_arousal", "expression", "action_units")}
    if len(sample_counts) > 1:
        raise ValueError(f"The tasks' predictions have different numbers of samples: {sorted(sample_counts)}.")

    va = abaw_task_scores("va", predictions["valence_arousal"], references["valence_arousal"])
    expression = abaw_task_scores("expr", predictions["expression"], references["expression"])
    au = abaw_task_scores("au", predictions["action_units"], references["action_units"], au_thresholds)
    return {
        "P_MTL": va["P_VA"] + expression["P_EXPR"] + au["P_AU"],
        "P_VA": va["P_VA"],
        "P_EXPR": expression["P_EXPR"],
        "P_AU": au["P_AU"],
        "ccc_valence": va["ccc_valence"],
        "ccc_arousal": va["ccc_arousal"],
        **{name: value for name, value in au.items() if name.startswith("f1_")},
        "num_samples_valence_arousal": va["num_samples_valence_arousal"],
        "num_samples_expression": expression["num_samples_expression"],
        "num_samples_action_units": au["num_samples_action_units"],
    }


ABAW_TASK_SCORES = {"va": "P_VA", "expr": "P_EXPR", "au": "P_AU"}


def abaw_task_scores(
    task: str, predictions: ArrayLike, references: ArrayLike, au_thresholds: Thresholds = None
) -> dict[str, float]:
    """One ABAW task's score with its parts: a uni-task track's result, and a term of P_MTL.

    "va": P_VA, ccc_valence, ccc_arousal (N x 2 arrays); "expr": P_EXPR (references N ints, predictions N indices
    or N x 8 scores); "au": P_AU and each AU's F1 (N x 12; `au_thresholds` as in `abaw_mtl_score`). Each counts
    only the samples whose label is valid; a task without any scores NaN, with a warning.
    """
    if task == "va":
        valence, arousal, num_samples = _valence_arousal_cccs(predictions, references)
        return {
            "P_VA": (valence + arousal) / 2,
            "ccc_valence": valence,
            "ccc_arousal": arousal,
            "num_samples_valence_arousal": num_samples,
        }
    if task == "expr":
        f1, num_samples = _expression_f1s(predictions, references)
        return {"P_EXPR": float(f1.mean()), "num_samples_expression": num_samples}
    if task == "au":
        f1, num_samples = _action_unit_f1s(predictions, references, au_thresholds)
        return {
            "P_AU": float(f1.mean()),
            **{f"f1_{name}": float(value) for name, value in zip(ACTION_UNITS, f1, strict=True)},
            "num_samples_action_units": num_samples,
        }
    raise ValueError(f"unknown ABAW task {task!r}; expected one of {', '.join(ABAW_TASK_SCORES)}")


def fit_au_thresholds(
    probabilities: ArrayLike, references: ArrayLike, candidates: Optional[ArrayLike] = None
) -> np.ndarray:
    """Per-AU decision thresholds maximising each AU's F1 on its valid samples (fit on validation data).

    All candidates are scored at once. Among equally good candidates the one nearest 0.5 wins (then the
    smaller), so a flat F1 curve keeps the default; an AU without valid samples keeps 0.5.
    """
    probabilities = _as_numpy(probabilities, "probabilities", ndim=2, width=NUM_ACTION_UNITS).astype(np.float64)
    references = _as_numpy(references, "references", ndim=2, width=NUM_ACTION_UNITS)
    _check_same_length("fit_au_thresholds", probabilities, references)
    valid = _valid_action_units(references)
    _check_probabilities(probabilities[valid], "probabilities")
    candidates = np.sort(np.asarray(DEFAULT_THRESHOLD_CANDIDATES if candidates is None else candidates, np.float64))
    if candidates.ndim != 1 or candidates.size == 0:
        raise ValueError("`candidates` must be a non-empty 1-D sequence of thresholds.")
    if not (np.isfinite(candidates).all() and candidates[0] >= 0 and candidates[-1] <= 1):
        raise ValueError("`candidates` must be probabilities in [0, 1].")

    f1 = binary_f1_scores(probabilities[None] >= candidates[:, None, None], references)  # (C, 12)
    is_best = f1 == f1.max(axis=0, keepdims=True)
    closeness = np.where(is_best, -np.abs(candidates - DEFAULT_AU_THRESHOLD)[:, None], -np.inf)
    thresholds = candidates[closeness.argmax(axis=0)]
    thresholds[~valid.any(axis=0)] = DEFAULT_AU_THRESHOLD
    return thresholds


def classification_scores(
    predictions: ArrayLike, references: ArrayLike, class_names: Sequence[str]
) -> dict[str, float]:
    """Macro F1 (the ABAW EXPR and LSD score), accuracy and per-class F1 of a single-label task.

    `predictions` are class indices (N,) or scores (N, classes); references are class indices with
    `MISSING_EXPRESSION` (-1) for unlabelled rows, which are left out. NaN with a warning when no row is labelled.
    """
    num_classes = len(class_names)
    predictions = np.asarray(predictions.detach().cpu() if isinstance(predictions, torch.Tensor) else predictions)
    references = _as_numpy(references, "references", ndim=1)
    _check_same_length("classification", predictions, references)
    if predictions.ndim == 2 and predictions.shape[1] != num_classes:
        raise ValueError(f"`predictions` must have {num_classes} scores per row, got {predictions.shape[1]}.")
    valid = references != MISSING_EXPRESSION
    if not valid.any():
        _warn_no_valid("class")
        return {"f1_macro": float("nan"), "accuracy": float("nan"), "num_samples": 0}
    predictions, references = predictions[valid], references[valid].astype(np.int64)
    f1 = _class_f1s(predictions, references, num_classes, "classification")
    indices = predictions.argmax(axis=1) if predictions.ndim == 2 else predictions
    return {
        "f1_macro": float(f1.mean()),
        "accuracy": float((indices == references).mean()),
        **{f"f1_{name}": float(value) for name, value in zip(class_names, f1, strict=True)},
        "num_samples": int(valid.sum()),
    }
