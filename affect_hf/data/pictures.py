"""Opening picture files, for training and for analysis alike: one home for the pixel limit and for 8-bit RGB.

The pixel limit (`MAX_PIXELS`) admits 150-megapixel photos (12000 x 12000 is 144 MP) and refuses larger ones, so a
"decompression bomb" (a small file that declares, say, 50000 x 50000 pixels) is refused from its header, before it
is decoded. PIL's own limit (`PIL.Image.MAX_IMAGE_PIXELS`) warns from 89 MP and refuses from twice that; ours
replaces its warning, and a limit above PIL's refusal needs PIL's raised too.
"""

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch


MAX_PIXELS = 150_000_000
# Modes holding more than 8 bits per sample: `convert("RGB")` would clip them (16-bit pictures come out white,
# float ones in [0, 1] black).
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class PictureTooLargeError(OSError):
    """A picture with more pixels than the limit (a decompression bomb, or a photo beyond `max_pixels`)."""


def open_picture(
    source: str | os.PathLike | bytes | BinaryIO, max_pixels: int = MAX_PIXELS, name: str | None = None
) -> PIL.Image.Image:
    """The picture decoded now (PIL decodes lazily: truncation then surfaces here, not as grey pixels).

    Raises `PictureTooLargeError` beyond `max_pixels`, `PIL.UnidentifiedImageError` for a file that is no picture,
    and `OSError` for a broken one; `name` (default: the path) is what the messages call it.
    """
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "picture")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with warnings.catch_warnings():  # our limit is checked below; PIL's warning under it would only mislead
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        try:
            image = PIL.Image.open(source)
        except PIL.Image.DecompressionBombError as error:
            raise PictureTooLargeError(f"{name}: {error}") from None
    if image.width * image.height > max_pixels:
        image.close()
        raise PictureTooLargeError(
            f"{name}: {image.width} x {image.height} pixels, more than the limit of {max_pixels:,} (max_pixels)"
        )
    try:
        image.load()
    except BaseException:
        image.close()
        raise
    return image


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode as 8-bit RGB; high-depth pictures are scaled to 8 bits rather than clipped.

    16-bit pictures are divided by 257 (65535 -> 255). 32-bit integer and float pictures are read by their range:
    values up to 1 (floats) are fractions of white, up to 255 already 8-bit, up to 65535 16-bit; larger ranges
    are scaled by their maximum. Not-a-number and negative values are black.
    """
    if image.mode in HIGH_DEPTH_MODES:
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        image = PIL.Image.fromarray(
            np.round(values * _eight_bit_scale(image.mode, values)).clip(0, 255).astype(np.uint8)
        )
    return image if image.mode == "RGB" else image.convert("RGB")


def rgb_tensor(image: PIL.Image.Image, band_pixels: int = 1 << 22) -> torch.Tensor:
    """An 8-bit RGB picture as a 3 x H x W uint8 tensor, copied a band of rows at a time: a large photo is held
    twice while it is copied (PIL's pixels and the tensor), not three times."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB picture, got mode {image.mode}")
    pixels = torch.empty(image.height, image.width, 3, dtype=torch.uint8)
    rows = max(1, band_pixels // max(image.width, 1))
    for top in range(0, image.height, rows):
        bottom = min(top + rows, image.height)
        band = image.crop((0, top, image.width, bottom)).tobytes()
        pixels[top:bottom].numpy()[...] = np.frombuffer(band, np.uint8).reshape(bottom - top, image.width, 3)
    return pixels.permute(2, 0, 1)


def _eight_bit_scale(mode: str, values: np.ndarray) -> float:
    if mode.startswith("I;16"):
        return 1 / 257
    brightest = float(values.max()) if values.size else 0.0
    if mode == "F" and brightest <= 1.0:
        return 255.0
    if brightest <= 255:
        return 1.0
    if brightest <= 65535:
        return 1 / 257
    return 255 / brightest


def read_picture(
    source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS, upright: bool = True, name: str | None = None
) -> PIL.Image.Image:
    """`open_picture` as 8-bit RGB, turned upright as its EXIF orientation says (phone photos) when `upright`.
    An RGB photo is turned in place and not copied: a large one is held once."""
    image = open_picture(source, max_pixels, name)
    try:
        if upright:
            PIL.ImageOps.exif_transpose(image, in_place=True)
        rgb = to_rgb(image)
    except BaseException:
        image.close()
        raise
    if rgb is not image:
        image.close()
    return rgb


__all__ = ["MAX_PIXELS", "PictureTooLargeError", "open_picture", "read_picture", "rgb_tensor", "to_rgb"]
