"""Reader for the ABAW4 multi-task learning (MTL) challenge data (s-Aff-Wild2) into a `datasets.Dataset`.

Layout (as released):

```
root/training_set_annotations.txt      header, then `video/00001.jpg,valence,arousal,expression,AU1,...,AU26`
root/validation_set_annotations.txt    same
root/MTL_Challenge_test_set_release.txt   header, then one image name per line
root/cropped_aligned/<video>/<frame>.jpg
```

Missing labels keep the ABAW codes end to end (-5 valence/arousal, -1 expression and each AU): the losses and
metrics mask exactly those. Images are stored as paths (`Image(decode=False)`) and decoded by the torch
wrapper in `transforms.py`, so a bad file is reported with its path, inside the DataLoader worker that read it.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetInfo, Features, Image, List, NamedSplit, Value
from datasets.table import InMemoryTable

from ..labels import (
    ABAW_EXPRESSIONS,
    LABEL_RULES,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
    NUM_ACTION_UNITS,
    valid_labels,
)


ABAW_MTL_ANNOTATION_FILES = {
    "train": "training_set_annotations.txt",
    "validation": "validation_set_annotations.txt",
    "test": "MTL_Challenge_test_set_release.txt",
}
ABAW_MTL_IMAGE_DIR = "cropped_aligned"
# The header ABAW ships with the annotation files and expects back in submission files.
ABAW_MTL_HEADER = "image,valence,arousal,expression,aus"
# image, valence, arousal, expression, 12 AUs.
NUM_ANNOTATION_FIELDS = 4 + NUM_ACTION_UNITS
# How many missing images the warning names, of however many there are.
_MISSING_EXAMPLES_SHOWN = 5


def abaw_mtl_features() -> Features:
    """The declared columns of every ABAW frame table, MTL and uni-task tracks alike (a task without labels, or the
    test split, holds missing codes). `video` and `frame` (1-based; -1 if the name has no frame number) locate a row
    in its video, for temporal use."""
    return Features(
        {
            "image": Image(decode=False),
            "name": Value("string"),
            "video": Value("string"),
            "frame": Value("int32"),
            "valence": Value("float32"),
            "arousal": Value("float32"),
            "expression": ClassLabel(names=list(ABAW_EXPRESSIONS)),
            "action_units": List(Value("int8"), length=NUM_ACTION_UNITS),
        }
    )


def load_abaw_mtl(root: str | os.PathLike, split: str, image_dir: str | os.PathLike | None = None) -> Dataset:
    """Read one ABAW4 MTL split ("train", "validation" or "test") into an in-memory `datasets.Dataset`.

    Args:
        root: folder holding the annotation files (and, by default, `cropped_aligned/`).
        split: "train", "validation" or "test" (the test list has no labels: every label is a missing code).
        image_dir: where the `<video>/<frame>.jpg` files live; defaults to `root/cropped_aligned`
            (the test images ship in their own archive: point this at wherever they were unpacked).

    Frames listed but absent on disk are skipped and counted in one warning (ABAW lists some frames that the
    face detector missed). Malformed lines raise `ValueError` naming the file and 1-based line number.
    """
    if split not in ABAW_MTL_ANNOTATION_FILES:
        raise ValueError(f"Unknown ABAW MTL split {split!r}; expected one of {sorted(ABAW_MTL_ANNOTATION_FILES)}.")
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"ABAW MTL root folder not found: {root}")
    annotation_path = root / ABAW_MTL_ANNOTATION_FILES[split]
    if not annotation_path.is_file():
        raise FileNotFoundError(f"ABAW MTL {split} annotation file not found: {annotation_path}")
    image_dir = Path(image_dir).absolute() if image_dir is not None else root / ABAW_MTL_IMAGE_DIR

    if split == "test":
        names = parse_test_list(annotation_path)
        valence_arousal = np.full((len(names), 2), MISSING_VALENCE_AROUSAL, dtype=np.float32)
        expression = np.full(len(names), MISSING_EXPRESSION, dtype=np.int64)
        action_units = np.full((len(names), NUM_ACTION_UNITS), MISSING_ACTION_UNIT, dtype=np.int8)
    else:
        names, valence_arousal, expression, action_units = _parse_annotations(annotation_path)
    if not names:
        raise ValueError(f"ABAW MTL {split} split is empty: {annotation_path} lists no images.")

    return abaw_frame_table(
        names, image_dir, valence_arousal, expression, action_units, split, f"ABAW MTL {split}", annotation_path
    )


def abaw_frame_table(
    names: list[str],
    image_dir: Path,
    valence_arousal: np.ndarray,
    expression: np.ndarray,
    action_units: np.ndarray,
    split: str,
    what: str,
    source: Path,
) -> Dataset:
    """The frames whose image exists under `image_dir` (the others skipped and counted in one warning), as an
    in-memory dataset with `abaw_mtl_features`."""
    present = _images_present(image_dir, names)
    if not present.all():
        missing = [name for name, found in zip(names, present, strict=True) if not found]
        message = (
            f"Skipped {len(missing)} of {len(names)} frames listed in {source} with no image under "
            f"{image_dir} (e.g. {', '.join(missing[:_MISSING_EXAMPLES_SHOWN])})."
        )
        warnings.warn(message, stacklevel=3)
        if not present.any():
            raise ValueError(f"{what} split is empty: none of its images exist under {image_dir}.")
        names = [name for name, found in zip(names, present, strict=True) if found]
        valence_arousal, expression = valence_arousal[present], expression[present]
        action_units = action_units[present]

    image_prefix = f"{image_dir}{os.sep}"  # plain concatenation: a Path per row costs seconds on the train split
    videos, frames = zip(*(_video_and_frame(name) for name in names), strict=True)
    features = abaw_mtl_features()
    # Building the Arrow table directly is ~40x faster than `Dataset.from_dict` (which encodes row by row)
    # on the 142k-frame train split.
    table = pa.table(
        {
            "image": pa.StructArray.from_arrays(
                [pa.nulls(len(names), pa.binary()), pa.array([image_prefix + name for name in names])],
                names=["bytes", "path"],
            ),
            "name": pa.array(names, pa.string()),
            "video": pa.array(videos, pa.string()),
            "frame": pa.array(frames, pa.int32()),
            "valence": pa.array(valence_arousal[:, 0]),
            "arousal": pa.array(valence_arousal[:, 1]),
            "expression": pa.array(expression),
            "action_units": pa.FixedSizeListArray.from_arrays(pa.array(action_units.ravel()), NUM_ACTION_UNITS),
        }
    ).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features), split=NamedSplit(split))


def _video_and_frame(name: str) -> tuple[str, int]:
    """`video/00042.jpg` -> ("video", 42); a name without a frame number gets -1."""
    video, _, file_name = name.rpartition("/")
    stem = file_name.rsplit(".", 1)[0]
    return video, int(stem) if stem.isdigit() else -1


def _read_lines(path: Path) -> list[str]:
    """The file's lines after checking its header (line 1), which names the first column `image`."""
    with open(path, encoding="utf-8-sig") as file:
        lines = file.read().splitlines()
    if not lines:
        raise ValueError(f"{path}: file is empty; expected the header line '{ABAW_MTL_HEADER}'.")
    if lines[0].split(",")[0].strip().lower() != "image":
        raise ValueError(f"{path}, line 1: expected the header line '{ABAW_MTL_HEADER}', found {lines[0]!r}.")
    return lines


