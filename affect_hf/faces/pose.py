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

from collections.abc import Sequence

import numpy as np
import torch

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


# Bounds of (yaw, pitch, roll, log scale, x, y): yaw and pitch short of a profile, roll wrapped at the end.
LOWER = np.array([-89.0, -89.0, -360.0, -np.inf, -np.inf, -np.inf])
UPPER = np.array([89.0, 89.0, 360.0, np.inf, np.inf, np.inf])
# Finite-difference steps for the Jacobian (degrees, log scale, pixels), and the Levenberg-Marquardt schedule.
STEPS = np.array([1e-4, 1e-4, 1e-4, 1e-6, 1e-3, 1e-3])
MAX_ITERATIONS, TOLERANCE = 100, 1e-9


def _rotations(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """N camera-frame rotations of the mean face: pitch about x, yaw about y, then roll in the image plane."""
    # In this frame (y down, z away), a positive yaw (nose to the image's right) is a rotation about -y, a positive
    # pitch (looking up) one about -x, and a counterclockwise roll on screen one about -z.
    # Intrinsic Z-Y-X: R = Rz(roll) Ry(yaw) Rx(pitch), so that turning the picture changes roll alone.
    z, y, x = (np.radians(-np.asarray(angle, dtype=np.float64)) for angle in (roll, yaw, pitch))
    one, zero = np.ones_like(z), np.zeros_like(z)

    def matrices(*rows):  # N x 3 x 3 from nine N-vectors
        return np.stack(rows, axis=-1).reshape(*z.shape, 3, 3)

    about_z = matrices(np.cos(z), -np.sin(z), zero, np.sin(z), np.cos(z), zero, zero, zero, one)
    about_y = matrices(np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y))
    about_x = matrices(one, zero, zero, zero, np.cos(x), -np.sin(x), zero, np.sin(x), np.cos(x))
    return about_z @ about_y @ about_x


def _residuals(parameters: np.ndarray, points: np.ndarray) -> np.ndarray:
    """N x 10 weighted differences between the projected mean face and the N faces' points (N x 5 x 2)."""
    yaw, pitch, roll, log_scale, x, y = parameters.T
    rotated = MODEL_POINTS @ _rotations(yaw, pitch, roll).transpose(0, 2, 1)
    projected = np.exp(log_scale)[:, None, None] * rotated[..., :2] + np.stack([x, y], axis=-1)[:, None]
    return ((projected - points) * POINT_WEIGHTS).reshape(len(points), -1)


def fit_poses(points: np.ndarray) -> np.ndarray:
    """N x 3 (yaw, pitch, roll) in degrees from N x 5 x 2 points, in `ABAW_LANDMARKS` order.

    Every face is fitted at once: a Levenberg-Marquardt least-squares fit per face, batched in numpy (one face at a
    time through scipy took 8 ms, more than the model's share of a frame on a GPU), within the bounds above.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, len(ABAW_LANDMARKS), 2)
    count = len(points)
    if not count:
        return np.zeros((0, 3))
    eyes = points[:, 1] - points[:, 0]
    scale = np.linalg.norm(eyes, axis=1) / (MEAN_FACE["left_eye"][0] - MEAN_FACE["right_eye"][0])
    # Start frontal, with the eyes' tilt as roll (y grows downward: a counterclockwise tilt lifts the left eye).
    roll = -np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))
    parameters = np.column_stack([np.zeros(count), np.zeros(count), roll, np.log(np.maximum(scale, 1e-6)),
                                  points[:, 2]])  # fmt: skip
    damping = np.full(count, 1e-3)
    residuals = _residuals(parameters, points)
    cost = (residuals**2).sum(1)
    active = np.ones(count, dtype=bool)
    for _ in range(MAX_ITERATIONS):
        if not active.any():
            break
        p, r = parameters[active], residuals[active]
        # Central differences, all six parameters of all faces in one evaluation.
        shifts = np.eye(6) * STEPS
        ahead = _residuals((p[:, None] + shifts).reshape(-1, 6), np.repeat(points[active], 6, axis=0))
        behind = _residuals((p[:, None] - shifts).reshape(-1, 6), np.repeat(points[active], 6, axis=0))
        jacobian = ((ahead - behind).reshape(len(p), 6, -1) / (2 * STEPS)[:, None]).transpose(0, 2, 1)
        normal = jacobian.transpose(0, 2, 1) @ jacobian
        gradient = jacobian.transpose(0, 2, 1) @ r[..., None]
        diagonal = np.einsum("nii->ni", normal)
        damped = normal + (damping[active, None] * np.maximum(diagonal, 1e-12))[..., None] * np.eye(6)
        step = -np.linalg.solve(damped, gradient)[..., 0]
        trial = np.clip(p + step, LOWER, UPPER)
        trial_residuals = _residuals(trial, points[active])
        trial_cost = (trial_residuals**2).sum(1)
        better = trial_cost < cost[active]
        indices = np.flatnonzero(active)
        accepted = indices[better]
        parameters[accepted], residuals[accepted] = trial[better], trial_residuals[better]
        converged = np.abs(trial - p).max(1) < TOLERANCE * (1 + np.abs(p).max(1))
        gain = np.where(better, cost[active] - trial_cost, 0.0) <= TOLERANCE * np.maximum(cost[active], 1e-12)
        cost[accepted] = trial_cost[better]
        damping[indices] = np.where(better, damping[indices] / 3, damping[indices] * 4)
        active[indices[(better & gain) | converged | (damping[indices] > 1e12)]] = False
    angles = parameters[:, :3].copy()
    angles[:, 2] = (angles[:, 2] + 180) % 360 - 180
    return angles


def head_pose(points: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of one face from its five points (5 x 2, in `ABAW_LANDMARKS` order)."""
    return tuple(float(angle) for angle in fit_poses(np.asarray(points)[None])[0])


def head_poses(
    images: Sequence[tuple[torch.Tensor, tuple[str, ...]]],
) -> list[list[tuple[float, float, float] | None]]:
    """Per image, the pose of each of its faces, from (N x K x 2 points, the names of the K); None for the faces of
    an image whose detector does not give the five points. All the images' faces are fitted at once."""
    wanted = [set(ABAW_LANDMARKS) <= set(names) for _, names in images]
    points = [landmarks[:, [names.index(name) for name in ABAW_LANDMARKS]].double()
              for (landmarks, names), fits in zip(images, wanted, strict=True) if fits]  # fmt: skip
    angles = iter(fit_poses(torch.cat(points).numpy()).tolist() if points else [])
    return [[tuple(next(angles)) if fits else None for _ in range(len(landmarks))]
            for (landmarks, _), fits in zip(images, wanted, strict=True)]  # fmt: skip


__all__ = ["MEAN_FACE", "fit_poses", "head_pose", "head_poses"]
