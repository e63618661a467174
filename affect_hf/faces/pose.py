"""Head pose from the five ABAW points: a weak-perspective fit of a mean face's 3D points to them.

Angles are in degrees, in the camera's view of the person:
- `yaw` > 0 when the person turns to their left (the nose moves toward the image's right); a mirrored picture
  flips its sign;
- `pitch` > 0 when the person looks up;
- `roll` > 0 when the face is turned counterclockwise on the screen; turning the picture by an angle turns it by
  the same angle.
Five points fix yaw and roll well and pitch roughly (it rests on the mean face's depths); a profile beyond about
60 degrees of yaw hides an eye, and no detector here gives its points then.
"""

import math

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from .alignment import ABAW_LANDMARKS


# A mean adult face in millimetres, nose tip at the origin: x toward the image's right, y down, z away from the
# camera (the eyes and mouth corners lie behind the nose tip).
MEAN_FACE = {
    "right_eye": (-31.0, -35.0, 30.0),
    "left_eye": (31.0, -35.0, 30.0),
    "nose_tip": (0.0, 0.0, 0.0),
    "mouth_right": (-24.0, 30.0, 22.0),
    "mouth_left": (24.0, 30.0, 22.0),
}
MODEL_POINTS = np.array([MEAN_FACE[name] for name in ABAW_LANDMARKS])
# The mouth corners move with the expression (a smile lifts them): they count less in the fit than the eyes and nose.
POINT_WEIGHTS = np.array([1.0, 1.0, 1.0, 0.25, 0.25])[:, None]


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-frame rotation of the mean face: pitch about x, yaw about y, then roll in the image plane."""
    # In this frame (y down, z away), a positive yaw (nose to the image's right) is a rotation about -y, a positive
    # pitch (looking up) one about -x, and a counterclockwise roll on screen one about -z.
    # Intrinsic Z-Y-X: R = Rz(roll) Ry(yaw) Rx(pitch), so that turning the picture changes roll alone.
    return Rotation.from_euler("ZYX", [-roll, -yaw, -pitch], degrees=True).as_matrix()


def _residuals(parameters: np.ndarray, points: np.ndarray) -> np.ndarray:
    yaw, pitch, roll, log_scale, x, y = parameters
    projected = math.exp(log_scale) * (MODEL_POINTS @ _rotation(yaw, pitch, roll).T)[:, :2] + (x, y)
    return ((projected - points) * POINT_WEIGHTS).ravel()


def head_pose(points: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of one face from its five points (5 x 2, in `ABAW_LANDMARKS` order)."""
    points = np.asarray(points, dtype=np.float64)
    eyes = points[1] - points[0]
    roll = -math.degrees(math.atan2(eyes[1], eyes[0]))  # y grows downward: a counterclockwise tilt lifts the left eye
    scale = np.linalg.norm(eyes) / (MEAN_FACE["left_eye"][0] - MEAN_FACE["right_eye"][0])
    start = np.array([0.0, 0.0, roll, math.log(max(scale, 1e-6)), *points[2]])
    fit = least_squares(_residuals, start, args=(points,), bounds=([-89, -89, -180, -np.inf, -np.inf, -np.inf],
                                                                   [89, 89, 180, np.inf, np.inf, np.inf]))  # fmt: skip
    yaw, pitch, roll = fit.x[:3]
    return float(yaw), float(pitch), float((roll + 180) % 360 - 180)


def head_poses(landmarks: torch.Tensor, keypoint_names: tuple[str, ...]) -> list[tuple[float, float, float] | None]:
    """The pose of each of N faces (N x K x 2 points named by `keypoint_names`); None for all when a detector does
    not give the five points."""
    if not set(ABAW_LANDMARKS) <= set(keypoint_names):
        return [None] * len(landmarks)
    indices = [keypoint_names.index(name) for name in ABAW_LANDMARKS]
    return [head_pose(points) for points in landmarks[:, indices].double().numpy()]


__all__ = ["MEAN_FACE", "head_pose", "head_poses"]