def _parse_annotations(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, valence/arousal (N x 2 float32), expression (N int64) and AUs (N x 12 int8), all validated."""
    names, values, line_numbers = [], [], []
    for line_number, line in enumerate(_read_lines(path)[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != NUM_ANNOTATION_FIELDS:
            raise ValueError(
                f"{path}, line {line_number}: expected {NUM_ANNOTATION_FIELDS} comma-separated fields "
                f"(image, valence, arousal, expression, {NUM_ACTION_UNITS} AUs), found {len(fields)}: {line!r}."
            )
        name = fields[0].strip()
        if not name:
            raise ValueError(f"{path}, line {line_number}: empty image name: {line!r}.")
        try:
            values.append(list(map(float, fields[1:])))
        except ValueError:
            raise ValueError(f"{path}, line {line_number}: non-numeric label in {line!r}.") from None
        names.append(name)
        line_numbers.append(line_number)
    if not names:
        return names, np.empty((0, 2), np.float32), np.empty(0, np.int64), np.empty((0, NUM_ACTION_UNITS), np.int8)

    values = np.asarray(values, dtype=np.float64)
    valence_arousal, expression, action_units = values[:, :2], values[:, 2], values[:, 3:]
    for task, columns in (("va", valence_arousal), ("expr", expression), ("au", action_units)):
        valid_rows = valid_labels(task, columns).reshape(len(names), -1).all(axis=1)
        if not valid_rows.all():
            row = int(np.argmin(valid_rows))
            raise ValueError(f"{path}, line {line_numbers[row]}: {LABEL_RULES[task]}; found {values[row].tolist()}.")
    return (
        names,
        valence_arousal.astype(np.float32),
        expression.astype(np.int64),
        action_units.astype(np.int8),
    )


def parse_test_list(path: Path) -> list[str]:
    """Image names of the unlabelled test list; a line carrying anything besides the name is an error."""
    names = []
    for line_number, line in enumerate(_read_lines(path)[1:], start=2):
        if not line.strip():
            continue
        name, *rest = line.split(",")
        if any(field.strip() for field in rest) or not name.strip():
            raise ValueError(f"{path}, line {line_number}: expected only an image name, found {line!r}.")
        names.append(name.strip())
    return names


def _images_present(image_dir: Path, names: list[str]) -> np.ndarray:
    """Which names exist under `image_dir`, listing each video folder once (faster than a stat per frame)."""
    folder_contents: dict[str, set[str]] = {}
    present = np.zeros(len(names), dtype=bool)
    for index, name in enumerate(names):
        folder, _, file_name = name.rpartition("/")
        if folder not in folder_contents:
            try:
                folder_contents[folder] = set(os.listdir(image_dir / folder))
            except (FileNotFoundError, NotADirectoryError):
                folder_contents[folder] = set()
        present[index] = file_name in folder_contents[folder]
    return present
