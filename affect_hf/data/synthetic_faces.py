"""Synthetic faces in the real on-disk layouts of every recipe's data, so tests, demos and benchmarks never download.

- `make_synthetic_faces`: unlabeled faces for MAE pretraining: mixed sizes, aspect ratios, modes and formats, a few
  corrupt files, optionally packed as WebDataset-style `.tar` shards (with a `.json` beside each image).
- `make_synthetic_lsd`: the ABAW4 LSD layout (synthetic training faces, "real" validation faces with another
  rendering style), as released (`ANGRER` included) or in the authors' `train/` + `val/` form.
- `make_synthetic_affectnet`: AffectNet-style class folders (by name or index) or AffectNet's CSV lists.

Each face is drawn with PIL: a skin-coloured head on a background, eyes, brows, nose and a mouth. In the labelled
sets the class shows as the background colour (a corner of the RGB cube, learnable by a tiny model in seconds)
and in the brows and mouth; the unlabeled faces vary in everything, so an MAE has structure to learn.
"""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from ..files import atomic_path, write_text_atomically
from ..labels import AFFECTNET_EXPRESSIONS, AFFECTNET_NON_EXPRESSION_CODES, LSD_EXPRESSIONS, LSD_FOLDER_ALIASES
from .affectnet import AFFECTNET_COLUMNS
from .synthetic import EXPRESSION_COLORS, prepare_synthetic_root


