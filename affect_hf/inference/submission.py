"""ABAW test-set predictions and submission files: writing them, and checking them.

- MTL: header `image,valence,arousal,expression,aus`, then `name,v,a,expr,au1,...,au12` for every image of
  the test list, in order (valence/arousal in [-1, 1], expression 0-7, AUs 0/1).
- LSD: header `image,expression`, then `name,expr` (expression 0-5, in the LSD order).
- The Aff-Wild2 uni-task tracks (ABAW 5-6 sample files' format): one file per track, header
  `image_location,valence,arousal` (VA), `image_location,Neutral,...,Other` (EXPR, then one class index per
  line) or `image_location,AU1,...,AU26` (AU, then 0/1 per AU), and a line for every frame of the organisers'
  test list (`--test_list`: their sample file, or any file whose first column names the frames), in its order.
  That list holds every frame of each test video, also those with no face crop: such a frame takes the prediction
  of the nearest frame of its video that has one (the earlier on a tie); a video without any crop gets the
  neutral prediction (valence = arousal = 0, Neutral, no AU), and both are counted in the log.

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

from ..data.abaw_lsd import ABAW_LSD_HEADER, lsd_test_names
from ..data.abaw_mtl import (
    ABAW_MTL_ANNOTATION_FILES,
    ABAW_MTL_HEADER,
    ABAW_MTL_IMAGE_DIR,
    _video_and_frame,
    abaw_frame_table,
    parse_test_list,
)
from ..data.abaw_tracks import ABAW_TRACK_FIELDS, ABAW_TRACK_HEADERS, ABAW_TRACKS
from ..evaluation import check_model_for_track, iter_predictions, load_split, split_dataset
from ..files import OutputLock, atomic_path, write_text_atomically
from ..labels import (
    ABAW_EXPRESSIONS,
    LSD_EXPRESSIONS,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
    NUM_ACTION_UNITS,
    NUM_EXPRESSIONS,
)
from ..modeling.pipeline_affect import with_decisions
from ..models import dtype_name, load_affect_model


logger = logging.getLogger(__name__)

SUBMISSION_TRACKS = ("mtl", "lsd", *ABAW_TRACKS)
SUBMISSION_HEADERS = {
    "mtl": ABAW_MTL_HEADER,
    "lsd": ABAW_LSD_HEADER,
    **{track: f"image_location,{header}" for track, header in ABAW_TRACK_HEADERS.items()},
}


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


def track_submission_lines(track: str, names: list[str], predictions: "Predictions") -> list[str]:
    """A uni-task file's lines: VA clipped to [-1, 1]; the expression index; AU decisions as 0/1."""
    lines = [SUBMISSION_HEADERS[track]]
    for index, name in enumerate(names):
        if track == "va":
            valence, arousal = np.clip(predictions.valence_arousal[index], -1.0, 1.0)
            lines.append(f"{name},{valence:.6f},{arousal:.6f}")
        elif track == "expr":
            lines.append(f"{name},{int(predictions.expression[index])}")
        else:
            lines.append(f"{name}," + ",".join(str(int(unit)) for unit in predictions.action_units[index]))
    return lines


def write_submission(path: str | os.PathLike, lines: list[str]) -> Path:
    write_text_atomically(path, "\n".join(lines) + "\n")
    return Path(path)


# -------------------------------------------------------------------------------------------------- checking


def abaw_test_names(data_dir: str | os.PathLike, track: str, test_list: str | os.PathLike | None = None) -> list[str]:
    """The image names of a track's test list, in order (whether or not the images are at hand).

    The uni-task tracks need `test_list`: the organisers' sample file (or any file whose first column holds
    `<video>/<frame>.jpg`, after an optional header line).
    """
    if track == "mtl":
        return parse_test_list(Path(data_dir) / ABAW_MTL_ANNOTATION_FILES["test"])
    if track == "lsd":
        return lsd_test_names(data_dir)[1]
    if track in ABAW_TRACKS:
        if test_list is None:
            raise ValueError(f"the {track} track needs --test_list: the organisers' sample file of its test frames")
        return read_frame_list(test_list)
    raise ValueError(f"unknown submission track {track!r}; expected one of {', '.join(SUBMISSION_TRACKS)}")


