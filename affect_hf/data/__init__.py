"""ABAW readers -> `datasets.Dataset`, the paper's image transforms, and synthetic ABAW-format data."""

from .abaw_mtl import (
    ABAW_MTL_ANNOTATION_FILES,
    ABAW_MTL_HEADER,
    ABAW_MTL_IMAGE_DIR,
    abaw_mtl_features,
    load_abaw_mtl,
)
from .synthetic import make_synthetic_abaw
from .transforms import AbawMtlTorchDataset, AffectImageTransform, augmentation_rng, load_rgb_image


__all__ = [
    "ABAW_MTL_ANNOTATION_FILES",
    "ABAW_MTL_HEADER",
    "ABAW_MTL_IMAGE_DIR",
    "AbawMtlTorchDataset",
    "AffectImageTransform",
    "abaw_mtl_features",
    "augmentation_rng",
    "load_abaw_mtl",
    "load_rgb_image",
    "make_synthetic_abaw",
]
