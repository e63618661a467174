"""`evaluate` module for the ABAW multi-task score; the formulas live in `affect_hf.metrics.abaw`.

Load it with `affect_hf.metrics.load_abaw_mtl_metric()` (works offline). `evaluate` copies this script
into its module cache, so it imports the package absolutely and holds no formula of its own.
"""

from collections.abc import Mapping

import datasets
import evaluate
import numpy as np

from affect_hf.metrics.abaw import abaw_mtl_score


_DESCRIPTION = """\
ABAW multi-task score P_MTL = P_VA + P_EXPR + P_AU (ABAW4 MTL challenge): P_VA is the mean concordance
correlation coefficient of valence and arousal, P_EXPR the macro F1 over the 8 expressions, P_AU the
mean binary F1 over the 12 action units. Each term counts only the samples whose label for that task is
valid (-5 marks missing valence/arousal, -1 a missing expression or AU).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one dict per sample with `valence_arousal` (2 floats), `expression` (a class index, or
        8 scores reduced by argmax) and `action_units` (12 probabilities or 0/1). A dict of N-row arrays
        with those keys is accepted too.
    references: same keys; `expression` an int and `action_units` 12 ints, with the missing codes.
    au_thresholds: None (0.5), one float or 12 floats applied as `probability >= threshold`.
Returns:
    P_MTL, P_VA, P_EXPR, P_AU, ccc_valence, ccc_arousal, f1_AU1 ... f1_AU26 and the valid-sample counts.
Examples:
    >>> from affect_hf.metrics import load_abaw_mtl_metric
    >>> metric = load_abaw_mtl_metric()
    >>> reference = {"valence_arousal": [0.1, -0.2], "expression": 3, "action_units": [0] * 11 + [1]}
    >>> prediction = {"valence_arousal": [0.0, -0.1], "expression": 3, "action_units": [0.2] * 11 + [0.9]}
    >>> round(metric.compute(predictions=[prediction] * 2, references=[reference] * 2)["P_EXPR"], 3)
    0.125
"""

_CITATION = """\
@inproceedings{li2022affective,
  title={Affective Behaviour Analysis Using Pretrained Model with Facial Prior},
  author={Li, Yifan and Sun, Haomiao and Liu, Zhaori and Han, Hu and Shan, Shiguang},
  booktitle={ECCV 2022 Workshops},
  year={2022}
}
"""

_TASKS = ("valence_arousal", "expression", "action_units")


def _features(expression_prediction) -> datasets.Features:
    return datasets.Features(
        {
            "predictions": {
                "valence_arousal": datasets.Sequence(datasets.Value("float64"), length=2),
                "expression": expression_prediction,
                "action_units": datasets.Sequence(datasets.Value("float64"), length=12),
            },
            "references": {
                "valence_arousal": datasets.Sequence(datasets.Value("float64"), length=2),
                "expression": datasets.Value("int64"),
                "action_units": datasets.Sequence(datasets.Value("int64"), length=12),
            },
        }
    )


def _rows(columns):
    """A dict of N-row arrays -> N per-sample dicts, the shape `evaluate` stores."""
    if not isinstance(columns, Mapping):
        return columns
    arrays = {task: np.asarray(columns[task]).tolist() for task in _TASKS}
    return [dict(zip(_TASKS, values, strict=True)) for values in zip(*(arrays[task] for task in _TASKS), strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AbawMtl(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # The first sample picks the option: expression predicted as an index, or as 8 scores.
            features=[
                _features(datasets.Value("int64")),
                _features(datasets.Sequence(datasets.Value("float64"), length=8)),
            ],
            reference_urls=["https://arxiv.org/abs/2207.11679"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch: a list of per-sample dicts, or a dict of N-row arrays as `abaw_mtl_score` takes."""
        super().add_batch(predictions=_rows(predictions), references=_rows(references), **kwargs)

    def _compute(self, predictions, references, au_thresholds=None):
        def columns(samples):
            return {task: np.asarray([sample[task] for sample in samples]) for task in _TASKS}

        return abaw_mtl_score(columns(predictions), columns(references), au_thresholds=au_thresholds)