def read_frame_list(path: str | os.PathLike) -> list[str]:
    """The first column of a list of `<video>/<frame>.jpg` lines; a first line that is not a frame is a header."""
    with open(path, encoding="utf-8-sig") as handle:
        numbered = [(number, line.split(",")[0].strip()) for number, line in enumerate(handle, start=1) if line.strip()]
    if numbered and not numbered[0][1].lower().endswith((".jpg", ".png")):
        numbered = numbered[1:]
    for number, name in numbered:
        if _video_and_frame(name)[1] < 0 or not name.lower().endswith((".jpg", ".png")):
            raise ValueError(f"{path}, line {number}: expected <video>/<frame number>.jpg, found {name!r}")
    if not numbered:
        raise ValueError(f"{path} lists no frames")
    return [name for _, name in numbered]


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


_FIELDS_PER_TRACK = {"mtl": 3 + NUM_ACTION_UNITS, "lsd": 1, **ABAW_TRACK_FIELDS}


def _row_problem(track: str, values: list[str]) -> str | None:
    expected = _FIELDS_PER_TRACK[track]
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
    elif track == "va":
        if not all(-1 <= value <= 1 for value in numbers):
            return "valence and arousal must lie in [-1, 1]"
    elif track == "au":
        if any(unit not in (0, 1) for unit in numbers):
            return "action units must be 0 or 1"
    else:
        classes = len(LSD_EXPRESSIONS) if track == "lsd" else NUM_EXPRESSIONS
        if numbers[0] not in range(classes):
            return f"the expression must be an integer in 0..{classes - 1}"
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
    test_list: str | os.PathLike | None = None,
    backend: str = "torch",
    dtype: str = "auto",
) -> Path | None:
    """Predict the `track`'s test list with the model folder at `model_path` and write the submission `output`.

    Progress is saved every `save_every` batches in `<output>.partial.npz`: run again with the same arguments to
    resume. `max_batches` stops after that many batches (a time-boxed job), keeping the progress and writing no
    submission (returns None). The finished file is checked with `validate_submission`. The uni-task tracks
    ("va", "expr", "au") read their frames from `test_list` (see the module's docstring). `backend` and
    `dtype` are `affect_hf.models.load_affect_model`'s (torch, onnx, onnx-int8; auto, fp32, bf16, fp16).
    """
    output = Path(output)
    if track not in SUBMISSION_TRACKS:
        raise ValueError(f"unknown submission track {track!r}; expected one of {', '.join(SUBMISSION_TRACKS)}")
    with OutputLock(output):  # one run per submission file: two would share its progress file
        return _predict_abaw(model_path, data_dir, track, output, batch_size, num_workers, device, save_every,
                             max_batches, image_dir, test_list, backend, dtype)  # fmt: skip


