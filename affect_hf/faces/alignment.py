"""Face alignment as ABAW made its `cropped_aligned` images: a similarity transform of the eye, nose and mouth
points onto the 112 x 112 five-point template, scaled to the model's input size.

The template is the one RetinaFace/ArcFace-style 112 x 112 face crops use (eye centres, nose tip, mouth corners).
Every default detector gives those five points (MTCNN's O-Net places them); for a detector that gives only the
mouth's centre, the corners' midpoint stands in for them. Ears are left out of the fit: they
are hidden in profile views and would pull the crop off the face.
"""

import torch
from torch.nn import functional as F

from .blazeface import KEYPOINT_NAMES


TEMPLATE_SIZE = 112
# The five points of ABAW's template, in its order: what every table names, whatever the detector gives.
ABAW_LANDMARKS = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")
# Pixel positions in a 112 x 112 crop (pixel i spans [i, i + 1)): the person's right eye is on the image's left.
FACE_TEMPLATE = {
    "right_eye": (38.2946, 51.6963),
    "left_eye": (73.5318, 51.5014),
    "nose_tip": (56.0252, 71.7366),
    "mouth_right": (41.5493, 92.3655),
    "mouth_left": (70.7299, 92.2041),
    "mouth_center": (56.1396, 92.2848),  # the corners' midpoint: for a detector without the corners
}


def template_points(size: int, names: tuple[str, ...] = tuple(FACE_TEMPLATE)) -> torch.Tensor:
    """The template's points for a `size` x `size` crop, K x 2."""
    return torch.tensor([FACE_TEMPLATE[name] for name in names]) * (size / TEMPLATE_SIZE)


def similarity_transforms(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) of N x K x 2 points onto
    K x 2 points (Umeyama, 1991): N x 3 x 3 matrices acting on (x, y, 1)."""
    source = source.double()
    target = target.double().expand_as(source)
    source_mean, target_mean = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.transpose(1, 2) @ source_centred / source.shape[1]
    left, singular, right_t = torch.linalg.svd(covariance)
    sign = torch.ones_like(singular)
    sign[:, -1] = torch.sign(torch.linalg.det(left @ right_t))
    rotation = left @ torch.diag_embed(sign) @ right_t
    variance = source_centred.pow(2).sum((1, 2)) / source.shape[1]
    scale = (singular * sign).sum(1) / variance.clamp(min=1e-12)
    translation = target_mean[:, 0] - scale[:, None] * (rotation @ source_mean[:, 0, :, None])[..., 0]
    matrices = torch.zeros(len(source), 3, 3, dtype=torch.float64, device=source.device)
    matrices[:, :2, :2] = scale[:, None, None] * rotation
    matrices[:, :2, 2] = translation
    matrices[:, 2, 2] = 1
    return matrices


def alignment_transforms(
    landmarks: torch.Tensor, size: int, keypoint_names: tuple[str, ...] = KEYPOINT_NAMES
) -> torch.Tensor:
    """N x 3 x 3 maps from image pixels to a `size` x `size` aligned crop, fitted on the template's points."""
    names = tuple(name for name in FACE_TEMPLATE if name in keypoint_names)
    if {"mouth_right", "mouth_left"} <= set(names):  # the true corners: their midpoint adds nothing
        names = tuple(name for name in names if name != "mouth_center")
    if len(names) < 2:
        raise ValueError(f"alignment needs at least two of {tuple(FACE_TEMPLATE)}; the detector gives {keypoint_names}")
    indices = [keypoint_names.index(name) for name in names]
    return similarity_transforms(landmarks[:, indices], template_points(size, names).to(landmarks.device))


def align_faces(
    image: torch.Tensor, landmarks: torch.Tensor, size: int, keypoint_names: tuple[str, ...] = KEYPOINT_NAMES
) -> torch.Tensor:
    """Aligned crops of the N faces of one 3 x H x W image (uint8 or float): N x 3 x size x size float in [0, 255].

    Pixels outside the image are black, as in ABAW's crops of faces at the frame's edge.
    """
    if len(landmarks) == 0:
        return torch.zeros(0, 3, size, size, device=image.device)
    height, width = image.shape[1:]
    crop_to_image = torch.linalg.inv(alignment_transforms(landmarks.to(image.device), size, keypoint_names))
    # affine_grid works in [-1, 1] coordinates (align_corners=False): pixel = (normalised + 1) * extent / 2.
    crop_from_normalised = torch.tensor([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]])
    image_to_normalised = torch.tensor([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]])
    theta = image_to_normalised.to(crop_to_image) @ crop_to_image @ crop_from_normalised.to(crop_to_image)
    grid = F.affine_grid(theta[:, :2].float(), [len(landmarks), 3, size, size], align_corners=False)
    source = image.float()[None].expand(len(landmarks), -1, -1, -1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
