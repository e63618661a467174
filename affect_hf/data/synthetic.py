"""Synthetic ABAW4 MTL data in the real on-disk layout, for tests and demos that never download anything.

Each image carries its labels in simple cues that survive the training transforms (bilinear resize, 4% random
crop, horizontal flip, occasional colour jitter, JPEG), so a tiny model learns them in a minute on a CPU.
On an 8 x 8 grid of cells:

```
row 0      arousal band: full-width grey, dark (-1) .. bright (+1)
rows 1-6   cols 0,7: AU 2(r-1)     cols 1,6: AU 2(r-1)+1     bright = active, dark = inactive
           cols 2-5: background colour = expression (8 corners of the RGB cube), with a centred disc
           whose grey level is the valence, dark (-1) .. bright (+1)
row 7      arousal band again
```

Every cue is mirror-symmetric, so a flip changes nothing; every cell is 8 px at 64 px, so a 2 px shift leaves
most of it in place. Labels are drawn from the true values first, then a fraction is replaced by the ABAW
missing codes, as in the real annotation files (the image still shows the true value).
"""

import os
from pathlib import Path

import numpy as np
import PIL.Image

from ..files import write_text_atomically
from ..labels import (
    ABAW_EXPRESSIONS,
    ACTION_UNITS,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
    NUM_ACTION_UNITS,
)
from .abaw_mtl import ABAW_MTL_ANNOTATION_FILES, ABAW_MTL_HEADER, ABAW_MTL_IMAGE_DIR


