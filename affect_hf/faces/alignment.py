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

    Pixels outside the image are black, as in ABAW's crops of faces at the frame's edge. Only the pixels each
    crop samples are made float, so a large photo costs no more than a small one.
    """
    if len(landmarks) == 0:
        return torch.zeros(0, 3, size, size, device=image.device)
    height, width = image.shape[1:]
    crop_to_image = torch.linalg.inv(alignment_transforms(landmarks.to(image.device), size, keypoint_names))
    corners = crop_to_image.new_tensor([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]]).T
    # affine_grid works in [-1, 1] coordinates (align_corners=False): pixel = (normalised + 1) * extent / 2.
    crop_from_normalised = crop_to_image.new_tensor([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]])
    crops = []
    for transform in crop_to_image:
        reached = (transform @ corners)[:2]  # the crop's corners in the image; bilinear reads one pixel further
        left, top = (reached.min(1).values.floor() - 1).clamp(min=0).int().tolist()
        right, bottom = (reached.max(1).values.ceil() + 2).int().tolist()
        right, bottom = max(min(right, width), left + 1), max(min(bottom, height), top + 1)
        region = image[:, top:bottom, left:right].float()
        if region.numel() == 0 or left >= width or top >= height:  # the crop lies wholly outside the image
            crops.append(torch.zeros(1, 3, size, size, device=image.device))
            continue
        extent_x, extent_y = region.shape[2], region.shape[1]
        region_to_normalised = crop_to_image.new_tensor(
            [[2 / extent_x, 0, -1 - 2 * left / extent_x], [0, 2 / extent_y, -1 - 2 * top / extent_y], [0, 0, 1]]
        )
        theta = (region_to_normalised @ transform @ crop_from_normalised)[None, :2].float()
        grid = F.affine_grid(theta, [1, 3, size, size], align_corners=False)
        crops.append(F.grid_sample(region[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return torch.cat(crops)
