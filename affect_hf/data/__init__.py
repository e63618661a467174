"""Data readers -> `datasets.Dataset` for every layout (ABAW4 MTL, the Aff-Wild2 uni-task tracks, ABAW4 LSD,
AffectNet), picture files, the recipes' image transforms, torch datasets, and synthetic data in each layout."""

from .abaw_lsd import load_abaw_lsd
from .abaw_mtl import (
    ABAW_MTL_ANNOTATION_FILES,
    ABAW_MTL_HEADER,
    ABAW_MTL_IMAGE_DIR,
    abaw_mtl_features,
    load_abaw_mtl,
)
from .abaw_tracks import ABAW_TRACKS, load_abaw_track
from .affectnet import load_affectnet
from .datasets import (
    UNREADABLE_IMAGES_KEY,
    AbawMtlTorchDataset,
    ClassBalancedDataset,
    ImageDataset,
    class_label,
    collate_skipping_unreadable,
)
from .pictures import MAX_PIXELS, PictureTooLargeError, read_picture
from .synthetic import make_synthetic_abaw
from .synthetic_faces import make_synthetic_affectnet, make_synthetic_faces, make_synthetic_lsd
from .synthetic_video import write_face_video
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
    "MAX_PIXELS",
    "UNREADABLE_IMAGES_KEY",
    "AbawMtlTorchDataset",
    "AffectImageTransform",
    "ClassBalancedDataset",
    "DanTrainTransform",
    "ImageDataset",
    "PictureTooLargeError",
    "RandomResizedCropTransform",
    "abaw_mtl_features",
    "augmentation_rng",
    "class_label",
    "collate_skipping_unreadable",
    "load_abaw_lsd",
    "load_abaw_mtl",
    "load_abaw_track",
    "load_affectnet",
    "load_rgb_image",
    "make_synthetic_abaw",
    "make_synthetic_affectnet",
    "make_synthetic_faces",
    "make_synthetic_lsd",
    "read_picture",
    "write_face_video",
]