# Expression -> background colour: the corners of the RGB cube, as far apart as 8 colours can be.
EXPRESSION_COLORS = np.array([[r, g, b] for r in (40, 215) for g in (40, 215) for b in (40, 215)], dtype=np.float32)
# Facial-action co-occurrences (FACS prototypes), so the AUs correlate with the expression as in real data.
_EXPRESSION_ACTION_UNITS = {
    "Anger": ("AU4", "AU7", "AU23", "AU24"),
    "Disgust": ("AU10", "AU15"),
    "Fear": ("AU1", "AU2", "AU4", "AU25"),
    "Happiness": ("AU6", "AU12", "AU25"),
    "Sadness": ("AU1", "AU4", "AU15"),
    "Surprise": ("AU1", "AU2", "AU25", "AU26"),
}
_LINKED_AU_PROBABILITY, _BASE_AU_PROBABILITY = 0.8, 0.2
# Mean (valence, arousal) per expression, on the circumplex.
_EXPRESSION_VALENCE_AROUSAL = {
    "Neutral": (0.0, -0.2),
    "Anger": (-0.6, 0.6),
    "Disgust": (-0.6, 0.2),
    "Fear": (-0.5, 0.7),
    "Happiness": (0.7, 0.4),
    "Sadness": (-0.6, -0.5),
    "Surprise": (0.3, 0.8),
    "Other": (0.0, 0.0),
}
_DARK, _BRIGHT = 30.0, 225.0
_NOISE_STD = 6.0
_JPEG_QUALITY = 90
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def make_synthetic_abaw(
    root: str | os.PathLike,
    num_train: int = 512,
    num_validation: int = 128,
    num_test: int = 64,
    image_size: int = 64,
    frames_per_video: int = 32,
    missing_label_rate: float = 0.1,
    missing_image_count: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    layout: str = "mtl",
) -> Path:
    """Write a synthetic ABAW4 MTL set (annotation files, test list, JPEG frames) under `root`; return `root`.

    `layout="tracks"` writes the same frames with the Aff-Wild2 uni-task annotation folders instead
    (`VA_Estimation_Challenge/`, `EXPR_Classification_Challenge/`, `AU_Detection_Challenge/`, each with
    `Train_Set/` and `Validation_Set/` of `<video>.txt`) and no MTL files; its test frames are listed in one
    sample file per track (`TRACK_TEST_SAMPLE_FILES`, the organisers' format), and every eleventh test frame from
    the sixth has no crop, as in Aff-Wild2's test videos. Its labels are smooth in time, as Aff-Wild2's are
    (`_draw_track_labels`: expressions in runs, AUs in episodes, a slowly varying valence/arousal per video), and
    each frame shows them through noise, so that a model over a face's frames recovers what one frame cannot.

    Deterministic for a seed; each split has its own stream, so resizing one split leaves the others unchanged.
    `missing_label_rate` is the chance, per frame and per task, that a label is written as its missing code.
    `missing_image_count` training frames are listed in the annotation file but get no image (ABAW has such
    frames; the reader skips and counts them). Annotation files are written last and atomically. A non-empty
    `root` is refused unless `overwrite`.
    """
    if layout not in ("mtl", "tracks"):
        raise ValueError(f"layout must be 'mtl' or 'tracks', got {layout!r}")
    if not 0 <= missing_image_count <= num_train:
        raise ValueError(f"missing_image_count must lie in [0, num_train={num_train}], got {missing_image_count}.")
    root = prepare_synthetic_root(root, overwrite)
    image_dir = root / ABAW_MTL_IMAGE_DIR
    cues = _CueLayout(image_size)
    for split, num_frames in (("train", num_train), ("validation", num_validation), ("test", num_test)):
        rng = np.random.default_rng([seed, _SPLIT_SEEDS[split]])
        names = [
            f"{split}_{frame // frames_per_video:03d}/{frame % frames_per_video + 1:05d}.jpg"
            for frame in range(num_frames)
        ]
        # Labels and missing codes are drawn before any pixel noise, so they do not depend on `image_size`.
        if layout == "tracks":
            (expression, valence_arousal, action_units), shown = _draw_track_labels(rng, num_frames, frames_per_video)
        else:
            expression, valence_arousal, action_units = _draw_labels(rng, num_frames)
            shown = (expression, valence_arousal, action_units)
        missing_labels = rng.random((3, num_frames)) < missing_label_rate
        without_image = set()
        if split == "train" and missing_image_count:
            without_image = set(rng.choice(num_frames, size=missing_image_count, replace=False).tolist())
        if split == "test" and layout == "tracks":
            without_image = set(range(5, num_frames, 11))
        for frame, name in enumerate(names):
            if frame in without_image:
                continue
            pixels = cues.render(shown[0][frame], shown[1][frame], shown[2][frame], rng)
            path = image_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(pixels).save(path, quality=_JPEG_QUALITY)

        if layout == "tracks":
            if split != "test":
                _write_track_files(root, split, names, missing_labels, expression, valence_arousal, action_units)
            else:
                _write_track_test_samples(root, names)
            continue
        if split == "test":
            lines = ["image"] + names
        else:
            labels = _annotation_fields(missing_labels, expression, valence_arousal, action_units)
            lines = [ABAW_MTL_HEADER] + [f"{name},{row}" for name, row in zip(names, labels, strict=True)]
        write_text_atomically(root / ABAW_MTL_ANNOTATION_FILES[split], "\n".join(lines) + "\n")
    return root


def _write_track_files(
    root: Path, split: str, names: list[str], missing_labels: np.ndarray, expression: np.ndarray,
    valence_arousal: np.ndarray, action_units: np.ndarray,
) -> None:  # fmt: skip
    """One `<video>.txt` per video and track: a header, then line i for frame i (missing labels as invalid codes)."""
    from .abaw_tracks import ABAW_TRACK_FOLDERS, ABAW_TRACK_HEADERS, ABAW_TRACK_SPLITS

    fields = _annotation_fields(missing_labels, expression, valence_arousal, action_units)
    columns = {"va": slice(0, 2), "expr": slice(2, 3), "au": slice(3, 3 + NUM_ACTION_UNITS)}
    videos: dict[str, list[str]] = {}
    for name, row in zip(names, fields, strict=True):
        videos.setdefault(name.split("/")[0], []).append(row)
    for task, folders in ABAW_TRACK_FOLDERS.items():
        folder = root / folders[0] / ABAW_TRACK_SPLITS[split]
        for video, rows in videos.items():
            lines = [ABAW_TRACK_HEADERS[task]] + [",".join(row.split(",")[columns[task]]) for row in rows]
            write_text_atomically(folder / f"{video}.txt", "\n".join(lines) + "\n")


