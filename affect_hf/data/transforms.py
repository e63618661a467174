"""Image transforms of the recipes (PIL + numpy, no torchvision), each a pure function of the image and an rng.

- EMMA (`AffectImageTransform`, the authors' `EMMA_main.py`, itself MAE fine-tuning's): resize to
  `int(1.04 * size)` square, colour jitter (brightness, contrast, saturation 0.4, hue 0.1, in a random order)
  with probability 0.2, random `size` crop, horizontal flip with probability 0.5. CoTEX uses the same class with
  the authors' lighter setting: resize 1.02x, no colour jitter.
- MAE pretraining (`RandomResizedCropTransform`, facebookresearch/mae's `main_pretrain.py`): a random crop of
  20-100% of the area and aspect ratio 3/4-4/3, resized bicubically to `size`, then a flip.
- DAN (`DanTrainTransform`, DAN's AffectNet script): resize, flip, with probability 0.7 a random affine (rotation
  up to 20 degrees, translation up to 20%, scale 0.8-1), then random erasing with probability 0.5.
- eval, for every model: resize to `size` square.
- all: to float in [0, 1], normalise with the ImageNet mean/std.

Eval resizing is bilinear, as torchvision's default and `ViTImageProcessor`, so it matches the saved processor.
Every random draw comes from `augmentation_rng(seed, epoch, index)`: a resumed run re-creates exactly the same
augmented images whatever the DataLoader worker layout. Each transform makes all of its draws whether or not they
are used, so one draw never shifts another.
"""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .pictures import PictureTooLargeError, read_picture


TRAIN_RESIZE_SCALE = 1.04
# The preprocessing every model is trained with; the image processor saved with a model reads these too.
IMAGE_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGE_STD = tuple(IMAGENET_DEFAULT_STD)
RESAMPLING = PIL.Image.Resampling.BILINEAR
_MEAN = np.asarray(IMAGE_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGE_STD, dtype=np.float32)


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample's augmentation: a pure function of (seed, epoch, sample index)."""
    return np.random.default_rng([seed, epoch, index])


def load_rgb_image(image: "PIL.Image.Image | dict") -> PIL.Image.Image:
    """Decode an image fully and now, as RGB; an unreadable, truncated or oversized file raises `OSError` naming it.

    Accepts a PIL image or a `datasets.Image(decode=False)` value (`{"path": ..., "bytes": ...}`), read through
    `pictures.read_picture` (the pixel limit; truncation detected, unless someone set
    `PIL.ImageFile.LOAD_TRUNCATED_IMAGES`, which this package never does).
    """
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    path, data = image.get("path"), image.get("bytes")
    try:
        return read_picture(data if data is not None else path, upright=False, name=path)
    except PictureTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise OSError(f"Cannot decode image {path}: {error}") from error


def to_normalised_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32, ImageNet-normalised."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


@dataclass
class AffectImageTransform:
    """PIL image -> normalised (3, size, size) float32 tensor, with the paper's augmentation when `train`."""

    image_size: int
    train: bool
    resize_scale: float = TRAIN_RESIZE_SCALE
    color_jitter_probability: float = 0.2
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    flip_probability: float = 0.5

    @property
    def resize_size(self) -> int:
        """Side the image is resized to before the random crop (the authors' `int(size * 1.04)`: 232 for 224)."""
        return int(self.image_size * self.resize_scale) if self.train else self.image_size

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = image.convert("RGB").resize((self.resize_size, self.resize_size), RESAMPLING)
        if self.train:
            if rng is None:
                raise ValueError("A training transform needs `rng` (see `augmentation_rng`) to stay reproducible.")
            image = self._augment(image, rng)
        return to_normalised_tensor(image)

    def _augment(self, image: PIL.Image.Image, rng: np.random.Generator) -> PIL.Image.Image:
        # Every draw is made whether or not it is used, so one sample's draws never depend on another branch.
        apply_jitter = rng.random() < self.color_jitter_probability
        jitter_order = rng.permutation(4)
        brightness, contrast, saturation = (
            rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
            for strength in (self.brightness, self.contrast, self.saturation)
        )
        hue_shift = rng.uniform(-self.hue, self.hue)
        max_offset = self.resize_size - self.image_size
        top, left = rng.integers(0, max_offset + 1, size=2)
        flip = rng.random() < self.flip_probability

        if apply_jitter:
            for operation in jitter_order:
                if operation == 0:
                    image = PIL.ImageEnhance.Brightness(image).enhance(brightness)
                elif operation == 1:
                    image = PIL.ImageEnhance.Contrast(image).enhance(contrast)
                elif operation == 2:
                    image = PIL.ImageEnhance.Color(image).enhance(saturation)
                else:
                    image = _shift_hue(image, hue_shift)
        image = image.crop((int(left), int(top), int(left) + self.image_size, int(top) + self.image_size))
        if flip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return image


