"""`affect-hf evaluate`: a model (or two, side by side) scored on a labelled split by `affect_hf.evaluation`, the
functions the training loop scores with, written as `scores.json` and a report a person reads (`report.html`).

The report shows, per model: the confusion matrix (counts and row-normalised), per-class F1, per-AU F1 at the
model's thresholds and at thresholds fitted on this split (both listed), predicted against true valence and
arousal (density, with the CCC), and the distributions of the scores (AU probabilities of positive and negative
frames, the winning expression's probability). A task whose labels the split lacks is reported as unavailable.
"""

import html
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import (
    TRACK_TASKS,
    ModelEvaluation,
    check_track,
    evaluate_model,
    labelled,
    load_split,
)
from .files import OutputLock, atomic_path, write_text_atomically
from .labels import ABAW_EXPRESSIONS, ACTION_UNITS, LSD_EXPRESSIONS
from .metrics import ccc, classification_scores
from .models import dtype_name, load_affect_model


def evaluate_models(
    models: list[str | os.PathLike],
    data_dir: str | os.PathLike,
    track: str,
    output_dir: str | os.PathLike,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    backend: str = "torch",
    dtype: str = "auto",
    strict: bool = False,
) -> dict[str, Any]:
    """Score each model on the track's validation split; write `scores.json`, the PNGs and `report.html`."""
    check_track(track)
    output_dir = Path(output_dir)
    with OutputLock(output_dir):
        return _evaluate_models(models, data_dir, track, output_dir, batch_size, num_workers, device, backend, dtype,
                                strict)  # fmt: skip


def _evaluate_models(models, data_dir, track: str, output_dir: Path, batch_size, num_workers, device, backend,
                     dtype, strict):  # fmt: skip
    split = load_split(data_dir, track, "validation")
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"track": track, "data_dir": str(data_dir), "num_samples": len(split), "models": {}}
    sections = []
    for number, name in enumerate(models, start=1):
        model = load_affect_model(name, backend=backend, device=device, dtype=dtype)
        with warnings.catch_warnings():  # a task without labels warns in the metric: it is reported below instead
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            # A temporal model reads its frame model's features, extracted once into the output folder.
            evaluation = evaluate_model(model, split, track, batch_size, num_workers, name=str(name),
                                        cache_dir=output_dir / "frame_features", strict=strict)  # fmt: skip
        key = f"model_{number}" if len(models) > 1 else "model"
        entry = {"path": str(name), "backend": backend, "dtype": dtype_name(model.dtype), "scores": evaluation.scores,
                 "unavailable": evaluation.unavailable}  # fmt: skip
        if evaluation.fitted_au_thresholds is not None and "au" in TRACK_TASKS[track]:  # meaningless elsewhere
            entry["au_thresholds"] = dict(zip(ACTION_UNITS, model.config.au_thresholds, strict=True))
            entry["fitted_au_thresholds"] = dict(
                zip(ACTION_UNITS, evaluation.fitted_au_thresholds.tolist(), strict=True)
            )
        results["models"][key] = entry
        figures = plot_evaluation(evaluation, track, model.config, output_dir, prefix=key)
        sections.append((key, entry, figures))
    write_text_atomically(output_dir / "scores.json", json.dumps(results, indent=2, default=float) + "\n")
    write_text_atomically(output_dir / "report.html", render_report(results, sections))
    return results


def plot_evaluation(evaluation: ModelEvaluation, track: str, config, folder: Path, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    predictions, references, missing = evaluation.predictions, evaluation.references, evaluation.unavailable
    figures = []
    classes = LSD_EXPRESSIONS if track == "lsd" else ABAW_EXPRESSIONS
    if ("expr" in TRACK_TASKS[track] or track == "lsd") and "expr" not in missing and "lsd" not in missing:
        figures.append(
            _confusion(predictions["expression"], references["expression"], classes, folder / f"{prefix}_confusion.png")
        )
        figures.append(
            _expression_confidence(predictions["expression"], classes, folder / f"{prefix}_expression_scores.png")
        )
    if "au" in TRACK_TASKS[track] and "au" not in missing:
        figures.append(_au_f1(predictions["action_units"], references["action_units"], config.au_thresholds,
                              evaluation.fitted_au_thresholds, folder / f"{prefix}_au_f1.png"))  # fmt: skip
        figures.append(_au_distributions(predictions["action_units"], references["action_units"],
                                         folder / f"{prefix}_au_scores.png"))  # fmt: skip
    if "va" in TRACK_TASKS[track] and "va" not in missing:
        figures.append(_valence_arousal(predictions["valence_arousal"], references["valence_arousal"],
                                        folder / f"{prefix}_valence_arousal.png"))  # fmt: skip
    return figures


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=100, bbox_inches="tight", format="png")
    plt.close(figure)
    return path


def _confusion(scores: np.ndarray, labels: np.ndarray, classes, path: Path) -> Path:
    """Counts and row-normalised confusion of `scores` (per-class probabilities) against labels."""
    import matplotlib.pyplot as plt

    valid = labelled("expression", labels)
    predicted, truth = scores[valid].argmax(1), labels[valid].astype(int)
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(counts, (truth, predicted), 1)
    normalised = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for axis, values, title, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        axis.imshow(values, cmap="Blues")
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, format(value, fmt), ha="center", va="center", fontsize=7,
                      color="white" if values[row, column] > values.max() / 2 else "black")  # fmt: skip
        axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(len(classes)), classes, fontsize=8)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"Confusion matrix ({title})")
    f1 = classification_scores(scores, labels, classes)
    figure.suptitle(f"macro F1 {f1['f1_macro']:.3f}, accuracy {f1['accuracy']:.3f} ({f1['num_samples']} frames)")
    return _save(figure, path)


