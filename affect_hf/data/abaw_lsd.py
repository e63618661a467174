"""Reader for the ABAW4 learning-from-synthetic-data (LSD) track: 6 expressions, synthetic faces to learn from, real
faces to validate on.

Layouts (both accepted):

```
root/training_set_synthetic_images/<CLASS>/*.jpg     as released (ANGER ships misspelled "ANGRER")
root/validation_set_real_images/<CLASS>/*.jpg
root/train/<CLASS>/, root/val/<CLASS>/               the authors' folder form
```

Classes come out in the official order (Anger, Disgust, Fear, Happiness, Sadness, Surprise) whatever the folder
case. The unlabelled test split is a text file of image names (one per line, an optional `image` header), each
resolved against `image_dir`; its labels are all -1.
"""

import os
import warnings
from pathlib import Path

from datasets import Dataset

from ..labels import LSD_EXPRESSIONS, LSD_FOLDER_ALIASES, MISSING_EXPRESSION
from .folders import classification_dataset, load_class_folders


ABAW_LSD_SPLIT_FOLDERS = {
    "train": ("training_set_synthetic_images", "train"),
    "validation": ("validation_set_real_images", "val", "validation"),
}
# The submission header of the LSD track.
ABAW_LSD_HEADER = "image,expression"


def load_abaw_lsd(
    root: str | os.PathLike,
    split: str,
    test_list: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Read one LSD split ("train", "validation" or "test") into an in-memory `datasets.Dataset`.

    Columns: `image` (a path), `name` (relative to the split folder), `label` (ClassLabel over the 6 classes).
    For "test", `test_list` is the list file (default: the only `*test*.txt` in `root`) and `image_dir` where its
    names live (default: the list's folder); listed images that do not exist are skipped and counted in a warning.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"ABAW LSD root folder not found: {root}")
    if split == "test":
        return _load_test_list(root, test_list, image_dir)
    if split not in ABAW_LSD_SPLIT_FOLDERS:
        raise ValueError(f"Unknown ABAW LSD split {split!r}; expected train, validation or test.")
    for name in ABAW_LSD_SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return load_class_folders(root / name, LSD_EXPRESSIONS, split, aliases=LSD_FOLDER_ALIASES)
    raise FileNotFoundError(
        f"ABAW LSD {split} images not found under {root}: expected one of the folders "
        f"{', '.join(ABAW_LSD_SPLIT_FOLDERS[split])}"
    )


def lsd_test_names(root: str | os.PathLike, test_list: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """The LSD test list's file and its image names, in order (default: the only `*test*.txt` in `root`)."""
    root = Path(root)
    if test_list is None:
        candidates = sorted(root.glob("*test*.txt"))
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"cannot tell the LSD test list in {root} (found {[c.name for c in candidates]}): pass test_list"
            )
        test_list = candidates[0]
    test_list = Path(test_list)
    names = []
    with open(test_list, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            name, *rest = line.strip().split(",")
            if line_number == 1 and name.lower() == "image":
                continue
            if not name:
                continue
            if any(field.strip() for field in rest):
                raise ValueError(f"{test_list}, line {line_number}: expected only an image name, found {line!r}")
            names.append(name)
    return test_list, names


def _load_test_list(root: Path, test_list: str | os.PathLike | None, image_dir: str | os.PathLike | None) -> Dataset:
    test_list, names = lsd_test_names(root, test_list)
    image_dir = Path(image_dir).absolute() if image_dir is not None else test_list.absolute().parent
    present = [name for name in names if (image_dir / name).is_file()]
    if len(present) < len(names):
        warnings.warn(
            f"Skipped {len(names) - len(present)} of {len(names)} images listed in {test_list} with no file under "
            f"{image_dir}.",
            stacklevel=3,
        )
    if not present:
        raise ValueError(f"ABAW LSD test split is empty: none of the images of {test_list} exist under {image_dir}")
    paths = [str(image_dir / name) for name in present]
    return classification_dataset(paths, present, [MISSING_EXPRESSION] * len(present), LSD_EXPRESSIONS, "test")
