"""Class-per-folder image sets (ABAW4 LSD, AffectNet in folder form) -> `datasets.Dataset`, classes in canonical order.

`datasets`' own `imagefolder` labels by sorted folder names; these sets name their folders in their own way
(upper case, a misspelling, AffectNet indices), so the folder -> class mapping is made here, explicitly, and an
unknown folder is an error that lists the expected names.
"""

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetInfo, Features, Image, NamedSplit, Value
from datasets.table import InMemoryTable

from ..files import walk_files


# The image files every reader and source of this package accepts (by extension, case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def classification_features(class_names: Iterable[str]) -> Features:
    """The columns of every single-label image set: image (a path, decoded later), name, label."""
    return Features(
        {"image": Image(decode=False), "name": Value("string"), "label": ClassLabel(names=list(class_names))}
    )


def classification_dataset(
    paths: list[str], names: list[str], labels: list[int], class_names: Iterable[str], split: str
) -> Dataset:
    """An in-memory dataset of image paths and class indices, built as one Arrow table."""
    features = classification_features(class_names)
    table = pa.table(
        {
            "image": pa.StructArray.from_arrays(
                [pa.nulls(len(paths), pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
            ),
            "name": pa.array(names, pa.string()),
            "label": pa.array(labels, pa.int64()),
        }
    ).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features), split=NamedSplit(split))


def folder_class_index(folder: str, class_names: tuple[str, ...], aliases: Mapping[str, str], allow_indices: bool):
    """The class index a folder name stands for (any case, an alias, or a digit string), or None."""
    lowered = {name.lower(): index for index, name in enumerate(class_names)}
    name = aliases.get(folder.upper(), aliases.get(folder, folder))
    if name.lower() in lowered:
        return lowered[name.lower()]
    if allow_indices and folder.isdigit() and int(folder) < len(class_names):
        return int(folder)
    return None


def load_class_folders(
    folder: str | os.PathLike,
    class_names: tuple[str, ...],
    split: str,
    aliases: Mapping[str, str] | None = None,
    allow_indices: bool = False,
) -> Dataset:
    """Every image under `folder/<class>/` (recursively), labelled in the order of `class_names`.

    Folder names match a class name in any case, an alias (e.g. LSD's "ANGRER"), or, with `allow_indices`, the
    class index. A folder that matches nothing is an error listing the expected names; a class without a folder
    is a warning (a validation set may lack one). Files that are not images are ignored.
    """
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    subfolders = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    mapping = {name: folder_class_index(name, class_names, aliases or {}, allow_indices) for name in subfolders}
    unknown = [name for name, index in mapping.items() if index is None]
    if unknown:
        expected = ", ".join(class_names) + (f" (or 0-{len(class_names) - 1})" if allow_indices else "")
        raise ValueError(f"{folder}: unknown class folder(s) {unknown}; expected one folder per class: {expected}")
    duplicates = {index for index in mapping.values() if list(mapping.values()).count(index) > 1}
    if duplicates:
        clashing = sorted(name for name, index in mapping.items() if index in duplicates)
        raise ValueError(f"{folder}: several folders name the same class: {clashing}")
    absent = [class_names[index] for index in range(len(class_names)) if index not in mapping.values()]
    if absent:
        warnings.warn(f"{folder} has no folder for the class(es) {absent}", stacklevel=2)

    paths, names, labels = [], [], []
    for subfolder, index in mapping.items():
        for file in walk_files(folder / subfolder):  # symlinked folders followed, once each
            if is_image_file(file.name):
                paths.append(str(file))
                names.append(file.relative_to(folder).as_posix())
                labels.append(index)
    if not paths:
        raise ValueError(f"{folder}: no image files in its class folders {subfolders}")
    return classification_dataset(paths, names, labels, class_names, split)