def _expression_confidence(probabilities: np.ndarray, classes, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    axes[0].hist(probabilities.max(1), bins=30, range=(0, 1), color="tab:blue")
    axes[0].set_xlabel("probability of the predicted expression")
    axes[0].set_ylabel("frames")
    counts = np.bincount(probabilities.argmax(1), minlength=len(classes))
    axes[1].bar(range(len(classes)), counts, color="tab:orange")
    axes[1].set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    axes[1].set_ylabel("frames predicted")
    figure.suptitle("Expression scores")
    return _save(figure, path)


def _au_f1(probabilities, labels, thresholds, fitted, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from .metrics import binary_f1_scores

    at_model = binary_f1_scores(probabilities >= np.asarray(thresholds), labels)
    at_fitted = binary_f1_scores(probabilities >= np.asarray(fitted), labels)
    positions = np.arange(len(ACTION_UNITS))
    figure, axis = plt.subplots(figsize=(12, 4.5))
    axis.bar(positions - 0.2, at_model, 0.4, label=f"model's thresholds (mean F1 {np.nanmean(at_model):.3f})")
    axis.bar(positions + 0.2, at_fitted, 0.4, label=f"fitted on this split (mean F1 {np.nanmean(at_fitted):.3f})")
    labels_with_thresholds = [
        f"{name}\n{t:.2f} / {f:.2f}" for name, t, f in zip(ACTION_UNITS, thresholds, fitted, strict=True)
    ]
    axis.set_xticks(positions, labels_with_thresholds, fontsize=7)
    axis.set_ylabel("F1")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    axis.set_title("Per-AU F1 (below each AU: model's / fitted threshold)")
    return _save(figure, path)


def _au_distributions(probabilities, labels, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 6, figsize=(15, 5), sharex=True)
    for index, (axis, name) in enumerate(zip(axes.flat, ACTION_UNITS, strict=True)):
        for value, colour, label in ((1, "tab:red", "active"), (0, "tab:grey", "inactive")):
            selected = probabilities[labels[:, index] == value, index]
            if len(selected):
                axis.hist(selected, bins=20, range=(0, 1), alpha=0.6, color=colour, label=label, density=True)
        axis.set_title(name, fontsize=9)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle("AU probabilities of active and inactive frames")
    return _save(figure, path)


def _valence_arousal(predicted: np.ndarray, truth: np.ndarray, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for index, (axis, name) in enumerate(zip(axes, ("valence", "arousal"), strict=True)):
        valid = labelled("valence_arousal", truth[:, index])
        axis.hexbin(truth[valid, index], predicted[valid, index], gridsize=30, extent=(-1, 1, -1, 1), cmap="viridis",
                    mincnt=1)  # fmt: skip
        axis.plot([-1, 1], [-1, 1], color="white", linewidth=0.8)
        axis.set_xlabel(f"true {name}")
        axis.set_ylabel(f"predicted {name}")
        axis.set_title(f"{name}: CCC {ccc(predicted[valid, index], truth[valid, index]):.3f} ({valid.sum()} frames)")
        axis.set_aspect("equal")
    return _save(figure, path)


def render_report(results: dict[str, Any], sections: list[tuple[str, dict, list[Path]]]) -> str:
    """One HTML page: the scores side by side, then each model's figures side by side."""
    names = [key for key, _, _ in sections]
    score_names = list(dict.fromkeys(name for _, entry, _ in sections for name in entry["scores"]))
    rows = "".join(
        f"<tr><th>{html.escape(score)}</th>"
        + "".join(f"<td>{entry['scores'].get(score, float('nan')):.4f}</td>" for _, entry, _ in sections)
        + "</tr>"
        for score in score_names
    )
    notes = "".join(
        f"<li>{html.escape(key)}: {html.escape(task)} unavailable ({html.escape(reason)})</li>"
        for key, entry, _ in sections
        for task, reason in entry["unavailable"].items()
    )
    header = "".join(
        f"<th>{html.escape(key)}<br><small>{html.escape(entry['path'])}</small></th>" for key, entry, _ in sections
    )
    kinds = list(dict.fromkeys(path.name.removeprefix(f"{key}_") for key, _, figures in sections for path in figures))
    figures = ""
    for kind in kinds:
        cells = "".join(
            "<td>" + "".join(f'<img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">' for p in paths
                             if p.name == f"{key}_{kind}") + "</td>"
            for key, _, paths in sections
        )  # fmt: skip
        figures += f"<tr>{cells}</tr>"
    column_width = 100 // max(len(names), 1)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>affect-hf evaluation: {html.escape(results["track"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right;vertical-align:top}}img{{max-width:100%}}.figures td{{width:{column_width}%}}</style>
</head><body>
<h1>Evaluation on the {html.escape(results["track"])} validation split</h1>
<p>{results["num_samples"]} frames from {html.escape(results["data_dir"])}; scores computed by the training
loop's functions (<code>scores.json</code>).</p>
<table><tr><th>score</th>{header}</tr>{rows}</table>
<ul>{notes}</ul>
<table class="figures"><tr>{"".join(f"<th>{html.escape(n)}</th>" for n in names)}</tr>{figures}</table>
</body></html>
"""
