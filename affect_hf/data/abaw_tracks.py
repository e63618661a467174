"""Reader for the Aff-Wild2 uni-task tracks of ABAW 3 to 8: valence/arousal, expression and action units.

Layout (as released; the track folders may sit one level down, e.g. in `6th ABAW Annotations/`):

```
root/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt       header, then line i: "v,a" (-5 invalid)
root/EXPR_Classification_Challenge/...  (or EXPR_Recognition_Challenge)     header, then line i: class (-1 invalid)
root/AU_Detection_Challenge/...                                            header, then line i: 12 AUs (-1 invalid)
root/cropped_aligned/<video>/%05d.jpg                                      frame i of <video> (1-based)
```

Rows come out per video (videos sorted by name), frames in order, with the MTL reader's Features: the track's
labels where it has them and the missing codes elsewhere, so every recipe, loss and metric works on them.
Invalid codes are kept as missing labels; frames without an image are skipped and counted in one warning.
"""

import os
from pathlib import Path

import numpy as np
from datasets import Dataset

from ..labels import (
    ABAW_EXPRESSIONS,
    ACTION_UNITS,
    LABEL_RULES,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
    NUM_ACTION_UNITS,
    valid_labels,
)
from .abaw_mtl import ABAW_MTL_IMAGE_DIR, abaw_frame_table


ABAW_TRACKS = ("va", "expr", "au")
ABAW_TRACK_FOLDERS = {
    "va": ("VA_Estimation_Challenge",),
    "expr": ("EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
    "au": ("AU_Detection_Challenge",),
}
ABAW_TRACK_SPLITS = {"train": "Train_Set", "validation": "Validation_Set"}
ABAW_TRACK_FIELDS = {"va": 2, "expr": 1, "au": NUM_ACTION_UNITS}
# The header line each track's files carry.
ABAW_TRACK_HEADERS = {
    "va": "valence,arousal",
    "expr": ",".join(ABAW_EXPRESSIONS),
    "au": ",".join(ACTION_UNITS),
}


def find_track_folder(root: str | os.PathLike, task: str) -> Path:
    """The track's annotation folder: `root/<name>` or one level down (`root/*/<name>`)."""
    if task not in ABAW_TRACKS:
        raise ValueError(f"Unknown ABAW track {task!r}; expected one of {', '.join(ABAW_TRACKS)}.")
    root = Path(root)
    for name in ABAW_TRACK_FOLDERS[task]:
        candidates = [root / name] + sorted(root.glob(f"*/{name}"))
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
    raise FileNotFoundError(
        f"no {task} track under {root}: expected a folder {' or '.join(ABAW_TRACK_FOLDERS[task])} (or one level down)"
    )


def load_abaw_track(
    root: str | os.PathLike, task: str, split: str, image_dir: str | os.PathLike | None = None
) -> Dataset:
    """Read one split ("train" or "validation") of the `task` track ("va", "expr" or "au").

    `image_dir` holds `<video>/<frame>.jpg` (default `root/cropped_aligned`). A line with the wrong number of
    fields or an out-of-range code fails naming the file and line.
    """
    if split not in ABAW_TRACK_SPLITS:
        raise ValueError(f"Unknown ABAW track split {split!r}; expected one of {', '.join(ABAW_TRACK_SPLITS)}.")
    root = Path(root).absolute()
    folder = find_track_folder(root, task) / ABAW_TRACK_SPLITS[split]
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"ABAW {task} {split} annotations not found: no <video>.txt in {folder}")
    image_dir = Path(image_dir).absolute() if image_dir is not None else root / ABAW_MTL_IMAGE_DIR

    names, labels = [], []
    for path in files:
        for frame, values in enumerate(_read_track_file(path, task), start=1):
            names.append(f"{path.stem}/{frame:05d}.jpg")
            labels.append(values)
    if not names:
        raise ValueError(f"ABAW {task} {split} split is empty: the files in {folder} list no frames.")
    values = np.asarray(labels, dtype=np.float64).reshape(len(names), ABAW_TRACK_FIELDS[task])
    valence_arousal = np.full((len(names), 2), MISSING_VALENCE_AROUSAL, dtype=np.float32)
    expression = np.full(len(names), MISSING_EXPRESSION, dtype=np.int64)
    action_units = np.full((len(names), NUM_ACTION_UNITS), MISSING_ACTION_UNIT, dtype=np.int8)
    if task == "va":
        valence_arousal = values.astype(np.float32)
    elif task == "expr":
        expression = values[:, 0].astype(np.int64)
    else:
        action_units = values.astype(np.int8)
    return abaw_frame_table(
        names, image_dir, valence_arousal, expression, action_units, split, f"ABAW {task} {split}", folder
    )


def _read_track_file(path: Path, task: str) -> list[list[float]]:
    """A track file's label rows (line 1 is the header); checks every field and code."""
    with open(path, encoding="utf-8-sig") as handle:
        lines = handle.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: file is empty; expected the header line '{ABAW_TRACK_HEADERS[task]}'.")
    if _is_numeric(lines[0]):
        raise ValueError(f"{path}, line 1: expected the header line '{ABAW_TRACK_HEADERS[task]}', found {lines[0]!r}.")
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != ABAW_TRACK_FIELDS[task]:
            raise ValueError(
                f"{path}, line {line_number}: expected {ABAW_TRACK_FIELDS[task]} comma-separated field(s) for the "
                f"{task} track, found {len(fields)}: {line!r}."
            )
        try:
            rows.append([float(field) for field in fields])
        except ValueError:
            raise ValueError(f"{path}, line {line_number}: non-numeric label in {line!r}.") from None
    valid_rows = valid_labels(task, np.asarray(rows).reshape(len(rows), ABAW_TRACK_FIELDS[task])).all(axis=1)
    if not valid_rows.all():
        row = int(np.argmin(valid_rows))
        raise ValueError(f"{path}, line {row + 2}: {LABEL_RULES[task]}; found {lines[row + 1]!r}.")
    return rows


def _is_numeric(line: str) -> bool:
    try:
        [float(field) for field in line.split(",")]
    except ValueError:
        return False
    return True
