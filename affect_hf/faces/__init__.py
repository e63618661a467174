"""Faces in pictures: detection (BlazeFace by default, weights shipped) and alignment like ABAW's crops."""

from .alignment import (
    ABAW_LANDMARKS,
    FACE_TEMPLATE,
    align_faces,
    alignment_transforms,
    similarity_transforms,
    template_points,
)
from .blazeface import KEYPOINT_NAMES
from .detection import (
    BLAZEFACE_WEIGHTS,
    DETECTORS,
    BlazeFaceDetector,
    FaceDetections,
    FaceDetector,
    box_iou,
    load_face_detector,
    weighted_non_max_suppression,
)


__all__ = [
    "ABAW_LANDMARKS",
    "BLAZEFACE_WEIGHTS",
    "DETECTORS",
    "FACE_TEMPLATE",
    "KEYPOINT_NAMES",
    "BlazeFaceDetector",
    "FaceDetections",
    "FaceDetector",
    "align_faces",
    "alignment_transforms",
    "box_iou",
    "load_face_detector",
    "similarity_transforms",
    "template_points",
    "weighted_non_max_suppression",
]
