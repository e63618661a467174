"""Face detection: a small interface (images -> boxes, scores, landmarks) and its offline default, BlazeFace."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.nn import functional as F

from .blazeface import INPUT_SIZE, KEYPOINT_NAMES, BlazeFace, anchor_centers, decode


BLAZEFACE_WEIGHTS = Path(__file__).with_name("blazeface_short_range.safetensors")

ImageInput = np.ndarray | Image.Image | torch.Tensor


@dataclass
class FaceDetections:
    """The faces of one image, best first, in its pixel coordinates (x right, y down; pixel i spans [i, i + 1))."""

    boxes: torch.Tensor  # N x 4: x1, y1, x2, y2
    scores: torch.Tensor  # N
    landmarks: torch.Tensor  # N x K x 2, named by `keypoint_names`
    keypoint_names: tuple[str, ...] = KEYPOINT_NAMES

    def __len__(self) -> int:
        return len(self.scores)


class FaceDetector(Protocol):
    """What the pipeline and `affect-hf predict` need of a detector; any backend with this call fits."""

    keypoint_names: tuple[str, ...]

    def __call__(self, images: Sequence[ImageInput]) -> list[FaceDetections]: ...


def as_image_tensor(image: ImageInput) -> torch.Tensor:
    """An RGB image as a 3 x H x W uint8 tensor (from H x W x 3 arrays, PIL images of any mode, or such a tensor)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {image.dtype} of shape {image.shape}")
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch wants memory it may write
            image = image.copy()
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.uint8:
        return image
    raise TypeError(f"expected a PIL image, an H x W x 3 uint8 array or a 3 x H x W uint8 tensor, got {type(image)}")


def weighted_non_max_suppression(
    boxes: torch.Tensor, keypoints: torch.Tensor, scores: torch.Tensor, iou_threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MediaPipe's "weighted" NMS: each kept face is the score-weighted mean of the boxes that overlap it.

    Averaging the overlapping anchors (instead of keeping only the best) steadies boxes and landmarks from frame
    to frame, which the tracker and the aligned crops both profit from.
    """
    order = scores.argsort(descending=True)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    kept_boxes, kept_keypoints, kept_scores = [], [], []
    remaining = torch.arange(len(scores), device=scores.device)
    while len(remaining):
        overlap = box_iou(boxes[remaining[:1]], boxes[remaining])[0] > iou_threshold
        overlap[0] = True  # a degenerate (empty) box overlaps nothing, not even itself
        group = remaining[overlap]
        weights = scores[group] / scores[group].sum()
        kept_boxes.append((boxes[group] * weights[:, None]).sum(0))
        kept_keypoints.append((keypoints[group] * weights[:, None, None]).sum(0))
        kept_scores.append(scores[group[0]])
        remaining = remaining[~overlap]
    if not kept_scores:
        return boxes[:0], keypoints[:0], scores[:0]
    return torch.stack(kept_boxes), torch.stack(kept_keypoints), torch.stack(kept_scores)


def box_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair of x1, y1, x2, y2 boxes: N x M."""
    top_left = torch.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = torch.minimum(first[:, None, 2:], second[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_first = (first[:, 2:] - first[:, :2]).clamp(min=0).prod(-1)
    area_second = (second[:, 2:] - second[:, :2]).clamp(min=0).prod(-1)
    return intersection / (area_first[:, None] + area_second[None, :] - intersection).clamp(min=1e-9)


class BlazeFaceDetector:
    """MediaPipe's short-range BlazeFace, ported to torch; weights ship with the package (no download).

    Made for faces that fill a fair part of the picture (selfies, webcams, interviews, ABAW-style videos): each
    image is letterboxed to 128 x 128, so faces much smaller than about a tenth of the longer side are missed.
    Runs batched on `device`, next to the affect model. Thresholds are MediaPipe's defaults.
    """

    keypoint_names = KEYPOINT_NAMES

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_score: float = 0.5,
        iou_threshold: float = 0.3,
        max_faces: int | None = None,
        weights: str | Path = BLAZEFACE_WEIGHTS,
    ):
        self.device = torch.device(device)
        self.min_score, self.iou_threshold, self.max_faces = min_score, iou_threshold, max_faces
        self.network = BlazeFace()
        self.network.load_state_dict({name: tensor.float() for name, tensor in load_file(weights).items()})
        self.network.eval().to(self.device)
        self.anchors = anchor_centers().to(self.device)

    def letterbox(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images scaled to fit 128 x 128 and centred on black, in [-1, 1]; plus each one's (scale, pad x, pad y)."""
        batch = torch.full((len(images), 3, INPUT_SIZE, INPUT_SIZE), -1.0, device=self.device)
        placements = []
        for index, image in enumerate(images):
            height, width = image.shape[1:]
            scale = INPUT_SIZE / max(height, width)
            new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
            resized = F.interpolate(
                image[None].to(self.device, torch.float32), size=(new_height, new_width), mode="bilinear",
                antialias=True, align_corners=False,
            )  # fmt: skip
            top, left = (INPUT_SIZE - new_height) // 2, (INPUT_SIZE - new_width) // 2
            batch[index, :, top : top + new_height, left : left + new_width] = resized[0] / 127.5 - 1
            placements.append((new_width / width, new_height / height, left, top))
        return batch, torch.tensor(placements, dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def __call__(self, images: Sequence[ImageInput]) -> list[FaceDetections]:
        tensors = [as_image_tensor(image) for image in images]
        if not tensors:
            return []
        batch, placements = self.letterbox(tensors)
        boxes, keypoints, scores = decode(*self.network(batch), self.anchors)
        results = []
        for index in range(len(tensors)):
            keep = scores[index] >= self.min_score
            image_boxes, image_keypoints, image_scores = weighted_non_max_suppression(
                boxes[index][keep], keypoints[index][keep], scores[index][keep], self.iou_threshold
            )
            if self.max_faces is not None:
                image_boxes, image_keypoints, image_scores = (
                    image_boxes[: self.max_faces], image_keypoints[: self.max_faces], image_scores[: self.max_faces]
                )  # fmt: skip
            scale, offset = placements[index, :2], placements[index, 2:]
            height, width = tensors[index].shape[1:]
            pixel_boxes = ((image_boxes.reshape(-1, 2, 2) * INPUT_SIZE - offset) / scale).reshape(-1, 4).cpu()
            pixel_boxes = pixel_boxes.clamp(min=0).minimum(torch.tensor([width, height, width, height]))
            pixel_keypoints = ((image_keypoints * INPUT_SIZE - offset) / scale).cpu()
            results.append(FaceDetections(pixel_boxes, image_scores.cpu(), pixel_keypoints))
        return results


DETECTORS = {"blazeface": BlazeFaceDetector}


def load_face_detector(name: str = "blazeface", device: str | torch.device = "cpu", **options) -> FaceDetector:
    """A detector by name (`DETECTORS`); options go to its constructor (e.g. `min_score`, `max_faces`)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; available: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name](device=device, **options)
