"""ABAW test-set predictions and submission files (MTL and LSD tracks): writing them, and checking them.

- MTL: header `image,valence,arousal,expression,aus`, then `name,v,a,expr,au1,...,au12` for every image of
  the test list, in order (valence/arousal in [-1, 1], expression 0-7, AUs 0/1).
- LSD: header `image,expression`, then `name,expr` (expression 0-5, in the LSD order).

`predict_abaw` predicts the whole test list in order, in batches, saving its progress every few batches
(`<output>.partial.npz`) so that a long run that stops resumes where it was; it writes the file atomically and
checks it with `validate_submission` before reporting success.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModel

from ..data import AbawMtlTorchDataset, AffectImageTransform, ImageDataset, load_abaw_mtl
from ..data.abaw_lsd import ABAW_LSD_HEADER, load_abaw_lsd, lsd_test_names
from ..data.abaw_mtl import ABAW_MTL_ANNOTATION_FILES, ABAW_MTL_HEADER, parse_test_list
from ..files import atomic_path, write_text_atomically
from ..labels import LSD_EXPRESSIONS, NUM_ACTION_UNITS, NUM_EXPRESSIONS


logger = logging.getLogger(__name__)

SUBMISSION_TRACKS = ("mtl", "lsd")
SUBMISSION_HEADERS = {"mtl": ABAW_MTL_HEADER, "lsd": ABAW_LSD_HEADER}


class SubmissionError(ValueError):
    """A submission file that the organisers would reject (the first bad line named)."""


# --------------------------------------------------------------------------------------------------- writing


def mtl_submission_lines(
    names: list[str], valence_arousal: np.ndarray, expression: np.ndarray, action_units: np.ndarray
) -> list[str]:
    """The MTL file's lines: valence/arousal clipped to [-1, 1], the expression index, AU decisions as 0/1."""
    valence_arousal = np.clip(np.asarray(valence_arousal, dtype=np.float64), -1.0, 1.0)
    lines = [ABAW_MTL_HEADER]
    for name, (valence, arousal), label, units in zip(names, valence_arousal, expression, action_units, strict=True):
        decisions = ",".join(str(int(unit)) for unit in units)
        lines.append(f"{name},{valence:.6f},{arousal:.6f},{int(label)},{decisions}")
    return lines


def lsd_submission_lines(names: list[str], expression: np.ndarray) -> list[str]:
    return [ABAW_LSD_HEADER] + [f"{name},{int(label)}" for name, label in zip(names, expression, strict=True)]


def write_submission(path: str | os.PathLike, lines: list[str]) -> Path:
    write_text_atomically(path, "\n".join(lines) + "\n")
    return Path(path)


# -------------------------------------------------------------------------------------------------- checking


def abaw_test_names(data_dir: str | os.PathLike, track: str) -> list[str]:
    """The image names of a track's test list, in order (whether or not the images are at hand)."""
    if track == "mtl":
        return parse_test_list(Path(data_dir) / ABAW_MTL_ANNOTATION_FILES["test"])
    if track == "lsd":
        return lsd_test_names(data_dir)[1]
    raise ValueError(f"unknown submission track {track!r}; expected one of {', '.join(SUBMISSION_TRACKS)}")


def validate_submission(path: str | os.PathLike, track: str, names: list[str]) -> int:
    """Check a submission against the test list's `names`: the header, every image once and in order, each value
    in range. Returns the number of predictions; raises `SubmissionError` naming the first bad line."""
    if track not in SUBMISSION_TRACKS:
        raise ValueError(f"unknown submission track {track!r}; expected one of {', '.join(SUBMISSION_TRACKS)}")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip() != SUBMISSION_HEADERS[track]:
        found = lines[0] if lines else "an empty file"
        raise SubmissionError(f"{path}, line 1: expected the header '{SUBMISSION_HEADERS[track]}', found {found!r}")
    rows = lines[1:]
    position = {name: index for index, name in enumerate(names)}
    for index, line in enumerate(rows):
        line_number = index + 2
        fields = line.split(",")
        name = fields[0]
        if index >= len(names):
            raise SubmissionError(
                f"{path}, line {line_number}: {name!r} is one line more than the {len(names)} test images"
            )
        if name != names[index]:
            where = (
                f"listed at line {position[name] + 2} of a correct file" if name in position else "not in the test list"
            )
            raise SubmissionError(
                f"{path}, line {line_number}: expected {names[index]!r} (the test list's image {index + 1}), found "
                f"{name!r} ({where})"
            )
        problem = _row_problem(track, fields[1:])
        if problem:
            raise SubmissionError(f"{path}, line {line_number}: {problem}: {line!r}")
    if len(rows) < len(names):
        raise SubmissionError(
            f"{path}: {len(names) - len(rows)} test images have no line, from {names[len(rows)]!r} (line "
            f"{len(rows) + 2} of a complete file) on"
        )
    return len(rows)


def _row_problem(track: str, values: list[str]) -> str | None:
    expected = 3 + NUM_ACTION_UNITS if track == "mtl" else 1
    if len(values) != expected:
        return f"expected {expected + 1} comma-separated fields, found {len(values) + 1}"
    try:
        numbers = [float(value) for value in values]
    except ValueError:
        return "a value is not a number"
    if track == "mtl":
        valence, arousal, label, *units = numbers
        if not (-1 <= valence <= 1 and -1 <= arousal <= 1):
            return "valence and arousal must lie in [-1, 1]"
        if label not in range(NUM_EXPRESSIONS):
            return f"the expression must be an integer in 0..{NUM_EXPRESSIONS - 1}"
        if any(unit not in (0, 1) for unit in units):
            return "action units must be 0 or 1"
    elif numbers[0] not in range(len(LSD_EXPRESSIONS)):
        return f"the expression must be an integer in 0..{len(LSD_EXPRESSIONS) - 1}"
    return None