# The uni-task test lists, as the organisers' sample submission files (header, then one placeholder line per frame).
TRACK_TEST_SAMPLE_FILES = {"va": "va_test_set_sample.txt", "expr": "expr_test_set_sample.txt",
                           "au": "au_test_set_sample.txt"}  # fmt: skip


def _write_track_test_samples(root: Path, names: list[str]) -> None:
    from .abaw_tracks import ABAW_TRACK_FIELDS, ABAW_TRACK_HEADERS

    for task, file_name in TRACK_TEST_SAMPLE_FILES.items():
        placeholder = ",".join(["0"] * ABAW_TRACK_FIELDS[task])
        lines = [f"image_location,{ABAW_TRACK_HEADERS[task]}"] + [f"{name},{placeholder}" for name in names]
        write_text_atomically(root / file_name, "\n".join(lines) + "\n")


def prepare_synthetic_root(root: str | os.PathLike, overwrite: bool) -> Path:
    """The folder a generator writes into: created if needed; refused when it holds anything, unless `overwrite`."""
    root = Path(root)
    if root.is_file() or (root.is_dir() and any(root.iterdir()) and not overwrite):
        raise FileExistsError(f"{root} is not an empty folder: choose an empty or new one")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _draw_labels(rng: np.random.Generator, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True labels: expression uniform; AUs and valence/arousal correlated with the expression."""
    expression = rng.integers(0, len(ABAW_EXPRESSIONS), size=num_frames)
    au_probability = np.full((len(ABAW_EXPRESSIONS), NUM_ACTION_UNITS), _BASE_AU_PROBABILITY)
    for name, action_units in _EXPRESSION_ACTION_UNITS.items():
        for action_unit in action_units:
            au_probability[ABAW_EXPRESSIONS.index(name), ACTION_UNITS.index(action_unit)] = _LINKED_AU_PROBABILITY
    action_units = (rng.random((num_frames, NUM_ACTION_UNITS)) < au_probability[expression]).astype(np.int64)
    va_means = np.array([_EXPRESSION_VALENCE_AROUSAL[name] for name in ABAW_EXPRESSIONS])
    valence_arousal = np.clip(0.6 * va_means[expression] + rng.uniform(-0.6, 0.6, (num_frames, 2)), -1.0, 1.0)
    # Round as written, so the image shows exactly the value the file holds.
    return expression, np.round(valence_arousal, 4), action_units


# How far a tracks-layout frame's cues stray from its labels: valence/arousal by this standard deviation, the
# expression colour of another class in this share of frames, each AU's cue flipped in this share.
_SHOWN_VA_NOISE, _SHOWN_EXPRESSION_SWAP, _SHOWN_AU_FLIP = 0.3, 0.25, 0.15
_RUN_FRAMES = (4, 13)  # an expression run (and its AU episode) lasts 4 to 12 frames


def _draw_track_labels(
    rng: np.random.Generator, num_frames: int, frames_per_video: int
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(labels, what each frame shows) for video tracks: per video, expressions in runs with their AUs as episodes,
    valence/arousal following the expression smoothly plus a slow drift of its own; the frames' cues are the labels
    with noise (`_SHOWN_*`)."""
    expression = np.empty(num_frames, dtype=np.int64)
    valence_arousal = np.empty((num_frames, 2))
    action_units = np.empty((num_frames, NUM_ACTION_UNITS), dtype=np.int64)
    va_means = 0.6 * np.array([_EXPRESSION_VALENCE_AROUSAL[name] for name in ABAW_EXPRESSIONS])
    for start in range(0, num_frames, frames_per_video):
        stop = min(start + frames_per_video, num_frames)
        frame = start
        while frame < stop:  # runs of one expression, each with one set of AUs
            run = min(int(rng.integers(*_RUN_FRAMES)), stop - frame)
            run_expression, _, run_aus = _draw_labels(rng, 1)
            expression[frame : frame + run], action_units[frame : frame + run] = run_expression[0], run_aus[0]
            frame += run
        target = va_means[expression[start:stop]]
        smooth = np.empty_like(target)
        smooth[0] = target[0]
        for step in range(1, len(target)):  # an exponential approach to each run's valence/arousal
            smooth[step] = 0.7 * smooth[step - 1] + 0.3 * target[step]
        drift = np.cumsum(rng.normal(0.0, 0.05, target.shape), axis=0)
        valence_arousal[start:stop] = np.clip(smooth + drift, -1.0, 1.0)
    valence_arousal = np.round(valence_arousal, 4)
    swapped = rng.random(num_frames) < _SHOWN_EXPRESSION_SWAP
    shown_expression = np.where(swapped, rng.integers(0, len(ABAW_EXPRESSIONS), num_frames), expression)
    shown_va = np.clip(valence_arousal + rng.normal(0.0, _SHOWN_VA_NOISE, valence_arousal.shape), -1.0, 1.0)
    flipped = rng.random(action_units.shape) < _SHOWN_AU_FLIP
    shown_aus = np.where(flipped, 1 - action_units, action_units)
    return (expression, valence_arousal, action_units), (shown_expression, shown_va, shown_aus)


def _annotation_fields(
    missing_labels: np.ndarray, expression: np.ndarray, valence_arousal: np.ndarray, action_units: np.ndarray
) -> list[str]:
    """Annotation fields after the name; `missing_labels` (3 x N: VA, expression, AUs) selects missing codes."""
    missing_va, missing_expression, missing_aus = missing_labels
    rows = []
    for frame in range(len(expression)):
        va = (
            f"{MISSING_VALENCE_AROUSAL:g},{MISSING_VALENCE_AROUSAL:g}"
            if missing_va[frame]
            else f"{valence_arousal[frame, 0]:.4f},{valence_arousal[frame, 1]:.4f}"
        )
        expr = MISSING_EXPRESSION if missing_expression[frame] else expression[frame]
        aus = [MISSING_ACTION_UNIT] * NUM_ACTION_UNITS if missing_aus[frame] else action_units[frame].tolist()
        rows.append(f"{va},{expr},{','.join(map(str, aus))}")
    return rows


class _CueLayout:
    """Which cue each pixel shows, for one image size, computed once: rendering is then one palette lookup."""

    _BACKGROUND, _DISC, _AROUSAL, _FIRST_AU = 0, 1, 2, 3

    def __init__(self, image_size: int):
        centres = (np.arange(image_size) + 0.5) / image_size
        y, x = np.meshgrid(centres, centres, indexing="ij")
        cell_row, cell_col = (y * 8).astype(int), (x * 8).astype(int)
        mirrored_col = np.minimum(cell_col, 7 - cell_col)  # 0 for columns 0 and 7, 1 for 1 and 6, ...
        regions = np.full((image_size, image_size), self._BACKGROUND)
        regions[(y - 0.5) ** 2 + (x - 0.5) ** 2 < 0.18**2] = self._DISC
        inner = (cell_row >= 1) & (cell_row <= 6)
        au_cells = inner & (mirrored_col <= 1)
        regions[au_cells] = self._FIRST_AU + 2 * (cell_row[au_cells] - 1) + mirrored_col[au_cells]
        regions[~inner] = self._AROUSAL
        self.regions = regions

    def render(
        self, expression: int, valence_arousal: np.ndarray, action_units: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        palette = np.empty((self._FIRST_AU + NUM_ACTION_UNITS, 3), dtype=np.float32)
        palette[self._BACKGROUND] = EXPRESSION_COLORS[expression]
        palette[self._DISC] = _grey_level(valence_arousal[0])
        palette[self._AROUSAL] = _grey_level(valence_arousal[1])
        palette[self._FIRST_AU :] = np.where(np.asarray(action_units)[:, None] == 1, _BRIGHT, _DARK)
        noise = rng.standard_normal(self.regions.shape + (3,), dtype=np.float32) * _NOISE_STD
        pixels = palette[self.regions] + noise
        return np.clip(pixels, 0, 255).round().astype(np.uint8)


def _grey_level(value: float) -> float:
    """[-1, 1] -> [dark, bright]."""
    return _DARK + (value + 1.0) / 2.0 * (_BRIGHT - _DARK)
