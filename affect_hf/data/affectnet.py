"""Reader for AffectNet-style expression data (8 classes), what DAN, EMMA's CNN, is trained on.

Layouts (both accepted):

```
root/train/<class>/*.jpg, root/val/<class>/ (or validation/)   class folders by name (any case) or index 0-7
root/training.csv, root/validation.csv                          AffectNet's own lists: subDirectory_filePath,
                                                                ..., expression, ... (validation.csv ships
                                                                without a header); images under
                                                                root/Manually_Annotated_Images/ (or image_dir)
```

Classes come out in AffectNet's order (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt). CSV rows
of codes 8-10 (None, Uncertain, Non-Face) are not expressions: they are skipped and counted, as are rows whose
image is missing.
"""

import csv
import itertools
import os
import warnings
from pathlib import Path

from datasets import Dataset

from ..labels import AFFECTNET_EXPRESSIONS, AFFECTNET_FOLDER_ALIASES, AFFECTNET_NON_EXPRESSION_CODES
from .folders import classification_dataset, load_class_folders


AFFECTNET_SPLIT_FOLDERS = {"train": ("train", "training"), "validation": ("val", "validation")}
AFFECTNET_CSV_FILES = {"train": "training.csv", "validation": "validation.csv"}
AFFECTNET_IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
AFFECTNET_PATH_COLUMN, AFFECTNET_LABEL_COLUMN = "subDirectory_filePath", "expression"
# AffectNet's columns, for the released validation.csv, which has no header line.
AFFECTNET_COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression",
    "valence", "arousal",
)  # fmt: skip


def load_affectnet(root: str | os.PathLike, split: str, image_dir: str | os.PathLike | None = None) -> Dataset:
    """Read one AffectNet-style split ("train" or "validation") into an in-memory `datasets.Dataset`.

    Columns: `image` (a path), `name`, `label` (ClassLabel over AffectNet's 8 classes). Class folders are used
    when present, else the CSV list of the split.
    """
    root = Path(root).absolute()
    if split not in AFFECTNET_SPLIT_FOLDERS:
        raise ValueError(f"Unknown AffectNet split {split!r}; expected train or validation.")
    if not root.is_dir():
        raise FileNotFoundError(f"AffectNet root folder not found: {root}")
    for name in AFFECTNET_SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return load_class_folders(
                root / name, AFFECTNET_EXPRESSIONS, split, aliases=AFFECTNET_FOLDER_ALIASES, allow_indices=True
            )
    csv_path = root / AFFECTNET_CSV_FILES[split]
    if csv_path.is_file():
        return _load_csv(csv_path, split, image_dir)
    raise FileNotFoundError(
        f"AffectNet {split} data not found under {root}: expected a folder "
        f"{' or '.join(AFFECTNET_SPLIT_FOLDERS[split])} of class folders, or {AFFECTNET_CSV_FILES[split]}"
    )


def _image_dir(root: Path, image_dir: str | os.PathLike | None) -> Path:
    if image_dir is not None:
        return Path(image_dir).absolute()
    for name in AFFECTNET_IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return root


def _load_csv(path: Path, split: str, image_dir: str | os.PathLike | None) -> Dataset:
    image_dir = _image_dir(path.parent, image_dir)
    names, labels, skipped_codes, missing = [], [], 0, []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = enumerate(csv.reader(handle), start=1)
        first_line, header = next(rows, (1, None))
        if header is None:
            raise ValueError(f"{path} is empty")
        if AFFECTNET_PATH_COLUMN not in header:
            if len(header) != len(AFFECTNET_COLUMNS):
                raise ValueError(
                    f"{path}, line 1: expected a header with {AFFECTNET_PATH_COLUMN} and {AFFECTNET_LABEL_COLUMN}, or "
                    f"AffectNet's {len(AFFECTNET_COLUMNS)} columns without one; found {header}"
                )
            # No header (AffectNet's validation.csv): the first line is data, in AffectNet's column order.
            rows = itertools.chain([(first_line, header)], rows)
            header = list(AFFECTNET_COLUMNS)
        elif AFFECTNET_LABEL_COLUMN not in header:
            raise ValueError(f"{path}, line 1: the header has no {AFFECTNET_LABEL_COLUMN} column: {header}")
        path_column, label_column = header.index(AFFECTNET_PATH_COLUMN), header.index(AFFECTNET_LABEL_COLUMN)
        for line_number, row in rows:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line_number}: expected {len(header)} fields, found {len(row)}")
            try:
                code = int(row[label_column])
            except ValueError:
                raise ValueError(
                    f"{path}, line {line_number}: expression {row[label_column]!r} is not an integer"
                ) from None
            if code in AFFECTNET_NON_EXPRESSION_CODES:
                skipped_codes += 1
                continue
            if not 0 <= code < len(AFFECTNET_EXPRESSIONS):
                raise ValueError(f"{path}, line {line_number}: expression must be 0-10, found {code}")
            name = row[path_column].strip()
            if not (image_dir / name).is_file():
                missing.append(name)
                continue
            names.append(name)
            labels.append(code)
    if skipped_codes:
        codes = ", ".join(f"{code} {name}" for code, name in AFFECTNET_NON_EXPRESSION_CODES.items())
        warnings.warn(
            f"Skipped {skipped_codes} rows of {path} whose code is not an expression ({codes}).", stacklevel=3
        )
    if missing:
        warnings.warn(
            f"Skipped {len(missing)} rows of {path} with no image under {image_dir} (e.g. {', '.join(missing[:5])}).",
            stacklevel=3,
        )
    if not names:
        raise ValueError(f"AffectNet {split} split is empty: {path} lists no expression image under {image_dir}")
    return classification_dataset(
        [str(image_dir / name) for name in names], names, labels, AFFECTNET_EXPRESSIONS, split
    )
