"""ABAW metrics: plain numpy functions, and an `evaluate` module that wraps them."""

from pathlib import Path
from typing import TYPE_CHECKING

from .abaw import (
    ABAW_TASK_SCORES,
    abaw_mtl_score,
    abaw_task_scores,
    au_score,
    binary_f1_scores,
    ccc,
    classification_scores,
    expression_score,
    f1_from_counts,
    fit_au_thresholds,
    multiclass_f1_scores,
    va_score,
)


if TYPE_CHECKING:
    import evaluate

ABAW_MTL_METRIC_PATH = str(Path(__file__).resolve().parent / "abaw_mtl")


def load_abaw_mtl_metric(**kwargs) -> "evaluate.EvaluationModule":
    """`evaluate.load` of the bundled ABAW MTL module (offline: it is a local folder); kwargs go to `load`."""
    import evaluate  # heavy; only needed by those who want the `evaluate` API

    return evaluate.load(ABAW_MTL_METRIC_PATH, **kwargs)


__all__ = [
    "ABAW_MTL_METRIC_PATH",
    "ABAW_TASK_SCORES",
    "abaw_mtl_score",
    "abaw_task_scores",
    "au_score",
    "binary_f1_scores",
    "ccc",
    "classification_scores",
    "expression_score",
    "f1_from_counts",
    "fit_au_thresholds",
    "load_abaw_mtl_metric",
    "multiclass_f1_scores",
    "va_score",
]
