"""Faces in whole pictures -> affect: detection, alignment and the model, batched on one device.

`affect_hf.pipeline(model)` is the user's entry point (one answer per face, with its box and landmarks); tables of
pictures, folders and videos (`affect_hf.analyze`, `affect-hf predict`) feed it batches of frames through
`FaceAffectAnalyzer.analyze_images`, which gives one `FaceResult` per face.
"""

import inspect
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers.image_utils import load_image

from ..data.transforms import IMAGE_MEAN, IMAGE_STD
from ..faces.alignment import align_faces
from ..faces.detection import FaceDetections, FaceDetector, ImageInput, as_image_tensor, load_face_detector
from ..faces.pose import head_poses
from ..modeling.modeling_temporal import frame_inputs
from ..modeling.pipeline_affect import affect_scores, describe
from ..models import TEMPORAL_MODEL_TYPE, load_affect_model, load_image_normalisation
from .results import FaceResult


def check_face_options(min_face_score: float | None, max_faces: int | None) -> None:
    """The detector options every tool takes, range-checked once (None: the detector's own default)."""
    if min_face_score is not None and not 0 <= min_face_score <= 1:
        raise ValueError(f"min_face_score must lie in [0, 1] (a detector probability), got {min_face_score}")
    if max_faces is not None and max_faces < 1:
        raise ValueError(f"max_faces must be at least 1 (or None for every face), got {max_faces}")


class StageSeconds(dict):
    """Wall-clock seconds per stage of a run ("decode_wait", "detect", "align", "model", "pose", "track", "write"):
    where the time goes, for the summary, the shards' records and the benchmark."""

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        tick = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - tick


@dataclass
class AlignedFaces:
    """A batch's faces, found and aligned for the model (`FaceAffectAnalyzer.find_faces`)."""

    detections: list[FaceDetections]
    crops: torch.Tensor  # F x 3 x S x S in [0, 255], on the model's device
    sharpness: list[float]
    ready: "torch.cuda.Event | None" = None  # recorded on the CUDA stream that aligned them, if not the default


