"""Image transforms of the paper's recipe (PIL + numpy, no torchvision) and the torch Dataset that applies them.

The recipe is the authors' (`EMMA_main.py` of JackYFL/EMMA_CoTEX_ABAW4, itself MAE fine-tuning's):

- train: resize to `int(1.04 * size)` square, colour jitter (brightness, contrast, saturation 0.4, hue 0.1, in
  a random order) with probability 0.2, random `size` crop, horizontal flip with probability 0.5;
- eval: resize to `size` square;
- both: to float in [0, 1], normalise with the ImageNet mean/std.

Resizing is bilinear, as torchvision's default and `ViTImageProcessor`, so eval matches the saved processor.
Every random draw comes from `augmentation_rng(seed, epoch, index)`: a resumed run re-creates exactly the same
augmented images whatever the DataLoader worker layout.
"""

import io
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


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
    """Decode an image fully and now, as RGB; an unreadable or truncated file raises `OSError` naming its path.

    Accepts a PIL image or a `datasets.Image(decode=False)` value (`{"path": ..., "bytes": ...}`). PIL decodes
    lazily, so `.load()` is forced here: truncation is then detected (unless someone set
    `PIL.ImageFile.LOAD_TRUNCATED_IMAGES`, which this package never does) instead of surfacing as grey pixels.
    """
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    path, data = image.get("path"), image.get("bytes")
    try:
        with PIL.Image.open(io.BytesIO(data) if data is not None else path) as opened:
            opened.load()
            return opened.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise OSError(f"Cannot decode image {path}: {error}") from error


@dataclass
class AffectImageTransform:
    """PIL image -> normalised (3, size, size) float32 tensor, with the paper's augmentation when `train`."""

    image_size: int
    train: bool
    color_jitter_probability: float = 0.2
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    flip_probability: float = 0.5

    @property
    def resize_size(self) -> int:
        """Side the image is resized to before the random crop (the authors' `int(size * 1.04)`: 232 for 224)."""
        return int(self.image_size * TRAIN_RESIZE_SCALE) if self.train else self.image_size

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = image.convert("RGB").resize((self.resize_size, self.resize_size), RESAMPLING)
        if self.train:
            if rng is None:
                raise ValueError("A training transform needs `rng` (see `augmentation_rng`) to stay reproducible.")
            image = self._augment(image, rng)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - _MEAN) / _STD
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

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


class AbawMtlTorchDataset(torch.utils.data.Dataset):
    """ABAW MTL rows -> model inputs: `EmmaForAffectAnalysis(**batch)` takes a default-collated batch as is.

    Each item is a dict of tensors: `pixel_values` (3, size, size) float32, `valence_arousal` (2,) float32,
    `expression` () int64 and `action_units` (12,) int64, missing labels kept as their ABAW codes (-5, -1, -1).
    Images are decoded here, i.e. in the DataLoader workers.

    The epoch lives in shared memory, so `set_epoch` also reaches persistent workers; call it before iterating.
    """

    def __init__(self, dataset, image_size: int, train: bool, seed: int = 0):
        self.dataset = dataset
        self.transform = AffectImageTransform(image_size=image_size, train=train)
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of `epoch` (the same epoch always gives the same images)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        row = self.dataset[index]
        rng = augmentation_rng(self.seed, self.epoch, index) if self.transform.train else None
        return {
            "pixel_values": self.transform(load_rgb_image(row["image"]), rng),
            "valence_arousal": torch.tensor([row["valence"], row["arousal"]], dtype=torch.float32),
            "expression": torch.tensor(row["expression"], dtype=torch.int64),
            "action_units": torch.tensor(row["action_units"], dtype=torch.int64),
        }