def _shift_hue(image: PIL.Image.Image, shift: float) -> PIL.Image.Image:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]), as torchvision's `adjust_hue` does on PIL images."""
    if shift == 0:
        return image
    hue, saturation, value = image.convert("HSV").split()
    rotated = (np.asarray(hue, dtype=np.int16) + int(round(shift * 255))) % 256
    hue = PIL.Image.fromarray(rotated.astype(np.uint8), "L")
    return PIL.Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def _require_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("A training transform needs `rng` (see `augmentation_rng`) to stay reproducible.")
    return rng


@dataclass
class RandomResizedCropTransform:
    """MAE pretraining: a random crop of `scale` of the area and `ratio` aspect, resized bicubically, then a flip."""

    image_size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    attempts: int = 10

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), as torchvision's RandomResizedCrop: up to `attempts` tries, else the centre."""
        area = width * height
        log_ratio = np.log(self.ratio)
        areas = rng.uniform(*self.scale, size=self.attempts) * area
        ratios = np.exp(rng.uniform(*log_ratio, size=self.attempts))
        positions = rng.random((self.attempts, 2))
        for target_area, ratio, (y, x) in zip(areas, ratios, positions, strict=True):
            crop_width = int(round(np.sqrt(target_area * ratio)))
            crop_height = int(round(np.sqrt(target_area / ratio)))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(y * (height - crop_height + 1))
                left = int(x * (width - crop_width + 1))
                return left, top, left + crop_width, top + crop_height
        # Fallback: the largest centred crop whose aspect lies within `ratio`.
        aspect = width / height
        if aspect < self.ratio[0]:
            crop_width, crop_height = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            crop_width, crop_height = int(round(height * self.ratio[1])), height
        else:
            crop_width, crop_height = width, height
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        return left, top, left + crop_width, top + crop_height

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = _require_rng(rng)
        image = image.convert("RGB")
        box = self.crop_box(image.width, image.height, rng)
        flip = rng.random() < self.flip_probability
        image = image.resize((self.image_size, self.image_size), PIL.Image.Resampling.BICUBIC, box=box)
        if flip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return to_normalised_tensor(image)


@dataclass
class DanTrainTransform:
    """DAN's AffectNet augmentation: resize, flip, random affine (p=0.7), then random erasing (p=0.5)."""

    image_size: int
    flip_probability: float = 0.5
    affine_probability: float = 0.7
    degrees: float = 20.0
    translate: float = 0.2
    scale: tuple[float, float] = (0.8, 1.0)
    erasing_probability: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.33)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = _require_rng(rng)
        size = self.image_size
        flip = rng.random() < self.flip_probability
        apply_affine = rng.random() < self.affine_probability
        angle = rng.uniform(-self.degrees, self.degrees)
        shift = np.round(rng.uniform(-self.translate, self.translate, size=2) * size)
        zoom = rng.uniform(*self.scale)
        erase = rng.random() < self.erasing_probability
        erase_area = rng.uniform(*self.erasing_scale, size=10) * size * size
        erase_aspect = np.exp(rng.uniform(*np.log(self.erasing_ratio), size=10))
        erase_positions = rng.random((10, 2))

        image = image.convert("RGB").resize((size, size), RESAMPLING)
        if flip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        if apply_affine:
            # Rotate and zoom about the centre, then shift; PIL wants the inverse map (output -> input pixel).
            theta = np.deg2rad(angle)
            forward = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) * zoom
            inverse = np.linalg.inv(forward)
            centre = np.array([size / 2, size / 2])
            offset = centre - inverse @ (centre + shift)
            coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
            image = image.transform(
                (size, size), PIL.Image.Transform.AFFINE, coefficients, PIL.Image.Resampling.NEAREST
            )
        pixels = to_normalised_tensor(image)
        if erase:
            for area, aspect, (y, x) in zip(erase_area, erase_aspect, erase_positions, strict=True):
                height, width = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
                if height < size and width < size:
                    top, left = int(y * (size - height + 1)), int(x * (size - width + 1))
                    pixels[:, top : top + height, left : left + width] = 0.0
                    break
        return pixels