# ------------------------------------------------------------------------------------------------ predicting


@dataclass
class Predictions:
    """Per-image outputs in test-list order; unfilled rows are NaN."""

    valence_arousal: np.ndarray
    expression: np.ndarray
    action_units: np.ndarray
    done: int = 0

    @classmethod
    def empty(cls, count: int) -> "Predictions":
        return cls(np.full((count, 2), np.nan), np.full(count, -1), np.full((count, NUM_ACTION_UNITS), -1))

    def save(self, path: Path, fingerprint: str) -> None:
        with atomic_path(path) as staging:
            np.savez(staging, fingerprint=fingerprint, done=self.done, valence_arousal=self.valence_arousal,
                     expression=self.expression, action_units=self.action_units)  # fmt: skip

    @classmethod
    def load(cls, path: Path, fingerprint: str, count: int) -> "Predictions | None":
        """The saved progress of the same run (same model, list and track), else None."""
        if not path.is_file():
            return None
        with np.load(path) as saved:
            if str(saved["fingerprint"]) != fingerprint or len(saved["expression"]) != count:
                logger.warning("%s belongs to another run (model, list or track); starting afresh", path)
                return None
            return cls(saved["valence_arousal"], saved["expression"], saved["action_units"], int(saved["done"]))


def predict_abaw(
    model_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    track: str,
    output: str | os.PathLike,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    save_every: int = 50,
    max_batches: int | None = None,
    image_dir: str | os.PathLike | None = None,
) -> Path | None:
    """Predict the `track`'s test list with the model folder at `model_path` and write the submission `output`.

    Progress is saved every `save_every` batches in `<output>.partial.npz`: run again with the same arguments to
    resume. `max_batches` stops after that many batches (a time-boxed job), keeping the progress and writing no
    submission (returns None). The finished file is checked with `validate_submission`.
    """
    output = Path(output)
    if track not in SUBMISSION_TRACKS:
        raise ValueError(f"unknown submission track {track!r}; expected one of {', '.join(SUBMISSION_TRACKS)}")
    names = abaw_test_names(data_dir, track)
    if track == "mtl":
        split = load_abaw_mtl(data_dir, "test", image_dir=image_dir)
    else:
        split = load_abaw_lsd(data_dir, "test", image_dir=image_dir)
    if len(split) != len(names):
        raise FileNotFoundError(
            f"{len(names) - len(split)} of the {len(names)} test images are missing (see the warning above): a "
            "submission must predict every one"
        )
    if os.sep in str(model_path) and not Path(model_path).is_dir():
        raise FileNotFoundError(f"model folder not found: {model_path}")
    model = AutoModel.from_pretrained(model_path).eval()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model.to(device)
    size = model.config.image_size
    if track == "mtl":
        if not hasattr(model.config, "au_thresholds"):
            raise ValueError(f"{model_path} is a {model.config.model_type} model: the MTL track needs an EMMA")
        dataset = AbawMtlTorchDataset(split, image_size=size, train=False)
    else:
        if model.config.num_labels != len(LSD_EXPRESSIONS):
            raise ValueError(f"{model_path} predicts {model.config.num_labels} classes: the LSD track needs 6")
        dataset = ImageDataset(split, AffectImageTransform(size, train=False))

    partial = output.with_name(output.name + ".partial.npz")
    fingerprint = f"{Path(model_path).absolute()}|{Path(data_dir).absolute()}|{track}|{len(names)}"
    predictions = Predictions.load(partial, fingerprint, len(names)) or Predictions.empty(len(names))
    if predictions.done:
        logger.info("resuming at image %d of %d from %s", predictions.done + 1, len(names), partial)
    remaining = torch.utils.data.Subset(dataset, range(predictions.done, len(names)))
    loader = DataLoader(remaining, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    thresholds = torch.tensor(getattr(model.config, "au_thresholds", [0.5] * NUM_ACTION_UNITS), device=device)
    progress = tqdm(total=len(names), initial=predictions.done, desc=f"predict {track}")
    with torch.inference_mode():
        for number, batch in enumerate(loader, start=1):
            outputs = model(pixel_values=batch["pixel_values"].to(device))
            rows = slice(predictions.done, predictions.done + len(batch["pixel_values"]))
            predictions.expression[rows] = outputs.logits.argmax(dim=-1).cpu().numpy()
            if track == "mtl":
                predictions.valence_arousal[rows] = outputs.valence_arousal.float().cpu().numpy()
                decisions = torch.sigmoid(outputs.au_logits.float()) >= thresholds
                predictions.action_units[rows] = decisions.int().cpu().numpy()
            predictions.done = rows.stop
            progress.update(len(batch["pixel_values"]))
            if number % save_every == 0 or (max_batches is not None and number >= max_batches):
                predictions.save(partial, fingerprint)
            if max_batches is not None and number >= max_batches and predictions.done < len(names):
                progress.close()
                logger.info("stopped after %d batches; %d of %d images predicted", number, predictions.done, len(names))
                return None
    progress.close()
    if track == "mtl":
        lines = mtl_submission_lines(
            names, predictions.valence_arousal, predictions.expression, predictions.action_units
        )
    else:
        lines = lsd_submission_lines(names, predictions.expression)
    write_submission(output, lines)
    validate_submission(output, track, names)
    partial.unlink(missing_ok=True)
    return output


__all__ = [
    "SUBMISSION_TRACKS",
    "SubmissionError",
    "lsd_submission_lines",
    "mtl_submission_lines",
    "predict_abaw",
    "abaw_test_names",
    "validate_submission",
    "write_submission",
]
