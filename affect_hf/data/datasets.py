"""Torch datasets over image tables: decoding in the DataLoader workers, reproducible augmentation, bad images.

A training image that cannot be decoded is skipped, not fatal: the dataset returns a marker in its place and
`collate_skipping_unreadable` drops it and counts it in the batch under `UNREADABLE_IMAGES_KEY`, which the
training loop pops, sums across processes, logs and keeps in the run's history. Evaluation datasets raise
instead (every validation image must count), and the loop reads them all before the first step.
"""

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from ..labels import MISSING_EXPRESSION
from .transforms import AffectImageTransform, augmentation_rng, load_rgb_image


logger = logging.getLogger(__name__)

UNREADABLE_IMAGES_KEY = "num_unreadable_images"
_UNREADABLE_MARKER = "unreadable_image"

Transform = Callable[..., torch.Tensor]


class ImageDataset(torch.utils.data.Dataset):
    """Rows with an `image` column (a `datasets.Image(decode=False)` value or PIL image) -> model inputs.

    `labels(row)` gives the label tensors of a row (named as the model's `forward` arguments). Training
    transforms draw from `augmentation_rng(seed, epoch, index)`. The epoch lives in shared memory, so `set_epoch`
    also reaches persistent workers; call it before iterating.

    With `skip_unreadable`, an image that cannot be decoded yields a marker that `collate_skipping_unreadable`
    drops and counts; otherwise it raises `OSError` naming the file.
    """

    def __init__(
        self,
        rows,
        transform: Transform,
        labels: Callable[[dict], dict[str, torch.Tensor]] | None = None,
        train: bool = False,
        seed: int = 0,
        skip_unreadable: bool | None = None,
    ):
        self.rows = rows
        self.transform = transform
        self.labels = labels
        self.train = train
        self.seed = seed
        self.skip_unreadable = train if skip_unreadable is None else skip_unreadable
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of `epoch` (the same epoch always gives the same images)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(int(index), augmentation_key=int(index))

    def item(self, index: int, augmentation_key: int) -> dict[str, Any]:
        """Row `index`, augmented with the draws of `augmentation_key` (a resampled row gets fresh draws)."""
        row = self.rows[index]
        try:
            image = load_rgb_image(row["image"])
        except OSError as error:
            if not self.skip_unreadable:
                raise
            logger.warning("skipped an unreadable training image: %s", error)
            return {_UNREADABLE_MARKER: str(error)}
        rng = augmentation_rng(self.seed, self.epoch, augmentation_key) if self.train else None
        item = {"pixel_values": self.transform(image, rng)}
        if self.labels is not None:
            item.update(self.labels(row))
        return item


def collate_skipping_unreadable(samples: list[dict]) -> dict[str, Any]:
    """`default_collate` of the readable samples, with the number of unreadable ones under `UNREADABLE_IMAGES_KEY`;
    a batch of none holds that count only."""
    readable = [sample for sample in samples if _UNREADABLE_MARKER not in sample]
    if not readable:  # the loop skips it (on every process) and counts its images
        return {UNREADABLE_IMAGES_KEY: torch.tensor(len(samples))}
    batch = default_collate(readable)
    batch[UNREADABLE_IMAGES_KEY] = torch.tensor(len(samples) - len(readable))
    return batch


def _abaw_mtl_labels(row: dict) -> dict[str, torch.Tensor]:
    return {
        "valence_arousal": torch.tensor([row["valence"], row["arousal"]], dtype=torch.float32),
        "expression": torch.tensor(row["expression"], dtype=torch.int64),
        "action_units": torch.tensor(row["action_units"], dtype=torch.int64),
    }


class AbawMtlTorchDataset(ImageDataset):
    """ABAW MTL rows -> model inputs: `EmmaForAffectAnalysis(**batch)` takes a default-collated batch as is.

    Each item is a dict of tensors: `pixel_values` (3, size, size) float32, `valence_arousal` (2,) float32,
    `expression` () int64 and `action_units` (12,) int64, missing labels kept as their ABAW codes (-5, -1, -1).
    """

    def __init__(self, dataset, image_size: int, train: bool, seed: int = 0, **transform_options):
        transform = AffectImageTransform(image_size=image_size, train=train, **transform_options)
        super().__init__(dataset, transform, labels=_abaw_mtl_labels, train=train, seed=seed)


def class_label(column: str = "label", name: str = "labels") -> Callable[[dict], dict[str, torch.Tensor]]:
    """Labels of a single-label classification table: the class index of `column`, passed to the model as `name`."""

    def labels(row: dict) -> dict[str, torch.Tensor]:
        return {name: torch.tensor(row[column], dtype=torch.int64)}

    return labels


class ClassBalancedDataset(torch.utils.data.Dataset):
    """Each epoch, `len(dataset)` indices drawn with replacement, with probability inversely proportional to the
    size of their class (DAN's sampler for AffectNet), as a dataset: it is a pure function of (seed, epoch), so
    any sampler, worker layout or resumed run sees the same draws. Unlabelled rows (-1) are never drawn.
    """

    def __init__(self, dataset: ImageDataset, labels: np.ndarray, seed: int = 0):
        labels = np.asarray(labels)
        valid = labels != MISSING_EXPRESSION
        counts = np.bincount(labels[valid])
        weights = np.where(valid, 1.0 / np.maximum(counts[np.where(valid, labels, 0)], 1), 0.0)
        self.dataset = dataset
        self.probabilities = weights / weights.sum()
        self.seed = seed
        self._drawn: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def indices(self, epoch: int) -> np.ndarray:
        if self._drawn is None or self._drawn[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 0xBA1A])
            self._drawn = (epoch, rng.choice(len(self.probabilities), size=len(self), p=self.probabilities))
        return self._drawn[1]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        return self.dataset.item(int(self.indices(self.dataset.epoch)[index]), augmentation_key=index)
