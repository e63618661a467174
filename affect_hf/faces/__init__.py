"""Faces in pictures: detection (MTCNN for pictures, BlazeFace for video frames; weights shipped), alignment like
ABAW's crops on five true points, and head pose."""

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
    MTCNN_WEIGHTS,
    AutoDetector,
    BlazeFaceDetector,
    FaceDetections,
    FaceDetector,
    MtcnnDetector,
    box_iou,
    load_face_detector,
    weighted_non_max_suppression,
)
from .pose import head_pose, head_poses


__all__ = [
    "ABAW_LANDMARKS",
    "BLAZEFACE_WEIGHTS",
    "DETECTORS",
    "MTCNN_WEIGHTS",
    "AutoDetector",
    "FACE_TEMPLATE",
    "KEYPOINT_NAMES",
    "BlazeFaceDetector",
    "FaceDetections",
    "FaceDetector",
    "MtcnnDetector",
    "align_faces",
    "alignment_transforms",
    "box_iou",
    "head_pose",
    "head_poses",
    "load_face_detector",
    "similarity_transforms",
    "template_points",
    "weighted_non_max_suppression",
]