def _predict_abaw(model_path, data_dir, track, output: Path, batch_size, num_workers, device, save_every, max_batches,
                  image_dir, test_list, backend, dtype) -> Path | None:  # fmt: skip
    names = abaw_test_names(data_dir, track, test_list)
    if track in ("mtl", "lsd"):
        split = load_split(data_dir, track, "test", image_dir=image_dir)
    else:  # the frames that have a crop; the others are filled in from their neighbours
        image_dir = Path(image_dir) if image_dir is not None else Path(data_dir) / ABAW_MTL_IMAGE_DIR
        count = len(names)
        unlabelled = (
            np.full((count, 2), MISSING_VALENCE_AROUSAL, np.float32),
            np.full(count, MISSING_EXPRESSION, np.int64),
            np.full((count, NUM_ACTION_UNITS), MISSING_ACTION_UNIT, np.int8),
        )
        split = abaw_frame_table(
            names, image_dir.absolute(), *unlabelled, "test", f"ABAW {track} test", Path(test_list)
        )
    if track in ("mtl", "lsd") and len(split) != len(names):
        raise FileNotFoundError(
            f"{len(names) - len(split)} of the {len(names)} test images are missing (see the warning above): a "
            "submission must predict every one"
        )
    model = load_affect_model(model_path, backend=backend, device=device, dtype=dtype)
    check_model_for_track(model.config, track, model_path)
    dataset = split_dataset(split, "lsd" if track == "lsd" else "mtl", model.config.image_size)

    partial = output.with_name(output.name + ".partial.npz")
    sources = [Path(p).absolute() if p is not None else None for p in (model_path, data_dir, image_dir, test_list)]
    precision = "" if model.dtype == torch.float32 else f"|{dtype_name(model.dtype)}"  # fp32: as 0.1.0 wrote it
    fingerprint = f"{'|'.join(map(str, sources))}|{track}|{len(names)}|{backend}{precision}"
    predictions = Predictions.load(partial, fingerprint, len(split)) or Predictions.empty(len(split))
    if predictions.done:
        logger.info("resuming at image %d of %d from %s", predictions.done + 1, len(split), partial)
    remaining = torch.utils.data.Subset(dataset, range(predictions.done, len(split)))
    loader = DataLoader(remaining, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    progress = tqdm(total=len(split), initial=predictions.done, desc=f"predict {track}")
    for number, scores in enumerate(iter_predictions(model, loader), start=1):
        rows = slice(predictions.done, predictions.done + len(scores["expression"]))
        predictions.expression[rows] = scores["expression"].argmax(dim=-1).numpy()
        if "valence_arousal" in scores:
            predictions.valence_arousal[rows] = scores["valence_arousal"].numpy()
        if "action_units" in scores:
            decided = with_decisions({"au_probabilities": scores["action_units"]}, model.config)
            predictions.action_units[rows] = decided["au_active"].int().numpy()
        predictions.done = rows.stop
        progress.update(len(scores["expression"]))
        if number % save_every == 0 or (max_batches is not None and number >= max_batches):
            predictions.save(partial, fingerprint)
        if max_batches is not None and number >= max_batches and predictions.done < len(split):
            progress.close()
            logger.info("stopped after %d batches; %d of %d images predicted", number, predictions.done, len(split))
            return None
    progress.close()
    if track == "mtl":
        lines = mtl_submission_lines(
            names, predictions.valence_arousal, predictions.expression, predictions.action_units
        )
    elif track == "lsd":
        lines = lsd_submission_lines(names, predictions.expression)
    else:
        lines = track_submission_lines(track, names, fill_frames_without_crop(names, list(split["name"]), predictions))
    write_submission(output, lines)
    validate_submission(output, track, names)
    partial.unlink(missing_ok=True)
    return output


def fill_frames_without_crop(names: list[str], predicted: list[str], predictions: Predictions) -> Predictions:
    """Predictions for every frame of `names`, from those of the `predicted` frames (same order as `predictions`).

    A frame without a crop takes its video's nearest predicted frame (the earlier on a tie); a video with none
    gets the neutral prediction. Both counts are logged.
    """
    by_video: dict[str, tuple[list[int], list[int]]] = {}
    for row, name in enumerate(predicted):
        video, frame = _video_and_frame(name)
        frames, rows = by_video.setdefault(video, ([], []))
        frames.append(frame)
        rows.append(row)
    by_video = {  # each video's predicted frames in order, once
        video: (np.asarray(frames)[np.argsort(frames)], np.asarray(rows)[np.argsort(frames)])
        for video, (frames, rows) in by_video.items()
    }
    filled = Predictions.empty(len(names))
    filled.valence_arousal[:] = 0.0
    filled.expression[:] = ABAW_EXPRESSIONS.index("Neutral")
    filled.action_units[:] = 0
    position = {name: row for row, name in enumerate(predicted)}
    nearest, neutral = 0, 0
    for index, name in enumerate(names):
        row = position.get(name)
        if row is None:
            video, target = _video_and_frame(name)
            if video not in by_video:
                neutral += 1
                continue
            frames, rows = by_video[video]
            right = int(np.searchsorted(frames, target))
            left = max(right - 1, 0)
            right = min(right, len(frames) - 1)
            row = int(rows[left if abs(target - frames[left]) <= abs(frames[right] - target) else right])
            nearest += 1
        filled.valence_arousal[index] = predictions.valence_arousal[row]
        filled.expression[index] = predictions.expression[row]
        filled.action_units[index] = predictions.action_units[row]
    if nearest or neutral:
        logger.warning(
            "%d of %d test frames have no crop: %d take their video's nearest prediction, %d (videos without any "
            "crop) the neutral one", nearest + neutral, len(names), nearest, neutral,
        )  # fmt: skip
    filled.done = len(names)
    return filled


__all__ = [
    "SUBMISSION_TRACKS",
    "SubmissionError",
    "lsd_submission_lines",
    "mtl_submission_lines",
    "predict_abaw",
    "abaw_test_names",
    "fill_frames_without_crop",
    "read_frame_list",
    "track_submission_lines",
    "validate_submission",
    "write_submission",
]