class FaceAffectAnalyzer:
    """Detect -> align like ABAW's crops -> the affect model, for batches of pictures of any size.

    Crops are warped straight to the model's input size (one resampling, not two), then normalised with the saved
    image processor's mean and std, so a face reaches the model as an ABAW-trained model expects it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        detector: FaceDetector,
        mean: Sequence[float] = IMAGE_MEAN,
        std: Sequence[float] = IMAGE_STD,
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.detector, self.batch_size = model, detector, batch_size
        # A detector written before `video` existed takes the images alone: it is called so.
        parameters = inspect.signature(detector).parameters
        self.detector_takes_video = "video" in parameters or any(
            parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()
        )
        self.source: str | None = None  # the folder or Hub id it was loaded from (`from_pretrained`)
        self.backend = "torch" if isinstance(model, torch.nn.Module) else type(model).__name__
        self.config = model.config
        self.device = model.device
        self.image_size = model.config.image_size
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        device: str | torch.device = "auto",
        detector: str | FaceDetector = "auto",
        batch_size: int = 32,
        min_face_score: float | None = None,
        max_faces: int | None = None,
        backend: str = "torch",
        dtype: str | torch.dtype = "auto",
        **hub_options: Any,
    ) -> "FaceAffectAnalyzer":
        check_face_options(min_face_score, max_faces)
        affect_model = load_affect_model(model, backend=backend, device=device, dtype=dtype, **hub_options)
        if affect_model.config.model_type == TEMPORAL_MODEL_TYPE:
            raise ValueError(
                f"{model} is a temporal model: it reads a frame model's outputs, not pictures. Give its frame model "
                f"({affect_model.config.frame_model}) as the model and this folder as `temporal` (--temporal)"
            )
        mean, std = load_image_normalisation(model, **hub_options)
        if isinstance(detector, str):
            scores = {} if min_face_score is None else {"min_score": min_face_score}
            detector = load_face_detector(detector, affect_model.device, max_faces=max_faces, **scores)
        analyzer = cls(affect_model, detector, mean, std, batch_size)
        analyzer.source, analyzer.backend = str(model), backend
        return analyzer

    @property
    def landmark_names(self) -> tuple[str, ...]:
        return tuple(self.detector.keypoint_names)

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """Aligned crops in [0, 255] -> the model's inputs, with the saved image processor's mean and std."""
        return (crops - self.mean) / self.std

    def analyze_images(
        self,
        images: Sequence[ImageInput],
        video: Sequence[bool] | None = None,
        stage_seconds: StageSeconds | None = None,
    ) -> list[list[FaceResult]]:
        """Every face of every picture (best first, `face_id` their rank); a picture without a face gets [].

        `video` says which images are video frames: the default detector (`auto`) finds faces in those faster.
        `stage_seconds` gets the seconds spent in "detect", "align", "model" and "pose" added (as the host waits for
        them: on a GPU, queued work is counted where its result is read).
        """
        return self.describe_faces(self.find_faces(images, video, stage_seconds), stage_seconds)

    @torch.inference_mode()
    def find_faces(
        self,
        images: Sequence[ImageInput],
        video: Sequence[bool] | None = None,
        stage_seconds: StageSeconds | None = None,
        stream: "torch.cuda.Stream | None" = None,
    ) -> AlignedFaces:
        """The first half of `analyze_images`: detection and alignment, on a CUDA `stream` when one is given (so
        that it can overlap the model's work on the default stream)."""
        timed = (StageSeconds() if stage_seconds is None else stage_seconds).timed
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            with timed("detect"):
                tensors = [as_image_tensor(image) for image in images]
                detections = (
                    self.detector(tensors, video=video) if self.detector_takes_video else self.detector(tensors)
                )
            with timed("align"):
                crops = [
                    align_faces(tensor.to(self.device), faces.landmarks, self.image_size, faces.keypoint_names)
                    for tensor, faces in zip(tensors, detections, strict=True)
                ]
                crops = torch.cat(crops) if crops else torch.zeros(0, 3, self.image_size, self.image_size)
                sharpness = laplacian_variance(crops).tolist()
            ready = None
            if stream is not None:
                ready = torch.cuda.Event()
                ready.record(stream)
        return AlignedFaces(detections, crops, sharpness, ready)

    @torch.inference_mode()
    def describe_faces(self, faces: AlignedFaces, stage_seconds: StageSeconds | None = None) -> list[list[FaceResult]]:
        """The second half of `analyze_images`: the model and the head poses of faces `find_faces` aligned."""
        timed = (StageSeconds() if stage_seconds is None else stage_seconds).timed
        crops = faces.crops
        if faces.ready is not None:  # aligned on another stream: wait for it, and keep its memory until used here
            current = torch.cuda.current_stream(crops.device)
            current.wait_event(faces.ready)
            crops.record_stream(current)
        chunks = []
        with timed("model"):
            for start in range(0, len(crops), self.batch_size):
                pixel_values = self.normalise(crops[start : start + self.batch_size])
                outputs = self.model(pixel_values=pixel_values.to(self.model.dtype))
                chunk = {name: value.cpu() for name, value in affect_scores(outputs, self.config).items()}
                pooled = getattr(outputs, "pooler_output", None)
                if pooled is None:
                    pooled = getattr(outputs, "features", None)  # DAN's
                if pooled is not None:
                    chunk["features"] = pooled.float().cpu()
                if pooled is not None and getattr(outputs, "au_logits", None) is not None:  # EMMA: what time reads
                    chunk["frame_scores"] = frame_inputs(outputs)[1].float().cpu()
                chunks.append(chunk)
        scores = {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]} if chunks else {}
        with timed("pose"):
            return self._results(faces.detections, scores, faces.sharpness)

    def _results(self, detections: list, scores: dict[str, torch.Tensor], sharpness: list[float]) -> list:
        """Per picture, its faces as `FaceResult`s, with their head poses."""
        results, row = [], 0
        every_pose = head_poses([(faces.landmarks, faces.keypoint_names) for faces in detections])
        for faces, poses in zip(detections, every_pose, strict=True):
            boxes, landmarks = faces.boxes.tolist(), faces.landmarks.tolist()
            results.append([
                FaceResult(
                    box=tuple(boxes[i]),
                    score=float(faces.scores[i]),
                    landmarks={name: tuple(point) for name, point in zip(faces.keypoint_names, landmarks[i],
                                                                          strict=True)},
                    face_id=i,
                    **describe(scores, row + i, self.config),
                    features=scores["features"][row + i] if "features" in scores else None,
                    frame_scores=scores["frame_scores"][row + i] if "frame_scores" in scores else None,
                    **dict(zip(("yaw", "pitch", "roll"), poses[i] or (None, None, None), strict=True)),
                    sharpness=sharpness[row + i],
                )
                for i in range(len(faces))
            ])  # fmt: skip
            row += len(faces)
        return results

    def __call__(self, images: ImageInput | str | Sequence[ImageInput | str]) -> list[dict] | list[list[dict]]:
        """Per picture, one answer per face (best first): `FaceResult.to_dict()`, the box, score, landmarks, face id
        and the affect pipeline's fields.

        Pictures are paths, URLs, PIL images or H x W x 3 uint8 arrays; one picture gives one list of faces.
        """
        single = isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence)
        pictures = [images] if single else list(images)
        results = []
        for start in range(0, len(pictures), self.batch_size):  # paths are read a batch at a time
            chunk = [load_image(str(p)) if isinstance(p, (str, os.PathLike)) else p
                     for p in pictures[start : start + self.batch_size]]  # fmt: skip
            results += [[face.to_dict() for face in faces] for faces in self.analyze_images(chunk)]
        return results[0] if single else results


def laplacian_variance(crops: torch.Tensor) -> torch.Tensor:
    """A crop's sharpness: the variance of the 3 x 3 Laplacian of its luminance in [0, 1] (higher is sharper). Crops
    are at the model's input size, so values compare across the faces of one model."""
    if not len(crops):
        return crops.new_zeros(0)
    luminance = (crops.float() * crops.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True) / 255
    kernel = crops.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(luminance, kernel).flatten(1).var(1).cpu()


def pipeline(model: str | os.PathLike, **options: Any) -> FaceAffectAnalyzer:
    """Faces found, aligned and analysed in whole pictures: `affect_hf.pipeline("folder_or_hub_id")(image)`.

    Options: `device` ("auto"), `detector` ("auto": MTCNN for pictures, BlazeFace for video frames; "mtcnn",
    "blazeface", or a `FaceDetector`), `batch_size`, `min_face_score` (None: the detector's own),
    `max_faces`, `backend` ("torch", or "onnx" / "onnx-int8" for an `affect-hf export onnx` folder), `dtype` (the
    model's precision: "auto", "fp32", "bf16", "fp16"; detection and alignment stay fp32), and Hub options such as
    `revision` or `trust_remote_code`.
    """
    return FaceAffectAnalyzer.from_pretrained(model, **options)


__all__ = ["AlignedFaces", "FaceAffectAnalyzer", "StageSeconds", "check_face_options", "pipeline"]
