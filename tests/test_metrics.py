"""ABAW metrics against scikit-learn and a CCC written out here, on data with missing labels."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from affect_hf.labels import (
    ACTION_UNITS,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
    NUM_ACTION_UNITS,
    NUM_EXPRESSIONS,
)
from affect_hf.metrics import (
    abaw_mtl_score,
    au_score,
    ccc,
    expression_score,
    fit_au_thresholds,
    load_abaw_mtl_metric,
    va_score,
)


def numpy_ccc(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    covariance = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * covariance / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def make_mtl_data(seed=0, num_samples=300, expression_as_logits=False):
    """Labels with every kind of missing entry, and garbage predictions wherever a label is missing."""
    rng = np.random.default_rng(seed)
    va_references = rng.uniform(-1, 1, (num_samples, 2))
    va_predictions = 0.6 * va_references + rng.normal(0, 0.3, (num_samples, 2)) + 0.1
    va_references[rng.random(num_samples) < 0.2] = MISSING_VALENCE_AROUSAL
    only_valence_missing = rng.random(num_samples) < 0.1  # such a row must not count for arousal either
    va_references[only_valence_missing, 0] = MISSING_VALENCE_AROUSAL
    va_predictions[np.any(va_references == MISSING_VALENCE_AROUSAL, axis=1)] = np.nan

    expression_references = rng.integers(0, NUM_EXPRESSIONS, num_samples)
    expression_predictions = np.where(
        rng.random(num_samples) < 0.5, expression_references, rng.integers(0, NUM_EXPRESSIONS, num_samples)
    )
    expression_missing = rng.random(num_samples) < 0.2
    expression_references[expression_missing] = MISSING_EXPRESSION
    if expression_as_logits:
        logits = rng.random((num_samples, NUM_EXPRESSIONS)) + 5 * np.eye(NUM_EXPRESSIONS)[expression_predictions]
        logits[expression_missing] = np.nan
        expression_output = logits
    else:
        expression_output = expression_predictions.copy()
        expression_output[expression_missing] = 99  # out of range: raises if not masked

    au_references = rng.integers(0, 2, (num_samples, NUM_ACTION_UNITS))
    au_probabilities = np.clip(0.35 * au_references + rng.uniform(0, 0.65, (num_samples, NUM_ACTION_UNITS)), 0, 1)
    au_missing = rng.random((num_samples, NUM_ACTION_UNITS)) < 0.15
    au_references[au_missing] = MISSING_ACTION_UNIT
    au_probabilities[au_missing] = 7.0  # not a probability: raises if not masked

    predictions = {
        "valence_arousal": va_predictions,
        "expression": expression_output,
        "action_units": au_probabilities,
    }
    references = {
        "valence_arousal": va_references,
        "expression": expression_references,
        "action_units": au_references,
    }
    return predictions, references, expression_predictions


def sklearn_au_f1s(decisions, references):
    return [
        f1_score(references[valid, k], decisions[valid, k], zero_division=0)
        for k, valid in enumerate((references != MISSING_ACTION_UNIT).T)
    ]


def test_ccc_matches_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    y = 0.5 * x + rng.normal(0.3, 0.8, size=500)
    assert ccc(x, y) == pytest.approx(numpy_ccc(x, y), abs=1e-12)
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x - x.mean(), x.mean() - x) == pytest.approx(-1.0)
    assert ccc(x, x + 1) == pytest.approx(numpy_ccc(x, x + 1)) and ccc(x, x + 1) < 1  # a bias is penalised


def test_va_score_counts_only_rows_with_both_labels():
    predictions, references, _ = make_mtl_data()
    valid = np.all(references["valence_arousal"] != MISSING_VALENCE_AROUSAL, axis=1)
    expected_valence = numpy_ccc(predictions["valence_arousal"][valid, 0], references["valence_arousal"][valid, 0])
    expected_arousal = numpy_ccc(predictions["valence_arousal"][valid, 1], references["valence_arousal"][valid, 1])

    result = abaw_mtl_score(predictions, references)
    assert result["ccc_valence"] == pytest.approx(expected_valence, abs=1e-12)
    assert result["ccc_arousal"] == pytest.approx(expected_arousal, abs=1e-12)
    assert result["num_samples_valence_arousal"] == valid.sum()
    assert va_score(predictions["valence_arousal"], references["valence_arousal"]) == pytest.approx(
        (expected_valence + expected_arousal) / 2, abs=1e-12
    )


@pytest.mark.parametrize("expression_as_logits", [False, True])
def test_expression_score_matches_sklearn_macro_f1(expression_as_logits):
    predictions, references, expression_indices = make_mtl_data(expression_as_logits=expression_as_logits)
    valid = references["expression"] != MISSING_EXPRESSION
    expected = f1_score(
        references["expression"][valid],
        expression_indices[valid],
        labels=list(range(NUM_EXPRESSIONS)),
        average="macro",
        zero_division=0,
    )
    assert expression_score(predictions["expression"], references["expression"]) == pytest.approx(expected, abs=1e-12)
    assert abaw_mtl_score(predictions, references)["num_samples_expression"] == valid.sum()


def test_expression_score_averages_over_all_eight_classes():
    references = np.array([0, 1, 2, 2, MISSING_EXPRESSION])
    predictions = np.array([0, 1, 3, 2, 5])
    expected = f1_score(references[:4], predictions[:4], labels=list(range(8)), average="macro", zero_division=0)
    assert expression_score(predictions, references) == pytest.approx(expected)
    assert expected == pytest.approx((1 + 1 + 2 / 3) / 8)


@pytest.mark.parametrize(
    "au_thresholds",
    [None, 0.3, np.linspace(0.2, 0.8, NUM_ACTION_UNITS)],
    ids=["default", "float", "per-au"],
)
def test_au_score_matches_sklearn_on_probabilities(au_thresholds):
    predictions, references, _ = make_mtl_data()
    probabilities, labels = predictions["action_units"], references["action_units"]
    thresholds = 0.5 if au_thresholds is None else au_thresholds
    expected = sklearn_au_f1s((probabilities >= thresholds).astype(int), labels)

    result = abaw_mtl_score(predictions, references, au_thresholds=au_thresholds)
    assert [result[f"f1_{name}"] for name in ACTION_UNITS] == pytest.approx(expected, abs=1e-12)
    assert result["P_AU"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert au_score(probabilities, labels, au_thresholds) == pytest.approx(np.mean(expected), abs=1e-12)


def test_au_score_on_binary_decisions():
    predictions, references, _ = make_mtl_data()
    decisions = (predictions["action_units"] >= 0.5).astype(np.int64)
    decisions[references["action_units"] == MISSING_ACTION_UNIT] = 1  # would be false positives if counted
    expected = np.mean(sklearn_au_f1s(decisions, references["action_units"]))
    assert au_score(decisions, references["action_units"]) == pytest.approx(expected, abs=1e-12)
    # A probability equal to the threshold is a positive, so 0/1 decisions survive any threshold in (0, 1].
    assert au_score(decisions, references["action_units"], au_thresholds=1.0) == pytest.approx(expected, abs=1e-12)


def test_mtl_score_is_the_sum_of_the_task_scores():
    predictions, references, _ = make_mtl_data(seed=3)
    result = abaw_mtl_score(predictions, references)
    assert result["P_VA"] == pytest.approx((result["ccc_valence"] + result["ccc_arousal"]) / 2)
    assert result["P_MTL"] == pytest.approx(result["P_VA"] + result["P_EXPR"] + result["P_AU"])
    assert result["num_samples_action_units"] == np.any(references["action_units"] != MISSING_ACTION_UNIT, 1).sum()
    assert 0 < result["P_MTL"] < 3


def test_fit_au_thresholds_recovers_planted_thresholds():
    rng = np.random.default_rng(4)
    probabilities = rng.uniform(0, 1, (4000, NUM_ACTION_UNITS))
    planted = np.round(np.linspace(0.15, 0.85, NUM_ACTION_UNITS), 2)
    references = (probabilities >= planted).astype(np.int64)
    references[rng.random(references.shape) < 0.1] = MISSING_ACTION_UNIT
    references[:, -1] = MISSING_ACTION_UNIT  # an AU with no label keeps the default

    fitted = fit_au_thresholds(probabilities, references)
    with pytest.warns(UserWarning, match="AU26"):
        fitted_f1 = au_score(probabilities, references, fitted)
    np.testing.assert_allclose(fitted[:-1], planted[:-1], atol=1e-9)
    assert fitted[-1] == 0.5
    assert fit_au_thresholds(probabilities, references, candidates=[0.2, 0.3])[-1] == 0.5
    assert np.isnan(fitted_f1)  # the unlabelled AU makes P_AU NaN


def test_fit_au_thresholds_beats_default_and_breaks_ties_towards_half():
    predictions, references, _ = make_mtl_data(seed=5, num_samples=1000)
    probabilities, labels = predictions["action_units"], references["action_units"]
    fitted = fit_au_thresholds(probabilities, labels)
    default_f1 = np.array(sklearn_au_f1s((probabilities >= 0.5).astype(int), labels))
    fitted_f1 = np.array(sklearn_au_f1s((probabilities >= fitted).astype(int), labels))
    assert np.all(fitted_f1 >= default_f1 - 1e-12)
    assert fitted_f1.mean() > default_f1.mean()

    # Perfectly separable with a gap: every threshold in (0.2, 0.8] is best; the nearest to 0.5 wins.
    separable = np.tile(np.array([[0.1], [0.2], [0.8], [0.9]]), (1, NUM_ACTION_UNITS))
    separable_labels = np.tile(np.array([[0], [0], [1], [1]]), (1, NUM_ACTION_UNITS))
    np.testing.assert_array_equal(fit_au_thresholds(separable, separable_labels), 0.5)
    shifted = fit_au_thresholds(separable, separable_labels, candidates=[0.3, 0.45, 0.62, 0.9])
    np.testing.assert_array_equal(shifted, 0.45)


@pytest.mark.parametrize(
    "task, bad_predictions, message",
    [
        ("action_units", lambda p: p[:, :11], "shape"),
        ("action_units", lambda p: np.where(p <= 1, p * 20 - 10, p), "probabilities"),
        ("expression", lambda p: p[:, :7], "shape"),
        ("expression", lambda p: p[:-1], "different numbers of samples"),
        ("valence_arousal", lambda p: p[:, 0], "shape"),
    ],
)
def test_bad_inputs_raise(task, bad_predictions, message):
    predictions, references, _ = make_mtl_data(expression_as_logits=True)
    predictions[task] = bad_predictions(predictions[task])
    with pytest.raises(ValueError, match=message):
        abaw_mtl_score(predictions, references)


def _first_labelled(references):
    return (
        int(np.flatnonzero(references != MISSING_EXPRESSION)[0])
        if references.ndim == 1
        else int(np.flatnonzero(np.all(references != MISSING_VALENCE_AROUSAL, axis=1))[0])
    )


@pytest.mark.parametrize("task", ["valence_arousal", "expression", "action_units"])
def test_a_nan_prediction_on_a_labelled_row_is_refused(task):
    """A NaN where the label counts would score as a wrong (or right) answer: refuse it, naming the task."""
    predictions, references, _ = make_mtl_data(expression_as_logits=True)
    row = _first_labelled(references[task]) if task != "action_units" else 0
    predictions[task] = predictions[task].astype(np.float64)
    predictions[task][row] = np.nan
    if task == "action_units":
        references[task][0] = 1
    with pytest.raises(ValueError, match=f"`{task} predictions` holds NaN"):
        abaw_mtl_score(predictions, references)


@pytest.mark.parametrize(
    "task, value, message",
    [("valence_arousal", 1.5, r"lie in \[-1, 1\] or be -5"), ("expression", 8, "class indices"),
     ("expression", -3, "class indices"), ("action_units", 2, "0, 1 or -1")],
)  # fmt: skip
def test_references_outside_their_codes_are_refused(task, value, message):
    predictions, references, _ = make_mtl_data()
    references[task][0] = value
    with pytest.raises(ValueError, match=message):
        abaw_mtl_score(predictions, references)


@pytest.mark.parametrize("thresholds", [np.nan, 1.5, -0.1, [0.5] * 11 + [np.nan]])
def test_nan_or_out_of_range_thresholds_are_refused(thresholds):
    predictions, references, _ = make_mtl_data()
    with pytest.raises(ValueError, match=r"au_thresholds.* in \[0, 1\]"):
        abaw_mtl_score(predictions, references, au_thresholds=thresholds)
    with pytest.raises(ValueError, match="candidates"):
        fit_au_thresholds(predictions["action_units"], references["action_units"], candidates=[0.2, 1.5])


def test_classification_scores_match_sklearn_and_skip_unlabelled_rows():
    from affect_hf.labels import LSD_EXPRESSIONS
    from affect_hf.metrics import classification_scores

    rng = np.random.default_rng(3)
    references = rng.integers(0, 6, 200)
    logits = rng.normal(size=(200, 6)) + 2 * np.eye(6)[references]
    references[:20] = MISSING_EXPRESSION
    logits[:20] = np.nan  # never counted
    scores = classification_scores(logits, references, LSD_EXPRESSIONS)
    predicted = logits[20:].argmax(1)
    assert scores["f1_macro"] == pytest.approx(f1_score(references[20:], predicted, average="macro"))
    assert scores["accuracy"] == pytest.approx(np.mean(predicted == references[20:]))
    per_class = f1_score(references[20:], predicted, average=None)
    assert [scores[f"f1_{name}"] for name in LSD_EXPRESSIONS] == pytest.approx(per_class)
    assert scores["num_samples"] == 180
    with pytest.raises(ValueError, match="6 scores per row"):
        classification_scores(logits[:, :5], references, LSD_EXPRESSIONS)


def test_bad_thresholds_and_missing_keys_raise():
    predictions, references, _ = make_mtl_data()
    with pytest.raises(ValueError, match="au_thresholds"):
        abaw_mtl_score(predictions, references, au_thresholds=[0.5] * 11)
    with pytest.raises(ValueError, match="expression"):
        abaw_mtl_score({k: v for k, v in predictions.items() if k != "expression"}, references)
    with pytest.raises(ValueError, match="different numbers"):
        ccc(np.zeros(3), np.zeros(4))


def test_task_without_valid_labels_is_nan_with_warning():
    predictions, references, _ = make_mtl_data()
    references["expression"][:] = MISSING_EXPRESSION
    with pytest.warns(UserWarning, match="expression"):
        result = abaw_mtl_score(predictions, references)
    assert np.isnan(result["P_EXPR"]) and np.isnan(result["P_MTL"])
    assert np.isfinite(result["P_VA"]) and np.isfinite(result["P_AU"])
    assert result["num_samples_expression"] == 0

    predictions, references, _ = make_mtl_data()
    references["valence_arousal"][:] = MISSING_VALENCE_AROUSAL
    with pytest.warns(UserWarning, match="valence/arousal"):
        assert np.isnan(abaw_mtl_score(predictions, references)["P_VA"])


def test_all_valid_data_gives_no_warning():
    predictions, references, _ = make_mtl_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        abaw_mtl_score(predictions, references)


def rows(columns, start, stop):
    return [
        {task: columns[task][i].tolist() for task in ("valence_arousal", "expression", "action_units")}
        for i in range(start, stop)
    ]


@pytest.mark.parametrize("expression_as_logits", [False, True])
def test_evaluate_module_matches_function(monkeypatch, expression_as_logits):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    predictions, references, _ = make_mtl_data(seed=6, num_samples=120, expression_as_logits=expression_as_logits)
    thresholds = np.linspace(0.3, 0.7, NUM_ACTION_UNITS)

    metric = load_abaw_mtl_metric()
    # First chunk as per-sample dicts (evaluate's own form), second as a dict of arrays.
    metric.add_batch(predictions=rows(predictions, 0, 50), references=rows(references, 0, 50))
    metric.add_batch(
        predictions={task: values[50:] for task, values in predictions.items()},
        references={task: values[50:] for task, values in references.items()},
    )
    result = metric.compute(au_thresholds=thresholds.tolist())

    expected = abaw_mtl_score(predictions, references, au_thresholds=thresholds)
    assert result.keys() == expected.keys()
    assert result == pytest.approx(expected, abs=1e-12)
    assert result["num_samples_expression"] == np.sum(references["expression"] != MISSING_EXPRESSION)
