"""Data readers -> `datasets.Dataset`, the recipes' image transforms, torch datasets, and synthetic data."""

from .abaw_mtl import (
    ABAW_MTL_ANNOTATION_FILES,
    ABAW_MTL_HEADER,
    ABAW_MTL_IMAGE_DIR,
    abaw_mtl_features,
    load_abaw_mtl,
)
from .abaw_tracks import ABAW_TRACKS, load_abaw_track
from .datasets import (
    UNREADABLE_IMAGES_KEY,
    AbawMtlTorchDataset,
    ClassBalancedDataset,
    ImageDataset,
    class_label,
    collate_skipping_unreadable,
)
from .synthetic import make_synthetic_abaw
from .transforms import (
    AffectImageTransform,
    DanTrainTransform,
    RandomResizedCropTransform,
    augmentation_rng,
    load_rgb_image,
)


__all__ = [
    "ABAW_MTL_ANNOTATION_FILES",
    "ABAW_MTL_HEADER",
    "ABAW_MTL_IMAGE_DIR",
    "ABAW_TRACKS",
    "UNREADABLE_IMAGES_KEY",
    "AbawMtlTorchDataset",
    "AffectImageTransform",
    "ClassBalancedDataset",
    "DanTrainTransform",
    "ImageDataset",
    "RandomResizedCropTransform",
    "abaw_mtl_features",
    "augmentation_rng",
    "class_label",
    "collate_skipping_unreadable",
    "load_abaw_mtl",
    "load_abaw_track",
    "load_rgb_image",
    "make_synthetic_abaw",
]
