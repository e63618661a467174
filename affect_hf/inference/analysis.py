"""Faces in whole pictures -> affect: detection, alignment and the model, batched on one device.

`affect_hf.pipeline(model)` is the user's entry point (one result per face, with its box and landmarks); video and
folder analysis (`affect-hf predict`) feed it batches of frames through `FaceAffectAnalyzer.analyze`.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.image_utils import load_image

from modeling.pipeline_affect import affect_scores, describe

from ..data.transforms import IMAGE_MEAN, IMAGE_STD
from ..faces.alignment import align_faces
from ..faces.detection import FaceDetections, FaceDetector, ImageInput, as_image_tensor, load_face_detector


AFFECT_MODEL_TYPES = ("emma", "cotex", "dan")
BACKENDS = ("torch", "onnx", "onnx-int8")


class NotAnAffectModelError(ValueError):
    pass


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_affect_model(
    name_or_path: str | os.PathLike, device: str | torch.device = "cpu", backend: str = "torch", **hub_options: Any
):
    """An affect model (EMMA, CoTEX or DAN) in eval mode, with its crop size and normalisation.

    The config is read first, so a folder of another kind fails with its type named before any weight is read.
    `backend="onnx"` / `"onnx-int8"` runs an `affect-hf export onnx` folder (given, or the `onnx/` folder inside
    the model folder, which must then hold the weights it was exported from) with ONNX Runtime on the CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    name_or_path = str(name_or_path)
    if os.sep in name_or_path and not os.path.isdir(name_or_path):
        raise FileNotFoundError(f"model folder not found: {name_or_path}")
    config = AutoConfig.from_pretrained(name_or_path, **hub_options)
    if config.model_type not in AFFECT_MODEL_TYPES:
        raise NotAnAffectModelError(
            f"{name_or_path} holds a {config.model_type!r} model, not an affect model ({', '.join(AFFECT_MODEL_TYPES)})"
        )
    if backend != "torch":
        from ..export import OnnxAffectModel

        inside = Path(name_or_path) / "onnx"
        folder, source = (inside, name_or_path) if inside.is_dir() else (Path(name_or_path), None)
        model = OnnxAffectModel(folder, int8=backend == "onnx-int8", source_model_dir=source)
        processor = AutoImageProcessor.from_pretrained(folder)
        return model, tuple(processor.image_mean), tuple(processor.image_std)
    model = AutoModel.from_pretrained(name_or_path, **hub_options).eval().to(resolve_device(device))
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, **hub_options)
        mean, std = processor.image_mean, processor.image_std
    except OSError:  # a folder without preprocessor_config.json: the training transform's values
        mean, std = IMAGE_MEAN, IMAGE_STD
    return model, tuple(mean), tuple(std)


@dataclass
class FrameAnalysis:
    """One picture's faces (best first) and the model's `affect_scores` for each, row i for face i."""

    faces: FaceDetections
    scores: dict[str, torch.Tensor]


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
        self.model, self.detector, self.batch_size = model, detector, batch_size
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
        detector: str | FaceDetector = "blazeface",
        batch_size: int = 32,
        min_face_score: float = 0.5,
        max_faces: int | None = None,
        backend: str = "torch",
        **hub_options: Any,
    ) -> "FaceAffectAnalyzer":
        device = resolve_device(device)
        affect_model, mean, std = load_affect_model(model, device, backend, **hub_options)
        if isinstance(detector, str):
            detector = load_face_detector(detector, device, min_score=min_face_score, max_faces=max_faces)
        return cls(affect_model, detector, mean, std, batch_size)

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """Aligned crops in [0, 255] -> the model's inputs, with the saved image processor's mean and std."""
        return (crops - self.mean) / self.std

    @torch.inference_mode()
    def analyze(self, images: Sequence[ImageInput]) -> list[FrameAnalysis]:
        """Every face of every picture, with its scores; pictures without a face get an empty analysis."""
        tensors = [as_image_tensor(image) for image in images]
        detections = self.detector(tensors)
        crops = [
            align_faces(tensor.to(self.device), faces.landmarks, self.image_size, faces.keypoint_names)
            for tensor, faces in zip(tensors, detections, strict=True)
        ]
        crops = torch.cat(crops) if crops else torch.zeros(0, 3, self.image_size, self.image_size)
        chunks = []
        for start in range(0, len(crops), self.batch_size):
            pixel_values = self.normalise(crops[start : start + self.batch_size])
            outputs = self.model(pixel_values=pixel_values.to(self.model.dtype))
            chunks.append({name: value.cpu() for name, value in affect_scores(outputs, self.config).items()})
        scores = {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]} if chunks else {}
        analyses, start = [], 0
        for faces in detections:
            stop = start + len(faces)
            analyses.append(FrameAnalysis(faces, {name: value[start:stop] for name, value in scores.items()}))
            start = stop
        return analyses

    def __call__(self, images: ImageInput | str | Sequence[ImageInput | str]) -> list[dict] | list[list[dict]]:
        """Per picture, one result per face (best first): box, score, landmarks and the affect pipeline's fields.

        Pictures are paths, URLs, PIL images or H x W x 3 uint8 arrays; one picture gives one list of faces.
        """
        single = isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence)
        pictures = [images] if single else list(images)
        results = []
        for start in range(0, len(pictures), self.batch_size):  # paths are read a batch at a time
            chunk = [load_image(str(p)) if isinstance(p, (str, os.PathLike)) else p
                     for p in pictures[start : start + self.batch_size]]  # fmt: skip
            for analysis in self.analyze(chunk):
                faces = analysis.faces
                results.append([
                    {
                        "box": faces.boxes[i].tolist(),
                        "score": float(faces.scores[i]),
                        "landmarks": dict(zip(faces.keypoint_names, faces.landmarks[i].tolist(), strict=True)),
                        **describe(analysis.scores, i, self.config),
                    }
                    for i in range(len(faces))
                ])  # fmt: skip
        return results[0] if single else results


def pipeline(model: str | os.PathLike, **options: Any) -> FaceAffectAnalyzer:
    """Faces found, aligned and analysed in whole pictures: `affect_hf.pipeline("folder_or_hub_id")(image)`.

    Options: `device` ("auto"), `detector` ("blazeface" or a `FaceDetector`), `batch_size`, `min_face_score`,
    `max_faces`, `backend` ("torch", or "onnx" / "onnx-int8" for an `affect-hf export onnx` folder), and Hub
    options such as `revision` or `trust_remote_code`.
    """
    return FaceAffectAnalyzer.from_pretrained(model, **options)
