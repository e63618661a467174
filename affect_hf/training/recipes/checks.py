"""Checks the recipes share: model folders named by options, and the `--max_*_samples` limits."""

import json
import os
from pathlib import Path

import numpy as np
from datasets import Dataset

from ...models import is_local_path


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_model_folder(path: str | os.PathLike, model_types: tuple[str, ...], option: str) -> None:
    """A local folder given for `option` must hold a config of one of `model_types` and weights.

    Hub ids (no such local folder) are left to `from_pretrained`, which names what it cannot find.
    """
    folder = Path(path)
    if not folder.exists():
        if is_local_path(path):
            raise FileNotFoundError(f"{option} {path}: no such folder")
        return
    if not folder.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file; expected a saved model folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{option} {path} has no config.json: it is not a saved model folder")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in model_types:
        raise ValueError(
            f"{option} {path} holds a {model_type!r} model; expected {' or '.join(repr(t) for t in model_types)}"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"{option} {path} has no weights (looked for {', '.join(WEIGHT_FILES)})")


def limit_rows(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """`limit` rows drawn at random from (seed), kept in their order (all rows when None): class-folder tables are
    sorted by class, so the first rows would be one or two classes."""
    if limit is None or limit >= len(dataset):
        return dataset
    chosen = np.random.default_rng([seed, 0x11A17]).choice(len(dataset), size=limit, replace=False)
    return dataset.select(np.sort(chosen))
