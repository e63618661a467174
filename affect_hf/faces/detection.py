"""Face detection: a small interface (images -> boxes, scores, landmarks) and its offline backends, weights shipped:
MTCNN for pictures, BlazeFace (with O-Net's points) for video frames, and `auto`, which picks between them."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.nn import functional as F

from ..data.pictures import rgb_tensor
from . import mtcnn
from .blazeface import INPUT_SIZE, KEYPOINT_NAMES, BlazeFace, anchor_centers, decode


BLAZEFACE_WEIGHTS = Path(__file__).with_name("blazeface_short_range.safetensors")
MTCNN_WEIGHTS = Path(__file__).with_name("mtcnn.safetensors")
# How each shipped weights file is made again, should an installation lack it.
WEIGHTS_SOURCES = {
    BLAZEFACE_WEIGHTS.name: "scripts/convert_blazeface.py (from the mediapipe 0.10.21 wheel)",
    MTCNN_WEIGHTS.name: "scripts/convert_mtcnn.py (from the facenet-pytorch 2.6.0 wheel)",
}

ImageInput = np.ndarray | Image.Image | torch.Tensor


def load_detector_weights(network: torch.nn.Module, weights: str | Path) -> torch.nn.Module:
    """`network` with the detector weights of a safetensors file, or one line saying how to get the file."""
    weights = Path(weights)
    if not weights.is_file():
        source = WEIGHTS_SOURCES.get(weights.name)
        remedy = f"reinstall affect-hf, or make it with {source}" if source else "pass the path of a weights file"
        raise FileNotFoundError(f"face detector weights {weights} are missing: {remedy}")
    network.load_state_dict({name: tensor.float() for name, tensor in load_file(weights).items()})
    return network.eval()


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
    """What the pipeline and `affect-hf predict` need of a detector; any backend with this call fits.

    `video` says, per image, whether it is a video frame (where speed matters) or a picture; a detector may ignore
    it. `keypoint_names` names every point any of its detections can carry.
    """

    keypoint_names: tuple[str, ...]

    def __call__(self, images: Sequence[ImageInput], video: Sequence[bool] | None = None) -> list[FaceDetections]: ...


def as_image_tensor(image: ImageInput) -> torch.Tensor:
    """An RGB image as a 3 x H x W uint8 tensor (from H x W x 3 arrays, PIL images of any mode, or such a tensor)."""
    if isinstance(image, Image.Image):
        return rgb_tensor(image if image.mode == "RGB" else image.convert("RGB"))
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


# BlazeFace's points beyond ABAW's five, kept when O-Net gives those.
BLAZEFACE_EXTRA_POINTS = ("mouth_center", "right_ear_tragion", "left_ear_tragion")


class BlazeFaceDetector:
    """MediaPipe's short-range BlazeFace, ported to torch; weights ship with the package (no download).

    Made for faces that fill a fair part of the picture (selfies, webcams, interviews, ABAW-style videos): each
    image is letterboxed to 128 x 128, so faces much smaller than about a tenth of the longer side are missed.
    Runs batched on `device`, next to the affect model. Thresholds are MediaPipe's defaults. With `onet_points`
    (the default), MTCNN's O-Net places ABAW's five points (with the mouth corners, which BlazeFace lacks) in each
    face's box, one small batched pass; BlazeFace's own eyes and nose give way to them, its mouth centre and ears
    stay.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_score: float = 0.5,
        iou_threshold: float = 0.3,
        max_faces: int | None = None,
        weights: str | Path = BLAZEFACE_WEIGHTS,
        onet_points: bool = True,
    ):
        self.device = torch.device(device)
        self.min_score, self.iou_threshold, self.max_faces = min_score, iou_threshold, max_faces
        self.network = load_detector_weights(BlazeFace(), weights).to(self.device)
        self.anchors = anchor_centers().to(self.device)
        self.onet = None
        if onet_points:
            self.onet = load_detector_weights(mtcnn.Mtcnn(), MTCNN_WEIGHTS).onet.to(self.device)
        self.keypoint_names = (*mtcnn.KEYPOINT_NAMES, *BLAZEFACE_EXTRA_POINTS) if onet_points else KEYPOINT_NAMES

    def letterbox(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images scaled to fit 128 x 128 and centred on black, in [-1, 1]; plus each one's (scale, pad x, pad y)."""
        batch = torch.full((len(images), 3, INPUT_SIZE, INPUT_SIZE), -1.0, device=self.device)
        placements = []
        for index, image in enumerate(images):
            height, width = image.shape[1:]
            scale = INPUT_SIZE / max(height, width)
            new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
            if height * width > mtcnn.FLOAT_PIXELS:  # a large photo: averaged down in bands, never float as a whole
                resized = mtcnn.area_resize(image.to(self.device), (new_height, new_width))[None]
            else:
                resized = F.interpolate(
                    image[None].to(self.device, torch.float32), size=(new_height, new_width), mode="bilinear",
                    antialias=True, align_corners=False,
                )  # fmt: skip
            top, left = (INPUT_SIZE - new_height) // 2, (INPUT_SIZE - new_width) // 2
            batch[index, :, top : top + new_height, left : left + new_width] = resized[0] / 127.5 - 1
            placements.append((new_width / width, new_height / height, left, top))
        return batch, torch.tensor(placements, dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def __call__(self, images: Sequence[ImageInput], video: Sequence[bool] | None = None) -> list[FaceDetections]:
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
            results.append(FaceDetections(pixel_boxes, image_scores.cpu(), pixel_keypoints, KEYPOINT_NAMES))
        return self.with_onet_points(tensors, results) if self.onet is not None else results

    def with_onet_points(self, images: list[torch.Tensor], detections: list[FaceDetections]) -> list[FaceDetections]:
        """ABAW's five points from O-Net on each face's square box, all faces of all images in one batch."""
        crops = [
            mtcnn.crop_boxes(image.to(self.device), mtcnn.squared(faces.boxes.to(self.device)), mtcnn.ONET_SIZE)
            for image, faces in zip(images, detections, strict=True)
        ]  # fmt: skip
        crops = torch.cat(crops)
        points = self.onet(mtcnn.normalise(crops))[2].cpu() if len(crops) else torch.zeros(0, 5, 2)
        extras = [KEYPOINT_NAMES.index(name) for name in BLAZEFACE_EXTRA_POINTS]
        refined, start = [], 0
        for faces in detections:
            boxes = mtcnn.squared(faces.boxes)
            five = boxes[:, None, :2] + points[start : start + len(faces)] * (boxes[:, None, 2:] - boxes[:, None, :2])
            landmarks = torch.cat([five, faces.landmarks[:, extras]], 1)
            refined.append(FaceDetections(faces.boxes, faces.scores, landmarks, self.keypoint_names))
            start += len(faces)
        return refined


class MtcnnDetector:
    """MTCNN (`faces.mtcnn`): an image pyramid for small faces, two refining stages, and the five points of ABAW's
    template (eye centres, nose tip, mouth corners). Weights ship with the package (no download).

    Finds faces from `min_face_size` pixels wide in pictures of any size, turned faces and crowds; slower than
    BlazeFace on video frames (a pyramid per picture). Thresholds are MTCNN's own for its first two stages;
    `min_score` is the last stage's.
    """

    keypoint_names = mtcnn.KEYPOINT_NAMES

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_score: float = 0.7,
        max_faces: int | None = None,
        min_face_size: float = 20.0,
        stage_thresholds: tuple[float, float] = (0.6, 0.7),
        scale_factor: float = 0.709,
        weights: str | Path = MTCNN_WEIGHTS,
    ):
        self.device = torch.device(device)
        self.min_score, self.max_faces, self.min_face_size = min_score, max_faces, min_face_size
        self.stage_thresholds, self.scale_factor = stage_thresholds, scale_factor
        self.network = load_detector_weights(mtcnn.Mtcnn(), weights).to(self.device)

    @torch.inference_mode()
    def __call__(self, images: Sequence[ImageInput], video: Sequence[bool] | None = None) -> list[FaceDetections]:
        return [self.detect(as_image_tensor(image)) for image in images]

    def detect(self, image: torch.Tensor) -> FaceDetections:
        pixels = image.to(self.device)  # kept in 8 bits: only the pyramid's levels and the crops are float
        boxes, scores = self.propose(pixels)
        boxes, scores = self.refine(pixels, boxes)
        return self.finish(pixels, boxes)

    def propose(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over the pyramid (a large level in tiles): candidate windows, merged within and across scales,
        moved by its offsets."""
        height, width = pixels.shape[-2:]
        scale = mtcnn.PNET_SIZE / self.min_face_size
        windows, scores, offsets = [], [], []
        source = pixels
        while min(height, width) * scale >= mtcnn.PNET_SIZE:
            size = (max(1, math.ceil(height * scale)), max(1, math.ceil(width * scale)))
            resized = mtcnn.area_resize(source, size)
            if height * width > mtcnn.FLOAT_PIXELS:  # a large photo: each level from the last, not from the photo
                source = resized
            cells, score, offset = mtcnn.pnet_candidates(self.network.pnet, resized, self.stage_thresholds[0])
            if len(cells):
                # Each output cell sees a 12 x 12 window of the resized picture, every 2 pixels.
                ratio = torch.tensor([width / size[1], height / size[0]] * 2, device=self.device)
                corners = cells.float() * 2
                window = torch.cat([corners, corners + mtcnn.PNET_SIZE], 1) * ratio
                keep = mtcnn.non_max_suppression(window, score, 0.5)
                windows.append(window[keep])
                scores.append(score[keep])
                offsets.append(offset[keep])
            scale *= self.scale_factor
        if not windows:
            return torch.zeros(0, 4, device=self.device), torch.zeros(0, device=self.device)
        windows, scores, offsets = torch.cat(windows), torch.cat(scores), torch.cat(offsets)
        keep = mtcnn.non_max_suppression(windows, scores, 0.7)
        return mtcnn.squared(mtcnn.regress(windows[keep], offsets[keep])), scores[keep]

    def refine(self, pixels: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """R-Net on 24 x 24 crops: the candidates it keeps, merged and moved by its offsets."""
        if not len(boxes):
            return boxes, torch.zeros(0, device=self.device)
        probability, offsets = self.network.rnet(mtcnn.normalise(mtcnn.crop_boxes(pixels, boxes, mtcnn.RNET_SIZE)))
        kept = probability >= self.stage_thresholds[1]
        boxes, probability, offsets = boxes[kept], probability[kept], offsets[kept]
        keep = mtcnn.non_max_suppression(boxes, probability, 0.7)
        return mtcnn.squared(mtcnn.regress(boxes[keep], offsets[keep])), probability[keep]

    def finish(self, pixels: torch.Tensor, boxes: torch.Tensor) -> FaceDetections:
        """O-Net on 48 x 48 crops: the faces, best first, with their final boxes and five points."""
        if not len(boxes):
            return FaceDetections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2), self.keypoint_names)
        crops = mtcnn.crop_boxes(pixels, boxes, mtcnn.ONET_SIZE)
        probability, offsets, points = self.network.onet(mtcnn.normalise(crops))
        kept = probability >= self.min_score
        boxes, probability, offsets, points = boxes[kept], probability[kept], offsets[kept], points[kept]
        landmarks = boxes[:, None, :2] + points * (boxes[:, None, 2:] - boxes[:, None, :2])
        boxes = mtcnn.regress(boxes, offsets)
        keep = mtcnn.non_max_suppression(boxes, probability, 0.7, by_min=True)[: self.max_faces]
        height, width = pixels.shape[-2:]
        limits = torch.tensor([width, height, width, height], device=boxes.device)
        boxes = boxes[keep].clamp(min=0).minimum(limits)
        return FaceDetections(boxes.cpu(), probability[keep].cpu(), landmarks[keep].cpu(), self.keypoint_names)


class AutoDetector:
    """The default: MTCNN for pictures (small, turned and crowded faces, once each), BlazeFace with O-Net's points
    for video frames (about ten times as fast, for the faces that fill a fair part of a frame, as in interviews and
    ABAW's videos). Both give ABAW's five points, so alignment and pose are the same for both."""

    def __init__(self, device: str | torch.device = "cpu", min_score: float | None = None,
                 max_faces: int | None = None, min_face_size: float = 20.0):  # fmt: skip
        scores = {} if min_score is None else {"min_score": min_score}
        self.min_score, self.max_faces = min_score, max_faces
        self.pictures = MtcnnDetector(device, max_faces=max_faces, min_face_size=min_face_size, **scores)
        self.frames = BlazeFaceDetector(device, max_faces=max_faces, **scores)
        self.keypoint_names = tuple(dict.fromkeys((*self.pictures.keypoint_names, *self.frames.keypoint_names)))

    def __call__(self, images: Sequence[ImageInput], video: Sequence[bool] | None = None) -> list[FaceDetections]:
        video = [False] * len(images) if video is None else list(video)
        results: list[FaceDetections | None] = [None] * len(images)
        for detector, wanted in ((self.frames, True), (self.pictures, False)):
            chosen = [index for index, is_frame in enumerate(video) if is_frame == wanted]
            for index, detections in zip(chosen, detector([images[i] for i in chosen]) if chosen else [], strict=True):
                results[index] = detections
        return results


DETECTORS = {"auto": AutoDetector, "blazeface": BlazeFaceDetector, "mtcnn": MtcnnDetector}


def load_face_detector(name: str = "auto", device: str | torch.device = "cpu", **options) -> FaceDetector:
    """A detector by name (`DETECTORS`); options go to its constructor (e.g. `min_score`, `max_faces`)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; available: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name](device=device, **options)