_SKIN_TONES = np.array([[241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [255, 219, 172]], np.float32)
_JPEG_QUALITY = 90
# Mouth curvature and brow slant per expression name (smile > 0, frown < 0; brows raised > 0, knitted < 0).
_EXPRESSION_SHAPES = {
    "neutral": (0.0, 0.0),
    "happy": (1.0, 0.2),
    "happiness": (1.0, 0.2),
    "sad": (-0.8, 0.5),
    "sadness": (-0.8, 0.5),
    "surprise": (0.0, 1.0),
    "fear": (-0.3, 0.8),
    "disgust": (-0.6, -0.6),
    "anger": (-0.5, -1.0),
    "contempt": (0.4, -0.3),
}


def render_face(
    rng: np.random.Generator,
    width: int,
    height: int,
    background: np.ndarray | None = None,
    expression: str | None = None,
    noise_std: float = 6.0,
) -> PIL.Image.Image:
    """One synthetic face (RGB). Geometry, skin tone and position are drawn from `rng`; the expression (an
    AffectNet or LSD class name) sets the mouth and brows, else they are random."""
    scale = 4  # drawn large, then downsampled: smooth edges at any size
    canvas = PIL.Image.new("RGB", (width * scale, height * scale))
    draw = PIL.ImageDraw.Draw(canvas)
    if background is None:
        background = rng.uniform(0, 255, 3)
    top, bottom = background, np.clip(background + rng.uniform(-60, 60, 3), 0, 255)
    for row in range(height * scale):  # a vertical gradient
        colour = top + (bottom - top) * row / (height * scale)
        draw.line([(0, row), (width * scale, row)], fill=tuple(int(c) for c in colour))
    side = min(width, height) * scale
    centre_x = width * scale / 2 + rng.uniform(-0.08, 0.08) * side
    centre_y = height * scale / 2 + rng.uniform(-0.06, 0.06) * side
    half_width, half_height = side * rng.uniform(0.28, 0.36), side * rng.uniform(0.36, 0.44)
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] + rng.uniform(-15, 15, 3)
    draw.ellipse(
        [centre_x - half_width, centre_y - half_height, centre_x + half_width, centre_y + half_height],
        fill=tuple(int(c) for c in np.clip(skin, 0, 255)),
    )
    mouth_curve, brow_slant = (
        _EXPRESSION_SHAPES[expression.lower()] if expression is not None else rng.uniform(-1, 1, 2)
    )
    eye_y, eye_dx = centre_y - 0.18 * half_height, 0.42 * half_width
    eye_radius = 0.12 * half_width * rng.uniform(0.8, 1.2)
    dark = tuple(int(c) for c in rng.uniform(10, 60, 3))
    for sign in (-1, 1):
        x = centre_x + sign * eye_dx
        draw.ellipse([x - eye_radius, eye_y - eye_radius * 0.7, x + eye_radius, eye_y + eye_radius * 0.7], fill=dark)
        brow_y = eye_y - 2.2 * eye_radius - brow_slant * eye_radius
        inner, outer = x - sign * 1.4 * eye_radius, x + sign * 1.4 * eye_radius
        draw.line(
            [(inner, brow_y + brow_slant * 0.8 * eye_radius), (outer, brow_y - brow_slant * 0.4 * eye_radius)],
            fill=dark,
            width=max(1, int(eye_radius * 0.5)),
        )
    nose = centre_y + 0.12 * half_height
    draw.line([(centre_x, eye_y + eye_radius), (centre_x, nose)], fill=dark, width=max(1, int(eye_radius * 0.3)))
    mouth_y, mouth_half = centre_y + 0.5 * half_height, 0.4 * half_width
    lip = tuple(int(c) for c in np.clip(skin * np.array([0.8, 0.45, 0.45]), 0, 255))
    bend = mouth_curve * 0.35 * half_height
    points = [(centre_x + t * mouth_half, mouth_y - bend * t * t) for t in np.linspace(-1, 1, 16)]  # smile: corners up
    draw.line(points, fill=lip, width=max(1, int(eye_radius * 0.6)))
    image = canvas.resize((width, height), PIL.Image.Resampling.LANCZOS)
    pixels = np.asarray(image, np.float32) + rng.normal(0, noise_std, (height, width, 3))
    return PIL.Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def _encode(image: PIL.Image.Image, extension: str) -> bytes:
    buffer = io.BytesIO()
    if extension in (".jpg", ".jpeg"):
        image.convert("RGB" if image.mode != "L" else "L").save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _corrupt(data: bytes, kind: int) -> bytes:
    """Three ways real files break: garbage, a truncated image, an empty file."""
    return (b"this is not an image", data[: max(16, len(data) // 3)], b"")[kind % 3]


def make_synthetic_faces(
    root: str | os.PathLike,
    num_images: int = 256,
    min_size: int = 40,
    max_size: int = 96,
    num_corrupt: int = 0,
    images_per_shard: int = 0,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Unlabeled faces of mixed sizes (sides in [min_size, max_size]), modes (RGB, grey, RGBA) and formats (JPEG,
    PNG) under `root/<group>/`, plus `num_corrupt` broken files among them; returns `root`.

    With `images_per_shard`, the same samples are instead packed into `root/faces-000000.tar`, ... (WebDataset
    style: `<key>.jpg` or `<key>.png` beside `<key>.json`), corrupt members included.
    """
    root = prepare_synthetic_root(root, overwrite)
    rng = np.random.default_rng([seed, 7])
    corrupt = set(rng.choice(num_images, size=min(num_corrupt, num_images), replace=False).tolist())
    samples = []
    for index in range(num_images):
        width, height = (int(side) for side in rng.integers(min_size, max_size + 1, 2))
        image = render_face(rng, width, height)
        mode = rng.choice(["RGB", "RGB", "L", "RGBA"])
        extension = ".jpg" if mode == "L" or (mode == "RGB" and rng.random() < 0.7) else ".png"
        data = _encode(image.convert(str(mode)), extension)
        if index in corrupt:
            data = _corrupt(data, len(samples))
        samples.append((f"{index:06d}", extension, data))
    if images_per_shard:
        for start in range(0, num_images, images_per_shard):
            shard = root / f"faces-{start // images_per_shard:06d}.tar"
            with atomic_path(shard) as staging, tarfile.open(staging, "w") as archive:
                for key, extension, data in samples[start : start + images_per_shard]:
                    for name, payload in ((key + extension, data), (key + ".json", json.dumps({"key": key}).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        archive.addfile(info, io.BytesIO(payload))
    else:
        for key, extension, data in samples:
            path = root / f"group_{int(key) % 4}" / (key + extension)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return root


def _write_labelled_faces(
    folder: Path, class_names: tuple[str, ...], counts: list[int], rng: np.random.Generator, image_size: int,
    style_noise: float, folder_names: list[str],
) -> list[tuple[str, int]]:  # fmt: skip
    """`counts[c]` faces of class c under `folder/<folder_names[c]>/`; returns (relative name, class) pairs."""
    written = []
    for index, (name, count) in enumerate(zip(class_names, counts, strict=True)):
        for number in range(count):
            relative = f"{folder_names[index]}/{number:05d}.jpg"
            background = EXPRESSION_COLORS[index] + rng.normal(0, 8, 3)
            face = render_face(rng, image_size, image_size, np.clip(background, 0, 255), name, style_noise)
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            face.save(path, quality=_JPEG_QUALITY)
            written.append((relative, index))
    return written


def make_synthetic_lsd(
    root: str | os.PathLike,
    num_train_per_class: int = 32,
    num_validation_per_class: int = 8,
    image_size: int = 48,
    layout: str = "abaw",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """The ABAW4 LSD layout ("abaw": upper-case class folders with the released `ANGRER`; "authors": `train/` and
    `val/` with the class names as written); validation faces are rendered noisier (a domain shift)."""
    if layout not in ("abaw", "authors"):
        raise ValueError(f"layout must be 'abaw' or 'authors', got {layout!r}")
    root = prepare_synthetic_root(root, overwrite)
    rng = np.random.default_rng([seed, 11])
    validation_names = list(LSD_EXPRESSIONS)
    if layout == "abaw":
        released = {name: folder for folder, name in LSD_FOLDER_ALIASES.items()}  # Anger ships as ANGRER
        train_names = [released.get(name, name.upper()) for name in LSD_EXPRESSIONS]
        validation_names = [name.upper() for name in LSD_EXPRESSIONS]
        train_folder, validation_folder = "training_set_synthetic_images", "validation_set_real_images"
    else:
        train_names, train_folder, validation_folder = list(LSD_EXPRESSIONS), "train", "val"
    folders = {
        train_folder: (train_names, num_train_per_class, 4.0),
        validation_folder: (validation_names, num_validation_per_class, 12.0),
    }
    for folder, (names, per_class, noise) in folders.items():
        counts = [per_class] * len(LSD_EXPRESSIONS)
        _write_labelled_faces(root / folder, LSD_EXPRESSIONS, counts, rng, image_size, noise, names)
    return root


def make_synthetic_affectnet(
    root: str | os.PathLike,
    num_train_per_class: int = 32,
    num_validation_per_class: int = 8,
    image_size: int = 48,
    layout: str = "folders",
    folder_names: str = "names",
    num_non_expression_rows: int = 0,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """AffectNet-style data: "folders" (`train/` and `val/`, one folder per class, by lower-case name or by index
    0-7 with `folder_names="indices"`) or "csv" (`training.csv` / `validation.csv` over
    `Manually_Annotated_Images/`, plus `num_non_expression_rows` rows of codes 8-10 per split, which readers skip).
    Class counts are unbalanced (the last classes rarer), as in AffectNet."""
    if layout not in ("folders", "csv"):
        raise ValueError(f"layout must be 'folders' or 'csv', got {layout!r}")
    root = prepare_synthetic_root(root, overwrite)
    rng = np.random.default_rng([seed, 13])
    imbalance = np.linspace(1.0, 0.5, len(AFFECTNET_EXPRESSIONS))
    for split, per_class, noise in (("train", num_train_per_class, 6.0), ("val", num_validation_per_class, 6.0)):
        counts = [max(1, int(round(per_class * weight))) for weight in imbalance]
        if layout == "folders":
            names = (
                [str(index) for index in range(len(AFFECTNET_EXPRESSIONS))]
                if folder_names == "indices"
                else [name.lower() for name in AFFECTNET_EXPRESSIONS]
            )
            _write_labelled_faces(root / split, AFFECTNET_EXPRESSIONS, counts, rng, image_size, noise, names)
            continue
        images = root / "Manually_Annotated_Images"
        subfolders = [f"{split}_{index}" for index in range(len(AFFECTNET_EXPRESSIONS))]
        written = _write_labelled_faces(images, AFFECTNET_EXPRESSIONS, counts, rng, image_size, noise, subfolders)
        # As released: training.csv has a header line, validation.csv has none.
        lines = [",".join(AFFECTNET_COLUMNS)] if split == "train" else []
        for name, label in written:
            lines.append(f'{name},0,0,{image_size},{image_size},"1.0;2.0;3.0;4.0",{label},0.1,-0.1')
        codes = list(AFFECTNET_NON_EXPRESSION_CODES)
        for number in range(num_non_expression_rows):
            lines.append(f'{split}_none/{number:05d}.jpg,0,0,1,1,"",{codes[number % len(codes)]},-2,-2')
        csv_name = "training.csv" if split == "train" else "validation.csv"
        write_text_atomically(root / csv_name, "\n".join(lines) + "\n")
    return root
